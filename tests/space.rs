//! File sharing across layers (docs/space.md): files of equal content and
//! metadata in different layers become one inode; other metadata keeps
//! them apart (ext4) or shares extents (XFS with reflink); removal, copy-up,
//! fsck and kills leave every image mounting exactly as `umoci unpack`
//! shows it.

mod common;

use common::checks::{assert_matches_umoci, inode, layer_diff};
use common::image::Image;
use common::tarball::{Compression, TarBuilder};
use common::{ImageBuilder, Lstore};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const A: &str = "example.com/space/a:1";
const B: &str = "example.com/space/b:1";

/// Text of `len` bytes that differs with `seed`.
fn content(seed: &str, len: usize) -> Vec<u8> {
    seed.bytes().cycle().take(len).collect()
}

/// A base layer of a few files; `variant` changes one file and the layer's
/// own digest (as two releases of one distribution share most files).
fn base(variant: &str) -> TarBuilder {
    base_as(variant, 0o755, 1_600_000_000)
}

/// `base` with the tool's mode and the library's mtime given: the same
/// content under other metadata when they differ from `base`'s.
fn base_as(variant: &str, tool_mode: u32, lib_mtime: u64) -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("usr/");
    t.dir("usr/bin/");
    t.file("usr/bin/tool", content("tool binary ", 20_000))
        .mode(tool_mode)
        .mtime(1_600_000_000);
    t.file("usr/bin/setuid", content("setuid binary ", 9_000))
        .mode(0o4755)
        .mtime(1_600_000_000);
    t.file("usr/lib.so", content("library ", 300_000))
        .mtime(lib_mtime);
    t.file("etc-version", format!("release {variant}\n"))
        .mtime(1_600_000_000);
    t.file("empty", b"").mtime(1_600_000_000);
    t
}

/// An image of one gzip layer made of `tar`.
fn image_of(tar: &TarBuilder) -> Image {
    ImageBuilder::new().tar(tar, Compression::Gzip).build()
}

/// Loads an image of `a` as A, then one of `b` as B: the images and
/// their `inspect`.
fn load_pair(store: &Lstore, a: &TarBuilder, b: &TarBuilder) -> (Image, Image, Value, Value) {
    let (a, b) = (image_of(a), image_of(b));
    store.load_image(&a, A);
    store.load_image(&b, B);
    (a, b, store.inspect(A), store.inspect(B))
}

fn path_in(inspect: &Value, layer: usize, rel: &str) -> PathBuf {
    layer_diff(inspect, layer).join(rel)
}

fn ino(path: &Path) -> u64 {
    inode(path).0
}

/// Two images whose base layers differ as blobs but hold mostly the same
/// files: the equal files are one inode afterwards, the different one is
/// not, empty files are not linked, and both images mount exactly.
#[test]
fn equal_files_in_different_layers_become_one_inode() {
    let store = Lstore::new();
    let (a, b, ia, ib) = load_pair(&store, &base("1"), &base("2"));
    for rel in ["usr/bin/tool", "usr/bin/setuid", "usr/lib.so"] {
        let (pa, pb) = (path_in(&ia, 0, rel), path_in(&ib, 0, rel));
        assert_eq!(ino(&pa), ino(&pb), "{rel}: one inode in both layers");
        assert_eq!(inode(&pa).1, 2, "{rel}: two names");
    }
    assert_ne!(
        ino(&path_in(&ia, 0, "etc-version")),
        ino(&path_in(&ib, 0, "etc-version")),
        "different content stays apart"
    );
    assert_ne!(
        ino(&path_in(&ia, 0, "empty")),
        ino(&path_in(&ib, 0, "empty")),
        "empty files are not worth a link"
    );
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
    let df = store.json(&["df", "--format", "json"]);
    assert_eq!(
        df["sharing_saved_bytes"].as_u64(),
        Some(20_000 + 9_000 + 300_000),
        "df: {df}"
    );
}

