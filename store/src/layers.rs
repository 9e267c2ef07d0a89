//! overlay2 layer folders: `overlay2/<chain-hex>/{diff/,link,lower,work/}`
//! and the short links `overlay2/l/<id> -> ../<chain-hex>/diff`.
//!
//! A layer is extracted under `tmp/`, completed (link, lower, work/, one
//! `syncfs`), then renamed into `overlay2/` in one step: a folder under its
//! final name is always complete.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// Length of a short link id, as Docker's overlay2 driver uses.
pub const SHORT_ID_LEN: usize = 26;

/// The short link id of a layer: 26 characters of base32 (A-Z, 2-7), made
/// from the chain id so that it never needs to be looked up.
pub fn short_id(chain_id: &Digest) -> String {
    let mut input = b"lstore overlay2 link ".to_vec();
    input.extend_from_slice(chain_id.as_bytes());
    let bytes = Digest::of(&input);
    base32(bytes.as_bytes())[..SHORT_ID_LEN].to_string()
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in data {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[derive(Debug, Clone)]
pub struct LayerStore {
    overlay: PathBuf,
    tmp: PathBuf,
}

impl LayerStore {
    /// `overlay` is `<root>/overlay2`, `tmp` is `<root>/tmp`.
    pub fn new(overlay: PathBuf, tmp: PathBuf) -> LayerStore {
        LayerStore { overlay, tmp }
    }

    pub fn root(&self) -> &Path {
        &self.overlay
    }

    pub fn dir(&self, chain_id: &Digest) -> PathBuf {
        self.overlay.join(chain_id.hex())
    }

    pub fn diff_dir(&self, chain_id: &Digest) -> PathBuf {
        self.dir(chain_id).join("diff")
    }

    /// The layer's tar-split record (`tar-split.gz`, containers/storage's
    /// `<id>.tar-split.gz`), which holds what its tar has besides files.
    pub(crate) fn tar_split_path(&self, chain_id: &Digest) -> PathBuf {
        self.dir(chain_id).join(crate::tarsplit::RECORD_FILE)
    }

    pub fn link_path(&self, chain_id: &Digest) -> PathBuf {
        self.links_dir().join(short_id(chain_id))
    }

    /// `overlay2/l/`, where the short links are.
    pub fn links_dir(&self) -> PathBuf {
        self.overlay.join("l")
    }

    /// A finished folder exists for the layer (the rename is the commit).
    pub fn is_present(&self, chain_id: &Digest) -> bool {
        self.dir(chain_id).join("link").is_file()
    }

    /// A fresh staging folder `tmp/<name>/diff` to extract into.
    pub fn stage(&self, name: &str) -> Result<Staging> {
        let path = self.tmp.join(name);
        if path.exists() {
            fs::remove_dir_all(&path).ctx(|| format!("clear {}", path.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o710)
            .create(&path)
            .ctx(|| format!("create {}", path.display()))?;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(path.join("diff"))
            .ctx(|| format!("create {}/diff", path.display()))?;
        Ok(Staging { path, done: false })
    }

    /// Completes a staged layer and moves it to `overlay2/<chain-hex>`.
    /// `parents` are the chain ids below it, nearest first. Returns false
    /// when another's folder for the chain was there first and is kept (the
    /// staged one dropped): what the caller learnt of its own files (index
    /// entries) does not describe the folder in place.
    pub fn commit(
        &self,
        mut staging: Staging,
        chain_id: &Digest,
        parents: &[Digest],
    ) -> Result<bool> {
        self.complete(&staging, chain_id, parents)?;
        let p = &staging.path;
        let dest = self.dir(chain_id);
        match fs::rename(p, &dest) {
            Ok(()) => {}
            // Someone else finished it first (ENOTEMPTY/EEXIST): theirs is as
            // good as ours; ours is dropped.
            Err(e) if dest.join("link").is_file() => {
                let _ = e;
                return Ok(false);
            }
            Err(e) => return Err(Error::io(format!("rename into {}", dest.display()), e)),
        }
        staging.done = true;
        crate::content::sync_dir(&self.overlay)?;
        Ok(true)
    }

    /// Writes `link`, `lower` and `work/` of a staged layer, makes it
    /// durable, and points its short link at the final folder.
    fn complete(&self, staging: &Staging, chain_id: &Digest, parents: &[Digest]) -> Result<()> {
        let p = &staging.path;
        let short = short_id(chain_id);
        fs::write(p.join("link"), &short).ctx(|| format!("write {}/link", p.display()))?;
        if !parents.is_empty() {
            let lower: Vec<String> = parents
                .iter()
                .map(|c| format!("l/{}", short_id(c)))
                .collect();
            fs::write(p.join("lower"), lower.join(":"))
                .ctx(|| format!("write {}/lower", p.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(p.join("work"))
            .ctx(|| format!("create {}/work", p.display()))?;
        // One syncfs for the whole layer instead of an fsync per file: the
        // folder becomes visible (rename) only once all of it is durable.
        let dir = fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| Error::io(format!("syncfs {}", p.display()), e.into()))?;
        // The short link first: dangling until the rename, so a crash in
        // between leaves only a dangling link, which gc removes.
        let link = self.link_path(chain_id);
        let target = format!("../{}/diff", chain_id.hex());
        match fs::read_link(&link) {
            Ok(t) if t == Path::new(&target) => {}
            Ok(_) => {
                fs::remove_file(&link).ctx(|| format!("replace {}", link.display()))?;
                symlink(&target, &link).ctx(|| format!("create {}", link.display()))?;
            }
            Err(_) => symlink(&target, &link).ctx(|| format!("create {}", link.display()))?,
        }
        crate::content::sync_dir(&self.links_dir())
    }

    /// Completes a staged layer and puts it in place of a damaged folder
    /// of the same layer (`fsck --repair`). The two folders trade places in
    /// one step (`renameat2(RENAME_EXCHANGE)`), so `overlay2/<chain-hex>`
    /// never goes missing and never holds a half-made layer; the damaged
    /// one, now under `tmp/`, is then deleted. With no folder in the way
    /// this is a plain rename.
    pub(crate) fn replace(
        &self,
        mut staging: Staging,
        chain_id: &Digest,
        parents: &[Digest],
    ) -> Result<()> {
        self.complete(&staging, chain_id, parents)?;
        let dest = self.dir(chain_id);
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging.path,
            rustix::fs::CWD,
            &dest,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        match exchanged {
            Ok(()) => {
                crate::content::sync_dir(&self.overlay)?;
                // The staging path now holds the damaged folder.
                remove_tree(&staging.path)?;
                staging.done = true;
            }
            Err(rustix::io::Errno::NOENT) => {
                fs::rename(&staging.path, &dest)
                    .ctx(|| format!("rename into {}", dest.display()))?;
                staging.done = true;
                crate::content::sync_dir(&self.overlay)?;
            }
            Err(e) => {
                return Err(Error::io(
                    format!("exchange {} with a new folder", dest.display()),
                    e.into(),
                ))
            }
        }
        Ok(())
    }

    /// Removes a layer folder and its short link: first renamed into
    /// `tmp/<trash>` (one step, so no half-deleted folder stays under its
    /// final name), then deleted. Returns the bytes freed.
    pub fn remove(&self, chain_id: &Digest, trash: &str) -> Result<u64> {
        let link = self.link_path(chain_id);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", link.display()), e)),
        }
        let dir = self.dir(chain_id);
        let dest = self.tmp.join(trash);
        match fs::rename(&dir, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("move {} to tmp/", dir.display()), e)),
        }
        remove_tree(&dest)
    }

    /// Folder names under `overlay2/`: layers (by chain id) and anything else.
    pub fn list(&self) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
        let mut layers = Vec::new();
        let mut junk = Vec::new();
        let entries = match fs::read_dir(&self.overlay) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((layers, junk)),
            Err(e) => return Err(Error::io(format!("read {}", self.overlay.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", self.overlay.display()))?;
            let name = entry.file_name();
            if name == "l" {
                continue;
            }
            match name.to_str().and_then(Digest::from_hex) {
                Some(d) => layers.push(d),
                None => junk.push(entry.path()),
            }
        }
        Ok((layers, junk))
    }

    /// Short links in `l/` whose layer folder is not complete (dangling).
    pub fn dangling_links(&self) -> Result<Vec<PathBuf>> {
        let l = self.links_dir();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&l) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("read {}", l.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", l.display()))?;
            let path = entry.path();
            // A link is good when it points at ../<hex>/diff of a finished layer.
            let good = fs::read_link(&path)
                .ok()
                .and_then(|t| linked_chain(&t))
                .map(|chain| {
                    self.is_present(&chain)
                        && short_id(&chain) == entry.file_name().to_string_lossy()
                })
                .unwrap_or(false);
            if !good {
                out.push(path);
            }
        }
        Ok(out)
    }
}

/// A layer being extracted under `tmp/`; removed on drop unless committed.
pub struct Staging {
    path: PathBuf,
    done: bool,
}

impl Staging {
    pub fn diff(&self) -> PathBuf {
        self.path.join("diff")
    }

    /// The staged layer folder (the future `overlay2/<chain-hex>`).
    pub(crate) fn folder(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.path);
        }
    }
}

/// The layer a short link's target (`../<chain-hex>/diff`) names.
pub(crate) fn linked_chain(target: &Path) -> Option<Digest> {
    let hex = target
        .to_str()?
        .strip_prefix("../")?
        .strip_suffix("/diff")?;
    Digest::from_hex(hex)
}

/// Calls `f` with the metadata of every regular file under `path` (or of
/// `path` itself when it is one), never following symlinks.
fn each_file(path: &Path, mut f: impl FnMut(&fs::Metadata)) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            f(&meta);
        }
    }
}

