//! The blob store: `blobs/sha256/<hex>`, every blob exactly as distributed.
//!
//! A blob is written to a temporary file under `ingest/`, hashed as it is
//! written, fsynced, checked against the expected digest and size, and only
//! then renamed into place. A blob already present is never written again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// `dir` is `<root>/blobs/sha256`, `ingest` is `<root>/ingest`.
    pub fn new(dir: PathBuf, ingest: PathBuf) -> ContentStore {
        ContentStore { dir, ingest }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The blob's size on disk, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    pub fn open(&self, digest: &Digest) -> Result<File> {
        File::open(self.path(digest)).ctx(|| format!("open blob {digest}"))
    }

    /// The compression of layer blob `digest`: what its media type says,
    /// else what its first bytes show.
    pub(crate) fn layer_compression(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<crate::oci::Compression> {
        if let Some(c) = crate::oci::Compression::from_layer_media_type(media_type) {
            return Ok(c);
        }
        let mut head = [0u8; 8];
        let n = self
            .open(digest)?
            .read(&mut head)
            .ctx(|| format!("read blob {digest}"))?;
        Ok(crate::oci::Compression::sniff(&head[..n]))
    }

    /// Reads a small blob (manifest, config) whole, refusing more than `max`.
    pub fn read(&self, digest: &Digest, max: u64) -> Result<Vec<u8>> {
        let file = self.open(digest)?;
        let mut data = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut data)
            .ctx(|| format!("read blob {digest}"))?;
        if data.len() as u64 > max {
            return Err(Error::Invalid(format!(
                "blob {digest} is larger than {max} bytes"
            )));
        }
        Ok(data)
    }

    /// Starts writing a blob. `name` (unique per command, starting with the
    /// command's lease id) names the temporary file under `ingest/`.
    pub fn writer(&self, name: &str) -> Result<BlobWriter> {
        let path = self.ingest.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .ctx(|| format!("create {}", path.display()))?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            path,
            hasher: Some(Hasher::new()),
            received: 0,
            dir: self.dir.clone(),
            skip: 0,
            keep: false,
        })
    }

    /// Takes over the partial download of `digest` that a command which
    /// died (or failed on a broken connection) left in `ingest/`, renaming
    /// it to `name`. Returns a writer that appends to it and the bytes it
    /// holds; the caller feeds those bytes again (read back from the file),
    /// and the writer only hashes them. `is_live` tells whether a lease id
    /// belongs to a running command (whose partial is not taken).
    pub fn claim_partial(
        &self,
        digest: &Digest,
        name: &str,
        is_live: &dyn Fn(&str) -> bool,
    ) -> Result<Option<(BlobWriter, u64)>> {
        let suffix = format!(".partial-{}", digest.hex());
        let Ok(entries) = fs::read_dir(&self.ingest) else {
            return Ok(None);
        };
        let path = self.ingest.join(name);
        for entry in entries.flatten() {
            let other = entry.file_name().to_string_lossy().into_owned();
            let Some(lease) = other.strip_suffix(&suffix) else {
                continue;
            };
            if is_live(lease) || fs::rename(entry.path(), &path).is_err() {
                continue;
            }
            let file = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .ctx(|| format!("open {}", path.display()))?;
            let held = file
                .metadata()
                .ctx(|| format!("stat {}", path.display()))?
                .len();
            return Ok(Some((
                BlobWriter {
                    file: io::BufWriter::with_capacity(1 << 20, file),
                    path,
                    hasher: Some(Hasher::new()),
                    received: 0,
                    dir: self.dir.clone(),
                    skip: held,
                    keep: false,
                },
                held,
            )));
        }
        Ok(None)
    }

    /// Where an ingest entry lives.
    pub fn ingest_path(&self, name: &str) -> PathBuf {
        self.ingest.join(name)
    }

    /// The ingest name under which a download of `digest` can be resumed.
    pub fn partial_name(lease_id: &str, digest: &Digest) -> String {
        format!("{lease_id}.partial-{}", digest.hex())
    }

    /// Stores bytes held in memory, verifying them against `expected`.
    pub fn put_bytes(&self, name: &str, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let digest = Digest::of(data);
        if let Some(e) = expected {
            if *e != digest {
                return Err(Error::DigestMismatch {
                    what: format!("blob {name}"),
                    expected: *e,
                    actual: digest,
                });
            }
        }
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer(name)?;
        w.write_all(data).ctx(|| format!("write blob {digest}"))?;
        w.commit(Some(&digest), Some(data.len() as u64))?;
        Ok(digest)
    }

    /// Removes a blob; a blob already gone is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(format!("remove blob {digest}"), e)),
        }
    }

    /// Every blob on disk (names that are not digests are returned as junk).
    pub fn list(&self) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
        let mut digests = Vec::new();
        let mut junk = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((digests, junk)),
            Err(e) => return Err(Error::io(format!("read {}", self.dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", self.dir.display()))?;
            match entry.file_name().to_str().and_then(Digest::from_hex) {
                Some(d) => digests.push(d),
                None => junk.push(entry.path()),
            }
        }
        Ok((digests, junk))
    }
}