/// The holder of an inode `lstore fsck` checks: a file changed behind the
/// store's back is found in every layer sharing it, and `--repair` makes
/// each whole again (extracted anew, not linked to the changed inode).
#[test]
fn fsck_finds_and_repair_fixes_a_changed_shared_file() {
    let store = Lstore::new();
    let (a, b, ia, ib) = load_pair(&store, &base("1"), &base("2"));
    store.ok(&["fsck"]);
    let tool_a = path_in(&ia, 0, "usr/bin/tool");
    let tool_b = path_in(&ib, 0, "usr/bin/tool");
    assert_eq!(ino(&tool_a), ino(&tool_b));
    // Same size, other bytes, mtime put back: only the content tells.
    let mtime = fs::metadata(&tool_a).unwrap().mtime();
    let mut bytes = fs::read(&tool_a).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&tool_a, &bytes).unwrap();
    let status = std::process::Command::new("touch")
        .args(["-h", "-d", &format!("@{mtime}")])
        .arg(&tool_a)
        .status()
        .unwrap();
    assert!(status.success());

    let out = store.run(&["fsck", "--format", "json"]);
    assert!(!out.success(), "damage fails fsck");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    for chain in [&ia["layers"][0]["chain_id"], &ib["layers"][0]["chain_id"]] {
        let chain = chain.as_str().unwrap();
        assert!(problems.contains(chain), "{chain} not named in {problems}");
    }
    assert!(problems.contains("usr/bin/tool"), "{problems}");

    store.ok(&["fsck", "--repair"]);
    store.ok(&["fsck"]);
    let (ia, ib) = (store.inspect(A), store.inspect(B));
    let tool_a = path_in(&ia, 0, "usr/bin/tool");
    let tool_b = path_in(&ib, 0, "usr/bin/tool");
    assert_eq!(fs::read(&tool_a).unwrap(), content("tool binary ", 20_000));
    assert_eq!(fs::read(&tool_b).unwrap(), content("tool binary ", 20_000));
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
}

/// A shared file whose metadata alone changed behind the store's back
/// (here its mode): `fsck` reports its index entries as stale, not the
/// layers as damaged, and `--repair` re-indexes them without extracting
/// or removing anything.
#[test]
fn fsck_reindexes_a_shared_file_whose_metadata_alone_changed() {
    use std::os::unix::fs::PermissionsExt;
    let store = Lstore::new();
    let (_, _, ia, ib) = load_pair(&store, &base("1"), &base("2"));
    let tool_a = path_in(&ia, 0, "usr/bin/tool");
    let shared_ino = ino(&tool_a);
    fs::set_permissions(&tool_a, fs::Permissions::from_mode(0o700)).unwrap();

    let out = store.run(&["fsck", "--format", "json"]);
    assert!(!out.success(), "a stale entry fails fsck");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    assert!(problems.contains("stale"), "{problems}");
    assert!(!problems.contains("re-extracts"), "{problems}");

    store.ok(&["fsck", "--repair"]);
    store.ok(&["fsck"]);
    let (ia2, ib2) = (store.inspect(A), store.inspect(B));
    assert_eq!(ia2["layers"][0]["chain_id"], ia["layers"][0]["chain_id"]);
    assert_eq!(ib2["layers"][0]["chain_id"], ib["layers"][0]["chain_id"]);
    assert_eq!(
        ino(&path_in(&ia2, 0, "usr/bin/tool")),
        shared_ino,
        "not extracted again"
    );
    assert_eq!(ino(&path_in(&ib2, 0, "usr/bin/tool")), shared_ino);
}

/// `base` with the tool's mode and the library's mtime changed.
fn base_chmod(variant: &str) -> TarBuilder {
    base_as(variant, 0o700, 1_600_000_001)
}

