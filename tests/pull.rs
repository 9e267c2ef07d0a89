//! `lstore pull` end to end: the real binary against a real
//! `docker-registry` filled by skopeo (or, byte for byte, by a small upload
//! client), then `images`/`inspect`, the overlay2 folders and the root
//! filesystem seen through `lstore mount`, compared with `umoci unpack` of
//! the source image. Multi-platform indexes, OCI and Docker schema2
//! manifests, every layer compression, pulls by digest, shared layers,
//! re-pulls, moved tags, Basic auth over TLS and Bearer tokens.

mod common;

use common::checks::{check_inspect, check_layer_folders, stored_blob, umoci_twin, Source};
use common::image::{host_arch, write_oci_layout, Image};
use common::peers::umoci_unpack;
use common::registry::{
    basic_auth, bearer_gate, make_htpasswd, make_tls, write_platform_index_layout, Client, Proxy,
    Registry, RegistryConfig, TokenServer,
};
use common::scenes::{self, everything_image, noise};
use common::tree::{assert_same_tree, snapshot, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind, TarBuilder};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// The root filesystem of `reference` as `lstore mount` shows it.
fn lstore_mounted_tree(client: &Client, store: &Lstore, reference: &str) -> Tree {
    let dir = scratch();
    let target = dir.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let target_str = target.to_str().unwrap();
    client.ok(store, &["mount", reference, target_str]);
    let unmount = Unmount {
        client,
        store,
        target: target.clone(),
    };
    let tree = snapshot(&target);
    drop(unmount);
    tree
}

/// Unmounts through lstore, also when a check panicked.
struct Unmount<'a> {
    client: &'a Client,
    store: &'a Lstore,
    target: PathBuf,
}

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let out = self
            .client
            .run(self.store, &["umount", self.target.to_str().unwrap()]);
        if !out.success() {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
            if !std::thread::panicking() {
                panic!("lstore umount failed: {}", out.stderr);
            }
        }
    }
}

/// `umoci unpack` of the image (its OCI twin: umoci reads neither zstd nor
/// Docker media types).
fn umoci_tree(image: &Image) -> Tree {
    let dir = scratch();
    let layout = dir.path().join("layout");
    write_oci_layout(
        &layout,
        &[(&umoci_twin(image), LayoutNames::ref_name("twin"))],
    );
    let bundle = umoci_unpack(&layout, "twin");
    snapshot(&bundle.rootfs())
}

/// The pulled image is listed, inspected and mounted exactly as `image`.
fn check_pulled(client: &Client, store: &Lstore, reference: &str, image: &Image) {
    let inspect = store.inspect(reference);
    check_inspect(store, &inspect, image, reference, Source::Layout);
    check_layer_folders(store, &inspect);
    assert_eq!(
        stored_blob(store, &image.manifest_digest),
        image.manifest,
        "manifest kept byte for byte"
    );
    let rows: Vec<Value> = store
        .images()
        .into_iter()
        .filter(|row| row["id"] == image.config_digest.as_str())
        .collect();
    assert!(!rows.is_empty(), "{reference} not listed by images");
    assert_same_tree(
        &umoci_tree(image),
        &lstore_mounted_tree(client, store, reference),
        &format!("{reference}: lstore mount vs umoci unpack"),
    );
}

/// The `images --format json` row of `repository:tag`.
fn image_row(store: &Lstore, repository: &str, tag: &str) -> Value {
    store
        .images()
        .into_iter()
        .find(|row| row["repository"] == repository && row["tag"] == tag)
        .unwrap_or_else(|| panic!("no images row for {repository}:{tag}"))
}

/// Asserts that an `lstore pull` printed the digest and the image id.
fn assert_pull_output(stdout: &str, digest: &str, id: &str) {
    assert!(
        stdout.contains(&format!("Digest: {digest}")) && stdout.contains(id),
        "pull output lacks digest {digest} or id {id}:\n{stdout}"
    );
}

fn digests(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn two_layer_image(name: &str) -> Image {
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app(name))
        .cmd(&["/app", name])
        .build()
}

// ---------------------------------------------------------------- formats

