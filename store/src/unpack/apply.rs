//! Applies tar entries to a layer directory, relative to directory fds.
//!
//! Nothing here builds an absolute path or follows a symlink:
//! - the layer root is one fd, opened once; it is never looked up by name
//!   again, so no entry can replace it;
//! - parent directories are opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` below
//!   the root fd; when that fails the path is walked one component at a
//!   time (`O_NOFOLLOW | O_DIRECTORY`) to create missing directories and to
//!   say precisely what is in the way. A symlink in a parent path is an
//!   error, whether it came from this layer or was made earlier by it;
//! - the last component is created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!   `mkdirat`, `symlinkat`, `mknodat` or `linkat(flags = 0)`, which never
//!   follow it; whatever is already there is removed first (recursively for
//!   a directory, fd-relative), except that a directory entry over an
//!   existing directory only updates its attributes (OCI layer.md);
//! - owners, modes, xattrs and times are set on the fd just created, or
//!   with `AT_SYMLINK_NOFOLLOW`, or through `/proc/self/fd/N` of an
//!   `O_PATH | O_NOFOLLOW` fd (what glibc does for `lchmod`).
//!
//! Whiteouts become overlay whiteouts: `.wh.NAME` a 0/0 character device,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory
//! (`user.overlay.opaque` in a user's store: see `crate::userns`).
//! Directory modes and times are applied last, deepest first, so read-only
//! directories can be filled and their mtimes are not disturbed.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::fs::{
    self as rfs, AtFlags, Dev, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
    XattrFlags,
};
use rustix::io::Errno;

use super::files::{self, FileJob, FilePool};
use super::path::{is_within, normalize, role, split_parent, PathError, Role};
use super::tar_reader::{Entry, Kind, TarReader, Time};
use super::{writeback, LayerPosition, Limits, Sharing, UnpackError};
use crate::share::identity::{meta_hash_of, MetaFields, StagedStat};
use crate::share::{identify, Prelinker, Written, WrittenFile, MIN_SHARED_SIZE};

/// A directory's default ACL: files created in it take their mode from it
/// rather than from the umask.
const DEFAULT_ACL_XATTR: &str = "system.posix_acl_default";
/// Mode of directories the archive implies but does not list (as Docker).
const IMPLIED_DIR_MODE: u32 = 0o755;

pub(crate) fn resolve_beneath() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

pub(crate) fn dir_open_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Attributes of a directory entry, applied when extraction ends.
#[derive(Debug, Clone, Copy)]
struct DirAttrs {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: Time,
    mtime: Time,
}

/// The last parent directory used, kept open so a run of entries in one
/// directory resolves it once (shared with the file pool's jobs).
#[derive(Default)]
struct ParentCache {
    entry: Option<(Vec<u8>, Arc<OwnedFd>)>,
}

/// Context every filesystem operation needs, apart from the fds.
struct State {
    /// Directory attributes to apply at the end, by normalised path.
    deferred: BTreeMap<Vec<u8>, DirAttrs>,
    /// Paths whited out by this layer: a directory made there later must
    /// be opaque, or the lower layers' old content would show through it.
    whiteouts: HashSet<Vec<u8>>,
    /// A base layer: whiteouts and opaque markers have nothing to hide.
    base: bool,
    /// An owner that cannot be set goes to `user.containers.override_stat`
    /// instead of failing the layer.
    ignore_chown_errors: bool,
    /// The store's opaque-directory xattr (`trusted.` or `user.overlay.opaque`).
    opaque_xattr: &'static str,
    /// Owner a new file gets without chown, when that is predictable.
    default_owner: Option<(u32, u32)>,
    /// The process umask, when known and nothing else (a default ACL)
    /// decides the mode of new files: a file created with its final
    /// permission bits then needs no chmod.
    umask: Option<u32>,
    /// Files written and hardlink names made, for file sharing (None: not
    /// collected).
    written: Option<WrittenLog>,
    /// The content index, to link small files to instead of writing them.
    prelink: Option<Arc<Prelinker>>,
    /// A name was removed or replaced (a later entry won, a whiteout
    /// removed a directory): what was written may no longer be there.
    removed_any: bool,
}

/// Where the files an extraction writes are noted for file sharing, by the
/// extraction thread and the file pool's threads.
pub(crate) type WrittenLog = Arc<Mutex<Written>>;

/// Notes a file just written (its data hashed to `content`) in `log`.
pub(super) fn note_written(
    log: &WrittenLog,
    fd: BorrowedFd<'_>,
    path: &[u8],
    content: [u8; 32],
    looked_up: Option<[u8; 16]>,
    ctx: &Ctx<'_>,
) -> Result<(), UnpackError> {
    let (st, id) = identify(fd, content).map_err(|e| ctx.fs("inspecting the file written", e))?;
    let file = WrittenFile {
        path: path.to_vec(),
        ino: st.st_ino,
        stat: StagedStat::of(&st),
        size: st.st_size as u64,
        id,
        holder: None,
        looked_up,
    };
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .files
        .push(file);
    Ok(())
}

/// Writes entries into one layer directory.
pub(crate) struct Applier {
    root: Arc<OwnedFd>,
    cache: ParentCache,
    state: State,
    parallel: Parallel,
}

/// Small files created by a pool of threads, and what keeps that safe:
/// a file goes to the pool only at a path nothing in this layer has made
/// yet (so it cannot exist: the layer directory started empty), and any
/// entry that could touch a path still being written waits for the pool.
struct Parallel {
    /// Threads to start (0: everything on the extraction thread).
    workers: usize,
    pool: Option<FilePool>,
    /// Hashes of every path this layer made (entries and the parents they
    /// implied). Past `MAX_TRACKED` the pool is no longer used.
    made: HashSet<u64>,
    /// Hashes of the paths handed to the pool since it was last drained.
    pending: HashSet<u64>,
    /// The parent whose own parents were last recorded in `made`.
    last_parent: Vec<u8>,
    /// The directory of the last file handed to the pool.
    last_pooled_dir: Option<Arc<OwnedFd>>,
}

/// Paths tracked at most (about 16 bytes each) before the rest of a layer
/// is extracted on one thread.
const MAX_TRACKED: usize = 1 << 20;

pub(super) fn path_hash(path: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(path);
    hasher.finish()
}

/// `path_hash` of every parent of `path` (shallowest first), then of `path`
/// itself, hashing each byte once: a path has up to 2048 parents, and
/// hashing each from the start would cost a deep layer minutes of CPU.
pub(super) fn prefix_hashes(path: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let mut hasher = DefaultHasher::new();
    let mut hashed = 0;
    let slashes = path
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| i);
    slashes.chain(std::iter::once(path.len())).map(move |end| {
        hasher.write(&path[hashed..end]);
        hashed = end;
        hasher.finish()
    })
}

