//! Storing an image: the pipeline that `load` (and `pull`) feed.
//!
//! 1. Under the root lock: a lease names every blob and layer the image
//!    needs, and the store sees which of them it already has.
//! 2. Without the lock, layers in parallel: each missing layer is read once;
//!    the bytes are teed into the blob store while they are hashed,
//!    decompressed, hashed again (diff_id) and applied under `tmp/`; both
//!    digests are checked, then the blob and the layer folder are committed.
//!    A per-layer lock keeps two processes from extracting the same layer.
//! 3. Under the root lock: config, manifest and index blobs, the records and
//!    reference counts and the tags, in one atomic batch.
//!
//! On failure, what this command created and nothing else uses is removed,
//! so a failed import leaves the store as it was.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::content::SizedReader;
use crate::digest::{chain_ids, Digest, HashingReader};
use crate::error::{Error, Result};
use crate::images::Stored;
use crate::lock::{live_leases, LayerLock, Lease, LeaseContent};
use crate::meta::{
    BlobRecord, ImageLayer, ImageRecord, LayerRecord, Meta, TagRecord, CF_BLOBS, CF_IMAGES,
    CF_LAYERS, CF_TAGS,
};
use crate::oci::{self, Compression, Descriptor, ImageConfig};
use crate::reference::Reference;
use crate::share::index::LayerEntries;
use crate::store::Store;
use crate::unpack;

/// Where the bytes of each layer blob come from.
pub trait LayerSource: Sync {
    /// Opens layer `index`'s blob from its first byte.
    fn open(&self, index: usize) -> Result<Box<dyn Read + Send>>;

    /// Whether a download broken by the source is worth keeping for a later
    /// command to resume (a network source: yes; a local archive: no).
    fn resumable(&self) -> bool {
        false
    }

    /// Opens layer `index`'s blob from byte `offset` on (to resume a
    /// download). The default reads and drops the first bytes.
    fn open_at(&self, index: usize, offset: u64) -> Result<Box<dyn Read + Send>> {
        let mut r = self.open(index)?;
        let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())
            .map_err(|e| Error::io(format!("read layer #{}", index + 1), e))?;
        if skipped != offset {
            return Err(Error::Invalid(format!(
                "layer #{} is shorter than {offset} bytes",
                index + 1
            )));
        }
        Ok(r)
    }
}

/// Marks that the source (not decompression, not the disk) failed, so a
/// partial download is worth keeping for a resume.
struct WatchSource {
    inner: Box<dyn Read + Send>,
    failed: Arc<AtomicBool>,
}

impl Read for WatchSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            // Data the source itself calls wrong is not worth resuming.
            if e.kind() != io::ErrorKind::InvalidData {
                self.failed.store(true, Ordering::Relaxed);
            }
        })
    }
}

/// Reports the progress of layers during [`Store::load`] and
/// [`Store::pull`]; called from several threads (layers are stored in
/// parallel). `index` is the layer's place in the manifest, base first.
/// Every method does nothing unless implemented.
pub trait ImportProgress: Sync {
    /// Layer `index` begins; `desc` is its descriptor when known before
    /// reading, `reused` says the store has it already (nothing is read).
    fn layer_started(&self, _index: usize, _desc: Option<&Descriptor>, _reused: bool) {}
    /// `bytes` more of layer `index`'s blob were read.
    fn layer_bytes(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is verified and stored.
    fn layer_done(&self, _index: usize) {}
}

/// No progress reporting.
pub struct NoProgress;
impl ImportProgress for NoProgress {}

/// An image to store.
pub struct ImportRequest<'a> {
    /// The names to tag the image with.
    pub names: Vec<Reference>,
    /// The digest the names resolved to at a registry (index or manifest).
    pub repo_digest: Option<Digest>,
    /// The index the manifest was chosen from: its bytes and digest.
    pub index: Option<(Vec<u8>, Digest)>,
    /// The manifest as distributed; None to make a Docker schema2 manifest
    /// (docker-archives carry none).
    pub manifest: Option<(Vec<u8>, Digest, String)>,
    /// The config: its bytes and digest.
    pub config: (Vec<u8>, Digest),
    /// Expected layer descriptors; None where only reading tells.
    pub layers: Vec<Option<Descriptor>>,
    /// Where the layer blobs are read from.
    pub source: &'a dyn LayerSource,
    /// Told about each layer.
    pub progress: &'a dyn ImportProgress,
}

/// The result of one layer.
#[derive(Debug, Clone)]
struct DoneLayer {
    desc: Descriptor,
    size: u64,
    file_bytes: u64,
    reused: bool,
    /// Its entries for the content index (file sharing), when this command
    /// extracted it.
    index_entries: LayerEntries,
}

/// What reading one layer blob gave.
struct LayerRead {
    media_type: String,
    digest: Digest,
    compressed_size: u64,
    size: u64,
    file_bytes: u64,
    /// Another command had extracted it: only measured.
    present: bool,
    index_entries: LayerEntries,
}

