//! Races between independent processes that the metadata sessions (shared
//! locks for readers), `rmi` by reference counts and `fsck --repair` must
//! survive: each test repeats a race and then checks that every image a
//! finished command stored is whole and `fsck` is clean.

mod common;

use common::checks::mounted_tree;
use common::image::{write_oci_layout, Image};
use common::scenes::noise;
use common::tarball::Layer;
use common::tree::{assert_same_tree, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

fn base() -> Layer {
    let mut t = TarBuilder::new();
    t.dir("usr");
    for i in 0..24 {
        t.file(format!("usr/f{i}"), noise(64 * 1024, i + 1));
    }
    t.layer(Compression::Gzip)
}

fn app(name: &str) -> Layer {
    let mut t = TarBuilder::new();
    t.dir("app");
    t.file(format!("app/{name}"), noise(64 * 1024, name.len() as u64));
    t.layer(Compression::Gzip)
}

fn image(name: &str) -> Image {
    ImageBuilder::new()
        .layer(base())
        .layer(app(name))
        .cmd(&[name])
        .build()
}

fn reference(name: &str) -> String {
    format!("example.com/races/{name}:1")
}

fn layout(dir: &Path, name: &str, image: &Image) -> PathBuf {
    let path = dir.join(name);
    write_oci_layout(&path, &[(image, LayoutNames::containerd(&reference(name)))]);
    path
}

fn load_args(layout: &Path) -> Vec<String> {
    vec!["load".into(), "-i".into(), layout.display().to_string()]
}

/// `fsck` finds nothing at all: no wrong reference count, no missing file.
fn assert_fsck_clean(store: &Lstore, when: &str) {
    let out = store.run(&["fsck"]);
    assert!(
        out.success(),
        "{when}: fsck finds problems:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

fn tree_of(store: &Lstore, name: &str) -> Tree {
    mounted_tree(store, &reference(name))
}

/// `rmi` of an image while an image sharing its base is loaded: the counts
/// `rmi` decides by must never let it take the shared base (the load leases
/// it and counts itself in at its commit).
#[test]
fn rmi_beside_a_load_sharing_the_base_keeps_the_base() {
    let scratch = scratch();
    let store = Lstore::new();
    let (a, b) = (image("a"), image("b"));
    let (la, lb) = (
        layout(scratch.path(), "a", &a),
        layout(scratch.path(), "b", &b),
    );
    store.load(&la, None);
    let want_b = {
        store.load(&lb, None);
        let t = tree_of(&store, "b");
        store.ok(&["rmi", &reference("b")]);
        t
    };
    for round in 0..15 {
        let args = load_args(&lb);
        let child = store.spawn(&args);
        sleep(Duration::from_millis(round * 3));
        store.ok(&["rmi", &reference("a")]);
        let out = store.wait(&args, child);
        assert!(out.success(), "round {round}: load failed: {}", out.stderr);
        assert_fsck_clean(&store, &format!("round {round}"));
        assert_same_tree(&want_b, &tree_of(&store, "b"), "b after rmi of a");
        // Swap the roles back for the next round.
        store.load(&la, None);
        store.ok(&["rmi", &reference("b")]);
        assert_fsck_clean(&store, &format!("round {round}, reset"));
    }
}

/// Loads, readers (images, df, inspect) and gc at once: the readers take
/// the lock shared, the loads create their leases under it, and gc (which
/// waits for the exclusive lock) must see every lease.
#[test]
fn loads_readers_and_gc_at_once() {
    let scratch = scratch();
    let store = Lstore::new();
    let names = ["p", "q", "r"];
    let images: Vec<Image> = names.iter().map(|n| image(n)).collect();
    let layouts: Vec<PathBuf> = names
        .iter()
        .zip(&images)
        .map(|(n, i)| layout(scratch.path(), n, i))
        .collect();
    for round in 0..6 {
        let loads: Vec<_> = layouts.iter().map(|l| store.spawn(&load_args(l))).collect();
        let readers: Vec<(Vec<String>, _)> = (0..4)
            .map(|i| {
                let args: Vec<String> = match i % 3 {
                    0 => vec!["images".into()],
                    1 => vec!["df".into()],
                    _ => vec!["gc".into()],
                };
                let child = store.spawn(&args);
                (args, child)
            })
            .collect();
        for (args, child) in readers {
            let out = store.wait(&args, child);
            assert!(out.success(), "round {round}: {args:?}: {}", out.stderr);
        }
        for (l, child) in layouts.iter().zip(loads) {
            let args = load_args(l);
            let out = store.wait(&args, child);
            assert!(out.success(), "round {round}: load failed: {}", out.stderr);
        }
        store.ok(&["gc"]);
        assert_fsck_clean(&store, &format!("round {round}"));
        assert_eq!(store.images().len(), names.len());
        for n in names {
            store.ok(&["rmi", &reference(n)]);
        }
        assert_eq!(store.layer_dirs(), Vec::<String>::new());
        assert_eq!(store.blobs(), Vec::<String>::new());
    }
}

/// A mount is recorded, then made; `lstore mounts` (which drops records
/// of mounts that are gone) runs beside it. The mount must stay recorded,
/// or gc stops protecting its image and `umount` no longer knows it.
#[test]
fn a_mount_being_made_is_not_taken_for_a_stale_one() {
    let scratch = scratch();
    let store = Lstore::new();
    let img = image("m");
    store.load(&layout(scratch.path(), "m", &img), None);
    for round in 0..30 {
        let target = scratch.path().join(format!("target-{round}"));
        std::fs::create_dir(&target).unwrap();
        let rw = if round % 2 == 0 { "--rw" } else { "" };
        let mut args = vec![
            "mount".to_string(),
            reference("m"),
            target.display().to_string(),
        ];
        if !rw.is_empty() {
            args.push(rw.into());
        }
        let mount = store.spawn(&args);
        let listers: Vec<_> = (0..3).map(|_| store.spawn(&["mounts"])).collect();
        for l in listers {
            store.wait(&["mounts"], l);
        }
        let out = store.wait(&args, mount);
        assert!(out.success(), "round {round}: mount failed: {}", out.stderr);
        let listed = store.ok(&["mounts"]).stdout;
        let umount = store.run(&["umount", &target.display().to_string()]);
        if !umount.success() {
            // Leave no mount behind for the next test.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&target)
                .status();
        }
        assert!(
            listed.contains(&target.display().to_string()) && umount.success(),
            "round {round}: the mount at {} was dropped from the records \
             (mounts: {listed}; umount: {})",
            target.display(),
            umount.stderr
        );
    }
    assert_fsck_clean(&store, "after the mounts");
}

/// The base layer's folder, damaged (its work/ gone: the folder still
/// counts as present, so loads reuse it).
fn damage_base(store: &Lstore, name: &str) -> PathBuf {
    let inspect = store.inspect(&reference(name));
    let chain = inspect["layers"][0]["chain_id"].as_str().unwrap();
    let dir = store.path(&format!(
        "overlay2/{}",
        chain.strip_prefix("sha256:").unwrap()
    ));
    std::fs::remove_dir(dir.join("work")).unwrap();
    dir
}

/// `fsck --repair` re-extracting a damaged base while a load that reuses
/// that base runs: both succeed, and the store ends whole.
#[test]
fn repair_beside_a_load_reusing_the_damaged_layer() {
    let scratch = scratch();
    let store = Lstore::new();
    let (a, b) = (image("a"), image("b"));
    let (la, lb) = (
        layout(scratch.path(), "a", &a),
        layout(scratch.path(), "b", &b),
    );
    store.load(&la, None);
    store.load(&lb, None);
    let (want_a, want_b) = (tree_of(&store, "a"), tree_of(&store, "b"));
    store.ok(&["rmi", &reference("b")]);
    for round in 0..10 {
        damage_base(&store, "a");
        let args = load_args(&lb);
        let load = store.spawn(&args);
        sleep(Duration::from_millis(round * 4));
        let fsck = store.run(&["fsck", "--repair"]);
        let out = store.wait(&args, load);
        assert!(out.success(), "round {round}: load failed: {}", out.stderr);
        assert!(
            fsck.success() || fsck.stdout.contains("work"),
            "round {round}: fsck --repair: {}\n{}",
            fsck.stdout,
            fsck.stderr
        );
        // A repair the load's lease put off is done now.
        store.ok(&["fsck", "--repair"]);
        assert_fsck_clean(&store, &format!("round {round}"));
        assert_same_tree(&want_a, &tree_of(&store, "a"), "a after repair");
        assert_same_tree(&want_b, &tree_of(&store, "b"), "b after repair");
        store.ok(&["rmi", &reference("b")]);
    }
}

/// `fsck --repair` killed at any moment of a re-extraction: the layer's
/// folder never goes missing and never shows half-extracted under its name;
/// the next repair finishes the job and gc removes the staging leftovers.
#[test]
fn killed_repairs_never_leave_a_half_layer_in_place() {
    let scratch = scratch();
    let store = Lstore::new();
    let a = image("k");
    store.load(&layout(scratch.path(), "k", &a), None);
    let want = tree_of(&store, "k");
    let (mut killed_mid_way, mut swapped_in) = (0, 0);
    // A repair of this image takes some 100-300 ms: kills land before,
    // during and after the swap.
    for round in 0..25u64 {
        let dir = damage_base(&store, "k");
        let mut child = store.spawn(&["fsck", "--repair"]);
        sleep(Duration::from_millis((round * 13) % 320));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_way += 1;
        }
        assert!(dir.is_dir(), "round {round}: the layer folder went missing");
        let diff = dir.join("diff");
        if dir.join("work").is_dir() {
            // Swapped in: it must be whole.
            swapped_in += 1;
            let files = std::fs::read_dir(diff.join("usr")).unwrap().count();
            assert_eq!(files, 24, "round {round}: a half layer was swapped in");
        }
        store.ok(&["fsck", "--repair"]);
        store.ok(&["gc"]);
        assert_fsck_clean(&store, &format!("round {round}"));
        assert_eq!(store.unfinished(), Vec::<String>::new());
        assert_same_tree(&want, &tree_of(&store, "k"), "k after repair");
    }
    eprintln!(
        "fsck --repair killed before it finished in {killed_mid_way} of 25 rounds; \
         the new folder was in place after {swapped_in}"
    );
}
