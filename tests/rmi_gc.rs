//! Sharing and removal: a base layer shared by two images is stored once,
//! `rmi` sweeps what no remaining image references, `tag` adds names, `gc`
//! removes orphans and unfinished work, `gc --dry-run` removes nothing.

mod common;

use common::checks::assert_matches_umoci;
use common::image::{write_oci_layout, Image};
use common::scenes;
use common::tarball::sha256_hex;
use common::{scratch, ImageBuilder, LayoutNames, Lstore};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const A: &str = "example.com/lstore/a:1";
const B: &str = "example.com/lstore/b:1";

fn image(app: &str) -> Image {
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app(app))
        .build()
}

fn layout(scratch: &Path, dir: &str, image: &Image, name: &str) -> PathBuf {
    let path = scratch.join(dir);
    write_oci_layout(&path, &[(image, LayoutNames::containerd(name))]);
    path
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

fn set<I: IntoIterator<Item = String>>(items: I) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// Every run of digits in `text`, as numbers.
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

fn assert_store_empty(store: &Lstore) {
    assert_eq!(store.images(), Vec::<Value>::new(), "images");
    assert_eq!(store.blobs(), Vec::<String>::new(), "blobs/sha256");
    assert_eq!(
        store.layer_dirs(),
        Vec::<String>::new(),
        "overlay2 layer folders"
    );
    assert_eq!(store.short_links(), Vec::<String>::new(), "overlay2/l");
}

/// Each short link names a layer folder that exists.
fn assert_links_resolve(store: &Lstore) {
    for link in store.short_links() {
        let target = fs::read_link(store.path("overlay2/l").join(&link)).unwrap();
        assert!(
            store.path("overlay2/l").join(&target).is_dir(),
            "overlay2/l/{link} -> {} dangles",
            target.display()
        );
    }
}

#[test]
fn shared_base_layer_is_stored_once_and_kept_until_the_last_image_goes() {
    let scratch = scratch();
    let store = Lstore::new();
    let (a, b) = (image("a"), image("b"));
    let layout_a = layout(scratch.path(), "a", &a, A);
    let layout_b = layout(scratch.path(), "b", &b, B);

    store.load(&layout_a, None);
    let chains_a = set(a.chain_ids().iter().map(|c| hex(c)));
    assert_eq!(set(store.layer_dirs()), chains_a);
    assert_eq!(store.short_links().len(), 2);
    let blobs_a = set(store.blobs());
    for digest in [
        &a.layers[0].digest,
        &a.layers[1].digest,
        &a.config_digest,
        &a.manifest_digest,
    ] {
        assert!(blobs_a.contains(&hex(digest)), "blob {digest} stored");
    }

    store.load(&layout_b, None);
    let chains_b = set(b.chain_ids().iter().map(|c| hex(c)));
    assert_eq!(
        chains_a.intersection(&chains_b).count(),
        1,
        "the base is shared"
    );
    assert_eq!(
        set(store.layer_dirs()),
        &chains_a | &chains_b,
        "one new layer folder"
    );
    assert_eq!(store.short_links().len(), 3);
    let added: BTreeSet<String> = set(store.blobs()).difference(&blobs_a).cloned().collect();
    for digest in [&b.layers[1].digest, &b.config_digest, &b.manifest_digest] {
        assert!(added.contains(&hex(digest)), "blob {digest} stored");
    }
    let layer_blobs: BTreeSet<String> = [&a.layers[0], &a.layers[1], &b.layers[1]]
        .iter()
        .map(|l| hex(&l.digest))
        .collect();
    assert_eq!(
        set(store.blobs()).intersection(&layer_blobs).count(),
        3,
        "three layer blobs for two images sharing a base"
    );

    let out = store.ok(&["rmi", A]);
    assert!(
        numbers(&out.stdout).iter().any(|&n| n > 0),
        "rmi prints the bytes it freed: {:?}",
        out.stdout
    );
    assert!(!store.run(&["inspect", A]).success(), "{A} is gone");
    assert_eq!(
        set(store.layer_dirs()),
        chains_b,
        "a's own layer swept, the base kept"
    );
    assert_eq!(store.short_links().len(), 2);
    assert_links_resolve(&store);
    let blobs = set(store.blobs());
    for digest in [&a.layers[1].digest, &a.config_digest, &a.manifest_digest] {
        assert!(!blobs.contains(&hex(digest)), "blob {digest} swept");
    }
    assert!(
        blobs.contains(&hex(&a.layers[0].digest)),
        "shared base blob kept"
    );
    assert_matches_umoci(&store, B, &b);

    store.ok(&["rmi", B]);
    assert_store_empty(&store);
    let out = store.ok(&["gc"]);
    assert!(
        numbers(&out.stdout).iter().all(|&n| n == 0),
        "gc on a clean store frees 0 bytes: {:?}",
        out.stdout
    );
}

#[test]
fn rmi_of_one_of_two_tags_keeps_the_image() {
    let scratch = scratch();
    let store = Lstore::new();
    let a = image("tags");
    store.load(&layout(scratch.path(), "a", &a, A), None);
    let alias = "127.0.0.1:5000/alias/a:2";
    store.ok(&["tag", A, alias]);
    let images = store.images();
    assert_eq!(images.len(), 2, "one entry per tag: {images:?}");
    assert!(images.iter().all(|i| i["id"] == a.config_digest.as_str()));
    let tags = store.inspect(alias)["repo_tags"].clone();
    let tags: BTreeSet<&str> = tags
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, BTreeSet::from([A, alias]));

    let (blobs, layers) = (store.blobs(), store.layer_dirs());
    store.ok(&["rmi", A]);
    assert!(!store.run(&["inspect", A]).success());
    assert_eq!(store.inspect(alias)["id"], a.config_digest.as_str());
    assert_eq!(
        (store.blobs(), store.layer_dirs()),
        (blobs, layers),
        "nothing swept"
    );
    let images = store.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["repository"], "127.0.0.1:5000/alias/a");
    assert_eq!(images[0]["tag"], "2");

    store.ok(&["image", "rm", alias]);
    assert_store_empty(&store);
}

