//! `lstore snapshotter` as containerd's proxy snapshotter, with a real
//! containerd (its own root, state and socket) and runc: `ctr images pull
//! --snapshotter lstore` keeps the layers as lstore layer folders, `ctr run`
//! runs in them, lstore's gc keeps what containerd holds, and restarts of
//! the snapshotter and of containerd keep the snapshots. A layer lstore
//! lacks becomes an lstore layer (df, fsck, gc know it); writes in
//! containers leave the layer folders unchanged; kill -9 of the
//! snapshotter during pulls and removals loses nothing committed and
//! leaves nothing half made. A CRI image pull (containerd's CRI plugin,
//! as the kubelet drives it) of an image lstore holds fetches no layer
//! blob; of one it lacks, each layer once, into lstore.

mod common;

use common::clients::{Containerd, LSTORE_SNAPSHOTTER};
use common::cri;
use common::image::Image;
use common::registry::{Proxy, Registry};
use common::scenes::host_binaries;
use common::serve::Serve;
use common::{Compression, ImageBuilder, Lstore, TarBuilder};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Two layers: the host's sh and cat, then `/greeting`.
fn shell_image(greeting: &str) -> Image {
    let base = host_binaries(&["/bin/sh", "/bin/cat"]);
    let mut top = TarBuilder::new();
    top.file("greeting", format!("{greeting}\n"));
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .cmd(&["/bin/cat", "/greeting"])
        .build()
}

/// The snapshotter on a socket in a temp dir, and containerd using it.
struct Setup {
    store: Lstore,
    socket_dir: tempfile::TempDir,
    snapshotter: Option<Serve>,
    containerd: Containerd,
}

impl Setup {
    fn new() -> Setup {
        Setup::start(false)
    }

    /// With containerd's CRI plugin on, pulling with lstore.
    fn with_cri() -> Setup {
        Setup::start(true)
    }

    fn start(cri: bool) -> Setup {
        let store = Lstore::new();
        let socket_dir = tempfile::Builder::new()
            .prefix("lstore-snapshotter-")
            .tempdir()
            .expect("socket dir");
        let socket = socket_dir.path().join("snapshotter.sock");
        let snapshotter = Some(start_snapshotter(&store, &socket));
        let containerd = if cri {
            Containerd::with_lstore_cri(&socket)
        } else {
            Containerd::with_lstore_snapshotter(&socket)
        };
        Setup {
            store,
            socket_dir,
            snapshotter,
            containerd,
        }
    }

    fn socket(&self) -> PathBuf {
        self.socket_dir.path().join("snapshotter.sock")
    }

    fn restart_snapshotter(&mut self) {
        if let Some(s) = self.snapshotter.take() {
            s.stop();
        }
        self.snapshotter = Some(start_snapshotter(&self.store, &self.socket()));
    }

    /// SIGKILL of the snapshotter (a crash); `restart_snapshotter` starts
    /// it again.
    fn kill_snapshotter(&mut self) {
        if let Some(mut s) = self.snapshotter.take() {
            s.kill();
        }
    }

    /// Waits (bounded) until containerd reaches the snapshotter again: its
    /// client backs off for up to a few seconds after a restart.
    fn wait_snapshotter_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self
            .containerd
            .ctr(&["snapshots", "--snapshotter", LSTORE_SNAPSHOTTER, "ls"])
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd does not reach the restarted snapshotter"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn pull(&self, reference: &str) {
        self.containerd.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            LSTORE_SNAPSHOTTER,
            reference,
        ]);
    }

    /// `ctr snapshots --snapshotter lstore ARGS…`, which must succeed.
    fn snapshots(&self, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", LSTORE_SNAPSHOTTER];
        all.extend_from_slice(args);
        self.containerd.ctr_ok(&all).stdout
    }

    /// Runs containerd's garbage collection now (the end of a lease with
    /// `--sync` does), which removes from the snapshotter what containerd
    /// no longer knows.
    fn containerd_gc(&self) {
        let id = "lstore-test-gc";
        self.containerd.ctr_ok(&["leases", "create", "--id", id]);
        self.containerd.ctr_ok(&["leases", "delete", "--sync", id]);
    }

    fn run(&self, reference: &str, id: &str, cmd: &[&str]) -> String {
        let mut args = vec![
            "run",
            "--snapshotter",
            LSTORE_SNAPSHOTTER,
            "--rm",
            reference,
            id,
        ];
        args.extend_from_slice(cmd);
        self.containerd.ctr_ok(&args).stdout
    }
}

fn start_snapshotter(store: &Lstore, socket: &Path) -> Serve {
    let socket = socket.to_str().expect("utf-8 path");
    Serve::start_args(store, &["snapshotter", "--socket", socket])
}

/// Layer folders under `overlay2/` (chain ids in hex), with the inode of
/// each one's `diff/`.
fn layer_folders(store: &Lstore) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fs::read_dir(store.root().join("overlay2"))
        .expect("overlay2")
        .map(|e| e.expect("entry"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "l")
        .map(|n| {
            let ino = fs::metadata(store.root().join("overlay2").join(&n).join("diff"))
                .map(|m| m.ino())
                .unwrap_or(0);
            (n, ino)
        })
        .collect();
    out.sort();
    out
}

fn chain_hexes(image: &Image) -> BTreeSet<String> {
    image
        .chain_ids()
        .iter()
        .map(|c| c.trim_start_matches("sha256:").to_string())
        .collect()
}