/// Bytes a tree uses (apparent sizes of regular files), never following links.
pub fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    each_file(path, |meta| total += meta.len());
    total
}

/// Bytes that removing `paths` (files or trees) gives back, as `df` sees
/// it: a file's bytes count once however many names it has, and only when
/// every name it has is among `paths` (a hardlink kept elsewhere keeps
/// them in use). Apparent sizes, like the rest of the store's figures.
pub fn freed_by_removing(paths: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // (device, inode) -> (links it has, links seen here, size)
    let mut inodes: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new();
    for path in paths {
        each_file(path, |meta| {
            let seen =
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert((meta.nlink(), 0, meta.len()));
            seen.1 += 1;
        });
    }
    inodes
        .values()
        .filter(|(links, seen, _)| seen >= links)
        .map(|(_, _, size)| size)
        .sum()
}

/// Deletes a tree (never following symlinks) and returns the bytes that
/// gave back (see `freed_by_removing`). Read-only directories (which a
/// layer may hold) stop a process without CAP_DAC_OVERRIDE: they are made
/// writable, then removal retried.
pub fn remove_tree(path: &Path) -> Result<u64> {
    let size = freed_by_removing(&[path.to_path_buf()]);
    // A file where a folder belongs (a damaged layer) goes the same way.
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        return fs::remove_file(path)
            .map(|_| size)
            .ctx(|| format!("remove {}", path.display()));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(size),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
                .map(|_| size)
                .ctx(|| format!("remove {}", path.display()))
        }
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Gives the owner rwx on every directory of a tree (symlinks untouched).
fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&p) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (tempfile::TempDir, LayerStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let ls = LayerStore::new(dir.path().join("overlay2"), dir.path().join("tmp"));
        (dir, ls)
    }

    /// A file with names in two trees frees its bytes only with both, and
    /// once; removing the trees one after the other counts it at the last.
    #[test]
    fn freed_bytes_count_a_file_once_when_its_last_name_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("shared"), vec![1u8; 1000]).unwrap();
        fs::hard_link(a.join("shared"), a.join("shared-again")).unwrap();
        fs::hard_link(a.join("shared"), b.join("shared")).unwrap();
        fs::write(b.join("own"), vec![2u8; 10]).unwrap();
        assert_eq!(tree_size(&a), 2000, "apparent: every name");
        assert_eq!(freed_by_removing(std::slice::from_ref(&a)), 0);
        assert_eq!(freed_by_removing(std::slice::from_ref(&b)), 10);
        assert_eq!(freed_by_removing(&[a.clone(), b.clone()]), 1010);
        assert_eq!(remove_tree(&a).unwrap(), 0);
        assert_eq!(remove_tree(&b).unwrap(), 1010);
    }

    #[test]
    fn short_ids_look_like_dockers() {
        let id = short_id(&Digest::of(b"x"));
        assert_eq!(id.len(), 26);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_ne!(id, short_id(&Digest::of(b"y")));
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn commit_makes_a_complete_folder_and_remove_takes_it_away() {
        let (dir, ls) = layers();
        let base = Digest::of(b"base");
        let top = Digest::of(b"top");
        let s = ls.stage("lease.base").unwrap();
        fs::write(s.diff().join("f"), b"hello").unwrap();
        ls.commit(s, &base, &[]).unwrap();
        let s = ls.stage("lease.top").unwrap();
        ls.commit(s, &top, &[base]).unwrap();
        assert!(ls.is_present(&base) && ls.is_present(&top));
        assert!(!ls.dir(&base).join("lower").exists());
        assert_eq!(
            fs::read_to_string(ls.dir(&top).join("lower")).unwrap(),
            format!("l/{}", short_id(&base))
        );
        assert_eq!(
            fs::read(ls.link_path(&base).join("f")).unwrap(),
            b"hello".to_vec()
        );
        assert!(ls.dangling_links().unwrap().is_empty());
        assert_eq!(ls.list().unwrap().0.len(), 2);
        // The file and the 26-byte link file.
        assert_eq!(ls.remove(&base, "lease.trash").unwrap(), 5 + 26);
        assert!(!ls.is_present(&base));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(ls.dangling_links().unwrap().len(), 0);
    }

    #[test]
    fn an_abandoned_staging_folder_is_removed() {
        let (dir, ls) = layers();
        {
            let s = ls.stage("lease.x").unwrap();
            fs::write(s.diff().join("f"), b"x").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
