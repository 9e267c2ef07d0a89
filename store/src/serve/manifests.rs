//! Manifests: sending them (by tag or digest, index or platform manifest),
//! storing pushed ones through the import pipeline, deleting them; and the
//! listings (tags, catalog, referrers).

use crate::commit::StoredBlobs;
use crate::digest::Digest;
use crate::import::{import, ImportRequest, NoProgress};
use crate::oci::{self, Document as Doc};
use crate::platform::PlatformMatcher;
use crate::reference::Reference;
use crate::store::Store;

use super::api::{ApiError, ApiResult};
use super::catalog::{normalise_host, CatalogCache, Document, HostOrder};
use super::route::ManifestRef;

/// Largest manifest accepted or sent (what the distribution spec asks
/// registries to support at least).
pub const MANIFEST_MAX: u64 = 4 << 20;
/// Largest image config read for a pushed manifest.
const CONFIG_MAX: u64 = 16 << 20;

use crate::oci::OCI_INDEX;

/// A manifest ready to send.
pub struct Found {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Whether a client's `Accept` header takes `media_type` (no header, or
/// `*/*`, takes anything).
fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    accept.split(',').any(|part| {
        let t = part.split(';').next().unwrap_or("").trim();
        t == "*/*" || t == media_type
    })
}

/// The media type an index blob declares (an index without one is OCI's).
fn index_media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .unwrap_or_else(|| OCI_INDEX.to_string())
}

/// Finds what `name`/`reference` names, reading its bytes; None when the
/// store has nothing under that name.
pub fn find(
    store: &Store,
    catalogs: &CatalogCache,
    name: &str,
    reference: &ManifestRef,
    order: &HostOrder,
    accept: Option<&str>,
) -> ApiResult<Option<Found>> {
    let catalog = catalogs
        .get(store)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let doc = match reference {
        ManifestRef::Tag(tag) => catalog.resolve_tag(name, tag, order),
        ManifestRef::Digest(d) => catalog.by_digest(d),
    };
    let Some(doc) = doc else {
        return Ok(None);
    };
    read_document(store, doc, reference, accept).map(Some)
}

fn read_document(
    store: &Store,
    doc: Document,
    reference: &ManifestRef,
    accept: Option<&str>,
) -> ApiResult<Found> {
    let read = |d: &Digest| {
        store
            .content()
            .read(d, MANIFEST_MAX)
            .map_err(|e| ApiError::internal(format!("manifest {d}: {e}")))
    };
    let bytes = read(&doc.digest)?;
    let media_type = match doc.media_type {
        Some(t) => t,
        None => index_media_type(&bytes),
    };
    // A client that takes no index asked by tag gets the platform
    // manifest the store chose for this host (a digest is sent as it is).
    if let (Some((m, mt)), ManifestRef::Tag(_)) = (&doc.platform_manifest, reference) {
        if !accepts(accept, &media_type) && accepts(accept, mt) {
            return Ok(Found {
                digest: *m,
                media_type: mt.clone(),
                bytes: read(m)?,
            });
        }
    }
    Ok(Found {
        digest: doc.digest,
        media_type,
        bytes,
    })
}

fn blob_unknown(what: &str, d: &Digest) -> ApiError {
    ApiError::new(
        hyper::StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
        format!("{what} {d} was not uploaded"),
    )
}

