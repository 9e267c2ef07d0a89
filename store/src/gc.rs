//! Mark and sweep.
//!
//! Roots are tags, live mounts and the leases of running commands. The mark
//! walks every kept image to the blobs and layers it uses; the counts it
//! finds become the stored reference counts (and any stored count that
//! disagreed is reported). Everything unmarked is swept, except the layer
//! folders that live overlay mounts of any process use (found in the
//! kernel's mount tables): those keep their folder and record, with no
//! user counted, until a gc after the unmount.
//!
//! Crash safety: the database records go first, in one atomic batch; then,
//! still under the root lock, layer folders are renamed into `tmp/` (one
//! step each) and blob files unlinked; the renamed folders are deleted after
//! the lock is released. A crash at any point leaves files that no record
//! names, and the next gc removes them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::images::{KeptLayer, Removal};
use crate::layers::{freed_by_removing, remove_tree};
use crate::lock::{lease_of_entry, live_leases};
use crate::meta::{
    BlobRecord, ImageRecord, LayerRecord, Meta, CF_BLOBS, CF_IMAGES, CF_LAYERS, CF_TAGS,
};
use crate::store::Store;

/// What a sweep will change.
#[derive(Debug, Default)]
pub(crate) struct SweepPlan {
    drop_tags: Vec<String>,
    drop_images: Vec<Digest>,
    /// Image ids (config digests) of `drop_images`, for the report.
    drop_ids: Vec<Digest>,
    blob_records: Vec<Digest>,
    layer_records: Vec<Digest>,
    blob_files: Vec<Digest>,
    layer_dirs: Vec<Digest>,
    blob_refs: Vec<(Digest, BlobRecord)>,
    layer_refs: Vec<(Digest, LayerRecord)>,
    /// Unused layers kept because a live overlay mount uses them, with a
    /// mount point of each.
    kept_mounted: BTreeMap<Digest, PathBuf>,
    refcount_fixes: u64,
}

impl SweepPlan {
    /// Blob files the sweep removes (no kept image uses them).
    pub(crate) fn unused_blobs(&self) -> &[Digest] {
        &self.blob_files
    }

    /// Layer folders the sweep removes (no kept image uses them).
    pub(crate) fn unused_layers(&self) -> &[Digest] {
        &self.layer_dirs
    }

    /// Blob records the sweep deletes (no kept image uses them).
    pub(crate) fn unused_blob_records(&self) -> &[Digest] {
        &self.blob_records
    }

    /// Layer records the sweep deletes (no kept image uses them).
    pub(crate) fn unused_layer_records(&self) -> &[Digest] {
        &self.layer_records
    }
}

/// Counts, over `images`, how many use each blob and each layer.
fn mark(images: &[&ImageRecord]) -> (BTreeMap<Digest, u64>, BTreeMap<Digest, u64>) {
    let mut blobs = BTreeMap::new();
    let mut layers = BTreeMap::new();
    for img in images {
        for b in img.blobs() {
            *blobs.entry(b).or_insert(0) += 1;
        }
        for l in img.chain_ids() {
            *layers.entry(l).or_insert(0) += 1;
        }
    }
    (blobs, layers)
}

/// Blobs and layers that running commands hold, and their live lease ids.
fn leased(store: &Store) -> Result<(HashSet<Digest>, HashSet<Digest>, HashSet<String>)> {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    let mut ids = HashSet::new();
    for lease in live_leases(&store.root().join("leases"))? {
        if !lease.live {
            continue;
        }
        ids.insert(lease.id.clone());
        if let Some(c) = lease.content {
            blobs.extend(c.blobs);
            layers.extend(c.layers);
        }
    }
    Ok((blobs, layers, ids))
}

/// Images that live mounts use (records under `mounts/`).
fn mounted_images(store: &Store) -> BTreeSet<Digest> {
    crate::mount::live_mount_records(store)
        .into_iter()
        .map(|m| m.image)
        .collect()
}

