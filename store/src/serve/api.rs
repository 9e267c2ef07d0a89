//! The distribution API's error form and the response helpers every
//! handler uses.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::error::Error;

/// Response bodies: small JSON documents, or blob bytes streamed from disk.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An error as the distribution spec writes it:
/// `{"errors":[{"code":…,"message":…,"detail":…}]}` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn name_invalid(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {name:?}"),
        )
    }

    pub fn name_unknown(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is not known"),
        )
    }

    pub fn digest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    pub fn manifest_unknown(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {what} is not known"),
        )
    }

    pub fn manifest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
    }

    pub fn blob_unknown(digest: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not known"),
        )
    }

    pub fn upload_unknown() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload is not known",
        )
    }

    pub fn upload_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
    }

    pub fn size_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "SIZE_INVALID", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", message)
    }

    pub fn denied(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "DENIED", message)
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }

    /// A store failure: what the client sent was wrong (digest, size,
    /// document) or the server failed.
    pub fn from_store(e: &Error) -> ApiError {
        match e {
            Error::DigestMismatch { .. } | Error::Digest(_) => {
                ApiError::digest_invalid(e.to_string())
            }
            Error::SizeMismatch { .. } | Error::SizeExceeded { .. } => {
                ApiError::size_invalid(e.to_string())
            }
            Error::Document { .. }
            | Error::Unpack { .. }
            | Error::Invalid(_)
            | Error::Unsupported(_) => ApiError::manifest_invalid(e.to_string()),
            Error::Reference(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
            }
            Error::ImageNotFound(what) => ApiError::manifest_unknown(what),
            _ => ApiError::internal(e.to_string()),
        }
    }

    pub fn into_response(self, head: bool) -> Response<Body> {
        let json = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        });
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        let len = bytes.len();
        let mut resp = if head {
            empty(self.status)
        } else {
            full(self.status, bytes)
        };
        set(&mut resp, CONTENT_TYPE, "application/json");
        set(&mut resp, CONTENT_LENGTH, &len.to_string());
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

pub fn full(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(bytes.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

/// A JSON document with its length.
pub fn json(status: StatusCode, content_type: &str, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let len = bytes.len();
    let mut resp = full(status, bytes);
    set(&mut resp, CONTENT_TYPE, content_type);
    set(&mut resp, CONTENT_LENGTH, &len.to_string());
    resp
}

/// Sets a header; a value that is not a valid header (never the case for
/// the values built here) is left out rather than panicking.
pub fn set(resp: &mut Response<Body>, name: impl hyper::header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_take_the_specs_json_form() {
        let resp = ApiError::blob_unknown("sha256:ab").into_response(false);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn store_failures_map_to_the_specs_codes() {
        let d = crate::Digest::of(b"a");
        let mismatch = Error::DigestMismatch {
            what: "blob".into(),
            expected: d,
            actual: d,
        };
        assert_eq!(ApiError::from_store(&mismatch).code, "DIGEST_INVALID");
        let size = Error::SizeMismatch {
            what: "blob".into(),
            expected: 1,
            actual: 2,
        };
        assert_eq!(ApiError::from_store(&size).code, "SIZE_INVALID");
        let io = Error::io("x", std::io::Error::other("disk"));
        assert_eq!(ApiError::from_store(&io).status, 500);
    }
}
