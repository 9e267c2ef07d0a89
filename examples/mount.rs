//! Mounts a stored image read-only, lists its files, and unmounts it.
//!
//! ```text
//! cargo run --example mount -- ROOT REFERENCE TARGET
//! ```
//!
//! TARGET is an existing empty folder. The image (a name, an id, or a
//! manifest digest) must be in the store at ROOT already (see the `pull`
//! example). Needs root: the image's layers are stacked with an overlay
//! mount.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lstore::{Store, StoreOptions};

/// Every path under `dir`, relative to `top`, sorted, with a `/` after
/// folders and ` -> TARGET` after symlinks.
fn walk(top: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for path in entries {
        let name = path
            .strip_prefix(top)
            .unwrap_or(&path)
            .display()
            .to_string();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            out.push(format!("{name}/"));
            walk(top, &path, out)?;
        } else if meta.file_type().is_symlink() {
            out.push(format!("{name} -> {}", fs::read_link(&path)?.display()));
        } else {
            out.push(name);
        }
    }
    Ok(())
}

fn run(root: &Path, reference: &str, target: &Path) -> lstore::Result<()> {
    let store = Store::open(root, StoreOptions::default())?;

    // Read-only: an overlay of the image's layer folders (a bind mount for
    // a one-layer image). `true` would give a copy-on-write mount whose
    // changes `Store::commit` turns into a new image.
    let mount = store.mount(reference, target, false)?;
    println!(
        "mounted {} ({}) at {}",
        mount.reference, mount.id, mount.target
    );

    let mut files = Vec::new();
    let listed = walk(target, target, &mut files)
        .map_err(|e| lstore::Error::io(format!("list {}", target.display()), e));
    // Unmount whatever the listing found: the mount holds the image's
    // layers against `rmi` and `gc` until then.
    store.umount(target)?;
    listed?;
    for f in &files {
        println!("file {f}");
    }
    println!("unmounted {}", target.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, reference, target] = args.as_slice() else {
        eprintln!("usage: mount ROOT REFERENCE TARGET");
        return ExitCode::from(2);
    };
    match run(Path::new(root), reference, Path::new(target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
