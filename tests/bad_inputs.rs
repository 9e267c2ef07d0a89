//! A catalogue of bad inputs: command lines, archives and registry
//! answers. Each must end in one `error: …` line (the last of stderr), a
//! non-zero exit status that is not a panic, and a store that lost nothing
//! (an image loaded before stays intact) and kept nothing of the failure.
//!
//! Every command runs with `HTTP(S)_PROXY` pointed at a closed loopback
//! port, so a reference that would reach past loopback fails at once
//! instead of leaving the machine.

mod common;

use common::checks::mounted_tree;
use common::image::{blob_path, write_oci_layout, Image, OCI_INDEX, OCI_MANIFEST};
use common::lstore::{assert_one_line_error, Output};
use common::scenes::{noise, small_app, small_base};
use common::tarball::sha256_digest;
use common::tree::{assert_same_tree, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;

/// Nothing listens here: the proxy that catches any non-loopback request.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

const KEPT: &str = "example.com/bad-inputs/kept:1";

/// A store holding one image, and what it looked like.
struct Fixture {
    store: Lstore,
    scratch: TempDir,
    kept: Image,
    kept_tree: Tree,
    files: (Vec<String>, Vec<String>, Vec<String>),
    refused: AtomicUsize,
}

impl Fixture {
    fn new() -> Fixture {
        let scratch = scratch();
        let store = Lstore::new();
        let kept = ImageBuilder::new()
            .layer(small_base())
            .layer(small_app("kept"))
            .build();
        let layout = scratch.path().join("kept");
        write_oci_layout(&layout, &[(&kept, LayoutNames::containerd(KEPT))]);
        store.load(&layout, None);
        let kept_tree = mounted_tree(&store, KEPT);
        let files = Fixture::files_of(&store);
        Fixture {
            store,
            scratch,
            kept,
            kept_tree,
            files,
            refused: AtomicUsize::new(0),
        }
    }

    fn files_of(store: &Lstore) -> (Vec<String>, Vec<String>, Vec<String>) {
        (store.blobs(), store.layer_dirs(), store.short_links())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Runs `lstore ARGS` with `env`, which must fail cleanly and change
    /// nothing. Returns the error line.
    fn refused<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> String {
        let shown = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = self.store.command(args);
        command
            .env("HTTPS_PROXY", DEAD_PROXY)
            .env("HTTP_PROXY", DEAD_PROXY)
            .env("https_proxy", DEAD_PROXY)
            .env("http_proxy", DEAD_PROXY)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = run_with_deadline(command, &shown);
        assert!(
            !out.success(),
            "lstore {shown} succeeded:\nstdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.status.code().is_some(),
            "lstore {shown} was killed by a signal ({}): {}",
            out.status,
            out.stderr
        );
        assert!(
            out.status.code() != Some(101) && !out.stderr.contains("panicked"),
            "lstore {shown} panicked: {}",
            out.stderr
        );
        assert_one_line_error(&shown, &out);
        assert_eq!(
            Fixture::files_of(&self.store),
            self.files,
            "lstore {shown} changed the store's files"
        );
        // A pull broken by the network keeps its partial blob for the next
        // pull to resume (README; gc removes it); nothing else may stay.
        let unfinished: Vec<String> = self
            .store
            .unfinished()
            .into_iter()
            .filter(|e| !(shown.starts_with("pull") && e.contains(".partial-")))
            .collect();
        assert_eq!(
            unfinished,
            Vec::<String>::new(),
            "lstore {shown} left unfinished work"
        );
        self.refused.fetch_add(1, Ordering::Relaxed);
        let line = out
            .stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        eprintln!("{shown:.120}\n    -> {line:.200}");
        line
    }

    fn refused_load(&self, path: &Path) -> String {
        self.refused(&["load", "-q", "-i", path.to_str().expect("utf-8")], &[])
    }

    /// The image loaded first is listed, complete and unchanged; fsck is
    /// clean.
    fn assert_intact(&self) {
        let inspect = self.store.inspect(KEPT);
        assert_eq!(inspect["id"], self.kept.config_digest.as_str());
        assert_same_tree(&self.kept_tree, &mounted_tree(&self.store, KEPT), KEPT);
        let fsck = self.store.run(&["fsck"]);
        assert!(fsck.success(), "fsck: {}{}", fsck.stdout, fsck.stderr);
        eprintln!(
            "{} bad inputs refused cleanly",
            self.refused.load(Ordering::Relaxed)
        );
    }
}

/// Runs a command, failing the test (not hanging it) when it takes more
/// than a minute: a hang is one of the ways bad input can go wrong.
fn run_with_deadline(mut command: std::process::Command, shown: &str) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn lstore");
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lstore {shown} hangs (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

fn hex64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

// -------------------------------------------------------- command lines

#[test]
fn bad_command_lines() {
    let fx = Fixture::new();
    let layout = fx.path("kept");
    let layout = layout.to_str().expect("utf-8");
    let long_name = "a".repeat(300);
    let long_path = format!("example.com/{}:1", "b".repeat(250));
    let long_tag = format!("example.com/x:{}", "t".repeat(129));
    let digest_63 = format!("sha256:{}", "a".repeat(63));
    let digest_65 = format!("sha256:{}", "a".repeat(65));
    let pinned_short = format!("example.com/x@sha256:{}", "ab".repeat(16));
    let pinned_upper = format!("example.com/x@sha256:{}", hex64('A'));
    let pinned_md5 = format!("example.com/x@md5:{}", "a".repeat(32));
    let unknown_id = format!("sha256:{}", hex64('e'));
    let not_a_dir = fx.path("not-a-dir");
    fs::write(&not_a_dir, "x").expect("file");
    let not_a_dir = not_a_dir.to_str().expect("utf-8");
    let missing_dir = fx.path("missing/out.tar");
    let missing_dir = missing_dir.to_str().expect("utf-8");
    let cases: Vec<Vec<&str>> = vec![
        // Unknown commands and flags, missing and malformed arguments.
        vec!["frobnicate"],
        vec!["images", "--bogus"],
        vec!["load", "--frobnicate", "-i", layout],
        vec!["load"],
        vec!["load", "-i"],
        vec!["tag", KEPT],
        vec!["tag"],
        vec!["rmi"],
        vec!["inspect"],
        vec!["mount", KEPT],
        vec!["save", KEPT],
        vec!["save", "-o", missing_dir],
        vec!["pull"],
        vec!["push"],
        vec!["commit"],
        vec!["images", "--format", "yaml"],
        vec!["gc", "--dry-run=maybe"],
        vec!["fsck", "--repair", "now"],
        vec!["config", "keep-blobs"],
        vec!["config", "keep-layer-blobs", "maybe"],
        vec!["config", "keep-layer-blobs", "true", "extra"],
        vec!["load", "-i", layout, "--max-layer-size", "1.5G"],
        vec!["load", "-i", layout, "--max-layer-size", "-1"],
        vec!["load", "-i", layout, "--max-layer-size", "0"],
        vec!["load", "-i", layout, "--max-layer-size", "99999999T"],
        vec!["pull", "--jobs", "many", "127.0.0.1:9/x:1"],
        vec![
            "pull",
            "--platform",
            "linux/amd64/v8/extra",
            "127.0.0.1:9/x:1",
        ],
        vec!["pull", "--platform", "", "127.0.0.1:9/x:1"],
        vec![
            "commit",
            "--compression",
            "lz4",
            not_a_dir,
            "example.com/c:1",
        ],
        // References: upper case, empty parts, too long, bad digests.
        vec!["inspect", "UPPERCASE"],
        vec!["inspect", "example.com/Upper/Case:1"],
        vec!["tag", KEPT, "example.com/UpperName:1"],
        vec!["tag", KEPT, "a::b"],
        vec!["inspect", "a::b"],
        vec!["rmi", "a::b"],
        vec!["tag", KEPT, "example.com//x:1"],
        vec!["tag", KEPT, "example.com/x:"],
        vec!["tag", KEPT, "example.com/x:-bad"],
        vec!["tag", KEPT, ""],
        vec!["inspect", ""],
        vec!["tag", KEPT, &long_name],
        vec!["inspect", &long_name],
        vec!["rmi", &long_name],
        vec!["tag", KEPT, &long_path],
        vec!["tag", KEPT, &long_tag],
        vec!["inspect", &digest_63],
        vec!["inspect", &digest_65],
        vec!["rmi", &digest_65],
        vec!["inspect", &unknown_id],
        vec!["inspect", &pinned_short],
        vec!["inspect", &pinned_upper],
        vec!["inspect", &pinned_md5],
        vec!["tag", KEPT, &pinned_short],
        vec![
            "tag",
            KEPT,
            "example.com/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        vec!["pull", "127.0.0.1:9/UPPER:1"],
        vec!["pull", "127.0.0.1:9/a::b"],
        vec!["pull", "127.0.0.1:9/x@sha256:abcd"],
        vec!["pull", "http://127.0.0.1:9/x:1"],
        vec!["pull", "127.0.0.1:9/x:1"],
        vec!["rmi", "example.com/never/was:1"],
        // Paths that are not what the command needs.
        vec!["load", "-i", "/nonexistent/archive.tar"],
        vec!["mount", KEPT, "/nonexistent/target"],
        vec!["mount", KEPT, not_a_dir],
        vec!["umount", not_a_dir],
        vec!["umount", "/nonexistent/target"],
        vec!["commit", not_a_dir, "example.com/c:1"],
        vec!["save", "-o", missing_dir, KEPT],
    ];
    for args in &cases {
        fx.refused(args, &[]);
    }
    assert!(!Path::new(missing_dir).exists());
    fx.assert_intact();
}

// ------------------------------------------------------------- archives

/// A layout dir holding `kept`'s blobs, with `index.json` as given.
fn layout_with_index(fx: &Fixture, name: &str, index: &[u8]) -> PathBuf {
    let dir = fx.path(name);
    write_oci_layout(&dir, &[(&fx.kept, LayoutNames::containerd(KEPT))]);
    fs::write(dir.join("index.json"), index).expect("index.json");
    dir
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

fn index_of(manifests: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        .expect("json")
}

/// A tar of `entries`, with `oci-layout` first.
fn tar_of(build: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut t = TarBuilder::new();
    build(&mut t);
    t.tar()
}

#[test]
fn bad_archives() {
    let fx = Fixture::new();
    let kept_manifest = descriptor(OCI_MANIFEST, &fx.kept.manifest);

    let empty_file = fx.path("empty.tar");
    fs::write(&empty_file, b"").expect("write");
    fx.refused_load(&empty_file);

    let empty_dir = fx.path("empty-dir");
    fs::create_dir(&empty_dir).expect("mkdir");
    fx.refused_load(&empty_dir);

    let no_index = fx.path("no-index");
    write_oci_layout(&no_index, &[(&fx.kept, LayoutNames::containerd(KEPT))]);
    fs::remove_file(no_index.join("index.json")).expect("rm");
    fx.refused_load(&no_index);

    let no_oci_layout = fx.path("no-oci-layout");
    write_oci_layout(&no_oci_layout, &[(&fx.kept, LayoutNames::containerd(KEPT))]);
    fs::remove_file(no_oci_layout.join("oci-layout")).expect("rm");
    fx.refused_load(&no_oci_layout);

    fx.refused_load(&layout_with_index(
        &fx,
        "not-json",
        b"{\"schemaVersion\": 2, \"manifests\": [",
    ));
    fx.refused_load(&layout_with_index(&fx, "binary", &noise(4096, 3)));
    fx.refused_load(&layout_with_index(&fx, "array", b"[]"));
    fx.refused_load(&layout_with_index(&fx, "array-of-index", &{
        let mut v = b"[".to_vec();
        v.extend(index_of(vec![kept_manifest.clone()]));
        v.push(b']');
        v
    }));
    fx.refused_load(&layout_with_index(&fx, "string", b"\"index\""));
    fx.refused_load(&layout_with_index(
        &fx,
        "no-manifests",
        b"{\"schemaVersion\": 2}",
    ));
    fx.refused_load(&layout_with_index(&fx, "zero-manifests", &index_of(vec![])));
    fx.refused_load(&layout_with_index(
        &fx,
        "manifests-not-list",
        b"{\"schemaVersion\": 2, \"manifests\": {\"a\": 1}}",
    ));

    // A descriptor of an unknown media type, over a real manifest blob.
    let mut unknown = kept_manifest.clone();
    unknown["mediaType"] = json!("application/vnd.example.unknown+json");
    let dir = layout_with_index(&fx, "unknown-type", &index_of(vec![unknown]));
    // The blob itself says what it is: make it say something unknown too.
    let mut manifest: serde_json::Value = serde_json::from_slice(&fx.kept.manifest).expect("json");
    manifest["mediaType"] = json!("application/vnd.example.unknown+json");
    let odd = serde_json::to_vec(&manifest).expect("json");
    fs::write(blob_path(&dir, &sha256_digest(&odd)), &odd).expect("blob");
    fs::write(
        dir.join("index.json"),
        index_of(vec![descriptor(
            "application/vnd.example.unknown+json",
            &odd,
        )]),
    )
    .expect("index");
    fx.refused_load(&dir);

    // Descriptors that lie: wrong size, malformed digest, missing blob.
    let mut wrong_size = kept_manifest.clone();
    wrong_size["size"] = json!(fx.kept.manifest.len() + 1);
    fx.refused_load(&layout_with_index(
        &fx,
        "wrong-size",
        &index_of(vec![wrong_size]),
    ));
    let mut bad_digest = kept_manifest.clone();
    bad_digest["digest"] = json!("sha256:xyz");
    fx.refused_load(&layout_with_index(
        &fx,
        "bad-digest",
        &index_of(vec![bad_digest]),
    ));
    let mut huge = kept_manifest.clone();
    huge["size"] = json!(u64::MAX);
    fx.refused_load(&layout_with_index(&fx, "huge-size", &index_of(vec![huge])));
    let missing = descriptor(OCI_MANIFEST, b"{\"not\": \"here\"}");
    fx.refused_load(&layout_with_index(
        &fx,
        "missing-blob",
        &index_of(vec![missing]),
    ));

    // Blob files longer or shorter than their descriptors say: the error
    // names the sizes, not what a decompressor made of the cut.
    let mut t = TarBuilder::new();
    t.file("sized", noise(64 * 1024, 23));
    let sized = ImageBuilder::new().tar(&t, Compression::Gzip).build();
    let layer_size = sized.layers[0].size();
    let config_size = sized.config.len() as u64;
    let cases: [(&str, &str, i64, String); 4] = [
        (
            "layer-longer",
            &sized.layers[0].digest,
            100,
            format!("expected {layer_size} bytes, got more"),
        ),
        (
            "layer-shorter",
            &sized.layers[0].digest,
            -100,
            format!("expected {layer_size} bytes, got {}", layer_size - 100),
        ),
        (
            "config-longer",
            &sized.config_digest,
            2,
            format!("expected {config_size} bytes, got {}", config_size + 2),
        ),
        (
            "config-shorter",
            &sized.config_digest,
            -2,
            format!("expected {config_size} bytes, got {}", config_size - 2),
        ),
    ];
    for (name, digest, change, words) in cases {
        let dir = fx.path(name);
        write_oci_layout(
            &dir,
            &[(&sized, LayoutNames::containerd("example.com/sized/x:1"))],
        );
        let blob = blob_path(&dir, digest);
        let mut bytes = fs::read(&blob).expect("blob");
        if change > 0 {
            bytes.extend(std::iter::repeat_n(0u8, change as usize));
        } else {
            bytes.truncate(bytes.len() - change.unsigned_abs() as usize);
        }
        fs::write(&blob, &bytes).expect("blob");
        let line = fx.refused_load(&dir);
        assert!(
            line.contains("size mismatch") && line.contains(&words),
            "{name}: the error should say the size is wrong ({words}): {line}"
        );
    }

    // An index blob that names itself: its file holds an index pointing
    // at its own name. Content addressing makes a real loop impossible,
    // so only a reader that trusts file names could go round forever.
    let dir = layout_with_index(&fx, "self-loop", b"{}");
    let name = sha256_digest(b"the loop");
    let looping = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": name, "size": 100}]
    }))
    .expect("json");
    fs::write(blob_path(&dir, &name), &looping).expect("blob");
    fs::write(
        dir.join("index.json"),
        index_of(vec![
            json!({"mediaType": OCI_INDEX, "digest": name, "size": looping.len()}),
        ]),
    )
    .expect("index");
    fx.refused_load(&dir);

    // Genuinely nested indexes, 12 deep, each naming the next.
    let dir = layout_with_index(&fx, "deep", b"{}");
    let mut inner = kept_manifest.clone();
    inner["platform"] = json!({"os": "linux", "architecture": common::image::host_arch()});
    for _ in 0..12 {
        let bytes = index_of(vec![inner.clone()]);
        fs::write(blob_path(&dir, &sha256_digest(&bytes)), &bytes).expect("blob");
        inner = descriptor(OCI_INDEX, &bytes);
        inner["platform"] = json!({"os": "linux", "architecture": common::image::host_arch()});
    }
    fs::write(dir.join("index.json"), index_of(vec![inner])).expect("index");
    fx.refused_load(&dir);

    // docker-archives: no images, not JSON, a config that is missing or
    // not a config.
    let docker = |name: &str, manifest: &[u8], extra: &[(&str, &[u8])]| -> PathBuf {
        let path = fx.path(name);
        fs::write(
            &path,
            tar_of(|t| {
                t.file("manifest.json", manifest);
                for (n, data) in extra {
                    t.file(*n, *data);
                }
            }),
        )
        .expect("write");
        path
    };
    fx.refused_load(&docker("zero-images.tar", b"[]", &[]));
    fx.refused_load(&docker("manifest-not-json.tar", b"[{\"Config\": ", &[]));
    fx.refused_load(&docker(
        "manifest-object.tar",
        b"{\"Config\": \"c.json\"}",
        &[],
    ));
    fx.refused_load(&docker(
        "missing-config.tar",
        b"[{\"Config\": \"c.json\", \"RepoTags\": [], \"Layers\": []}]",
        &[],
    ));
    fx.refused_load(&docker(
        "config-not-json.tar",
        b"[{\"Config\": \"c.json\", \"RepoTags\": [], \"Layers\": []}]",
        &[("c.json", b"not json")],
    ));
    fx.refused_load(&docker(
        "bad-repo-tag.tar",
        b"[{\"Config\": \"c.json\", \"RepoTags\": [\"Bad::Tag\"], \"Layers\": []}]",
        &[("c.json", &fx.kept.config)],
    ));
    fx.refused_load(&docker(
        "layer-count.tar",
        b"[{\"Config\": \"c.json\", \"RepoTags\": [], \"Layers\": []}]",
        &[("c.json", &fx.kept.config)],
    ));
    fx.refused_load(&docker(
        "layer-missing.tar",
        b"[{\"Config\": \"c.json\", \"RepoTags\": [], \"Layers\": [\"a/layer.tar\", \"b/layer.tar\"]}]",
        &[("c.json", &fx.kept.config)],
    ));

    // Special files in a layout directory: a FIFO, whose open waits for a
    // writer, and a link to a device that never ends.
    let mut t = TarBuilder::new();
    t.file("special", noise(4096, 17));
    let special = ImageBuilder::new().tar(&t, Compression::Gzip).build();
    for kind in ["fifo", "dev-zero", "directory"] {
        let dir = fx.path(&format!("special-{kind}"));
        write_oci_layout(
            &dir,
            &[(&special, LayoutNames::containerd("example.com/special/x:1"))],
        );
        let blob = blob_path(&dir, &special.layers[0].digest);
        fs::remove_file(&blob).expect("rm");
        match kind {
            "fifo" => {
                let c = std::ffi::CString::new(blob.to_str().expect("utf-8")).expect("c path");
                // Safety: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
            }
            "dev-zero" => std::os::unix::fs::symlink("/dev/zero", &blob).expect("symlink"),
            _ => fs::create_dir(&blob).expect("mkdir"),
        }
        fx.refused_load(&dir);
    }

    // A tar cut in the middle of a member.
    let whole = fx.path("whole");
    write_oci_layout(&whole, &[(&fx.kept, LayoutNames::containerd(KEPT))]);
    let packed = common::image::tar_dir(&whole);
    let cut = fx.path("cut.tar");
    fs::write(&cut, &packed[..packed.len() / 2 + 100]).expect("write");
    fx.refused_load(&cut);

    fx.assert_intact();
}

/// Archive tars whose members are links to files outside the archive.
/// The files outside hold exactly the bytes the archive asks for, so a
/// loader that followed the links would succeed: only refusing them fails.
#[test]
fn links_inside_archive_tars_cannot_reach_outside() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir(&outside).expect("mkdir");
    // Layers of its own: none of them is in the store already.
    let layer = |name: &str| {
        let mut t = TarBuilder::new();
        t.file(name, noise(4096, name.len() as u64));
        t.layer(Compression::Gzip)
    };
    let image = ImageBuilder::new()
        .layer(layer("linked-base"))
        .layer(layer("linked-top"))
        .build();
    let index = index_of(vec![{
        let mut d = descriptor(OCI_MANIFEST, &image.manifest);
        d["annotations"] = json!({"io.containerd.image.name": "example.com/linked/x:1"});
        d
    }]);
    for (digest, bytes) in image.blobs() {
        fs::write(outside.join(digest.trim_start_matches("sha256:")), bytes).expect("write");
    }
    fs::write(outside.join("index.json"), &index).expect("write");
    let abs = |name: &str| outside.join(name).to_str().expect("utf-8").to_string();
    let up = "../".repeat(40);
    let rel = |name: &str| format!("{up}{}", abs(name).trim_start_matches('/'));
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let blobs: Vec<(String, Vec<u8>)> = image
        .blobs()
        .into_iter()
        .map(|(d, b)| (d, b.to_vec()))
        .collect();
    let layout = |link_index: Option<String>, link_blob: Option<(usize, String)>, hard: bool| {
        tar_of(|t| {
            t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            match &link_index {
                Some(target) if hard => {
                    t.hardlink("index.json", target);
                }
                Some(target) => {
                    t.symlink("index.json", target);
                }
                None => {
                    t.file("index.json", &index);
                }
            }
            t.dir("blobs");
            t.dir("blobs/sha256");
            for (i, (digest, bytes)) in blobs.iter().enumerate() {
                let name = format!("blobs/sha256/{}", hex(digest));
                match &link_blob {
                    Some((which, target)) if *which == i && hard => {
                        t.hardlink(name, target);
                    }
                    Some((which, target)) if *which == i => {
                        t.symlink(name, target);
                    }
                    _ => {
                        t.file(name, bytes);
                    }
                }
            }
        })
    };
    // The blobs are config (0), manifest (1), layers (2, 3).
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "index-abs-symlink",
            layout(Some(abs("index.json")), None, false),
        ),
        (
            "index-rel-symlink",
            layout(Some(rel("index.json")), None, false),
        ),
        (
            "index-hardlink",
            layout(Some(abs("index.json")), None, true),
        ),
        (
            "manifest-abs-symlink",
            layout(None, Some((1, abs(&hex(&blobs[1].0)))), false),
        ),
        (
            "config-rel-symlink",
            layout(None, Some((0, rel(&hex(&blobs[0].0)))), false),
        ),
        (
            "layer-abs-symlink",
            layout(None, Some((3, abs(&hex(&blobs[3].0)))), false),
        ),
        (
            "layer-rel-hardlink",
            layout(None, Some((2, rel(&hex(&blobs[2].0)))), true),
        ),
        (
            "layer-to-dev-zero",
            layout(None, Some((3, "/dev/zero".into())), false),
        ),
    ];
    for (name, tar) in cases {
        let path = fx.path(&format!("{name}.tar"));
        fs::write(&path, tar).expect("write");
        fx.refused_load(&path);
    }
    // The control: the same archive with the files themselves loads.
    let control = fx.path("control.tar");
    fs::write(&control, layout(None, None, false)).expect("write");
    fx.store.load(&control, None);
    fx.store.ok(&["rmi", "example.com/linked/x:1"]);
    // A docker-archive whose manifest.json and layer are links out.
    fs::write(
        outside.join("manifest.json"),
        serde_json::to_vec(&json!([{"Config": "c.json", "RepoTags": [], "Layers": ["l.tar"]}]))
            .expect("json"),
    )
    .expect("write");
    let path = fx.path("docker-links.tar");
    fs::write(
        &path,
        tar_of(|t| {
            t.symlink("manifest.json", abs("manifest.json"));
        }),
    )
    .expect("write");
    fx.refused_load(&path);
    fx.assert_intact();
}

