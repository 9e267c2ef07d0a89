//! `fsck` and `fsck --repair` on damaged stores: a damaged layer folder is
//! extracted again from its blob (once, however many images share it) and
//! the image mounts as before; an image whose manifest, config or
//! unrecoverable layer is gone is removed with its tags, and the repair
//! frees what only it held; what still works is kept; live mounts are left
//! alone. Files no image needs are leftovers, reported apart from damage
//! and removed by `--repair`.

mod common;

use common::image::{write_oci_layout, Image};
use common::mount::LstoreMount;
use common::scenes;
use common::tarball::{sha256_digest, Layer};
use common::tree::{assert_same_tree, snapshot, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

const A: &str = "example.com/lstore/fsck-a:1";
const B: &str = "example.com/lstore/fsck-b:1";

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// A three-layer image: the shared base, an app, and a layer of its own.
fn image(app: &str) -> Image {
    let mut top = TarBuilder::new();
    top.dir("etc");
    top.file(format!("etc/{app}.conf"), format!("name={app}\n"));
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app(app))
        .layer(top.layer(Compression::Zstd))
        .build()
}

/// A store holding each image under its name.
fn store_with(images: &[(&Image, &str)]) -> Lstore {
    let scratch = scratch();
    let store = Lstore::new();
    for (i, (image, name)) in images.iter().enumerate() {
        let dir = scratch.path().join(format!("layout-{i}"));
        write_oci_layout(&dir, &[(image, LayoutNames::containerd(name))]);
        store.load(&dir, None);
    }
    store
}

/// What `lstore mount REF` shows.
fn mounted_files(store: &Lstore, reference: &str) -> Tree {
    let mount = LstoreMount::new(store, reference, false);
    snapshot(mount.root())
}

/// `fsck --format json [--repair]`: whether it succeeded, and its report.
fn fsck(store: &Lstore, repair: bool) -> (bool, Value) {
    let mut args = vec!["fsck", "--format", "json"];
    if repair {
        args.push("--repair");
    }
    let out = store.run(&args);
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON report ({e}):\n{}{}",
            out.stdout, out.stderr
        )
    });
    (out.success(), report)
}

/// The lines of a report's `list`, each with its `done` flag.
fn findings(report: &Value, list: &str, done: &str) -> Vec<(String, bool)> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} array: {report}"))
        .iter()
        .map(|p| {
            (
                p["what"].as_str().expect("what").to_string(),
                p[done].as_bool().expect(done),
            )
        })
        .collect()
}

/// The problem lines (damage) of a report, with their repaired flag.
fn problems(report: &Value) -> Vec<(String, bool)> {
    findings(report, "problems", "repaired")
}

/// The leftover lines of a report, with their removed flag.
fn leftovers(report: &Value) -> Vec<(String, bool)> {
    findings(report, "leftovers", "removed")
}

/// `fsck` finds problems and names `word` in one of them.
fn assert_fsck_finds(store: &Lstore, word: &str) -> Vec<(String, bool)> {
    let (ok, report) = fsck(store, false);
    let found = problems(&report);
    assert!(!ok, "fsck passed a damaged store: {report}");
    assert!(
        found.iter().any(|(what, _)| what.contains(word)),
        "no problem names {word}: {found:#?}"
    );
    assert!(found.iter().all(|(_, repaired)| !repaired), "{found:#?}");
    found
}

fn assert_fsck_clean(store: &Lstore, what: &str) {
    let (ok, report) = fsck(store, false);
    assert!(ok, "{what}: fsck finds problems: {report:#}");
    assert_eq!(problems(&report), Vec::new(), "{what}");
    assert_eq!(leftovers(&report), Vec::new(), "{what}");
}

/// The chain ids of an image's layers, base first.
fn chains(store: &Lstore, reference: &str) -> Vec<String> {
    store.inspect(reference)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["chain_id"].as_str().expect("chain_id").to_string())
        .collect()
}

fn layer_dir(store: &Lstore, chain: &str) -> PathBuf {
    store.path(&format!("overlay2/{}", hex(chain)))
}

fn blob_file(store: &Lstore, digest: &str) -> PathBuf {
    store.path(&format!("blobs/sha256/{}", hex(digest)))
}

fn tags(store: &Lstore) -> Vec<String> {
    store.listed_references()
}

