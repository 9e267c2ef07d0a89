//! File sharing across layers (docs/space.md).
//!
//! A layer is extracted under `tmp/`; its regular files are hashed
//! (blake3) as they are written and their identity taken from their fd
//! (`identity`). Before the staged folder is synced and renamed into
//! place, [`share_layer`] looks each inode up in the content index
//! (`index`) and, when another layer holds an inode of the same content,
//! metadata and names, makes every name of the staged inode a hardlink to
//! that one (a link under a temporary name, then a rename over the staged
//! name, so each name always names a whole file). A file of the same
//! content but other metadata or names shares extents instead where the
//! filesystem clones (FICLONE: XFS with reflink, btrfs).
//!
//! Only inodes whose names in their layer are the same paths are linked:
//! two names of one image's view are then never one inode unless the
//! image's tar made them one (overlay shows a lower file's own inode), and
//! sharing stays invisible to containers except as a link count. Overlay
//! never writes into a lower layer (copy-up), and lstore's mounts keep
//! `index` and `metacopy` off.
//!
//! Lookups run in a read session (the shared root lock), so no gc removes
//! a layer between its lookup and the link; a holder whose file is gone
//! or differs (missing, other inode, other metadata) is passed over and
//! the staged copy kept.

pub(crate) mod identity;
pub(crate) mod index;
pub(crate) mod prelink;
pub(crate) mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layers::LayerStore;
use crate::meta::Meta;
use crate::unpack::{dir_open_flags as dir_flags, resolve_beneath};

use identity::StagedStat;
pub(crate) use identity::{identify, Written, WrittenFile, MIN_SHARED_SIZE};
use index::IndexKey;
pub(crate) use prelink::Prelinker;

/// What sharing did for one layer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Shared {
    /// The layer's entries for the index, recorded with the layer.
    pub entries: index::LayerEntries,
    /// Inodes that became another layer's inode.
    pub linked: u64,
    /// Inodes whose extents were cloned from another layer's file.
    pub cloned: u64,
    /// Bytes no longer stored twice.
    pub bytes: u64,
}

/// Whether FICLONE works on the store's filesystem, found out by the first
/// clone tried (0 unknown, yes, no).
#[derive(Debug, Default)]
pub(crate) struct Reflink(AtomicU8);

const REFLINK_YES: u8 = 1;
const REFLINK_NO: u8 = 2;

impl Reflink {
    fn worth_trying(&self) -> bool {
        self.0.load(Ordering::Relaxed) != REFLINK_NO
    }
    /// Whether clones work where `dir` is: the first call tries one
    /// between two small files made there (and removed), so a filesystem
    /// that cannot clone costs no content lookups at all.
    fn probe(&self, dir: BorrowedFd<'_>) -> bool {
        if self.0.load(Ordering::Relaxed) == 0 {
            self.set(clones_in(dir).unwrap_or(false));
        }
        self.worth_trying()
    }

    fn set(&self, works: bool) {
        self.0.store(
            if works { REFLINK_YES } else { REFLINK_NO },
            Ordering::Relaxed,
        );
    }
}

/// Tries FICLONE between two files made in `dir` for the purpose.
fn clones_in(dir: BorrowedFd<'_>) -> std::result::Result<bool, Errno> {
    let names = [c".lstore-reflink-probe-a", c".lstore-reflink-probe-b"];
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let src = rfs::openat(dir, names[0], flags, Mode::from_raw_mode(0o600))?;
    let dest = rfs::openat(dir, names[1], flags, Mode::from_raw_mode(0o600));
    let result = dest.and_then(|dest| {
        rustix::io::write(&src, &[0u8; 4096])?;
        Ok(rfs::ioctl_ficlone(&dest, &src).is_ok())
    });
    for name in names {
        let _ = rfs::unlinkat(dir, name, AtFlags::empty());
    }
    result
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    }
}

/// Opens directory `path` below `root`, never through a symlink.
fn open_dir(root: BorrowedFd<'_>, path: &[u8]) -> std::result::Result<OwnedFd, Errno> {
    if path.is_empty() {
        return rfs::openat(root, c".", dir_flags(), Mode::empty());
    }
    rfs::openat2(root, path, dir_flags(), Mode::empty(), resolve_beneath())
}

