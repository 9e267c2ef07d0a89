//! Reading a tar-split record back: the gzip stream of JSON lines that
//! lstore, tar-split's own tools or containers/storage wrote.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{TarSplitError, FILE_TYPE, SEGMENT_TYPE};

/// One entry of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordEntry {
    /// Raw bytes of the tar stream, written out as they are.
    Segment(Vec<u8>),
    /// A tar entry; `size` bytes of its content come from the layer's
    /// files, their CRC-64/ISO big-endian in `crc` (absent when empty).
    File {
        name: Vec<u8>,
        size: u64,
        crc: Option<Vec<u8>>,
    },
}

/// An entry as the JSON has it (tar-split's `storage.Entry`).
#[derive(Deserialize)]
struct JsonEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    position: Option<u64>,
}

/// Entries of a record, in order.
pub(crate) struct RecordReader {
    lines: Box<dyn BufRead>,
    path: PathBuf,
    line: Vec<u8>,
    next_position: u64,
}

impl RecordReader {
    /// Opens the gzip-compressed record at `path`.
    pub(crate) fn open(path: &Path) -> Result<RecordReader, TarSplitError> {
        let file = File::open(path).map_err(|source| TarSplitError::Io {
            context: format!("open {}", path.display()),
            source,
        })?;
        let gz = flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, file));
        Ok(RecordReader {
            lines: Box::new(BufReader::with_capacity(1 << 16, gz)),
            path: path.to_path_buf(),
            line: Vec::new(),
            next_position: 0,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> TarSplitError {
        TarSplitError::Corrupt {
            path: self.path.clone(),
            position: self.next_position,
            reason: reason.into(),
        }
    }

    /// The next entry; None at the end of the record.
    pub(crate) fn next_entry(&mut self) -> Result<Option<RecordEntry>, TarSplitError> {
        loop {
            self.line.clear();
            let n = self
                .lines
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.corrupt(format!("reading the record: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let raw: JsonEntry =
                serde_json::from_slice(&self.line).map_err(|e| self.corrupt(e.to_string()))?;
            if let Some(p) = raw.position {
                if p != self.next_position {
                    return Err(self.corrupt(format!("entry has position {p}")));
                }
            }
            let entry = self.convert(raw)?;
            self.next_position += 1;
            return Ok(Some(entry));
        }
    }

    fn convert(&self, raw: JsonEntry) -> Result<RecordEntry, TarSplitError> {
        let decode = |what: &str, text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| self.corrupt(format!("{what} is not base64: {e}")))
        };
        let payload = raw
            .payload
            .as_deref()
            .map(|p| decode("payload", p))
            .transpose()?;
        match raw.kind {
            SEGMENT_TYPE => Ok(RecordEntry::Segment(payload.unwrap_or_default())),
            FILE_TYPE => {
                let name = match (&raw.name_raw, raw.name) {
                    (Some(r), _) if !r.is_empty() => decode("name_raw", r)?,
                    (_, Some(n)) => n.into_bytes(),
                    _ => Vec::new(),
                };
                let size = u64::try_from(raw.size)
                    .map_err(|_| self.corrupt(format!("negative size {}", raw.size)))?;
                Ok(RecordEntry::File {
                    name,
                    size,
                    crc: payload.filter(|p| !p.is_empty()),
                })
            }
            other => Err(self.corrupt(format!("unknown entry type {other}"))),
        }
    }
}
