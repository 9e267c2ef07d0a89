//! Archives written by skopeo load into the same root filesystem that umoci
//! unpacks from the original layout; `lstore save` output reads back with
//! skopeo and umoci.

mod common;

use common::checks::{
    assert_matches_umoci, check_inspect, check_layer_folders, umoci_twin, Source,
};
use common::image::{blob_path, layout_manifest_digest, write_oci_layout, Image};
use common::peers::{skopeo_copy, skopeo_inspect, umoci_unpack};
use common::scenes::{self, everything_image};
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind};
use std::path::{Path, PathBuf};

/// The original layout, tagged `v1` as skopeo and umoci address it.
fn original(scratch: &Path, image: &Image) -> PathBuf {
    let dir = scratch.join("original");
    write_oci_layout(&dir, &[(image, LayoutNames::ref_name("v1"))]);
    dir
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn assert_diff_ids(inspect: &serde_json::Value, image: &Image) {
    let layers = inspect["layers"].as_array().unwrap();
    let diff_ids: Vec<&str> = layers
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.diff_ids(), "diff_ids");
}

#[test]
fn oci_layout_copied_by_skopeo_unchanged() {
    let scratch = scratch();
    let image = everything_image(ManifestKind::Oci);
    let a = original(scratch.path(), &image);
    let b = scratch.path().join("copy");
    skopeo_copy(
        &["--dest-oci-accept-uncompressed-layers"],
        &oci(&a, "v1"),
        &oci(&b, "v1"),
    );
    assert_eq!(
        layout_manifest_digest(&b),
        image.manifest_digest,
        "skopeo kept the manifest"
    );
    let store = Lstore::new();
    let name = "example.com/skopeo/oci:v1";
    store.load(&b, Some(name));
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn oci_layout_recompressed_by_skopeo() {
    // By default skopeo gzips the uncompressed layers: new blobs and a new
    // manifest around the same diff_ids.
    let scratch = scratch();
    let image = everything_image(ManifestKind::Oci);
    let a = original(scratch.path(), &image);
    let b = scratch.path().join("copy");
    skopeo_copy(&[], &oci(&a, "v1"), &oci(&b, "v1"));
    let store = Lstore::new();
    let name = "example.com/skopeo/oci:gzipped";
    store.load(&b, Some(name));
    let inspect = store.inspect(name);
    assert_eq!(inspect["digest"], layout_manifest_digest(&b).as_str());
    assert_eq!(inspect["id"], image.config_digest.as_str());
    assert_diff_ids(&inspect, &image);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn docker_archive_written_by_skopeo() {
    let scratch = scratch();
    // Docker images cannot carry zstd layers: the gzip twin.
    let image = umoci_twin(&everything_image(ManifestKind::Oci));
    let a = original(scratch.path(), &image);
    let archive = scratch.path().join("docker.tar");
    let name = "example.com/skopeo/archive:v1";
    skopeo_copy(
        &["--format", "v2s2"],
        &oci(&a, "v1"),
        &format!("docker-archive:{}:{name}", archive.display()),
    );
    let store = Lstore::new();
    store.load(&archive, None);
    let inspect = store.inspect(name);
    assert_diff_ids(&inspect, &image);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn docker_schema2_layout_written_by_skopeo() {
    let scratch = scratch();
    // Schema2 has no zstd: gzip and uncompressed layers only.
    let image = ImageBuilder::new()
        .tar(&scenes::everything_base(), Compression::Gzip)
        .tar(&scenes::everything_changes(), Compression::Gzip)
        .tar(&scenes::everything_late(), Compression::None)
        .build();
    let a = original(scratch.path(), &image);
    let c = scratch.path().join("schema2");
    skopeo_copy(&["--format", "v2s2"], &oci(&a, "v1"), &oci(&c, "v1"));
    let digest = layout_manifest_digest(&c);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(&c, &digest)).unwrap()).unwrap();
    assert_eq!(manifest["mediaType"], common::image::DOCKER_MANIFEST);
    let store = Lstore::new();
    let name = "example.com/skopeo/schema2:v1";
    store.load(&c, Some(name));
    let inspect = store.inspect(name);
    assert_eq!(
        inspect["digest"],
        digest.as_str(),
        "the manifest skopeo wrote"
    );
    assert_diff_ids(&inspect, &image);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn saved_image_reads_back_with_skopeo_and_umoci() {
    let scratch = scratch();
    let image = everything_image(ManifestKind::Oci);
    let a = original(scratch.path(), &image);
    let store = Lstore::new();
    let name = "example.com/skopeo/saved:v1";
    store.load(&a, Some(name));
    let saved = scratch.path().join("saved.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), name]);
    let archive = format!("oci-archive:{}", saved.display());
    // The store keeps blobs as distributed, so it saves the same manifest.
    let raw = skopeo_inspect(&["--raw"], &archive);
    assert_eq!(
        raw,
        serde_json::from_slice::<serde_json::Value>(&image.manifest).unwrap()
    );
    // skopeo verifies every blob while copying.
    let d = scratch.path().join("from-save");
    skopeo_copy(
        &["--dest-oci-accept-uncompressed-layers"],
        &archive,
        &oci(&d, "v1"),
    );
    assert_eq!(layout_manifest_digest(&d), image.manifest_digest);

    // A gzip-only image saved and unpacked by umoci.
    let twin = umoci_twin(&image);
    let t = scratch.path().join("twin");
    write_oci_layout(&t, &[(&twin, LayoutNames::ref_name("v1"))]);
    let twin_name = "example.com/skopeo/saved:twin";
    store.load(&t, Some(twin_name));
    let saved_twin = scratch.path().join("saved-twin.tar");
    store.ok(&["save", "-o", saved_twin.to_str().unwrap(), twin_name]);
    let e = scratch.path().join("from-save-twin");
    skopeo_copy(
        &["--dest-oci-accept-uncompressed-layers"],
        &format!("oci-archive:{}", saved_twin.display()),
        &oci(&e, "v1"),
    );
    let expected = snapshot(&umoci_unpack(&t, "v1").rootfs());
    let actual = snapshot(&umoci_unpack(&e, "v1").rootfs());
    assert_same_tree(&expected, &actual, "umoci unpack of the saved image");
}