/// The last directory opened, kept for a run of names in it.
struct Dirs<'a> {
    root: BorrowedFd<'a>,
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl<'a> Dirs<'a> {
    fn new(root: BorrowedFd<'a>) -> Self {
        Dirs { root, last: None }
    }
    fn get(&mut self, path: &[u8]) -> std::result::Result<BorrowedFd<'_>, Errno> {
        if !matches!(&self.last, Some((p, _)) if p == path) {
            self.last = Some((path.to_vec(), open_dir(self.root, path)?));
        }
        match &self.last {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Errno::NOENT),
        }
    }
}

/// One staged inode and its names in the layer.
struct Group {
    file: WrittenFile,
    names: Vec<Vec<u8>>,
    st: StagedStat,
}

/// Shares the files of the layer staged at `diff`, as described in the
/// module comment. Layers in `skip` are never linked to (fsck's damaged
/// layers). `index_unchanged`: no batch landed since the index copy the
/// extraction linked through was opened (`prelink`), so its holders are
/// still indexed and in place. Returns the layer's index entries and what
/// was shared.
pub(crate) fn share_layer(
    layers: &LayerStore,
    meta: &Meta,
    diff: &Path,
    written: Written,
    skip: &HashSet<Digest>,
    index_unchanged: bool,
    reflink: &Reflink,
) -> Result<Shared> {
    let io = |what: &str, e: Errno| Error::io(format!("{what} in {}", diff.display()), e.into());
    let root = rfs::openat(rfs::CWD, diff, dir_flags(), Mode::empty())
        .map_err(|e| io("open the staged layer", e))?;
    let mut out = Shared::default();
    // Sharing is an optimisation: an index that cannot be read (an error
    // of the lookup, a value that does not decode) leaves the layer
    // unshared, never fails it. Nothing has changed yet at this point.
    let mut lookup = index::Lookup::new(meta).ok();
    // Directory times are noted before any entry in them changes.
    let mut touched = DirTimes::default();
    let Written {
        files,
        links,
        link_targets,
        intact,
    } = written;
    let (prelinked, mut files) = split_prelinked(files);
    if !prelinked.is_empty() {
        let holders = prelink::Holders {
            layers,
            lookup: &mut lookup,
            skip,
            unchanged: index_unchanged,
        };
        let checked = prelink::confirm(root.as_fd(), prelinked, &links, holders)?;
        for (key, file) in checked.confirmed {
            out.linked += 1;
            out.bytes += file.size;
            out.entries.push((key, file.path));
        }
        for (file, names) in checked.to_copy {
            for name in &names {
                let parent_path = split(name).0;
                let dir =
                    open_dir(root.as_fd(), parent_path).map_err(|e| io("open a directory", e))?;
                touched
                    .note(parent_path, dir.as_fd())
                    .map_err(|e| io("inspect a directory", e))?;
            }
            // Its own inode now: shared below like any file written.
            files.push(prelink::unshare(root.as_fd(), file, &names)?);
        }
    }
    let written = Written {
        files,
        links,
        link_targets,
        intact,
    };
    let mut groups: Vec<(IndexKey, Group)> = staged_groups(root.as_fd(), written)
        .into_iter()
        .map(|g| {
            let key = IndexKey {
                content: g.file.id.content,
                meta: g.file.id.meta,
                names: index::names_hash(&g.names),
            };
            (key, g)
        })
        .collect();
    // In key order, the lookups seek forward through the index.
    groups.sort_by_key(|g| g.0);
    let mut candidates: Vec<(usize, Vec<index::Entry>)> = Vec::new();
    for (i, (key, g)) in groups.iter().enumerate() {
        let first = g.names.iter().min().cloned().unwrap_or_default();
        out.entries.push((*key, first));
        // Looked up under this very key while extracted, and no batch
        // since: nothing to find.
        let known_missing =
            index_unchanged && g.names.len() == 1 && g.file.looked_up == Some(key.meta);
        if known_missing {
            continue;
        }
        let found = match lookup.as_mut().map(|l| l.holders(key)) {
            Some(Ok(found)) => found,
            Some(Err(_)) | None => {
                lookup = None;
                Vec::new()
            }
        };
        let holders: Vec<index::Entry> = found
            .into_iter()
            .filter(|h| !skip.contains(&h.chain))
            .collect();
        if !holders.is_empty() {
            candidates.push((i, holders));
        }
    }
    let parents: BTreeSet<&[u8]> = candidates
        .iter()
        .flat_map(|(i, _)| groups[*i].1.names.iter().map(|n| split(n).0))
        .collect();
    for parent_path in parents {
        let dir = open_dir(root.as_fd(), parent_path).map_err(|e| io("open a directory", e))?;
        touched
            .note(parent_path, dir.as_fd())
            .map_err(|e| io("inspect a directory", e))?;
    }
    let linked = link_in_parallel(layers, root.as_fd(), &groups, &candidates)?;
    let mut unlinked: Vec<usize> = Vec::new();
    let mut was_linked = vec![false; groups.len()];
    for i in linked {
        was_linked[i] = true;
        out.linked += 1;
        out.bytes += groups[i].1.file.size;
    }
    // Probed beside diff/ (in the staged folder), not in it: nothing of the
    // layer changes.
    let staged_folder = diff.parent().map_or_else(
        || root.try_clone().map_err(|e| Error::io("dup", e)),
        |p| {
            rfs::openat(rfs::CWD, p, dir_flags(), Mode::empty())
                .map_err(|e| io("open the staged folder", e))
        },
    )?;
    if reflink.probe(staged_folder.as_fd()) {
        unlinked.extend((0..groups.len()).filter(|i| !was_linked[*i]));
    }
    for i in unlinked {
        let (key, g) = &groups[i];
        let Some(Ok(same)) = lookup.as_mut().map(|l| l.same_content(&key.content)) else {
            break;
        };
        for holder in same {
            if skip.contains(&holder.chain) {
                continue;
            }
            match clone_group(layers, root.as_fd(), g, &holder, reflink)? {
                Clone::Done => {
                    out.cloned += 1;
                    out.bytes += g.file.size;
                    break;
                }
                Clone::Unsupported => break,
                Clone::NotHere => {}
            }
        }
        if !reflink.worth_trying() {
            break;
        }
    }
    touched
        .restore(root.as_fd())
        .map_err(|e| io("restore directory times", e))?;
    Ok(out)
}

