//! File sharing across layers (docs/space.md): files of equal content and
//! metadata in different layers become one inode; other metadata keeps
//! them apart (ext4) or shares extents (XFS with reflink); removal, copy-up,
//! fsck and kills leave every image mounting exactly as `umoci unpack`
//! shows it.

mod common;

use common::checks::{assert_matches_umoci, inode, layer_diff};
use common::tarball::{Compression, TarBuilder};
use common::{ImageBuilder, Lstore};
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
    let mut t = TarBuilder::new();
    t.dir("usr/");
    t.dir("usr/bin/");
    t.file("usr/bin/tool", content("tool binary ", 20_000))
        .mode(0o755)
        .mtime(1_600_000_000);
    t.file("usr/bin/setuid", content("setuid binary ", 9_000))
        .mode(0o4755)
        .mtime(1_600_000_000);
    t.file("usr/lib.so", content("library ", 300_000))
        .mtime(1_600_000_000);
    t.file("etc-version", format!("release {variant}\n"))
        .mtime(1_600_000_000);
    t.file("empty", b"").mtime(1_600_000_000);
    t
}

fn path_in(inspect: &serde_json::Value, layer: usize, rel: &str) -> PathBuf {
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
    let a = ImageBuilder::new()
        .tar(&base("1"), Compression::Gzip)
        .build();
    let b = ImageBuilder::new()
        .tar(&base("2"), Compression::Gzip)
        .build();
    store.load_image(&a, A);
    store.load_image(&b, B);
    let (ia, ib) = (store.inspect(A), store.inspect(B));
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
    let a = ImageBuilder::new()
        .tar(&base("1"), Compression::Gzip)
        .build();
    let b = ImageBuilder::new()
        .tar(&base("2"), Compression::Gzip)
        .build();
    store.load_image(&a, A);
    store.load_image(&b, B);
    store.ok(&["fsck"]);
    let (ia, ib) = (store.inspect(A), store.inspect(B));
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
