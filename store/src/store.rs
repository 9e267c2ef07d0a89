//! The store: its folders, metadata sessions, and the operations a tool
//! calls (`load`, `images`, `inspect`, `tag`, `rmi`, `gc`, `df`).
//!
//! Concurrency: RocksDB admits one writing process, so metadata is touched
//! only in short sessions under the root lock. Long work (reading blobs,
//! extracting layers) happens outside it, protected from gc by a lease.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::{
    DiskUsage, ImageInspect, ImageSummary, LayerInfo, NotRemoved, PlatformInfo, Removal,
};
use crate::layers::LayerStore;
use crate::lock::{Lease, LeaseContent, RootLock};
use crate::meta::{ImageRecord, Meta, TagRecord, CF_BLOBS, CF_IMAGES, CF_LAYERS, CF_TAGS};
use crate::reference::Reference;
use crate::unpack::Limits;
use crate::userns::OverlayXattrs;

/// Hooks the application gives the store.
pub struct StoreOptions {
    /// Called with a message when a command has to wait for another one.
    pub on_wait: Arc<dyn Fn(&str) + Send + Sync>,
    /// Bounds on each layer extracted by `load` and `pull`.
    pub limits: Limits,
    /// A user without subordinate ids: keep owners the namespace cannot
    /// map in `user.containers.override_stat` instead of failing the layer
    /// (containers/storage's `ignore_chown_errors`).
    pub ignore_chown_errors: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            on_wait: Arc::new(|_| {}),
            limits: Limits::default(),
            ignore_chown_errors: false,
        }
    }
}

/// An open store root.
pub struct Store {
    root: PathBuf,
    pub(crate) content: ContentStore,
    pub(crate) layers: LayerStore,
    pub(crate) opts: StoreOptions,
    /// Where the store's overlay metadata lives (`trusted.` or `user.`).
    overlay_xattrs: OverlayXattrs,
    counter: AtomicU64,
    /// Whether the store's filesystem clones extents (file sharing).
    pub(crate) reflink: crate::share::Reflink,
}

const SUBDIRS: [&str; 9] = [
    "db",
    "blobs/sha256",
    "overlay2/l",
    "ingest",
    "tmp",
    "leases",
    "locks",
    "containers",
    "mounts",
];

