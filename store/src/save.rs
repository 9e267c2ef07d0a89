//! `lstore save`: images as an OCI image layout tar that OCI tools read
//! (`skopeo copy oci-archive:…`), with the annotations containerd and Docker
//! use for names and a `manifest.json`, so docker-archive readers (`docker
//! load`) accept the same file.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::meta::ImageRecord;
use crate::oci;
use crate::reference::Reference;
use crate::store::Store;

struct Entry {
    record: ImageRecord,
    name: Option<Reference>,
}

/// A manifest written for the archive: its bytes and digest.
type RewrittenManifest = (Vec<u8>, Digest);

/// A layer as saved: its stored blob, or its tar rebuilt (blob dropped).
enum SavedLayer {
    Blob(Digest),
    Rebuilt {
        chain: Digest,
        diff_id: Digest,
        size: u64,
    },
}

impl SavedLayer {
    fn digest(&self) -> Digest {
        match self {
            SavedLayer::Blob(d) => *d,
            SavedLayer::Rebuilt { diff_id, .. } => *diff_id,
        }
    }
}

/// Appends layer `chain`'s tar, rebuilt from its record and folder, as
/// `blobs/sha256/<diff id>`, streamed (the header's size is the recorded
/// tar size; a tar that differs in size or digest fails the save, and the
/// unfinished archive is never renamed into place).
fn append_rebuilt<W: Write>(
    store: &Store,
    b: &mut tar::Builder<W>,
    chain: &Digest,
    diff_id: &Digest,
    size: u64,
) -> Result<()> {
    let werr = |e: io::Error| Error::io(format!("write the tar of layer {chain}"), e);
    let mut h = header(size, 0o444);
    h.set_path(format!("blobs/sha256/{}", diff_id.hex()))
        .map_err(werr)?;
    h.set_cksum();
    b.append(&h, io::empty()).map_err(werr)?;
    let out = b.get_mut();
    let written = crate::layer_tar::write_layer_tar(store, chain, diff_id, &mut *out)?;
    if written != size {
        return Err(Error::SizeMismatch {
            what: format!("layer {chain} rebuilt from its tar-split record"),
            expected: size,
            actual: written,
        });
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize]).map_err(werr)
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(data.len() as u64, 0o644);
    b.append_data(&mut h, name, data)
}

fn current_umask() -> u32 {
    // umask can only be read by setting it; set it straight back.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.as_raw_mode()
}

impl Store {
    /// How each layer of `r` is saved, and, when a layer's blob was
    /// dropped, the manifest that names the rebuilt tars (uncompressed, as
    /// `docker save` writes layers: their digest is the diff id, and the
    /// config, so the image id, is unchanged).
    fn saved_layers(
        &self,
        r: &ImageRecord,
        dropped: &BTreeSet<Digest>,
    ) -> Result<(Vec<SavedLayer>, Option<RewrittenManifest>)> {
        let mut layers = Vec::new();
        let mut replaced = std::collections::BTreeMap::new();
        let media_type = crate::layer_blobs::rebuilt_media_type(&r.manifest_media_type, false);
        for l in &r.layers {
            // A blob dropped while a file of it is still here (a drop cut
            // short) is saved as it is.
            if !dropped.contains(&l.digest) || self.content().contains(&l.digest) {
                layers.push(SavedLayer::Blob(l.digest));
                continue;
            }
            let record = self.layer_store().tar_split_path(&l.chain_id);
            let size = crate::tarsplit::summary(&record)?.tar_size;
            replaced.insert(l.digest, oci::Descriptor::new(media_type, l.diff_id, size));
            layers.push(SavedLayer::Rebuilt {
                chain: l.chain_id,
                diff_id: l.diff_id,
                size,
            });
        }
        if replaced.is_empty() {
            return Ok((layers, None));
        }
        let (_, manifest) = crate::layer_blobs::read_manifest(self, r)?;
        let rewritten = crate::layer_blobs::rewrite_manifest(&manifest, &replaced)?;
        Ok((layers, Some(rewritten)))
    }

    /// Fails with [`Error::BlobMissing`] when a blob of `image` (named
    /// `word` by the user) is not in the store: `action` (push or save)
    /// copies them all.
    /// A layer blob in `dropped` (dropped once its layer was stored) is
    /// not needed: its tar is rebuilt.
    pub(crate) fn check_blobs_present(
        &self,
        image: &crate::meta::ImageRecord,
        word: &str,
        action: &'static str,
        dropped: &BTreeSet<Digest>,
    ) -> Result<()> {
        let blobs = [("manifest", image.manifest), ("config", image.config)]
            .into_iter()
            .chain(
                image
                    .layers
                    .iter()
                    .filter(|l| !dropped.contains(&l.digest))
                    .map(|l| ("layer", l.digest)),
            );
        for (kind, blob) in blobs {
            if !self.content().contains(&blob) {
                return Err(Error::BlobMissing {
                    image: word.to_string(),
                    kind,
                    blob,
                    action,
                });
            }
        }
        Ok(())
    }

