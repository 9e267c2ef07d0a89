//! Blob uploads: monolithic and chunked, streamed to a file under `ingest/`
//! as the bytes arrive (never held whole in memory), hashed on the way, and
//! verified against the client's digest before the blob counts.
//!
//! An upload's file is named `<serve's lease id>.upload-<n>`: while serve
//! runs, gc leaves it alone; once serve is gone (killed), gc removes it as
//! the leftover of a dead command. A finished blob is held in serve's
//! lease (`holds`) before it appears under `blobs/`, so gc keeps it until a
//! manifest uses it (or its hold ends).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::StatusCode;

use super::api::{ApiError, ApiResult};
use super::holds::Holds;
use crate::content::BlobWriter;
use crate::digest::Digest;
use crate::lock::Lease;
use crate::store::Store;

/// One upload in progress.
pub struct Upload {
    pub repo: String,
    writer: BlobWriter,
}

impl Upload {
    pub fn offset(&self) -> u64 {
        self.writer.written()
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Upload>>>;

/// Uploads open at once: each holds a file and a write buffer (1 MiB), so
/// their number bounds the server's memory.
pub const MAX_UPLOADS: usize = 256;

/// An upload no request used for this long is abandoned: the server's
/// sweep drops it (or a new upload starts and finds it), so forgotten
/// uploads neither fill the table nor keep their files. The default of
/// `--upload-timeout`.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(5 * 60);

/// A request body that sends nothing for this long is cut, as a broken
/// connection would be: it would hold its upload (and a task) forever. The
/// default of `--body-timeout`.
pub const BODY_IDLE: Duration = Duration::from_secs(60);

/// An upload in the table: its slot, locked while a request works on it,
/// and what a status request answers without waiting for that lock.
struct Entry {
    slot: Slot,
    repo: String,
    /// Bytes written so far, kept current while a chunk streams.
    offset: Arc<AtomicU64>,
    last_used: Instant,
}

/// The uploads of this server, by id.
pub struct Uploads {
    map: Mutex<HashMap<String, Entry>>,
    limit: usize,
    upload_idle: Duration,
    body_idle: Duration,
}

/// Runs blocking file work on an async worker without stalling the
/// others (the multi-threaded runtime moves them elsewhere meanwhile).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Content-Range` of a chunk: `first-last` (inclusive), as the spec
/// writes it; `bytes first-last/total` and `bytes=first-last` are read too.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes ")
        .or_else(|| v.strip_prefix("bytes="))
        .unwrap_or(v)
        .trim();
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (a, b) = (num(a)?, num(b)?);
    // `last` below u64::MAX keeps `last - first + 1` (the chunk's length)
    // in range; no upload is that big.
    (a <= b && b < u64::MAX).then_some((a, b))
}

/// The `Range` header that tells a client how much of an upload arrived.
pub fn range_header(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

impl Uploads {
    /// At most `limit` open uploads; one idle for `upload_idle` is dropped
    /// when another starts; a body silent for `body_idle` is cut.
    pub fn with_limits(limit: usize, upload_idle: Duration, body_idle: Duration) -> Uploads {
        Uploads {
            map: Mutex::new(HashMap::new()),
            limit,
            upload_idle,
            body_idle,
        }
    }

    fn table(&self) -> ApiResult<std::sync::MutexGuard<'_, HashMap<String, Entry>>> {
        self.map
            .lock()
            .map_err(|_| ApiError::internal("upload table poisoned"))
    }

    /// Starts an upload for repository `repo`; returns its id.
    pub fn start(&self, store: &Store, lease: &Lease, repo: &str) -> ApiResult<String> {
        // The file is made before the table is locked (file work stays out
        // of that lock); refused, it goes with its writer.
        let writer = store
            .content()
            .writer(&store.unique(lease, "upload"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let id = new_id();
        let mut map = self.table()?;
        // Dropped after the table's lock is released: their files go then.
        let expired = self.expire(&mut map);
        if map.len() >= self.limit {
            let open = map.len();
            drop(map);
            drop(expired);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                format!("{open} uploads are open; finish or cancel some first"),
            ));
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Some(Upload {
            repo: repo.to_string(),
            writer,
        })));
        map.insert(
            id.clone(),
            Entry {
                slot,
                repo: repo.to_string(),
                offset: Arc::new(AtomicU64::new(0)),
                last_used: Instant::now(),
            },
        );
        drop(map);
        drop(expired);
        Ok(id)
    }