/// Layers that live overlay mounts of any process use, with a mount point
/// of each.
pub(crate) fn mounted_layers(store: &Store) -> BTreeMap<Digest, PathBuf> {
    crate::mounts_in_use::layers_in_use(store.layer_store().root())
}

impl SweepPlan {
    /// Whether unused layer `d` stays because a mount uses it (noted for
    /// the report).
    fn kept_by_mount(&mut self, mounted: &BTreeMap<Digest, PathBuf>, d: &Digest) -> bool {
        let Some(mount_point) = mounted.get(d) else {
            return false;
        };
        self.kept_mounted.insert(*d, mount_point.clone());
        true
    }
}

/// Plans the removal of `drop_tags` and `doomed` images with a full mark:
/// every unmarked record and file is swept, not only what the doomed images
/// used, and every stored count is set to what the mark found.
pub(crate) fn plan_sweep(
    store: &Store,
    meta: &Meta,
    drop_tags: &BTreeSet<String>,
    doomed: &BTreeSet<Digest>,
) -> Result<SweepPlan> {
    let all = meta.images()?;
    let mounted = mounted_images(store);
    let doomed: BTreeSet<Digest> = doomed
        .iter()
        .filter(|d| !mounted.contains(d))
        .copied()
        .collect();
    let kept: Vec<&ImageRecord> = all
        .iter()
        .filter(|i| !doomed.contains(&i.manifest))
        .collect();
    let everyone: Vec<&ImageRecord> = all.iter().collect();
    let (blob_count, layer_count) = mark(&kept);
    let (blob_before, layer_before) = mark(&everyone);
    let (leased_blobs, mut leased_layers, _) = leased(store)?;
    // Layers containerd holds snapshots of (`lstore snapshotter`) stay.
    leased_layers.extend(meta.layers_held_by_snapshots()?);
    let in_use = mounted_layers(store);

    let mut plan = SweepPlan {
        drop_tags: drop_tags.iter().cloned().collect(),
        drop_images: doomed.iter().copied().collect(),
        drop_ids: all
            .iter()
            .filter(|i| doomed.contains(&i.manifest))
            .map(|i| i.config)
            .collect(),
        ..SweepPlan::default()
    };

    // Candidates: every record.
    let blob_records = meta.all::<BlobRecord>(CF_BLOBS)?;
    let layer_records = meta.all::<LayerRecord>(CF_LAYERS)?;

    for (key, mut rec) in blob_records {
        let Ok(bytes) = <[u8; 32]>::try_from(key.as_slice()) else {
            continue;
        };
        let d = Digest::from_bytes(bytes);
        let before = blob_before.get(&d).copied().unwrap_or(0);
        if rec.refs != before {
            plan.refcount_fixes += 1;
        }
        let now = blob_count.get(&d).copied().unwrap_or(0);
        let candidate = now == 0;
        if candidate && !leased_blobs.contains(&d) {
            plan.blob_records.push(d);
            plan.blob_files.push(d);
        } else if rec.refs != now {
            // Kept (used, or leased by a running command that will count
            // itself in when it commits): the count must still be true.
            rec.refs = now;
            plan.blob_refs.push((d, rec));
        }
    }
    for (key, mut rec) in layer_records {
        let Ok(bytes) = <[u8; 32]>::try_from(key.as_slice()) else {
            continue;
        };
        let d = Digest::from_bytes(bytes);
        let before = layer_before.get(&d).copied().unwrap_or(0);
        if rec.refs != before {
            plan.refcount_fixes += 1;
        }
        let now = layer_count.get(&d).copied().unwrap_or(0);
        let candidate = now == 0;
        if candidate && !leased_layers.contains(&d) && !plan.kept_by_mount(&in_use, &d) {
            plan.layer_records.push(d);
            plan.layer_dirs.push(d);
        } else if rec.refs != now {
            // Kept (used, leased by a running command that will count
            // itself in when it commits, or mounted): the count must still
            // be true.
            rec.refs = now;
            plan.layer_refs.push((d, rec));
        }
    }

    // Files no record names: left by a crash or an interrupted command.
    // (Sets, not the plan's lists: a store emptied by rmi has as many
    // planned removals as files.)
    let planned_blobs: HashSet<Digest> = plan.blob_files.iter().copied().collect();
    let (on_disk, _) = store.content().list()?;
    for d in on_disk {
        if !blob_count.contains_key(&d) && !leased_blobs.contains(&d) && !planned_blobs.contains(&d)
        {
            plan.blob_files.push(d);
        }
    }
    let planned_layers: HashSet<Digest> = plan.layer_dirs.iter().copied().collect();
    let (dirs, _) = store.layer_store().list()?;
    for d in dirs {
        if !layer_count.contains_key(&d)
            && !leased_layers.contains(&d)
            && !planned_layers.contains(&d)
            && !plan.kept_by_mount(&in_use, &d)
        {
            plan.layer_dirs.push(d);
        }
    }
    Ok(plan)
}

