//! `lstore fsck`: re-verify every blob's digest (in parallel, through
//! mmap), check that every record has its files and every file its record,
//! that reference counts equal what a mark counts, and that each layer
//! folder is complete.
//!
//! `repair` fixes what can be fixed, under the root lock:
//! * a layer folder that is missing or damaged is extracted again from a
//!   verified blob that holds it, into a fresh folder under `tmp/`, checked
//!   against its diff id, and swapped in under the same name (parents
//!   first);
//! * what cannot come back is dropped: an image that needs a missing
//!   manifest or config blob, or a layer no blob can restore, loses its
//!   record and its tags; records of files that are gone and that nothing
//!   needs any more are deleted;
//! * records that are wrong or missing while their files are fine are
//!   rebuilt (reference counts, sizes, blob and layer records);
//! * corrupt blobs are removed, short links restored.
//!
//! All record changes land in one atomic batch. What a running command
//! holds (a live lease) or a live mount uses is left alone: lstore's own
//! mounts, and any process's overlay mounts of layer folders (a layer kept
//! only because such a mount uses it is neither damage nor a leftover).
//!
//! Leftovers are reported apart from damage: blob files and layer folders
//! that no image uses (no record names them, or their record counts no
//! user: what an interrupted command or a repair leaves), stray names and
//! dangling short links. `repair` removes them with `gc`'s own sweep, after
//! its records are written; untagged images and `tmp/`, `ingest/` are left
//! to `gc`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::Removal;
use crate::layers::{linked_chain, remove_tree, short_id, tree_size};
use crate::meta::{
    BlobRecord, ImageRecord, LayerRecord, Meta, CF_BLOBS, CF_IMAGES, CF_LAYERS, CF_TAGS,
};
use crate::oci;
use crate::reference::Reference;
use crate::share::index::{self, LayerEntries};
use crate::share::verify::{self, EntryState, Fidelity};
use crate::store::Store;
use crate::tarsplit;
use crate::unpack::{self, UnpackError, Unpacked};

/// One problem found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// What is wrong, on one line.
    pub what: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// A file no image needs, left by an interrupted command or a repair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Leftover {
    /// The file or folder, on one line.
    pub what: String,
    /// Whether `--repair` removed it.
    pub removed: bool,
}

/// What [`Store::fsck`] checked and found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FsckReport {
    /// Blobs whose digest was checked.
    pub blobs_checked: u64,
    /// Bytes hashed to check them.
    pub bytes_hashed: u64,
    /// Layer folders checked.
    pub layers_checked: u64,
    /// Image records checked.
    pub images_checked: u64,
    /// Layers `--repair` extracted again from their blobs.
    pub layers_reextracted: u64,
    /// Files of the content index (file sharing) checked: each inode read
    /// once and its content and metadata compared with the index.
    pub shared_files_checked: u64,
    /// Images `--repair` removed because something they need is gone.
    pub images_removed: u64,
    /// Damage: what is wrong with what the records describe.
    pub problems: Vec<Problem>,
    /// Files no image needs, apart from damage.
    pub leftovers: Vec<Leftover>,
}

impl FsckReport {
    /// Nothing wrong and nothing left over (or all of it repaired).
    pub fn clean(&self) -> bool {
        self.damage_left() == 0 && self.leftovers_left() == 0
    }

    /// Problems not repaired.
    pub fn damage_left(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }

    /// Leftovers not removed.
    pub fn leftovers_left(&self) -> usize {
        self.leftovers.iter().filter(|l| !l.removed).count()
    }
}

/// sha256 of a file, read through mmap.
fn hash_file(path: &std::path::Path) -> std::io::Result<(Digest, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((Digest::of(b""), 0));
    }
    // Safety: blobs are never modified in place (written once, renamed in,
    // removed whole); a concurrent removal only unlinks the name.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    let mut h = crate::digest::Hasher::new();
    for chunk in map.chunks(1 << 20) {
        h.update(chunk);
    }
    Ok((h.finish(), len))
}

/// A layer as the images that use it describe it.
#[derive(Debug, Clone, PartialEq)]
struct LayerUse {
    diff_id: Digest,
    /// Chain ids below it, nearest first (what its `lower` names).
    parents: Vec<Digest>,
    /// Blobs that hold it, with their media types: two images may carry
    /// the same layer compressed differently.
    blobs: Vec<(Digest, String)>,
    /// Uncompressed size, as the images record it.
    size: u64,
    /// Manifest digests of the images that use it.
    images: BTreeSet<Digest>,
}

/// Every layer the images use, by chain id.
fn layer_uses(images: &[ImageRecord]) -> BTreeMap<Digest, LayerUse> {
    let mut uses: BTreeMap<Digest, LayerUse> = BTreeMap::new();
    for img in images {
        for (i, l) in img.layers.iter().enumerate() {
            let u = uses.entry(l.chain_id).or_insert_with(|| LayerUse {
                diff_id: l.diff_id,
                parents: img.layers[..i].iter().rev().map(|p| p.chain_id).collect(),
                blobs: Vec::new(),
                size: l.size,
                images: BTreeSet::new(),
            });
            if !u.blobs.iter().any(|(d, _)| *d == l.digest) {
                u.blobs.push((l.digest, l.media_type.clone()));
            }
            u.images.insert(img.manifest);
        }
    }
    uses
}

/// The media type a blob record gets, from the images that use the blob.
fn blob_media_types(images: &[ImageRecord]) -> BTreeMap<Digest, String> {
    let mut types = BTreeMap::new();
    for img in images {
        types.insert(img.manifest, img.manifest_media_type.clone());
        let config = if img.manifest_media_type == oci::DOCKER_MANIFEST {
            oci::DOCKER_CONFIG
        } else {
            oci::OCI_CONFIG
        };
        types.insert(img.config, config.to_string());
        if let Some(ix) = img.index {
            types.insert(ix, oci::OCI_INDEX.to_string());
        }
        for l in &img.layers {
            types.insert(l.digest, l.media_type.clone());
        }
    }
    types
}

/// How a layer folder looks on disk.
#[derive(Debug, Clone, PartialEq)]
enum FolderState {
    Intact,
    Missing,
    Damaged(String),
    /// Complete, but files in it are not what was extracted (the content
    /// index says so).
    Changed(String),
}

/// Checks a layer folder: `diff/`, `work/`, `link`, and `lower` when the
/// parents are known.
fn folder_state(
    layers: &crate::layers::LayerStore,
    chain: &Digest,
    parents: Option<&[Digest]>,
) -> FolderState {
    let dir = layers.dir(chain);
    match std::fs::symlink_metadata(&dir) {
        Err(_) => return FolderState::Missing,
        Ok(m) if !m.is_dir() => return FolderState::Damaged("not a directory".into()),
        Ok(_) => {}
    }
    let is_dir = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_dir());
    if !is_dir("diff") {
        return FolderState::Damaged("no diff/".into());
    }
    if std::fs::read_to_string(dir.join("link")).ok().as_deref() != Some(short_id(chain).as_str()) {
        return FolderState::Damaged("link is missing or wrong".into());
    }
    if !is_dir("work") {
        return FolderState::Damaged("no work/".into());
    }
    if let Some(parents) = parents {
        let lower = std::fs::read_to_string(dir.join("lower")).ok();
        if lower != expected_lower(parents) {
            return FolderState::Damaged("lower is missing or wrong".into());
        }
    }
    FolderState::Intact
}