    /// Drops the uploads idle longer than the limit, with their files.
    pub fn sweep(&self) {
        let expired = match self.map.lock() {
            Ok(mut map) => self.expire(&mut map),
            Err(_) => return,
        };
        // Files go after the table's lock is released.
        drop(expired);
    }

    /// Takes out of the table the uploads idle longer than the limit. One
    /// whose slot is locked (a request streams into it) is in use and
    /// stays; an expired one is emptied, so a request that found it just
    /// before sees it unknown.
    fn expire(&self, map: &mut HashMap<String, Entry>) -> Vec<Upload> {
        let mut expired = Vec::new();
        map.retain(|_, entry| {
            if entry.last_used.elapsed() < self.upload_idle {
                return true;
            }
            match entry.slot.try_lock() {
                Ok(mut guard) => {
                    expired.extend(guard.take());
                    false
                }
                Err(_) => true,
            }
        });
        expired
    }

    /// The upload `id` of `repo`, marked as used now.
    fn entry(&self, id: &str, repo: &str) -> ApiResult<(Slot, Arc<AtomicU64>)> {
        let mut map = self.table()?;
        let entry = map
            .get_mut(id)
            .filter(|e| e.repo == repo)
            .ok_or_else(ApiError::upload_unknown)?;
        entry.last_used = Instant::now();
        Ok((entry.slot.clone(), entry.offset.clone()))
    }

    fn slot(&self, id: &str) -> ApiResult<Slot> {
        let mut map = self.table()?;
        let entry = map.get_mut(id).ok_or_else(ApiError::upload_unknown)?;
        entry.last_used = Instant::now();
        Ok(entry.slot.clone())
    }

    /// Forgets an upload; its file goes with its writer.
    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    /// Cancels an upload of `repo` (`DELETE`); an id this server does not
    /// hold for that repository is BLOB_UPLOAD_UNKNOWN, as the spec says.
    pub fn cancel(&self, id: &str, repo: &str) -> ApiResult<()> {
        let slot = self.slot(id)?;
        let owned = match slot.try_lock() {
            Ok(guard) => guard.as_ref().is_some_and(|u| u.repo == repo),
            // A chunk is streaming into it right now: it ends with the
            // upload gone from the table.
            Err(_) => true,
        };
        if !owned {
            return Err(ApiError::upload_unknown());
        }
        self.remove(id);
        Ok(())
    }

    /// The bytes received so far, for a status request: answered at once,
    /// also while a chunk streams in (a client asks exactly when a chunk
    /// seems stuck).
    pub fn offset(&self, id: &str, repo: &str) -> ApiResult<u64> {
        let (_, offset) = self.entry(id, repo)?;
        Ok(offset.load(Ordering::Acquire))
    }

