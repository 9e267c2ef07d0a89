//! A store that drops layer blobs (`lstore config keep-layer-blobs
//! false`): no layer blob stays once its layer is stored, images mount as
//! before, `save` and `push` rebuild each layer's exact tar from its
//! tar-split record and folder (the image id stays; what skopeo and umoci
//! read is the image), a push fetches a dropped blob back from the
//! registry it came from when that registry still has it (the manifest
//! then stays byte for byte), `fsck` verifies blob-less layers by their
//! diff ids, and a kill in the middle of a load leaves what `fsck
//! --repair` puts right.

mod common;

use common::checks::{assert_matches_umoci, mounted_tree, umoci_twin};
use common::clients::Podman;
use common::image::{layout_manifest_digest, write_oci_layout, Image};
use common::mount::LstoreMount;
use common::peers::{skopeo_copy, skopeo_inspect, umoci_unpack};
use common::registry::{Client, Registry};
use common::scenes::{self, everything_image, small_app, small_base};
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind, TarBuilder};
use serde_json::Value;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A store that drops layer blobs.
fn blobless_store() -> Lstore {
    let store = Lstore::new();
    store.ok(&["config", "keep-layer-blobs", "false"]);
    store
}

/// The digests of the blob files in the store.
fn blob_files(store: &Lstore) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(store.root().join("blobs/sha256"))
        .expect("blobs/sha256")
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

