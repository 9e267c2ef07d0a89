//! Fixtures and helpers shared by the integration tests. Everything is made
//! locally (no network): layers, images, layouts, archives; the real
//! `lstore` binary, umoci, skopeo and overlayfs are then run on them.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod checks;
pub mod clients;
pub mod cri;
pub mod image;
pub mod lstore;
pub mod mount;
pub mod peers;
pub mod registry;
pub mod scenes;
pub mod serve;
pub mod tarball;
pub mod tree;

#[allow(unused_imports)]
pub use image::{ImageBuilder, LayoutNames, ManifestKind};
#[allow(unused_imports)]
pub use lstore::Lstore;
#[allow(unused_imports)]
pub use mount::RootfsMount;
#[allow(unused_imports)]
pub use tarball::{Compression, TarBuilder};

/// A fresh scratch directory for fixtures.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lstore-fixture-")
        .tempdir()
        .expect("scratch dir")
}
