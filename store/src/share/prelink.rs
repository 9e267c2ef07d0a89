//! Linking a small file to an equal one of another layer *instead of*
//! writing it (docs/space.md, "Speed").
//!
//! The file pool holds a small file's data in memory before it writes it,
//! so its content hash is known first, and the metadata it will have is
//! the entry's (`unpack::apply::predicted_meta`). Looked up in a read-only
//! copy of the content index opened when the layer's extraction starts, a
//! file another layer already holds becomes a hardlink to that inode: no
//! inode made, no data written, nothing to replace later. Writing a file
//! and then replacing it by a link cost file sharing most of its time.
//!
//! Extraction runs outside any session, so nothing here is final: the link
//! is checked again after it is made (the inode's own stat and xattrs must
//! give the predicted metadata, else the name is removed and the file
//! written as usual), and [`super::share_layer`], under the shared root
//! lock, confirms each one (the holder still indexed and still that inode,
//! the file still one name in its layer) or copies it into an inode of its
//! own. A holder gc removes meanwhile leaves the inode alive through this
//! link, so nothing is lost by racing it.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::identity::{self, FileIdentity, MetaFields, WrittenFile};
use super::index::{self, IndexKey};
use super::{
    means_missing, open_dir, open_layer_file, split, times_of, Dirs, HolderDirs, MAX_LINKS,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layers::LayerStore;
use crate::meta::{Meta, PrefixReader, CF_SHARED_FILES};

/// A read-only copy of the content index, for one layer's extraction.
pub(crate) struct Prelinker {
    meta: Meta,
    layers: LayerStore,
    /// The database's generation when the copy was opened.
    generation: Option<String>,
    /// The index held nothing: no lookup is made at all.
    empty: bool,
}

/// What [`Cursor::link`] did.
#[derive(Debug)]
pub(crate) enum Linked {
    Yes(Box<Prelinked>),
    /// Not linked; true when the index has no file of that identity.
    NotFound(bool),
}

/// A file linked before it was written.
#[derive(Debug)]
pub(crate) struct Prelinked {
    pub st: rfs::Stat,
    pub id: FileIdentity,
    pub holder: index::Entry,
}

impl Prelinker {
    /// `meta` is a read-only open of the store's database, made under the
    /// shared root lock when its generation was `generation`.
    pub(crate) fn new(meta: Meta, layers: LayerStore, generation: Option<String>) -> Prelinker {
        let empty = meta.is_empty(CF_SHARED_FILES).unwrap_or(false);
        Prelinker {
            meta,
            layers,
            generation,
            empty,
        }
    }

    /// Whether no batch has landed since the copy was opened (`now` is the
    /// generation read under the root lock): every holder linked to is then
    /// still indexed and in place, since lstore removes or replaces a layer
    /// folder only with a batch that drops its entries.
    pub(crate) fn unchanged_at(&self, now: Option<&str>) -> bool {
        self.generation.is_some() && self.generation.as_deref() == now
    }

    /// Lookups and links from one thread.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        Cursor {
            layers: &self.layers,
            reader: if self.empty {
                None
            } else {
                self.meta.prefix_reader(CF_SHARED_FILES).ok()
            },
            empty: self.empty,
            holders: HolderDirs::default(),
        }
    }
}

/// One thread's lookups: an index iterator and the holders' directories
/// last opened.
pub(crate) struct Cursor<'a> {
    layers: &'a LayerStore,
    /// None once a lookup failed: the rest of the layer is written as usual.
    reader: Option<PrefixReader<'a>>,
    /// The index held nothing: every lookup misses.
    empty: bool,
    holders: HolderDirs,
}

