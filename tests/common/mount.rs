//! Read-only mounts of an image's layers, always unmounted on drop.

use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// A read-only view of an image root filesystem mounted on a temp dir.
pub struct RootfsMount {
    mounted: bool,
    target: TempDir,
}

impl RootfsMount {
    /// Mounts an `inspect` `lowerdir` value: an overlay of two or more
    /// layers, or a read-only bind mount of a single one.
    pub fn lowerdir(lowerdir: &str) -> RootfsMount {
        let target = tempfile::Builder::new()
            .prefix("lstore-mnt-")
            .tempdir()
            .expect("mount point");
        let mut mount = RootfsMount {
            mounted: false,
            target,
        };
        if lowerdir.contains(':') {
            run_mount(&[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!("ro,lowerdir={lowerdir}"),
                path_str(mount.target.path()),
            ]);
            mount.mounted = true;
        } else {
            run_mount(&["--bind", lowerdir, path_str(mount.target.path())]);
            mount.mounted = true;
            run_mount(&["-o", "remount,ro,bind", path_str(mount.target.path())]);
        }
        mount
    }

    pub fn path(&self) -> &Path {
        self.target.path()
    }
}

impl Drop for RootfsMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let target = self.target.path();
        let ok = Command::new("umount")
            .arg(target)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // A lazy detach at least keeps the temp dir removal from
            // walking into the layers.
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn run_mount(args: &[&str]) {
    let output = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        output.status.success(),
        "mount {:?} failed: {}",
        args,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An `lstore mount` of an image (read-only, or copy-on-write with `--rw`)
/// on a temp dir, unmounted through `lstore umount` when dropped (lazily
/// by umount(8) if that fails, so a failing test leaves no mount behind).
pub struct LstoreMount<'a> {
    store: &'a crate::common::Lstore,
    target: TempDir,
    mounted: bool,
}

impl<'a> LstoreMount<'a> {
    pub fn new(store: &'a crate::common::Lstore, reference: &str, rw: bool) -> LstoreMount<'a> {
        let target = tempfile::Builder::new()
            .prefix("lstore-image-mnt-")
            .tempdir()
            .expect("mount point");
        let mut args = vec!["mount", reference, path_str(target.path())];
        if rw {
            args.push("--rw");
        }
        store.ok(&args);
        LstoreMount {
            store,
            target,
            mounted: true,
        }
    }

    /// The mounted root.
    pub fn root(&self) -> &Path {
        self.target.path()
    }

    /// A path below the mounted root.
    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.target.path().join(rel)
    }

    pub fn target(&self) -> &str {
        path_str(self.target.path())
    }

    /// Unmounts the regular way, asserting that it works.
    pub fn umount(mut self, what: &str) {
        let out = self.store.run(&["umount", self.target()]);
        assert!(
            out.success(),
            "{what}: lstore umount failed: {}",
            out.stderr
        );
        self.mounted = false;
    }
}

impl Drop for LstoreMount<'_> {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if !self.store.run(&["umount", self.target()]).success() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.target.path())
                .status();
        }
    }
}
