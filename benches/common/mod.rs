//! What the benches share: where scratch stores live, how big fixtures are,
//! and generators for layer tars with deterministic content.
//!
//! Each bench binary uses only part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use lstore::Compression;

/// Fixture sizes: full under `cargo bench` (`--bench` is passed), small under
/// `cargo test --all-targets`, where criterion runs every bench once and
/// only checks that it works. `LSTORE_BENCH_QUICK=1` forces small fixtures
/// while benchmarking (a quick look at the numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Full,
    Small,
}

impl Scale {
    pub fn from_env() -> Scale {
        let benchmarking = std::env::args().any(|a| a == "--bench");
        let quick = std::env::var_os("LSTORE_BENCH_QUICK").is_some_and(|v| v != "0");
        if benchmarking && !quick {
            Scale::Full
        } else {
            Scale::Small
        }
    }

    pub fn pick<T>(self, full: T, small: T) -> T {
        match self {
            Scale::Full => full,
            Scale::Small => small,
        }
    }
}

/// A scratch folder for stores and extractions. The root filesystem of a
/// build machine can be many times slower than ext4 at creating files, so
/// benches run under `LSTORE_BENCH_DIR` (a tmpfs or a loop-mounted ext4;
/// `scripts/bench-criterion.sh` makes the latter), else `/dev/shm`.
pub fn scratch(name: &str) -> tempfile::TempDir {
    let base = std::env::var_os("LSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let base = if base.is_dir() {
        base
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix(&format!("lstore-bench-{name}-"))
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("cannot make a scratch folder in {}: {e}", base.display()))
}

/// Deterministic pseudo-random numbers (splitmix64): fixtures are the same
/// on every run without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: [&str; 24] = [
    "lorem", "ipsum", "layer", "digest", "overlay", "config", "manifest", "registry", "index",
    "sha256", "content", "store", "image", "tar", "gzip", "zstd", "whiteout", "opaque", "chain",
    "diff", "blob", "mount", "lower", "upper",
];

/// File content that compresses about as well as a distribution's files:
/// lines of words (source, docs, configs) with runs of random bytes
/// (binaries) mixed in, `random_percent` of it random.
pub fn content(rng: &mut Rng, len: usize, random_percent: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        if rng.below(100) < random_percent {
            let n = (256 + rng.below(3840)) as usize;
            let start = out.len();
            out.resize(start + n, 0);
            rng.fill(&mut out[start..]);
        } else {
            for _ in 0..(4 + rng.below(10)) {
                out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                out.push(b' ');
            }
            out.push(b'\n');
        }
    }
    out.truncate(len);
    out
}

/// One regular file of a generated layer.
pub struct FileSpec {
    pub path: String,
    pub data: Vec<u8>,
}

/// Builds a layer tar: the folders the files need, then the files, owned
/// by the running user so extraction works without root too.
pub fn layer_tar(files: &[FileSpec]) -> Vec<u8> {
    let uid = current_owner();
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done = std::collections::BTreeSet::new();
    for f in files {
        let mut parent = Path::new(&f.path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if dirs_done.insert(p.to_path_buf()) {
                missing.push(p.to_path_buf());
            }
            parent = p.parent();
        }
        for dir in missing.into_iter().rev() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(uid.0);
            h.set_gid(uid.1);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            builder
                .append_data(&mut h, format!("{}/", dir.display()), std::io::empty())
                .expect("tar dir");
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(uid.0);
        h.set_gid(uid.1);
        h.set_mtime(1_700_000_000);
        h.set_size(f.data.len() as u64);
        builder
            .append_data(&mut h, &f.path, f.data.as_slice())
            .expect("tar file");
    }
    builder.into_inner().expect("tar finish")
}

fn current_owner() -> (u64, u64) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::geteuid() as u64, libc::getegid() as u64) }
}

/// `count` small files (0..=`max_size` bytes, a third of them random
/// content) in folders of 100, like a distribution's /usr.
pub fn small_files(count: usize, max_size: u64, seed: u64) -> Vec<FileSpec> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let len = rng.below(max_size + 1) as usize;
            FileSpec {
                path: format!("usr/share/d{:04}/f{:03}.txt", i / 100, i % 100),
                data: content(&mut rng, len, 30),
            }
        })
        .collect()
}

/// `count` files of `size` bytes each, half random: compresses about 2:1.
pub fn big_files(count: usize, size: usize, seed: u64) -> Vec<FileSpec> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| FileSpec {
            path: format!("opt/data/blob{i}.bin"),
            data: content(&mut rng, size, 50),
        })
        .collect()
}

/// The blob of a layer in the given compression (gzip and zstd at their
/// default levels, as registries usually hold them).
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "plain",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

pub const ALL_COMPRESSIONS: [Compression; 3] =
    [Compression::Gzip, Compression::Zstd, Compression::None];
