//! OCI and Docker schema2 image types: descriptors, manifests, indexes,
//! configs and their media types. Unknown fields are kept where a document
//! may be written back (configs are stored as the original bytes anyway).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema2 manifest list (a multi-platform index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Annotation naming an image in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation carrying the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`+gzip`, Docker's `tar.gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or None when the media
    /// type is not a layer type this store can apply.
    pub fn from_layer_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            OCI_LAYER_TAR
            | DOCKER_LAYER_TAR
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_FOREIGN_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Some(Compression::Gzip)
            }
            OCI_LAYER_ZSTD
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// The compression the first bytes of a blob show.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
        {
            // A zstd frame, or a skippable frame (zstd:chunked starts with one).
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type of a tar with this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// Its sha256.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Other places to fetch it from (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with no URLs, annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        }
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// The platform an image runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, as Go names it (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system, as Go names it (`linux`).
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (Windows images).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v7` of `arm/v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest, OCI or Docker schema2 (same shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type (OCI 1.1 artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The parts of an image config the store needs. The config blob itself is
/// kept byte for byte; this is only a view of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was made (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
    /// How each layer was made.
    #[serde(default)]
    pub history: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// The platform the config names.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
            ..Platform::default()
        }
    }
}

/// What a JSON document says it is.
#[allow(clippy::large_enum_variant)] // short-lived, one at a time
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An index or manifest list.
    Index(Index),
}

/// Why a document could not be read as a manifest or index.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or not of the document's shape.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A media type that is no manifest or index.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// A Docker schema 1 manifest.
    #[error("legacy Docker schema 1 manifests are not supported")]
    Schema1,
    /// A document that could be either a manifest or an index.
    #[error("document is neither an image manifest nor an index")]
    Ambiguous,
}

/// Reads a manifest or index. `media_type` is what the transport said (HTTP
/// Content-Type or a descriptor); the document's own `mediaType` wins when
/// present. A document with both `manifests` and `layers` is refused (the
/// ambiguity of GO-2022-0360).
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document, DocumentError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let own = value.get("mediaType").and_then(|v| v.as_str());
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(DocumentError::Schema1);
    }
    let has_manifests = value.get("manifests").is_some();
    let has_layers = value.get("layers").is_some() || value.get("config").is_some();
    if has_manifests && has_layers {
        return Err(DocumentError::Ambiguous);
    }
    let kind = own.or(media_type.filter(|m| !m.is_empty() && *m != "application/json"));
    match kind {
        Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => {
            Ok(Document::Index(serde_json::from_value(value)?))
        }
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => {
            Ok(Document::Manifest(serde_json::from_value(value)?))
        }
        Some(m) if m.contains("schema1") || m.contains("prettyjws") => Err(DocumentError::Schema1),
        Some(m) if own.is_some() => Err(DocumentError::UnsupportedMediaType(m.to_string())),
        _ if has_manifests => Ok(Document::Index(serde_json::from_value(value)?)),
        _ if has_layers => Ok(Document::Manifest(serde_json::from_value(value)?)),
        _ => Err(DocumentError::Ambiguous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(
            Compression::sniff(&[0x50, 0x2a, 0x4d, 0x18]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn parses_manifest_and_index() {
        let d = Digest::of(b"c");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document(m.as_bytes(), None).unwrap(),
            Document::Manifest(_)
        ));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        match parse_document(i.as_bytes(), Some(OCI_INDEX)).unwrap() {
            Document::Index(ix) => assert_eq!(
                ix.manifests[0]
                    .platform
                    .as_ref()
                    .unwrap()
                    .variant
                    .as_deref(),
                Some("v8")
            ),
            _ => panic!("not an index"),
        }
    }

    #[test]
    fn refuses_ambiguous_and_schema1() {
        let d = Digest::of(b"c");
        let both = format!(
            r#"{{"schemaVersion":2,"manifests":[],"config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document(both.as_bytes(), None),
            Err(DocumentError::Ambiguous)
        ));
        assert!(matches!(
            parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(DocumentError::Schema1)
        ));
        assert!(parse_document(b"garbage", None).is_err());
    }

    /// Numbers in a config the store re-writes (commit copies the parent's
    /// history and settings) must come back as the same value: parsing is
    /// exact (serde_json's float_roundtrip), so writing what was read and
    /// reading it again gives the same text. A fuzz finding: 4.5e+300.
    #[test]
    fn config_numbers_round_trip() {
        let config = br#"{"architecture":"amd64","os":"linux",
            "rootfs":{"type":"layers","diff_ids":[]},
            "history":[{"created_by":"x"},4.5e+300,1.7976931348623157e308,
                       5e-324,0.1,2.2250738585072011e-308,-0.0,123456789012345678,null]}"#;
        let parsed: ImageConfig = serde_json::from_slice(config).unwrap();
        let history = parsed.history.as_ref().unwrap();
        assert_eq!(history[1].as_f64(), Some(4.5e300));
        assert_eq!(history[2].as_f64(), Some(f64::MAX));
        assert_eq!(history[4].as_f64(), Some(0.1));
        let first = serde_json::to_vec(&parsed).unwrap();
        let again: ImageConfig = serde_json::from_slice(&first).unwrap();
        assert_eq!(again, parsed);
        assert_eq!(serde_json::to_vec(&again).unwrap(), first);
    }
}
