//! `--htpasswd`: HTTP Basic authentication against bcrypt entries, the
//! only kind distribution's htpasswd reads.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub struct Htpasswd {
    users: HashMap<String, String>,
    /// Digests of `Authorization` values already checked: bcrypt is slow
    /// by design, and clients send the header with every request.
    accepted: Mutex<HashSet<Digest>>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Self::parse(&text).map_err(|why| Error::Invalid(format!("{}: {why}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {}: user {user}: only bcrypt entries are supported (htpasswd -B)",
                    n + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Htpasswd {
            users,
            accepted: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the `Authorization` header carries a known user and its
    /// password. Blocking (bcrypt) the first time a value is seen.
    pub fn check(&self, header: Option<&str>) -> bool {
        let Some(value) = header else {
            return false;
        };
        let key = Digest::of(value.as_bytes());
        if self.accepted.lock().is_ok_and(|a| a.contains(&key)) {
            return true;
        }
        let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            if let Ok(mut a) = self.accepted.lock() {
                a.insert(key);
            }
        }
        ok
    }

    /// Whether `header` was accepted before (no bcrypt needed).
    pub fn known(&self, header: Option<&str>) -> bool {
        header.is_some_and(|v| {
            self.accepted
                .lock()
                .is_ok_and(|a| a.contains(&Digest::of(v.as_bytes())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn bcrypt_entries_check_passwords() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let h = Htpasswd::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert!(h.check(Some(&basic("alice", "s3cret"))));
        assert!(h.known(Some(&basic("alice", "s3cret"))));
        assert!(!h.check(Some(&basic("alice", "wrong"))));
        assert!(!h.check(Some(&basic("bob", "s3cret"))));
        assert!(!h.check(Some("Basic !!!")));
        assert!(!h.check(Some("Bearer x")));
        assert!(!h.check(None));
    }

    #[test]
    fn other_hashes_are_refused_when_loading() {
        assert!(Htpasswd::parse("alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("alice:$apr1$x$y").is_err());
        assert!(Htpasswd::parse("").is_err());
        assert!(Htpasswd::parse("no-colon").is_err());
    }
}
