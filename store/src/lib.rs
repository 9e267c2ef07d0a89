//! lstore: a content-addressed container image store.
//!
//! Blobs are kept once under their sha256 digest, metadata and reference
//! counts live in RocksDB, and every layer is extracted once into an
//! overlay2-compatible folder named by its chain id.

pub mod digest;
pub mod oci;
pub mod platform;
pub mod reference;
pub mod unpack;

pub use digest::Digest;
