//! containerd's snapshots over the store: records in RocksDB (family
//! `snapshots`, by key), committed snapshots as lstore layer folders,
//! active and view snapshots as folders under `containers/snapshotter/`.
//!
//! Every operation is one metadata session, as every lstore command's; the
//! store is never held between requests.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::error::{Error, IoContext};
use crate::layers::{remove_tree, short_id, tree_size};
use crate::lock::Lease;
use crate::meta::{LayerRecord, Meta, CF_LAYERS, CF_SNAPSHOTS};
use crate::store::Store;

use super::filter::Filters;

/// The label containerd's unpackers set to a layer's chain id when they
/// prepare it, so that a snapshotter which has it can say so.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";

/// Where active and view snapshots live, under the root.
const SNAPSHOT_DIRS: &str = "containers/snapshotter";

// The records are the store's (`crate::meta`): gc, fsck and df read them
// too, and never call into this front-end.
pub use crate::meta::{SnapshotKind as Kind, SnapshotRecord};

/// A snapshot by key, as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Its key (its name, once committed).
    pub name: String,
    /// Its record.
    pub record: SnapshotRecord,
}

/// A mount containerd makes for a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    /// What is mounted.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// What an operation can answer besides success, as gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot by that key.
    #[error("snapshot {0}: not found")]
    NotFound(String),
    /// The key is taken (or the layer is there already).
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state for this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request makes no sense.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

type Result<T> = std::result::Result<T, SnapshotError>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn get(meta: &Meta, key: &str) -> Result<Option<SnapshotRecord>> {
    Ok(meta.get(CF_SNAPSHOTS, key.as_bytes())?)
}

fn all(meta: &Meta) -> Result<Vec<Info>> {
    Ok(meta
        .all::<SnapshotRecord>(CF_SNAPSHOTS)?
        .into_iter()
        .map(|(k, record)| Info {
            name: String::from_utf8_lossy(&k).into_owned(),
            record,
        })
        .collect())
}

/// The layers a committed snapshot stands on, itself first: containerd's
/// chain of parents, each a committed snapshot and so an lstore layer.
fn layers_of(meta: &Meta, key: &str) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    let mut key = key.to_string();
    while !key.is_empty() {
        let rec = get(meta, &key)?.ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
        let layer = match (rec.kind, rec.layer) {
            (Kind::Committed, Some(l)) => l,
            _ => {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {key} is not a committed snapshot"
                )))
            }
        };
        if out.contains(&layer) || out.len() > 500 {
            return Err(Error::Corrupt {
                key,
                reason: "snapshot parents form a loop".into(),
            }
            .into());
        }
        out.push(layer);
        key = rec.parent;
    }
    Ok(out)
}

/// The chain id a commit names: containerd's unpack commits a layer as
/// `<namespace>/<n>/sha256:<chain id>`, and unpackers that fetch as they
/// go label it with it.
fn chain_of_commit(name: &str, labels: &BTreeMap<String, String>) -> Option<Digest> {
    if let Some(d) = labels.get(TARGET_LABEL).and_then(|l| Digest::parse(l).ok()) {
        return Some(d);
    }
    let last = name.rsplit('/').next()?;
    Digest::parse(last).ok()
}

/// The snapshots of one store, as containerd's snapshotter API asks.
pub struct Snapshots<'a> {
    store: &'a Store,
    lease: &'a Lease,
}