impl Parallel {
    fn active(&self) -> bool {
        self.workers > 0 && self.made.len() < MAX_TRACKED
    }

    /// Waits until the pool has written every file handed to it.
    fn drain(&mut self) -> Result<(), UnpackError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.clear();
        match &mut self.pool {
            Some(pool) => pool.drain(),
            None => Ok(()),
        }
    }

    /// Records `path` (whose `path_hash` is `hash`) and every parent of it
    /// as made by this layer.
    fn made_with_parents(&mut self, path: &[u8], hash: u64) {
        let (parent, _) = split_parent(path);
        if parent.is_empty() || parent == self.last_parent.as_slice() {
            self.made.insert(hash);
            return;
        }
        self.made.extend(prefix_hashes(path));
        self.last_parent = parent.to_vec();
    }

    /// Whether `path` or a parent of it is still being written by the pool.
    fn pending_within(&self, path: &[u8]) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        prefix_hashes(path).any(|hash| self.pending.contains(&hash))
    }
}

/// Threads of the file pool: one per core, at most 4. `LSTORE_FILE_WORKERS`
/// overrides it (0 writes every file on the extraction thread), for
/// benchmarks.
pub(super) fn file_workers() -> usize {
    if let Some(n) = std::env::var("LSTORE_FILE_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.min(64);
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `name` in the directory `parent` (both relative to the layer root).
fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        path.extend_from_slice(parent);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Whether a directory has no entries.
fn is_empty_dir(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let mut entries = rfs::Dir::read_from(dir)?;
    while let Some(item) = entries.read() {
        let name = item?.file_name().to_owned();
        if name.as_c_str() != c"." && name.as_c_str() != c".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Errors of one entry, with its name for messages.
pub(super) struct Ctx<'a> {
    pub(super) entry: &'a Entry,
}

impl Ctx<'_> {
    fn name(&self) -> String {
        self.entry.display_name()
    }

    pub(super) fn fs(
        &self,
        action: impl Into<String>,
        source: impl Into<io::Error>,
    ) -> UnpackError {
        UnpackError::Fs {
            path: self.name(),
            action: action.into(),
            source: source.into(),
        }
    }

    fn unsafe_entry(&self, reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            path: self.name(),
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> UnpackError {
        UnpackError::InvalidEntry {
            path: self.name(),
            reason: reason.into(),
        }
    }

    fn path_error(&self, e: PathError, what: &str) -> UnpackError {
        match e {
            PathError::Escapes => self.unsafe_entry(format!("{what} climbs above the layer root")),
            other => self.invalid(format!("{what}: {}", other.reason())),
        }
    }
}

impl Applier {
    /// `root` is the layer directory, opened with `O_DIRECTORY | O_NOFOLLOW`.
    /// `workers` threads create small files (0: none, all on this thread).
    /// `sharing`: note every file written for file sharing ([`Applier::finish`]
    /// gives them back).
    pub(crate) fn new(
        root: OwnedFd,
        position: LayerPosition,
        workers: usize,
        sharing: Sharing,
        limits: &Limits,
    ) -> io::Result<Applier> {
        let st = rfs::fstat(&root)?;
        let euid = rustix::process::geteuid().as_raw();
        let egid = rustix::process::getegid().as_raw();
        // New entries take the directory's group when it is setgid.
        let default_owner = (st.st_mode & 0o2000 == 0).then_some((euid, egid));
        let inherits_acl = rfs::fgetxattr_query(&root, DEFAULT_ACL_XATTR).is_ok();
        // Only into an empty directory: there a path the layer has not made
        // cannot exist, which is what lets the pool create files unchecked.
        let workers = if workers > 0 && is_empty_dir(root.as_fd())? {
            workers
        } else {
            0
        };
        Ok(Applier {
            root: Arc::new(root),
            parallel: Parallel {
                workers,
                pool: None,
                made: HashSet::new(),
                pending: HashSet::new(),
                last_parent: Vec::new(),
                last_pooled_dir: None,
            },
            cache: ParentCache::default(),
            state: State {
                deferred: BTreeMap::new(),
                whiteouts: HashSet::new(),
                base: position == LayerPosition::Base,
                ignore_chown_errors: limits.ignore_chown_errors,
                opaque_xattr: limits.overlay_xattrs.opaque(),
                default_owner,
                umask: if inherits_acl { None } else { process_umask() },
                written: (!matches!(sharing, Sharing::Off)).then(WrittenLog::default),
                prelink: match sharing {
                    Sharing::Prelink(p) => Some(p),
                    Sharing::Off | Sharing::Note => None,
                },
                removed_any: false,
            },
        })
    }

    /// Applies one entry, reading its data from `tar`. Returns the number
    /// of file content bytes written (or handed to the file pool).
    pub(crate) fn apply<R: BufRead>(
        &mut self,
        entry: Entry,
        tar: &mut TarReader<R>,
    ) -> Result<u64, UnpackError> {
        let path =
            normalize(&entry.name).map_err(|e| Ctx { entry: &entry }.path_error(e, "path"))?;
        let role = role(&path);
        if let Some(hash) = self.order_with_pool(&entry, &path, &role)? {
            return self.submit_file(entry, &path, hash, tar);
        }
        let ctx = Ctx { entry: &entry };
        if path.is_empty() {
            return self.apply_root(&ctx);
        }
        let (parent_path, name) = split_parent(&path);
        match role {
            Role::AufsMeta => Ok(0),
            Role::InvalidWhiteout => Err(ctx.invalid("whiteout without a name")),
            // Nothing below a base layer to hide: the marker is not applied,
            // nor are the parents it names created. A parent path that
            // passes through a symlink is still refused, as for any entry.
            Role::Opaque | Role::Whiteout(_) if self.state.base => {
                check_parent(self.root.as_fd(), parent_path, &ctx, &self.state)?;
                Ok(0)
            }
            // Below a path this layer whited out, a marker has nothing
            // left to hide: that whiteout hides the whole lower tree, and
            // applying the marker would make the directory again (an empty
            // directory where the image has none; `rm -rf` in some tools
            // writes `.wh.foo` and `foo/.wh.bar`).
            Role::Opaque | Role::Whiteout(_) if self.below_own_whiteout(parent_path) => Ok(0),
            Role::Opaque => {
                let parent = self.cache.get(&self.root, parent_path, &ctx, &self.state)?;
                set_opaque(parent.as_fd(), &self.state)
                    .map_err(|e| ctx.fs("marking the directory opaque", e))?;
                Ok(0)
            }
            Role::Whiteout(target) => {
                let target_path = child_path(parent_path, target);
                let parent = self
                    .cache
                    .get(&self.root, parent_path, &ctx, &self.state)?
                    .clone();
                let removed_dir =
                    whiteout(parent.as_fd(), target, &target_path, &self.state, &ctx)?;
                self.state.removed_any |= removed_dir;
                if removed_dir {
                    self.cache.forget_within(&target_path);
                }
                self.state.whiteouts.insert(target_path);
                Ok(0)
            }
            Role::Plain => {
                let root = self.root.as_fd();
                let parent = self.cache.get(&self.root, parent_path, &ctx, &self.state)?;
                let mut removed_dir = false;
                let op = Op {
                    parent: parent.as_fd(),
                    name,
                    path: &path,
                    ctx: &ctx,
                    removed_dir: &mut removed_dir,
                };
                let written = match entry.kind {
                    Kind::File => op.file(&mut self.state, tar)?,
                    Kind::Dir => op.dir(&mut self.state).map(|()| 0)?,
                    Kind::Symlink => op.symlink(&mut self.state).map(|()| 0)?,
                    Kind::Hardlink => {
                        op.hardlink(&mut self.state, root)?;
                        if let Some(log) = &self.state.written {
                            // Normalised as `hardlink` just did.
                            let target = normalize(&entry.link).unwrap_or_default();
                            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                            log.links.push(path.clone());
                            log.link_targets.push(target);
                        }
                        0
                    }
                    Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                        op.special(&mut self.state).map(|()| 0)?
                    }
                };
                if removed_dir {
                    self.cache.forget_within(&path);
                }
                Ok(written)
            }
        }
    }

    /// Whether the directory `path` lies at or below a whiteout this layer
    /// made (the layer started empty, so any 0/0 device in it is one).
    /// Cheap when it does not: a cached or openable directory is no
    /// whiteout, and a layer without whiteouts has none.
    fn below_own_whiteout(&self, path: &[u8]) -> bool {
        if path.is_empty() || self.state.whiteouts.is_empty() {
            return false;
        }
        if matches!(&self.cache.entry, Some((cached, _)) if cached == path) {
            return false;
        }
        let root = self.root.as_fd();
        let open = |base: BorrowedFd<'_>, name: &[u8]| {
            rfs::openat2(
                base,
                name,
                dir_open_flags(),
                Mode::empty(),
                resolve_beneath(),
            )
        };
        if open(root, path).is_ok() {
            return false;
        }
        // Walk it: the first component that is no directory decides. A
        // symlink or a file is no whiteout; the entry then fails as usual.
        let mut current: Option<OwnedFd> = None;
        for component in path.split(|&b| b == b'/') {
            let base = current.as_ref().map_or(root, |fd| fd.as_fd());
            match open(base, component) {
                Ok(fd) => current = Some(fd),
                Err(Errno::NOTDIR) => {
                    return rfs::statat(base, component, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| is_whiteout(&st))
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Keeps the file pool's work ordered with this entry: waits for the
    /// pool unless the entry makes a new plain path whose parents are not
    /// being written, and records the path. Returns the path's hash when
    /// the entry itself may go to the pool.
    fn order_with_pool(
        &mut self,
        entry: &Entry,
        path: &[u8],
        role: &Role<'_>,
    ) -> Result<Option<u64>, UnpackError> {
        let parallel = &mut self.parallel;
        if parallel.workers == 0 {
            return Ok(None);
        }
        if !parallel.active() {
            // Past the tracking limit: the rest of the layer on this thread.
            parallel.drain()?;
            parallel.workers = 0;
            parallel.pool = None;
            return Ok(None);
        }
        let (parent_path, _) = split_parent(path);
        let hash = path_hash(path);
        let new_plain = !path.is_empty()
            && *role == Role::Plain
            && entry.kind != Kind::Hardlink
            && !parallel.made.contains(&hash);
        if !new_plain || parallel.pending_within(parent_path) {
            parallel.drain()?;
        }
        parallel.made_with_parents(path, hash);
        if let Role::Whiteout(target) = role {
            // The whiteout device is made at the name it deletes.
            parallel
                .made
                .insert(path_hash(&child_path(parent_path, target)));
        }
        let pooled = new_plain && entry.kind == Kind::File && entry.size <= files::MAX_FILE;
        Ok(pooled.then_some(hash))
    }

    /// Reads a small file's data and hands it to the pool (`hash` is the
    /// path's `path_hash`).
    fn submit_file<R: BufRead>(
        &mut self,
        entry: Entry,
        path: &[u8],
        hash: u64,
        tar: &mut TarReader<R>,
    ) -> Result<u64, UnpackError> {
        let (parent_path, name) = split_parent(path);
        let parent = {
            let ctx = Ctx { entry: &entry };
            self.cache
                .get(&self.root, parent_path, &ctx, &self.state)?
                .clone()
        };
        let data = tar.read_data()?;
        let written = data.len() as u64;
        let policy = file_policy(&self.state, &entry);
        if self.parallel.pool.is_none() {
            match FilePool::new(self.parallel.workers, self.state.prelink.clone()) {
                Ok(pool) => self.parallel.pool = Some(pool),
                // No threads to be had (a process or memory limit): the
                // layer goes on with this one.
                Err(_) => self.parallel.workers = 0,
            }
        }
        let noted = self
            .state
            .written
            .as_ref()
            .filter(|_| written >= MIN_SHARED_SIZE)
            .map(|log| (log.clone(), path.to_vec()));
        // Only when the file's metadata follows from its entry alone: no
        // default ACL adds to it, no owner goes to an xattr instead.
        let predictable = self.state.umask.is_some() && !self.state.ignore_chown_errors;
        let predicted = (noted.is_some() && self.state.prelink.is_some() && predictable)
            .then(|| predicted_meta(&entry, written))
            .flatten();
        let job = FileJob {
            parent,
            name: name.to_vec(),
            entry,
            data,
            policy,
            noted,
            predicted,
        };
        let Some(pool) = &mut self.parallel.pool else {
            let mut cursor = self.state.prelink.as_deref().map(Prelinker::cursor);
            files::write_job(&job, cursor.as_mut())?;
            return Ok(written);
        };
        self.parallel.pending.insert(hash);
        let same_dir = matches!(&self.parallel.last_pooled_dir,
            Some(last) if Arc::ptr_eq(last, &job.parent));
        if !same_dir {
            pool.next_directory()?;
            self.parallel.last_pooled_dir = Some(job.parent.clone());
        }
        pool.submit(job)?;
        Ok(written)
    }

    /// An entry naming the layer root: only a directory may, and then only
    /// its attributes change. The root is never replaced.
    fn apply_root(&mut self, ctx: &Ctx<'_>) -> Result<u64, UnpackError> {
        let entry = ctx.entry;
        match entry.kind {
            Kind::Dir => {
                set_xattrs(XattrTarget::Open(self.root.as_fd()), entry, ctx)?;
                if has_default_acl(entry) {
                    // Files created from now on take their mode from it.
                    self.state.umask = None;
                }
                self.state.deferred.insert(Vec::new(), dir_attrs(entry));
                Ok(0)
            }
            kind => Err(ctx.unsafe_entry(format!(
                "a {} cannot replace the layer root",
                kind.describe()
            ))),
        }
    }

    /// Applies the directories' modes, owners and times, deepest first.
    /// Returns the files written, when noted.
    pub(crate) fn finish(mut self) -> Result<Option<Written>, UnpackError> {
        self.parallel.drain()?;
        self.parallel.pool = None;
        let intact = !self.state.removed_any;
        let written = self.state.written.take().map(|log| {
            let mut written = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
            written.intact = intact;
            written
        });
        let mut dirs: Vec<(Vec<u8>, DirAttrs)> = self.state.deferred.into_iter().collect();
        dirs.sort_by_key(|(path, _)| {
            Reverse(path.iter().filter(|&&b| b == b'/').count() + usize::from(!path.is_empty()))
        });
        for (path, attrs) in dirs {
            let name = || String::from_utf8_lossy(&path).into_owned();
            let fs_err = |action: &str, e: Errno| UnpackError::Fs {
                path: name(),
                action: action.to_string(),
                source: e.into(),
            };
            let opened;
            let fd = if path.is_empty() {
                self.root.as_fd()
            } else {
                opened = rfs::openat2(
                    &self.root,
                    &path,
                    dir_open_flags(),
                    Mode::empty(),
                    resolve_beneath(),
                )
                .map_err(|e| fs_err("reopening the directory to set its attributes", e))?;
                opened.as_fd()
            };
            if self.state.default_owner != Some((attrs.uid, attrs.gid)) {
                let owner = Owner {
                    uid: attrs.uid,
                    gid: attrs.gid,
                    mode: attrs.mode,
                    kind: "dir",
                };
                set_owner(fd, &owner, self.state.ignore_chown_errors)
                    .map_err(|(action, e)| fs_err(&action, e))?;
            }
            rfs::fchmod(fd, Mode::from_raw_mode(attrs.mode))
                .map_err(|e| fs_err("setting the mode", e))?;
            rfs::futimens(fd, &timestamps(attrs.atime, attrs.mtime))
                .map_err(|e| fs_err("setting the times", e))?;
        }
        Ok(written)
    }
}

impl ParentCache {
    /// The directory `path` (normalised, relative to the root), created
    /// when missing.
    fn get<'a>(
        &'a mut self,
        root: &'a Arc<OwnedFd>,
        path: &[u8],
        ctx: &Ctx<'_>,
        state: &State,
    ) -> Result<&'a Arc<OwnedFd>, UnpackError> {
        if path.is_empty() {
            return Ok(root);
        }
        let hit = matches!(&self.entry, Some((cached, _)) if cached == path);
        if !hit {
            let fd = open_dir_beneath(root.as_fd(), path, Missing::Create, "parent", ctx, state)?;
            self.entry = Some((path.to_vec(), Arc::new(fd)));
        }
        match &self.entry {
            Some((_, fd)) => Ok(fd),
            None => Err(ctx.invalid("parent directory cache is empty")),
        }
    }

    /// Drops the cached fd if it lies in a removed tree.
    fn forget_within(&mut self, removed: &[u8]) {
        if matches!(&self.entry, Some((cached, _)) if is_within(cached, removed)) {
            self.entry = None;
        }
    }
}

/// What to do about a missing directory while walking a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Create it (a parent the archive implies).
    Create,
    /// Fail: the path must already exist in this layer.
    Fail,
}

/// Opens the directory `path` below `root`. `what` names the path in
/// messages ("parent", "hardlink target \"x\"").
fn open_dir_beneath(
    root: BorrowedFd<'_>,
    path: &[u8],
    missing: Missing,
    what: &str,
    ctx: &Ctx<'_>,
    state: &State,
) -> Result<OwnedFd, UnpackError> {
    if let Ok(fd) = rfs::openat2(
        root,
        path,
        dir_open_flags(),
        Mode::empty(),
        resolve_beneath(),
    ) {
        return Ok(fd);
    }
    // Walk it component by component: creates what is missing (if asked)
    // and names what is in the way.
    let mut current: Option<OwnedFd> = None;
    let mut end = 0;
    for component in path.split(|&b| b == b'/') {
        end += component.len();
        let walked = &path[..end];
        end += 1;
        let shown = || String::from_utf8_lossy(walked).into_owned();
        let base = current.as_ref().map_or(root, |fd| fd.as_fd());
        let next = match rfs::openat2(
            base,
            component,
            dir_open_flags(),
            Mode::empty(),
            resolve_beneath(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if missing == Missing::Create => {
                make_implied_dir(base, component, walked, ctx, state, false)?
            }
            Err(Errno::NOENT) => {
                return Err(ctx.invalid(format!(
                    "{what}: {:?} does not exist in this layer",
                    shown()
                )))
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = rfs::statat(base, component, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ctx.fs(format!("inspecting {:?}", shown()), e))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    return Err(ctx.unsafe_entry(format!(
                        "{what} passes through symlink {:?}; symlinks are never followed",
                        shown()
                    )));
                }
                if !(is_whiteout(&st) && missing == Missing::Create) {
                    return Err(ctx.invalid(format!("{what}: {:?} is not a directory", shown())));
                }
                // A path this layer whited out and now fills again.
                rfs::unlinkat(base, component, AtFlags::empty())
                    .map_err(|e| ctx.fs("removing a whiteout to make a directory", e))?;
                make_implied_dir(base, component, walked, ctx, state, true)?
            }
            Err(e) => return Err(ctx.fs(format!("opening {what} {:?}", shown()), e)),
        };
        current = Some(next);
    }
    current.ok_or_else(|| ctx.invalid(format!("{what}: empty path")))
}

/// Checks, creating nothing, that `path` is not reached through a symlink
/// or a non-directory. A missing directory is fine: nothing is there.
fn check_parent(
    root: BorrowedFd<'_>,
    path: &[u8],
    ctx: &Ctx<'_>,
    state: &State,
) -> Result<(), UnpackError> {
    if path.is_empty() {
        return Ok(());
    }
    match rfs::openat2(
        root,
        path,
        dir_open_flags(),
        Mode::empty(),
        resolve_beneath(),
    ) {
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        // The walk says precisely what is in the way.
        Err(_) => open_dir_beneath(root, path, Missing::Fail, "parent", ctx, state).map(drop),
    }
}

/// Creates a directory the archive implies (a parent it does not list).
fn make_implied_dir(
    base: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    ctx: &Ctx<'_>,
    state: &State,
    replaced_whiteout: bool,
) -> Result<OwnedFd, UnpackError> {
    rfs::mkdirat(base, name, Mode::from_raw_mode(IMPLIED_DIR_MODE))
        .map_err(|e| ctx.fs("creating a parent directory", e))?;
    let fd = rfs::openat2(
        base,
        name,
        dir_open_flags(),
        Mode::empty(),
        resolve_beneath(),
    )
    .map_err(|e| ctx.fs("opening a new parent directory", e))?;
    // Explicit, so the process umask does not matter.
    rfs::fchmod(&fd, Mode::from_raw_mode(IMPLIED_DIR_MODE))
        .map_err(|e| ctx.fs("setting a parent's mode", e))?;
    if replaced_whiteout || state.whiteouts.contains(path) {
        set_opaque(fd.as_fd(), state)
            .map_err(|e| ctx.fs("marking a parent directory opaque", e))?;
    }
    Ok(fd)
}

/// One plain entry being created in its parent directory.
/// How a new file's owner and mode are set, decided from the extraction's
/// state when its entry is read.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(test, derive(Default))]
pub(super) struct FilePolicy {
    /// Owner a new file gets without chown, when predictable.
    default_owner: Option<(u32, u32)>,
    /// An owner that cannot be set goes to `user.containers.override_stat`.
    ignore_chown_errors: bool,
    /// The mode given at creation is not the final one.
    needs_chmod: bool,
}

fn file_policy(state: &State, entry: &Entry) -> FilePolicy {
    // Created with its final permissions when the umask cannot strip any;
    // special bits are set after chown, which would clear them.
    let needs_chmod = match state.umask {
        Some(umask) => entry.mode & 0o7000 != 0 || entry.mode & umask != 0,
        None => true,
    };
    FilePolicy {
        default_owner: state.default_owner,
        ignore_chown_errors: state.ignore_chown_errors,
        needs_chmod,
    }
}

/// Creates a regular file that must not exist yet, never following a
/// symlink, with the entry's permission bits.
pub(super) fn create_file(
    parent: BorrowedFd<'_>,
    name: &[u8],
    entry: &Entry,
) -> Result<OwnedFd, Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rfs::openat(parent, name, flags, Mode::from_raw_mode(entry.mode & 0o777))
}

/// Why a layer file cannot be opened for reading.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The system refused (missing, a symlink on the way: `ELOOP`, ...).
    Os(Errno),
    /// Something other than a regular file is there.
    NotRegular,
}

