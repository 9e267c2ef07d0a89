//! Cross-process coordination without a daemon.
//!
//! * `RootLock`: an exclusive `flock` on `<root>/lock`, held only for short
//!   metadata sessions (RocksDB admits one writer process at a time).
//! * `Lease`: a file under `leases/` naming the blobs and layers a running
//!   command is about to write; the command holds a `flock` on it for its
//!   whole life. gc protects whatever a live lease names; a lease whose lock
//!   can be taken belongs to a dead process and is removed.
//! * `LayerLock`: per chain id, so one layer is never extracted by two
//!   processes at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// How long a process waits silently before it says it is waiting.
const QUIET_WAIT: Duration = Duration::from_secs(1);

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ctx(|| format!("open lock file {}", path.display()))
}

/// Takes an exclusive flock, calling `on_wait` once if it has to wait more
/// than a second.
fn lock_exclusive(file: &File, path: &Path, on_wait: &dyn Fn(&str)) -> Result<()> {
    lock_waiting(
        file,
        path,
        FlockOperation::NonBlockingLockExclusive,
        on_wait,
    )
}

fn lock_waiting(
    file: &File,
    path: &Path,
    operation: FlockOperation,
    on_wait: &dyn Fn(&str),
) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        match flock(file, operation) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {
                if !told && start.elapsed() >= QUIET_WAIT {
                    on_wait(&format!(
                        "waiting for another lstore process to release {}",
                        path.display()
                    ));
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io(format!("lock {}", path.display()), e.into())),
        }
    }
}

/// The store-wide lock for metadata sessions. Released on drop.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Waits for the exclusive lock of the store at `root`, telling
    /// `on_wait` when it has to wait.
    pub fn acquire(root: &Path, on_wait: &dyn Fn(&str)) -> Result<RootLock> {
        let path = root.join("lock");
        let file = open_lock_file(&path)?;
        lock_exclusive(&file, &path, on_wait)?;
        Ok(RootLock { _file: file })
    }

    /// A lock shared with other readers: commands that only read the
    /// metadata run side by side, and never beside a writer.
    pub fn acquire_shared(root: &Path, on_wait: &dyn Fn(&str)) -> Result<RootLock> {
        let path = root.join("lock");
        let file = open_lock_file(&path)?;
        lock_waiting(&file, &path, FlockOperation::NonBlockingLockShared, on_wait)?;
        Ok(RootLock { _file: file })
    }
}

/// Serialises extraction of one layer across processes. Released on drop.
pub struct LayerLock {
    _file: File,
}

impl LayerLock {
    pub fn acquire(
        locks_dir: &Path,
        chain_id: &Digest,
        on_wait: &dyn Fn(&str),
    ) -> Result<LayerLock> {
        let path = locks_dir.join(chain_id.hex());
        let file = open_lock_file(&path)?;
        lock_exclusive(&file, &path, on_wait)?;
        Ok(LayerLock { _file: file })
    }
}

/// What a running command protects from gc.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LeaseContent {
    pub pid: u32,
    pub blobs: Vec<Digest>,
    pub layers: Vec<Digest>,
}

/// A live lease: the file exists and this process holds its lock.
pub struct Lease {
    id: String,
    path: PathBuf,
    file: Mutex<File>,
    content: Mutex<LeaseContent>,
}

impl Lease {
    /// Creates a lease with a fresh id under `leases_dir`. Call it with the
    /// root lock held, so gc never sees a lease half-written.
    ///
    /// Other commands list leases without the root lock, so a lease must
    /// never show under its name before it is locked and written: it is
    /// made as an unnamed file (`O_TMPFILE`), locked, written and synced,
    /// then linked into `leases_dir`.
    pub fn create(leases_dir: &Path, content: &LeaseContent) -> Result<Lease> {
        let id = new_lease_id();
        let path = leases_dir.join(&id);
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(leases_dir);
        let (file, named) = match unnamed {
            Ok(f) => (f, false),
            // A filesystem without unnamed files: created under its name,
            // locked straight after.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .ctx(|| format!("create lease {}", path.display()))?;
                (f, true)
            }
            Err(e) => return Err(Error::io(format!("create lease {}", path.display()), e)),
        };
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io(format!("lock lease {}", path.display()), e.into()))?;
        let lease = Lease {
            id,
            path,
            file: Mutex::new(file),
            content: Mutex::new(content.clone()),
        };
        lease.write()?;
        if !named {
            lease.link()?;
        }
        Ok(lease)
    }

    /// Gives the unnamed lease file its name (the lock goes with it).
    fn link(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let file = self
            .file
            .lock()
            .map_err(|_| Error::Invalid("lease lock poisoned".into()))?;
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            fd_path.as_str(),
            rustix::fs::CWD,
            &self.path,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(|e| Error::io(format!("create lease {}", self.path.display()), e.into()))
    }

    /// The lease id; names of this command's entries in `tmp/` and
    /// `ingest/` start with it, so gc knows whose they are.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a blob found out only while working (a compressed layer of a
    /// docker-archive). The caller holds the root lock, so gc reads the
    /// lease either before or after, never during, the rewrite.
    pub fn add_blob(&self, digest: Digest) -> Result<()> {
        {
            let mut c = self
                .content
                .lock()
                .map_err(|_| Error::Invalid("lease lock poisoned".into()))?;
            if c.blobs.contains(&digest) {
                return Ok(());
            }
            c.blobs.push(digest);
        }
        self.write()
    }

    /// Takes blobs out of the lease (a server whose uploads are now named
    /// by a stored image, or were abandoned). The caller holds the root
    /// lock, as for `add_blob`.
    pub fn remove_blobs(&self, digests: &[Digest]) -> Result<()> {
        {
            let mut c = self
                .content
                .lock()
                .map_err(|_| Error::Invalid("lease lock poisoned".into()))?;
            let before = c.blobs.len();
            c.blobs.retain(|d| !digests.contains(d));
            if c.blobs.len() == before {
                return Ok(());
            }
        }
        self.write()
    }

    /// The blobs the lease names now.
    #[cfg(test)]
    pub fn blobs(&self) -> Vec<Digest> {
        self.content
            .lock()
            .map(|c| c.blobs.clone())
            .unwrap_or_default()
    }

    fn write(&self) -> Result<()> {
        let content = self
            .content
            .lock()
            .map_err(|_| Error::Invalid("lease lock poisoned".into()))?
            .clone();
        let json = serde_json::to_vec(&content).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::Invalid("lease lock poisoned".into()))?;
        file.set_len(0)
            .and_then(|_| {
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(0))?;
                file.write_all(&json)?;
                file.sync_data()
            })
            .ctx(|| format!("write lease {}", self.path.display()))
    }
}