impl<'a> Snapshots<'a> {
    /// Snapshots of `store`; `lease` names this server's staging folders.
    pub fn new(store: &'a Store, lease: &'a Lease) -> Snapshots<'a> {
        Snapshots { store, lease }
    }

    /// A write session; an answer other than success (a key taken, a
    /// snapshot missing) leaves it as an outcome, not a store failure.
    fn write<T>(&self, f: impl FnOnce(&Meta) -> Result<T>) -> Result<T> {
        self.store.session(|meta| Ok(f(meta)))?
    }

    /// A read session, likewise.
    fn read<T>(&self, f: impl FnOnce(&Meta) -> Result<T>) -> Result<T> {
        self.store.read_session(|meta| Ok(f(meta)))?
    }

    fn dirs(&self) -> PathBuf {
        self.store.root().join(SNAPSHOT_DIRS)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.dirs().join(name)
    }

    /// Moves a folder out of the way into `tmp/` (one rename, under the
    /// lease's name so gc leaves it), to delete after the session.
    fn to_trash(&self, path: &Path) -> crate::error::Result<Option<PathBuf>> {
        let dest = self
            .store
            .root()
            .join("tmp")
            .join(self.store.unique(self.lease, "trash"));
        match fs::rename(path, &dest) {
            Ok(()) => Ok(Some(dest)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("move {} to tmp/", path.display()), e)),
        }
    }

    fn empty_trash(trash: Vec<PathBuf>) {
        for p in trash {
            let _ = remove_tree(&p);
        }
    }

    /// `Prepare` (kind Active) and `View`: a new snapshot over `parent`.
    pub fn prepare(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let rec = self.write(|meta| self.create(meta, kind, key, parent, labels))?;
        self.mounts_of(key, &rec)
    }

    fn create(
        &self,
        meta: &Meta,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotRecord> {
        if get(meta, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(key.into()));
        }
        let parents = layers_of(meta, parent)?;
        if kind == Kind::Active {
            if let Some(target) = labels.get(TARGET_LABEL) {
                self.claim_held_layer(meta, target, parent, &parents, &labels)?;
            }
        }
        let t = now();
        let dir = format!(
            "{:016x}",
            Digest::of(format!("{key}\0{t}").as_bytes()).as_bytes()[..8]
                .iter()
                .fold(0u64, |a, b| (a << 8) | *b as u64)
        );
        let path = self.dir(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .ctx(|| format!("create {}", path.display()))?;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(path.join("fs"))
            .ctx(|| format!("create {}/fs", path.display()))?;
        if kind == Kind::Active && !parents.is_empty() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path.join("work"))
                .ctx(|| format!("create {}/work", path.display()))?;
        }
        let rec = SnapshotRecord {
            kind,
            parent: parent.to_string(),
            labels,
            created: t,
            updated: t,
            layer: None,
            dir: Some(dir),
        };
        let mut b = meta.batch();
        b.put(CF_SNAPSHOTS, key.as_bytes(), &rec)?;
        b.commit()?;
        Ok(rec)
    }

    /// A layer containerd is about to fetch and apply (its chain id in the
    /// target label) that lstore holds: recorded as a committed snapshot
    /// on `parent`, which containerd finds by the label (answering
    /// `AlreadyExists` sends it looking), and never applied.
    fn claim_held_layer(
        &self,
        meta: &Meta,
        target: &str,
        parent: &str,
        parents: &[Digest],
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let Ok(chain) = Digest::parse(target) else {
            return Ok(());
        };
        let Some(layer) = meta.layer(&chain)? else {
            return Ok(());
        };
        // The layer must stand on what containerd's parent is.
        if !self.store.layer_store().is_present(&chain) || layer.parent != parents.first().copied()
        {
            return Ok(());
        }
        let name = if parent.is_empty() {
            target.to_string()
        } else {
            format!("{target} on {parent}")
        };
        if get(meta, &name)?.is_none() {
            let t = now();
            let rec = SnapshotRecord {
                kind: Kind::Committed,
                parent: parent.to_string(),
                labels: labels.clone(),
                created: t,
                updated: t,
                layer: Some(chain),
                dir: None,
            };
            let mut b = meta.batch();
            b.put(CF_SNAPSHOTS, name.as_bytes(), &rec)?;
            b.commit()?;
        }
        Err(SnapshotError::AlreadyExists(target.into()))
    }

    /// `Mounts`: how to mount an active or view snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self
            .read(|meta| get(meta, key))?
            .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        self.mounts_of(key, &rec)
    }

    fn mounts_of(&self, key: &str, rec: &SnapshotRecord) -> Result<Vec<Mount>> {
        let Some(dir) = &rec.dir else {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is committed: it has no mounts"
            )));
        };
        let parents = self.read(|meta| layers_of(meta, &rec.parent))?;
        let path = self.dir(dir);
        let fs_dir = path.join("fs").to_string_lossy().into_owned();
        let ro = if rec.kind == Kind::View { "ro" } else { "rw" };
        let bind = |source: String| Mount {
            kind: "bind".into(),
            source,
            options: vec![ro.into(), "rbind".into()],
        };
        if parents.is_empty() {
            // Overlay needs a lower layer: the folder itself, as containerd's
            // overlayfs snapshotter does.
            return Ok(vec![bind(fs_dir)]);
        }
        let ls = self.store.layer_store();
        if rec.kind == Kind::View && parents.len() == 1 {
            return Ok(vec![bind(
                ls.diff_dir(&parents[0]).to_string_lossy().into_owned(),
            )]);
        }
        let lower: Vec<String> = parents
            .iter()
            .map(|c| {
                ls.links_dir()
                    .join(short_id(c))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut options = Vec::new();
        if rec.kind == Kind::Active {
            options.push(format!("workdir={}", path.join("work").display()));
            options.push(format!("upperdir={fs_dir}"));
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        // As lstore's own mounts: overlay's index stays off (it would tie
        // copy-ups to the inodes that layers share).
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            options.push("index=off".into());
        }
        if Path::new("/sys/module/overlay/parameters/metacopy").exists() {
            options.push("metacopy=off".into());
        }
        Ok(vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    /// `Commit`: the active snapshot `key` becomes the committed `name`, an
    /// lstore layer folder. A layer lstore already holds keeps its folder
    /// and the new copy is dropped.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let mut trash = Vec::new();
        let r = self.write(|meta| self.commit_in(meta, name, key, labels, &mut trash));
        Self::empty_trash(trash);
        r
    }

    fn commit_in(
        &self,
        meta: &Meta,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        trash: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let rec = get(meta, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        let (Kind::Active, Some(dir)) = (rec.kind, &rec.dir) else {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        };
        if get(meta, name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.into()));
        }
        let parents = layers_of(meta, &rec.parent)?;
        let path = self.dir(dir);
        // A commit that names no chain id (a container's changes) still
        // becomes a layer folder, named by a digest of its own.
        let chain = chain_of_commit(name, &labels)
            .unwrap_or_else(|| Digest::of(format!("lstore snapshot {name}\0{}", now()).as_bytes()));
        let ls = self.store.layer_store();
        let held = meta.layer(&chain)?.is_some() && ls.is_present(&chain);
        if !held {
            let staging = ls.stage(&self.store.unique(self.lease, "layer"))?;
            let diff = staging.diff();
            fs::remove_dir(&diff).ctx(|| format!("clear {}", diff.display()))?;
            fs::rename(path.join("fs"), &diff)
                .ctx(|| format!("move {}/fs into {}", path.display(), diff.display()))?;
            let file_bytes = tree_size(&diff);
            ls.commit(staging, &chain, &parents)?;
            let record = meta.layer(&chain)?.unwrap_or(LayerRecord {
                // containerd does not say the layer's diff id: the first
                // layer's is its chain id; an upper one's is learned when
                // an image that has it is stored (see import).
                diff_id: chain,
                parent: parents.first().copied(),
                size: 0,
                file_bytes,
                refs: 0,
            });
            let mut b = meta.batch();
            b.put(CF_LAYERS, chain.as_bytes(), &record)?;
            b.commit()?;
        }
        let t = now();
        let committed = SnapshotRecord {
            kind: Kind::Committed,
            parent: rec.parent.clone(),
            labels,
            created: t,
            updated: t,
            layer: Some(chain),
            dir: None,
        };
        let mut b = meta.batch();
        b.delete(CF_SNAPSHOTS, key.as_bytes())?;
        b.put(CF_SNAPSHOTS, name.as_bytes(), &committed)?;
        b.commit()?;
        trash.extend(self.to_trash(&path)?);
        Ok(())
    }

    /// `Remove`: drops containerd's snapshot. A committed one's layer stays
    /// in lstore (gc removes it once nothing holds it).
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut trash = Vec::new();
        let r = self.write(|meta| {
            let rec = get(meta, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            let children = all(meta)?
                .into_iter()
                .filter(|i| i.record.parent == key)
                .count();
            if children > 0 {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key} has {children} children"
                )));
            }
            let mut b = meta.batch();
            b.delete(CF_SNAPSHOTS, key.as_bytes())?;
            b.commit()?;
            if let Some(dir) = &rec.dir {
                trash.extend(self.to_trash(&self.dir(dir))?);
            }
            Ok(())
        });
        Self::empty_trash(trash);
        r
    }

    /// `Stat`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let rec = self.read(|meta| get(meta, key))?;
        match rec {
            Some(record) => Ok(Info {
                name: key.to_string(),
                record,
            }),
            None => self
                .held_layer_info(key)?
                .ok_or_else(|| SnapshotError::NotFound(key.into())),
        }
    }

    /// A layer lstore holds, asked for by its chain id: committed.
    fn held_layer_info(&self, key: &str) -> Result<Option<Info>> {
        let Ok(chain) = Digest::parse(key) else {
            return Ok(None);
        };
        let layer = self.read(|meta| Ok(meta.layer(&chain)?))?;
        let Some(layer) = layer.filter(|_| self.store.layer_store().is_present(&chain)) else {
            return Ok(None);
        };
        let created = fs::metadata(self.store.layer_store().dir(&chain))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Some(Info {
            name: key.to_string(),
            record: SnapshotRecord {
                kind: Kind::Committed,
                parent: layer.parent.map(|p| p.to_string()).unwrap_or_default(),
                labels: BTreeMap::from([(TARGET_LABEL.to_string(), key.to_string())]),
                created,
                updated: created,
                layer: Some(chain),
                dir: None,
            },
        }))
    }

    /// `Update`: labels only (the rest is immutable). `paths` is the update
    /// mask: `labels` replaces them all, `labels.<k>` one; none: all.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        self.write(|meta| {
            let mut rec = get(meta, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            if paths.is_empty() {
                rec.labels = labels.clone();
            }
            for p in paths {
                if p == "labels" {
                    rec.labels = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update {p:?} of snapshot {key}"
                    )));
                }
            }
            rec.updated = now();
            let mut b = meta.batch();
            b.put(CF_SNAPSHOTS, key.as_bytes(), &rec)?;
            b.commit()?;
            Ok(Info {
                name: key.to_string(),
                record: rec,
            })
        })
    }

    /// `Usage`: bytes and inodes of what the snapshot adds (an active one's
    /// folder, a committed one's layer).
    pub fn usage(&self, key: &str) -> Result<(u64, u64)> {
        let info = self.stat(key)?;
        let path = match (&info.record.dir, info.record.layer) {
            (Some(dir), _) => self.dir(dir).join("fs"),
            (None, Some(layer)) => self.store.layer_store().diff_dir(&layer),
            (None, None) => return Ok((0, 0)),
        };
        Ok(usage_of(&path))
    }

    /// `List` (`Walk`): the snapshots that match any of `filters`.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters).map_err(SnapshotError::InvalidArgument)?;
        let infos = self.read(all)?;
        Ok(infos.into_iter().filter(|i| filters.matches(i)).collect())
    }

    /// `Cleanup`: folders under `containers/snapshotter/` that no snapshot
    /// names (left by a crash between making one and recording it).
    pub fn cleanup(&self) -> Result<()> {
        let mut trash = Vec::new();
        let r = self.write(|meta| {
            let named: HashSet<String> = all(meta)?
                .into_iter()
                .filter_map(|i| i.record.dir)
                .collect();
            let dirs = self.dirs();
            let Ok(entries) = fs::read_dir(&dirs) else {
                return Ok(());
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !named.contains(&name) {
                    trash.extend(self.to_trash(&e.path())?);
                }
            }
            Ok(())
        });
        Self::empty_trash(trash);
        r
    }
}