/// The files extraction linked before writing (each with whether it is the
/// last record at its path: records of one path come in entry order, as a
/// repeated path waits for the file pool), and the others.
fn split_prelinked(files: Vec<WrittenFile>) -> (Vec<(WrittenFile, bool)>, Vec<WrittenFile>) {
    if files.iter().all(|f| f.holder.is_none()) {
        return (Vec::new(), files);
    }
    let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        last.insert(f.path.clone(), i);
    }
    let mut prelinked = Vec::new();
    let mut others = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        if f.holder.is_some() {
            let is_last = last.get(&f.path) == Some(&i);
            prelinked.push((f, is_last));
        } else {
            others.push(f);
        }
    }
    (prelinked, others)
}

/// Links the groups that have holders, on a few threads (each its own
/// directories: ext4 changes different directories in parallel, and a
/// replaced inode's blocks are freed as it goes, which is journal work).
/// Returns the indexes of the groups linked.
fn link_in_parallel(
    layers: &LayerStore,
    root: BorrowedFd<'_>,
    groups: &[(IndexKey, Group)],
    candidates: &[(usize, Vec<index::Entry>)],
) -> Result<Vec<usize>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(candidates.len().div_ceil(64).max(1));
    let mut shares: Vec<Vec<&(usize, Vec<index::Entry>)>> = vec![Vec::new(); threads];
    for c in candidates {
        let first = &groups[c.0].1.names[0];
        let dir_hash = blake3::hash(split(first).0).as_bytes()[0] as usize;
        shares[dir_hash % threads].push(c);
    }
    for share in &mut shares {
        // In path order, a run of files in one directory opens it once.
        share.sort_by(|a, b| groups[a.0].1.names[0].cmp(&groups[b.0].1.names[0]));
    }
    let work = |thread: usize, share: Vec<&(usize, Vec<index::Entry>)>| -> Result<Vec<usize>> {
        let mut staged = Dirs::new(root);
        let mut holder_dirs = HolderDirs::default();
        let mut linked = Vec::new();
        for (i, holders) in share {
            for holder in holders {
                let (key, g) = &groups[*i];
                let link = Link { key, g, holder };
                if link_group(layers, &mut staged, &mut holder_dirs, link, thread)? {
                    linked.push(*i);
                    break;
                }
            }
        }
        Ok(linked)
    };
    let results: Vec<Result<Vec<usize>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(thread, share)| scope.spawn(move || work(thread, share)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a file sharing thread failed".into())))
            })
            .collect()
    });
    let mut linked = Vec::new();
    for r in results {
        linked.extend(r?);
    }
    Ok(linked)
}

