//! Image archives: OCI image layouts (directory or tar) and docker-archive
//! tars (`docker save`). Reading only; what to import is described as
//! `ArchiveImage`s whose blobs are opened on demand (tar members by offset,
//! so layers of one archive can be read in parallel).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Document};
use crate::reference::Reference;

/// Largest JSON document read from an archive (manifests, configs, indexes).
pub const MAX_DOCUMENT: u64 = 16 << 20;

/// The files of an archive, by their relative path.
pub enum ArchiveFiles {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

fn normalise(name: &str) -> String {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl ArchiveFiles {
    pub fn open(path: &Path) -> Result<ArchiveFiles> {
        let meta = std::fs::metadata(path).ctx(|| format!("open {}", path.display()))?;
        if meta.is_dir() {
            return Ok(ArchiveFiles::Dir(path.to_path_buf()));
        }
        let bad = |reason: String| Error::Archive {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).ctx(|| format!("open {}", path.display()))?;
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
            let name = match entry.path() {
                Ok(p) => normalise(&p.to_string_lossy()),
                Err(_) => continue,
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().into_owned();
                    let resolved = if kind.is_symlink() {
                        let base = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        normalise(&format!("{base}/{target}"))
                    } else {
                        normalise(&target)
                    };
                    links.push((name, resolved));
                }
            }
        }
        // Older `docker save` links duplicate layers to one another.
        for (name, target) in links {
            if let Some(m) = members.get(&target).copied() {
                members.insert(name, m);
            }
        }
        Ok(ArchiveFiles::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            ArchiveFiles::Dir(p) => p,
            ArchiveFiles::Tar { path, .. } => path,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        let name = normalise(name);
        match self {
            ArchiveFiles::Dir(d) => safe_join(d, &name).map(|p| p.is_file()).unwrap_or(false),
            ArchiveFiles::Tar { members, .. } => members.contains_key(&name),
        }
    }

    /// The size of a member, if present.
    pub fn size(&self, name: &str) -> Option<u64> {
        let name = normalise(name);
        match self {
            ArchiveFiles::Dir(d) => std::fs::metadata(safe_join(d, &name)?)
                .ok()
                .map(|m| m.len()),
            ArchiveFiles::Tar { members, .. } => members.get(&name).map(|m| m.1),
        }
    }

    /// Opens a member for reading; each call has its own file handle.
    pub fn reader(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let name = normalise(name);
        let missing = || Error::Archive {
            path: self.path().to_path_buf(),
            reason: format!("{name} is missing"),
        };
        match self {
            ArchiveFiles::Dir(d) => {
                let p = safe_join(d, &name).ok_or_else(missing)?;
                // Non-blocking, so that a FIFO planted in a layout cannot
                // hang the open; only regular files are read.
                let f = match std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(Error::io(format!("open {}", p.display()), e)),
                };
                if !f.metadata().is_ok_and(|m| m.is_file()) {
                    return Err(Error::Archive {
                        path: self.path().to_path_buf(),
                        reason: format!("{name} is not a regular file"),
                    });
                }
                Ok(Box::new(f))
            }
            ArchiveFiles::Tar { path, members } => {
                let &(offset, size) = members.get(&name).ok_or_else(missing)?;
                let mut f = File::open(path).ctx(|| format!("open {}", path.display()))?;
                f.seek(SeekFrom::Start(offset))
                    .ctx(|| format!("read {}", path.display()))?;
                Ok(Box::new(f.take(size)))
            }
        }
    }

    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.reader(name)?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut data)
            .ctx(|| format!("read {name} from {}", self.path().display()))?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(Error::Archive {
                path: self.path().to_path_buf(),
                reason: format!("{name} is larger than {MAX_DOCUMENT} bytes"),
            });
        }
        Ok(data)
    }
}

/// Joins a normalised relative name under `dir`, refusing anything that
/// could leave it (the name was already normalised, so only absolute or
/// empty names remain to refuse).
fn safe_join(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.starts_with('/') {
        return None;
    }
    Some(dir.join(name))
}

/// Where an image's layer bytes come from inside the archive.
#[derive(Debug, Clone)]
pub struct ArchiveLayer {
    pub member: String,
    /// Known for OCI layouts; computed while importing for docker-archives.
    pub descriptor: Option<Descriptor>,
}

/// One image found in an archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub names: Vec<Reference>,
    /// The index the manifest was chosen from (multi-platform layouts).
    pub index: Option<(Vec<u8>, Digest)>,
    /// The manifest as stored; None for docker-archives (made on import).
    pub manifest: Option<(Vec<u8>, Digest, String)>,
    pub config: (Vec<u8>, Digest),
    pub layers: Vec<ArchiveLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads the images an archive holds. `choose` picks the manifest for this