/// Bytes (apparent sizes of regular files, each inode once) and inodes
/// under `path`, never following symlinks.
fn usage_of(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0, 0);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        inodes += 1;
        if m.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            bytes += m.len();
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LeaseContent;
    use crate::store::StoreOptions;
    use std::os::unix::fs::MetadataExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        (dir, store)
    }

    fn lease(store: &Store) -> Lease {
        store
            .lease(&LeaseContent {
                pid: std::process::id(),
                ..LeaseContent::default()
            })
            .unwrap()
    }

    /// Prepares `key` with no parent and writes a file into it, as
    /// containerd's applier does.
    fn applied(s: &Snapshots<'_>, key: &str) {
        let mounts = s.prepare(Kind::Active, key, "", BTreeMap::new()).unwrap();
        fs::write(Path::new(&mounts[0].source).join("file"), "content").unwrap();
    }

    #[test]
    fn a_commit_over_the_folder_a_killed_commit_left_records_it() {
        let (_dir, store) = store();
        let lease = lease(&store);
        let s = Snapshots::new(&store, &lease);
        let chain = Digest::of(b"a layer containerd applied");
        let name = format!("ns/1/{chain}");
        applied(&s, "ns/1/extract-1");
        s.commit(&name, "ns/1/extract-1", BTreeMap::new()).unwrap();
        let folder = store.layer_store().dir(&chain);
        let inode = fs::metadata(folder.join("diff")).unwrap().ino();

        // What a kill after the folder's rename and before its records
        // leaves: a complete folder no record names, and containerd's
        // active snapshot still there.
        store
            .session(|meta| {
                let mut b = meta.batch();
                b.delete(CF_LAYERS, chain.as_bytes())?;
                b.delete(CF_SNAPSHOTS, name.as_bytes())?;
                b.commit()
            })
            .unwrap();
        applied(&s, "ns/2/extract-2");
        let report = store.fsck(false).unwrap();
        assert!(
            report.problems.is_empty(),
            "a leftover, not damage: {report:?}"
        );
        assert_eq!(report.leftovers.len(), 1, "{report:?}");

        // containerd's next pull applies the layer again and commits it:
        // the folder there is kept and recorded, the new copy dropped.
        s.commit(&format!("ns/3/{chain}"), "ns/2/extract-2", BTreeMap::new())
            .unwrap();
        assert_eq!(fs::metadata(folder.join("diff")).unwrap().ino(), inode);
        let report = store.fsck(false).unwrap();
        assert!(report.clean(), "{report:?}");
        assert_eq!(
            s.stat(&format!("ns/3/{chain}")).unwrap().record.layer,
            Some(chain)
        );
        let staged = fs::read_dir(store.root().join("tmp")).unwrap().count();
        assert_eq!(staged, 0, "no staging or trash folder stays");
        let gc = store.gc(false).unwrap();
        assert_eq!(gc.deleted_layers, 0, "containerd holds it: {gc:?}");
        assert!(store.layer_store().is_present(&chain));
    }

    #[test]
    fn fsck_repair_leaves_a_damaged_layer_containerd_holds_and_says_what_to_do() {
        let (_dir, store) = store();
        let lease = lease(&store);
        let s = Snapshots::new(&store, &lease);
        let chain = Digest::of(b"a layer a disk fault damaged");
        let name = format!("ns/1/{chain}");
        applied(&s, "ns/1/extract-1");
        s.commit(&name, "ns/1/extract-1", BTreeMap::new()).unwrap();
        let folder = store.layer_store().dir(&chain);
        fs::remove_dir(folder.join("work")).unwrap();

        let report = store.fsck(true).unwrap();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        let p = &report.problems[0];
        assert!(!p.repaired, "{report:?}");
        assert!(
            p.what.contains("incomplete") && p.what.contains("containerd holds it"),
            "{report:?}"
        );
        assert!(folder.join("diff/file").is_file(), "left as it is");
        assert!(store.read_session(|m| m.layer(&chain)).unwrap().is_some());

        // Once containerd lets go of it, repair removes it as any layer no
        // image uses.
        s.remove(&name).unwrap();
        let report = store.fsck(true).unwrap();
        assert!(report.problems.iter().all(|p| p.repaired), "{report:?}");
        assert!(!folder.exists());
        assert!(store.fsck(false).unwrap().clean());
    }

    #[test]
    fn a_prepare_naming_a_held_layer_is_answered_already_exists_and_claims_it() {
        let (_dir, store) = store();
        let lease = lease(&store);
        let s = Snapshots::new(&store, &lease);
        let base = Digest::of(b"a base lstore holds");
        applied(&s, "ns/1/extract-1");
        s.commit(&format!("ns/1/{base}"), "ns/1/extract-1", BTreeMap::new())
            .unwrap();
        s.remove(&format!("ns/1/{base}")).unwrap();
        assert!(s.walk(&[]).unwrap().is_empty());

        // The unpacker of a client that fetches as it goes names the layer
        // it is about to apply: lstore has it, so it says so, and records
        // containerd's claim under the chain id.
        let labels = BTreeMap::from([(TARGET_LABEL.to_string(), base.to_string())]);
        let err = s
            .prepare(Kind::Active, "ns/2/extract-2", "", labels.clone())
            .unwrap_err();
        assert!(matches!(err, SnapshotError::AlreadyExists(_)), "{err}");
        let info = s.stat(&base.to_string()).unwrap();
        assert_eq!(info.record.kind, Kind::Committed);
        assert_eq!(info.record.layer, Some(base));
        let names: Vec<String> = s.walk(&[]).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec![base.to_string()], "the claim, nothing active");
        assert!(s.stat("ns/2/extract-2").is_err(), "no active snapshot made");
        let gc = store.gc(false).unwrap();
        assert_eq!(gc.deleted_layers, 0, "the claim holds it: {gc:?}");

        // A layer lstore lacks is prepared as usual, to be applied.
        let lacked = Digest::of(b"a layer lstore lacks");
        let labels = BTreeMap::from([(TARGET_LABEL.to_string(), lacked.to_string())]);
        let mounts = s
            .prepare(Kind::Active, "ns/3/extract-3", &base.to_string(), labels)
            .unwrap();
        assert_eq!(mounts[0].kind, "overlay");

        // The held layer asked for over another parent is not it.
        let labels = BTreeMap::from([(TARGET_LABEL.to_string(), base.to_string())]);
        s.prepare(Kind::Active, "ns/4/extract-4", &base.to_string(), labels)
            .unwrap();

        // Dropping the claim leaves the layer to gc.
        s.remove("ns/3/extract-3").unwrap();
        s.remove("ns/4/extract-4").unwrap();
        s.remove(&base.to_string()).unwrap();
        assert_eq!(store.gc(false).unwrap().deleted_layers, 1);
        assert!(!store.layer_store().is_present(&base));
    }

    #[test]
    fn an_active_snapshot_whose_folder_a_killed_commit_moved_is_removed() {
        let (_dir, store) = store();
        let lease = lease(&store);
        let s = Snapshots::new(&store, &lease);
        applied(&s, "ns/1/extract-1");
        // A kill after `fs` moved into the staging folder: the active
        // snapshot's folder has no fs/ any more.
        let rec = s.stat("ns/1/extract-1").unwrap().record;
        let dir = s.dir(rec.dir.as_deref().unwrap());
        fs::rename(dir.join("fs"), store.root().join("tmp/moved")).unwrap();
        let err = s
            .commit("ns/1/sha256:00", "ns/1/extract-1", BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, SnapshotError::Store(_)), "{err}");
        // containerd removes it (its gc, or the unpacker's clean-up).
        s.remove("ns/1/extract-1").unwrap();
        assert!(!dir.exists());
        assert!(s.walk(&[]).unwrap().is_empty());
    }
}
