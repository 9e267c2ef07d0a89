//! The reference tools the store is compared with: umoci and skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// A bundle made by `umoci unpack`; its root filesystem is `rootfs()`.
pub struct UmociBundle {
    dir: TempDir,
}

impl UmociBundle {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }
}

/// `umoci unpack --image <layout>:<tag> <bundle>` (as root).
pub fn umoci_unpack(layout: &Path, tag: &str) -> UmociBundle {
    let dir = tempfile::Builder::new()
        .prefix("lstore-umoci-")
        .tempdir()
        .expect("bundle dir");
    let image = format!("{}:{tag}", layout.display());
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &image,
            dir.path().join("bundle").to_str().expect("utf-8"),
        ],
    );
    UmociBundle { dir }
}

/// `skopeo copy SRC DEST` with extra arguments placed before SRC.
pub fn skopeo_copy(extra: &[&str], src: &str, dest: &str) {
    let mut args = vec!["--insecure-policy", "copy", "--quiet"];
    args.extend_from_slice(extra);
    args.push(src);
    args.push(dest);
    run("skopeo", &args);
}

/// `skopeo inspect --raw` or `--config` output parsed as JSON.
pub fn skopeo_inspect(extra: &[&str], image: &str) -> serde_json::Value {
    let mut args = vec!["--insecure-policy", "inspect"];
    args.extend_from_slice(extra);
    args.push(image);
    let stdout = run("skopeo", &args);
    serde_json::from_str(&stdout).expect("skopeo inspect JSON")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
