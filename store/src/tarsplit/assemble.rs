//! Rebuilding a layer's exact tar from its record and its `diff/`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, CWD};

use super::{RecordEntry, RecordReader, TarSplitError};
use crate::unpack::{normalize, open_file_beneath, OpenError};

/// Read size for file contents.
const COPY_BUFFER: usize = 256 * 1024;

/// Writes the tar that `record` (a `tar-split.gz`) describes to `out`:
/// its segments as they are, each file's content read from `diff` (the
/// layer's extracted folder) by the entry's name, resolved as extraction
/// resolves it (never through a symlink, never out of `diff`). A file
/// whose size or CRC-64 differs from the record is an error: the output
/// is then incomplete. Returns the bytes written.
pub fn assemble(record: &Path, diff: &Path, mut out: impl Write) -> Result<u64, TarSplitError> {
    let root = rustix::fs::openat(
        CWD,
        diff,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| TarSplitError::Io {
        context: format!("open {}", diff.display()),
        source: e.into(),
    })?;
    let mut reader = RecordReader::open(record)?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut written = 0u64;
    while let Some(entry) = reader.next_entry()? {
        match entry {
            RecordEntry::Segment(bytes) => {
                out.write_all(&bytes).map_err(TarSplitError::Output)?;
                written += bytes.len() as u64;
            }
            RecordEntry::File { size: 0, .. } => {}
            RecordEntry::File { name, size, crc } => {
                let shown = String::from_utf8_lossy(&name).into_owned();
                let file_error = |reason: String| TarSplitError::File {
                    name: shown.clone(),
                    reason,
                };
                let path = normalize(&name).map_err(|e| file_error(e.reason().to_string()))?;
                let mut file = match open_file_beneath(root.as_fd(), &path) {
                    Ok(f) => f,
                    Err(OpenError::NotRegular) => {
                        return Err(file_error("not a regular file in the layer".into()))
                    }
                    // O_NOFOLLOW on a symlink: ELOOP for the file,
                    // ENOTDIR for a parent.
                    Err(OpenError::Os(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                        return Err(file_error(
                            "a symlink or a non-directory is on its path; symlinks are never \
                             followed"
                                .into(),
                        ))
                    }
                    Err(OpenError::Os(e)) => {
                        return Err(file_error(std::io::Error::from(e).to_string()))
                    }
                };
                let got = copy_checked(&mut file, size, &mut out, &mut buf, &shown)?;
                written += size;
                let expected = crc.unwrap_or_default();
                if got.as_slice() != expected.as_slice() {
                    return Err(TarSplitError::Mismatch {
                        name: shown,
                        what: format!(
                            "CRC-64 {} in the record, {} in the file",
                            hex(&expected),
                            hex(&got)
                        ),
                    });
                }
            }
        }
    }
    out.flush().map_err(TarSplitError::Output)?;
    Ok(written)
}

/// Copies exactly `size` bytes of `file` to `out` and returns their CRC-64
/// (big-endian); a file of another size is an error.
fn copy_checked(
    file: &mut File,
    size: u64,
    out: &mut impl Write,
    buf: &mut [u8],
    name: &str,
) -> Result<[u8; 8], TarSplitError> {
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
    let mut left = size;
    let read_error = |e: std::io::Error| TarSplitError::File {
        name: name.to_string(),
        reason: format!("reading: {e}"),
    };
    let mismatch = |actual: String| TarSplitError::Mismatch {
        name: name.to_string(),
        what: format!("{size} bytes in the record, {actual} in the file"),
    };
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(mismatch((size - left).to_string())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        crc.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(TarSplitError::Output)?;
        left -= n as u64;
    }
    // Nothing may follow.
    let mut probe = [0u8; 1];
    loop {
        match file.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err(mismatch("more".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(crc.finalize().to_be_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
