//! podman reads lstore's images through `<root>/containers-storage/`, the
//! read-only containers/storage store lstore keeps: the real podman (with a
//! private storage.conf whose `additionalimagestores` names the view)
//! lists, inspects and mounts them using lstore's own layer folders, and
//! sees every change lstore makes.

mod common;

use common::clients::Podman;
use common::image::Image;
use common::mount::LstoreMount;
use common::registry::Registry;
use common::scenes::{
    everything_changes, everything_image, everything_late, small_app, small_base,
};
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, Compression, ImageBuilder, Lstore, ManifestKind};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn app_image(name: &str) -> Image {
    ImageBuilder::new()
        .layer(small_base())
        .layer(small_app(name))
        .build()
}

fn view(store: &Lstore) -> PathBuf {
    store.path("containers-storage")
}

/// `podman images --format json` rows as (id, names).
fn podman_images(podman: &Podman) -> Vec<(String, Vec<String>)> {
    let out = podman.ok(&["images", "--format", "json"]);
    let rows: Value = serde_json::from_str(&out.stdout).expect("podman images JSON");
    rows.as_array()
        .expect("array")
        .iter()
        .map(|row| {
            let names = row["Names"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (row["Id"].as_str().unwrap_or_default().to_string(), names)
        })
        .collect()
}

/// The lower dirs of the overlay mounted at `target`, each with symlinks
/// resolved.
fn resolved_lower_dirs(target: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let target = target.to_str().expect("utf-8");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("{target} is not mounted"));
    let options = line.rsplit(' ').next().unwrap_or_default();
    let lower = options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {line}"));
    lower
        .split(':')
        .map(|p| fs::canonicalize(p).unwrap_or_else(|e| panic!("resolve {p}: {e}")))
        .collect()
}

