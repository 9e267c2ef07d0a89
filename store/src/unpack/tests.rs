//! End-to-end tests of `unpack_layer`: real files in a temporary directory,
//! and a canary directory beside the layer that must never change.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::apply::FilePolicy;
use super::files::{FileJob, FilePool};
use super::tar_reader::{Entry, Kind, Time};
use super::testtar::{self, RawEntry};
use super::{
    unpack_layer, unpack_layer_at, unpack_with_workers, LayerPosition, Limits, Sharing,
    UnpackError, Unpacked,
};
use crate::digest::Digest;
use crate::oci::Compression;

/// What a path looked like, for before/after comparisons.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
    opaque: bool,
    links: u64,
}

fn seen(path: &Path) -> Seen {
    let m = fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let (kind, content) = if ft.is_symlink() {
        (
            "symlink",
            fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec(),
        )
    } else if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        ("file", fs::read(path).unwrap())
    } else {
        ("special", Vec::new())
    };
    Seen {
        kind: kind.into(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        content,
        opaque: !ft.is_symlink() && xattr(path, "trusted.overlay.opaque").is_some(),
        links: if ft.is_dir() { 0 } else { m.nlink() },
    }
}

/// Every path under `dir` except `skip`, recursively.
fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    out.insert(dir.to_path_buf(), seen(dir));
    for item in fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path == skip {
            continue;
        }
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            snapshot(&path, skip, out);
        } else {
            out.insert(path.clone(), seen(&path));
        }
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temporary directory holding the layer directory `dest` and, beside
/// it, a `canary` directory that extraction must never touch.
struct Scene {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    dest: PathBuf,
    canary: PathBuf,
    before: BTreeMap<PathBuf, Seen>,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().to_path_buf();
        let dest = top.join("dest");
        let canary = top.join("canary");
        fs::create_dir(&dest).unwrap();
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("secret"), b"do not touch").unwrap();
        fs::write(canary.join("sub/deep"), b"deep").unwrap();
        let mut before = BTreeMap::new();
        snapshot(&top, &dest, &mut before);
        Scene {
            _tmp: tmp,
            top,
            dest,
            canary,
            before,
        }
    }

    fn unpack(&self, tar: &[u8]) -> Result<Unpacked, UnpackError> {
        self.unpack_blob(tar, Compression::None, &Limits::default())
    }

    fn unpack_blob(
        &self,
        blob: &[u8],
        c: Compression,
        limits: &Limits,
    ) -> Result<Unpacked, UnpackError> {
        let result = unpack_layer(&mut &blob[..], c, &self.dest, limits);
        self.assert_outside_untouched();
        result
    }

    fn entries(&self, entries: &[RawEntry]) -> Result<Unpacked, UnpackError> {
        self.unpack(&testtar::archive(entries))
    }

    /// Extracts an uncompressed upper layer with `workers` file threads
    /// (0: all on the extraction thread).
    fn unpack_with(&self, tar: &[u8], workers: usize) -> Result<Unpacked, UnpackError> {
        let result = unpack_with_workers(
            &mut &tar[..],
            Compression::None,
            &self.dest,
            &Limits::default(),
            LayerPosition::Upper,
            workers,
            None,
            Sharing::Off,
        )
        .map(|(unpacked, _, _)| unpacked);
        self.assert_outside_untouched();
        result
    }

    /// Extracts `entries` as the first layer of a chain.
    fn base_entries(&self, entries: &[RawEntry]) -> Result<Unpacked, UnpackError> {
        let tar = testtar::archive(entries);
        let result = unpack_layer_at(
            &mut &tar[..],
            Compression::None,
            &self.dest,
            &Limits::default(),
            LayerPosition::Base,
        );
        self.assert_outside_untouched();
        result
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    fn meta(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    fn assert_outside_untouched(&self) {
        let mut after = BTreeMap::new();
        snapshot(&self.top, &self.dest, &mut after);
        assert_eq!(
            after, self.before,
            "something outside the layer directory changed"
        );
        let dest = fs::symlink_metadata(&self.dest).unwrap();
        assert!(
            dest.is_dir(),
            "the layer root is no longer a real directory"
        );
    }
}

fn sha(data: &[u8]) -> Digest {
    Digest::of(data)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn is_whiteout_device(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

// ---------------------------------------------------------------- entries

#[test]
fn every_entry_kind_with_its_metadata() {
    if !is_root() {
        eprintln!("skipped: needs root for owners and device nodes");
        return;
    }
    let s = Scene::new();
    let mut fractional = RawEntry::file("frac", b"f");
    fractional.mtime = 1;
    let tar = testtar::archive(&[
        RawEntry::dir("d/")
            .with_mode(0o750)
            .with_owner(5, 6)
            .with_mtime(1_111_111_111),
        RawEntry::file("d/suid", b"#!/bin/sh\n")
            .with_mode(0o4755)
            .with_owner(1000, 1001)
            .with_mtime(1_222_222_222),
        RawEntry::file("d/sgid", b"")
            .with_mode(0o2711)
            .with_owner(0, 50),
        RawEntry::dir("tmp/").with_mode(0o1777),
        RawEntry::symlink("d/link", "../nowhere/at/all")
            .with_owner(7, 8)
            .with_mtime(1_333_333_333),
        RawEntry::hardlink("d/hard", "d/suid"),
        RawEntry::device(b'3', "null", 1, 3)
            .with_mode(0o666)
            .with_owner(0, 5),
        RawEntry::device(b'4', "loop0", 7, 0).with_mode(0o660),
        RawEntry::device(b'6', "fifo", 0, 0)
            .with_mode(0o640)
            .with_owner(3, 4),
        RawEntry::pax(&[
            ("mtime", b"1500000000.123456789"),
            ("atime", b"1400000000.5"),
            ("SCHILY.xattr.user.comment", b"hello"),
            ("SCHILY.xattr.trusted.bin", b"\0\x01\xff"),
            ("SCHILY.xattr.bogus.namespace", b"skipped: ENOTSUP"),
        ]),
        fractional,
        RawEntry::pax(&[("SCHILY.xattr.trusted.on-link", b"v")]),
        RawEntry::symlink("xlink", "frac"),
        RawEntry::pax(&[("SCHILY.xattr.trusted.on-dev", b"w")]),
        RawEntry::device(b'6', "xfifo", 0, 0),
    ]);
    let u = s.unpack(&tar).unwrap();
    assert_eq!(u.entries, 12);
    assert_eq!(u.file_bytes, 11);

    let d = s.meta("d");
    assert!(d.is_dir());
    assert_eq!(
        (d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()),
        (0o750, 5, 6, 1_111_111_111)
    );
    let suid = s.meta("d/suid");
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid()),
        (0o4755, 1000, 1001)
    );
    assert_eq!(suid.mtime(), 1_222_222_222);
    assert_eq!(fs::read(s.path("d/suid")).unwrap(), b"#!/bin/sh\n");
    let sgid = s.meta("d/sgid");
    assert_eq!((sgid.mode() & 0o7777, sgid.gid()), (0o2711, 50));
    assert_eq!(s.meta("tmp").mode() & 0o7777, 0o1777);

    let link = s.meta("d/link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(s.path("d/link")).unwrap(),
        Path::new("../nowhere/at/all")
    );
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (7, 8, 1_333_333_333)
    );

    let hard = s.meta("d/hard");
    assert_eq!(hard.ino(), suid.ino());
    assert_eq!(hard.nlink(), 2);

    let null = s.meta("null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777, null.gid()),
        (rustix::fs::makedev(1, 3), 0o666, 5)
    );
    let loop0 = s.meta("loop0");
    assert!(loop0.file_type().is_block_device());
    assert_eq!(
        (loop0.rdev(), loop0.mode() & 0o7777),
        (rustix::fs::makedev(7, 0), 0o660)
    );
    let fifo = s.meta("fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(
        (fifo.mode() & 0o7777, fifo.uid(), fifo.gid()),
        (0o640, 3, 4)
    );

    let frac = s.meta("frac");
    assert_eq!(
        (frac.mtime(), frac.mtime_nsec()),
        (1_500_000_000, 123_456_789)
    );
    assert_eq!(
        (frac.atime(), frac.atime_nsec()),
        (1_400_000_000, 500_000_000)
    );
    assert_eq!(xattr(&s.path("frac"), "user.comment").unwrap(), b"hello");
    assert_eq!(
        xattr(&s.path("frac"), "trusted.bin").unwrap(),
        b"\0\x01\xff"
    );
    assert_eq!(xattr(&s.path("xlink"), "trusted.on-link").unwrap(), b"v");
    assert!(
        xattr(&s.path("frac"), "trusted.on-link").is_none(),
        "the symlink's xattr went to its target"
    );
    assert_eq!(xattr(&s.path("xfifo"), "trusted.on-dev").unwrap(), b"w");
}

