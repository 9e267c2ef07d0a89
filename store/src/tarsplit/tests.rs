//! Records made in the extraction pass, read back, and tars assembled from
//! them: the assembled tar must hash to the layer's diff id.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::*;
use crate::oci::Compression;
use crate::unpack::testtar::{self, RawEntry};
use crate::unpack::{self, LayerPosition, Limits};

/// A layer with every kind of entry the record must carry: files (empty,
/// small, one spanning blocks), directories, symlinks, hardlinks, a
/// whiteout, an opaque directory, PAX and GNU long names, a name that is
/// not UTF-8, xattrs, odd owners, and zero blocks past the end marker.
pub(super) fn fixture() -> Vec<u8> {
    let long_pax = format!("{}/pax-file", "p".repeat(120));
    let long_gnu = format!("{}/gnu-file", "g".repeat(130));
    let mut tar = testtar::archive(&[
        RawEntry::dir("etc/"),
        RawEntry::file("etc/hostname", b"lstore\n").with_owner(1000, 1001),
        RawEntry::file("empty", b""),
        RawEntry::file(
            "big",
            &(0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        ),
        RawEntry::symlink("etc/link", "hostname"),
        RawEntry::hardlink("etc/hard", "etc/hostname"),
        RawEntry::file(".wh.gone", b"").with_owner(4242, 4243),
        RawEntry::dir("opaque/"),
        RawEntry::file("opaque/.wh..wh..opq", b"").with_owner(4244, 4245),
        RawEntry::file("opaque/kept", b"kept"),
        RawEntry::dir(&format!("{}/", "p".repeat(120))),
        RawEntry::pax(&[("path", long_pax.as_bytes()), ("uid", b"70000")]),
        RawEntry::file("short-pax", b"pax content"),
        RawEntry::dir(&format!("{}/", "g".repeat(130))),
        RawEntry::gnu_long(b'L', long_gnu.as_bytes()),
        RawEntry::file("short-gnu", b"gnu content").with_owner(0, 80_000),
        RawEntry::file_bytes(b"caf\xe9 <&> \"quoted\"", b"latin-1 name"),
        RawEntry::pax(&[("SCHILY.xattr.user.lstore", b"yes")]),
        RawEntry::file("xattr-file", b"has an xattr"),
    ]);
    // Zero blocks past the end marker, as some tools write.
    tar.extend_from_slice(&[0u8; 4096]);
    tar
}

/// An extracted layer with its record, in a temporary layer folder.
pub(super) struct Layer {
    pub(super) dir: tempfile::TempDir,
    pub(super) unpacked: unpack::Unpacked,
    pub(super) summary: LayerSummary,
}

impl Layer {
    pub(super) fn folder(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn diff(&self) -> std::path::PathBuf {
        self.dir.path().join("diff")
    }

    pub(super) fn record(&self) -> std::path::PathBuf {
        self.dir.path().join(RECORD_FILE)
    }
}

pub(super) fn extract(blob: &[u8], compression: Compression, position: LayerPosition) -> Layer {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("diff")).unwrap();
    let (unpacked, summary, _) = unpack::unpack_layer_recorded(
        &mut &blob[..],
        compression,
        &dir.path().join("diff"),
        &Limits::default(),
        position,
        dir.path(),
        None,
    )
    .unwrap();
    Layer {
        dir,
        unpacked,
        summary,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

fn assembled(layer: &Layer) -> Vec<u8> {
    let mut out = Vec::new();
    let n = assemble(&layer.record(), &layer.diff(), &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn entries(record: &Path) -> Vec<RecordEntry> {
    let mut reader = RecordReader::open(record).unwrap();
    let mut out = Vec::new();
    while let Some(e) = reader.next_entry().unwrap() {
        out.push(e);
    }
    out
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn the_assembled_tar_is_the_layer_tar_byte_for_byte() {
    let tar = fixture();
    for (blob, compression) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
    ] {
        for position in [LayerPosition::Upper, LayerPosition::Base] {
            let layer = extract(&blob, compression, position);
            assert_eq!(layer.unpacked.diff_id, crate::digest::Digest::of(&tar));
            let out = assembled(&layer);
            assert!(out == tar, "assembled tar differs ({position:?})");
            assert_eq!(crate::digest::Digest::of(&out), layer.unpacked.diff_id);
        }
    }
}

#[test]
fn the_record_has_tar_splits_shape() {
    let tar = fixture();
    let layer = extract(&tar, Compression::None, LayerPosition::Upper);
    let got = entries(&layer.record());
    // Segments and files alternate as tar-split writes them: each entry's
    // headers, then the entry; the last segment holds the end marker and
    // what follows it.
    let files: Vec<&RecordEntry> = got
        .iter()
        .filter(|e| matches!(e, RecordEntry::File { .. }))
        .collect();
    assert_eq!(files.len(), 16, "one file entry per tar entry");
    assert!(matches!(got[0], RecordEntry::Segment(ref s) if s.len() == 512));
    match &got[got.len() - 2..] {
        [RecordEntry::Segment(end), RecordEntry::Segment(tail)] => {
            assert!(end.len() >= 1024 && end.iter().all(|&b| b == 0));
            assert_eq!(tail, &vec![0u8; 4096]);
        }
        other => panic!("last entries {other:?}"),
    }
    let named = |name: &[u8]| {
        files
            .iter()
            .find_map(|e| match e {
                RecordEntry::File { name: n, size, crc } if n == name => Some((*size, crc.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name)))
    };
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
    d.update(b"lstore\n");
    assert_eq!(
        named(b"etc/hostname"),
        (7, Some(d.finalize().to_be_bytes().to_vec()))
    );
    assert_eq!(named(b"etc/"), (0, None));
    assert_eq!(named(b"etc/hard"), (0, None));
    assert_eq!(named(b"caf\xe9 <&> \"quoted\"").0, 12);
    assert_eq!(
        named(format!("{}/pax-file", "p".repeat(120)).as_bytes()).0,
        11
    );
    assert_eq!(
        named(format!("{}/gnu-file", "g".repeat(130)).as_bytes()).0,
        11
    );

    // The JSON as Go writes it: fields in order, empty ones left out, a
    // name that is not UTF-8 in name_raw.
    let text = gunzip(&layer.record());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), got.len());
    assert!(
        lines[0].starts_with(r#"{"type":2,"payload":""#),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(r#"","position":0}"#), "{}", lines[0]);
    assert!(
        lines[1].starts_with(r#"{"type":1,"name":"etc/","payload":null,"position":1}"#),
        "{}",
        lines[1]
    );
    assert!(
        text.contains(r#"{"type":1,"name_raw":"Y2Fm6SA8Jj4gInF1b3RlZCI=","size":12,"payload":""#)
    );
    assert!(text.contains(r#"{"type":1,"name":"etc/hostname","size":7,"payload":""#));
}

#[test]
fn the_summary_is_what_containers_storage_records() {
    let tar = fixture();
    let layer = extract(&gzip(&tar), Compression::Gzip, LayerPosition::Upper);
    let expected = LayerSummary {
        tar_size: tar.len() as u64,
        // Whiteout and opaque marker owners (4242..4245) are left out.
        uids: vec![0, 1000, 70_000],
        gids: vec![0, 1001, 80_000],
    };
    assert_eq!(layer.summary, expected);
    assert_eq!(summary(&layer.record()).unwrap(), expected);
    // Without the summary file, the record alone gives the same.
    fs::remove_file(layer.folder().join(SUMMARY_FILE)).unwrap();
    assert_eq!(summary(&layer.record()).unwrap(), expected);
}

#[test]
fn disassembling_the_blob_gives_the_same_record() {
    let tar = fixture();
    let layer = extract(&gzip(&tar), Compression::Gzip, LayerPosition::Upper);
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join(RECORD_FILE);
    let blob = gzip(&tar);
    let (unpacked, recorder) = unpack::disassemble_layer(
        &mut &blob[..],
        Compression::Gzip,
        &Limits::default(),
        create_record(&path).unwrap(),
    )
    .unwrap();
    let (_, summary) = recorder.finish().unwrap();
    assert_eq!(unpacked.diff_id, layer.unpacked.diff_id);
    assert_eq!(unpacked.compressed_digest, crate::digest::Digest::of(&blob));
    assert_eq!(summary, layer.summary);
    assert_eq!(gunzip(&path), gunzip(&layer.record()));
}

#[test]
fn trailing_data_is_kept_in_chunks() {
    let mut tar = testtar::archive(&[RawEntry::file("f", b"x")]);
    // Past the end marker: more than one chunk of not only zeros.
    tar.extend((0..(2 << 20) + 100).map(|i: u32| (i % 7) as u8));
    let layer = extract(&tar, Compression::None, LayerPosition::Upper);
    let got = entries(&layer.record());
    let sizes: Vec<usize> = got
        .iter()
        .filter_map(|e| match e {
            RecordEntry::Segment(s) => Some(s.len()),
            _ => None,
        })
        .collect();
    // Header; padding + end marker; then the tail in 1 MiB pieces.
    assert_eq!(sizes, vec![512, 511 + 1024, 1 << 20, 1 << 20, 100]);
    assert!(assembled(&layer) == tar);
    assert_eq!(layer.summary.tar_size, tar.len() as u64);
}

#[test]
fn changed_content_is_a_typed_error() {
    let tar = fixture();
    let layer = extract(&tar, Compression::None, LayerPosition::Upper);
    // Same size, other bytes.
    fs::write(layer.diff().join("etc/hostname"), b"LSTORE\n").unwrap();
    let err = assemble(&layer.record(), &layer.diff(), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("CRC-64"), "{err}");
    // Other size.
    fs::write(layer.diff().join("etc/hostname"), b"longer than it was\n").unwrap();
    let err = assemble(&layer.record(), &layer.diff(), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::Mismatch { .. }), "{err}");
    fs::remove_file(layer.diff().join("etc/hostname")).unwrap();
    let err = assemble(&layer.record(), &layer.diff(), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::File { .. }), "{err}");
}

#[test]
fn files_are_never_read_through_a_symlink() {
    let tar = testtar::archive(&[RawEntry::dir("d/"), RawEntry::file("d/secret", b"inside")]);
    let layer = extract(&tar, Compression::None, LayerPosition::Upper);
    // Outside the layer, a file the record would match.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"inside").unwrap();
    fs::remove_dir_all(layer.diff().join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path(), layer.diff().join("d")).unwrap();
    let err = assemble(&layer.record(), &layer.diff(), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::File { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    // The file itself a symlink.
    fs::remove_file(layer.diff().join("d")).unwrap();
    fs::create_dir(layer.diff().join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), layer.diff().join("d/secret"))
        .unwrap();
    let err = assemble(&layer.record(), &layer.diff(), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::File { .. }), "{err}");
}

#[test]
fn names_climbing_out_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("diff")).unwrap();
    fs::write(dir.path().join("outside"), b"x").unwrap();
    let record = dir.path().join(RECORD_FILE);
    let mut r = create_record(&record).unwrap();
    r.segment(&[0u8; 512]);
    r.begin_file(b"../outside", 1, 0, 0);
    r.content(b"x");
    r.finish().unwrap();
    let err = assemble(&record, &dir.path().join("diff"), std::io::sink()).unwrap_err();
    assert!(matches!(err, TarSplitError::File { .. }), "{err}");
}

#[test]
fn corrupt_records_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(RECORD_FILE);
    for bad in [
        "not json\n",
        "{\"type\":7,\"payload\":null,\"position\":0}\n",
        "{\"type\":2,\"payload\":\"!!\",\"position\":0}\n",
        "{\"type\":2,\"payload\":\"AA==\",\"position\":3}\n",
        "{\"type\":1,\"name\":\"a\",\"size\":-1,\"payload\":null,\"position\":0}\n",
    ] {
        fs::write(&path, gzip(bad.as_bytes())).unwrap();
        let err = assemble(&path, dir.path(), std::io::sink()).unwrap_err();
        assert!(matches!(err, TarSplitError::Corrupt { .. }), "{bad}: {err}");
    }
    fs::write(&path, b"not gzip").unwrap();
    assert!(assemble(&path, dir.path(), std::io::sink()).is_err());
}