/// Ways a layer folder gets damaged.
fn damage(kind: &str, dir: &Path) {
    match kind {
        "no diff/" => fs::remove_dir_all(dir.join("diff")).unwrap(),
        "no link" => fs::remove_file(dir.join("link")).unwrap(),
        "wrong lower" => fs::write(dir.join("lower"), "l/AAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap(),
        "emptied diff/" => {
            fs::remove_dir_all(dir.join("diff")).unwrap();
            fs::create_dir(dir.join("diff")).unwrap();
            fs::remove_file(dir.join("link")).unwrap();
        }
        "no folder" => fs::remove_dir_all(dir).unwrap(),
        "a file in its place" => {
            fs::remove_dir_all(dir).unwrap();
            fs::write(dir, "not a layer").unwrap();
        }
        other => panic!("unknown damage {other}"),
    }
}

#[test]
fn a_damaged_layer_is_extracted_again_and_mounts_as_before() {
    let a = image("a");
    for kind in [
        "no diff/",
        "no link",
        "wrong lower",
        "emptied diff/",
        "no folder",
        "a file in its place",
    ] {
        let store = store_with(&[(&a, A)]);
        let before = mounted_files(&store, A);
        let layers = chains(&store, A);
        // The middle layer: it has a parent below and a child above.
        let damaged = &layers[1];
        damage(kind, &layer_dir(&store, damaged));
        assert_fsck_finds(&store, hex(damaged));

        let (ok, report) = fsck(&store, true);
        let found = problems(&report);
        assert!(ok, "{kind}: fsck --repair left problems: {report:#}");
        assert_eq!(report["layers_reextracted"], 1, "{kind}: {found:#?}");
        assert_eq!(report["images_removed"], 0, "{kind}");
        assert!(
            found
                .iter()
                .any(|(w, r)| *r && w.contains(hex(damaged)) && w.contains("re-extracted")),
            "{kind}: {found:#?}"
        );
        assert_fsck_clean(&store, kind);
        assert_same_tree(&before, &mounted_files(&store, A), kind);
        assert_eq!(store.unfinished(), Vec::<String>::new(), "{kind}: tmp/");
        assert_eq!(tags(&store), vec![A.to_string()], "{kind}");
    }
}

#[test]
fn a_whole_image_of_lost_folders_is_extracted_again_parents_first() {
    let a = image("whole");
    let store = store_with(&[(&a, A)]);
    let before = mounted_files(&store, A);
    fs::remove_dir_all(store.path("overlay2")).unwrap();
    fs::create_dir(store.path("overlay2")).unwrap();
    assert_fsck_finds(&store, "folder is missing");
    let (ok, report) = fsck(&store, true);
    assert!(ok, "{report:#}");
    assert_eq!(report["layers_reextracted"], 3);
    assert_fsck_clean(&store, "after repair");
    assert_same_tree(&before, &mounted_files(&store, A), "all layers restored");
    assert_eq!(store.short_links().len(), 3);
}

#[test]
fn a_layer_shared_by_two_images_is_extracted_once() {
    let (a, b) = (image("a"), image("b"));
    let store = store_with(&[(&a, A), (&b, B)]);
    let (before_a, before_b) = (mounted_files(&store, A), mounted_files(&store, B));
    let base = chains(&store, A)[0].clone();
    assert_eq!(chains(&store, B)[0], base);
    damage("no folder", &layer_dir(&store, &base));
    assert_fsck_finds(&store, hex(&base));

    let (ok, report) = fsck(&store, true);
    assert!(ok, "{report:#}");
    assert_eq!(report["layers_reextracted"], 1, "{report:#}");
    let mentions = problems(&report)
        .iter()
        .filter(|(w, _)| w.contains("re-extracted"))
        .count();
    assert_eq!(mentions, 1);
    assert_fsck_clean(&store, "after repair");
    assert_same_tree(&before_a, &mounted_files(&store, A), A);
    assert_same_tree(&before_b, &mounted_files(&store, B), B);
}

#[test]
fn an_image_without_its_manifest_or_config_is_removed_and_gc_empties_the_store() {
    let a = image("meta");
    for what in ["manifest", "config"] {
        let store = store_with(&[(&a, A)]);
        store.ok(&["tag", A, "example.com/lstore/other:2"]);
        let digest = match what {
            "manifest" => &a.manifest_digest,
            _ => &a.config_digest,
        };
        fs::remove_file(blob_file(&store, digest)).unwrap();
        assert_fsck_finds(&store, hex(digest));

        let (ok, report) = fsck(&store, true);
        let found = problems(&report);
        assert!(ok, "{what}: {report:#}");
        assert_eq!(report["images_removed"], 1, "{what}");
        let line = found
            .iter()
            .find(|(w, _)| w.starts_with("image "))
            .unwrap_or_else(|| panic!("{what}: no image problem: {found:#?}"));
        assert!(line.1, "{what}: {line:?}");
        assert!(
            line.0.contains(&format!("{what} blob {digest} is missing"))
                && line.0.contains("removed; pull or load it again")
                && line.0.contains("example.com/lstore/other:2"),
            "{what}: {line:?}"
        );
        assert!(
            !found.iter().any(|(w, _)| w.contains("reference count")),
            "{what}: counts changed by the removal are no problem: {found:#?}"
        );
        assert_eq!(store.images(), Vec::<Value>::new(), "{what}: tags left");
        assert_fsck_clean(&store, what);
        assert_eq!(
            store.blobs(),
            Vec::<String>::new(),
            "{what}: the repair frees the blobs only the removed image used"
        );

        store.ok(&["gc"]);
        assert_eq!(
            store.blobs(),
            Vec::<String>::new(),
            "{what}: blobs after gc"
        );
        assert_eq!(
            store.layer_dirs(),
            Vec::<String>::new(),
            "{what}: layers after gc"
        );
        assert_eq!(
            store.short_links(),
            Vec::<String>::new(),
            "{what}: l/ after gc"
        );
        assert_fsck_clean(&store, &format!("{what}, after gc"));
    }
}

#[test]
fn images_needing_a_lost_layer_go_a_sharer_with_everything_stays() {
    let (a, b) = (image("a"), image("b"));
    let store = store_with(&[(&a, A), (&b, B)]);
    let before_b = mounted_files(&store, B);
    // Only A uses its app layer: its blob and its folder are gone.
    let lost = chains(&store, A)[1].clone();
    fs::remove_file(blob_file(&store, &a.layers[1].digest)).unwrap();
    damage("no folder", &layer_dir(&store, &lost));
    assert_fsck_finds(&store, hex(&lost));

    let (ok, report) = fsck(&store, true);
    let found = problems(&report);
    assert!(ok, "{report:#}");
    assert_eq!(report["images_removed"], 1, "{found:#?}");
    assert_eq!(report["layers_reextracted"], 0, "{found:#?}");
    assert!(
        found.iter().any(|(w, r)| *r
            && w.contains(A)
            && w.contains(&format!("layer {lost} cannot be restored"))
            && w.contains("removed; pull or load it again")),
        "{found:#?}"
    );
    assert!(
        !found.iter().any(|(w, _)| w.contains("reference count")),
        "{found:#?}"
    );
    assert_eq!(tags(&store), vec![B.to_string()]);
    assert_fsck_clean(&store, "after repair");
    assert_same_tree(&before_b, &mounted_files(&store, B), B);

    // gc frees A's own blobs and layers, nothing of B.
    store.ok(&["gc"]);
    let mut kept: Vec<String> = [&b.manifest_digest, &b.config_digest]
        .into_iter()
        .chain(b.layers.iter().map(|l| &l.digest))
        .map(|d| hex(d).to_string())
        .collect();
    kept.sort();
    assert_eq!(store.blobs(), kept);
    let mut b_layers: Vec<String> = chains(&store, B)
        .iter()
        .map(|c| hex(c).to_string())
        .collect();
    b_layers.sort();
    assert_eq!(store.layer_dirs(), b_layers);
    assert_fsck_clean(&store, "after gc");
    assert_same_tree(&before_b, &mounted_files(&store, B), B);
}

#[test]
fn a_layer_is_restored_from_another_images_blob_of_it() {
    // The same tar, gzip in A and zstd in B: one layer, two blobs.
    let mut t = TarBuilder::new();
    t.file("shared.txt", "one layer, two blobs\n");
    let a = ImageBuilder::new()
        .layer(Layer::from_tar(t.tar(), Compression::Gzip))
        .build();
    let b = ImageBuilder::new()
        .layer(Layer::from_tar(t.tar(), Compression::Zstd))
        .build();
    let store = store_with(&[(&a, A), (&b, B)]);
    let before = mounted_files(&store, A);
    let chain = chains(&store, A)[0].clone();
    fs::remove_file(blob_file(&store, &a.layers[0].digest)).unwrap();
    damage("no folder", &layer_dir(&store, &chain));

    // The layer comes back from B's blob; A still mounts, but its own blob
    // is gone for good: kept, reported as not repaired.
    let (ok, report) = fsck(&store, true);
    let found = problems(&report);
    assert!(!ok, "{report:#}");
    assert_eq!(report["layers_reextracted"], 1, "{found:#?}");
    assert_eq!(report["images_removed"], 0, "{found:#?}");
    let unrepaired: Vec<&(String, bool)> = found.iter().filter(|(_, r)| !r).collect();
    assert_eq!(unrepaired.len(), 1, "{found:#?}");
    assert!(
        unrepaired[0].0.contains(hex(&a.layers[0].digest))
            && unrepaired[0].0.contains("push and save need the blob"),
        "{found:#?}"
    );
    assert_eq!(tags(&store).len(), 2);
    assert_same_tree(&before, &mounted_files(&store, A), A);
    assert_same_tree(&before, &mounted_files(&store, B), B);
    // Loading A again brings the blob back: clean.
    let scratch = scratch();
    write_oci_layout(scratch.path(), &[(&a, LayoutNames::containerd(A))]);
    store.load(scratch.path(), None);
    assert!(store
        .path(&format!("blobs/sha256/{}", hex(&a.layers[0].digest)))
        .exists());
    assert_fsck_clean(&store, "after loading A again");
}

#[test]
fn a_mounted_image_is_left_alone() {
    let a = image("mounted");
    let store = store_with(&[(&a, A)]);
    let mount = LstoreMount::new(&store, A, false);
    let top = chains(&store, A)[2].clone();
    fs::remove_file(blob_file(&store, &a.manifest_digest)).unwrap();
    damage("no link", &layer_dir(&store, &top));

    let (ok, report) = fsck(&store, true);
    let found = problems(&report);
    assert!(!ok, "{report:#}");
    assert_eq!(report["images_removed"], 0);
    assert_eq!(report["layers_reextracted"], 0);
    assert!(
        found
            .iter()
            .any(|(w, r)| !r && w.contains(mount.target()) && w.contains(hex(&top))),
        "{found:#?}"
    );
    assert_eq!(tags(&store), vec![A.to_string()]);
    assert!(layer_dir(&store, &top).join("diff").is_dir());

    drop(mount);
    let (ok, report) = fsck(&store, true);
    assert!(ok, "{report:#}");
    assert_eq!(report["images_removed"], 1, "{report:#}");
    assert_fsck_clean(&store, "after unmount and repair");
}

#[test]
fn a_repaired_base_layer_keeps_its_whiteouts_out_as_a_pull_does() {
    // One layer holding whiteouts: mounted as a bind mount of that layer,
    // so a whiteout extracted by the repair would show as a 0/0 device.
    let single = ImageBuilder::new()
        .layer(scenes::small_app("single"))
        .build();
    let store = store_with(&[(&single, A)]);
    let before = mounted_files(&store, A);
    let layers = chains(&store, A);
    damage("emptied diff/", &layer_dir(&store, &layers[0]));
    assert_fsck_finds(&store, hex(&layers[0]));
    let (ok, report) = fsck(&store, true);
    assert!(ok, "{report:#}");
    assert_eq!(report["layers_reextracted"], 1);
    assert_same_tree(&before, &mounted_files(&store, A), "base layer repaired");
}

#[test]
fn leftovers_are_reported_apart_from_damage_and_repair_removes_them() {
    let a = image("leftovers");
    let store = store_with(&[(&a, A)]);
    let before = mounted_files(&store, A);
    // What killed commands leave: a blob and a layer folder no record
    // names, a short link to a layer that never arrived; and a stray name.
    let blob = b"a blob no record names\n";
    let blob_digest = sha256_digest(blob);
    fs::write(blob_file(&store, &blob_digest), blob).unwrap();
    let chain = sha256_digest(b"a layer no record names");
    let folder = layer_dir(&store, &chain);
    fs::create_dir_all(folder.join("diff/etc")).unwrap();
    fs::write(folder.join("diff/etc/half"), "half extracted\n").unwrap();
    let missing = sha256_digest(b"a layer that never arrived");
    let link = store.path("overlay2/l/AAAAAAAAAAAAAAAAAAAAAAAAAA");
    std::os::unix::fs::symlink(format!("../{}/diff", hex(&missing)), &link).unwrap();
    let stray = store.path("blobs/sha256/not-a-digest");
    fs::write(&stray, "stray\n").unwrap();
    let left = [
        hex(&blob_digest),
        hex(&chain),
        "AAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not-a-digest",
    ];

    let (ok, report) = fsck(&store, false);
    assert!(!ok, "leftovers make fsck fail: {report:#}");
    assert_eq!(problems(&report), Vec::new(), "no damage: {report:#}");
    let found = leftovers(&report);
    assert_eq!(found.len(), left.len(), "{found:#?}");
    for word in left {
        assert!(
            found
                .iter()
                .any(|(w, removed)| !removed && w.contains(word)),
            "no leftover names {word}: {found:#?}"
        );
    }
    let out = store.run(&["fsck"]);
    assert!(out.stdout.contains("leftover: "), "{}", out.stdout);
    assert!(
        out.stderr.contains("leftovers and no damage"),
        "{}",
        out.stderr
    );

    let (ok, report) = fsck(&store, true);
    assert!(ok, "fsck --repair removes leftovers: {report:#}");
    let removed = leftovers(&report);
    assert_eq!(removed.len(), left.len(), "{removed:#?}");
    assert!(removed.iter().all(|(_, r)| *r), "{removed:#?}");
    for path in [blob_file(&store, &blob_digest), folder, link, stray] {
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "{} is left",
            path.display()
        );
    }
    assert_fsck_clean(&store, "after the repair");
    assert_eq!(store.unfinished(), Vec::<String>::new(), "tmp/ emptied");
    assert_eq!(tags(&store), vec![A.to_string()]);
    assert_same_tree(&before, &mounted_files(&store, A), A);
}
