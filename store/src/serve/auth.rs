//! `--htpasswd`: HTTP Basic authentication against bcrypt entries, the
//! only kind distribution's htpasswd reads.
//!
//! bcrypt is slow by design, so: a user the file lacks still costs one
//! bcrypt (against a hash of the file's cost), or the quicker answer would
//! tell which users exist; at most one bcrypt per core runs at once, off the
//! async workers, so a flood of wrong passwords cannot starve the server; and
//! a user and password once verified are remembered for a while (clients
//! send them with every request) — under a keyed hash, never as sent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Verified users and passwords remembered at most: each is a few dozen
/// bytes, and a full table only costs bcrypt runs again.
const CACHE_MAX: usize = 1024;
/// How long a verified user and password are taken without bcrypt.
const CACHE_TIME: Duration = Duration::from_secs(5 * 60);

pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A hash of the file's highest cost, which unknown users are checked
    /// against so that they cost what known ones do.
    dummy: String,
    /// Verified (user, password) pairs, by `key`, with when they were.
    accepted: Mutex<HashMap<Digest, Instant>>,
    /// Keys the cache's hash, so the table tells nothing about passwords.
    secret: [u8; 32],
    cache_max: usize,
    cache_time: Duration,
    /// bcrypt runs at once, at most one per core.
    permits: tokio::sync::Semaphore,
    /// bcrypt runs so far (what tests count instead of timing them).
    verifies: AtomicU64,
}

/// The cost of a bcrypt hash (`$2y$NN$…`).
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes
}