#[test]
fn oci_manifest_with_gzip_zstd_and_uncompressed_layers() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    // Uploaded byte for byte: skopeo would gzip the uncompressed layers.
    let image = everything_image(ManifestKind::Oci);
    let compressions: Vec<_> = image.layers.iter().map(|l| l.compression).collect();
    assert_eq!(
        compressions,
        [
            Compression::Gzip,
            Compression::Zstd,
            Compression::None,
            Compression::None
        ]
    );
    registry.upload("formats/oci", "v1", &image);
    let reference = format!("{}/formats/oci:v1", registry.host());
    let out = client.ok(&store, &["pull", &reference]);
    assert_pull_output(&out.stdout, &image.manifest_digest, &image.config_digest);
    check_pulled(&client, &store, &reference, &image);
    let row = image_row(&store, &format!("{}/formats/oci", registry.host()), "v1");
    assert_eq!(row["id"], image.config_digest.as_str());
    assert_eq!(row["digest"], image.manifest_digest.as_str());

    // zstd layers pushed by skopeo (as OCI: skopeo 1.9 cannot put zstd in
    // Docker schema2).
    let mut zstd_base = TarBuilder::new();
    zstd_base.dir("opt");
    zstd_base.file("opt/blob", noise(300_000, 5)).mode(0o640);
    zstd_base.symlink("opt/link", "blob");
    let mut zstd_top = TarBuilder::new();
    zstd_top.dir("opt");
    zstd_top.whiteout("opt/link");
    zstd_top.file("opt/new", "zstd\n");
    let zstd_image = ImageBuilder::new()
        .tar(&zstd_base, Compression::Zstd)
        .tar(&zstd_top, Compression::Zstd)
        .build();
    let work = scratch();
    registry.push_image(work.path(), &zstd_image, "formats/zstd:v1", &[]);
    let (_, media_type, digest) = registry.manifest("formats/zstd", "v1");
    assert_eq!(media_type, common::image::OCI_MANIFEST);
    assert_eq!(
        digest, zstd_image.manifest_digest,
        "skopeo kept the manifest"
    );
    let reference = format!("{}/formats/zstd:v1", registry.host());
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &zstd_image);
}

#[test]
fn docker_schema2_manifests() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let work = scratch();

    // Every entry kind, gzip layers (skopeo reads no Docker manifest from
    // an OCI layout's index, so it is uploaded as it is).
    let image = everything_image(ManifestKind::Docker);
    registry.upload("formats/docker", "v1", &image);
    let (_, media_type, digest) = registry.manifest("formats/docker", "v1");
    assert_eq!(media_type, common::image::DOCKER_MANIFEST);
    assert_eq!(digest, image.manifest_digest);
    let reference = format!("{}/formats/docker:v1", registry.host());
    let out = client.ok(&store, &["pull", &reference]);
    assert_pull_output(&out.stdout, &image.manifest_digest, &image.config_digest);
    check_pulled(&client, &store, &reference, &image);

    // skopeo's own conversion of an OCI image (--format v2s2).
    let oci = two_layer_image("converted");
    registry.push_image(
        work.path(),
        &oci,
        "formats/converted:v1",
        &["--format", "v2s2"],
    );
    let (manifest, media_type, digest) = registry.manifest("formats/converted", "v1");
    assert_eq!(media_type, common::image::DOCKER_MANIFEST);
    let reference = format!("{}/formats/converted:v1", registry.host());
    client.pull(&store, &reference, &[]);
    let inspect = store.inspect(&reference);
    assert_eq!(inspect["id"], oci.config_digest.as_str());
    assert_eq!(inspect["digest"], digest.as_str());
    let served: Value = serde_json::from_slice(&manifest).unwrap();
    for (i, layer) in inspect["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(layer["digest"], served["layers"][i]["digest"]);
        assert_eq!(layer["media_type"], served["layers"][i]["mediaType"]);
    }
    assert_same_tree(
        &umoci_tree(&oci),
        &lstore_mounted_tree(&client, &store, &reference),
        "v2s2 conversion: lstore mount vs umoci unpack",
    );

    // Uncompressed and zstd layers under Docker media types, uploaded as
    // they are (skopeo would compress or refuse them).
    let mut builder = ImageBuilder::new().kind(ManifestKind::Docker);
    for (tar, compression) in [
        (scenes::everything_base(), Compression::None),
        (scenes::everything_changes(), Compression::Zstd),
        (scenes::everything_late(), Compression::None),
    ] {
        builder = builder.tar(&tar, compression);
    }
    let raw = builder.build();
    registry.upload("formats/docker-raw", "v1", &raw);
    let reference = format!("{}/formats/docker-raw:v1", registry.host());
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &raw);
}

