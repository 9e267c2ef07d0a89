//! `lstore pull`: resolve a reference at its registry (an index to this
//! host's platform), then feed the image to the import pipeline, which
//! downloads, verifies and extracts each missing layer in one pass as the
//! bytes arrive, several layers at once. A layer or blob already in the
//! store costs no request; a tag that still names the image it named costs
//! one manifest request.

use std::io::{self, Read};
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::import::{import, ImportProgress, ImportRequest, LayerSource};
use crate::oci::{self, Descriptor, Document, Platform};
use crate::platform::PlatformMatcher;
use crate::reference::Reference;
use crate::registry::{ClientOptions, RegistryClient, RegistryError};
use crate::store::Store;

/// Largest config blob accepted.
const MAX_CONFIG: u64 = 16 << 20;
/// Times one blob download is resumed after a dropped connection.
const RESUMES: u32 = 5;

/// How [`Store::pull`] chooses and fetches an image.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from a multi-platform index (and to check a
    /// single-platform image against); None: this host's platform.
    pub platform: Option<Platform>,
    /// Transport, TLS and credentials.
    pub client: ClientOptions,
    /// Layers downloaded at once (Docker's default is 3).
    pub jobs: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            client: ClientOptions::default(),
            jobs: 3,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Pulled {
    /// The reference pulled, normalised (`docker.io/library/redis:latest`).
    pub reference: String,
    /// The digest the reference resolved to (index or manifest).
    pub digest: Digest,
    /// The image id: its config's digest.
    pub id: Digest,
    /// The manifest stored (for an index, the platform's manifest).
    pub manifest: Digest,
    /// Whether the store had the image under that name already.
    pub up_to_date: bool,
    /// Layers downloaded and extracted.
    pub layers_new: usize,
    /// Layers the store already had.
    pub layers_reused: usize,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Error {
        Error::Registry(e.to_string())
    }
}

/// Layer blobs from the registry, resumed with Range requests when a
/// connection drops.
struct RegistrySource<'a> {
    client: &'a Arc<RegistryClient>,
    repo: &'a Reference,
    layers: &'a [Descriptor],
}

impl LayerSource for RegistrySource<'_> {
    fn resumable(&self) -> bool {
        true
    }

    fn open(&self, index: usize) -> Result<Box<dyn Read + Send>> {
        self.open_at(index, 0)
    }

    /// A `Range` request from `offset` (a download resumed from `ingest/`).
    fn open_at(&self, index: usize, offset: u64) -> Result<Box<dyn Read + Send>> {
        let desc = self
            .layers
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no layer #{index}")))?;
        let first = self.client.fetch_blob(self.repo, &desc.digest, offset)?;
        let mut reader = ResumingReader {
            client: self.client.clone(),
            repo: self.repo.clone(),
            digest: desc.digest,
            size: desc.size,
            offset: first.offset,
            inner: first.reader,
            resumes_left: RESUMES,
        };
        if first.offset < offset {
            // The registry ignored the range: drop what we already have.
            let skip = offset - first.offset;
            let n = io::copy(&mut (&mut reader).take(skip), &mut io::sink())
                .map_err(|e| Error::io(format!("download {}", desc.digest), e))?;
            if n != skip {
                return Err(Error::Invalid(format!("blob {} ended early", desc.digest)));
            }
        }
        Ok(Box::new(reader))
    }
}

/// Reads a blob, reconnecting from where it stopped when the connection
/// breaks or ends early. Never yields more than the descriptor's size plus
/// one byte (so an overlong body is caught by the size check, not stored).
struct ResumingReader {
    client: Arc<RegistryClient>,
    repo: Reference,
    digest: Digest,
    size: u64,
    offset: u64,
    inner: Box<dyn Read + Send>,
    resumes_left: u32,
}

impl ResumingReader {
    fn resume(&mut self, why: io::Error) -> io::Result<()> {
        if self.resumes_left == 0 {
            return Err(why);
        }
        self.resumes_left -= 1;
        let fetched = self
            .client
            .fetch_blob(&self.repo, &self.digest, self.offset)
            .map_err(|e| io::Error::other(format!("{why}; resuming failed: {e}")))?;
        let mut reader = fetched.reader;
        if fetched.offset < self.offset {
            // The registry sent the whole blob again: skip what we have.
            let skip = self.offset - fetched.offset;
            let copied = io::copy(&mut (&mut reader).take(skip), &mut io::sink())?;
            if copied != skip {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob ended early",
                ));
            }
        }
        self.inner = reader;
        Ok(())
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.size + 1).saturating_sub(self.offset);
        if room == 0 {
            return Ok(0);
        }
        let want = buf.len().min(room as usize);
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) if self.offset < self.size => {
                    // The body ended cleanly but short: the registry's data
                    // disagrees with the descriptor (unless a retry mends it).
                    let why = io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {} ended after {} of {} bytes",
                            self.digest, self.offset, self.size
                        ),
                    );
                    self.resume(why)?;
                }
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(e)?,
            }
        }
    }
}

/// A single-platform image pulled with `--platform` must be for that
/// platform (or one it runs), as containerd checks the config: otherwise
/// the user would get an image they cannot run, in silence.
fn check_platform(r: &Reference, wanted: Option<&Platform>, actual: &Platform) -> Result<()> {
    match wanted {
        Some(wanted) if !wanted.accepts(actual) => Err(Error::Invalid(format!(
            "{r}: no match for platform {wanted} in the manifest: the image is for {actual}"
        ))),
        _ => Ok(()),
    }
}