/// Stores a pushed manifest under `name` (a store reference: the server's
/// address, the path, and the tag or digest): an image manifest goes
/// through the import pipeline (blobs verified, layers extracted and
/// shared, counts kept, name recorded); an index is accepted when its
/// platform manifests were pushed first, and is then what the name serves.
/// Returns the manifest's digest and the uploaded blobs it names (what
/// its image now keeps; an index names stored manifests only).
pub fn put(
    store: &Store,
    catalogs: &CatalogCache,
    name: &Reference,
    bytes: Vec<u8>,
    content_type: Option<&str>,
) -> ApiResult<(Digest, Vec<Digest>)> {
    let digest = Digest::of(&bytes);
    if let Some(d) = name.digest() {
        if *d != digest {
            return Err(ApiError::digest_invalid(format!(
                "the manifest's digest is {digest}, not {d}"
            )));
        }
    }
    let content_type = content_type.filter(|t| t.contains('/') && !t.contains("octet-stream"));
    let doc = oci::parse_document(&bytes, content_type)
        .map_err(|e| ApiError::manifest_invalid(format!("manifest: {e}")))?;
    match doc {
        Doc::Manifest(m) => {
            let media_type = m
                .media_type
                .clone()
                .or(content_type.map(str::to_string))
                .unwrap_or_else(|| oci::OCI_MANIFEST.to_string());
            store_image(store, name, (bytes, digest, media_type), &m, None)?;
            let mut named: Vec<Digest> = m.layers.iter().map(|l| l.digest).collect();
            named.push(m.config.digest);
            return Ok((digest, named));
        }
        Doc::Index(ix) => {
            let catalog = catalogs
                .get(store)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            for child in &ix.manifests {
                let Some(stored) = catalog.by_digest(&child.digest) else {
                    return Err(blob_unknown("platform manifest", &child.digest));
                };
                // The index's descriptor must say what the store holds, so
                // clients that check a child against it are not misled.
                let len = store
                    .content()
                    .read(&child.digest, MANIFEST_MAX)
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .len() as u64;
                if len != child.size {
                    return Err(ApiError::size_invalid(format!(
                        "the index gives {} {} bytes; it has {len}",
                        child.digest, child.size
                    )));
                }
                if let Some(media_type) = stored.media_type.filter(|t| *t != child.media_type) {
                    return Err(ApiError::manifest_invalid(format!(
                        "the index gives {} the media type {}; it is {media_type}",
                        child.digest, child.media_type
                    )));
                }
            }
            let chosen = PlatformMatcher::new(&crate::platform::host())
                .select(&ix.manifests)
                .or_else(|_| ix.manifests.first().ok_or(()))
                .map_err(|_| ApiError::manifest_invalid("the index lists no manifest"))?
                .clone();
            let child_bytes = store
                .content()
                .read(&chosen.digest, MANIFEST_MAX)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let child = match oci::parse_document(&child_bytes, Some(&chosen.media_type)) {
                Ok(Doc::Manifest(m)) => m,
                Ok(Doc::Index(_)) => {
                    return Err(ApiError::manifest_invalid(
                        "indexes of indexes are not supported",
                    ))
                }
                Err(e) => return Err(ApiError::manifest_invalid(e.to_string())),
            };
            let child_type = child
                .media_type
                .clone()
                .unwrap_or_else(|| chosen.media_type.clone());
            store_image(
                store,
                name,
                (child_bytes, chosen.digest, child_type),
                &child,
                Some((bytes, digest)),
            )?;
        }
    }
    Ok((digest, Vec::new()))
}

fn store_image(
    store: &Store,
    name: &Reference,
    manifest: (Vec<u8>, Digest, String),
    m: &oci::Manifest,
    index: Option<(Vec<u8>, Digest)>,
) -> ApiResult<()> {
    for l in &m.layers {
        if !store.content().contains(&l.digest) {
            return Err(blob_unknown("layer", &l.digest));
        }
    }
    if !store.content().contains(&m.config.digest) {
        return Err(blob_unknown("config", &m.config.digest));
    }
    if m.config.size > CONFIG_MAX {
        return Err(ApiError::manifest_invalid(format!(
            "config {} is larger than {CONFIG_MAX} bytes",
            m.config.digest
        )));
    }
    let config = store
        .content()
        .read(&m.config.digest, CONFIG_MAX)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if config.len() as u64 != m.config.size {
        return Err(ApiError::size_invalid(format!(
            "config {} has {} bytes, the manifest says {}",
            m.config.digest,
            config.len(),
            m.config.size
        )));
    }
    let repo_digest = index.as_ref().map_or(manifest.1, |(_, d)| *d);
    // The layers' bytes: the blobs the client uploaded.
    let source = StoredBlobs {
        store,
        digests: m.layers.iter().map(|l| l.digest).collect(),
    };
    import(
        store,
        ImportRequest {
            names: vec![name.clone()],
            repo_digest: Some(repo_digest),
            index,
            manifest: Some(manifest),
            config: (config, m.config.digest),
            layers: m.layers.iter().cloned().map(Some).collect(),
            source: &source,
            progress: &NoProgress,
        },
    )
    .map(|_| ())
    .map_err(|e| ApiError::from_store(&e))
}