#[test]
fn pull_by_digest() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let image = two_layer_image("pinned");
    let work = scratch();
    registry.push_image(work.path(), &image, "pinned/app:v1", &[]);
    let repo = format!("{}/pinned/app", registry.host());
    let reference = format!("{repo}@{}", image.manifest_digest);
    let out = client.ok(&store, &["pull", &reference]);
    assert_pull_output(&out.stdout, &image.manifest_digest, &image.config_digest);
    let inspect = store.inspect(&reference);
    assert_eq!(inspect["id"], image.config_digest.as_str());
    assert_eq!(inspect["digest"], image.manifest_digest.as_str());
    let rows = store.images();
    assert_eq!(rows.len(), 1, "one image: {rows:?}");
    assert_eq!(rows[0]["id"], image.config_digest.as_str());
    assert_eq!(rows[0]["digest"], image.manifest_digest.as_str());
    // Kept as `repo@digest`: listed under its repository, with no tag.
    assert_eq!(rows[0]["repository"], repo.as_str(), "{rows:?}");
    assert!(
        rows[0]["tag"].is_null(),
        "a pinned pull names no tag: {rows:?}"
    );
    assert_same_tree(
        &umoci_tree(&image),
        &lstore_mounted_tree(&client, &store, &reference),
        "pinned pull: lstore mount vs umoci unpack",
    );
    // Pulled again by digest: nothing to fetch.
    let again = client.ok(&store, &["pull", &reference]);
    assert!(again.stdout.contains("up to date"), "{}", again.stdout);

    // A digest the registry does not have.
    let missing = format!("{repo}@sha256:{}", "0".repeat(64));
    let err = client.fails(&store, &["pull", &missing]);
    assert!(err.contains("not found"), "{err}");
}

// --------------------------------------------------------- multi-platform

#[test]
fn multi_platform_index_picks_the_platform() {
    let registry = Registry::start();
    let client = Client::new();
    let amd64 = ImageBuilder::new()
        .platform("linux", "amd64")
        .layer(scenes::small_base())
        .layer(scenes::small_app("amd64"))
        .build();
    // Nothing runs the arm64 image: any small layers do.
    let arm64 = ImageBuilder::new()
        .platform("linux", "arm64")
        .layer(scenes::small_base())
        .layer(scenes::small_app("arm64-v8"))
        .build();
    let work = scratch();
    let layout = work.path().join("layout");
    write_platform_index_layout(&layout, &[(&amd64, None), (&arm64, Some("v8"))], "multi");
    registry.push_layout(&layout, "multi", "multi/app:1", &["--all"]);
    let (_, media_type, index_digest) = registry.manifest("multi/app", "1");
    assert_eq!(media_type, common::image::OCI_INDEX);
    let reference = format!("{}/multi/app:1", registry.host());

    // No --platform: this host's.
    let native = match host_arch() {
        "arm64" => &arm64,
        _ => &amd64,
    };
    let store = Lstore::new();
    let out = client.ok(&store, &["pull", &reference]);
    assert_pull_output(&out.stdout, &index_digest, &native.config_digest);
    check_pulled(&client, &store, &reference, native);
    // The index is kept as distributed, beside the chosen manifest.
    stored_blob(&store, &index_digest);

    // arm64/v8 and arm64 both name the arm64/v8 entry.
    for platform in ["linux/arm64/v8", "linux/arm64"] {
        let store = Lstore::new();
        client.pull(&store, &reference, &["--platform", platform]);
        check_pulled(&client, &store, &reference, &arm64);
    }

    // The same tag for another platform in a store that has the host's:
    // the tag follows the platform asked for, as with `docker pull`.
    let other = if std::ptr::eq(native, &amd64) {
        (&arm64, "linux/arm64/v8")
    } else {
        (&amd64, "linux/amd64")
    };
    let out = client.ok(&store, &["pull", "--platform", other.1, &reference]);
    assert!(
        !out.stdout.contains("up to date"),
        "pull --platform {} after the host's platform must not be \"up to date\":\n{}",
        other.1,
        out.stdout
    );
    let inspect = store.inspect(&reference);
    assert_eq!(
        inspect["id"],
        other.0.config_digest.as_str(),
        "--platform {} re-points the tag",
        other.1
    );
    // The host's image stays, untagged, until gc.
    let rows = store.images();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .any(|row| row["id"] == native.config_digest.as_str() && row["tag"].is_null()));
    // And asking for it again is not "up to date" either.
    let out = client.ok(&store, &["pull", &reference]);
    assert!(!out.stdout.contains("up to date"), "{}", out.stdout);
    assert_eq!(
        store.inspect(&reference)["id"],
        native.config_digest.as_str()
    );

    // A platform the index does not offer: one line naming what it offers.
    let err = client.fails(&store, &["pull", "--platform", "linux/s390x", &reference]);
    for word in ["linux/s390x", "linux/amd64", "linux/arm64/v8"] {
        assert!(err.contains(word), "error lacks {word}: {err}");
    }
}

