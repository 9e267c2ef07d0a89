//! Metadata in RocksDB: one column family per kind of record, values encoded
//! with postcard behind a one-byte format version.
//!
//! | family  | key                         | value          |
//! |---------|-----------------------------|----------------|
//! | blobs   | digest (32 bytes)           | `BlobRecord`   |
//! | layers  | chain id (32 bytes)         | `LayerRecord`  |
//! | images  | manifest digest (32 bytes)  | `ImageRecord`  |
//! | tags    | normalised reference (utf8) | `TagRecord`    |
//! | snapshots | containerd's snapshot key (utf8) | `SnapshotRecord` (read by `snapshotter`) |
//! | dropped_blobs | layer blob digest (32 bytes) | `DroppedBlob` |
//! | shared_files | content, metadata, names hashes + chain id | path in the layer (`share::index`) |
//! | layer_files | chain id + content, metadata, names hashes | `()` |
//!
//! `refs` counts the images that use a blob or layer. A database is only
//! opened while the process holds the root lock (`lock::RootLock`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

const FORMAT_VERSION: u8 = 1;
/// Column family of blob records, by digest.
pub const CF_BLOBS: &str = "blobs";
/// Column family of layer records, by chain id.
pub const CF_LAYERS: &str = "layers";
pub const CF_IMAGES: &str = "images";
pub const CF_TAGS: &str = "tags";
/// Column family of containerd's snapshots (`lstore snapshotter`), by key.
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Column family of layer blobs dropped (`keep-layer-blobs false`), by
/// digest: their blob record stays, their file is gone.
pub const CF_DROPPED: &str = "dropped_blobs";
/// Column family of the content index: which layer holds a file of a given
/// content and metadata (file sharing, `share::index`).
pub const CF_SHARED_FILES: &str = "shared_files";
/// Column family listing each layer's entries in `shared_files`, so that a
/// removed layer's entries go with it.
pub const CF_LAYER_FILES: &str = "layer_files";
const FAMILIES: [&str; 8] = [
    CF_BLOBS,
    CF_LAYERS,
    CF_IMAGES,
    CF_TAGS,
    CF_SNAPSHOTS,
    CF_DROPPED,
    CF_SHARED_FILES,
    CF_LAYER_FILES,
];

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Images that hold it.
    pub refs: u64,
}

/// A snapshot's kind, as containerd names them (`crate::snapshotter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Read-only, over a committed parent.
    View,
    /// Writable: a layer being applied, or a container's root.
    Active,
    /// An lstore layer.
    Committed,
}

/// A snapshot containerd holds (`crate::snapshotter`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its kind.
    pub kind: SnapshotKind,
    /// The key of its parent (a committed snapshot), empty for none.
    pub parent: String,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub created: u64,
    /// Nanoseconds since the epoch.
    pub updated: u64,
    /// A committed snapshot's layer (chain id).
    pub layer: Option<Digest>,
    /// An active or view snapshot's folder under `containers/snapshotter/`.
    pub dir: Option<String>,
}

/// An extracted layer folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer's uncompressed digest.
    pub diff_id: Digest,
    /// The chain id of the layer below it.
    pub parent: Option<Digest>,
    /// Uncompressed tar size.
    pub size: u64,
    /// Bytes of file content in diff/.
    pub file_bytes: u64,
    /// Images that hold it.
    pub refs: u64,
}

/// A layer blob dropped once its layer was stored: the layer's tar is
/// rebuilt from its tar-split record and folder when needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedBlob {
    /// The layer it holds.
    pub chain_id: Digest,
    /// The layer's diff id.
    pub diff_id: Digest,
    /// Where it was pulled from (`host/path`), to fetch it again.
    pub origin: Option<String>,
    /// Seconds since the epoch when it was dropped.
    pub dropped_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub media_type: String,
    pub compressed_size: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config: Digest,
    pub config_size: u64,
    /// The index the manifest was chosen from, when there was one.
    pub index: Option<Digest>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub created: Option<String>,
    pub layers: Vec<ImageLayer>,
    /// Seconds since the epoch when the image was stored.
    pub stored_at: u64,
}