impl Store {
    /// The root used without `--root`: `$LSTORE_ROOT`, else
    /// `/var/lib/lstore` for root, else `$XDG_DATA_HOME/lstore`.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("LSTORE_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(r);
        }
        // uid 0 of a user namespace is a user: their store, not root's.
        if crate::userns::is_host_root() {
            return PathBuf::from("/var/lib/lstore");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("lstore");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/lstore")
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Store> {
        let root_err = |reason: String| Error::Root {
            path: root.to_path_buf(),
            reason,
        };
        // Something else by that name: say so, rather than "File exists".
        if fs::metadata(root).is_ok_and(|m| !m.is_dir()) {
            return Err(root_err("not a directory".into()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(|e| root_err(format!("cannot create it: {e}")))?;
        for sub in SUBDIRS {
            let p = root.join(sub);
            if !p.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&p)
                    .map_err(|e| root_err(format!("cannot create {sub}/: {e}")))?;
            }
        }
        if rustix::fs::access(root.join("tmp"), rustix::fs::Access::WRITE_OK).is_err() {
            return Err(root_err("not writable".into()));
        }
        let root = fs::canonicalize(root).map_err(|e| root_err(e.to_string()))?;
        let overlay_xattrs = OverlayXattrs::of_store(&root)?;
        let mut opts = opts;
        // Extraction learns the store's flavour and chown policy through
        // its limits: no process-wide state, so stores of both flavours
        // can be open in one process.
        opts.limits.overlay_xattrs = overlay_xattrs;
        opts.limits.ignore_chown_errors = opts.ignore_chown_errors;
        Ok(Store {
            content: ContentStore::new(root.join("blobs/sha256"), root.join("ingest")),
            layers: LayerStore::new(root.join("overlay2"), root.join("tmp")),
            root,
            opts,
            overlay_xattrs,
            counter: AtomicU64::new(0),
            reflink: Default::default(),
        })
    }

    /// The store's root folder (absolute, symlinks resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Where the store's overlay metadata lives: `user.overlay.*` in a
    /// user's store.
    pub fn overlay_xattrs(&self) -> OverlayXattrs {
        self.overlay_xattrs
    }

    pub(crate) fn layer_store(&self) -> &LayerStore {
        &self.layers
    }

    /// A metadata session that may write: the root lock and the database,
    /// for `f` only. Tables gathered by earlier sessions are merged after a
    /// successful `f`, so that later opens stay cheap.
    pub(crate) fn session<T>(&self, f: impl FnOnce(&Meta) -> Result<T>) -> Result<T> {
        let _lock = RootLock::acquire(&self.root, &*self.opts.on_wait)?;
        let meta = Meta::open(&self.root.join("db"))?;
        // A process killed between its records and the view: catch up
        // first, so that this command (fsck among them) starts from a view
        // that matches; a failure here is tried again and reported below.
        if crate::meta::view_pending(&self.root.join("db")) {
            let _ = crate::cstorage::refresh(self, &meta);
        }
        let out = f(&meta);
        // Even when `f` failed after a batch landed: the view follows the
        // database, under the same lock.
        // Also when an earlier process died between its records and the
        // view (its pending marker is still there).
        let changed = meta.take_images_changed();
        let refreshed = if changed || crate::meta::view_pending(&self.root.join("db")) {
            crate::cstorage::refresh(self, &meta)
        } else {
            Ok(())
        };
        let out = out?;
        refreshed?;
        meta.flush_if_large()?;
        meta.compact_if_needed()?;
        Ok(out)
    }

    /// A metadata session that only reads: the lock shared with other
    /// readers, the database opened read-only (nothing written, nothing
    /// synced). A store whose database does not exist yet gets one made.
    pub(crate) fn read_session<T>(&self, f: impl FnOnce(&Meta) -> Result<T>) -> Result<T> {
        let db = self.root.join("db");
        if !Meta::exists(&db) {
            return self.session(f);
        }
        let lock = RootLock::acquire_shared(&self.root, &*self.opts.on_wait)?;
        let meta = match Meta::open_read_only(&db) {
            Ok(meta) => meta,
            // A database whose first open was cut short lacks column
            // families; a write session makes them (or says what is wrong).
            Err(_) => {
                drop(lock);
                return self.session(f);
            }
        };
        f(&meta)
    }

    /// A read-only copy of the content index for an extraction to link
    /// files to (`share::prelink`): opened under the shared root lock, so
    /// no write session is half done, and kept after it (the database's
    /// tables stay open). None when the store has no index to use yet or
    /// it cannot be opened: files are then written and shared afterwards.
    pub(crate) fn prelinker(&self) -> Option<std::sync::Arc<crate::share::Prelinker>> {
        let db = self.root.join("db");
        if !Meta::exists(&db) {
            return None;
        }
        let (meta, generation) = {
            let _lock = RootLock::acquire_shared(&self.root, &*self.opts.on_wait).ok()?;
            (Meta::open_read_only(&db).ok()?, self.generation())
        };
        let prelinker = crate::share::Prelinker::new(meta, self.layers.clone(), generation);
        Some(std::sync::Arc::new(prelinker))
    }

    /// A value that changes whenever any process changes the metadata (None
    /// before the first change): what a reader that keeps what it read
    /// compares. Read it inside the session that reads the records, so the
    /// two agree.
    pub(crate) fn generation(&self) -> Option<String> {
        crate::meta::generation(&self.root.join("db"))
    }

    /// The root lock alone, for work that must not run beside a session
    /// (mount records, push records) but needs no database.
    pub(crate) fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _lock = RootLock::acquire(&self.root, &*self.opts.on_wait)?;
        f()
    }

    /// Creates a lease; must be called inside a session so that gc (which
    /// runs inside one) sees it before anything is checked for presence.
    pub(crate) fn lease(&self, content: &LeaseContent) -> Result<Lease> {
        Lease::create(&self.root.join("leases"), content)
    }

    /// A name unique within this process, for tmp/ and ingest/ entries.
    pub(crate) fn unique(&self, lease: &Lease, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}.{what}-{n}", lease.id())
    }

    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    // ---- reading -------------------------------------------------------

    /// Finds the image a user's word names: a reference (`redis`,
    /// `host/x:tag`, `x@sha256:…`), an image id or manifest digest
    /// (`sha256:…`), or a unique prefix of an image id. An id that several
    /// stored images share (one config under an OCI and a Docker manifest)
    /// is ambiguous: which one is meant is never guessed.
    pub(crate) fn resolve(&self, meta: &Meta, word: &str) -> Result<ImageRecord> {
        let mut found = self.resolve_all(meta, word)?;
        if found.len() > 1 {
            let manifests: Vec<String> = found.iter().map(|i| i.manifest.to_string()).collect();
            return Err(Error::Ambiguous {
                word: word.to_string(),
                reason: format!(
                    "{} images have this id (manifests {}); name one by reference or manifest digest",
                    found.len(),
                    manifests.join(", ")
                ),
            });
        }
        found
            .pop()
            .ok_or_else(|| Error::ImageNotFound(word.to_string()))
    }

    /// Every image a user's word names: one for a reference or a manifest
    /// digest; for an image id or a prefix of one, every image stored with
    /// that id. Never empty.
    pub(crate) fn resolve_all(&self, meta: &Meta, word: &str) -> Result<Vec<ImageRecord>> {
        let not_found = || Error::ImageNotFound(word.to_string());
        let explicit = word.strip_prefix("sha256:");
        if let Some(hex) = explicit {
            // A full digest names an image id or a manifest; anything else
            // after `sha256:` is a prefix of an image id, or a mistake.
            if hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Invalid(format!(
                    "invalid digest {word}: expected sha256: and up to 64 hex digits"
                )));
            }
        }
        let hex = explicit.unwrap_or(word);
        let is_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex && (explicit.is_some() || hex.len() >= 4) {
            if let Some(found) = self.by_id(meta, word, hex)? {
                return Ok(found);
            }
            if explicit.is_some() {
                return Err(not_found());
            }
        }
        let r = match Reference::parse(word) {
            Ok(r) => r,
            Err(_) if is_hex => return self.by_id(meta, word, hex)?.ok_or_else(not_found),
            Err(e) => return Err(e.into()),
        };
        if let Some(d) = r.digest() {
            // `repo@digest`: the manifest itself, or the index it came from
            // when this repository recorded that index.
            if let Some(img) = meta.image(d)? {
                return Ok(vec![img]);
            }
            let repo = r.repository();
            let tagged_here = meta.tags()?.into_iter().any(|(name, t)| {
                t.image == *d || t.repo_digest == Some(*d) && name.starts_with(&repo)
            });
            if tagged_here {
                if let Some(img) = meta.images()?.into_iter().find(|i| i.index == Some(*d)) {
                    return Ok(vec![img]);
                }
            }
            return Err(not_found());
        }
        match meta.tag(&r.to_string())? {
            Some(tag) => Ok(vec![meta.image(&tag.image)?.ok_or_else(|| {
                Error::Corrupt {
                    key: r.to_string(),
                    reason: format!("tag points at missing image {}", tag.image),
                }
            })?]),
            // A short hex word that is no tag: a prefix of an id, as Docker
            // reads it.
            None if is_hex => self.by_id(meta, word, hex)?.ok_or_else(not_found),
            None => Err(not_found()),
        }
    }

    /// The image whose manifest digest is `hex`, else the images whose id
    /// starts with `hex` (all with one id; several ids are ambiguous).
    /// None when nothing matches.
    fn by_id(&self, meta: &Meta, word: &str, hex: &str) -> Result<Option<Vec<ImageRecord>>> {
        let hex = hex.to_ascii_lowercase();
        // A manifest digest is a key; an id (config digest) or its prefix
        // needs the records.
        if let Ok(d) = Digest::parse(&format!("sha256:{hex}")) {
            if let Some(img) = meta.image(&d)? {
                return Ok(Some(vec![img]));
            }
        }
        let mut matches: Vec<ImageRecord> = meta
            .images()?
            .into_iter()
            .filter(|i| i.config.hex().starts_with(&hex))
            .collect();
        matches.sort_by_key(|i| i.manifest);
        let ids: BTreeSet<Digest> = matches.iter().map(|i| i.config).collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(Some(matches)),
            n => Err(Error::Ambiguous {
                word: word.to_string(),
                reason: format!(
                    "{n} image ids start with it ({}); give more of the id",
                    ids.iter().map(Digest::short).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// `lstore images`: one row per tag, and one per untagged image still
    /// kept, newest first.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        self.read_session(|meta| {
            let images: HashMap<Digest, ImageRecord> = meta
                .images()?
                .into_iter()
                .map(|i| (i.manifest, i))
                .collect();
            let mut rows = Vec::new();
            let mut tagged = BTreeSet::new();
            for (name, tag) in meta.tags()? {
                let Some(img) = images.get(&tag.image) else {
                    continue;
                };
                tagged.insert(img.manifest);
                let r = Reference::parse(&name)?;
                rows.push(ImageSummary {
                    repository: Some(r.familiar_repository()),
                    tag: r.tag().map(str::to_string),
                    id: img.config,
                    digest: img.manifest,
                    repo_digest: tag.repo_digest,
                    created: img.created.clone(),
                    size: img.size(),
                });
            }
            for img in images.values().filter(|i| !tagged.contains(&i.manifest)) {
                rows.push(ImageSummary {
                    repository: None,
                    tag: None,
                    id: img.config,
                    digest: img.manifest,
                    repo_digest: None,
                    created: img.created.clone(),
                    size: img.size(),
                });
            }
            rows.sort_by(|a, b| {
                (b.created.as_deref(), &a.repository, &a.tag).cmp(&(
                    a.created.as_deref(),
                    &b.repository,
                    &b.tag,
                ))
            });
            Ok(rows)
        })
    }

    /// `lstore inspect`: the image a word names (a reference, an id or a
    /// unique prefix of one, a manifest digest), its layers and their
    /// folders.
    pub fn inspect(&self, word: &str) -> Result<ImageInspect> {
        self.read_session(|meta| {
            let img = self.resolve(meta, word)?;
            let mut repo_tags = BTreeSet::new();
            let mut repo_digests = BTreeSet::new();
            for (name, tag) in meta.tags()? {
                let Ok(r) = Reference::parse(&name) else {
                    continue;
                };
                if tag.image != img.manifest {
                    continue;
                }
                if r.tag().is_some() {
                    repo_tags.insert(r.familiar());
                }
                // As Docker's RepoDigests: `repository@digest` of what the
                // registry resolved the name to (an index or the manifest).
                if let Some(d) = tag.repo_digest {
                    repo_digests.insert(r.by_digest(d).familiar());
                }
            }
            Ok(self.describe(
                &img,
                repo_tags.into_iter().collect(),
                repo_digests.into_iter().collect(),
            ))
        })
    }

    fn describe(
        &self,
        img: &ImageRecord,
        repo_tags: Vec<String>,
        repo_digests: Vec<String>,
    ) -> ImageInspect {
        let layers: Vec<LayerInfo> = img
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest,
                diff_id: l.diff_id,
                chain_id: l.chain_id,
                media_type: l.media_type.clone(),
                compressed_size: l.compressed_size,
                size: l.size,
                path: self.layers.diff_dir(&l.chain_id).display().to_string(),
            })
            .collect();
        let lowerdir = layers
            .iter()
            .rev()
            .map(|l| l.path.as_str())
            .collect::<Vec<_>>()
            .join(":");
        ImageInspect {
            id: img.config,
            digest: img.manifest,
            repo_tags,
            repo_digests,
            index: img.index,
            platform: PlatformInfo {
                os: img.os.clone(),
                architecture: img.architecture.clone(),
                variant: img.variant.clone(),
            },
            size: img.size(),
            layers,
            lowerdir,
        }
    }

    // ---- naming --------------------------------------------------------

    /// `lstore tag SRC DEST`: DEST names the image SRC names (a tag that
    /// named another image moves; that image stays until rmi or gc).
    pub fn tag(&self, src: &str, dest: &str) -> Result<()> {
        let dest = Reference::parse(dest)?;
        if dest.digest().is_some() {
            return Err(Error::Invalid(format!(
                "{dest}: a tag cannot contain a digest"
            )));
        }
        self.session(|meta| {
            let img = self.resolve(meta, src)?;
            let mut b = meta.batch();
            b.put(
                CF_TAGS,
                dest.to_string().as_bytes(),
                &TagRecord {
                    image: img.manifest,
                    repo_digest: None,
                },
            )?;
            b.commit()
        })
    }

    // ---- removal -------------------------------------------------------

    /// `lstore rmi`: removes the names; an image no name holds any more is
    /// removed, and what no remaining image uses is swept at once. An id
    /// removes every image stored with that id. A word that names nothing
    /// (or more than one id) does not stop the others: it is reported in
    /// `not_removed`, as `docker rmi` goes on past an unknown image; when
    /// no word names anything, that is the error.
    pub fn rmi(&self, words: &[String]) -> Result<Removal> {
        let mut trash = Vec::new();
        let report = self.session(|meta| {
            let mut report = Removal::default();
            let tags = meta.tags()?;
            let mut drop_tags: BTreeSet<String> = BTreeSet::new();
            let mut candidates: BTreeSet<Digest> = BTreeSet::new();
            let mut failures = Vec::new();
            for word in words {
                let images = match self.resolve_all(meta, word) {
                    Ok(images) => images,
                    Err(e) if names_nothing(&e) => {
                        report.not_removed.push(NotRemoved {
                            reference: word.clone(),
                            error: e.to_string(),
                        });
                        failures.push(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // A name removes that name; an id removes every name.
                let by_name = Reference::parse(word)
                    .ok()
                    .map(|r| r.to_string())
                    .filter(|n| tags.iter().any(|(t, _)| t == n));
                for img in images {
                    match &by_name {
                        Some(n) => {
                            drop_tags.insert(n.clone());
                        }
                        None => {
                            for (name, t) in &tags {
                                if t.image == img.manifest {
                                    drop_tags.insert(name.clone());
                                }
                            }
                        }
                    }
                    candidates.insert(img.manifest);
                }
            }
            if candidates.is_empty() && !failures.is_empty() {
                return Err(if failures.len() == 1 {
                    failures.remove(0)
                } else {
                    Error::Invalid(
                        failures
                            .iter()
                            .map(Error::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                });
            }
            let remaining_tagged: BTreeSet<Digest> = tags
                .iter()
                .filter(|(n, _)| !drop_tags.contains(n))
                .map(|(_, t)| t.image)
                .collect();
            let doomed: BTreeSet<Digest> = candidates
                .into_iter()
                .filter(|d| !remaining_tagged.contains(d))
                .collect();
            for n in &drop_tags {
                report.untagged.push(
                    Reference::parse(n)
                        .map(|r| r.familiar())
                        .unwrap_or_else(|_| n.clone()),
                );
            }
            let plan = crate::gc::plan_removal(self, meta, &drop_tags, &doomed)?;
            crate::gc::apply_sweep(self, meta, &plan, &mut report, &mut trash)?;
            Ok(report)
        })?;
        let mut report = report;
        report.freed_bytes += crate::gc::empty_trash(self, trash);
        Ok(report)
    }

    /// `lstore gc`: sweeps everything no tag, mount or running command
    /// holds, and the leftovers of interrupted commands.
    pub fn gc(&self, dry_run: bool) -> Result<Removal> {
        let mut trash = Vec::new();
        let mut report = self.session(|meta| crate::gc::full(self, meta, dry_run, &mut trash))?;
        report.freed_bytes += crate::gc::empty_trash(self, trash);
        // `keep-layer-blobs false`: the blobs of layers stored before it
        // was set go now; drops a killed process left are finished.
        let dropped = match (self.keeps_layer_blobs()?, dry_run) {
            (false, false) => crate::layer_blobs::drop_layer_blobs(self, None, None)?,
            (false, true) => {
                self.read_session(|meta| crate::layer_blobs::would_drop(self, meta))?
            }
            (true, false) => {
                self.session(|meta| crate::layer_blobs::finish_interrupted(self, meta))?
            }
            (true, true) => Default::default(),
        };
        report.dropped_layer_blobs += dropped.blobs;
        report.freed_bytes += dropped.bytes;
        Ok(report)
    }

    /// `lstore df`: bytes of blobs and layers, shared vs unique.
    pub fn df(&self) -> Result<DiskUsage> {
        self.read_session(|meta| {
            let mut du = DiskUsage {
                images: meta.images()?.len() as u64,
                ..DiskUsage::default()
            };
            let dropped = meta.dropped_blobs()?;
            (du.dropped_layer_blobs, du.dropped_blob_bytes) =
                crate::layer_blobs::dropped_bytes(meta)?;
            for (key, b) in meta.all::<crate::meta::BlobRecord>(CF_BLOBS)? {
                // A dropped blob's record stays, its bytes are not stored.
                let digest = <[u8; 32]>::try_from(key.as_slice()).map(Digest::from_bytes);
                if digest.is_ok_and(|d| dropped.contains_key(&d)) {
                    continue;
                }
                du.blobs += 1;
                du.blob_bytes += b.size;
                classify(&mut du, b.refs, b.size);
            }
            let held = meta.layers_held_by_snapshots()?;
            for (key, l) in meta.all::<crate::meta::LayerRecord>(CF_LAYERS)? {
                du.layers += 1;
                du.layer_bytes += l.file_bytes;
                let chain = <[u8; 32]>::try_from(key.as_slice()).map(Digest::from_bytes);
                if l.refs == 0 && chain.is_ok_and(|c| held.contains(&c)) {
                    du.containerd_layers += 1;
                    du.containerd_bytes += l.file_bytes;
                } else {
                    classify(&mut du, l.refs, l.file_bytes);
                }
                if let Ok(c) = chain {
                    if l.file_bytes > 0 && !crate::share::index::is_indexed(meta, &c)? {
                        du.unindexed_layers += 1;
                    }
                }
            }
            let saved = crate::share::savings(&self.layers, meta)?;
            du.shared_files = saved.files;
            du.sharing_saved_bytes = saved.bytes;
            Ok(du)
        })
    }

    /// Image records in the database, for tools that want them all.
    pub(crate) fn image_records(&self) -> Result<BTreeMap<Digest, ImageRecord>> {
        self.read_session(|meta| {
            Ok(meta
                .all::<ImageRecord>(CF_IMAGES)?
                .into_iter()
                .map(|(_, i)| (i.manifest, i))
                .collect())
        })
    }
}

/// Errors that say a word names no single image (rather than that the
/// store failed): `rmi` reports them and goes on with the other words.
fn names_nothing(e: &Error) -> bool {
    matches!(
        e,
        Error::ImageNotFound(_)
            | Error::Ambiguous { .. }
            | Error::Invalid(_)
            | Error::Reference(_)
            | Error::Digest(_)
    )
}

fn classify(du: &mut DiskUsage, refs: u64, bytes: u64) {
    match refs {
        0 => du.unused_bytes += bytes,
        1 => du.unique_bytes += bytes,
        _ => du.shared_bytes += bytes,
    }
}

// ---- loading archives --------------------------------------------------

/// Layer bytes from an archive member.
struct ArchiveSource<'a> {
    files: &'a crate::archive::ArchiveFiles,
    members: Vec<String>,
}

impl crate::import::LayerSource for ArchiveSource<'_> {
    fn open(&self, index: usize) -> Result<Box<dyn std::io::Read + Send>> {
        let member = self
            .members
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no layer #{index}")))?;
        self.files.reader(member)
    }
}

impl Store {
    /// `lstore load`: every image of an OCI layout (directory or tar) or a
    /// docker-archive. `tag` names the image of a single-image archive.
    pub fn load(
        &self,
        path: &Path,
        tag: Option<&str>,
        progress: &dyn crate::import::ImportProgress,
    ) -> Result<Vec<crate::images::Stored>> {
        let tag = tag.map(Reference::parse).transpose()?;
        let files = crate::archive::ArchiveFiles::open(path)?;
        let host = crate::platform::host();
        let images = crate::archive::read_images(&files, &|descs| {
            crate::platform::select(descs, &host)
                .cloned()
                .map_err(|e| Error::Invalid(e.to_string()))
        })?;
        if tag.is_some() && images.len() != 1 {
            return Err(Error::Invalid(format!(
                "--tag names one image, but {} holds {}",
                path.display(),
                images.len()
            )));
        }
        let mut out = Vec::new();
        for img in images {
            let mut names = img.names.clone();
            if let Some(t) = &tag {
                names = vec![t.clone()];
            }
            // Uncompressed docker-archive layers: their digest is the diff_id,
            // known without reading them (so a reload reads nothing).
            let config: crate::oci::ImageConfig = serde_json::from_slice(&img.config.0)
                .map_err(|e| Error::Invalid(format!("image config {}: {e}", img.config.1)))?;
            let mut layers = Vec::new();
            for (i, l) in img.layers.iter().enumerate() {
                let desc = match &l.descriptor {
                    Some(d) => Some(d.clone()),
                    None => {
                        docker_archive_descriptor(&files, &l.member, config.rootfs.diff_ids.get(i))?
                    }
                };
                layers.push(desc);
            }
            let source = ArchiveSource {
                files: &files,
                members: img.layers.iter().map(|l| l.member.clone()).collect(),
            };
            let stored = crate::import::import(
                self,
                crate::import::ImportRequest {
                    names,
                    repo_digest: None,
                    index: img.index.clone(),
                    manifest: img.manifest.clone(),
                    config: img.config.clone(),
                    layers,
                    source: &source,
                    progress,
                },
            )?;
            out.push(stored);
        }
        Ok(out)
    }
}

/// The descriptor of an uncompressed docker-archive layer (digest =
/// diff_id); None for a compressed one, whose digest only reading tells.
fn docker_archive_descriptor(
    files: &crate::archive::ArchiveFiles,
    member: &str,
    diff_id: Option<&Digest>,
) -> Result<Option<crate::oci::Descriptor>> {
    let (Some(diff_id), Some(size)) = (diff_id, files.size(member)) else {
        return Ok(None);
    };
    let mut head = [0u8; 8];
    let mut r = files.reader(member)?;
    let n = std::io::Read::read(&mut r, &mut head).unwrap_or(0);
    if crate::oci::Compression::sniff(&head[..n]) != crate::oci::Compression::None {
        return Ok(None);
    }
    Ok(Some(crate::oci::Descriptor::new(
        crate::oci::DOCKER_LAYER_TAR,
        *diff_id,
        size,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process killed during the very first open of a root can leave a
    /// database that has its CURRENT file but not yet all its column
    /// families. Reading commands must still work (and the first of them
    /// completes the database), not fail until some writer runs.
    #[test]
    fn a_database_left_half_created_is_completed_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        drop(rocksdb::DB::open_default(dir.path().join("db")).unwrap());
        assert!(Meta::exists(&dir.path().join("db")));
        assert!(store.images().unwrap().is_empty());
        assert_eq!(store.df().unwrap().images, 0);
        // Read-only from now on: the families exist.
        Meta::open_read_only(&dir.path().join("db")).unwrap();
    }

    /// A library user may hold a root store and a user's store at once:
    /// each store's extractions write its own flavour of opaque marker.
    #[test]
    fn stores_of_both_flavours_in_one_process_keep_their_own_opaque_xattr() {
        use crate::unpack::testtar::{self, RawEntry};
        if !rustix::process::geteuid().is_root() {
            return; // trusted.* xattrs need root
        }
        let (root_dir, user_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root_store = Store::open(root_dir.path(), StoreOptions::default()).unwrap();
        // Host root may not open a user's store: make this one user's by
        // hand, as opening it in a user namespace would.
        let mut user_store = Store::open(user_dir.path(), StoreOptions::default()).unwrap();
        user_store.overlay_xattrs = OverlayXattrs::User;
        user_store.opts.limits.overlay_xattrs = OverlayXattrs::User;
        assert_eq!(root_store.overlay_xattrs(), OverlayXattrs::Trusted);
        assert_eq!(user_store.overlay_xattrs(), OverlayXattrs::User);
        let layer = testtar::archive(&[RawEntry::dir("d/"), RawEntry::file("d/.wh..wh..opq", b"")]);
        // The root store extracts last: it must not take the user's flavour.
        for store in [&user_store, &root_store] {
            let dest = store.root().join("tmp/layer");
            fs::create_dir(&dest).unwrap();
            crate::unpack::unpack_layer(
                &mut &layer[..],
                crate::oci::Compression::None,
                &dest,
                &store.opts.limits,
            )
            .unwrap();
            let opaque = |name: &str| {
                let mut buf = [0u8; 8];
                rustix::fs::getxattr(dest.join("d"), name, &mut buf[..]).is_ok()
            };
            let (mine, other) = match store.overlay_xattrs() {
                OverlayXattrs::Trusted => ("trusted.overlay.opaque", "user.overlay.opaque"),
                OverlayXattrs::User => ("user.overlay.opaque", "trusted.overlay.opaque"),
            };
            assert!(opaque(mine), "{} lacks {mine}", store.root().display());
            assert!(!opaque(other), "{} has {other}", store.root().display());
        }
    }
}