fn assert_fsck_clean(store: &Lstore) {
    let out = store.ok(&["fsck"]);
    assert!(out.stdout.contains("clean"), "fsck:\n{}", out.stdout);
}

#[test]
fn ctr_pull_and_run_keep_the_layers_in_lstore_across_gc_and_restarts() {
    let registry = Registry::start();
    let greeting = "run from lstore's layers";
    let image = shell_image(greeting);
    registry.upload("snap/shell", "v1", &image);
    let reference = format!("{}/snap/shell:v1", registry.host());
    let mut setup = Setup::new();

    setup.pull(&reference);
    let folders = layer_folders(&setup.store);
    let names: BTreeSet<String> = folders.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, chain_hexes(&image), "one lstore folder per layer");
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["layers"], 2, "df counts containerd's layers: {df}");
    assert_fsck_clean(&setup.store);

    // A write in the container goes to its own upper folder.
    let out = setup.run(
        &reference,
        "snap-write",
        &["/bin/sh", "-c", "echo changed > /greeting; cat /greeting"],
    );
    assert_eq!(out.trim(), "changed");
    let top = image
        .chain_ids()
        .last()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let kept = fs::read_to_string(
        setup
            .store
            .root()
            .join("overlay2")
            .join(&top)
            .join("diff/greeting"),
    )
    .expect("the layer's greeting");
    assert_eq!(kept.trim(), greeting, "the layer folder is unchanged");

    // lstore's gc keeps what containerd holds (no lstore image uses it).
    setup.store.ok(&["gc"]);
    assert_eq!(layer_folders(&setup.store), folders, "gc kept the layers");

    // Restarts of the snapshotter and of containerd keep the snapshots.
    setup.restart_snapshotter();
    setup.containerd.restart();
    let listed = setup
        .containerd
        .ctr_ok(&["snapshots", "--snapshotter", LSTORE_SNAPSHOTTER, "ls"]);
    assert_eq!(
        listed.stdout.lines().skip(1).count(),
        2,
        "both committed layers:\n{}",
        listed.stdout
    );
    let out = setup.run(&reference, "snap-again", &[]);
    assert_eq!(out.trim(), greeting);
    assert_eq!(layer_folders(&setup.store), folders);

    // containerd's removal drops its claim; the layers then go with gc.
    setup
        .containerd
        .ctr_ok(&["images", "rm", "--sync", &reference]);
    setup.store.ok(&["gc"]);
    assert!(
        layer_folders(&setup.store).is_empty(),
        "nothing holds them now"
    );
}

#[test]
fn a_layer_lstore_holds_keeps_its_folder_when_containerd_commits_it() {
    let registry = Registry::start();
    let image = shell_image("pulled by lstore first");
    registry.upload("snap/held", "v1", &image);
    let reference = format!("{}/snap/held:v1", registry.host());
    let setup = Setup::new();
    setup.store.ok(&["pull", &reference]);
    let before = layer_folders(&setup.store);
    assert_eq!(before.len(), 2);

    setup.pull(&reference);
    assert_eq!(
        layer_folders(&setup.store),
        before,
        "the same folders (same diff/ inodes): containerd's copies dropped"
    );
    let out = setup.run(&reference, "snap-held", &[]);
    assert_eq!(out.trim(), "pulled by lstore first");

    // rmi of lstore's image keeps what containerd holds.
    setup.store.ok(&["rmi", &reference]);
    assert_eq!(
        layer_folders(&setup.store),
        before,
        "containerd still holds them"
    );
    assert_fsck_clean(&setup.store);
}

/// The chain id of an image's top layer, in hex.
fn top_hex(image: &Image) -> String {
    image
        .chain_ids()
        .last()
        .expect("a layer")
        .trim_start_matches("sha256:")
        .to_string()
}