/// Opens the regular file at `path` (normalised, relative to `root`, the
/// layer directory) for reading, as extraction resolves names: the parent
/// with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | ...)`, the file
/// with `O_NOFOLLOW`, after `fstatat` said it is a regular file (so no
/// device or fifo the layer holds is ever opened), and checked again on
/// the fd.
pub(crate) fn open_file_beneath(root: BorrowedFd<'_>, path: &[u8]) -> Result<File, OpenError> {
    let (parent_path, name) = split_parent(path);
    if name.is_empty() {
        return Err(OpenError::NotRegular);
    }
    let parent;
    let dir = if parent_path.is_empty() {
        root
    } else {
        parent = rfs::openat2(
            root,
            parent_path,
            dir_open_flags(),
            Mode::empty(),
            resolve_beneath(),
        )
        .map_err(OpenError::Os)?;
        parent.as_fd()
    };
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(OpenError::Os)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OpenError::NotRegular);
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(OpenError::Os)?;
    let opened = rfs::fstat(&fd).map_err(OpenError::Os)?;
    if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
        || (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino)
    {
        return Err(OpenError::NotRegular);
    }
    Ok(File::from(fd))
}

/// Owner, mode, xattrs and times of a file just written.
pub(super) fn file_metadata(
    fd: BorrowedFd<'_>,
    entry: &Entry,
    policy: FilePolicy,
    ctx: &Ctx<'_>,
) -> Result<(), UnpackError> {
    // chown before chmod (chown clears setuid/setgid), xattrs after both
    // (chown drops security.capability), times last.
    if policy.default_owner != Some((entry.uid, entry.gid)) {
        let owner = Owner {
            uid: entry.uid,
            gid: entry.gid,
            mode: entry.mode,
            kind: "file",
        };
        set_owner(fd, &owner, policy.ignore_chown_errors)
            .map_err(|(action, e)| ctx.fs(action, e))?;
    }
    if policy.needs_chmod {
        rfs::fchmod(fd, Mode::from_raw_mode(entry.mode))
            .map_err(|e| ctx.fs("setting the mode", e))?;
    }
    set_xattrs(XattrTarget::Open(fd), entry, ctx)?;
    rfs::futimens(fd, &entry_times(entry)).map_err(|e| ctx.fs("setting the times", e))
}