/// Blobs and layers this command created, to remove again on failure.
#[derive(Default)]
struct Created {
    blobs: Mutex<Vec<Digest>>,
    layers: Mutex<Vec<Digest>>,
    /// The copy of the content index the import's layers link through
    /// (`share::prelink`): opened by the first layer extracted, one for
    /// the import (it holds a file per table of the database open).
    index_copy: std::sync::OnceLock<Option<Arc<crate::share::Prelinker>>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Stores one image; see the module comment.
pub fn import(store: &Store, req: ImportRequest<'_>) -> Result<Stored> {
    let config: ImageConfig = serde_json::from_slice(&req.config.0)
        .map_err(|e| Error::Invalid(format!("image config {}: {e}", req.config.1)))?;
    if Digest::of(&req.config.0) != req.config.1 {
        return Err(Error::DigestMismatch {
            what: "image config".into(),
            expected: req.config.1,
            actual: Digest::of(&req.config.0),
        });
    }
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != req.layers.len() {
        return Err(Error::Invalid(format!(
            "the manifest lists {} layers but the config has {} diff_ids",
            req.layers.len(),
            diff_ids.len()
        )));
    }
    for d in req.layers.iter().flatten() {
        if Compression::from_layer_media_type(&d.media_type).is_none() {
            return Err(Error::Unsupported(format!(
                "layer {}: unsupported media type {}",
                d.digest, d.media_type
            )));
        }
    }
    let chains = chain_ids(&diff_ids);

    // 1. Lease and inventory, under the root lock.
    let mut wanted_blobs: Vec<Digest> = req.layers.iter().flatten().map(|d| d.digest).collect();
    wanted_blobs.push(req.config.1);
    let (lease, known_layers, known_blobs) = store.read_session(|meta| {
        let lease = store.lease(&LeaseContent {
            pid: std::process::id(),
            blobs: wanted_blobs.clone(),
            layers: chains.clone(),
        })?;
        let mut known_layers = BTreeMap::new();
        for c in &chains {
            if let Some(rec) = meta.layer(c)? {
                if store.layers.is_present(c) {
                    known_layers.insert(*c, rec);
                }
            }
        }
        let mut known_blobs = BTreeMap::new();
        for d in &wanted_blobs {
            if let Some(rec) = meta.blob(d)? {
                if store.content.contains(d) {
                    known_blobs.insert(*d, rec);
                }
            }
        }
        // A layer blob dropped once its layer was stored counts as here
        // while the layer is: the layer is reused, nothing is read again.
        for (i, d) in req.layers.iter().enumerate() {
            let Some(d) = d else { continue };
            if known_layers.contains_key(&chains[i]) && meta.dropped(&d.digest)?.is_some() {
                if let Some(rec) = meta.blob(&d.digest)? {
                    known_blobs.insert(d.digest, rec);
                }
            }
        }
        Ok((lease, known_layers, known_blobs))
    })?;

    let created = Created::default();
    let result = import_with_lease(
        store,
        &req,
        &config,
        &diff_ids,
        &chains,
        &lease,
        &known_layers,
        &known_blobs,
        &created,
    );
    match result {
        Ok(stored) => {
            // `keep-layer-blobs false`: the image is stored; its layer
            // blobs go now, while the lease still holds them. A blob that
            // cannot go yet (its layer does not rebuild to its diff id, a
            // passing failure) stays, and the next gc tries again.
            if matches!(store.keeps_layer_blobs(), Ok(false)) {
                let _ = crate::layer_blobs::drop_layer_blobs(
                    store,
                    Some(&[stored.digest]),
                    Some(lease.id()),
                );
            }
            Ok(stored)
        }
        Err(e) => {
            let _ = clean_up_failed(store, &lease, &created);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn import_with_lease(
    store: &Store,
    req: &ImportRequest<'_>,
    config: &ImageConfig,
    diff_ids: &[Digest],
    chains: &[Digest],
    lease: &Lease,
    known_layers: &BTreeMap<Digest, LayerRecord>,
    known_blobs: &BTreeMap<Digest, BlobRecord>,
    created: &Created,
) -> Result<Stored> {
    // 2. Layers, in parallel.
    let done: Vec<DoneLayer> = (0..req.layers.len())
        .into_par_iter()
        .map(|i| {
            let r = store_layer(
                store,
                req,
                i,
                &diff_ids[i],
                chains,
                lease,
                known_layers,
                known_blobs,
                created,
            );
            req.progress.layer_done(i);
            r
        })
        .collect::<Result<Vec<_>>>()?;

    // The manifest: as distributed, or made for a docker-archive.
    let (manifest_bytes, manifest_digest, manifest_type) = match &req.manifest {
        Some(m) => m.clone(),
        None => docker_manifest(&req.config, &done)?,
    };

    // 3. Records, under the root lock.
    let names = req.names.clone();
    store.session(|meta| {
        commit(
            store,
            meta,
            req,
            config,
            chains,
            &done,
            (&manifest_bytes, manifest_digest, &manifest_type),
            &names,
            lease,
        )
    })?;
    Ok(Stored {
        id: req.config.1,
        digest: manifest_digest,
        names: names.iter().map(|n| n.familiar()).collect(),
        layers_new: done.iter().filter(|d| !d.reused).count(),
        layers_reused: done.iter().filter(|d| d.reused).count(),
        bytes_read: done.iter().filter(|d| !d.reused).map(|d| d.desc.size).sum(),
    })
}

/// Makes the Docker schema2 manifest of a docker-archive image.
fn docker_manifest(
    config: &(Vec<u8>, Digest),
    layers: &[DoneLayer],
) -> Result<(Vec<u8>, Digest, String)> {
    let m = oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::DOCKER_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(oci::DOCKER_CONFIG, config.1, config.0.len() as u64),
        layers: layers.iter().map(|l| l.desc.clone()).collect(),
        subject: None,
        annotations: None,
    };
    let bytes = serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))?;
    let digest = Digest::of(&bytes);
    Ok((bytes, digest, oci::DOCKER_MANIFEST.into()))
}

/// Peeks at the first bytes of a stream without losing them.
fn sniff(mut r: Box<dyn Read + Send>) -> io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let kind = Compression::sniff(&head[..n]);
    Ok((kind, Box::new(io::Cursor::new(head[..n].to_vec()).chain(r))))
}