/// `lstore fsck --format json`, which must find nothing wrong and nothing
/// left over.
fn fsck_report(store: &Lstore) -> serde_json::Value {
    let report = store.json(&["fsck", "--format", "json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "fsck: {report}");
    assert_eq!(report["leftovers"], serde_json::json!([]), "fsck: {report}");
    report
}

/// What `ctr snapshots ls` lists for lstore: (key, kind) rows.
fn ctr_snapshots(setup: &Setup) -> Vec<(String, String)> {
    let out = setup
        .containerd
        .ctr_ok(&["snapshots", "--snapshotter", LSTORE_SNAPSHOTTER, "ls"]);
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect()
}

#[test]
fn a_layer_lstore_lacks_is_unpacked_into_lstore_and_freed_once_containerd_drops_it() {
    let registry = Registry::start();
    let greeting = "unpacked by containerd";
    let image = shell_image(greeting);
    registry.upload("snap/lacks", "v1", &image);
    let reference = format!("{}/snap/lacks:v1", registry.host());
    let setup = Setup::new();
    assert!(layer_folders(&setup.store).is_empty());

    setup.pull(&reference);
    // One complete lstore layer folder per layer, with its short link.
    let folders = layer_folders(&setup.store);
    let names: BTreeSet<String> = folders.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, chain_hexes(&image));
    for hex in &names {
        let dir = setup.store.root().join("overlay2").join(hex);
        assert!(dir.join("link").is_file(), "{hex}: link");
        assert!(dir.join("work").is_dir(), "{hex}: work/");
        let short = fs::read_to_string(dir.join("link")).expect("link");
        let target = fs::read_link(setup.store.root().join("overlay2/l").join(short.trim()))
            .expect("short link");
        assert_eq!(target, Path::new("..").join(hex).join("diff"));
    }
    let top = top_hex(&image);
    let kept = fs::read_to_string(
        setup
            .store
            .root()
            .join("overlay2")
            .join(&top)
            .join("diff/greeting"),
    )
    .expect("the top layer's greeting");
    assert_eq!(kept.trim(), greeting);
    assert!(
        setup.store.blobs().is_empty(),
        "containerd keeps the blobs; lstore has none: {:?}",
        setup.store.blobs()
    );
    assert!(setup.store.images().is_empty(), "no lstore image was made");

    // df and fsck know the layers: held by containerd, not unused.
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["layers"], 2, "df: {df}");
    assert_eq!(df["containerd_layers"], 2, "df: {df}");
    assert_eq!(df["unused_bytes"], 0, "df: {df}");
    assert!(df["containerd_bytes"].as_u64().unwrap() > 0, "df: {df}");
    assert_eq!(df["containerd_bytes"], df["layer_bytes"], "df: {df}");
    let text = setup.store.ok(&["df"]).stdout;
    assert!(
        text.contains("Held:") && text.contains("layers containerd holds that no image uses: 2"),
        "df:\n{text}"
    );
    let report = fsck_report(&setup.store);
    assert_eq!(report["layers_checked"], 2, "fsck: {report}");
    assert_fsck_clean(&setup.store);

    // gc keeps what containerd holds.
    let gc = setup.store.json(&["gc", "--format", "json"]);
    assert_eq!(gc["deleted_layers"], 0, "gc: {gc}");
    assert_eq!(layer_folders(&setup.store), folders, "gc kept the layers");

    // `ctr snapshots rm` of the top layer drops containerd's claim on it
    // alone (the base is kept as a gc root of containerd's): lstore's gc
    // then frees that layer and keeps the one below.
    let base = chain_hexes(&image)
        .into_iter()
        .find(|h| *h != top)
        .expect("the base layer");
    let (top_key, base_key) = (format!("sha256:{top}"), format!("sha256:{base}"));
    let listed = ctr_snapshots(&setup);
    for key in [&top_key, &base_key] {
        assert!(
            listed
                .iter()
                .any(|(k, kind)| k == key && kind == "Committed"),
            "{key} in {listed:?}"
        );
    }
    setup.snapshots(&["label", &base_key, "containerd.io/gc.root=lstore-test"]);
    setup.snapshots(&["rm", &top_key]);
    assert_eq!(
        layer_folders(&setup.store),
        folders,
        "removing a snapshot frees nothing by itself"
    );
    // containerd removes it from its snapshotter in its own gc.
    setup.containerd_gc();
    let left = |setup: &Setup| -> Vec<String> {
        layer_folders(&setup.store)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(
        left(&setup),
        folders.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    setup.store.ok(&["gc"]);
    assert_eq!(left(&setup), vec![base.clone()], "the base is still held");
    fsck_report(&setup.store);
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["containerd_layers"], 1, "df: {df}");

    // Removing the image (containerd's gc runs with --sync) keeps what
    // containerd still holds.
    setup
        .containerd
        .ctr_ok(&["images", "rm", "--sync", &reference]);
    assert_eq!(
        ctr_snapshots(&setup),
        vec![(base_key.clone(), "Committed".to_string())]
    );
    setup.store.ok(&["gc"]);
    assert_eq!(left(&setup), vec![base.clone()]);

    // Once containerd holds nothing, lstore's gc frees the rest.
    setup.snapshots(&["rm", &base_key]);
    setup.containerd_gc();
    assert!(
        ctr_snapshots(&setup).is_empty(),
        "{:?}",
        ctr_snapshots(&setup)
    );
    setup.store.ok(&["gc"]);
    assert!(layer_folders(&setup.store).is_empty());
    assert!(
        setup.store.short_links().is_empty(),
        "{:?}",
        setup.store.short_links()
    );
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["layers"], 0, "df: {df}");
    assert_eq!(df["containerd_layers"], 0, "df: {df}");
    fsck_report(&setup.store);
}