#[test]
fn overlay_xattrs_from_the_image_are_not_applied() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        RawEntry::pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("SCHILY.xattr.user.overlay.origin", b"x"),
            ("SCHILY.xattr.trusted.kept", b"k"),
        ]),
        RawEntry::dir("d/"),
    ])
    .unwrap();
    let d = s.path("d");
    assert!(xattr(&d, "trusted.overlay.opaque").is_none());
    assert!(xattr(&d, "trusted.overlay.redirect").is_none());
    assert!(xattr(&d, "user.overlay.origin").is_none());
    assert_eq!(xattr(&d, "trusted.kept").unwrap(), b"k");
}

#[test]
fn root_directory_entry_sets_the_root_attributes() {
    let s = Scene::new();
    s.entries(&[
        RawEntry::dir("./")
            .with_mode(0o711)
            .with_mtime(1_000_000_000),
        RawEntry::file("./f", b"x"),
    ])
    .unwrap();
    let root = fs::symlink_metadata(&s.dest).unwrap();
    assert!(root.is_dir());
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o711, 1_000_000_000));
    assert_eq!(fs::read(s.path("f")).unwrap(), b"x");
}

#[test]
fn read_only_directories_get_their_content_and_times() {
    let s = Scene::new();
    s.entries(&[
        RawEntry::dir("ro/")
            .with_mode(0o555)
            .with_mtime(1_000_000_001),
        RawEntry::file("ro/f", b"inside").with_mode(0o444),
        RawEntry::dir("ro/sub/")
            .with_mode(0o500)
            .with_mtime(1_000_000_002),
        RawEntry::file("ro/sub/g", b"deeper"),
        RawEntry::dir("none/").with_mode(0o000),
        RawEntry::file("none/h", b"hidden"),
    ])
    .unwrap();
    assert_eq!(fs::read(s.path("ro/sub/g")).unwrap(), b"deeper");
    if is_root() {
        // Other users cannot look inside a mode 000 directory.
        assert_eq!(fs::read(s.path("none/h")).unwrap(), b"hidden");
    }
    let ro = s.meta("ro");
    assert_eq!((ro.mode() & 0o7777, ro.mtime()), (0o555, 1_000_000_001));
    let sub = s.meta("ro/sub");
    assert_eq!((sub.mode() & 0o7777, sub.mtime()), (0o500, 1_000_000_002));
    assert_eq!(s.meta("none").mode() & 0o7777, 0);
    assert_eq!(s.meta("ro/f").mode() & 0o7777, 0o444);
}

#[test]
fn entries_before_their_directories() {
    let s = Scene::new();
    s.entries(&[
        RawEntry::file("a/b/c", b"c"),
        RawEntry::dir("a/b/")
            .with_mode(0o700)
            .with_mtime(1_200_000_000),
        RawEntry::dir("a/")
            .with_mode(0o711)
            .with_mtime(1_100_000_000),
        RawEntry::file("x/y", b"y"),
    ])
    .unwrap();
    assert_eq!(fs::read(s.path("a/b/c")).unwrap(), b"c");
    let b = s.meta("a/b");
    assert_eq!((b.mode() & 0o7777, b.mtime()), (0o700, 1_200_000_000));
    let a = s.meta("a");
    assert_eq!((a.mode() & 0o7777, a.mtime()), (0o711, 1_100_000_000));
    // Implied parents are 0755, whatever the umask.
    assert_eq!(s.meta("x").mode() & 0o7777, 0o755);
}

#[test]
fn later_duplicates_win() {
    let s = Scene::new();
    s.entries(&[
        RawEntry::file("f", b"first"),
        RawEntry::file("f", b"second"),
        RawEntry::dir("d/"),
        RawEntry::file("d/inner", b"gone soon"),
        RawEntry::dir("d/sub/").with_mode(0o700),
        RawEntry::file("d", b"now a file"),
        RawEntry::file("e", b"was a file"),
        RawEntry::dir("e/").with_mode(0o705),
        RawEntry::file("e/x", b"x"),
        RawEntry::symlink("s", "f"),
        RawEntry::file("s", b"not a link"),
        RawEntry::dir("twice/").with_mode(0o700),
        RawEntry::dir("twice/").with_mode(0o751),
        RawEntry::file("orig", b"shared"),
        RawEntry::hardlink("alias", "orig"),
        RawEntry::file("alias", b"replaced"),
    ])
    .unwrap();
    assert_eq!(fs::read(s.path("f")).unwrap(), b"second");
    assert!(s.meta("d").is_file());
    assert_eq!(fs::read(s.path("d")).unwrap(), b"now a file");
    assert_eq!(s.meta("e").mode() & 0o7777, 0o705);
    assert_eq!(fs::read(s.path("e/x")).unwrap(), b"x");
    assert!(s.meta("s").is_file());
    assert_eq!(s.meta("twice").mode() & 0o7777, 0o751);
    assert_eq!(fs::read(s.path("orig")).unwrap(), b"shared");
    assert_eq!(fs::read(s.path("alias")).unwrap(), b"replaced");
    assert_ne!(s.meta("orig").ino(), s.meta("alias").ino());
}

