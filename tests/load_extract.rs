//! `lstore load` of OCI layouts (directory and tar) and docker-archives:
//! every entry kind and piece of metadata must come out of the overlay mount
//! exactly as umoci unpacks the same image; `inspect` and `images` print
//! what DESIGN.md specifies.

mod common;

use common::checks::{
    assert_matches_umoci, check_inspect, check_layer_folders, check_no_tar_whiteouts, layer_diff,
    mounted_tree, Source,
};
use common::image::{
    docker_archive, docker_archive_oci_style, write_oci_layout, write_oci_layout_tar, Image,
};
use common::scenes::{self, everything_image};
use common::tree::{get_xattr, snapshot, NodeKind};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind, TarBuilder};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Checks the overlay form of the "everything" image's whiteouts directly
/// in the layer folders.
fn check_everything_whiteouts(inspect: &Value) {
    let whiteout = |layer: usize, path: &str| {
        let tree = snapshot(&layer_diff(inspect, layer));
        let node = tree
            .get(path)
            .unwrap_or_else(|| panic!("layer {layer}: no whiteout at {path}"));
        assert!(
            node.kind.is_whiteout(),
            "layer {layer}: {path} is {} instead of a 0:0 char device",
            node.kind
        );
    };
    let opaque = |layer: usize, path: &str| {
        let dir = layer_diff(inspect, layer).join(path);
        assert_eq!(
            get_xattr(&dir, "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "layer {layer}: {path} must be opaque (trusted.overlay.opaque=y)"
        );
    };
    for path in ["etc/hostname", "old", "gone", "usr/bin/b"] {
        whiteout(1, path);
    }
    opaque(1, "opq");
    // Whiteout then re-creation in one layer: the new directory must hide
    // the lower one's content, the new file simply replaces the old one.
    opaque(1, "redir");
    let changes = snapshot(&layer_diff(inspect, 1));
    assert!(matches!(
        changes.get("refile").map(|n| &n.kind),
        Some(NodeKind::File { .. })
    ));
    opaque(3, "deep");
    let base = snapshot(&layer_diff(inspect, 0));
    for (path, node) in &base.nodes {
        assert!(!node.kind.is_whiteout(), "base layer: {path} is a whiteout");
        assert!(
            node.xattrs
                .keys()
                .all(|k| !k.starts_with("trusted.overlay.")),
            "base layer: {path} has overlay xattrs {:?}",
            node.xattrs
        );
    }
    assert!(
        snapshot(&layer_diff(inspect, 2)).is_empty(),
        "the empty layer's diff/ is empty"
    );
}

/// Writes `image` to an OCI layout under `dir`, named `name` as containerd
/// names its exports, and loads it.
fn load_named(store: &Lstore, dir: &Path, image: &Image, name: &str) {
    let layout = dir.join("layout");
    write_oci_layout(&layout, &[(image, LayoutNames::containerd(name))]);
    store.load(&layout, None);
}

fn load_everything_from_layout(
    store: &Lstore,
    layout: &Path,
    name: &str,
    kind: ManifestKind,
) -> Image {
    let image = everything_image(kind);
    write_oci_layout(layout, &[(&image, LayoutNames::containerd(name))]);
    store.load(layout, None);
    image
}

#[test]
fn oci_layout_directory_matches_umoci() {
    let scratch = scratch();
    let store = Lstore::new();
    let layout = scratch.path().join("layout");
    let name = "example.com/lstore/everything:1.0";
    let image = load_everything_from_layout(&store, &layout, name, ManifestKind::Oci);
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    check_no_tar_whiteouts(&inspect);
    check_everything_whiteouts(&inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn oci_layout_tar_named_by_ref_name_matches_umoci() {
    let scratch = scratch();
    let store = Lstore::new();
    let image = everything_image(ManifestKind::Oci);
    // A full reference in org.opencontainers.image.ref.name names the image.
    let name = "example.com/lstore/from-tar:v2";
    let tar = write_oci_layout_tar(
        &scratch.path().join("layout"),
        &[(&image, LayoutNames::ref_name(name))],
    );
    store.load(&tar, None);
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn docker_schema2_manifest_in_layout_matches_umoci() {
    let scratch = scratch();
    let store = Lstore::new();
    let name = "example.com/lstore/schema2:latest";
    let image = load_everything_from_layout(
        &store,
        &scratch.path().join("layout"),
        name,
        ManifestKind::Docker,
    );
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    check_everything_whiteouts(&inspect);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn docker_archive_with_several_images_matches_umoci() {
    let scratch = scratch();
    let store = Lstore::new();
    let everything = everything_image(ManifestKind::Docker);
    let small = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("small"))
        .build();
    let archive = scratch.path().join("docker.tar");
    fs::write(
        &archive,
        docker_archive(&[
            (&everything, &["example.com/lstore/everything:archive"]),
            (
                &small,
                &[
                    "example.com/lstore/small:1",
                    "example.com/lstore/small:latest",
                ],
            ),
        ]),
    )
    .unwrap();
    store.load(&archive, None);

    let name = "example.com/lstore/everything:archive";
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &everything, name, Source::DockerArchive);
    check_layer_folders(&store, &inspect);
    check_everything_whiteouts(&inspect);
    for name in [
        "example.com/lstore/small:1",
        "example.com/lstore/small:latest",
    ] {
        let inspect = store.inspect(name);
        check_inspect(&store, &inspect, &small, name, Source::DockerArchive);
    }
    assert_matches_umoci(&store, "example.com/lstore/everything:archive", &everything);
    assert_matches_umoci(&store, "example.com/lstore/small:1", &small);
}

#[test]
fn docker_archive_in_oci_style_matches_umoci() {
    // `docker save` since Docker 25: an OCI layout with uncompressed layers
    // plus manifest.json.
    let scratch = scratch();
    let store = Lstore::new();
    let mut builder = ImageBuilder::new();
    for tar in [
        scenes::everything_base(),
        scenes::everything_changes(),
        scenes::empty_layer(),
        scenes::everything_late(),
    ] {
        builder = builder.tar(&tar, Compression::None);
    }
    let image = builder.build();
    let name = "example.com/lstore/modern:25";
    let work = scratch.path().join("modern");
    let archive = scratch.path().join("modern.tar");
    fs::write(
        &archive,
        docker_archive_oci_style(&work, &[(&image, &[name])]),
    )
    .unwrap();
    store.load(&archive, None);
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    assert_matches_umoci(&store, name, &image);
}

fn is_rfc3339_of(value: &Value, want: &str) -> bool {
    // The same instant, with `Z` or an explicit zero offset.
    let Some(text) = value.as_str() else {
        return false;
    };
    let want = want.trim_end_matches('Z');
    text.starts_with(want)
        && matches!(
            &text[want.len()..],
            "Z" | "+00:00" | ".000Z" | ".000000000Z"
        )
}

#[test]
fn images_json_has_one_object_per_tag() {
    let scratch = scratch();
    let store = Lstore::new();
    assert_eq!(
        store.images(),
        Vec::<Value>::new(),
        "a new store lists no images"
    );
    let first = ImageBuilder::new()
        .layer(scenes::small_base())
        .created("2022-03-04T05:06:07Z")
        .build();
    let second = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("second"))
        .build();
    let archive = scratch.path().join("two.tar");
    fs::write(
        &archive,
        docker_archive(&[
            (
                &first,
                &["127.0.0.1:5000/team/first:a", "127.0.0.1:5000/team/first:b"],
            ),
            (&second, &["example.com/second:latest"]),
        ]),
    )
    .unwrap();
    store.load(&archive, None);
    let images = store.images();
    let fields: BTreeSet<String> = [
        "repository",
        "tag",
        "id",
        "digest",
        "repo_digest",
        "created",
        "size",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut seen = BTreeSet::new();
    for item in &images {
        let keys: BTreeSet<String> = item.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, fields, "images entry {item}");
        let repository = item["repository"].as_str().expect("repository");
        let tag = item["tag"].as_str().expect("tag");
        let (image, created) = match repository {
            "127.0.0.1:5000/team/first" => (&first, "2022-03-04T05:06:07Z"),
            "example.com/second" => (&second, common::image::CREATED),
            other => panic!("unexpected repository {other}"),
        };
        assert_eq!(item["id"], image.config_digest.as_str());
        assert!(
            is_rfc3339_of(&item["created"], created),
            "created {}",
            item["created"]
        );
        let inspect = store.inspect(&format!("{repository}:{tag}"));
        assert_eq!(item["digest"], inspect["digest"], "digest matches inspect");
        assert!(
            item["repo_digest"].is_null(),
            "a loaded name was pulled by no digest"
        );
        assert_eq!(item["size"], inspect["size"], "size matches inspect");
        seen.insert(format!("{repository}:{tag}"));
    }
    let want: BTreeSet<String> = [
        "127.0.0.1:5000/team/first:a",
        "127.0.0.1:5000/team/first:b",
        "example.com/second:latest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(seen, want);
    assert_eq!(images.len(), 3, "one object per tag: {images:?}");
}

#[test]
fn docker_hub_names_are_normalised() {
    let scratch = scratch();
    let store = Lstore::new();
    let image = ImageBuilder::new().layer(scenes::small_base()).build();
    let archive = scratch.path().join("hub.tar");
    fs::write(
        &archive,
        docker_archive(&[(&image, &["busybox:latest", "library/alpine:3"])]),
    )
    .unwrap();
    store.load(&archive, None);
    for reference in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "alpine:3",
        "docker.io/library/alpine:3",
    ] {
        assert_eq!(
            store.inspect(reference)["id"],
            image.config_digest.as_str(),
            "inspect {reference}"
        );
    }
}

#[test]
fn tag_option_names_a_single_image_archive() {
    let scratch = scratch();
    let store = Lstore::new();
    let image = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("tagged"))
        .build();
    let layout = scratch.path().join("layout");
    write_oci_layout(&layout, &[(&image, LayoutNames::none())]);
    let name = "example.com/tagged/app:v1";
    store.load(&layout, Some(name));
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);

    // A docker-archive carrying its own name: --tag names it too.
    let archive = scratch.path().join("named.tar");
    fs::write(
        &archive,
        docker_archive(&[(&image, &["example.com/original:1"])]),
    )
    .unwrap();
    let other = Lstore::new();
    other.load(&archive, Some("example.com/retagged:2"));
    assert_eq!(
        other.inspect("example.com/retagged:2")["id"],
        image.config_digest.as_str()
    );
}

