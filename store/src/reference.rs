//! Image references: Docker's grammar and normalisation.
//!
//! The grammar is the one of `distribution/reference`:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]          host: DNS name or "[" IPv6 "]"
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//!
//! Normalisation follows Docker: the first component is a registry domain
//! only when it contains `.` or `:`, is `localhost`, or has uppercase
//! letters; otherwise the domain is `docker.io`, and a one-component name
//! there gets `library/`. `index.docker.io` is rewritten to `docker.io`.
//! A reference with neither tag nor digest gets the tag `latest`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical domain.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const LEGACY_DOCKER_HUB_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Longest name (domain + "/" + path) Docker accepts.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// No name at all.
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    /// A 64-hex-digit name, which would read as an image id.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    /// Upper-case letters in the repository.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error(
        "invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
    )]
    /// Domain and path longer than Docker accepts.
    NameTooLong,
    /// A registry domain that is no host name or address.
    #[error("invalid reference format: invalid registry domain {0:?}")]
    InvalidDomain(String),
    /// A repository path component outside the grammar.
    #[error("invalid reference format: invalid repository name component {0:?}")]
    InvalidPathComponent(String),
    /// A tag outside the grammar.
    #[error("invalid reference format: invalid tag {0:?}")]
    InvalidTag(String),
    /// A digest that does not parse.
    #[error("invalid reference format: {0}")]
    InvalidDigest(#[from] DigestError),
}

