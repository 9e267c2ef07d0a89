//! lstore run by users without root: throwaway users, one with subordinate
//! ids and one without, each with their own store under their home. The
//! tests run as root (to make the users) and run `lstore` as them.

mod common;

use common::image::{write_oci_layout, Image, LayoutNames};
use common::peers::umoci_unpack;
use common::registry::Registry;
use common::tree::{get_xattr, snapshot, NodeKind};
use common::{Compression, ImageBuilder, TarBuilder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// /etc/subuid and /etc/subgid are edited by one test at a time.
static ID_FILES: Mutex<()> = Mutex::new(());
static USERS: AtomicU32 = AtomicU32::new(0);

/// Whether the tools these tests need are here; under CI they must be.
fn have_tools() -> bool {
    let missing: Vec<&str> = ["useradd", "userdel", "runuser", "newuidmap", "umoci"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() && rustix_is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "rootless tests need root and {missing:?} (scripts/setup.sh installs uidmap, umoci)"
    );
    eprintln!("skipped: needs root and {missing:?}");
    false
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A user made for one test, removed (with their pause process and their
/// subordinate ids) when dropped, even when the test fails.
struct TestUser {
    name: String,
    uid: u32,
    /// The first subordinate id (uid and gid), when the user has a range.
    sub_start: Option<u32>,
    home: tempfile::TempDir,
}

const SUB_COUNT: u32 = 65536;

impl TestUser {
    fn new(with_subordinate_ids: bool) -> TestUser {
        let n = USERS.fetch_add(1, Ordering::Relaxed);
        let name = format!("lstt{}x{n}", std::process::id());
        let home = tempfile::Builder::new()
            .prefix("lstore-user-")
            .tempdir()
            .expect("home");
        fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).expect("chmod home");
        // No automatic ranges: this test decides who has them.
        run_ok(Command::new("useradd").args([
            "-M",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            "-d",
            home.path().to_str().expect("utf-8"),
            "-s",
            "/bin/sh",
            &name,
        ]));
        let uid: u32 = String::from_utf8(run_ok(Command::new("id").args(["-u", &name])).stdout)
            .expect("utf-8")
            .trim()
            .parse()
            .expect("uid");
        let mut user = TestUser {
            name,
            uid,
            sub_start: None,
            home,
        };
        run_ok(Command::new("chown").args([&user.name, user.home.path().to_str().unwrap()]));
        // The user's XDG_RUNTIME_DIR, as a login manager makes it: theirs, 0700.
        let run = user.home().join("run");
        fs::create_dir(&run).expect("run dir");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod run");
        run_ok(Command::new("chown").args([&user.name, run.to_str().unwrap()]));
        if with_subordinate_ids {
            user.add_subordinate_ids(n);
        }
        user
    }

    /// Gives the user a range in /etc/subuid and /etc/subgid (`n` makes it
    /// differ from other users' of this run).
    fn add_subordinate_ids(&mut self, n: u32) {
        let start = 1_000_000 + (std::process::id() * 8 + n) % 20_000 * SUB_COUNT;
        let _lock = ID_FILES.lock().unwrap_or_else(|e| e.into_inner());
        for file in ["/etc/subuid", "/etc/subgid"] {
            let mut text = fs::read_to_string(file).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{}:{start}:{SUB_COUNT}\n", self.name));
            write_atomically(file, &text);
        }
        self.sub_start = Some(start);
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// The user's store: `$XDG_DATA_HOME/lstore`.
    fn store(&self) -> PathBuf {
        self.home().join("data/lstore")
    }

    /// A folder of the user's, for inputs and mount points.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.home().join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        run_ok(Command::new("chown").args(["-R", &self.name, dir.to_str().unwrap()]));
        dir
    }

    /// `lstore ARGS…` as this user (no --root: the default user store).
    fn lstore(&self, args: &[&str]) -> Output {
        let mut command = Command::new("runuser");
        command
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(self.home())
            .args(["-u", &self.name, "--", "env"])
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!(
                "XDG_DATA_HOME={}",
                self.home().join("data").display()
            ))
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.home().join("run").display()
            ))
            .arg(format!("USER={}", self.name))
            .arg(format!(
                "PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                Path::new(env!("CARGO_BIN_EXE_lstore"))
                    .parent()
                    .unwrap()
                    .display()
            ))
            .arg(env!("CARGO_BIN_EXE_lstore"))
            .args(args);
        command.output().expect("run lstore as the user")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lstore(args);
        assert!(
            out.status.success(),
            "lstore {} as {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A command that must fail with one `error:` line; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.lstore(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "lstore {} should have failed",
            args.join(" ")
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected on stderr: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        lines[0].to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `sh -c SCRIPT` through `lstore unshare`.
    fn unshare_sh(&self, script: &str) -> String {
        self.ok(&["unshare", "sh", "-e", "-c", script])
    }

    /// The image mounted read-only inside the user's namespace, listed
    /// there: path → (type, uid, gid, mode, size of files).
    fn mounted_listing(&self, reference: &str) -> BTreeMap<String, Listed> {
        let mnt = self.dir("mnt");
        let out = self.unshare_sh(&format!(
            "lstore mount {reference} {m} >/dev/null; \
             find {m} -mindepth 1 -printf '%P %y %U %G %m %s\\n'; \
             lstore umount {m} >/dev/null",
            m = mnt.display()
        ));
        out.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 6, "find line {line:?}");
                let kind = f[1].to_string();
                let size = if kind == "f" {
                    f[5].parse().unwrap()
                } else {
                    0
                };
                (
                    f[0].to_string(),
                    Listed {
                        kind,
                        uid: f[2].parse().unwrap(),
                        gid: f[3].parse().unwrap(),
                        mode: u32::from_str_radix(f[4], 8).unwrap(),
                        size,
                    },
                )
            })
            .collect()
    }

    /// `rmi REFS` then `gc` must leave no file in the user's store but
    /// its database and lock files.
    fn remove_all(&self, references: &[&str]) {
        let mut args = vec!["rmi"];
        args.extend_from_slice(references);
        self.ok(&args);
        self.ok(&["gc"]);
        for sub in ["blobs", "overlay2", "tmp", "ingest", "containers"] {
            assert_eq!(count_files(&self.store().join(sub)), 0, "{sub} left over");
        }
    }

    fn pause_pid(&self) -> Option<i32> {
        let file = self.home().join("run/lstore/pause.pid");
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // The pause process this user's commands started, by its pid.
        if let Some(pid) = self.pause_pid() {
            // SAFETY: a signal to one pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        if self.sub_start.is_some() {
            let _lock = ID_FILES.lock().unwrap_or_else(|e| e.into_inner());
            for file in ["/etc/subuid", "/etc/subgid"] {
                if let Ok(text) = fs::read_to_string(file) {
                    let prefix = format!("{}:", self.name);
                    let kept: String = text
                        .lines()
                        .filter(|l| !l.starts_with(&prefix))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    write_atomically(file, &kept);
                }
            }
        }
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// Whether `pid` runs (a zombie whose parent has not reaped it does not).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    kind: String,
    uid: u32,
    gid: u32,
    mode: u32,
    size: u64,
}

