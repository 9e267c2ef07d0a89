//! Checks of the test fixtures themselves against independent readers (GNU
//! tar, umoci, skopeo), so that a failure in the store tests points at the
//! store, not at a malformed fixture.

mod common;

use common::image::{docker_archive, docker_archive_oci_style, write_oci_layout};
use common::peers::{skopeo_inspect, umoci_unpack};
use common::scenes::{self, T2, T3, T4};
use common::tree::{snapshot, NodeKind};
use common::{scratch, LayoutNames, ManifestKind};
use std::fs;
use std::process::Command;

fn gnu_tar_list(path: &std::path::Path) -> String {
    let output = Command::new("tar")
        .env("LC_ALL", "C.UTF-8")
        .args(["--numeric-owner", "-tvf"])
        .arg(path)
        .output()
        .expect("run tar");
    assert!(
        output.status.success(),
        "GNU tar rejects the fixture: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 listing")
}

#[test]
fn gnu_tar_reads_every_entry_kind() {
    let scratch = scratch();
    let path = scratch.path().join("base.tar");
    let base = scenes::everything_base();
    fs::write(&path, base.tar()).unwrap();
    let listing = gnu_tar_list(&path);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), base.entries().len(), "{listing}");
    let line = |name: &str| -> &str {
        lines
            .iter()
            .find(|l| l.ends_with(name) || l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
    };
    assert!(line("usr/bin/su").starts_with("-rwsr-xr-x 0/0"));
    assert!(line("usr/bin/wall").starts_with("-rwxr-sr-x 0/5"));
    assert!(line("tmp/").starts_with("drwxrwxrwt"));
    assert!(line("dev/null").starts_with("crw-rw-rw- 0/0"));
    assert!(line("dev/loop0").starts_with("brw-rw---- 0/6"));
    assert!(line("dev/initctl").starts_with("prw-------"));
    assert!(line("ids/big").contains("3000000/3000001"));
    assert!(line("usr/bin/b link to usr/bin/a").starts_with("hrwxr-xr-x 0/0"));
    assert!(line("bin/ash -> sh").starts_with("lrwxrwxrwx"));
    let long_pax = format!("long/{}", scenes::long_component("pax-", 140));
    let long_gnu = format!("long/{}", scenes::long_component("gnu-", 130));
    assert!(listing.contains(&long_pax));
    assert!(listing.contains(&format!("long/link-gnu -> ../{long_gnu}")));
    assert!(listing.contains("unicode/naïve café.txt"));
    assert!(listing.contains("unicode/日本語.txt"));
}

#[test]
fn gnu_tar_reads_whiteouts_and_malformed_names() {
    let scratch = scratch();
    let path = scratch.path().join("raw.tar");
    let mut t = common::TarBuilder::new();
    t.whiteout("etc/hostname");
    t.opaque("opq");
    t.file("../escape", "x");
    t.file("/abs", "x");
    fs::write(&path, t.tar()).unwrap();
    let listing = gnu_tar_list(&path);
    for name in ["etc/.wh.hostname", "opq/.wh..wh..opq", "../escape", "/abs"] {
        assert!(listing.contains(name), "{name} missing:\n{listing}");
    }
}

