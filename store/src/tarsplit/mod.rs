//! tar-split records: what a layer's tar holds besides its files.
//!
//! containers/storage keeps, for every layer, `<id>.tar-split.gz`
//! (vbatts/tar-split's format): a gzip stream of JSON lines, one entry a
//! line, each with an increasing `position`:
//! - type 2, a segment: raw bytes of the tar outside file contents
//!   (headers, PAX and GNU extension records, padding, the end-of-archive
//!   blocks and whatever follows them), base64 in `payload`;
//! - type 1, a file: every tar entry, by `name` (or `name_raw`, base64,
//!   when the name is not UTF-8), with its content `size` and, when it has
//!   content, the CRC-64/ISO of it (Go's `hash/crc64` Sum, big-endian) in
//!   `payload`.
//!
//! The segments and the layer's extracted files together give back the
//! exact uncompressed tar, and so its diff id: `podman save` needs that,
//! and a store that drops compressed blobs can rebuild them from it.
//!
//! lstore writes the record in the extraction pass (the parser reports
//! every byte it reads, content is hashed as it streams by) as
//! `overlay2/<chain-hex>/tar-split.gz`, next to `layer-summary.json` (the
//! uncompressed size and the uid and gid sets, as containers/storage's
//! `layers.json` records them), both inside the staging folder so they
//! appear with the layer. Layers stored before records existed get them
//! from their blob (`ensure_tar_split`).

mod assemble;
mod ensure;
mod read;
mod record;
#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use assemble::assemble;
pub use ensure::ensure_tar_split;
pub(crate) use ensure::regenerate;
pub(crate) use read::{RecordEntry, RecordReader};
pub(crate) use record::Recorder;

use crate::digest::Digest;

/// The record's file name in a layer folder.
pub(crate) const RECORD_FILE: &str = "tar-split.gz";
/// The summary's file name in a layer folder.
pub(crate) const SUMMARY_FILE: &str = "layer-summary.json";

/// tar-split's entry type of a file.
pub(crate) const FILE_TYPE: u8 = 1;
/// tar-split's entry type of a raw segment.
pub(crate) const SEGMENT_TYPE: u8 = 2;

/// What containers/storage's `layers.json` says of a layer's tar besides
/// its digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerSummary {
    /// Bytes of the uncompressed tar (`diff-size`).
    pub(crate) tar_size: u64,
    /// Owners of its entries, whiteouts left out (`uidset`), sorted,
    /// each once.
    pub(crate) uids: Vec<u32>,
    /// Groups of its entries, likewise (`gidset`).
    pub(crate) gids: Vec<u32>,
}