#[test]
fn podman_lists_inspects_and_mounts_lstore_images_from_lstore_folders() {
    let store = Lstore::new();
    let image = everything_image(ManifestKind::Oci);
    store.load_image(&image, "example.com/view/everything:v1");
    let podman = Podman::with_image_store(&view(&store), &[]);

    let listed = podman_images(&podman);
    let id = image
        .config_digest
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(
        listed,
        vec![(
            id.clone(),
            vec!["example.com/view/everything:v1".to_string()]
        )],
        "podman images"
    );

    let inspect = podman.inspect("example.com/view/everything:v1");
    let lstore = store.inspect("example.com/view/everything:v1");
    assert_eq!(inspect["Id"], id.as_str());
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
    let diff_ids: Vec<Value> = lstore["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["diff_id"].clone())
        .collect();
    assert_eq!(
        inspect["RootFS"]["Layers"],
        Value::Array(diff_ids),
        "podman's layers"
    );

    let mount = podman.container_mount("example.com/view/everything:v1");
    assert_same_tree(
        &snapshot(LstoreMount::new(&store, "example.com/view/everything:v1", false).root()),
        &snapshot(mount.path()),
        "podman mount vs lstore mount",
    );
    // podman's lower dirs are lstore's layer folders, every one of them.
    let overlay2 = fs::canonicalize(store.path("overlay2")).expect("overlay2");
    let lowers = resolved_lower_dirs(mount.path());
    let expected: Vec<PathBuf> = lstore["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .rev()
        .map(|l| {
            let chain = l["chain_id"].as_str().expect("chain id");
            overlay2
                .join(chain.trim_start_matches("sha256:"))
                .join("diff")
        })
        .collect();
    assert_eq!(lowers, expected, "lower dirs of podman's mount");
    // podman's own store holds the container's layer only.
    assert_eq!(
        podman.own_layer_dirs().len(),
        1,
        "{:?}",
        podman.own_layer_dirs()
    );
    mount.unmount();
}

#[test]
fn podman_sees_what_lstore_adds_tags_and_removes() {
    let store = Lstore::new();
    store.load_image(&app_image("one"), "example.com/view/one:v1");
    let podman = Podman::with_image_store(&view(&store), &[]);
    let names = |podman: &Podman| -> BTreeSet<String> {
        podman_images(podman)
            .into_iter()
            .flat_map(|(_, n)| n)
            .collect()
    };
    assert_eq!(
        names(&podman),
        BTreeSet::from(["example.com/view/one:v1".to_string()])
    );

    let two = app_image("two");
    store.load_image(&two, "example.com/view/two:v1");
    store.ok(&[
        "tag",
        "example.com/view/one:v1",
        "example.com/view/one:edge",
    ]);
    assert_eq!(
        names(&podman),
        BTreeSet::from([
            "example.com/view/one:edge".to_string(),
            "example.com/view/one:v1".to_string(),
            "example.com/view/two:v1".to_string(),
        ])
    );
    // The shared base layer is one layer for podman too.
    let layers: Value = serde_json::from_slice(
        &fs::read(view(&store).join("overlay-layers/layers.json")).expect("layers.json"),
    )
    .expect("layers.json parses");
    assert_eq!(layers.as_array().map(Vec::len), Some(3), "{layers}");

    store.ok(&[
        "rmi",
        "example.com/view/one:v1",
        "example.com/view/one:edge",
    ]);
    assert_eq!(
        names(&podman),
        BTreeSet::from(["example.com/view/two:v1".to_string()])
    );
    assert!(
        podman
            .run(&["image", "exists", "example.com/view/one:v1"])
            .status
            .code()
            == Some(1),
        "podman still knows the removed image"
    );
    store.ok(&["rmi", "example.com/view/two:v1"]);
    assert!(podman_images(&podman).is_empty());
    // Nothing of the removed images is left in the view.
    let left: BTreeSet<String> = ["overlay", "overlay-images", "overlay-layers"]
        .iter()
        .flat_map(|d| common::lstore::list(&view(&store).join(d)))
        .collect();
    let expected = [
        "l",
        "images.json",
        "images.lock",
        "layers.json",
        "layers.lock",
    ];
    assert_eq!(
        left,
        expected.map(String::from).into(),
        "view after removing every image"
    );
}

#[test]
fn a_podman_pull_of_an_image_lstore_holds_copies_no_layer() {
    let registry = Registry::start();
    let work = scratch();
    let image = app_image("pulled");
    registry.push_image(work.path(), &image, "view/pulled:v1", &[]);
    let name = format!("{}/view/pulled:v1", registry.host());
    let store = Lstore::new();
    store.ok(&["pull", &name]);

    let host = registry.host();
    let podman = Podman::with_image_store(&view(&store), &[host.as_str()]);
    podman.ok(&["pull", "-q", &name]);

    assert_eq!(
        podman.inspect(&name)["Id"],
        image.config_digest.trim_start_matches("sha256:")
    );
    assert!(
        podman.own_layer_dirs().is_empty(),
        "podman copied layers lstore has: {:?}",
        podman.own_layer_dirs()
    );
}

#[test]
fn fsck_finds_a_stale_view_and_repair_rewrites_it() {
    let store = Lstore::new();
    store.load_image(&app_image("stale"), "example.com/view/stale:v1");
    // What a crash between a command's records and its view leaves.
    fs::remove_file(view(&store).join("overlay-images/images.json")).expect("remove images.json");

    let out = store.run(&["fsck", "--format", "json"]);
    assert!(!out.success(), "fsck passes a stale view: {}", out.stdout);
    assert!(
        out.stdout.contains("containers-storage/ is out of date"),
        "{}",
        out.stdout
    );
    store.ok(&["fsck", "--repair"]);
    store.ok(&["fsck"]);
    let podman = Podman::with_image_store(&view(&store), &[]);
    assert_eq!(podman_images(&podman).len(), 1);
}

#[test]
fn podman_save_of_an_lstore_image_loads_back_with_the_same_id() {
    let store = Lstore::new();
    // Whiteouts, an opaque directory, hardlinks, owners, modes and xattrs;
    // not everything_image, whose base writes one path twice: no tar-split
    // record (lstore's or containers/storage's own) can rebuild a tar whose
    // first copy of a file was overwritten in the folder.
    let image = ImageBuilder::new()
        .kind(ManifestKind::Docker)
        .layer(small_base())
        .tar(&everything_changes(), Compression::Gzip)
        .tar(&everything_late(), Compression::Gzip)
        .build();
    store.load_image(&image, "example.com/view/saved:v1");
    let podman = Podman::with_image_store(&view(&store), &[]);
    let work = scratch();
    let archive = work.path().join("saved.tar");

    // podman rebuilds each layer's tar from lstore's folder and the
    // layer's tar-split record, and checks it against the diff id.
    podman.ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().expect("utf-8"),
        "example.com/view/saved:v1",
    ]);

    let other = Lstore::new();
    other.load(&archive, None);
    assert_eq!(
        other.inspect("example.com/view/saved:v1")["id"],
        image.config_digest.as_str()
    );
}

#[test]
fn layers_under_a_podman_mount_outlive_rmi_and_gc_until_unmounted() {
    let store = Lstore::new();
    store.load_image(&app_image("held"), "example.com/view/held:v1");
    let layers_before = store.layer_dirs();
    let podman = Podman::with_image_store(&view(&store), &[]);
    let mount = podman.container_mount("example.com/view/held:v1");

    store.ok(&["rmi", "example.com/view/held:v1"]);
    store.ok(&["gc"]);
    assert!(
        podman_images(&podman).is_empty(),
        "the image record is gone"
    );
    assert_eq!(
        store.layer_dirs(),
        layers_before,
        "layers under podman's mount"
    );
    assert_eq!(
        fs::read_to_string(mount.path().join("app/name")).expect("read through the mount"),
        "held\n"
    );
    store.ok(&["fsck"]);

    mount.unmount();
    store.ok(&["gc"]);
    assert!(store.layer_dirs().is_empty(), "{:?}", store.layer_dirs());
    assert!(store.blobs().is_empty(), "{:?}", store.blobs());
}