/// umoci applies the "everything" image with the semantics the store must
/// reproduce; this pins down what the comparison tests compare against.
#[test]
fn umoci_unpacks_the_everything_image() {
    let scratch = scratch();
    let layout = scratch.path().join("layout");
    let image = common::checks::umoci_twin(&scenes::everything_image(ManifestKind::Oci));
    write_oci_layout(&layout, &[(&image, LayoutNames::ref_name("everything"))]);
    let bundle = umoci_unpack(&layout, "everything");
    let tree = snapshot(&bundle.rootfs());
    let node = |path: &str| {
        tree.get(path)
            .unwrap_or_else(|| panic!("{path} missing; have {:?}", tree.paths()))
    };
    for hidden in [
        "etc/hostname",
        "old",
        "old/a",
        "gone",
        "opq/lower1",
        "opq/lowerdir",
        "redir/lower",
        "usr/bin/b",
        "deep/keep",
        "var/cache/item",
        "never-existed",
    ] {
        assert!(tree.get(hidden).is_none(), "{hidden} should be hidden");
    }
    assert!(tree.paths().iter().all(|p| !p.contains(".wh.")));
    assert_eq!(
        node("opq/upper").kind,
        NodeKind::File {
            size: 6,
            sha256: sha("upper\n")
        }
    );
    assert!(node("redir/fresh").kind != NodeKind::Dir);
    assert_eq!(node("refile").mode, 0o600);
    assert!(node("deep/new/file").kind != NodeKind::Dir);
    assert!(matches!(node("var/cache").kind, NodeKind::File { .. }));
    assert_eq!(node("var").xattrs.get("user.dirattr").unwrap(), b"changed");
    assert_eq!(node("usr/bin/su").mode, 0o4755);
    assert_eq!(node("usr/bin/both").mode, 0o6750);
    assert_eq!(node("tmp").mode, 0o1777);
    assert_eq!(node("usr/bin/a").link_group.as_deref(), Some("usr/bin/a"));
    assert_eq!(node("usr/bin/c").link_group.as_deref(), Some("usr/bin/a"));
    assert_eq!(
        node("usr/bin/new2").link_group.as_deref(),
        Some("usr/bin/new")
    );
    let xattrs = &node("etc/xattrs").xattrs;
    assert_eq!(xattrs.get("trusted.note").unwrap(), b"kept by root");
    assert_eq!(xattrs.get("user.binary").unwrap(), &[0u8, 1, 2, 255]);
    assert_eq!(
        node("dev/null").kind,
        NodeKind::CharDev { major: 1, minor: 3 }
    );
    assert_eq!(
        node("dev/loop0").kind,
        NodeKind::BlockDev { major: 7, minor: 0 }
    );
    assert_eq!(node("dev/initctl").kind, NodeKind::Fifo);
    assert_eq!(
        (node("ids/big").uid, node("ids/big").gid),
        (3_000_000, 3_000_001)
    );
    assert_eq!((node("ids/named").uid, node("ids/named").gid), (1234, 5678));
    assert_eq!(node("ro").mode, 0o555);
    assert!(tree.get("ro/added").is_some() && tree.get("ro/inner/deep").is_some());
    assert_eq!(
        node("dup").kind,
        NodeKind::File {
            size: 7,
            sha256: sha("second\n")
        }
    );
    assert_eq!(
        (node("dupdir").mode, node("dupdir").mtime),
        (0o755, T4 as i64)
    );
    assert_eq!((node("late").mode, node("late").mtime), (0o750, T3 as i64));
    assert_eq!(node("home/user").mode, 0o750);
    assert_eq!(node("etc").mtime, T2 as i64);
    assert_eq!(node("bin/ash").mtime, T2 as i64);
    assert_eq!(node("data/epoch").mtime, 0);
    assert_eq!(node("data/future").mtime, 4_102_444_800);
    assert!(tree.get("unicode/rocket-🚀").is_some());
    assert!(tree.get("unicode/latin1-\\xe9t\\xe9").is_some());
    assert_eq!(node("data/pax-mtime").mtime, 1_700_000_000);
    assert_eq!(
        (
            node("usr/bin/suid-user").mode,
            node("usr/bin/suid-user").uid
        ),
        (0o4755, 1000)
    );
    assert_eq!(node("srv/shared").mode, 0o2775);
    assert_eq!(node("srv/shared/sub").mode, 0o755);
    assert_eq!((node("locked").mode, node("locked/inside").mode), (0, 0));
    assert_eq!(
        node("hl/keep").kind,
        NodeKind::File {
            size: 14,
            sha256: sha("first version\n")
        }
    );
    assert_eq!(
        node("hl/orig").kind,
        NodeKind::File {
            size: 15,
            sha256: sha("second version\n")
        }
    );
    assert_eq!(node("hl/orig").link_group, None);
    assert_eq!(node("hl/sym-link").link_group.as_deref(), Some("hl/sym"));
    assert_eq!(
        node("hl/sym").xattrs.get("trusted.on-symlink").unwrap(),
        b"yes"
    );
    assert_eq!(node("swap").kind, NodeKind::Dir);
    assert!(tree.get("swap/child").is_some() && tree.get("swap2/child").is_none());
    assert!(matches!(node("swap2").kind, NodeKind::File { .. }));
    assert_eq!(
        node("dev/nvme0n1p1").kind,
        NodeKind::BlockDev {
            major: 259,
            minor: 300
        }
    );
}