/// Equal content under other metadata (mode, mtime) is never linked: a
/// link would give one layer the other's metadata. (Extents are shared on
/// a filesystem that clones: `reflinks_share_extents_on_xfs`.)
#[test]
fn equal_content_with_other_metadata_is_not_linked() {
    let store = Lstore::new();
    let (a, b, ia, ib) = load_pair(&store, &base("1"), &base_chmod("2"));
    for rel in ["usr/bin/tool", "usr/lib.so"] {
        let (pa, pb) = (path_in(&ia, 0, rel), path_in(&ib, 0, rel));
        assert_ne!(ino(&pa), ino(&pb), "{rel}: other metadata, other inode");
        assert_eq!(inode(&pb).1, 1, "{rel}: one name");
        assert_eq!(fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
    }
    assert_eq!(
        fs::metadata(path_in(&ib, 0, "usr/bin/tool"))
            .unwrap()
            .mode()
            & 0o7777,
        0o700
    );
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
}

/// The first layer holding a shared inode goes (rmi + gc): the other
/// image keeps the file whole, and the freed bytes count only what went.
#[test]
fn a_shared_file_outlives_the_layer_it_came_from() {
    let store = Lstore::new();
    let a = image_of(&base("1"));
    let b = image_of(&base("2"));
    store.load_image(&a, A);
    store.load_image(&b, B);
    let ib = store.inspect(B);
    let lib_b = path_in(&ib, 0, "usr/lib.so");
    assert_eq!(inode(&lib_b).1, 2);
    let removed = store.json(&["rmi", A, "--format", "json"]);
    store.ok(&["gc"]);
    // Only A's own files were freed: its etc-version (10 bytes), link,
    // tar-split record and such, not the 329,000 shared bytes.
    let freed = removed["freed_bytes"].as_u64().unwrap_or(0);
    assert!(
        freed < 20_000,
        "rmi counted shared bytes as freed: {removed}"
    );
    assert_eq!(inode(&lib_b).1, 1, "one name left");
    assert_eq!(fs::read(&lib_b).unwrap(), content("library ", 300_000));
    assert_matches_umoci(&store, B, &b);
    store.ok(&["fsck"]);
    let df = store.json(&["df", "--format", "json"]);
    assert_eq!(df["sharing_saved_bytes"].as_u64(), Some(0), "{df}");
    // Loaded again, A links to B's inodes now.
    store.load_image(&a, A);
    let ia = store.inspect(A);
    assert_eq!(ino(&path_in(&ia, 0, "usr/lib.so")), ino(&lib_b));
    assert_matches_umoci(&store, A, &a);
}

/// A base whose tool has a second name (a hardlink in the tar).
fn base_with_link(variant: &str) -> TarBuilder {
    let mut t = base(variant);
    t.hardlink("usr/bin/tool-again", "usr/bin/tool");
    t
}

/// Hardlinks inside a layer that match a group elsewhere: every name of
/// the group becomes the other layer's inode, so the group stays one
/// inode. A layer with the same file under one name only is not linked to
/// the group (its image would show two names as one file).
#[test]
fn hardlinks_inside_a_layer_stay_one_group() {
    let store = Lstore::new();
    let a = image_of(&base_with_link("1"));
    let b = image_of(&base_with_link("2"));
    let c = image_of(&base("3"));
    store.load_image(&a, A);
    store.load_image(&b, B);
    store.load_image(&c, "example.com/space/c:1");
    let (ia, ib) = (store.inspect(A), store.inspect(B));
    let ic = store.inspect("example.com/space/c:1");
    let group = ino(&path_in(&ia, 0, "usr/bin/tool"));
    for (inspect, name) in [(&ia, "a"), (&ib, "b")] {
        for rel in ["usr/bin/tool", "usr/bin/tool-again"] {
            assert_eq!(ino(&path_in(inspect, 0, rel)), group, "{name}: {rel}");
        }
    }
    assert_eq!(inode(&path_in(&ia, 0, "usr/bin/tool")).1, 4);
    let tool_c = path_in(&ic, 0, "usr/bin/tool");
    assert_ne!(ino(&tool_c), group, "a lone name is not linked to a group");
    assert_eq!(inode(&tool_c).1, 1);
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
    assert_matches_umoci(&store, "example.com/space/c:1", &c);
    store.ok(&["fsck"]);
}

/// Writing and chmodding a shared file in a `--rw` mount copies it up:
/// every layer's file keeps its bytes and mode.
#[test]
fn copy_up_in_a_rw_mount_leaves_shared_files_alone() {
    let store = Lstore::new();
    let (a, b, ia, ib) = load_pair(&store, &base("1"), &base("2"));
    let tool_a = path_in(&ia, 0, "usr/bin/tool");
    let lib_a = path_in(&ia, 0, "usr/lib.so");
    assert_eq!(ino(&tool_a), ino(&path_in(&ib, 0, "usr/bin/tool")));
    {
        let mount = common::mount::LstoreMount::new(&store, B, true);
        fs::write(mount.path("usr/bin/tool"), b"changed in a container").unwrap();
        let status = std::process::Command::new("chmod")
            .arg("0600")
            .arg(mount.path("usr/lib.so"))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            fs::read(mount.path("usr/bin/tool")).unwrap(),
            b"changed in a container"
        );
        mount.umount("rw mount of B");
    }
    for layer in [&ia, &ib] {
        let tool = path_in(layer, 0, "usr/bin/tool");
        let lib = path_in(layer, 0, "usr/lib.so");
        assert_eq!(fs::read(&tool).unwrap(), content("tool binary ", 20_000));
        assert_eq!(fs::metadata(&tool).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(&lib).unwrap().mode() & 0o7777, 0o644);
    }
    assert_eq!(fs::read(&lib_a).unwrap(), content("library ", 300_000));
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
    store.ok(&["fsck"]);
}

