//! Blobs: download (resumable), existence checks, cross-repository mounts
//! and uploads (monolithic for small blobs, chunked for large ones).

use std::io::Read;

use ureq::http::{Method, Response};
use ureq::Body;

use super::auth::Scopes;
use super::client::{append_query, header, resolve_location, Call, RegistryClient};
use super::error::RegistryError;
use super::manifests::{content_digest, status_error};
use crate::digest::{Digest, Hasher};
use crate::reference::Reference;

/// Blobs up to this size are uploaded with one PUT.
pub const MONOLITHIC_UPLOAD_MAX: u64 = 8 * 1024 * 1024;
/// Chunk size of chunked uploads (raised to the registry's minimum).
pub const UPLOAD_CHUNK_SIZE: u64 = 16 * 1024 * 1024;

/// A blob download in progress. The caller hashes and verifies the bytes.
pub struct FetchedBlob {
    pub reader: Box<dyn Read + Send>,
    /// Where in the blob `reader` starts: the requested offset, or 0 when
    /// the registry ignored the range and sent the whole blob.
    pub offset: u64,
    /// Bytes `reader` will yield, when the registry said.
    pub length: Option<u64>,
}

impl std::fmt::Debug for FetchedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedBlob")
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// `GET /v2/<name>/blobs/<digest>`, from `offset` on when it is not 0.
    /// Redirects (to storage on another host) are followed without the
    /// registry's credentials.
    pub(crate) fn fetch_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<FetchedBlob, RegistryError> {
        let path = blob_path(repo, digest);
        let host = repo.api_host();
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push(("Range", format!("bytes={offset}-")));
        }
        let response = self.execute(Call {
            method: Method::GET,
            host,
            target: &path,
            headers,
            scopes: Scopes::pull(repo.path()),
            body: None,
            idempotent: true,
        })?;
        let status = response.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                let range = header(&response, "content-range").unwrap_or_default();
                match range_start(&range) {
                    Some(start) if start == offset => start,
                    _ => {
                        return Err(RegistryError::InvalidResponse {
                            host: host.to_string(),
                            reason: format!(
                                "asked for blob {digest} from byte {offset}, got Content-Range {range:?}"
                            ),
                        })
                    }
                }
            }
            _ => {
                return Err(status_error(host, "GET", &path, status, response, || {
                    format!("blob {digest} in {}", repo.repository())
                }))
            }
        };
        let length = header(&response, "content-length").and_then(|l| l.parse().ok());
        Ok(FetchedBlob {
            reader: Box::new(response.into_body().into_reader()),
            offset: start,
            length,
        })
    }

    /// `HEAD /v2/<name>/blobs/<digest>`: whether the repository has it.
    pub(crate) fn blob_exists(
        &self,
        repo: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let path = blob_path(repo, digest);
        let host = repo.api_host();
        let response = self.execute(Call {
            method: Method::HEAD,
            host,
            target: &path,
            headers: Vec::new(),
            scopes: Scopes::push(repo.path()),
            body: None,
            idempotent: true,
        })?;
        match response.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(status_error(
                host,
                "HEAD",
                &path,
                status,
                response,
                String::new,
            )),
        }
    }

    /// Asks the registry to link `digest` from `from` (same registry) into
    /// `repo`. `false` means "upload it instead".
    pub(crate) fn mount_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        from: &Reference,
    ) -> Result<bool, RegistryError> {
        if from.domain() != repo.domain() || from.path() == repo.path() {
            return Ok(false);
        }
        let host = repo.api_host();
        let target = append_query(
            &format!("/v2/{}/blobs/uploads/", repo.path()),
            &[("mount", &digest.to_string()), ("from", from.path())],
        );
        let response = self.execute(Call {
            method: Method::POST,
            host,
            target: &target,
            headers: Vec::new(),
            scopes: Scopes::push(repo.path()).with(&format!("repository:{}:pull", from.path())),
            body: Some(&[][..]),
            idempotent: false,
        })?;
        match response.status().as_u16() {
            201 => Ok(true),
            202 => {
                // The registry opened an upload session instead; close it.
                if let Some(location) = header(&response, "location") {
                    let url = resolve_location(&self.url_for(host, &target)?, &location);
                    self.cancel_upload(repo, &url);
                }
                Ok(false)
            }
            status => Err(status_error(
                host,
                "POST",
                &target,
                status,
                response,
                || format!("repository {}", repo.repository()),
            )),
        }
    }

    /// Uploads `size` bytes from `reader` as blob `digest` of `repo`. The
    /// bytes are hashed on the way; a wrong digest or size stops the upload
    /// before it is committed.
    pub(crate) fn upload_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<(), RegistryError> {
        let host = repo.api_host();
        let start_path = format!("/v2/{}/blobs/uploads/", repo.path());
        let response = self.execute(Call {
            method: Method::POST,
            host,
            target: &start_path,
            headers: Vec::new(),
            scopes: Scopes::push(repo.path()),
            body: Some(&[][..]),
            idempotent: false,
        })?;
        if response.status().as_u16() != 202 {
            let status = response.status().as_u16();
            return Err(status_error(
                host,
                "POST",
                &start_path,
                status,
                response,
                || format!("repository {}", repo.repository()),
            ));
        }
        let min_chunk: u64 = header(&response, "oci-chunk-min-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut location =
            self.next_location(host, &self.url_for(host, &start_path)?, &response)?;

        let what = format!("blob {digest}");
        let result = (|| -> Result<(), RegistryError> {
            let mut hasher = Hasher::new();
            let final_body = if size <= MONOLITHIC_UPLOAD_MAX {
                let bytes = read_exactly(reader, size, &what)?;
                hasher.update(&bytes);
                bytes
            } else {
                let chunk_size = UPLOAD_CHUNK_SIZE.max(min_chunk);
                let mut sent = 0u64;
                while sent < size {
                    let want = chunk_size.min(size - sent);
                    let chunk = read_exactly(reader, want, &what)?;
                    hasher.update(&chunk);
                    location = self.patch_chunk(repo, &location, sent, &chunk)?;
                    sent += want;
                }
                Vec::new()
            };
            ensure_at_end(reader, size, &what)?;
            let actual = hasher.finish();
            if actual != *digest {
                return Err(RegistryError::DigestMismatch {
                    what: what.clone(),
                    expected: *digest,
                    actual,
                });
            }
            self.commit_upload(repo, digest, &location, &final_body)
        })();
        if result.is_err() {
            self.cancel_upload(repo, &location);
        }
        result
    }

    /// Sends one chunk; returns the next upload location.
    fn patch_chunk(
        &self,
        repo: &Reference,
        location: &str,
        start: u64,
        chunk: &[u8],
    ) -> Result<String, RegistryError> {
        let host = repo.api_host();
        let end = start + chunk.len() as u64 - 1;
        let response = self.execute(Call {
            method: Method::PATCH,
            host,
            target: location,
            headers: vec![
                ("Content-Type", "application/octet-stream".to_string()),
                ("Content-Range", format!("{start}-{end}")),
            ],
            scopes: Scopes::push(repo.path()),
            body: Some(chunk),
            idempotent: false,
        })?;
        let status = response.status().as_u16();
        if status != 202 {
            return Err(status_error(
                host,
                "PATCH",
                location,
                status,
                response,
                || format!("upload session for {}", repo.repository()),
            ));
        }
        // The registry says how much it holds: `Range: 0-<end>`.
        if let Some(range) = header(&response, "range") {
            let held = range
                .rsplit('-')
                .next()
                .and_then(|e| e.trim().parse::<u64>().ok());
            if held != Some(end) {
                return Err(RegistryError::InvalidResponse {
                    host: host.to_string(),
                    reason: format!("sent bytes up to {end}, registry holds {range:?}"),
                });
            }
        }
        self.next_location(host, location, &response)
    }

    /// `PUT <location>?digest=…`, with the whole blob for a monolithic
    /// upload or empty after chunks.
    fn commit_upload(
        &self,
        repo: &Reference,
        digest: &Digest,
        location: &str,
        body: &[u8],
    ) -> Result<(), RegistryError> {
        let host = repo.api_host();
        let url = append_query(location, &[("digest", &digest.to_string())]);
        let response = self.execute(Call {
            method: Method::PUT,
            host,
            target: &url,
            headers: vec![("Content-Type", "application/octet-stream".to_string())],
            scopes: Scopes::push(repo.path()),
            body: Some(body),
            idempotent: false,
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(status_error(
                host,
                "PUT",
                location,
                status,
                response,
                || format!("upload session for {}", repo.repository()),
            ));
        }
        if let Some(returned) = content_digest(host, &response)? {
            if returned != *digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!(
                        "blob uploaded to {} (Docker-Content-Digest)",
                        repo.repository()
                    ),
                    expected: *digest,
                    actual: returned,
                });
            }
        }
        Ok(())
    }

    /// Best effort: an abandoned session would otherwise linger until the
    /// registry purges it.
    fn cancel_upload(&self, repo: &Reference, location: &str) {
        let _ = self.execute(Call {
            method: Method::DELETE,
            host: repo.api_host(),
            target: location,
            headers: Vec::new(),
            scopes: Scopes::push(repo.path()),
            body: None,
            idempotent: false,
        });
    }

    /// The absolute URL of a `/v2/…` path on `host`.
    fn url_for(&self, host: &str, path: &str) -> Result<String, RegistryError> {
        if path.starts_with("http://") || path.starts_with("https://") {
            return Ok(path.to_string());
        }
        Ok(format!("{}{path}", self.base_url(host)?))
    }

    fn next_location(
        &self,
        host: &str,
        current: &str,
        response: &Response<Body>,
    ) -> Result<String, RegistryError> {
        let location =
            header(response, "location").ok_or_else(|| RegistryError::InvalidResponse {
                host: host.to_string(),
                reason: "upload response without a Location header".to_string(),
            })?;
        Ok(resolve_location(current, &location))
    }
}