impl Cursor<'_> {
    /// Makes `name` in `parent` (the file at `path` in the layer, which
    /// does not exist yet) a link to a file of identity `id` and `size`
    /// bytes that another layer holds at the same path. Returns
    /// `NotFound(true)` when the index has no such file (the lookup was
    /// made), `NotFound(false)` when it could not be looked up or linking
    /// failed: the caller writes the file. An error only when a link made
    /// could not be taken back.
    pub(crate) fn link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        size: u64,
        id: FileIdentity,
    ) -> std::result::Result<Linked, Errno> {
        if self.empty {
            return Ok(Linked::NotFound(true));
        }
        let key = IndexKey {
            content: id.content,
            meta: id.meta,
            names: index::names_hash(&[path.to_vec()]),
        };
        let Some(reader) = &mut self.reader else {
            return Ok(Linked::NotFound(false));
        };
        let holders = match index::holders_with(reader, &key) {
            Ok(h) => h,
            Err(_) => {
                self.reader = None;
                return Ok(Linked::NotFound(false));
            }
        };
        let none_indexed = holders.is_empty();
        for holder in holders {
            let Some((dir, hst)) = self.holders.find(self.layers, &holder) else {
                continue;
            };
            if hst.st_size as u64 != size || hst.st_nlink + 1 > MAX_LINKS {
                continue;
            }
            let (_, holder_name) = split(&holder.path);
            if rfs::linkat(dir, holder_name, parent, name, AtFlags::empty()).is_err() {
                continue;
            }
            match linked_identity(parent, name, id.content) {
                Some((st, got))
                    if got == id && (st.st_dev, st.st_ino) == (hst.st_dev, hst.st_ino) =>
                {
                    return Ok(Linked::Yes(Box::new(Prelinked { st, id, holder })));
                }
                // Not what the entry says (the holder changed since it was
                // indexed): the name goes, and the file is written.
                _ => rfs::unlinkat(parent, name, AtFlags::empty())?,
            }
        }
        Ok(Linked::NotFound(none_indexed))
    }
}

/// The stat and identity of the file `name` in `parent` just linked,
/// read from the inode itself.
fn linked_identity(
    parent: BorrowedFd<'_>,
    name: &[u8],
    content: [u8; 32],
) -> Option<(rfs::Stat, FileIdentity)> {
    let fd = open_layer_file(parent, name).ok()?;
    identity::identify(fd.as_fd(), content).ok()
}

/// What [`confirm`] found of a layer's prelinked files.
#[derive(Default)]
pub(super) struct Checked {
    /// Still links to an indexed holder, each with the layer's entry key.
    pub confirmed: Vec<(IndexKey, WrittenFile)>,
    /// To be copied into an inode of their own, with every name the
    /// inode has in the layer.
    pub to_copy: Vec<(WrittenFile, Vec<Vec<u8>>)>,
}

/// A name a hardlink entry made, and the metadata of what it names.
type LinkName = (Vec<u8>, MetaFields);

/// How [`confirm`] judges the holders.
pub(super) struct Holders<'a, 'm> {
    pub layers: &'a LayerStore,
    pub lookup: &'a mut Option<index::Lookup<'m>>,
    /// Never kept as a holder (fsck's damaged layers).
    pub skip: &'a HashSet<Digest>,
    /// No batch since the extraction's copy of the index: every holder is
    /// as it was found, and is not looked up again.
    pub unchanged: bool,
}