impl Lease {
    /// Ends the lease now, although references to it may still be held (a
    /// server whose last requests were abandoned at shutdown).
    pub fn release(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Remove the file while still holding its lock, so gc never sees a
        // half-dead lease of ours.
        let _ = fs::remove_file(&self.path);
    }
}

/// A lease found on disk by gc.
pub struct FoundLease {
    pub id: String,
    pub content: Option<LeaseContent>,
    pub live: bool,
}

/// Lists the leases under `leases_dir`, removing those whose process died.
pub fn live_leases(leases_dir: &Path) -> Result<Vec<FoundLease>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(leases_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("read {}", leases_dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("read {}", leases_dir.display()))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let live = match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => false,
            Err(rustix::io::Errno::WOULDBLOCK) => true,
            Err(e) => return Err(Error::io(format!("lock {}", path.display()), e.into())),
        };
        if !live {
            let _ = fs::remove_file(&path);
            out.push(FoundLease {
                id,
                content: None,
                live: false,
            });
            continue;
        }
        let content = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LeaseContent>(&b).ok());
        out.push(FoundLease { id, content, live });
    }
    Ok(out)
}

fn new_lease_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom(&mut bytes);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut f = File::open("/dev/urandom")?;
    io::Read::read_exact(&mut f, buf)
}

/// The lease id an entry name of `tmp/` or `ingest/` starts with, if any.
pub fn lease_of_entry(name: &str) -> Option<&str> {
    // Lease ids are `<pid>-<hex>-<hex>`; entries are `<lease>.<rest>`.
    name.split_once('.').map(|(lease, _)| lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_live_while_held_and_stale_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let content = LeaseContent {
            pid: 1,
            blobs: vec![Digest::of(b"a")],
            layers: vec![],
        };
        let lease = Lease::create(dir.path(), &content).unwrap();
        let found = live_leases(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].live);
        assert_eq!(found[0].content.as_ref(), Some(&content));
        assert_eq!(found[0].id, lease.id());
        drop(lease);
        assert!(live_leases(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn blobs_leave_a_lease_as_they_came() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let lease = Lease::create(dir.path(), &LeaseContent::default()).unwrap();
        lease.add_blob(a).unwrap();
        lease.add_blob(b).unwrap();
        lease.remove_blobs(&[a]).unwrap();
        let found = live_leases(dir.path()).unwrap();
        assert_eq!(found[0].content.as_ref().unwrap().blobs, vec![b]);
        assert_eq!(lease.blobs(), vec![b]);
    }

    #[test]
    fn a_lease_left_by_a_dead_process_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("123-abc-def"), b"{}").unwrap();
        let found = live_leases(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(!found[0].live);
        assert!(!dir.path().join("123-abc-def").exists());
    }

    /// Commands list leases without the root lock (to know which partial
    /// downloads are still someone's), while another command may be
    /// creating one under a shared lock: a lease must never be seen before
    /// its lock is held, or it is taken for a dead one and removed, or its
    /// creator fails to lock it.
    #[test]
    fn a_lease_being_created_is_never_taken_for_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = live_leases(dir.path());
                }
            });
            let content = LeaseContent {
                pid: 1,
                blobs: vec![Digest::of(b"a")],
                layers: vec![],
            };
            for i in 0..2000 {
                let lease = Lease::create(dir.path(), &content);
                let lease = match lease {
                    Ok(l) => l,
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        panic!("creation {i} failed: {e}");
                    }
                };
                if !lease.path.exists() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("lease {i} was removed while its creator holds it");
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    #[test]
    fn lease_id_is_recovered_from_entry_names() {
        assert_eq!(lease_of_entry("12-ab-cd.layer-x"), Some("12-ab-cd"));
        assert_eq!(lease_of_entry("junk"), None);
    }
}
