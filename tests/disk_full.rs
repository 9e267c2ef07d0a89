//! A store on a nearly full filesystem: the whole root on a small tmpfs.
//! A `pull` of an image larger than the free space and a `commit` of more
//! than fits must fail with one error line that says the disk is full;
//! the store must stay usable (`images`, `fsck`, `gc`, later pulls) and
//! show nothing half-finished.

mod common;

use common::checks::assert_matches_umoci;
use common::mount::LstoreMount;
use common::registry::Registry;
use common::scenes::{noise, small_app, small_base};
use common::{scratch, Compression, ImageBuilder, Lstore, TarBuilder};
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// What the kernel says for ENOSPC, as lstore passes it on.
const NO_SPACE: &str = "No space left on device";

/// A tmpfs mounted over a test's empty store root; unmounted (lazily if
/// busy) when dropped, which must happen before the store is removed.
struct Tmpfs {
    target: PathBuf,
}

impl Tmpfs {
    fn mount(target: &Path, size_mib: usize) -> Tmpfs {
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_mib}m,mode=0711"),
            "tmpfs",
            target.to_str().expect("utf-8"),
        ]);
        Tmpfs {
            target: target.to_path_buf(),
        }
    }

    /// Grows (or shrinks) the filesystem in place, keeping its files.
    fn resize(&self, size_mib: usize) {
        mount(&[
            "-o",
            &format!("remount,size={size_mib}m"),
            self.target.to_str().expect("utf-8"),
        ]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills the filesystem of `path` with a file until the kernel refuses,
/// then gives `leave` bytes back. Returns the file (remove it to free all).
fn fill(path: &Path, leave: u64) -> PathBuf {
    let mut file = fs::File::create(path).expect("filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    file.set_len(written.saturating_sub(leave))
        .expect("truncate");
    file.sync_all().expect("fsync filler");
    path.to_path_buf()
}

/// The failure is one error line that says the disk is full.
fn assert_no_space(store: &Lstore, args: &[&str]) {
    let line = store.fails(args);
    assert!(
        line.contains(NO_SPACE),
        "lstore {}: the error should say {NO_SPACE:?}: {line}",
        args.join(" ")
    );
    eprintln!("lstore {} -> {line}", args.join(" "));
}

/// `fsck` finds nothing wrong.
fn assert_fsck_clean(store: &Lstore, what: &str) {
    let out = store.run(&["fsck"]);
    assert!(
        out.success(),
        "{what}: fsck finds problems:\n{}{}",
        out.stdout,
        out.stderr
    );
}

/// References `images` lists, in order.
fn listed(store: &Lstore) -> Vec<String> {
    store.listed_references()
}

/// After a failure: the store lists what it had, fsck is clean, nothing
/// unfinished is left, and `gc` keeps only the blobs and layer folders of
/// the images still listed.
fn assert_usable(store: &Lstore, expected: &[&str], what: &str) {
    assert_eq!(listed(store), expected, "{what}: images");
    assert_fsck_clean(store, what);
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "{what}: tmp/, ingest/"
    );
    store.ok(&["gc"]);
    assert_fsck_clean(store, &format!("{what}, after gc"));
    if expected.is_empty() {
        assert_eq!(store.blobs(), Vec::<String>::new(), "{what}: blobs/");
        assert_eq!(
            store.layer_dirs(),
            Vec::<String>::new(),
            "{what}: overlay2/"
        );
    }
}

#[test]
fn a_pull_larger_than_the_free_space_fails_cleanly() {
    let registry = Registry::start();
    let work = scratch();
    let store = Lstore::new();
    let tmpfs = Tmpfs::mount(store.root(), 8);

    // 6 MiB that do not compress: the blob alone fits in 8 MiB, the blob
    // and its extracted files together do not.
    let mut t = TarBuilder::new();
    t.dir("data");
    t.file("data/a", noise(3 * MIB, 71));
    t.file("data/b", noise(3 * MIB, 72));
    let big = ImageBuilder::new().tar(&t, Compression::Gzip).build();
    let small = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("small"))
        .build();
    registry.push_image(work.path(), &big, "full/big:1", &[]);
    registry.push_image(work.path(), &small, "full/small:1", &[]);
    let big_ref = format!("{}/full/big:1", registry.host());
    let small_ref = format!("{}/full/small:1", registry.host());

    // On an empty store.
    assert_no_space(&store, &["pull", "-q", &big_ref]);
    assert_usable(&store, &[], "after the failed pull into an empty store");

    // A smaller image still fits; the big one fails again beside it and
    // leaves it intact.
    store.ok(&["pull", "-q", &small_ref]);
    assert_no_space(&store, &["pull", "-q", &big_ref]);
    assert_usable(
        &store,
        &[&small_ref],
        "after the failed pull beside an image",
    );
    assert_matches_umoci(&store, &small_ref, &small);

    // Room made: the same pull succeeds.
    tmpfs.resize(32);
    store.ok(&["pull", "-q", &big_ref]);
    assert_matches_umoci(&store, &big_ref, &big);
    store.ok(&["rmi", &big_ref, &small_ref]);
    assert_usable(&store, &[], "after the removal of both");
}

#[test]
fn a_commit_on_a_full_disk_fails_cleanly() {
    let registry = Registry::start();
    let work = scratch();
    let store = Lstore::new();
    let _tmpfs = Tmpfs::mount(store.root(), 16);
    let base = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("base"))
        .build();
    registry.push_image(work.path(), &base, "full/base:1", &[]);
    let base_ref = format!("{}/full/base:1", registry.host());
    store.ok(&["pull", "-q", &base_ref]);
    let committed = "local/full/changed:1";

    let rw = LstoreMount::new(&store, &base_ref, true);
    let data = noise(3 * MIB, 73);
    fs::write(Path::new(rw.target()).join("data"), &data).expect("write through the mount");
    // About 1 MiB left: the 3 MiB layer blob cannot be written.
    let filler = fill(&store.root().join("filler"), MIB as u64);
    assert_no_space(&store, &["commit", rw.target(), committed]);
    fs::remove_file(&filler).expect("remove filler");
    assert_usable(&store, &[&base_ref], "after the failed commit");

    // With the space back, the same mount commits.
    store.ok(&["commit", rw.target(), committed]);
    drop(rw);
    let inspect = store.inspect(committed);
    let top = inspect["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["path"].as_str())
        .expect("a top layer path")
        .to_string();
    assert_eq!(fs::read(Path::new(&top).join("data")).expect("data"), data);
    assert_matches_umoci(&store, &base_ref, &base);
    store.ok(&["rmi", committed, &base_ref]);
    assert_usable(&store, &[], "after the removal of both");
}