/// User and password of a Basic `Authorization` header.
fn credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Self::parse(&text).map_err(|why| Error::Invalid(format!("{}: {why}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Htpasswd, String> {
        Self::with_cache(text, CACHE_MAX, CACHE_TIME)
    }

    /// As `parse`, remembering at most `cache_max` verified users and
    /// passwords, each for `cache_time`.
    pub fn with_cache(
        text: &str,
        cache_max: usize,
        cache_time: Duration,
    ) -> std::result::Result<Htpasswd, String> {
        let mut users = HashMap::new();
        let mut cost = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", n + 1))?;
            let bcrypt_cost = ["$2a$", "$2b$", "$2y$"]
                .iter()
                .any(|p| hash.starts_with(p))
                .then(|| cost_of(hash))
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "line {}: user {user}: only bcrypt entries are supported (htpasswd -B)",
                        n + 1
                    )
                })?;
            cost = cost.max(bcrypt_cost);
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        let unguessable: String = random_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let dummy =
            bcrypt::hash(unguessable, cost).map_err(|e| format!("bcrypt cost {cost}: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Htpasswd {
            users,
            dummy,
            accepted: Mutex::new(HashMap::new()),
            secret: random_bytes(),
            cache_max: cache_max.max(1),
            cache_time,
            permits: tokio::sync::Semaphore::new(cores),
            verifies: AtomicU64::new(0),
        })
    }

    fn key(&self, user: &str, password: &str) -> Digest {
        let mut keyed = Vec::with_capacity(self.secret.len() + user.len() + password.len() + 1);
        keyed.extend_from_slice(&self.secret);
        keyed.extend_from_slice(user.as_bytes());
        keyed.push(0);
        keyed.extend_from_slice(password.as_bytes());
        Digest::of(&keyed)
    }

    /// Whether `key` was verified less than the cache time ago.
    fn remembered(&self, key: &Digest) -> bool {
        self.accepted
            .lock()
            .is_ok_and(|a| a.get(key).is_some_and(|t| t.elapsed() < self.cache_time))
    }

    fn remember(&self, key: Digest) {
        let Ok(mut a) = self.accepted.lock() else {
            return;
        };
        if a.len() >= self.cache_max {
            a.retain(|_, t| t.elapsed() < self.cache_time);
        }
        if a.len() >= self.cache_max {
            let oldest = a.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                a.remove(&k);
            }
        }
        a.insert(key, Instant::now());
    }

    /// Checks `password` with bcrypt, against the user's hash or, for a
    /// user the file lacks, against the dummy hash (and fails). Blocking.
    fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => self.bcrypt(password, hash),
            None => {
                self.bcrypt(password, &self.dummy);
                false
            }
        }
    }

    fn bcrypt(&self, password: &str, hash: &str) -> bool {
        self.verifies.fetch_add(1, Ordering::Relaxed);
        bcrypt::verify(password, hash).unwrap_or(false)
    }

    /// Whether the `Authorization` header carries a known user and its
    /// password: from the cache, or by bcrypt on a blocking thread once a
    /// core is free for it.
    pub async fn check(self: &Arc<Self>, header: Option<&str>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        let key = self.key(&user, &password);
        if self.remembered(&key) {
            return true;
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || this.verify(&user, &password))
            .await
            .unwrap_or(false);
        if ok {
            self.remember(key);
        }
        ok
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

    fn file(users: &[(&str, &str)]) -> String {
        users
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
            .collect()
    }

    fn runs(h: &Htpasswd) -> u64 {
        h.verifies.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn bcrypt_entries_check_passwords() {
        let h = Arc::new(
            Htpasswd::parse(&format!("# users\n{}", file(&[("alice", "s3cret")]))).unwrap(),
        );
        assert!(h.check(Some(&basic("alice", "s3cret"))).await);
        assert!(!h.check(Some(&basic("alice", "wrong"))).await);
        assert!(!h.check(Some(&basic("bob", "s3cret"))).await);
        assert!(!h.check(Some("Basic !!!")).await);
        assert!(!h.check(Some("Bearer x")).await);
        assert!(!h.check(None).await);
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_bcrypt_as_a_known_one_does() {
        let h = Arc::new(Htpasswd::parse(&file(&[("alice", "s3cret")])).unwrap());
        assert!(h.dummy.starts_with("$2b$04$"), "{}", h.dummy);
        assert!(!h.check(Some(&basic("alice", "wrong"))).await);
        assert_eq!(runs(&h), 1);
        assert!(!h.check(Some(&basic("mallory", "wrong"))).await);
        assert_eq!(runs(&h), 2);
    }

    #[tokio::test]
    async fn verified_passwords_are_remembered_by_user_and_password() {
        let h = Arc::new(Htpasswd::parse(&file(&[("alice", "s3cret")])).unwrap());
        assert!(h.check(Some(&basic("alice", "s3cret"))).await);
        assert_eq!(runs(&h), 1);
        // The same credentials written another way: no bcrypt again.
        let other_spelling = basic("alice", "s3cret").replacen("Basic", "basic", 1);
        assert!(h.check(Some(&format!("  {other_spelling} "))).await);
        assert_eq!(runs(&h), 1);
        // A wrong password is never remembered.
        assert!(!h.check(Some(&basic("alice", "wrong"))).await);
        assert!(!h.check(Some(&basic("alice", "wrong"))).await);
        assert_eq!(runs(&h), 3);
        // The table holds keyed hashes, not what clients sent.
        let a = h.accepted.lock().unwrap();
        assert!(!a.contains_key(&Digest::of(basic("alice", "s3cret").as_bytes())));
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_forgets_in_time() {
        let users = [("a", "1"), ("b", "2"), ("c", "3")];
        let h = Arc::new(Htpasswd::with_cache(&file(&users), 2, Duration::from_secs(1)).unwrap());
        for (u, p) in users {
            assert!(h.check(Some(&basic(u, p))).await);
        }
        assert_eq!(h.accepted.lock().unwrap().len(), 2);
        // The oldest went to make room.
        assert!(h.check(Some(&basic("c", "3"))).await);
        assert_eq!(runs(&h), 3);
        assert!(h.check(Some(&basic("a", "1"))).await);
        assert_eq!(runs(&h), 4);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(h.check(Some(&basic("a", "1"))).await);
        assert_eq!(runs(&h), 5);
    }

    #[test]
    fn other_hashes_are_refused_when_loading() {
        assert!(Htpasswd::parse("alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("alice:$apr1$x$y").is_err());
        assert!(Htpasswd::parse("alice:$2y$xx$y").is_err());
        assert!(Htpasswd::parse("").is_err());
        assert!(Htpasswd::parse("no-colon").is_err());
    }
}