struct Op<'a> {
    parent: BorrowedFd<'a>,
    name: &'a [u8],
    path: &'a [u8],
    ctx: &'a Ctx<'a>,
    removed_dir: &'a mut bool,
}

impl Op<'_> {
    fn file<R: BufRead>(
        mut self,
        state: &mut State,
        tar: &mut TarReader<R>,
    ) -> Result<u64, UnpackError> {
        let entry = self.ctx.entry;
        let fd = match create_file(self.parent, self.name, entry) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                self.remove_existing(state)?;
                create_file(self.parent, self.name, entry)
                    .map_err(|e| self.ctx.fs("creating the file", e))?
            }
            Err(e) => return Err(self.ctx.fs("creating the file", e)),
        };
        let mut file = File::from(fd);
        let mut written = 0u64;
        let mut flushed = 0u64;
        let mut hasher =
            (state.written.is_some() && entry.size >= MIN_SHARED_SIZE).then(blake3::Hasher::new);
        while written < self.ctx.entry.size {
            let chunk = tar.data_chunk()?;
            if chunk.is_empty() {
                break;
            }
            file.write_all(chunk)
                .map_err(|e| self.ctx.fs("writing the file", e))?;
            if let Some(h) = &mut hasher {
                h.update(chunk);
            }
            let n = chunk.len();
            tar.consume_data(n);
            written += n as u64;
            if written - flushed >= writeback::STEP {
                writeback::start(file.as_fd(), flushed, written - flushed);
                flushed = written;
            }
        }
        // The tail of a big file; small files are left to the flusher.
        if flushed > 0 && written > flushed {
            writeback::start(file.as_fd(), flushed, 0);
        }
        file_metadata(file.as_fd(), entry, file_policy(state, entry), self.ctx)?;
        if let (Some(log), Some(h)) = (&state.written, hasher) {
            let content = *h.finalize().as_bytes();
            note_written(log, file.as_fd(), self.path, content, None, self.ctx)?;
        }
        Ok(written)
    }

    fn dir(mut self, state: &mut State) -> Result<(), UnpackError> {
        let mode = Mode::from_raw_mode(IMPLIED_DIR_MODE);
        let mut opaque = false;
        match rfs::mkdirat(self.parent, self.name, mode) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = self.stat()?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    // A directory replacing a whiteout hides what it deleted.
                    opaque = is_whiteout(&st);
                    self.remove_existing(state)?;
                    rfs::mkdirat(self.parent, self.name, mode)
                        .map_err(|e| self.ctx.fs("creating the directory", e))?;
                }
                // An existing directory keeps its content; only its
                // attributes change.
            }
            Err(e) => return Err(self.ctx.fs("creating the directory", e)),
        }
        opaque |= state.whiteouts.contains(self.path);
        let entry = self.ctx.entry;
        if opaque || !entry.xattrs.is_empty() {
            let fd = rfs::openat2(
                self.parent,
                self.name,
                dir_open_flags(),
                Mode::empty(),
                resolve_beneath(),
            )
            .map_err(|e| self.ctx.fs("opening the directory", e))?;
            if opaque {
                set_opaque(fd.as_fd(), state)
                    .map_err(|e| self.ctx.fs("marking the directory opaque", e))?;
            }
            set_xattrs(XattrTarget::Open(fd.as_fd()), entry, self.ctx)?;
            if has_default_acl(entry) {
                // Files created below take their mode from the ACL now.
                state.umask = None;
            }
        }
        state.deferred.insert(self.path.to_vec(), dir_attrs(entry));
        Ok(())
    }

    fn symlink(mut self, state: &mut State) -> Result<(), UnpackError> {
        let entry = self.ctx.entry;
        if entry.link.is_empty() {
            return Err(self.ctx.invalid("symlink with an empty target"));
        }
        if entry.link.contains(&0) {
            return Err(self.ctx.invalid("symlink target contains a NUL byte"));
        }
        // The target text is stored as is: it is never followed here.
        let target = entry.link.as_slice();
        match rfs::symlinkat(target, self.parent, self.name) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(state)?;
                rfs::symlinkat(target, self.parent, self.name)
                    .map_err(|e| self.ctx.fs("creating the symlink", e))?;
            }
            Err(e) => return Err(self.ctx.fs("creating the symlink", e)),
        }
        self.node_metadata(state, false)
    }

    fn hardlink(mut self, state: &mut State, root: BorrowedFd<'_>) -> Result<(), UnpackError> {
        let ctx = self.ctx;
        let target =
            normalize(&ctx.entry.link).map_err(|e| ctx.path_error(e, "hardlink target"))?;
        if target.is_empty() {
            return Err(ctx.unsafe_entry("hardlink to the layer root"));
        }
        if target == self.path {
            // A link to itself: the file already is what it names.
            return match self.stat() {
                Ok(_) => Ok(()),
                Err(_) => Err(ctx.invalid("hardlink to itself, which does not exist")),
            };
        }
        let shown = || String::from_utf8_lossy(&target).into_owned();
        let (target_parent, target_name) = split_parent(&target);
        let opened;
        let target_dir = if target_parent.is_empty() {
            root
        } else {
            let what = format!("hardlink target {:?}", shown());
            opened = open_dir_beneath(root, target_parent, Missing::Fail, &what, ctx, state)?;
            opened.as_fd()
        };
        let link = |op: &Op<'_>| {
            rfs::linkat(
                target_dir,
                target_name,
                op.parent,
                op.name,
                AtFlags::empty(),
            )
        };
        let result = match link(&self) {
            Err(Errno::EXIST) => {
                self.remove_existing(state)?;
                link(&self)
            }
            other => other,
        };
        result.map_err(|e| match e {
            Errno::NOENT => ctx.invalid(format!(
                "hardlink target {:?} does not exist in this layer",
                shown()
            )),
            Errno::PERM => ctx.invalid(format!(
                "hardlink target {:?} is a directory or may not be linked",
                shown()
            )),
            e => ctx.fs(format!("linking to {:?}", shown()), e),
        })
        // The linked inode keeps the metadata of its own entry, as GNU tar
        // does: the link header describes the same file.
    }

    fn special(mut self, state: &mut State) -> Result<(), UnpackError> {
        let entry = self.ctx.entry;
        let (file_type, dev): (FileType, Dev) = match entry.kind {
            Kind::CharDevice => (
                FileType::CharacterDevice,
                rfs::makedev(entry.dev_major, entry.dev_minor),
            ),
            Kind::BlockDevice => (
                FileType::BlockDevice,
                rfs::makedev(entry.dev_major, entry.dev_minor),
            ),
            _ => (FileType::Fifo, 0),
        };
        let mode = Mode::from_raw_mode(0o600);
        let make = |op: &Op<'_>| rfs::mknodat(op.parent, op.name, file_type, mode, dev);
        let result = match make(&self) {
            Err(Errno::EXIST) => {
                self.remove_existing(state)?;
                make(&self)
            }
            other => other,
        };
        result.map_err(|e| match e {
            Errno::PERM => self.ctx.fs(
                format!("creating a {} (needs root)", entry.kind.describe()),
                e,
            ),
            e => self
                .ctx
                .fs(format!("creating a {}", entry.kind.describe()), e),
        })?;
        self.node_metadata(state, true)
    }

    /// Owner, mode, xattrs and times of a symlink or special file, none of
    /// which can be opened for writing.
    fn node_metadata(&self, state: &State, set_mode: bool) -> Result<(), UnpackError> {
        let entry = self.ctx.entry;
        let node = rfs::openat(
            self.parent,
            self.name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.ctx.fs("opening the new node", e))?;
        if state.default_owner != Some((entry.uid, entry.gid)) {
            // No fallback to an xattr here: the kernel takes user.* xattrs
            // only on files and directories, so an owner it refuses fails.
            rfs::chownat(
                &node,
                c"",
                Some(uid(entry.uid)),
                Some(gid(entry.gid)),
                AtFlags::EMPTY_PATH,
            )
            .map_err(|e| {
                let action = if state.ignore_chown_errors && matches!(e, Errno::INVAL | Errno::PERM)
                {
                    crate::userns::owner_without_xattr_fix(
                        entry.uid,
                        entry.gid,
                        entry.kind.describe(),
                    )
                } else {
                    owner_refused(entry.uid, entry.gid, e)
                };
                self.ctx.fs(action, e)
            })?;
        }
        if set_mode {
            // Not a symlink (just made by mknodat), so following the fd's
            // magic link reaches this very node.
            rfs::chmod(proc_fd_path(&node), Mode::from_raw_mode(entry.mode))
                .map_err(|e| self.ctx.fs("setting the mode", e))?;
        }
        set_xattrs(XattrTarget::Path(node.as_fd()), entry, self.ctx)?;
        rfs::utimensat(
            self.parent,
            self.name,
            &entry_times(entry),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.ctx.fs("setting the times", e))?;
        Ok(())
    }

    fn stat(&self) -> Result<rfs::Stat, UnpackError> {
        rfs::statat(self.parent, self.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.ctx.fs("inspecting the existing path", e))
    }

    /// Removes whatever exists at the entry's name: a later entry wins.
    fn remove_existing(&mut self, state: &mut State) -> Result<(), UnpackError> {
        state.removed_any = true;
        let st = self.stat()?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(self.parent, self.name)
                .map_err(|e| self.ctx.fs("removing the existing directory", e))?;
            remove_deferred_within(&mut state.deferred, self.path);
            *self.removed_dir = true;
        } else {
            rfs::unlinkat(self.parent, self.name, AtFlags::empty())
                .map_err(|e| self.ctx.fs("removing the existing file", e))?;
        }
        Ok(())
    }
}