#[test]
fn tag_option_is_refused_for_an_archive_of_several_images() {
    let scratch = scratch();
    let store = Lstore::new();
    let one = ImageBuilder::new().layer(scenes::small_base()).build();
    let two = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("two"))
        .build();
    let archive = scratch.path().join("two.tar");
    fs::write(
        &archive,
        docker_archive(&[
            (&one, &["example.com/one:1"]),
            (&two, &["example.com/two:1"]),
        ]),
    )
    .unwrap();
    let path = archive.to_str().unwrap();
    store.fails(&["load", "-i", path, "--tag", "example.com/which:1"]);
    assert!(
        !store.run(&["inspect", "example.com/which:1"]).success(),
        "no image got the ambiguous name"
    );
}

#[test]
fn single_layer_image_mounts_through_a_bind_mount() {
    let scratch = scratch();
    let store = Lstore::new();
    let image = ImageBuilder::new()
        .tar(&scenes::everything_base(), Compression::Zstd)
        .build();
    let name = "example.com/lstore/one-layer:1";
    load_named(&store, scratch.path(), &image, name);
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &image, name, Source::Layout);
    check_layer_folders(&store, &inspect);
    assert!(
        !store.lowerdir(name).contains(':'),
        "one layer, one lower dir"
    );
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn parent_directories_missing_from_the_tar_are_created() {
    let scratch = scratch();
    let store = Lstore::new();
    let mut t = TarBuilder::new();
    t.file("a/b/c/file", "deep\n").mode(0o640);
    t.symlink("x/y/link", "../../a/b/c/file");
    let image = ImageBuilder::new().tar(&t, Compression::Gzip).build();
    let name = "example.com/lstore/implicit:1";
    load_named(&store, scratch.path(), &image, name);
    let tree = mounted_tree(&store, name);
    for dir in ["a", "a/b", "a/b/c", "x", "x/y"] {
        assert_eq!(
            tree.get(dir).map(|n| &n.kind),
            Some(&NodeKind::Dir),
            "{dir} is a directory"
        );
    }
    let file = tree.get("a/b/c/file").expect("file");
    assert_eq!(file.mode, 0o640);
    assert_eq!(
        tree.get("x/y/link").map(|n| &n.kind),
        Some(&NodeKind::Symlink(b"../../a/b/c/file".to_vec()))
    );
}

