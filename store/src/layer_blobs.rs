//! Layer blobs dropped once their layers are stored (`lstore config
//! keep-layer-blobs false`), and what is needed without them.
//!
//! A blob is dropped only when its layer rebuilds, from its tar-split
//! record and folder, to the layer's diff id (checked first, outside the
//! lock). Then, under the root lock and while the blob and layer records
//! still exist: a `dropped_blobs` record is written (synced), and only
//! then the blob file is removed. A process killed in between leaves a
//! dropped record with its file still there: `gc` and `fsck --repair`
//! finish the drop; nothing is lost either way (the layer was verified).
//! The blob record stays (sizes and counts: what `df` shows as saved, what
//! a rebuilt manifest replaces).

use std::collections::BTreeMap;

use std::io::Read;

use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{DroppedBlob, ImageRecord, Meta, CF_DROPPED};
use crate::reference::Reference;
use crate::store::Store;

/// A layer blob that may be dropped.
#[derive(Debug, Clone)]
struct Candidate {
    blob: Digest,
    chain: Digest,
    diff_id: Digest,
}

/// What a drop did: blobs dropped and bytes freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropOutcome {
    pub blobs: u64,
    pub bytes: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The repository (`host/path`) an image holding `blob` was pulled from:
/// a tag that recorded what the registry resolved it to.
pub(crate) fn origin_of(meta: &Meta, blob: &Digest) -> Result<Option<String>> {
    let images: BTreeMap<Digest, ImageRecord> = meta
        .images()?
        .into_iter()
        .map(|i| (i.manifest, i))
        .collect();
    for (name, tag) in meta.tags()? {
        if tag.repo_digest.is_none() {
            continue;
        }
        let holds = images
            .get(&tag.image)
            .is_some_and(|i| i.layers.iter().any(|l| l.digest == *blob));
        if let (true, Ok(r)) = (holds, Reference::parse(&name)) {
            return Ok(Some(r.repository()));
        }
    }
    Ok(None)
}

/// Layer blobs of `images` (all images when None) whose file and layer
/// folder are here and that are not dropped yet.
fn candidates(store: &Store, meta: &Meta, images: Option<&[Digest]>) -> Result<Vec<Candidate>> {
    let dropped = meta.dropped_blobs()?;
    let mut out: Vec<Candidate> = Vec::new();
    for img in meta.images()? {
        if images.is_some_and(|wanted| !wanted.contains(&img.manifest)) {
            continue;
        }
        for l in &img.layers {
            if dropped.contains_key(&l.digest)
                || out.iter().any(|c| c.blob == l.digest)
                || !store.content().contains(&l.digest)
                || !store.layer_store().is_present(&l.chain_id)
            {
                continue;
            }
            out.push(Candidate {
                blob: l.digest,
                chain: l.chain_id,
                diff_id: l.diff_id,
            });
        }
    }
    Ok(out)
}

