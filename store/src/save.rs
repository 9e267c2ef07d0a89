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
    /// Fails with [`Error::BlobMissing`] when a blob of `image` (named
    /// `word` by the user) is not in the store: `action` (push or save)
    /// copies them all.
    pub(crate) fn check_blobs_present(
        &self,
        image: &crate::meta::ImageRecord,
        word: &str,
        action: &'static str,
    ) -> Result<()> {
        let blobs = [("manifest", image.manifest), ("config", image.config)]
            .into_iter()
            .chain(image.layers.iter().map(|l| ("layer", l.digest)));
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
        let (entries, _lease) = self.read_session(|meta| {
            let mut entries = Vec::new();
            let mut blobs = Vec::new();
            for w in words {
                let record = self.resolve(meta, w)?;
                let name = Reference::parse(w)
                    .ok()
                    .filter(|r| r.digest().is_none())
                    .filter(|r| meta.tag(&r.to_string()).ok().flatten().is_some());
                blobs.extend(record.blobs());
                entries.push(Entry { record, name });
            }
            let lease = self.lease(&crate::lock::LeaseContent {
                pid: std::process::id(),
                blobs,
                layers: Vec::new(),
            })?;
            Ok((entries, lease))
        })?;
        for (e, w) in entries.iter().zip(words) {
            self.check_blobs_present(&e.record, w, "save")?;
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
            let mut blobs = vec![r.manifest, r.config];
            blobs.extend(r.layers.iter().map(|l| l.digest));
            for d in blobs {
                if !written.insert(d) {
                    continue;
                }
                let path = self.content().path(&d);
                let mut f = File::open(&path).ctx(|| format!("open blob {d}"))?;
                let size = f.metadata().ctx(|| format!("stat blob {d}"))?.len();
                let mut h = header(size, 0o444);
                b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f)
                    .map_err(werr)?;
            }
            let mut desc = json!({
                "mediaType": r.manifest_media_type,
                "digest": r.manifest.to_string(),
                "size": r.manifest_size,
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
                "Layers": r.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
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
