//! `lstore fsck`: re-verify every blob's digest (in parallel, through
//! mmap), check that every record has its files and every file its record,
//! that reference counts equal what a mark counts, and that each layer
//! folder is complete. `repair` fixes what can be fixed.

use std::collections::BTreeMap;
use std::fs::File;

use rayon::prelude::*;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::Result;
use crate::layers::short_id;
use crate::meta::{BlobRecord, LayerRecord, CF_BLOBS, CF_LAYERS, CF_TAGS};
use crate::store::Store;

/// One problem found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub what: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub layers_checked: u64,
    pub images_checked: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired)
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

impl Store {
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        self.session(|meta| {
            let mut report = FsckReport::default();
            let mut problems: Vec<Problem> = Vec::new();
            let mut push = |what: String, repaired: bool| problems.push(Problem { what, repaired });

            // What running commands hold is theirs, not a problem.
            let (leased_blobs, leased_layers): (Vec<Digest>, Vec<Digest>) = {
                let mut b = Vec::new();
                let mut l = Vec::new();
                for lease in crate::lock::live_leases(&self.root().join("leases"))? {
                    if let (true, Some(c)) = (lease.live, lease.content) {
                        b.extend(c.blobs);
                        l.extend(c.layers);
                    }
                }
                (b, l)
            };
            let images = meta.images()?;
            report.images_checked = images.len() as u64;
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

            // Blobs on disk: digest and record.
            let (on_disk, junk) = self.content().list()?;
            for j in junk {
                push(format!("stray file {} in blobs/sha256", j.display()), false);
            }
            let hashed: Vec<(Digest, std::io::Result<(Digest, u64)>)> = on_disk
                .par_iter()
                .map(|d| (*d, hash_file(&self.content().path(d))))
                .collect();
            let mut bad_blobs = Vec::new();
            for (d, r) in hashed {
                report.blobs_checked += 1;
                match r {
                    Ok((actual, len)) => {
                        report.bytes_hashed += len;
                        if actual != d {
                            bad_blobs.push(d);
                            push(
                                format!("blob {d} is corrupt (its content hashes to {actual})"),
                                repair,
                            );
                        } else if let Some(rec) = blob_records.get(&d) {
                            if rec.size != len {
                                push(
                                    format!(
                                        "blob {d}: record says {} bytes, file has {len}",
                                        rec.size
                                    ),
                                    false,
                                );
                            }
                        } else if !leased_blobs.contains(&d) {
                            push(format!("blob {d} has no record (gc removes it)"), false);
                        }
                    }
                    Err(e) => push(format!("blob {d}: {e}"), false),
                }
            }
            for d in blob_records.keys() {
                if !self.content().contains(d) {
                    push(
                        format!("blob {d} is recorded but its file is missing"),
                        false,
                    );
                }
            }

            // Layers: folder complete, link right, record present.
            let (dirs, _) = self.layer_store().list()?;
            for c in &dirs {
                report.layers_checked += 1;
                let dir = self.layer_store().dir(c);
                let link_ok = std::fs::read_to_string(dir.join("link")).ok().as_deref()
                    == Some(short_id(c).as_str());
                let diff_ok = dir.join("diff").is_dir() && dir.join("work").is_dir();
                let l_ok = std::fs::read_link(self.layer_store().link_path(c)).ok()
                    == Some(format!("../{}/diff", c.hex()).into());
                if !link_ok || !diff_ok {
                    push(format!("layer {c}: folder is incomplete"), false);
                }
                if !l_ok {
                    let mut fixed = false;
                    if repair && diff_ok {
                        let link = self.layer_store().link_path(c);
                        let _ = std::fs::remove_file(&link);
                        fixed = std::os::unix::fs::symlink(format!("../{}/diff", c.hex()), &link)
                            .is_ok();
                    }
                    push(
                        format!(
                            "layer {c}: short link l/{} is missing or wrong",
                            short_id(c)
                        ),
                        fixed,
                    );
                }
                if !layer_records.contains_key(c) && !leased_layers.contains(c) {
                    push(
                        format!("layer folder {c} has no record (gc removes it)"),
                        false,
                    );
                }
            }
            for c in layer_records.keys() {
                if !self.layer_store().is_present(c) {
                    push(
                        format!("layer {c} is recorded but its folder is missing"),
                        false,
                    );
                }
            }

            // Images: their blobs and layers recorded; reference counts.
            let mut blob_count: BTreeMap<Digest, u64> = BTreeMap::new();
            let mut layer_count: BTreeMap<Digest, u64> = BTreeMap::new();
            for img in &images {
                for b in img.blobs() {
                    *blob_count.entry(b).or_insert(0) += 1;
                    if !blob_records.contains_key(&b) {
                        push(
                            format!("image {} uses blob {b}, which has no record", img.config),
                            false,
                        );
                    }
                }
                for l in img.chain_ids() {
                    *layer_count.entry(l).or_insert(0) += 1;
                    if !layer_records.contains_key(&l) {
                        push(
                            format!("image {} uses layer {l}, which has no record", img.config),
                            false,
                        );
                    }
                }
            }
            let mut batch = meta.batch();
            for (d, rec) in &blob_records {
                let want = blob_count.get(d).copied().unwrap_or(0);
                if rec.refs != want {
                    if repair {
                        let mut r = rec.clone();
                        r.refs = want;
                        batch.put(CF_BLOBS, d.as_bytes(), &r)?;
                    }
                    push(
                        format!("blob {d}: reference count {} should be {want}", rec.refs),
                        repair,
                    );
                }
            }
            for (d, rec) in &layer_records {
                let want = layer_count.get(d).copied().unwrap_or(0);
                if rec.refs != want {
                    if repair {
                        let mut r = rec.clone();
                        r.refs = want;
                        batch.put(CF_LAYERS, d.as_bytes(), &r)?;
                    }
                    push(
                        format!("layer {d}: reference count {} should be {want}", rec.refs),
                        repair,
                    );
                }
            }
            for (name, tag) in meta.tags()? {
                if meta.image(&tag.image)?.is_none() {
                    if repair {
                        batch.delete(CF_TAGS, name.as_bytes())?;
                    }
                    push(format!("tag {name} points at a missing image"), repair);
                }
            }
            if repair {
                // A corrupt blob is removed: the image that needs it must be
                // loaded or pulled again.
                for d in &bad_blobs {
                    self.content().remove(d)?;
                }
                if !batch.is_empty() {
                    batch.commit()?;
                }
            }
            report.problems = problems;
            Ok(report)
        })
    }
}
