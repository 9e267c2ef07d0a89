//! Registry authentication: `WWW-Authenticate` challenges, token responses,
//! scopes and the per-client token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    /// Token authentication (distribution's token spec).
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        /// `insufficient_scope`, `invalid_token`, … when the server says why.
        error: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value into its challenges (RFC 7235:
/// `Bearer realm="…",service="…", Basic realm="…"`). Unknown schemes and a
/// Bearer challenge without a realm are left out.
pub fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    let bytes = header.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b',' | b'=') && !bytes[i].is_ascii_whitespace()
        {
            i += 1;
        }
        let token = &header[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' && current.is_some() && !token.is_empty() {
            // An auth-param of the current challenge.
            i = j + 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut value = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Copy one whole UTF-8 character.
                    let ch_len = header[i..].chars().next().map_or(1, char::len_utf8);
                    value.push_str(&header[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // closing quote
                value
            } else {
                let vstart = i;
                while i < bytes.len() && bytes[i] != b',' && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                header[vstart..i].to_string()
            };
            if let Some((_, params)) = current.as_mut() {
                params.push((token.to_ascii_lowercase(), value));
            }
        } else if token.is_empty() {
            // A stray '=' (token68 padding and the like): skip it.
            i += 1;
        } else {
            if let Some(done) = current.take() {
                challenges.extend(finish_challenge(done));
            }
            current = Some((token.to_string(), Vec::new()));
        }
    }
    if let Some(done) = current.take() {
        challenges.extend(finish_challenge(done));
    }
    challenges
}

fn finish_challenge((scheme, params): (String, Vec<(String, String)>)) -> Option<Challenge> {
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic {
            realm: get("realm"),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope"),
            error: get("error"),
        })
    } else {
        None
    }
}

/// The challenge to answer: token auth when offered, else Basic.
pub fn preferred_challenge(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| challenges.first())
}

/// A token server's answer (distribution token spec).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Tokens live at least this long when the server does not say (spec: 60 s).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Refresh a little early so a token does not expire mid-request.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenResponse {
    /// The token and how long it may be used.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .map(Duration::from_secs)
            .filter(|d| *d >= DEFAULT_TOKEN_LIFETIME)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some((token, lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN)))
    }
}

/// `repository:<path>:<actions>` scopes of one request, sorted and unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Scopes(Vec<String>);

impl Scopes {
    pub fn pull(path: &str) -> Scopes {
        Scopes(vec![format!("repository:{path}:pull")])
    }

    pub fn push(path: &str) -> Scopes {
        Scopes(vec![format!("repository:{path}:pull,push")])
    }

    /// No repository: the `/v2/` ping and login.
    pub fn none() -> Scopes {
        Scopes(Vec::new())
    }

    /// Adds scopes given as one space-separated string (a challenge's
    /// `scope`).
    pub fn with(mut self, scope: &str) -> Scopes {
        for s in scope.split_whitespace() {
            if !self.0.iter().any(|have| have == s) {
                self.0.push(s.to_string());
            }
        }
        self.0.sort();
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    fn key(&self) -> String {
        self.0.join(" ")
    }
}

/// What a host asked for the last time it challenged this client.
#[derive(Debug, Clone)]
pub enum HostAuth {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: String,
    expires_at: Instant,
}

/// Per-client authentication state: each host's scheme and the tokens
/// obtained so far, per scope.
#[derive(Default)]
pub struct AuthCache {
    hosts: Mutex<HashMap<String, HostAuth>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

impl AuthCache {
    pub fn host_auth(&self, host: &str) -> Option<HostAuth> {
        lock(&self.hosts).get(host).cloned()
    }

    pub fn set_host_auth(&self, host: &str, auth: HostAuth) {
        lock(&self.hosts).insert(host.to_string(), auth);
    }

    pub fn token(&self, host: &str, scopes: &Scopes) -> Option<String> {
        let tokens = lock(&self.tokens);
        let cached = tokens.get(&(host.to_string(), scopes.key()))?;
        (Instant::now() < cached.expires_at).then(|| cached.token.clone())
    }

