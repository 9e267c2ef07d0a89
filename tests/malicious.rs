//! Hostile layers: `..` names, absolute names, symlink and hardlink escapes,
//! a symlink replacing the layer root, parser differentials. A canary
//! directory outside the store must stay untouched and nothing may appear
//! outside; escapes fail the load with one `error:` line, absolute names
//! land inside the layer.

mod common;

use common::checks::{inode, layer_diff};
use common::image::write_oci_layout;
use common::tarball::{Entry, Kind};
use common::tree::{assert_same_tree, snapshot, NodeKind, Tree};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore, TarBuilder};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Enough `../` to reach `/` from anywhere inside the store.
fn up() -> String {
    "../".repeat(32)
}

/// A directory outside the store that no extraction may touch:
/// `<tmp>/lstore-canary-XXXX/canary/{secret, sub/}`.
struct Canary {
    parent: TempDir,
}

impl Canary {
    fn new() -> Canary {
        let parent = tempfile::Builder::new()
            .prefix("lstore-canary-")
            .tempdir()
            .expect("canary dir");
        let dir = parent.path().join("canary");
        fs::create_dir(&dir).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("secret"), "do not touch\n").unwrap();
        Canary { parent }
    }

    /// Absolute path of the canary directory.
    fn dir(&self) -> PathBuf {
        self.parent.path().join("canary")
    }

    /// The canary directory's path without the leading `/`.
    fn rel(&self) -> String {
        self.dir()
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }

    /// A unique name for payload files, searched for afterwards.
    fn payload(&self) -> String {
        let tag = self.parent.path().file_name().unwrap().to_str().unwrap();
        format!("lstore-pwned-{tag}")
    }

    fn snapshot(&self) -> Tree {
        snapshot(self.parent.path())
    }

    /// Nothing named like the payload appeared at `/`, in the temp dir or
    /// in the canary.
    fn assert_no_payload_outside(&self) {
        let payload = self.payload();
        for dir in [Path::new("/"), &std::env::temp_dir(), &self.dir()] {
            assert!(
                !dir.join(&payload).exists(),
                "{} appeared outside the store",
                dir.join(&payload).display()
            );
        }
        assert!(!self.dir().join("pwned").exists());
    }
}

const NAME: &str = "example.com/lstore/hostile:1";

/// Writes `layers` as an OCI layout in `scratch` and returns its path.
fn layout(scratch: &Path, layers: &[TarBuilder]) -> PathBuf {
    let mut builder = ImageBuilder::new();
    for layer in layers {
        builder = builder.tar(layer, Compression::Gzip);
    }
    let image = builder.build();
    let dir = scratch.join("layout");
    write_oci_layout(&dir, &[(&image, LayoutNames::containerd(NAME))]);
    dir
}

/// The load must fail cleanly and leave the canary and the store as they
/// were.
fn assert_refused(layers: &[TarBuilder], canary: &Canary) -> String {
    let scratch = scratch();
    let store = Lstore::new();
    let layout = layout(scratch.path(), layers);
    let before = canary.snapshot();
    let error = store.fails(&["load", "-i", layout.to_str().unwrap()]);
    assert_same_tree(&before, &canary.snapshot(), "canary after a refused load");
    canary.assert_no_payload_outside();
    assert_eq!(
        store.images(),
        Vec::<Value>::new(),
        "no image after a refused load"
    );
    assert_eq!(
        store.layer_dirs(),
        Vec::<String>::new(),
        "no layer folder left"
    );
    error
}

/// The load succeeds; the canary is untouched. Returns the store and the
/// image's `inspect`.
fn assert_contained(layers: &[TarBuilder], canary: &Canary) -> (Lstore, Value) {
    let scratch = scratch();
    let store = Lstore::new();
    let layout = layout(scratch.path(), layers);
    let before = canary.snapshot();
    store.load(&layout, None);
    assert_same_tree(&before, &canary.snapshot(), "canary after the load");
    canary.assert_no_payload_outside();
    let inspect = store.inspect(NAME);
    (store, inspect)
}

#[test]
fn dot_dot_file_name_is_refused() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.file("ok", "fine\n");
    t.file(format!("{}{}/pwned", up(), canary.rel()), "pwned\n");
    assert_refused(&[t], &canary);
}

