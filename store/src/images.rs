//! What the store shows of its images: `images` rows, `inspect` documents,
//! `df` figures. Plain serialisable structs: the CLI only formats them.

use serde::Serialize;

use crate::digest::Digest;

/// One row of `lstore images`: one per tag, or one per untagged image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageSummary {
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub id: Digest,
    /// The image's manifest (as `inspect` shows it; for a multi-platform
    /// image, the platform's manifest, not the index).
    pub digest: Digest,
    /// What the registry resolved this name to when it was pulled: an index
    /// or the manifest itself (`docker images --digests`); null for a name
    /// given by load, tag or commit.
    pub repo_digest: Option<Digest>,
    pub created: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlatformInfo {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerInfo {
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub media_type: String,
    pub compressed_size: u64,
    pub size: u64,
    pub path: String,
}

/// `lstore inspect`: the shape DESIGN.md gives, plus `repo_digests` and
/// `index`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageInspect {
    pub id: Digest,
    /// The image's manifest (for a multi-platform image, the platform's).
    pub digest: Digest,
    pub repo_tags: Vec<String>,
    /// `repository@digest` of each pulled name, the digest being what the
    /// registry resolved it to (an index or the manifest), as Docker's
    /// RepoDigests.
    pub repo_digests: Vec<String>,
    /// The index the manifest was chosen from, when it came through one.
    pub index: Option<Digest>,
    pub platform: PlatformInfo,
    pub size: u64,
    pub layers: Vec<LayerInfo>,
    pub lowerdir: String,
}

/// `lstore df`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DiskUsage {
    pub images: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub layers: u64,
    pub layer_bytes: u64,
    /// Bytes of blobs and layers used by more than one image.
    pub shared_bytes: u64,
    /// Bytes of blobs and layers used by exactly one image.
    pub unique_bytes: u64,
    /// Bytes of blobs and layers no image uses (gc frees them).
    pub unused_bytes: u64,
}

/// What a load or pull stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stored {
    pub id: Digest,
    pub digest: Digest,
    pub names: Vec<String>,
    pub layers_new: usize,
    pub layers_reused: usize,
    pub bytes_read: u64,
}

/// What `rmi` or `gc` did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Removal {
    pub untagged: Vec<String>,
    /// Ids (config digests) of the images removed.
    pub deleted_images: Vec<Digest>,
    pub deleted_blobs: u64,
    pub deleted_layers: u64,
    pub freed_bytes: u64,
    /// Leftovers of interrupted commands removed (tmp/, ingest/, links).
    pub leftovers: u64,
    /// Reference counts that disagreed with the mark and were corrected.
    pub refcount_fixes: u64,
    pub dry_run: bool,
    /// Words of `rmi` that named no image (or more than one id); the other
    /// words were acted on.
    pub not_removed: Vec<NotRemoved>,
}

/// A word `rmi` could not act on, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotRemoved {
    pub reference: String,
    pub error: String,
}
