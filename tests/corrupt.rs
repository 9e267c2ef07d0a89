//! Damaged archives: wrong digests, wrong diff_ids, truncated or garbage
//! layers, missing blobs. Each load fails with one `error:` line, stores no
//! image and leaves no layer folder; `gc` then empties the store.

mod common;

use common::image::{blob_path, docker_archive, write_oci_layout, write_oci_layout_tar, Image};
use common::lstore::list;
use common::scenes::{self, noise};
use common::tarball::{compress, sha256_digest, Layer};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const NAME: &str = "example.com/lstore/corrupt:1";

fn write_layout(scratch: &Path, image: &Image) -> PathBuf {
    let dir = scratch.join("layout");
    write_oci_layout(&dir, &[(image, LayoutNames::containerd(NAME))]);
    dir
}

/// Loading `path` fails cleanly, and `gc` afterwards leaves nothing.
/// Returns the error line.
fn assert_clean_failure(path: &Path) -> String {
    let store = Lstore::new();
    let error = store.fails(&["load", "-i", path.to_str().unwrap()]);
    assert_eq!(
        store.images(),
        Vec::<Value>::new(),
        "images after a failed load"
    );
    assert_eq!(
        store.layer_dirs(),
        Vec::<String>::new(),
        "layer folders after a failed load ({error})"
    );
    assert_eq!(
        store.short_links(),
        Vec::<String>::new(),
        "overlay2/l after a failed load"
    );
    store.ok(&["gc"]);
    assert_eq!(store.blobs(), Vec::<String>::new(), "blobs after gc");
    assert_eq!(
        list(&store.path("overlay2"))
            .iter()
            .filter(|n| *n != "l")
            .count(),
        0
    );
    assert_eq!(
        store.short_links(),
        Vec::<String>::new(),
        "overlay2/l after gc"
    );
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "tmp/ and ingest/ after gc"
    );
    error
}

fn two_layer_image() -> Image {
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("corrupt"))
        .build()
}

#[test]
fn layer_blob_with_a_flipped_byte_is_refused() {
    let scratch = scratch();
    let mut image = two_layer_image();
    let blob = &mut image.layers[1].blob;
    let middle = blob.len() / 2;
    blob[middle] ^= 0x55;
    assert_clean_failure(&write_layout(scratch.path(), &image));
}

#[test]
fn layer_blob_recompressed_differently_is_refused() {
    // Same tar, so the diff_id still matches: only the compressed digest
    // tells that the blob is not the one the manifest names.
    let scratch = scratch();
    let mut image = two_layer_image();
    let layer = &mut image.layers[0];
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&layer.tar).unwrap();
    layer.blob = encoder.finish().unwrap();
    assert_ne!(sha256_digest(&layer.blob), layer.digest);
    assert_clean_failure(&write_layout(scratch.path(), &image));
}

#[test]
fn diff_id_mismatch_is_refused() {
    let scratch = scratch();
    let base = scenes::small_base();
    let app = scenes::small_app("diff-id");
    let wrong = sha256_digest(b"not the layer");
    let image = ImageBuilder::new()
        .layer(base.clone())
        .layer(app.clone())
        .diff_ids(vec![base.diff_id.clone(), wrong.clone()])
        .build();
    assert_clean_failure(&write_layout(scratch.path(), &image));

    // The same in a docker-archive, where the diff_id is the only check.
    let archive = scratch.path().join("docker.tar");
    fs::write(&archive, docker_archive(&[(&image, &[NAME])])).unwrap();
    assert_clean_failure(&archive);

    // And in a single-layer image, swapped with another layer's diff_id.
    let image = ImageBuilder::new()
        .layer(app)
        .diff_ids(vec![base.diff_id])
        .build();
    let other = scratch.path().join("other");
    fs::create_dir(&other).unwrap();
    assert_clean_failure(&write_layout(&other, &image));
}

#[test]
fn good_base_layer_is_not_kept_when_the_image_fails() {
    // The base extracts fine, the top layer is garbage: nothing of the
    // image stays in overlay2/.
    let scratch = scratch();
    let base = scenes::small_base();
    let garbage = Layer::raw(noise(10_000, 3), Compression::Gzip, &sha256_digest(b"x"));
    let image = ImageBuilder::new().layer(base).layer(garbage).build();
    assert_clean_failure(&write_layout(scratch.path(), &image));
}

#[test]
fn truncated_gzip_is_refused() {
    let scratch = scratch();
    let good = scenes::small_app("truncated");
    let cut = good.blob[..good.blob.len() / 2].to_vec();
    let layer = Layer::raw(cut, Compression::Gzip, &good.diff_id);
    let image = ImageBuilder::new().layer(layer).build();
    assert_clean_failure(&write_layout(scratch.path(), &image));
}

#[test]
fn truncated_tar_inside_valid_compression_is_refused() {
    // The stream ends inside a file's data; digests are consistent, so only
    // the tar reader can notice.
    let scratch = scratch();
    let mut t = TarBuilder::new();
    t.file("big", noise(50_000, 9));
    let tar = t.tar();
    let cut = tar[..20_000].to_vec();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let layer = Layer::from_tar(cut.clone(), compression);
        let image = ImageBuilder::new().layer(layer).build();
        let dir = scratch.path().join(format!("{compression:?}"));
        fs::create_dir(&dir).unwrap();
        assert_clean_failure(&write_layout(&dir, &image));
    }
}