/// A failure to write the blob copy, carried through the layer reader so
/// that it is reported as what it is (a full disk, say) rather than as a
/// failure to read the layer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BlobWriteFailed(io::Error);

/// The error of unpacking (or measuring) a layer read through a `Tee`.
fn layer_error(layer: &str, source: unpack::UnpackError) -> Error {
    if let unpack::UnpackError::Read { source: io_err, .. } | unpack::UnpackError::Io(io_err) =
        &source
    {
        if let Some(BlobWriteFailed(write)) = io_err.get_ref().and_then(|e| e.downcast_ref()) {
            return Error::Io {
                context: format!("layer {layer}: write blob"),
                source: io::Error::new(write.kind(), write.to_string()),
            };
        }
    }
    Error::Unpack {
        layer: layer.to_string(),
        source,
    }
}

/// Copies everything read into a blob writer.
struct Tee<'a, R> {
    inner: R,
    sink: Option<&'a mut crate::content::BlobWriter>,
    progress: &'a dyn ImportProgress,
    index: usize,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = self.sink.as_deref_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| io::Error::new(e.kind(), BlobWriteFailed(e)))?;
        }
        self.progress.layer_bytes(self.index, n as u64);
        Ok(n)
    }
}

#[allow(clippy::too_many_arguments)]
fn store_layer(
    store: &Store,
    req: &ImportRequest<'_>,
    i: usize,
    diff_id: &Digest,
    chains: &[Digest],
    lease: &Lease,
    known_layers: &BTreeMap<Digest, LayerRecord>,
    known_blobs: &BTreeMap<Digest, BlobRecord>,
    created: &Created,
) -> Result<DoneLayer> {
    let chain = chains[i];
    let expected = req.layers[i].as_ref();
    let layer_name = expected
        .map(|d| d.digest.to_string())
        .unwrap_or_else(|| format!("#{}", i + 1));
    let have_blob = expected.is_some_and(|d| known_blobs.contains_key(&d.digest));
    if let (Some(rec), Some(desc), true) = (known_layers.get(&chain), expected, have_blob) {
        req.progress.layer_started(i, expected, true);
        return Ok(DoneLayer {
            desc: desc.clone(),
            size: rec.size,
            file_bytes: rec.file_bytes,
            reused: true,
            index_entries: Vec::new(),
        });
    }
    req.progress.layer_started(i, expected, false);
    let _layer_lock = LayerLock::acquire(&store.locks_dir(), &chain, &*store.opts.on_wait)?;

    // Read from the store when the blob is here, else from the source;
    // a download a dead command left half done is resumed where it stopped.
    let source_failed = Arc::new(AtomicBool::new(false));
    let (reader, mut writer): (Box<dyn Read + Send>, _) = match (expected, have_blob) {
        (Some(d), true) => (Box::new(store.content.open(&d.digest)?), None),
        (Some(d), false) => {
            let name = crate::content::ContentStore::partial_name(lease.id(), &d.digest);
            let live = live_lease_ids(store);
            let claimed = store
                .content
                .claim_partial(&d.digest, &name, &|id| live.iter().any(|l| l == id))?
                .filter(|(_, held)| *held < d.size);
            let (mut w, held) = match claimed {
                Some(c) => c,
                None => (store.content.writer(&name)?, 0),
            };
            w.hashed_by_caller();
            let opened = if held > 0 {
                req.source.open_at(i, held).map(|rest| {
                    let done = std::fs::File::open(store.content.ingest_path(&name))
                        .map(|f| Box::new(f.take(held)) as Box<dyn Read + Send>);
                    (done, rest)
                })
            } else {
                req.source
                    .open(i)
                    .map(|r| (Ok(Box::new(io::empty()) as Box<dyn Read + Send>), r))
            };
            match opened {
                Ok((Ok(done), rest)) => {
                    let rest = WatchSource {
                        inner: rest,
                        failed: source_failed.clone(),
                    };
                    (Box::new(done.chain(rest)) as Box<dyn Read + Send>, Some(w))
                }
                Ok((Err(e), _)) => return Err(Error::io(format!("read back {name}"), e)),
                Err(e) => {
                    if req.source.resumable() {
                        w.keep_partial();
                    }
                    return Err(e);
                }
            }
        }
        (None, _) => {
            let mut w = store.content.writer(&store.unique(lease, "blob"))?;
            w.hashed_by_caller();
            (req.source.open(i)?, Some(w))
        }
    };
    // A blob longer or shorter than its descriptor says is reported as
    // such, not as whatever the decompressor made of the cut.
    let (reader, size_check) = match expected {
        Some(d) => {
            let (r, check) = SizedReader::new(reader, d.size);
            (Box::new(r) as Box<dyn Read + Send>, Some(check))
        }
        None => (reader, None),
    };
    let outcome = extract_or_measure(
        store,
        req,
        i,
        diff_id,
        chains,
        lease,
        expected,
        &layer_name,
        reader,
        writer.as_mut(),
        created,
    );
    let read = match outcome {
        Ok(v) => v,
        Err(e) => {
            let e = size_check
                .and_then(|c| c.error(&format!("layer {layer_name}")))
                .unwrap_or(e);
            if source_failed.load(Ordering::Relaxed) && req.source.resumable() {
                if let Some(w) = writer.take() {
                    w.keep_partial();
                }
            }
            return Err(e);
        }
    };
    if let Some(w) = writer.take() {
        let (d, _) = commit_blob(store, lease, w, expected, read.digest, read.compressed_size)?;
        lock_list(&created.blobs)?.push(d);
    }
    let file_bytes = if read.present {
        known_layers.get(&chain).map(|r| r.file_bytes).unwrap_or(0)
    } else {
        read.file_bytes
    };
    Ok(DoneLayer {
        desc: Descriptor::new(&read.media_type, read.digest, read.compressed_size),
        size: read.size,
        file_bytes,
        reused: false,
        index_entries: read.index_entries,
    })
}

