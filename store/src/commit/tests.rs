use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rustix::fs::{self as rfs, FileType, Mode, XattrFlags};

use super::*;

/// One entry of a tar as read back by the `tar` crate.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    data: Vec<u8>,
    mode: u32,
    uid: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn read_tar(bytes: &[u8]) -> Vec<Seen> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for x in pax {
                let x = x.unwrap();
                if let Some(name) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let kind = e.header().entry_type();
        let mode = e.header().mode().unwrap();
        let uid = e.header().uid().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Seen {
            path,
            kind,
            link,
            data,
            mode,
            uid,
            xattrs,
        });
    }
    out
}

fn changes(upper: &Path, merged: &Path) -> Vec<u8> {
    let mut tar = TarWriter::new(Vec::new());
    diff::write_changes(upper, merged, OverlayXattrs::Trusted, &mut tar).unwrap();
    tar.finish().unwrap()
}

fn find<'a>(entries: &'a [Seen], path: &str) -> &'a Seen {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path} in {:?}", paths(entries)))
}

fn paths(entries: &[Seen]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rfs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

/// An upper dir as overlay leaves it after changes through a mount.
fn sample_upper(dir: &Path) {
    let upper = dir;
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/passwd"), "root:x:0:0\n").unwrap();
    fs::set_permissions(upper.join("etc/passwd"), fs::Permissions::from_mode(0o640)).unwrap();
    set_xattr(&upper.join("etc/passwd"), "user.note", b"kept");
    set_xattr(
        &upper.join("etc/passwd"),
        "trusted.overlay.origin",
        b"\x00fh",
    );
    set_xattr(&upper.join("etc"), "trusted.overlay.impure", b"y");
    // Whiteouts: 0/0 character devices.
    rfs::mknodat(
        rfs::CWD,
        upper.join("gone"),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
    rfs::mknodat(
        rfs::CWD,
        upper.join("etc/shadow"),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
    // An opaque directory with new content.
    fs::create_dir_all(upper.join("opt/app")).unwrap();
    set_xattr(&upper.join("opt/app"), "trusted.overlay.opaque", b"y");
    fs::write(upper.join("opt/app/new"), "new\n").unwrap();
    // Hardlinks, a symlink with an xattr, a fifo, a device, a socket.
    fs::write(upper.join("opt/a"), "linked\n").unwrap();
    fs::hard_link(upper.join("opt/a"), upper.join("opt/b")).unwrap();
    symlink("../etc/passwd", upper.join("opt/link")).unwrap();
    set_xattr(
        &upper.join("opt/link"),
        "trusted.symlink-note",
        b"on the link",
    );
    rfs::mknodat(
        rfs::CWD,
        upper.join("opt/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    rfs::mknodat(
        rfs::CWD,
        upper.join("opt/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rfs::makedev(1, 3),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(upper.join("opt/sock")).unwrap();
    let long = "n".repeat(150);
    fs::write(upper.join("opt").join(&long), "long\n").unwrap();
}

#[test]
fn upper_dir_becomes_oci_notation() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    sample_upper(&upper);
    let entries = read_tar(&changes(&upper, &upper));
    let long = format!("opt/{}", "n".repeat(150));
    assert_eq!(
        paths(&entries),
        [
            "etc/",
            "etc/passwd",
            "etc/.wh.shadow",
            ".wh.gone",
            "opt/",
            "opt/a",
            "opt/app/",
            "opt/app/.wh..wh..opq",
            "opt/app/new",
            "opt/b",
            "opt/fifo",
            "opt/link",
            long.as_str(),
            "opt/null",
        ]
    );
    let passwd = find(&entries, "etc/passwd");
    assert_eq!(passwd.data, b"root:x:0:0\n");
    assert_eq!(passwd.mode, 0o640);
    assert_eq!(
        passwd.xattrs,
        BTreeMap::from([("user.note".to_string(), b"kept".to_vec())])
    );
    assert!(
        find(&entries, "etc/").xattrs.is_empty(),
        "overlay xattrs leak"
    );
    for wh in ["etc/.wh.shadow", ".wh.gone", "opt/app/.wh..wh..opq"] {
        let e = find(&entries, wh);
        assert_eq!(e.kind, tar::EntryType::Regular);
        assert_eq!((e.mode, e.data.len()), (0o600, 0));
    }
    assert!(find(&entries, "opt/app/").xattrs.is_empty());
    let b = find(&entries, "opt/b");
    assert_eq!(b.kind, tar::EntryType::Link);
    assert_eq!(b.link.as_deref(), Some("opt/a"));
    let link = find(&entries, "opt/link");
    assert_eq!(link.kind, tar::EntryType::Symlink);
    assert_eq!(link.link.as_deref(), Some("../etc/passwd"));
    assert_eq!(
        link.xattrs.get("trusted.symlink-note").map(Vec::as_slice),
        Some(&b"on the link"[..])
    );
    assert_eq!(find(&entries, "opt/fifo").kind, tar::EntryType::Fifo);
    assert_eq!(find(&entries, "opt/null").kind, tar::EntryType::Char);
    assert_eq!(find(&entries, &long).data, b"long\n");
}

/// What a tree holds, for comparing an upper dir with the layer extracted
/// from its tar: type, metadata, content, xattrs and hardlink groups.
fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let full = root.join(&path);
            let m = fs::symlink_metadata(&full).unwrap();
            let ft = m.file_type();
            if ft.is_socket() {
                continue;
            }
            let whiteout = ft.is_char_device() && m.rdev() == 0;
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&full).unwrap().display())
            } else if ft.is_file() {
                format!("file {}", Digest::of(&fs::read(&full).unwrap()))
            } else {
                format!("node {:o} {}", m.mode() & 0o170000, m.rdev())
            };
            let mut names = vec![0u8; 4096];
            let n = rfs::llistxattr(&full, &mut names[..]).unwrap_or(0);
            let mut xattrs = Vec::new();
            for x in names[..n].split(|&b| b == 0).filter(|x| !x.is_empty()) {
                let x = String::from_utf8(x.to_vec()).unwrap();
                if x.starts_with("trusted.overlay.") && x != "trusted.overlay.opaque" {
                    continue;
                }
                let mut v = vec![0u8; 4096];
                let len = rfs::lgetxattr(&full, x.as_str(), &mut v[..]).unwrap();
                xattrs.push(format!("{x}={:?}", &v[..len]));
            }
            let group = if !ft.is_dir() && !whiteout && m.nlink() > 1 {
                inodes
                    .entry(m.ino())
                    .or_insert_with(|| path.clone())
                    .clone()
            } else {
                String::new()
            };
            // Whiteouts carry no metadata worth keeping.
            let meta = if whiteout {
                String::new()
            } else {
                format!(
                    "{:o} {}:{} {}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime()
                )
            };
            out.insert(path, format!("{kind} {meta} {xattrs:?} {group}"));
        }
    }
    out
}