/// Removes what a manifest DELETE names: by digest, every name of that
/// manifest in the repository; by tag, the tag that `path:tag` serves.
/// Only names under `deletable` hosts (the server's own address, the
/// `--namespace` hosts) are the API's to remove: clients pushed them, or
/// the operator delegated them. Images another registry's name holds are
/// a mirror's copies, which distribution's pull-through cache also refuses
/// to delete (`405 UNSUPPORTED`); they go with `lstore rmi`.
pub fn delete(
    store: &Store,
    catalogs: &CatalogCache,
    path: &str,
    reference: &ManifestRef,
    order: &HostOrder,
    deletable: &[String],
) -> ApiResult<()> {
    let catalog = catalogs
        .get(store)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let names = match reference {
        ManifestRef::Digest(d) => catalog.names_of(path, d),
        ManifestRef::Tag(t) => catalog.tag_name(path, t, order).into_iter().collect(),
    };
    if names.is_empty() {
        return Err(ApiError::manifest_unknown(&format!("{path}:{reference}")));
    }
    let ours: Vec<String> = names
        .iter()
        .filter(|r| deletable.iter().any(|h| *h == normalise_host(r.domain())))
        .map(|r| r.to_string())
        .collect();
    if ours.is_empty() {
        return Err(ApiError::unsupported(format!(
            "{path}:{reference} is {}, a copy of another registry's image: \
             it is removed with lstore rmi, not through the API",
            names[0]
        )));
    }
    store
        .rmi(&ours)
        .map(|_| ())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /v2/<name>/referrers/<digest>`: an index of the stored manifests
/// whose `subject` is `digest`, optionally of one artifact type.
pub fn referrers(
    store: &Store,
    catalogs: &CatalogCache,
    digest: &Digest,
    artifact_type: Option<&str>,
) -> ApiResult<serde_json::Value> {
    let catalog = catalogs
        .get(store)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut found = Vec::new();
    for img in catalog.manifests() {
        let Ok(bytes) = store.content().read(&img.manifest, MANIFEST_MAX) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<oci::Manifest>(&bytes) else {
            continue;
        };
        if m.subject.as_ref().map(|s| s.digest) != Some(*digest) {
            continue;
        }
        let kind = m
            .artifact_type
            .clone()
            .unwrap_or_else(|| m.config.media_type.clone());
        if artifact_type.is_some_and(|t| t != kind) {
            continue;
        }
        let mut desc = serde_json::json!({
            "mediaType": img.manifest_media_type,
            "digest": img.manifest.to_string(),
            "size": bytes.len(),
            "artifactType": kind,
        });
        if let Some(a) = &m.annotations {
            desc["annotations"] = serde_json::json!(a);
        }
        found.push(desc);
    }
    found.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    Ok(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": found,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::DOCKER_MANIFEST_LIST as DOCKER_LIST;

    #[test]
    fn accept_headers_are_honoured() {
        assert!(accepts(None, OCI_INDEX));
        assert!(accepts(Some("*/*"), OCI_INDEX));
        let docker_only = "application/vnd.docker.distribution.manifest.v2+json";
        assert!(!accepts(Some(docker_only), OCI_INDEX));
        assert!(accepts(
            Some(&format!("{docker_only}, {OCI_INDEX};q=0.5")),
            OCI_INDEX
        ));
    }

    #[test]
    fn an_index_without_media_type_is_ocis() {
        assert_eq!(index_media_type(b"{\"manifests\":[]}"), OCI_INDEX);
        assert_eq!(
            index_media_type(format!("{{\"mediaType\":\"{DOCKER_LIST}\"}}").as_bytes()),
            DOCKER_LIST
        );
    }
}