/// The staged inodes written files and hardlink names make, each with all
/// its names; an inode whose names are not all known (its link count says
/// more) is left out.
fn staged_groups(root: BorrowedFd<'_>, written: Written) -> Vec<Group> {
    if written.intact {
        return intact_groups(written);
    }
    let mut files = written.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = Dirs::new(root);
    let stat = |dirs: &mut Dirs<'_>, path: &[u8]| {
        let (parent, name) = split(path);
        let dir = dirs.get(parent).ok()?;
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    };
    let mut groups: BTreeMap<u64, Group> = BTreeMap::new();
    for file in files {
        let Some(st) = stat(&mut dirs, &file.path) else {
            continue;
        };
        // A reused inode number (the file replaced by a later entry, its
        // inode freed and handed out again) shows in the size at least.
        let same_file = st.st_ino == file.ino && st.st_size as u64 == file.size;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || !same_file {
            continue;
        }
        let names = vec![file.path.clone()];
        let st = StagedStat::of(&st);
        groups.insert(st.ino, Group { file, names, st });
    }
    let mut links = written.links;
    links.sort();
    links.dedup();
    for link in links {
        let Some(st) = stat(&mut dirs, &link) else {
            continue;
        };
        if let Some(g) = groups.get_mut(&st.st_ino) {
            if !g.names.contains(&link) {
                g.names.push(link);
            }
        }
    }
    groups
        .into_values()
        .filter(|g| g.names.len() as u64 == g.st.nlink)
        .collect()
}

/// [`staged_groups`] of a layer whose extraction removed or replaced no
/// name: every file is still at its path, as written, and each hardlink
/// entry's name is its target's inode, so the groups follow from what was
/// noted without a stat.
fn intact_groups(written: Written) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::with_capacity(written.files.len());
    let mut by_path: HashMap<Vec<u8>, usize> = HashMap::with_capacity(written.files.len());
    for file in written.files {
        // A file noted twice at one path cannot be: that would have been
        // a replacement. Whatever else, the first record stands.
        if by_path.contains_key(&file.path) {
            continue;
        }
        by_path.insert(file.path.clone(), groups.len());
        groups.push(Group {
            names: vec![file.path.clone()],
            st: file.stat,
            file,
        });
    }
    for (name, target) in written.links.into_iter().zip(written.link_targets) {
        let Some(&i) = by_path.get(&target) else {
            continue;
        };
        if !groups[i].names.contains(&name) {
            groups[i].names.push(name.clone());
            by_path.insert(name, i);
        }
    }
    for g in &mut groups {
        g.st.nlink = g.names.len() as u64;
    }
    groups
}

/// A file's access and modification times, to set again.
fn times_of(st: &rfs::Stat) -> Timestamps {
    let ts = |sec: i64, nsec: u64| rfs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    }
}

/// Directory times as they were before sharing changed entries in them,
/// put back at the end (they were set when the extraction finished).
#[derive(Default)]
struct DirTimes(HashMap<Vec<u8>, Timestamps>);

impl DirTimes {
    fn note(&mut self, path: &[u8], dir: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
        if !self.0.contains_key(path) {
            let times = times_of(&rfs::fstat(dir)?);
            self.0.insert(path.to_vec(), times);
        }
        Ok(())
    }