/// The layer blob digests of an inspected image.
fn layer_digests(inspect: &Value) -> Vec<String> {
    inspect["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn assert_no_layer_blobs(store: &Lstore, inspect: &Value) {
    let files = blob_files(store);
    for d in layer_digests(inspect) {
        assert!(!files.contains(&d), "layer blob {d} is still stored");
    }
    assert!(
        files.contains(&inspect["id"].as_str().unwrap().to_string()),
        "the config stays"
    );
    assert!(
        files.contains(&inspect["digest"].as_str().unwrap().to_string()),
        "the manifest stays"
    );
}

fn fsck_clean(store: &Lstore) -> Value {
    let report = store.json(&["fsck", "--format", "json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "fsck: {report}");
    assert_eq!(report["leftovers"], serde_json::json!([]), "fsck: {report}");
    report
}

/// A base layer with every kind of entry and no path named twice (a tar
/// that names one twice cannot be rebuilt from its folder: see
/// `a_layer_that_does_not_rebuild_keeps_its_blob`).
fn base_tar() -> TarBuilder {
    scenes::record_fixture()
}

/// Changes over the base: a whiteout, an opaque folder, new files.
fn changes_tar() -> TarBuilder {
    let mut t = TarBuilder::new();
    t.dir("etc");
    t.whiteout("etc/link");
    t.dir("opq");
    t.opaque("opq");
    t.file("opq/upper", "upper\n");
    t.file("etc/hostname", "changed\n").mode(0o600);
    t.file("added.bin", scenes::noise(30_000, 9));
    t
}

/// An OCI image umoci can unpack (gzip and uncompressed layers) whose
/// layers all rebuild: the base above, then changes, then a late file.
fn image() -> Image {
    let mut late = TarBuilder::new();
    late.file("late", "late\n").owner(7, 8);
    ImageBuilder::new()
        .tar(&base_tar(), Compression::Gzip)
        .tar(&changes_tar(), Compression::Gzip)
        .tar(&late, Compression::None)
        .build()
}

#[test]
fn a_layer_that_does_not_rebuild_keeps_its_blob() {
    // everything_base names paths twice (a file replaced by a folder in
    // the same tar): its folder cannot give its tar back.
    let image = umoci_twin(&everything_image(ManifestKind::Oci));
    let store = blobless_store();
    let name = "example.com/blobless/twice:v1";
    store.load_image(&image, name);
    let files = blob_files(&store);
    assert!(files.contains(&image.layers[0].digest), "kept: {files:?}");
    for l in &image.layers[1..] {
        assert!(!files.contains(&l.digest), "dropped: {}", l.digest);
    }
    let report = store.json(&["gc", "--format", "json"]);
    assert_eq!(report["dropped_layer_blobs"], 0, "{report}");
    assert!(blob_files(&store).contains(&image.layers[0].digest));
    fsck_clean(&store);
    // save copies the kept blob and rebuilds the others.
    let scratch = scratch();
    let saved = scratch.path().join("saved.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), name]);
    let fresh = Lstore::new();
    fresh.load(&saved, None);
    assert_eq!(fresh.inspect(name)["id"], image.config_digest.as_str());
    assert_matches_umoci(&fresh, name, &image);
}

fn layout(dir: &Path, image: &Image, tag: &str) {
    write_oci_layout(dir, &[(image, LayoutNames::ref_name(tag))]);
}

#[test]
fn config_prints_sets_and_refuses_what_it_does_not_know() {
    let store = Lstore::new();
    assert_eq!(
        store.ok(&["config", "keep-layer-blobs"]).stdout.trim(),
        "true"
    );
    store.ok(&["config", "keep-layer-blobs", "false"]);
    assert_eq!(
        store.ok(&["config", "keep-layer-blobs"]).stdout.trim(),
        "false"
    );
    let all = store.json(&["config", "--format", "json"]);
    assert_eq!(
        all,
        serde_json::json!([{"key": "keep-layer-blobs", "value": "false", "default": "true"}])
    );
    for args in [
        vec!["config", "keep-blobs"],
        vec!["config", "keep-blobs", "false"],
        vec!["config", "keep-layer-blobs", "no"],
    ] {
        let error = store.fails(&args);
        assert!(error.contains("keep-"), "{args:?}: {error}");
    }
    assert_eq!(
        store.ok(&["config", "keep-layer-blobs"]).stdout.trim(),
        "false"
    );
    let back = store.ok(&["config", "keep-layer-blobs", "true"]);
    assert!(back.stderr.contains("stay dropped"), "{}", back.stderr);
}

#[test]
fn a_blobless_store_keeps_no_layer_blob_mounts_the_same_and_saves_the_same_image() {
    let scratch = scratch();
    let image = image();
    let src = scratch.path().join("src");
    layout(&src, &image, "v1");
    let store = blobless_store();
    let name = "example.com/blobless/app:v1";
    store.load(&src, Some(name));
    let inspect = store.inspect(name);
    assert_no_layer_blobs(&store, &inspect);
    assert_eq!(blob_files(&store).len(), 2, "manifest and config only");
    assert_matches_umoci(&store, name, &image);

    let df = store.json(&["df", "--format", "json"]);
    assert_eq!(df["dropped_layer_blobs"], image.layers.len() as u64, "{df}");
    assert_eq!(df["dropped_blob_bytes"], image.compressed_size(), "{df}");
    assert_eq!(df["blobs"], 2, "{df}");
    let text = store.ok(&["df"]).stdout;
    assert!(text.contains("Dropped layer blobs"), "{text}");
    fsck_clean(&store);

    // A second load reads no layer again and keeps the blobs dropped.
    store.load(&src, Some("example.com/blobless/app:again"));
    assert_eq!(blob_files(&store).len(), 2);

    // save rebuilds each tar: same config (image id), layers named by
    // their diff ids, read back by skopeo and umoci as the same files.
    let saved = scratch.path().join("saved.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), name]);
    let archive = format!("oci-archive:{}", saved.display());
    let raw = skopeo_inspect(&["--raw"], &archive);
    assert_eq!(raw["config"]["digest"], image.config_digest.as_str());
    let layers: Vec<&str> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, image.diff_ids());
    let copied = scratch.path().join("copied");
    skopeo_copy(
        &["--dest-oci-accept-uncompressed-layers"],
        &archive,
        &format!("oci:{}:v1", copied.display()),
    );
    let expected = snapshot(&umoci_unpack(&src, "v1").rootfs());
    let actual = snapshot(&umoci_unpack(&copied, "v1").rootfs());
    assert_same_tree(&expected, &actual, "umoci unpack of the saved image");

    // Loaded into a fresh store: the same image id.
    let fresh = Lstore::new();
    fresh.load(&saved, None);
    let again = fresh.inspect(name);
    assert_eq!(again["id"], inspect["id"]);
    assert_eq!(again["id"], image.config_digest.as_str());
    assert_matches_umoci(&fresh, name, &image);

    // rmi frees what is stored, with no word about the dropped blobs.
    let removal = store.json(&[
        "rmi",
        "--format",
        "json",
        name,
        "example.com/blobless/app:again",
    ]);
    assert_eq!(
        removal["deleted_images"].as_array().unwrap().len(),
        1,
        "{removal}"
    );
    assert!(blob_files(&store).is_empty());
    let df = store.json(&["df", "--format", "json"]);
    assert_eq!(df["dropped_layer_blobs"], 0, "{df}");
    fsck_clean(&store);
}

#[test]
fn gc_drops_the_blobs_of_layers_stored_before_the_setting() {
    let store = Lstore::new();
    let image = image();
    let name = "example.com/blobless/before:v1";
    store.load_image(&image, name);
    let inspect = store.inspect(name);
    assert_eq!(blob_files(&store).len(), 2 + image.layers.len());
    store.ok(&["config", "keep-layer-blobs", "false"]);
    assert_eq!(
        blob_files(&store).len(),
        2 + image.layers.len(),
        "config drops nothing"
    );
    let dry = store.json(&["gc", "--dry-run", "--format", "json"]);
    assert_eq!(
        dry["dropped_layer_blobs"],
        image.layers.len() as u64,
        "{dry}"
    );
    assert_eq!(blob_files(&store).len(), 2 + image.layers.len());
    let report = store.json(&["gc", "--format", "json"]);
    assert_eq!(
        report["dropped_layer_blobs"],
        image.layers.len() as u64,
        "{report}"
    );
    assert!(
        report["freed_bytes"].as_u64().unwrap() >= image.compressed_size(),
        "{report}"
    );
    assert_no_layer_blobs(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
    fsck_clean(&store);

    // Back to true: new layers keep their blobs, dropped ones stay dropped.
    store.ok(&["config", "keep-layer-blobs", "true"]);
    let other = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("kept"))
        .build();
    store.load_image(&other, "example.com/blobless/kept:v1");
    let files = blob_files(&store);
    for l in &other.layers {
        assert!(files.contains(&l.digest), "kept: {}", l.digest);
    }
    assert_no_layer_blobs(&store, &inspect);
    store.ok(&["gc"]);
    assert_eq!(blob_files(&store), files);
    fsck_clean(&store);
}

/// The image `reference` of `registry` copied by skopeo into an OCI
/// layout, unpacked by umoci.
fn umoci_of_registry_image(work: &Path, reference: &str) -> common::tree::Tree {
    let dir = work.join(format!("pulled-{}", reference.replace(['/', ':'], "_")));
    skopeo_copy(
        &["--src-tls-verify=false"],
        &format!("docker://{reference}"),
        &format!("oci:{}:v1", dir.display()),
    );
    snapshot(&umoci_unpack(&dir, "v1").rootfs())
}

#[test]
fn push_from_a_blobless_store_rebuilds_layers_that_no_registry_has() {
    let scratch = scratch();
    let registry = Registry::start();
    let image = image();
    let store = blobless_store();
    let name = "example.com/blobless/pushed:v1";
    store.load_image(&image, name);
    let dest = format!("{}/blobless/pushed:v1", registry.host());
    let pushed = store.json(&["push", "--format", "json", name, &dest]);
    let blobs = pushed["blobs"].as_array().unwrap();
    let rebuilt = blobs.iter().filter(|b| b["result"] == "rebuilt").count();
    assert_eq!(rebuilt, image.layers.len(), "{pushed}");
    assert_ne!(
        pushed["digest"],
        image.manifest_digest.as_str(),
        "a new manifest"
    );

    let raw = skopeo_inspect(
        &["--raw", "--tls-verify=false"],
        &format!("docker://{dest}"),
    );
    assert_eq!(
        raw["config"]["digest"],
        image.config_digest.as_str(),
        "same image id"
    );
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    let expected = mounted_tree(&store, name);
    let actual = umoci_of_registry_image(scratch.path(), &dest);
    assert_same_tree(
        &actual,
        &expected,
        "umoci unpack of the pushed image vs mount",
    );

    // Pushed again: the same gzip stream, so the same manifest.
    let again = store.json(&["push", "--format", "json", name, &dest]);
    assert_eq!(again["digest"], pushed["digest"]);
    assert_eq!(blob_files(&store).len(), 2, "push stores no blob");
}

#[test]
fn push_keeps_the_original_manifest_while_a_registry_has_the_blobs() {
    let scratch = scratch();
    let origin = Registry::start();
    let image = image();
    let digest = origin.upload("blobless/origin", "v1", &image);
    let store = blobless_store();
    let source = format!("{}/blobless/origin:v1", origin.host());
    Client::new().pull(&store, &source, &[]);
    let inspect = store.inspect(&source);
    assert_eq!(inspect["digest"], digest.as_str());
    assert_no_layer_blobs(&store, &inspect);

    // Same registry, another repository: mounted, byte for byte.
    let same = format!("{}/blobless/copy:v1", origin.host());
    let pushed = store.json(&["push", "--format", "json", &source, &same]);
    assert_eq!(pushed["digest"], digest.as_str(), "{pushed}");
    for b in pushed["blobs"].as_array().unwrap() {
        assert!(
            b["result"] == "mounted" || b["result"] == "exists",
            "{pushed}"
        );
    }

    // Another registry: fetched again from the origin and sent on.
    let other = Registry::start();
    let elsewhere = format!("{}/blobless/copy:v1", other.host());
    let pushed = store.json(&["push", "--format", "json", &source, &elsewhere]);
    assert_eq!(pushed["digest"], digest.as_str(), "{pushed}");
    let refetched = pushed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["result"] == "refetched")
        .count();
    assert_eq!(refetched, image.layers.len(), "{pushed}");
    let expected = snapshot(&umoci_unpack(&write_twin(scratch.path(), &image), "v1").rootfs());
    let actual = umoci_of_registry_image(scratch.path(), &elsewhere);
    assert_same_tree(&expected, &actual, "umoci unpack of the copy");
    assert_eq!(blob_files(&store).len(), 2, "push stores no blob");
    fsck_clean(&store);
}

fn write_twin(work: &Path, image: &Image) -> std::path::PathBuf {
    let dir = work.join("twin");
    layout(&dir, image, "v1");
    dir
}

/// A regular file of the image's top layer folder that has content.
fn a_file_of(inspect: &Value) -> std::path::PathBuf {
    let layers = inspect["layers"].as_array().unwrap();
    let diff = Path::new(layers[0]["path"].as_str().unwrap());
    let path = diff.join("noise.bin");
    assert!(path.is_file(), "{}", path.display());
    path
}

#[test]
fn fsck_finds_a_changed_file_in_a_blobless_layer_and_repairs_it_from_the_origin() {
    let origin = Registry::start();
    let image = image();
    origin.upload("blobless/fsck", "v1", &image);
    let store = blobless_store();
    let pulled = format!("{}/blobless/fsck:v1", origin.host());
    Client::new().pull(&store, &pulled, &[]);
    let loaded = "example.com/blobless/loaded:v1";
    let other = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("fsck"))
        .build();
    store.load_image(&other, loaded);
    fsck_clean(&store);

    // The same size, other bytes: only the rebuilt tar's digest tells.
    let file = a_file_of(&store.inspect(&pulled));
    let mut bytes = fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let out = store.run(&["fsck"]);
    assert!(!out.success());
    // Found by rebuilding the tar, or first by the content index's check of
    // shared files: either way the layer is damaged and re-extracted.
    assert!(
        out.stdout.contains("does not rebuild")
            || out.stdout.contains("changed behind the store's back"),
        "{}",
        out.stdout
    );
    let repaired = store.json(&["fsck", "--repair", "--format", "json"]);
    assert_eq!(repaired["layers_reextracted"], 1, "{repaired}");
    fsck_clean(&store);
    assert_matches_umoci(&store, &pulled, &image);
    assert_eq!(blob_files(&store).len(), 4, "still no layer blob");

    // A lost record: made again from the blob fetched again.
    let record = a_file_of(&store.inspect(&pulled))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("tar-split.gz");
    fs::remove_file(&record).unwrap();
    let out = store.run(&["fsck"]);
    assert!(!out.success());
    assert!(out.stdout.contains("no tar-split record"), "{}", out.stdout);
    store.ok(&["fsck", "--repair"]);
    assert!(record.is_file());
    fsck_clean(&store);
    assert_eq!(blob_files(&store).len(), 4, "still no layer blob");

    // A loaded image's layer has nowhere to come from: reported, kept.
    let inspect = store.inspect(loaded);
    let diff = Path::new(inspect["layers"][1]["path"].as_str().unwrap());
    let name = diff.join("app/name");
    fs::write(&name, "changed\n").unwrap();
    let out = store.run(&["fsck", "--repair"]);
    assert!(!out.success(), "cannot be repaired: {}", out.stdout);
    assert!(out.stdout.contains("cannot be"), "{}", out.stdout);
    assert!(
        out.stdout.contains(inspect["digest"].as_str().unwrap()),
        "names the image: {}",
        out.stdout
    );
    assert_eq!(store.images().len(), 2, "the images stay");
    assert!(!store.run(&["fsck"]).success());
}

#[test]
fn a_load_killed_at_any_point_leaves_what_fsck_repair_puts_right() {
    let scratch = scratch();
    let image = image();
    let src = scratch.path().join("src");
    layout(&src, &image, "v1");
    let name = "example.com/blobless/killed:v1";
    let iterations: u64 = std::env::var("LSTORE_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut killed = 0;
    for i in 0..iterations {
        let store = blobless_store();
        let args = ["load", "-i", src.to_str().unwrap(), "--tag", name];
        let start = Instant::now();
        let mut child = store.spawn(&args);
        // Spread over a load's run: from at once to well past its end.
        let delay = Duration::from_millis(i * 40);
        while start.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        if output.status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        }
        store.ok(&["fsck", "--repair"]);
        fsck_clean(&store);
        // Whatever the kill left, the image loads and mounts as its source.
        store.load(&src, Some(name));
        assert_no_layer_blobs(&store, &store.inspect(name));
        assert_matches_umoci(&store, name, &image);
        fsck_clean(&store);
    }
    assert!(killed > 0, "no load was killed");
    assert_eq!(layout_manifest_digest(&src), image.manifest_digest);
}

#[test]
fn podman_lists_and_mounts_the_images_of_a_blobless_store() {
    let image = image();
    let store = blobless_store();
    let name = "example.com/blobless/podman:v1";
    store.load_image(&image, name);
    assert_no_layer_blobs(&store, &store.inspect(name));
    let podman = Podman::with_image_store(&store.path("containers-storage"), &[]);
    let inspect = podman.inspect(name);
    assert_eq!(
        inspect["Id"],
        image.config_digest.trim_start_matches("sha256:")
    );
    let mount = podman.container_mount(name);
    assert_same_tree(
        &snapshot(LstoreMount::new(&store, name, false).root()),
        &snapshot(mount.path()),
        "podman mount vs lstore mount",
    );
    mount.unmount();
}

#[test]
fn a_committed_layer_loses_its_blob_and_saves_the_same_image() {
    let store = blobless_store();
    let base = "example.com/blobless/base:v1";
    store.load_image(&image(), base);
    let committed = "example.com/blobless/committed:v1";
    let rw = LstoreMount::new(&store, base, true);
    fs::write(rw.path("data"), scenes::noise(50_000, 5)).expect("write through the mount");
    fs::remove_file(rw.path("late")).expect("remove through the mount");
    store.ok(&["commit", rw.target(), committed]);
    drop(rw);
    let inspect = store.inspect(committed);
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 4);
    assert_no_layer_blobs(&store, &inspect);
    fsck_clean(&store);
    let scratch = scratch();
    let saved = scratch.path().join("committed.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), committed]);
    let fresh = Lstore::new();
    fresh.load(&saved, None);
    assert_eq!(fresh.inspect(committed)["id"], inspect["id"]);
    assert_same_tree(
        &mounted_tree(&store, committed),
        &mounted_tree(&fresh, committed),
        "the committed image, saved and loaded",
    );
}

#[test]
fn an_image_pushed_to_a_blobless_serve_loses_its_layer_blobs_which_it_then_does_not_serve() {
    let scratch = scratch();
    let store = blobless_store();
    let serve = common::serve::Serve::start(&store, &[]);
    let image = image();
    let src = scratch.path().join("src");
    layout(&src, &image, "v1");
    skopeo_copy(
        &["--dest-tls-verify=false"],
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/blobless/served:v1", serve.addr()),
    );
    let name = format!("{}/blobless/served:v1", serve.addr());
    let inspect = store.inspect(&name);
    assert_no_layer_blobs(&store, &inspect);
    assert_matches_umoci(&store, &name, &image);
    // The manifest is served; a dropped blob is unknown, as a registry
    // answers for a blob it does not have.
    let layer = &layer_digests(&inspect)[0];
    let response = common::registry::http_call(
        serve.addr(),
        "GET",
        &format!("/v2/blobless/served/blobs/{layer}"),
        &[],
        b"",
    );
    response.assert_error(404, "BLOB_UNKNOWN");
    let config = inspect["id"].as_str().unwrap();
    let response = common::registry::http_call(
        serve.addr(),
        "GET",
        &format!("/v2/blobless/served/blobs/{config}"),
        &[],
        b"",
    );
    assert_eq!(response.status, 200);
}

#[test]
fn a_docker_schema2_image_is_saved_and_pushed_with_docker_media_types() {
    let scratch = scratch();
    let registry = Registry::start();
    let image = ImageBuilder::new()
        .kind(ManifestKind::Docker)
        .tar(&base_tar(), Compression::Gzip)
        .tar(&changes_tar(), Compression::Gzip)
        .build();
    let store = blobless_store();
    let name = "example.com/blobless/docker:v1";
    store.load_image(&image, name);
    assert_no_layer_blobs(&store, &store.inspect(name));

    let saved = scratch.path().join("docker.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), name]);
    let raw = skopeo_inspect(&["--raw"], &format!("oci-archive:{}", saved.display()));
    assert_eq!(raw["mediaType"], common::image::DOCKER_MANIFEST);
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
    }
    let fresh = Lstore::new();
    fresh.load(&saved, None);
    assert_eq!(fresh.inspect(name)["id"], image.config_digest.as_str());

    let dest = format!("{}/blobless/docker:v1", registry.host());
    store.ok(&["push", name, &dest]);
    let raw = skopeo_inspect(
        &["--raw", "--tls-verify=false"],
        &format!("docker://{dest}"),
    );
    assert_eq!(raw["mediaType"], common::image::DOCKER_MANIFEST);
    assert_eq!(raw["config"]["digest"], image.config_digest.as_str());
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    // Pulled back into a fresh store: the same image, the same files.
    let pulled = Lstore::new();
    Client::new().pull(&pulled, &dest, &[]);
    assert_eq!(pulled.inspect(&dest)["id"], image.config_digest.as_str());
    assert_same_tree(
        &mounted_tree(&store, name),
        &mounted_tree(&pulled, &dest),
        "pushed and pulled back",
    );
}