    /// Appends a request body (a `PATCH` chunk, or the last bytes of a
    /// `PUT`). With `range`, the chunk must start where the upload stands
    /// and be exactly that long; an upload whose chunk was cut or lied
    /// about is dropped, since its bytes can no longer be trusted.
    pub async fn append<B>(
        &self,
        id: &str,
        repo: &str,
        body: B,
        range: Option<(u64, u64)>,
    ) -> ApiResult<u64>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (slot, progress) = self.entry(id, repo)?;
        let mut guard = slot.lock().await;
        let upload = match guard.as_mut() {
            Some(u) if u.repo == repo => u,
            _ => return Err(ApiError::upload_unknown()),
        };
        let start = upload.offset();
        if let Some((first, _)) = range {
            if first != start {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    format!("chunk starts at {first}, but the upload holds {start} bytes"),
                ));
            }
        }
        let result = stream_into(body, &mut upload.writer, &progress, self.body_idle).await;
        let received = upload.offset() - start;
        let failure = match result {
            Err(e) => Some(e),
            Ok(()) => match range {
                Some((first, last)) if last - first + 1 != received => {
                    Some(ApiError::upload_invalid(format!(
                        "Content-Range {first}-{last} announced {} bytes, {received} arrived",
                        last - first + 1
                    )))
                }
                _ => None,
            },
        };
        if let Some(e) = failure {
            *guard = None;
            drop(guard);
            self.remove(id);
            return Err(e);
        }
        // The chunk's work ended now: its upload's idle time starts here.
        let _ = self.entry(id, repo);
        Ok(upload.offset())
    }

    /// Appends the last bytes of an upload (a `PUT`, or a monolithic
    /// `POST`) and finishes it.
    pub async fn complete(
        &self,
        id: &str,
        repo: &str,
        body: Incoming,
        digest: Digest,
        keep: Keep<'_>,
    ) -> ApiResult<()> {
        self.append(id, repo, body, None).await?;
        self.finish(id, repo, digest, keep).await
    }

    /// Ends an upload: the file must hash to `digest`; then it becomes the
    /// blob (held in serve's lease first). A wrong digest drops the upload.
    pub async fn finish(
        &self,
        id: &str,
        repo: &str,
        digest: Digest,
        keep: Keep<'_>,
    ) -> ApiResult<()> {
        let slot = self.slot(id)?;
        let mut guard = slot.lock().await;
        match guard.as_ref() {
            Some(u) if u.repo == repo => {}
            _ => return Err(ApiError::upload_unknown()),
        }
        let upload = guard.take().ok_or_else(ApiError::upload_unknown)?;
        drop(guard);
        self.remove(id);
        commit(upload.writer, &digest, keep).await
    }
}

/// Streams a request body into `writer`, keeping `progress` at the bytes
/// written; a body that sends nothing for `idle` is cut.
async fn stream_into<B>(
    mut body: B,
    writer: &mut BlobWriter,
    progress: &AtomicU64,
    idle: Duration,
) -> ApiResult<()>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::upload_invalid(format!(
                    "request body: nothing arrived for {} s",
                    idle.as_secs_f64()
                )))
            }
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => {
                frame.map_err(|e| ApiError::upload_invalid(format!("request body: {e}")))?
            }
        };
        if let Ok(data) = frame.into_data() {
            blocking(|| writer.write_all(&data))
                .map_err(|e| ApiError::internal(format!("write upload: {e}")))?;
            progress.store(writer.written(), Ordering::Release);
        }
    }
}

/// Where a finished upload goes: the store, and serve's lease with the
/// blobs it holds for the manifests to come.
#[derive(Clone, Copy)]
pub struct Keep<'a> {
    pub store: &'a Store,
    pub lease: &'a Lease,
    pub holds: &'a Holds,
}

