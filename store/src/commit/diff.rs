//! The changes of a read-write overlay mount as OCI layer tar entries.
//!
//! The upper dir holds what changed, in overlay's own notation; it is
//! walked depth first, names in byte order, never following a symlink
//! (every open is relative to an open directory with `O_NOFOLLOW`), and
//! turned back into OCI notation:
//!
//! - a 0/0 character device `NAME` is a whiteout: `.wh.NAME`;
//! - a directory with `trusted.overlay.opaque=y` hides the lower layers'
//!   content: the directory entry, then `DIR/.wh..wh..opq` (`user.overlay.*`
//!   in a user's store, whose mounts use `userxattr`);
//! - a file with `user.containers.override_stat` (a user's store without
//!   subordinate ids) is exported with the owner and mode it holds;
//! - overlay's own attributes (`trusted.overlay.*`: opaque, redirect,
//!   origin, impure, metacopy, …) are never exported;
//! - files with several names in the upper become tar hardlinks;
//! - sockets cannot be stored in a tar and are left out.
//!
//! Two overlay features put data outside the upper dir. A directory
//! renamed with `redirect_dir` is exported as an opaque directory with its
//! whole content read through the mount (the merged view); a file copied
//! up with `metacopy` (metadata only) has its content read through the
//! mount too. Neither is enabled by default.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::tar_writer::{EntryHeader, EntryKind, TarWriter};
use crate::error::{Error, Result};
use crate::userns::OverlayXattrs;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Overlay's xattr `name` (`opaque`, …) in the store's flavour.
fn overlay_xattr(flavour: OverlayXattrs, name: &str) -> Vec<u8> {
    format!("{}{name}", flavour.prefix()).into_bytes()
}
/// Directory fds kept open while descending; deeper levels are reopened
/// by path on the way back up, so depth never runs out of fds.
const OPEN_DIRS: usize = 64;

/// Which tree a directory is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum View {
    /// The upper dir: changes in overlay notation.
    Upper,
    /// The mounted, merged view: plain content, no whiteouts.
    Merged,
}

/// Writes the changes recorded in `upper` (the upper dir of the overlay
/// mounted at `merged`) into `tar`, reading overlay's xattrs in the
/// store's `flavour`. Returns the number of entries written.
pub fn write_changes<W: Write>(
    upper: &Path,
    merged: &Path,
    flavour: OverlayXattrs,
    tar: &mut TarWriter<W>,
) -> Result<u64> {
    let open_root = |p: &Path| {
        rfs::open(p, dir_flags(), Mode::empty())
            .map_err(|e| Error::io(format!("open {}", p.display()), e.into()))
    };
    let mut walker = Walker {
        upper_root: open_root(upper)?,
        merged_root: open_root(merged)?,
        upper,
        merged,
        flavour,
        tar,
        links: HashMap::new(),
        entries: 0,
    };
    walker.run()?;
    Ok(walker.entries)
}

/// A directory being walked.
struct Frame {
    rel: Vec<u8>,
    view: View,
    fd: Option<OwnedFd>,
    children: Vec<CString>,
    next: usize,
}

struct Walker<'a, W: Write> {
    upper_root: OwnedFd,
    merged_root: OwnedFd,
    upper: &'a Path,
    merged: &'a Path,
    /// The store's flavour: which overlay xattrs mark opaque dirs, and
    /// whether `user.containers.override_stat` may be honoured.
    flavour: OverlayXattrs,
    tar: &'a mut TarWriter<W>,
    /// First path written for each multiply-linked inode.
    links: HashMap<(View, u64, u64), Vec<u8>>,
    entries: u64,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
    p.extend_from_slice(rel);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Names in a directory, in byte order, without `.` and `..`.
fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut dir = rfs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(item) = dir.read() {
        let item = item?;
        let name = item.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

impl<W: Write> Walker<'_, W> {
    fn root(&self, view: View) -> BorrowedFd<'_> {
        match view {
            View::Upper => self.upper_root.as_fd(),
            View::Merged => self.merged_root.as_fd(),
        }
    }

    fn shown(&self, view: View, rel: &[u8]) -> String {
        let base = match view {
            View::Upper => self.upper,
            View::Merged => self.merged,
        };
        if rel.is_empty() {
            base.display().to_string()
        } else {
            format!("{}/{}", base.display(), String::from_utf8_lossy(rel))
        }
    }

    fn fail(&self, view: View, rel: &[u8], what: &str, e: impl Into<io::Error>) -> Error {
        Error::io(format!("{what} {}", self.shown(view, rel)), e.into())
    }

    /// Opens `rel` under a root, refusing any symlink on the way.
    fn open_beneath(&self, view: View, rel: &[u8], flags: OFlags) -> Result<OwnedFd> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        rfs::openat2(
            self.root(view),
            path,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| self.fail(view, rel, "open", e))
    }

    fn write(&mut self, header: &EntryHeader) -> Result<()> {
        self.tar
            .append(header)
            .map_err(|e| Error::io("write the layer", e))?;
        self.entries += 1;
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        let root = self.open_beneath(View::Upper, b"", dir_flags())?;
        let children =
            list_dir(root.as_fd()).map_err(|e| self.fail(View::Upper, b"", "read", e))?;
        let mut stack = vec![Frame {
            rel: Vec::new(),
            view: View::Upper,
            fd: Some(root),
            children,
            next: 0,
        }];
        while let Some(top) = stack.last_mut() {
            if top.next >= top.children.len() {
                stack.pop();
                continue;
            }
            let name = top.children[top.next].clone();
            top.next += 1;
            if top.fd.is_none() {
                top.fd = Some(self.open_beneath(top.view, &top.rel, dir_flags())?);
            }
            let (view, rel) = (top.view, top.rel.clone());
            let Some(dir) = top.fd.as_ref() else {
                continue;
            };
            let child = self.entry(dir.as_fd(), view, &rel, &name)?;
            if let Some(child) = child {
                if stack.len() >= OPEN_DIRS {
                    if let Some(parent) = stack.last_mut() {
                        parent.fd = None;
                    }
                }
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Writes the entry `name` of directory `dir`; returns the frame to
    /// descend into when it is a directory.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        view: View,
        rel: &[u8],
        name: &CStr,
    ) -> Result<Option<Frame>> {
        let path = join(rel, name.to_bytes());
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed through the mount while the walk ran.
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.fail(view, &path, "stat", e)),
        };
        let file_type = FileType::from_raw_mode(st.st_mode);
        if view == View::Upper && file_type == FileType::CharacterDevice && st.st_rdev == 0 {
            let mut wh = rel.to_vec();
            if !wh.is_empty() {
                wh.push(b'/');
            }
            wh.extend_from_slice(WHITEOUT_PREFIX);
            wh.extend_from_slice(name.to_bytes());
            return self.write(&marker(wh, st.st_mtime)).map(|()| None);
        }
        if name.to_bytes().starts_with(WHITEOUT_PREFIX) {
            return Err(Error::Unsupported(format!(
                "{}: names starting with .wh. are reserved for whiteouts in OCI layers",
                self.shown(view, &path)
            )));
        }
        match file_type {
            FileType::Directory => self.directory(dir, view, path, name),
            FileType::RegularFile => self.regular(dir, view, path, name).map(|()| None),
            FileType::Socket => Ok(None),
            _ => self.special(dir, view, path, name).map(|()| None),
        }
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        view: View,
        path: Vec<u8>,
        name: &CStr,
    ) -> Result<Option<Frame>> {
        let fd = rfs::openat(parent, name, dir_flags(), Mode::empty())
            .map_err(|e| self.fail(view, &path, "open", e))?;
        let st = rfs::fstat(&fd).map_err(|e| self.fail(view, &path, "stat", e))?;
        let mut xattrs = read_xattrs(XattrNode::Open(fd.as_fd()))
            .map_err(|e| self.fail(view, &path, "read xattrs of", e))?;
        let opaque = xattrs
            .get(&overlay_xattr(self.flavour, "opaque"))
            .is_some_and(|v| v == b"y");
        let redirected = xattrs.contains_key(&overlay_xattr(self.flavour, "redirect"));
        strip_overlay_xattrs(&mut xattrs);
        self.write(&header(
            self.flavour,
            path.clone(),
            EntryKind::Directory,
            &st,
            xattrs,
        ))?;
        let mut child_view = view;
        let mut child_fd = fd;
        if view == View::Upper && (opaque || redirected) {
            self.write(&marker(join(&path, OPAQUE_MARKER), st.st_mtime))?;
        }
        if view == View::Upper && redirected {
            // The content of a renamed directory lives in a lower layer
            // under its old name: take all of it from the merged view.
            child_view = View::Merged;
            child_fd = self.open_beneath(View::Merged, &path, dir_flags())?;
        }
        let children =
            list_dir(child_fd.as_fd()).map_err(|e| self.fail(child_view, &path, "read", e))?;
        Ok(Some(Frame {
            rel: path,
            view: child_view,
            fd: Some(child_fd),
            children,
            next: 0,
        }))
    }

    /// A tar hardlink to the first name of a multiply-linked inode, when
    /// that name was written already.
    fn link_to_first(&mut self, view: View, path: &[u8], st: &rfs::Stat) -> Option<Vec<u8>> {
        if st.st_nlink < 2 {
            return None;
        }
        let key = (view, st.st_dev, st.st_ino);
        match self.links.get(&key) {
            Some(first) => Some(first.clone()),
            None => {
                self.links.insert(key, path.to_vec());
                None
            }
        }
    }

    fn regular(
        &mut self,
        parent: BorrowedFd<'_>,
        view: View,
        path: Vec<u8>,
        name: &CStr,
    ) -> Result<()> {
        // NONBLOCK: should the name have turned into a fifo meanwhile, the
        // open must not hang (the type is checked right after).
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rfs::openat(parent, name, flags, Mode::empty())
            .map_err(|e| self.fail(view, &path, "open", e))?;
        let st = rfs::fstat(&fd).map_err(|e| self.fail(view, &path, "stat", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(Error::Invalid(format!(
                "{} changed type while being committed",
                self.shown(view, &path)
            )));
        }
        if let Some(first) = self.link_to_first(view, &path, &st) {
            return self.write(&header(
                self.flavour,
                path,
                EntryKind::Hardlink { target: first },
                &st,
                BTreeMap::new(),
            ));
        }
        let mut xattrs = read_xattrs(XattrNode::Open(fd.as_fd()))
            .map_err(|e| self.fail(view, &path, "read xattrs of", e))?;
        let metacopy =
            view == View::Upper && xattrs.contains_key(&overlay_xattr(self.flavour, "metacopy"));
        strip_overlay_xattrs(&mut xattrs);
        // A metadata-only copy-up keeps the data in a lower layer: read it
        // through the mount.
        let (data_view, data) = if metacopy {
            let merged = self.open_beneath(
                View::Merged,
                &path,
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            )?;
            (View::Merged, merged)
        } else {
            (view, fd)
        };
        let size = rfs::fstat(&data)
            .map_err(|e| self.fail(data_view, &path, "stat", e))?
            .st_size as u64;
        let h = header(self.flavour, path, EntryKind::Regular { size }, &st, xattrs);
        let mut file = std::fs::File::from(data);
        self.tar
            .append_file(&h, &mut file)
            // Reading the file or writing the layer (a full disk) may fail.
            .map_err(|e| self.fail(data_view, &h.path, "add to the layer", e))?;
        self.entries += 1;
        Ok(())
    }

    /// Symlinks, devices and fifos: never opened for reading.
    fn special(
        &mut self,
        parent: BorrowedFd<'_>,
        view: View,
        path: Vec<u8>,
        name: &CStr,
    ) -> Result<()> {
        let node = rfs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.fail(view, &path, "open", e))?;
        let st = rfs::fstat(&node).map_err(|e| self.fail(view, &path, "stat", e))?;
        if let Some(first) = self.link_to_first(view, &path, &st) {
            return self.write(&header(
                self.flavour,
                path,
                EntryKind::Hardlink { target: first },
                &st,
                BTreeMap::new(),
            ));
        }
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rfs::readlinkat(&node, c"", Vec::new())
                    .map_err(|e| self.fail(view, &path, "read link", e))?;
                EntryKind::Symlink {
                    target: target.into_bytes(),
                }
            }
            FileType::CharacterDevice => EntryKind::CharDevice {
                major: rfs::major(st.st_rdev),
                minor: rfs::minor(st.st_rdev),
            },
            FileType::BlockDevice => EntryKind::BlockDevice {
                major: rfs::major(st.st_rdev),
                minor: rfs::minor(st.st_rdev),
            },
            FileType::Fifo => EntryKind::Fifo,
            other => {
                return Err(Error::Invalid(format!(
                    "{} changed type while being committed ({other:?})",
                    self.shown(view, &path)
                )))
            }
        };
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
        let mut xattrs = read_xattrs(XattrNode::Proc(&proc_path))
            .map_err(|e| self.fail(view, &path, "read xattrs of", e))?;
        strip_overlay_xattrs(&mut xattrs);
        self.write(&header(self.flavour, path, kind, &st, xattrs))
    }
}