#[test]
fn dot_dot_directory_and_nested_dot_dot_are_refused() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.dir(format!("{}tmp/{}", up(), canary.payload()));
    assert_refused(&[t], &canary);

    let mut t = TarBuilder::new();
    t.dir("usr");
    t.file(
        format!("usr/{}{}/{}", up(), canary.rel(), canary.payload()),
        "pwned\n",
    );
    assert_refused(&[t], &canary);
}

#[test]
fn dot_dot_in_pax_path_is_refused_although_the_ustar_name_is_harmless() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    // The ustar name field holds only the first 100 bytes; the PAX path
    // record holds the real (escaping) name and must win.
    let long = format!("{}{}/{}", up(), canary.rel(), canary.payload());
    assert!(long.len() > 100);
    t.file(long, "pwned\n");
    assert_refused(&[t], &canary);

    let mut t = TarBuilder::new();
    t.file(format!("{}{}/pwned", up(), canary.rel()), "pwned\n")
        .gnu_long_names();
    assert_refused(&[t], &canary);
}

#[test]
fn absolute_names_land_inside_the_layer() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.dir("/etc");
    t.file("/etc/abs-file", "absolute\n");
    t.file(format!("/{}/pwned", canary.rel()), "inside\n");
    t.symlink("/etc/abs-link", "abs-file");
    let (_store, inspect) = assert_contained(&[t], &canary);
    let diff = layer_diff(&inspect, 0);
    assert_eq!(
        fs::read_to_string(diff.join("etc/abs-file")).unwrap(),
        "absolute\n"
    );
    assert_eq!(
        fs::read_to_string(diff.join(canary.rel()).join("pwned")).unwrap(),
        "inside\n"
    );
    assert_eq!(
        fs::read_link(diff.join("etc/abs-link")).unwrap(),
        Path::new("abs-file")
    );
}

#[test]
fn file_through_a_symlink_to_outside_is_refused() {
    let canary = Canary::new();
    for target in [
        canary.dir().to_str().unwrap().to_string(),
        format!("{}{}", up(), canary.rel()),
    ] {
        let mut t = TarBuilder::new();
        t.symlink("escape", &target);
        t.file("escape/pwned", "pwned\n");
        assert_refused(&[t], &canary);

        let mut t = TarBuilder::new();
        t.symlink("escape", &target);
        t.dir("escape/newdir");
        assert_refused(&[t], &canary);
    }
}

#[test]
fn chained_symlinks_are_not_followed() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.dir("a");
    t.symlink("a/first", "../second");
    t.symlink("second", canary.dir().to_str().unwrap());
    t.file("a/first/pwned", "pwned\n");
    assert_refused(&[t], &canary);
}

#[test]
fn hardlink_to_outside_is_refused() {
    let canary = Canary::new();
    let secret = canary.dir().join("secret");
    let before = inode(&secret);
    for target in [
        format!("/{}/secret", canary.rel()),
        format!("{}{}/secret", up(), canary.rel()),
    ] {
        let mut t = TarBuilder::new();
        t.hardlink("steal", &target);
        assert_refused(&[t], &canary);
    }
    let mut t = TarBuilder::new();
    t.symlink("s", canary.dir().to_str().unwrap());
    t.hardlink("steal", "s/secret");
    assert_refused(&[t], &canary);
    assert_eq!(inode(&secret), before, "the secret gained no link");
}

#[test]
fn symlink_named_dot_cannot_replace_the_layer_root() {
    let canary = Canary::new();
    for name in [".", "./", "/"] {
        let mut t = TarBuilder::new();
        t.symlink(name, canary.dir().to_str().unwrap());
        t.file("pwned", "pwned\n");
        assert_refused(&[t], &canary);
    }
}

#[test]
fn whiteouts_cannot_delete_or_mark_outside() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.file(format!("{}{}/.wh.secret", up(), canary.rel()), b"");
    assert_refused(&[t], &canary);

    let mut t = TarBuilder::new();
    t.symlink("s", canary.dir().to_str().unwrap());
    t.opaque("s");
    assert_refused(&[t], &canary);

    let mut t = TarBuilder::new();
    t.symlink("s", canary.dir().to_str().unwrap());
    t.whiteout("s/secret");
    assert_refused(&[t], &canary);
    assert!(canary.dir().join("secret").exists());
}