#[test]
fn an_image_lstore_pulls_over_layers_containerd_unpacked_is_whole() {
    let registry = Registry::start();
    let image = shell_image("containerd first, then lstore");
    registry.upload("snap/both", "v1", &image);
    let reference = format!("{}/snap/both:v1", registry.host());
    let setup = Setup::new();
    setup.pull(&reference);
    let folders = layer_folders(&setup.store);
    assert_eq!(folders.len(), 2);

    // lstore's pull reuses the folders containerd's unpack made, fetches
    // the blobs, and the image is whole: fsck clean, save and push work.
    setup.store.ok(&["pull", &reference]);
    assert_eq!(layer_folders(&setup.store), folders, "the same folders");
    let report = fsck_report(&setup.store);
    assert_eq!(report["images_checked"], 1, "fsck: {report}");
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["containerd_layers"], 0, "an image uses them: {df}");
    let scratch = common::scratch();
    let archive = scratch.path().join("both.tar");
    setup
        .store
        .ok(&["save", "-o", archive.to_str().unwrap(), &reference]);
    let copy = format!("{}/snap/copy:v1", registry.host());
    setup.store.ok(&["tag", &reference, &copy]);
    setup.store.ok(&["push", &copy]);
    let inspect = setup.store.inspect(&reference);
    assert_eq!(
        inspect["lowerdir"].as_str().unwrap().split(':').count(),
        2,
        "{inspect}"
    );

    // containerd's removal of its image (its gc removes the snapshots
    // from the snapshotter) drops its claim only: lstore's image keeps its
    // layers. Pulled again, containerd finds lstore's folders.
    setup
        .containerd
        .ctr_ok(&["images", "rm", "--sync", &reference]);
    assert!(
        ctr_snapshots(&setup).is_empty(),
        "{:?}",
        ctr_snapshots(&setup)
    );
    setup.store.ok(&["gc"]);
    assert_eq!(
        layer_folders(&setup.store),
        folders,
        "lstore's image holds them"
    );
    fsck_report(&setup.store);
    setup.pull(&reference);
    assert_eq!(layer_folders(&setup.store), folders);
    assert_eq!(ctr_snapshots(&setup).len(), 2);

    // A layer blob gone from the store (a disk fault, fsck --repair of a
    // corrupt blob): the layer still mounts, but save and push say plainly
    // what is missing instead of failing on a file.
    let layer_blob = inspect["layers"][1]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("inspect has no layer digests: {inspect}"))
        .to_string();
    fs::remove_file(
        setup
            .store
            .root()
            .join("blobs/sha256")
            .join(layer_blob.trim_start_matches("sha256:")),
    )
    .expect("remove the blob");
    for args in [
        vec!["save", "-o", archive.to_str().unwrap(), &reference],
        vec!["push", &copy],
    ] {
        let error = setup.store.fails(&args);
        assert!(
            error.contains(&layer_blob) && error.contains("not in the store"),
            "{args:?}: {error}"
        );
        assert!(error.contains("pull"), "says how to get it back: {error}");
    }

    // rmi of lstore's image keeps the layers containerd holds.
    setup.store.ok(&["rmi", &reference, &copy]);
    setup.store.ok(&["gc"]);
    assert_eq!(layer_folders(&setup.store), folders);
    fsck_report(&setup.store);
}

/// A small PRNG (xorshift64*), seeded from the clock or from
/// `LSTORE_TEST_SEED`; the seed is printed so that a failure can be run
/// again with it.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("LSTORE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("LSTORE_TEST_SEED={seed}");
        Rng::seeded(seed)
    }

    fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len.div_ceil(8))
            .flat_map(|_| self.next().to_le_bytes())
            .take(len)
            .collect()
    }
}

/// Three layers: the host's sh and cat (the same in every such image), two
/// files of incompressible data of the image's own, then `/greeting`.
fn data_image(n: u64) -> Image {
    let base = host_binaries(&["/bin/sh", "/bin/cat"]);
    let mut rng = Rng::seeded(n + 1);
    let mut data = TarBuilder::new();
    data.dir("data");
    data.file("data/a", rng.bytes(256 << 10));
    data.file("data/b", rng.bytes(256 << 10));
    let mut top = TarBuilder::new();
    top.file("greeting", format!("image {n}\n"));
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&data, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .cmd(&["/bin/cat", "/greeting"])
        .build()
}

/// Folders under `overlay2/` that are not complete layer folders (no
/// `link`, `diff/` or `work/`): what must never be seen under a layer's
/// name.
fn incomplete_folders(store: &Lstore) -> Vec<String> {
    store
        .layer_dirs()
        .into_iter()
        .filter(|n| {
            let dir = store.root().join("overlay2").join(n);
            !(dir.join("link").is_file() && dir.join("diff").is_dir() && dir.join("work").is_dir())
        })
        .collect()
}