impl ImageRecord {
    /// Every blob the image holds on to, each once.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut v = vec![self.manifest, self.config];
        v.extend(self.index);
        v.extend(self.layers.iter().map(|l| l.digest));
        v.sort();
        v.dedup();
        v
    }

    /// Every layer (chain id) the image holds on to, each once.
    pub fn chain_ids(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.layers.iter().map(|l| l.chain_id).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Uncompressed size of all layers, as `docker images` shows.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRecord {
    pub image: Digest,
    /// The digest the name resolved to at the registry (an index or the
    /// manifest itself), as `docker images --digests` shows.
    pub repo_digest: Option<Digest>,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    let body = postcard::to_allocvec(value).map_err(|e| Error::Db(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        key: String::from_utf8(key.to_vec())
            .unwrap_or_else(|_| key.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupt(format!("undecodable: {e}")))
        }
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

/// An open metadata database.
pub struct Meta {
    db: DB,
    /// Set when a committed batch wrote an image or tag record: what the
    /// containers/storage view is made from.
    images_changed: std::sync::atomic::AtomicBool,
    /// The generation marker, for a database opened to write.
    generation: Option<std::path::PathBuf>,
}

/// A file in the database's folder that every batch rewrites (with a new
/// random value) before it lands: a process that keeps what it read (serve)
/// knows the metadata changed, whichever process changed it, from one small
/// read. Written before the batch, under the root lock, so a reader that
/// sees the old value reads the old records too, and a writer that dies
/// between the two only costs a needless reload.
const GENERATION_FILE: &str = "lstore-generation";

/// A file in the database's folder that says the containers-storage view
/// may lag the records: made before a batch that changes images or tags
/// lands, removed once the view is written from them, so a process killed
/// between the two leaves the next write session the work of catching up.
const VIEW_PENDING_FILE: &str = "view-pending";

/// Whether the database at `path` has records the view may not show yet.
pub(crate) fn view_pending(path: &Path) -> bool {
    path.join(VIEW_PENDING_FILE).exists()
}

/// The view has been written from the records of the database at `path`.
pub(crate) fn clear_view_pending(path: &Path) -> Result<()> {
    match std::fs::remove_file(path.join(VIEW_PENDING_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::Db(format!("{VIEW_PENDING_FILE}: {e}")))
        }
        _ => Ok(()),
    }
}

/// The generation marker of the database at `path`: None until a batch
/// wrote one.
pub fn generation(path: &Path) -> Option<String> {
    std::fs::read_to_string(path.join(GENERATION_FILE)).ok()
}

fn bump_generation(marker: &Path) -> Result<()> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::Db(format!("generation marker: {e}")))?;
    let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Renamed into place: a reader sees the old value or the new, whole.
    let tmp = marker.with_extension("tmp");
    std::fs::write(&tmp, value)
        .and_then(|()| std::fs::rename(&tmp, marker))
        .map_err(|e| Error::Db(format!("generation marker {}: {e}", marker.display())))
}

/// Tables a family may gather before a write session merges them. Every
/// session that wrote leaves one more (its log is flushed to a table when
/// the next session opens the database), and each open reads every table's
/// footer: without merging, a store that took 1,000 imports opened 2,000
/// tables per command.
const MAX_TABLES: u64 = 8;

/// Memtable bytes a session leaves in the log (see `Meta::flush_if_large`).
const MAX_LOGGED: u64 = 256 << 10;

/// Memtable and table size per family. Sessions write kilobytes; logs and
/// tables are preallocated at about this size (64 MiB by default, which
/// cost more than the writes themselves, most of all on tmpfs).
const WRITE_BUFFER: usize = 4 << 20;

/// Options for short sessions of a single process: no thread pools to open
/// tables, no statistics read or dumped on open.
fn db_options() -> Options {
    let mut opts = Options::default();
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    opts.set_max_file_opening_threads(1);
    opts.set_skip_stats_update_on_db_open(true);
    opts.set_stats_dump_period_sec(0);
    opts.set_stats_persist_period_sec(0);
    opts.set_manifest_preallocation_size(64 << 10);
    opts.set_write_buffer_size(WRITE_BUFFER);
    opts.set_target_file_size_base(WRITE_BUFFER as u64);
    opts
}