#[test]
fn entries_replacing_a_symlink_do_not_touch_its_target() {
    // A later entry of the same name replaces the symlink (the last entry
    // wins); it must never chmod, chown, set xattrs on or write into the
    // symlink's target. Refusing the layer is also safe.
    let canary = Canary::new();
    let secret = canary.dir().join("secret");
    let mut t = TarBuilder::new();
    t.symlink("s", secret.to_str().unwrap());
    t.file("s", "replaced\n").mode(0o4777).owner(1, 1);
    t.symlink("d", canary.dir().to_str().unwrap());
    t.dir("d").mode(0o777).xattr("user.pwned", "yes");
    let scratch = scratch();
    let store = Lstore::new();
    let layout = layout(scratch.path(), &[t]);
    let before = canary.snapshot();
    let out = store.run(&["load", "-i", layout.to_str().unwrap()]);
    assert_same_tree(&before, &canary.snapshot(), "canary after the load");
    canary.assert_no_payload_outside();
    if out.success() {
        let diff = layer_diff(&store.inspect(NAME), 0);
        let tree = snapshot(&diff);
        assert!(matches!(
            tree.get("s").map(|n| &n.kind),
            Some(NodeKind::File { .. })
        ));
        assert_eq!(fs::read_to_string(diff.join("s")).unwrap(), "replaced\n");
        assert_eq!(tree.get("d").map(|n| &n.kind), Some(&NodeKind::Dir));
    } else {
        common::lstore::assert_one_line_error("load", &out);
    }
}

#[test]
fn overwriting_a_hardlinked_name_does_not_write_through_the_link() {
    let canary = Canary::new();
    let mut t = TarBuilder::new();
    t.dir("etc");
    t.file("etc/passwd", "original\n");
    t.hardlink("alias", "etc/passwd");
    t.file("alias", "replacement\n");
    let (_store, inspect) = assert_contained(&[t], &canary);
    let diff = layer_diff(&inspect, 0);
    assert_eq!(
        fs::read_to_string(diff.join("etc/passwd")).unwrap(),
        "original\n"
    );
    assert_eq!(
        fs::read_to_string(diff.join("alias")).unwrap(),
        "replacement\n"
    );
}

#[test]
fn symlink_in_a_lower_layer_does_not_redirect_a_later_layer() {
    // Layers are extracted into separate folders: the upper layer's `etc/`
    // is a real directory, and the mounted view shows it over the symlink.
    let canary = Canary::new();
    let mut lower = TarBuilder::new();
    lower.symlink("etc", canary.dir().to_str().unwrap());
    let mut upper = TarBuilder::new();
    upper.file("etc/pwned", "inside\n");
    let (store, inspect) = assert_contained(&[lower, upper], &canary);
    let diff = layer_diff(&inspect, 1);
    assert_eq!(
        fs::read_to_string(diff.join("etc/pwned")).unwrap(),
        "inside\n"
    );
    let tree = common::checks::mounted_tree(&store, NAME);
    assert_eq!(tree.get("etc").map(|n| &n.kind), Some(&NodeKind::Dir));
    assert!(tree.get("etc/pwned").is_some());
    assert!(tree.get("etc/secret").is_none());
}

#[test]
fn pax_size_overrides_the_ustar_size() {
    // The ustar header says 0 bytes, the PAX record says 1024: the data is
    // file content (an embedded tar header), not a further entry. Reading
    // the ustar size would smuggle the embedded entry in (TARmageddon).
    let canary = Canary::new();
    let mut smuggled = TarBuilder::new();
    smuggled.file("smuggled", "smuggled\n");
    let content = smuggled.tar()[..1024].to_vec();
    let mut t = TarBuilder::new();
    let mut carrier = Entry::new("carrier", Kind::File(content.clone()));
    carrier
        .header_size(0)
        .pax("size", content.len().to_string());
    t.push(carrier);
    t.file("after", "after\n");
    let (_store, inspect) = assert_contained(&[t], &canary);
    let diff = layer_diff(&inspect, 0);
    assert_eq!(fs::read(diff.join("carrier")).unwrap(), content);
    assert_eq!(fs::read_to_string(diff.join("after")).unwrap(), "after\n");
    assert!(!diff.join("smuggled").exists(), "an entry was smuggled in");
}
