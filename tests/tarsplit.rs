//! Every layer lstore extracts gets containers/storage's tar-split record
//! (`overlay2/<chain>/tar-split.gz`), checked with the real `tar-split`
//! tool both ways: its `asm` rebuilds each loaded layer's exact tar from
//! lstore's record and the layer's diff/, and a record its `disasm` makes
//! is one lstore's assembler accepts (and the same record lstore makes).
//! `fsck` finds a layer without its record, `--repair` makes it again from
//! the blob, and `rmi` takes it away with the folder.

mod common;

use common::image::{write_oci_layout, Image};
use common::scenes;
use common::tarball::{sha256_digest, Layer};
use common::{scratch, Compression, ImageBuilder, LayoutNames, Lstore};
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAME: &str = "example.com/lstore/tarsplit:1";

/// Whether the `tar-split` tool is here; under CI it must be.
fn have_tar_split() -> bool {
    let found = Command::new("tar-split").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tar-split is not installed (apt-get install tar-split; scripts/setup.sh does)"
        );
        eprintln!("skipped: tar-split is not installed");
    }
    found
}

fn tar_split(args: &[&std::ffi::OsStr]) {
    let out = Command::new("tar-split")
        .args(args)
        .output()
        .expect("run tar-split");
    assert!(
        out.status.success(),
        "tar-split {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The base layer of `scenes::record_fixture` with zero blocks past the
/// end marker.
fn fixture_tar() -> Vec<u8> {
    let mut tar = scenes::record_fixture().tar();
    tar.extend_from_slice(&[0u8; 3 * 512]);
    tar
}

/// Three layers: the fixture, then whiteouts and opaque directories
/// (everything_changes, everything_late), compressed three ways.
fn image() -> Image {
    ImageBuilder::new()
        .layer(Layer::from_tar(fixture_tar(), Compression::Gzip))
        .tar(&scenes::everything_changes(), Compression::Zstd)
        .tar(&scenes::everything_late(), Compression::None)
        .build()
}

fn loaded(image: &Image) -> (Lstore, Value) {
    let scratch = scratch();
    let store = Lstore::new();
    let dir = scratch.path().join("layout");
    write_oci_layout(&dir, &[(image, LayoutNames::containerd(NAME))]);
    store.load(&dir, None);
    let inspect = store.inspect(NAME);
    (store, inspect)
}

/// The layer folders of an inspected image, with their diff ids.
fn folders(inspect: &Value) -> Vec<(PathBuf, String)> {
    inspect["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            let diff = PathBuf::from(l["path"].as_str().expect("path"));
            let folder = diff.parent().expect("layer folder").to_path_buf();
            (folder, l["diff_id"].as_str().expect("diff_id").to_string())
        })
        .collect()
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(path).expect("record"))
        .read_to_string(&mut text)
        .expect("gunzip");
    text
}

/// `tar-split asm` of a layer folder's record and diff/.
fn asm(folder: &Path, out: &Path) -> Vec<u8> {
    tar_split(&[
        "asm".as_ref(),
        "--input".as_ref(),
        folder.join("tar-split.gz").as_os_str(),
        "--path".as_ref(),
        folder.join("diff").as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    fs::read(out).expect("assembled tar")
}

#[test]
fn tar_split_rebuilds_every_loaded_layer_from_lstores_record() {
    if !have_tar_split() {
        return;
    }
    let image = image();
    let (store, inspect) = loaded(&image);
    let work = scratch();
    for (i, (folder, diff_id)) in folders(&inspect).into_iter().enumerate() {
        let tar = asm(&folder, &work.path().join(format!("layer-{i}.tar")));
        assert_eq!(
            sha256_digest(&tar),
            diff_id,
            "layer {i} assembled by tar-split"
        );
        // The summary containers/storage's layers.json needs.
        let summary: Value =
            serde_json::from_slice(&fs::read(folder.join("layer-summary.json")).expect("summary"))
                .expect("summary json");
        assert_eq!(summary["tar_size"], tar.len() as u64, "layer {i}");
        if i == 0 {
            assert_eq!(summary["uids"], serde_json::json!([0, 1000, 3_000_000]));
            assert_eq!(summary["gids"], serde_json::json!([0, 1001, 3_000_001]));
        }
        // lstore's own assembler agrees.
        let mut ours = Vec::new();
        lstore::internals::tarsplit::assemble(
            &folder.join("tar-split.gz"),
            &folder.join("diff"),
            &mut ours,
        )
        .expect("lstore assembles its record");
        assert!(ours == tar, "layer {i}: lstore's assembly differs");
    }
    assert!(store.unfinished().is_empty());
}

#[test]
fn a_record_tar_split_makes_is_one_lstore_reads_and_makes_too() {
    if !have_tar_split() {
        return;
    }
    let tar = fixture_tar();
    let image = ImageBuilder::new()
        .layer(Layer::from_tar(tar.clone(), Compression::Gzip))
        .build();
    let (_store, inspect) = loaded(&image);
    let (folder, _) = folders(&inspect).remove(0);
    let work = scratch();
    let input = work.path().join("layer.tar");
    fs::write(&input, &tar).expect("write tar");
    let theirs = work.path().join("theirs.json.gz");
    tar_split(&[
        "disasm".as_ref(),
        "--no-stdout".as_ref(),
        "--output".as_ref(),
        theirs.as_os_str(),
        input.as_os_str(),
    ]);
    let mut out = Vec::new();
    lstore::internals::tarsplit::assemble(&theirs, &folder.join("diff"), &mut out)
        .expect("lstore assembles tar-split's record");
    assert!(
        out == tar,
        "assembled from tar-split's record: not the layer tar"
    );

    // Line for line the record lstore wrote in the extraction pass. Older
    // tar-split (Debian 12's) ends with one more, empty, segment.
    let theirs = gunzip(&theirs);
    let theirs = theirs
        .lines()
        .filter(|l| !l.starts_with(r#"{"type":2,"payload":"","#));
    let ours = gunzip(&folder.join("tar-split.gz"));
    let (theirs, ours): (Vec<&str>, Vec<&str>) = (theirs.collect(), ours.lines().collect());
    assert_eq!(theirs.len(), ours.len());
    for (a, b) in theirs.iter().zip(&ours) {
        assert_eq!(a, b);
    }
}

#[test]
fn fsck_makes_a_missing_record_again_and_rmi_takes_it_away() {
    let image = image();
    let (store, inspect) = loaded(&image);
    let layers = folders(&inspect);
    let (folder, diff_id) = &layers[1];
    let record = folder.join("tar-split.gz");
    let original = fs::read(&record).expect("record");
    fs::remove_file(&record).expect("remove record");
    fs::remove_file(folder.join("layer-summary.json")).expect("remove summary");

    let out = store.run(&["fsck"]);
    assert!(!out.success(), "fsck must fail on a missing record");
    assert!(out.stdout.contains("no tar-split record"), "{}", out.stdout);
    store.ok(&["fsck", "--repair"]);
    assert_eq!(fs::read(&record).expect("record made again"), original);
    store.ok(&["fsck"]);
    let mut ours = Vec::new();
    lstore::internals::tarsplit::assemble(&record, &folder.join("diff"), &mut ours)
        .expect("assemble");
    assert_eq!(&sha256_digest(&ours), diff_id);

    store.ok(&["rmi", NAME]);
    for (folder, _) in &layers {
        assert!(!folder.exists(), "{} is still there", folder.display());
    }
    assert!(store.unfinished().is_empty());
}
