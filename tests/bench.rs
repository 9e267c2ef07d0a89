//! `lstore bench`: fresh scratch stores (a tmpfs it mounts, or a folder
//! given), cold and warm runs of the real `lstore load`, and a report whose
//! figures agree with the image and with each other. No timing is judged:
//! only that every figure is there and follows from the others.

mod common;

use common::image::{write_oci_layout, Image};
use common::{scenes, scratch, ImageBuilder, LayoutNames, Lstore};
use serde_json::Value;
use std::fs;
use std::path::Path;

const NAME: &str = "example.com/lstore/bench:1";

fn image() -> Image {
    ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("bench"))
        .build()
}

/// Entries below `dir`, never following symlinks (as `find -mindepth 1`).
fn entries(dir: &Path) -> u64 {
    let mut count = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        count += 1;
        if e.file_type().unwrap().is_dir() {
            count += entries(&e.path());
        }
    }
    count
}

/// Entries of the image's extracted layers, as a plain `lstore load` makes them.
fn extracted_entries(layout: &Path) -> u64 {
    let store = Lstore::new();
    store.load(layout, None);
    let inspect = store.inspect(NAME);
    inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| entries(Path::new(l["path"].as_str().unwrap())))
        .sum()
}

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every figure of the report is present and consistent with `image`.
fn check_report(report: &Value, image: &Image, files: u64, cold: usize, warm: usize) {
    let fig = &report["image"];
    assert_eq!(fig["images"], 1, "{report}");
    assert_eq!(fig["layers"], image.layers.len(), "{report}");
    assert_eq!(fig["blob_bytes"], image.compressed_size(), "{report}");
    let tar: u64 = image.layers.iter().map(|l| l.tar.len() as u64).sum();
    assert_eq!(fig["tar_bytes"], tar, "{report}");
    assert_eq!(fig["files"], files, "{report}");

    let runs = report["runs"].as_array().expect("runs");
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    let mut expected = vec!["cold"; cold];
    expected.extend(vec!["warm"; warm]);
    assert_eq!(kinds, expected, "{report}");
    for run in runs {
        let secs = number(&run["seconds"], "seconds");
        assert!(secs > 0.0, "{run}");
        assert!(
            close(
                number(&run["tar_mb_per_s"], "tar MB/s"),
                tar as f64 / secs / 1e6
            ),
            "{run}"
        );
        assert!(
            close(
                number(&run["blob_mb_per_s"], "blob MB/s"),
                image.compressed_size() as f64 / secs / 1e6
            ),
            "{run}"
        );
        assert!(
            close(number(&run["files_per_s"], "files/s"), files as f64 / secs),
            "{run}"
        );
        assert!(run["peak_rss_bytes"].as_u64().unwrap() > 0, "{run}");
    }
    let medians = report["medians"].as_array().expect("medians");
    for (kind, n) in [("cold", cold), ("warm", warm)] {
        let m = medians.iter().find(|m| m["kind"] == kind);
        if n == 0 {
            assert!(m.is_none(), "{report}");
            continue;
        }
        let m = m.unwrap_or_else(|| panic!("no {kind} median: {report}"));
        assert_eq!(m["runs"], n, "{report}");
        let secs: Vec<f64> = runs
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| number(&r["seconds"], "seconds"))
            .collect();
        let median = number(&m["seconds"], "median seconds");
        let min = secs.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = secs.iter().cloned().fold(0.0, f64::max);
        assert!(min <= median && median <= max, "{report}");
    }

    let machine = &report["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1, "{report}");
    assert!(!machine["kernel"].as_str().unwrap().is_empty(), "{report}");
    assert!(machine["memory_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["command"]
            .as_str()
            .unwrap()
            .starts_with("lstore load -q -i "),
        "{report}"
    );
    assert!(report["lstore_version"].is_string(), "{report}");
}

/// The image written as a layout in a scratch folder, and the entries its
/// layers extract to.
struct Fixture {
    dir: tempfile::TempDir,
    image: Image,
    layout: std::path::PathBuf,
    files: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = scratch();
        let image = image();
        let layout = dir.path().join("layout");
        write_oci_layout(&layout, &[(&image, LayoutNames::containerd(NAME))]);
        let files = extracted_entries(&layout);
        Fixture {
            dir,
            image,
            layout,
            files,
        }
    }

    fn layout(&self) -> &str {
        self.layout.to_str().unwrap()
    }
}

fn mounted(path: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path))
}

#[test]
fn bench_on_its_own_tmpfs_reports_consistent_figures() {
    let fx = Fixture::new();
    // The bench ignores the store at --root: it makes its own.
    let store = Lstore::new();
    let report = store.json(&[
        "bench",
        "--size",
        "64m",
        "--cold",
        "1",
        "--warm",
        "2",
        "--format",
        "json",
        fx.layout(),
    ]);
    check_report(&report, &fx.image, fx.files, 1, 2);
    assert_eq!(report["store_on"]["filesystem"], "tmpfs", "{report}");
    assert_eq!(report["store_on"]["size"], "64m", "{report}");
    let scratch_path = report["store_on"]["path"].as_str().unwrap();
    assert!(!mounted(scratch_path), "the tmpfs is unmounted after");
    assert!(!Path::new(scratch_path).exists(), "its folder is removed");
    assert!(store.images().is_empty(), "--root untouched");

    // The table names the same figures.
    let out = store.ok(&[
        "bench",
        "--size",
        "64m",
        "--cold",
        "0",
        "--warm",
        "1",
        fx.layout(),
    ]);
    for word in ["tar MB/s", "files/s", "peak RSS", "median warm", "2 layers"] {
        assert!(out.stdout.contains(word), "no {word:?} in:\n{}", out.stdout);
    }
}

#[test]
fn bench_in_a_folder_given_leaves_it_as_it_was() {
    let fx = Fixture::new();
    let place = fx.dir.path().join("place");
    fs::create_dir(&place).unwrap();
    let place_arg = place.to_str().unwrap();

    let store = Lstore::new();
    let report = store.json(&[
        "bench",
        "--dir",
        place_arg,
        "--cold",
        "0",
        "--warm",
        "2",
        "--format",
        "json",
        fx.layout(),
    ]);
    check_report(&report, &fx.image, fx.files, 0, 2);
    assert!(report["store_on"]["size"].is_null(), "{report}");
    let used = report["store_on"]["path"].as_str().unwrap();
    assert!(used.starts_with(place_arg), "{report}");
    assert_eq!(common::lstore::list(&place), Vec::<String>::new());

    // What cannot be measured fails with one line, leaving nothing behind.
    let broken = fx.dir.path().join("not-an-archive.tar");
    fs::write(&broken, "not a tar").unwrap();
    let warm_only = ["--cold", "0", "--warm", "1"];
    for input in ["no such image!", broken.to_str().unwrap()] {
        let mut args = vec!["bench", "--dir", place_arg];
        args.extend(warm_only);
        args.push(input);
        store.fails(&args);
    }
    store.fails(&["bench", "--cold", "0", "--warm", "0", fx.layout()]);
    assert_eq!(common::lstore::list(&place), Vec::<String>::new());
}