fn sha(content: &str) -> String {
    common::tarball::sha256_hex(content.as_bytes())
}

#[test]
fn skopeo_reads_layouts_and_docker_archives() {
    let scratch = scratch();
    // skopeo 1.9 only addresses OCI-typed manifests in a layout.
    let image = scenes::everything_image(ManifestKind::Oci);
    let layout = scratch.path().join("layout");
    write_oci_layout(&layout, &[(&image, LayoutNames::ref_name("v1"))]);
    let raw = skopeo_inspect(&["--raw"], &format!("oci:{}:v1", layout.display()));
    assert_eq!(
        raw,
        serde_json::from_slice::<serde_json::Value>(&image.manifest).unwrap()
    );

    let other = common::ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("other"))
        .build();
    let archive = scratch.path().join("docker.tar");
    fs::write(
        &archive,
        docker_archive(&[
            (&image, &["example.com/a:1"]),
            (&other, &["example.com/b:2"]),
        ]),
    )
    .unwrap();
    for (reference, want) in [("example.com/a:1", &image), ("example.com/b:2", &other)] {
        let config = skopeo_inspect(
            &["--config"],
            &format!("docker-archive:{}:{reference}", archive.display()),
        );
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(want.diff_ids())
        );
    }

    let uncompressed = common::ImageBuilder::new()
        .tar(&scenes::everything_base(), common::Compression::None)
        .build();
    let modern = scratch.path().join("modern.tar");
    fs::write(
        &modern,
        docker_archive_oci_style(
            &scratch.path().join("modern"),
            &[(&uncompressed, &["example.com/c:3"])],
        ),
    )
    .unwrap();
    let config = skopeo_inspect(
        &["--config"],
        &format!("docker-archive:{}", modern.display()),
    );
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(uncompressed.diff_ids())
    );
}

/// The tree comparison notices every property it claims to compare.
#[test]
fn tree_diff_reports_each_kind_of_difference() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = scratch();
    let layout = scratch.path().join("layout");
    let image = common::checks::umoci_twin(&scenes::everything_image(ManifestKind::Oci));
    write_oci_layout(&layout, &[(&image, LayoutNames::ref_name("t"))]);
    let bundle = umoci_unpack(&layout, "t");
    let root = bundle.rootfs();
    let before = snapshot(&root);
    assert!(common::tree::diff(&before, &snapshot(&root)).is_empty());

    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("etc/passwd"), "changed\n").unwrap();
    let status = Command::new("touch")
        .args(["-h", "-d", "@0"])
        .arg(root.join("bin/ash"))
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::lchown(root.join("ids/named"), Some(1), None).unwrap();
    let path = std::ffi::CString::new(root.join("etc/xattrs").to_str().unwrap()).unwrap();
    // SAFETY: both arguments are NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(path.as_ptr(), c"user.comment".as_ptr()) };
    assert_eq!(rc, 0, "lremovexattr");
    // Break the hardlink: copy c over itself as a separate inode.
    let content = fs::read(root.join("usr/bin/c")).unwrap();
    fs::remove_file(root.join("usr/bin/c")).unwrap();
    fs::write(root.join("usr/bin/c"), content).unwrap();
    fs::set_permissions(root.join("usr/bin/c"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(root.join("dev/initctl")).unwrap();
    fs::write(root.join("extra"), "").unwrap();

    let differences = common::tree::diff(&before, &snapshot(&root)).join("\n");
    for expected in [
        "/usr/bin/su: mode expected 4755, found 0755",
        "/etc/passwd: expected file(",
        "/bin/ash: mtime expected",
        "/ids/named: owner expected 1234:5678, found 1:5678",
        "/usr/bin/a: hardlinked with",
        "/usr/bin/c: hardlinked with expected Some(\"usr/bin/a\"), found None",
        "missing: /dev/initctl (fifo)",
        "unexpected: /extra (file(",
    ] {
        assert!(
            differences.contains(expected),
            "{expected:?} not in:\n{differences}"
        );
    }
    assert!(
        differences.contains("/etc/xattrs: xattrs expected"),
        "{differences}"
    );
}
