//! The byte streams under the tar: the compressed blob hashed to its end,
//! decompressed (after checking the magic bytes agree with the media type),
//! and the uncompressed stream hashed and bounded.

use std::fmt;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read};

use super::pipe::Chunk;
use super::UnpackError;
use crate::digest::{Digest, Hasher, HashingReader};
use crate::oci::Compression;

/// Read buffer over the compressed blob.
const COMPRESSED_BUFFER: usize = 256 * 1024;
/// Size of the chunks of tar stream handed to the extraction thread.
pub(crate) const CHUNK: usize = 1024 * 1024;

/// The blob: its first bytes (already read, to check the magic) replayed in
/// front of the rest, all of it hashed once.
type Compressed<'a> = BufReader<Chain<Cursor<Vec<u8>>, HashingReader<&'a mut dyn Read>>>;

enum Decoder<'a> {
    Plain(Compressed<'a>),
    // Boxed: the inflate state is large next to the other variants.
    Gzip(Box<flate2::bufread::MultiGzDecoder<Compressed<'a>>>),
    Zstd(zstd::stream::read::Decoder<'static, Compressed<'a>>),
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

impl<'a> Decoder<'a> {
    fn into_compressed(self) -> Compressed<'a> {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.finish(),
        }
    }
}

/// Raised through `io::Read` when the uncompressed stream passes the limit,
/// and turned back into `UnpackError::TooLarge` by `read_error`.
#[derive(Debug)]
pub(crate) struct LayerTooLarge(pub(crate) u64);

impl fmt::Display for LayerTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer is larger than {} uncompressed bytes", self.0)
    }
}

impl std::error::Error for LayerTooLarge {}

/// The uncompressed tar stream, counted against the limit. It is hashed
/// by whoever receives it (`pipe`; for an uncompressed layer the blob hash
/// already is the diff id).
pub(crate) struct Uncompressed<'a> {
    decoder: Decoder<'a>,
    len: u64,
    limit: u64,
}

impl Read for Uncompressed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        self.len += n as u64;
        if self.len > self.limit {
            return Err(io::Error::other(LayerTooLarge(self.limit)));
        }
        Ok(n)
    }
}

/// What reading a layer to its end yields.
pub(crate) struct Digests {
    pub compressed_digest: Digest,
    pub compressed_size: u64,
    pub diff_id: Digest,
    pub size: u64,
}

/// Opens the layer's tar stream, refusing a blob whose magic bytes do not
/// match the declared compression.
pub(crate) fn open(
    blob: &mut dyn Read,
    declared: Compression,
    max_size: u64,
) -> Result<Uncompressed<'_>, UnpackError> {
    let mut hashing = HashingReader::new(blob);
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match hashing.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(UnpackError::Read {
                    compression: declared,
                    source: e,
                })
            }
        }
    }
    let found = Compression::sniff(&head[..got]);
    if found != declared {
        return Err(UnpackError::CompressionMismatch { declared, found });
    }
    let compressed: Compressed<'_> = BufReader::with_capacity(
        COMPRESSED_BUFFER,
        Cursor::new(head[..got].to_vec()).chain(hashing),
    );
    let decoder = match declared {
        Compression::None => Decoder::Plain(compressed),
        Compression::Gzip => {
            Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(compressed)))
        }
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(compressed).map_err(|e| {
                UnpackError::Read {
                    compression: declared,
                    source: e,
                }
            })?,
        ),
    };
    Ok(Uncompressed {
        decoder,
        len: 0,
        limit: max_size,
    })
}

impl Uncompressed<'_> {
    /// Appends stream data to `chunk` until it is full or the stream ends.
    /// False when nothing was left to read.
    pub(crate) fn fill_chunk(&mut self, chunk: &mut Chunk) -> io::Result<bool> {
        let start = chunk.len();
        let mut filled = start;
        let space = chunk.space();
        let result = loop {
            if filled == space.len() {
                break Ok(());
            }
            match self.read(&mut space[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.set_len(filled);
        result.map(|()| filled > start)
    }
}

/// The hasher for the tar stream of a layer: none for an uncompressed one,
/// whose blob digest is its diff id.
pub(crate) fn diff_hasher(compression: Compression) -> Option<Hasher> {
    (compression != Compression::None).then(Hasher::new)
}

/// Reads both streams to their ends (data after the tar end marker is part
/// of the diff id, bytes after the compressed stream part of the blob) and
/// returns the digests. `diff` is the hash of the tar stream read so far
/// (from `diff_hasher`).
pub(crate) fn finish(
    mut stream: Uncompressed<'_>,
    compression: Compression,
    mut diff: Option<Hasher>,
) -> Result<Digests, UnpackError> {
    let mut scratch = Chunk::new(CHUNK);
    loop {
        scratch.set_len(0);
        match stream.fill_chunk(&mut scratch) {
            Ok(true) => {
                if let Some(h) = &mut diff {
                    h.update(scratch.data());
                }
            }
            Ok(false) => break,
            Err(e) => return Err(super::read_error(compression, e)),
        }
    }
    let mut compressed = stream.decoder.into_compressed();
    drain(&mut compressed).map_err(|e| UnpackError::Read {
        compression,
        source: e,
    })?;
    let (_, hashing) = compressed.into_inner().into_inner();
    let (compressed_digest, compressed_size) = hashing.finish();
    let (diff_id, size) = match diff {
        Some(h) => (h.finish(), stream.len),
        None => (compressed_digest, compressed_size),
    };
    Ok(Digests {
        compressed_digest,
        compressed_size,
        diff_id,
        size,
    })
}

fn drain(r: &mut impl BufRead) -> io::Result<()> {
    loop {
        let n = match r.fill_buf() {
            Ok(buf) => buf.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        r.consume(n);
    }
}