fn header(
    flavour: OverlayXattrs,
    path: Vec<u8>,
    kind: EntryKind,
    st: &rfs::Stat,
    mut xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
) -> EntryHeader {
    let (mut uid, mut gid, mut mode) = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
    // The owner the file really has, kept aside in a user's store where it
    // could not be set (never exported as an xattr). A process in a
    // read-write mount can set this xattr on its own files, so it counts
    // only on a file left owned by 0:0, as extraction leaves it; a chmod
    // made in the container since wins over the recorded mode.
    let override_stat = xattrs.remove(crate::userns::OVERRIDE_STAT_XATTR.as_bytes());
    let trusted = flavour == OverlayXattrs::User && (uid, gid) == (0, 0);
    if let Some(o) = override_stat
        .filter(|_| trusted)
        .and_then(|v| crate::userns::OverrideStat::parse(&v))
    {
        (uid, gid) = (o.uid, o.gid);
        if mode == o.mode & 0o7777 {
            mode = o.mode;
        }
    }
    EntryHeader {
        path,
        kind,
        mode,
        uid: u64::from(uid),
        gid: u64::from(gid),
        mtime: st.st_mtime,
        xattrs,
    }
}

/// A whiteout or opaque marker: an empty file, mode 0600, owned by root.
fn marker(path: Vec<u8>, mtime: i64) -> EntryHeader {
    EntryHeader {
        path,
        kind: EntryKind::Regular { size: 0 },
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime,
        xattrs: BTreeMap::new(),
    }
}