/// Replaces an /etc file by rename, as usermod does: lstore (of other
/// tests) never reads it half-written.
fn write_atomically(file: &str, text: &str) {
    let tmp = format!("{file}.lstore-test-{}", std::process::id());
    fs::write(&tmp, text).expect("write id file");
    fs::rename(&tmp, file).expect("replace id file");
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An image with files of several owners, setuid and setgid files, a
/// whiteout and an opaque directory in its second layer.
fn owners_image() -> Image {
    let mut base = TarBuilder::new();
    base.dir("etc");
    base.file("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    base.file("etc/shadow", "root:*:1::::::\n")
        .owner(0, 42)
        .mode(0o640);
    base.symlink("etc/motd", "passwd");
    base.dir("home");
    base.dir("home/alice").owner(1000, 1000).mode(0o700);
    base.file("home/alice/notes", "hello\n")
        .owner(1000, 1000)
        .mode(0o600);
    base.dir("usr");
    base.dir("usr/bin");
    base.file("usr/bin/su", "#!/bin/sh\n").mode(0o4755);
    base.file("usr/bin/wall", "#!/bin/sh\n")
        .owner(0, 5)
        .mode(0o2755);
    base.dir("srv").owner(65534, 65534);
    base.file("srv/data", "nobody's\n").owner(65534, 65534);
    base.dir("opq").owner(33, 33);
    base.file("opq/a", "a\n").owner(33, 33);
    base.file("opq/b", "b\n").owner(33, 33);
    base.file("gone", "old\n");
    let mut top = TarBuilder::new();
    top.whiteout("gone");
    top.dir("opq").owner(33, 33);
    top.opaque("opq");
    top.file("opq/c", "c\n").owner(7, 7);
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .build()
}

/// An image whose files all belong to root.
fn root_only_image() -> Image {
    let mut base = TarBuilder::new();
    base.dir("bin");
    base.file("bin/tool", "#!/bin/sh\n").mode(0o4755);
    base.file("old", "old\n");
    base.dir("d");
    base.file("d/x", "x\n");
    let mut top = TarBuilder::new();
    top.whiteout("old");
    top.dir("d");
    top.opaque("d");
    top.file("d/y", "y\n");
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .build()
}

/// An OCI layout of `image` (tag `src`) in a folder of the user's.
fn layout_for(user: &TestUser, image: &Image, name: &str) -> PathBuf {
    let dir = user.dir(name);
    write_oci_layout(&dir, &[(image, LayoutNames::ref_name("src"))]);
    run_ok(Command::new("chown").args(["-R", &user.name, dir.to_str().unwrap()]));
    dir
}

/// `lstore load` of `image` as `user`, tagged `tag`, which must succeed.
fn load_as(user: &TestUser, image: &Image, tag: &str) {
    let layout = layout_for(user, image, &format!("in-{}", tag.replace(':', "-")));
    user.ok(&["load", "-i", layout.to_str().unwrap(), "--tag", tag]);
}

/// What `umoci unpack` (as root) makes of `image`, listed like
/// `TestUser::mounted_listing`.
fn umoci_listing(image: &Image) -> BTreeMap<String, Listed> {
    let dir = common::scratch();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &[(image, LayoutNames::ref_name("twin"))]);
    let bundle = umoci_unpack(&layout, "twin");
    let tree = snapshot(&bundle.rootfs());
    tree.paths()
        .into_iter()
        .map(|path| {
            let node = tree.get(path).expect("listed");
            let (kind, size) = match &node.kind {
                NodeKind::File { size, .. } => ("f", *size),
                NodeKind::Dir => ("d", 0),
                NodeKind::Symlink(_) => ("l", 0),
                NodeKind::Fifo => ("p", 0),
                NodeKind::Socket => ("s", 0),
                NodeKind::CharDev { .. } => ("c", 0),
                NodeKind::BlockDev { .. } => ("b", 0),
            };
            (
                path.to_string(),
                Listed {
                    kind: kind.to_string(),
                    uid: node.uid,
                    gid: node.gid,
                    mode: node.mode,
                    size,
                },
            )
        })
        .collect()
}

/// Layer `index`'s folder in the user's store, from `inspect`.
fn layer_path(inspect: &Value, index: usize) -> PathBuf {
    PathBuf::from(
        inspect["layers"][index]["path"]
            .as_str()
            .expect("layer path"),
    )
}

/// Files (not folders) left anywhere under `dir`.
fn count_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let ft = entry.file_type().expect("type");
        if ft.is_dir() {
            count += count_files(&entry.path());
        } else {
            count += 1;
        }
    }
    count
}