/// Checks, under the shared root lock (no gc can remove a holder now),
/// each file the extraction linked before writing (with whether its record
/// is the last at its path: a later entry may have replaced it). Every name
/// the linked inode has in the layer counts: its path (when not replaced)
/// and the names hardlink entries gave it, wherever they are. A file kept
/// as linked has its path as its only name, its holder not skipped and
/// (unless the index is unchanged) still indexed with that identity and
/// still that inode; any other inode with names left is copied. A stat
/// that fails for another reason than a missing name fails the layer.
pub(super) fn confirm(
    root: BorrowedFd<'_>,
    mut files: Vec<(WrittenFile, bool)>,
    links: &[Vec<u8>],
    holders: Holders<'_, '_>,
) -> Result<Checked> {
    let Holders {
        layers,
        lookup,
        skip,
        unchanged,
    } = holders;
    // In path order, a run of files in one directory opens it once.
    files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut dirs = Dirs::new(root);
    let mut stat = |path: &[u8]| -> Result<Option<rfs::Stat>> {
        let (parent, name) = split(path);
        let fail = |e: Errno| {
            let shown = String::from_utf8_lossy(path);
            Error::io(format!("inspect {shown:?} of the staged layer"), e.into())
        };
        let dir = match dirs.get(parent) {
            Ok(dir) => dir,
            Err(e) if means_missing(e) => return Ok(None),
            Err(e) => return Err(fail(e)),
        };
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(e) if means_missing(e) => Ok(None),
            Err(e) => Err(fail(e)),
        }
    };
    // Names hardlink entries gave the layer's inodes, with what they are.
    let mut link_names: HashMap<(u64, u64), Vec<LinkName>> = HashMap::new();
    for link in links {
        if let Some(st) = stat(link)? {
            link_names
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push((link.clone(), MetaFields::of(&st)));
        }
    }
    let mut holder_dirs = HolderDirs::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut out = Checked::default();
    for (file, last_at_path) in files {
        let Some(holder) = file.holder.clone() else {
            continue;
        };
        let inode = (file.stat.dev, file.stat.ino);
        if !seen.insert(inode) {
            continue;
        }
        // The same inode, with what it was linked as: an inode number
        // handed out again would differ in its metadata at least.
        let same = |st: &rfs::Stat| {
            (st.st_dev, st.st_ino) == inode
                && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && MetaFields::of(st) == file.stat.meta
        };
        let mut names = Vec::new();
        if last_at_path && stat(&file.path)?.is_some_and(|st| same(&st)) {
            names.push(file.path.clone());
        }
        for (name, meta) in link_names.get(&inode).into_iter().flatten() {
            if *meta == file.stat.meta && !names.contains(name) {
                names.push(name.clone());
            }
        }
        if names.is_empty() {
            // No name of the layer holds it any more.
            continue;
        }
        let key = IndexKey {
            content: file.id.content,
            meta: file.id.meta,
            names: index::names_hash(&names),
        };
        let mut indexed = || match lookup.as_mut().map(|l| l.holders(&key)) {
            Some(Ok(found)) => found
                .iter()
                .any(|h| h.chain == holder.chain && h.path == holder.path),
            Some(Err(_)) | None => {
                *lookup = None;
                false
            }
        };
        let mut same_inode = || {
            holder_dirs
                .find(layers, &holder)
                .is_some_and(|(_, hst)| (hst.st_dev, hst.st_ino) == inode)
        };
        let kept = names == [file.path.as_slice()]
            && !skip.contains(&holder.chain)
            && (unchanged || (indexed() && same_inode()));
        if kept {
            out.confirmed.push((key, file));
        } else {
            out.to_copy.push((file, names));
        }
    }
    Ok(out)
}