/// Reads one layer blob through the one-pass pipeline: extracts it (or,
/// when another command extracted it meanwhile, only hashes it) and checks
/// both digests. A layer it extracts shares its files with the layers
/// already here (`crate::share`) before it is renamed into place.
#[allow(clippy::too_many_arguments)]
fn extract_or_measure(
    store: &Store,
    req: &ImportRequest<'_>,
    i: usize,
    diff_id: &Digest,
    chains: &[Digest],
    lease: &Lease,
    expected: Option<&Descriptor>,
    layer_name: &str,
    reader: Box<dyn Read + Send>,
    writer: Option<&mut crate::content::BlobWriter>,
    created: &Created,
) -> Result<LayerRead> {
    let chain = chains[i];
    let (sniffed, reader) =
        sniff(reader).map_err(|e| Error::io(format!("read layer {layer_name}"), e))?;
    let (declared, media_type) = match expected {
        Some(d) => (
            Compression::from_layer_media_type(&d.media_type).unwrap_or(sniffed),
            d.media_type.clone(),
        ),
        None => (
            sniffed,
            match sniffed {
                Compression::Gzip => oci::DOCKER_LAYER_GZIP.to_string(),
                Compression::None => oci::DOCKER_LAYER_TAR.to_string(),
                Compression::Zstd => oci::OCI_LAYER_ZSTD.to_string(),
            },
        ),
    };
    let mut tee = Tee {
        inner: reader,
        sink: writer,
        progress: req.progress,
        index: i,
    };

    let present = store.layers.is_present(&chain);
    let mut index_entries = Vec::new();
    let (unpacked_digest, csize, got_diff_id, size, file_bytes) = if present {
        // Another command extracted it while we waited: only the blob and
        // the sizes are needed, so hash without applying.
        let m = measure(&mut tee, declared, store.opts.limits.max_layer_size)
            .map_err(|source| layer_error(layer_name, source))?;
        (m.0, m.1, m.2, m.3, 0)
    } else {
        let staging = store.layers.stage(&store.unique(lease, "layer"))?;
        // The first layer has no parent: its whiteouts hide nothing.
        let position = if i == 0 {
            unpack::LayerPosition::Base
        } else {
            unpack::LayerPosition::Upper
        };
        // The tar-split record is made in the same pass, inside the staged
        // folder, so it appears with the layer.
        // Small files other layers hold are linked while extracted
        // (`share::prelink`), through a copy of the index opened now.
        let prelinker = created.index_copy.get_or_init(|| store.prelinker()).clone();
        let (u, _, written) = unpack::unpack_layer_recorded(
            &mut tee,
            declared,
            &staging.diff(),
            &store.opts.limits,
            position,
            staging.folder(),
            prelinker.clone(),
        )
        .map_err(|source| layer_error(layer_name, source))?;
        // Nothing becomes visible before both digests are checked.
        verify_layer(
            layer_name,
            expected,
            diff_id,
            &u.compressed_digest,
            u.compressed_size,
            &u.diff_id,
        )?;
        // Under the shared root lock: no gc removes a layer linked to.
        let shared = store.read_session(|meta| {
            let generation = store.generation();
            let unchanged = prelinker
                .as_ref()
                .is_some_and(|p| p.unchanged_at(generation.as_deref()));
            crate::share::share_layer(
                &store.layers,
                meta,
                &staging.diff(),
                written,
                &Default::default(),
                unchanged,
                &store.reflink,
            )
        })?;
        let parents: Vec<Digest> = chains[..i].iter().rev().copied().collect();
        if store.layers.commit(staging, &chain, &parents)? {
            index_entries = shared.entries;
        }
        lock_list(&created.layers)?.push(chain);
        (
            u.compressed_digest,
            u.compressed_size,
            u.diff_id,
            u.size,
            u.file_bytes,
        )
    };
    verify_layer(
        layer_name,
        expected,
        diff_id,
        &unpacked_digest,
        csize,
        &got_diff_id,
    )?;
    Ok(LayerRead {
        media_type,
        digest: unpacked_digest,
        compressed_size: csize,
        size,
        file_bytes,
        present,
        index_entries,
    })
}