#[test]
fn the_layer_extracts_back_into_the_upper_dir() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    sample_upper(&upper);
    // Binary values, newlines included, survive the PAX records.
    set_xattr(&upper.join("opt/a"), "user.bin", b"\x00line\nnext\xff");
    fs::set_permissions(upper.join("opt/app"), fs::Permissions::from_mode(0o1755)).unwrap();
    rfs::chown(
        upper.join("etc/passwd"),
        Some(rfs::Uid::from_raw(1000)),
        Some(rfs::Gid::from_raw(42)),
    )
    .unwrap();
    let (blob, diff_id, _, _) = write_layer(
        Vec::new(),
        &upper,
        &upper,
        Compression::Gzip,
        OverlayXattrs::Trusted,
    )
    .unwrap();
    let out = dir.path().join("extracted");
    fs::create_dir(&out).unwrap();
    let unpacked = crate::unpack::unpack_layer(
        &mut &blob[..],
        Compression::Gzip,
        &out,
        &crate::unpack::Limits::default(),
    )
    .unwrap();
    assert_eq!(unpacked.diff_id, diff_id);
    assert_eq!(unpacked.compressed_digest, Digest::of(&blob));
    let (want, got) = (tree(&upper), tree(&out));
    for (path, line) in &want {
        assert_eq!(got.get(path), Some(line), "{path}");
    }
    assert_eq!(want.len(), got.len(), "{got:#?}");
}

#[test]
fn the_same_changes_give_the_same_layer() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    sample_upper(&upper);
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (a, diff_a, size_a, n) = write_layer(
            Vec::new(),
            &upper,
            &upper,
            compression,
            OverlayXattrs::Trusted,
        )
        .unwrap();
        let (b, diff_b, _, _) = write_layer(
            Vec::new(),
            &upper,
            &upper,
            compression,
            OverlayXattrs::Trusted,
        )
        .unwrap();
        assert_eq!(a, b, "{compression:?} layers differ");
        assert_eq!(diff_a, diff_b);
        assert_eq!(n, 14);
        let tar = match compression {
            Compression::None => a.clone(),
            Compression::Gzip => {
                assert!(a.starts_with(&[0x1f, 0x8b]));
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&a[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(&a[..]).unwrap(),
        };
        assert_eq!(Digest::of(&tar), diff_a);
        assert_eq!(tar.len() as u64, size_a);
    }
}

