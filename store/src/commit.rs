//! `lstore commit`: the changes of a read-write mount become a new layer
//! on top of the mounted image, and the result a new image.
//!
//! 1. The mount's upper dir is walked once and written as a deterministic
//!    tar (see `diff`), hashed on the way (diff_id), compressed and written
//!    into the blob store (which hashes the compressed bytes): one pass,
//!    bounded memory.
//! 2. The new config is the base image's config blob with every field
//!    kept, the new diff_id appended, a history entry and a new `created`;
//!    the new manifest keeps the base layer descriptors and appends the
//!    new layer's.
//! 3. The image is stored through the import pipeline like any other, so
//!    the new layer is verified against its digests and extracted into
//!    `overlay2/`; the base layers are already there and are reused.
//!
//! A lease taken before the blob is written keeps gc away from it (and
//! from the ingest file) until the image records hold it.

use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::import::{import, ImportRequest, LayerSource, NoProgress};
use crate::lock::LeaseContent;
use crate::oci::{self, Compression, Descriptor};
use crate::reference::Reference;
use crate::store::Store;
use crate::userns::OverlayXattrs;

mod diff;
mod tar_writer;

use tar_writer::TarWriter;

/// Largest base config read (as pull accepts).
const MAX_CONFIG: u64 = 16 << 20;
/// What a history entry of a committed layer says made it.
pub const CREATED_BY: &str = "lstore commit";

/// What a commit stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Committed {
    /// The new image's name.
    pub reference: String,
    /// The new image's id (config digest).
    pub id: Digest,
    /// The new manifest's digest.
    pub digest: Digest,
    /// The new layer: its blob digest, media type and size.
    pub layer: Digest,
    /// The new layer blob's media type.
    pub media_type: String,
    /// Bytes of the new layer blob.
    pub compressed_size: u64,
    /// The new layer's uncompressed digest.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Tar entries in the layer (whiteouts and opaque markers included).
    pub entries: u64,
    /// The image the mount shows (manifest digest).
    pub base: Digest,
}

/// The new layer as written.
struct NewLayer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    tar_size: u64,
}

impl Store {
    /// Commits the changes made through the read-write mount at `target`
    /// as a new image named `reference`, its new layer compressed with
    /// `compression`.
    pub fn commit(
        &self,
        target: &Path,
        reference: &str,
        compression: Compression,
    ) -> Result<Committed> {
        let name = Reference::parse(reference)?;
        if name.digest().is_some() {
            return Err(Error::Invalid(format!(
                "{reference}: the name of a new image cannot contain a digest"
            )));
        }
        let mount = self.mount_at(target)?.ok_or_else(|| {
            Error::Invalid(format!("{} is not an lstore mount", target.display()))
        })?;
        let container = match (&mount.container, mount.rw) {
            (Some(c), true) => c.clone(),
            _ => {
                return Err(Error::Invalid(format!(
                    "{} is mounted read-only; commit needs a mount made with --rw",
                    target.display()
                )))
            }
        };
        let upper = self.root().join("containers").join(container).join("upper");

        let (base, lease) = self.read_session(|meta| {
            let base = meta.image(&mount.image)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "the image mounted at {} ({}) is no longer in the store",
                    target.display(),
                    mount.image
                ))
            })?;
            let held = LeaseContent {
                pid: std::process::id(),
                blobs: base.blobs(),
                layers: base.chain_ids(),
            };
            let lease = self.lease(&held)?;
            Ok((base, lease))
        })?;
        let base_config = self.content().read(&base.config, MAX_CONFIG)?;
        let base_manifest = self
            .content()
            .read(&base.manifest, crate::registry::MAX_MANIFEST_SIZE)?;

        let writer = self.content().writer(&self.unique(&lease, "commit"))?;
        let (writer, diff_id, tar_size, entries) = write_layer(
            writer,
            &upper,
            Path::new(&mount.target),
            compression,
            self.overlay_xattrs(),
        )?;
        // Renamed into the store and named in the lease in one session, so
        // a gc never sees the blob unprotected.
        let (digest, size) = self.locked(|| {
            let (digest, size) = writer.commit(None, None)?;
            lease.add_blob(digest)?;
            Ok((digest, size))
        })?;
        let layer = NewLayer {
            digest,
            size,
            diff_id,
            tar_size,
        };

        let image = new_image(
            &base_manifest,
            &base.manifest_media_type,
            &base_config,
            &layer,
            compression,
            &rfc3339_now(),
        )?;
        let manifest: oci::Manifest = serde_json::from_slice(&image.manifest)
            .map_err(|e| Error::Invalid(format!("new manifest: {e}")))?;
        let source = StoredBlobs {
            store: self,
            digests: manifest.layers.iter().map(|l| l.digest).collect(),
        };
        let media_type = manifest
            .layers
            .last()
            .map(|l| l.media_type.clone())
            .unwrap_or_default();
        let config_digest = Digest::of(&image.config);
        let manifest_digest = Digest::of(&image.manifest);
        let stored = import(
            self,
            ImportRequest {
                names: vec![name.clone()],
                repo_digest: None,
                index: None,
                manifest: Some((image.manifest, manifest_digest, image.media_type)),
                config: (image.config, config_digest),
                layers: manifest.layers.into_iter().map(Some).collect(),
                source: &source,
                progress: &NoProgress,
            },
        )?;
        drop(lease);
        // `keep-layer-blobs false`: the new layer's blob, which this
        // command's lease kept from the drop at the end of the import,
        // goes now (a failure leaves it to the next gc).
        if matches!(self.keeps_layer_blobs(), Ok(false)) {
            let _ = crate::layer_blobs::drop_layer_blobs(self, Some(&[stored.digest]), None);
        }
        Ok(Committed {
            reference: name.familiar(),
            id: stored.id,
            digest: stored.digest,
            layer: layer.digest,
            media_type,
            compressed_size: layer.size,
            diff_id: layer.diff_id,
            size: layer.tar_size,
            entries,
            base: base.manifest,
        })
    }
}

