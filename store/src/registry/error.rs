//! Registry errors: one line each, with the registry's own explanation.

use std::path::PathBuf;

use serde::Deserialize;

use crate::digest::Digest;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry wants credentials and none were given.
    #[error("{host}: authentication required{}", suffix(.detail))]
    AuthenticationRequired {
        /// The registry API host.
        host: String,
        /// The registry's explanation, if any.
        detail: String,
    },
    /// The credentials given do not allow this.
    #[error("{host}: access denied{}", suffix(.detail))]
    AccessDenied {
        /// The registry API host.
        host: String,
        /// The registry's explanation, if any.
        detail: String,
    },
    /// `login` was refused.
    #[error("{host}: login failed: {detail}")]
    LoginFailed {
        /// The registry API host.
        host: String,
        /// The registry's explanation.
        detail: String,
    },
    /// No such manifest, blob or repository.
    #[error("{what} not found{}", suffix(.detail))]
    NotFound {
        /// The missing thing: a manifest reference or a blob.
        what: String,
        /// The registry's explanation, if any.
        detail: String,
    },
    /// An HTTP status the request cannot go on with.
    #[error("{host}: {method} {path} failed with HTTP {status}{}", suffix(.detail))]
    Status {
        /// The registry API host.
        host: String,
        /// The HTTP method.
        method: String,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The registry's explanation, if any.
        detail: String,
    },
    /// The registry could not be reached.
    #[error("cannot reach {host}: {reason}")]
    Connection {
        /// The registry API host.
        host: String,
        /// The connection error.
        reason: String,
    },
    /// The registry stopped answering.
    #[error("{host}: timed out ({reason})")]
    Timeout {
        /// The registry API host.
        host: String,
        /// What timed out.
        reason: String,
    },
    /// The registry's TLS certificate is not trusted.
    #[error("TLS certificate of {host} not trusted: {reason}")]
    Certificate {
        /// The registry API host.
        host: String,
        /// Why the certificate was refused.
        reason: String,
    },
    /// TLS failed otherwise (a peer that does not speak TLS, say).
    #[error("TLS error with {host}: {reason}")]
    Tls {
        /// The registry API host.
        host: String,
        /// The TLS error.
        reason: String,
    },
    /// A manifest larger than lstore accepts.
    #[error("manifest {reference} is larger than the {limit}-byte limit")]
    ManifestTooLarge {
        /// The manifest's reference.
        reference: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Content whose sha256 is not the one it was asked for by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The manifest or blob.
        what: String,
        /// The digest it was asked for by.
        expected: Digest,
        /// The digest of what came.
        actual: Digest,
    },
    /// Content shorter or longer than announced.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The manifest or blob.
        what: String,
        /// The size announced.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A manifest of a media type lstore does not read.
    #[error("{reference}: unsupported manifest media type {media_type:?}{}", suffix(.hint))]
    UnsupportedMediaType {
        /// The manifest's reference.
        reference: String,
        /// Its media type.
        media_type: String,
        /// What to do instead, if anything.
        hint: String,
    },
    /// A response that breaks the distribution API.
    #[error("{host}: invalid response: {reason}")]
    InvalidResponse {
        /// The registry API host.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry name that is not a host (with an optional port) or URL.
    #[error("invalid registry name {0:?}")]
    InvalidRegistry(String),
    /// The Docker credentials file cannot be read or written.
    #[error("{}: {reason}", .path.display())]
    Credentials {
        /// The credentials file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The CA certificates file cannot be used.
    #[error("CA certificates {}: {reason}", .path.display())]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A local I/O call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

/// The longest piece of a non-JSON error body shown to the user.
const MAX_TEXT_DETAIL: usize = 200;

/// Renders a registry error body on one line.
///
/// The distribution error format `{"errors":[{"code":"MANIFEST_UNKNOWN",
/// "message":"…","detail":…}]}` becomes `manifest unknown: …` (entries joined
/// by `; `); any other body is shown as its first 200 characters of text.
pub fn render_error_body(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        let rendered: Vec<String> = parsed.errors.iter().map(render_entry).collect();
        if !rendered.is_empty() {
            return rendered.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX_TEXT_DETAIL {
        let cut: String = one_line.chars().take(MAX_TEXT_DETAIL).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

fn render_entry(entry: &ErrorEntry) -> String {
    let code = entry.code.to_ascii_lowercase().replace('_', " ");
    let message = entry.message.trim();
    let mut out = match (code.is_empty(), message.is_empty()) {
        (true, true) => "unknown error".to_string(),
        (false, true) => code.clone(),
        (true, false) => message.to_string(),
        // Registries often repeat the code as the message.
        (false, false) if message.eq_ignore_ascii_case(&code) => code.clone(),
        (false, false) => format!("{code}: {message}"),
    };
    // A textual detail adds information; structured ones (`{"Tag":"x"}`)
    // repeat what the message and the request already say.
    if let Some(serde_json::Value::String(s)) = &entry.detail {
        if !s.is_empty() && s != message {
            out.push_str(&format!(" ({s})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_distribution_errors() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest tagged by \"x\" is not found","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            render_error_body(body),
            r#"manifest unknown: manifest tagged by "x" is not found"#
        );
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"},{"code":"DENIED","message":"denied"}]}"#;
        assert_eq!(
            render_error_body(body),
            "name unknown: repository name not known to registry; denied"
        );
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:abc"}]}"#;
        assert_eq!(
            render_error_body(body),
            "blob unknown: blob unknown to registry (sha256:abc)"
        );
        assert_eq!(render_error_body(br#"{"errors":[{}]}"#), "unknown error");
    }

    #[test]
    fn renders_other_bodies_as_short_text() {
        assert_eq!(
            render_error_body(b"404 page not found\n"),
            "404 page not found"
        );
        assert_eq!(
            render_error_body(b"<html>\n <b>Bad</b>\n</html>"),
            "<html> <b>Bad</b> </html>"
        );
        assert_eq!(render_error_body(b""), "");
        assert_eq!(render_error_body(b"{\"errors\":[]}"), "{\"errors\":[]}");
        let long = "x".repeat(500);
        let rendered = render_error_body(long.as_bytes());
        assert_eq!(rendered.chars().count(), MAX_TEXT_DETAIL + 1);
        assert!(rendered.ends_with('…'));
    }

    #[test]
    fn messages_are_one_line() {
        let e = RegistryError::NotFound {
            what: "manifest 127.0.0.1:5000/x:latest".into(),
            detail: render_error_body(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        };
        assert_eq!(
            e.to_string(),
            "manifest 127.0.0.1:5000/x:latest not found: manifest unknown"
        );
        let e = RegistryError::AuthenticationRequired {
            host: "quay.io".into(),
            detail: String::new(),
        };
        assert_eq!(e.to_string(), "quay.io: authentication required");
    }
}