/// Gives a prelinked file an inode of its own with the same content
/// (checked against its blake3 as it is copied) and metadata, under every
/// name in `names` (all in the staged layer; the copy is made beside the
/// first, whose path the returned record has).
pub(super) fn unshare(
    root: BorrowedFd<'_>,
    file: WrittenFile,
    names: &[Vec<u8>],
) -> Result<WrittenFile> {
    let Some(first) = names.first() else {
        return Ok(file);
    };
    let shown = String::from_utf8_lossy(first).into_owned();
    let fail = |what: &str, e: Errno| Error::io(format!("{what} {shown:?}"), e.into());
    let (parent_path, base) = split(first);
    let parent = open_dir(root, parent_path).map_err(|e| fail("open the parent of", e))?;
    let src = open_layer_file(parent.as_fd(), base).map_err(|e| fail("open", e))?;
    let st = rfs::fstat(&src).map_err(|e| fail("inspect", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || (st.st_dev, st.st_ino) != (file.stat.dev, file.stat.ino)
    {
        return Err(Error::Invalid(format!(
            "{shown:?} changed while the layer was being shared"
        )));
    }
    let xattrs = identity::xattrs(src.as_fd()).map_err(|e| fail("read the xattrs of", e))?;
    let create =
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (temp, dest) = with_free_name(&format!(".lstore-unshare-{}", file.stat.ino), |name| {
        rfs::openat(&parent, name, create, Mode::from_raw_mode(0o600))
    })
    .map_err(|e| fail("make a copy of", e))?;
    let copied = copy_with_metadata(src, dest, &st, &xattrs);
    let new = match copied {
        Ok((nst, id)) if id == file.id => nst,
        other => {
            let _ = rfs::unlinkat(&parent, temp.as_slice(), AtFlags::empty());
            return Err(match other {
                Err(e) => fail("copy", e),
                Ok(_) => Error::Invalid(format!(
                    "{shown:?}: the file it was linked to no longer has the content or \
                     metadata indexed (changed behind the store's back: run `lstore fsck`)"
                )),
            });
        }
    };
    // Every other name first, each through a name of its own, then the
    // first: each name always names a whole file.
    for name in names.iter().skip(1) {
        let (name_parent_path, name_base) = split(name);
        let name_parent =
            open_dir(root, name_parent_path).map_err(|e| fail("open the parent of", e))?;
        let prefix = format!(".lstore-unshare-{}-link", file.stat.ino);
        let (link_temp, ()) = with_free_name(&prefix, |link_temp| {
            rfs::linkat(
                &parent,
                temp.as_slice(),
                &name_parent,
                link_temp,
                AtFlags::empty(),
            )
        })
        .map_err(|e| fail("link a copy of", e))?;
        rfs::renameat(&name_parent, link_temp.as_slice(), &name_parent, name_base)
            .map_err(|e| fail("replace a name of", e))?;
    }
    rfs::renameat(&parent, temp.as_slice(), &parent, base).map_err(|e| fail("replace", e))?;
    Ok(WrittenFile {
        path: first.clone(),
        ino: new.st_ino,
        stat: identity::StagedStat::of(&new),
        holder: None,
        ..file
    })
}

/// Calls `make` with `PREFIX-0`, `PREFIX-1`, … until a name is free (an
/// image may hold any name, these too). Returns the name and the result.
fn with_free_name<T>(
    prefix: &str,
    mut make: impl FnMut(&[u8]) -> std::result::Result<T, Errno>,
) -> std::result::Result<(Vec<u8>, T), Errno> {
    for n in 0..1000u32 {
        let name = format!("{prefix}-{n}").into_bytes();
        match make(&name) {
            Ok(made) => return Ok((name, made)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

/// Copies `src` into `dest` (hashing, for the caller to compare), then
/// gives `dest` the owner, mode, xattrs and times of `st` / `xattrs`.
/// Returns the copy's stat and identity.
fn copy_with_metadata(
    src: OwnedFd,
    dest: OwnedFd,
    st: &rfs::Stat,
    xattrs: &identity::Xattrs,
) -> std::result::Result<(rfs::Stat, FileIdentity), Errno> {
    let mut from = std::fs::File::from(src);
    let mut to = std::fs::File::from(dest);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).map_err(errno)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(errno)?;
    }
    let content = *hasher.finalize().as_bytes();
    let fd = to.as_fd();
    // chown first (it clears setuid bits), xattrs after it (it drops
    // file capabilities), times last.
    rfs::fchown(
        fd,
        Some(rfs::Uid::from_raw(st.st_uid)),
        Some(rfs::Gid::from_raw(st.st_gid)),
    )?;
    rfs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    for (name, value) in xattrs {
        match rfs::fsetxattr(fd, name.as_slice(), value, rfs::XattrFlags::empty()) {
            Ok(()) => {}
            // The host's own (an SELinux label) may be refused; they are
            // no part of the identity.
            Err(_) if identity::is_host_xattr(name) => {}
            Err(e) => return Err(e),
        }
    }
    rfs::futimens(fd, &times_of(st))?;
    // The caller compares the identity, content hash included.
    identity::identify(fd, content)
}

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}