#[test]
fn docker_manifest_list_picks_the_platform() {
    let registry = Registry::start();
    let client = Client::new();
    let amd64 = ImageBuilder::new()
        .kind(ManifestKind::Docker)
        .platform("linux", "amd64")
        .layer(scenes::small_base())
        .layer(scenes::small_app("list-amd64"))
        .build();
    let arm64 = ImageBuilder::new()
        .kind(ManifestKind::Docker)
        .platform("linux", "arm64")
        .layer(scenes::small_base())
        .layer(scenes::small_app("list-arm64"))
        .build();
    let mut entries = Vec::new();
    for (image, variant) in [(&amd64, None), (&arm64, Some("v8"))] {
        registry.upload("list/app", &image.manifest_digest, image);
        let mut platform = serde_json::json!({"os": "linux", "architecture": image.architecture});
        if let Some(variant) = variant {
            platform["variant"] = variant.into();
        }
        entries.push(serde_json::json!({
            "mediaType": common::image::DOCKER_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": platform,
        }));
    }
    let list_type = "application/vnd.docker.distribution.manifest.list.v2+json";
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": list_type,
        "manifests": entries,
    }))
    .unwrap();
    registry.put_manifest("list/app", "1", list_type, &list);
    let reference = format!("{}/list/app:1", registry.host());
    let native = match host_arch() {
        "arm64" => &arm64,
        _ => &amd64,
    };
    let store = Lstore::new();
    let out = client.ok(&store, &["pull", &reference]);
    assert_pull_output(
        &out.stdout,
        &common::tarball::sha256_digest(&list),
        &native.config_digest,
    );
    check_pulled(&client, &store, &reference, native);
    let store = Lstore::new();
    client.pull(&store, &reference, &["--platform", "linux/arm64/v8"]);
    check_pulled(&client, &store, &reference, &arm64);
}

/// Uploads `images` byte for byte and puts an OCI index of them (each
/// under its own platform) at `repo:tag`; `note` tells apart indexes of
/// the same images. Returns the index digest.
fn put_platform_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    images: &[&Image],
    note: &str,
) -> String {
    let mut manifests = Vec::new();
    for image in images {
        registry.upload(repo, &image.manifest_digest, image);
        manifests.push(serde_json::json!({
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": {"os": image.os, "architecture": image.architecture},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::image::OCI_INDEX,
        "manifests": manifests,
        "annotations": {"note": note},
    }))
    .unwrap();
    registry.put_manifest(repo, tag, common::image::OCI_INDEX, &index);
    common::tarball::sha256_digest(&index)
}

#[test]
fn commands_that_reuse_stored_parts_leave_no_unrecorded_blob() {
    // Every blob a finished command writes is recorded (fsck: no leftover)
    // when it reuses what the store has: an index whose host manifest is
    // an image pulled before, digest pulls, re-tags, a second index of the
    // same image, an archive holding an index, a saved image loaded back.
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let debian = two_layer_image("debian");
    let foreign = ImageBuilder::new()
        .platform("linux", other_arch)
        .layer(scenes::small_base())
        .layer(scenes::small_app("foreign"))
        .build();
    let reg = registry.host();
    registry.upload("reuse/debian", "bookworm", &debian);
    let index = put_platform_index(
        &registry,
        "reuse/multi",
        "latest",
        &[&debian, &foreign],
        "1",
    );
    put_platform_index(
        &registry,
        "reuse/multi2",
        "latest",
        &[&debian, &foreign],
        "2",
    );
    let work = scratch();
    let layout = work.path().join("layout");
    common::image::write_oci_layout_multi_platform(
        &layout,
        &[&foreign, &debian],
        LayoutNames::containerd("example.com/reuse/loaded:1"),
    );
    let multi = format!("{reg}/reuse/multi:latest");
    let saved = work.path().join("saved.tar").to_str().unwrap().to_string();
    let steps: Vec<Vec<String>> = vec![
        vec!["pull".into(), format!("{reg}/reuse/debian:bookworm")],
        vec!["pull".into(), multi.clone()],
        vec!["pull".into(), format!("{reg}/reuse/multi@{index}")],
        vec![
            "pull".into(),
            format!("{reg}/reuse/debian@{}", debian.manifest_digest),
        ],
        vec!["tag".into(), multi.clone(), format!("{reg}/reuse/copy:1")],
        vec!["pull".into(), format!("{reg}/reuse/multi2:latest")],
        vec!["load".into(), "-i".into(), layout.to_str().unwrap().into()],
        vec!["save".into(), "-o".into(), saved.clone(), multi.clone()],
        vec!["load".into(), "-i".into(), saved.clone()],
        vec![
            "pull".into(),
            "--platform".into(),
            format!("linux/{other_arch}"),
            multi.clone(),
        ],
        vec!["pull".into(), multi.clone()],
    ];
    for step in &steps {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        client.ok(&store, &args);
        let fsck = client.run(&store, &["fsck"]);
        assert!(
            fsck.success(),
            "after lstore {}: fsck: {}{}",
            args.join(" "),
            fsck.stdout,
            fsck.stderr
        );
    }
    // The index the tag was pulled through is kept and names the image.
    stored_blob(&store, &index);
    let by_index = store.inspect(&format!("{reg}/reuse/multi@{index}"));
    assert_eq!(by_index["id"], debian.config_digest.as_str());
    check_pulled(&client, &store, &multi, &debian);

    // Removing every name frees everything, the index included.
    let mut names: Vec<String> = store.listed_references();
    names.push(format!("{reg}/reuse/multi@{index}"));
    names.push(format!("{reg}/reuse/debian@{}", debian.manifest_digest));
    let mut args = vec!["rmi"];
    args.extend(names.iter().map(String::as_str));
    client.ok(&store, &args);
    client.ok(&store, &["gc"]);
    assert_eq!(store.blobs(), Vec::<String>::new());
    let fsck = client.run(&store, &["fsck"]);
    assert!(fsck.success(), "{}{}", fsck.stdout, fsck.stderr);
}

#[test]
fn single_layer_image_with_a_whiteout_mounts_as_umoci_unpacks() {
    // A whiteout in a base layer hides nothing, so it is not extracted:
    // the read-only bind mount `lstore mount` uses for a one-layer image
    // must not show it as a character device 0:0.
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let image = ImageBuilder::new()
        .layer(scenes::small_app("single"))
        .build();
    registry.upload("single/app", "1", &image);
    let reference = format!("{}/single/app:1", registry.host());
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &image);
}