/// Why a record cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TarSplitError {
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The record is not a valid tar-split record.
    #[error("tar-split record {}: entry {position}: {reason}", path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The entry at fault (its index).
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file the record needs is not in the layer (or not reachable
    /// without following a symlink, or not a regular file).
    #[error("layer file {name:?}: {reason}")]
    File {
        /// The entry's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer file's content is not what the record says.
    #[error("layer file {name:?}: content differs from the record ({what})")]
    Mismatch {
        /// The entry's name.
        name: String,
        /// Size or checksum, with both values.
        what: String,
    },
    /// Writing the assembled tar failed.
    #[error("writing the assembled tar: {0}")]
    Output(#[source] io::Error),
    /// A layer with no blob left to make its record from.
    #[error("layer {chain}: no blob of it is in the store to make its tar-split record from")]
    BlobMissing {
        /// The layer's chain id.
        chain: Digest,
    },
    /// No image uses the layer, so nothing says which blob holds it.
    #[error("layer {chain} is not used by any image")]
    UnknownLayer {
        /// The layer's chain id.
        chain: Digest,
    },
    /// The layer's folder is not there.
    #[error("layer {chain} is not extracted")]
    NotExtracted {
        /// The layer's chain id.
        chain: Digest,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> TarSplitError {
    let context = context.into();
    move |source| TarSplitError::Io { context, source }
}

/// Whether an entry name is a whiteout or opaque marker (`.wh.` prefix of
/// its last component, as Go's `path.Base` gives it).
pub(crate) fn is_whiteout_name(name: &[u8]) -> bool {
    let trimmed = match name.iter().rposition(|&b| b != b'/') {
        Some(end) => &name[..=end],
        None => return false,
    };
    let base = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => &trimmed[slash + 1..],
        None => trimmed,
    };
    base.starts_with(crate::unpack::WHITEOUT_PREFIX)
}

/// What the record at `record` (a layer's `tar-split.gz`) says of its tar:
/// read from the summary written beside it, or, when that is missing,
/// worked out from the record itself.
pub(crate) fn summary(record: &Path) -> Result<LayerSummary, TarSplitError> {
    let side = record.with_file_name(SUMMARY_FILE);
    match fs::read(&side) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TarSplitError::Corrupt {
            path: side,
            position: 0,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => summary_from_record(record),
        Err(e) => Err(io_error(format!("read {}", side.display()))(e)),
    }
}

/// The summary kept in layer folder `layer_dir`, if one is there and
/// readable: a small read, where [`summary`] may parse the whole record.
pub(crate) fn stored_summary(layer_dir: &Path) -> Option<LayerSummary> {
    let bytes = fs::read(layer_dir.join(SUMMARY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `summary` as the summary file at `path`.
pub(crate) fn write_summary(
    path: &Path,
    summary: &LayerSummary,
) -> Result<fs::File, TarSplitError> {
    let bytes = serde_json::to_vec(summary).map_err(|e| TarSplitError::Io {
        context: format!("encode {}", path.display()),
        source: io::Error::other(e),
    })?;
    let mut file =
        fs::File::create(path).map_err(io_error(format!("create {}", path.display())))?;
    io::Write::write_all(&mut file, &bytes)
        .map_err(io_error(format!("write {}", path.display())))?;
    Ok(file)
}

/// Works the summary out from the record alone: the tar's headers are
/// parsed from its segments (file contents stand in as zeros).
fn summary_from_record(record: &Path) -> Result<LayerSummary, TarSplitError> {
    let mut tar = BufReader::with_capacity(
        1 << 16,
        VirtualTar {
            record: RecordReader::open(record)?,
            segment: Vec::new(),
            pos: 0,
            zeros: 0,
            error: None,
        },
    );
    let scanned = crate::unpack::scan_ids(&mut tar);
    if let Some(e) = tar.into_inner().error {
        return Err(e);
    }
    let (uids, gids) = scanned.map_err(|e| TarSplitError::Corrupt {
        path: record.to_path_buf(),
        position: 0,
        reason: format!("its segments are not a valid tar: {e}"),
    })?;
    let mut size = 0u64;
    let mut reader = RecordReader::open(record)?;
    while let Some(entry) = reader.next_entry()? {
        size += match entry {
            RecordEntry::Segment(bytes) => bytes.len() as u64,
            RecordEntry::File { size, .. } => size,
        };
    }
    Ok(LayerSummary {
        tar_size: size,
        uids,
        gids,
    })
}

/// The tar a record describes, with every file's content as zeros.
struct VirtualTar {
    record: RecordReader,
    segment: Vec<u8>,
    pos: usize,
    zeros: u64,
    error: Option<TarSplitError>,
}

impl Read for VirtualTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.segment.len() {
                let n = buf.len().min(self.segment.len() - self.pos);
                buf[..n].copy_from_slice(&self.segment[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            match self.record.next_entry() {
                Ok(Some(RecordEntry::Segment(bytes))) => {
                    self.segment = bytes;
                    self.pos = 0;
                }
                Ok(Some(RecordEntry::File { size, .. })) => self.zeros = size,
                Ok(None) => return Ok(0),
                Err(e) => {
                    self.error = Some(e);
                    return Err(io::Error::other("the record cannot be read"));
                }
            }
        }
    }
}

/// Creates the record file of a layer being made in `folder` (the
/// staging folder, or a temporary name for `ensure_tar_split`).
pub(crate) fn create_record(path: &Path) -> Result<Recorder, TarSplitError> {
    let file = fs::File::create(path).map_err(io_error(format!("create {}", path.display())))?;
    Ok(Recorder::new(file))
}

/// Closes a record made in a staging folder `folder` and writes the
/// summary beside it. Nothing is synced: the staging folder is synced
/// whole before it is renamed into place.
pub(crate) fn finish_staged(
    recorder: Recorder,
    folder: &Path,
) -> Result<LayerSummary, TarSplitError> {
    let (_, summary) = recorder.finish().map_err(io_error(format!(
        "write {}",
        folder.join(RECORD_FILE).display()
    )))?;
    write_summary(&folder.join(SUMMARY_FILE), &summary)?;
    Ok(summary)
}