#[test]
fn rmi_of_several_references_and_of_unknown_ones() {
    let scratch = scratch();
    let store = Lstore::new();
    store.load(&layout(scratch.path(), "a", &image("a"), A), None);
    store.load(&layout(scratch.path(), "b", &image("b"), B), None);
    store.fails(&["rmi", "example.com/lstore/missing:1"]);
    assert_eq!(store.images().len(), 2, "a failed rmi removes nothing");
    store.ok(&["rmi", A, B]);
    assert_store_empty(&store);
    store.fails(&["tag", A, "example.com/lstore/c:1"]);
}

#[test]
fn gc_removes_orphans_and_unfinished_work_but_dry_run_does_not() {
    let scratch = scratch();
    let store = Lstore::new();
    let a = image("gc");
    let layout_a = layout(scratch.path(), "a", &a, A);
    store.load(&layout_a, None);
    let (blobs, layers, links) = (store.blobs(), store.layer_dirs(), store.short_links());

    // Leftovers of killed processes.
    fs::create_dir_all(store.path("tmp/extract-junk/diff/etc")).unwrap();
    fs::write(store.path("tmp/extract-junk/diff/etc/file"), "junk").unwrap();
    fs::create_dir_all(store.path("ingest")).unwrap();
    fs::write(store.path("ingest/partial-download"), vec![7u8; 4096]).unwrap();
    let orphan_blob = store.path("blobs/sha256").join(sha256_hex(b"orphan blob"));
    fs::write(&orphan_blob, b"orphan blob").unwrap();
    let orphan_layer = store.path("overlay2").join(sha256_hex(b"orphan layer"));
    fs::create_dir_all(orphan_layer.join("diff")).unwrap();
    fs::write(orphan_layer.join("diff/file"), "orphan").unwrap();
    fs::write(orphan_layer.join("link"), "ORPHANORPHANORPHANORPHAN22").unwrap();
    let orphan_link = store.path("overlay2/l/ORPHANORPHANORPHANORPHAN22");
    std::os::unix::fs::symlink(
        format!("../{}/diff", sha256_hex(b"orphan layer")),
        &orphan_link,
    )
    .unwrap();
    let unfinished = store.unfinished();
    assert_eq!(unfinished.len(), 2);

    store.ok(&["gc", "--dry-run"]);
    assert!(orphan_blob.exists() && orphan_layer.exists() && orphan_link.exists());
    assert_eq!(store.unfinished(), unfinished, "--dry-run removes nothing");
    assert_eq!(store.blobs().len(), blobs.len() + 1);
    assert_eq!(store.layer_dirs().len(), layers.len() + 1);

    let out = store.ok(&["gc"]);
    assert!(
        numbers(&out.stdout).iter().any(|&n| n > 0),
        "gc prints what it freed: {:?}",
        out.stdout
    );
    assert!(!orphan_blob.exists(), "orphan blob swept");
    assert!(!orphan_layer.exists(), "orphan layer folder swept");
    assert!(
        fs::symlink_metadata(&orphan_link).is_err(),
        "orphan short link swept"
    );
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "tmp/ and ingest/ emptied"
    );
    assert_eq!(
        (store.blobs(), store.layer_dirs(), store.short_links()),
        (blobs, layers, links),
        "everything the image uses is kept"
    );
    assert_matches_umoci(&store, A, &a);
    let out = store.ok(&["gc"]);
    assert!(
        numbers(&out.stdout).iter().all(|&n| n == 0),
        "a second gc frees nothing: {:?}",
        out.stdout
    );
}

