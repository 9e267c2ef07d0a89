//! Image fixtures: config + manifest around a list of layers, written as an
//! OCI image layout (directory or tar) or a docker-archive (`docker save`).

use super::tarball::{sha256_digest, sha256_hex, Compression, Layer, TarBuilder};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The default `created` of fixture images.
pub const CREATED: &str = "2021-01-01T00:00:00Z";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI media types.
    Oci,
    /// Docker schema2 media types.
    Docker,
}

pub fn layer_media_type(kind: ManifestKind, compression: Compression) -> &'static str {
    match (kind, compression) {
        (ManifestKind::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (ManifestKind::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (ManifestKind::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (ManifestKind::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (ManifestKind::Docker, Compression::Gzip) => {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        }
        (ManifestKind::Docker, Compression::Zstd) => {
            "application/vnd.docker.image.rootfs.diff.tar.zstd"
        }
    }
}

/// The platform names of the machine running the tests, as OCI spells them.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    kind: ManifestKind,
    os: String,
    architecture: String,
    created: String,
    diff_ids: Option<Vec<String>>,
    cmd: Vec<String>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            kind: ManifestKind::Oci,
            os: "linux".into(),
            architecture: host_arch().into(),
            created: CREATED.into(),
            diff_ids: None,
            cmd: vec!["/bin/sh".into()],
        }
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Adds a layer built from a tar builder.
    pub fn tar(self, tar: &TarBuilder, compression: Compression) -> Self {
        self.layer(tar.layer(compression))
    }

    pub fn kind(mut self, kind: ManifestKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self
    }

    pub fn created(mut self, created: &str) -> Self {
        self.created = created.into();
        self
    }

    /// Makes the config claim these diff_ids instead of the real ones.
    pub fn diff_ids(mut self, diff_ids: Vec<String>) -> Self {
        self.diff_ids = Some(diff_ids);
        self
    }

    /// Makes configs differ between images that share all layers.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn build(self) -> Image {
        let diff_ids = self
            .diff_ids
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|l| l.diff_id.clone()).collect());
        let mut history: Vec<Value> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"created": self.created, "created_by": format!("layer {i}")}))
            .collect();
        history.push(json!({"created": self.created, "created_by": "CMD", "empty_layer": true}));
        let config = json!({
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": self.cmd,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = serde_json::to_vec(&config).expect("config json");
        let config_digest = sha256_digest(&config);
        let (manifest_type, config_type) = match self.kind {
            ManifestKind::Oci => (OCI_MANIFEST, OCI_CONFIG),
            ManifestKind::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let layer_descriptors: Vec<Value> = self
            .layers
            .iter()
            .map(|layer| {
                json!({
                    "mediaType": layer_media_type(self.kind, layer.compression),
                    "digest": layer.digest,
                    "size": layer.size(),
                })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layer_descriptors,
        });
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest json");
        Image {
            kind: self.kind,
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers: self.layers,
            os: self.os,
            architecture: self.architecture,
            created: self.created,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Image {
    pub kind: ManifestKind,
    pub config: Vec<u8>,
    /// `sha256:<hex>`: the image id.
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    /// Layer blobs; mutate `blob` after `build` to store content that no
    /// longer matches the manifest's digest.
    pub layers: Vec<Layer>,
    pub os: String,
    pub architecture: String,
    pub created: String,
}

impl Image {
    pub fn manifest_media_type(&self) -> &'static str {
        match self.kind {
            ManifestKind::Oci => OCI_MANIFEST,
            ManifestKind::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    pub fn chain_ids(&self) -> Vec<String> {
        super::tarball::chain_ids(&self.diff_ids())
    }

    pub fn layer_media_types(&self) -> Vec<&'static str> {
        self.layers
            .iter()
            .map(|l| layer_media_type(self.kind, l.compression))
            .collect()
    }

    /// Sum of the compressed layer sizes.
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size()).sum()
    }

    /// Every blob of the image as (digest, bytes): config, manifest, layers.
    pub fn blobs(&self) -> Vec<(String, &[u8])> {
        let mut blobs = vec![
            (self.config_digest.clone(), self.config.as_slice()),
            (self.manifest_digest.clone(), self.manifest.as_slice()),
        ];
        for layer in &self.layers {
            blobs.push((layer.digest.clone(), layer.blob.as_slice()));
        }
        blobs
    }
}

/// Annotations naming a manifest in an OCI layout's index.json.
#[derive(Clone, Debug, Default)]
pub struct LayoutNames {
    /// `io.containerd.image.name` (a full reference).
    pub containerd: Option<String>,
    /// `org.opencontainers.image.ref.name` (a tag or a full reference).
    pub ref_name: Option<String>,
}

impl LayoutNames {
    /// containerd's export style: full name plus the bare tag as ref.name.
    pub fn containerd(full: &str) -> LayoutNames {
        let tag = full.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        LayoutNames {
            containerd: Some(full.into()),
            ref_name: Some(tag.into()),
        }
    }

    /// Only `org.opencontainers.image.ref.name`.
    pub fn ref_name(name: &str) -> LayoutNames {
        LayoutNames {
            containerd: None,
            ref_name: Some(name.into()),
        }
    }

    pub fn none() -> LayoutNames {
        LayoutNames::default()
    }
}

/// The manifest digest a layout's index.json names first.
pub fn layout_manifest_digest(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string()
}

/// Writes an OCI image layout directory holding `images`.
pub fn write_oci_layout(dir: &Path, images: &[(&Image, LayoutNames)]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create blobs dir");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mut manifests = Vec::new();
    for (image, names) in images {
        for (digest, bytes) in image.blobs() {
            fs::write(blob_path(dir, &digest), bytes).expect("write blob");
        }
        let mut descriptor = json!({
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
        });
        let mut annotations = serde_json::Map::new();
        if let Some(name) = &names.containerd {
            annotations.insert(ANNOTATION_CONTAINERD_NAME.into(), json!(name));
        }
        if let Some(name) = &names.ref_name {
            annotations.insert(ANNOTATION_REF_NAME.into(), json!(name));
        }
        if !annotations.is_empty() {
            descriptor["annotations"] = Value::Object(annotations);
        }
        manifests.push(descriptor);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).expect("index json"),
    )
    .expect("index.json");
}

/// Writes an OCI layout whose index.json names one multi-platform image
/// index (a blob) listing `images` with their platforms.
pub fn write_oci_layout_multi_platform(dir: &Path, images: &[&Image], names: LayoutNames) {
    write_oci_layout(dir, &[]);
    let mut manifests = Vec::new();
    for image in images {
        for (digest, bytes) in image.blobs() {
            fs::write(blob_path(dir, &digest), bytes).expect("write blob");
        }
        manifests.push(json!({
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": {"os": image.os, "architecture": image.architecture},
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let index = serde_json::to_vec(&index).expect("index json");
    let digest = sha256_digest(&index);
    fs::write(blob_path(dir, &digest), &index).expect("write index blob");
    let mut annotations = serde_json::Map::new();
    if let Some(name) = &names.containerd {
        annotations.insert(ANNOTATION_CONTAINERD_NAME.into(), json!(name));
    }
    if let Some(name) = &names.ref_name {
        annotations.insert(ANNOTATION_REF_NAME.into(), json!(name));
    }
    let top = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": index.len(),
            "annotations": annotations,
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&top).expect("index json"),
    )
    .expect("index.json");
}

/// `<layout>/blobs/sha256/<hex>` of a `sha256:<hex>` digest.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// A tar of a directory tree (regular files and directories), sorted.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    fn walk(base: &Path, rel: &str, tar: &mut TarBuilder) {
        let mut names: Vec<_> = fs::read_dir(base.join(rel))
            .expect("read_dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        for name in names {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(base.join(&path)).expect("lstat");
            if meta.is_dir() {
                tar.dir(&path);
                walk(base, &path, tar);
            } else {
                tar.file(&path, fs::read(base.join(&path)).expect("read"));
            }
        }
    }
    let mut tar = TarBuilder::new();
    walk(dir, "", &mut tar);
    tar.tar()
}

/// An OCI layout written to `dir` and also packed into `<dir>.tar`.
pub fn write_oci_layout_tar(dir: &Path, images: &[(&Image, LayoutNames)]) -> PathBuf {
    write_oci_layout(dir, images);
    let tar_path = dir.with_extension("tar");
    fs::write(&tar_path, tar_dir(dir)).expect("write layout tar");
    tar_path
}

/// A `docker save` archive in the classic format: `manifest.json`,
/// `repositories`, `<config hex>.json` and `<id>/layer.tar` (uncompressed).
pub fn docker_archive(images: &[(&Image, &[&str])]) -> Vec<u8> {
    let mut tar = TarBuilder::new();
    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    for (image, tags) in images {
        let mut layer_paths = Vec::new();
        let mut parent: Option<String> = None;
        for (layer, chain) in image.layers.iter().zip(image.chain_ids()) {
            // A v1-style id per position in the chain, so shared bases share it.
            let id = sha256_hex(chain.as_bytes());
            if written.insert(id.clone()) {
                tar.dir(&id);
                tar.file(format!("{id}/VERSION"), b"1.0");
                let mut v1 = json!({"id": id, "created": image.created});
                if let Some(parent) = &parent {
                    v1["parent"] = json!(parent);
                }
                tar.file(format!("{id}/json"), serde_json::to_vec(&v1).expect("json"));
                tar.file(format!("{id}/layer.tar"), &layer.tar);
            }
            layer_paths.push(format!("{id}/layer.tar"));
            parent = Some(id);
        }
        let config_name = format!("{}.json", image.config_digest.trim_start_matches("sha256:"));
        if written.insert(config_name.clone()) {
            tar.file(&config_name, &image.config);
        }
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layer_paths}));
        for tag in *tags {
            let (repo, tag_name) = tag.rsplit_once(':').expect("name:tag");
            let entry = repositories
                .entry(repo.to_string())
                .or_insert_with(|| json!({}));
            entry[tag_name] = json!(parent.clone().unwrap_or_default());
        }
    }
    tar.file(
        "manifest.json",
        serde_json::to_vec(&manifest).expect("json"),
    );
    tar.file(
        "repositories",
        serde_json::to_vec(&Value::Object(repositories)).expect("json"),
    );
    tar.tar()
}

/// A `docker save` archive as Docker 25+ writes it: an OCI layout (with
/// uncompressed layers) plus `manifest.json` pointing into `blobs/`.
pub fn docker_archive_oci_style(work: &Path, images: &[(&Image, &[&str])]) -> Vec<u8> {
    let named: Vec<(&Image, LayoutNames)> = images
        .iter()
        .map(|(image, tags)| {
            let names = tags
                .first()
                .map(|t| LayoutNames::containerd(t))
                .unwrap_or_default();
            (*image, names)
        })
        .collect();
    write_oci_layout(work, &named);
    let manifest: Vec<Value> = images
        .iter()
        .map(|(image, tags)| {
            let layers: Vec<String> = image
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.trim_start_matches("sha256:")))
                .collect();
            json!({
                "Config": format!("blobs/sha256/{}", image.config_digest.trim_start_matches("sha256:")),
                "RepoTags": tags,
                "Layers": layers,
            })
        })
        .collect();
    fs::write(
        work.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest.json");
    tar_dir(work)
}
