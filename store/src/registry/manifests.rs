//! Manifests: fetch (size-limited, digest-verified), HEAD, push.

use ureq::http::{Method, Response};
use ureq::Body;

use super::auth::Scopes;
use super::client::{header, read_error_detail, read_limited, Call, RegistryClient};
use super::error::RegistryError;
use crate::digest::{Digest, DigestError};
use crate::oci;
use crate::reference::Reference;

/// Manifests larger than this are refused (the distribution spec asks
/// clients to accept at least 4 MB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// The manifest types asked for, best first. Never schema1: without an
/// Accept header some registries still answer with it.
pub const MANIFEST_ACCEPT: &[&str] = &[
    oci::OCI_INDEX,
    oci::OCI_MANIFEST,
    oci::DOCKER_MANIFEST_LIST,
    oci::DOCKER_MANIFEST,
];

/// The value of the `Accept` header for manifest requests.
pub fn manifest_accept_header() -> String {
    MANIFEST_ACCEPT.join(", ")
}

const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A manifest or index as the registry sent it, verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

impl RegistryClient {
    /// `GET /v2/<name>/manifests/<tag-or-digest>`. The body must be at most
    /// 4 MiB; its digest must equal the reference's digest when pinned and
    /// the `Docker-Content-Digest` header when present.
    pub(crate) fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let (path, response) = self.manifest_request(Method::GET, r)?;
        let response = self.expect_manifest_success(r, &path, "GET", response)?;
        let header_digest = content_digest(r.api_host(), &response)?;
        let content_type = header(&response, "content-type");
        if let Some(length) =
            header(&response, "content-length").and_then(|l| l.parse::<u64>().ok())
        {
            if length > MAX_MANIFEST_SIZE {
                return Err(too_large(r));
            }
        }
        // One byte more than the limit tells an oversized body apart.
        let bytes =
            read_limited(response, MAX_MANIFEST_SIZE + 1).map_err(|e| RegistryError::Io {
                context: format!("reading manifest {r}"),
                source: e,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(too_large(r));
        }
        let digest = Digest::of(&bytes);
        if let Some(expected) = r.digest() {
            if *expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {r}"),
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        if let Some(expected) = header_digest {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {r} (Docker-Content-Digest)"),
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = manifest_media_type(r, content_type.as_deref(), &bytes)?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `PUT /v2/<name>/manifests/<tag>` (or `<digest>` when `target` has no
    /// tag). Returns the manifest's digest.
    pub(crate) fn put_manifest(
        &self,
        target: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        if let Some(expected) = target.digest() {
            if *expected != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest pushed as {target}"),
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(too_large(target));
        }
        let reference = match target.tag() {
            Some(tag) => tag.to_string(),
            None => digest.to_string(),
        };
        let path = format!("/v2/{}/manifests/{reference}", target.path());
        let host = target.api_host();
        let response = self.execute(Call {
            method: Method::PUT,
            host,
            target: &path,
            headers: vec![("Content-Type", media_type.to_string())],
            scopes: Scopes::push(target.path()),
            body: Some(bytes),
            idempotent: true,
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(status_error(host, "PUT", &path, status, response, || {
                format!("repository {}", target.repository())
            }));
        }
        if let Some(returned) = content_digest(host, &response)? {
            if returned != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest pushed as {target} (Docker-Content-Digest)"),
                    expected: digest,
                    actual: returned,
                });
            }
        }
        Ok(digest)
    }

    fn manifest_request(
        &self,
        method: Method,
        r: &Reference,
    ) -> Result<(String, Response<Body>), RegistryError> {
        let reference = match (r.digest(), r.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_string(),
            (None, None) => "latest".to_string(),
        };
        let path = format!("/v2/{}/manifests/{reference}", r.path());
        let response = self.execute(Call {
            method,
            host: r.api_host(),
            target: &path,
            headers: vec![("Accept", manifest_accept_header())],
            scopes: Scopes::pull(r.path()),
            body: None,
            idempotent: true,
        })?;
        Ok((path, response))
    }

    fn expect_manifest_success(
        &self,
        r: &Reference,
        path: &str,
        method: &str,
        response: Response<Body>,
    ) -> Result<Response<Body>, RegistryError> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        Err(status_error(
            r.api_host(),
            method,
            path,
            status,
            response,
            || format!("manifest {}", r.familiar()),
        ))
    }
}

/// Maps a failed response to an error; `missing` names what a 404 lacks.
pub(super) fn status_error(
    host: &str,
    method: &str,
    path: &str,
    status: u16,
    response: Response<Body>,
    missing: impl FnOnce() -> String,
) -> RegistryError {
    let detail = if method == "HEAD" {
        String::new()
    } else {
        read_error_detail(response)
    };
    let host = host.to_string();
    match status {
        401 => RegistryError::AuthenticationRequired { host, detail },
        403 => RegistryError::AccessDenied { host, detail },
        404 => RegistryError::NotFound {
            what: missing(),
            detail,
        },
        _ => RegistryError::Status {
            host,
            method: method.to_string(),
            path: path.to_string(),
            status,
            detail,
        },
    }
}

fn too_large(r: &Reference) -> RegistryError {
    RegistryError::ManifestTooLarge {
        reference: r.to_string(),
        limit: MAX_MANIFEST_SIZE,
    }
}

/// `Docker-Content-Digest`, when present and of an algorithm this store
/// can check.
pub(super) fn content_digest(
    host: &str,
    response: &Response<Body>,
) -> Result<Option<Digest>, RegistryError> {
    let Some(value) = header(response, "docker-content-digest") else {
        return Ok(None);
    };
    match Digest::parse(value.trim()) {
        Ok(d) => Ok(Some(d)),
        // sha512 and friends: cannot be checked against sha256, so unused.
        Err(DigestError::UnsupportedAlgorithm(_)) => Ok(None),
        Err(e) => Err(RegistryError::InvalidResponse {
            host: host.to_string(),
            reason: format!("Docker-Content-Digest: {e}"),
        }),
    }
}

/// `application/json; charset=utf-8` → `application/json`.
fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The manifest's media type: the `Content-Type` when it names a manifest,
/// else the body's `mediaType`, else guessed from its shape (OCI allows
/// leaving `mediaType` out). Schema1 is refused.
fn manifest_media_type(
    r: &Reference,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<String, RegistryError> {
    let unsupported = |media_type: &str| RegistryError::UnsupportedMediaType {
        reference: r.to_string(),
        media_type: media_type.to_string(),
        hint: if media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED {
            "Docker schema1 manifests are deprecated; push the image again with a current client"
                .to_string()
        } else {
            String::new()
        },
    };
    let header_type = content_type.map(bare_media_type).unwrap_or_default();
    if header_type == DOCKER_SCHEMA1 || header_type == DOCKER_SCHEMA1_SIGNED {
        return Err(unsupported(header_type));
    }
    if MANIFEST_ACCEPT.contains(&header_type) {
        return Ok(header_type.to_string());
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
        #[serde(default)]
        fs_layers: Option<serde_json::Value>,
    }
    let shape: Shape =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::InvalidResponse {
            host: r.api_host().to_string(),
            reason: format!("manifest {r} is not JSON: {e}"),
        })?;
    if let Some(media_type) = shape.media_type.filter(|m| !m.is_empty()) {
        if MANIFEST_ACCEPT.contains(&media_type.as_str()) {
            return Ok(media_type);
        }
        return Err(unsupported(&media_type));
    }
    if shape.schema_version == Some(1) || shape.fs_layers.is_some() {
        return Err(unsupported(DOCKER_SCHEMA1));
    }
    match (shape.manifests.is_some(), shape.config.is_some()) {
        (true, false) => Ok(oci::OCI_INDEX.to_string()),
        (false, true) => Ok(oci::OCI_MANIFEST.to_string()),
        _ => Err(unsupported(if header_type.is_empty() {
            "(none)"
        } else {
            header_type
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_names_oci_and_docker_types_but_not_schema1() {
        let accept = manifest_accept_header();
        assert_eq!(
            accept,
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.docker.distribution.manifest.v2+json"
        );
        assert!(!accept.contains("v1+prettyjws") && !accept.contains("*/*"));
    }

    #[test]
    fn media_type_detection() {
        let r = Reference::parse("127.0.0.1:5000/x:1").unwrap();
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            manifest_media_type(
                &r,
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                manifest
            )
            .unwrap(),
            oci::OCI_MANIFEST
        );
        // Generic content types fall back to the body.
        assert_eq!(
            manifest_media_type(&r, Some("application/json"), index).unwrap(),
            oci::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(&r, None, manifest).unwrap(),
            oci::OCI_MANIFEST
        );
        let typed = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert_eq!(
            manifest_media_type(&r, Some("text/plain"), typed).unwrap(),
            oci::DOCKER_MANIFEST_LIST
        );
        // Schema1, by header or by shape, is refused with a hint.
        let err = manifest_media_type(&r, Some(DOCKER_SCHEMA1_SIGNED), b"{}").unwrap_err();
        assert!(err.to_string().contains("deprecated"), "{err}");
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(manifest_media_type(&r, Some("application/json"), v1).is_err());
        // Unknown shapes and non-JSON bodies are errors.
        assert!(manifest_media_type(&r, None, b"{}").is_err());
        assert!(manifest_media_type(&r, None, b"not json").is_err());
        let artifact = br#"{"mediaType":"application/vnd.example+json"}"#;
        assert!(manifest_media_type(&r, None, artifact).is_err());
    }
}