// ---------------------------------------------- sharing, re-pull, moved tag

#[test]
fn shared_base_is_fetched_once_and_repull_costs_one_request() {
    let registry = Registry::start();
    let proxy = Proxy::pass(&registry.host());
    let client = Client::new();
    let store = Lstore::new();
    let work = scratch();
    let app = two_layer_image("app");
    let tool = two_layer_image("tool");
    assert_eq!(app.layers[0].digest, tool.layers[0].digest, "shared base");
    registry.push_image(work.path(), &app, "shared/app:1", &[]);
    registry.push_image(work.path(), &tool, "shared/tool:1", &[]);
    let app_ref = format!("{}/shared/app:1", proxy.host());
    let tool_ref = format!("{}/shared/tool:1", proxy.host());

    client.pull(&store, &app_ref, &[]);
    assert_eq!(
        proxy.blob_gets().iter().cloned().collect::<BTreeSet<_>>(),
        digests(&[
            &app.config_digest,
            &app.layers[0].digest,
            &app.layers[1].digest
        ]),
        "first pull: config and both layers"
    );
    assert_eq!(proxy.blob_gets().len(), 3, "each blob fetched once");

    proxy.clear();
    let out = client.ok(&store, &["pull", "--format", "json", &tool_ref]);
    let pulled: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(pulled["layers_new"], 1, "{pulled}");
    assert_eq!(pulled["layers_reused"], 1, "{pulled}");
    let fetched = proxy.blob_gets();
    assert_eq!(
        fetched.iter().cloned().collect::<BTreeSet<_>>(),
        digests(&[&tool.config_digest, &tool.layers[1].digest]),
        "second pull: only the unique blobs"
    );
    assert!(!fetched.contains(&app.layers[0].digest));
    assert_eq!(fetched.len(), 2);
    check_pulled(&client, &store, &tool_ref, &tool);
    check_pulled(&client, &store, &app_ref, &app);
    assert_eq!(store.layer_dirs().len(), 3, "base + app + tool layers");

    // A tag that still names the image: one manifest request, no blob.
    proxy.clear();
    let out = client.ok(&store, &["pull", &app_ref]);
    assert!(out.stdout.contains("up to date"), "{}", out.stdout);
    let repo_requests: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|s| s.path() != "/v2/" && s.path() != "/v2")
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert_eq!(
        repo_requests,
        ["GET /v2/shared/app/manifests/1".to_string()],
        "re-pull of a present tag"
    );
    assert_eq!(proxy.manifest_gets(), 1);
    assert!(proxy.blob_gets().is_empty());
    let out = client.ok(&store, &["pull", "--format", "json", &app_ref]);
    let pulled: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(pulled["up_to_date"], true, "{pulled}");
    assert_eq!(pulled["bytes_fetched"], 0, "{pulled}");
}

