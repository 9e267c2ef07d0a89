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