/// A parsed, normalised image reference. It always has a tag, a digest, or
/// both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `s` (`redis` → `docker.io/library/redis:latest`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_hex_identifier(s) {
            return Err(ReferenceError::HexIdentifier(s.to_string()));
        }

        // The name never contains '@', so the first one starts the digest.
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((before, digest)) => (before, Some(Digest::parse(digest)?)),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(ReferenceError::InvalidTag(tag.to_string()));
            }
        }

        let (domain, path) = split_domain(name);
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(path));
        }
        if !is_domain(&domain) {
            return Err(ReferenceError::InvalidDomain(domain));
        }
        for component in path.split('/') {
            if !is_valid_path_component(component) {
                return Err(ReferenceError::InvalidPathComponent(component.to_string()));
            }
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry domain: `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry: `library/redis`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag (`latest` when the reference named neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest of a `name@sha256:…` reference.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `docker.io/library/redis`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as `docker images` shows it: `redis` for
    /// `docker.io/library/redis`, `user/x` for `docker.io/user/x`, else the
    /// full repository.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DOCKER_HUB_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                // `library/a/b` stays as is: `a/b` would mean `docker.io/a/b`.
                Some(rest) if !rest.contains('/') => rest.to_string(),
                // `docker.io/a.b/c` stays whole: `a.b/c` would name the
                // registry `a.b` (Docker shortens it anyway; found by fuzzing).
                _ if self
                    .path
                    .split('/')
                    .next()
                    .is_some_and(|first| first.contains('.') || first == "localhost") =>
                {
                    self.repository()
                }
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    /// The short form: `redis:latest`, `127.0.0.1:5000/debian:bookworm`,
    /// `redis@sha256:…`, `redis:7@sha256:…`.
    pub fn familiar(&self) -> String {
        self.render(self.familiar_repository())
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_tag(tag) {
            return Err(ReferenceError::InvalidTag(tag.to_string()));
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// The same reference pinned to `digest`; a tag is kept (`name:tag@digest`),
    /// as Docker's `WithDigest` does.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: self.tag.clone(),
            digest: Some(digest),
        }
    }

    /// `repository@digest`, without a tag.
    pub fn by_digest(&self, digest: Digest) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            &self.domain
        }
    }

    /// Whether the registry is on this machine (localhost, 127.0.0.0/8,
    /// `[::1]`, any port): Docker speaks plain HTTP to such registries.
    pub fn is_loopback(&self) -> bool {
        is_loopback_domain(&self.domain)
    }

    fn render(&self, repository: String) -> String {
        let mut out = repository;
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
        out
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(self.repository()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Whether `path` is a repository path (`library/debian`): components of
/// the grammar joined by `/`, within Docker's length limit. What the
/// distribution API calls a name; checked before any lookup uses it.
pub fn is_valid_repository_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= NAME_TOTAL_LENGTH_MAX
        && path.split('/').all(is_valid_path_component)
}

/// Whether a registry domain (`host[:port]`) names this machine.
pub fn is_loopback_domain(domain: &str) -> bool {
    let host = host_of(domain);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `host[:port]`, keeping the brackets of an IPv6 address.
fn host_of(domain: &str) -> &str {
    if domain.starts_with('[') {
        match domain.find(']') {
            Some(end) => &domain[..=end],
            None => domain,
        }
    } else {
        domain.split(':').next().unwrap_or(domain)
    }
}

/// Docker's `splitDockerDomain`: (domain, path), normalised.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest.to_string())
        }
        _ => (DOCKER_HUB_DOMAIN, name.to_string()),
    };
    let domain = if domain == LEGACY_DOCKER_HUB_DOMAIN {
        DOCKER_HUB_DOMAIN
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain.to_string(), path)
}

/// `[a-f0-9]{64}`: an image id, which Docker refuses as a repository name.
fn is_hex_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `tag` is a tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() || first == b'_' => {}
        _ => return false,
    }
    tag.len() <= TAG_LENGTH_MAX
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `domain` is a registry domain: `host[:port]` where host is a DNS
/// name (components of letters, digits and inner hyphens, joined by dots)
/// or `[IPv6]`.
pub fn is_domain(domain: &str) -> bool {
    let (host, port) = if domain.starts_with('[') {
        let Some(end) = domain.find(']') else {
            return false;
        };
        let inner = &domain[1..end];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        (None, &domain[end + 1..])
    } else {
        match domain.find(':') {
            Some(colon) => (Some(&domain[..colon]), &domain[colon..]),
            None => (Some(domain), ""),
        }
    };
    if !port.is_empty() {
        let Some(digits) = port.strip_prefix(':') else {
            return false;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(host) => host.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    first.is_ascii_alphanumeric()
                        && last.is_ascii_alphanumeric()
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                }
                _ => false,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn valid_references_normalise() {
        let d = format!("sha256:{HEX}");
        let cases: Vec<(String, String)> = vec![
            ("redis".into(), "docker.io/library/redis:latest".into()),
            ("redis:7".into(), "docker.io/library/redis:7".into()),
            (
                "library/redis".into(),
                "docker.io/library/redis:latest".into(),
            ),
            ("user/app".into(), "docker.io/user/app:latest".into()),
            (
                "docker.io/redis".into(),
                "docker.io/library/redis:latest".into(),
            ),
            (
                "index.docker.io/redis:1".into(),
                "docker.io/library/redis:1".into(),
            ),
            ("index.docker.io/u/x".into(), "docker.io/u/x:latest".into()),
            ("localhost/x".into(), "localhost/x:latest".into()),
            ("localhost:5000/x".into(), "localhost:5000/x:latest".into()),
            (
                "127.0.0.1:5000/a/b:tag".into(),
                "127.0.0.1:5000/a/b:tag".into(),
            ),
            ("[::1]:5000/a:v1".into(), "[::1]:5000/a:v1".into()),
            ("[::1]/a".into(), "[::1]/a:latest".into()),
            (
                "Registry.Example.com/a".into(),
                "Registry.Example.com/a:latest".into(),
            ),
            ("Foo/bar".into(), "Foo/bar:latest".into()),
            (
                "quay.io/a/b/c:1.0-rc_1".into(),
                "quay.io/a/b/c:1.0-rc_1".into(),
            ),
            ("a.b-c.com/x".into(), "a.b-c.com/x:latest".into()),
            (
                "x/a__b.c-d---e".into(),
                "docker.io/x/a__b.c-d---e:latest".into(),
            ),
            (
                "redis:_A.b-C".into(),
                "docker.io/library/redis:_A.b-C".into(),
            ),
            // `localhost:5000` alone is the image `localhost`, tag `5000`.
            (
                "localhost:5000".into(),
                "docker.io/library/localhost:5000".into(),
            ),
            (format!("redis@{d}"), format!("docker.io/library/redis@{d}")),
            (
                format!("redis:7@{d}"),
                format!("docker.io/library/redis:7@{d}"),
            ),
            (
                format!("localhost:5000/x@{d}"),
                format!("localhost:5000/x@{d}"),
            ),
        ];
        for (input, normal) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), normal, "{input}");
            // The normal form parses to the same reference.
            assert_eq!(Reference::parse(&normal).unwrap(), r, "{normal}");
            assert_eq!(input.parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn invalid_references_are_refused() {
        let long_path = "a".repeat(250);
        let long_tag = "t".repeat(129);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "at least one component"),
            (":tag".into(), "at least one component"),
            (HEX.into(), "64-byte hexadecimal"),
            ("Redis".into(), "must be lowercase"),
            ("user/Redis".into(), "must be lowercase"),
            ("quay.io/A/b".into(), "must be lowercase"),
            ("a//b".into(), "component \"\""),
            ("a/".into(), "component \"\""),
            ("/a".into(), "component \"\""),
            ("-a".into(), "component \"-a\""),
            ("a_".into(), "component \"a_\""),
            ("a___b".into(), "component \"a___b\""),
            ("a.-b".into(), "component \"a.-b\""),
            ("a..b".into(), "component \"a..b\""),
            ("redis:".into(), "invalid tag \"\""),
            ("redis:-x".into(), "invalid tag \"-x\""),
            ("redis:.x".into(), "invalid tag \".x\""),
            ("redis:a+b".into(), "invalid tag \"a+b\""),
            (format!("redis:{long_tag}"), "invalid tag"),
            (format!("{long_path}/b"), "more than 255"),
            ("redis@sha256:abc".into(), "invalid digest"),
            (
                format!("redis@sha256:{}", HEX.to_uppercase()),
                "invalid digest",
            ),
            (
                format!("redis@sha512:{HEX}"),
                "unsupported digest algorithm",
            ),
            ("redis@".into(), "invalid digest"),
            ("exa_mple.com:5000/a".into(), "invalid registry domain"),
            ("-bad.com/a".into(), "invalid registry domain"),
            ("host:port/a".into(), "invalid registry domain"),
            ("host:/a".into(), "invalid registry domain"),
            ("[::1/a".into(), "invalid registry domain"),
            ("[zz]:5/a".into(), "invalid registry domain"),
            ("a b".into(), "component \"a b\""),
        ];
        for (input, message) in cases {
            let err = Reference::parse(&input).expect_err(&input).to_string();
            assert!(
                err.contains(message),
                "{input:?}: {err:?} lacks {message:?}"
            );
            assert!(
                err.starts_with("invalid reference format")
                    || err.starts_with("invalid repository"),
                "{err}"
            );
        }
        // Exactly 255 characters is still allowed.
        let path = "a".repeat(NAME_TOTAL_LENGTH_MAX - "example.com/".len());
        assert!(Reference::parse(&format!("example.com/{path}")).is_ok());
        assert!(Reference::parse(&format!("example.com/{path}a")).is_err());
        assert!(Reference::parse(&format!("redis:{}", "t".repeat(128))).is_ok());
    }

    #[test]
    fn accessors_and_familiar_forms() {
        let r = Reference::parse("redis").unwrap();
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.path(), "library/redis");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.repository(), "docker.io/library/redis");
        assert_eq!(r.familiar_repository(), "redis");
        assert_eq!(r.familiar(), "redis:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");

        let r = Reference::parse("user/x:1").unwrap();
        assert_eq!(r.familiar_repository(), "user/x");
        assert_eq!(r.familiar(), "user/x:1");

        let r = Reference::parse("docker.io/library/a/b").unwrap();
        assert_eq!(r.familiar_repository(), "library/a/b");

        // The familiar form must name the same repository again.
        for full in ["index.docker.io/ocker.ix/y", "docker.io/localhost/y"] {
            let r = Reference::parse(full).unwrap();
            assert_eq!(r.familiar_repository(), r.repository());
            assert_eq!(Reference::parse(&r.familiar()).unwrap(), r);
        }

        let r = Reference::parse("127.0.0.1:5000/debian:bookworm").unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path(), "debian");
        assert_eq!(r.familiar(), "127.0.0.1:5000/debian:bookworm");
        assert_eq!(r.familiar_repository(), "127.0.0.1:5000/debian");
        assert_eq!(r.api_host(), "127.0.0.1:5000");

        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let pinned = Reference::parse(&format!("redis@{d}")).unwrap();
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest(), Some(&d));
        assert_eq!(pinned.familiar(), format!("redis@{d}"));
    }

    #[test]
    fn with_tag_and_digest() {
        let d = Digest::of(b"x");
        let r = Reference::parse("quay.io/a/b:1").unwrap();
        let pinned = r.with_digest(d);
        assert_eq!(pinned.to_string(), format!("quay.io/a/b:1@{d}"));
        assert_eq!(pinned.familiar(), format!("quay.io/a/b:1@{d}"));
        assert_eq!(r.by_digest(d).to_string(), format!("quay.io/a/b@{d}"));
        let retagged = pinned.with_tag("2").unwrap();
        assert_eq!(retagged.to_string(), "quay.io/a/b:2");
        assert_eq!(retagged.digest(), None);
        assert!(r.with_tag("-bad").is_err());
        assert!(r.with_tag("").is_err());
    }

    #[test]
    fn loopback_detection() {
        for loopback in [
            "localhost/a",
            "localhost:5000/a",
            "127.0.0.1/a",
            "127.0.0.1:5000/a",
            "127.1.2.3:80/a",
            "[::1]/a",
            "[::1]:5000/a",
        ] {
            assert!(
                Reference::parse(loopback).unwrap().is_loopback(),
                "{loopback}"
            );
        }
        for remote in [
            "redis",
            "quay.io/a",
            "10.0.0.1:5000/a",
            "128.0.0.1/a",
            "[::2]:5000/a",
            "localhost.example.com/a",
            "127.0.0.1.example.com/a",
        ] {
            assert!(!Reference::parse(remote).unwrap().is_loopback(), "{remote}");
        }
    }
}