#[test]
fn df_reports_blobs_layers_shared_and_unique_bytes() {
    let scratch = scratch();
    let store = Lstore::new();
    let out = store.ok(&["df"]);
    assert!(
        numbers(&out.stdout).iter().all(|&n| n == 0),
        "an empty store uses 0 bytes: {:?}",
        out.stdout
    );
    store.load(&layout(scratch.path(), "a", &image("a"), A), None);
    store.load(&layout(scratch.path(), "b", &image("b"), B), None);
    let out = store.ok(&["df"]);
    let text = out.stdout.to_lowercase();
    for word in ["blob", "layer", "shared", "unique"] {
        assert!(text.contains(word), "df mentions {word}: {}", out.stdout);
    }
    assert!(
        numbers(&out.stdout).iter().any(|&n| n > 0),
        "df: {}",
        out.stdout
    );
}

#[test]
fn a_moved_tag_leaves_an_untagged_image_that_gc_removes() {
    let scratch = scratch();
    let store = Lstore::new();
    let (a, b) = (image("old"), image("new"));
    store.load(&layout(scratch.path(), "a", &a, A), None);
    store.load(&layout(scratch.path(), "b", &b, B), None);
    // A now names b's image; a's image keeps no name but is still stored,
    // listed as `docker images` lists a dangling image.
    store.ok(&["tag", B, A]);
    assert_eq!(store.inspect(A)["id"], b.config_digest.as_str());
    let images = store.images();
    let untagged: Vec<&Value> = images
        .iter()
        .filter(|i| i["id"] == a.config_digest.as_str())
        .collect();
    // README: "the old image stays until rmi or gc".
    assert_eq!(
        untagged.len(),
        1,
        "the untagged image is listed once: {images:?}"
    );
    for item in &untagged {
        assert_eq!(item["repository"], Value::Null, "untagged: {item}");
        assert_eq!(item["tag"], Value::Null, "untagged: {item}");
    }
    store.ok(&["gc"]);
    assert!(
        store
            .images()
            .iter()
            .all(|i| i["id"] != a.config_digest.as_str()),
        "gc removes the untagged image"
    );
    let blobs = set(store.blobs());
    for digest in [&a.layers[1].digest, &a.config_digest, &a.manifest_digest] {
        assert!(
            !blobs.contains(&hex(digest)),
            "blob {digest} of the untagged image swept"
        );
    }
    assert_eq!(
        set(store.layer_dirs()),
        set(b.chain_ids().iter().map(|c| hex(c))),
        "only b's layers remain"
    );
    assert_matches_umoci(&store, B, &b);
    assert_matches_umoci(&store, A, &b);
}