#[test]
fn long_and_non_ascii_names() {
    let s = Scene::new();
    let pax_name = format!("{}/pax-file", "p".repeat(120));
    let gnu_name = format!("{}/gnu-file", "g".repeat(150));
    let long_target = "t".repeat(180);
    let mut tar = Vec::new();
    tar.extend(testtar::header_block(&RawEntry::pax(&[(
        "path",
        pax_name.as_bytes(),
    )])));
    tar.extend(testtar::header_block(&RawEntry::file("short-pax", b"pax")));
    tar.extend(testtar::header_block(&RawEntry::gnu_long(
        b'L',
        gnu_name.as_bytes(),
    )));
    tar.extend(testtar::header_block(&RawEntry::file("short-gnu", b"gnu")));
    tar.extend(testtar::header_block(&RawEntry::pax(&[(
        "linkpath",
        long_target.as_bytes(),
    )])));
    tar.extend(testtar::header_block(&RawEntry::symlink("pax-link", "x")));
    tar.extend(testtar::header_block(&RawEntry::gnu_long(
        b'K',
        long_target.as_bytes(),
    )));
    tar.extend(testtar::header_block(&RawEntry::symlink("gnu-link", "x")));
    tar.extend(testtar::header_block(&RawEntry::file(
        "naïve/日本語.txt",
        b"utf8",
    )));
    tar.extend(testtar::header_block(&RawEntry::file_bytes(
        b"bytes/\xff\xfe",
        b"latin",
    )));
    tar.extend([0u8; 1024]);
    s.unpack(&tar).unwrap();
    assert_eq!(fs::read(s.path(&pax_name)).unwrap(), b"pax");
    assert_eq!(fs::read(s.path(&gnu_name)).unwrap(), b"gnu");
    assert!(!s.exists("short-pax") && !s.exists("short-gnu"));
    assert_eq!(
        fs::read_link(s.path("pax-link")).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(
        fs::read_link(s.path("gnu-link")).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(fs::read(s.path("naïve/日本語.txt")).unwrap(), b"utf8");
    let raw = s.dest.join("bytes").join(OsStr::from_bytes(b"\xff\xfe"));
    assert_eq!(fs::read(raw).unwrap(), b"latin");
}

#[test]
fn reads_archives_written_by_the_tar_crate() {
    let s = Scene::new();
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/file.txt", "deep/".repeat(40));
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o640);
    h.set_mtime(1_600_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b"12345"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    b.append_link(&mut h, "link", "target/".repeat(30)).unwrap();
    let tar = b.into_inner().unwrap();
    s.unpack(&tar).unwrap();
    assert_eq!(fs::read(s.path(&long)).unwrap(), b"12345");
    assert_eq!(s.meta(&long).mode() & 0o777, 0o640);
    assert_eq!(
        fs::read_link(s.path("link")).unwrap(),
        Path::new(&"target/".repeat(30))
    );
}

// -------------------------------------------------------------- whiteouts

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        RawEntry::file(".wh.gone", b""),
        RawEntry::file("etc/.wh.passwd", b""),
        RawEntry::dir("before/"),
        RawEntry::file("before/.wh..wh..opq", b""),
        RawEntry::file("before/kept", b"k"),
        RawEntry::dir("after/"),
        RawEntry::file("after/kept", b"k"),
        RawEntry::file("after/.wh..wh..opq", b""),
        RawEntry::file("implied/.wh..wh..opq", b""),
        RawEntry::dir("implied/").with_mode(0o700),
        RawEntry::file(".wh..wh.aufs", b""),
        RawEntry::dir(".wh..wh.plnk/"),
    ])
    .unwrap();
    assert!(is_whiteout_device(&s.meta("gone")));
    assert!(is_whiteout_device(&s.meta("etc/passwd")));
    assert_eq!(s.meta("etc").mode() & 0o7777, 0o755);
    for dir in ["before", "after", "implied"] {
        assert_eq!(
            xattr(&s.path(dir), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{dir}"
        );
    }
    assert_eq!(s.meta("implied").mode() & 0o7777, 0o700);
    assert_eq!(fs::read(s.path("after/kept")).unwrap(), b"k");
    for marker in [
        ".wh.gone",
        "etc/.wh.passwd",
        "before/.wh..wh..opq",
        ".wh..wh.aufs",
        ".wh..wh.plnk",
    ] {
        assert!(!s.exists(marker), "{marker} was written");
    }
    assert!(xattr(&s.path("etc"), "trusted.overlay.opaque").is_none());
}