/// Every family, `default` included: left out, it would be opened with
/// RocksDB's default options and its 64 MiB memtable would size the log's
/// preallocation.
fn families() -> impl Iterator<Item = ColumnFamilyDescriptor> {
    std::iter::once(&rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
        .chain(FAMILIES.iter())
        .map(|name| {
            let mut opts = Options::default();
            opts.set_write_buffer_size(WRITE_BUFFER);
            opts.set_target_file_size_base(WRITE_BUFFER as u64);
            ColumnFamilyDescriptor::new(*name, opts)
        })
}

impl Meta {
    /// Opens for reading and writing, creating the database if needed.
    pub fn open(path: &Path) -> Result<Meta> {
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(&opts, path, families())?;
        Ok(Meta {
            db,
            images_changed: Default::default(),
            generation: Some(path.join(GENERATION_FILE)),
        })
    }

    /// Opens without writing anything (no new manifest, options file or
    /// table): for commands that only read. The write-ahead log is replayed
    /// into memory, so the last session's writes are seen.
    pub fn open_read_only(path: &Path) -> Result<Meta> {
        let db = DB::open_cf_descriptors_read_only(&db_options(), path, families(), false)?;
        Ok(Meta {
            db,
            images_changed: Default::default(),
            generation: None,
        })
    }

    /// Whether a database exists at `path` (a read-only open needs one).
    pub fn exists(path: &Path) -> bool {
        path.join("CURRENT").is_file()
    }

    /// Merges the tables of a family that gathered too many, so that opens
    /// stay cheap however many sessions the store has seen. (RocksDB's own
    /// compactions run in the background and die with these short-lived
    /// processes, or only move tables down a level without merging them.)
    pub fn compact_if_needed(&self) -> Result<()> {
        for name in FAMILIES {
            let cf = self.cf(name)?;
            let mut tables = 0u64;
            for level in 0..7 {
                // A string property (RocksDB has no integer form of it).
                tables += self
                    .db
                    .property_value_cf(cf, &format!("rocksdb.num-files-at-level{level}"))?
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if tables > MAX_TABLES {
                let mut opts = CompactOptions::default();
                opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
                self.db
                    .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
            }
        }
        Ok(())
    }

    /// Writes the memtables to tables once the log holds more than
    /// `MAX_LOGGED` bytes of them: every later open (each command opens the
    /// database several times, read-only opens included) would otherwise
    /// replay that much of the log again. The content index makes sessions
    /// that write megabytes (an entry per file of each new layer). Every
    /// family is flushed, not only the large one: the log is kept, and
    /// replayed whole, while any family still has records only there.
    pub fn flush_if_large(&self) -> Result<()> {
        let mut logged = 0;
        let mut cfs = Vec::new();
        for name in std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME).chain(FAMILIES) {
            let cf = self.cf(name)?;
            logged += self
                .db
                .property_int_value_cf(cf, "rocksdb.cur-size-active-mem-table")?
                .unwrap_or(0);
            cfs.push(cf);
        }
        if logged > MAX_LOGGED {
            self.db
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Db(format!("column family {name} missing")))
    }

    /// The record under `key` in family `cf`.
    pub fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf)?, key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every record of a family, in key order.
    pub fn all<T: DeserializeOwned>(&self, cf: &str) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (k, v) = item?;
            let value = decode(&k, &v)?;
            out.push((k.into_vec(), value));
        }
        Ok(out)
    }

    /// Whether a family holds no record.
    pub(crate) fn is_empty(&self, cf: &str) -> Result<bool> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        iter.seek_to_first();
        let empty = !iter.valid();
        iter.status()?;
        Ok(empty)
    }

    /// Every record of a family whose key starts with `prefix`, in key
    /// order.
    pub fn with_prefix<T: DeserializeOwned>(
        &self,
        cf: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf)?, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            let value = decode(&k, &v)?;
            out.push((k.into_vec(), value));
        }
        Ok(out)
    }

    /// A reader for many prefix lookups in one family, in any order (one
    /// iterator, seeked again for each: far cheaper than an iterator each).
    pub(crate) fn prefix_reader(&self, cf: &str) -> Result<PrefixReader<'_>> {
        Ok(PrefixReader {
            iter: self.db.raw_iterator_cf(self.cf(cf)?),
        })
    }

    /// The record of blob `d`.
    pub fn blob(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        self.get(CF_BLOBS, d.as_bytes())
    }
    /// The record of layer `d` (a chain id).
    pub fn layer(&self, d: &Digest) -> Result<Option<LayerRecord>> {
        self.get(CF_LAYERS, d.as_bytes())
    }
    /// The layers containerd's snapshots hold, with every layer below
    /// them: roots for `gc` and `rmi`, which never remove them.
    pub(crate) fn layers_held_by_snapshots(&self) -> Result<HashSet<Digest>> {
        let mut held = HashSet::new();
        let mut todo: Vec<Digest> = self
            .all::<SnapshotRecord>(CF_SNAPSHOTS)?
            .into_iter()
            .filter_map(|(_, r)| r.layer)
            .collect();
        while let Some(c) = todo.pop() {
            if held.insert(c) {
                if let Some(parent) = self.layer(&c)?.and_then(|r| r.parent) {
                    todo.push(parent);
                }
            }
        }
        Ok(held)
    }

    /// The record of layer blob `d` when it was dropped.
    pub fn dropped(&self, d: &Digest) -> Result<Option<DroppedBlob>> {
        self.get(CF_DROPPED, d.as_bytes())
    }
    /// Every dropped layer blob.
    pub fn dropped_blobs(&self) -> Result<BTreeMap<Digest, DroppedBlob>> {
        Ok(self
            .all::<DroppedBlob>(CF_DROPPED)?
            .into_iter()
            .filter_map(|(k, v)| Some((Digest::from_bytes(k.try_into().ok()?), v)))
            .collect())
    }
    /// The record of image `d` (a manifest digest).
    pub fn image(&self, d: &Digest) -> Result<Option<ImageRecord>> {
        self.get(CF_IMAGES, d.as_bytes())
    }
    /// The record of tag `name` (a normalised reference).
    pub fn tag(&self, name: &str) -> Result<Option<TagRecord>> {
        self.get(CF_TAGS, name.as_bytes())
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.all(CF_IMAGES)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every tag with its record.
    pub fn tags(&self) -> Result<Vec<(String, TagRecord)>> {
        Ok(self
            .all::<TagRecord>(CF_TAGS)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// An atomic batch of writes.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            meta: self,
            batch: WriteBatch::default(),
            touches_images: false,
        }
    }

    /// Whether a batch changed images or tags since the last call.
    pub fn take_images_changed(&self) -> bool {
        self.images_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// See [`Meta::prefix_reader`].
pub(crate) struct PrefixReader<'a> {
    iter: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
}

impl PrefixReader<'_> {
    /// Every record whose key starts with `prefix`, in key order.
    pub(crate) fn with_prefix<T: DeserializeOwned>(
        &mut self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        self.iter.seek(prefix);
        while let (Some(k), Some(v)) = (self.iter.key(), self.iter.value()) {
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), decode(k, v)?));
            self.iter.next();
        }
        self.iter.status()?;
        Ok(out)
    }
}