/// Ids of the leases of running commands.
fn live_lease_ids(store: &Store) -> Vec<String> {
    live_leases(&store.root().join("leases"))
        .map(|v| v.into_iter().filter(|l| l.live).map(|l| l.id).collect())
        .unwrap_or_default()
}

fn lock_list(list: &Mutex<Vec<Digest>>) -> Result<std::sync::MutexGuard<'_, Vec<Digest>>> {
    list.lock()
        .map_err(|_| Error::Invalid("a layer thread panicked".into()))
}

/// Commits a layer blob under `digest`, the sha256 the extraction pipeline
/// computed over every byte it read, which are the bytes the writer got
/// (see `Tee`; `written` must equal what the pipeline counted). A digest the
/// lease did not name in advance (a compressed docker-archive layer) is
/// added to it first, under the root lock, so a concurrent gc cannot take
/// the blob for an orphan.
fn commit_blob(
    store: &Store,
    lease: &Lease,
    writer: crate::content::BlobWriter,
    expected: Option<&Descriptor>,
    digest: Digest,
    read: u64,
) -> Result<(Digest, u64)> {
    if writer.written() != read {
        return Err(Error::Invalid(format!(
            "blob {digest}: {} bytes stored but {read} read",
            writer.written()
        )));
    }
    match expected {
        Some(d) => writer.commit_hashed(digest, Some(&d.digest), Some(d.size), |_| Ok(())),
        None => writer.commit_hashed(digest, None, None, |d| {
            let _lock = crate::lock::RootLock::acquire(store.root(), &*store.opts.on_wait)?;
            lease.add_blob(*d)
        }),
    }
}

fn verify_layer(
    name: &str,
    expected: Option<&Descriptor>,
    diff_id: &Digest,
    digest: &Digest,
    size: u64,
    got_diff_id: &Digest,
) -> Result<()> {
    if let Some(e) = expected {
        if e.digest != *digest {
            return Err(Error::DigestMismatch {
                what: format!("layer {name}"),
                expected: e.digest,
                actual: *digest,
            });
        }
        if e.size != size {
            return Err(Error::SizeMismatch {
                what: format!("layer {name}"),
                expected: e.size,
                actual: size,
            });
        }
    }
    if got_diff_id != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("layer {name}: uncompressed content (diff_id)"),
            expected: *diff_id,
            actual: *got_diff_id,
        });
    }
    Ok(())
}

/// Hashes a layer blob and its uncompressed stream without applying it:
/// (digest, size, diff_id, uncompressed size).
fn measure(
    blob: &mut dyn Read,
    declared: Compression,
    limit: u64,
) -> std::result::Result<(Digest, u64, Digest, u64), unpack::UnpackError> {
    let mut outer = HashingReader::new(blob);
    let (diff_id, size) = {
        let inner: Box<dyn Read + '_> = match declared {
            Compression::None => Box::new(&mut outer),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(1 << 16, &mut outer),
            )),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut outer).map_err(unpack::UnpackError::from)?,
            ),
        };
        // The same bound as extraction: a bomb costs no unbounded CPU here.
        let (diff_id, size) = HashingReader::new(inner.take(limit.saturating_add(1)))
            .drain_and_finish()
            .map_err(unpack::UnpackError::from)?;
        if size > limit {
            return Err(unpack::UnpackError::TooLarge { limit });
        }
        (diff_id, size)
    };
    let (digest, csize) = outer
        .drain_and_finish()
        .map_err(unpack::UnpackError::from)?;
    Ok((digest, csize, diff_id, size))
}

