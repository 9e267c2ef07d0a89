//! lstore: a content-addressed container image store.
//!
//! Blobs are kept once under their sha256 digest, metadata and reference
//! counts live in RocksDB, and every layer is extracted once into an
//! overlay2-compatible folder named by its chain id. Several processes may
//! use one store root at once: metadata is changed only in short sessions
//! under a lock file, and long work (downloads, extraction) is protected
//! from `gc` by leases.
//!
//! A tool embeds the store through [`Store`]: [`Store::open`] a root, then
//! call its operations — [`pull`](Store::pull), [`push`](Store::push),
//! [`load`](Store::load), [`save`](Store::save), [`images`](Store::images),
//! [`inspect`](Store::inspect), [`tag`](Store::tag), [`rmi`](Store::rmi),
//! [`gc`](Store::gc), [`df`](Store::df), [`fsck`](Store::fsck),
//! [`mount`](Store::mount), [`umount`](Store::umount),
//! [`commit`](Store::commit), and the store's settings
//! ([`config_get`](Store::config_get), [`config_set`](Store::config_set)). Every operation returns a plain result type
//! (serialisable with serde, as the `lstore` command prints it with
//! `--format json`) or an [`Error`]. [`bench`](mod@bench) measures how
//! fast images are stored; [`serve`](mod@serve) serves the store over the
//! OCI distribution API.
//!
//! # Example
//!
//! Pull an image, list the store, mount the image read-only, and remove it
//! again. Most operations need root (layer files keep their owners; mounts
//! are overlay mounts).
//!
//! ```no_run
//! use std::path::Path;
//!
//! use lstore::{NoProgress, PullOptions, Store, StoreOptions};
//!
//! fn main() -> lstore::Result<()> {
//!     let store = Store::open(Path::new("/var/lib/lstore"), StoreOptions::default())?;
//!
//!     // Pull through the registry's index to this host's platform.
//!     let pulled = store.pull("docker.io/library/alpine:3.20", &PullOptions::default(), &NoProgress)?;
//!     println!("pulled {} as image {}", pulled.reference, pulled.id);
//!
//!     for row in store.images()? {
//!         println!("{:?}:{:?} {} {} bytes", row.repository, row.tag, row.id.short(), row.size);
//!     }
//!
//!     // The image's root filesystem, read-only, at an empty directory.
//!     let target = Path::new("/mnt/alpine");
//!     store.mount("alpine:3.20", target, false)?;
//!     println!("{}", std::fs::read_to_string(target.join("etc/os-release")).unwrap_or_default());
//!     store.umount(target)?;
//!
//!     // Untag it; what no other image uses is removed at once.
//!     let removal = store.rmi(&["alpine:3.20".to_string()])?;
//!     println!("freed {} bytes", removal.freed_bytes);
//!     Ok(())
//! }
//! ```
//!
//! The programs under `examples/` in lstore's repository do the same step by
//! step, with progress output.

#![warn(missing_docs)]

// The store's parts. Private: a tool reaches them through `Store` and the
// types re-exported below.
mod archive;
mod commit;
mod content;
mod cstorage;
mod digest;
mod error;
mod frontend;
mod fsck;
mod gc;
mod images;
mod import;
mod layer_blobs;
mod layer_tar;
mod layers;
mod lock;
mod meta;
mod mount;
mod mounts_in_use;
mod oci;
mod platform;
mod pull;
mod push;
mod reference;
mod registry;
mod save;
mod settings;
mod share;
mod store;
mod tarsplit;
mod unpack;

// Public modules: operations that are not methods of a store (a
// benchmark, the distribution API server).
pub mod bench;
pub mod serve;
pub mod snapshotter;
pub mod userns;

// ---- the public surface -----------------------------------------------

pub use crate::commit::Committed;
pub use crate::digest::{Digest, DigestError};
pub use crate::error::{Error, Result};
pub use crate::fsck::{FsckReport, Leftover, Problem};
pub use crate::images::{
    DiskUsage, ImageInspect, ImageSummary, KeptLayer, LayerInfo, NotRemoved, PlatformInfo, Removal,
    Stored,
};
pub use crate::import::{ImportProgress, NoProgress};
pub use crate::mount::MountRecord;
pub use crate::oci::{Compression, Descriptor, DocumentError, Platform};
pub use crate::platform::PlatformError;
pub use crate::pull::{PullOptions, Pulled};
pub use crate::push::{BlobOutcome, NoPushProgress, PushOptions, PushProgress, Pushed, PushedBlob};
pub use crate::reference::{Reference, ReferenceError};
pub use crate::registry::{ClientOptions, DockerConfig, RegistryClient, RegistryError};
pub use crate::settings::Setting;
pub use crate::store::{Store, StoreOptions};
pub use crate::tarsplit::TarSplitError;
pub use crate::unpack::{Limits, UnpackError};

/// Not part of the API: the store's internals, for lstore's own benches
/// (`benches/`) and fuzz targets (`fuzz/`), which measure and fuzz parts
/// no tool calls directly. Anything here may change in any release.
#[doc(hidden)]
pub mod internals {
    /// Digests and chain ids.
    pub mod digest {
        pub use crate::digest::{chain_ids, Hasher, HashingReader};
    }
    /// The import pipeline `load` and `pull` feed.
    pub mod import {
        pub use crate::import::{import, ImportRequest, LayerSource};
    }
    /// Layer folders.
    pub mod layers {
        pub use crate::layers::remove_tree;
    }
    /// The root lock.
    pub mod lock {
        pub use crate::lock::RootLock;
    }
    /// Metadata records and the database.
    pub mod meta {
        pub use crate::meta::{BlobRecord, LayerRecord, Meta, CF_BLOBS, CF_LAYERS};
    }
    /// Image documents and media types.
    pub mod oci {
        pub use crate::oci::{
            parse_document, Document, ImageConfig, Manifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
            OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST,
        };
    }
    /// tar-split records of layers.
    pub mod tarsplit {
        pub use crate::tarsplit::{assemble, ensure_tar_split};
    }
    /// Layer extraction.
    pub mod unpack {
        pub use crate::unpack::unpack_layer;
    }
}
