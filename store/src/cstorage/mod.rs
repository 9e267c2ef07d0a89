//! The containers/storage view of the store: `<root>/containers-storage/`.
//!
//! podman, buildah, CRI-O and skopeo read images through
//! containers/storage, which takes extra read-only image stores
//! (`additionalimagestores` in `storage.conf`). Its `overlay` driver keeps
//! layers as lstore does (`<id>/{diff,link,lower}`, `l/<short>`), so the
//! view is metadata only: `overlay-images/images.json` with each image's
//! big-data files, `overlay-layers/layers.json` with each layer's
//! tar-split record, the two lock files, and `overlay/` whose entries are
//! symlinks to lstore's own layer folders and `l/` links. Nothing is copied.
//!
//! The view is derived from the database: every write session that changed
//! images or tags brings it up to date before it lets go of the root lock
//! (and a sweep does before it removes what the old view named), and
//! `fsck` finds and repairs a view left stale by a crash in between.

mod model;
mod write;

use std::collections::HashMap;
use std::path::Path;

use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{LayerRecord, Meta};
use crate::store::Store;

pub(crate) use write::VIEW_DIR;

/// Brings the view up to date with the database.
pub(crate) fn refresh(store: &Store, meta: &Meta) -> Result<()> {
    let view = current(store, meta)?;
    write::sync(store.root(), &view, false)?;
    crate::meta::clear_view_pending(&store.root().join("db"))
}

/// Whether the view on disk differs from what the database says it is.
pub(crate) fn is_stale(store: &Store, meta: &Meta) -> Result<bool> {
    let view = current(store, meta)?;
    write::sync(store.root(), &view, true)
}

fn current(store: &Store, meta: &Meta) -> Result<model::View> {
    let images = meta.images()?;
    let tags = meta.tags()?;
    let facts = Facts {
        store,
        meta,
        known: read_known_id_sets(store.root()),
    };
    Ok(model::build(&images, &tags, &facts))
}

struct Facts<'a> {
    store: &'a Store,
    meta: &'a Meta,
    /// uid/gid sets the current layers.json already lists, by diff digest
    /// (reading each layer's summary file on every refresh would cost a
    /// file per layer of the store).
    known: HashMap<String, (Vec<u32>, Vec<u32>)>,
}

impl model::StoreFacts for Facts<'_> {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRecord> {
        let record = self.meta.layer(chain_id).ok().flatten()?;
        self.store
            .layer_store()
            .is_present(chain_id)
            .then_some(record)
    }

    fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.store.content().size(digest)
    }

    fn id_sets(&self, chain_id: &Digest) -> Option<(Vec<u32>, Vec<u32>)> {
        // What layers.json already lists (one read for the whole view);
        // else the summary the extraction pass wrote beside the layer.
        let record = self.meta.layer(chain_id).ok().flatten()?;
        if let Some(known) = self.known.get(&record.diff_id.to_string()) {
            return Some(known.clone());
        }
        let dir = self.store.layer_store().dir(chain_id);
        crate::tarsplit::stored_summary(&dir).map(|s| (s.uids, s.gids))
    }
}

fn read_known_id_sets(root: &Path) -> HashMap<String, (Vec<u32>, Vec<u32>)> {
    let path = root.join(VIEW_DIR).join("overlay-layers/layers.json");
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    let Ok(entries) = serde_json::from_slice::<Vec<model::LayerEntry>>(&bytes) else {
        return HashMap::new();
    };
    entries
        .into_iter()
        .filter(|e| !e.uids.is_empty() || !e.gids.is_empty())
        .map(|e| (e.diff_digest, (e.uids, e.gids)))
        .collect()
}

#[cfg(test)]
mod tests;
