//! What the view holds: containers/storage's image and layer entries,
//! built from lstore's records.
//!
//! The JSON shapes are containers/storage's `Image` and `Layer` structs
//! (images.go, layers.go) with the fields a read-only store needs; names
//! and omissions follow their `json` tags, so podman reads them as its own.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::meta::{ImageRecord, LayerRecord, TagRecord};
use crate::oci::Compression;

/// One entry of `overlay-images/images.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ImageEntry {
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) names: Vec<String>,
    /// The top layer's id.
    #[serde(default, rename = "layer", skip_serializing_if = "Option::is_none")]
    pub(crate) top_layer: Option<String>,
    #[serde(default, rename = "big-data-names")]
    pub(crate) big_data_names: Vec<String>,
    #[serde(default, rename = "big-data-sizes")]
    pub(crate) big_data_sizes: BTreeMap<String, u64>,
    #[serde(default, rename = "big-data-digests")]
    pub(crate) big_data_digests: BTreeMap<String, String>,
    pub(crate) created: String,
}

/// One entry of `overlay-layers/layers.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LayerEntry {
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parent: Option<String>,
    pub(crate) created: String,
    #[serde(
        default,
        rename = "compressed-diff-digest",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) compressed_digest: Option<String>,
    #[serde(
        default,
        rename = "compressed-size",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) compressed_size: Option<u64>,
    #[serde(rename = "diff-digest")]
    pub(crate) diff_digest: String,
    #[serde(rename = "diff-size")]
    pub(crate) diff_size: u64,
    /// containers/storage's `archive.Compression`: 2 gzip, 4 zstd; 0
    /// (uncompressed) is left out as Go's `omitempty` does.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) compression: u8,
    #[serde(default, rename = "uidset", skip_serializing_if = "Vec::is_empty")]
    pub(crate) uids: Vec<u32>,
    #[serde(default, rename = "gidset", skip_serializing_if = "Vec::is_empty")]
    pub(crate) gids: Vec<u32>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// An image of the view and the blobs its big-data files are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageView {
    pub(crate) entry: ImageEntry,
    /// Big-data key and the blob that holds its bytes.
    pub(crate) big_data: Vec<(String, Digest)>,
}

/// A layer of the view and the lstore layer folder it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerView {
    pub(crate) entry: LayerEntry,
    pub(crate) chain_id: Digest,
}

/// The whole view: what `images.json` and `layers.json` list, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct View {
    pub(crate) images: Vec<ImageView>,
    pub(crate) layers: Vec<LayerView>,
}

/// The id containers/storage (through containers/image) gives a layer: a
/// base layer is its diff id's hex, any other the sha256 of its parent's
/// id, `+` and its diff id's hex. With the same ids, a later `podman
/// pull` of the image finds every layer already there.
pub(crate) fn layer_id(parent: Option<&str>, diff_id: &Digest) -> String {
    match parent {
        None => diff_id.hex(),
        Some(p) => Digest::of(format!("{p}+{}", diff_id.hex()).as_bytes()).hex(),
    }
}

