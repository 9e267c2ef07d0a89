//! The blobs serve keeps from gc: uploaded (or mounted) by a client and not
//! yet named by a stored image. They are named in serve's lease while they
//! wait for their manifest; a stored manifest lets its blobs go (its image
//! holds them now), and a blob no manifest claimed within the hold time is
//! let go too, so the lease names only what pushes in progress still need
//! and a manifest deleted through the API frees its blobs for gc.
//!
//! Blobs being sent need no place here: a response reads an open file,
//! which gc's unlink does not disturb.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::lock::{Lease, RootLock};
use crate::store::Store;

/// How long a blob uploaded or mounted waits for a manifest that names it
/// before gc may take it: long enough for the other blobs of a large push
/// over a slow link.
pub const BLOB_HOLD: Duration = Duration::from_secs(60 * 60);

/// One held blob: how many uploads and mounts still wait for a manifest
/// (clients pushing images that share a layer each hold it), and until when.
struct Hold {
    waiting: u32,
    until: Instant,
}

/// The blobs this server holds in its lease.
pub struct Holds {
    map: Mutex<HashMap<Digest, Hold>>,
    time: Duration,
}

impl Holds {
    /// Each blob held for `time` after its last upload or mount.
    pub fn new(time: Duration) -> Holds {
        Holds {
            map: Mutex::new(HashMap::new()),
            time,
        }
    }

    fn table(&self) -> Result<std::sync::MutexGuard<'_, HashMap<Digest, Hold>>> {
        self.map
            .lock()
            .map_err(|_| Error::Invalid("blob holds poisoned".into()))
    }

    /// Keeps `digest` from gc until a manifest names it. Called before an
    /// uploaded blob appears under `blobs/`, under the root lock so gc reads
    /// the lease before or after, never during, the change. Blocking.
    pub fn hold(&self, store: &Store, lease: &Lease, digest: Digest) -> Result<()> {
        let _lock = RootLock::acquire(store.root(), &|_| {})?;
        let mut map = self.table()?;
        let until = Instant::now() + self.time;
        let hold = map.entry(digest).or_insert(Hold { waiting: 0, until });
        hold.waiting = hold.waiting.saturating_add(1);
        hold.until = until;
        lease.add_blob(digest)
    }

    /// A stored manifest names `digests`: its image keeps them now, so one
    /// waiting upload or mount of each is over. Blocking.
    pub fn release(&self, store: &Store, lease: &Lease, digests: &[Digest]) -> Result<()> {
        if !self.table()?.keys().any(|d| digests.contains(d)) {
            return Ok(());
        }
        let _lock = RootLock::acquire(store.root(), &|_| {})?;
        let mut map = self.table()?;
        let mut gone = Vec::new();
        for d in digests {
            if let Some(hold) = map.get_mut(d) {
                hold.waiting -= 1;
                if hold.waiting == 0 {
                    map.remove(d);
                    gone.push(*d);
                }
            }
        }
        lease.remove_blobs(&gone)
    }

    /// Lets go of blobs no manifest claimed in time; returns how many.
    /// Blocking.
    pub fn expire(&self, store: &Store, lease: &Lease) -> Result<usize> {
        let now = Instant::now();
        if !self.table()?.values().any(|h| h.until <= now) {
            return Ok(0);
        }
        let _lock = RootLock::acquire(store.root(), &|_| {})?;
        let mut map = self.table()?;
        let mut gone = Vec::new();
        map.retain(|d, hold| {
            let keep = hold.until > now;
            if !keep {
                gone.push(*d);
            }
            keep
        });
        lease.remove_blobs(&gone)?;
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::testing::store;

    #[test]
    fn a_blob_is_held_until_every_push_waiting_for_it_stored_its_manifest() {
        let (_dir, store, lease) = store();
        let holds = Holds::new(BLOB_HOLD);
        let (shared, own) = (Digest::of(b"shared"), Digest::of(b"own"));
        // Two clients push images sharing a layer.
        holds.hold(&store, &lease, shared).unwrap();
        holds.hold(&store, &lease, own).unwrap();
        holds.hold(&store, &lease, shared).unwrap();
        holds.release(&store, &lease, &[shared, own]).unwrap();
        assert_eq!(lease.blobs(), vec![shared]);
        holds.release(&store, &lease, &[shared]).unwrap();
        assert!(lease.blobs().is_empty());
        // A manifest naming blobs this server never held changes nothing.
        holds.release(&store, &lease, &[shared]).unwrap();
        assert!(lease.blobs().is_empty());
    }

    #[test]
    fn a_blob_no_manifest_claims_is_let_go_in_time() {
        let (_dir, store, lease) = store();
        let holds = Holds::new(Duration::from_millis(50));
        let d = Digest::of(b"forgotten");
        holds.hold(&store, &lease, d).unwrap();
        assert_eq!(holds.expire(&store, &lease).unwrap(), 0);
        assert_eq!(lease.blobs(), vec![d]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(holds.expire(&store, &lease).unwrap(), 1);
        assert!(lease.blobs().is_empty());
    }
}