#[test]
fn reserved_whiteout_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".wh.sneaky"), "x").unwrap();
    let mut tar = TarWriter::new(Vec::new());
    let err =
        diff::write_changes(dir.path(), dir.path(), OverlayXattrs::Trusted, &mut tar).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn an_empty_upper_is_the_empty_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, diff_id, size, entries) = write_layer(
        Vec::new(),
        dir.path(),
        dir.path(),
        Compression::None,
        OverlayXattrs::Trusted,
    )
    .unwrap();
    assert_eq!((size, entries), (1024, 0));
    assert_eq!(tar, vec![0u8; 1024]);
    assert_eq!(
        diff_id.to_string(),
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
}

/// A real overlay with redirect_dir and metacopy on: a renamed directory
/// and a metadata-only copy-up keep data in the lower layer, which the
/// layer must carry anyway.
#[test]
fn redirected_dirs_and_metacopy_files_are_read_through_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        dir.path().join("lower"),
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    fs::create_dir_all(lower.join("d/sub")).unwrap();
    fs::write(lower.join("d/sub/f"), "lower data\n").unwrap();
    fs::write(lower.join("g"), "g data\n").unwrap();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,metacopy=on,index=off",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "overlay mount with redirect_dir/metacopy");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&merged);
    fs::rename(merged.join("d"), merged.join("e")).unwrap();
    rfs::chown(
        merged.join("g"),
        Some(rfs::Uid::from_raw(1000)),
        Some(rfs::Gid::from_raw(1000)),
    )
    .unwrap();
    // The kernel did use both features (else this test proves nothing).
    assert!(rfs::lgetxattr_query(upper.join("e"), "trusted.overlay.redirect").is_ok());
    assert!(rfs::lgetxattr_query(upper.join("g"), "trusted.overlay.metacopy").is_ok());
    assert_eq!(fs::metadata(upper.join("g")).unwrap().len(), 7);

    let entries = read_tar(&changes(&upper, &merged));
    assert_eq!(
        paths(&entries),
        [".wh.d", "e/", "e/.wh..wh..opq", "e/sub/", "e/sub/f", "g"]
    );
    assert_eq!(find(&entries, "e/sub/f").data, b"lower data\n");
    let g = find(&entries, "g");
    assert_eq!((g.data.as_slice(), g.uid), (&b"g data\n"[..], 1000));
    assert!(entries.iter().all(|e| e.xattrs.is_empty()));
}

fn base_docs(kind: &str) -> (Vec<u8>, Vec<u8>) {
    let (manifest_type, config_type, layer_type) = if kind == "docker" {
        (
            oci::DOCKER_MANIFEST,
            oci::DOCKER_CONFIG,
            oci::DOCKER_LAYER_GZIP,
        )
    } else {
        (oci::OCI_MANIFEST, oci::OCI_CONFIG, oci::OCI_LAYER_GZIP)
    };
    let d1 = Digest::of(b"layer1");
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2021-01-01T00:00:00Z",
        "config": {"Env": ["A=1"], "Cmd": ["/bin/sh"]},
        "x-vendor": {"kept": true},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"tar1").to_string()]},
        "history": [{"created_by": "base"}],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": d1.to_string(), "size": 6,
                    "annotations": {"a": "b"}}],
        "annotations": {"org.example": "base"},
    });
    (serde_json::to_vec(&manifest).unwrap(), config)
}

fn new_layer() -> NewLayer {
    NewLayer {
        digest: Digest::of(b"blob2"),
        size: 5,
        diff_id: Digest::of(b"tar2"),
        tar_size: 2048,
    }
}

#[test]
fn new_config_keeps_every_field_and_appends_the_layer() {
    let (manifest, config) = base_docs("oci");
    let image = new_image(
        &manifest,
        oci::OCI_MANIFEST,
        &config,
        &new_layer(),
        Compression::Gzip,
        "2030-01-02T03:04:05Z",
    )
    .unwrap();
    let c: Value = serde_json::from_slice(&image.config).unwrap();
    assert_eq!(c["x-vendor"], json!({"kept": true}));
    assert_eq!(c["config"]["Env"], json!(["A=1"]));
    assert_eq!(c["created"], "2030-01-02T03:04:05Z");
    assert_eq!(
        c["rootfs"]["diff_ids"],
        json!([
            Digest::of(b"tar1").to_string(),
            Digest::of(b"tar2").to_string()
        ])
    );
    assert_eq!(
        c["history"],
        json!([{"created_by": "base"},
               {"created": "2030-01-02T03:04:05Z", "created_by": CREATED_BY}])
    );
    // The import pipeline reads it like any config.
    let parsed: oci::ImageConfig = serde_json::from_slice(&image.config).unwrap();
    assert_eq!(parsed.rootfs.diff_ids.len(), 2);

    assert_eq!(image.media_type, oci::OCI_MANIFEST);
    let m: oci::Manifest = serde_json::from_slice(&image.manifest).unwrap();
    assert_eq!(m.media_type.as_deref(), Some(oci::OCI_MANIFEST));
    assert_eq!(m.config.digest, Digest::of(&image.config));
    assert_eq!(m.config.size, image.config.len() as u64);
    assert_eq!(m.layers.len(), 2);
    let base: oci::Manifest = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m.layers[0], base.layers[0], "base descriptor changed");
    assert_eq!(
        m.layers[1],
        Descriptor::new(oci::OCI_LAYER_GZIP, Digest::of(b"blob2"), 5)
    );
    assert!(m.annotations.is_none() && m.subject.is_none());
}

