//! Digest throughput: sha256 (every blob and diff_id) through `sha2`
//! directly and through `lstore::internals::digest::Hasher`, and blake3 (internal
//! checksums), over a buffer already in memory.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::Digest as _;

use common::Scale;

fn benches(c: &mut Criterion) {
    let scale = Scale::from_env();
    let sizes: &[usize] = scale.pick(&[4 << 10, 1 << 20, 64 << 20], &[4 << 10, 64 << 10]);
    let mut rng = common::Rng::new(7);
    let mut group = c.benchmark_group("hash");
    for &size in sizes {
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("sha256_sha2", size), &data, |b, d| {
            b.iter(|| black_box(sha2::Sha256::digest(d)))
        });
        group.bench_with_input(BenchmarkId::new("sha256_lstore", size), &data, |b, d| {
            b.iter(|| {
                let mut h = lstore::internals::digest::Hasher::new();
                h.update(d);
                black_box(h.finish())
            })
        });
        group.bench_with_input(BenchmarkId::new("blake3", size), &data, |b, d| {
            b.iter(|| black_box(blake3::hash(d)))
        });
    }
    group.finish();
}

criterion_group!(hashing, benches);
criterion_main!(hashing);
