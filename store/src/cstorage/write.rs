//! Bringing `<root>/containers-storage/` to a [`View`]: symlinks into
//! lstore's own folders and blobs, two JSON files written atomically, under
//! containers/storage's own lock files so that a podman reading the store
//! never sees it half-written.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::model::{big_data_file_name, View};
use crate::content::sync_dir;
use crate::error::{Error, IoContext, Result};

/// The view's folder under the store root.
pub(crate) const VIEW_DIR: &str = "containers-storage";
/// Where containers/storage's overlay driver looks for layer folders.
const LAYER_DIR: &str = "overlay";
const IMAGES_DIR: &str = "overlay-images";
const LAYERS_DIR: &str = "overlay-layers";
/// The file a layer's tar-split record has in its lstore folder.
pub(crate) const TAR_SPLIT: &str = "tar-split.gz";

/// Makes the view on disk equal `view`; with `check_only`, changes nothing
/// and only says whether anything differs. Returns whether anything did.
pub(crate) fn sync(root: &Path, view: &View, check_only: bool) -> Result<bool> {
    let cs = root.join(VIEW_DIR);
    let mut sync = Sync {
        check_only,
        changed: false,
    };
    if !cs.is_dir() && view.images.is_empty() && view.layers.is_empty() {
        // Nothing to show, and no view made yet: none is needed.
        return Ok(false);
    }
    for d in [LAYER_DIR, IMAGES_DIR, LAYERS_DIR] {
        sync.dir(&cs.join(d))?;
    }
    // containers/storage's read-only stores fail without their lock files;
    // taken in the order it nests them (layers, then images).
    let layers_lock = sync.lock_file(&cs.join(LAYERS_DIR).join("layers.lock"))?;
    let images_lock = sync.lock_file(&cs.join(IMAGES_DIR).join("images.lock"))?;

    // New entries first, the JSON files next, stale entries last: a reader
    // that does not lock still finds everything the files it reads name.
    let layer_dir = cs.join(LAYER_DIR);
    let mut keep_links: BTreeSet<String> = BTreeSet::from(["l".to_string()]);
    sync.symlink(&layer_dir.join("l"), "../../overlay2/l")?;
    let mut keep_splits: BTreeSet<String> = BTreeSet::new();
    for l in &view.layers {
        let chain = l.chain_id.hex();
        let target = format!("../../overlay2/{chain}");
        sync.symlink(&layer_dir.join(&l.entry.id), &target)?;
        // Under its chain id too: the driver finds a lower layer's folder
        // from its `l/` link's target (`../<chain>/diff`).
        sync.symlink(&layer_dir.join(&chain), &target)?;
        keep_links.insert(l.entry.id.clone());
        keep_links.insert(chain.clone());
        if root.join("overlay2").join(&chain).join(TAR_SPLIT).is_file() {
            let name = format!("{}.tar-split.gz", l.entry.id);
            sync.symlink(
                &cs.join(LAYERS_DIR).join(&name),
                &format!("../../overlay2/{chain}/{TAR_SPLIT}"),
            )?;
            keep_splits.insert(name);
        }
    }
    let mut keep_images: BTreeSet<String> = BTreeSet::new();
    for img in &view.images {
        let dir = cs.join(IMAGES_DIR).join(&img.entry.id);
        sync.dir(&dir)?;
        let mut files = BTreeSet::new();
        for (key, blob) in &img.big_data {
            let name = big_data_file_name(key);
            sync.symlink(
                &dir.join(&name),
                &format!("../../../blobs/sha256/{}", blob.hex()),
            )?;
            files.insert(name);
        }
        sync.prune(&dir, &files, Prune::Any)?;
        keep_images.insert(img.entry.id.clone());
    }

    let entries: Vec<_> = view.layers.iter().map(|l| &l.entry).collect();
    sync.json(&cs.join(LAYERS_DIR).join("layers.json"), &entries)?;
    let entries: Vec<_> = view.images.iter().map(|i| &i.entry).collect();
    sync.json(&cs.join(IMAGES_DIR).join("images.json"), &entries)?;

    sync.prune(&layer_dir, &keep_links, Prune::Symlinks)?;
    keep_splits.extend(["layers.json", "layers.lock"].map(String::from));
    sync.prune(&cs.join(LAYERS_DIR), &keep_splits, Prune::Any)?;
    keep_images.extend(["images.json", "images.lock"].map(String::from));
    sync.prune(&cs.join(IMAGES_DIR), &keep_images, Prune::Any)?;

    if sync.changed && !check_only {
        // A long-running reader (CRI-O) reloads a store whose lock file
        // holds a new last-writer id.
        for lock in [&layers_lock, &images_lock].into_iter().flatten() {
            touch(lock)?;
        }
    }
    Ok(sync.changed)
}

struct Sync {
    check_only: bool,
    changed: bool,
}

enum Prune {
    /// Only symlinks go (the layer folder holds nothing else of ours).
    Symlinks,
    /// Files, links and folders go.
    Any,
}

impl Sync {
    fn dir(&mut self, path: &Path) -> Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        self.changed = true;
        if self.check_only {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .ctx(|| format!("create {}", path.display()))
    }

    /// Opens (creating) a lock file and takes containers/storage's write
    /// lock on it: a POSIX record lock on the whole file.
    fn lock_file(&mut self, path: &Path) -> Result<Option<File>> {
        if self.check_only {
            if !path.is_file() {
                self.changed = true;
            }
            return Ok(None);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .ctx(|| format!("open {}", path.display()))?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            // SAFETY: a valid fd and a fully initialised flock struct.
            let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
        Ok(Some(file))
    }

    /// `path` becomes a symlink to `target` (replaced atomically).
    fn symlink(&mut self, path: &Path, target: &str) -> Result<()> {
        if fs::read_link(path).is_ok_and(|t| t == Path::new(target)) {
            return Ok(());
        }
        self.changed = true;
        if self.check_only {
            return Ok(());
        }
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            crate::layers::remove_tree(path)?;
        }
        let tmp = temp_name(path);
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).ctx(|| format!("symlink {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("rename {} into place", path.display()))
    }

    /// `path` holds `value` as JSON: written to a temporary file, fsynced
    /// and renamed over it, when it differs.
    fn json<T: serde::Serialize>(&mut self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::Invalid(format!("encode {}: {e}", path.display())))?;
        if fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        self.changed = true;
        if self.check_only {
            return Ok(());
        }
        let tmp = temp_name(path);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("rename {} into place", path.display()))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    }

    /// Removes what `dir` holds beyond `keep` (and our temporary names).
    fn prune(&mut self, dir: &Path, keep: &BTreeSet<String>, what: Prune) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if matches!(what, Prune::Symlinks) && !meta.is_symlink() {
                continue;
            }
            self.changed = true;
            if self.check_only {
                continue;
            }
            if meta.is_dir() {
                crate::layers::remove_tree(&path)?;
            } else {
                fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lstore-tmp"))
}

/// Writes a new last-writer id at the start of a lock file, as
/// containers/storage's `Touch` does: 64 bytes no earlier writer wrote.
fn touch(file: &File) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = crate::digest::Digest::of(format!("{now}.{}", std::process::id()).as_bytes()).hex();
    file.write_all_at(id.as_bytes(), 0)
        .and_then(|()| file.sync_all())
        .ctx(|| "touch containers-storage lock file".to_string())
}