/// The file name containers/storage keeps a big-data item under: the key
/// itself when it is only `[0-9a-z.]`, else `=` and its base64.
pub(crate) fn big_data_file_name(key: &str) -> String {
    let plain = key
        .bytes()
        .all(|c| c == b'.' || c.is_ascii_digit() || c.is_ascii_lowercase());
    if plain && !key.is_empty() {
        key.to_string()
    } else {
        use base64::Engine as _;
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// What the view needs to know of the store besides its records.
pub(crate) trait StoreFacts {
    /// The record of a layer folder (a chain id), when there is one.
    fn layer(&self, chain_id: &Digest) -> Option<LayerRecord>;
    /// The size of a blob that is present, or None.
    fn blob_size(&self, digest: &Digest) -> Option<u64>;
    /// The uid and gid sets of a layer's tar, when known.
    fn id_sets(&self, chain_id: &Digest) -> Option<(Vec<u32>, Vec<u32>)>;
}

/// Builds the view of `images` and `tags`. Images with one config (the
/// same image under several manifests) are one containers/storage image,
/// as they are one image id; an image whose layers or blobs are missing is
/// left out (podman would fail on the whole store for it; `fsck` reports
/// the damage).
pub(crate) fn build(
    images: &[ImageRecord],
    tags: &[(String, TagRecord)],
    facts: &dyn StoreFacts,
) -> View {
    let mut by_config: BTreeMap<Digest, Vec<&ImageRecord>> = BTreeMap::new();
    for img in images {
        by_config.entry(img.config).or_default().push(img);
    }
    let mut layers: BTreeMap<String, LayerView> = BTreeMap::new();
    let mut out = View::default();
    for (config, mut group) in by_config {
        // The most recently stored manifest is the image's `manifest`.
        group.sort_by_key(|i| (std::cmp::Reverse(i.stored_at), i.manifest));
        let primary = group[0];
        let Some(image_layers) = layer_views(primary, facts) else {
            continue;
        };
        let Some(big_data) = big_data(&group, config, facts) else {
            continue;
        };
        let manifests: BTreeSet<Digest> = group.iter().map(|i| i.manifest).collect();
        let mut names: Vec<String> = tags
            .iter()
            .filter(|(_, t)| manifests.contains(&t.image))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        let top_layer = image_layers.last().map(|l| l.entry.id.clone());
        for l in image_layers {
            layers.entry(l.entry.id.clone()).or_insert(l);
        }
        let mut entry = ImageEntry {
            id: config.hex(),
            // What `docker images --digests` shows: the index a tag named.
            digest: Some(primary.index.unwrap_or(primary.manifest).to_string()),
            names,
            top_layer,
            big_data_names: Vec::new(),
            big_data_sizes: BTreeMap::new(),
            big_data_digests: BTreeMap::new(),
            created: created(primary),
        };
        for (key, blob, size) in &big_data {
            entry.big_data_names.push(key.clone());
            entry.big_data_sizes.insert(key.clone(), *size);
            entry.big_data_digests.insert(key.clone(), blob.to_string());
        }
        out.images.push(ImageView {
            entry,
            big_data: big_data.into_iter().map(|(k, d, _)| (k, d)).collect(),
        });
    }
    // Parents before children, as containers/storage writes them.
    let mut ordered: Vec<LayerView> = Vec::with_capacity(layers.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while !layers.is_empty() {
        let ready: Vec<String> = layers
            .values()
            .filter(|l| {
                l.entry
                    .parent
                    .as_ref()
                    .is_none_or(|p| placed.contains(p) || !layers.contains_key(p))
            })
            .map(|l| l.entry.id.clone())
            .collect();
        for id in ready {
            if let Some(l) = layers.remove(&id) {
                placed.insert(id);
                ordered.push(l);
            }
        }
    }
    out.layers = ordered;
    out
}

/// The layers of an image, bottom first, or None when one is missing.
fn layer_views(img: &ImageRecord, facts: &dyn StoreFacts) -> Option<Vec<LayerView>> {
    let created = created_at(img.stored_at);
    let mut parent: Option<String> = None;
    let mut out = Vec::with_capacity(img.layers.len());
    for l in &img.layers {
        let record = facts.layer(&l.chain_id)?;
        let id = layer_id(parent.as_deref(), &l.diff_id);
        let compression = match Compression::from_layer_media_type(&l.media_type) {
            Some(Compression::Gzip) => 2,
            Some(Compression::Zstd) => 4,
            _ => 0,
        };
        let (uids, gids) = facts.id_sets(&l.chain_id).unwrap_or_default();
        out.push(LayerView {
            entry: LayerEntry {
                id: id.clone(),
                parent: parent.clone(),
                created: created.clone(),
                compressed_digest: Some(l.digest.to_string()),
                compressed_size: Some(l.compressed_size),
                diff_digest: l.diff_id.to_string(),
                diff_size: record.size,
                compression,
                uids,
                gids,
            },
            chain_id: l.chain_id,
        });
        parent = Some(id);
    }
    Some(out)
}

/// Big-data items as containers/image stores them: `manifest` (the image's
/// manifest), `manifest-<digest>` for each manifest and index the image was
/// stored from, and the config under its digest. None when a blob is gone.
fn big_data(
    group: &[&ImageRecord],
    config: Digest,
    facts: &dyn StoreFacts,
) -> Option<Vec<(String, Digest, u64)>> {
    let primary = group[0];
    let mut items = vec![(
        "manifest".to_string(),
        primary.manifest,
        facts.blob_size(&primary.manifest)?,
    )];
    let mut seen = BTreeSet::new();
    for img in group {
        for d in std::iter::once(img.manifest).chain(img.index) {
            if seen.insert(d) {
                items.push((format!("manifest-{d}"), d, facts.blob_size(&d)?));
            }
        }
    }
    items.push((config.to_string(), config, facts.blob_size(&config)?));
    Some(items)
}

/// The image's creation time from its config, when Go's RFC 3339 parser
/// takes it, else when lstore stored it.
fn created(img: &ImageRecord) -> String {
    match &img.created {
        Some(c) if is_rfc3339(c) => c.clone(),
        _ => created_at(img.stored_at),
    }
}

fn created_at(secs: u64) -> String {
    crate::commit::rfc3339(i64::try_from(secs).unwrap_or(0))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`: a value containers/storage can
/// decode as a Go `time.Time` (one it cannot would fail the whole file).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    let two = |d: &[u8]| d.len() == 2 && d.iter().all(u8::is_ascii_digit);
    match rest {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => two(&[*h1, *h2]) && two(&[*m1, *m2]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ids_are_the_ones_podman_computes() {
        let d1 = Digest::of(b"one");
        let d2 = Digest::of(b"two");
        let base = layer_id(None, &d1);
        assert_eq!(base, d1.hex());
        let above = layer_id(Some(&base), &d2);
        assert_eq!(
            above,
            Digest::of(format!("{}+{}", d1.hex(), d2.hex()).as_bytes()).hex()
        );
    }

    #[test]
    fn big_data_names_follow_containers_storage() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        // "manifest-sha256:…" and "sha256:…" hold '-' and ':'.
        assert_eq!(
            big_data_file_name("sha256:ab"),
            format!("={}", {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode("sha256:ab")
            })
        );
        assert!(big_data_file_name("manifest-sha256:00").starts_with('='));
        assert!(big_data_file_name("Manifest").starts_with('='));
        assert_eq!(big_data_file_name(""), "=");
    }

    #[test]
    fn created_times_go_cannot_parse_are_replaced() {
        assert!(is_rfc3339("2024-01-02T03:04:05Z"));
        assert!(is_rfc3339("2024-01-02T03:04:05.123456789Z"));
        assert!(is_rfc3339("2024-01-02T03:04:05+02:00"));
        assert!(!is_rfc3339("2024-01-02 03:04:05Z"));
        assert!(!is_rfc3339("2024-01-02T03:04:05"));
        assert!(!is_rfc3339("2024-01-02T03:04:05.Z"));
        assert!(!is_rfc3339("yesterday"));
        assert!(!is_rfc3339("2024-01-02T03:04:05+0200"));
    }
}