/// Layer blobs read back from the blob store.
pub(crate) struct StoredBlobs<'a> {
    pub(crate) store: &'a Store,
    pub(crate) digests: Vec<Digest>,
}

impl LayerSource for StoredBlobs<'_> {
    fn open(&self, index: usize) -> Result<Box<dyn Read + Send>> {
        let digest = self
            .digests
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no layer #{index}")))?;
        Ok(Box::new(self.store.content().open(digest)?))
    }
}

/// A compressing writer that hands its sink back when finished.
enum Compressor<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(sink: W, compression: Compression) -> io::Result<Compressor<W>> {
        Ok(match compression {
            Compression::None => Compressor::Plain(sink),
            // Level 6, no name, mtime 0: the same tar gives the same blob.
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(sink, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

/// Writes the changes in `upper` as a compressed layer into `sink`.
/// Returns the sink, the diff_id, the tar's size and its entry count.
fn write_layer<W: Write>(
    sink: W,
    upper: &Path,
    merged: &Path,
    compression: Compression,
    flavour: OverlayXattrs,
) -> Result<(W, Digest, u64, u64)> {
    let werr = |e: io::Error| Error::io("write the new layer", e);
    let compressor = Compressor::new(sink, compression).map_err(werr)?;
    let mut tar = TarWriter::new(HashingWriter::new(compressor));
    let entries = diff::write_changes(upper, merged, flavour, &mut tar)?;
    let (compressor, diff_id, tar_size) = tar.finish().map_err(werr)?.finish();
    let sink = compressor.finish().map_err(werr)?;
    Ok((sink, diff_id, tar_size, entries))
}

/// The new image's documents.
struct NewImage {
    config: Vec<u8>,
    manifest: Vec<u8>,
    media_type: String,
}

/// OCI's name for a Docker layer media type (same bytes).
fn oci_layer_type(docker: &str) -> &str {
    match docker {
        oci::DOCKER_LAYER_GZIP => oci::OCI_LAYER_GZIP,
        oci::DOCKER_LAYER_TAR => oci::OCI_LAYER_TAR,
        oci::DOCKER_FOREIGN_LAYER_GZIP => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

/// Makes the config and manifest of the base image plus `layer`.
///
/// The manifest keeps the base's format: Docker schema2 stays schema2
/// (with a Docker layer type), except that schema2 has no zstd layer type,
/// so a zstd commit on a schema2 base makes an OCI manifest whose base
/// layer descriptors change only their media type to OCI's name for the
/// same bytes (as containers/image converts them).
fn new_image(
    base_manifest: &[u8],
    base_manifest_type: &str,
    base_config: &[u8],
    layer: &NewLayer,
    compression: Compression,
    created: &str,
) -> Result<NewImage> {
    let invalid = |what: &str| Error::Invalid(format!("base image: {what}"));
    let manifest: Value = serde_json::from_slice(base_manifest)
        .map_err(|e| Error::Invalid(format!("base manifest: {e}")))?;
    let docker = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(base_manifest_type)
        == oci::DOCKER_MANIFEST;
    let to_oci = docker && compression == Compression::Zstd;
    let (media_type, layer_type) = match (docker && !to_oci, compression) {
        (true, Compression::None) => (oci::DOCKER_MANIFEST, oci::DOCKER_LAYER_TAR),
        (true, _) => (oci::DOCKER_MANIFEST, oci::DOCKER_LAYER_GZIP),
        (false, c) => (oci::OCI_MANIFEST, c.oci_layer_media_type()),
    };

    let mut layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| invalid("manifest without layers"))?;
    if to_oci {
        for l in &mut layers {
            if let Some(mt) = l.get("mediaType").and_then(Value::as_str) {
                let mapped = oci_layer_type(mt).to_string();
                l["mediaType"] = Value::String(mapped);
            }
        }
    }
    layers.push(
        serde_json::to_value(Descriptor::new(layer_type, layer.digest, layer.size))
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );

    let mut config: Value = serde_json::from_slice(base_config)
        .map_err(|e| Error::Invalid(format!("base config: {e}")))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| invalid("config is not a JSON object"))?;
    let diff_ids = obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| invalid("config without rootfs.diff_ids"))?;
    diff_ids.push(Value::String(layer.diff_id.to_string()));
    if diff_ids.len() != layers.len() {
        return Err(invalid(
            "config and manifest disagree on the number of layers",
        ));
    }
    let history = obj
        .entry("history")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !history.is_array() {
        *history = Value::Array(Vec::new());
    }
    if let Some(h) = history.as_array_mut() {
        h.push(json!({"created": created, "created_by": CREATED_BY}));
    }
    obj.insert("created".into(), Value::String(created.into()));
    let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::Invalid(e.to_string()))?;

    let config_type = if to_oci {
        oci::OCI_CONFIG.to_string()
    } else {
        manifest
            .get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .unwrap_or(if docker {
                oci::DOCKER_CONFIG
            } else {
                oci::OCI_CONFIG
            })
            .to_string()
    };
    let new_manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": Descriptor::new(&config_type, Digest::of(&config_bytes), config_bytes.len() as u64),
        "layers": layers,
    });
    let manifest_bytes =
        serde_json::to_vec(&new_manifest).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(NewImage {
        config: config_bytes,
        manifest: manifest_bytes,
        media_type: media_type.to_string(),
    })
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch (UTC).
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