/// The `lower` file of a layer with these parents (nearest first).
fn expected_lower(parents: &[Digest]) -> Option<String> {
    if parents.is_empty() {
        return None;
    }
    Some(
        parents
            .iter()
            .map(|p| format!("l/{}", short_id(p)))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// What became of a layer that needed attention.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Complete on disk (as found, or restored by re-extraction).
    Intact,
    /// Extracted again: its uncompressed size and file bytes.
    Restored { size: u64, file_bytes: u64 },
    /// Cannot be brought back; the images that need it are broken.
    Lost,
    /// Damaged, but left as it is (a live mount uses it, a check-only run,
    /// or re-extraction failed for a reason that may pass).
    Left,
}

/// Whether a failed re-extraction shows that the blob cannot give the layer
/// (as opposed to a full disk or another passing trouble).
fn blob_cannot_give_layer(e: &Error) -> bool {
    match e {
        Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => true,
        Error::Unpack { source, .. } => !matches!(
            source,
            UnpackError::Destination { .. }
                | UnpackError::Fs { .. }
                | UnpackError::Io(_)
                | UnpackError::WriteBack { .. }
                | UnpackError::Record(_)
        ),
        _ => false,
    }
}

/// One fsck run, inside a metadata session.
struct Check<'a> {
    store: &'a Store,
    meta: &'a Meta,
    repair: bool,
    report: FsckReport,
    leased_blobs: HashSet<Digest>,
    leased_layers: HashSet<Digest>,
    /// Layers containerd holds snapshots of (`lstore snapshotter`).
    containerd_layers: HashSet<Digest>,
    /// Live mounts: image (manifest digest) and layer -> mount target.
    mounted_images: BTreeMap<Digest, String>,
    mounted_layers: BTreeMap<Digest, String>,
    /// Blobs whose file is here and hashes to its name, with its size.
    good_blobs: BTreeMap<Digest, u64>,
    corrupt_blobs: BTreeSet<Digest>,
    /// Layer blobs dropped once their layers were stored.
    dropped: BTreeMap<Digest, crate::meta::DroppedBlob>,
    /// How many images used each blob and layer before any was removed.
    blob_refs_before: BTreeMap<Digest, u64>,
    layer_refs_before: BTreeMap<Digest, u64>,
    /// Layers whose files differ from the content index, and how.
    changed_files: BTreeMap<Digest, String>,
    /// Layers extracted again, with their new content index entries.
    reindexed: Vec<(Digest, LayerEntries)>,
    /// Content index entries whose file's metadata changed (not its
    /// content), with the metadata hash it has now.
    stale_entries: Vec<(index::Entry, [u8; 16])>,
}

