//! Blob uploads: monolithic and chunked, streamed to a file under `ingest/`
//! as the bytes arrive (never held whole in memory), hashed on the way, and
//! verified against the client's digest before the blob counts.
//!
//! An upload's file is named `<serve's lease id>.upload-<n>`: while serve
//! runs, gc leaves it alone; once serve is gone (killed), gc removes it as
//! the leftover of a dead command. A finished blob is added to serve's
//! lease before it appears under `blobs/`, so gc keeps it until a manifest
//! uses it (or serve ends).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;

use super::api::{ApiError, ApiResult};
use crate::content::BlobWriter;
use crate::digest::Digest;
use crate::lock::{Lease, RootLock};
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
const MAX_UPLOADS: usize = 256;

/// The uploads of this server, by id.
pub struct Uploads {
    map: Mutex<HashMap<String, Slot>>,
    limit: usize,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads::with_limit(MAX_UPLOADS)
    }
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
    pub fn with_limit(limit: usize) -> Uploads {
        Uploads {
            map: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// Starts an upload for repository `repo`; returns its id.
    pub fn start(&self, store: &Store, lease: &Lease, repo: &str) -> ApiResult<String> {
        let open = self
            .map
            .lock()
            .map_err(|_| ApiError::internal("upload table poisoned"))?
            .len();
        if open >= self.limit {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                format!("{open} uploads are open; finish or cancel some first"),
            ));
        }
        let writer = store
            .content()
            .writer(&store.unique(lease, "upload"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let id = new_id();
        let slot = Arc::new(tokio::sync::Mutex::new(Some(Upload {
            repo: repo.to_string(),
            writer,
        })));
        self.map
            .lock()
            .map_err(|_| ApiError::internal("upload table poisoned"))?
            .insert(id.clone(), slot);
        Ok(id)
    }

    fn slot(&self, id: &str) -> ApiResult<Slot> {
        self.map
            .lock()
            .map_err(|_| ApiError::internal("upload table poisoned"))?
            .get(id)
            .cloned()
            .ok_or_else(ApiError::upload_unknown)
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

    /// The bytes received so far, for a status request.
    pub async fn offset(&self, id: &str, repo: &str) -> ApiResult<u64> {
        let slot = self.slot(id)?;
        let guard = slot.lock().await;
        match guard.as_ref() {
            Some(u) if u.repo == repo => Ok(u.offset()),
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Appends a request body (a `PATCH` chunk, or the last bytes of a
    /// `PUT`). With `range`, the chunk must start where the upload stands
    /// and be exactly that long; an upload whose chunk was cut or lied
    /// about is dropped, since its bytes can no longer be trusted.
    pub async fn append(
        &self,
        id: &str,
        repo: &str,
        body: Incoming,
        range: Option<(u64, u64)>,
    ) -> ApiResult<u64> {
        let slot = self.slot(id)?;
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
        let result = stream_into(body, &mut upload.writer).await;
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
        store: &Store,
        lease: &Lease,
    ) -> ApiResult<()> {
        self.append(id, repo, body, None).await?;
        self.finish(id, repo, digest, store, lease).await
    }

    /// Ends an upload: the file must hash to `digest`; then it becomes the
    /// blob (named in serve's lease first). A wrong digest drops the upload.
    pub async fn finish(
        &self,
        id: &str,
        repo: &str,
        digest: Digest,
        store: &Store,
        lease: &Lease,
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
        commit(upload.writer, &digest, store, lease).await
    }
}

/// Streams a request body into `writer`.
pub async fn stream_into(mut body: Incoming, writer: &mut BlobWriter) -> ApiResult<()> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::upload_invalid(format!("request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            blocking(|| writer.write_all(&data))
                .map_err(|e| ApiError::internal(format!("write upload: {e}")))?;
        }
    }
    Ok(())
}

/// Verifies a finished upload against `digest` and stores it as a blob.
pub async fn commit(
    writer: BlobWriter,
    digest: &Digest,
    store: &Store,
    lease: &Lease,
) -> ApiResult<()> {
    blocking(|| {
        writer.commit_with(Some(digest), None, |d| {
            // Under the root lock: gc reads the lease before or after.
            let _lock = RootLock::acquire(store.root(), &|_| {})?;
            lease.add_blob(*d)
        })
    })
    .map(|_| ())
    .map_err(|e| ApiError::from_store(&e))
}

/// Puts a blob the store already has into serve's lease (a cross-repository
/// mount), so gc keeps it for the manifest that will name it.
pub fn hold(store: &Store, lease: &Lease, digest: &Digest) -> ApiResult<()> {
    blocking(|| {
        let _lock = RootLock::acquire(store.root(), &|_| {})?;
        lease.add_blob(*digest)
    })
    .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LeaseContent;
    use crate::StoreOptions;

    #[test]
    fn open_uploads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let lease = store
            .read_session(|_| store.lease(&LeaseContent::default()))
            .unwrap();
        let uploads = Uploads::with_limit(2);
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
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            2
        );
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
