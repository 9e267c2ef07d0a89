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

pub use auth::{parse_www_authenticate, Challenge};
pub use blobs::{FetchedBlob, MONOLITHIC_UPLOAD_MAX, UPLOAD_CHUNK_SIZE};
pub use client::{ClientOptions, RegistryClient};
pub use credentials::{normalize_registry, Credentials, DockerConfig, DOCKER_HUB_AUTH_KEY};
pub use error::{render_error_body, RegistryError};
pub use manifests::{manifest_accept_header, FetchedManifest, ManifestHead, MAX_MANIFEST_SIZE};