#[test]
fn docker_bases_stay_docker_unless_zstd() {
    let (manifest, config) = base_docs("docker");
    let gz = new_image(
        &manifest,
        oci::DOCKER_MANIFEST,
        &config,
        &new_layer(),
        Compression::Gzip,
        "2030-01-01T00:00:00Z",
    )
    .unwrap();
    let m: oci::Manifest = serde_json::from_slice(&gz.manifest).unwrap();
    assert_eq!(gz.media_type, oci::DOCKER_MANIFEST);
    assert_eq!(m.config.media_type, oci::DOCKER_CONFIG);
    assert_eq!(m.layers[0].media_type, oci::DOCKER_LAYER_GZIP);
    assert_eq!(m.layers[1].media_type, oci::DOCKER_LAYER_GZIP);

    let zst = new_image(
        &manifest,
        oci::DOCKER_MANIFEST,
        &config,
        &new_layer(),
        Compression::Zstd,
        "2030-01-01T00:00:00Z",
    )
    .unwrap();
    let m: oci::Manifest = serde_json::from_slice(&zst.manifest).unwrap();
    assert_eq!(zst.media_type, oci::OCI_MANIFEST);
    assert_eq!(m.config.media_type, oci::OCI_CONFIG);
    assert_eq!(m.layers[0].media_type, oci::OCI_LAYER_GZIP);
    assert_eq!(m.layers[0].digest, Digest::of(b"layer1"));
    assert_eq!(m.layers[0].annotation("a"), Some("b"));
    assert_eq!(m.layers[1].media_type, oci::OCI_LAYER_ZSTD);
}

#[test]
fn inconsistent_bases_are_refused() {
    let (manifest, _) = base_docs("oci");
    let no_rootfs = serde_json::to_vec(&json!({"os": "linux"})).unwrap();
    assert!(new_image(
        &manifest,
        oci::OCI_MANIFEST,
        &no_rootfs,
        &new_layer(),
        Compression::Gzip,
        "x"
    )
    .is_err());
    let two = serde_json::to_vec(&json!({"rootfs": {"type": "layers", "diff_ids": [
        Digest::of(b"a").to_string(), Digest::of(b"b").to_string()]}}))
    .unwrap();
    assert!(new_image(
        &manifest,
        oci::OCI_MANIFEST,
        &two,
        &new_layer(),
        Compression::Gzip,
        "x"
    )
    .is_err());
}

#[test]
fn timestamps_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
}

/// `user.containers.override_stat` is honoured only in a user's store and
/// only on a file still owned by 0:0 (as extraction leaves it): a process
/// in the container cannot forge a setuid-root file with it.
#[test]
fn override_stat_counts_only_on_files_extraction_left_to_root() {
    if !rustix::process::geteuid().is_root() {
        return; // chown to another user needs root
    }
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path();
    let make = |name: &str, owner: u32, mode: u32, value: &str| {
        let path = upper.join(name);
        fs::write(&path, b"x").unwrap();
        std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        rfs::setxattr(
            &path,
            crate::userns::OVERRIDE_STAT_XATTR,
            value.as_bytes(),
            XattrFlags::empty(),
        )
        .unwrap();
    };
    make("forged", 1000, 0o755, "0:0:4755:file");
    make("kept", 0, 0o4755, "1000:42:4755:file");
    make("chmodded", 0, 0o700, "1000:42:4755:file");
    let mut tar = TarWriter::new(Vec::new());
    diff::write_changes(upper, upper, OverlayXattrs::User, &mut tar).unwrap();
    let user = read_tar(&tar.finish().unwrap());
    let owner_mode = |entries: &[Seen], name: &str| {
        let e = find(entries, name);
        assert!(!e.xattrs.contains_key(crate::userns::OVERRIDE_STAT_XATTR));
        (e.uid, e.mode & 0o7777)
    };
    assert_eq!(owner_mode(&user, "forged"), (1000, 0o755));
    assert_eq!(owner_mode(&user, "kept"), (1000, 0o4755));
    assert_eq!(owner_mode(&user, "chmodded"), (1000, 0o700));
    // A root store never trusts it.
    let root = read_tar(&changes(upper, upper));
    assert_eq!(owner_mode(&root, "kept"), (0, 0o4755));
}