/// A blob being written. Dropped without `commit`, its temp file is removed.
pub struct BlobWriter {
    file: io::BufWriter<File>,
    path: PathBuf,
    /// `None` once the caller took over hashing (`hashed_by_caller`).
    hasher: Option<Hasher>,
    /// Bytes given to the writer, skipped ones included.
    received: u64,
    dir: PathBuf,
    /// Bytes already in the file (a resumed download): hashed, not written.
    skip: u64,
    /// Leave the file for a later resume instead of deleting it.
    keep: bool,
}

impl BlobWriter {
    /// Gives up on the blob for now but leaves what was downloaded in
    /// `ingest/`, for the next command to resume (gc removes it otherwise).
    pub fn keep_partial(mut self) {
        if self.file.flush().is_ok() && self.skip == 0 {
            self.keep = true;
        }
    }

    pub fn written(&self) -> u64 {
        self.received
    }

    /// The caller hashes every byte it gives this writer (the layer
    /// pipeline does, for the manifest digest) and passes the digest to
    /// `commit_hashed`: one sha256 of a blob instead of two.
    pub fn hashed_by_caller(&mut self) {
        self.hasher = None;
    }

    /// Flushes, fsyncs and verifies the blob, then renames it into place.
    /// Returns its digest and size.
    pub fn commit(self, expected: Option<&Digest>, size: Option<u64>) -> Result<(Digest, u64)> {
        self.commit_with(expected, size, |_| Ok(()))
    }

    /// `commit`, calling `before_rename` with the digest once it is known
    /// and verified, just before the blob becomes visible (to protect it
    /// from gc when the digest was not known in advance).
    pub fn commit_with(
        self,
        expected: Option<&Digest>,
        size: Option<u64>,
        before_rename: impl FnOnce(&Digest) -> Result<()>,
    ) -> Result<(Digest, u64)> {
        self.finish(None, expected, size, before_rename)
    }

    /// `commit_with` for a writer whose bytes the caller hashed: `digest`
    /// is the sha256 of exactly the bytes given to it.
    pub fn commit_hashed(
        self,
        digest: Digest,
        expected: Option<&Digest>,
        size: Option<u64>,
        before_rename: impl FnOnce(&Digest) -> Result<()>,
    ) -> Result<(Digest, u64)> {
        self.finish(Some(digest), expected, size, before_rename)
    }