#[test]
fn opaque_marker_at_the_root() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        RawEntry::file(".wh..wh..opq", b""),
        RawEntry::file("f", b""),
    ])
    .unwrap();
    assert_eq!(
        xattr(&s.dest, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn bare_whiteouts_are_errors() {
    for name in [".wh.", "d/.wh..", ".wh..."] {
        let s = Scene::new();
        let err = s.entries(&[RawEntry::file(name, b"")]).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidEntry { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn a_directory_recreated_over_a_whiteout_is_opaque() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        RawEntry::file(".wh.foo", b""),
        RawEntry::dir("foo/").with_mode(0o750),
        RawEntry::file("foo/new", b"n"),
        RawEntry::file(".wh.bar", b""),
        RawEntry::file("bar", b"a file again"),
        RawEntry::file(".wh.baz", b""),
        RawEntry::file("baz/implied-parent", b"i"),
        RawEntry::file(".wh.qux", b""),
        RawEntry::file("qux", b"file first"),
        RawEntry::dir("qux/"),
    ])
    .unwrap();
    let foo = s.meta("foo");
    assert!(foo.is_dir());
    assert_eq!(foo.mode() & 0o7777, 0o750);
    assert_eq!(
        xattr(&s.path("foo"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(s.path("foo/new")).unwrap(), b"n");
    assert!(s.meta("bar").is_file());
    assert_eq!(fs::read(s.path("bar")).unwrap(), b"a file again");
    assert_eq!(
        xattr(&s.path("baz"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(s.meta("qux").is_dir());
    assert_eq!(
        xattr(&s.path("qux"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn a_whiteout_after_same_layer_content_hides_only_lower_layers() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        RawEntry::file("keep", b"this layer's file"),
        RawEntry::file(".wh.keep", b""),
        RawEntry::dir("d/"),
        RawEntry::file("d/f", b"this layer's content"),
        RawEntry::file(".wh.d", b""),
    ])
    .unwrap();
    assert_eq!(fs::read(s.path("keep")).unwrap(), b"this layer's file");
    assert_eq!(fs::read(s.path("d/f")).unwrap(), b"this layer's content");
    assert_eq!(
        xattr(&s.path("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn markers_below_a_whited_out_directory_leave_it_hidden() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    s.entries(&[
        // `rm -rf foo` as some tools write it: the directory, then paths
        // below it again.
        RawEntry::file(".wh.foo", b""),
        RawEntry::file("foo/.wh.bar", b""),
        RawEntry::file("foo/sub/.wh.x", b""),
        RawEntry::file("foo/sub/.wh..wh..opq", b""),
        // The same, the directory's whiteout last.
        RawEntry::file("rev/.wh.bar", b""),
        RawEntry::file("rev/sub/.wh..wh..opq", b""),
        RawEntry::file("rev/sub/deeper/.wh.y", b""),
        RawEntry::file(".wh.rev", b""),
        // Filled again after its whiteout: opaque, with only the new file.
        RawEntry::file(".wh.again", b""),
        RawEntry::file("again/.wh.old", b""),
        RawEntry::file("again/new", b"n"),
        // Content of this layer below stays (OCI: whiteouts hide lower
        // layers only), and so does a directory the layer lists.
        RawEntry::file("kept/.wh.bar", b""),
        RawEntry::file("kept/sub/file", b"f"),
        RawEntry::file(".wh.kept", b""),
        RawEntry::dir("listed/sub/"),
        RawEntry::file("listed/sub/.wh.x", b""),
        RawEntry::file(".wh.listed", b""),
    ])
    .unwrap();
    for hidden in ["foo", "rev"] {
        assert!(is_whiteout_device(&s.meta(hidden)), "{hidden}");
    }
    let opaque =
        |dir: &str| xattr(&s.path(dir), "trusted.overlay.opaque").as_deref() == Some(&b"y"[..]);
    assert!(s.meta("again").is_dir() && opaque("again"));
    let again: Vec<_> = fs::read_dir(s.path("again")).unwrap().collect();
    assert_eq!(again.len(), 1, "again/ holds only its new file");
    assert_eq!(fs::read(s.path("again/new")).unwrap(), b"n");
    assert!(s.meta("kept").is_dir() && opaque("kept"));
    assert_eq!(fs::read(s.path("kept/sub/file")).unwrap(), b"f");
    assert!(is_whiteout_device(&s.meta("kept/bar")));
    assert!(s.meta("listed/sub").is_dir() && opaque("listed"));
    assert!(is_whiteout_device(&s.meta("listed/sub/x")));
}

#[test]
fn a_base_layer_applies_whiteouts_and_opaque_markers_as_nothing() {
    let s = Scene::new();
    s.base_entries(&[
        RawEntry::file(".wh.gone", b""),
        RawEntry::file("absent/parent/.wh.x", b""),
        RawEntry::file("absent2/.wh..wh..opq", b""),
        RawEntry::file(".wh..wh..opq", b""),
        RawEntry::dir("d/"),
        RawEntry::file("d/.wh..wh..opq", b""),
        RawEntry::file("d/kept", b"k"),
        RawEntry::file("keep", b"this layer's file"),
        RawEntry::file(".wh.keep", b""),
        RawEntry::dir("e/"),
        RawEntry::file("e/f", b"this layer's content"),
        RawEntry::file(".wh.e", b""),
        RawEntry::file(".wh.again", b""),
        RawEntry::dir("again/"),
        RawEntry::file("implied/.wh.y", b""),
        RawEntry::file("implied/z", b"z"),
    ])
    .unwrap();
    let mut names: Vec<String> = fs::read_dir(&s.dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["again", "d", "e", "implied", "keep"]);
    assert_eq!(fs::read(s.path("d/kept")).unwrap(), b"k");
    assert_eq!(fs::read(s.path("keep")).unwrap(), b"this layer's file");
    assert_eq!(fs::read(s.path("e/f")).unwrap(), b"this layer's content");
    assert_eq!(fs::read(s.path("implied/z")).unwrap(), b"z");
    assert!(!s.exists("implied/y"));
    for dir in ["", "d", "e", "again", "implied"] {
        assert!(
            xattr(&s.path(dir), "trusted.overlay.opaque").is_none(),
            "{dir:?} was made opaque"
        );
    }
}

#[test]
fn a_base_layer_still_refuses_bad_whiteout_names() {
    for name in [".wh.", "d/.wh.."] {
        let s = Scene::new();
        let err = s.base_entries(&[RawEntry::file(name, b"")]).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidEntry { .. }),
            "{name}: {err}"
        );
    }
    let s = Scene::new();
    let err = s
        .base_entries(&[RawEntry::file("../../canary/.wh.secret", b"")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
}

#[test]
fn a_base_layer_refuses_whiteouts_through_symlinks_or_files() {
    for marker in ["s/.wh.secret", "s/.wh..wh..opq", "s/sub/.wh.deep"] {
        let s = Scene::new();
        let canary = s.canary.to_str().unwrap().to_string();
        let err = s
            .base_entries(&[RawEntry::symlink("s", &canary), RawEntry::file(marker, b"")])
            .unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe { .. }), "{marker}: {err}");
        assert!(s.canary.join("secret").exists());
    }
    let s = Scene::new();
    let err = s
        .base_entries(&[RawEntry::file("f", b"x"), RawEntry::file("f/.wh.y", b"")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
}

#[test]
fn files_larger_than_the_write_back_step_are_intact() {
    let len = usize::try_from(super::writeback::STEP).unwrap() * 2 + 12_345;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let s = Scene::new();
    let u = s
        .entries(&[RawEntry::file("big", &data), RawEntry::file("small", b"s")])
        .unwrap();
    assert_eq!(u.file_bytes, len as u64 + 1);
    assert!(fs::read(s.path("big")).unwrap() == data);
    assert_eq!(fs::read(s.path("small")).unwrap(), b"s");
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn overlay_mount_shows_the_intended_tree() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    let merged = tmp.path().join("merged");
    for d in [&lower, &upper, &merged] {
        fs::create_dir(d).unwrap();
    }
    let base = testtar::archive(&[
        RawEntry::file("gone", b"old"),
        RawEntry::dir("a/"),
        RawEntry::file("a/old", b"old"),
        RawEntry::file("a/keep", b"keep"),
        RawEntry::dir("replaced/"),
        RawEntry::file("replaced/stale", b"stale"),
        RawEntry::dir("opaque/"),
        RawEntry::file("opaque/stale", b"stale"),
    ]);
    let top = testtar::archive(&[
        RawEntry::file(".wh.gone", b""),
        RawEntry::file("a/.wh.old", b""),
        RawEntry::file(".wh.replaced", b""),
        RawEntry::dir("replaced/"),
        RawEntry::file("replaced/fresh", b"fresh"),
        RawEntry::dir("opaque/"),
        RawEntry::file("opaque/fresh", b"fresh"),
        RawEntry::file("opaque/.wh..wh..opq", b""),
    ]);
    unpack_layer(
        &mut &base[..],
        Compression::None,
        &lower,
        &Limits::default(),
    )
    .unwrap();
    unpack_layer(&mut &top[..], Compression::None, &upper, &Limits::default()).unwrap();
    let options =
        std::ffi::CString::new(format!("lowerdir={}:{}", upper.display(), lower.display()))
            .unwrap();
    let flags = rustix::mount::MountFlags::RDONLY;
    if let Err(e) = rustix::mount::mount("overlay", &merged, "overlay", flags, options.as_c_str()) {
        if e == rustix::io::Errno::PERM {
            eprintln!("skipped: mounting overlay is not permitted here");
            return;
        }
        panic!("mounting overlay: {e}");
    }
    let _guard = Mounted(merged.clone());
    let names = |rel: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(merged.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["a", "opaque", "replaced"]);
    assert_eq!(names("a"), ["keep"]);
    assert_eq!(names("replaced"), ["fresh"]);
    assert_eq!(names("opaque"), ["fresh"]);
}

// ----------------------------------------------- streams, digests, limits

#[test]
fn plain_gzip_and_zstd_layers_with_their_digests() {
    let tar = testtar::archive(&[RawEntry::file("hello", b"hello world"), RawEntry::dir("d/")]);
    let mut multi = gzip(&tar[..700]);
    multi.extend(gzip(&tar[700..]));
    let mut zstd_frames = zstd::encode_all(&tar[..600], 3).unwrap();
    zstd_frames.extend(zstd::encode_all(&tar[600..], 3).unwrap());
    for (blob, c) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (multi, Compression::Gzip),
        (zstd::encode_all(&tar[..], 19).unwrap(), Compression::Zstd),
        (zstd_frames, Compression::Zstd),
    ] {
        let s = Scene::new();
        let u = s.unpack_blob(&blob, c, &Limits::default()).unwrap();
        assert_eq!(u.compressed_digest, sha(&blob), "{c:?}");
        assert_eq!(u.compressed_size, blob.len() as u64);
        assert_eq!(u.diff_id, sha(&tar), "{c:?}");
        assert_eq!(u.size, tar.len() as u64);
        assert_eq!((u.entries, u.file_bytes), (2, 11));
        assert_eq!(fs::read(s.path("hello")).unwrap(), b"hello world");
    }
}

#[test]
fn data_after_the_end_marker_is_part_of_the_diff_id() {
    let mut short = testtar::archive(&[RawEntry::file("f", b"x")]);
    short.extend_from_slice(&[0u8; 10_000]);
    short.extend_from_slice(b"trailing garbage that is not a header");
    // More trailing data than the threads have in flight: the extraction
    // side receives and hashes it after the end of the archive.
    let mut long = testtar::archive(&[RawEntry::file("f", b"x")]);
    long.extend((0..12u32 << 20).map(|i| (i % 251) as u8));
    for tar in [short, long] {
        for (blob, c) in [
            (tar.clone(), Compression::None),
            (gzip(&tar), Compression::Gzip),
        ] {
            let s = Scene::new();
            let u = s.unpack_blob(&blob, c, &Limits::default()).unwrap();
            assert_eq!(u.diff_id, sha(&tar));
            assert_eq!(u.size, tar.len() as u64);
            assert_eq!(u.compressed_digest, sha(&blob));
            assert_eq!(u.compressed_size, blob.len() as u64);
            assert_eq!(fs::read(s.path("f")).unwrap(), b"x");
        }
    }
}

#[test]
fn an_early_error_in_a_large_layer_stops_both_threads() {
    let big = vec![7u8; 12 << 20];
    let tar = testtar::archive(&[
        RawEntry::file("../escape", b""),
        RawEntry::file("big", &big),
    ]);
    let s = Scene::new();
    let err = s.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    let tar = testtar::archive(&[
        RawEntry::file("big", &big),
        RawEntry::file("../escape", b""),
    ]);
    let err = s
        .unpack_blob(&gzip(&tar), Compression::Gzip, &Limits::default())
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
}

#[test]
fn compression_must_match_the_media_type() {
    let tar = testtar::archive(&[RawEntry::file("f", b"x")]);
    let cases = [
        (
            tar.clone(),
            Compression::Gzip,
            "layer declared gzip but is not gzip data",
        ),
        (
            tar.clone(),
            Compression::Zstd,
            "layer declared zstd but is not zstd data",
        ),
        (
            gzip(&tar),
            Compression::None,
            "layer declared uncompressed but is gzip data",
        ),
        (
            gzip(&tar),
            Compression::Zstd,
            "layer declared zstd but is not zstd data",
        ),
        (
            zstd::encode_all(&tar[..], 1).unwrap(),
            Compression::Gzip,
            "layer declared gzip but is not gzip data",
        ),
        (
            Vec::new(),
            Compression::Gzip,
            "layer declared gzip but is not gzip data",
        ),
    ];
    for (blob, c, message) in cases {
        let s = Scene::new();
        let err = s.unpack_blob(&blob, c, &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::CompressionMismatch { .. }));
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn truncated_and_corrupt_streams_fail() {
    let tar = testtar::archive(&[RawEntry::file("f", &[9u8; 5000])]);
    let gz = gzip(&tar);
    let zs = zstd::encode_all(&tar[..], 3).unwrap();
    let mut flipped = gz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let cases = [
        (gz[..gz.len() - 10].to_vec(), Compression::Gzip),
        (gz[..gz.len() / 2].to_vec(), Compression::Gzip),
        (flipped, Compression::Gzip),
        (zs[..zs.len() - 3].to_vec(), Compression::Zstd),
        (tar[..1200].to_vec(), Compression::None),
    ];
    for (blob, c) in cases {
        let s = Scene::new();
        let err = s.unpack_blob(&blob, c, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Read { .. } | UnpackError::InvalidTar { .. }
            ),
            "{c:?}: {err}"
        );
    }
    let s = Scene::new();
    let err = s.unpack(&[0x42u8; 4096]).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidTar { .. }), "{err}");
    let mut junk_gzip = vec![0x1f, 0x8b];
    junk_gzip.extend_from_slice(&[0x42u8; 100]);
    let err = s
        .unpack_blob(&junk_gzip, Compression::Gzip, &Limits::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Read {
                compression: Compression::Gzip,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn oversized_pax_header_is_refused() {
    let s = Scene::new();
    let huge = vec![b'a'; 2 << 20];
    let err = s
        .entries(&[
            RawEntry::pax(&[("comment", &huge)]),
            RawEntry::file("f", b""),
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::HeaderTooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
    assert!(!s.exists("f"));
    let limits = Limits {
        max_header_bytes: 100,
        ..Limits::default()
    };
    let tar = testtar::archive(&[
        RawEntry::gnu_long(b'L', "n".repeat(150).as_bytes()),
        RawEntry::file("f", b""),
    ]);
    let err = s.unpack_blob(&tar, Compression::None, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::HeaderTooLarge { limit: 100, .. }),
        "{err}"
    );
}

#[test]
fn decompression_bombs_hit_the_size_limit() {
    let tar = testtar::archive(&[RawEntry::file("zeros", &vec![0u8; 8 << 20])]);
    let bomb = gzip(&tar);
    assert!(bomb.len() < 100_000);
    let limits = Limits {
        max_layer_size: 1 << 20,
        ..Limits::default()
    };
    let s = Scene::new();
    let err = s
        .unpack_blob(&bomb, Compression::Gzip, &limits)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 1_048_576 }),
        "{err}"
    );
    // Padding after the end marker counts too.
    let mut padded = testtar::archive(&[RawEntry::file("f", b"x")]);
    padded.resize(4 << 20, 0);
    let err = s
        .unpack_blob(&gzip(&padded), Compression::Gzip, &limits)
        .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // Exactly at the limit is fine.
    let exact = Limits {
        max_layer_size: padded.len() as u64,
        ..Limits::default()
    };
    let s = Scene::new();
    s.unpack_blob(&padded, Compression::None, &exact).unwrap();
}

#[test]
fn entry_count_is_bounded() {
    let s = Scene::new();
    let entries: Vec<RawEntry> = (0..5)
        .map(|i| RawEntry::file(&format!("f{i}"), b""))
        .collect();
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let err = s
        .unpack_blob(&testtar::archive(&entries), Compression::None, &limits)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 3 }),
        "{err}"
    );
}

#[test]
fn pax_size_differential_cannot_smuggle_entries() {
    // ustar says 1024 bytes, so a reader trusting it would treat the
    // "hidden" header inside as data; PAX says 0, so it is a real entry.
    let s = Scene::new();
    let mut carrier = RawEntry::file("carrier", b"");
    carrier.header_size = Some(1024);
    let mut tar = testtar::header_block(&RawEntry::pax(&[("size", b"0")]));
    tar.extend(testtar::header_block(&carrier));
    tar.extend(testtar::archive(&[RawEntry::file("visible", b"v")]));
    s.unpack(&tar).unwrap();
    assert_eq!(fs::read(s.path("carrier")).unwrap(), b"");
    assert_eq!(fs::read(s.path("visible")).unwrap(), b"v");
}

#[test]
fn pax_size_beyond_i64_is_refused_not_wrapped() {
    // On an entry that is never written (an AUFS marker), a size near
    // u64::MAX would wrap the skip and read file data as headers.
    for size in [&b"18446744073709551615"[..], b"9223372036854775808"] {
        let s = Scene::new();
        let mut tar = testtar::header_block(&RawEntry::pax(&[("size", size)]));
        tar.extend(testtar::archive(&[
            RawEntry::file(".wh..wh.plnk/x", b""),
            RawEntry::file("after", b"smuggled"),
        ]));
        let err = s.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::InvalidTar { .. }), "{err}");
        assert!(!s.path("after").exists());
    }
}

// -------------------------------------------------------------- malicious

#[test]
fn dot_dot_cannot_escape() {
    for name in ["../x", "a/../../x", "./../canary/secret", "/../canary/evil"] {
        let s = Scene::new();
        let err = s.entries(&[RawEntry::file(name, b"evil")]).unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn absolute_names_land_inside() {
    let s = Scene::new();
    let outside = s.canary.join("abs");
    s.entries(&[
        RawEntry::file("/etc/x", b"inside"),
        RawEntry::file(&outside.to_string_lossy(), b"inside too"),
    ])
    .unwrap();
    assert_eq!(fs::read(s.path("etc/x")).unwrap(), b"inside");
    let rel = outside.strip_prefix("/").unwrap();
    assert_eq!(fs::read(s.dest.join(rel)).unwrap(), b"inside too");
}

#[test]
fn symlinked_parents_are_never_followed() {
    let cases: Vec<Vec<RawEntry>> = vec![
        vec![RawEntry::symlink("a", "/"), RawEntry::file("a/x", b"evil")],
        vec![RawEntry::symlink("a", ".."), RawEntry::file("a/x", b"evil")],
        vec![RawEntry::symlink("a", ".."), RawEntry::dir("a/canary/")],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::file("a/secret", b"evil"),
        ],
        vec![
            RawEntry::symlink("a", "."),
            RawEntry::file("a/x", b"harmless but refused"),
        ],
        vec![
            RawEntry::dir("d/"),
            RawEntry::symlink("d/up", "../.."),
            RawEntry::file("d/up/canary/x", b"evil"),
        ],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::file("a/.wh..wh..opq", b""),
        ],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::file("a/.wh.secret", b""),
        ],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::symlink("a/l", "/etc/shadow"),
        ],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::device(b'6', "a/fifo", 0, 0),
        ],
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::hardlink("a/h", "f"),
        ],
        vec![
            RawEntry::symlink("a", "../canary/sub"),
            RawEntry::dir("a/deep/"),
        ],
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let s = Scene::new();
        let err = s.entries(&case).unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe { .. }), "case {i}: {err}");
        assert!(err.to_string().contains("symlink"), "case {i}: {err}");
    }
    // The same through an absolute target naming the canary.
    let s = Scene::new();
    let outside = s.canary.to_string_lossy().into_owned();
    let err = s
        .entries(&[
            RawEntry::symlink("a", &outside),
            RawEntry::file("a/secret", b"evil"),
        ])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
}

