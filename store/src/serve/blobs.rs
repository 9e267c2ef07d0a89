//! Sending blobs: straight from the blob files, with `Range` support. The
//! bytes are read in chunks on the blocking pool, one chunk ahead of the
//! socket, so the async workers that run every connection never wait for
//! the disk or take page faults; memory per response stays two chunks, in
//! buffers used again and again (a fresh buffer costs more in page faults
//! and zeroing than the read itself).

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::task::JoinHandle;

use super::api::{empty, set, ApiError, ApiResult, Body};
use crate::digest::Digest;

/// Bytes read per body chunk: large enough that a chunk costs few
/// syscalls and hand-offs, small enough that many clients at once stay
/// cheap in memory (a response holds the chunk being written and the one
/// read ahead).
const CHUNK: u64 = 512 << 10;

/// Chunk buffers kept for reuse at most (the rest are freed): what the
/// server keeps while idle.
const POOL_MAX: usize = 32;

/// Chunk buffers no response uses now.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A chunk read into a pooled buffer; the buffer goes back when the
/// connection is done with the chunk.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl Chunk {
    /// Reads `len` bytes of `file` at `pos`.
    fn read(file: &File, pos: u64, len: usize) -> std::io::Result<Chunk> {
        let pooled = POOL.lock().ok().and_then(|mut p| p.pop());
        let mut buf = pooled.unwrap_or_else(|| vec![0u8; CHUNK as usize]);
        // A blob shorter than when it was opened (never rewritten in
        // place, so only a damaged store) ends the response early.
        file.read_exact_at(&mut buf[..len], pos)?;
        Ok(Chunk { buf, len })
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The byte range a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) `Range` header: the whole blob.
    Whole,
    /// `first..=last`, within the blob.
    Part(u64, u64),
    /// Well formed, but outside the blob.
    Unsatisfiable,
}

/// Reads a `Range` header against a blob of `size` bytes. A header that is
/// not a single `bytes=` range is ignored, as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(size.saturating_sub(n), size - 1)
            }
        }
        (false, Some(first), None) if b.is_empty() => {
            if first >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(first, size - 1)
            }
        }
        (false, Some(first), Some(last)) => {
            if first > last {
                RangeRequest::Whole
            } else if first >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(first, last.min(size - 1))
            }
        }
        _ => RangeRequest::Whole,
    }
}

/// A blob file's bytes `pos..end`, read a chunk ahead of the socket.
pub struct BlobBody {
    file: Arc<File>,
    /// Where the next read starts.
    pos: u64,
    end: u64,
    /// Bytes not yet handed to the connection.
    left: u64,
    /// The read in flight: the next chunk.
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl BlobBody {
    fn new(file: File, first: u64, end: u64) -> BlobBody {
        // The whole response reads forward: the kernel may read ahead
        // further than its default.
        let _ = rustix::fs::fadvise(&file, first, None, rustix::fs::Advice::Sequential);
        BlobBody {
            file: Arc::new(file),
            pos: first,
            end,
            left: end - first,
            reading: None,
        }
    }

    /// Starts reading the next chunk on the blocking pool, if any is left.
    fn read_ahead(&mut self) {
        if self.pos >= self.end || self.reading.is_some() {
            return;
        }
        let (file, pos) = (self.file.clone(), self.pos);
        let len = (self.end - pos).min(CHUNK) as usize;
        self.pos += len as u64;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            Chunk::read(&file, pos, len).map(Bytes::from_owner)
        }));
    }
}

impl hyper::body::Body for BlobBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.read_ahead();
        let Some(reading) = self.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let read = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(read) => read,
        };
        self.reading = None;
        let chunk = read.map_err(std::io::Error::other).and_then(|r| r);
        if let Ok(data) = &chunk {
            self.left -= data.len() as u64;
            // The next chunk is read while the connection writes this one.
            self.read_ahead();
        }
        Poll::Ready(Some(chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The response to `GET|HEAD /v2/<name>/blobs/<digest>`. The blob is open
/// before anything is sent, so a gc that removes it meanwhile changes
/// nothing for this response.
pub fn respond(
    path: std::path::PathBuf,
    digest: &Digest,
    range: Option<&str>,
    head: bool,
) -> ApiResult<Response<Body>> {
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::blob_unknown(&digest.to_string()))
        }
        Err(e) => return Err(ApiError::internal(format!("open blob {digest}: {e}"))),
    };
    let size = file
        .metadata()
        .map_err(|e| ApiError::internal(format!("stat blob {digest}: {e}")))?
        .len();
    let (status, first, end) = match parse_range(range, size) {
        RangeRequest::Whole => (StatusCode::OK, 0, size),
        RangeRequest::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_NOT_SATISFIABLE",
                format!("blob {digest} has {size} bytes"),
            )
            .into_response(head);
            set(&mut resp, CONTENT_RANGE, &format!("bytes */{size}"));
            return Ok(resp);
        }
    };
    let mut resp = if head || first == end {
        empty(status)
    } else {
        let mut r = Response::new(BlobBody::new(file, first, end).boxed());
        *r.status_mut() = status;
        r
    };
    set(&mut resp, CONTENT_LENGTH, &(end - first).to_string());
    set(&mut resp, CONTENT_TYPE, "application/octet-stream");
    set(&mut resp, ACCEPT_RANGES, "bytes");
    set(&mut resp, "docker-content-digest", &digest.to_string());
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut resp,
            CONTENT_RANGE,
            &format!("bytes {first}-{}/{size}", end - 1),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(parse_range(Some("bytes=4-"), 10), Part(4, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        // Not a single well-formed range: ignored.
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=99999999999999999999-"), 10), Whole);
    }

    fn body_of(resp: Response<Body>) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        })
    }

    #[test]
    fn a_blob_is_sent_whole_or_in_part_across_windows() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let path = dir.path().join("blob");
        std::fs::write(&path, &data).unwrap();
        let d = Digest::of(&data);
        let whole = respond(path.clone(), &d, None, false).unwrap();
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(body_of(whole), data);
        // A range starting off a page boundary and spanning windows.
        let first = 4097u64;
        let last = CHUNK * 2 + 100;
        let part = respond(
            path.clone(),
            &d,
            Some(&format!("bytes={first}-{last}")),
            false,
        )
        .unwrap();
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            part.headers()[CONTENT_RANGE],
            format!("bytes {first}-{last}/{}", data.len()).as_str()
        );
        assert_eq!(body_of(part), &data[first as usize..=last as usize]);
        let head = respond(path.clone(), &d, None, true).unwrap();
        assert_eq!(
            head.headers()[CONTENT_LENGTH],
            data.len().to_string().as_str()
        );
        assert!(body_of(head).is_empty());
        let bad = respond(path, &d, Some("bytes=999999999-"), false).unwrap();
        assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let missing = respond(dir.path().join("none"), &d, None, false).unwrap_err();
        assert_eq!(missing.code, "BLOB_UNKNOWN");
    }
}
