//! `lstore push`: an image's blobs, then its manifest, to a registry.
//!
//! Every blob (layers and config) is pushed byte for byte as stored, so
//! the digests a pulled image had stay the same. For each blob:
//!
//! 1. `HEAD` in the destination repository: already there, nothing to do;
//! 2. else a cross-repository mount from another repository of the same
//!    registry known to hold it: one the store's tags name for an image
//!    with that blob (where it was pulled from, or tagged for), or one an
//!    earlier push wrote it to (remembered in `<root>/pushed.json`);
//! 3. else an upload (monolithic or chunked, as the client decides).
//!
//! A layer whose blob was dropped (`keep-layer-blobs false`) goes through
//! 1 and 2 too; then the blob is fetched again from a registry the image
//! was pulled from and sent on byte for byte (its digest checked by the
//! destination as it arrives); only when none has it is the layer's tar
//! rebuilt from its record and folder (checked against its diff id),
//! compressed with gzip into a file under `tmp/`, and uploaded: the
//! manifest then names the new digest (the config, so the image id,
//! stays), and is no longer the stored one.
//!
//! Then the manifest is put by tag (or by digest). An image pulled through
//! an index is pushed as its platform manifest alone: the store keeps only
//! that platform's manifest, and a registry refuses an index whose other
//! manifests it does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::lock::LeaseContent;
use crate::oci::{self, Descriptor, Document};
use crate::reference::Reference;
use crate::registry::{ClientOptions, RegistryClient, MAX_MANIFEST_SIZE};
use crate::store::Store;

/// Cross-repository mounts tried per blob before uploading it (as Docker).
const MOUNT_ATTEMPTS: usize = 3;
/// Repositories remembered per blob in `pushed.json`.
const REMEMBERED_REPOSITORIES: usize = 8;
/// Where pushes are remembered, under the store root.
const PUSHED_FILE: &str = "pushed.json";

/// How [`Store::push`] reaches the registry.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Transport, TLS and credentials.
    pub client: ClientOptions,
    /// Blobs pushed at once.
    pub jobs: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            client: ClientOptions::default(),
            jobs: 3,
        }
    }
}

/// How a blob got to the destination.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum BlobOutcome {
    /// The repository had it already.
    Exists,
    /// Linked from another repository of the same registry.
    Mounted {
        /// The repository it was mounted from (`host/path`).
        from: String,
    },
    /// Sent.
    Uploaded,
    /// Its blob was dropped; fetched again from where the image was
    /// pulled and sent byte for byte.
    Refetched {
        /// The repository it came from (`host/path`).
        from: String,
    },
    /// Its blob was dropped and no registry had it: the layer's tar was
    /// rebuilt, compressed with gzip and sent under a new digest.
    Rebuilt {
        /// The digest of the dropped blob the manifest named.
        original: Digest,
    },
}

impl BlobOutcome {
    /// Whether bytes were sent.
    fn sent(&self) -> bool {
        !matches!(self, BlobOutcome::Exists | BlobOutcome::Mounted { .. })
    }
}

/// One blob of a push.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PushedBlob {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// How it got there.
    #[serde(flatten)]
    pub outcome: BlobOutcome,
}

/// What a push did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pushed {
    /// Where the image went (`127.0.0.1:5000/app:v2`).
    pub reference: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// The manifest's media type.
    pub media_type: String,
    /// Layers in manifest order, then the config.
    pub blobs: Vec<PushedBlob>,
    /// Bytes sent (blobs uploaded, not mounted or already there).
    pub bytes_uploaded: u64,
}

/// Reports the progress of blobs; called from several threads. `index`
/// is the blob's place in `Pushed::blobs`.
pub trait PushProgress: Sync {
    /// The push of blob `index` begins.
    fn blob_started(&self, _index: usize, _desc: &Descriptor) {}
    /// `bytes` more of blob `index` were read for upload.
    fn blob_bytes(&self, _index: usize, _bytes: u64) {}
    /// Blob `index` is at the destination.
    fn blob_done(&self, _index: usize, _desc: &Descriptor, _outcome: &BlobOutcome) {}
}

/// No progress reporting.
pub struct NoPushProgress;
impl PushProgress for NoPushProgress {}

/// Counts bytes read for the progress report.
struct Counting<'a, R> {
    inner: R,
    progress: &'a dyn PushProgress,
    index: usize,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.blob_bytes(self.index, n as u64);
        Ok(n)
    }
}

/// A layer of the pushed image whose blob was dropped.
struct DroppedLayer {
    chain: Digest,
    diff_id: Digest,
    /// Repositories (`host/path`) it was pulled from.
    origins: Vec<String>,
}

/// Repositories known to hold each blob, by digest (`host/path` strings).
type KnownRepositories = BTreeMap<Digest, Vec<String>>;