    fn restore(self, root: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
        for (path, times) in self.0 {
            let dir = open_dir(root, &path)?;
            rfs::futimens(&dir, &times)?;
        }
        Ok(())
    }
}

/// Holders' layer folders and the last directory looked in, kept open
/// across a layer's files (most run in the same few directories).
#[derive(Default)]
struct HolderDirs {
    roots: HashMap<Digest, OwnedFd>,
    last: Option<(Digest, Vec<u8>, OwnedFd)>,
}

impl HolderDirs {
    /// The holder's file: its parent directory (beneath the layer's
    /// `diff/`, no symlink followed) and its `lstat`, when a regular file.
    fn find(
        &mut self,
        layers: &LayerStore,
        holder: &index::Entry,
    ) -> Option<(BorrowedFd<'_>, rfs::Stat)> {
        let (parent_path, name) = split(&holder.path);
        let cached = matches!(&self.last,
            Some((c, p, _)) if *c == holder.chain && p.as_slice() == parent_path);
        if !cached {
            if !self.roots.contains_key(&holder.chain) {
                // Bounded: a store of many layers must not run out of fds
                // (several of these are open at once, one per thread).
                if self.roots.len() >= 16 {
                    self.roots.clear();
                }
                let diff = layers.diff_dir(&holder.chain);
                let root = rfs::openat(rfs::CWD, &diff, dir_flags(), Mode::empty()).ok()?;
                self.roots.insert(holder.chain, root);
            }
            let root = self.roots.get(&holder.chain)?;
            let dir = open_dir(root.as_fd(), parent_path).ok()?;
            self.last = Some((holder.chain, parent_path.to_vec(), dir));
        }
        let (_, _, dir) = self.last.as_ref()?;
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        (regular && st.st_nlink > 0).then_some((dir.as_fd(), st))
    }
}

/// A holder's file, opened as extraction resolves names: its parent
/// beneath the layer's `diff/`, the file itself not followed.
pub(crate) struct HolderFile {
    parent: OwnedFd,
    name: Vec<u8>,
    st: rfs::Stat,
}

pub(crate) fn open_holder(layers: &LayerStore, holder: &index::Entry) -> Option<HolderFile> {
    find_holder(layers, holder).ok().flatten()
}

/// Whether an error opening a holder's file says the file is not there
/// (any more): a name gone, or a directory of its path replaced by a file
/// or a symlink. Any other error (EMFILE, EACCES, ENOMEM…) says nothing
/// about the file.
pub(crate) fn means_missing(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
}

/// As [`open_holder`], telling a file that is not there (`Ok(None)`, or
/// no regular file) from an error of the lookup itself.
pub(crate) fn find_holder(
    layers: &LayerStore,
    holder: &index::Entry,
) -> std::result::Result<Option<HolderFile>, Errno> {
    let missing = |e: Errno| if means_missing(e) { Ok(None) } else { Err(e) };
    let diff = layers.diff_dir(&holder.chain);
    let root = match rfs::openat(rfs::CWD, &diff, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return missing(e),
    };
    let (parent_path, name) = split(&holder.path);
    let parent = match open_dir(root.as_fd(), parent_path) {
        Ok(fd) => fd,
        Err(e) => return missing(e),
    };
    let st = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => return missing(e),
    };
    let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink > 0;
    Ok(regular.then(|| HolderFile {
        parent,
        name: name.to_vec(),
        st,
    }))
}

/// Name used for a link before it is renamed over a staged name: the
/// staged folder is this process's own, and each linking thread (`thread`)
/// names its links apart.
fn temp_name(thread: usize, i: usize) -> Vec<u8> {
    format!(".lstore-share-{thread}-{i}").into_bytes()
}

