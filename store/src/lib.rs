//! lstore: a content-addressed container image store.
//!
//! Blobs are kept once under their sha256 digest, metadata and reference
//! counts live in RocksDB, and every layer is extracted once into an
//! overlay2-compatible folder named by its chain id.

pub mod digest;
pub mod oci;
pub mod platform;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod unpack;

pub use digest::Digest;
pub use reference::Reference;
pub mod archive;
pub mod commit;
pub mod content;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod import;
pub mod layers;
pub mod lock;
pub mod meta;
pub mod mount;
pub mod save;
pub mod serve;
pub mod store;

pub use error::{Error, Result};
pub use store::{Store, StoreOptions};