/// host from a multi-platform index.
pub fn read_images(
    files: &ArchiveFiles,
    choose: &dyn Fn(&[Descriptor]) -> Result<Descriptor>,
) -> Result<Vec<ArchiveImage>> {
    let bad = |reason: String| Error::Archive {
        path: files.path().to_path_buf(),
        reason,
    };
    if files.has("index.json") {
        if !files.has("oci-layout") {
            return Err(bad("index.json without oci-layout".into()));
        }
        let bytes = files.read_small("index.json")?;
        let index: oci::Index =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("index.json: {e}")))?;
        let mut images = Vec::new();
        for desc in &index.manifests {
            images.push(read_oci_image(files, desc, choose)?);
        }
        if images.is_empty() {
            return Err(bad("index.json lists no images".into()));
        }
        return Ok(images);
    }
    if files.has("manifest.json") {
        let bytes = files.read_small("manifest.json")?;
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest.json: {e}")))?;
        let mut images = Vec::new();
        for entry in entries {
            let config = files.read_small(&entry.config)?;
            let digest = Digest::of(&config);
            let mut names = Vec::new();
            for tag in entry.repo_tags.unwrap_or_default() {
                names.push(Reference::parse(&tag)?);
            }
            images.push(ArchiveImage {
                names,
                index: None,
                manifest: None,
                config: (config, digest),
                layers: entry
                    .layers
                    .into_iter()
                    .map(|member| ArchiveLayer {
                        member,
                        descriptor: None,
                    })
                    .collect(),
            });
        }
        if images.is_empty() {
            return Err(bad("manifest.json lists no images".into()));
        }
        return Ok(images);
    }
    Err(bad(
        "neither an OCI image layout (index.json) nor a docker-archive (manifest.json)".into(),
    ))
}

fn read_verified(files: &ArchiveFiles, desc: &Descriptor) -> Result<Vec<u8>> {
    let member = blob_member(&desc.digest);
    if desc.size > MAX_DOCUMENT {
        return Err(Error::Archive {
            path: files.path().to_path_buf(),
            reason: format!("{} is larger than {MAX_DOCUMENT} bytes", desc.digest),
        });
    }
    let bytes = files.read_small(&member)?;
    // The size first: it says more than the digest a wrong length breaks.
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            what: member,
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            what: member,
            expected: desc.digest,
            actual,
        });
    }
    Ok(bytes)
}

fn read_oci_image(
    files: &ArchiveFiles,
    top: &Descriptor,
    choose: &dyn Fn(&[Descriptor]) -> Result<Descriptor>,
) -> Result<ArchiveImage> {
    let mut names = Vec::new();
    if let Some(full) = top.annotation(oci::ANNOTATION_CONTAINERD_NAME) {
        names.push(Reference::parse(full)?);
    }
    if let Some(n) = top.annotation(oci::ANNOTATION_REF_NAME) {
        // A full reference (docker, containerd), or just a tag (skopeo,
        // umoci): no name of its own, the image stays untagged unless
        // `load --tag` names it.
        if n.contains('/') || n.contains(':') || n.contains('@') {
            let r = Reference::parse(n)?;
            if !names.contains(&r) {
                names.push(r);
            }
        }
    }
    let mut desc = top.clone();
    let mut index = None;
    let mut depth = 0;
    let manifest = loop {
        let bytes = read_verified(files, &desc)?;
        let doc = oci::parse_document(&bytes, Some(&desc.media_type)).map_err(|source| {
            Error::Document {
                what: format!("{} in {}", desc.digest, files.path().display()),
                source,
            }
        })?;
        match doc {
            Document::Manifest(m) => break (bytes, desc.digest, desc.media_type.clone(), m),
            Document::Index(ix) => {
                depth += 1;
                if depth > 4 {
                    return Err(Error::Invalid("indexes nested too deeply".into()));
                }
                let chosen = choose(&ix.manifests)?;
                if index.is_none() {
                    index = Some((bytes.clone(), desc.digest));
                }
                desc = chosen;
            }
        }
    };
    let (bytes, digest, mut media_type, m) = manifest;
    if let Some(own) = &m.media_type {
        media_type = own.clone();
    }
    let config = read_verified(files, &m.config)?;
    let layers = m
        .layers
        .iter()
        .map(|l| ArchiveLayer {
            member: blob_member(&l.digest),
            descriptor: Some(l.clone()),
        })
        .collect();
    Ok(ArchiveImage {
        names,
        index,
        manifest: Some((bytes, digest, media_type)),
        config: (config, m.config.digest),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_member_names() {
        assert_eq!(normalise("./blobs//sha256/x"), "blobs/sha256/x");
        assert_eq!(normalise("/a/../../b"), "b");
    }

    #[test]
    fn reads_members_of_a_tar_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (name, data) in [("./x/one", &b"first"[..]), ("two", &b"second!"[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let files = ArchiveFiles::open(&path).unwrap();
        let mut s = String::new();
        files
            .reader("x/one")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "first");
        assert_eq!(files.read_small("two").unwrap(), b"second!");
        assert!(files.reader("three").is_err());
        assert!(read_images(&files, &|_| unreachable!()).is_err());
    }
}
