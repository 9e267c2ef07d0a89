//! What makes two files interchangeable: their content (blake3) and every
//! piece of metadata a hardlink would make them share (size, mode, owner,
//! mtime, xattrs). Access times are left out: reading a lower file through
//! a mount changes its own (relatime), so they say nothing lasting about a
//! layer, and `fsck` can then check an identity again at any time. Computed from the file's own fd just after it was
//! written, so it is what the disk holds, inherited xattrs (a default ACL)
//! included.

use std::os::fd::BorrowedFd;

use rustix::fs as rfs;
use rustix::io::Errno;

/// Files smaller than this are not shared. An empty file holds no data
/// block (`du` counts 0 for it), so linking it saves nothing but an inode,
/// which ext4 and XFS preallocate anyway; any file of one byte or more
/// holds at least one 4 KiB block, which a link saves. See docs/space.md.
pub(crate) const MIN_SHARED_SIZE: u64 = 1;

/// A file's identity: equal identities may become one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileIdentity {
    /// blake3 of the content.
    pub content: [u8; 32],
    /// blake3 (first 16 bytes) of the size, mode, owner, mtime and xattrs.
    pub meta: [u8; 16],
}

/// A regular file an extraction wrote, with its identity.
#[derive(Debug, Clone)]
pub(crate) struct WrittenFile {
    /// Normalised path, relative to the layer's `diff/`.
    pub path: Vec<u8>,
    /// Its inode when written: a later entry of the layer that replaced
    /// the name leaves another inode there, and the record is then stale.
    pub ino: u64,
    /// Its stat just after it was written, metadata set.
    pub stat: StagedStat,
    pub size: u64,
    pub id: FileIdentity,
    /// The layer file this one was linked to before it was written
    /// (`prelink`): the link is confirmed, or undone, under the shared
    /// root lock before the layer is committed.
    pub holder: Option<super::index::Entry>,
    /// The metadata hash this file was looked up with in the extraction's
    /// copy of the index (and not found): with no batch since, looking it
    /// up again under the same key would find nothing either.
    pub looked_up: Option<[u8; 16]>,
}

/// Everything a layer's extraction wrote that sharing may use.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Regular files of at least [`MIN_SHARED_SIZE`] bytes.
    pub files: Vec<WrittenFile>,
    /// Names made by hardlink entries (they may name a file above).
    pub links: Vec<Vec<u8>>,
    /// The path each of `links` was linked to (same order).
    pub link_targets: Vec<Vec<u8>>,
    /// No name was removed or replaced during the extraction: every file
    /// is still at its path and each link names its target's inode.
    pub intact: bool,
}

/// What sharing uses of a staged file's stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StagedStat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub meta: MetaFields,
}

impl StagedStat {
    pub(crate) fn of(st: &rfs::Stat) -> StagedStat {
        StagedStat {
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            meta: MetaFields::of(st),
        }
    }
}

/// Extended attributes: (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Xattrs the kernel or host policy writes, not the image: IMA/EVM
/// measurements appear when a written file is closed (after its identity
/// is taken) and SELinux labels change with `restorecon`. Equal files with
/// other values of these are still one file to an image.
const HOST_XATTRS: [&[u8]; 3] = [b"security.ima", b"security.evm", b"security.selinux"];

/// What the metadata half of an identity is made of: a stat's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetaFields {
    pub size: u64,
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u64,
}

impl MetaFields {
    pub(crate) fn of(st: &rfs::Stat) -> MetaFields {
        MetaFields {
            size: st.st_size as u64,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
        }
    }
}

/// The metadata half of an identity, from a stat and the sorted xattrs
/// (the host's own, [`HOST_XATTRS`], left out).
pub(crate) fn meta_hash(st: &rfs::Stat, xattrs: &Xattrs) -> [u8; 16] {
    meta_hash_of(&MetaFields::of(st), xattrs)
}

/// Whether an xattr is the host's, not the image's ([`HOST_XATTRS`]).
pub(crate) fn is_host_xattr(name: &[u8]) -> bool {
    HOST_XATTRS.contains(&name)
}

/// [`meta_hash`] from the fields themselves: what a file about to be
/// written will have (`prelink`) hashes as the file will once written.
pub(crate) fn meta_hash_of(m: &MetaFields, xattrs: &Xattrs) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"lstore file meta 1");
    for v in [
        m.size,
        u64::from(m.mode),
        u64::from(m.uid),
        u64::from(m.gid),
        m.mtime_sec as u64,
        m.mtime_nsec,
    ] {
        h.update(&v.to_le_bytes());
    }
    for (name, value) in xattrs {
        if is_host_xattr(name) {
            continue;
        }
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The xattrs of an open file, sorted by name.
pub(crate) fn xattrs(fd: BorrowedFd<'_>) -> Result<Xattrs, Errno> {
    let mut names = vec![0u8; 256];
    let len = loop {
        match rfs::flistxattr(fd, &mut names) {
            Ok(n) => break n,
            Err(Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let n = loop {
            match rfs::fgetxattr(fd, name, &mut value) {
                Ok(n) => break n,
                Err(Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e),
            }
        };
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// The identity of the open file `fd` whose content hashes to `content`,
/// with its stat.
pub(crate) fn identify(
    fd: BorrowedFd<'_>,
    content: [u8; 32],
) -> Result<(rfs::Stat, FileIdentity), Errno> {
    let st = rfs::fstat(fd)?;
    let meta = meta_hash(&st, &xattrs(fd)?);
    Ok((st, FileIdentity { content, meta }))
}