impl Check<'_> {
    fn problem(&mut self, what: String, repaired: bool) {
        self.report.problems.push(Problem { what, repaired });
    }

    /// `done` when repairing, `todo` (what --repair would do) otherwise.
    fn outcome(&self, done: &str, todo: &str) -> String {
        if self.repair {
            done.to_string()
        } else {
            todo.to_string()
        }
    }

    /// Present and verified, or in the hands of a running command.
    fn blob_ok(&self, d: &Digest) -> bool {
        self.good_blobs.contains_key(d) || self.leased_blobs.contains(d)
    }

    fn blob_state(&self, d: &Digest) -> &'static str {
        if self.corrupt_blobs.contains(d) {
            "corrupt"
        } else if self.dropped.contains_key(d) {
            "dropped (keep-layer-blobs false)"
        } else {
            "missing"
        }
    }

    /// Hashes every blob file; notes stray files, files without a record
    /// and sizes that disagree with the record (fixed in `batch`).
    fn check_blob_files(
        &mut self,
        blob_records: &BTreeMap<Digest, BlobRecord>,
        batch: &mut crate::meta::Batch<'_>,
    ) -> Result<()> {
        // Stray names are leftovers (see `sweep_leftovers`).
        let (on_disk, _) = self.store.content().list()?;
        let hashed: Vec<(Digest, std::io::Result<(Digest, u64)>)> = on_disk
            .par_iter()
            .map(|d| (*d, hash_file(&self.store.content().path(d))))
            .collect();
        for (d, r) in hashed {
            self.report.blobs_checked += 1;
            match r {
                Ok((actual, len)) => {
                    self.report.bytes_hashed += len;
                    if actual != d {
                        self.corrupt_blobs.insert(d);
                        let what = format!(
                            "blob {d} is corrupt (its content hashes to {actual}){}",
                            self.outcome(", removed", "")
                        );
                        self.problem(what, self.repair);
                        continue;
                    }
                    self.good_blobs.insert(d, len);
                    match blob_records.get(&d) {
                        Some(rec) if rec.size != len => {
                            if self.repair {
                                let mut r = rec.clone();
                                r.size = len;
                                batch.put(CF_BLOBS, d.as_bytes(), &r)?;
                            }
                            self.problem(
                                format!("blob {d}: record says {} bytes, file has {len}", rec.size),
                                self.repair,
                            );
                        }
                        // A used blob without a record is checked with the
                        // records, an unused one is a leftover.
                        _ => {}
                    }
                }
                Err(e) => self.problem(format!("blob {d}: {e}"), false),
            }
        }
        Ok(())
    }

    /// Extracts layer `chain` again from `blob` into a fresh folder under
    /// `tmp/`, checks both digests, and swaps it in.
    fn reextract(
        &self,
        chain: &Digest,
        layer: &LayerUse,
        blob: &Digest,
        media_type: &str,
    ) -> Result<(Unpacked, LayerEntries)> {
        let store = self.store;
        let declared = store.content().layer_compression(blob, media_type)?;
        // Named like the entries of a dead command, so that gc removes it
        // should this process die.
        let staging = store.layer_store().stage(&format!(
            "fsck-{}.layer-{}",
            std::process::id(),
            chain.hex()
        ))?;
        let mut file = store.content().open(blob)?;
        // As import does: a base layer's whiteouts hide nothing.
        let position = if layer.parents.is_empty() {
            unpack::LayerPosition::Base
        } else {
            unpack::LayerPosition::Upper
        };
        let (unpacked, _, written) = unpack::unpack_layer_recorded(
            &mut file,
            declared,
            &staging.diff(),
            &store.opts.limits,
            position,
            staging.folder(),
            // Never linked to a layer being repaired: nothing before the
            // lookups that know which are.
            None,
        )
        .map_err(|source| Error::Unpack {
            layer: blob.to_string(),
            source,
        })?;
        if unpacked.compressed_digest != *blob {
            return Err(Error::DigestMismatch {
                what: format!("blob {blob}"),
                expected: *blob,
                actual: unpacked.compressed_digest,
            });
        }
        if unpacked.diff_id != layer.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("layer {chain} from blob {blob}: uncompressed content (diff_id)"),
                expected: layer.diff_id,
                actual: unpacked.diff_id,
            });
        }
        // Shared again, never with a layer whose files changed: those are
        // all being extracted again.
        let damaged: HashSet<Digest> = self.changed_files.keys().copied().collect();
        let shared = crate::share::share_layer(
            store.layer_store(),
            self.meta,
            &staging.diff(),
            written,
            &damaged,
            false,
            &store.reflink,
        )?;
        store
            .layer_store()
            .replace(staging, chain, &layer.parents)?;
        Ok((unpacked, shared.entries))
    }

    /// Checks the files of the content index: each must still have the
    /// content and metadata it was indexed with. A layer holding a file
    /// whose content changed is damaged, and so is every layer sharing that
    /// inode (each is named); `check_layers` extracts them again. A file
    /// whose metadata alone changed is no damage: its entry is stale, and
    /// repairing re-indexes it. Entries of layers that are gone are
    /// dropped when repairing.
    fn check_shared_files(
        &mut self,
        layer_records: &BTreeMap<Digest, LayerRecord>,
        uses: &BTreeMap<Digest, LayerUse>,
        batch: &mut crate::meta::Batch<'_>,
    ) -> Result<()> {
        let entries: Vec<index::Entry> = index::all(self.meta)?
            .into_iter()
            .filter(|e| !self.leased_layers.contains(&e.chain))
            .collect();
        let states = verify::verify(self.store.layer_store(), &entries)?;
        let mut holders: BTreeMap<(u64, u64), BTreeSet<Digest>> = BTreeMap::new();
        for (e, state) in entries.iter().zip(&states) {
            if let EntryState::Inode { dev, ino, .. } = state {
                holders.entry((*dev, *ino)).or_default().insert(e.chain);
            }
        }
        self.report.shared_files_checked = holders.len() as u64;
        let mut orphans: BTreeSet<Digest> = BTreeSet::new();
        for (e, state) in entries.iter().zip(&states) {
            let path = String::from_utf8_lossy(&e.path);
            let (why, inode) = match state {
                EntryState::Inode {
                    fidelity: Fidelity::Intact,
                    ..
                } => continue,
                EntryState::Inode {
                    fidelity: Fidelity::MetaChanged(meta),
                    ..
                } => {
                    // Not damage: the content is whole. The entry no longer
                    // describes the file, and sharing passes it over until
                    // it is re-indexed.
                    let tail = self.outcome("re-indexed", "--repair re-indexes it");
                    self.problem(
                        format!(
                            "content index entry of file {path} of layer {} is stale (the \
                             file's metadata changed since, its content did not): {tail}",
                            e.chain
                        ),
                        self.repair,
                    );
                    self.stale_entries.push((e.clone(), *meta));
                    continue;
                }
                EntryState::NoFolder => {
                    let named = layer_records.contains_key(&e.chain) || uses.contains_key(&e.chain);
                    if !named {
                        orphans.insert(e.chain);
                    }
                    // A missing folder of a named layer is `check_layers`'s.
                    continue;
                }
                EntryState::Missing => (format!("file {path} is missing"), None),
                EntryState::Inode { dev, ino, .. } => (
                    format!("file {path} changed behind the store's back (its content)"),
                    Some((*dev, *ino)),
                ),
            };
            let sharing: Vec<Digest> = inode
                .and_then(|i| holders.get(&i))
                .map(|h| h.iter().filter(|c| **c != e.chain).copied().collect())
                .unwrap_or_default();
            let mut why = why;
            if !sharing.is_empty() {
                let names: Vec<String> = sharing.iter().map(|c| c.to_string()).collect();
                why.push_str(&format!("; layers {} share it", names.join(", ")));
            }
            for c in &sharing {
                self.changed_files.entry(*c).or_insert_with(|| {
                    format!("shares file {path} of layer {}, which changed", e.chain)
                });
            }
            self.changed_files.entry(e.chain).or_insert(why);
        }
        for c in orphans {
            let tail = self.outcome("entries dropped", "--repair drops them");
            self.problem(
                format!("the content index names layer {c}, which is gone: {tail}"),
                self.repair,
            );
            if self.repair {
                index::drop_layer(self.meta, batch, &c)?;
            }
        }
        Ok(())
    }

    /// Checks every layer folder, record and use; re-extracts (when
    /// repairing) what images still need. Returns each layer's fate.
    fn check_layers(
        &mut self,
        images: &[ImageRecord],
        layer_records: &BTreeMap<Digest, LayerRecord>,
        uses: &BTreeMap<Digest, LayerUse>,
    ) -> Result<BTreeMap<Digest, Fate>> {
        let ls = self.store.layer_store().clone();
        let (dirs, _) = ls.list()?;
        self.report.layers_checked = dirs.len() as u64;
        let on_disk: BTreeSet<Digest> = dirs.into_iter().collect();
        // Only layers of images whose manifest and config are here are
        // worth restoring: the others are removed anyway.
        let viable: BTreeSet<Digest> = images
            .iter()
            .filter(|i| self.blob_ok(&i.manifest) && self.blob_ok(&i.config))
            .map(|i| i.manifest)
            .collect();
        let mut chains: Vec<Digest> = on_disk
            .iter()
            .chain(layer_records.keys())
            .chain(uses.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Parents first: a layer is restored only when its parents are.
        chains.sort_by_key(|c| uses.get(c).map(|u| u.parents.len()).unwrap_or(0));

        let mut fates: BTreeMap<Digest, Fate> = BTreeMap::new();
        for c in chains {
            if self.leased_layers.contains(&c) {
                continue;
            }
            let layer = uses.get(&c);
            let recorded = layer_records.contains_key(&c);
            if layer.is_none() && !recorded {
                // A folder nothing names: a leftover, not damage.
                continue;
            }
            let mut state = folder_state(&ls, &c, layer.map(|u| u.parents.as_slice()));
            if let (FolderState::Intact, Some(why)) = (&state, self.changed_files.get(&c)) {
                state = FolderState::Changed(why.clone());
            }
            let what = match &state {
                FolderState::Intact => {
                    self.check_short_link(&c);
                    if let Some(layer) = layer {
                        self.check_tar_split(&c, layer);
                        if let Some(fate) = self.check_blobless_layer(&c, layer) {
                            fates.insert(c, fate);
                            continue;
                        }
                    }
                    fates.insert(c, Fate::Intact);
                    continue;
                }
                FolderState::Missing if recorded => {
                    format!("layer {c} is recorded but its folder is missing")
                }
                FolderState::Missing => format!("layer {c}: folder is missing"),
                FolderState::Damaged(why) => format!("layer {c}: folder is incomplete ({why})"),
                FolderState::Changed(why) => format!("layer {c}: {why}"),
            };
            if let Some(target) = self.mounted_layers.get(&c).cloned() {
                self.problem(
                    format!(
                        "{what}; the mount at {target} uses it: unmount it, then run \
                         lstore fsck --repair"
                    ),
                    false,
                );
                fates.insert(c, Fate::Left);
                continue;
            }
            if layer.is_none() && self.containerd_layers.contains(&c) {
                // Removing it would leave containerd's snapshots naming a
                // layer that is gone, and containerd would not apply it
                // again; lstore has no blob to restore it from.
                self.problem(
                    format!(
                        "{what}; containerd holds it (lstore snapshotter) and lstore has no \
                         blob of it: remove the images that use it from containerd (ctr \
                         images rm, ctr snapshots rm), then pull them again"
                    ),
                    false,
                );
                fates.insert(c, Fate::Left);
                continue;
            }
            let Some(layer) = layer else {
                let tail = self.outcome("record and folder removed", "--repair removes them");
                self.problem(format!("{what}; no image uses it: {tail}"), self.repair);
                fates.insert(c, Fate::Lost);
                continue;
            };
            if !layer.images.iter().any(|i| viable.contains(i)) {
                let tail = self.outcome("removed", "--repair removes it");
                self.problem(
                    format!("{what}; the images that use it cannot be restored either: {tail}"),
                    self.repair,
                );
                fates.insert(c, Fate::Lost);
                continue;
            }
            if let Some(p) = layer
                .parents
                .iter()
                .find(|p| fates.get(p) == Some(&Fate::Lost))
            {
                let what = format!("{what}; its parent layer {p} cannot be restored");
                self.problem(what, self.repair);
                fates.insert(c, Fate::Lost);
                continue;
            }
            let mut sources: Vec<(Digest, String)> = layer
                .blobs
                .iter()
                .filter(|(d, _)| self.good_blobs.contains_key(d))
                .cloned()
                .collect();
            let mut refetched = None;
            if sources.is_empty()
                && layer
                    .blobs
                    .iter()
                    .any(|(d, _)| self.dropped.contains_key(d))
            {
                match self.refetch_dropped(layer) {
                    Ok(got) => {
                        sources.push(got.clone());
                        refetched = Some(got.0);
                    }
                    Err(why) => {
                        // The folder stays as it is, and the images with it:
                        // nothing better can take their place.
                        self.problem(format!("{what}; {why}"), false);
                        fates.insert(c, Fate::Left);
                        continue;
                    }
                }
            }
            if sources.is_empty() {
                let blobs: Vec<String> = layer
                    .blobs
                    .iter()
                    .map(|(b, _)| format!("{b} is {}", self.blob_state(b)))
                    .collect();
                let what = format!(
                    "{what}; its blob {} too: it cannot be restored",
                    blobs.join(", ")
                );
                self.problem(what, self.repair);
                fates.insert(c, Fate::Lost);
                continue;
            }
            if !self.repair {
                let b = &sources[0].0;
                self.problem(
                    format!("{what}; --repair re-extracts it from blob {b}"),
                    false,
                );
                fates.insert(c, Fate::Left);
                continue;
            }
            let mut errors = Vec::new();
            let mut fate = Fate::Lost;
            for (b, media_type) in &sources {
                match self.reextract(&c, layer, b, media_type) {
                    Ok((u, entries)) => {
                        self.reindexed.push((c, entries));
                        self.report.layers_reextracted += 1;
                        self.problem(format!("{what}; re-extracted from blob {b}"), true);
                        fate = Fate::Restored {
                            size: u.size,
                            file_bytes: u.file_bytes,
                        };
                        break;
                    }
                    Err(e) => {
                        if !blob_cannot_give_layer(&e) {
                            fate = Fate::Left;
                        }
                        errors.push(e.to_string());
                    }
                }
            }
            if let Some(b) = refetched {
                // Fetched for the repair only: the blob stays dropped.
                self.store.content().remove(&b)?;
            }
            match fate {
                Fate::Lost => self.problem(
                    format!("{what}; it cannot be restored: {}", errors.join("; ")),
                    true,
                ),
                Fate::Left => self.problem(
                    format!("{what}; re-extraction failed: {}", errors.join("; ")),
                    false,
                ),
                _ => {}
            }
            fates.insert(c, fate);
        }
        Ok(fates)
    }

    /// Checks (and when repairing restores) the `l/` link of a complete
    /// layer folder.
    /// Checks that an intact layer has its tar-split record (with its
    /// summary) and that the record's tar is as long as the layer's; when
    /// repairing, makes it again from a verified blob.
    fn check_tar_split(&mut self, c: &Digest, layer: &LayerUse) {
        let path = self.store.layer_store().tar_split_path(c);
        let what = if !path.is_file() {
            format!("layer {c} has no tar-split record")
        } else {
            match tarsplit::summary(&path) {
                Ok(s) if s.tar_size == layer.size => return,
                Ok(s) => format!(
                    "layer {c}: its tar-split record describes {} bytes of tar, the layer has {}",
                    s.tar_size, layer.size
                ),
                Err(e) => format!("layer {c}: {e}"),
            }
        };
        let source = layer
            .blobs
            .iter()
            .find(|(d, _)| self.good_blobs.contains_key(d))
            .cloned();
        let Some((blob, media_type)) = source else {
            self.blobless_tar_split(c, layer, what);
            return;
        };
        if !self.repair {
            self.problem(format!("{what}; --repair makes it from blob {blob}"), false);
            return;
        }
        match tarsplit::regenerate(self.store, c, &layer.diff_id, &blob, &media_type) {
            Ok(_) => self.problem(format!("{what}; made again from blob {blob}"), true),
            Err(e) => self.problem(
                format!("{what}; making it from blob {blob} failed: {e}"),
                false,
            ),
        }
    }

    /// A layer whose blobs were all dropped: its folder is verified by
    /// rebuilding its tar from its record and checking the diff id (with a
    /// blob, only the folder's shape is checked). Damage is repaired by
    /// fetching the blob again from where it was pulled and extracting it
    /// anew; without it, the layer is left as it is and reported with the
    /// images that use it. None when the layer has a blob, or no record
    /// (reported by `check_tar_split`), or rebuilds to its diff id.
    fn check_blobless_layer(&mut self, c: &Digest, layer: &LayerUse) -> Option<Fate> {
        let blobless = layer.blobs.iter().all(|(d, _)| !self.blob_ok(d))
            && layer
                .blobs
                .iter()
                .any(|(d, _)| self.dropped.contains_key(d));
        if !blobless || !self.store.layer_store().tar_split_path(c).is_file() {
            return None;
        }
        let err = crate::layer_tar::verify_layer_tar(self.store, c, &layer.diff_id).err()?;
        let what = format!("layer {c}: its folder does not rebuild its tar ({err})");
        if let Some(target) = self.mounted_layers.get(c).cloned() {
            self.problem(
                format!("{what}; the mount at {target} uses it: unmount it, then run lstore fsck --repair"),
                false,
            );
            return Some(Fate::Left);
        }
        let (blob, media_type) = match self.refetch_dropped(layer) {
            Ok(got) => got,
            Err(why) => {
                self.problem(format!("{what}; {why}"), false);
                return Some(Fate::Left);
            }
        };
        let result = self.reextract(c, layer, &blob, &media_type);
        // Fetched for the repair only: the blob stays dropped.
        let _ = self.store.content().remove(&blob);
        match result {
            Ok((u, entries)) => {
                self.reindexed.push((*c, entries));
                self.report.layers_reextracted += 1;
                self.problem(
                    format!("{what}; re-extracted from blob {blob}, fetched again"),
                    true,
                );
                Some(Fate::Restored {
                    size: u.size,
                    file_bytes: u.file_bytes,
                })
            }
            Err(e) => {
                self.problem(format!("{what}; re-extraction failed: {e}"), false);
                Some(Fate::Left)
            }
        }
    }

    /// A layer whose record is missing or wrong and that has no blob here:
    /// when its blob was dropped, `--repair` fetches it again from where it
    /// was pulled, makes the record from it and drops it again; otherwise
    /// the record cannot be made.
    fn blobless_tar_split(&mut self, c: &Digest, layer: &LayerUse, what: String) {
        if !layer
            .blobs
            .iter()
            .any(|(d, _)| self.dropped.contains_key(d))
        {
            self.problem(
                format!("{what}; no blob of it is here to make it from"),
                false,
            );
            return;
        }
        let (blob, media_type) = match self.refetch_dropped(layer) {
            Ok(got) => got,
            Err(why) => return self.problem(format!("{what}; {why}"), false),
        };
        let made = tarsplit::regenerate(self.store, c, &layer.diff_id, &blob, &media_type);
        let _ = self.store.content().remove(&blob);
        match made {
            Ok(_) => self.problem(
                format!("{what}; made again from blob {blob}, fetched again"),
                true,
            ),
            Err(e) => self.problem(
                format!("{what}; making it from blob {blob} failed: {e}"),
                false,
            ),
        }
    }

    /// When repairing, fetches a dropped blob of `layer` again from where
    /// it was pulled; else, or when no registry has it, says why the
    /// layer cannot be repaired and which images use it.
    fn refetch_dropped(
        &mut self,
        layer: &LayerUse,
    ) -> std::result::Result<(Digest, String), String> {
        let images: Vec<String> = layer.images.iter().map(|d| d.to_string()).collect();
        let cannot = |why: String| {
            format!(
                "its blob was dropped (keep-layer-blobs false) and {why}: it cannot be \
                 repaired; images using it: {}",
                images.join(", ")
            )
        };
        let dropped: Vec<(Digest, String)> = layer
            .blobs
            .iter()
            .filter(|(d, _)| self.dropped.contains_key(d))
            .cloned()
            .collect();
        let mut errors = Vec::new();
        for (blob, media_type) in dropped {
            let origins =
                crate::layer_blobs::origins(self.meta, &blob).map_err(|e| e.to_string())?;
            if origins.is_empty() {
                errors.push("it was not pulled from a registry".to_string());
                continue;
            }
            if !self.repair {
                return Err(format!(
                    "--repair fetches its blob {blob} again from {} and re-extracts it",
                    origins.join(" or ")
                ));
            }
            let size = self
                .meta
                .blob(&blob)
                .ok()
                .flatten()
                .map(|r| r.size)
                .unwrap_or(0);
            let client = crate::registry::RegistryClient::new(Default::default())
                .map_err(|e| e.to_string())?;
            let name = format!("fsck-{}.refetch-{}", std::process::id(), blob.hex());
            match crate::layer_blobs::refetch(self.store, &client, &blob, size, &origins, &name) {
                Ok(_) => return Ok((blob, media_type)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(cannot(errors.join("; ")))
    }

    /// Blobs recorded as dropped whose file a killed process left: the
    /// drop is finished (the layer was verified before it began).
    fn check_interrupted_drops(&mut self) -> Result<()> {
        let left: Vec<Digest> = self
            .dropped
            .keys()
            .filter(|d| self.store.content().contains(d) && !self.leased_blobs.contains(d))
            .copied()
            .collect();
        for d in left {
            if self.repair {
                self.store.content().remove(&d)?;
            }
            self.report.leftovers.push(Leftover {
                what: format!(
                    "blob {d}: dropped (keep-layer-blobs false), but its file is still here"
                ),
                removed: self.repair,
            });
        }
        Ok(())
    }

    fn check_short_link(&mut self, c: &Digest) {
        let ls = self.store.layer_store();
        let link = ls.link_path(c);
        let target = format!("../{}/diff", c.hex());
        if std::fs::read_link(&link).ok() == Some(target.clone().into()) {
            return;
        }
        let mut fixed = false;
        if self.repair {
            let _ = std::fs::remove_file(&link);
            fixed = std::os::unix::fs::symlink(&target, &link).is_ok();
        }
        self.problem(
            format!(
                "layer {c}: short link l/{} is missing or wrong",
                short_id(c)
            ),
            fixed,
        );
    }

    /// Checks (and repairs); layer folders swept as leftovers go to
    /// `trash` (already moved into `tmp/`), to delete after the lock.
    fn run(mut self, trash: &mut Vec<PathBuf>) -> Result<FsckReport> {
        let meta = self.meta;
        let images = meta.images()?;
        self.report.images_checked = images.len() as u64;
        let blob_records: BTreeMap<Digest, BlobRecord> = meta
            .all::<BlobRecord>(CF_BLOBS)?
            .into_iter()
            .filter_map(|(k, v)| Some((Digest::from_bytes(k.try_into().ok()?), v)))
            .collect();
        let layer_records: BTreeMap<Digest, LayerRecord> = meta
            .all::<LayerRecord>(CF_LAYERS)?
            .into_iter()
            .filter_map(|(k, v)| Some((Digest::from_bytes(k.try_into().ok()?), v)))
            .collect();
        let tags = meta.tags()?;
        (self.blob_refs_before, self.layer_refs_before) = count_uses(&images);
        let mut batch = meta.batch();

        self.check_blob_files(&blob_records, &mut batch)?;
        let uses = layer_uses(&images);
        self.check_shared_files(&layer_records, &uses, &mut batch)?;
        let fates = self.check_layers(&images, &layer_records, &uses)?;

        // Images: broken ones go (unless mounted), a lost index is dropped.
        let mut kept: Vec<ImageRecord> = Vec::new();
        let mut dropped: BTreeSet<Digest> = BTreeSet::new();
        for img in &images {
            let label = image_label(img, &tags);
            let mut missing = Vec::new();
            for (kind, d) in [("manifest", img.manifest), ("config", img.config)] {
                if !self.blob_ok(&d) {
                    missing.push(format!("its {kind} blob {d} is {}", self.blob_state(&d)));
                }
            }
            for c in img.chain_ids() {
                if fates.get(&c) == Some(&Fate::Lost) {
                    missing.push(format!("its layer {c} cannot be restored"));
                }
            }
            if !missing.is_empty() {
                let missing = missing.join(", ");
                if let Some(target) = self.mounted_images.get(&img.manifest).cloned() {
                    self.problem(
                        format!(
                            "image {label}: {missing}; it is mounted at {target}: unmount it, \
                             then run lstore fsck --repair"
                        ),
                        false,
                    );
                    kept.push(img.clone());
                } else if self.repair {
                    self.problem(
                        format!("image {label}: {missing}, removed; pull or load it again"),
                        true,
                    );
                    batch.delete(CF_IMAGES, img.manifest.as_bytes())?;
                    dropped.insert(img.manifest);
                    self.report.images_removed += 1;
                } else {
                    self.problem(
                        format!("image {label}: {missing}; --repair removes it"),
                        false,
                    );
                    kept.push(img.clone());
                }
                continue;
            }
            let mut img = img.clone();
            if let Some(ix) = img.index.filter(|ix| !self.blob_ok(ix)) {
                // The index only tells where the manifest came from: the image
                // stays whole without it (a pull records it again).
                let tail = self.outcome(
                    "the image is kept without it; pull it again to restore the index",
                    "--repair keeps the image without it",
                );
                self.problem(
                    format!(
                        "image {label}: its index blob {ix} is {}; {tail}",
                        self.blob_state(&ix)
                    ),
                    self.repair,
                );
                if self.repair {
                    img.index = None;
                    batch.put(CF_IMAGES, img.manifest.as_bytes(), &img)?;
                }
            }
            kept.push(img);
        }
        for (name, tag) in &tags {
            if dropped.contains(&tag.image) {
                batch.delete(CF_TAGS, name.as_bytes())?;
            } else if !images.iter().any(|i| i.manifest == tag.image) {
                if self.repair {
                    batch.delete(CF_TAGS, name.as_bytes())?;
                }
                self.problem(format!("tag {name} points at a missing image"), self.repair);
            }
        }

        // Records against what the kept images use.
        self.check_blob_records(&kept, &blob_records, &tags, &mut batch)?;
        let lost = self.check_layer_records(&kept, &layer_records, &uses, &fates, &mut batch)?;

        if self.repair {
            for d in &self.corrupt_blobs {
                self.store.content().remove(d)?;
            }
            // A layer whose files changed and that was not extracted again
            // (its mount or containerd keeps it) must not be linked to any
            // more: its entries go, with those of the layers lost.
            let redone: BTreeSet<Digest> = self.reindexed.iter().map(|(c, _)| *c).collect();
            let unindexed: BTreeSet<Digest> = self
                .changed_files
                .keys()
                .filter(|c| !redone.contains(c))
                .chain(lost.iter())
                .copied()
                .collect();
            // Stale entries of layers whose entries all go or are replaced
            // are dropped with the rest below.
            for (entry, now) in &self.stale_entries {
                if !redone.contains(&entry.chain) && !unindexed.contains(&entry.chain) {
                    index::reindex(&mut batch, entry, *now)?;
                }
            }
            for c in &unindexed {
                index::drop_layer(meta, &mut batch, c)?;
            }
            for (c, entries) in &self.reindexed {
                index::drop_layer(meta, &mut batch, c)?;
                index::put(&mut batch, c, entries)?;
            }
            if !batch.is_empty() {
                batch.commit()?;
            }
            // After the records: a crash in between leaves folders no record
            // names, which the next repair or gc removes.
            for c in lost {
                let name = format!("fsck-{}.trash-{}", std::process::id(), c.hex());
                self.store.layer_store().remove(&c, &name)?;
            }
        }
        self.check_interrupted_drops()?;
        self.sweep_leftovers(&fates, trash)?;
        self.check_view()?;
        Ok(self.report)
    }

    /// The containers/storage view: as the records describe it, or (when
    /// repairing) made so. A stale view is what a crash between a
    /// command's records and its view leaves.
    fn check_view(&mut self) -> Result<()> {
        if !crate::cstorage::is_stale(self.store, self.meta)? {
            return Ok(());
        }
        if self.repair {
            crate::cstorage::refresh(self.store, self.meta)?;
        }
        let tail = self.outcome("rewritten", "--repair rewrites it");
        self.problem(
            format!("{}/ is out of date: {tail}", crate::cstorage::VIEW_DIR),
            self.repair,
        );
        Ok(())
    }

    /// Reports the leftovers, and removes them when repairing: what `gc`'s
    /// sweep takes when no image is dropped (blobs and layers no image
    /// uses, never what a live lease names), stray names and dangling short
    /// links. Runs after the repair's records are written, so it sees what
    /// they describe. Damage already reported (a corrupt blob, a lost
    /// layer, the short link of a layer to restore) is not repeated.
    fn sweep_leftovers(
        &mut self,
        fates: &BTreeMap<Digest, Fate>,
        trash: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let store = self.store;
        let plan = crate::gc::plan_sweep(store, self.meta, &BTreeSet::new(), &BTreeSet::new())?;
        let removed = self.repair;
        let recorded_blobs: HashSet<&Digest> = plan.unused_blob_records().iter().collect();
        let recorded_layers: HashSet<&Digest> = plan.unused_layer_records().iter().collect();
        let why = |recorded: bool| {
            if recorded {
                "no image uses it"
            } else {
                "no record names it"
            }
        };
        for d in plan.unused_blobs() {
            if !self.good_blobs.contains_key(d) {
                continue;
            }
            let what = format!("blob {d}: {}", why(recorded_blobs.contains(d)));
            self.report.leftovers.push(Leftover { what, removed });
        }
        for c in plan.unused_layers() {
            let present = std::fs::symlink_metadata(store.layer_store().dir(c)).is_ok();
            if !present || fates.get(c) == Some(&Fate::Lost) {
                continue;
            }
            let what = format!("layer folder {c}: {}", why(recorded_layers.contains(c)));
            self.report.leftovers.push(Leftover { what, removed });
        }
        let strays = crate::gc::strays(store, &self.leased_layers)?;
        let strays: Vec<PathBuf> = strays
            .into_iter()
            .filter(|p| {
                // The link of a layer checked above is part of its repair.
                let chain = std::fs::read_link(p).ok().and_then(|t| linked_chain(&t));
                !chain.is_some_and(|c| fates.contains_key(&c))
            })
            .collect();
        let links = store.layer_store().links_dir();
        for p in &strays {
            let what = if p.parent() == Some(links.as_path()) {
                format!("short link {} names no layer", p.display())
            } else {
                format!("stray {} is no blob or layer folder", p.display())
            };
            self.report.leftovers.push(Leftover { what, removed });
        }
        if self.repair {
            let mut swept = Removal::default();
            crate::gc::apply_sweep(store, self.meta, &plan, &mut swept, trash)?;
            for p in &strays {
                remove_tree(p)?;
            }
        }
        Ok(())
    }

    /// Blob records: files gone, records missing, reference counts.
    fn check_blob_records(
        &mut self,
        kept: &[ImageRecord],
        records: &BTreeMap<Digest, BlobRecord>,
        tags: &[(String, crate::meta::TagRecord)],
        batch: &mut crate::meta::Batch<'_>,
    ) -> Result<()> {
        let mut users: BTreeMap<Digest, Vec<&ImageRecord>> = BTreeMap::new();
        for img in kept {
            for b in img.blobs() {
                users.entry(b).or_default().push(img);
            }
        }
        let media_types = blob_media_types(kept);
        let digests: BTreeSet<Digest> = records.keys().chain(users.keys()).copied().collect();
        for d in digests {
            let using = users.get(&d).map(Vec::as_slice).unwrap_or_default();
            let want = using.len() as u64;
            let have = self.good_blobs.get(&d).copied();
            let leased = self.leased_blobs.contains(&d);
            let names = || {
                using
                    .iter()
                    .map(|i| image_label(i, tags))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match records.get(&d) {
                Some(rec) => {
                    if have.is_none() && !leased && !self.dropped.contains_key(&d) {
                        let state = self.blob_state(&d);
                        if want == 0 {
                            let tail =
                                self.outcome("record removed", "--repair removes the record");
                            self.problem(
                                format!("blob {d} is recorded but its file is {state}; nothing needs it: {tail}"),
                                self.repair,
                            );
                            if self.repair {
                                batch.delete(CF_BLOBS, d.as_bytes())?;
                            }
                            continue;
                        }
                        // Only a layer blob gets here (a lost manifest or
                        // config removes the image): the layer is extracted,
                        // so the image still mounts. Removing the image would
                        // lose what still works; it is kept and the blob
                        // reported, for push and save need it.
                        self.problem(
                            format!(
                                "blob {d} is recorded but its file is {state}; image {} \
                                 still mounts, but push and save need the blob: pull or \
                                 load the image again",
                                names()
                            ),
                            false,
                        );
                    }
                    // A count that was wrong is a problem; one that changes
                    // because an image was removed just now is not.
                    let before = self.blob_refs_before.get(&d).copied().unwrap_or(0);
                    if rec.refs != before {
                        self.problem(
                            format!("blob {d}: reference count {} should be {before}", rec.refs),
                            self.repair,
                        );
                    }
                    if self.repair && rec.refs != want {
                        let mut r = rec.clone();
                        r.refs = want;
                        batch.put(CF_BLOBS, d.as_bytes(), &r)?;
                    }
                }
                None if leased => {}
                None => match have {
                    Some(size) => {
                        let tail = self.outcome("record rebuilt", "--repair rebuilds it");
                        self.problem(
                            format!(
                                "image {} uses blob {d}, which has no record; {tail}",
                                names()
                            ),
                            self.repair,
                        );
                        if self.repair {
                            let rec = BlobRecord {
                                size,
                                media_type: media_types.get(&d).cloned().unwrap_or_default(),
                                refs: want,
                            };
                            batch.put(CF_BLOBS, d.as_bytes(), &rec)?;
                        }
                    }
                    None => self.problem(
                        format!(
                            "image {} uses blob {d}, which is {} and has no record: pull or \
                             load the image again",
                            names(),
                            self.blob_state(&d)
                        ),
                        false,
                    ),
                },
            }
        }
        Ok(())
    }

    /// Layer records: dropped with their layer, rebuilt, recounted.
    /// Returns the folders to remove after the records are written.
    fn check_layer_records(
        &mut self,
        kept: &[ImageRecord],
        records: &BTreeMap<Digest, LayerRecord>,
        uses: &BTreeMap<Digest, LayerUse>,
        fates: &BTreeMap<Digest, Fate>,
        batch: &mut crate::meta::Batch<'_>,
    ) -> Result<Vec<Digest>> {
        let (_, count) = count_uses(kept);
        let mut trash = Vec::new();
        let chains: BTreeSet<Digest> = records.keys().chain(count.keys()).copied().collect();
        for c in chains {
            let want = count.get(&c).copied().unwrap_or(0);
            let fate = fates.get(&c);
            match records.get(&c) {
                Some(_) if fate == Some(&Fate::Lost) && want == 0 => {
                    if self.repair {
                        batch.delete(CF_LAYERS, c.as_bytes())?;
                        trash.push(c);
                    }
                }
                Some(rec) => {
                    let mut r = rec.clone();
                    if let Some(Fate::Restored { file_bytes, .. }) = fate {
                        r.file_bytes = *file_bytes;
                    }
                    let before = self.layer_refs_before.get(&c).copied().unwrap_or(0);
                    if rec.refs != before {
                        self.problem(
                            format!("layer {c}: reference count {} should be {before}", rec.refs),
                            self.repair,
                        );
                    }
                    r.refs = want;
                    if self.repair && r != *rec {
                        batch.put(CF_LAYERS, c.as_bytes(), &r)?;
                    }
                }
                None if fate == Some(&Fate::Lost) => {
                    if self.repair && self.store.layer_store().dir(&c).exists() {
                        trash.push(c);
                    }
                }
                None if self.leased_layers.contains(&c) => {}
                None => {
                    let Some(layer) = uses.get(&c) else {
                        continue;
                    };
                    let restorable = matches!(fate, Some(Fate::Intact | Fate::Restored { .. }));
                    let repaired = self.repair && restorable;
                    self.problem(
                        format!(
                            "layer {c} is used by {want} image(s) but has no record{}",
                            if repaired { "; record rebuilt" } else { "" }
                        ),
                        repaired,
                    );
                    if repaired {
                        let (size, file_bytes) = match fate {
                            Some(Fate::Restored { size, file_bytes }) => (*size, *file_bytes),
                            _ => (
                                layer.size,
                                tree_size(&self.store.layer_store().diff_dir(&c)),
                            ),
                        };
                        let rec = LayerRecord {
                            diff_id: layer.diff_id,
                            parent: layer.parents.first().copied(),
                            size,
                            file_bytes,
                            refs: want,
                        };
                        batch.put(CF_LAYERS, c.as_bytes(), &rec)?;
                    }
                }
            }
        }
        Ok(trash)
    }
}

/// How many images use each blob and each layer.
fn count_uses(images: &[ImageRecord]) -> (BTreeMap<Digest, u64>, BTreeMap<Digest, u64>) {
    let mut blobs = BTreeMap::new();
    let mut layers = BTreeMap::new();
    for img in images {
        for b in img.blobs() {
            *blobs.entry(b).or_insert(0) += 1;
        }
        for c in img.chain_ids() {
            *layers.entry(c).or_insert(0) += 1;
        }
    }
    (blobs, layers)
}

/// `sha256:<id> (name:tag, …)`: how reports name an image.
fn image_label(img: &ImageRecord, tags: &[(String, crate::meta::TagRecord)]) -> String {
    let names: Vec<String> = tags
        .iter()
        .filter(|(_, t)| t.image == img.manifest)
        .map(|(n, _)| {
            Reference::parse(n)
                .map(|r| r.familiar())
                .unwrap_or_else(|_| n.clone())
        })
        .collect();
    if names.is_empty() {
        img.config.to_string()
    } else {
        format!("{} ({})", img.config, names.join(", "))
    }
}

impl Store {
    /// `lstore fsck [--repair]`; see the module comment.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut trash = Vec::new();
        let report = self.session(|meta| {
            // What running commands hold is theirs, not a problem.
            let mut leased_blobs = HashSet::new();
            let mut leased_layers = HashSet::new();
            for lease in crate::lock::live_leases(&self.root().join("leases"))? {
                if let (true, Some(c)) = (lease.live, lease.content) {
                    leased_blobs.extend(c.blobs);
                    leased_layers.extend(c.layers);
                }
            }
            let mut mounted_images = BTreeMap::new();
            let mut mounted_layers = BTreeMap::new();
            for m in crate::mount::live_mount_records(self) {
                for l in &m.layers {
                    mounted_layers.insert(*l, m.target.clone());
                }
                mounted_images.insert(m.image, m.target);
            }
            // Any process's overlay mounts: a layer they use is left as
            // it is (gc keeps it too), however damaged or unused.
            for (l, target) in crate::gc::mounted_layers(self) {
                mounted_layers
                    .entry(l)
                    .or_insert_with(|| target.to_string_lossy().into_owned());
            }
            Check {
                store: self,
                meta,
                repair,
                report: FsckReport::default(),
                leased_blobs,
                leased_layers,
                containerd_layers: meta.layers_held_by_snapshots()?,
                mounted_images,
                mounted_layers,
                good_blobs: BTreeMap::new(),
                corrupt_blobs: BTreeSet::new(),
                dropped: meta.dropped_blobs()?,
                blob_refs_before: BTreeMap::new(),
                layer_refs_before: BTreeMap::new(),
                changed_files: BTreeMap::new(),
                reindexed: Vec::new(),
                stale_entries: Vec::new(),
            }
            .run(&mut trash)
        });
        // Swept layer folders are deleted outside the lock, as gc does.
        crate::gc::empty_trash(self, trash);
        report
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::import::{import, ImportRequest, LayerSource, NoProgress};
    use crate::layers::LayerStore;
    use crate::lock::LeaseContent;
    use crate::meta::ImageLayer;
    use crate::oci::Descriptor;
    use crate::store::StoreOptions;
    use std::io::Read;

    fn layer_store() -> (tempfile::TempDir, LayerStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let ls = LayerStore::new(dir.path().join("overlay2"), dir.path().join("tmp"));
        (dir, ls)
    }

    #[test]
    fn lower_names_the_parents_nearest_first() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(expected_lower(&[]), None);
        assert_eq!(
            expected_lower(&[b, a]),
            Some(format!("l/{}:l/{}", short_id(&b), short_id(&a)))
        );
    }

    #[test]
    fn each_kind_of_folder_damage_is_seen() {
        let (_dir, ls) = layer_store();
        let (base, top) = (Digest::of(b"base"), Digest::of(b"top"));
        ls.commit(ls.stage("t.base").unwrap(), &base, &[]).unwrap();
        ls.commit(ls.stage("t.top").unwrap(), &top, &[base])
            .unwrap();
        assert_eq!(folder_state(&ls, &base, Some(&[])), FolderState::Intact);
        assert_eq!(folder_state(&ls, &top, Some(&[base])), FolderState::Intact);
        // The parents decide what `lower` must say.
        assert!(matches!(
            folder_state(&ls, &top, Some(&[])),
            FolderState::Damaged(_)
        ));
        assert_eq!(folder_state(&ls, &top, None), FolderState::Intact);

        let damaged = |what: &str| FolderState::Damaged(what.to_string());
        std::fs::write(ls.dir(&top).join("lower"), "l/X").unwrap();
        assert_eq!(
            folder_state(&ls, &top, Some(&[base])),
            damaged("lower is missing or wrong")
        );
        std::fs::remove_dir(ls.dir(&top).join("work")).unwrap();
        assert_eq!(folder_state(&ls, &top, None), damaged("no work/"));
        std::fs::write(ls.dir(&top).join("link"), "WRONG").unwrap();
        assert_eq!(
            folder_state(&ls, &top, None),
            damaged("link is missing or wrong")
        );
        std::fs::remove_dir(ls.diff_dir(&top)).unwrap();
        assert_eq!(folder_state(&ls, &top, None), damaged("no diff/"));
        crate::layers::remove_tree(&ls.dir(&top)).unwrap();
        assert_eq!(folder_state(&ls, &top, None), FolderState::Missing);
        std::fs::write(ls.dir(&top), b"").unwrap();
        assert_eq!(folder_state(&ls, &top, None), damaged("not a directory"));
    }

    fn image_record(manifest: &[u8], layers: &[(&[u8], &[u8])]) -> ImageRecord {
        let mut chain: Option<Digest> = None;
        ImageRecord {
            manifest: Digest::of(manifest),
            manifest_media_type: oci::OCI_MANIFEST.into(),
            manifest_size: 1,
            config: Digest::of(b"config"),
            config_size: 1,
            index: None,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            created: None,
            layers: layers
                .iter()
                .map(|(blob, diff)| {
                    let diff_id = Digest::of(diff);
                    let c = crate::digest::chain_ids(&[diff_id])[0];
                    let c = chain.map_or(c, |p| Digest::of(format!("{p} {diff_id}").as_bytes()));
                    chain = Some(c);
                    ImageLayer {
                        digest: Digest::of(blob),
                        diff_id,
                        chain_id: c,
                        media_type: oci::OCI_LAYER_GZIP.into(),
                        compressed_size: 1,
                        size: 2,
                    }
                })
                .collect(),
            stored_at: 0,
        }
    }

    #[test]
    fn a_layer_carried_by_two_blobs_knows_both() {
        let gzip = image_record(b"m1", &[(b"base.gz", b"base"), (b"app.gz", b"app")]);
        let zstd = image_record(b"m2", &[(b"base.zst", b"base")]);
        let uses = layer_uses(&[gzip.clone(), zstd.clone()]);
        assert_eq!(uses.len(), 2);
        let base = &uses[&gzip.layers[0].chain_id];
        assert_eq!(base.blobs.len(), 2);
        assert_eq!(base.images.len(), 2);
        assert!(base.parents.is_empty());
        let app = &uses[&gzip.layers[1].chain_id];
        assert_eq!(app.parents, vec![gzip.layers[0].chain_id]);
        assert_eq!(
            app.blobs,
            vec![(Digest::of(b"app.gz"), oci::OCI_LAYER_GZIP.into())]
        );
        let (blobs, layers) = count_uses(&[gzip.clone(), zstd]);
        assert_eq!(blobs[&Digest::of(b"config")], 2);
        assert_eq!(layers[&gzip.layers[0].chain_id], 2);
    }

    #[test]
    fn only_content_errors_condemn_a_layer() {
        let d = Digest::of(b"x");
        let mismatch = Error::DigestMismatch {
            what: "x".into(),
            expected: d,
            actual: d,
        };
        assert!(blob_cannot_give_layer(&mismatch));
        let bad_tar = Error::Unpack {
            layer: "x".into(),
            source: UnpackError::InvalidTar {
                offset: 0,
                reason: "x".into(),
            },
        };
        assert!(blob_cannot_give_layer(&bad_tar));
        let full = Error::Unpack {
            layer: "x".into(),
            source: UnpackError::Io(std::io::Error::other("no space left")),
        };
        assert!(!blob_cannot_give_layer(&full));
        assert!(!blob_cannot_give_layer(&Error::io(
            "x",
            std::io::Error::other("x")
        )));
    }

    struct OneBlob(Vec<u8>);

    impl LayerSource for OneBlob {
        fn open(&self, _index: usize) -> Result<Box<dyn Read + Send>> {
            Ok(Box::new(std::io::Cursor::new(self.0.clone())))
        }
    }

    /// A store holding one single-layer image; returns the layer's chain id.
    pub(crate) fn store_with_an_image() -> (tempfile::TempDir, Store, Digest) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "hello", &b"world"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let desc = Descriptor::new(oci::OCI_LAYER_GZIP, Digest::of(&blob), blob.len() as u64);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        )
        .into_bytes();
        let config_digest = Digest::of(&config);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let source = OneBlob(blob);
        import(
            &store,
            ImportRequest {
                names: vec![Reference::parse("example.com/fsck:1").unwrap()],
                repo_digest: None,
                index: None,
                manifest: None,
                config: (config, config_digest),
                layers: vec![Some(desc)],
                source: &source,
                progress: &NoProgress,
            },
        )
        .unwrap();
        (dir, store, diff_id)
    }

    #[test]
    fn a_layer_a_running_command_holds_is_left_alone_until_it_is_done() {
        let (_dir, store, chain) = store_with_an_image();
        assert!(store.fsck(false).unwrap().clean());
        crate::layers::remove_tree(&store.layer_store().dir(&chain)).unwrap();

        let lease = store
            .session(|_| {
                store.lease(&LeaseContent {
                    pid: std::process::id(),
                    blobs: vec![],
                    layers: vec![chain],
                })
            })
            .unwrap();
        let report = store.fsck(true).unwrap();
        assert!(report.clean(), "{report:?}");
        assert_eq!(report.layers_reextracted, 0);
        assert!(!store.layer_store().is_present(&chain));

        drop(lease);
        let report = store.fsck(false).unwrap();
        assert!(!report.clean());
        assert!(report.problems[0].what.contains(&chain.to_string()));
        let report = store.fsck(true).unwrap();
        assert!(report.clean(), "{report:?}");
        assert_eq!(report.layers_reextracted, 1);
        let hello = store.layer_store().diff_dir(&chain).join("hello");
        assert_eq!(std::fs::read(hello).unwrap(), b"world");
        assert!(store.fsck(false).unwrap().problems.is_empty());
    }

    #[test]
    fn a_layer_without_its_tar_split_record_gets_it_back_from_its_blob() {
        let (_dir, store, chain) = store_with_an_image();
        let ls = store.layer_store();
        let record = ls.tar_split_path(&chain);
        let summary = ls.dir(&chain).join(tarsplit::SUMMARY_FILE);
        let original = std::fs::read(&record).unwrap();
        let original_summary = tarsplit::summary(&record).unwrap();
        assert_eq!(original_summary.uids, vec![0]);
        std::fs::remove_file(&record).unwrap();
        std::fs::remove_file(&summary).unwrap();

        let report = store.fsck(false).unwrap();
        // The containers-storage view links records that exist, so it is
        // out of date too until the record is back.
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(
            report.problems[0].what.contains("no tar-split record"),
            "{report:?}"
        );
        assert!(report.problems[1].what.contains("containers-storage/"));
        assert!(!record.exists());
        let report = store.fsck(true).unwrap();
        assert!(report.clean(), "{report:?}");
        assert!(report.problems[0].repaired, "{report:?}");
        assert_eq!(std::fs::read(&record).unwrap(), original);
        assert_eq!(tarsplit::summary(&record).unwrap(), original_summary);
        assert!(store.fsck(false).unwrap().problems.is_empty());
        // Nothing left behind under tmp/.
        let tmp = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
        assert_eq!(tmp, 0);

        // A record describing another tar is found too.
        std::fs::write(&summary, br#"{"tar_size":1,"uids":[],"gids":[]}"#).unwrap();
        let report = store.fsck(false).unwrap();
        assert!(
            report.problems[0].what.contains("bytes of tar"),
            "{report:?}"
        );
        assert!(store.fsck(true).unwrap().clean());
        assert_eq!(tarsplit::summary(&record).unwrap(), original_summary);
    }

    #[test]
    fn ensure_tar_split_makes_the_record_or_says_why_not() {
        let (_dir, store, chain) = store_with_an_image();
        let ls = store.layer_store();
        let record = ls.tar_split_path(&chain);
        let original = std::fs::read(&record).unwrap();
        std::fs::remove_file(&record).unwrap();
        assert_eq!(tarsplit::ensure_tar_split(&store, &chain).unwrap(), record);
        assert_eq!(std::fs::read(&record).unwrap(), original);
        // Present: nothing to do, even without a blob.
        let blob = store
            .image_records()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .layers[0]
            .digest;
        std::fs::remove_file(store.content().path(&blob)).unwrap();
        assert_eq!(tarsplit::ensure_tar_split(&store, &chain).unwrap(), record);
        std::fs::remove_file(&record).unwrap();
        let err = tarsplit::ensure_tar_split(&store, &chain).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TarSplit(tarsplit::TarSplitError::BlobMissing { .. })
            ),
            "{err}"
        );
        let err = tarsplit::ensure_tar_split(&store, &Digest::of(b"no such layer")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TarSplit(tarsplit::TarSplitError::UnknownLayer { .. })
            ),
            "{err}"
        );
        // fsck says the same: no blob to make it from.
        let report = store.fsck(true).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.what.contains("no blob of it is here") && !p.repaired),
            "{report:?}"
        );
    }

    #[test]
    fn leftovers_a_running_command_holds_are_left_alone_then_swept() {
        let (_dir, store, chain) = store_with_an_image();
        let blob = Digest::of(b"being written");
        std::fs::write(store.content().path(&blob), b"being written").unwrap();
        let layer = Digest::of(b"being extracted");
        let ls = store.layer_store();
        ls.commit(ls.stage("t.leftover").unwrap(), &layer, &[])
            .unwrap();
        let lease = store
            .session(|_| {
                store.lease(&LeaseContent {
                    pid: std::process::id(),
                    blobs: vec![blob],
                    layers: vec![layer],
                })
            })
            .unwrap();
        let report = store.fsck(true).unwrap();
        assert!(report.clean(), "{report:?}");
        assert!(report.leftovers.is_empty(), "{report:?}");
        assert!(store.content().contains(&blob));
        assert!(ls.is_present(&layer));

        // Its command gone, both are leftovers, not damage.
        drop(lease);
        let report = store.fsck(false).unwrap();
        assert!(!report.clean());
        assert!(report.problems.is_empty(), "{report:?}");
        let named = |d: &Digest| {
            report
                .leftovers
                .iter()
                .any(|l| l.what.contains(&d.to_string()) && !l.removed)
        };
        assert!(named(&blob) && named(&layer), "{report:?}");
        assert_eq!(report.leftovers.len(), 2, "{report:?}");

        let report = store.fsck(true).unwrap();
        assert!(report.clean(), "{report:?}");
        assert_eq!(report.leftovers.len(), 2, "{report:?}");
        assert!(report.leftovers.iter().all(|l| l.removed));
        assert!(!store.content().contains(&blob));
        assert!(!ls.is_present(&layer));
        assert!(ls.is_present(&chain), "the image's own layer stays");
        let report = store.fsck(false).unwrap();
        assert!(report.clean() && report.leftovers.is_empty(), "{report:?}");
    }

    #[test]
    fn a_blob_that_gives_another_layer_is_refused() {
        let (_dir, store, chain) = store_with_an_image();
        let images = store.image_records().unwrap();
        let img = images.values().next().unwrap();
        // The records say the layer has another diff id than the blob gives.
        let want = LayerUse {
            diff_id: Digest::of(b"another layer"),
            parents: vec![],
            blobs: vec![(img.layers[0].digest, img.layers[0].media_type.clone())],
            size: 0,
            images: BTreeSet::new(),
        };
        let err = store
            .session(|meta| {
                let check = Check {
                    store: &store,
                    meta,
                    repair: true,
                    report: FsckReport::default(),
                    leased_blobs: HashSet::new(),
                    leased_layers: HashSet::new(),
                    containerd_layers: HashSet::new(),
                    mounted_images: BTreeMap::new(),
                    mounted_layers: BTreeMap::new(),
                    good_blobs: BTreeMap::new(),
                    dropped: BTreeMap::new(),
                    corrupt_blobs: BTreeSet::new(),
                    blob_refs_before: BTreeMap::new(),
                    layer_refs_before: BTreeMap::new(),
                    changed_files: BTreeMap::new(),
                    reindexed: Vec::new(),
                    stale_entries: Vec::new(),
                };
                Ok(check
                    .reextract(&chain, &want, &img.layers[0].digest, oci::OCI_LAYER_GZIP)
                    .unwrap_err())
            })
            .unwrap();
        assert!(blob_cannot_give_layer(&err), "{err}");
        // Nothing was swapped in, nothing left in tmp/.
        assert!(store.layer_store().is_present(&chain));
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
    }
}
