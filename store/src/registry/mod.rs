//! Distribution API client: manifests and blobs over HTTPS (plain HTTP for
//! loopback registries and with `--plain-http`), with anonymous, Basic and
//! token authentication and Docker's `config.json` credentials.
//!
//! Everything is synchronous (one `ureq` agent, no async runtime); a
//! `RegistryClient` can be shared by threads that download blobs at once.

mod auth;
mod blobs;
mod client;
mod credentials;
mod error;
mod manifests;

#[cfg(test)]
mod tests;

pub use client::{ClientOptions, RegistryClient};
pub use credentials::DockerConfig;
pub use error::RegistryError;
pub(crate) use manifests::MAX_MANIFEST_SIZE;
