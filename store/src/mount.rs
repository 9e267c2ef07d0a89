//! Mounting images: a read-only overlay of the image's layers, or with `rw`
//! a copy-on-write overlay whose upper and work dirs live under
//! `containers/<id>/` (the layer folders never change).
//!
//! Live mounts are recorded in `mounts/`, and gc keeps their images.
//! Lower dirs are given as the short `l/` links relative to `overlay2/`
//! while the options fit in a page; longer chains use the new mount API's
//! `lowerdir+`, one layer per call, so the kernel's 500 layers mount.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fd::AsFd;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layers::short_id;
use crate::mounts_in_use::unescape;
use crate::store::Store;

/// A live mount, as recorded in `mounts/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    /// Where the image is mounted (absolute).
    pub target: String,
    /// The image's manifest digest (what gc keeps).
    pub image: Digest,
    /// The image id: its config's digest.
    pub id: Digest,
    /// The word the image was named by.
    pub reference: String,
    /// Whether the mount is read-write (copy-on-write).
    pub rw: bool,
    /// `containers/<container>/` holds upper/ and work/ of a rw mount.
    pub container: Option<String>,
    /// The image's layers, base first (chain ids).
    pub layers: Vec<Digest>,
    /// The mount namespace it was made in (the inode of `/proc/self/ns/mnt`):
    /// a command in another namespace (a user's second pause process, an
    /// `unshare -m` shell) judges it by that namespace's mount table, not
    /// its own. None in records made before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_ns: Option<u64>,
}

fn record_name(target: &Path) -> String {
    Digest::of(target.as_os_str().as_encoded_bytes()).hex()[..32].to_string()
}

/// Whether `target` is a mount point now (per /proc/self/mountinfo; read
/// as bytes, for a mount point elsewhere may not be UTF-8).
fn is_mount_point(target: &Path) -> bool {
    fs::read("/proc/self/mountinfo").is_ok_and(|info| table_has(&info, target))
}

/// Whether a `mountinfo` table has a mount at `target`.
fn table_has(info: &[u8], target: &Path) -> bool {
    let want = target.as_os_str().as_bytes();
    info.split(|b| *b == b'\n').any(|line| {
        line.split(|b| *b == b' ')
            .nth(4)
            .is_some_and(|field| unescape(field) == want)
    })
}

/// The caller's mount namespace.
fn own_mount_ns() -> Option<u64> {
    fs::metadata("/proc/self/ns/mnt").ok().map(|m| m.ino())
}

/// Where a recorded mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Mounted, in the caller's namespace.
    Here,
    /// Mounted, in the other namespace it was made in.
    Elsewhere,
    /// Not mounted any more (its namespace may be gone with it).
    Gone,
}

/// Where the mount of record `r` is now. A mount made in another namespace
/// is looked for in the table of a process still in that namespace; none
/// left means the namespace, and the mount, are gone.
fn seen(r: &MountRecord) -> Seen {
    let target = Path::new(&r.target);
    match r.mount_ns {
        Some(ns) if Some(ns) != own_mount_ns() => {
            let mounted = crate::mounts_in_use::namespace_table(Path::new("/proc"), ns)
                .is_some_and(|table| table_has(&table, target));
            if mounted {
                Seen::Elsewhere
            } else {
                Seen::Gone
            }
        }
        _ if is_mount_point(target) => Seen::Here,
        _ => Seen::Gone,
    }
}

/// Records of the mounts that are live now, in any namespace (a record
/// whose mount is gone protects nothing).
pub(crate) fn live_mount_records(store: &Store) -> Vec<MountRecord> {
    let Ok(entries) = fs::read_dir(store.root().join("mounts")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<MountRecord>(&b).ok())
        .filter(|m| seen(m) != Seen::Gone)
        .collect()
}

/// Room left for overlay options in one page, as Docker reckons it.
const PAGE_BUDGET: usize = 4096 - 512;

impl Store {
    fn mounts_dir(&self) -> PathBuf {
        self.root().join("mounts")
    }