/// Plans `rmi`: the removal of `drop_tags` and `doomed` images, with the
/// stored reference counts (kept true by every batch that adds or drops an
/// image) instead of a mark over the whole store, so its cost follows the
/// size of the doomed images, not of the store. A blob or layer whose count
/// falls to zero goes, unless a running command holds it; a count that was
/// wrong is left to the next `gc`, whose mark sets every count.
pub(crate) fn plan_removal(
    store: &Store,
    meta: &Meta,
    drop_tags: &BTreeSet<String>,
    doomed: &BTreeSet<Digest>,
) -> Result<SweepPlan> {
    let mounted = mounted_images(store);
    let mut doomed_images = Vec::new();
    for d in doomed.iter().filter(|d| !mounted.contains(d)) {
        if let Some(img) = meta.image(d)? {
            doomed_images.push(img);
        }
    }
    let (leased_blobs, mut leased_layers, _) = leased(store)?;
    leased_layers.extend(meta.layers_held_by_snapshots()?);
    let in_use = mounted_layers(store);
    let mut plan = SweepPlan {
        drop_tags: drop_tags.iter().cloned().collect(),
        drop_images: doomed_images.iter().map(|i| i.manifest).collect(),
        drop_ids: doomed_images.iter().map(|i| i.config).collect(),
        ..SweepPlan::default()
    };
    let (blob_uses, layer_uses) = mark(&doomed_images.iter().collect::<Vec<_>>());
    for (d, uses) in blob_uses {
        let Some(mut rec) = meta.blob(&d)? else {
            continue;
        };
        let now = rec.refs.saturating_sub(uses);
        if now == 0 && !leased_blobs.contains(&d) {
            plan.blob_records.push(d);
            plan.blob_files.push(d);
        } else if rec.refs != now {
            rec.refs = now;
            plan.blob_refs.push((d, rec));
        }
    }
    for (d, uses) in layer_uses {
        let Some(mut rec) = meta.layer(&d)? else {
            continue;
        };
        let now = rec.refs.saturating_sub(uses);
        if now == 0 && !leased_layers.contains(&d) && !plan.kept_by_mount(&in_use, &d) {
            plan.layer_records.push(d);
            plan.layer_dirs.push(d);
        } else if rec.refs != now {
            rec.refs = now;
            plan.layer_refs.push((d, rec));
        }
    }
    Ok(plan)
}

impl SweepPlan {
    /// The blob files and layer folders the plan removes.
    fn paths(&self, store: &Store) -> Vec<PathBuf> {
        let blobs = self.blob_files.iter().map(|d| store.content().path(d));
        let layers = self.layer_dirs.iter().map(|d| store.layer_store().dir(d));
        blobs.chain(layers).collect()
    }
}

