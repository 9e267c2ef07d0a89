//! Reliability on a real store: processes SIGKILLed at random points,
//! several processes at once, bounded memory and layer sizes, a full disk
//! and a root that cannot be written.
//!
//! After every kill the store must pass `fsck` (at once, or after
//! `fsck --repair` alone), and every image a finished command stored
//! must still be listed, mount with `lstore mount` and equal its source.
//!
//! `LSTORE_KILL_ITERATIONS` and `LSTORE_KILL_SEED` set the length and the
//! seed of the kill loop (scripts/killtest.sh runs long loops).

mod common;

use common::checks::umoci_twin;
use common::image::{docker_archive, write_oci_layout, write_oci_layout_tar, Image};
use common::lstore::{assert_one_line_error, Output};
use common::mount::LstoreMount;
use common::peers::{skopeo_copy, umoci_unpack};
use common::scenes::{noise, small_app, small_base};
use common::tarball::Layer;
use common::tree::{diff, snapshot, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};
use tempfile::TempDir;

// ------------------------------------------------------------- fixtures

/// A base layer of a few MB, so that storing it takes long enough for a
/// kill or a second process to land in the middle.
fn base_layer(seed: u64) -> Layer {
    let mut t = TarBuilder::new();
    t.dir("usr");
    t.dir("usr/lib");
    for i in 0..24 {
        t.file(format!("usr/lib/lib{i}.so"), noise(128 * 1024, seed + i))
            .mode(0o755);
    }
    t.dir("etc");
    t.file("etc/os-release", format!("ID=base{seed}\n"));
    t.symlink("usr/lib/libc.so", "lib0.so");
    t.layer(Compression::Gzip)
}

/// A small top layer unique to `name`.
fn app_layer(name: &str, compression: Compression) -> Layer {
    let mut t = TarBuilder::new();
    t.dir("app");
    t.file(
        format!("app/{name}"),
        noise(200 * 1024, name.len() as u64 * 31),
    );
    t.file("app/name", format!("{name}\n"));
    t.dir("etc");
    t.whiteout("etc/os-release");
    t.layer(compression)
}

fn image_on(base: &Layer, name: &str, compression: Compression) -> Image {
    ImageBuilder::new()
        .layer(base.clone())
        .layer(app_layer(name, compression))
        .cmd(&[name])
        .build()
}

/// What the image's root filesystem must look like: umoci's unpack of it.
fn expected_tree(image: &Image) -> Tree {
    let dir = scratch();
    let layout = dir.path().join("twin");
    write_oci_layout(
        &layout,
        &[(&umoci_twin(image), LayoutNames::ref_name("twin"))],
    );
    snapshot(&umoci_unpack(&layout, "twin").rootfs())
}

fn layout_of(dir: &Path, image: &Image, reference: &str) -> PathBuf {
    write_oci_layout(dir, &[(image, LayoutNames::containerd(reference))]);
    dir.to_path_buf()
}

/// A deterministic generator (xorshift64*), so a failing run can be
/// repeated with its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// --------------------------------------------------- a registry on loopback

/// A `docker-registry` on a free loopback port, filled by skopeo; killed
/// on drop.
struct Registry {
    child: Child,
    host: String,
    _dir: TempDir,
}