/// `lstore fsck --format json`, whatever it finds.
fn fsck_any(store: &Lstore, repair: bool) -> serde_json::Value {
    let mut args = vec!["fsck", "--format", "json"];
    if repair {
        args.push("--repair");
    }
    let out = store.run(&args);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

/// Waits (up to `limit_ms`) until a layer is being committed: a staging
/// folder (`tmp/<lease>.layer-N`) not in `before` is there. Returns when
/// it was seen.
fn wait_for_staging(store: &Lstore, before: &[String], limit_ms: u64) -> Option<u64> {
    let started = std::time::Instant::now();
    while (started.elapsed().as_millis() as u64) < limit_ms {
        let staging = store
            .unfinished()
            .iter()
            .any(|e| e.contains(".layer-") && !before.contains(e));
        if staging {
            return Some(started.elapsed().as_millis() as u64);
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    None
}

/// Waits for a child with a bound; kills it (and fails) past it.
fn wait_bounded(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn kill_9_of_the_snapshotter_during_pulls_loses_nothing_committed() {
    const ROUNDS: u64 = 10;
    let registry = Registry::start();
    let images: Vec<Image> = (0..ROUNDS).map(data_image).collect();
    let warm_up = data_image(ROUNDS);
    registry.upload("snap/warm-up", "v1", &warm_up);
    let refs: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            registry.upload(&format!("snap/kill{i}"), "v1", image);
            format!("{}/snap/kill{i}:v1", registry.host())
        })
        .collect();
    let mut setup = Setup::new();
    let logs = common::scratch();
    let mut rng = Rng::new();
    // How long a pull takes here: the kills land within that.
    let started = std::time::Instant::now();
    setup.pull(&format!("{}/snap/warm-up:v1", registry.host()));
    let span = (started.elapsed().as_millis() as u64).max(50);
    eprintln!("an undisturbed pull takes {span} ms");
    let mut finished = Vec::new();
    for (i, reference) in refs.iter().enumerate() {
        let log = logs.path().join(format!("pull{i}.log"));
        let before = setup.store.unfinished();
        let mut pull = setup.containerd.ctr_spawn(
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                LSTORE_SNAPSHOTTER,
                reference,
            ],
            &log,
        );
        // Every other round the kill waits for a commit under way (its
        // staging folder under tmp/); the others land anywhere.
        let when = if i % 2 == 1 {
            match wait_for_staging(&setup.store, &before, 3 * span) {
                Some(at) => format!("during a commit ({at} ms in)"),
                None => "without seeing a commit".to_string(),
            }
        } else {
            let delay = span / 5 + rng.below(span);
            std::thread::sleep(std::time::Duration::from_millis(delay));
            format!("after {delay} ms")
        };
        setup.kill_snapshotter();
        let status = wait_bounded(&mut pull, "ctr images pull");
        eprintln!("round {i}: killed {when}, pull {status}");
        if status.success() {
            finished.push(i);
        }
        setup.restart_snapshotter();

        // Nothing half made is ever seen under a layer's name.
        assert_eq!(incomplete_folders(&setup.store), Vec::<String>::new());
        let report = fsck_any(&setup.store, false);
        for p in report["problems"].as_array().expect("problems") {
            assert!(
                !p["what"].as_str().unwrap_or("").contains("incomplete"),
                "round {i}: {report}"
            );
        }
        // Every snapshot containerd has committed is there: its record
        // (containerd's Stat reaches lstore's) and its complete folder.
        setup.wait_snapshotter_ready();
        for (key, kind) in ctr_snapshots(&setup) {
            if kind != "Committed" {
                continue;
            }
            setup.snapshots(&["info", &key]);
            let hex = key.trim_start_matches("sha256:");
            assert!(
                setup
                    .store
                    .root()
                    .join("overlay2")
                    .join(hex)
                    .join("link")
                    .is_file(),
                "round {i}: committed {key} has no layer folder"
            );
        }
        // Images whose pull finished keep all their layers.
        for &f in &finished {
            for hex in chain_hexes(&images[f]) {
                assert!(
                    setup
                        .store
                        .root()
                        .join("overlay2")
                        .join(&hex)
                        .join("link")
                        .is_file(),
                    "round {i}: layer {hex} of finished pull {f} is gone"
                );
            }
        }
    }
    eprintln!("pulls finished before their kill: {finished:?}");
    assert!(
        finished.len() < refs.len(),
        "the kills landed within the pulls"
    );

    // The pulls done again succeed, and the images run.
    for reference in &refs {
        setup.pull(reference);
    }
    let names: BTreeSet<String> = layer_folders(&setup.store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let want: BTreeSet<String> = images
        .iter()
        .chain([&warm_up])
        .flat_map(chain_hexes)
        .collect();
    assert!(want.is_subset(&names), "every layer has its folder");
    for i in [0, ROUNDS as usize - 1] {
        let out = setup.run(&refs[i], &format!("snap-kill-{i}"), &[]);
        assert_eq!(out.trim(), format!("image {i}"));
    }

    // fsck: clean, or made clean by --repair (what a kill leaves is
    // leftovers: staging folders, folders no record names).
    let report = fsck_any(&setup.store, false);
    eprintln!("fsck after the kills: {report}");
    if !(report["problems"].as_array().unwrap().is_empty()
        && report["leftovers"].as_array().unwrap().is_empty())
    {
        let repaired = fsck_any(&setup.store, true);
        eprintln!("fsck --repair: {repaired}");
        for p in repaired["problems"].as_array().unwrap() {
            assert_eq!(p["repaired"], true, "{repaired}");
        }
    }
    fsck_report(&setup.store);
    // What containerd dropped (the snapshots of interrupted pulls) goes
    // with its gc; lstore's gc then keeps exactly what containerd holds.
    setup.containerd_gc();
    setup.store.ok(&["gc"]);
    let names: BTreeSet<String> = layer_folders(&setup.store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, want);
    fsck_report(&setup.store);
    // Nothing else is left: no staging or trash of the killed processes
    // (gc sweeps tmp/), no folder of an active snapshot containerd
    // dropped.
    assert_eq!(setup.store.unfinished(), Vec::<String>::new());
    let active = ctr_snapshots(&setup)
        .into_iter()
        .filter(|(_, kind)| kind != "Committed")
        .count();
    assert_eq!(
        common::lstore::list(&setup.store.path("containers/snapshotter")).len(),
        active,
        "one folder per active snapshot containerd holds"
    );
    for (i, reference) in refs.iter().enumerate() {
        let out = setup.run(reference, &format!("snap-kill-again-{i}"), &[]);
        assert_eq!(out.trim(), format!("image {i}"));
    }
}

/// Every entry under `root` (symlinks not followed) with what a change to
/// it would alter: kind, mode, owner, size, mtime, ctime, inode, link
/// target, xattrs and a digest of a file's content. Access times are left
/// out (reading sets them).
fn tree_state(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest as _, Sha256};
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = m.file_type();
        let what = if ft.is_dir() {
            let mut entries: Vec<PathBuf> = fs::read_dir(&p)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            stack.extend(entries);
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(&p).expect("link").display())
        } else if ft.is_file() {
            let data = fs::read(&p).expect("read file");
            format!("file {:x}", Sha256::digest(&data))
        } else {
            format!("special rdev {}", m.rdev())
        };
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        out.insert(
            rel,
            format!(
                "{what} mode {:o} owner {}:{} size {} mtime {}.{} ctime {}.{} ino {} nlink {} xattrs {:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.ino(),
                m.nlink(),
                xattrs(&p)
            ),
        );
    }
    out
}