    pub fn store_token(&self, host: &str, scopes: &Scopes, token: String, lifetime: Duration) {
        lock(&self.tokens).insert(
            (host.to_string(), scopes.key()),
            CachedToken {
                token,
                expires_at: Instant::now() + lifetime,
            },
        );
    }

    pub fn forget_token(&self, host: &str, scopes: &Scopes) {
        lock(&self.tokens).remove(&(host.to_string(), scopes.key()));
    }
}

/// A poisoned lock only means another thread panicked mid-update of a
/// cache; the cached values are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Basic <base64(user:password)>`.
pub fn basic_header(username: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
            error: None,
        }
    }

    #[test]
    fn parses_docker_hub_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        assert_eq!(
            parse_www_authenticate(h),
            vec![bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:samalba/my-app:pull,push")
            )]
        );
    }

    #[test]
    fn parses_variants() {
        assert_eq!(
            parse_www_authenticate(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic {
                realm: Some("Registry Realm".into())
            }]
        );
        assert_eq!(
            parse_www_authenticate("basic"),
            vec![Challenge::Basic { realm: None }]
        );
        // Unquoted values, spaces around '=', lowercase scheme, error param.
        assert_eq!(
            parse_www_authenticate(
                r#"bearer realm = http://127.0.0.1:1/token , service=reg, error="insufficient_scope""#
            ),
            vec![Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("reg".into()),
                scope: None,
                error: Some("insufficient_scope".into()),
            }]
        );
        // Escapes inside quoted strings.
        assert_eq!(
            parse_www_authenticate(r#"Bearer realm="https://a/t\"x",scope="a b""#),
            vec![bearer("https://a/t\"x", None, Some("a b"))]
        );
        // Two challenges in one header; an unknown scheme is dropped.
        let both = parse_www_authenticate(
            r#"Negotiate abc==, Bearer realm="https://t",service="s", Basic realm="r""#,
        );
        assert_eq!(
            both,
            vec![
                bearer("https://t", Some("s"), None),
                Challenge::Basic {
                    realm: Some("r".into())
                }
            ]
        );
        assert_eq!(preferred_challenge(&both), Some(&both[0]));
        // Bearer without realm is useless.
        assert_eq!(parse_www_authenticate(r#"Bearer service="s""#), vec![]);
        assert_eq!(parse_www_authenticate(""), vec![]);
        assert_eq!(
            parse_www_authenticate(r#"Bearer realm="unterminated"#).len(),
            1
        );
    }

    #[test]
    fn token_responses() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("abc".into(), Duration::from_secs(290)))
        );
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"xyz","issued_at":"2024-01-01T00:00:00Z"}"#)
                .unwrap();
        assert_eq!(
            t.into_token(),
            Some(("xyz".into(), Duration::from_secs(50)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"token":"","access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token().unwrap().0, "b");
        // Below the spec's minimum the default lifetime applies.
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":5}"#).unwrap();
        assert_eq!(t.into_token().unwrap().1, Duration::from_secs(50));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn scopes_and_cache() {
        let pull = Scopes::pull("library/redis");
        assert_eq!(
            pull.iter().collect::<Vec<_>>(),
            ["repository:library/redis:pull"]
        );
        let merged = Scopes::push("a/b").with("repository:c/d:pull repository:a/b:pull,push");
        assert_eq!(
            merged.iter().collect::<Vec<_>>(),
            ["repository:a/b:pull,push", "repository:c/d:pull"]
        );
        let cache = AuthCache::default();
        assert_eq!(cache.token("h", &pull), None);
        cache.store_token("h", &pull, "t1".into(), Duration::from_secs(60));
        assert_eq!(cache.token("h", &pull).as_deref(), Some("t1"));
        assert_eq!(cache.token("other", &pull), None);
        assert_eq!(cache.token("h", &Scopes::push("library/redis")), None);
        cache.store_token("h", &merged, "t2".into(), Duration::ZERO);
        assert_eq!(cache.token("h", &merged), None, "expired");
        cache.forget_token("h", &pull);
        assert_eq!(cache.token("h", &pull), None);
    }

    #[test]
    fn basic_header_encoding() {
        assert_eq!(basic_header("user", "pa:ss"), "Basic dXNlcjpwYTpzcw==");
    }
}