impl Registry {
    fn start() -> Registry {
        for tool in ["docker-registry", "skopeo"] {
            assert!(
                have(tool),
                "{tool} is needed (scripts/setup.sh installs it)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("lstore-registry-")
            .tempdir()
            .expect("registry dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.host).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `<host>/<name>`: a reference into this registry.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Puts `image` into the registry as `<host>/<name>` with skopeo.
    fn push(&self, image: &Image, name: &str) -> String {
        let dir = scratch();
        let layout = dir.path().join("push");
        write_oci_layout(&layout, &[(image, LayoutNames::ref_name("push"))]);
        let reference = self.reference(name);
        skopeo_copy(
            &["--dest-tls-verify=false"],
            &format!("oci:{}:push", layout.display()),
            &format!("docker://{reference}"),
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- checks

/// The tree an image shows mounted read-only with `lstore mount`.
fn mounted(store: &Lstore, reference: &str) -> Tree {
    let mount = LstoreMount::new(store, reference, false);
    snapshot(mount.root())
}

/// `actual` equals `expected`; else fails with `heading` and the first
/// differences.
fn assert_same_tree(expected: &Tree, actual: &Tree, heading: &str) {
    let differences = diff(expected, actual);
    assert!(
        differences.is_empty(),
        "{heading}:\n  {}",
        differences
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The image mounts with `lstore mount` and equals `expected`.
fn assert_mounts_as(store: &Lstore, reference: &str, expected: &Tree) {
    let actual = mounted(store, reference);
    assert_same_tree(
        expected,
        &actual,
        &format!("{reference} mounted differs from its source"),
    );
}

/// Tags listed by `images`, familiar names, with their image ids.
fn listed(store: &Lstore) -> BTreeMap<String, String> {
    store
        .images()
        .into_iter()
        .filter_map(|row| {
            let repository = row["repository"].as_str()?;
            let tag = row["tag"].as_str()?;
            Some((
                format!("{repository}:{tag}"),
                row["id"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn assert_fsck_clean(store: &Lstore, what: &str) {
    let out = store.run(&["fsck"]);
    assert!(
        out.success(),
        "{what}: fsck finds problems:\n{}{}",
        out.stdout,
        out.stderr
    );
}

/// `fsck`; when it finds anything, `fsck --repair` alone must succeed and
/// leave a store that `fsck` accepts. Returns what was found first: the
/// damage, then the leftovers (prefixed `leftover: `).
fn fsck_or_repair(store: &Lstore, what: &str) -> Vec<String> {
    let out = store.run(&["fsck", "--format", "json"]);
    if out.success() {
        return Vec::new();
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: fsck --format json printed no report ({e}):\n{}{}",
            out.stdout, out.stderr
        )
    });
    let lines = |key: &str, prefix: &str| -> Vec<String> {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["repaired"] != true && p["removed"] != true)
                    .filter_map(|p| p["what"].as_str().map(|w| format!("{prefix}{w}")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = lines("problems", "");
    found.extend(lines("leftovers", "leftover: "));
    let repair = store.run(&["fsck", "--repair"]);
    assert!(
        repair.success(),
        "{what}: fsck --repair failed (first found: {found:?}):\n{}{}",
        repair.stdout,
        repair.stderr
    );
    let again = store.run(&["fsck"]);
    assert!(
        again.success(),
        "{what}: fsck still finds problems after fsck --repair \
         (first found: {found:?}):\n{}{}",
        again.stdout,
        again.stderr
    );
    found
}

/// A problem line with digests and paths blanked, to count kinds.
fn problem_kind(line: &str) -> String {
    line.split_whitespace()
        .map(|w| {
            if w.contains("sha256:") || w.contains('/') || w.len() >= 32 {
                "…"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------- kill loop

/// Lets `child` run for up to `delay`: returns how long it took when it
/// exited by then, else SIGKILLs it and returns `None`.
fn exit_or_kill(child: &mut std::process::Child, delay: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return Some(start.elapsed());
        }
        let spent = start.elapsed();
        if spent >= delay {
            let _ = child.kill();
            return None;
        }
        sleep((delay - spent).min(Duration::from_millis(2)));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Load(usize),
    Pull(usize),
    Rmi(usize),
    Gc,
}

/// One image of the kill loop: loadable from an archive, pullable from
/// the registry, under the same name.
struct KillImage {
    reference: String,
    /// As `images` lists it.
    listed_as: String,
    archive: PathBuf,
    id: String,
    expected: Tree,
}

struct KillLoop<'a> {
    store: &'a Lstore,
    images: Vec<KillImage>,
    present: Vec<bool>,
    rng: Rng,
    /// Typical run time of each kind of run (operation, and whether its
    /// image was there), learnt as the loop goes: kill delays are drawn
    /// from it.
    durations: BTreeMap<String, Duration>,
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Load(_) => "load",
        Op::Pull(_) => "pull",
        Op::Rmi(_) => "rmi",
        Op::Gc => "gc",
    }
}

impl KillLoop<'_> {
    /// The kind of a run, for its typical duration: storing an image that
    /// is there already, or removing one that is not, is quick.
    fn kind(&self, op: Op) -> String {
        match op {
            Op::Load(i) | Op::Pull(i) | Op::Rmi(i) => {
                let state = if self.present[i] { "present" } else { "absent" };
                format!("{} {state}", op_name(op))
            }
            Op::Gc => "gc".into(),
        }
    }

    fn typical(&self, kind: &str) -> Duration {
        self.durations
            .get(kind)
            .copied()
            .unwrap_or(Duration::from_millis(300))
    }

    /// A run of `kind` took `took` (`finished`), or was still running
    /// after `took`.
    fn learn(&mut self, kind: String, took: Duration, finished: bool) {
        let typical = self.typical(&kind);
        let next = if finished {
            (typical * 2 + took) / 3
        } else {
            typical.max(took + took / 4)
        };
        self.durations.insert(kind, next);
    }

    fn args(&self, op: Op) -> Vec<String> {
        let s = |x: &str| x.to_string();
        match op {
            Op::Load(i) => vec![
                s("load"),
                s("-q"),
                s("-i"),
                self.images[i].archive.to_str().expect("utf-8").to_string(),
            ],
            Op::Pull(i) => vec![s("pull"), s("-q"), self.images[i].reference.clone()],
            Op::Rmi(i) => vec![s("rmi"), self.images[i].reference.clone()],
            Op::Gc => vec![s("gc")],
        }
    }

    /// Mostly operations that change something: stores of absent images,
    /// removals of present ones.
    fn choose(&mut self) -> Op {
        let n = self.images.len() as u64;
        let absent: Vec<usize> = (0..self.images.len())
            .filter(|i| !self.present[*i])
            .collect();
        let present: Vec<usize> = (0..self.images.len())
            .filter(|i| self.present[*i])
            .collect();
        let pick = |rng: &mut Rng, among: &[usize]| -> usize {
            if among.is_empty() || rng.below(5) == 0 {
                rng.below(n) as usize
            } else {
                among[rng.below(among.len() as u64) as usize]
            }
        };
        match self.rng.below(20) {
            0..=6 => Op::Load(pick(&mut self.rng, &absent)),
            7..=13 => Op::Pull(pick(&mut self.rng, &absent)),
            14..=17 => Op::Rmi(pick(&mut self.rng, &present)),
            _ => Op::Gc,
        }
    }

    /// Runs `op` to completion and remembers how long it took.
    fn timed(&mut self, op: Op) {
        let kind = self.kind(op);
        let start = Instant::now();
        self.store.ok(&self.args(op));
        self.durations.insert(kind, start.elapsed());
        match op {
            Op::Load(i) | Op::Pull(i) => self.present[i] = true,
            Op::Rmi(i) => self.present[i] = false,
            Op::Gc => {}
        }
    }
}

/// What one kill loop did.
#[derive(Default, Debug)]
struct KillSummary {
    iterations: u64,
    /// Processes that died of the SIGKILL.
    kills: u64,
    /// Processes that had finished before the kill came.
    finished: u64,
    /// Iterations after which fsck needed --repair.
    repairs: u64,
    problem_kinds: BTreeMap<String, u64>,
    lost: u64,
    mounts_checked: u64,
}

fn run_kill_loop(iterations: u64, seed: u64) -> KillSummary {
    let registry = Registry::start();
    let scratch = scratch();
    let store = Lstore::new();
    let base = base_layer(1);
    let sources = [
        ("k0", Compression::Gzip),
        ("k1", Compression::Zstd),
        ("k2", Compression::Gzip),
    ];
    let mut images = Vec::new();
    for (i, (name, compression)) in sources.iter().enumerate() {
        let image = image_on(&base, name, *compression);
        let reference = registry.push(&image, &format!("kill/{name}:1"));
        // Three kinds of archive: layout dir, layout tar, docker-archive.
        let dir = scratch.path().join(name);
        let archive = match i {
            0 => layout_of(&dir, &image, &reference),
            1 => write_oci_layout_tar(&dir, &[(&image, LayoutNames::containerd(&reference))]),
            _ => {
                let path = scratch.path().join(format!("{name}.tar"));
                fs::write(&path, docker_archive(&[(&image, &[reference.as_str()])]))
                    .expect("docker-archive");
                path
            }
        };
        images.push(KillImage {
            listed_as: reference.clone(),
            reference,
            archive,
            id: image.config_digest.clone(),
            expected: expected_tree(&image),
        });
    }
    let count = images.len();
    let mut world = KillLoop {
        store: &store,
        images,
        present: vec![false; count],
        rng: Rng::new(seed),
        durations: BTreeMap::new(),
    };
    // Calibration: each operation once, on a store that has to do the work.
    for op in [
        Op::Load(0),
        Op::Rmi(0),
        Op::Gc,
        Op::Pull(1),
        Op::Rmi(1),
        Op::Gc,
        Op::Load(2),
    ] {
        world.timed(op);
    }
    eprintln!(
        "kill loop: seed {seed}, {iterations} iterations, calibrated {:?}",
        world.durations
    );

    let mut summary = KillSummary::default();
    for iteration in 0..iterations {
        let op = world.choose();
        let args = world.args(op);
        // Up to 1.1 times the typical run time: most kills land while the
        // command runs, some before it really started.
        let kind = world.kind(op);
        let typical = world.typical(&kind);
        let delay = Duration::from_micros(world.rng.below(typical.as_micros() as u64 * 11 / 10));
        let before: Vec<bool> = world.present.clone();
        let mut child = store.spawn(&args);
        let exited = exit_or_kill(&mut child, delay);
        match exited {
            Some(took) => world.learn(kind, took, true),
            None => world.learn(kind, delay, false),
        }
        let output = child.wait_with_output().expect("wait");
        let what = format!(
            "iteration {iteration} (seed {seed}): lstore {} killed after {delay:?}",
            args.join(" ")
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let killed = output.status.signal() == Some(libc::SIGKILL);
        let succeeded = output.status.success();
        if killed {
            summary.kills += 1;
        } else {
            summary.finished += 1;
            assert!(
                output.status.code().is_some_and(|c| c != 101) && !stderr.contains("panicked"),
                "{what}: crashed ({}): {stderr}",
                output.status
            );
            // Only the removal of an image that is not there may fail.
            let may_fail = matches!(op, Op::Rmi(i) if !before[i]);
            assert!(
                succeeded || may_fail,
                "{what}: finished but failed: {stderr}"
            );
        }
        summary.iterations += 1;

        let problems = fsck_or_repair(&store, &what);
        if !problems.is_empty() {
            summary.repairs += 1;
            for p in &problems {
                *summary.problem_kinds.entry(problem_kind(p)).or_insert(0) += 1;
            }
        }

        let tags = listed(&store);
        for (i, image) in world.images.iter().enumerate() {
            let now = match tags.get(&image.listed_as) {
                Some(id) => {
                    assert_eq!(
                        id, &image.id,
                        "{what}: {} names another image",
                        image.reference
                    );
                    true
                }
                None => false,
            };
            // What a finished command promised; a killed one promises
            // nothing about its own image.
            let expected = match op {
                Op::Load(j) | Op::Pull(j) if j == i => (!killed).then_some(true),
                Op::Rmi(j) if j == i => (!killed).then_some(false),
                _ => Some(before[i]),
            };
            if expected == Some(true) && !now {
                summary.lost += 1;
                panic!(
                    "{what}: LOST {}: stored by a finished command, no longer listed",
                    image.reference
                );
            }
            assert!(
                !(expected == Some(false) && now),
                "{what}: {} is still listed after it was removed",
                image.reference
            );
            if now {
                assert_mounts_as(&store, &image.reference, &image.expected);
                summary.mounts_checked += 1;
            }
            world.present[i] = now;
        }
    }

    // The end: one gc leaves nothing unfinished and a clean store.
    store.ok(&["gc"]);
    assert_fsck_clean(&store, "after the kill loop");
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "gc empties tmp/, ingest/"
    );
    for (i, image) in world.images.iter().enumerate() {
        if world.present[i] {
            assert_mounts_as(&store, &image.reference, &image.expected);
        }
    }
    summary
}

/// Writes a line straight to stderr, past the test harness's capture, so
/// that the figures of a passing run show in CI's log.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// 300 iterations take about 2 minutes on a busy 2-core machine: CI runs
/// them all; scripts/killtest.sh runs longer loops.
#[test]
fn kill_anything_at_any_point() {
    let iterations = env_number("LSTORE_KILL_ITERATIONS", 300);
    let seed = env_number("LSTORE_KILL_SEED", 0x6c73_746f_7265);
    let start = Instant::now();
    let s = run_kill_loop(iterations, seed);
    report(&format!(
        "kill loop (seed {seed}): {} iterations in {:.0?}, {} killed mid-run, {} finished first, \
         {} needed fsck --repair, {} lost, {} mounts checked",
        s.iterations,
        start.elapsed(),
        s.kills,
        s.finished,
        s.repairs,
        s.lost,
        s.mounts_checked
    ));
    for (kind, n) in &s.problem_kinds {
        report(&format!("  fsck after a kill found {n}×: {kind}"));
    }
    report(&format!("{} kills survived, {} lost", s.kills, s.lost));
    assert_eq!(s.lost, 0);
    assert!(
        s.kills * 3 >= s.iterations,
        "at least a third of the iterations must kill a running command: {s:?}"
    );
}

// ------------------------------------------------- kill during a commit

/// The changes a commit stores: a file of a few MiB (so the commit takes
/// long enough for a kill to land inside it), a small one, a deletion of
/// a lower file (a whiteout). Returns the tree the mount shows.
fn change_for_commit(mount: &LstoreMount, iteration: u64) -> Tree {
    let root = mount.root();
    fs::create_dir_all(root.join("committed")).expect("mkdir");
    fs::write(
        root.join("committed/big"),
        noise(4 * 1024 * 1024, 1000 + iteration),
    )
    .expect("write big");
    fs::write(root.join("committed/iteration"), format!("{iteration}\n")).expect("write small");
    fs::remove_file(root.join(COMMIT_DELETED)).expect("delete a lower file");
    snapshot(root)
}

/// The lower file every commit deletes.
const COMMIT_DELETED: &str = "usr/lib/lib3.so";

/// A committed image mounts read-only as the tree its mount showed: the
/// written files there, the deleted one gone.
fn assert_commit_stored(store: &Lstore, reference: &str, written: &Tree, what: &str) {
    let actual = mounted(store, reference);
    assert!(
        actual.get("committed/big").is_some() && actual.get("committed/iteration").is_some(),
        "{what}: {reference} lacks the written files"
    );
    assert!(
        actual.get(COMMIT_DELETED).is_none(),
        "{what}: {reference} still shows the deleted {COMMIT_DELETED}"
    );
    assert_same_tree(
        written,
        &actual,
        &format!("{what}: {reference} differs from the mount it was committed from"),
    );
}

/// What the commit kill loop did.
#[derive(Default, Debug)]
struct CommitKillSummary {
    iterations: u64,
    kills: u64,
    finished: u64,
    /// Killed commits whose image was listed (and intact) afterwards.
    killed_but_stored: u64,
    repairs: u64,
    problem_kinds: BTreeMap<String, u64>,
    lost: u64,
}

fn run_commit_kill_loop(iterations: u64, seed: u64) -> CommitKillSummary {
    let scratch = scratch();
    let store = Lstore::new();
    let image = image_on(&base_layer(7), "c0", Compression::Gzip);
    let base_ref = "example.com/commit/base:1";
    let layout = layout_of(&scratch.path().join("base"), &image, base_ref);
    store.ok(&["load", "-q", "-i", layout.to_str().expect("utf-8")]);
    let base_tree = expected_tree(&image);
    let base_blobs = store.blobs();
    let base_layers = store.layer_dirs();
    let reference = |i: u64| format!("example.com/commit/c:i{i}");
    let mut rng = Rng::new(seed);

    // Calibration: one commit left to finish, removed again.
    let typical = {
        let mount = LstoreMount::new(&store, base_ref, true);
        let written = change_for_commit(&mount, iterations);
        let start = Instant::now();
        store.ok(&["commit", mount.target(), "example.com/commit/c:calibration"]);
        let took = start.elapsed();
        mount.umount("calibration");
        assert_commit_stored(
            &store,
            "example.com/commit/c:calibration",
            &written,
            "calibration",
        );
        store.ok(&["rmi", "example.com/commit/c:calibration"]);
        store.ok(&["gc"]);
        took
    };
    let mut typical = typical;
    eprintln!("commit kill loop: seed {seed}, {iterations} iterations, calibrated {typical:?}");

    let mut summary = CommitKillSummary::default();
    let mut stored: Vec<String> = Vec::new();
    for iteration in 0..iterations {
        let name = reference(iteration);
        let mount = LstoreMount::new(&store, base_ref, true);
        let written = change_for_commit(&mount, iteration);
        // Up to 1.1 times the typical run time, as in the kill loop.
        let delay = Duration::from_micros(rng.below(typical.as_micros() as u64 * 11 / 10));
        let args = vec![
            "commit".to_string(),
            mount.target().to_string(),
            name.clone(),
        ];
        let mut child = store.spawn(&args);
        let exited = exit_or_kill(&mut child, delay);
        match exited {
            Some(took) => typical = (typical * 2 + took) / 3,
            None => typical = typical.max(delay + delay / 4),
        }
        let output = child.wait_with_output().expect("wait");
        let what =
            format!("iteration {iteration} (seed {seed}): lstore commit killed after {delay:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let killed = output.status.signal() == Some(libc::SIGKILL);
        if killed {
            summary.kills += 1;
        } else {
            summary.finished += 1;
            assert!(
                output.status.success(),
                "{what}: finished but failed ({}): {stderr}",
                output.status
            );
        }
        summary.iterations += 1;
        mount.umount(&what);

        // Before any repair: a listed commit is a whole one.
        let listed_before = listed(&store).contains_key(&name);
        if !killed && !listed_before {
            summary.lost += 1;
            panic!("{what}: LOST {name}: a finished commit is not listed");
        }
        if listed_before {
            assert_commit_stored(&store, &name, &written, &what);
            if killed {
                summary.killed_but_stored += 1;
            }
            stored.push(name.clone());
        }

        let problems = fsck_or_repair(&store, &what);
        if !problems.is_empty() {
            summary.repairs += 1;
            for p in &problems {
                *summary.problem_kinds.entry(problem_kind(p)).or_insert(0) += 1;
            }
        }
        let tags = listed(&store);
        for earlier in &stored {
            if !tags.contains_key(earlier) {
                summary.lost += 1;
                panic!("{what}: LOST {earlier}: stored before, no longer listed");
            }
        }
        assert!(
            tags.keys()
                .filter(|t| t.starts_with("example.com/commit/c:"))
                .count()
                == stored.len(),
            "{what}: images listed that no commit stored: {tags:?}"
        );
        assert_mounts_as(&store, base_ref, &base_tree);
    }

    // The end: the committed images removed, one gc leaves the store as
    // it was with the base alone.
    for name in &stored {
        store.ok(&["rmi", name]);
    }
    store.ok(&["gc"]);
    assert_fsck_clean(&store, "after the commit kill loop");
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "gc empties tmp/, ingest/"
    );
    assert_eq!(
        common::lstore::list(&store.path("containers")),
        Vec::<String>::new(),
        "umount and gc empty containers/"
    );
    assert_eq!(
        store.blobs(),
        base_blobs,
        "gc leaves the base's blobs alone"
    );
    assert_eq!(
        store.layer_dirs(),
        base_layers,
        "gc leaves the base's layer folders alone"
    );
    assert_mounts_as(&store, base_ref, &base_tree);
    summary
}

/// `lstore commit` SIGKILLed at random points of its run, in its own loop
/// so that the kill loop's figures stay comparable. 50 iterations take
/// about 20 s here (more beside other tests);
/// `LSTORE_COMMIT_KILL_ITERATIONS` and `LSTORE_KILL_SEED` change the
/// length and the seed.
#[test]
fn kill_during_commit() {
    let iterations = env_number("LSTORE_COMMIT_KILL_ITERATIONS", 50);
    let seed = env_number("LSTORE_KILL_SEED", 0x6c73_746f_7265);
    let start = Instant::now();
    let s = run_commit_kill_loop(iterations, seed);
    report(&format!(
        "commit kill loop (seed {seed}): {} iterations in {:.0?}, {} killed mid-run \
         ({} of them stored whole), {} finished first, {} needed fsck --repair, {} lost",
        s.iterations,
        start.elapsed(),
        s.kills,
        s.killed_but_stored,
        s.finished,
        s.repairs,
        s.lost
    ));
    for (kind, n) in &s.problem_kinds {
        report(&format!("  fsck after a killed commit found {n}×: {kind}"));
    }
    assert_eq!(s.lost, 0);
    assert!(
        s.kills * 3 >= s.iterations,
        "at least a third of the iterations must kill a running commit: {s:?}"
    );
}

// ------------------------------------------------ processes side by side

/// Images on one shared base, each with its expected tree.
struct Family {
    images: Vec<(String, Image, Tree)>,
}

impl Family {
    fn new(seed: u64, names: &[&str]) -> Family {
        let base = base_layer(seed);
        let images = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let compression = if i % 2 == 0 {
                    Compression::Gzip
                } else {
                    Compression::Zstd
                };
                let image = image_on(&base, name, compression);
                let tree = expected_tree(&image);
                (name.to_string(), image, tree)
            })
            .collect();
        Family { images }
    }

    fn get(&self, name: &str) -> (&Image, &Tree) {
        let (_, image, tree) = self
            .images
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no image {name}"));
        (image, tree)
    }
}

/// The image is listed under `reference` with its id, mounts and equals
/// its source.
fn assert_stored(store: &Lstore, reference: &str, image: &Image, tree: &Tree) {
    let tags = listed(store);
    assert_eq!(
        tags.get(reference),
        Some(&image.config_digest),
        "{reference} is not listed with its id: {tags:?}"
    );
    assert_mounts_as(store, reference, tree);
}

/// Nothing left: no image, blob, layer folder, short link or leftover.
fn assert_empty(store: &Lstore, what: &str) {
    assert_eq!(
        store.images(),
        Vec::<serde_json::Value>::new(),
        "{what}: images"
    );
    assert_eq!(store.blobs(), Vec::<String>::new(), "{what}: blobs");
    assert_eq!(store.layer_dirs(), Vec::<String>::new(), "{what}: layers");
    assert_eq!(store.short_links(), Vec::<String>::new(), "{what}: links");
    assert_eq!(
        store.unfinished(),
        Vec::<String>::new(),
        "{what}: tmp/, ingest/"
    );
}

fn wait_ok(store: &Lstore, args: &[String], child: Child, what: &str) {
    let out = store.wait(args, child);
    assert!(
        out.success(),
        "{what}: lstore {} failed: {}",
        args.join(" "),
        out.stderr
    );
}

#[test]
fn eight_processes_load_eight_images_at_once() {
    let scratch = scratch();
    let store = Lstore::new();
    let names: Vec<String> = (0..8).map(|i| format!("eight{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let family = Family::new(20, &name_refs);
    let reference = |name: &str| format!("example.com/eight/{name}:1");
    let archives: Vec<PathBuf> = family
        .images
        .iter()
        .enumerate()
        .map(|(i, (name, image, _))| {
            let dir = scratch.path().join(name);
            let names = LayoutNames::containerd(&reference(name));
            // Half directories, half tars: two ways of reading an archive.
            if i % 2 == 0 {
                write_oci_layout(&dir, &[(image, names)]);
                dir
            } else {
                write_oci_layout_tar(&dir, &[(image, names)])
            }
        })
        .collect();
    for round in 0..3 {
        let what = format!("round {round}");
        let children: Vec<(Vec<String>, Child)> = archives
            .iter()
            .map(|a| {
                let args = vec![
                    "load".to_string(),
                    "-q".into(),
                    "-i".into(),
                    a.to_str().expect("utf-8").into(),
                ];
                let child = store.spawn(&args);
                (args, child)
            })
            .collect();
        for (args, child) in children {
            wait_ok(&store, &args, child, &what);
        }
        assert_eq!(store.layer_dirs().len(), 1 + 8, "{what}: one base folder");
        assert_eq!(store.unfinished(), Vec::<String>::new(), "{what}");
        assert_fsck_clean(&store, &what);
        for (name, image, tree) in &family.images {
            assert_stored(&store, &reference(name), image, tree);
        }
        let mut rmi = vec!["rmi".to_string()];
        rmi.extend(names.iter().map(|n| reference(n)));
        store.ok(&rmi);
        assert_empty(&store, &what);
        assert_fsck_clean(&store, &what);
    }
}

#[test]
fn pull_during_gc() {
    let registry = Registry::start();
    let scratch = scratch();
    let store = Lstore::new();
    // An image that only its tag keeps: gc must never take it.
    let kept = Family::new(30, &["kept"]);
    let (kept_image, kept_tree) = kept.get("kept");
    let kept_ref = "example.com/gc/kept:1";
    store.load(
        &layout_of(&scratch.path().join("kept"), kept_image, kept_ref),
        None,
    );
    let family = Family::new(31, &["pulled"]);
    let (image, tree) = family.get("pulled");
    let reference = registry.push(image, "gc/pulled:1");
    let args = vec!["pull".to_string(), "-q".into(), reference.clone()];
    for round in 0..3 {
        let what = format!("round {round}");
        let mut child = store.spawn(&args);
        let mut gcs = 0;
        loop {
            store.ok(&["gc"]);
            gcs += 1;
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
        }
        wait_ok(
            &store,
            &args,
            child,
            &format!("{what}, beside {gcs} gc runs"),
        );
        store.ok(&["gc"]);
        assert_fsck_clean(&store, &what);
        assert_stored(&store, &reference, image, tree);
        assert_stored(&store, kept_ref, kept_image, kept_tree);
        store.ok(&["rmi", &reference]);
        assert_fsck_clean(&store, &what);
        assert_eq!(
            store.layer_dirs().len(),
            2,
            "{what}: only the kept image's layers"
        );
    }
}

#[test]
fn rmi_of_one_image_while_another_sharing_its_layers_is_pulled() {
    let registry = Registry::start();
    let store = Lstore::new();
    let family = Family::new(40, &["first", "second"]);
    let (first, first_tree) = family.get("first");
    let (second, second_tree) = family.get("second");
    let first_ref = registry.push(first, "share/first:1");
    let second_ref = registry.push(second, "share/second:1");
    let pull = vec!["pull".to_string(), "-q".into(), second_ref.clone()];
    for (round, delay_ms) in [0u64, 20, 60, 150].into_iter().enumerate() {
        let what = format!("round {round} (rmi {delay_ms} ms into the pull)");
        store.ok(&["pull", "-q", &first_ref]);
        let child = store.spawn(&pull);
        sleep(Duration::from_millis(delay_ms));
        store.ok(&["rmi", &first_ref]);
        wait_ok(&store, &pull, child, &what);
        assert!(
            !listed(&store).contains_key(&first_ref),
            "{what}: {first_ref} still listed"
        );
        // The shared base may have been swept and extracted again: either
        // way the second image is complete.
        assert_fsck_clean(&store, &what);
        assert_stored(&store, &second_ref, second, second_tree);
        assert_eq!(
            store.layer_dirs().len(),
            2,
            "{what}: the second image's layers"
        );
        store.ok(&["rmi", &second_ref]);
        assert_empty(&store, &what);
    }
    // A pull after all that still finds a sound store.
    store.ok(&["pull", "-q", &first_ref]);
    assert_stored(&store, &first_ref, first, first_tree);
}

#[test]
fn two_pulls_of_images_sharing_a_base() {
    let registry = Registry::start();
    let store = Lstore::new();
    let family = Family::new(50, &["left", "right"]);
    let refs: Vec<String> = family
        .images
        .iter()
        .map(|(name, image, _)| registry.push(image, &format!("pair/{name}:1")))
        .collect();
    for round in 0..3 {
        let what = format!("round {round}");
        let children: Vec<(Vec<String>, Child)> = refs
            .iter()
            .map(|r| {
                let args = vec!["pull".to_string(), "-q".into(), r.clone()];
                let child = store.spawn(&args);
                (args, child)
            })
            .collect();
        for (args, child) in children {
            wait_ok(&store, &args, child, &what);
        }
        assert_eq!(store.layer_dirs().len(), 3, "{what}: one base folder");
        assert_fsck_clean(&store, &what);
        for ((_, image, tree), reference) in family.images.iter().zip(&refs) {
            assert_stored(&store, reference, image, tree);
        }
        let mut rmi = vec!["rmi".to_string()];
        rmi.extend(refs.iter().cloned());
        store.ok(&rmi);
        assert_empty(&store, &what);
    }
}

// ------------------------------------------------------- bounded resources

const MIB: u64 = 1 << 20;

/// A ustar header for a regular file (the big layers below are written as
/// a stream, not through the in-memory `TarBuilder`).
fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, value: &[u8]| {
        h[at..at + value.len()].copy_from_slice(value);
    };
    field(&mut h, 0, name.as_bytes());
    field(&mut h, 100, b"0000644\0");
    field(&mut h, 108, b"0000000\0");
    field(&mut h, 116, b"0000000\0");
    field(&mut h, 124, format!("{size:011o}\0").as_bytes());
    field(
        &mut h,
        136,
        format!("{:011o}\0", common::tarball::DEFAULT_MTIME).as_bytes(),
    );
    field(&mut h, 148, b"        ");
    h[156] = b'0';
    field(&mut h, 257, b"ustar\0");
    field(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    field(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Writes a tar stream to a gzip encoder while hashing it (the diff_id).
struct GzipTar {
    gzip: flate2::write::GzEncoder<Vec<u8>>,
    hasher: Sha256,
    written: u64,
}

impl GzipTar {
    fn new(level: flate2::Compression) -> GzipTar {
        GzipTar {
            gzip: flate2::write::GzEncoder::new(Vec::new(), level),
            hasher: Sha256::new(),
            written: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.gzip.write_all(bytes).expect("gzip");
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
    }

    /// A file of `size` bytes, `block` repeated.
    fn file(&mut self, name: &str, size: u64, block: &[u8]) {
        self.write(&ustar_header(name, size));
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            self.write(&block[..n]);
            left -= n as u64;
        }
        let pad = (512 - size % 512) % 512;
        self.write(&vec![0u8; pad as usize]);
    }

    fn finish(mut self) -> Layer {
        self.write(&[0u8; 1024]);
        let diff_id = format!("sha256:{:x}", self.hasher.finalize());
        let blob = self.gzip.finish().expect("gzip");
        Layer::raw(blob, Compression::Gzip, &diff_id)
    }
}

/// A decompression bomb: a small gzip of a tar holding `size` zero bytes.
fn zero_bomb(size: u64) -> Layer {
    let mut t = GzipTar::new(flate2::Compression::best());
    t.file("zeros", size, &vec![0u8; MIB as usize]);
    t.finish()
}

/// A small image kept in a store while other things fail around it.
fn bystander() -> (Image, Tree) {
    let image = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("bystander"))
        .build();
    let tree = expected_tree(&image);
    (image, tree)
}

#[test]
fn a_decompression_bomb_is_refused_by_max_layer_size() {
    let registry = Registry::start();
    let scratch = scratch();
    let store = Lstore::new();
    let (kept, kept_tree) = bystander();
    let kept_ref = "example.com/bomb/kept:1";
    store.load(
        &layout_of(&scratch.path().join("kept"), &kept, kept_ref),
        None,
    );
    let before = (store.blobs(), store.layer_dirs(), store.short_links());

    let bomb_size = 256 * MIB;
    let bomb = ImageBuilder::new().layer(zero_bomb(bomb_size)).build();
    let blob_size = bomb.layers[0].size();
    assert!(blob_size < MIB, "the bomb is small: {blob_size} bytes");
    let bomb_ref = "example.com/bomb/bomb:1";
    let layout = layout_of(&scratch.path().join("bomb"), &bomb, bomb_ref);
    let pulled_ref = registry.push(&bomb, "bomb/bomb:1");
    let path = layout.to_str().expect("utf-8");
    for args in [
        vec!["load", "-i", path, "--max-layer-size", "16M"],
        vec!["pull", &pulled_ref, "--max-layer-size", "16M"],
        vec!["load", "-i", path, "--max-layer-size", "16777216"],
    ] {
        let error = store.fails(&args);
        assert!(
            error.contains("larger than the limit of 16777216"),
            "lstore {}: {error}",
            args.join(" ")
        );
        assert_eq!(
            (store.blobs(), store.layer_dirs(), store.short_links()),
            before,
            "lstore {} leaves nothing behind",
            args.join(" ")
        );
        assert_eq!(store.unfinished(), Vec::<String>::new());
        assert_stored(&store, kept_ref, &kept, &kept_tree);
        assert_fsck_clean(&store, &args.join(" "));
    }
    // The same image under a limit above its size is a valid image: the
    // limit, not a defect, refused it above.
    store.ok(&["load", "-i", path, "--max-layer-size", "300M"]);
    let inspect = store.inspect(bomb_ref);
    assert_eq!(inspect["layers"][0]["size"], bomb_size + 512 + 1024);
    store.ok(&["rmi", bomb_ref]);
    assert_fsck_clean(&store, "after the bomb");
}

/// Runs `lstore ARGS` and returns its peak resident memory in KiB:
/// `/usr/bin/time -f %M` when it is installed, else the highest `VmHWM`
/// of /proc/PID/status seen while it runs. (The rusage of a child forked
/// straight from this test would count the test's own memory: Linux keeps
/// the pre-exec peak.)
fn peak_rss_kib(store: &Lstore, args: &[&str]) -> (Output, u64) {
    let lstore = env!("CARGO_BIN_EXE_lstore");
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let report = scratch();
        let report_file = report.path().join("rss");
        let out = Command::new(time)
            .args(["-f", "%M", "-o"])
            .arg(&report_file)
            .arg(lstore)
            .arg("--root")
            .arg(store.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/time lstore");
        let text = fs::read_to_string(&report_file).expect("time report");
        let kib = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no %M in {text:?}"));
        let out = Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        return (out, kib);
    }
    let mut child = store.spawn(args);
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().expect("try_wait").is_none() {
        let hwm = fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        peak = peak.max(hwm);
        sleep(Duration::from_millis(5));
    }
    (store.wait(args, child), peak)
}

#[test]
fn memory_stays_bounded_while_a_200_mb_layer_loads() {
    let scratch = scratch();
    let store = Lstore::new();
    // 150 MB in one file and 50 files of 1 MB; a 1 MB noise block repeats,
    // beyond gzip's 32 KB window, so the blob is as large as the tar.
    let block = noise(MIB as usize, 60);
    let mut t = GzipTar::new(flate2::Compression::fast());
    t.file("big", 150 * MIB, &block);
    for i in 0..50 {
        t.file(&format!("small{i}"), MIB, &block);
    }
    let tar_size = t.written + 1024;
    let layer = t.finish();
    assert!(layer.size() > 190 * MIB, "blob of {} bytes", layer.size());
    let image = ImageBuilder::new().layer(layer).build();
    let reference = "example.com/big/layer:1";
    let layout = layout_of(&scratch.path().join("big"), &image, reference);
    let (out, peak_kib) = peak_rss_kib(
        &store,
        &["load", "-q", "-i", layout.to_str().expect("utf-8")],
    );
    assert!(
        out.success(),
        "load of the big layer failed: {}",
        out.stderr
    );
    eprintln!(
        "peak RSS of a load of a {} MB layer: {} MiB",
        tar_size / 1_000_000,
        peak_kib / 1024
    );
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB is above 100 MiB for a {tar_size}-byte layer"
    );
    let inspect = store.inspect(reference);
    assert_eq!(inspect["layers"][0]["size"], tar_size);
    let diff = PathBuf::from(inspect["layers"][0]["path"].as_str().expect("path"));
    assert_eq!(
        fs::metadata(diff.join("big")).expect("big").len(),
        150 * MIB
    );
    assert_eq!(
        fs::read(diff.join("small49")).expect("small49"),
        block,
        "content kept"
    );
}

// ------------------------------------------------ full and read-only roots

/// A mount made for a test, always undone (lazily, if it is busy).
struct TestMount {
    target: PathBuf,
}

impl TestMount {
    fn new(args: &[&str], target: &Path) -> TestMount {
        let status = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount {args:?} {} failed",
            target.display()
        );
        TestMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_the_store_recovers() {
    let scratch = scratch();
    let store = Lstore::new();
    // The whole root on an 8 MiB tmpfs (mounted over the empty root dir;
    // dropped before the store, so unmounted before its removal).
    let _tmpfs = TestMount::new(
        &["-t", "tmpfs", "-o", "size=8m,mode=0711", "tmpfs"],
        store.root(),
    );
    let (small, small_tree) = bystander();
    let small_ref = "example.com/full/small:1";
    let small_layout = layout_of(&scratch.path().join("small"), &small, small_ref);
    let mut t = TarBuilder::new();
    t.file("big", noise(12 * MIB as usize, 70));
    let big = ImageBuilder::new()
        .layer(t.layer(Compression::Gzip))
        .build();
    let big_layout = layout_of(&scratch.path().join("big"), &big, "example.com/full/big:1");
    let big_path = big_layout.to_str().expect("utf-8");

    // An empty store, then one holding an image: each time the load fails
    // with one line, the store lists what it had, and recovers.
    for round in 0..2 {
        let what = format!("round {round}");
        let error = store.fails(&["load", "-q", "-i", big_path]);
        assert!(
            error.contains("No space left on device"),
            "{what}: the error says why: {error}"
        );
        let images = store.images();
        assert_eq!(
            images.len(),
            round,
            "{what}: images still works: {images:?}"
        );
        store.ok(&["gc"]);
        assert_fsck_clean(&store, &what);
        assert_eq!(store.unfinished(), Vec::<String>::new(), "{what}");
        if round == 0 {
            store.load(&small_layout, None);
        }
        assert_stored(&store, small_ref, &small, &small_tree);
    }
}

/// Runs the binary on `root` as `user` (None: as this user).
fn run_on_root(root: &Path, args: &[&str], user: Option<&str>) -> Output {
    let lstore = env!("CARGO_BIN_EXE_lstore");
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--clear-groups",
                "--",
                lstore,
            ]);
            c
        }
        None => Command::new(lstore),
    };
    let out = command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("LSTORE_ROOT")
        .stdin(Stdio::null())
        .output()
        .expect("run lstore");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The command fails with one `error:` line (and no panic) that names the
/// root and says why.
fn assert_root_refused(root: &Path, args: &[&str], user: Option<&str>, why: &[&str]) {
    let out = run_on_root(root, args, user);
    let what = format!(
        "lstore --root {} {} (as {user:?})",
        root.display(),
        args.join(" ")
    );
    assert!(!out.success(), "{what} succeeded: {}", out.stdout);
    assert_ne!(
        out.status.code(),
        Some(101),
        "{what} panicked: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    assert_one_line_error(&what, &out);
    let line = out.stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        line.contains(root.to_str().expect("utf-8")) && why.iter().any(|w| line.contains(w)),
        "{what}: the error names the root and why: {line}"
    );
}

#[test]
fn a_root_that_cannot_be_written_gives_one_error_line() {
    let scratch = scratch();
    let store = Lstore::new();
    let (image, tree) = bystander();
    let reference = "example.com/ro/image:1";
    let layout = layout_of(&scratch.path().join("image"), &image, reference);
    store.load(&layout, None);
    let layout_path = layout.to_str().expect("utf-8");

    // A read-only bind mount of a store holding an image.
    let read_only = scratch.path().join("read-only");
    fs::create_dir(&read_only).expect("mount point");
    {
        let _bind = TestMount::new(
            &["--bind", store.root().to_str().expect("utf-8")],
            &read_only,
        );
        let remounted = Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(&read_only)
            .status()
            .expect("run mount");
        assert!(remounted.success(), "remount read-only");
        for args in [
            vec!["images"],
            vec!["load", "-i", layout_path],
            vec!["gc"],
            vec!["rmi", reference],
        ] {
            assert_root_refused(&read_only, &args, None, &["not writable", "Read-only"]);
        }
    }
    // Nothing was changed through it.
    assert_stored(&store, reference, &image, &tree);
    assert_fsck_clean(&store, "after the read-only root");

    if !have("setpriv") {
        eprintln!("note: setpriv missing, the unprivileged cases are skipped");
        return;
    }
    // As nobody: a root folder of mode 555, and a store root owned by root.
    let place = tempfile::Builder::new()
        .prefix("lstore-ro-")
        .tempdir()
        .expect("dir");
    fs::set_permissions(place.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let locked = place.path().join("locked");
    fs::create_dir(&locked).expect("locked dir");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).expect("chmod");
    for args in [vec!["images"], vec!["load", "-i", layout_path]] {
        assert_root_refused(&locked, &args, Some("65534"), &["Permission denied"]);
    }
    assert_eq!(
        fs::read_dir(&locked).expect("locked").count(),
        0,
        "nothing created in the locked root"
    );
    let owned = place.path().join("owned");
    run_on_root(&owned, &["images"], None);
    for args in [vec!["images"], vec!["gc"]] {
        assert_root_refused(
            &owned,
            &args,
            Some("65534"),
            &["not writable", "Permission denied"],
        );
    }
}
