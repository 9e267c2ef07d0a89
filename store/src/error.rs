//! The library's error type: one enum, one line of text per failure.

use std::io;
use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::oci::DocumentError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Digest(#[from] DigestError),
    #[error("{0}")]
    Reference(#[from] crate::reference::ReferenceError),
    #[error("metadata database: {0}")]
    Db(String),
    #[error("metadata record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// The source went on past the size its descriptor declares.
    #[error("{what}: size mismatch: expected {expected} bytes, got more")]
    SizeExceeded { what: String, expected: u64 },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: String,
        #[source]
        source: crate::unpack::UnpackError,
    },
    #[error("{what}: {source}")]
    Document {
        what: String,
        #[source]
        source: DocumentError,
    },
    #[error("invalid archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("{0}")]
    Registry(String),
    #[error("image not known: {0}")]
    ImageNotFound(String),
    /// A word that names more than one image where one is needed.
    #[error("{word} is ambiguous: {reason}")]
    Ambiguous { word: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("store root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Error {
        Error::Db(e.into_string())
    }
}

/// Attaches a path or action to an io::Error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
