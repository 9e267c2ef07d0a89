//! Hands the uncompressed tar stream from the reading thread (which reads,
//! hashes the blob and decompresses) to the extraction thread (which hashes
//! the tar stream, parses it and writes files), in large chunks whose
//! buffers are recycled. Hashing the tar stream on the receiving side
//! splits the two sha256 passes of a compressed layer between the threads.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use crate::digest::Hasher;

/// Chunks queued between the threads: enough to ride out bursts of small
/// files on one side or slow inflation on the other.
pub(crate) const CHUNKS_IN_FLIGHT: usize = 4;

/// A piece of the stream: the first `len` bytes of `buf`. The whole of
/// `buf` stays initialised as it travels back and forth, so a recycled
/// buffer is filled again without being zeroed first.
pub(crate) struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl Chunk {
    /// A zeroed buffer of `capacity` bytes, holding no data yet.
    pub(crate) fn new(capacity: usize) -> Chunk {
        Chunk {
            buf: vec![0; capacity],
            len: 0,
        }
    }

    /// The data.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The data held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The whole buffer, to fill from `len()` on, and its size.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Marks the first `len` bytes of `space()` as the data.
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len());
    }
}

/// The extraction side: a `BufRead` over the received chunks. The end of
/// the stream is the sender going away.
pub(crate) struct ChunkReader {
    chunks: Receiver<Chunk>,
    spare: Sender<Chunk>,
    current: Chunk,
    pos: usize,
    /// Hashes every chunk as it arrives, whether or not it is read.
    hasher: Option<Hasher>,
}

impl ChunkReader {
    pub(crate) fn new(
        chunks: Receiver<Chunk>,
        spare: Sender<Chunk>,
        hasher: Option<Hasher>,
    ) -> ChunkReader {
        ChunkReader {
            chunks,
            spare,
            current: Chunk::new(0),
            pos: 0,
            hasher,
        }
    }

    /// Receives (and hashes) whatever the sender still sends, to the end
    /// of the stream, and returns the hash of all of it.
    pub(crate) fn finish(mut self) -> Option<Hasher> {
        while let Ok(next) = self.chunks.recv() {
            if let Some(h) = &mut self.hasher {
                h.update(next.data());
            }
            let _ = self.spare.send(next);
        }
        self.hasher
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(next) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(next.data());
                    }
                    let used = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    // The reading side may have finished: then the buffer
                    // is simply dropped.
                    if !used.buf.is_empty() {
                        let _ = self.spare.send(used);
                    }
                }
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.current.data()[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.len());
    }
}

/// The reading side's end of the pipe.
pub(crate) struct ChunkSender {
    pub(crate) chunks: SyncSender<Chunk>,
    pub(crate) spare: Receiver<Chunk>,
}

impl ChunkSender {
    /// An empty chunk to fill: a recycled one when there is one.
    pub(crate) fn buffer(&self, capacity: usize) -> Chunk {
        match self.spare.try_recv() {
            Ok(mut chunk) => {
                chunk.set_len(0);
                chunk
            }
            Err(_) => Chunk::new(capacity),
        }
    }
}

/// A connected pair; the reader hashes the stream with `hasher`.
pub(crate) fn pipe(hasher: Option<Hasher>) -> (ChunkSender, ChunkReader) {
    let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel();
    (
        ChunkSender {
            chunks: chunks_tx,
            spare: spare_rx,
        },
        ChunkReader::new(chunks_rx, spare_tx, hasher),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_the_stream_and_recycles_buffers() {
        let (tx, mut rx) = pipe(Some(Hasher::new()));
        let writer = std::thread::spawn(move || {
            for i in 0..10u8 {
                let mut chunk = tx.buffer(16);
                assert_eq!(chunk.space().len(), 16);
                chunk.space()[..3].copy_from_slice(&[i; 3]);
                chunk.set_len(3);
                tx.chunks.send(chunk).unwrap();
            }
        });
        // Half of it read, the rest only received: all of it is hashed.
        let mut half = vec![0u8; 15];
        rx.read_exact(&mut half).unwrap();
        let hasher = rx.finish().unwrap();
        writer.join().unwrap();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(half, expected[..15]);
        assert_eq!(hasher.finish(), crate::digest::Digest::of(&expected));
    }
}
