//! `rmi`, `gc` and reference-count updates on a store holding many
//! images: 1,000 images of 21 layers each (one base layer all share, 20 of
//! their own: 20,001 layers), stored through the real import pipeline from
//! tiny generated layers, so records, blobs and layer folders are all real
//! and every sweep deletes real files.
//!
//! - `rmi/one_image`: `Store::rmi` of one image (its 20 unique layers, their
//!   blobs, manifest and config go); the image is stored again, untimed,
//!   before the next iteration.
//! - `gc/steady`, `gc/dry_run`: `Store::gc` of the whole store with nothing
//!   to sweep: the mark over every image, the scan of every blob file and
//!   layer folder.
//! - `refcounts/batch`: one image's worth of reference counts (21 layer and
//!   23 blob records) read, changed and written in one synced batch under
//!   the root lock, as import and rmi do.
//! - `refcounts/load_known_layers`: storing an image whose layers are all
//!   present (a new config over the same layers): no extraction, only
//!   records and counts; removed again, untimed.

mod common;

use std::hint::black_box;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use lstore::internals::import::{import, ImportRequest, LayerSource};
use lstore::internals::lock::RootLock;
use lstore::internals::meta::{BlobRecord, LayerRecord, Meta, CF_BLOBS, CF_LAYERS};
use lstore::internals::oci::{self, Manifest};
use lstore::{Descriptor, Digest, NoProgress, Reference, Store, StoreOptions};

use common::Scale;

/// One image to store: its layer blobs (uncompressed tars), config and
/// manifest.
struct ImageSpec {
    name: String,
    layers: Vec<Vec<u8>>,
    config: (Vec<u8>, Digest),
    manifest: (Vec<u8>, Digest, String),
    descriptors: Vec<Descriptor>,
}

impl ImageSpec {
    /// `variant` changes the config only (same layers, another image).
    fn new(name: String, base: &[u8], unique: Vec<Vec<u8>>, variant: u32) -> ImageSpec {
        let mut layers = vec![base.to_vec()];
        layers.extend(unique);
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Labels": {"bench.name": name, "bench.variant": variant.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config).expect("config json");
        let config_digest = Digest::of(&config_bytes);
        let descriptors: Vec<Descriptor> = layers
            .iter()
            .map(|l| Descriptor::new(oci::OCI_LAYER_TAR, Digest::of(l), l.len() as u64))
            .collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(oci::OCI_CONFIG, config_digest, config_bytes.len() as u64),
            layers: descriptors.clone(),
            subject: None,
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
        let manifest_digest = Digest::of(&manifest_bytes);
        ImageSpec {
            name,
            layers,
            config: (config_bytes, config_digest),
            manifest: (manifest_bytes, manifest_digest, oci::OCI_MANIFEST.into()),
            descriptors,
        }
    }

    fn store_in(&self, store: &Store) -> lstore::Result<lstore::Stored> {
        import(
            store,
            ImportRequest {
                names: vec![Reference::parse(&self.name)?],
                repo_digest: None,
                index: None,
                manifest: Some(self.manifest.clone()),
                config: self.config.clone(),
                layers: self.descriptors.iter().cloned().map(Some).collect(),
                source: self,
                progress: &NoProgress,
            },
        )
    }
}

impl LayerSource for ImageSpec {
    fn open(&self, index: usize) -> lstore::Result<Box<dyn Read + Send>> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| lstore::Error::Invalid(format!("no layer #{index}")))?;
        Ok(Box::new(io::Cursor::new(layer.clone())))
    }
}

fn tiny_layer(image: usize, layer: usize) -> Vec<u8> {
    common::layer_tar(&[common::FileSpec {
        path: format!("srv/i{image}/l{layer}.txt"),
        data: format!("image {image} layer {layer}\n").into_bytes(),
    }])
}

/// The store and the images in it.
struct Fixture {
    _dir: Option<tempfile::TempDir>,
    store: Store,
    images: Vec<ImageSpec>,
    unique_layers: usize,
}

fn build(images: usize, unique_layers: usize) -> Fixture {
    // LSTORE_BENCH_KEEP_STORE=DIR keeps the store in DIR and reuses it on
    // the next run (building it takes minutes), e.g. to time the CLI on it.
    let kept = std::env::var_os("LSTORE_BENCH_KEEP_STORE").map(std::path::PathBuf::from);
    let dir = match &kept {
        Some(_) => None,
        None => Some(common::scratch("removal")),
    };
    let store_path = match (&kept, &dir) {
        (Some(k), _) => k.join("store"),
        (None, Some(d)) => d.path().join("store"),
        (None, None) => unreachable!("one of the two is set"),
    };
    let marker = store_path.with_file_name(format!("complete-{images}x{unique_layers}"));
    let reuse = marker.exists();
    let store = Store::open(&store_path, StoreOptions::default()).expect("store");
    let base = common::layer_tar(&[common::FileSpec {
        path: "etc/os-release".into(),
        data: b"ID=bench\n".to_vec(),
    }]);
    let start = Instant::now();
    let specs: Vec<ImageSpec> = (0..images)
        .map(|i| {
            let unique = (0..unique_layers).map(|l| tiny_layer(i, l)).collect();
            ImageSpec::new(format!("bench/img{i:04}:v1"), &base, unique, 0)
        })
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        if reuse {
            break;
        }
        spec.store_in(&store).expect("store image");
        if (i + 1) % 100 == 0 {
            eprintln!(
                "removal: stored {} of {images} images ({:.0?})",
                i + 1,
                start.elapsed()
            );
        }
    }
    if kept.is_some() && !reuse {
        std::fs::write(&marker, b"").expect("marker");
    }
    Fixture {
        _dir: dir,
        store,
        images: specs,
        unique_layers,
    }
}