#[test]
fn documents_at_and_beyond_the_size_limits() {
    let fx = Fixture::new();
    // A 5 MB config (a long history) is within the 16 MiB document limit:
    // it loads, and the store stays sound.
    let padded = |bytes: usize| {
        let image = ImageBuilder::new().layer(small_base()).build();
        let mut config: serde_json::Value = serde_json::from_slice(&image.config).expect("json");
        config["config"]["Labels"] = json!({"padding": "p".repeat(bytes)});
        let config = serde_json::to_vec(&config).expect("json");
        let config_digest = sha256_digest(&config);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&image.manifest).expect("json");
        manifest["config"]["digest"] = json!(config_digest);
        manifest["config"]["size"] = json!(config.len());
        let manifest = serde_json::to_vec(&manifest).expect("json");
        Image {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            ..image
        }
    };
    let five = padded(5 << 20);
    let dir = fx.path("five-mb-config");
    write_oci_layout(
        &dir,
        &[(&five, LayoutNames::containerd("example.com/big/config:5"))],
    );
    fx.store.load(&dir, None);
    assert_eq!(
        fx.store.inspect("example.com/big/config:5")["id"],
        five.config_digest.as_str()
    );
    fx.store.ok(&["rmi", "example.com/big/config:5"]);
    // 17 MiB is beyond it: refused before anything is stored.
    let seventeen = padded(17 << 20);
    let dir = fx.path("seventeen-mb-config");
    write_oci_layout(
        &dir,
        &[(
            &seventeen,
            LayoutNames::containerd("example.com/big/config:17"),
        )],
    );
    let error = fx.refused_load(&dir);
    assert!(error.contains("larger than"), "{error}");
    // An index.json of 17 MiB likewise.
    let mut annotations = serde_json::Map::new();
    annotations.insert("padding".into(), json!("p".repeat(17 << 20)));
    let mut desc = descriptor(OCI_MANIFEST, &fx.kept.manifest);
    desc["annotations"] = serde_json::Value::Object(annotations);
    let error = fx.refused_load(&layout_with_index(&fx, "huge-index", &index_of(vec![desc])));
    assert!(error.contains("larger than"), "{error}");
    fx.assert_intact();
}