#[test]
fn df_json_counts_what_is_on_disk() {
    // `df --format json` is documented in the README.
    let scratch = scratch();
    let store = Lstore::new();
    store.load(&layout(scratch.path(), "a", &image("a"), A), None);
    store.load(&layout(scratch.path(), "b", &image("b"), B), None);
    let df = store.json(&["df", "--format", "json"]);
    let blob_bytes: u64 = store
        .blobs()
        .iter()
        .map(|b| {
            fs::metadata(store.path("blobs/sha256").join(b))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        df["blobs"].as_u64(),
        Some(store.blobs().len() as u64),
        "{df}"
    );
    assert_eq!(df["blob_bytes"].as_u64(), Some(blob_bytes), "{df}");
    assert_eq!(
        df["layers"].as_u64(),
        Some(store.layer_dirs().len() as u64),
        "{df}"
    );
    assert_eq!(df["images"].as_u64(), Some(2), "{df}");
    assert!(
        df["shared_bytes"].as_u64().unwrap() > 0,
        "the base is shared: {df}"
    );
    assert!(df["unique_bytes"].as_u64().unwrap() > 0, "{df}");
    store.ok(&["rmi", A]);
    let df = store.json(&["df", "--format", "json"]);
    assert_eq!(
        df["shared_bytes"].as_u64(),
        Some(0),
        "one image shares nothing: {df}"
    );
}

// ------------------------------------------------- found by trying it out

/// One config under an OCI and a Docker schema2 manifest: two stored
/// images with one id. `inspect <id>` does not pick one of them; `rmi
/// <id>` removes both, as it removes every name of one image.
#[test]
fn an_id_that_two_images_share() {
    let scratch = scratch();
    let store = Lstore::new();
    let oci = image("same-id");
    let docker = ImageBuilder::new()
        .kind(common::ManifestKind::Docker)
        .layer(scenes::small_base())
        .layer(scenes::small_app("same-id"))
        .build();
    assert_eq!(oci.config_digest, docker.config_digest, "one config");
    assert_ne!(oci.manifest_digest, docker.manifest_digest, "two manifests");
    let dir = scratch.path().join("both");
    write_oci_layout(
        &dir,
        &[
            (&oci, LayoutNames::containerd(A)),
            (&docker, LayoutNames::containerd(B)),
        ],
    );
    store.load(&dir, None);
    let id = oci.config_digest.as_str();
    assert_eq!(store.images().len(), 2);
    assert_eq!(store.inspect(A)["digest"], oci.manifest_digest.as_str());
    assert_eq!(store.inspect(B)["digest"], docker.manifest_digest.as_str());

    let short = &hex(id)[..12];
    for word in [id, short] {
        let err = store.fails(&["inspect", word]);
        assert!(err.contains("ambiguous"), "inspect {word}: {err}");
        for manifest in [&oci.manifest_digest, &docker.manifest_digest] {
            assert!(err.contains(manifest.as_str()), "{err} names {manifest}");
        }
    }
    // A manifest digest names one of them.
    assert_eq!(
        store.inspect(&docker.manifest_digest)["repo_tags"],
        serde_json::json!([B])
    );

    let out = store.ok(&["rmi", short]);
    for name in [A, B] {
        assert!(
            out.stdout.contains(&format!("Untagged: {name}")),
            "{}",
            out.stdout
        );
    }
    assert_store_empty(&store);
}

/// An id prefix that starts several ids is ambiguous (Docker reads any
/// length of prefix), not unknown.
#[test]
fn an_id_prefix_of_several_images_is_ambiguous() {
    let scratch = scratch();
    let store = Lstore::new();
    // Among 17 configs two start with the same hex digit.
    let candidates: Vec<Image> = (0..17)
        .map(|i| {
            ImageBuilder::new()
                .layer(scenes::small_base())
                .cmd(&["/app", &i.to_string()])
                .build()
        })
        .collect();
    let (first, second) = (0..candidates.len())
        .flat_map(|i| (i + 1..candidates.len()).map(move |j| (i, j)))
        .find(|&(i, j)| {
            hex(&candidates[i].config_digest)[..1] == hex(&candidates[j].config_digest)[..1]
        })
        .expect("pigeonhole");
    let (a, b) = (&candidates[first], &candidates[second]);
    store.load(&layout(scratch.path(), "a", a, A), None);
    store.load(&layout(scratch.path(), "b", b, B), None);
    let common = hex(&a.config_digest)
        .chars()
        .zip(hex(&b.config_digest).chars())
        .take_while(|(x, y)| x == y)
        .count();
    let prefix = &hex(&a.config_digest)[..common];
    for word in [prefix.to_string(), format!("sha256:{prefix}")] {
        for command in [&["inspect"][..], &["rmi"], &["tag", "x:1"]] {
            let mut args: Vec<&str> = command.to_vec();
            args.insert(1, &word);
            let err = store.fails(&args);
            assert!(err.contains("ambiguous"), "{args:?}: {err}");
        }
    }
    assert_eq!(store.images().len(), 2, "nothing removed");
    // One more digit tells them apart.
    let longer = &hex(&a.config_digest)[..common + 1];
    assert_eq!(store.inspect(longer)["id"], a.config_digest.as_str());
}

/// `rmi a b` with `a` unknown removes `b` and fails naming `a`, as Docker.
#[test]
fn rmi_goes_on_past_an_unknown_name_and_fails_naming_it() {
    let scratch = scratch();
    let store = Lstore::new();
    store.load(&layout(scratch.path(), "b", &image("b"), B), None);
    let missing = "example.com/lstore/missing:1";
    let out = store.run(&["rmi", missing, B]);
    assert!(!out.success(), "rmi with an unknown name must fail");
    common::lstore::assert_one_line_error("rmi", &out);
    assert!(out.stderr.contains(missing), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("Untagged: {B}")),
        "{}",
        out.stdout
    );
    assert_store_empty(&store);

    // JSON says which word was not removed.
    store.load(&layout(scratch.path(), "b", &image("b"), B), None);
    let out = store.run(&["rmi", "--format", "json", B, missing]);
    assert!(!out.success());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["untagged"], serde_json::json!([B]), "{report}");
    assert_eq!(report["not_removed"][0]["reference"], missing, "{report}");
    assert_store_empty(&store);
}