    /// Mounts the image `word` at `target` (read-only, or copy-on-write).
    pub fn mount(&self, word: &str, target: &Path, rw: bool) -> Result<MountRecord> {
        let target =
            fs::canonicalize(target).ctx(|| format!("mount target {}", target.display()))?;
        if !target.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not a directory",
                target.display()
            )));
        }
        if is_mount_point(&target) {
            return Err(Error::Invalid(format!(
                "{} is already a mount point",
                target.display()
            )));
        }
        let record_path = self
            .mounts_dir()
            .join(format!("{}.json", record_name(&target)));
        // Record first, inside a session, so gc sees the mount before the
        // layers are used.
        let record = self.read_session(|meta| {
            let img = self.resolve(meta, word)?;
            let container = if rw {
                let id = Digest::of(
                    format!("{}{:?}", target.display(), std::time::SystemTime::now()).as_bytes(),
                )
                .hex();
                let dir = self.root().join("containers").join(&id);
                for sub in ["upper", "work"] {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(dir.join(sub))
                        .ctx(|| format!("create {}", dir.join(sub).display()))?;
                }
                Some(id)
            } else {
                None
            };
            let record = MountRecord {
                target: target.to_string_lossy().into_owned(),
                image: img.manifest,
                id: img.config,
                reference: word.to_string(),
                rw,
                container,
                layers: img.layers.iter().map(|l| l.chain_id).collect(),
                mount_ns: own_mount_ns(),
            };
            let json =
                serde_json::to_vec_pretty(&record).map_err(|e| Error::Invalid(e.to_string()))?;
            fs::write(&record_path, json).ctx(|| format!("write {}", record_path.display()))?;
            // Mounted before the lock goes: `mounts` (which drops records
            // whose mount is gone) and gc never see the record unmounted.
            if let Err(e) = self.do_mount(&record, &target) {
                let _ = fs::remove_file(&record_path);
                if let Some(c) = &record.container {
                    let _ = fs::remove_dir_all(self.root().join("containers").join(c));
                }
                return Err(e);
            }
            Ok(record)
        })?;
        Ok(record)
    }

    fn do_mount(&self, record: &MountRecord, target: &Path) -> Result<()> {
        let overlay = self.layer_store().root().to_path_buf();
        let layers = &record.layers;
        if layers.is_empty() {
            return Err(Error::Invalid("the image has no layers to mount".into()));
        }
        for c in layers {
            if !self.layer_store().is_present(c) {
                return Err(Error::Invalid(format!(
                    "layer {c} is missing; run lstore fsck"
                )));
            }
        }
        let upper = record
            .container
            .as_ref()
            .map(|c| self.root().join("containers").join(c));
        if upper.is_none() && layers.len() == 1 {
            // A read-only overlay needs two lower dirs: bind-mount the one.
            let diff = self.layer_store().diff_dir(&layers[0]);
            rustix::mount::mount_bind(&diff, target)
                .map_err(|e| Error::io(format!("bind {}", diff.display()), e.into()))?;
            if let Err(e) = rustix::mount::mount_remount(
                target,
                rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
                "",
            ) {
                let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
                return Err(Error::io("make the bind mount read-only", e.into()));
            }
            return Ok(());
        }
        // Short links relative to overlay2/, top layer first.
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|c| format!("l/{}", short_id(c)))
            .collect();
        let mut opts = format!("lowerdir={}", lower.join(":"));
        if let Some(u) = &upper {
            opts.push_str(&format!(
                ",upperdir={}/upper,workdir={}/work",
                u.display(),
                u.display()
            ));
        }
        // index and metacopy off: either would tie copy-ups to the inodes
        // that layers share (file sharing, docs/space.md).
        opts.push_str(",index=off,metacopy=off");
        let fs_fd = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| Error::io("open overlay filesystem", e.into()))?;
        let set = |k: &str, v: &str| {
            fsconfig_set_string(fs_fd.as_fd(), k, v)
                .map_err(|e| Error::io(format!("overlay option {k}={v}"), e.into()))
        };
        if opts.len() <= PAGE_BUDGET {
            // Relative l/ paths resolve against the current directory; the
            // mount is configured from overlay2/ and the cwd restored.
            let cwd = std::env::current_dir().ctx(|| "current directory".to_string())?;
            std::env::set_current_dir(&overlay).ctx(|| format!("enter {}", overlay.display()))?;
            let r = set("lowerdir", &lower.join(":"));
            let _ = std::env::set_current_dir(&cwd);
            r?;
        } else {
            for l in &lower {
                set("lowerdir+", &overlay.join(l).to_string_lossy())?;
            }
        }
        if let Some(u) = &upper {
            set("upperdir", &u.join("upper").to_string_lossy())?;
            set("workdir", &u.join("work").to_string_lossy())?;
        }
        let _ = set("index", "off");
        if self.overlay_xattrs() == crate::userns::OverlayXattrs::User {
            // A user's store: whiteouts and opaque dirs as user.overlay.*.
            fsconfig_set_flag(fs_fd.as_fd(), "userxattr")
                .map_err(|e| Error::io("overlay option userxattr", e.into()))?;
        }
        let _ = set("metacopy", "off");
        fsconfig_create(fs_fd.as_fd()).map_err(|e| Error::io("create overlay mount", e.into()))?;
        let attrs = if upper.is_some() {
            MountAttrFlags::empty()
        } else {
            MountAttrFlags::MOUNT_ATTR_RDONLY
        };
        let mnt = fsmount(fs_fd.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
            .map_err(|e| Error::io("create overlay mount", e.into()))?;
        move_mount(
            mnt.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| Error::io(format!("mount at {}", target.display()), e.into()))?;
        Ok(())
    }

    /// Unmounts what `lstore mount` mounted at `target`; the upper dir of a
    /// rw mount is discarded (commit it first to keep the changes).
    pub fn umount(&self, target: &Path) -> Result<()> {
        let target = fs::canonicalize(target).ctx(|| format!("{}", target.display()))?;
        let record_path = self
            .mounts_dir()
            .join(format!("{}.json", record_name(&target)));
        let record: MountRecord = fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::Invalid(format!("{} is not mounted by lstore", target.display()))
            })?;
        match seen(&record) {
            Seen::Here => rustix::mount::unmount(&target, UnmountFlags::empty())
                .map_err(|e| Error::io(format!("unmount {}", target.display()), e.into()))?,
            // Its upper dir is in use there: dropping the record would
            // discard it under the mount.
            Seen::Elsewhere => {
                return Err(Error::Invalid(format!(
                    "{} is mounted in another mount namespace; unmount it from there",
                    target.display()
                )))
            }
            Seen::Gone => {}
        }
        self.locked(|| {
            fs::remove_file(&record_path).ctx(|| format!("remove {}", record_path.display()))?;
            if let Some(c) = &record.container {
                crate::layers::remove_tree(&self.root().join("containers").join(c))?;
            }
            Ok(())
        })
    }

    /// The live mounts; records of mounts that are gone are dropped.
    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        self.locked(|| {
            let mut out = Vec::new();
            let dir = self.mounts_dir();
            for entry in fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
                let entry = entry.ctx(|| format!("read {}", dir.display()))?;
                let rec: Option<MountRecord> = fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                match rec {
                    Some(r) if seen(&r) != Seen::Gone => out.push(r),
                    stale => {
                        let _ = fs::remove_file(entry.path());
                        if let Some(c) = stale.and_then(|r| r.container) {
                            let _ =
                                crate::layers::remove_tree(&self.root().join("containers").join(c));
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.target.cmp(&b.target));
            Ok(out)
        })
    }

    /// The record of the live mount at `target`, if lstore made it.
    pub(crate) fn mount_at(&self, target: &Path) -> Result<Option<MountRecord>> {
        let target = fs::canonicalize(target).ctx(|| format!("{}", target.display()))?;
        Ok(self
            .mounts()?
            .into_iter()
            .find(|m| Path::new(&m.target) == target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_stable_per_target() {
        assert_eq!(
            record_name(Path::new("/mnt/x")),
            record_name(Path::new("/mnt/x"))
        );
        assert_ne!(
            record_name(Path::new("/mnt/x")),
            record_name(Path::new("/mnt/y"))
        );
    }
}
