//! The write path: changes made through a `--rw` mount are committed as a
//! new image, pushed to a real `docker-registry`, and read back by skopeo
//! and umoci; pushes skip, mount or upload blobs as a registry client
//! should; images with hundreds of layers mount.

mod common;

use common::checks::umoci_twin;
use common::image::{write_oci_layout, Image};
use common::mount::LstoreMount;
use common::peers::{skopeo_copy, umoci_unpack};
use common::scenes::{everything_image, small_app, small_base};
use common::tree::{assert_same_tree, snapshot, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, ManifestKind, TarBuilder};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ helpers

/// A `docker-registry` on a free loopback port, storage in a temp dir, its
/// access log captured; killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// One request in the registry's access log.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    method: String,
    path: String,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("lstore-registry-")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `host/name`.
    fn name(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Requests lstore made (by user agent) since the log was last taken.
    fn take_lstore_requests(&self) -> Vec<Request> {
        let path = self.dir.path().join("access.log");
        let file = fs::File::open(&path).unwrap();
        let requests: Vec<Request> = BufReader::new(file)
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|line| {
                // host - - [time] "METHOD PATH HTTP/1.1" status size "ref" "agent"
                let quoted: Vec<&str> = line.split('"').collect();
                let agent = quoted.get(5)?;
                if !agent.starts_with("lstore/") {
                    return None;
                }
                let mut request = quoted.get(1)?.split(' ');
                Some(Request {
                    method: request.next()?.to_string(),
                    path: request.next()?.to_string(),
                })
            })
            .collect();
        fs::write(&path, b"").unwrap();
        requests
    }

    /// Copies an image from an OCI layout into the registry with skopeo.
    fn put_layout(&self, layout: &Path, tag: &str, name: &str) {
        skopeo_copy(
            &["--dest-tls-verify=false"],
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}", self.name(name)),
        );
    }

    /// The manifest `name` points at, and its digest, as skopeo sees them.
    fn manifest(&self, name: &str) -> (Value, String) {
        let raw = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "inspect",
                "--raw",
                "--tls-verify=false",
            ])
            .arg(format!("docker://{}", self.name(name)))
            .output()
            .unwrap();
        assert!(raw.status.success(), "skopeo inspect {name}");
        let digest = common::tarball::sha256_digest(&raw.stdout);
        (serde_json::from_slice(&raw.stdout).unwrap(), digest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `image` as an OCI layout tagged `v1`.
fn layout(dir: &Path, image: &Image) -> PathBuf {
    let path = dir.join("layout");
    write_oci_layout(&path, &[(image, LayoutNames::ref_name("v1"))]);
    path
}

fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; the value has its length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

/// Changes of every kind, made through a read-write mount of the
/// "everything" image.
fn change_everything(m: &LstoreMount<'_>) {
    // A file changed, one deleted, a directory deleted.
    fs::write(m.path("etc/passwd"), "root:x:0:0:root:/root:/bin/zsh\n").unwrap();
    fs::remove_file(m.path("bin/sh")).unwrap();
    fs::remove_dir_all(m.path("home/user")).unwrap();
    // Files, a directory, a symlink and hardlinks added.
    fs::create_dir_all(m.path("new/dir")).unwrap();
    fs::write(m.path("new/dir/file"), "brand new\n").unwrap();
    fs::set_permissions(m.path("new/dir/file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(m.path("new/a"), "two names\n").unwrap();
    fs::hard_link(m.path("new/a"), m.path("new/b")).unwrap();
    symlink("../etc/passwd", m.path("new/passwd-link")).unwrap();
    set_xattr(&m.path("new/a"), "user.origin", b"committed");
    // An opaque directory: removed and made again with new content.
    fs::remove_dir_all(m.path("usr/bin")).unwrap();
    fs::create_dir(m.path("usr/bin")).unwrap();
    fs::write(m.path("usr/bin/only"), "the only one\n").unwrap();
    // Metadata-only changes copy up: owner, mode; a 255-byte name.
    std::os::unix::fs::chown(m.path("etc/xattrs"), Some(1234), Some(99)).unwrap();
    let long = fs::read_dir(m.path("long"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::set_permissions(&long, fs::Permissions::from_mode(0o600)).unwrap();
    // One name of a hardlinked pair rewritten.
    fs::write(m.path("hl/orig"), "third version\n").unwrap();
}

// -------------------------------------------------------------------- tests

/// Pull → change through `--rw` → commit → push → skopeo copies it into a
/// layout → umoci unpacks it: the same tree as the mount showed.
#[test]
fn committed_image_round_trips_through_registry_skopeo_and_umoci() {
    let registry = Registry::start();
    let scratch = scratch();
    let base = umoci_twin(&everything_image(ManifestKind::Oci));
    registry.put_layout(&layout(scratch.path(), &base), "v1", "write/base:v1");
    let store = Lstore::new();
    let base_ref = registry.name("write/base:v1");
    store.ok(&["pull", &base_ref]);

    let app_ref = registry.name("write/app:v2");
    let merged: Tree;
    {
        let m = LstoreMount::new(&store, &base_ref, true);
        change_everything(&m);
        merged = snapshot(m.root());
        let out = store.ok(&["commit", m.target(), &app_ref]);
        assert!(out.stdout.contains("Committed"), "{}", out.stdout);
        // The mount still shows the same tree after the commit.
        assert_same_tree(&merged, &snapshot(m.root()), "mount after commit");
    }
    let inspect = store.inspect(&app_ref);
    let layers = inspect["layers"].as_array().unwrap();
    assert_eq!(layers.len(), base.layers.len() + 1);
    assert_eq!(
        layers.last().unwrap()["media_type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let out = store.ok(&["push", &app_ref]);
    let (manifest, digest) = registry.manifest("write/app:v2");
    assert!(
        out.stdout.contains(&digest),
        "push names the manifest digest {digest}: {}",
        out.stdout
    );
    assert_eq!(inspect["digest"], digest.as_str());
    // The base layers went out byte for byte: their digests are those
    // the registry served (skopeo compressed the plain-tar ones on upload).
    let pushed = layer_digests(&manifest);
    let pulled = layer_digests(&registry.manifest("write/base:v1").0);
    assert_eq!(pushed[..pulled.len()], pulled[..]);
    assert_eq!(pushed.len(), pulled.len() + 1);

    let copy = scratch.path().join("copy");
    skopeo_copy(
        &["--src-tls-verify=false"],
        &format!("docker://{app_ref}"),
        &format!("oci:{}:v2", copy.display()),
    );
    let bundle = umoci_unpack(&copy, "v2");
    assert_same_tree(
        &merged,
        &snapshot(&bundle.rootfs()),
        "rw mount vs umoci unpack of the pushed image",
    );

    // The committed image mounts as the same tree from the store too.
    let again = LstoreMount::new(&store, &app_ref, false);
    assert_same_tree(&merged, &snapshot(again.root()), "mounted commit");
}

/// A zstd commit pushed and pulled into a fresh store shows the tree the
/// mount showed (umoci reads no zstd, so the check is lstore's own pull).
#[test]
fn zstd_commit_pulls_back_into_another_store() {
    let registry = Registry::start();
    let scratch = scratch();
    let base = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("zz"))
        .build();
    registry.put_layout(&layout(scratch.path(), &base), "v1", "z/base:v1");
    let store = Lstore::new();
    let base_ref = registry.name("z/base:v1");
    store.ok(&["pull", &base_ref]);
    let app_ref = registry.name("z/app:zstd");
    let merged = {
        let m = LstoreMount::new(&store, &base_ref, true);
        fs::write(m.path("app/name"), "changed\n").unwrap();
        fs::remove_file(m.path("etc/os-release")).unwrap();
        fs::create_dir(m.path("var")).unwrap();
        let tree = snapshot(m.root());
        store.ok(&["commit", "--compression", "zstd", m.target(), &app_ref]);
        tree
    };
    store.ok(&["push", &app_ref]);
    let (manifest, _) = registry.manifest("z/app:zstd");
    assert_eq!(
        manifest["layers"][2]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    let other = Lstore::new();
    other.ok(&["pull", &app_ref]);
    let m = LstoreMount::new(&other, &app_ref, false);
    assert_same_tree(&merged, &snapshot(m.root()), "pulled zstd commit");
}

/// Writing through a `--rw` mount (and committing it) never changes the
/// image's layer folders.
#[test]
fn copy_up_leaves_the_lower_layers_byte_identical() {
    let scratch = scratch();
    let image = umoci_twin(&everything_image(ManifestKind::Oci));
    let store = Lstore::new();
    store.load(&layout(scratch.path(), &image), Some("local/every:v1"));
    let inspect = store.inspect("local/every:v1");
    let folders: Vec<PathBuf> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["path"].as_str().unwrap()))
        .collect();
    let before: Vec<Tree> = folders.iter().map(|f| snapshot(f)).collect();
    {
        let m = LstoreMount::new(&store, "local/every:v1", true);
        change_everything(&m);
        // Appending, renaming and truncating copy whole files up.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path("data/future"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"appended\n").unwrap();
        drop(f);
        fs::rename(m.path("etc/passwd"), m.path("etc/passwd.moved")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.path("refile"))
            .unwrap();
        store.ok(&["commit", m.target(), "local/every:v2"]);
    }
    for (folder, want) in folders.iter().zip(&before) {
        assert_same_tree(want, &snapshot(folder), &folder.display().to_string());
    }
}

/// Pushing what the registry has costs HEADs and one manifest PUT; a push
/// to another repository mounts the blobs instead of uploading them, from
/// where the image was pulled or where an earlier push put them.
#[test]
fn pushes_skip_existing_blobs_and_mount_across_repositories() {
    let registry = Registry::start();
    let scratch = scratch();
    let image = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("mnt"))
        .build();
    registry.put_layout(&layout(scratch.path(), &image), "v1", "a/base:v1");
    let store = Lstore::new();
    let base_ref = registry.name("a/base:v1");
    store.ok(&["pull", &base_ref]);
    registry.take_lstore_requests();
    let blob_count = image.layers.len() + 1;

    // Same place: everything exists.
    let out = store.ok(&["push", &base_ref]);
    let requests = registry.take_lstore_requests();
    let heads = requests
        .iter()
        .filter(|r| r.method == "HEAD" && r.path.contains("/blobs/"))
        .count();
    assert_eq!(heads, blob_count, "{requests:#?}");
    let writes: Vec<&Request> = requests
        .iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert_eq!(
        writes,
        [&Request {
            method: "PUT".into(),
            path: "/v2/a/base/manifests/v1".into()
        }],
        "only the manifest is written"
    );
    assert_eq!(out.stderr.matches("already exists").count(), blob_count);

    // Another repository: cross-repository mounts from a/base.
    store.ok(&["push", &base_ref, &registry.name("b/copy:v1")]);
    let requests = registry.take_lstore_requests();
    let mounts: Vec<&Request> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(mounts.len(), blob_count, "{requests:#?}");
    for m in &mounts {
        // mount=<digest>&from=<repository>, percent-encoded.
        assert!(
            m.path
                .starts_with("/v2/b/copy/blobs/uploads/?mount=sha256%3A")
                && m.path.ends_with("&from=a%2Fbase"),
            "not a mount from a/base: {}",
            m.path
        );
    }
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "PATCH" || (r.method == "PUT" && r.path.contains("/blobs/"))),
        "a blob was uploaded: {requests:#?}"
    );
    assert_eq!(
        registry.manifest("b/copy:v1").1,
        registry.manifest("a/base:v1").1
    );

    // A local image pushed twice: the second push mounts its new layer
    // from where the first push put it (no tag names that repository).
    let merged = {
        let m = LstoreMount::new(&store, &base_ref, true);
        fs::write(m.path("app/local"), "local change\n").unwrap();
        store.ok(&["commit", m.target(), "local/app:1"]);
        snapshot(m.root())
    };
    store.ok(&["push", "local/app:1", &registry.name("c/app:1")]);
    let first = registry.take_lstore_requests();
    assert_eq!(
        first
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
            .count(),
        2,
        "the new layer and config are uploaded: {first:#?}"
    );
    store.ok(&["push", "local/app:1", &registry.name("d/app:1")]);
    let second = registry.take_lstore_requests();
    assert!(
        !second
            .iter()
            .any(|r| r.method == "PATCH" || (r.method == "PUT" && r.path.contains("/blobs/"))),
        "a blob was uploaded: {second:#?}"
    );
    let from_c = second
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("from=c%2Fapp"))
        .count();
    assert_eq!(
        from_c, 2,
        "new layer and config mounted from c/app: {second:#?}"
    );

    // And what arrived is the committed tree.
    let other = Lstore::new();
    let d = registry.name("d/app:1");
    other.ok(&["pull", &d]);
    let m = LstoreMount::new(&other, &d, false);
    assert_same_tree(&merged, &snapshot(m.root()), "pushed by mounts only");
}

/// `tag`: an edge image promoted to latest, both tags pushed.
#[test]
fn edge_is_promoted_to_latest() {
    let registry = Registry::start();
    let scratch = scratch();
    let store = Lstore::new();
    let latest = registry.name("t/app:latest");
    let edge = registry.name("t/app:edge");

    let v1 = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("one"))
        .build();
    let dir1 = scratch.path().join("v1");
    fs::create_dir(&dir1).unwrap();
    store.load(&layout(&dir1, &v1), Some(&latest));
    store.ok(&["push", &latest]);

    let v2 = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("two"))
        .build();
    let dir2 = scratch.path().join("v2");
    fs::create_dir(&dir2).unwrap();
    store.load(&layout(&dir2, &v2), Some("local/app:next"));
    store.ok(&["tag", "local/app:next", &edge]);
    store.ok(&["push", &edge]);
    assert_eq!(registry.manifest("t/app:latest").1, v1.manifest_digest);
    assert_eq!(registry.manifest("t/app:edge").1, v2.manifest_digest);

    store.ok(&["tag", &edge, &latest]);
    registry.take_lstore_requests();
    store.ok(&["push", &latest]);
    let requests = registry.take_lstore_requests();
    assert!(
        requests.iter().all(|r| r.method == "HEAD"
            || r.method == "GET"
            || r.path.ends_with("/manifests/latest")),
        "promotion moved only the tag: {requests:#?}"
    );
    assert_eq!(registry.manifest("t/app:latest").1, v2.manifest_digest);

    let rows = store.images();
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| r["repository"] == registry.name("t/app").as_str())
        .collect();
    let mut tags: Vec<&str> = ours.iter().map(|r| r["tag"].as_str().unwrap()).collect();
    tags.sort();
    assert_eq!(tags, ["edge", "latest"]);
    assert!(ours.iter().all(|r| r["id"] == v2.config_digest.as_str()));
}

