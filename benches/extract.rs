//! Layer extraction with `lstore::internals::unpack::unpack_layer`: generated layers
//! of many small files and of a few big files, gzip, zstd and plain,
//! reported per uncompressed tar byte and per file.
//!
//! Each iteration extracts into a fresh folder; removing it afterwards is
//! not timed. `plain+syncfs` also times the `syncfs` the store runs before
//! a layer counts, which is where early write-back shows. The blob is in memory, so this measures decompression,
//! hashing and file creation, not reading the blob from disk.
//!
//! `bound/*` measures what extraction cannot beat on one thread:
//! decompression plus both sha256 digests, writing nothing.

mod common;

use std::hint::black_box;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use lstore::internals::unpack::unpack_layer;
use lstore::Compression;
use lstore::Limits;

use common::{compress, compression_name, Scale, ALL_COMPRESSIONS};

/// One generated layer in every compression.
struct Fixture {
    name: String,
    tar_len: u64,
    files: u64,
    blobs: Vec<(Compression, Vec<u8>)>,
}

impl Fixture {
    fn new(name: String, files: &[common::FileSpec]) -> Fixture {
        let tar = common::layer_tar(files);
        let blobs = ALL_COMPRESSIONS
            .iter()
            .map(|&c| (c, compress(&tar, c)))
            .collect();
        Fixture {
            name,
            tar_len: tar.len() as u64,
            files: files.len() as u64,
            blobs,
        }
    }
}

fn extract_group(c: &mut Criterion, fixture: &Fixture, measurement: Duration) {
    let scratch = common::scratch("extract");
    let mut group = c.benchmark_group(format!("extract/{}", fixture.name));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(measurement)
        .throughput(Throughput::ElementsAndBytes {
            elements: fixture.files,
            bytes: fixture.tar_len,
        });
    let mut n = 0u64;
    let plain = fixture
        .blobs
        .iter()
        .filter(|(c, _)| *c == Compression::None)
        .map(|(c, blob)| (*c, blob, true));
    let runs = fixture
        .blobs
        .iter()
        .map(|(c, blob)| (*c, blob, false))
        .chain(plain);
    for (compression, blob, durable) in runs {
        let mut id = compression_name(compression).to_string();
        if durable {
            id.push_str("+syncfs");
        }
        group.bench_with_input(BenchmarkId::from_parameter(id), blob, |b, blob| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let dest = scratch.path().join(format!("diff{n}"));
                    std::fs::create_dir(&dest).expect("create dest");
                    let start = Instant::now();
                    let unpacked =
                        unpack_layer(&mut blob.as_slice(), compression, &dest, &Limits::default())
                            .expect("extraction");
                    if durable {
                        syncfs(&dest).expect("syncfs");
                    }
                    spent += start.elapsed();
                    assert_eq!(unpacked.size, fixture.tar_len);
                    black_box(unpacked);
                    std::fs::remove_dir_all(&dest).expect("remove dest");
                }
                spent
            })
        });
    }
    group.finish();
}

/// What the store does before a layer counts: write its filesystem back.
fn syncfs(dir: &std::path::Path) -> io::Result<()> {
    let dir = std::fs::File::open(dir)?;
    // SAFETY: syncfs reads only the fd, which `dir` keeps open.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Decompression and both digests, discarding the tar: the floor of what
/// one reader thread costs.
fn decompress_and_hash(blob: &[u8], compression: Compression) -> io::Result<u64> {
    let mut outer = lstore::internals::digest::HashingReader::new(blob);
    let inner: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(&mut outer),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut outer)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut outer)?),
    };
    let (digest, size) = lstore::internals::digest::HashingReader::new(inner).drain_and_finish()?;
    black_box(digest);
    black_box(outer.drain_and_finish()?);
    Ok(size)
}

fn bound_group(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group(format!("bound/{}", fixture.name));
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(fixture.tar_len));
    for (compression, blob) in &fixture.blobs {
        group.bench_with_input(
            BenchmarkId::from_parameter(compression_name(*compression)),
            blob,
            |b, blob| {
                b.iter(|| {
                    let size = decompress_and_hash(blob, *compression).expect("decompress");
                    assert_eq!(size, fixture.tar_len);
                })
            },
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let scale = Scale::from_env();
    let secs = |full: u64| Duration::from_secs(scale.pick(full, 1));

    let few = scale.pick(10_000, 200);
    let small = Fixture::new(
        format!("small_files_{few}"),
        &common::small_files(few, 4096, 1),
    );
    extract_group(c, &small, secs(20));
    bound_group(c, &small);
    drop(small);

    let many = scale.pick(100_000, 500);
    let smaller = Fixture::new(
        format!("small_files_{many}"),
        &common::small_files(many, 4096, 2),
    );
    extract_group(c, &smaller, secs(60));
    drop(smaller);

    let (count, size) = scale.pick((4, 64 << 20), (2, 256 << 10));
    let big = Fixture::new(
        format!("big_files_{count}x{}", human_size(size)),
        &common::big_files(count, size, 3),
    );
    extract_group(c, &big, secs(30));
    bound_group(c, &big);
}

fn human_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{}KiB", bytes >> 10)
    }
}

criterion_group!(extract, benches);
criterion_main!(extract);
