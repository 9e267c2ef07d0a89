//! Assertions about what the store wrote: `inspect` JSON, the overlay2
//! folders, the whiteout format, and the mounted root filesystem.

use super::image::{write_oci_layout, Image, ImageBuilder, LayoutNames};
use super::lstore::Lstore;
use super::mount::RootfsMount;
use super::peers::umoci_unpack;
use super::tarball::sha256_digest;
use super::tarball::{Compression, Layer};
use super::tree::{assert_same_tree, snapshot, Tree};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where an image was loaded from: a docker-archive has no manifest or
/// compressed layers of its own, so the store makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Layout,
    DockerArchive,
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn is_digest(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// The store's copy of a blob, checked against its digest.
pub fn stored_blob(store: &Lstore, digest: &str) -> Vec<u8> {
    let path = store.path("blobs/sha256").join(hex(digest));
    let bytes = fs::read(&path)
        .unwrap_or_else(|e| panic!("blob {digest} not in the store ({}): {e}", path.display()));
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "stored blob {digest} has other content"
    );
    bytes
}

/// Checks `inspect` output field by field against the image loaded.
pub fn check_inspect(store: &Lstore, inspect: &Value, image: &Image, name: &str, source: Source) {
    assert_eq!(
        keys(inspect),
        set(&[
            "id",
            "digest",
            "repo_tags",
            "repo_digests",
            "index",
            "platform",
            "size",
            "layers",
            "lowerdir"
        ]),
        "inspect fields: {inspect:#}"
    );
    // `repository@digest` of pulled names: none for a loaded image.
    let repo_digests = inspect["repo_digests"].as_array().expect("repo_digests");
    for named in repo_digests {
        let digest = named.as_str().and_then(|s| s.rsplit_once('@'));
        assert!(
            digest.is_some_and(|(_, d)| is_digest(&Value::from(d))),
            "repo_digests entry {named}"
        );
    }
    assert!(
        inspect["index"].is_null() || is_digest(&inspect["index"]),
        "inspect index: {}",
        inspect["index"]
    );
    assert_eq!(inspect["id"], image.config_digest.as_str(), "inspect id");
    assert!(
        is_digest(&inspect["digest"]),
        "inspect digest: {}",
        inspect["digest"]
    );
    let digest = inspect["digest"].as_str().expect("digest");
    match source {
        Source::Layout => assert_eq!(digest, image.manifest_digest, "inspect digest"),
        Source::DockerArchive => {
            // The manifest the store made must describe this config.
            let manifest: Value = serde_json::from_slice(&stored_blob(store, digest))
                .expect("stored manifest is JSON");
            assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
        }
    }
    assert_eq!(
        stored_blob(store, &image.config_digest),
        image.config,
        "config blob kept byte for byte"
    );
    let tags = inspect["repo_tags"].as_array().expect("repo_tags array");
    assert!(
        tags.iter().any(|t| t == name),
        "repo_tags {tags:?} lack {name}"
    );
    assert_eq!(
        inspect["platform"],
        serde_json::json!({"os": image.os, "architecture": image.architecture}),
        "inspect platform"
    );

    let layers = inspect["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), image.layers.len(), "layer count");
    let chain_ids = image.chain_ids();
    let media_types = image.layer_media_types();
    let mut total = 0u64;
    let mut paths = Vec::new();
    for (i, (layer, want)) in layers.iter().zip(&image.layers).enumerate() {
        assert_eq!(
            keys(layer),
            set(&[
                "digest",
                "diff_id",
                "chain_id",
                "media_type",
                "compressed_size",
                "size",
                "path"
            ]),
            "layer {i} fields: {layer:#}"
        );
        assert_eq!(layer["diff_id"], want.diff_id.as_str(), "layer {i} diff_id");
        assert_eq!(
            layer["chain_id"],
            chain_ids[i].as_str(),
            "layer {i} chain_id"
        );
        assert!(is_digest(&layer["digest"]), "layer {i} digest");
        let blob = stored_blob(store, layer["digest"].as_str().expect("digest"));
        assert_eq!(
            layer["compressed_size"].as_u64(),
            Some(blob.len() as u64),
            "layer {i} compressed_size is the stored blob's size"
        );
        if source == Source::Layout {
            assert_eq!(layer["digest"], want.digest.as_str(), "layer {i} digest");
            assert_eq!(layer["media_type"], media_types[i], "layer {i} media_type");
        } else {
            assert!(layer["media_type"].is_string(), "layer {i} media_type");
        }
        assert_eq!(
            layer["size"].as_u64(),
            Some(want.uncompressed_size),
            "layer {i} size is the uncompressed tar's size"
        );
        total += want.uncompressed_size;
        let path = layer["path"].as_str().expect("layer path");
        let expected = store
            .root()
            .canonicalize()
            .expect("root")
            .join("overlay2")
            .join(hex(&chain_ids[i]))
            .join("diff");
        assert_eq!(Path::new(path), expected, "layer {i} path");
        assert!(Path::new(path).is_dir(), "layer {i} path is a directory");
        paths.push(path.to_string());
    }
    assert_eq!(
        inspect["size"].as_u64(),
        Some(total),
        "image size = sum of layer sizes"
    );
    paths.reverse();
    assert_eq!(
        inspect["lowerdir"],
        paths.join(":"),
        "lowerdir, top layer first"
    );
}

fn is_short_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// Checks `overlay2/<chain>/{diff,link,lower,work}` and `overlay2/l/`.
pub fn check_layer_folders(store: &Lstore, inspect: &Value) {
    let mut links: Vec<String> = Vec::new();
    for (i, layer) in inspect["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .enumerate()
    {
        let chain = layer["chain_id"].as_str().expect("chain_id");
        let dir = store.path("overlay2").join(hex(chain));
        let link = fs::read_to_string(dir.join("link"))
            .unwrap_or_else(|e| panic!("{}/link: {e}", dir.display()));
        assert!(
            is_short_id(&link),
            "layer {i} link {link:?} is not 26 base32 characters"
        );
        let target = fs::read_link(store.path("overlay2/l").join(&link))
            .unwrap_or_else(|e| panic!("overlay2/l/{link}: {e}"));
        assert_eq!(
            target,
            PathBuf::from(format!("../{}/diff", hex(chain))),
            "l/{link}"
        );
        let lower = dir.join("lower");
        if links.is_empty() {
            assert!(!lower.exists(), "base layer {chain} has a lower file");
        } else {
            let want: Vec<String> = links.iter().rev().map(|l| format!("l/{l}")).collect();
            assert_eq!(
                fs::read_to_string(&lower).unwrap_or_else(|e| panic!("{}: {e}", lower.display())),
                want.join(":"),
                "layer {i} lower, nearest first"
            );
        }
        let work = dir.join("work");
        assert!(work.is_dir(), "{} missing", work.display());
        assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "work/ is empty");
        links.push(link);
    }
}

/// No tar whiteout names inside any layer: only overlay whiteouts.
pub fn check_no_tar_whiteouts(inspect: &Value) {
    for layer in inspect["layers"].as_array().expect("layers") {
        let tree = snapshot(Path::new(layer["path"].as_str().expect("path")));
        for path in tree.paths() {
            let base = path.rsplit('/').next().unwrap_or(path);
            assert!(
                !base.starts_with(".wh."),
                "layer {} keeps the tar whiteout {path}",
                layer["chain_id"]
            );
        }
    }
}

/// The diff/ of layer `index` of an inspected image.
pub fn layer_diff(inspect: &Value, index: usize) -> PathBuf {
    PathBuf::from(
        inspect["layers"][index]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no layer {index}")),
    )
}

/// Mounts the image and returns its tree.
pub fn mounted_tree(store: &Lstore, reference: &str) -> Tree {
    let mount = RootfsMount::lowerdir(&store.lowerdir(reference));
    snapshot(mount.path())
}

/// The image mounted from the store must equal umoci's unpack of `image`.
/// umoci 0.4.7 reads neither zstd layers nor Docker media types, so it
/// unpacks an OCI twin with the same tars (zstd recompressed as gzip).
pub fn assert_matches_umoci(store: &Lstore, reference: &str, image: &Image) {
    let dir = tempfile::Builder::new()
        .prefix("lstore-twin-")
        .tempdir()
        .expect("twin dir");
    let layout = dir.path().join("layout");
    write_oci_layout(
        &layout,
        &[(&umoci_twin(image), LayoutNames::ref_name("twin"))],
    );
    let bundle = umoci_unpack(&layout, "twin");
    let expected = snapshot(&bundle.rootfs());
    let actual = mounted_tree(store, reference);
    assert_same_tree(
        &expected,
        &actual,
        &format!("{reference} mounted vs umoci unpack"),
    );
}

/// The same image with OCI media types and no zstd layer.
pub fn umoci_twin(image: &Image) -> Image {
    let mut builder = ImageBuilder::new()
        .platform(&image.os, &image.architecture)
        .created(&image.created);
    for layer in &image.layers {
        let compression = match layer.compression {
            Compression::Zstd => Compression::Gzip,
            other => other,
        };
        builder = builder.layer(Layer::from_tar(layer.tar.clone(), compression));
    }
    builder.build()
}

/// Inode and link count of a file, to see that nothing outside was linked.
pub fn inode(path: &Path) -> (u64, u64) {
    let meta = fs::symlink_metadata(path).expect("lstat");
    (meta.ino(), meta.nlink())
}