#[test]
fn loading_the_same_archive_twice_changes_nothing() {
    let scratch = scratch();
    let store = Lstore::new();
    let name = "example.com/lstore/twice:1";
    let image = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("twice"))
        .build();
    let layout = scratch.path().join("layout");
    write_oci_layout(&layout, &[(&image, LayoutNames::containerd(name))]);
    store.load(&layout, None);
    let before = (
        store.images(),
        store.blobs(),
        store.layer_dirs(),
        store.short_links(),
    );
    let inspect_before = store.inspect(name);
    store.load(&layout, None);
    let after = (
        store.images(),
        store.blobs(),
        store.layer_dirs(),
        store.short_links(),
    );
    assert_eq!(before, after);
    assert_eq!(inspect_before, store.inspect(name));
}

#[test]
fn dot_slash_prefixed_names_are_ordinary_paths() {
    // `tar -C rootfs .` writes `./` and `./etc/...`: a root entry and
    // relative names, not an escape.
    let scratch = scratch();
    let store = Lstore::new();
    let mut t = TarBuilder::new();
    t.dir_raw("./").mode(0o755);
    t.dir("./etc").mtime(scenes::T2);
    t.file("./etc/os-release", "ID=dot\n");
    t.symlink("./etc/link", "os-release");
    let mut upper = TarBuilder::new();
    upper.dir("./etc").mtime(scenes::T2);
    upper.file("./etc/.wh.link", b"");
    upper.file("./etc/added", "added\n");
    let image = ImageBuilder::new()
        .tar(&t, Compression::Gzip)
        .tar(&upper, Compression::Gzip)
        .build();
    let name = "example.com/lstore/dot-slash:1";
    load_named(&store, scratch.path(), &image, name);
    assert_matches_umoci(&store, name, &image);
}