#[test]
fn moved_tag_repoints_and_old_image_waits_for_gc() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let work = scratch();
    let v1 = two_layer_image("release-1");
    let v2 = two_layer_image("release-2");
    registry.push_image(work.path(), &v1, "moving/app:latest", &[]);
    let reference = format!("{}/moving/app:latest", registry.host());
    let repository = format!("{}/moving/app", registry.host());
    client.pull(&store, &reference, &[]);
    assert_eq!(
        image_row(&store, &repository, "latest")["id"],
        v1.config_digest.as_str()
    );

    registry.push_image(work.path(), &v2, "moving/app:latest", &[]);
    let out = client.ok(&store, &["pull", &reference]);
    assert!(!out.stdout.contains("up to date"), "{}", out.stdout);
    assert_pull_output(&out.stdout, &v2.manifest_digest, &v2.config_digest);
    assert_eq!(
        image_row(&store, &repository, "latest")["id"],
        v2.config_digest.as_str()
    );
    let rows = store.images();
    assert_eq!(rows.len(), 2, "new tag + untagged old image: {rows:?}");
    let old = rows
        .iter()
        .find(|row| row["id"] == v1.config_digest.as_str())
        .expect("old image still listed");
    assert!(old["repository"].is_null() && old["tag"].is_null(), "{old}");
    // Still whole: inspect by id and mount.
    let v1_id = v1.config_digest.as_str();
    assert_eq!(store.inspect(v1_id)["id"], v1_id);
    assert_same_tree(
        &umoci_tree(&v1),
        &lstore_mounted_tree(&client, &store, v1_id),
        "untagged old image",
    );
    assert_eq!(store.layer_dirs().len(), 3);

    // gc removes it and what only it used.
    store.ok(&["gc"]);
    let rows = store.images();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], v2.config_digest.as_str());
    let chains: BTreeSet<String> = v2
        .chain_ids()
        .iter()
        .map(|c| c.trim_start_matches("sha256:").to_string())
        .collect();
    assert_eq!(
        store.layer_dirs().into_iter().collect::<BTreeSet<_>>(),
        chains
    );
    assert!(!store.blobs().contains(
        &v1.layers[1]
            .digest
            .trim_start_matches("sha256:")
            .to_string()
    ));
    check_pulled(&client, &store, &reference, &v2);
}

// ------------------------------------------------------------------ auth

#[test]
fn basic_auth_over_tls_with_login() {
    let dir = scratch();
    let tls = make_tls(dir.path());
    let htpasswd = make_htpasswd(dir.path(), "tester", "s3cret pass");
    let registry = Registry::start_with(RegistryConfig {
        tls: Some(tls.clone()),
        htpasswd: Some(htpasswd),
    });
    let image = two_layer_image("private");
    registry.push_image(
        dir.path(),
        &image,
        "private/app:1",
        &["--dest-creds", "tester:s3cret pass"],
    );
    let host = registry.host();
    let reference = format!("{host}/private/app:1");
    let ca = tls.ca.to_str().unwrap();
    let mut client = Client::new();
    let store = Lstore::new();

    // The CA is not trusted without --ca-file: refused, not bypassed.
    let err = client.fails(&store, &["pull", &reference]);
    assert!(err.contains("certificate"), "{err}");
    // Trusted, but no credentials.
    let err = client.fails(&store, &["pull", "--ca-file", ca, &reference]);
    assert!(err.contains("authentication required"), "{err}");
    assert!(store.images().is_empty());

    // A wrong password is refused and nothing is written.
    let out = client.run_with_input(
        &store,
        &[
            "login",
            &host,
            "-u",
            "tester",
            "--password-stdin",
            "--ca-file",
            ca,
        ],
        "wrong\n",
    );
    assert!(!out.success(), "login with a wrong password succeeded");
    common::lstore::assert_one_line_error("login", &out);
    assert!(out.stderr.contains("login failed"), "{}", out.stderr);
    assert!(!client.docker_config().join("config.json").exists());

    let out = client.run_with_input(
        &store,
        &[
            "login",
            &host,
            "-u",
            "tester",
            "--password-stdin",
            "--ca-file",
            ca,
        ],
        "s3cret pass\n",
    );
    assert!(out.success(), "login failed: {}", out.stderr);
    assert!(out.stdout.contains("Login Succeeded"), "{}", out.stdout);
    let config: Value =
        serde_json::from_slice(&fs::read(client.docker_config().join("config.json")).unwrap())
            .unwrap();
    assert!(config["auths"][&host]["auth"].is_string(), "{config}");

    client.pull(&store, &reference, &["--ca-file", ca]);
    check_pulled(&client, &store, &reference, &image);

    // SSL_CERT_FILE instead of --ca-file.
    client.set_env("SSL_CERT_FILE", ca);
    let other = Lstore::new();
    client.pull(&other, &reference, &[]);
    assert_eq!(
        other.inspect(&reference)["id"],
        image.config_digest.as_str()
    );
    client.unset_env("SSL_CERT_FILE");

    // Logged out: refused again.
    client.ok(&store, &["logout", &host]);
    let fresh = Lstore::new();
    let err = client.fails(&fresh, &["pull", "--ca-file", ca, &reference]);
    assert!(err.contains("authentication required"), "{err}");
}