impl Store {
    /// Pushes the image `word` names to `dest` (default: `word` itself,
    /// which must then be a name).
    pub fn push(
        &self,
        word: &str,
        dest: Option<&str>,
        opts: &PushOptions,
        progress: &dyn PushProgress,
    ) -> Result<Pushed> {
        let dest_given = dest.map(Reference::parse).transpose()?;

        // Resolve, find where each blob is known to be, and lease the
        // blobs so a concurrent rmi/gc cannot take them mid-upload.
        let (image, dest, known, dropped, _lease) = self.read_session(|meta| {
            let image = self.resolve(meta, word)?;
            let dest = match dest_given {
                Some(d) => d,
                None => own_name(meta, word, &image).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{word} is not a name of the image; say where to push it: \
                         lstore push {word} REGISTRY/NAME[:TAG]"
                    ))
                })?,
            };
            let known = self.known_repositories(meta, &image)?;
            // Dropped layer blobs: where to fetch each again, and the
            // layer whose tar is rebuilt when nowhere has it.
            let mut dropped: BTreeMap<Digest, DroppedLayer> = BTreeMap::new();
            for l in &image.layers {
                if meta.dropped(&l.digest)?.is_some() && !self.content().contains(&l.digest) {
                    let origins = crate::layer_blobs::origins(meta, &l.digest)?;
                    dropped.insert(
                        l.digest,
                        DroppedLayer {
                            chain: l.chain_id,
                            diff_id: l.diff_id,
                            origins,
                        },
                    );
                }
            }
            let lease = self.lease(&LeaseContent {
                pid: std::process::id(),
                blobs: image.blobs(),
                layers: dropped.values().map(|d| d.chain).collect(),
            })?;
            Ok((image, dest, known, dropped, lease))
        })?;
        let dropped_set: BTreeSet<Digest> = dropped.keys().copied().collect();
        self.check_blobs_present(&image, word, "push", &dropped_set)?;
        let manifest_bytes = self.content().read(&image.manifest, MAX_MANIFEST_SIZE)?;
        let manifest = match oci::parse_document(&manifest_bytes, Some(&image.manifest_media_type))
        {
            Ok(Document::Manifest(m)) => m,
            Ok(Document::Index(_)) => {
                return Err(Error::Invalid(format!(
                    "manifest {} is an index",
                    image.manifest
                )))
            }
            Err(source) => {
                return Err(Error::Document {
                    what: format!("manifest {}", image.manifest),
                    source,
                })
            }
        };
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| image.manifest_media_type.clone());

        let mut blobs: Vec<Descriptor> = Vec::new();
        for d in manifest.layers.iter().chain([&manifest.config]) {
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
        for b in blobs.iter().filter(|b| !dropped.contains_key(&b.digest)) {
            match self.content().size(&b.digest) {
                Some(size) if size == b.size => {}
                Some(size) => {
                    return Err(Error::SizeMismatch {
                        what: format!("stored blob {}", b.digest),
                        expected: b.size,
                        actual: size,
                    })
                }
                None => {
                    return Err(Error::BlobMissing {
                        image: word.to_string(),
                        kind: if b.digest == manifest.config.digest {
                            "config"
                        } else {
                            "layer"
                        },
                        blob: b.digest,
                        action: "push",
                    })
                }
            }
        }

        let client = RegistryClient::new(opts.client.clone())?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.max(1))
            .build()
            .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
        let outcomes: Vec<(Descriptor, BlobOutcome)> = pool.install(|| {
            blobs
                .par_iter()
                .enumerate()
                .map(|(i, desc)| {
                    progress.blob_started(i, desc);
                    let candidates = known.get(&desc.digest).map(Vec::as_slice).unwrap_or(&[]);
                    let (sent, outcome) = match dropped.get(&desc.digest) {
                        Some(layer) => self.push_dropped_layer(
                            &client,
                            &dest,
                            desc,
                            candidates,
                            layer,
                            &media_type,
                        )?,
                        None => (
                            desc.clone(),
                            self.push_blob(&client, &dest, desc, candidates, progress, i)?,
                        ),
                    };
                    progress.blob_done(i, &sent, &outcome);
                    Ok((sent, outcome))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        // Layers sent under new digests: a new manifest names them.
        let replaced: BTreeMap<Digest, Descriptor> = outcomes
            .iter()
            .filter_map(|(sent, outcome)| match outcome {
                BlobOutcome::Rebuilt { original } => Some((*original, sent.clone())),
                _ => None,
            })
            .collect();
        let manifest_bytes = if replaced.is_empty() {
            manifest_bytes
        } else {
            crate::layer_blobs::rewrite_manifest(&manifest, &replaced)?.0
        };
        let digest = client.put_manifest(&dest, &media_type, &manifest_bytes)?;

        // Remember where the blobs are now, for mounts by later pushes.
        let repository = dest.repository();
        let digests: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
        self.locked(|| self.remember_push(&repository, &digests))?;

        let pushed: Vec<PushedBlob> = outcomes
            .into_iter()
            .map(|(d, outcome)| PushedBlob {
                digest: d.digest,
                size: d.size,
                outcome,
            })
            .collect();
        Ok(Pushed {
            reference: dest.familiar(),
            digest,
            size: manifest_bytes.len() as u64,
            media_type,
            bytes_uploaded: pushed
                .iter()
                .filter(|b| b.outcome.sent())
                .map(|b| b.size)
                .sum(),
            blobs: pushed,
        })
    }

    fn push_blob(
        &self,
        client: &RegistryClient,
        dest: &Reference,
        desc: &Descriptor,
        candidates: &[String],
        progress: &dyn PushProgress,
        index: usize,
    ) -> Result<BlobOutcome> {
        if client.blob_exists(dest, &desc.digest)? {
            return Ok(BlobOutcome::Exists);
        }
        let here = dest.repository();
        let sources = candidates
            .iter()
            .filter(|r| **r != here)
            .filter_map(|r| Reference::parse(r).ok())
            .filter(|r| r.domain() == dest.domain())
            .take(MOUNT_ATTEMPTS);
        for from in sources {
            // A refused mount (no pull right there, blob gone) only means
            // uploading it after all.
            if let Ok(true) = client.mount_blob(dest, &desc.digest, &from) {
                return Ok(BlobOutcome::Mounted {
                    from: from.repository(),
                });
            }
        }
        let file = self.content().open(&desc.digest)?;
        let mut reader = Counting {
            inner: io::BufReader::with_capacity(1 << 20, file),
            progress,
            index,
        };
        client.upload_blob(dest, &desc.digest, desc.size, &mut reader)?;
        Ok(BlobOutcome::Uploaded)
    }

    /// A layer whose blob was dropped: already there, mounted, fetched
    /// again from where it was pulled, or else rebuilt (see the module
    /// comment). Returns the descriptor of what the destination holds.
    fn push_dropped_layer(
        &self,
        client: &RegistryClient,
        dest: &Reference,
        desc: &Descriptor,
        candidates: &[String],
        layer: &DroppedLayer,
        manifest_type: &str,
    ) -> Result<(Descriptor, BlobOutcome)> {
        if client.blob_exists(dest, &desc.digest)? {
            return Ok((desc.clone(), BlobOutcome::Exists));
        }
        let here = dest.repository();
        let elsewhere: Vec<Reference> = layer
            .origins
            .iter()
            .chain(candidates)
            .filter(|r| **r != here)
            .filter_map(|r| Reference::parse(r).ok())
            .collect();
        for from in elsewhere.iter().filter(|r| r.domain() == dest.domain()) {
            if let Ok(true) = client.mount_blob(dest, &desc.digest, from) {
                let outcome = BlobOutcome::Mounted {
                    from: from.repository(),
                };
                return Ok((desc.clone(), outcome));
            }
        }
        for from in &elsewhere {
            // Gone there, or refused: the next one, else a rebuild.
            let Ok(fetched) = client.fetch_blob(from, &desc.digest, 0) else {
                continue;
            };
            let mut reader = io::BufReader::with_capacity(1 << 20, fetched.reader);
            if client
                .upload_blob(dest, &desc.digest, desc.size, &mut reader)
                .is_ok()
            {
                let outcome = BlobOutcome::Refetched {
                    from: from.repository(),
                };
                return Ok((desc.clone(), outcome));
            }
        }
        let (file, digest, size) =
            crate::layer_tar::gzip_layer_tar(self, &layer.chain, &layer.diff_id)?;
        let media_type = crate::layer_blobs::rebuilt_media_type(manifest_type, true);
        let sent = Descriptor::new(media_type, digest, size);
        let outcome = BlobOutcome::Rebuilt {
            original: desc.digest,
        };
        // The same layer rebuilt before is the same gzip stream.
        if !client.blob_exists(dest, &digest)? {
            let mut reader = io::BufReader::with_capacity(1 << 20, file);
            client.upload_blob(dest, &digest, size, &mut reader)?;
        }
        Ok((sent, outcome))
    }

    /// For each blob of `image`: repositories that hold it, as far as the
    /// store knows. First the repositories of the image's own names, then
    /// those of other images with the blob, then earlier pushes.
    fn known_repositories(
        &self,
        meta: &crate::meta::Meta,
        image: &crate::meta::ImageRecord,
    ) -> Result<KnownRepositories> {
        let wanted: BTreeSet<Digest> = image.blobs().into_iter().collect();
        let images: BTreeMap<Digest, crate::meta::ImageRecord> = meta
            .images()?
            .into_iter()
            .map(|i| (i.manifest, i))
            .collect();
        let mut tags = meta.tags()?;
        // The image's own names first.
        tags.sort_by_key(|(_, t)| t.image != image.manifest);
        let mut known: KnownRepositories = BTreeMap::new();
        let mut add = |digest: Digest, repository: String| {
            let list = known.entry(digest).or_default();
            if !list.contains(&repository) {
                list.push(repository);
            }
        };
        for (name, tag) in &tags {
            let (Ok(r), Some(img)) = (Reference::parse(name), images.get(&tag.image)) else {
                continue;
            };
            for b in img.blobs().into_iter().filter(|b| wanted.contains(b)) {
                add(b, r.repository());
            }
        }
        for (digest, repositories) in read_pushed(&self.root().join(PUSHED_FILE)) {
            if wanted.contains(&digest) {
                for r in repositories {
                    add(digest, r);
                }
            }
        }
        Ok(known)
    }

    /// Adds `repository` to the record of each blob in `digests`, most
    /// recent first; blobs no longer stored are forgotten. Called in a
    /// session, so concurrent pushes do not lose each other's records.
    fn remember_push(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        let path = self.root().join(PUSHED_FILE);
        let mut pushed = read_pushed(&path);
        for d in digests {
            let list = pushed.entry(*d).or_default();
            list.retain(|r| r != repository);
            list.insert(0, repository.to_string());
            list.truncate(REMEMBERED_REPOSITORIES);
        }
        pushed.retain(|d, _| self.content().contains(d));
        let json = serde_json::to_vec_pretty(&pushed).map_err(|e| Error::Invalid(e.to_string()))?;
        let tmp = tempfile::NamedTempFile::new_in(self.root().join("tmp"))
            .ctx(|| "create a file in tmp/".to_string())?;
        fs::write(tmp.path(), json).ctx(|| format!("write {}", tmp.path().display()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(format!("write {}", path.display()), e.error))?;
        Ok(())
    }
}

/// `word` as a reference, when it is a name the store gives `image` (a
/// tag, or `repo@digest` of its manifest): where a push without DEST goes.
/// An id or id prefix is none, so it never turns into a Docker Hub name.
fn own_name(
    meta: &crate::meta::Meta,
    word: &str,
    image: &crate::meta::ImageRecord,
) -> Option<Reference> {
    let r = Reference::parse(word).ok()?;
    let tagged = meta
        .tag(&r.to_string())
        .ok()
        .flatten()
        .is_some_and(|t| t.image == image.manifest);
    let pinned = r.tag().is_none() && r.digest() == Some(&image.manifest);
    (tagged || pinned).then_some(r)
}

/// The remembered pushes; an unreadable file is an empty memory (it only
/// saves uploads).
fn read_pushed(path: &Path) -> KnownRepositories {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_remembered_most_recent_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let kept = store.content().put_bytes("t.1", b"kept", None).unwrap();
        let gone = Digest::of(b"not stored");
        store.remember_push("r/a", &[kept, gone]).unwrap();
        store.remember_push("r/b", &[kept]).unwrap();
        store.remember_push("r/a", &[kept]).unwrap();
        let pushed = read_pushed(&dir.path().join(PUSHED_FILE));
        assert_eq!(pushed.len(), 1, "a blob not in the store is forgotten");
        assert_eq!(pushed[&kept], ["r/a", "r/b"]);
        for i in 0..20 {
            store.remember_push(&format!("r/{i}"), &[kept]).unwrap();
        }
        let pushed = read_pushed(&dir.path().join(PUSHED_FILE));
        assert_eq!(pushed[&kept].len(), REMEMBERED_REPOSITORIES);
        assert_eq!(pushed[&kept][0], "r/19");
        // A damaged file is no memory, not an error.
        fs::write(dir.path().join(PUSHED_FILE), "{not json").unwrap();
        assert!(read_pushed(&dir.path().join(PUSHED_FILE)).is_empty());
        store.remember_push("r/x", &[kept]).unwrap();
        assert_eq!(read_pushed(&dir.path().join(PUSHED_FILE))[&kept], ["r/x"]);
    }

    #[test]
    fn outcomes_serialise_flat() {
        let b = PushedBlob {
            digest: Digest::of(b"x"),
            size: 1,
            outcome: BlobOutcome::Mounted {
                from: "127.0.0.1:5000/a".into(),
            },
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["result"], "mounted");
        assert_eq!(v["from"], "127.0.0.1:5000/a");
        assert_eq!(v["size"], 1);
    }
}