#[test]
fn garbage_layers_are_refused() {
    let scratch = scratch();
    let cases = [
        (
            "gzip",
            Layer::raw(noise(8_000, 5), Compression::Gzip, &sha256_digest(b"g")),
        ),
        (
            "zstd",
            Layer::raw(noise(8_000, 6), Compression::Zstd, &sha256_digest(b"z")),
        ),
        // Valid gzip around bytes that are not a tar.
        ("not-tar", {
            let junk = noise(4_096, 8);
            Layer::raw(
                compress(&junk, Compression::Gzip),
                Compression::Gzip,
                &sha256_digest(&junk),
            )
        }),
        // A zstd blob declared as gzip.
        ("wrong-type", {
            let tar = scenes::small_app("wrong").tar;
            Layer::raw(
                compress(&tar, Compression::Zstd),
                Compression::Gzip,
                &sha256_digest(&tar),
            )
        }),
    ];
    for (what, layer) in cases {
        let image = ImageBuilder::new().layer(layer).build();
        let dir = scratch.path().join(what);
        fs::create_dir(&dir).unwrap();
        assert_clean_failure(&write_layout(&dir, &image));
    }
}

#[test]
fn missing_blobs_are_refused() {
    let scratch = scratch();
    let image = two_layer_image();
    let missing = [
        ("layer", image.layers[1].digest.clone()),
        ("config", image.config_digest.clone()),
        ("manifest", image.manifest_digest.clone()),
    ];
    for (what, digest) in missing {
        let dir = scratch.path().join(what);
        fs::create_dir(&dir).unwrap();
        let layout = write_layout(&dir, &image);
        fs::remove_file(blob_path(&layout, &digest)).unwrap();
        assert_clean_failure(&layout);
        // The same as a layout tar.
        let tar_dir = dir.join("tar");
        let tar = write_oci_layout_tar(&tar_dir, &[(&image, LayoutNames::containerd(NAME))]);
        fs::remove_file(blob_path(&tar_dir, &digest)).unwrap();
        fs::write(&tar, common::image::tar_dir(&tar_dir)).unwrap();
        assert_clean_failure(&tar);
    }
}

#[test]
fn manifest_and_config_with_wrong_content_are_refused() {
    let scratch = scratch();
    let image = two_layer_image();
    for (what, digest, content) in [
        (
            "manifest",
            image.manifest_digest.clone(),
            b"{\"schemaVersion\":2}".to_vec(),
        ),
        (
            "config",
            image.config_digest.clone(),
            image.manifest.clone(),
        ),
    ] {
        let dir = scratch.path().join(what);
        fs::create_dir(&dir).unwrap();
        let layout = write_layout(&dir, &image);
        fs::write(blob_path(&layout, &digest), content).unwrap();
        assert_clean_failure(&layout);
    }
    // A config that is not JSON, under its own (correct) digest.
    let mut broken = image.clone();
    broken.config = b"not json".to_vec();
    broken.config_digest = sha256_digest(&broken.config);
    let mut manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = Value::String(broken.config_digest.clone());
    manifest["config"]["size"] = Value::from(broken.config.len());
    broken.manifest = serde_json::to_vec(&manifest).unwrap();
    broken.manifest_digest = sha256_digest(&broken.manifest);
    let dir = scratch.path().join("not-json");
    fs::create_dir(&dir).unwrap();
    assert_clean_failure(&write_layout(&dir, &broken));
}

#[test]
fn docker_archive_with_a_missing_layer_is_refused() {
    let scratch = scratch();
    let image = two_layer_image();
    let archive = docker_archive(&[(&image, &[NAME])]);
    // Rebuild the archive without the second layer.tar but with the same
    // manifest.json.
    let unpacked = scratch.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(&unpacked)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&archive)?;
            child.wait()
        })
        .unwrap();
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let second = manifest[0]["Layers"][1].as_str().unwrap();
    fs::remove_file(unpacked.join(second)).unwrap();
    let broken = scratch.path().join("broken.tar");
    fs::write(&broken, common::image::tar_dir(&unpacked)).unwrap();
    assert_clean_failure(&broken);
}

#[test]
fn inputs_that_are_not_archives_are_refused() {
    let scratch = scratch();
    let random = scratch.path().join("random.tar");
    fs::write(&random, noise(10_000, 4)).unwrap();
    assert_clean_failure(&random);
    let empty_file = scratch.path().join("empty.tar");
    fs::write(&empty_file, b"").unwrap();
    assert_clean_failure(&empty_file);
    let empty_dir = scratch.path().join("empty-dir");
    fs::create_dir(&empty_dir).unwrap();
    assert_clean_failure(&empty_dir);
    assert_clean_failure(&scratch.path().join("does-not-exist.tar"));
    // A tar that is neither a layout nor a docker-archive.
    let mut t = TarBuilder::new();
    t.file("hello.txt", "hello\n");
    let plain = scratch.path().join("plain.tar");
    fs::write(&plain, t.tar()).unwrap();
    assert_clean_failure(&plain);
}