/// Whether the holder's file `name` in `dir`, inode `hst`, has the
/// metadata hash `meta` now, its xattrs read again: the index's word is
/// not enough (an entry recorded for a folder that is not the one
/// indexed, a relabel), and a link must never give a staged file another
/// file's xattrs (capabilities, ACLs).
fn holder_meta_is(dir: BorrowedFd<'_>, name: &[u8], hst: &rfs::Stat, meta: &[u8; 16]) -> bool {
    let Ok(fd) = open_layer_file(dir, name) else {
        return false;
    };
    let Ok(st) = rfs::fstat(&fd) else {
        return false;
    };
    if (st.st_dev, st.st_ino) != (hst.st_dev, hst.st_ino) {
        return false;
    }
    identity::xattrs(fd.as_fd()).is_ok_and(|x| identity::meta_hash(&st, &x) == *meta)
}

/// Opens a layer file to read its content or metadata, the way sharing
/// must: never through a symlink, never blocking (a fifo put there behind
/// the store's back), and without changing its access time when allowed
/// (O_NOATIME needs the file's owner or CAP_FOWNER): the inode may be
/// other layers' too.
fn open_layer_file(dir: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<OwnedFd, Errno> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// A staged inode, its index key, and the holder it may become.
#[derive(Clone, Copy)]
struct Link<'a> {
    key: &'a IndexKey,
    g: &'a Group,
    holder: &'a index::Entry,
}

/// Makes every name of `g` a link to the holder's inode. Returns false
/// (the staged inode kept whole) when the holder is gone or differs. The
/// holder cannot go meanwhile: lookups and links run under the shared root
/// lock, which gc needs exclusive, and lstore never changes a layer folder.
fn link_group(
    layers: &LayerStore,
    staged: &mut Dirs<'_>,
    holder_dirs: &mut HolderDirs,
    link: Link<'_>,
    thread: usize,
) -> Result<bool> {
    let Link { key, g, holder } = link;
    let Some((holder_dir, hst)) = holder_dirs.find(layers, holder) else {
        return Ok(false);
    };
    if identity::MetaFields::of(&hst) != g.st.meta
        || (hst.st_dev, hst.st_ino) == (g.st.dev, g.st.ino)
    {
        return Ok(false);
    }
    if hst.st_nlink + g.names.len() as u64 > MAX_LINKS {
        return Ok(false);
    }
    let (_, holder_name) = split(&holder.path);
    if !holder_meta_is(holder_dir, holder_name, &hst, &key.meta) {
        return Ok(false);
    }
    let temp_of = |i: usize| temp_name(thread, i);
    // Every name gets its link under a temporary name first: should one
    // fail, the others are taken back and the group stays as extracted;
    // then each is renamed over its name, so a name always names a whole
    // file. (Most files are linked while extracted, `prelink`; the few
    // left here can afford the third directory change.)
    let mut made: Vec<&[u8]> = Vec::new();
    let mut failed = false;
    for name in &g.names {
        let (parent_path, _) = split(name);
        let Ok(parent) = staged.get(parent_path) else {
            failed = true;
            break;
        };
        let linked = rfs::linkat(
            holder_dir,
            holder_name,
            parent,
            temp_of(made.len()).as_slice(),
            AtFlags::empty(),
        );
        if linked.is_err() {
            failed = true;
            break;
        }
        made.push(name);
    }
    if failed {
        // A temporary name left behind would be committed into the layer.
        for (i, name) in made.iter().enumerate() {
            let temp = temp_of(i);
            staged
                .get(split(name).0)
                .and_then(|parent| rfs::unlinkat(parent, temp.as_slice(), AtFlags::empty()))
                .map_err(|e| replace_error(name, holder, e))?;
        }
        return Ok(false);
    }
    for (i, name) in made.iter().enumerate() {
        let (parent_path, base) = split(name);
        let renamed = staged
            .get(parent_path)
            .and_then(|parent| rfs::renameat(parent, temp_of(i).as_slice(), parent, base));
        renamed.map_err(|e| replace_error(name, holder, e))?;
    }
    Ok(true)
}

/// Most links any filesystem here allows an inode (ext4: 65,000).
const MAX_LINKS: u64 = 60_000;

/// A staged name could not be made the holder's inode.
fn replace_error(name: &[u8], holder: &index::Entry, e: Errno) -> Error {
    Error::io(
        format!(
            "replace {:?} with a link to layer {}",
            String::from_utf8_lossy(name),
            holder.chain
        ),
        e.into(),
    )
}