#[test]
fn hardlinks_cannot_point_outside() {
    let s = Scene::new();
    let secret = s.canary.join("secret").to_string_lossy().into_owned();
    let err = s
        .entries(&[RawEntry::hardlink("h", "../../outside")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    let err = s
        .entries(&[RawEntry::hardlink("h", "../canary/secret")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    // An absolute target means the layer's own path, which does not exist.
    let err = s.entries(&[RawEntry::hardlink("h", &secret)]).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
    assert!(
        err.to_string().contains("does not exist in this layer"),
        "{err}"
    );
    let err = s
        .entries(&[RawEntry::hardlink("h", "/etc/passwd")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
    let s = Scene::new();
    let err = s
        .entries(&[
            RawEntry::symlink("s", &s.canary.to_string_lossy()),
            RawEntry::hardlink("h", "s/secret"),
        ])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    let err = s
        .entries(&[
            RawEntry::symlink("up", ".."),
            RawEntry::hardlink("h2", "up/canary/secret"),
        ])
        .unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    // A hardlink to a symlink links the symlink itself, never its target.
    let s = Scene::new();
    s.entries(&[
        RawEntry::symlink("s", &secret),
        RawEntry::hardlink("h", "s"),
        RawEntry::file("h", b"replaced"),
    ])
    .unwrap();
    assert!(s.meta("s").file_type().is_symlink());
    assert_eq!(fs::read(s.path("h")).unwrap(), b"replaced");
    let err = s
        .entries(&[RawEntry::dir("dir/"), RawEntry::hardlink("h", "dir")])
        .unwrap_err();
    assert!(matches!(err, UnpackError::InvalidEntry { .. }), "{err}");
    let err = s.entries(&[RawEntry::hardlink("h", "./")]).unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
}

#[test]
fn the_root_cannot_be_replaced() {
    for name in [".", "", "/", "./", "a/..", "//"] {
        let s = Scene::new();
        let err = s.entries(&[
            RawEntry::symlink(name, &s.canary.to_string_lossy()),
            RawEntry::file("x", b"x"),
        ]);
        let err = err.unwrap_err();
        assert!(matches!(err, UnpackError::Unsafe { .. }), "{name:?}: {err}");
        assert!(!s.exists("x"));
    }
    let s = Scene::new();
    let err = s.entries(&[RawEntry::file("/", b"not a dir")]).unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
    let err = s.entries(&[RawEntry::hardlink(".", "x")]).unwrap_err();
    assert!(matches!(err, UnpackError::Unsafe { .. }), "{err}");
}

#[test]
fn directories_and_files_replace_symlinks_without_following_them() {
    let s = Scene::new();
    let canary = s.canary.to_string_lossy().into_owned();
    s.entries(&[
        RawEntry::symlink("d", &canary),
        RawEntry::dir("d/").with_mode(0o777).with_mtime(1),
        RawEntry::file("d/x", b"inside"),
        RawEntry::symlink("f", &format!("{canary}/secret")),
        RawEntry::file("f", b"replaced the link").with_mode(0o777),
        RawEntry::symlink("g", "../canary/sub"),
        RawEntry::dir("g/"),
        RawEntry::symlink("dev", &format!("{canary}/secret")),
        RawEntry::device(b'6', "dev", 0, 0).with_mode(0o777),
    ])
    .unwrap();
    assert!(s.meta("d").is_dir());
    assert_eq!(s.meta("d").mode() & 0o7777, 0o777);
    assert_eq!(fs::read(s.path("d/x")).unwrap(), b"inside");
    assert!(s.meta("f").is_file());
    assert!(s.meta("g").is_dir());
    assert!(s.meta("dev").file_type().is_fifo());
}

#[test]
fn entry_errors_name_the_entry() {
    let s = Scene::new();
    let err = s
        .entries(&[
            RawEntry::file("ok", b""),
            RawEntry::file("some/../../escape", b""),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tar entry \"some/../../escape\": refused: path climbs above the layer root"
    );
    let err = s
        .entries(&[
            RawEntry::file("plain", b""),
            RawEntry::file("plain/child", b""),
        ])
        .unwrap_err();
    assert!(
        err.to_string().starts_with("tar entry \"plain/child\": "),
        "{err}"
    );
    assert!(err.to_string().contains("not a directory"), "{err}");
}

/// A deterministic generator (xorshift), so that a failing seed replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A fresh run of small files (what the file pool exists for), then
/// entries that keep coming back to a few names: files over files and
/// directories, directories over files, hardlinks to files just written,
/// symlinks, whiteouts and opaque markers, big files, setuid files, and
/// children of all of these. What the pool writes must end up exactly as
/// if one thread had written everything in archive order.
fn churning_archive(seed: u64) -> Vec<RawEntry> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut entries = Vec::new();
    for i in 0..400u32 {
        let data = vec![b'a' + (i % 26) as u8; (i as usize * 37) % 900];
        entries.push(
            RawEntry::file(&format!("fresh/d{}/f{i}", i % 7), &data)
                .with_mtime(1_000 + u64::from(i)),
        );
    }
    // What each path is after the entries so far ("file", "dir", "link",
    // "whiteout"), so that the archive stays valid: an entry below a file
    // or through a symlink, or a hardlink to nothing, would end both
    // extractions early and compare little.
    let mut model: BTreeMap<String, &str> = BTreeMap::new();
    let replace = |model: &mut BTreeMap<String, &str>, path: &str, kind: &'static str| {
        let below = format!("{path}/");
        model.retain(|p, _| p != path && !p.starts_with(&below));
        model.insert(path.to_string(), kind);
    };
    for i in 0..400u64 {
        let dir = format!("d{}", rng.below(3));
        let name = format!("{dir}/n{}", rng.below(6));
        let nested = rng.below(5) == 0;
        let path = if nested {
            // Its parent must be a directory (or missing, or whited out).
            if matches!(model.get(&name).copied(), Some("file" | "link")) {
                entries.push(RawEntry::dir(&format!("{name}/")));
                replace(&mut model, &name, "dir");
            }
            format!("{name}/m{}", rng.below(3))
        } else {
            name
        };
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", &path));
        match rng.below(20) {
            0..=8 => {
                let len = if rng.below(30) == 0 {
                    300 << 10
                } else {
                    rng.below(200) as usize
                };
                let data = vec![b'0' + (i % 10) as u8; len];
                entries.push(RawEntry::file(&path, &data).with_mtime(2_000 + i));
                replace(&mut model, &path, "file");
            }
            9 => {
                entries.push(
                    RawEntry::file(&path, b"setuid")
                        .with_mode(0o4750)
                        .with_owner(1000, 1000),
                );
                replace(&mut model, &path, "file");
            }
            10 | 11 => {
                let mode = 0o700 + (i % 2) as u32 * 0o55;
                entries.push(RawEntry::dir(&format!("{path}/")).with_mode(mode));
                if model.get(&path) != Some(&"dir") {
                    replace(&mut model, &path, "dir");
                }
            }
            12 => {
                entries.push(RawEntry::symlink(&path, "../elsewhere"));
                replace(&mut model, &path, "link");
            }
            13 | 14 => {
                let targets: Vec<String> = model
                    .iter()
                    .filter(|(p, kind)| **kind == "file" && **p != path)
                    .map(|(p, _)| p.clone())
                    .collect();
                if targets.is_empty() {
                    continue;
                }
                let target = &targets[rng.below(targets.len() as u64) as usize];
                // Replacing an ancestor of its own target would remove it.
                if target.starts_with(&format!("{path}/")) {
                    continue;
                }
                entries.push(RawEntry::hardlink(&path, target));
                replace(&mut model, &path, "file");
            }
            15 | 16 => {
                entries.push(RawEntry::file(&format!("{parent}/.wh.{last}"), b""));
                model.entry(path.clone()).or_insert("whiteout");
            }
            17 => entries.push(RawEntry::file(&format!("{dir}/.wh..wh..opq"), b"")),
            _ => entries.push(
                RawEntry::dir(&format!("{dir}/"))
                    .with_mode(0o755)
                    .with_mtime(3_000 + i),
            ),
        }
    }
    entries
}

#[test]
fn the_file_pool_gives_what_one_thread_gives() {
    if !is_root() {
        // Whiteouts need mknod; owners need chown.
        return;
    }
    let mut compared = 0;
    for seed in 1..=8u64 {
        let tar = testtar::archive(&churning_archive(seed));
        let run = |workers: usize| {
            let scene = Scene::new();
            let result = scene.unpack_with(&tar, workers);
            let mut tree = BTreeMap::new();
            if result.is_ok() {
                for (path, seen) in layer_tree(&scene) {
                    // Compact, for readable differences.
                    let summary = format!(
                        "{} mode {:o} owner {}:{} mtime {:?} {} bytes {:?} opaque {} links {}",
                        seen.kind,
                        seen.mode,
                        seen.uid,
                        seen.gid,
                        seen.mtime,
                        seen.content.len(),
                        Digest::of(&seen.content),
                        seen.opaque,
                        seen.links
                    );
                    tree.insert(path.to_string_lossy().into_owned(), summary);
                }
            }
            (
                result
                    .map(|u| (u.entries, u.file_bytes))
                    .map_err(|e| e.to_string()),
                tree,
            )
        };
        let (one, one_tree) = run(0);
        for workers in [1, 3] {
            let (pooled, pooled_tree) = run(workers);
            assert_eq!(
                pooled.is_ok(),
                one.is_ok(),
                "seed {seed}, {workers} workers: {pooled:?} vs {one:?}"
            );
            let differ: Vec<String> = one_tree
                .keys()
                .chain(pooled_tree.keys())
                .filter(|k| one_tree.get(*k) != pooled_tree.get(*k))
                .map(|k| format!("{k}: {:?} vs {:?}", one_tree.get(k), pooled_tree.get(k)))
                .collect();
            assert!(
                differ.is_empty(),
                "seed {seed}, {workers} workers: {differ:#?}"
            );
            if let (Ok(a), Ok(b)) = (&pooled, &one) {
                assert_eq!(a, b, "seed {seed}");
            }
        }
        if one.is_ok() {
            assert!(
                one_tree.len() > 400,
                "seed {seed}: {} paths",
                one_tree.len()
            );
            compared += 1;
        }
    }
    // Most archives must extract, or the comparison says little.
    eprintln!("{compared} of 8 archives extracted and compared");
    assert!(compared >= 6, "only {compared} of 8 archives extracted");
}

/// Files in one directory nested as deep as a path allows: deciding
/// whether a file may go to the pool looks at every parent of its path,
/// which must cost time linear in the path's length, not quadratic (a
/// layer of such files would otherwise take minutes of CPU to extract).
#[test]
fn the_file_pool_checks_deep_paths_in_linear_time() {
    let deep: String = (0..1_900).map(|i| format!("{}/", i % 10)).collect();
    let files = 4_000;
    let mut entries = Vec::new();
    for i in 0..files {
        let path = format!("{deep}f{i}");
        entries.push(RawEntry::pax(&[("path", path.as_bytes())]));
        entries.push(RawEntry::file(&format!("f{i}"), b"x"));
    }
    let tar = testtar::archive(&entries);
    let timed = |workers: usize| {
        // In memory when possible: the time of writing back to a shared
        // disk would drown what is measured.
        let tmp = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let start = std::time::Instant::now();
        let unpacked = unpack_with_workers(
            &mut &tar[..],
            Compression::None,
            tmp.path(),
            &Limits::default(),
            LayerPosition::Upper,
            workers,
            None,
            Sharing::Off,
        )
        .unwrap()
        .0;
        assert_eq!(unpacked.entries, files);
        start.elapsed()
    };
    let one = timed(0);
    let pooled = timed(2);
    eprintln!("one thread {one:?}, pool {pooled:?}");
    assert!(
        pooled < one * 4 + std::time::Duration::from_secs(2),
        "one thread {one:?}, pool {pooled:?}"
    );
}

/// The pool's bookkeeping finds a parent by the hash of its path: the
/// hashes computed in one pass must be those of each parent on its own.
#[test]
fn prefix_hashes_are_the_hashes_of_each_parent() {
    use super::apply::{path_hash, prefix_hashes};
    for path in [
        &b""[..],
        b"a",
        b"a/b",
        b"usr/share/doc/x/copyright",
        b"a//b",
    ] {
        let mut expected: Vec<u64> = path
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| path_hash(&path[..i]))
            .collect();
        expected.push(path_hash(path));
        let got: Vec<u64> = prefix_hashes(path).collect();
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(path));
    }
    assert_ne!(path_hash(b"a/b"), path_hash(b"a"));
}

/// Queues `jobs` files on a pool of two workers held idle, each made by
/// `job(i)` and in a directory of its own when `own_directory` is set,
/// until the queues are full or everything is queued. Returns what was
/// queued (batches, jobs, bytes of names and xattrs), then lets the
/// workers go and checks every file was written.
fn queued_by_held_pool(
    jobs: usize,
    own_directory: bool,
    job: impl Fn(&Arc<OwnedFd>, usize) -> FileJob + Send + 'static,
) -> (usize, usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir: Arc<OwnedFd> = Arc::new(fs::File::open(tmp.path()).unwrap().into());
    let mut pool = FilePool::new(2, None).unwrap();
    let gate = pool.hold();
    let submitter = std::thread::spawn(move || {
        for i in 0..jobs {
            if own_directory || i == 0 {
                pool.next_directory()?;
            }
            pool.submit(job(&dir, i))?;
        }
        pool.drain()
    });
    // The submitter stops when the queues are full (or when it is done).
    let mut last = None;
    let queued = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = gate.queued();
        if submitter.is_finished() || last == Some(now) {
            break now;
        }
        last = Some(now);
    };
    gate.open();
    submitter.join().unwrap().unwrap();
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), jobs);
    queued
}