// ------------------------------------------------------ registry answers

/// What the fake registry does with one request.
enum Answer {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers announcing `length` bytes, then `body` (shorter), then the
    /// connection waits `stall` and closes.
    Partial {
        length: usize,
        body: Vec<u8>,
        stall: Duration,
    },
    /// Bytes that are not HTTP at all.
    Raw(Vec<u8>),
}

fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
    Answer::Respond {
        status,
        headers: vec![("Content-Type".into(), content_type.into())],
        body: body.into(),
    }
}

/// A request as the fake registry parsed it.
struct Request {
    path: String,
    range_start: Option<usize>,
}

/// A registry on loopback that serves one image, and misbehaves in the
/// way the first component of the repository names.
struct FakeRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The image every scenario starts from.
struct Served {
    manifest: Vec<u8>,
    blobs: BTreeMap<String, Vec<u8>>,
    config_digest: String,
    layer_digest: String,
}

impl FakeRegistry {
    fn start(served: Served) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(served);
        let stalled_once = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let served = served.clone();
                    let stalled_once = stalled_once.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || serve(stream, &served, &stalled_once, &stop));
                }
            })
        };
        FakeRegistry {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn reference(&self, scenario: &str) -> String {
        format!("127.0.0.1:{}/{scenario}/image:1", self.port)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, served: &Served, stalled_once: &AtomicBool, stop: &AtomicBool) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // A TLS probe (the client tries HTTPS first on loopback): answer as a
    // plain HTTP server would.
    let mut first = [0u8; 1];
    if stream.peek(&mut first).unwrap_or(0) == 0 || first[0] == 0x16 {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut range_start = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range_start = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse().ok());
            }
        }
    }
    let answer = answer(&Request { path, range_start }, served, stalled_once);
    let write_head =
        |stream: &mut TcpStream, status: u16, headers: &[(String, String)], len: usize| {
            let mut head =
                format!("HTTP/1.1 {status} Fake\r\nConnection: close\r\nContent-Length: {len}\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())
        };
    match answer {
        Answer::Respond {
            status,
            headers,
            body,
        } => {
            let _ = write_head(&mut stream, status, &headers, body.len())
                .and_then(|_| stream.write_all(&body));
        }
        Answer::Partial {
            length,
            body,
            stall,
        } => {
            let _ = write_head(&mut stream, 200, &[], length).and_then(|_| stream.write_all(&body));
            let _ = stream.flush();
            let deadline = std::time::Instant::now() + stall;
            while std::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Answer::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
        }
    }
}