/// Writes a whiteout for `target` (at `target_path` from the layer root)
/// in `parent`. Returns whether a directory was removed to make it.
///
/// OCI layer.md: a whiteout hides the name in *lower* layers only; what
/// this layer itself puts at that name stays. So:
/// - nothing there yet: a 0/0 character device (overlay's whiteout);
/// - a directory this layer made only to hold whiteouts of paths below
///   (`foo/.wh.bar` before `.wh.foo`): it holds nothing of the layer's
///   own, so it is replaced by the device, which hides all it hid;
/// - any other directory from this layer: it stays, made opaque, so the
///   lower layers' content under it is hidden as the whiteout says;
/// - a file, symlink, device or whiteout from this layer: it stays as is,
///   since a non-directory in an upper layer already hides the lower name.
fn whiteout(
    parent: BorrowedFd<'_>,
    target: &[u8],
    target_path: &[u8],
    state: &State,
    ctx: &Ctx<'_>,
) -> Result<bool, UnpackError> {
    let make_device = || {
        rfs::mknodat(parent, target, FileType::CharacterDevice, Mode::empty(), 0).map_err(|e| {
            match e {
                Errno::PERM => ctx.fs("creating the whiteout device (needs root)", e),
                e => ctx.fs("creating the whiteout device", e),
            }
        })
    };
    match rfs::statat(parent, target, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => make_device().map(|()| false),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            let fd = rfs::openat2(
                parent,
                target,
                dir_open_flags(),
                Mode::empty(),
                resolve_beneath(),
            )
            .map_err(|e| ctx.fs("opening the whited-out directory", e))?;
            let only_markers = holds_only_markers(fd.as_fd(), target_path, &state.deferred)
                .map_err(|e| ctx.fs("reading the whited-out directory", e))?;
            if only_markers {
                drop(fd);
                remove_tree(parent, target)
                    .map_err(|e| ctx.fs("removing the whited-out directory", e))?;
                return make_device().map(|()| true);
            }
            set_opaque(fd.as_fd(), state)
                .map_err(|e| ctx.fs("marking the whited-out directory opaque", e))?;
            Ok(false)
        }
        Ok(_) => Ok(false),
        Err(e) => Err(ctx.fs("inspecting the whited-out path", e)),
    }
}

