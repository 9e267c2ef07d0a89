//! `lstore snapshotter` as containerd's proxy snapshotter, with a real
//! containerd (its own root, state and socket) and runc: `ctr images pull
//! --snapshotter lstore` keeps the layers as lstore layer folders, `ctr run`
//! runs in them, lstore's gc keeps what containerd holds, and restarts of
//! the snapshotter and of containerd keep the snapshots.

mod common;

use common::clients::{Containerd, LSTORE_SNAPSHOTTER};
use common::image::Image;
use common::registry::Registry;
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
        let store = Lstore::new();
        let socket_dir = tempfile::Builder::new()
            .prefix("lstore-snapshotter-")
            .tempdir()
            .expect("socket dir");
        let socket = socket_dir.path().join("snapshotter.sock");
        let snapshotter = Some(start_snapshotter(&store, &socket));
        let containerd = Containerd::with_lstore_snapshotter(&socket);
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