fn pool_job(dir: &Arc<OwnedFd>, name: String, entry_name: Vec<u8>, data: Vec<u8>) -> FileJob {
    FileJob {
        parent: dir.clone(),
        name: name.into_bytes(),
        entry: Entry {
            name: entry_name,
            link: Vec::new(),
            kind: Kind::File,
            mode: 0o644,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: Time::default(),
            atime: None,
            size: data.len() as u64,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        },
        data,
        policy: FilePolicy::default(),
        noted: None,
        predicted: None,
    }
}

/// Each queued batch holds its directory open: a layer of many directories
/// of one small file each (`/usr/share/doc/*/copyright`) must not queue
/// so many that extraction runs out of file descriptors (1024 by default).
#[test]
fn the_file_pool_keeps_few_directories_open() {
    let (batches, _, _) = queued_by_held_pool(5_000, true, |dir, i| {
        pool_job(
            dir,
            format!("f{i}"),
            b"doc/copyright".to_vec(),
            vec![b'c'; 100],
        )
    });
    assert!(batches <= 128, "{batches} batches (directories) queued");
}

/// Empty files carry no data, but their names and xattrs are held until
/// written: queues of them must be bounded too.
#[test]
fn the_file_pool_bounds_the_memory_of_empty_files() {
    let (_, jobs, held) = queued_by_held_pool(20_000, false, |dir, i| {
        let mut job = pool_job(dir, format!("f{i}"), vec![b'n'; 2_000], Vec::new());
        job.entry.xattrs = vec![(b"user.note".to_vec(), vec![b'v'; 1_000])];
        job
    });
    assert!(jobs < 20_000, "all {jobs} jobs queued");
    assert!(held <= 2 * (8 << 20), "{held} bytes of names queued");
}