/// A file's extended attributes (names and values), symlinks not followed.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut names = vec![0u8; 64 << 10];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let cname = CString::new(name).expect("name");
            let mut value = vec![0u8; 64 << 10];
            let len = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            value.truncate(len.max(0) as usize);
            (String::from_utf8_lossy(name).into_owned(), value)
        })
        .collect()
}

/// What changed between two `tree_state`s.
fn tree_changes(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect()
}

/// Three layers: the host's sh, cat, rm, chmod, mkdir and ls; `/data`
/// with files and a folder; then `/greeting`.
fn tools_image(greeting: &str) -> Image {
    let base = host_binaries(&[
        "/bin/sh",
        "/bin/cat",
        "/bin/rm",
        "/bin/chmod",
        "/bin/mkdir",
        "/bin/ls",
    ]);
    let mut data = TarBuilder::new();
    data.dir("data");
    data.file("data/a", "a\n");
    data.file("data/b", "b\n").mode(0o644);
    data.dir("data/dir");
    data.file("data/dir/c", "c\n");
    let mut top = TarBuilder::new();
    top.file("greeting", format!("{greeting}\n"));
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&data, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .cmd(&["/bin/cat", "/greeting"])
        .build()
}

#[test]
fn writes_in_a_container_leave_lstore_layer_folders_unchanged() {
    let registry = Registry::start();
    // One image lstore lacks (containerd unpacks it into lstore), one lstore
    // pulled first (containerd's commits keep lstore's folders).
    let unpacked = tools_image("unpacked by containerd");
    let held = tools_image("pulled by lstore");
    registry.upload("snap/unpacked", "v1", &unpacked);
    registry.upload("snap/held", "v1", &held);
    let refs = [
        (
            format!("{}/snap/unpacked:v1", registry.host()),
            "unpacked by containerd",
        ),
        (
            format!("{}/snap/held:v1", registry.host()),
            "pulled by lstore",
        ),
    ];
    let setup = Setup::new();
    setup.store.ok(&["pull", &refs[1].0]);
    for (reference, _) in &refs {
        setup.pull(reference);
    }
    let overlay = setup.store.root().join("overlay2");
    let before = tree_state(&overlay);
    assert_eq!(layer_folders(&setup.store).len(), 4, "a base both share");
    assert!(
        before.values().filter(|v| v.starts_with("file ")).count() > 10,
        "the state covers the layers' files: {before:?}"
    );

    // New files, appends to and truncation of files of lower layers, a
    // removal (a whiteout), a folder removed whole (opaque), a chmod, a
    // mkdir in a lower folder.
    let script = "echo new > /newfile; echo more >> /greeting; : > /data/a; \
                  chmod 600 /data/b; mkdir /data/sub; rm /data/dir/c; rm -r /data/dir; \
                  echo x > /data/new; cat /greeting /newfile; ls -A /data";
    for (i, (reference, greeting)) in refs.iter().enumerate() {
        let out = setup.run(
            reference,
            &format!("snap-writes-{i}"),
            &["/bin/sh", "-c", script],
        );
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            vec![*greeting, "more", "new", "a", "b", "new", "sub"],
            "the container sees its writes"
        );
        let changes = tree_changes(&before, &tree_state(&overlay));
        assert!(
            changes.is_empty(),
            "a container's writes changed lstore's layer folders:\n{}",
            changes.join("\n")
        );
    }

    // A new container sees the images as they were.
    for (i, (reference, greeting)) in refs.iter().enumerate() {
        let out = setup.run(
            reference,
            &format!("snap-fresh-{i}"),
            &[
                "/bin/sh",
                "-c",
                "cat /greeting /data/a; ls -A / /data /data/dir",
            ],
        );
        assert!(
            out.starts_with(&format!("{greeting}\na\n")),
            "unchanged: {out}"
        );
        assert!(!out.contains("newfile"), "{out}");
        assert!(out.contains("/data/dir:\nc"), "{out}");
    }
    assert!(tree_changes(&before, &tree_state(&overlay)).is_empty());
    fsck_report(&setup.store);
}