/// Whether the directory `dir` (at `path`) and every directory below it
/// were made by this layer only as parents of whiteouts and opaque markers:
/// none is an entry of the layer (those are in `listed`, with the
/// attributes they get at the end), and nothing else is in them. Reads
/// one directory at a time, so depth costs no fds.
fn holds_only_markers(
    dir: BorrowedFd<'_>,
    path: &[u8],
    listed: &BTreeMap<Vec<u8>, DirAttrs>,
) -> Result<bool, Errno> {
    if listed.contains_key(path) {
        return Ok(false);
    }
    // Directories to read, relative to `dir` ("" is `dir` itself).
    let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = pending.pop() {
        let fd = if rel.is_empty() {
            rfs::openat(dir, c".", dir_open_flags(), Mode::empty())?
        } else {
            rfs::openat2(
                dir,
                &rel,
                dir_open_flags(),
                Mode::empty(),
                resolve_beneath(),
            )?
        };
        for (name, _) in children(&fd)? {
            let st = rfs::statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            if is_whiteout(&st) {
                continue;
            }
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Ok(false);
            }
            let sub = child_path(&rel, name.to_bytes());
            if listed.contains_key(&child_path(path, &sub)) {
                return Ok(false);
            }
            pending.push(sub);
        }
    }
    Ok(true)
}