/// The layer directory's tree, by path relative to it, with the times of
/// implied directories and whiteout devices (stamped at extraction, not
/// from the archive) zeroed, so two extractions compare.
fn layer_tree(scene: &Scene) -> BTreeMap<PathBuf, Seen> {
    let mut tree = BTreeMap::new();
    snapshot(&scene.dest, &scene.canary, &mut tree);
    tree.into_iter()
        .map(|(path, mut seen)| {
            if seen.mtime.0 > 1_600_000_000 {
                seen.mtime = (0, 0);
            }
            (path.strip_prefix(&scene.dest).unwrap().to_path_buf(), seen)
        })
        .collect()
}

/// Extracts `entries` on one thread and with a pool of 2 workers, checks
/// nothing outside the layer changed, nothing is written after either
/// returned, and both give the same result (success or failure, and then
/// the same tree). Returns the pooled result.
fn same_with_pool(what: &str, entries: &[RawEntry]) -> Result<Unpacked, UnpackError> {
    let tar = testtar::archive(entries);
    let run = |workers: usize| {
        let scene = Scene::new();
        let result = scene.unpack_with(&tar, workers);
        let tree = layer_tree(&scene);
        // Nothing is written once extraction has returned.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut later = BTreeMap::new();
        snapshot(&scene.dest, &scene.canary, &mut later);
        assert_eq!(later.len(), tree.len(), "{what}: written after return");
        (result, tree)
    };
    let (one, one_tree) = run(0);
    let (pooled, pooled_tree) = run(2);
    assert_eq!(
        pooled.is_ok(),
        one.is_ok(),
        "{what}: pool {pooled:?}, one thread {one:?}"
    );
    // A failed extraction leaves what it got to, which the pool reaches
    // in another order; the layer is then discarded.
    if one.is_ok() {
        assert!(pooled_tree == one_tree, "{what}: trees differ");
    }
    pooled
}