#[test]
fn a_layer_lstore_lacks_over_a_base_it_holds_stands_on_lstores_folder() {
    let registry = Registry::start();
    // Two images on the same base: lstore pulls one, containerd the other.
    let held = shell_image("lstore's image");
    let other = shell_image("containerd's image");
    assert_eq!(held.chain_ids()[0], other.chain_ids()[0], "one base");
    registry.upload("snap/held", "v1", &held);
    registry.upload("snap/other", "v1", &other);
    let held_ref = format!("{}/snap/held:v1", registry.host());
    let other_ref = format!("{}/snap/other:v1", registry.host());
    let setup = Setup::new();
    setup.store.ok(&["pull", &held_ref]);
    let before = layer_folders(&setup.store);
    assert_eq!(before.len(), 2);

    setup.pull(&other_ref);
    let after = layer_folders(&setup.store);
    assert_eq!(after.len(), 3, "one new folder: the top containerd applied");
    for folder in &before {
        assert!(after.contains(folder), "lstore's folders kept: {folder:?}");
    }
    // The new layer's lower is lstore's base, by its short link.
    let top = top_hex(&other);
    let lower = fs::read_to_string(setup.store.root().join("overlay2").join(&top).join("lower"))
        .expect("lower");
    let base_short = fs::read_to_string(
        setup
            .store
            .root()
            .join("overlay2")
            .join(other.chain_ids()[0].trim_start_matches("sha256:"))
            .join("link"),
    )
    .expect("base link");
    assert_eq!(lower.trim(), format!("l/{}", base_short.trim()));
    let out = setup.run(&other_ref, "snap-mixed", &[]);
    assert_eq!(out.trim(), "containerd's image");
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["layers"], 3, "df: {df}");
    assert_eq!(
        df["containerd_layers"], 1,
        "only the top no image uses: {df}"
    );
    fsck_report(&setup.store);

    // lstore's rmi and gc keep the base containerd's layer stands on.
    setup.store.ok(&["rmi", &held_ref]);
    setup.store.ok(&["gc"]);
    let names: BTreeSet<String> = layer_folders(&setup.store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, chain_hexes(&other));
    fsck_report(&setup.store);
    let out = setup.run(&other_ref, "snap-mixed-again", &[]);
    assert_eq!(out.trim(), "containerd's image");

    // containerd's removal frees the rest.
    setup
        .containerd
        .ctr_ok(&["images", "rm", "--sync", &other_ref]);
    setup.store.ok(&["gc"]);
    assert!(layer_folders(&setup.store).is_empty());
    fsck_report(&setup.store);
}

#[test]
fn kill_9_of_the_snapshotter_during_removals_frees_nothing_held() {
    let registry = Registry::start();
    let images: Vec<Image> = (20..23).map(data_image).collect();
    let refs: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            registry.upload(&format!("snap/rm{i}"), "v1", image);
            format!("{}/snap/rm{i}:v1", registry.host())
        })
        .collect();
    let mut setup = Setup::new();
    // lstore's own image, which no removal by containerd may touch.
    setup.store.ok(&["pull", &refs[0]]);
    for reference in &refs {
        setup.pull(reference);
    }
    let lstores = chain_hexes(&images[0]);
    let logs = common::scratch();
    let mut rng = Rng::new();
    for round in 0..6 {
        let reference = &refs[round % refs.len()];
        let log = logs.path().join(format!("rm{round}.log"));
        let mut rm = setup
            .containerd
            .ctr_spawn(&["images", "rm", "--sync", reference], &log);
        let delay = rng.below(120);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        setup.kill_snapshotter();
        let status = wait_bounded(&mut rm, "ctr images rm");
        eprintln!("round {round}: killed after {delay} ms, rm {status}");
        setup.restart_snapshotter();
        setup.wait_snapshotter_ready();

        assert_eq!(incomplete_folders(&setup.store), Vec::<String>::new());
        for hex in &lstores {
            assert!(
                setup
                    .store
                    .root()
                    .join("overlay2")
                    .join(hex)
                    .join("link")
                    .is_file(),
                "round {round}: lstore's layer {hex} is gone"
            );
        }
        for (key, kind) in ctr_snapshots(&setup) {
            if kind == "Committed" {
                setup.snapshots(&["info", &key]);
                let hex = key.trim_start_matches("sha256:");
                assert!(
                    setup.store.root().join("overlay2").join(hex).is_dir(),
                    "round {round}: committed {key} has no layer folder"
                );
            }
        }
        setup.store.ok(&["gc"]);
        setup.pull(reference);
    }

    eprintln!(
        "containerd's clean-ups that failed: {}",
        setup
            .containerd
            .log()
            .matches("snapshot garbage collection failed")
            .count()
    );
    // containerd's next removal through the snapshotter drops what it
    // forgot while the snapshotter was down; lstore's gc then keeps
    // exactly what containerd and lstore's image hold.
    for reference in &refs[1..] {
        setup
            .containerd
            .ctr_ok(&["images", "rm", "--sync", reference]);
    }
    setup.store.ok(&["gc"]);
    let names: BTreeSet<String> = layer_folders(&setup.store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, lstores);
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["containerd_layers"], 0, "df: {df}");
    fsck_report(&setup.store);
    assert_eq!(setup.store.unfinished(), Vec::<String>::new());
    let out = setup.run(&refs[0], "snap-rm-kill", &[]);
    assert_eq!(out.trim(), "image 20");

    setup
        .containerd
        .ctr_ok(&["images", "rm", "--sync", &refs[0]]);
    setup.store.ok(&["rmi", &refs[0]]);
    setup.store.ok(&["gc"]);
    assert!(layer_folders(&setup.store).is_empty());
    fsck_report(&setup.store);
}

/// The namespace containerd's CRI plugin keeps its images in.
const CRI_NAMESPACE: &str = "k8s.io";

/// PullImage through containerd's CRI plugin, which must succeed: the
/// image id it answers.
fn cri_pull(setup: &Setup, reference: &str) -> String {
    cri::pull_image(&setup.containerd.socket(), reference).unwrap_or_else(|e| {
        panic!(
            "CRI PullImage {reference}: {e}\ncontainerd log:\n{}",
            setup.containerd.log()
        )
    })
}

/// The references `ctr -n k8s.io images ls` lists.
fn cri_images(setup: &Setup) -> Vec<String> {
    let out = setup
        .containerd
        .ctr_in(CRI_NAMESPACE, &["images", "ls", "-q"]);
    out.stdout.lines().map(str::to_string).collect()
}

