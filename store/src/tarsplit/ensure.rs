//! Records for layers that have none: made again from the layer's blob.
//!
//! Layers extracted before lstore wrote records (and any whose record was
//! lost) get one by reading their blob once more: decompressed and parsed,
//! nothing extracted, both digests checked. The files are written under
//! `tmp/`, synced, and renamed into the layer folder (summary first, the
//! record last: a record present means both are complete).

use std::fs;
use std::path::{Path, PathBuf};

use super::{create_record, write_summary, LayerSummary, TarSplitError, RECORD_FILE, SUMMARY_FILE};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::meta::Meta;
use crate::store::Store;
use crate::unpack;

/// Makes sure layer `chain` has its tar-split record, making it from one of
/// the layer's blobs when it has none, under the store's lock. Returns the
/// record's path. A layer no image uses, one that is not extracted, or one
/// none of whose blobs is in the store is a [`TarSplitError`].
pub fn ensure_tar_split(store: &Store, chain: &Digest) -> Result<PathBuf> {
    let path = store.layer_store().tar_split_path(chain);
    if path.is_file() {
        return Ok(path);
    }
    store.session(|meta| {
        if path.is_file() {
            return Ok(path.clone());
        }
        let (diff_id, blobs) = layer_blobs(meta, chain)?;
        if !store.layer_store().is_present(chain) {
            return Err(TarSplitError::NotExtracted { chain: *chain }.into());
        }
        let Some((blob, media_type)) = blobs
            .into_iter()
            .find(|(d, _)| store.content().path(d).is_file())
        else {
            return Err(TarSplitError::BlobMissing { chain: *chain }.into());
        };
        regenerate(store, chain, &diff_id, &blob, &media_type)?;
        Ok(path.clone())
    })
}

/// The layer's diff id and the blobs (with media types) that hold it, as
/// the images that use it record them.
fn layer_blobs(meta: &Meta, chain: &Digest) -> Result<(Digest, Vec<(Digest, String)>)> {
    let mut diff_id = None;
    let mut blobs: Vec<(Digest, String)> = Vec::new();
    for image in meta.images()? {
        for layer in image.layers.iter().filter(|l| l.chain_id == *chain) {
            diff_id = Some(layer.diff_id);
            if !blobs.iter().any(|(d, _)| *d == layer.digest) {
                blobs.push((layer.digest, layer.media_type.clone()));
            }
        }
    }
    match diff_id {
        Some(d) => Ok((d, blobs)),
        None => Err(TarSplitError::UnknownLayer { chain: *chain }.into()),
    }
}

/// Makes layer `chain`'s record (and summary) from `blob` and puts them in
/// its folder. The caller holds the root lock.
pub(crate) fn regenerate(
    store: &Store,
    chain: &Digest,
    diff_id: &Digest,
    blob: &Digest,
    media_type: &str,
) -> Result<LayerSummary> {
    let declared = store.content().layer_compression(blob, media_type)?;
    // Named like the entries of a dead command: gc removes what a crash
    // leaves.
    let tmp = store.root().join("tmp");
    let stem = format!("tarsplit-{}.{}", std::process::id(), chain.hex());
    let tmp_record = tmp.join(format!("{stem}.{RECORD_FILE}"));
    let tmp_summary = tmp.join(format!("{stem}.{SUMMARY_FILE}"));
    let result = (|| {
        let recorder = create_record(&tmp_record)?;
        let mut file = store.content().open(blob)?;
        let (unpacked, recorder) =
            unpack::disassemble_layer(&mut file, declared, &store.opts.limits, recorder).map_err(
                |source| Error::Unpack {
                    layer: blob.to_string(),
                    source,
                },
            )?;
        if unpacked.compressed_digest != *blob {
            return Err(Error::DigestMismatch {
                what: format!("blob {blob}"),
                expected: *blob,
                actual: unpacked.compressed_digest,
            });
        }
        if unpacked.diff_id != *diff_id {
            return Err(Error::DigestMismatch {
                what: format!("layer {chain} from blob {blob}: uncompressed content (diff_id)"),
                expected: *diff_id,
                actual: unpacked.diff_id,
            });
        }
        let (record_file, summary) = recorder
            .finish()
            .ctx(|| format!("write {}", tmp_record.display()))?;
        record_file
            .sync_all()
            .ctx(|| format!("sync {}", tmp_record.display()))?;
        write_summary(&tmp_summary, &summary)?
            .sync_all()
            .ctx(|| format!("sync {}", tmp_summary.display()))?;
        let dir = store.layer_store().dir(chain);
        rename(&tmp_summary, &dir.join(SUMMARY_FILE))?;
        rename(&tmp_record, &dir.join(RECORD_FILE))?;
        crate::content::sync_dir(&dir)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_record);
        let _ = fs::remove_file(&tmp_summary);
    }
    result
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).ctx(|| format!("rename {} to {}", from.display(), to.display()))
}