/// 200 tiny layers: too many for short lowerdir options, so the mount
/// adds them one by one; files from the lowest and the highest layer are
/// there, and upper layers win.
#[test]
fn an_image_of_200_layers_mounts() {
    let scratch = scratch();
    let mut builder = ImageBuilder::new();
    for i in 0..200 {
        let mut t = TarBuilder::new();
        t.dir("layers");
        t.file(format!("layers/{i:03}"), format!("layer {i}\n"));
        t.file("winner", format!("{i}\n"));
        if i == 0 {
            t.file("bottom", "lowest layer\n");
        }
        if i == 199 {
            t.file("top", "highest layer\n");
        }
        builder = builder.tar(&t, Compression::Gzip);
    }
    let image = builder.build();
    let store = Lstore::new();
    store.load(&layout(scratch.path(), &image), Some("local/tall:200"));
    assert_eq!(
        store.inspect("local/tall:200")["layers"]
            .as_array()
            .unwrap()
            .len(),
        200
    );
    {
        let m = LstoreMount::new(&store, "local/tall:200", false);
        assert_eq!(
            fs::read_to_string(m.path("bottom")).unwrap(),
            "lowest layer\n"
        );
        assert_eq!(
            fs::read_to_string(m.path("top")).unwrap(),
            "highest layer\n"
        );
        assert_eq!(fs::read_to_string(m.path("winner")).unwrap(), "199\n");
        assert_eq!(fs::read_dir(m.path("layers")).unwrap().count(), 200);
    }
    // Read-write too, and its commit makes a 201-layer image.
    {
        let m = LstoreMount::new(&store, "local/tall:200", true);
        fs::write(m.path("winner"), "rw\n").unwrap();
        store.ok(&["commit", m.target(), "local/tall:201"]);
    }
    let m = LstoreMount::new(&store, "local/tall:201", false);
    assert_eq!(fs::read_to_string(m.path("winner")).unwrap(), "rw\n");
    assert_eq!(
        fs::read_to_string(m.path("bottom")).unwrap(),
        "lowest layer\n"
    );
}