/// A layer with one file under three names (hardlinks).
fn linked_image(app: &str) -> Image {
    let mut t = common::TarBuilder::new();
    t.dir("data");
    t.file("data/big", scenes::noise(200_000, 7)).mode(0o644);
    t.hardlink("data/big-2", "data/big");
    t.hardlink("data/big-3", "data/big");
    t.file("data/app", app);
    ImageBuilder::new()
        .layer(scenes::small_base())
        .tar(&t, common::Compression::Gzip)
        .build()
}

/// (device, inode) -> size of every regular file in blobs and layers.
fn held_files(store: &Lstore) -> std::collections::HashMap<(u64, u64), u64> {
    use std::os::unix::fs::MetadataExt;
    let mut held = std::collections::HashMap::new();
    let mut stack = vec![store.path("blobs/sha256")];
    stack.extend(
        store
            .layer_dirs()
            .iter()
            .map(|d| store.path("overlay2").join(d)),
    );
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            held.insert((meta.dev(), meta.ino()), meta.len());
        }
    }
    held
}

/// Bytes of the files held before and not after, each file once.
fn vanished(before: &std::collections::HashMap<(u64, u64), u64>, store: &Lstore) -> u64 {
    let after = held_files(store);
    before
        .iter()
        .filter(|(k, _)| !after.contains_key(k))
        .map(|(_, size)| size)
        .sum()
}

/// Freed bytes count a file once however many names it has, as `df`
/// sees the space come back: for rmi, gc and gc --dry-run alike. And a dry
/// run says what it would delete, not that it deleted it.
#[test]
fn freed_bytes_count_each_file_once() {
    let scratch = scratch();
    let store = Lstore::new();
    let linked = linked_image("one");
    store.load(&layout(scratch.path(), "a", &linked, A), None);
    let before = held_files(&store);
    let report = store.json(&["rmi", "--format", "json", A]);
    assert_store_empty(&store);
    assert_eq!(report["freed_bytes"], vanished(&before, &store), "{report}");

    // The same for gc, of an image a moved tag left behind.
    store.load(&layout(scratch.path(), "a", &linked, A), None);
    store.load(&layout(scratch.path(), "b", &image("other"), A), None);
    let before = held_files(&store);
    let out = store.ok(&["gc", "--dry-run"]);
    let would = format!("Would delete: {}", linked.config_digest);
    assert!(out.stdout.contains(&would), "{}", out.stdout);
    assert!(!out.stdout.contains("Deleted:"), "{}", out.stdout);
    let dry = store.json(&["gc", "--dry-run", "--format", "json"]);
    let done = store.json(&["gc", "--format", "json"]);
    let freed = vanished(&before, &store);
    assert!(freed > 200_000, "the linked file went: {freed}");
    assert_eq!(dry["freed_bytes"], freed, "dry run: {dry}");
    assert_eq!(done["freed_bytes"], freed, "gc: {done}");
    assert_eq!(
        done["deleted_images"],
        serde_json::json!([linked.config_digest])
    );
}
