//! Archives written by skopeo load into the same root filesystem that umoci
//! unpacks from the original layout; `lstore save` output reads back with
//! skopeo and umoci.

mod common;

use common::checks::{assert_matches_umoci, check_inspect, check_layer_folders, Source};
use common::image::write_oci_layout;
use common::peers::{skopeo_copy, skopeo_inspect, umoci_unpack};
use common::scenes::{self, everything_image};
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind};
use std::path::{Path, PathBuf};

/// The original layout, tagged `v1` as skopeo and umoci address it.
fn original(scratch: &Path, image: &common::image::Image) -> PathBuf {
    let dir = scratch.join("original");
    write_oci_layout(&dir, &[(image, LayoutNames::ref_name("v1"))]);
    dir
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[test]
fn oci_layout_copied_by_skopeo() {
    let scratch = scratch();
    let image = everything_image(ManifestKind::Oci);
    let a = original(scratch.path(), &image);
    let b = scratch.path().join("copy");
    skopeo_copy(&[], &oci(&a, "v1"), &oci(&b, "v1"));
    let store = Lstore::new();
    let name = "example.com/skopeo/oci:v1";
    store.load(&b, Some(name));
    let inspect = store.inspect(name);
    // skopeo copies the blobs unchanged, so the digests are the original's.
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn docker_archive_written_by_skopeo() {
    let scratch = scratch();
    let image = everything_image(ManifestKind::Oci);
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
    assert_eq!(
        inspect["layers"].as_array().unwrap().len(),
        image.layers.len()
    );
    for (layer, want) in inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        assert_eq!(layer["diff_id"], want.diff_id.as_str());
    }
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
    let raw = skopeo_inspect(&["--raw"], &oci(&c, "v1"));
    assert_eq!(raw["mediaType"], common::image::DOCKER_MANIFEST);
    let store = Lstore::new();
    let name = "example.com/skopeo/schema2:v1";
    store.load(&c, Some(name));
    let inspect = store.inspect(name);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        inspect["digest"], index["manifests"][0]["digest"],
        "the manifest skopeo wrote"
    );
    for (layer, want) in inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        assert_eq!(layer["diff_id"], want.diff_id.as_str());
    }
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
    let config = skopeo_inspect(&["--config"], &archive);
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(image.diff_ids())
    );
    let d = scratch.path().join("from-save");
    skopeo_copy(&[], &archive, &oci(&d, "v1"));
    let expected = snapshot(&umoci_unpack(&a, "v1").rootfs());
    let actual = snapshot(&umoci_unpack(&d, "v1").rootfs());
    assert_same_tree(&expected, &actual, "umoci unpack of the saved image");
}