/// Whether a directory entry gives the directory a default ACL.
fn has_default_acl(entry: &Entry) -> bool {
    entry
        .xattrs
        .iter()
        .any(|(name, _)| name == DEFAULT_ACL_XATTR.as_bytes())
}

fn is_whiteout(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

fn set_opaque(dir: BorrowedFd<'_>, state: &State) -> Result<(), Errno> {
    rfs::fsetxattr(dir, state.opaque_xattr, b"y", XattrFlags::empty())
}

/// The entries of an open directory (`.` and `..` left out), with their
/// types as the directory gives them (maybe `Unknown`).
fn children(dir: &OwnedFd) -> Result<Vec<(CString, FileType)>, Errno> {
    let mut out = Vec::new();
    let mut entries = rfs::Dir::read_from(dir)?;
    while let Some(item) = entries.read() {
        let item = item?;
        let name = item.file_name();
        if name != c"." && name != c".." {
            out.push((name.to_owned(), item.file_type()));
        }
    }
    Ok(out)
}

/// Removes the directory `name` in `parent` and everything below it,
/// without following symlinks and without recursion on the stack. Only one
/// directory fd is open at a time, so depth costs no fds.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    // (path relative to parent, children already removed)
    let mut stack: Vec<(Vec<u8>, bool)> = vec![(name.to_vec(), false)];
    while let Some((rel, emptied)) = stack.pop() {
        if emptied {
            rfs::unlinkat(parent, &rel, AtFlags::REMOVEDIR)?;
            continue;
        }
        let fd = rfs::openat2(
            parent,
            &rel,
            dir_open_flags(),
            Mode::empty(),
            resolve_beneath(),
        )?;
        stack.push((rel.clone(), true));
        for (child, file_type) in children(&fd)? {
            let is_dir = match file_type {
                FileType::Directory => true,
                FileType::Unknown => {
                    let st = rfs::statat(&fd, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                    FileType::from_raw_mode(st.st_mode) == FileType::Directory
                }
                _ => false,
            };
            if is_dir {
                let mut sub = rel.clone();
                sub.push(b'/');
                sub.extend_from_slice(child.as_bytes());
                stack.push((sub, false));
            } else {
                rfs::unlinkat(&fd, child.as_c_str(), AtFlags::empty())?;
            }
        }
    }
    Ok(())
}

fn remove_deferred_within(deferred: &mut BTreeMap<Vec<u8>, DirAttrs>, removed: &[u8]) {
    deferred.remove(removed);
    let mut lower = removed.to_vec();
    lower.push(b'/');
    let mut upper = removed.to_vec();
    upper.push(b'/' + 1);
    let doomed: Vec<Vec<u8>> = deferred
        .range(lower..upper)
        .map(|(k, _)| k.clone())
        .collect();
    for key in doomed {
        deferred.remove(&key);
    }
}

/// Whether an image may set this xattr (see [`set_xattrs`]).
fn from_image(name: &[u8]) -> bool {
    !(name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == crate::userns::OVERRIDE_STAT_XATTR.as_bytes())
}

/// The metadata hash (`share::identity`) a regular file of `size` bytes
/// written for `entry` will have: type and permission bits, owner, mtime
/// and the xattrs [`set_xattrs`] sets (the last value of a name repeated).
/// None when the entry cannot be written as is (a NUL in an xattr name).
/// Only for a file whose metadata nothing but its entry decides (no
/// default ACL, owners set with chown): `share::prelink` checks the file
/// linked against it all the same.
pub(super) fn predicted_meta(entry: &Entry, size: u64) -> Option<[u8; 16]> {
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(entry.xattrs.len());
    for (name, value) in &entry.xattrs {
        if !from_image(name) {
            continue;
        }
        if name.contains(&0) {
            return None;
        }
        xattrs.retain(|(n, _)| n != name);
        xattrs.push((name.clone(), value.clone()));
    }
    xattrs.sort();
    let fields = MetaFields {
        size,
        mode: FileType::RegularFile.as_raw_mode() | (entry.mode & 0o7777),
        uid: entry.uid,
        gid: entry.gid,
        mtime_sec: entry.mtime.sec,
        mtime_nsec: u64::from(entry.mtime.nsec),
    };
    Some(meta_hash_of(&fields, &xattrs))
}

/// Where extended attributes go: an fd open for reading or writing, or an
/// `O_PATH` fd reached through `/proc/self/fd`.
enum XattrTarget<'a> {
    Open(BorrowedFd<'a>),
    Path(BorrowedFd<'a>),
}

/// Applies the entry's `SCHILY.xattr.*` records. Overlay's own attributes
/// are never taken from an image: whiteouts and opacity come only from the
/// OCI markers, and redirect/metacopy/origin values could point elsewhere;
/// nor is `user.containers.override_stat`, which would lie about owners.
/// An attribute the filesystem does not support (ENOTSUP) is skipped.
fn set_xattrs(target: XattrTarget<'_>, entry: &Entry, ctx: &Ctx<'_>) -> Result<(), UnpackError> {
    for (name, value) in &entry.xattrs {
        if !from_image(name) {
            continue;
        }
        if name.contains(&0) {
            return Err(ctx.invalid("xattr name contains a NUL byte"));
        }
        let result = match target {
            XattrTarget::Open(fd) => {
                rfs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
            }
            XattrTarget::Path(fd) => rfs::setxattr(
                proc_fd_path(&fd),
                name.as_slice(),
                value,
                XattrFlags::empty(),
            ),
        };
        match result {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => {
                return Err(ctx.fs(
                    format!("setting xattr {:?}", String::from_utf8_lossy(name)),
                    e,
                ))
            }
        }
    }
    Ok(())
}

fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The owner, mode and type a file or directory should have.
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
    /// `file` or `dir`, as `user.containers.override_stat` names them.
    kind: &'static str,
}

/// Sets the owner of an open file or directory. An owner the system
/// refuses (one the user's namespace does not map: EINVAL; a user outside
/// any namespace: EPERM) fails with the fix in the message, or, with
/// `ignore_chown_errors`, is kept in `user.containers.override_stat`
/// (containers/storage's format) while the file stays the user's.
/// Owners are never dropped in silence.
fn set_owner(
    fd: BorrowedFd<'_>,
    owner: &Owner,
    ignore_chown_errors: bool,
) -> Result<(), (String, Errno)> {
    match rfs::fchown(fd, Some(uid(owner.uid)), Some(gid(owner.gid))) {
        Err(Errno::INVAL | Errno::PERM) if ignore_chown_errors => {
            let value = crate::userns::OverrideStat {
                uid: owner.uid,
                gid: owner.gid,
                mode: owner.mode,
                kind: owner.kind.to_string(),
            };
            rfs::fsetxattr(
                fd,
                crate::userns::OVERRIDE_STAT_XATTR,
                value.format().as_bytes(),
                XattrFlags::empty(),
            )
            .map_err(|e| {
                let action = format!("keeping owner {}:{} in an xattr", owner.uid, owner.gid);
                (action, e)
            })
        }
        Err(e) => Err((owner_refused(owner.uid, owner.gid, e), e)),
        Ok(()) => Ok(()),
    }
}

/// What a failed chown means, with the fix when the owner is unmapped.
fn owner_refused(uid: u32, gid: u32, e: Errno) -> String {
    match e {
        Errno::INVAL | Errno::PERM if !crate::userns::is_host_root() => {
            crate::userns::unmapped_owner_fix(uid, gid)
        }
        _ => "setting the owner".to_string(),
    }
}

fn uid(raw: u32) -> rfs::Uid {
    rfs::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rfs::Gid {
    rfs::Gid::from_raw(raw)
}

fn dir_attrs(entry: &Entry) -> DirAttrs {
    DirAttrs {
        uid: entry.uid,
        gid: entry.gid,
        mode: entry.mode,
        atime: entry.atime.unwrap_or(entry.mtime),
        mtime: entry.mtime,
    }
}

fn entry_times(entry: &Entry) -> Timestamps {
    timestamps(entry.atime.unwrap_or(entry.mtime), entry.mtime)
}

fn timestamps(atime: Time, mtime: Time) -> Timestamps {
    let ts = |t: Time| Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    };
    Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    }
}

/// The process umask, from /proc (Linux 4.7+); None when unknown.
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}