    fn finish(
        mut self,
        hashed: Option<Digest>,
        expected: Option<&Digest>,
        size: Option<u64>,
        before_rename: impl FnOnce(&Digest) -> Result<()>,
    ) -> Result<(Digest, u64)> {
        self.file
            .flush()
            .ctx(|| format!("write {}", self.path.display()))?;
        if self.skip > 0 {
            return Err(Error::Invalid(format!(
                "{}: resumed download ended before its first {} bytes were read back",
                self.path.display(),
                self.skip
            )));
        }
        let len = self.received;
        let digest = match (hashed, self.hasher.take()) {
            (Some(d), _) => d,
            (None, Some(hasher)) => hasher.finish(),
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "{}: committed without a digest although the caller hashed it",
                    self.path.display()
                )))
            }
        };
        // The size first: a blob of the wrong length has the wrong digest
        // too, and its length says more about what went wrong.
        if let Some(s) = size {
            if s != len {
                return Err(Error::SizeMismatch {
                    what: format!("blob {}", expected.unwrap_or(&digest)),
                    expected: s,
                    actual: len,
                });
            }
        }
        if let Some(e) = expected {
            if *e != digest {
                return Err(Error::DigestMismatch {
                    what: "blob".into(),
                    expected: *e,
                    actual: digest,
                });
            }
        }
        before_rename(&digest)?;
        let target = self.dir.join(digest.hex());
        if target.is_file() {
            return Ok((digest, len));
        }
        self.file
            .get_ref()
            .sync_all()
            .ctx(|| format!("fsync {}", self.path.display()))?;
        fs::rename(&self.path, &target).ctx(|| format!("store blob {digest}"))?;
        sync_dir(&self.dir)?;
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.skip > 0 {
            let k = buf
                .len()
                .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..k]);
            }
            self.skip -= k as u64;
            self.received += k as u64;
            return Ok(k);
        }
        let n = self.file.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.received += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful rename this path no longer exists.
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What was wrong with the length of a blob read through a [`SizedReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeProblem {
    /// The source ended after this many bytes.
    Shorter(u64),
    /// The source went on past the declared size.
    Longer,
}

/// Reads a blob whose size a descriptor declares: yields at most that many
/// bytes and fails the read when the source ends early or goes on past it.
/// A decompressor reading from it turns that failure into an error of its
/// own ("unexpected end of file", "invalid gzip header"), so the problem is
/// also recorded in the [`SizeCheck`], for the caller to report instead.
pub struct SizedReader<R> {
    inner: R,
    size: u64,
    read: u64,
    check: SizeCheck,
}

/// The record a [`SizedReader`] keeps of a wrong length.
#[derive(Debug, Clone)]
pub struct SizeCheck {
    size: u64,
    problem: Arc<OnceLock<SizeProblem>>,
}

impl<R: Read> SizedReader<R> {
    pub fn new(inner: R, size: u64) -> (SizedReader<R>, SizeCheck) {
        let check = SizeCheck {
            size,
            problem: Arc::new(OnceLock::new()),
        };
        let reader = SizedReader {
            inner,
            size,
            read: 0,
            check: check.clone(),
        };
        (reader, check)
    }

    fn fail(&self, problem: SizeProblem) -> io::Error {
        let _ = self.check.problem.set(problem);
        match problem {
            SizeProblem::Shorter(got) => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ended after {got} of {} bytes", self.size),
            ),
            SizeProblem::Longer => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is longer than {} bytes", self.size),
            ),
        }
    }
}

impl<R: Read> Read for SizedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.size - self.read;
        if left == 0 {
            // One more byte would be one too many.
            let mut probe = [0u8; 1];
            return loop {
                match self.inner.read(&mut probe) {
                    Ok(0) => break Ok(0),
                    Ok(_) => break Err(self.fail(SizeProblem::Longer)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.fail(SizeProblem::Shorter(self.read)));
        }
        self.read += n as u64;
        Ok(n)
    }
}

impl SizeCheck {
    pub fn problem(&self) -> Option<SizeProblem> {
        self.problem.get().copied()
    }

    /// The size error for `what`, when the length was wrong.
    pub fn error(&self, what: &str) -> Option<Error> {
        Some(match self.problem()? {
            SizeProblem::Shorter(actual) => Error::SizeMismatch {
                what: what.to_string(),
                expected: self.size,
                actual,
            },
            SizeProblem::Longer => Error::SizeExceeded {
                what: what.to_string(),
                expected: self.size,
            },
        })
    }
}

/// fsyncs a directory so a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::create_dir_all(dir.path().join("ingest")).unwrap();
        let cs = ContentStore::new(dir.path().join("blobs/sha256"), dir.path().join("ingest"));
        (dir, cs)
    }

    #[test]
    fn stores_verified_blobs_once() {
        let (dir, cs) = store();
        let d = cs.put_bytes("t.1", b"hello", None).unwrap();
        assert!(cs.contains(&d));
        assert_eq!(cs.read(&d, 100).unwrap(), b"hello");
        assert_eq!(cs.put_bytes("t.2", b"hello", Some(&d)).unwrap(), d);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(cs.list().unwrap().0, vec![d]);
    }

    #[test]
    fn a_writer_hashed_by_its_caller_takes_the_callers_digest() {
        let (dir, cs) = store();
        let d = Digest::of(b"hello");
        let mut w = cs.writer("t.1").unwrap();
        w.hashed_by_caller();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.written(), 5);
        let (got, len) = w.commit_hashed(d, Some(&d), Some(5), |_| Ok(())).unwrap();
        assert_eq!((got, len), (d, 5));
        assert_eq!(cs.read(&d, 100).unwrap(), b"hello");

        // The caller's digest is still checked against the expected one.
        let mut w = cs.writer("t.2").unwrap();
        w.hashed_by_caller();
        w.write_all(b"hellO").unwrap();
        let other = Digest::of(b"hellO");
        assert!(matches!(
            w.commit_hashed(other, Some(&d), Some(5), |_| Ok(())),
            Err(Error::DigestMismatch { .. })
        ));
        // Without a digest it refuses rather than inventing one.
        let mut w = cs.writer("t.3").unwrap();
        w.hashed_by_caller();
        w.write_all(b"x").unwrap();
        assert!(w.commit(None, None).is_err());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(cs.list().unwrap().0, vec![d]);
    }

    #[test]
    fn a_mismatch_leaves_nothing() {
        let (dir, cs) = store();
        let wrong = Digest::of(b"other");
        assert!(cs.put_bytes("t.1", b"hello", Some(&wrong)).is_err());
        let mut w = cs.writer("t.2").unwrap();
        w.write_all(b"hello").unwrap();
        assert!(matches!(
            w.commit(Some(&wrong), None),
            Err(Error::DigestMismatch { .. })
        ));
        let mut w = cs.writer("t.3").unwrap();
        w.write_all(b"hello").unwrap();
        assert!(matches!(
            w.commit(None, Some(4)),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(cs.list().unwrap().0.is_empty());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn a_size_mismatch_is_reported_before_the_digest() {
        let (_dir, cs) = store();
        let right = Digest::of(b"hello");
        let mut w = cs.writer("t.1").unwrap();
        w.write_all(b"hello!").unwrap();
        let err = w.commit(Some(&right), Some(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 5,
                    actual: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&right.to_string()), "{err}");
    }

    fn read_sized(data: &[u8], size: u64) -> (io::Result<Vec<u8>>, Option<SizeProblem>) {
        let (mut reader, check) = SizedReader::new(data, size);
        let mut out = Vec::new();
        let result = reader.read_to_end(&mut out).map(|_| out);
        (result, check.problem())
    }

    #[test]
    fn a_sized_reader_passes_exactly_the_declared_size() {
        let (got, problem) = read_sized(b"hello", 5);
        assert_eq!(got.unwrap(), b"hello");
        assert_eq!(problem, None);
        let (got, problem) = read_sized(b"", 0);
        assert_eq!(got.unwrap(), b"");
        assert_eq!(problem, None);
    }

    #[test]
    fn a_sized_reader_refuses_a_longer_or_shorter_source() {
        let (got, problem) = read_sized(b"hello world", 5);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(problem, Some(SizeProblem::Longer));
        let (got, problem) = read_sized(b"hel", 5);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(problem, Some(SizeProblem::Shorter(3)));

        let (mut reader, check) = SizedReader::new(&b"abcdef"[..], 4);
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).is_err());
        assert_eq!(out, b"abcd", "never more than the declared size");
        let err = check.error("layer x").unwrap();
        assert!(matches!(err, Error::SizeExceeded { expected: 4, .. }));
        assert_eq!(
            err.to_string(),
            "layer x: size mismatch: expected 4 bytes, got more"
        );
        let (mut reader, check) = SizedReader::new(&b"ab"[..], 4);
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        assert_eq!(
            check.error("layer y").unwrap().to_string(),
            "layer y: size mismatch: expected 4 bytes, got 2"
        );
    }

    #[test]
    fn a_kept_partial_is_claimed_and_completed() {
        let (dir, cs) = store();
        let d = Digest::of(b"hello world");
        let mut w = cs
            .writer(&ContentStore::partial_name("dead-1", &d))
            .unwrap();
        w.write_all(b"hello").unwrap();
        w.keep_partial();
        // A live owner's partial is not taken.
        assert!(cs
            .claim_partial(&d, &ContentStore::partial_name("me", &d), &|_| true)
            .unwrap()
            .is_none());
        let (mut w, held) = cs
            .claim_partial(&d, &ContentStore::partial_name("me", &d), &|_| false)
            .unwrap()
            .unwrap();
        assert_eq!(held, 5);
        w.write_all(b"hello world").unwrap();
        assert_eq!(w.commit(Some(&d), Some(11)).unwrap().0, d);
        assert_eq!(cs.read(&d, 100).unwrap(), b"hello world");
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn read_refuses_oversized_blobs() {
        let (_dir, cs) = store();
        let d = cs.put_bytes("t.1", &[0u8; 100], None).unwrap();
        assert!(cs.read(&d, 99).is_err());
    }
}