enum Clone {
    Done,
    /// The filesystem does not clone: no use trying again.
    Unsupported,
    /// This holder could not give its extents.
    NotHere,
}

/// Clones the holder's extents into the staged inode (FICLONE), keeping
/// the staged inode's own metadata: mode, xattrs and times are put back
/// as they were (a write may clear setuid bits and file capabilities).
fn clone_group(
    layers: &LayerStore,
    root: BorrowedFd<'_>,
    g: &Group,
    holder: &index::Entry,
    reflink: &Reflink,
) -> Result<Clone> {
    let Some(h) = open_holder(layers, holder) else {
        return Ok(Clone::NotHere);
    };
    if h.st.st_size as u64 != g.st.meta.size || (h.st.st_dev, h.st.st_ino) == (g.st.dev, g.st.ino) {
        return Ok(Clone::NotHere);
    }
    let read = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(src) = rfs::openat(&h.parent, h.name.as_slice(), read, Mode::empty()) else {
        return Ok(Clone::NotHere);
    };
    let (parent_path, base) = split(&g.file.path);
    let staged_err = |what: &str, e: Errno| {
        Error::io(
            format!("{what} {:?}", String::from_utf8_lossy(&g.file.path)),
            e.into(),
        )
    };
    let parent = open_dir(root, parent_path).map_err(|e| staged_err("open the parent of", e))?;
    let write = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dest = rfs::openat(&parent, base, write, Mode::empty())
        .map_err(|e| staged_err("open for cloning", e))?;
    let before = rfs::fstat(&dest).map_err(|e| staged_err("inspect", e))?;
    if before.st_ino != g.st.ino {
        return Ok(Clone::NotHere);
    }
    let xattrs = identity::xattrs(dest.as_fd()).map_err(|e| staged_err("read xattrs of", e))?;
    match rfs::ioctl_ficlone(&dest, &src) {
        Ok(()) => reflink.set(true),
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS) => {
            reflink.set(false);
            return Ok(Clone::Unsupported);
        }
        Err(_) => return Ok(Clone::NotHere),
    }
    // Put back what the clone, being a write, may have changed.
    let after = rfs::fstat(&dest).map_err(|e| staged_err("inspect", e))?;
    if after.st_mode != before.st_mode {
        rfs::fchmod(&dest, Mode::from_raw_mode(before.st_mode & 0o7777))
            .map_err(|e| staged_err("restore the mode of", e))?;
    }
    if identity::xattrs(dest.as_fd()).ok().as_ref() != Some(&xattrs) {
        for (name, value) in &xattrs {
            rfs::fsetxattr(&dest, name.as_slice(), value, rfs::XattrFlags::empty())
                .map_err(|e| staged_err("restore xattrs of", e))?;
        }
    }
    rfs::futimens(&dest, &times_of(&before)).map_err(|e| staged_err("restore the times of", e))?;
    let (_, id) =
        identify(dest.as_fd(), g.file.id.content).map_err(|e| staged_err("inspect", e))?;
    if id != g.file.id {
        return Err(Error::Invalid(format!(
            "cloning extents into {:?} changed its metadata",
            String::from_utf8_lossy(&g.file.path)
        )));
    }
    Ok(Clone::Done)
}

/// What file sharing saves, as `df` shows it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Savings {
    /// Inodes two or more layers hold.
    pub files: u64,
    /// Over those, size × (layers holding it − 1).
    pub bytes: u64,
}

/// Counts, over the content index, the inodes several layers hold: each
/// entry's file is looked at once (`lstat`, beneath its layer).
pub(crate) fn savings(layers: &LayerStore, meta: &Meta) -> Result<Savings> {
    // (dev, ino) -> (layers holding it, size)
    let mut inodes: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    for entry in index::all(meta)? {
        if let Some(h) = open_holder(layers, &entry) {
            let seen = inodes
                .entry((h.st.st_dev, h.st.st_ino))
                .or_insert((0, h.st.st_size as u64));
            seen.0 += 1;
        }
    }
    let mut out = Savings::default();
    for (holders, size) in inodes.into_values().filter(|(n, _)| *n > 1) {
        out.files += 1;
        out.bytes += size * (holders - 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