fn many_files(dir: &str, n: usize) -> Vec<RawEntry> {
    (0..n)
        .map(|i| RawEntry::file(&format!("{dir}/f{i}"), format!("{dir} {i}").as_bytes()))
        .collect()
}

/// Entries that replace, link to or whiteout what the pool may still be
/// writing, or name it in other spellings: the pool must wait for its
/// files first, never write through a symlink or into a replaced
/// directory, and give what one thread gives.
#[test]
fn the_file_pool_waits_for_files_that_later_entries_touch() {
    if !is_root() {
        // Whiteouts need mknod.
        return;
    }
    let then = |mut first: Vec<RawEntry>, rest: Vec<RawEntry>| {
        first.extend(rest);
        first
    };
    let parent_becomes_symlink = then(
        many_files("a/b", 300),
        vec![
            RawEntry::symlink("a/b", "../../canary"),
            RawEntry::file("a/c", b"after"),
        ],
    );
    assert!(same_with_pool("parent becomes a symlink", &parent_becomes_symlink).is_ok());
    let through_symlink = then(
        many_files("a/b", 300),
        vec![
            RawEntry::symlink("a", "../canary"),
            RawEntry::file("a/b/f0", b"through"),
        ],
    );
    assert!(same_with_pool("file through a new symlink", &through_symlink).is_err());
    let ancestor_becomes_file = then(
        many_files("x/y/z", 300),
        vec![
            RawEntry::file("x", b"file now"),
            RawEntry::file("w/f", b"elsewhere"),
        ],
    );
    same_with_pool("ancestor becomes a file", &ancestor_becomes_file).unwrap();
    let below_a_pending_file = then(
        many_files("p", 100),
        vec![RawEntry::file("p/f7/under", b"below a file")],
    );
    let err = same_with_pool("below a pending file", &below_a_pending_file).unwrap_err();
    // Not a race between making the directory and the file.
    assert!(err.to_string().contains("not a directory"), "{err}");
    let links_and_whiteouts = then(
        many_files("h", 300),
        vec![
            RawEntry::hardlink("l/one", "h/f299"),
            RawEntry::hardlink("h/f5", "h/f298"),
            RawEntry::file("h/.wh.f4", b""),
            RawEntry::file("h/.wh.gone", b""),
            RawEntry::file("h/.wh..wh..opq", b""),
            RawEntry::file(".wh.h", b""),
            RawEntry::dir("h/gone/"),
            RawEntry::file("h/gone/f", b"back"),
        ],
    );
    same_with_pool("hardlinks and whiteouts", &links_and_whiteouts).unwrap();
    let spellings = then(
        many_files("s", 100),
        vec![
            RawEntry::file("./s/f1", b"dot"),
            RawEntry::file("/s/f2", b"absolute"),
            RawEntry::file("s//f3", b"double slash"),
            RawEntry::file("s/t/../f4", b"dot dot"),
            RawEntry::file("s/t/u", b"in t"),
            RawEntry::dir("./s/t/").with_mode(0o500),
            RawEntry::file("s/./t/v", b"in read-only t"),
            RawEntry::dir("./").with_mode(0o700),
        ],
    );
    same_with_pool("other spellings of a path", &spellings).unwrap();
    let read_only_first = then(
        vec![RawEntry::dir("ro/").with_mode(0o500)],
        many_files("ro", 100),
    );
    same_with_pool("a read-only directory before its files", &read_only_first).unwrap();
}

/// A file the pool fails to write fails the extraction, as on one thread,
/// even with thousands of files after it.
#[test]
fn a_file_the_pool_fails_to_write_fails_the_extraction() {
    let long_xattr = format!("SCHILY.xattr.user.{}", "x".repeat(300));
    let mut entries = many_files("a", 50);
    entries.push(RawEntry::pax(&[(long_xattr.as_str(), b"v")]));
    entries.push(RawEntry::file("a/bad", b"bad xattr"));
    for dir in 0..40 {
        entries.extend(many_files(&format!("b{dir}"), 100));
    }
    let err = same_with_pool("bad xattr", &entries).unwrap_err();
    assert!(err.to_string().contains("a/bad"), "{err}");
}

/// A default ACL on the layer root, from the root's own entry, decides the
/// mode of files created after it (not the umask): their modes must still
/// be the archive's.
#[test]
fn a_default_acl_on_the_root_entry_does_not_change_file_modes() {
    // Version 2; owner rwx, group and others nothing.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let entries = vec![
        RawEntry::pax(&[("SCHILY.xattr.system.posix_acl_default", &acl[..])]),
        RawEntry::dir("./"),
        RawEntry::file("f", b"readable").with_mode(0o644),
        RawEntry::file("d/g", b"readable").with_mode(0o644),
    ];
    for workers in [0, 2] {
        let scene = Scene::new();
        scene
            .unpack_with(&testtar::archive(&entries), workers)
            .unwrap();
        if xattr(&scene.dest, "system.posix_acl_default").is_none() {
            // No ACLs on this filesystem: nothing to check.
            return;
        }
        for file in ["f", "d/g"] {
            let mode = fs::metadata(scene.dest.join(file)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o644, "{file} with {workers} workers");
        }
    }
}