/// Applies a plan: records first (one batch), then files. Layer folders go
/// to `trash` (already renamed into tmp/) for deletion after the lock.
pub(crate) fn apply_sweep(
    store: &Store,
    meta: &Meta,
    plan: &SweepPlan,
    report: &mut Removal,
    trash: &mut Vec<PathBuf>,
) -> Result<()> {
    report.refcount_fixes += plan.refcount_fixes;
    report.deleted_images.extend(plan.drop_ids.iter().copied());
    report.deleted_blobs += plan.blob_files.len() as u64;
    report.deleted_layers += plan.layer_dirs.len() as u64;
    report
        .kept_mounted
        .extend(plan.kept_mounted.iter().map(|(d, mount_point)| KeptLayer {
            chain_id: *d,
            mount_point: mount_point.to_string_lossy().into_owned(),
        }));
    if report.dry_run {
        // The caller counts the bytes, over all it would remove at once.
        return Ok(());
    }
    let mut b = meta.batch();
    for t in &plan.drop_tags {
        b.delete(CF_TAGS, t.as_bytes())?;
    }
    for d in &plan.drop_images {
        b.delete(CF_IMAGES, d.as_bytes())?;
    }
    for d in &plan.blob_records {
        b.delete(CF_BLOBS, d.as_bytes())?;
        // A dropped layer blob's record goes with its blob record.
        b.delete(crate::meta::CF_DROPPED, d.as_bytes())?;
    }
    for d in &plan.layer_records {
        b.delete(CF_LAYERS, d.as_bytes())?;
    }
    // A folder that goes takes its content index entries along, in the
    // same batch: no later lookup links to a file in it. (Its inodes that
    // other layers link live on in them.)
    for d in &plan.layer_dirs {
        crate::share::index::drop_layer(meta, &mut b, d)?;
    }
    for (d, rec) in &plan.blob_refs {
        b.put(CF_BLOBS, d.as_bytes(), rec)?;
    }
    for (d, rec) in &plan.layer_refs {
        b.put(CF_LAYERS, d.as_bytes(), rec)?;
    }
    if !b.is_empty() {
        b.commit()?;
    }
    // The view stops naming what goes before it goes.
    if meta.take_images_changed() {
        crate::cstorage::refresh(store, meta)?;
    }
    for d in &plan.blob_files {
        report.freed_bytes += store.content().remove(d)?;
    }
    let tmp = store.root().join("tmp");
    for d in &plan.layer_dirs {
        let name = format!("trash.{}.{}", std::process::id(), d.hex());
        let src = store.layer_store().dir(d);
        let link = store.layer_store().link_path(d);
        let _ = fs::remove_file(&link);
        let dest = tmp.join(&name);
        if dest.exists() {
            remove_tree(&dest)?;
        }
        match fs::rename(&src, &dest) {
            Ok(()) => trash.push(dest),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("move {} to tmp/", src.display()), e)),
        }
    }
    Ok(())
}

/// Deletes folders moved to tmp/ by a sweep (outside the root lock).
/// A folder that cannot be removed now stays in tmp/ for the next gc and
/// is not counted as freed.
pub(crate) fn empty_trash(_store: &Store, trash: Vec<PathBuf>) -> u64 {
    trash.iter().map(|p| remove_tree(p).unwrap_or(0)).sum()
}