#[test]
fn bearer_token_auth() {
    let registry = Registry::start();
    let image = two_layer_image("bearer");
    let work = scratch();
    registry.push_image(work.path(), &image, "bearer/app:1", &[]);
    let token = "test-token-4711";
    let tokens = TokenServer::start(Some(("tester", "s3cret")), token);
    let proxy = Proxy::start(
        &registry.host(),
        bearer_gate(tokens.realm(), "lstore-test", token.into()),
    );
    let host = proxy.host();
    let reference = format!("{host}/bearer/app:1");
    let client = Client::new();
    let store = Lstore::new();

    let err = client.fails(&store, &["pull", &reference]);
    assert!(err.contains("authentication required"), "{err}");
    assert!(store.images().is_empty());

    let out = client.run_with_input(
        &store,
        &["login", &host, "-u", "tester", "--password-stdin"],
        "nope\n",
    );
    assert!(!out.success(), "login with a wrong password succeeded");
    common::lstore::assert_one_line_error("login", &out);
    assert!(out.stderr.contains("login failed"), "{}", out.stderr);
    // Checked against the token server, with the credentials given.
    assert!(tokens
        .seen()
        .iter()
        .any(|s| s.header("authorization") == Some(basic_auth("tester", "nope").as_str())));
    let out = client.run_with_input(
        &store,
        &["login", &host, "-u", "tester", "--password-stdin"],
        "s3cret\n",
    );
    assert!(out.success(), "login failed: {}", out.stderr);

    proxy.clear();
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &image);
    let scopes: Vec<String> = tokens
        .seen()
        .iter()
        .flat_map(|s| s.query("scope"))
        .collect();
    assert!(
        scopes.iter().any(|s| s == "repository:bearer/app:pull"),
        "token requests asked for {scopes:?}"
    );
    assert!(tokens
        .seen()
        .iter()
        .all(|s| s.query("service") == ["lstore-test"]));
    let blob_gets: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.blob_get().is_some())
        .collect();
    assert_eq!(blob_gets.len(), 3, "config and two layers");
    for seen in &blob_gets {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{} {}",
            seen.method,
            seen.target
        );
    }
}

#[test]
fn anonymous_bearer_token() {
    // Docker Hub style: a token for anyone, still required by the registry.
    let registry = Registry::start();
    let image = two_layer_image("public");
    let work = scratch();
    registry.push_image(work.path(), &image, "library/public:1", &[]);
    let token = "anonymous-token";
    let tokens = TokenServer::start(None, token);
    let proxy = Proxy::start(
        &registry.host(),
        bearer_gate(tokens.realm(), "lstore-test", token.into()),
    );
    let client = Client::new();
    let store = Lstore::new();
    let reference = format!("{}/library/public:1", proxy.host());
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &image);
    assert!(!tokens.seen().is_empty());
    assert!(tokens
        .seen()
        .iter()
        .all(|s| s.header("authorization").is_none()));
}

#[test]
fn blob_redirect_to_storage_drops_credentials() {
    // As Docker Hub does: blobs answered with a redirect to storage on
    // another host, which must not see the registry's token.
    let registry = Registry::start();
    let image = two_layer_image("redirected");
    let work = scratch();
    registry.push_image(work.path(), &image, "cdn/app:1", &[]);
    let storage = Proxy::pass(&registry.host());
    let token = "redirect-token";
    let tokens = TokenServer::start(None, token);
    let gate = bearer_gate(tokens.realm(), "lstore-test", token.into());
    let storage_host = storage.host();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        let fault = gate(seen);
        if !matches!(fault, common::registry::Fault::Pass) || seen.blob_get().is_none() {
            return fault;
        }
        common::registry::Fault::Respond {
            status: 307,
            headers: vec![(
                "Location".into(),
                format!("http://{storage_host}{}", seen.target),
            )],
            body: Vec::new(),
        }
    });
    let client = Client::new();
    let store = Lstore::new();
    let reference = format!("{}/cdn/app:1", proxy.host());
    client.pull(&store, &reference, &[]);
    check_pulled(&client, &store, &reference, &image);
    let fetched = storage.seen();
    assert_eq!(
        fetched.iter().filter(|s| s.blob_get().is_some()).count(),
        3,
        "config and both layers come from storage"
    );
    for seen in &fetched {
        assert_eq!(
            seen.header("authorization"),
            None,
            "credentials leaked to storage: {} {}",
            seen.method,
            seen.target
        );
    }
}