/// A layer of many small files, so that a kill can land while they are
/// shared.
fn many_files(variant: &str) -> TarBuilder {
    let mut t = base(variant);
    t.dir("usr/share/");
    for i in 0..300 {
        t.file(
            format!("usr/share/doc-{i}"),
            content(&format!("document {i} "), 1_000 + i * 7),
        )
        .mtime(1_600_000_000);
    }
    t
}

/// `lstore load` of an image sharing most files with one already there,
/// SIGKILLed at delays spread over its run: afterwards `fsck` (or
/// `fsck --repair`, then `fsck`) passes, the load goes through when run
/// again, the files are shared and both images mount exactly.
#[test]
fn a_load_killed_while_sharing_leaves_a_store_fsck_accepts() {
    let scratch = common::scratch();
    let a = image_of(&many_files("1"));
    let b = image_of(&many_files("2"));
    let layout_b = scratch.path().join("b");
    common::image::write_oci_layout(&layout_b, &[(&b, common::LayoutNames::ref_name("b"))]);
    let load_b = ["load", "-i", layout_b.to_str().unwrap(), "--tag", B];

    // How long the load takes here, undisturbed.
    let timing = Lstore::new();
    timing.load_image(&a, A);
    let start = std::time::Instant::now();
    timing.ok(&load_b);
    let typical = start.elapsed();

    let store = Lstore::new();
    store.load_image(&a, A);
    let rounds = 5u32;
    for k in 1..=rounds {
        let delay = typical * k / (rounds + 1);
        let mut child = store.spawn(&load_b);
        let started = std::time::Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() >= delay {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let what = format!("round {k} (kill after {delay:?})");
        if !store.run(&["fsck"]).success() {
            let repair = store.run(&["fsck", "--repair"]);
            assert!(
                repair.success(),
                "{what}: {}{}",
                repair.stdout,
                repair.stderr
            );
            let again = store.run(&["fsck"]);
            assert!(again.success(), "{what}: {}{}", again.stdout, again.stderr);
        }
        store.ok(&load_b);
        store.ok(&["fsck"]);
        let (ia, ib) = (store.inspect(A), store.inspect(B));
        assert_eq!(
            ino(&path_in(&ia, 0, "usr/share/doc-7")),
            ino(&path_in(&ib, 0, "usr/share/doc-7")),
            "{what}: shared"
        );
        assert_matches_umoci(&store, A, &a);
        assert_matches_umoci(&store, B, &b);
        store.ok(&["rmi", B]);
        store.ok(&["gc"]);
    }
}

/// A loop-mounted XFS with reflink, unmounted (lazily) on drop.
struct XfsMount {
    _image: tempfile::TempDir,
    dir: PathBuf,
}

impl XfsMount {
    /// None when this machine cannot make one (no root, no mkfs.xfs): a
    /// failure under CI=true.
    fn new() -> Option<XfsMount> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let fail = |why: String| {
            assert!(!ci, "XFS with reflink: {why}");
            eprintln!("skipped: XFS with reflink: {why}");
            None
        };
        if !rustix_is_root() {
            return fail("needs root".into());
        }
        let image = common::scratch();
        let file = image.path().join("xfs.img");
        let dir = image.path().join("mnt");
        fs::create_dir(&dir).unwrap();
        fs::File::create(&file)
            .and_then(|f| f.set_len(512 << 20))
            .unwrap();
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| format!("{cmd}: {e}"))
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(format!("{cmd}: {}", String::from_utf8_lossy(&o.stderr)))
                    }
                })
        };
        if let Err(e) = run(
            "mkfs.xfs",
            &[
                "-q".as_ref(),
                "-m".as_ref(),
                "reflink=1".as_ref(),
                file.as_os_str(),
            ],
        ) {
            return fail(e);
        }
        if let Err(e) = run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                file.as_os_str(),
                dir.as_os_str(),
            ],
        ) {
            return fail(e);
        }
        Some(XfsMount { _image: image, dir })
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Whether every extent of `path` is shared (FIEMAP_EXTENT_SHARED, as
/// `filefrag -v` prints it).
fn extents_shared(path: &Path) -> bool {
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .expect("filefrag (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(':'))
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

/// On XFS with reflink, equal content under other metadata shares extents
/// (FICLONE) while each layer keeps its own inode and metadata; removing
/// the first layer leaves the other's file whole.
#[test]
fn reflinks_share_extents_on_xfs() {
    let Some(xfs) = XfsMount::new() else {
        return;
    };
    let store = Lstore::in_dir(&xfs.dir);
    let (a, b, ia, ib) = load_pair(&store, &base("1"), &base_chmod("2"));
    for rel in ["usr/bin/tool", "usr/lib.so"] {
        let (pa, pb) = (path_in(&ia, 0, rel), path_in(&ib, 0, rel));
        assert_ne!(ino(&pa), ino(&pb), "{rel}: own inode");
        assert!(extents_shared(&pb), "{rel}: extents not shared");
    }
    assert_eq!(
        fs::metadata(path_in(&ib, 0, "usr/bin/tool"))
            .unwrap()
            .mode()
            & 0o7777,
        0o700
    );
    assert_matches_umoci(&store, A, &a);
    assert_matches_umoci(&store, B, &b);
    store.ok(&["fsck"]);
    store.ok(&["rmi", A]);
    store.ok(&["gc"]);
    let lib_b = path_in(&ib, 0, "usr/lib.so");
    assert_eq!(fs::read(&lib_b).unwrap(), content("library ", 300_000));
    assert_matches_umoci(&store, B, &b);
    drop(store);
}

/// `lstore fsck` of a store sharing more inodes than it may have files
/// open (RLIMIT_NOFILE 64, as a low soft limit would give): no inode stays
/// open between its stat and its hash, so every shared file is checked and
/// found whole.
#[test]
fn fsck_checks_more_shared_files_than_it_may_open() {
    use std::os::unix::process::CommandExt;
    let store = Lstore::new();
    load_pair(&store, &many_files("1"), &many_files("2"));
    let mut command = store.command(&["fsck", "--format", "json"]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("run lstore fsck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fsck under 64 open files: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let checked = report["shared_files_checked"].as_u64().unwrap_or(0);
    assert!(checked > 300, "shared files checked: {report}");
}