/// `lstore gc`.
pub(crate) fn full(
    store: &Store,
    meta: &Meta,
    dry_run: bool,
    trash: &mut Vec<PathBuf>,
) -> Result<Removal> {
    let mut report = Removal {
        dry_run,
        ..Removal::default()
    };
    // Untagged images are roots no more (a moved tag's old image).
    let tagged: BTreeSet<Digest> = meta.tags()?.into_iter().map(|(_, t)| t.image).collect();
    let doomed: BTreeSet<Digest> = meta
        .images()?
        .into_iter()
        .map(|i| i.manifest)
        .filter(|d| !tagged.contains(d))
        .collect();
    let plan = plan_sweep(store, meta, &BTreeSet::new(), &doomed)?;
    apply_sweep(store, meta, &plan, &mut report, trash)?;
    // A dry run counts what it would free over everything at once, so that
    // a file linked from several doomed places counts once.
    let mut would_remove = if dry_run {
        plan.paths(store)
    } else {
        Vec::new()
    };

    // Leftovers of interrupted commands whose process is gone.
    let (_, leased_layers, live) = leased(store)?;
    let is_live = |name: &str| lease_of_entry(name).is_some_and(|l| live.contains(l));
    for dir in ["tmp", "ingest"] {
        let path = store.root().join(dir);
        for entry in fs::read_dir(&path).ctx(|| format!("read {}", path.display()))? {
            let entry = entry.ctx(|| format!("read {}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            if is_live(&name) || trash.contains(&p) {
                continue;
            }
            report.leftovers += 1;
            if dry_run {
                would_remove.push(p);
            } else if p.is_dir() && !p.is_symlink() {
                trash.push(p);
            } else {
                report.freed_bytes += fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
            }
        }
    }
    for p in strays(store, &leased_layers)? {
        report.leftovers += 1;
        if dry_run {
            would_remove.push(p);
        } else {
            report.freed_bytes += remove_tree(&p)?;
        }
    }
    if dry_run {
        report.freed_bytes += freed_by_removing(&would_remove);
    } else {
        remove_idle_locks(store);
    }
    Ok(report)
}

/// What is neither a blob, a layer folder nor a live short link under
/// `blobs/sha256/` and `overlay2/`: stray names, and short links whose
/// layer is gone. A link to a layer in `leased_layers` is kept: a running
/// import points it at its folder just before renaming the folder in.
pub(crate) fn strays(store: &Store, leased_layers: &HashSet<Digest>) -> Result<Vec<PathBuf>> {
    let (_, junk_blobs) = store.content().list()?;
    let (_, junk_dirs) = store.layer_store().list()?;
    let early: HashSet<PathBuf> = leased_layers
        .iter()
        .map(|c| store.layer_store().link_path(c))
        .collect();
    let dangling = store
        .layer_store()
        .dangling_links()?
        .into_iter()
        .filter(|p| !early.contains(p));
    Ok(junk_blobs
        .into_iter()
        .chain(junk_dirs)
        .chain(dangling)
        .collect())
}

/// Removes per-layer lock files nobody holds. (Should a process open one
/// just before it goes, the worst outcome is a layer extracted twice, and
/// the second copy is dropped at its rename.)
fn remove_idle_locks(store: &Store) {
    let Ok(entries) = fs::read_dir(store.root().join("locks")) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(f) = fs::File::open(e.path()) else {
            continue;
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::digest::Digest;
    use crate::lock::LeaseContent;
    use crate::store::{Store, StoreOptions};
    use std::path::Path;

    /// A short link to a layer folder not renamed into place yet.
    fn early_link(store: &Store, chain: &Digest) -> std::path::PathBuf {
        let link = store.layer_store().link_path(chain);
        std::os::unix::fs::symlink(Path::new("..").join(chain.hex()).join("diff"), &link).unwrap();
        link
    }

    #[test]
    fn gc_keeps_the_early_short_link_of_a_layer_being_imported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let leased = Digest::of(b"being imported");
        let orphan = Digest::of(b"left by a crash");
        let lease = store
            .lease(&LeaseContent {
                pid: std::process::id(),
                blobs: Vec::new(),
                layers: vec![leased],
            })
            .unwrap();
        let kept = early_link(&store, &leased);
        let removed = early_link(&store, &orphan);
        store.gc(false).unwrap();
        assert!(kept.symlink_metadata().is_ok(), "the leased layer's link");
        assert!(removed.symlink_metadata().is_err(), "the dangling link");
        drop(lease);
        store.gc(false).unwrap();
        assert!(
            kept.symlink_metadata().is_err(),
            "dangling once the lease is gone"
        );
    }
}