fn registry_error(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"errors": [{"code": code, "message": message, "detail": {}}]}))
        .expect("json")
}

fn answer(req: &Request, served: &Served, stalled_once: &AtomicBool) -> Answer {
    if req.path == "/v2/" {
        return respond(200, "application/json", "{}");
    }
    let Some(rest) = req.path.strip_prefix("/v2/") else {
        return respond(404, "text/plain", "no");
    };
    let scenario = rest.split('/').next().unwrap_or_default();
    let is_manifest = rest.contains("/manifests/");
    let digest = rest.rsplit('/').next().unwrap_or_default();
    let manifest = |content_type: &str, body: Vec<u8>| Answer::Respond {
        status: 200,
        headers: vec![
            ("Content-Type".into(), content_type.into()),
            ("Docker-Content-Digest".into(), sha256_digest(&body)),
        ],
        body,
    };
    let blob = |bytes: &[u8]| {
        let start = req.range_start.unwrap_or(0).min(bytes.len());
        let mut headers = vec![("Content-Type".into(), "application/octet-stream".into())];
        let status = if start > 0 {
            headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
            ));
            206
        } else {
            200
        };
        Answer::Respond {
            status,
            headers,
            body: bytes[start..].to_vec(),
        }
    };
    let good_blob = || match served.blobs.get(digest) {
        Some(bytes) => blob(bytes),
        None => respond(
            404,
            "application/json",
            registry_error("BLOB_UNKNOWN", "blob unknown"),
        ),
    };
    let is_layer = digest == served.layer_digest;
    let is_config = digest == served.config_digest;
    match (scenario, is_manifest) {
        ("good", true) => manifest(OCI_MANIFEST, served.manifest.clone()),
        ("e500", _) => respond(500, "text/plain", "internal error"),
        ("e404", true) => respond(
            404,
            "application/json",
            registry_error("MANIFEST_UNKNOWN", "manifest unknown to this registry"),
        ),
        ("e404blob", false) if is_config => respond(
            404,
            "application/json",
            registry_error("BLOB_UNKNOWN", "blob unknown to this registry"),
        ),
        ("e401", _) => respond(
            401,
            "application/json",
            registry_error("UNAUTHORIZED", "authentication required"),
        ),
        ("e403", true) => respond(
            403,
            "application/json",
            registry_error("DENIED", "requested access to the resource is denied"),
        ),
        ("e429", _) => respond(
            429,
            "application/json",
            registry_error("TOOMANYREQUESTS", "slow down"),
        ),
        ("huge", true) => {
            let mut m: serde_json::Value = serde_json::from_slice(&served.manifest).expect("json");
            m["annotations"] = json!({"padding": "p".repeat(5 << 20)});
            manifest(OCI_MANIFEST, serde_json::to_vec(&m).expect("json"))
        }
        ("html", true) => respond(200, "text/html", "<html><body>Please log in</body></html>"),
        ("claims-index", true) => {
            let mut m: serde_json::Value = serde_json::from_slice(&served.manifest).expect("json");
            m.as_object_mut().expect("object").remove("mediaType");
            manifest(OCI_INDEX, serde_json::to_vec(&m).expect("json"))
        }
        ("schema1", true) => manifest(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion": 1, "fsLayers": [], "history": []}"#.to_vec(),
        ),
        ("wrong-digest-header", true) => Answer::Respond {
            status: 200,
            headers: vec![
                ("Content-Type".into(), OCI_MANIFEST.into()),
                (
                    "Docker-Content-Digest".into(),
                    format!("sha256:{}", hex64('0')),
                ),
            ],
            body: served.manifest.clone(),
        },
        ("unknown-layer-type", true) => {
            let mut m: serde_json::Value = serde_json::from_slice(&served.manifest).expect("json");
            m["layers"][0]["mediaType"] = json!("application/vnd.example.layer.v1.tar+lz4");
            manifest(OCI_MANIFEST, serde_json::to_vec(&m).expect("json"))
        }
        ("big-config", true) => {
            let mut m: serde_json::Value = serde_json::from_slice(&served.manifest).expect("json");
            m["config"]["size"] = json!(1u64 << 40);
            manifest(OCI_MANIFEST, serde_json::to_vec(&m).expect("json"))
        }
        ("short-blob", false) if is_layer => {
            let bytes = &served.blobs[digest];
            blob(&bytes[..bytes.len() - 100])
        }
        ("long-blob", false) if is_layer => {
            let mut bytes = served.blobs[digest].clone();
            bytes.extend_from_slice(&[0u8; 100]);
            blob(&bytes)
        }
        ("flipped-blob", false) if is_layer => {
            let mut bytes = served.blobs[digest].clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            blob(&bytes)
        }
        ("wrong-config", false) if is_config => blob(b"{\"architecture\": \"amd64\"}"),
        ("garbage", _) => Answer::Raw(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
        ("redirect-loop", false) => Answer::Respond {
            status: 307,
            headers: vec![("Location".into(), req.path.clone())],
            body: Vec::new(),
        },
        // The first layer request stalls a moment and drops; the resumed
        // (Range) request gets the rest.
        ("stall-once", false) if is_layer && !stalled_once.swap(true, Ordering::SeqCst) => {
            let bytes = &served.blobs[digest];
            Answer::Partial {
                length: bytes.len(),
                body: bytes[..bytes.len() / 2].to_vec(),
                stall: Duration::from_millis(1500),
            }
        }
        // Every layer request stalls half-way, then drops: with
        // LSTORE_HTTP_TIMEOUT below the stall the client times out first.
        ("stall", false) if is_layer => {
            let bytes = &served.blobs[digest];
            Answer::Partial {
                length: bytes.len(),
                body: bytes[..bytes.len() / 2].to_vec(),
                stall: Duration::from_millis(1500),
            }
        }
        (_, true) => manifest(OCI_MANIFEST, served.manifest.clone()),
        (_, false) => good_blob(),
    }
}

