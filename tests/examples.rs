//! The programs under `examples/` (the library embedded as another tool
//! would embed it), run against a local `docker-registry` and a temporary
//! store root; what they print is checked against the image and against
//! what the `lstore` binary then says of the same root.
//!
//! The examples are built by `cargo test --all-targets` (or `cargo build
//! --examples`) beside this test; it fails when they are missing.

mod common;

use common::registry::Registry;
use common::{scenes, scratch, ImageBuilder, Lstore};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built example `name` (in `target/<profile>/examples/`, next to
/// this test's `deps/` folder).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "example {name} is not built at {}: cargo test --all-targets or cargo build --examples \
         builds it",
        path.display()
    );
    path
}

struct Run {
    stdout: String,
    stderr: String,
}

/// Runs example `name` with `args`; it must succeed.
fn run_example(name: &str, args: &[&str], docker_config: &Path) -> Run {
    let output = Command::new(example(name))
        .args(args)
        // No credentials of the machine's user are read.
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let run = Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "example {name} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        run.stdout,
        run.stderr
    );
    run
}

#[test]
fn examples_pull_list_mount_and_remove_an_image() {
    let registry = Registry::start();
    let image = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("embedded"))
        .build();
    registry.upload("examples/app", "v1", &image);
    let reference = format!("{}/examples/app:v1", registry.host());
    let store = Lstore::new();
    let root = store.root().to_str().unwrap();
    let work = scratch();
    let docker_config = work.path().join("docker");

    // pull: the image arrives with both layers fetched, and the listing
    // shows it under its name.
    let pulled = run_example("pull", &[root, &reference], &docker_config);
    let lines: Vec<&str> = pulled.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("pulled {reference}"),
            format!("id {}", image.config_digest),
            format!("manifest {}", image.manifest_digest),
            "layers: 2 fetched, 0 already stored".to_string(),
            format!(
                "image {}/examples/app:v1 {} {} bytes",
                registry.host(),
                image.config_digest,
                image
                    .layers
                    .iter()
                    .map(|l| l.uncompressed_size)
                    .sum::<u64>()
            ),
        ],
        "pull printed:\n{}",
        pulled.stdout
    );
    for layer in &image.layers {
        let line = format!("{} ({} bytes): fetching", layer.digest, layer.blob.len());
        assert!(
            pulled.stderr.contains(&line),
            "progress lacks {line:?}:\n{}",
            pulled.stderr
        );
    }
    assert_eq!(pulled.stderr.matches(": stored").count(), 2);
    // The binary sees what the library stored.
    let inspect = store.inspect(&reference);
    assert_eq!(inspect["id"], image.config_digest.as_str());

    // mount: the merged view of both layers (the upper layer's whiteout
    // hides bin/alias), unmounted again afterwards.
    let target = work.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let mounted = run_example(
        "mount",
        &[root, &reference, target.to_str().unwrap()],
        &docker_config,
    );
    let files: Vec<&str> = mounted
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("file "))
        .collect();
    assert_eq!(
        files,
        [
            "app/",
            "app/embedded",
            "app/name",
            "bin/",
            "bin/tool",
            "etc/",
            "etc/os-release"
        ],
        "mount printed:\n{}",
        mounted.stdout
    );
    assert!(mounted.stdout.starts_with(&format!(
        "mounted {reference} ({}) at {}",
        image.config_digest,
        fs::canonicalize(&target).unwrap().display()
    )));
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "unmounted");
    assert_eq!(
        store.json(&["mounts", "--format", "json"]),
        serde_json::json!([])
    );

    // remove: the name, the image, its blobs and layers go; the store is
    // empty and consistent.
    let removed = run_example("remove", &[root, &reference], &docker_config);
    let lines: Vec<&str> = removed.stdout.lines().collect();
    assert_eq!(lines[0], format!("untagged {reference}"));
    assert_eq!(lines[1], format!("deleted {}", image.config_digest));
    assert!(
        lines[2].starts_with("freed ") && lines[2].ends_with(" bytes (4 blobs, 2 layers)"),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        "left: 0 images, 0 blobs (0 bytes), 0 layers (0 bytes)"
    );
    assert_eq!(store.images(), Vec::<serde_json::Value>::new());
    store.ok(&["fsck"]);
}

#[test]
fn remove_example_reports_a_name_it_cannot_remove() {
    let store = Lstore::new();
    let work = scratch();
    let output = Command::new(example("remove"))
        .args([store.root().to_str().unwrap(), "nothing:here"])
        .env("DOCKER_CONFIG", work.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: image not known: nothing:here",
        "{stderr}"
    );
}
