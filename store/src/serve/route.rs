//! Request paths of the distribution API, parsed and validated before any
//! handler (or any file path) uses a part of them.

use crate::digest::Digest;
use crate::reference::{is_tag, is_valid_repository_path};

use super::api::{ApiError, ApiResult};

/// What a manifest path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestRef::Tag(t) => f.write_str(t),
            ManifestRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// An endpoint, with its validated parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        name: String,
        reference: ManifestRef,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: String, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: Digest },
}

/// A digest as the API gives it: `sha256:` and 64 lowercase hex digits.
pub fn parse_digest(s: &str) -> ApiResult<Digest> {
    Digest::parse(s).map_err(|e| ApiError::digest_invalid(format!("{s:?}: {e}")))
}

fn name(s: &str) -> ApiResult<String> {
    if is_valid_repository_path(s) {
        Ok(s.to_string())
    } else {
        Err(ApiError::name_invalid(s))
    }
}

/// Upload ids are ours: 32 lowercase hex digits.
fn upload_id(s: &str) -> ApiResult<String> {
    if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(s.to_string())
    } else {
        Err(ApiError::upload_unknown())
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        hyper::StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no such endpoint: {path}"),
    )
}

impl Route {
    /// Parses a request path (without the query).
    pub fn parse(path: &str) -> ApiResult<Route> {
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" {
                Ok(Route::Base)
            } else {
                Err(not_found(path))
            };
        };
        if rest.is_empty() {
            return Ok(Route::Base);
        }
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        if let Some(n) = rest.strip_suffix("/tags/list") {
            return Ok(Route::Tags { name: name(n)? });
        }
        if let Some(n) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Ok(Route::UploadStart { name: name(n)? });
        }
        if let Some((n, id)) = rest.rsplit_once("/blobs/uploads/") {
            return Ok(Route::Upload {
                name: name(n)?,
                id: upload_id(id)?,
            });
        }
        // The last part never holds a '/': split there, then look at what
        // comes before it.
        let split = rest
            .rsplit_once('/')
            .and_then(|(head, last)| head.rsplit_once('/').map(|(n, kind)| (n, kind, last)))
            .filter(|(_, kind, _)| ENDPOINTS.contains(kind));
        let (n, kind, last) = match split {
            Some(parts) => parts,
            // A reference holding '/' (`blobs/sha256:../../x`): said to be
            // what it is, after the first endpoint word behind a valid name.
            None => return Err(misplaced(rest).unwrap_or_else(|| not_found(path))),
        };
        match kind {
            "manifests" => {
                let n = name(n)?;
                let reference = if last.contains(':') {
                    ManifestRef::Digest(parse_digest(last)?)
                } else if is_tag(last) {
                    ManifestRef::Tag(last.to_string())
                } else {
                    return Err(ApiError::new(
                        hyper::StatusCode::BAD_REQUEST,
                        "TAG_INVALID",
                        format!("invalid tag {last:?}"),
                    ));
                };
                Ok(Route::Manifest { name: n, reference })
            }
            "blobs" => Ok(Route::Blob {
                name: name(n)?,
                digest: parse_digest(last)?,
            }),
            "referrers" => Ok(Route::Referrers {
                name: name(n)?,
                digest: parse_digest(last)?,
            }),
            _ => Err(not_found(path)),
        }
    }
}

const ENDPOINTS: [&str; 3] = ["manifests", "blobs", "referrers"];

/// The error for a path whose reference part holds a '/'.
fn misplaced(rest: &str) -> Option<ApiError> {
    let parts: Vec<&str> = rest.split('/').collect();
    (1..parts.len()).find_map(|i| {
        if !ENDPOINTS.contains(&parts[i]) || !is_valid_repository_path(&parts[..i].join("/")) {
            return None;
        }
        let reference = parts[i + 1..].join("/");
        Some(match parts[i] {
            "manifests" if !reference.contains(':') => ApiError::new(
                hyper::StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("invalid tag {reference:?}"),
            ),
            _ => ApiError::digest_invalid(format!("invalid digest {reference:?}")),
        })
    })
}

/// The value of `key` in a query string (`a=1&b=2`), percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn endpoints_are_recognised_with_nested_names() {
        assert_eq!(Route::parse("/v2/").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            Route::parse("/v2/a/b/c/tags/list").unwrap(),
            Route::Tags {
                name: "a/b/c".into()
            }
        );
        assert_eq!(
            Route::parse("/v2/library/debian/manifests/bookworm").unwrap(),
            Route::Manifest {
                name: "library/debian".into(),
                reference: ManifestRef::Tag("bookworm".into())
            }
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "x".into(),
                digest: Digest::parse(D).unwrap()
            }
        );
        assert_eq!(
            Route::parse("/v2/x/y/blobs/uploads/").unwrap(),
            Route::UploadStart { name: "x/y".into() }
        );
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            Route::parse(&format!("/v2/x/blobs/uploads/{id}")).unwrap(),
            Route::Upload {
                name: "x".into(),
                id: id.into()
            }
        );
        // A repository may have a component named like an endpoint.
        assert_eq!(
            Route::parse("/v2/manifests/manifests/latest").unwrap(),
            Route::Manifest {
                name: "manifests".into(),
                reference: ManifestRef::Tag("latest".into())
            }
        );
    }

    #[test]
    fn bad_names_digests_and_tags_are_refused_before_use() {
        let code = |p: &str| Route::parse(p).unwrap_err().code;
        assert_eq!(code("/v2/../etc/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/UPPER/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/a//b/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/a%2fb/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/x/manifests/-bad"), "TAG_INVALID");
        assert_eq!(code("/v2/x/blobs/sha256:abc"), "DIGEST_INVALID");
        assert_eq!(code("/v2/x/blobs/sha256:../../etc"), "DIGEST_INVALID");
        assert_eq!(code("/v2/x/manifests/sha512:ab"), "DIGEST_INVALID");
        assert_eq!(code("/v2/x/blobs/uploads/../../x"), "BLOB_UPLOAD_UNKNOWN");
        let long = "a/".repeat(200) + "a";
        assert_eq!(code(&format!("/v2/{long}/tags/list")), "NAME_INVALID");
        assert_eq!(code("/v3/x"), "NOT_FOUND");
    }

    #[test]
    fn query_values_are_decoded() {
        let q = Some("digest=sha256%3Aab&n=2");
        assert_eq!(query_param(q, "digest").as_deref(), Some("sha256:ab"));
        assert_eq!(query_param(q, "n").as_deref(), Some("2"));
        assert_eq!(query_param(q, "last"), None);
        assert_eq!(query_param(Some("x=%zz%"), "x").as_deref(), Some("%zz%"));
    }
}