#[test]
fn bad_registry_answers() {
    let fx = Fixture::new();
    // A one-layer image with a layer big enough to be cut in the middle.
    let mut t = TarBuilder::new();
    t.dir("data");
    t.file("data/blob", noise(256 * 1024, 90));
    let image = ImageBuilder::new().tar(&t, Compression::Gzip).build();
    let served = Served {
        manifest: image.manifest.clone(),
        blobs: image
            .blobs()
            .into_iter()
            .map(|(d, b)| (d, b.to_vec()))
            .collect(),
        config_digest: image.config_digest.clone(),
        layer_digest: image.layers[0].digest.clone(),
    };
    let registry = FakeRegistry::start(served);
    // Short waits: retries and stalls are the server's doing here.
    let fast = [("LSTORE_HTTP_TIMEOUT", "1")];
    let expectations: Vec<(&str, &[&str])> = vec![
        ("e500", &["500"]),
        ("e404", &["manifest unknown"]),
        ("e404blob", &["blob unknown"]),
        ("e401", &["authentication required", "401"]),
        ("e403", &["denied"]),
        ("e429", &["429", "slow down"]),
        ("huge", &["larger than", "too large"]),
        ("html", &["not JSON"]),
        ("claims-index", &["manifests"]),
        ("schema1", &["schema1", "schema 1"]),
        ("wrong-digest-header", &["digest"]),
        ("unknown-layer-type", &["lz4", "media type"]),
        ("big-config", &["larger than"]),
        ("short-blob", &["ended", "size", "eof", "early"]),
        // The body goes on past the descriptor's size.
        ("long-blob", &["bytes, got more"]),
        ("flipped-blob", &["digest", "corrupt"]),
        ("wrong-config", &["digest"]),
        ("garbage", &["127.0.0.1"]),
        ("redirect-loop", &["redirect"]),
        (
            "stall",
            &["timed out", "timeout", "ended", "early", "closed", "eof"],
        ),
    ];
    for (scenario, words) in &expectations {
        let reference = registry.reference(scenario);
        let line = fx.refused(&["pull", "-q", &reference], &fast);
        assert!(
            words.iter().any(|w| line.to_lowercase().contains(&w.to_lowercase())),
            "pull from a registry doing {scenario:?}: the error should say one of {words:?}: {line}"
        );
    }
    // The controls: the same server well-behaved, and a stall that the
    // client rides out by resuming, both store the image.
    for scenario in ["good", "stall-once"] {
        let reference = registry.reference(scenario);
        let out = fx
            .store
            .command(&["pull", "-q", &reference])
            .env("LSTORE_HTTP_TIMEOUT", "1")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "pull of {scenario}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fx.store.inspect(&reference)["id"],
            image.config_digest.as_str()
        );
        fx.store.ok(&["rmi", &reference]);
    }
    fx.assert_intact();
}
