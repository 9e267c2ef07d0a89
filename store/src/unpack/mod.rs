//! Layer extraction: decompress, hash and apply a layer tar safely.
//!
//! [`unpack_layer`] reads a layer blob once: it hashes the compressed bytes
//! (the manifest digest), decompresses them, hashes the tar stream (the
//! config's diff id) and applies every entry to an empty directory that
//! becomes the layer's overlay2 `diff/`.
//!
//! The parts, one concern each:
//! - `decompress`: magic-byte check, gzip/zstd decoding, both digests, the
//!   uncompressed size limit;
//! - `tar_reader`: a streaming tar parser with bounded extension headers and
//!   no parser differential on sizes (the PAX size always wins);
//! - `path`: name normalisation and the whiteout naming rules;
//! - `apply`: fd-relative creation that never follows a symlink and never
//!   leaves the layer directory, whiteouts, metadata;
//! - `pipe`: the calling thread reads, decompresses and hashes while a
//!   second thread parses and writes, so inflation and file creation
//!   overlap;
//! - `writeback`: starts writing file data to disk as soon as it is
//!   written, so the layer's final `syncfs` has little left to wait for.
//!
//! The parser also reports every byte it reads to a tar-split record when
//! asked ([`unpack_layer_recorded`], `crate::tarsplit`): headers and
//! padding as they are read, content hashed (CRC-64) as it streams by.

mod apply;
mod decompress;
mod files;
mod path;
mod pipe;
mod tar_reader;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testtar;
mod writeback;

use std::collections::BTreeSet;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, CWD};

use crate::digest::{Digest, Hasher};
use crate::oci::Compression;
use crate::share::{Prelinker, Written};
use crate::tarsplit::{self, LayerSummary, Recorder, TarSplitError};
use crate::userns::OverlayXattrs;

/// What an extraction does for file sharing (`crate::share`).
#[derive(Clone, Default)]
pub(crate) enum Sharing {
    /// Nothing.
    #[default]
    Off,
    /// Every file written is noted, hashed.
    Note,
    /// Noted, and a small file another layer holds is linked to instead
    /// of written (`share::prelink`).
    Prelink(Arc<Prelinker>),
}

pub(crate) use apply::{dir_open_flags, open_file_beneath, resolve_beneath, OpenError};
pub(crate) use path::{normalize, WHITEOUT_PREFIX};

/// Bounds on what one layer may make us read and create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest PAX extended header or GNU long name/link data, in bytes.
    pub max_header_bytes: u64,
    /// Largest uncompressed tar stream, in bytes (decompression bombs).
    pub max_layer_size: u64,
    /// Most entries (files, directories, links, whiteouts, ...) per layer.
    pub max_entries: u64,
    /// Which overlay xattrs mark opaque directories: the store's flavour
    /// (`Store::open` sets it).
    pub overlay_xattrs: OverlayXattrs,
    /// An owner that cannot be set goes to `user.containers.override_stat`
    /// instead of failing the layer (`Store::open` sets it).
    pub ignore_chown_errors: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // What Go's archive/tar allows since CVE-2022-2879.
            max_header_bytes: 1 << 20,
            max_layer_size: 64 << 30,
            max_entries: 10_000_000,
            overlay_xattrs: OverlayXattrs::Trusted,
            ignore_chown_errors: false,
        }
    }
}

/// Where a layer sits in its chain, which decides what its whiteouts do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPosition {
    /// The first layer (no parent): its whiteouts and opaque markers have
    /// nothing below to hide, so they are skipped, as umoci does. A
    /// one-layer image is a bind mount of this folder, where an overlay
    /// whiteout would show as a 0/0 character device.
    Base,
    /// A layer over parents: whiteouts become overlay whiteouts and opaque
    /// markers the overlay opaque xattr.
    Upper,
}

/// The result of extracting one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the blob as read, to its end.
    pub compressed_digest: Digest,
    /// Bytes of the blob.
    pub compressed_size: u64,
    /// sha256 of the uncompressed tar stream, to its end.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    /// Entries applied (extension headers not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub file_bytes: u64,
}