/// (key, kind) of lstore's snapshots in containerd's k8s.io namespace.
fn cri_snapshots(setup: &Setup) -> Vec<(String, String)> {
    let out = setup.containerd.ctr_in(
        CRI_NAMESPACE,
        &["snapshots", "--snapshotter", LSTORE_SNAPSHOTTER, "ls"],
    );
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect()
}

/// What the proxy saw, one `METHOD TARGET` per request.
fn requests(proxy: &Proxy) -> Vec<String> {
    proxy
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect()
}

#[test]
fn a_cri_pull_of_an_image_lstore_holds_fetches_no_layer() {
    let registry = Registry::start();
    let image = shell_image("pulled by lstore, then by the CRI");
    registry.upload("snap/cri-held", "v1", &image);
    let proxy = Proxy::pass(&registry.host());
    let reference = format!("{}/snap/cri-held:v1", proxy.host());
    let setup = Setup::with_cri();
    setup.containerd.plain_http(&proxy.host());

    setup.store.ok(&["pull", &reference]);
    let layers: BTreeSet<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    let fetched: BTreeSet<String> = proxy.blob_gets().into_iter().collect();
    assert!(
        layers.is_subset(&fetched),
        "lstore pulled through the proxy: {fetched:?}"
    );
    let before = layer_folders(&setup.store);
    let names: BTreeSet<String> = before.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, chain_hexes(&image));
    proxy.clear();

    let image_id = cri_pull(&setup, &reference);
    assert_eq!(image_id, image.config_digest, "CRI answers the image id");
    // The manifest and the config only (seen: HEAD and GET of the
    // manifest, GET of the config blob).
    let fetched = proxy.blob_gets();
    assert!(
        fetched.iter().all(|d| !layers.contains(d)),
        "the CRI pull fetched a layer blob; the proxy saw {:?}",
        requests(&proxy)
    );
    assert!(
        proxy.manifest_gets() >= 1,
        "the CRI resolved the tag through the proxy: {:?}",
        requests(&proxy)
    );
    assert!(
        cri_images(&setup).contains(&reference),
        "ctr -n k8s.io images ls: {:?}",
        cri_images(&setup)
    );
    let snapshots = cri_snapshots(&setup);
    assert_eq!(
        snapshots.iter().filter(|(_, k)| k == "Committed").count(),
        2,
        "both layers committed in containerd: {snapshots:?}"
    );
    assert_eq!(
        layer_folders(&setup.store),
        before,
        "the same folders (same diff/ inodes): nothing unpacked again"
    );
    assert_fsck_clean(&setup.store);

    setup.store.ok(&["gc"]);
    assert_eq!(
        layer_folders(&setup.store),
        before,
        "gc keeps the image's layers"
    );

    // Without lstore's image, containerd's snapshots keep the layers.
    setup.store.ok(&["rmi", &reference]);
    setup.store.ok(&["gc"]);
    assert_eq!(
        layer_folders(&setup.store),
        before,
        "containerd's snapshots are gc roots"
    );
    assert_fsck_clean(&setup.store);

    // Once containerd drops the image (every name CRI gave it: tag,
    // digest, id), its gc removes the snapshots and lstore's gc the layers.
    let names = cri_images(&setup);
    assert!(names.len() >= 2, "CRI's names of the image: {names:?}");
    let mut rm = vec!["images", "rm", "--sync"];
    rm.extend(names.iter().map(String::as_str));
    setup.containerd.ctr_in(CRI_NAMESPACE, &rm);
    assert_eq!(cri_snapshots(&setup), Vec::new(), "containerd's gc ran");
    setup.store.ok(&["gc"]);
    assert!(
        layer_folders(&setup.store).is_empty(),
        "nothing holds them now: {:?}",
        layer_folders(&setup.store)
    );
    fsck_report(&setup.store);
}

#[test]
fn a_cri_pull_of_an_image_lstore_lacks_fetches_each_layer_once_into_lstore() {
    let registry = Registry::start();
    let image = shell_image("pulled by the CRI alone");
    registry.upload("snap/cri-lacks", "v1", &image);
    let proxy = Proxy::pass(&registry.host());
    let reference = format!("{}/snap/cri-lacks:v1", proxy.host());
    let setup = Setup::with_cri();
    setup.containerd.plain_http(&proxy.host());
    assert!(layer_folders(&setup.store).is_empty());

    let image_id = cri_pull(&setup, &reference);
    assert_eq!(image_id, image.config_digest, "CRI answers the image id");
    let mut fetched = proxy.blob_gets();
    fetched.retain(|d| *d != image.config_digest);
    fetched.sort();
    let mut layers: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    layers.sort();
    assert_eq!(
        fetched,
        layers,
        "each layer fetched once; the proxy saw {:?}",
        requests(&proxy)
    );
    assert!(
        cri_images(&setup).contains(&reference),
        "ctr -n k8s.io images ls: {:?}",
        cri_images(&setup)
    );
    let folders = layer_folders(&setup.store);
    let names: BTreeSet<String> = folders.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, chain_hexes(&image), "one lstore folder per layer");
    let df = setup.store.json(&["df", "--format", "json"]);
    assert_eq!(df["layers"], 2, "df counts containerd's layers: {df}");
    fsck_report(&setup.store);
    setup.store.ok(&["gc"]);
    assert_eq!(
        layer_folders(&setup.store),
        folders,
        "containerd holds them"
    );
}