// ------------------------------------------------------------------ output

/// `pull -q` prints the pulled reference and nothing else, as `docker pull
/// -q` does: for a first pull, a pull that finds the image up to date, and
/// a pull by digest.
#[test]
fn quiet_pull_prints_only_the_reference() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let image = two_layer_image("quiet");
    registry.upload("quiet/app", "v1", &image);
    let reference = format!("{}/quiet/app:v1", registry.host());
    let pinned = format!("{}/quiet/app@{}", registry.host(), image.manifest_digest);
    for (what, word) in [
        ("first pull", &reference),
        ("up-to-date pull", &reference),
        ("pull by digest", &pinned),
    ] {
        let out = client.pull(&store, word, &[]);
        assert_eq!(out.stdout, format!("{word}\n"), "{what}: stdout of pull -q");
    }
    assert_eq!(
        store.inspect(&reference)["id"],
        image.config_digest.as_str()
    );
}

/// `--platform` of a single-platform image that is for another platform
/// fails, as containerd does, naming both; nothing is stored. The same
/// holds when the image is already stored under that tag.
#[test]
fn platform_of_a_single_platform_image_is_checked() {
    let registry = Registry::start();
    let client = Client::new();
    let store = Lstore::new();
    let image = ImageBuilder::new()
        .platform("linux", "amd64")
        .layer(scenes::small_base())
        .build();
    registry.upload("single/app", "v1", &image);
    let reference = format!("{}/single/app:v1", registry.host());

    let err = client.fails(&store, &["pull", "--platform", "linux/arm64", &reference]);
    for word in ["linux/arm64", "linux/amd64"] {
        assert!(err.contains(word), "error lacks {word}: {err}");
    }
    assert!(store.images().is_empty(), "nothing stored");
    assert!(store.blobs().is_empty() && store.layer_dirs().is_empty());

    client.pull(&store, &reference, &["--platform", "linux/amd64"]);
    assert_eq!(
        store.inspect(&reference)["id"],
        image.config_digest.as_str()
    );
    let err = client.fails(&store, &["pull", "--platform", "linux/arm64", &reference]);
    assert!(err.contains("linux/arm64"), "{err}");
}

/// `images` and `inspect` give the same `digest`, the manifest's, also for
/// an image pulled through an index and after save and load; the digest a
/// name was pulled by (the index) is `repo_digest` in `images` and
/// `repo_digests` in `inspect`, as Docker's RepoDigests.
#[test]
fn digests_of_an_image_pulled_through_an_index() {
    let registry = Registry::start();
    let client = Client::new();
    let native = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("native"))
        .build();
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let other = ImageBuilder::new()
        .platform("linux", other_arch)
        .layer(scenes::small_app("other"))
        .build();
    let work = scratch();
    let layout = work.path().join("layout");
    write_platform_index_layout(&layout, &[(&native, None), (&other, None)], "multi");
    registry.push_layout(&layout, "multi", "digests/app:1", &["--all"]);
    let (_, _, index_digest) = registry.manifest("digests/app", "1");
    let repository = format!("{}/digests/app", registry.host());
    let reference = format!("{repository}:1");

    let store = Lstore::new();
    client.pull(&store, &reference, &[]);
    let row = image_row(&store, &repository, "1");
    let inspect = store.inspect(&reference);
    assert_eq!(row["digest"], native.manifest_digest.as_str(), "{row}");
    assert_eq!(inspect["digest"], native.manifest_digest.as_str());
    assert_eq!(row["repo_digest"], index_digest.as_str(), "{row}");
    assert_eq!(
        inspect["repo_digests"],
        serde_json::json!([format!("{repository}@{index_digest}")])
    );
    assert_eq!(inspect["index"], index_digest.as_str());
    // Either digest finds it.
    for pinned in [&index_digest, &native.manifest_digest] {
        let word = format!("{repository}@{pinned}");
        assert_eq!(store.inspect(&word)["id"], native.config_digest.as_str());
    }

    // Saved and loaded elsewhere: the same manifest, no registry digest.
    let saved = work.path().join("saved.tar");
    store.ok(&["save", "-o", saved.to_str().unwrap(), &reference]);
    let elsewhere = Lstore::new();
    elsewhere.load(&saved, None);
    let row = image_row(&elsewhere, &repository, "1");
    let inspect = elsewhere.inspect(&reference);
    assert_eq!(row["digest"], native.manifest_digest.as_str(), "{row}");
    assert_eq!(inspect["digest"], native.manifest_digest.as_str());
    assert!(row["repo_digest"].is_null(), "{row}");
    assert_eq!(inspect["repo_digests"], serde_json::json!([]));
}
