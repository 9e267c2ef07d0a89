//! What the store shows of its images: `images` rows, `inspect` documents,
//! `df` figures. Plain serialisable structs: the CLI only formats them.

use serde::Serialize;

use crate::digest::Digest;

/// One row of `lstore images`: one per tag, or one per untagged image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageSummary {
    /// The repository as Docker shows it (`redis`, `127.0.0.1:5000/x`);
    /// null for an untagged image.
    pub repository: Option<String>,
    /// The tag; null for an untagged image.
    pub tag: Option<String>,
    /// The image id: its config's digest.
    pub id: Digest,
    /// The image's manifest (as `inspect` shows it; for a multi-platform
    /// image, the platform's manifest, not the index).
    pub digest: Digest,
    /// What the registry resolved this name to when it was pulled: an index
    /// or the manifest itself (`docker images --digests`); null for a name
    /// given by load, tag or commit.
    pub repo_digest: Option<Digest>,
    /// When the image was made (RFC 3339), as its config says.
    pub created: Option<String>,
    /// Bytes of its layers' uncompressed tars, as `docker images` shows.
    pub size: u64,
}

/// The platform an image's config names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlatformInfo {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// CPU variant (`v7`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One layer of an inspected image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerInfo {
    /// The layer blob's digest (compressed, as distributed).
    pub digest: Digest,
    /// The uncompressed tar's digest (the config's diff id).
    pub diff_id: Digest,
    /// The chain id, which names the layer's folder.
    pub chain_id: Digest,
    /// The layer blob's media type.
    pub media_type: String,
    /// Bytes of the layer blob.
    pub compressed_size: u64,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// The absolute path of the layer's extracted `diff/` folder.
    pub path: String,
}

/// `lstore inspect`: the shape DESIGN.md gives, plus `repo_digests` and
/// `index`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageInspect {
    /// The image id: its config's digest.
    pub id: Digest,
    /// The image's manifest (for a multi-platform image, the platform's).
    pub digest: Digest,
    /// Every name of the image, as Docker shows them.
    pub repo_tags: Vec<String>,
    /// `repository@digest` of each pulled name, the digest being what the
    /// registry resolved it to (an index or the manifest), as Docker's
    /// RepoDigests.
    pub repo_digests: Vec<String>,
    /// The index the manifest was chosen from, when it came through one.
    pub index: Option<Digest>,
    /// The platform its config names.
    pub platform: PlatformInfo,
    /// Bytes of its layers' uncompressed tars, as `docker images` shows.
    pub size: u64,
    /// Its layers, base first.
    pub layers: Vec<LayerInfo>,
    /// The layers' `diff/` paths joined by `:`, top first: an overlay
    /// mount's `lowerdir=` for the image's root filesystem.
    pub lowerdir: String,
}

/// `lstore df`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DiskUsage {
    /// Images stored.
    pub images: u64,
    /// Blobs stored (indexes, manifests, configs, layer blobs).
    pub blobs: u64,
    /// Bytes of the blobs.
    pub blob_bytes: u64,
    /// Extracted layer folders.
    pub layers: u64,
    /// Bytes of the files in the layer folders.
    pub layer_bytes: u64,
    /// Bytes of blobs and layers used by more than one image.
    pub shared_bytes: u64,
    /// Bytes of blobs and layers used by exactly one image.
    pub unique_bytes: u64,
    /// Bytes of blobs and layers no image uses (gc frees them).
    pub unused_bytes: u64,
    /// Layers no image uses that containerd holds snapshots of
    /// (`lstore snapshotter`): gc keeps them while it does.
    pub containerd_layers: u64,
    /// Bytes of those layers (not counted as unused).
    pub containerd_bytes: u64,
    /// Layer blobs dropped once their layers were stored
    /// (`keep-layer-blobs false`; not counted in `blobs`).
    pub dropped_layer_blobs: u64,
    /// Their compressed size: bytes not stored.
    pub dropped_blob_bytes: u64,
    /// Files (inodes) that two or more layers hold as one, by file sharing.
    pub shared_files: u64,
    /// Bytes file sharing saves: over those inodes, size × (layers holding
    /// it − 1), apparent sizes like `layer_bytes` (which counts every name).
    pub sharing_saved_bytes: u64,
    /// Layers extracted before the content index existed: their files are
    /// neither shared nor linked to (docs/space.md).
    pub unindexed_layers: u64,
}

/// What a load or pull stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stored {
    /// The image id: its config's digest.
    pub id: Digest,
    /// Its manifest's digest.
    pub digest: Digest,
    /// The names it was stored under.
    pub names: Vec<String>,
    /// Layers extracted by this command.
    pub layers_new: usize,
    /// Layers the store already had.
    pub layers_reused: usize,
    /// Bytes of layer blobs read.
    pub bytes_read: u64,
}

/// What `rmi` or `gc` did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Removal {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Ids (config digests) of the images removed.
    pub deleted_images: Vec<Digest>,
    /// Blobs removed.
    pub deleted_blobs: u64,
    /// Layer folders removed.
    pub deleted_layers: u64,
    /// Bytes freed on disk (each file counted once, however many links
    /// it has).
    pub freed_bytes: u64,
    /// Leftovers of interrupted commands removed (tmp/, ingest/, links).
    pub leftovers: u64,
    /// Reference counts that disagreed with the mark and were corrected.
    pub refcount_fixes: u64,
    /// Whether this is what would be done (`gc --dry-run`).
    pub dry_run: bool,
    /// Layer blobs `gc` dropped (`keep-layer-blobs false`; their bytes
    /// are in `freed_bytes`).
    pub dropped_layer_blobs: u64,
    /// Words of `rmi` that named no image (or more than one id); the other
    /// words were acted on.
    pub not_removed: Vec<NotRemoved>,
    /// Layer folders no image uses any more, left in place because a live
    /// overlay mount (of any process) uses them; the first `gc` after the
    /// unmount removes them.
    pub kept_mounted: Vec<KeptLayer>,
}

/// A layer folder kept because a live overlay mount uses it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeptLayer {
    /// The layer's chain id, which names its folder.
    pub chain_id: Digest,
    /// Where a mount that uses it is mounted (as its mount namespace
    /// names it).
    pub mount_point: String,
}

/// A word `rmi` could not act on, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotRemoved {
    /// The word given.
    pub reference: String,
    /// Why nothing was removed for it.
    pub error: String,
}