/// Overlay's bookkeeping never leaves the store (and is never taken from
/// an image, see unpack).
fn strip_overlay_xattrs(xattrs: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    xattrs.retain(|k, _| !k.starts_with(b"trusted.overlay.") && !k.starts_with(b"user.overlay."));
}

/// Where xattrs are read: an fd open for reading, or an `O_PATH` fd's
/// `/proc/self/fd/N` (which names the node itself, symlinks included).
enum XattrNode<'a> {
    Open(BorrowedFd<'a>),
    Proc(&'a str),
}

impl XattrNode<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrNode::Open(fd) => rfs::flistxattr(fd, buf),
            XattrNode::Proc(p) => rfs::listxattr(*p, buf),
        }
    }
    fn list_len(&self) -> rustix::io::Result<usize> {
        match self {
            XattrNode::Open(fd) => rfs::flistxattr_query(fd),
            XattrNode::Proc(p) => rfs::listxattr_query(*p),
        }
    }
    fn get(&self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrNode::Open(fd) => rfs::fgetxattr(fd, name, buf),
            XattrNode::Proc(p) => rfs::getxattr(*p, name, buf),
        }
    }
    fn get_len(&self, name: &CStr) -> rustix::io::Result<usize> {
        match self {
            XattrNode::Open(fd) => rfs::fgetxattr_query(fd, name),
            XattrNode::Proc(p) => rfs::getxattr_query(*p, name),
        }
    }
}

/// Every xattr of a node, by name. A filesystem without xattrs has none;
/// an attribute removed meanwhile is skipped; one that grew is re-read.
fn read_xattrs(node: XattrNode<'_>) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = loop {
        let len = match node.list_len() {
            Ok(0) | Err(Errno::OPNOTSUPP) => return Ok(out),
            Ok(n) => n,
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; len];
        match node.list(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(c_name) = CString::new(name) else {
            continue;
        };
        let value = loop {
            let len = match node.get_len(&c_name) {
                Ok(n) => n,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; len];
            match node.get(&c_name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(v) = value {
            out.insert(name.to_vec(), v);
        }
    }
    Ok(out)
}