/// Why a layer could not be extracted. The message names the tar entry
/// where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer's folder cannot be opened.
    #[error("cannot open layer directory {}: {source}", path.display())]
    Destination {
        /// The layer's folder.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// Writing extracted data back to disk failed (reported by a
    /// background `syncfs`): the disk, not the layer, is at fault.
    #[error("writing layer directory {} to disk: {source}", path.display())]
    WriteBack {
        /// The layer's folder.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The blob's first bytes are not the compression its media type says.
    #[error("{}", mismatch_message(*declared, *found))]
    CompressionMismatch {
        /// What the media type says.
        declared: Compression,
        /// What the magic bytes say.
        found: Compression,
    },
    /// The layer's bytes could not be read or decompressed.
    #[error("reading {} layer data: {source}", stream_name(*compression))]
    Read {
        /// The layer's compression.
        compression: Compression,
        /// The read or decompression error.
        source: io::Error,
    },
    /// The uncompressed tar is larger than [`Limits::max_layer_size`].
    #[error("layer is larger than the limit of {limit} uncompressed bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The tar has more entries than [`Limits::max_entries`].
    #[error("layer has more than the limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The stream is not a valid tar.
    #[error("invalid tar at byte {offset}: {reason}")]
    InvalidTar {
        /// Where in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A PAX header or long name larger than [`Limits::max_header_bytes`].
    #[error(
        "tar entry {path:?}: {kind} of {size} bytes is larger than the limit of {limit} bytes"
    )]
    HeaderTooLarge {
        /// The entry's name, as far as known.
        path: String,
        /// Which header.
        kind: &'static str,
        /// Its size, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// An entry whose header makes no sense.
    #[error("tar entry {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's name.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry that would write outside the layer (or through a link).
    #[error("tar entry {path:?}: refused: {reason}")]
    Unsafe {
        /// The entry's name.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// An entry of a kind lstore does not extract.
    #[error("tar entry {path:?}: unsupported {what}")]
    Unsupported {
        /// The entry's name.
        path: String,
        /// What is not supported.
        what: String,
    },
    /// Creating an entry failed.
    #[error("tar entry {path:?}: {action}: {source}")]
    Fs {
        /// The entry's name.
        path: String,
        /// What was being done.
        action: String,
        /// The system's error.
        source: io::Error,
    },
    /// An I/O error outside any entry, for callers that read layer streams
    /// themselves.
    #[error("reading layer: {0}")]
    Io(#[from] io::Error),
    /// The layer's tar-split record could not be written.
    #[error("tar-split record: {0}")]
    Record(#[from] TarSplitError),
}

fn stream_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "uncompressed",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

fn mismatch_message(declared: Compression, found: Compression) -> String {
    match declared {
        Compression::None => format!(
            "layer declared uncompressed but is {} data",
            stream_name(found)
        ),
        _ => format!(
            "layer declared {0} but is not {0} data",
            stream_name(declared)
        ),
    }
}

/// An error reading the tar stream: the size limit, or the stream itself.
fn read_error(compression: Compression, e: io::Error) -> UnpackError {
    if let Some(decompress::LayerTooLarge(limit)) =
        e.get_ref().and_then(|inner| inner.downcast_ref())
    {
        return UnpackError::TooLarge { limit: *limit };
    }
    UnpackError::Read {
        compression,
        source: e,
    }
}

/// Reads a whole layer blob, hashing the compressed bytes (to EOF),
/// decompressing (declared = what the media type says; the magic bytes must
/// agree), hashing the uncompressed tar stream to EOF (the diff id covers
/// data after the end-of-archive blocks too), and applying the tar into
/// `dest`, an existing empty directory (the layer's future `diff/`).
///
/// The caller compares the digests with the manifest and config, and
/// removes `dest` on error.
///
/// The layer is treated as an upper layer (whiteouts are kept); see
/// `unpack_layer_at` for a base layer.
pub fn unpack_layer(
    blob: &mut dyn Read,
    declared: Compression,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    unpack_layer_at(blob, declared, dest, limits, LayerPosition::Upper)
}

/// [`unpack_layer`] for a layer at `position` in its chain.
pub fn unpack_layer_at(
    blob: &mut dyn Read,
    declared: Compression,
    dest: &Path,
    limits: &Limits,
    position: LayerPosition,
) -> Result<Unpacked, UnpackError> {
    let workers = apply::file_workers();
    unpack_with_workers(
        blob,
        declared,
        dest,
        limits,
        position,
        workers,
        None,
        Sharing::Off,
    )
    .map(|(unpacked, _, _)| unpacked)
}

/// [`unpack_layer_at`] that also writes the layer's tar-split record
/// (`tar-split.gz`) and its summary into `folder`, the layer folder being
/// staged (`dest` is its `diff/`). Nothing is synced here: the staged
/// folder is synced whole before it is renamed into place. The files
/// written are noted, hashed, for file sharing (`crate::share`); with
/// `prelink`, small files other layers hold are linked instead of written.
pub(crate) fn unpack_layer_recorded(
    blob: &mut dyn Read,
    declared: Compression,
    dest: &Path,
    limits: &Limits,
    position: LayerPosition,
    folder: &Path,
    prelink: Option<Arc<Prelinker>>,
) -> Result<(Unpacked, LayerSummary, Written), UnpackError> {
    let recorder = tarsplit::create_record(&folder.join(tarsplit::RECORD_FILE))?;
    let workers = apply::file_workers();
    let (unpacked, recorder, written) = unpack_with_workers(
        blob,
        declared,
        dest,
        limits,
        position,
        workers,
        Some(recorder),
        prelink.map_or(Sharing::Note, Sharing::Prelink),
    )?;
    let recorder = recorder.ok_or_else(|| {
        UnpackError::Record(TarSplitError::Io {
            context: "the tar-split record was lost".into(),
            source: io::Error::other("no record"),
        })
    })?;
    let summary = tarsplit::finish_staged(recorder, folder)?;
    Ok((unpacked, summary, written.unwrap_or_default()))
}

/// Reads a layer blob to its end like [`unpack_layer_at`] but creates no
/// file: only `record` is made (its trailing data included). Returns the
/// digests, with no entries or file bytes counted.
pub(crate) fn disassemble_layer(
    blob: &mut dyn Read,
    declared: Compression,
    limits: &Limits,
    record: Recorder,
) -> Result<(Unpacked, Recorder), UnpackError> {
    let mut stream = decompress::open(blob, declared, limits.max_layer_size)?;
    let mut hashing = HashingStream {
        stream: &mut stream,
        hasher: decompress::diff_hasher(declared),
    };
    let record = {
        let buffered = io::BufReader::with_capacity(decompress::CHUNK, &mut hashing);
        let mut tar = tar_reader::TarReader::new(buffered, declared, limits.max_header_bytes)
            .with_record(record);
        let mut entries = 0u64;
        while tar.next_entry()?.is_some() {
            entries += 1;
            if entries > limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
        }
        tar.finish_record()?
    };
    let record = record.ok_or_else(|| {
        UnpackError::Record(TarSplitError::Io {
            context: "the tar-split record was lost".into(),
            source: io::Error::other("no record"),
        })
    })?;
    let hasher = hashing.hasher;
    let digests = decompress::finish(stream, declared, hasher)?;
    Ok((
        Unpacked {
            compressed_digest: digests.compressed_digest,
            compressed_size: digests.compressed_size,
            diff_id: digests.diff_id,
            size: digests.size,
            entries: 0,
            file_bytes: 0,
        },
        record,
    ))
}

/// The uncompressed stream, hashed as it is read (the diff id).
struct HashingStream<'s, 'b> {
    stream: &'s mut decompress::Uncompressed<'b>,
    hasher: Option<Hasher>,
}

impl Read for HashingStream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The owners and groups of a tar's entries, whiteouts left out (as
/// containers/storage's uid and gid sets), each sorted and once.
pub(crate) fn scan_ids(tar: impl BufRead) -> Result<(Vec<u32>, Vec<u32>), UnpackError> {
    let mut reader =
        tar_reader::TarReader::new(tar, Compression::None, Limits::default().max_header_bytes);
    let (mut uids, mut gids) = (BTreeSet::new(), BTreeSet::new());
    while let Some(entry) = reader.next_entry()? {
        if !tarsplit::is_whiteout_name(&entry.name) {
            uids.insert(entry.uid);
            gids.insert(entry.gid);
        }
    }
    Ok((uids.into_iter().collect(), gids.into_iter().collect()))
}

/// [`unpack_layer_at`] with `workers` threads creating small files (0: all
/// on the extraction thread); `sharing`: what to do for file sharing.
#[allow(clippy::too_many_arguments)]
fn unpack_with_workers(
    blob: &mut dyn Read,
    declared: Compression,
    dest: &Path,
    limits: &Limits,
    position: LayerPosition,
    workers: usize,
    record: Option<Recorder>,
    sharing: Sharing,
) -> Result<(Unpacked, Option<Recorder>, Option<Written>), UnpackError> {
    let destination = |source: io::Error| UnpackError::Destination {
        path: dest.to_path_buf(),
        source,
    };
    let root = rustix::fs::openat(
        CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| destination(e.into()))?;
    // Opened before anything is written, so its syncfs reports every
    // write-back error of the extraction.
    let flush_fd = root.try_clone().map_err(destination)?;
    let applier =
        apply::Applier::new(root, position, workers, sharing, limits).map_err(destination)?;
    let mut stream = decompress::open(blob, declared, limits.max_layer_size)?;

    // The blob reader need not be Send, so this thread reads, hashes the
    // blob and decompresses, while a second one hashes the tar stream,
    // parses it and hands the files to the file pool (or writes them), and
    // a third, mostly waiting, starts writing them back to disk.
    let (sender, reader) = pipe::pipe(decompress::diff_hasher(declared));
    let (flusher, flush_requests) = writeback::flusher();
    let (read_result, applied, flushed) = std::thread::scope(|scope| {
        let flush = scope.spawn(move || writeback::flush_loop(flush_fd, flush_requests));
        let worker =
            scope.spawn(move || apply_tar(reader, applier, flusher, declared, limits, record));
        let mut read_result = Ok(());
        loop {
            let mut chunk = sender.buffer(decompress::CHUNK);
            match stream.fill_chunk(&mut chunk) {
                Ok(true) => {
                    if sender.chunks.send(chunk).is_err() {
                        // The worker stopped on an error it reports below
                        // (past the end of the archive it still receives).
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    read_result = Err(read_error(declared, e));
                    break;
                }
            }
        }
        drop(sender);
        let applied = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let flushed = flush
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read_result, applied, flushed)
    });
    // A read error comes first: it is why the worker saw a truncated tar.
    read_result?;
    let (entries, file_bytes, diff_hasher, record, written) = applied?;
    flushed.map_err(|source| UnpackError::WriteBack {
        path: dest.to_path_buf(),
        source,
    })?;
    // Whatever follows the end-of-archive marker is part of the digests.
    let digests = decompress::finish(stream, declared, diff_hasher)?;
    let unpacked = Unpacked {
        compressed_digest: digests.compressed_digest,
        compressed_size: digests.compressed_size,
        diff_id: digests.diff_id,
        size: digests.size,
        entries,
        file_bytes,
    };
    Ok((unpacked, record, written))
}

/// What an entry costs to write back besides its data, in bytes.
const ENTRY_COST: u64 = 4096;

/// What the extraction thread gives back: entries, file bytes, the hash
/// of the whole tar stream, the record of it and the files noted.
type Applied = (u64, u64, Option<Hasher>, Option<Recorder>, Option<Written>);

/// The extraction thread: parses the tar stream and applies every entry,
/// then receives the rest of the stream (into the record too, when one is
/// made).
fn apply_tar(
    stream: pipe::ChunkReader,
    mut applier: apply::Applier,
    mut flusher: writeback::Flusher,
    declared: Compression,
    limits: &Limits,
    record: Option<Recorder>,
) -> Result<Applied, UnpackError> {
    let mut tar = tar_reader::TarReader::new(stream, declared, limits.max_header_bytes);
    if let Some(record) = record {
        tar = tar.with_record(record);
    }
    let mut entries = 0u64;
    let mut file_bytes = 0u64;
    while let Some(entry) = tar.next_entry()? {
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let written = applier.apply(entry, &mut tar)?;
        file_bytes += written;
        // An inode, a directory entry and a partial block: about a block.
        flusher.extracted(written + ENTRY_COST);
    }
    let written = applier.finish()?;
    flusher.finish();
    let record = tar.finish_record()?;
    // Whatever follows the end-of-archive marker is part of the diff id.
    let diff_hasher = tar.into_inner().finish();
    Ok((entries, file_bytes, diff_hasher, record, written))
}