#[allow(clippy::too_many_arguments)]
fn commit(
    store: &Store,
    meta: &Meta,
    req: &ImportRequest<'_>,
    config: &ImageConfig,
    chains: &[Digest],
    done: &[DoneLayer],
    manifest: (&[u8], Digest, &str),
    names: &[Reference],
    lease: &Lease,
) -> Result<()> {
    let (manifest_bytes, manifest_digest, manifest_type) = manifest;
    // Everything the image needs must be here (the lease kept gc away);
    // checked before a blob is written, so that a failure writes none.
    for (i, c) in chains.iter().enumerate() {
        if !store.layers.is_present(c) {
            return Err(Error::Invalid(format!(
                "layer {} vanished while storing",
                done[i].desc.digest
            )));
        }
        if !store.content.contains(&done[i].desc.digest)
            && meta.dropped(&done[i].desc.digest)?.is_none()
        {
            return Err(Error::Invalid(format!(
                "blob {} vanished while storing",
                done[i].desc.digest
            )));
        }
    }
    // A layer extracted without its tar-split record (one containerd
    // unpacked through `lstore snapshotter`) gets it from its blob, now
    // stored, before the containers-storage view is written from it. The
    // image is stored either way: a failure here is what fsck reports and
    // `fsck --repair` mends.
    for (i, c) in chains.iter().enumerate() {
        if !store.layers.tar_split_path(c).is_file() {
            let d = &done[i].desc;
            let _ = crate::tarsplit::regenerate(
                store,
                c,
                &config.rootfs.diff_ids[i],
                &d.digest,
                &d.media_type,
            );
        }
    }
    let existing = meta.image(&manifest_digest)?;
    let index = index_to_record(req.index.as_ref(), existing.as_ref());
    // Small blobs: written here, under the lock, so gc cannot miss them,
    // and only those the records below name.
    store.content.put_bytes(
        &store.unique(lease, "config"),
        &req.config.0,
        Some(&req.config.1),
    )?;
    store.content.put_bytes(
        &store.unique(lease, "manifest"),
        manifest_bytes,
        Some(&manifest_digest),
    )?;
    if let Some((bytes, d)) = index {
        store
            .content
            .put_bytes(&store.unique(lease, "index"), bytes, Some(d))?;
    }

    let image = ImageRecord {
        manifest: manifest_digest,
        manifest_media_type: manifest_type.to_string(),
        manifest_size: manifest_bytes.len() as u64,
        config: req.config.1,
        config_size: req.config.0.len() as u64,
        index: req.index.as_ref().map(|(_, d)| *d),
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone().filter(|v| !v.is_empty()),
        created: config.created.clone(),
        layers: done
            .iter()
            .zip(chains)
            .zip(&config.rootfs.diff_ids)
            .map(|((l, c), diff_id)| ImageLayer {
                digest: l.desc.digest,
                diff_id: *diff_id,
                chain_id: *c,
                media_type: l.desc.media_type.clone(),
                compressed_size: l.desc.size,
                size: l.size,
            })
            .collect(),
        stored_at: now_secs(),
    };

    let mut batch = meta.batch();
    if let (Some(mut stored), Some((bytes, d))) = (existing.clone(), index) {
        if stored.index.is_none() {
            // Stored before without an index, now pulled through one: the
            // image holds on to it from now on.
            stored.index = Some(*d);
            let mut rec = meta.blob(d)?.unwrap_or_else(|| BlobRecord {
                size: bytes.len() as u64,
                media_type: oci::OCI_INDEX.to_string(),
                refs: 0,
            });
            rec.refs += 1;
            batch.put(CF_BLOBS, d.as_bytes(), &rec)?;
            batch.put(CF_IMAGES, manifest_digest.as_bytes(), &stored)?;
        }
    }
    if existing.is_none() {
        // New image: count its uses of every blob and layer.
        let mut sizes: BTreeMap<Digest, (u64, String)> = BTreeMap::new();
        sizes.insert(
            manifest_digest,
            (manifest_bytes.len() as u64, manifest_type.to_string()),
        );
        let config_type = if manifest_type == oci::DOCKER_MANIFEST {
            oci::DOCKER_CONFIG
        } else {
            oci::OCI_CONFIG
        };
        sizes.insert(
            req.config.1,
            (req.config.0.len() as u64, config_type.to_string()),
        );
        if let Some((bytes, d)) = &req.index {
            sizes.insert(*d, (bytes.len() as u64, oci::OCI_INDEX.to_string()));
        }
        for l in done {
            sizes.insert(l.desc.digest, (l.desc.size, l.desc.media_type.clone()));
        }
        for b in image.blobs() {
            let mut rec = meta.blob(&b)?.unwrap_or_else(|| {
                let (size, media_type) = sizes.get(&b).cloned().unwrap_or((0, String::new()));
                BlobRecord {
                    size,
                    media_type,
                    refs: 0,
                }
            });
            rec.refs += 1;
            batch.put(CF_BLOBS, b.as_bytes(), &rec)?;
        }
        for (i, c) in chains.iter().enumerate() {
            if chains[..i].contains(c) {
                continue;
            }
            let mut rec = meta.layer(c)?.unwrap_or(LayerRecord {
                diff_id: config.rootfs.diff_ids[i],
                parent: if i == 0 { None } else { Some(chains[i - 1]) },
                size: done[i].size,
                file_bytes: done[i].file_bytes,
                refs: 0,
            });
            if rec.file_bytes == 0 && done[i].file_bytes > 0 {
                rec.file_bytes = done[i].file_bytes;
            }
            // A layer containerd unpacked (`lstore snapshotter`) is recorded
            // without its diff id and tar size, which the image gives (a
            // chain id fixes the diff id of its layer).
            rec.diff_id = config.rootfs.diff_ids[i];
            if rec.size == 0 {
                rec.size = done[i].size;
            }
            rec.refs += 1;
            batch.put(CF_LAYERS, c.as_bytes(), &rec)?;
        }
        batch.put(CF_IMAGES, manifest_digest.as_bytes(), &image)?;
    } else if let (Some(mut known), Some((bytes, d))) = (existing, &req.index) {
        // An image first stored without an index (a platform manifest
        // pushed or pulled by digest) and now reached through one: the
        // index is recorded, and counted, so that its names can serve it.
        if known.index.is_none() {
            let mut rec = meta.blob(d)?.unwrap_or(BlobRecord {
                size: bytes.len() as u64,
                media_type: oci::OCI_INDEX.to_string(),
                refs: 0,
            });
            rec.refs += 1;
            batch.put(CF_BLOBS, d.as_bytes(), &rec)?;
            known.index = Some(*d);
            batch.put(CF_IMAGES, manifest_digest.as_bytes(), &known)?;
        }
    }
    // The content index learns the layers extracted here, with their records.
    // Entries of a folder extracted before (its record kept) are dropped
    // first: they described files this folder no longer has.
    for (l, c) in done.iter().zip(chains) {
        if !l.index_entries.is_empty() {
            crate::share::index::drop_layer(meta, &mut batch, c)?;
            crate::share::index::put(&mut batch, c, &l.index_entries)?;
        }
    }
    for n in names {
        batch.put(
            CF_TAGS,
            n.to_string().as_bytes(),
            &TagRecord {
                image: manifest_digest,
                repo_digest: req.repo_digest,
            },
        )?;
    }
    batch.commit()
}