#[test]
fn multi_platform_index_loads_the_host_platform() {
    let scratch = scratch();
    let store = Lstore::new();
    let other_arch = if common::image::host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut foreign = TarBuilder::new();
    foreign.file("platform", format!("{other_arch}\n"));
    let foreign = ImageBuilder::new()
        .tar(&foreign, Compression::Gzip)
        .platform("linux", other_arch)
        .build();
    let mut native = TarBuilder::new();
    native.file("platform", "host\n");
    let native = ImageBuilder::new()
        .tar(&native, Compression::Gzip)
        .layer(scenes::small_base())
        .build();
    let layout = scratch.path().join("layout");
    let name = "example.com/lstore/multi:1";
    common::image::write_oci_layout_multi_platform(
        &layout,
        &[&foreign, &native],
        LayoutNames::containerd(name),
    );
    store.load(&layout, None);
    let inspect = store.inspect(name);
    check_inspect(&store, &inspect, &native, name, Source::Layout);
    assert_matches_umoci(&store, name, &native);
}

#[test]
fn whiteouts_below_a_whited_out_directory_leave_it_hidden() {
    // Some tools write `rm -rf foo` as `.wh.foo` plus whiteouts of the
    // paths below it, in either order.
    let scratch = scratch();
    let store = Lstore::new();
    let mut lower = TarBuilder::new();
    for dir in ["foo", "rev"] {
        lower.dir(dir);
        lower.file(format!("{dir}/bar"), "bar\n");
        lower.dir(format!("{dir}/sub"));
        lower.file(format!("{dir}/sub/x"), "x\n");
        lower.file(format!("{dir}/other"), "other\n");
    }
    lower.file("stays", "stays\n");
    let mut upper = TarBuilder::new();
    upper.whiteout("foo");
    upper.whiteout("foo/bar");
    upper.whiteout("foo/sub/x");
    upper.opaque("foo/sub");
    upper.whiteout("rev/bar");
    upper.whiteout("rev/sub/x");
    upper.whiteout("rev");
    let image = ImageBuilder::new()
        .tar(&lower, Compression::Gzip)
        .tar(&upper, Compression::Gzip)
        .build();
    let name = "example.com/lstore/rm-rf:1";
    load_named(&store, scratch.path(), &image, name);
    let tree = mounted_tree(&store, name);
    for hidden in ["foo", "rev"] {
        assert!(tree.get(hidden).is_none(), "{hidden} shows in the image");
    }
    assert!(tree.get("stays").is_some());
    assert_matches_umoci(&store, name, &image);
}