/// Verifies a finished upload against `digest` and stores it as a blob.
pub async fn commit(writer: BlobWriter, digest: &Digest, keep: Keep<'_>) -> ApiResult<()> {
    blocking(|| {
        writer.commit_with(Some(digest), None, |d| {
            keep.holds.hold(keep.store, keep.lease, *d)
        })
    })
    .map(|_| ())
    .map_err(|e| ApiError::from_store(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::testing::store;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn ingest_files(dir: &tempfile::TempDir) -> usize {
        std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count()
    }

    /// A request body that sends `data` once, then nothing, ever (a client
    /// that stalled mid-chunk).
    struct Stalled(Option<Bytes>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(data) => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn idle_uploads_expire_when_the_table_is_full() {
        let (dir, store, lease) = store();
        let idle = Duration::from_millis(50);
        let uploads = Uploads::with_limits(2, idle, BODY_IDLE);
        let abandoned = uploads.start(&store, &lease, "a").unwrap();
        uploads.start(&store, &lease, "a").unwrap();
        assert_eq!(
            uploads.start(&store, &lease, "a").unwrap_err().code,
            "TOOMANYREQUESTS"
        );
        std::thread::sleep(idle * 2);
        // Used again: this one is not idle any more and stays.
        let kept = {
            let map = uploads.map.lock().unwrap();
            map.keys().find(|k| **k != abandoned).unwrap().clone()
        };
        uploads.offset(&kept, "a").unwrap();
        uploads.start(&store, &lease, "a").unwrap();
        assert_eq!(
            uploads.offset(&abandoned, "a").unwrap_err().code,
            "BLOB_UPLOAD_UNKNOWN"
        );
        assert_eq!(uploads.offset(&kept, "a").unwrap(), 0);
        // The expired upload's file went with it.
        assert_eq!(ingest_files(&dir), 2);
    }

    #[tokio::test]
    async fn uploads_with_a_chunk_streaming_never_expire() {
        let (_dir, store, lease) = store();
        let idle = Duration::from_millis(50);
        let uploads = Arc::new(Uploads::with_limits(1, idle, BODY_IDLE));
        let id = uploads.start(&store, &lease, "a").unwrap();
        let chunk = tokio::spawn({
            let (uploads, id) = (uploads.clone(), id.clone());
            async move { uploads.append(&id, "a", Stalled(None), None).await }
        });
        // The chunk holds the upload's slot once the upload looks busy.
        while uploads.map.lock().unwrap()[&id].slot.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(idle * 2).await;
        assert_eq!(
            uploads.start(&store, &lease, "a").unwrap_err().code,
            "TOOMANYREQUESTS"
        );
        assert_eq!(uploads.offset(&id, "a").unwrap(), 0);
        chunk.abort();
    }

    #[tokio::test]
    async fn status_is_answered_while_a_chunk_streams() {
        let (_dir, store, lease) = store();
        let uploads = Arc::new(Uploads::with_limits(1, UPLOAD_IDLE, BODY_IDLE));
        let id = uploads.start(&store, &lease, "a").unwrap();
        let chunk = tokio::spawn({
            let (uploads, id) = (uploads.clone(), id.clone());
            async move {
                let body = Stalled(Some(Bytes::from_static(b"abc")));
                uploads.append(&id, "a", body, None).await
            }
        });
        // The status follows the chunk's bytes as they are written; the
        // bound only turns a status stuck behind the chunk into a failure.
        let follows = async {
            while uploads.offset(&id, "a").unwrap() != 3 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), follows)
            .await
            .expect("the status never showed the chunk's bytes");
        assert!(!chunk.is_finished());
        chunk.abort();
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_and_its_upload_dropped() {
        let (dir, store, lease) = store();
        let uploads = Uploads::with_limits(1, UPLOAD_IDLE, Duration::from_millis(50));
        let id = uploads.start(&store, &lease, "a").unwrap();
        let body = Stalled(Some(Bytes::from_static(b"abc")));
        // The bound only turns a body never cut into a failure.
        let cut = tokio::time::timeout(
            Duration::from_secs(30),
            uploads.append(&id, "a", body, None),
        )
        .await
        .expect("the stalled body was never cut")
        .unwrap_err();
        assert_eq!(
            (cut.status.as_u16(), cut.code),
            (400, "BLOB_UPLOAD_INVALID")
        );
        assert_eq!(
            uploads.offset(&id, "a").unwrap_err().code,
            "BLOB_UPLOAD_UNKNOWN"
        );
        assert_eq!(ingest_files(&dir), 0);
    }

    #[test]
    fn open_uploads_are_bounded() {
        let (dir, store, lease) = store();
        let uploads = Uploads::with_limits(2, UPLOAD_IDLE, BODY_IDLE);
        let first = uploads.start(&store, &lease, "a").unwrap();
        uploads.start(&store, &lease, "a").unwrap();
        let refused = uploads.start(&store, &lease, "a").unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (429, "TOOMANYREQUESTS")
        );
        // A cancelled upload frees its place and its file.
        uploads.remove(&first);
        uploads.start(&store, &lease, "a").unwrap();
        assert_eq!(ingest_files(&dir), 2);
    }

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=100-199"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("-4"), None);
        assert_eq!(parse_content_range("a-b"), None);
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(
            parse_content_range("0-18446744073709551614"),
            Some((0, u64::MAX - 1))
        );
        assert_eq!(range_header(0), "0-0");
        assert_eq!(range_header(10), "0-9");
    }
}