    /// Writes the images `words` name into an OCI layout tar at `out`;
    /// returns how many entries its index has (one per word).
    pub fn save(&self, words: &[String], out: &Path) -> Result<usize> {
        // Resolve under the lock; the blobs are read afterwards, so a lease
        // keeps gc from removing them meanwhile.
        let (entries, dropped, _lease) = self.read_session(|meta| {
            let mut entries = Vec::new();
            let mut blobs = Vec::new();
            let mut layers = Vec::new();
            let dropped: BTreeSet<Digest> = meta.dropped_blobs()?.into_keys().collect();
            for w in words {
                let record = self.resolve(meta, w)?;
                let name = Reference::parse(w)
                    .ok()
                    .filter(|r| r.digest().is_none())
                    .filter(|r| meta.tag(&r.to_string()).ok().flatten().is_some());
                blobs.extend(record.blobs());
                // The folders of layers whose tar is rebuilt are read too.
                layers.extend(
                    record
                        .layers
                        .iter()
                        .filter(|l| dropped.contains(&l.digest))
                        .map(|l| l.chain_id),
                );
                entries.push(Entry { record, name });
            }
            let lease = self.lease(&crate::lock::LeaseContent {
                pid: std::process::id(),
                blobs,
                layers,
            })?;
            Ok((entries, dropped, lease))
        })?;
        for (e, w) in entries.iter().zip(words) {
            self.check_blobs_present(&e.record, w, "save", &dropped)?;
        }

        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".lstore-save-")
            .tempfile_in(dir)
            .ctx(|| format!("create a file in {}", dir.display()))?;
        // Readable like any file the user writes (temp files start 0600).
        let mode = 0o666 & !current_umask();
        fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .ctx(|| format!("chmod {}", tmp.path().display()))?;
        let file = tmp.reopen().ctx(|| "reopen output".to_string())?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let werr = |e: io::Error| Error::io(format!("write {}", out.display()), e);
        append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;

        let mut written: BTreeSet<Digest> = BTreeSet::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        for e in &entries {
            let r = &e.record;
            let (layers, manifest) = self.saved_layers(r, &dropped)?;
            let mut blobs = vec![SavedLayer::Blob(r.config)];
            let (manifest_digest, manifest_size) = match &manifest {
                Some((bytes, d)) => {
                    if written.insert(*d) {
                        append_bytes(&mut b, &format!("blobs/sha256/{}", d.hex()), bytes)
                            .map_err(werr)?;
                    }
                    (*d, bytes.len() as u64)
                }
                None => {
                    blobs.push(SavedLayer::Blob(r.manifest));
                    (r.manifest, r.manifest_size)
                }
            };
            let layer_paths: Vec<String> = layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest().hex()))
                .collect();
            blobs.extend(layers);
            for blob in blobs {
                if !written.insert(blob.digest()) {
                    continue;
                }
                let d = match blob {
                    SavedLayer::Blob(d) => d,
                    SavedLayer::Rebuilt {
                        chain,
                        diff_id,
                        size,
                    } => {
                        append_rebuilt(self, &mut b, &chain, &diff_id, size)?;
                        continue;
                    }
                };
                let path = self.content().path(&d);
                let mut f = File::open(&path).ctx(|| format!("open blob {d}"))?;
                let size = f.metadata().ctx(|| format!("stat blob {d}"))?.len();
                let mut h = header(size, 0o444);
                b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)
                    .map_err(werr)?;
            }
            let mut desc = json!({
                "mediaType": r.manifest_media_type,
                "digest": manifest_digest.to_string(),
                "size": manifest_size,
            });
            let mut tags = Vec::new();
            if let Some(n) = &e.name {
                desc["annotations"] = json!({
                    oci::ANNOTATION_CONTAINERD_NAME: n.to_string(),
                    oci::ANNOTATION_REF_NAME: n.tag().unwrap_or("latest"),
                });
                tags.push(n.familiar());
            }
            index.push(desc);
            docker.push(json!({
                "Config": format!("blobs/sha256/{}", r.config.hex()),
                "RepoTags": tags,
                "Layers": layer_paths,
            }));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_INDEX,
            "manifests": index,
        });
        let index_bytes = serde_json::to_vec(&index).map_err(|e| Error::Invalid(e.to_string()))?;
        append_bytes(&mut b, "index.json", &index_bytes).map_err(werr)?;
        let docker_bytes =
            serde_json::to_vec(&docker).map_err(|e| Error::Invalid(e.to_string()))?;
        append_bytes(&mut b, "manifest.json", &docker_bytes).map_err(werr)?;
        let mut w = b.into_inner().map_err(werr)?;
        w.flush().map_err(werr)?;
        w.get_ref().sync_all().map_err(werr)?;
        drop(w);
        tmp.persist(out)
            .map_err(|e| Error::io(format!("write {}", out.display()), e.error))?;
        let _ = fs::metadata(out);
        Ok(entries.len())
    }
}