impl Store {
    /// Pulls `word` (a reference) from its registry.
    pub fn pull(
        &self,
        word: &str,
        opts: &PullOptions,
        progress: &dyn ImportProgress,
    ) -> Result<Pulled> {
        let r = Reference::parse(word)?;
        let client = Arc::new(RegistryClient::new(opts.client.clone())?);
        let top = client.get_manifest(&r)?;
        let doc = oci::parse_document(&top.bytes, Some(&top.media_type)).map_err(|source| {
            Error::Document {
                what: format!("manifest of {r}"),
                source,
            }
        })?;
        // From an index, the manifest for the platform asked for.
        let chosen = match &doc {
            Document::Index(ix) => {
                let wanted = opts.platform.clone().unwrap_or_else(crate::platform::host);
                Some(
                    PlatformMatcher::new(&wanted)
                        .select(&ix.manifests)
                        .map_err(|e| Error::Invalid(format!("{r}: {e}")))?
                        .clone(),
                )
            }
            Document::Manifest(_) => None,
        };
        let wanted_manifest = chosen.as_ref().map_or(top.digest, |d| d.digest);

        // Already here under this name, for this platform? Then one request
        // was all it took.
        let known = self.read_session(|meta| {
            if let Some(tag) = meta.tag(&r.to_string())? {
                if tag.repo_digest == Some(top.digest) {
                    if let Some(img) = meta.image(&tag.image)? {
                        if img.manifest == wanted_manifest {
                            return Ok(Some(img));
                        }
                    }
                }
            }
            Ok(None)
        })?;
        if let Some(img) = known {
            if chosen.is_none() {
                let stored = Platform {
                    os: img.os.clone(),
                    architecture: img.architecture.clone(),
                    variant: img.variant.clone(),
                    ..Platform::default()
                };
                check_platform(&r, opts.platform.as_ref(), &stored)?;
            }
            return Ok(Pulled {
                reference: r.familiar(),
                digest: top.digest,
                id: img.config,
                manifest: img.manifest,
                up_to_date: true,
                layers_new: 0,
                layers_reused: img.layers.len(),
                bytes_fetched: 0,
            });
        }

        let (index, manifest, manifest_bytes, manifest_digest, manifest_type) = match doc {
            Document::Manifest(m) => (
                None,
                m,
                top.bytes.clone(),
                top.digest,
                top.media_type.clone(),
            ),
            Document::Index(_) => {
                let chosen = chosen.ok_or_else(|| {
                    Error::Invalid(format!("{r}: no platform chosen from the index"))
                })?;
                let m = client.get_manifest(&r.with_digest(chosen.digest))?;
                match oci::parse_document(&m.bytes, Some(&m.media_type)) {
                    Ok(Document::Manifest(manifest)) => (
                        Some((top.bytes.clone(), top.digest)),
                        manifest,
                        m.bytes,
                        m.digest,
                        m.media_type,
                    ),
                    Ok(Document::Index(_)) => {
                        return Err(Error::Unsupported(format!(
                            "{r}: nested indexes are not supported"
                        )))
                    }
                    Err(source) => {
                        return Err(Error::Document {
                            what: format!("manifest {} of {r}", chosen.digest),
                            source,
                        })
                    }
                }
            }
        };
        let manifest_type = manifest.media_type.clone().unwrap_or(manifest_type);
        let config = self.fetch_config(&client, &r, &manifest.config)?;
        if index.is_none() {
            // No index chose the platform: the config says what it is.
            let parsed: oci::ImageConfig = serde_json::from_slice(&config).map_err(|e| {
                Error::Invalid(format!("image config {}: {e}", manifest.config.digest))
            })?;
            check_platform(&r, opts.platform.as_ref(), &parsed.platform())?;
        }

        // A digest-pinned reference is recorded as `repo@digest`, untagged.
        let names = vec![r.clone()];
        let source = RegistrySource {
            client: &client,
            repo: &r,
            layers: &manifest.layers,
        };
        let request = ImportRequest {
            names,
            repo_digest: Some(top.digest),
            index,
            manifest: Some((manifest_bytes, manifest_digest, manifest_type)),
            config: (config, manifest.config.digest),
            layers: manifest.layers.iter().cloned().map(Some).collect(),
            source: &source,
            progress,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.max(1))
            .build()
            .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
        let stored = pool.install(|| import(self, request))?;
        Ok(Pulled {
            reference: r.familiar(),
            digest: top.digest,
            id: stored.id,
            manifest: stored.digest,
            up_to_date: false,
            layers_new: stored.layers_new,
            layers_reused: stored.layers_reused,
            bytes_fetched: stored.bytes_read,
        })
    }

    /// The config blob: from the store when present, else the registry.
    fn fetch_config(
        &self,
        client: &RegistryClient,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Vec<u8>> {
        if desc.size > MAX_CONFIG {
            return Err(Error::Invalid(format!(
                "{r}: config {} is larger than {MAX_CONFIG} bytes",
                desc.digest
            )));
        }
        if self.content().contains(&desc.digest) {
            if let Ok(bytes) = self.content().read(&desc.digest, MAX_CONFIG) {
                if Digest::of(&bytes) == desc.digest {
                    return Ok(bytes);
                }
            }
        }
        let fetched = client.fetch_blob(r, &desc.digest, 0)?;
        let mut bytes = Vec::new();
        fetched
            .reader
            .take(desc.size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("download config {}", desc.digest), e))?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: format!("config of {r}"),
                expected: desc.digest,
                actual,
            });
        }
        if bytes.len() as u64 != desc.size {
            return Err(Error::SizeMismatch {
                what: format!("config of {r}"),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}