/// Writes that must land together: applied atomically and synced.
pub struct Batch<'a> {
    meta: &'a Meta,
    batch: WriteBatch,
    touches_images: bool,
}

impl Batch<'_> {
    pub fn put<T: Serialize>(&mut self, cf: &str, key: &[u8], value: &T) -> Result<()> {
        let bytes = encode(value)?;
        self.touches_images |= cf == CF_IMAGES || cf == CF_TAGS;
        self.batch.put_cf(self.meta.cf(cf)?, key, bytes);
        Ok(())
    }
    pub fn delete(&mut self, cf: &str, key: &[u8]) -> Result<()> {
        self.touches_images |= cf == CF_IMAGES || cf == CF_TAGS;
        self.batch.delete_cf(self.meta.cf(cf)?, key);
        Ok(())
    }
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
    pub fn commit(self) -> Result<()> {
        if let Some(marker) = self.meta.generation.as_ref().filter(|_| !self.is_empty()) {
            bump_generation(marker)?;
            if self.touches_images {
                let pending = marker.with_file_name(VIEW_PENDING_FILE);
                std::fs::write(&pending, b"")
                    .map_err(|e| Error::Db(format!("{}: {e}", pending.display())))?;
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.meta.db.write_opt(self.batch, &opts)?;
        if self.touches_images {
            self.meta
                .images_changed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_changes_the_generation_marker() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(generation(dir.path()), None);
        let write = |n: u8| {
            let mut b = meta.batch();
            b.put(CF_TAGS, &[n], &Digest::of(&[n])).unwrap();
            b.commit().unwrap();
            generation(dir.path()).expect("a marker")
        };
        let first = write(1);
        assert_ne!(write(2), first);
        // A batch with nothing in it changes nothing.
        let before = generation(dir.path());
        meta.batch().commit().unwrap();
        assert_eq!(generation(dir.path()), before);
    }

    #[test]
    fn a_batch_changing_tags_leaves_the_view_pending_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let mut b = meta.batch();
        b.put(CF_BLOBS, b"k", &Digest::of(b"k")).unwrap();
        b.commit().unwrap();
        assert!(!view_pending(dir.path()), "blobs are not in the view");
        let mut b = meta.batch();
        b.put(CF_TAGS, b"t", &Digest::of(b"t")).unwrap();
        b.commit().unwrap();
        assert!(view_pending(dir.path()));
        clear_view_pending(dir.path()).unwrap();
        assert!(!view_pending(dir.path()));
        clear_view_pending(dir.path()).unwrap();
    }

    #[test]
    fn records_round_trip_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        {
            let meta = Meta::open(dir.path()).unwrap();
            let mut b = meta.batch();
            let rec = BlobRecord {
                size: 5,
                media_type: "m".into(),
                refs: 2,
            };
            b.put(CF_BLOBS, d.as_bytes(), &rec).unwrap();
            b.put(
                CF_TAGS,
                b"docker.io/library/x:latest",
                &TagRecord {
                    image: d,
                    repo_digest: None,
                },
            )
            .unwrap();
            b.commit().unwrap();
        }
        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(meta.blob(&d).unwrap().unwrap().refs, 2);
        assert_eq!(meta.tags().unwrap()[0].0, "docker.io/library/x:latest");
        assert!(meta.layer(&d).unwrap().is_none());
    }

    #[test]
    fn tables_are_merged_once_they_gather() {
        let dir = tempfile::tempdir().unwrap();
        let tables = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".sst")
                })
                .count()
        };
        // Each session's log becomes a table when the next one opens.
        for i in 0..(MAX_TABLES as usize + 4) {
            let meta = Meta::open(dir.path()).unwrap();
            let mut b = meta.batch();
            let rec = BlobRecord {
                size: i as u64,
                media_type: "m".into(),
                refs: 1,
            };
            b.put(CF_BLOBS, Digest::of(&[i as u8]).as_bytes(), &rec)
                .unwrap();
            b.commit().unwrap();
        }
        let before = tables();
        assert!(before > MAX_TABLES as usize, "{before} tables");
        let meta = Meta::open(dir.path()).unwrap();
        meta.compact_if_needed().unwrap();
        drop(meta);
        assert!(tables() <= 2, "{} tables after merging", tables());
        let meta = Meta::open_read_only(dir.path()).unwrap();
        assert_eq!(meta.all::<BlobRecord>(CF_BLOBS).unwrap().len(), 12);
    }

    fn put_blob(meta: &Meta, i: u8) {
        let mut b = meta.batch();
        let rec = BlobRecord {
            size: i as u64,
            media_type: "m".into(),
            refs: 1,
        };
        b.put(CF_BLOBS, Digest::of(&[i]).as_bytes(), &rec).unwrap();
        b.commit().unwrap();
    }

    /// The newest write-ahead log of a closed database.
    fn newest_log(dir: &Path) -> std::path::PathBuf {
        let mut logs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.pop().expect("a write-ahead log")
    }

    /// A writer killed half-way through a write leaves a torn record at the
    /// end of its log; a read-only open (which replays the log without
    /// repairing it) must still open and see every completed write.
    #[test]
    fn a_read_only_open_survives_a_torn_log_tail() {
        for torn in ["garbage", "cut"] {
            let dir = tempfile::tempdir().unwrap();
            {
                let meta = Meta::open(dir.path()).unwrap();
                put_blob(&meta, 1);
                put_blob(&meta, 2);
            }
            let log = newest_log(dir.path());
            let len = std::fs::metadata(&log).unwrap().len();
            assert!(len > 0, "the writes are in the log");
            match torn {
                "garbage" => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                    // A record header promising more than follows.
                    f.write_all(&[0x11, 0x22, 0x33, 0x44, 0xff, 0x7f, 1, 9, 9])
                        .unwrap();
                }
                _ => {
                    // The second write only half on disk.
                    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
                    f.set_len(len - 5).unwrap();
                }
            }
            let meta = Meta::open_read_only(dir.path())
                .unwrap_or_else(|e| panic!("read-only open after a {torn} tail: {e}"));
            let blobs = meta.all::<BlobRecord>(CF_BLOBS).unwrap();
            let want = if torn == "cut" { 1 } else { 2 };
            assert_eq!(blobs.len(), want, "after a {torn} tail");
            drop(meta);
            let meta = Meta::open(dir.path()).unwrap();
            assert_eq!(meta.all::<BlobRecord>(CF_BLOBS).unwrap().len(), want);
        }
    }

    #[test]
    fn decoding_checks_the_version_byte() {
        assert!(decode::<BlobRecord>(b"k", &[]).is_err());
        assert!(decode::<BlobRecord>(b"k", &[9, 1, 2]).is_err());
        let good = encode(&TagRecord {
            image: Digest::of(b"a"),
            repo_digest: None,
        })
        .unwrap();
        assert!(decode::<TagRecord>(b"k", &good).is_ok());
        assert!(decode::<BlobRecord>(b"k", &good[..3]).is_err());
    }
}