/// The index an import records, if any: the one it came through when the
/// image is new, or stored without an index (pulled by a platform tag,
/// then through a multi-platform one), or already holds this very index.
/// An image that holds another index keeps it, and this one is not written:
/// no record would name it.
fn index_to_record<'a>(
    index: Option<&'a (Vec<u8>, Digest)>,
    existing: Option<&ImageRecord>,
) -> Option<&'a (Vec<u8>, Digest)> {
    let (_, d) = index?;
    match existing.map(|img| img.index) {
        None | Some(None) => index,
        Some(Some(held)) if held == *d => index,
        Some(Some(_)) => None,
    }
}

/// Removes what a failed import created that nothing else uses or holds.
fn clean_up_failed(store: &Store, lease: &Lease, created: &Created) -> Result<()> {
    let blobs = created.blobs.lock().map(|v| v.clone()).unwrap_or_default();
    let layers = created.layers.lock().map(|v| v.clone()).unwrap_or_default();
    if blobs.is_empty() && layers.is_empty() {
        return Ok(());
    }
    store.session(|meta| {
        let others: Vec<LeaseContent> = live_leases(&store.root().join("leases"))?
            .into_iter()
            .filter(|l| l.live && l.id != lease.id())
            .filter_map(|l| l.content)
            .collect();
        for d in &blobs {
            if meta.blob(d)?.is_none() && !others.iter().any(|o| o.blobs.contains(d)) {
                store.content.remove(d)?;
            }
        }
        for c in &layers {
            if meta.layer(c)?.is_none() && !others.iter().any(|o| o.layers.contains(c)) {
                store.layers.remove(c, &store.unique(lease, "trash"))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A blob copy that cannot be written (a full disk) is reported as
    /// that, not as a failure to read the layer, whichever reader met it.
    #[test]
    fn a_failed_blob_write_is_named_as_such() {
        struct Full;
        impl io::Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let failed = Full
            .write_all(b"x")
            .map_err(|e| io::Error::new(e.kind(), BlobWriteFailed(e)))
            .unwrap_err();
        let read = unpack::UnpackError::Read {
            compression: Compression::Gzip,
            source: failed,
        };
        let message = layer_error("sha256:ab", read).to_string();
        assert!(
            message.starts_with("layer sha256:ab: write blob: "),
            "{message}"
        );
        assert!(message.contains("No space left on device"), "{message}");
        // Any other read failure stays one.
        let other = unpack::UnpackError::Read {
            compression: Compression::Gzip,
            source: io::Error::other("connection reset"),
        };
        let message = layer_error("sha256:ab", other).to_string();
        assert!(message.contains("reading gzip layer data"), "{message}");
    }

    #[test]
    fn an_index_is_recorded_only_where_an_image_record_names_it() {
        let index = (b"index".to_vec(), Digest::of(b"index"));
        let image = |held: Option<Digest>| ImageRecord {
            manifest: Digest::of(b"manifest"),
            manifest_media_type: oci::OCI_MANIFEST.into(),
            manifest_size: 1,
            config: Digest::of(b"config"),
            config_size: 1,
            index: held,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            created: None,
            layers: Vec::new(),
            stored_at: 0,
        };
        let recorded = |existing: Option<&ImageRecord>| index_to_record(Some(&index), existing);
        assert_eq!(recorded(None), Some(&index), "a new image");
        assert_eq!(
            recorded(Some(&image(None))),
            Some(&index),
            "stored without one"
        );
        assert_eq!(
            recorded(Some(&image(Some(index.1)))),
            Some(&index),
            "this one"
        );
        let other = image(Some(Digest::of(b"another index")));
        assert_eq!(recorded(Some(&other)), None, "stored with another");
        assert_eq!(index_to_record(None, Some(&image(None))), None);
    }

    /// A layer source whose first download breaks after `break_at` bytes,
    /// recording where each download started.
    struct Flaky {
        blob: Vec<u8>,
        break_at: usize,
        starts: StdMutex<Vec<u64>>,
    }

    struct Breaking {
        data: Vec<u8>,
        pos: usize,
        break_at: Option<usize>,
    }

    impl Read for Breaking {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(b) = self.break_at {
                if self.pos >= b {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "connection reset",
                    ));
                }
            }
            let end = self
                .break_at
                .unwrap_or(self.data.len())
                .min(self.data.len());
            let n = buf.len().min(end - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl LayerSource for Flaky {
        fn resumable(&self) -> bool {
            true
        }
        fn open(&self, index: usize) -> Result<Box<dyn Read + Send>> {
            self.open_at(index, 0)
        }
        fn open_at(&self, _index: usize, offset: u64) -> Result<Box<dyn Read + Send>> {
            let mut starts = self.starts.lock().unwrap();
            let first = starts.is_empty();
            starts.push(offset);
            Ok(Box::new(Breaking {
                data: self.blob[offset as usize..].to_vec(),
                pos: 0,
                break_at: first.then_some(self.break_at),
            }))
        }
    }

    fn layer() -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        // Incompressible content, so the gzip blob is large enough to break.
        let mut data = vec![0u8; 256 * 1024];
        let mut x: u32 = 1;
        for byte in data.iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *byte = (x >> 24) as u8;
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        (gz.finish().unwrap(), diff_id)
    }

    #[test]
    fn a_broken_download_is_resumed_by_the_next_command() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::store::StoreOptions::default()).unwrap();
        let (blob, diff_id) = layer();
        let desc = Descriptor::new(oci::OCI_LAYER_GZIP, Digest::of(&blob), blob.len() as u64);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        )
        .into_bytes();
        let config_digest = Digest::of(&config);
        let manifest = serde_json::to_vec(&oci::Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(oci::OCI_CONFIG, config_digest, config.len() as u64),
            layers: vec![desc.clone()],
            subject: None,
            annotations: None,
        })
        .unwrap();
        let source = Flaky {
            break_at: blob.len() / 2,
            blob: blob.clone(),
            starts: StdMutex::new(Vec::new()),
        };
        let request = || ImportRequest {
            names: vec![Reference::parse("example.com/resume:1").unwrap()],
            repo_digest: None,
            index: None,
            manifest: Some((
                manifest.clone(),
                Digest::of(&manifest),
                oci::OCI_MANIFEST.into(),
            )),
            config: (config.clone(), config_digest),
            layers: vec![Some(desc.clone())],
            source: &source,
            progress: &NoProgress,
        };
        let err = import(&store, request()).unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        let kept: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept[0].ends_with(&format!(".partial-{}", desc.digest.hex())));

        let stored = import(&store, request()).unwrap();
        assert_eq!(stored.layers_new, 1);
        let starts = source.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0], 0);
        assert!(
            starts[1] > 0,
            "the second download started from {}",
            starts[1]
        );
        assert!(store.content().contains(&desc.digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        let f = store.layer_store().diff_dir(&diff_id).join("f");
        assert_eq!(std::fs::metadata(f).unwrap().len(), 256 * 1024);
    }
}