/// Commit needs a live `--rw` lstore mount and a plain name; push needs a
/// name or a destination. Each failure is one `error:` line.
#[test]
fn commit_and_push_refuse_what_they_cannot_do() {
    let scratch = scratch();
    let image = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("x"))
        .build();
    let store = Lstore::new();
    store.load(&layout(scratch.path(), &image), Some("local/x:1"));
    let plain = scratch.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let err = store.fails(&["commit", plain.to_str().unwrap(), "local/x:2"]);
    assert!(err.contains("not an lstore mount"), "{err}");
    {
        let ro = LstoreMount::new(&store, "local/x:1", false);
        let err = store.fails(&["commit", ro.target(), "local/x:2"]);
        assert!(err.contains("--rw"), "{err}");
    }
    {
        let rw = LstoreMount::new(&store, "local/x:1", true);
        fs::write(rw.path(".wh.trick"), "x").unwrap();
        let err = store.fails(&["commit", rw.target(), "local/x:2"]);
        assert!(err.contains(".wh."), "{err}");
        fs::remove_file(rw.path(".wh.trick")).unwrap();
        let digest_name = format!("local/x@{}", image.manifest_digest);
        let err = store.fails(&["commit", rw.target(), &digest_name]);
        assert!(err.contains("digest"), "{err}");
    }
    // Failed commits leave nothing behind and no image.
    assert!(store.unfinished().is_empty(), "{:?}", store.unfinished());
    assert_eq!(store.images().len(), 1);
    let id = image.config_digest.clone();
    let err = store.fails(&["push", &id]);
    assert!(err.contains("where to push"), "{err}");
    let err = store.fails(&["push", "local/unknown:1"]);
    assert!(err.contains("not known"), "{err}");
}