fn blob_path(repo: &Reference, digest: &Digest) -> String {
    format!("/v2/{}/blobs/{digest}", repo.path())
}

/// The first byte of `Content-Range: bytes <start>-<end>/<total>`.
fn range_start(content_range: &str) -> Option<u64> {
    let spec = content_range.trim().strip_prefix("bytes")?.trim_start();
    spec.split('-').next()?.trim().parse().ok()
}

/// Reads exactly `n` bytes; fewer means the source is shorter than declared.
fn read_exactly(reader: &mut dyn Read, n: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let mut buf = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    reader
        .take(n)
        .read_to_end(&mut buf)
        .map_err(|e| RegistryError::Io {
            context: format!("reading {what}"),
            source: e,
        })?;
    if (buf.len() as u64) < n {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected: n,
            actual: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// The source must end where the declared size does.
fn ensure_at_end(reader: &mut dyn Read, size: u64, what: &str) -> Result<(), RegistryError> {
    let mut probe = [0u8; 1];
    loop {
        match reader.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    actual: size + 1,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(RegistryError::Io {
                    context: format!("reading {what}"),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/1"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start(""), None);
    }

    #[test]
    fn exact_reads() {
        let mut src: &[u8] = b"hello";
        assert_eq!(read_exactly(&mut src, 3, "x").unwrap(), b"hel");
        assert!(matches!(
            read_exactly(&mut src, 3, "x"),
            Err(RegistryError::SizeMismatch {
                expected: 3,
                actual: 2,
                ..
            })
        ));
        let mut longer: &[u8] = b"abc";
        read_exactly(&mut longer, 2, "x").unwrap();
        assert!(ensure_at_end(&mut longer, 2, "x").is_err());
        let mut done: &[u8] = b"";
        assert!(ensure_at_end(&mut done, 0, "x").is_ok());
    }
}
