//! The checks the fuzz targets run on each input. They live here, not in
//! the targets, so that `cargo test` in this crate replays the corpus and
//! the regression inputs through exactly the same code without libFuzzer.
//!
//! A check panics (which libFuzzer reports as a crash) when the library
//! breaks one of its promises: parsing must never panic, what it
//! normalises must parse back to itself, and extraction must never touch
//! anything outside the layer directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lstore::internals::oci::{self, Document, ImageConfig};
use lstore::internals::unpack::unpack_layer;
use lstore::{Compression, Digest, Limits, Reference};

/// References: parsing never panics; the normal form and the familiar
/// form both parse back to the same normal form.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = Reference::parse(text) else {
        return;
    };
    let full = parsed.to_string();
    let again = Reference::parse(&full)
        .unwrap_or_else(|e| panic!("{text:?} normalises to {full:?}, which does not parse: {e}"));
    assert_eq!(
        again.to_string(),
        full,
        "normal form of {text:?} is unstable"
    );
    let familiar = parsed.familiar();
    let back = Reference::parse(&familiar)
        .unwrap_or_else(|e| panic!("familiar form {familiar:?} of {text:?} does not parse: {e}"));
    assert_eq!(
        back.to_string(),
        full,
        "familiar form {familiar:?} of {text:?} names something else"
    );
}

/// The media types a document may be declared as.
const HINTS: [Option<&str>; 7] = [
    None,
    Some(oci::OCI_MANIFEST),
    Some(oci::OCI_INDEX),
    Some(oci::DOCKER_MANIFEST),
    Some(oci::DOCKER_MANIFEST_LIST),
    Some("application/json"),
    Some("application/vnd.example.unknown+json"),
];

/// Serialises, parses the result and serialises again: the two texts must
/// be equal (what the store writes, it reads back the same).
fn assert_stable<T>(value: &T, what: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let first = serde_json::to_vec(value).expect("a parsed document serialises");
    let reparsed: T = serde_json::from_slice(&first)
        .unwrap_or_else(|e| panic!("{what} written by the store does not parse back: {e}"));
    let second = serde_json::to_vec(&reparsed).expect("serialises");
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "{what} does not round-trip"
    );
}

/// Manifests, indexes and image configs: parsing never panics, whatever
/// media type the document is declared as, and what parses round-trips.
pub fn document(data: &[u8]) {
    for hint in HINTS {
        match oci::parse_document(data, hint) {
            Ok(Document::Manifest(m)) => {
                assert_stable(&m, "manifest");
                let _ = m.config.annotation("x");
            }
            Ok(Document::Index(ix)) => {
                assert_stable(&ix, "index");
                for d in &ix.manifests {
                    let _ = d.platform.as_ref().map(|p| p.os.len());
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        assert_stable(&config, "image config");
        let _ = config.platform();
        let _ = lstore::internals::digest::chain_ids(&config.rootfs.diff_ids);
    }
}

/// Where `unpack` extracts: a fixed place (so that corpus entries can aim
/// links at it), rebuilt for every input, on tmpfs when there is one (a
/// disk file system that discards freed blocks makes every rmdir wait).
///
/// ```text
/// /dev/shm/lstore-fuzz-unpack/   canary-outer
///                 parent/        canary
///                 parent/layer/  the layer's diff/
/// ```
struct Sandbox {
    outer: PathBuf,
    parent: PathBuf,
    layer: PathBuf,
    before: BTreeMap<PathBuf, (u32, i64, Vec<u8>)>,
}

const CANARY: &[u8] = b"the layer must not touch this\n";

/// Mode, mtime and content of a canary file (lstat: a canary replaced by
/// a link shows as changed).
fn canary_state(path: &Path) -> (u32, i64, Vec<u8>) {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{} vanished: {e}", path.display()));
    assert!(meta.is_file(), "{} is no longer a file", path.display());
    let content = fs::read(path).expect("read canary");
    (meta.mode(), meta.mtime(), content)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} vanished: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

impl Sandbox {
    fn fresh() -> Sandbox {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let outer = base.join("lstore-fuzz-unpack");
        if fs::symlink_metadata(&outer).is_ok() {
            lstore::internals::layers::remove_tree(&outer).expect("clear the sandbox");
        }
        let parent = outer.join("parent");
        let layer = parent.join("layer");
        fs::create_dir_all(&layer).expect("sandbox");
        let mut before = BTreeMap::new();
        for canary in [outer.join("canary-outer"), parent.join("canary")] {
            fs::write(&canary, CANARY).expect("canary");
            before.insert(canary.clone(), canary_state(&canary));
        }
        for dir in [&outer, &parent] {
            let meta = fs::metadata(dir).expect("sandbox dir");
            before.insert(dir.to_path_buf(), (meta.mode(), meta.mtime(), Vec::new()));
        }
        Sandbox {
            outer,
            parent,
            layer,
            before,
        }
    }

    /// Nothing outside `layer` was created, removed or changed.
    fn assert_untouched(&self) {
        assert_eq!(
            names(&self.outer),
            ["canary-outer", "parent"],
            "something appeared next to the layer's parent"
        );
        assert_eq!(
            names(&self.parent),
            ["canary", "layer"],
            "something appeared next to the layer"
        );
        let layer = fs::symlink_metadata(&self.layer).expect("layer dir");
        assert!(layer.is_dir(), "the layer dir was replaced");
        for (path, was) in &self.before {
            let now = if was.2.is_empty() {
                let meta = fs::symlink_metadata(path).expect("sandbox dir");
                assert!(meta.is_dir(), "{} was replaced", path.display());
                (meta.mode(), meta.mtime(), Vec::new())
            } else {
                canary_state(path)
            };
            assert_eq!(&now, was, "{} was changed", path.display());
        }
    }
}

/// Tar application: on any bytes, extraction ends (Ok or Err) without a
/// panic, and nothing outside the layer directory changes. On success the
/// digests describe the bytes read (uncompressed: both are their sha256).
pub fn unpack(data: &[u8]) {
    let sandbox = Sandbox::fresh();
    let limits = Limits {
        max_header_bytes: 64 << 10,
        max_layer_size: 16 << 20,
        max_entries: 4096,
        ..Limits::default()
    };
    let result = unpack_layer(&mut &data[..], Compression::None, &sandbox.layer, &limits);
    sandbox.assert_untouched();
    if let Ok(u) = result {
        let digest = Digest::of(data);
        assert_eq!(u.compressed_digest, digest, "blob digest");
        assert_eq!(
            u.diff_id, digest,
            "an uncompressed layer's diff_id is its digest"
        );
        assert_eq!(u.compressed_size, data.len() as u64);
        assert_eq!(u.size, data.len() as u64);
    }
}