#[test]
fn user_with_subordinate_ids_keeps_every_owner() {
    if !have_tools() {
        return;
    }
    let user = TestUser::new(true);
    let image = owners_image();
    load_as(&user, &image, "owners:1");

    // Inside the namespace, the mounted image is umoci's unpack as root.
    let expected = umoci_listing(&image);
    let actual = user.mounted_listing("owners:1");
    assert_eq!(actual, expected, "mounted in the user's namespace vs umoci");
    assert_eq!(actual["usr/bin/su"].mode, 0o4755);
    assert_eq!(actual["usr/bin/wall"].mode, 0o2755);
    assert!(!actual.contains_key("gone") && !actual.contains_key("opq/a"));
    assert!(actual.contains_key("opq/c"));

    // On disk: owners are the mapped ids, overlay's marks the user flavour.
    let sub = user.sub_start.expect("ranges");
    let inspect = user.json(&["inspect", "owners:1"]);
    let base = layer_path(&inspect, 0);
    let top = layer_path(&inspect, 1);
    assert!(base.starts_with(user.store()), "{}", base.display());
    let meta = fs::symlink_metadata(base.join("home/alice/notes")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (sub + 999, sub + 999));
    let meta = fs::symlink_metadata(base.join("usr/bin/su")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (user.uid, 0o4755));
    let gone = snapshot(&top);
    assert!(gone.get("gone").expect("whiteout").kind.is_whiteout());
    assert_eq!(
        get_xattr(&top.join("opq"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(get_xattr(&top.join("opq"), "trusted.overlay.opaque"), None);
    assert_eq!(
        fs::read_to_string(user.store().join("overlay-xattrs")).unwrap(),
        "user\n"
    );

    // `lstore unshare` sees the mapped owners and passes exit codes on.
    let ls = user.unshare_sh(&format!(
        "stat -c '%u:%g' {}",
        base.join("home/alice/notes").display()
    ));
    assert_eq!(ls.trim(), "1000:1000");
    let out = user.lstore(&["unshare", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    // A mount made by one command is seen by the next, in the namespace.
    let mnt = user.dir("kept");
    user.ok(&["mount", "owners:1", mnt.to_str().unwrap()]);
    let seen = user.unshare_sh(&format!("cat {}/opq/c", mnt.display()));
    assert_eq!(seen, "c\n");
    assert_eq!(
        fs::read_dir(&mnt).unwrap().count(),
        0,
        "the host does not see the mount"
    );
    user.ok(&["umount", mnt.to_str().unwrap()]);

    // The rest of the commands work for the user; fsck finds nothing.
    user.ok(&["fsck"]);
    user.ok(&["df"]);
    let images = user.json(&["images", "--format", "json"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1));
    let saved = user.dir("out").join("saved.tar");
    user.ok(&["save", "-o", saved.to_str().unwrap(), "owners:1"]);
    assert!(fs::metadata(&saved).unwrap().len() > 0);

    user.remove_all(&["owners:1"]);
}

#[test]
fn user_pulls_pushes_and_commits_with_the_registry() {
    if !have_tools() {
        return;
    }
    let user = TestUser::new(true);
    let registry = Registry::start();
    let image = owners_image();
    let work = common::scratch();
    registry.push_image(work.path(), &image, "rootless/owners:1", &[]);
    let reference = format!("{}/rootless/owners:1", registry.host());
    user.ok(&["pull", "-q", &reference]);
    assert_eq!(user.mounted_listing(&reference), umoci_listing(&image));

    // Commit of a --rw mount in the namespace: the new layer has the
    // image's owners, not the user's.
    let mnt = user.dir("rw");
    user.unshare_sh(&format!(
        "lstore mount --rw {reference} {m}; echo more >> {m}/home/alice/notes; \
         rm {m}/etc/passwd; lstore commit {m} rootless/changed:1; lstore umount {m}",
        m = mnt.display()
    ));
    let headers = top_layer_headers(&user, "rootless/changed:1");
    assert_eq!(headers.get("home/alice/notes"), Some(&(1000, 1000, 0o600)));
    assert_eq!(headers.get("home/alice/"), Some(&(1000, 1000, 0o700)));
    assert!(headers.contains_key("etc/.wh.passwd"), "{headers:?}");

    let dest = format!("{}/rootless/changed:1", registry.host());
    user.ok(&["push", "-q", "rootless/changed:1", &dest]);
    let (manifest, _, _) = registry.manifest("rootless/changed", "1");
    assert!(!manifest.is_empty());
}

/// (uid, gid, mode) of each entry of the image's top layer, from `save`.
fn top_layer_headers(user: &TestUser, reference: &str) -> BTreeMap<String, (u64, u64, u32)> {
    let out = user.dir("save");
    let tar_path = out.join(format!("{}.tar", USERS.fetch_add(1, Ordering::Relaxed)));
    user.ok(&["save", "-o", tar_path.to_str().unwrap(), reference]);
    let inspect = user.json(&["inspect", reference]);
    let digest = inspect["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .expect("top layer digest")
        .to_string();
    let blob_name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut archive = tar::Archive::new(fs::File::open(&tar_path).unwrap());
    let mut blob = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(&blob_name) {
            entry.read_to_end(&mut blob).unwrap();
        }
    }
    assert!(!blob.is_empty(), "{blob_name} not in the saved tar");
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    layer
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                (
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap() & 0o7777,
                ),
            )
        })
        .collect()
}

#[test]
fn user_without_subordinate_ids_gets_a_clear_error_or_override_xattrs() {
    if !have_tools() {
        return;
    }
    let user = TestUser::new(false);
    // Root's files only: fine without any range.
    let plain = root_only_image();
    load_as(&user, &plain, "plain:1");
    let listing = user.mounted_listing("plain:1");
    assert_eq!(listing, umoci_listing(&plain));
    assert_eq!(listing["bin/tool"].mode, 0o4755);

    // Other owners: refused, naming the fix, and nothing half-stored.
    let image = owners_image();
    let layout = layout_for(&user, &image, "in");
    let error = user.fails(&[
        "load",
        "-q",
        "-i",
        layout.to_str().unwrap(),
        "--tag",
        "owners:1",
    ]);
    assert!(error.contains("usermod --add-subuids"), "{error}");
    assert!(error.contains("--ignore-chown-errors"), "{error}");
    let images = user.json(&["images", "--format", "json"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    assert_eq!(count_files(&user.store().join("tmp")), 0);
    let layer_dirs = fs::read_dir(user.store().join("overlay2")).unwrap().count();
    assert_eq!(layer_dirs, 3, "plain:1's two layers and l/ only");

    // A symlink's owner cannot go to an xattr: refused even so.
    let mut links = TarBuilder::new();
    links.symlink("link", "target").owner(5, 5);
    let linked = ImageBuilder::new().tar(&links, Compression::Gzip).build();
    let layout_links = layout_for(&user, &linked, "links");
    let error = user.fails(&[
        "load",
        "-q",
        "--ignore-chown-errors",
        "-i",
        layout_links.to_str().unwrap(),
    ]);
    assert!(error.contains("owner 5:5 of a symlink"), "{error}");
    assert!(error.contains("usermod --add-subuids"), "{error}");

    // --ignore-chown-errors: stored as the user's, owners in the xattr.
    user.ok(&[
        "load",
        "--ignore-chown-errors",
        "-i",
        layout.to_str().unwrap(),
        "--tag",
        "owners:1",
    ]);
    let inspect = user.json(&["inspect", "owners:1"]);
    let base = layer_path(&inspect, 0);
    let stat = |path: &str| get_xattr(&base.join(path), "user.containers.override_stat");
    let notes = fs::symlink_metadata(base.join("home/alice/notes")).unwrap();
    assert_eq!(notes.uid(), user.uid);
    assert_eq!(
        stat("home/alice/notes").as_deref(),
        Some(&b"1000:1000:0600:file"[..])
    );
    assert_eq!(
        stat("home/alice").as_deref(),
        Some(&b"1000:1000:0700:dir"[..])
    );
    assert_eq!(stat("etc/shadow").as_deref(), Some(&b"0:42:0640:file"[..]));
    assert_eq!(stat("usr/bin/wall").as_deref(), Some(&b"0:5:2755:file"[..]));
    assert_eq!(stat("usr/bin/su"), None, "root's files need no xattr");
    let su = fs::symlink_metadata(base.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    let top = layer_path(&inspect, 1);
    assert_eq!(
        get_xattr(&top.join("opq"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        get_xattr(&top.join("opq/c"), "user.containers.override_stat").as_deref(),
        Some(&b"7:7:0644:file"[..])
    );

    user.ok(&["fsck"]);

    // save gives the layers back with their owners.
    let saved = top_layer_headers(&user, "owners:1");
    assert_eq!(saved.get("opq/c"), Some(&(7, 7, 0o644)), "{saved:?}");
    assert!(saved.contains_key("opq/.wh..wh..opq"), "{saved:?}");

    // A commit exports the owners the xattrs hold.
    let mnt = user.dir("rw");
    user.unshare_sh(&format!(
        "lstore mount --rw owners:1 {m}; echo more >> {m}/home/alice/notes; \
         lstore commit --ignore-chown-errors {m} changed:1; lstore umount {m}",
        m = mnt.display()
    ));
    let headers = top_layer_headers(&user, "changed:1");
    assert_eq!(headers.get("home/alice/notes"), Some(&(1000, 1000, 0o600)));
    assert_eq!(headers.get("home/alice/"), Some(&(1000, 1000, 0o700)));

    user.remove_all(&["owners:1", "plain:1", "changed:1"]);
}

#[test]
fn two_users_have_independent_stores() {
    if !have_tools() {
        return;
    }
    let root_store = || {
        fs::metadata("/var/lib/lstore")
            .and_then(|m| m.modified())
            .ok()
    };
    let root_store_before = root_store();
    let alice = TestUser::new(true);
    let bob = TestUser::new(false);
    let image = root_only_image();
    load_as(&alice, &image, "mine:1");
    let listed = |u: &TestUser| {
        u.json(&["images", "--format", "json"])
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    };
    assert_eq!(listed(&alice), 1);
    assert_eq!(listed(&bob), 0);
    assert_eq!(count_files(&bob.store().join("blobs")), 0);
    assert_eq!(count_files(&bob.store().join("overlay2")), 0);
    assert_eq!(root_store(), root_store_before, "root's store was touched");
    // Each user has a pause process of their own.
    assert_ne!(alice.pause_pid(), bob.pause_pid());
    assert!(alice.pause_pid().is_some() && bob.pause_pid().is_some());
    // Host root may not write into a user's store (it would leave host
    // uid 0 files, setuid ones included, in a tree the user owns).
    let blobs_before = count_files(&alice.store().join("blobs"));
    let out = run_as_root(&["--root", &alice.store().to_string_lossy(), "images"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("run lstore as that user"), "{stderr}");
    assert_eq!(count_files(&alice.store().join("blobs")), blobs_before);
}

fn run_as_root(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lstore"))
        .args(args)
        .env_remove("LSTORE_ROOT")
        .output()
        .unwrap()
}

#[test]
fn subordinate_ids_added_later_take_effect_on_the_next_command() {
    if !have_tools() {
        return;
    }
    let mut user = TestUser::new(false);
    let image = owners_image();
    let layout = layout_for(&user, &image, "in");
    let args = [
        "load",
        "-q",
        "-i",
        layout.to_str().unwrap(),
        "--tag",
        "owners:1",
    ];
    let error = user.fails(&args);
    assert!(error.contains("usermod --add-subuids"), "{error}");
    let before = user.pause_pid().expect("a pause process");

    // The fix the error names; nothing else (as with podman system migrate,
    // the next command starts a pause process with the new ranges).
    user.add_subordinate_ids(USERS.fetch_add(1, Ordering::Relaxed));
    user.ok(&args);
    let after = user.pause_pid().expect("a pause process");
    assert_ne!(before, after);
    let mut gone = false;
    for _ in 0..100 {
        gone = !alive(before);
        if gone {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "old pause process {before} left");
    assert_eq!(user.mounted_listing("owners:1"), umoci_listing(&image));
}
