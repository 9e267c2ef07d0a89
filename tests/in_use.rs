//! Layers in use by anyone are kept: a layer folder under a live overlay
//! mount that lstore did not make (by hand, through a containers-storage
//! style symlink, in another mount namespace) survives `rmi` and `gc`,
//! and the first `gc` after the unmount frees it.

mod common;

use common::image::Image;
use common::{scenes, ImageBuilder, Lstore, RootfsMount};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const NAME: &str = "example.com/lstore/in-use:1";

fn image() -> Image {
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("held"))
        .build()
}

/// The image's chain ids, top first (the order of a `lowerdir`).
fn chains_top_first(store: &Lstore) -> Vec<String> {
    let inspect = store.inspect(NAME);
    let mut chains: Vec<String> = inspect["layers"]
        .as_array()
        .expect("inspect layers")
        .iter()
        .map(|l| l["chain_id"].as_str().expect("chain_id").to_string())
        .collect();
    chains.reverse();
    chains
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

/// The short link name of a layer (its folder's `link` file).
fn short(store: &Lstore, chain: &str) -> String {
    fs::read_to_string(store.path("overlay2").join(hex(chain)).join("link")).expect("link file")
}

/// A `lowerdir` value naming each layer by `dir/<short>`, top first.
fn lowerdir_through(store: &Lstore, dir: &Path) -> String {
    chains_top_first(store)
        .iter()
        .map(|c| dir.join(short(store, c)).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn set<I: IntoIterator<Item = String>>(items: I) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// Chain ids a removal report says it kept for a mount.
fn kept(report: &Value) -> BTreeSet<String> {
    report["kept_mounted"]
        .as_array()
        .unwrap_or_else(|| panic!("no kept_mounted list: {report}"))
        .iter()
        .map(|k| k["chain_id"].as_str().expect("chain_id").to_string())
        .collect()
}

/// The files the mounted image shows.
fn assert_shows_the_image(root: &Path) {
    assert_eq!(
        fs::read_to_string(root.join("etc/os-release")).expect("base file"),
        "ID=lstore-test\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("app/name")).expect("top file"),
        "held\n"
    );
}

/// With the image's layers under a live mount (`mounted` reads it):
/// `rmi` drops the image but keeps every layer folder, so does `gc`,
/// and `fsck` finds nothing wrong.
fn assert_kept_while_mounted(store: &Lstore, mount_point: &str, mounted: &dyn Fn()) {
    let chains = set(chains_top_first(store));
    let folders = set(chains.iter().map(|c| hex(c)));
    assert_eq!(set(store.layer_dirs()), folders);

    let rmi = store.json(&["rmi", "--format", "json", NAME]);
    assert_eq!(rmi["deleted_images"].as_array().map(Vec::len), Some(1));
    assert_eq!(rmi["deleted_layers"], 0, "{rmi}");
    assert_eq!(kept(&rmi), chains, "rmi reports the kept layers: {rmi}");
    for k in rmi["kept_mounted"].as_array().unwrap() {
        assert_eq!(k["mount_point"], mount_point, "{rmi}");
    }
    assert!(store.images().is_empty(), "the image record went");
    assert_eq!(set(store.layer_dirs()), folders, "the folders wait");
    mounted();

    let gc = store.json(&["gc", "--format", "json"]);
    assert_eq!(gc["deleted_layers"], 0, "{gc}");
    assert_eq!(kept(&gc), chains, "gc reports the kept layers: {gc}");
    let text = store.ok(&["gc"]).stdout;
    assert!(
        text.contains("Kept: layer sha256:") && text.contains(mount_point),
        "gc says what it kept: {text}"
    );
    assert_eq!(set(store.layer_dirs()), folders);
    assert_eq!(store.short_links().len(), folders.len());
    mounted();

    let fsck = store.json(&["fsck", "--format", "json"]);
    assert_eq!(fsck["problems"], Value::Array(Vec::new()), "{fsck}");
    assert_eq!(fsck["leftovers"], Value::Array(Vec::new()), "{fsck}");
    store.ok(&["fsck", "--repair"]);
    assert_eq!(
        set(store.layer_dirs()),
        folders,
        "fsck --repair leaves them"
    );
    mounted();

    // Damaged while mounted: reported, not repaired (the mount would lose
    // its lower dir).
    let damaged = store.path("overlay2").join(folders.first().unwrap());
    fs::remove_dir(damaged.join("work")).expect("remove work/");
    let out = store.run(&["fsck", "--repair", "--format", "json"]);
    assert!(!out.success(), "damage left: {}", out.stdout);
    let report: Value = serde_json::from_str(&out.stdout).expect("fsck report");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{report}");
    let what = problems[0]["what"].as_str().unwrap();
    assert!(
        what.contains(&format!("the mount at {mount_point} uses it")),
        "{what}"
    );
    assert_eq!(problems[0]["repaired"], false);
    assert!(damaged.join("diff").is_dir(), "the folder stays");
    mounted();
    fs::create_dir(damaged.join("work")).expect("restore work/");
}

/// After the unmount, `gc` frees the folders and the store is empty.
fn assert_freed_after_unmount(store: &Lstore) {
    let gc = store.json(&["gc", "--format", "json"]);
    assert_eq!(gc["deleted_layers"], 2, "{gc}");
    assert!(kept(&gc).is_empty(), "{gc}");
    assert!(store.images().is_empty());
    assert_eq!(store.blobs(), Vec::<String>::new(), "blobs");
    assert_eq!(store.layer_dirs(), Vec::<String>::new(), "layer folders");
    assert_eq!(store.short_links(), Vec::<String>::new(), "short links");
}

/// Mounts `lowerdir` here by hand: its layers stay until the unmount.
fn assert_kept_until_unmounted(store: &Lstore, lowerdir: &str) {
    let mount = RootfsMount::lowerdir(lowerdir);
    let target = path_str(mount.path()).to_string();
    assert_kept_while_mounted(store, &target, &|| assert_shows_the_image(mount.path()));
    drop(mount);
    assert_freed_after_unmount(store);
}

/// Starts `sh -c script` in a mount namespace of its own (private
/// propagation) and returns it with the first line it printed.
fn in_new_mount_namespace(script: &str) -> (Child, String) {
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env_remove("LSTORE_ROOT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run unshare");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the namespace's output");
    (child, line)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn an_overlay_mounted_by_hand_over_short_links_keeps_its_layers_until_unmounted() {
    let store = Lstore::new();
    store.load_image(&image(), NAME);
    let lowerdir = lowerdir_through(&store, &store.path("overlay2/l"));
    assert_kept_until_unmounted(&store, &lowerdir);
}

#[test]
fn a_lower_dir_through_a_containers_storage_symlink_keeps_its_layer() {
    let store = Lstore::new();
    store.load_image(&image(), NAME);
    // The containers-storage view lstore keeps: overlay/l -> ../../overlay2/l
    let view = store.path("containers-storage/overlay");
    assert_eq!(
        fs::read_link(view.join("l")).unwrap(),
        Path::new("../../overlay2/l")
    );
    let lowerdir = lowerdir_through(&store, &view.join("l"));
    assert!(lowerdir.contains("containers-storage/overlay/l/"));
    assert_kept_until_unmounted(&store, &lowerdir);
}

#[test]
fn a_mount_in_another_mount_namespace_keeps_its_layers() {
    let store = Lstore::new();
    store.load_image(&image(), NAME);
    let lowerdir = lowerdir_through(&store, &store.path("overlay2/l"));
    let target = tempfile::Builder::new()
        .prefix("lstore-mnt-")
        .tempdir()
        .expect("mount point");
    let target_path: PathBuf = target.path().to_path_buf();
    // The mount lives only in the new namespace, as long as sleep does.
    let script = format!(
        "mount -t overlay overlay -o ro,lowerdir={lowerdir} {t} && cat {t}/app/name && exec sleep 600",
        t = path_str(&target_path)
    );
    let (mut child, line) = in_new_mount_namespace(&script);
    assert_eq!(line, "held\n", "the overlay is mounted in the namespace");
    assert!(
        !target_path.join("app").exists(),
        "the mount is not in this namespace"
    );
    let pid = child.id();
    let in_namespace = |rel: &str| {
        fs::read_to_string(format!("/proc/{pid}/root{}/{rel}", target_path.display()))
            .expect("read through the namespace")
    };
    let still_mounted = || assert_eq!(in_namespace("app/name"), "held\n");
    assert_kept_while_mounted(&store, path_str(&target_path), &still_mounted);

    child.kill().expect("end the namespace");
    child.wait().expect("reap it");
    assert_freed_after_unmount(&store);
}

/// An lstore `--rw` mount made in another mount namespace (an `unshare -m`
/// shell, a user's second pause process) is judged by that namespace's
/// mount table: `lstore mounts` here lists it and keeps its upper dir,
/// `umount` here refuses, gc keeps its layers; once the namespace is gone,
/// `mounts` drops the record and the upper dir, and gc frees the image.
#[test]
fn an_lstore_mount_in_another_namespace_is_judged_by_that_namespace() {
    let store = Lstore::new();
    store.load_image(&image(), NAME);
    let target = tempfile::Builder::new()
        .prefix("lstore-mnt-")
        .tempdir()
        .expect("mount point");
    let t = path_str(target.path());
    let script = format!(
        "{bin} --root {root} mount --rw {NAME} {t} >/dev/null && echo new > {t}/written \
         && cat {t}/app/name && exec sleep 600",
        bin = env!("CARGO_BIN_EXE_lstore"),
        root = path_str(store.root()),
    );
    let (mut child, line) = in_new_mount_namespace(&script);
    assert_eq!(line, "held\n", "mounted and written in the namespace");

    let mounts = store.json(&["mounts", "--format", "json"]);
    let listed = mounts.as_array().expect("mounts array");
    assert_eq!(listed.len(), 1, "{mounts}");
    let container = listed[0]["container"]
        .as_str()
        .expect("a rw mount's container");
    let written = store
        .path("containers")
        .join(container)
        .join("upper/written");
    assert_eq!(
        fs::read_to_string(&written).expect("upper dir kept"),
        "new\n"
    );
    let refused = store.run(&["umount", t]);
    assert!(!refused.status.success());
    let stderr = &refused.stderr;
    assert!(stderr.contains("another mount namespace"), "{stderr}");
    let gc = store.json(&["gc", "--format", "json"]);
    assert_eq!(gc["deleted_layers"], 0, "{gc}");
    assert!(written.exists(), "gc kept the upper dir");
    assert_eq!(store.layer_dirs().len(), 2);

    child.kill().expect("end the namespace");
    child.wait().expect("reap it");
    assert_eq!(
        store.json(&["mounts", "--format", "json"]),
        serde_json::json!([])
    );
    assert!(!store.path("containers").join(container).exists());
    // Nothing holds the image now: rmi frees it all.
    store.ok(&["rmi", NAME]);
    assert!(store.images().is_empty());
    assert_eq!(store.layer_dirs(), Vec::<String>::new(), "layer folders");
    assert_eq!(store.blobs(), Vec::<String>::new(), "blobs");
}