fn rmi_bench(c: &mut Criterion, f: &Fixture, scale: Scale) {
    let mut group = c.benchmark_group(format!("rmi/{}_images", f.images.len()));
    group
        .sample_size(scale.pick(30, 10))
        .sampling_mode(SamplingMode::Flat);
    let mut next = 0usize;
    group.bench_function("one_image", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let spec = &f.images[next % f.images.len()];
                next += 1;
                let start = Instant::now();
                let removal = f.store.rmi(std::slice::from_ref(&spec.name)).expect("rmi");
                spent += start.elapsed();
                assert_eq!(removal.deleted_layers, f.unique_layers as u64);
                spec.store_in(&f.store).expect("store again");
            }
            spent
        })
    });
    group.finish();
}

fn gc_bench(c: &mut Criterion, f: &Fixture, scale: Scale) {
    let mut group = c.benchmark_group(format!("gc/{}_images", f.images.len()));
    group.sample_size(scale.pick(20, 10));
    group.bench_function("steady", |b| {
        b.iter(|| {
            let removal = f.store.gc(false).expect("gc");
            assert_eq!(removal.deleted_layers, 0);
            black_box(removal)
        })
    });
    group.bench_function("dry_run", |b| {
        b.iter(|| black_box(f.store.gc(true).expect("gc")))
    });
    group.finish();
}

/// Adds `delta` to the counts of every layer and blob of `spec`, in one
/// synced batch under the root lock.
fn shift_counts(root: &std::path::Path, spec: &ImageSpec, delta: i64) -> lstore::Result<()> {
    let _lock = RootLock::acquire(root, &|_| {})?;
    let meta = Meta::open(&root.join("db"))?;
    let mut batch = meta.batch();
    let shift = |refs: u64| refs.saturating_add_signed(delta);
    let layers: Vec<Digest> = lstore::internals::digest::chain_ids(
        &spec
            .layers
            .iter()
            .map(|l| Digest::of(l))
            .collect::<Vec<_>>(),
    );
    for chain in &layers {
        if let Some(mut rec) = meta.get::<LayerRecord>(CF_LAYERS, chain.as_bytes())? {
            rec.refs = shift(rec.refs);
            batch.put(CF_LAYERS, chain.as_bytes(), &rec)?;
        }
    }
    let blobs = spec
        .descriptors
        .iter()
        .map(|d| d.digest)
        .chain([spec.config.1, spec.manifest.1]);
    for blob in blobs {
        if let Some(mut rec) = meta.get::<BlobRecord>(CF_BLOBS, blob.as_bytes())? {
            rec.refs = shift(rec.refs);
            batch.put(CF_BLOBS, blob.as_bytes(), &rec)?;
        }
    }
    batch.commit()
}

fn refcount_bench(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group(format!("refcounts/{}_images", f.images.len()));
    group.sample_size(20);
    let spec = &f.images[0];
    let records = (spec.layers.len() * 2 + 2) as u64;
    group.throughput(Throughput::Elements(records));
    let mut net = 0i64;
    group.bench_function("batch", |b| {
        b.iter(|| {
            // Up and down in turn, so the counts end where they began.
            let delta = if net > 0 { -1 } else { 1 };
            shift_counts(f.store.root(), spec, delta).expect("refcounts");
            net += delta;
        })
    });
    if net != 0 {
        shift_counts(f.store.root(), spec, -net).expect("refcounts");
    }

    // Same layers, another config: an image that costs only records.
    let twin = ImageSpec::new(
        "bench/twin:v1".into(),
        &spec.layers[0],
        spec.layers[1..].to_vec(),
        1,
    );
    group.throughput(Throughput::Elements(1));
    group.bench_function("load_known_layers", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let stored = twin.store_in(&f.store).expect("store twin");
                spent += start.elapsed();
                assert_eq!(stored.layers_new, 0);
                f.store
                    .rmi(std::slice::from_ref(&twin.name))
                    .expect("rmi twin");
            }
            spent
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let scale = Scale::from_env();
    let fixture = build(scale.pick(1000, 10), scale.pick(20, 2));
    rmi_bench(c, &fixture, scale);
    gc_bench(c, &fixture, scale);
    refcount_bench(c, &fixture);
    // Nothing may be left over: every bench restored what it changed.
    let check = fixture.store.gc(true).expect("gc");
    assert_eq!(check.refcount_fixes, 0, "reference counts drifted");
    assert_eq!(check.deleted_layers, 0, "layers left unreferenced");
}

criterion_group!(removal, benches);
criterion_main!(removal);