/// Drops the layer blobs of `images` (all images when None) whose layers
/// rebuild to their diff ids; a layer that does not (one whose tar names
/// a path twice) keeps its blob. A blob another running command holds
/// (a pull about to read it, a save or push copying it) stays until a
/// later gc; `own_lease` is the caller's, which does not count. Finishes
/// drops a killed process left.
pub(crate) fn drop_layer_blobs(
    store: &Store,
    images: Option<&[Digest]>,
    own_lease: Option<&str>,
) -> Result<DropOutcome> {
    let found = store.read_session(|meta| candidates(store, meta, images))?;
    let verified: Vec<Candidate> = found
        .into_par_iter()
        .filter(|c| crate::layer_tar::verify_layer_tar(store, &c.chain, &c.diff_id).is_ok())
        .collect();
    store.session(|meta| {
        let mut out = finish_interrupted(store, meta)?;
        let mut batch = meta.batch();
        let mut doomed = Vec::new();
        let held: std::collections::HashSet<Digest> =
            crate::lock::live_leases(&store.root().join("leases"))?
                .into_iter()
                .filter(|l| l.live && Some(l.id.as_str()) != own_lease)
                .filter_map(|l| l.content)
                .flat_map(|c| c.blobs)
                .collect();
        for c in verified.into_iter().filter(|c| !held.contains(&c.blob)) {
            // Still recorded and here (no rmi or gc took it meanwhile).
            let recorded = meta.blob(&c.blob)?.is_some() && meta.layer(&c.chain)?.is_some();
            if !recorded || meta.dropped(&c.blob)?.is_some() {
                continue;
            }
            let rec = DroppedBlob {
                chain_id: c.chain,
                diff_id: c.diff_id,
                origin: origin_of(meta, &c.blob)?,
                dropped_at: now_secs(),
            };
            batch.put(CF_DROPPED, c.blob.as_bytes(), &rec)?;
            doomed.push(c.blob);
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        for d in doomed {
            let bytes = store.content().remove(&d)?;
            out.blobs += 1;
            out.bytes += bytes;
        }
        Ok(out)
    })
}

/// Removes the files of blobs recorded as dropped that a killed process
/// left (call in a write session).
pub(crate) fn finish_interrupted(store: &Store, meta: &Meta) -> Result<DropOutcome> {
    let mut out = DropOutcome::default();
    for d in meta.dropped_blobs()?.keys() {
        if store.content().contains(d) {
            out.blobs += 1;
            out.bytes += store.content().remove(d)?;
        }
    }
    Ok(out)
}

/// Compressed bytes of the layer blobs dropped (their blob records stay):
/// what keeping them would take.
pub(crate) fn dropped_bytes(meta: &Meta) -> Result<(u64, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    for d in meta.dropped_blobs()?.keys() {
        if let Some(rec) = meta.blob(d)? {
            count += 1;
            bytes += rec.size;
        }
    }
    Ok((count, bytes))
}

/// What `gc` would drop (`--dry-run`): the blobs of stored layers, by
/// their recorded sizes (each is checked only when it is dropped).
pub(crate) fn would_drop(store: &Store, meta: &Meta) -> Result<DropOutcome> {
    let mut out = DropOutcome::default();
    for c in candidates(store, meta, None)? {
        out.blobs += 1;
        out.bytes += store.content().size(&c.blob).unwrap_or(0);
    }
    for d in meta.dropped_blobs()?.keys() {
        if let Some(size) = store.content().size(d) {
            out.blobs += 1;
            out.bytes += size;
        }
    }
    Ok(out)
}

/// Repositories (`host/path`) to fetch dropped blob `blob` from again:
/// the one recorded when it was dropped, then those of tags that name a
/// pulled image holding it.
pub(crate) fn origins(meta: &Meta, blob: &Digest) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    if let Some(o) = meta.dropped(blob)?.and_then(|r| r.origin) {
        out.push(o);
    }
    if let Some(o) = origin_of(meta, blob)? {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// Fetches blob `blob` of `size` bytes back into the store from the
/// first of `origins` that has it (digest and size checked as a pull
/// checks them); returns the repository it came from. `name` names the
/// download under `ingest/`.
pub(crate) fn refetch(
    store: &Store,
    client: &crate::registry::RegistryClient,
    blob: &Digest,
    size: u64,
    origins: &[String],
    name: &str,
) -> Result<String> {
    let mut errors = Vec::new();
    for origin in origins {
        let attempt = || -> Result<()> {
            let r = Reference::parse(origin)?;
            let fetched = client.fetch_blob(&r, blob, 0)?;
            let mut w = store.content().writer(name)?;
            std::io::copy(&mut fetched.reader.take(size.saturating_add(1)), &mut w)
                .map_err(|e| crate::error::Error::io(format!("fetch blob {blob}"), e))?;
            w.commit(Some(blob), Some(size))?;
            Ok(())
        };
        match attempt() {
            Ok(()) => return Ok(origin.clone()),
            Err(e) => errors.push(format!("{origin}: {e}")),
        }
    }
    if errors.is_empty() {
        errors.push("no registry it was pulled from is known".into());
    }
    Err(crate::error::Error::Registry(format!(
        "blob {blob} cannot be fetched again: {}",
        errors.join("; ")
    )))
}

/// The layer media type, in the family of `manifest_type` (Docker or
/// OCI), of a layer rebuilt uncompressed or with gzip.
pub(crate) fn rebuilt_media_type(manifest_type: &str, gzip: bool) -> &'static str {
    use crate::oci::{DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_MANIFEST};
    use crate::oci::{OCI_LAYER_GZIP, OCI_LAYER_TAR};
    match (manifest_type == DOCKER_MANIFEST, gzip) {
        (true, true) => DOCKER_LAYER_GZIP,
        (true, false) => DOCKER_LAYER_TAR,
        (false, true) => OCI_LAYER_GZIP,
        (false, false) => OCI_LAYER_TAR,
    }
}

/// `manifest` with the layers `replaced` names (by their stored digest)
/// swapped for the descriptors of their rebuilt blobs; the config, and so
/// the image id, stays. Returns the new manifest's bytes and digest.
pub(crate) fn rewrite_manifest(
    manifest: &crate::oci::Manifest,
    replaced: &BTreeMap<Digest, crate::oci::Descriptor>,
) -> Result<(Vec<u8>, Digest)> {
    let mut m = manifest.clone();
    for l in &mut m.layers {
        if let Some(new) = replaced.get(&l.digest) {
            *l = new.clone();
        }
    }
    let bytes = serde_json::to_vec(&m).map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

/// The stored manifest of `image`, as bytes and parsed.
pub(crate) fn read_manifest(
    store: &Store,
    image: &ImageRecord,
) -> Result<(Vec<u8>, crate::oci::Manifest)> {
    use crate::oci::{parse_document, Document};
    let bytes = store
        .content()
        .read(&image.manifest, crate::registry::MAX_MANIFEST_SIZE)?;
    match parse_document(&bytes, Some(&image.manifest_media_type)) {
        Ok(Document::Manifest(m)) => Ok((bytes, m)),
        Ok(Document::Index(_)) => Err(crate::error::Error::Invalid(format!(
            "manifest {} is an index",
            image.manifest
        ))),
        Err(source) => Err(crate::error::Error::Document {
            what: format!("manifest {}", image.manifest),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding a one-layer image whose blob was dropped (by the
    /// drop `gc` runs after the setting): (dir, store, layer blob, its
    /// bytes, chain id, diff id).
    fn blobless_store() -> (tempfile::TempDir, Store, Digest, Vec<u8>, Digest, Digest) {
        let (dir, store, chain) = crate::fsck::tests::store_with_an_image();
        let layer = store
            .read_session(|meta| Ok(meta.images()?[0].layers[0].clone()))
            .unwrap();
        let bytes = std::fs::read(store.content().path(&layer.digest)).unwrap();
        store.config_set("keep-layer-blobs", "false").unwrap();
        let dropped = drop_layer_blobs(&store, None, None).unwrap();
        assert_eq!(
            dropped,
            DropOutcome {
                blobs: 1,
                bytes: bytes.len() as u64
            }
        );
        (dir, store, layer.digest, bytes, chain, layer.diff_id)
    }

    #[test]
    fn a_stored_layer_loses_its_blob_and_rebuilds_its_tar() {
        let (_dir, store, blob, bytes, chain, diff_id) = blobless_store();
        assert!(!store.content().contains(&blob));
        let rec = store
            .read_session(|meta| meta.dropped(&blob))
            .unwrap()
            .unwrap();
        assert_eq!(
            (rec.chain_id, rec.diff_id, rec.origin),
            (chain, diff_id, None)
        );
        crate::layer_tar::verify_layer_tar(&store, &chain, &diff_id).unwrap();
        let du = store.df().unwrap();
        assert_eq!(
            (du.dropped_layer_blobs, du.dropped_blob_bytes),
            (1, bytes.len() as u64)
        );
        assert_eq!(
            drop_layer_blobs(&store, None, None).unwrap(),
            DropOutcome::default()
        );
        // A blob a running command holds stays until it is done.
        let (_dir2, other, chain2) = crate::fsck::tests::store_with_an_image();
        let layer = other
            .read_session(|meta| Ok(meta.images()?[0].layers[0].clone()))
            .unwrap();
        other.config_set("keep-layer-blobs", "false").unwrap();
        let lease = other
            .read_session(|_| {
                other.lease(&crate::lock::LeaseContent {
                    pid: std::process::id(),
                    blobs: vec![layer.digest],
                    layers: vec![chain2],
                })
            })
            .unwrap();
        assert_eq!(
            drop_layer_blobs(&other, None, None).unwrap(),
            DropOutcome::default()
        );
        assert!(other.content().contains(&layer.digest));
        let own = drop_layer_blobs(&other, None, Some(lease.id())).unwrap();
        assert_eq!(own.blobs, 1, "the caller's own lease does not hold it back");
        // A changed file: the tar no longer hashes to the diff id.
        std::fs::write(store.layer_store().diff_dir(&chain).join("hello"), "WORLD").unwrap();
        let err = crate::layer_tar::verify_layer_tar(&store, &chain, &diff_id).unwrap_err();
        assert!(err.to_string().contains("differs from the record"), "{err}");
    }

    #[test]
    fn a_drop_cut_short_is_finished_by_fsck_repair_and_gc() {
        let (_dir, store, blob, bytes, chain, diff_id) = blobless_store();
        // Killed between the record and the removal: the file is back.
        for finisher in ["fsck", "gc"] {
            std::fs::write(store.content().path(&blob), &bytes).unwrap();
            let report = store.fsck(false).unwrap();
            assert_eq!(report.problems, vec![], "{finisher}");
            assert_eq!(report.leftovers.len(), 1, "{report:?}");
            match finisher {
                "fsck" => assert!(store.fsck(true).unwrap().leftovers[0].removed),
                _ => assert_eq!(store.gc(false).unwrap().dropped_layer_blobs, 1),
            }
            assert!(!store.content().contains(&blob), "{finisher}");
            assert!(store.fsck(false).unwrap().clean(), "{finisher}");
        }
        crate::layer_tar::verify_layer_tar(&store, &chain, &diff_id).unwrap();
    }
}
