//! The library's error type: one enum, one line of text per failure.

use std::io;
use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::oci::DocumentError;

/// The result of every fallible operation of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation failed. The text (`Display`) is one line, the one the
/// `lstore` command prints after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system or I/O call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A digest string that does not parse.
    #[error("{0}")]
    Digest(#[from] DigestError),
    /// An image reference that does not parse.
    #[error("{0}")]
    Reference(#[from] crate::reference::ReferenceError),
    /// The metadata database (RocksDB) failed.
    #[error("metadata database: {0}")]
    Db(String),
    /// A metadata record that cannot be read or names what is missing.
    #[error("metadata record {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Content whose sha256 is not the one it was asked for by.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The blob, layer or file checked.
        what: String,
        /// The digest it was named by.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// Content shorter or longer than its descriptor says.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob or layer checked.
        what: String,
        /// The size its descriptor declares.
        expected: u64,
        /// The size read.
        actual: u64,
    },
    /// The source went on past the size its descriptor declares.
    #[error("{what}: size mismatch: expected {expected} bytes, got more")]
    SizeExceeded {
        /// The blob or layer read.
        what: String,
        /// The size its descriptor declares.
        expected: u64,
    },
    /// A layer could not be extracted.
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// Why extraction failed.
        #[source]
        source: crate::unpack::UnpackError,
    },
    /// A layer's tar-split record cannot be made, read or used.
    #[error("{0}")]
    TarSplit(#[from] crate::tarsplit::TarSplitError),
    /// A manifest, index or config that cannot be used.
    #[error("{what}: {source}")]
    Document {
        /// Which document.
        what: String,
        /// What is wrong with it.
        #[source]
        source: DocumentError,
    },
    /// An archive or OCI layout that cannot be loaded.
    #[error("invalid archive {path}: {reason}")]
    Archive {
        /// The archive's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry refused or failed a request (the registry's own words).
    #[error("{0}")]
    Registry(String),
    /// No stored image has this name, id or digest.
    #[error("image not known: {0}")]
    ImageNotFound(String),
    /// A word that names more than one image where one is needed.
    #[error("{word} is ambiguous: {reason}")]
    Ambiguous {
        /// The word given.
        word: String,
        /// Which images it names.
        reason: String,
    },
    /// An argument or input the operation cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// Something lstore does not do (a media type, a schema, a file kind).
    #[error("{0}")]
    Unsupported(String),
    /// A blob an image needs is not in the store: a layer blob can be gone
    /// while its layer is extracted (the image still mounts, and a layer
    /// containerd unpacked has none of its own), but push and save copy
    /// blobs.
    #[error(
        "image {image}: its {kind} blob {blob} is not in the store, and {action} copies \
         blobs: pull or load the image again"
    )]
    BlobMissing {
        /// The image, as the user named it.
        image: String,
        /// `layer`, `config` or `manifest`.
        kind: &'static str,
        /// The blob's digest.
        blob: Digest,
        /// `push` or `save`.
        action: &'static str,
    },
    /// The user namespace of a user without root cannot be used.
    #[error("{0}")]
    UserNamespace(#[from] crate::userns::UsernsError),
    /// The store root cannot be used.
    #[error("store root {path}: {reason}")]
    Root {
        /// The root given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] with what was being done.
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
