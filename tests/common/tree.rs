//! Snapshot of a directory tree (lstat only, never following links) and a
//! readable comparison of two snapshots.

use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File { size: u64, sha256: String },
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
}

impl NodeKind {
    pub fn is_whiteout(&self) -> bool {
        matches!(self, NodeKind::CharDev { major: 0, minor: 0 })
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeKind::File { size, sha256 } => write!(f, "file({size} bytes, {})", &sha256[..12]),
            NodeKind::Dir => write!(f, "dir"),
            NodeKind::Symlink(target) => {
                write!(f, "symlink -> {}", String::from_utf8_lossy(target))
            }
            NodeKind::Fifo => write!(f, "fifo"),
            NodeKind::Socket => write!(f, "socket"),
            NodeKind::CharDev { major, minor } => write!(f, "char {major}:{minor}"),
            NodeKind::BlockDev { major, minor } => write!(f, "block {major}:{minor}"),
        }
    }
}

/// What is compared for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Every xattr except `security.selinux`, sorted by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For a file whose inode also appears at other paths of the tree: the
    /// smallest of those paths. Equal groups mean equal hardlink structure.
    pub link_group: Option<String>,
}

/// A tree keyed by path relative to its root (`"etc/passwd"`, bytes that
/// are not UTF-8 written `\xNN`); the root itself is not included (OCI
/// leaves its metadata undefined).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn paths(&self) -> Vec<&str> {
        self.nodes.keys().map(String::as_str).collect()
    }
}

/// Walks `root` with lstat and records every entry below it.
pub fn snapshot(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, Path::new(""), &mut nodes, &mut inodes);
    for paths in inodes.values() {
        if paths.len() < 2 {
            continue;
        }
        let first = paths.iter().min().expect("non-empty").clone();
        for path in paths {
            if let Some(node) = nodes.get_mut(path) {
                node.link_group = Some(first.clone());
            }
        }
    }
    Tree { nodes }
}

/// A path for display and keys: UTF-8 as is, other bytes as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

fn walk(
    base: &Path,
    rel: &Path,
    nodes: &mut BTreeMap<String, Node>,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) {
    let dir = base.join(rel);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("dir entry");
        let rel_path = rel.join(entry.file_name());
        let path = escape(rel_path.as_os_str().as_bytes());
        let full = base.join(&rel_path);
        let meta =
            fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            NodeKind::Dir
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).expect("readlink");
            NodeKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if file_type.is_file() {
            let content =
                fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
            let hash = Sha256::digest(&content);
            NodeKind::File {
                size: meta.size(),
                sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
            }
        } else if file_type.is_fifo() {
            NodeKind::Fifo
        } else if file_type.is_socket() {
            NodeKind::Socket
        } else if file_type.is_char_device() {
            NodeKind::CharDev {
                major: libc::major(meta.rdev()),
                minor: libc::minor(meta.rdev()),
            }
        } else {
            NodeKind::BlockDev {
                major: libc::major(meta.rdev()),
                minor: libc::minor(meta.rdev()),
            }
        };
        if !file_type.is_dir() && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(path.clone());
        }
        nodes.insert(
            path,
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                xattrs: xattrs(&full),
                link_group: None,
            },
        );
        if file_type.is_dir() {
            walk(base, &rel_path, nodes, inodes);
        }
    }
}

/// All xattrs of `path` (not following a symlink), except `security.selinux`.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let mut out = BTreeMap::new();
    // SAFETY: c_path is NUL-terminated; a null buffer asks for the size.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return out;
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: the buffer has the length passed.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(len >= 0, "llistxattr {}", path.display());
    names.truncate(len as usize);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_str = String::from_utf8_lossy(name).into_owned();
        if name_str == "security.selinux" {
            continue;
        }
        if let Some(value) = lgetxattr(&c_path, name) {
            out.insert(name_str, value);
        }
    }
    out
}

/// One xattr of `path` (not following a symlink), `None` when absent.
pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    lgetxattr(&c_path, name.as_bytes())
}

fn lgetxattr(c_path: &CString, name: &[u8]) -> Option<Vec<u8>> {
    let c_name = CString::new(name).expect("xattr name without NUL");
    // SAFETY: both strings are NUL-terminated; a null buffer asks for the size.
    let size =
        unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return None;
    }
    let mut value = vec![0u8; size as usize];
    // SAFETY: the buffer has the length passed.
    let size = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if size < 0 {
        return None;
    }
    value.truncate(size as usize);
    Some(value)
}

fn show_xattrs(xattrs: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = xattrs
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Every difference between `expected` and `actual`, one readable line each.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in &expected.nodes {
        let Some(got) = actual.nodes.get(path) else {
            out.push(format!("missing: /{path} ({})", want.kind));
            continue;
        };
        if want.kind != got.kind {
            out.push(format!(
                "/{path}: expected {}, found {}",
                want.kind, got.kind
            ));
        }
        if want.mode != got.mode {
            out.push(format!(
                "/{path}: mode expected {:04o}, found {:04o}",
                want.mode, got.mode
            ));
        }
        if (want.uid, want.gid) != (got.uid, got.gid) {
            out.push(format!(
                "/{path}: owner expected {}:{}, found {}:{}",
                want.uid, want.gid, got.uid, got.gid
            ));
        }
        if want.mtime != got.mtime {
            out.push(format!(
                "/{path}: mtime expected {}, found {} ({:+} s)",
                want.mtime,
                got.mtime,
                got.mtime - want.mtime
            ));
        }
        if want.xattrs != got.xattrs {
            out.push(format!(
                "/{path}: xattrs expected {}, found {}",
                show_xattrs(&want.xattrs),
                show_xattrs(&got.xattrs)
            ));
        }
        if want.link_group != got.link_group {
            out.push(format!(
                "/{path}: hardlinked with expected {:?}, found {:?}",
                want.link_group, got.link_group
            ));
        }
    }
    for (path, got) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            out.push(format!("unexpected: /{path} ({})", got.kind));
        }
    }
    out
}

/// Panics with the first differences when the trees differ.
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let differences = diff(expected, actual);
    if differences.is_empty() {
        return;
    }
    let shown: Vec<&str> = differences.iter().take(40).map(String::as_str).collect();
    panic!(
        "{what}: {} difference(s) (expected {} entries, found {}):\n  {}{}",
        differences.len(),
        expected.len(),
        actual.len(),
        shown.join("\n  "),
        if differences.len() > shown.len() {
            "\n  …"
        } else {
            ""
        }
    );
}
