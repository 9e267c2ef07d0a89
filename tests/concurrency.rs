//! Several processes on one root, and processes killed half-way: loads
//! sharing a base layer all succeed with one copy of it, `gc` running beside
//! loads removes nothing they need, and after a kill `gc` brings the store
//! back to a state `fsck` accepts, with every listed image complete.

mod common;

use common::checks::{assert_matches_umoci, check_layer_folders};
use common::image::{write_oci_layout, Image};
use common::scenes::noise;
use common::tarball::Layer;
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

/// A base layer big enough (a few MB) that its extraction takes a while.
fn big_base() -> Layer {
    let mut t = TarBuilder::new();
    t.dir("usr");
    t.dir("usr/lib");
    for i in 0..40 {
        t.file(format!("usr/lib/lib{i}.so"), noise(96 * 1024, i + 100))
            .mode(0o755);
    }
    t.dir("etc");
    t.file("etc/os-release", "ID=big\n");
    t.layer(Compression::Gzip)
}

fn app(name: &str) -> Layer {
    let mut t = TarBuilder::new();
    t.dir("app");
    t.file(
        format!("app/{name}"),
        noise(300 * 1024, name.len() as u64 + 7),
    );
    t.dir("etc");
    t.file("etc/app", format!("{name}\n"));
    t.layer(Compression::Zstd)
}

fn image_named(name: &str) -> Image {
    ImageBuilder::new()
        .layer(big_base())
        .layer(app(name))
        .cmd(&[name])
        .build()
}

fn reference(name: &str) -> String {
    format!("example.com/concurrent/{name}:1")
}

fn layout(scratch: &Path, name: &str, image: &Image) -> PathBuf {
    let dir = scratch.join(name);
    write_oci_layout(&dir, &[(image, LayoutNames::containerd(&reference(name)))]);
    dir
}

fn load_args(layout: &Path) -> Vec<String> {
    vec!["load".into(), "-i".into(), layout.to_str().unwrap().into()]
}

fn assert_fsck_clean(store: &Lstore) {
    let out = store.run(&["fsck"]);
    assert!(
        out.success(),
        "fsck finds problems:\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn parallel_loads_share_one_base_folder() {
    let scratch = scratch();
    let store = Lstore::new();
    let names = ["one", "two", "three", "four"];
    let images: Vec<Image> = names.iter().map(|n| image_named(n)).collect();
    let layouts: Vec<PathBuf> = names
        .iter()
        .zip(&images)
        .map(|(n, i)| layout(scratch.path(), n, i))
        .collect();
    let children: Vec<_> = layouts.iter().map(|l| store.spawn(&load_args(l))).collect();
    for (layout, child) in layouts.iter().zip(children) {
        let args = load_args(layout);
        let out = store.wait(&args, child);
        assert!(
            out.success(),
            "concurrent load of {} failed: {}",
            layout.display(),
            out.stderr
        );
    }
    assert_eq!(store.layer_dirs().len(), 1 + names.len(), "one base folder");
    assert_eq!(store.short_links().len(), 1 + names.len());
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "nothing left in tmp/, ingest/"
    );
    for (name, image) in names.iter().zip(&images) {
        let inspect = store.inspect(&reference(name));
        assert_eq!(inspect["id"], image.config_digest.as_str());
        check_layer_folders(&store, &inspect);
        assert_matches_umoci(&store, &reference(name), image);
    }
    assert_fsck_clean(&store);
}

#[test]
fn gc_beside_loads_keeps_what_they_store() {
    let scratch = scratch();
    let store = Lstore::new();
    let kept = image_named("kept");
    store.load(&layout(scratch.path(), "kept", &kept), None);
    for name in ["first", "second", "third"] {
        let image = image_named(name);
        let layout = layout(scratch.path(), name, &image);
        let args = load_args(&layout);
        let mut child = store.spawn(&args);
        let mut gcs = 0;
        loop {
            store.ok(&["gc"]);
            gcs += 1;
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
        }
        let out = store.wait(&args, child);
        assert!(
            out.success(),
            "load beside {gcs} gc runs failed: {}",
            out.stderr
        );
        assert_matches_umoci(&store, &reference(name), &image);
    }
    assert_matches_umoci(&store, &reference("kept"), &kept);
    store.ok(&["gc"]);
    assert_eq!(store.images().len(), 4);
    assert_fsck_clean(&store);
}

/// After a kill and a `gc`: `fsck` is clean, nothing unfinished is left,
/// and each image listed is complete.
fn assert_recovered(store: &Lstore, images: &[(&str, &Image)]) {
    store.ok(&["gc"]);
    assert_fsck_clean(store);
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "gc empties tmp/ and ingest/"
    );
    let listed: Vec<Value> = store.images();
    for (name, image) in images {
        let listed_here = listed
            .iter()
            .any(|i| i["id"] == image.config_digest.as_str());
        if listed_here {
            assert_matches_umoci(store, &reference(name), image);
        }
    }
    if listed.is_empty() {
        assert_eq!(store.blobs(), Vec::<String>::new(), "no image, no blob");
        assert_eq!(
            store.layer_dirs(),
            Vec::<String>::new(),
            "no image, no layer"
        );
        assert_eq!(store.short_links(), Vec::<String>::new());
    }
}

#[test]
fn killed_loads_leave_a_recoverable_store() {
    let scratch = scratch();
    let store = Lstore::new();
    let image = image_named("killed");
    let layout = layout(scratch.path(), "killed", &image);
    let args = load_args(&layout);
    for delay_ms in [0, 1, 3, 8, 15, 30, 60, 120, 200, 350, 600, 1000] {
        let mut child = store.spawn(&args);
        sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait_with_output();
        eprintln!(
            "killed after {delay_ms} ms: {} image(s), {} blob(s), {} layer(s), {} unfinished",
            store.images().len(),
            store.blobs().len(),
            store.layer_dirs().len(),
            store.unfinished().len()
        );
        assert_recovered(&store, &[("killed", &image)]);
        if !store.images().is_empty() {
            store.ok(&["rmi", &reference("killed")]);
            assert_recovered(&store, &[]);
        }
    }
    store.load(&layout, None);
    assert_matches_umoci(&store, &reference("killed"), &image);
}

#[test]
fn killed_rmi_leaves_a_recoverable_store() {
    let scratch = scratch();
    let store = Lstore::new();
    let (a, b) = (image_named("a"), image_named("b"));
    let (layout_a, layout_b) = (
        layout(scratch.path(), "a", &a),
        layout(scratch.path(), "b", &b),
    );
    for delay_ms in [0, 2, 5, 10, 25, 50] {
        store.load(&layout_a, None);
        store.load(&layout_b, None);
        let args = ["rmi".to_string(), reference("a")];
        let mut child = store.spawn(&args);
        sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait_with_output();
        assert_recovered(&store, &[("a", &a), ("b", &b)]);
        assert_matches_umoci(&store, &reference("b"), &b);
        store.run(&["rmi", &reference("a")]);
        store.ok(&["rmi", &reference("b")]);
        assert_recovered(&store, &[]);
    }
}
