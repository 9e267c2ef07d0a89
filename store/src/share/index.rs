//! The content index, in two column families:
//!
//! - `shared_files`: `content (32) ‖ meta (16) ‖ names (16) ‖ chain id
//!   (32)` → the path (in that layer's `diff/`) of one of the names. A
//!   prefix seek on the first 64 bytes finds every layer holding an inode
//!   a new file may become a link to; one on the first 32 bytes, every
//!   layer holding the same content (for reflinks).
//! - `layer_files`: `chain id ‖ content ‖ meta ‖ names` → `()`: a layer's
//!   own entries, so that removing the layer drops them in the same batch.
//!
//! Entries are only ever put and deleted whole (no read-modify-write), so
//! several layers of one batch may record the same file.

use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{Batch, Meta, PrefixReader, CF_LAYER_FILES, CF_SHARED_FILES};

/// Bytes of a key's identity part: content, meta and names hashes.
pub(crate) const IDENTITY_LEN: usize = 64;

/// What a layer file is known by in the index: its identity and its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IndexKey {
    pub content: [u8; 32],
    pub meta: [u8; 16],
    /// blake3 (16 bytes) of the sorted names the inode has in its layer.
    pub names: [u8; 16],
}

impl IndexKey {
    pub(crate) fn bytes(&self) -> [u8; IDENTITY_LEN] {
        let mut out = [0u8; IDENTITY_LEN];
        out[..32].copy_from_slice(&self.content);
        out[32..48].copy_from_slice(&self.meta);
        out[48..].copy_from_slice(&self.names);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<IndexKey> {
        if b.len() != IDENTITY_LEN {
            return None;
        }
        Some(IndexKey {
            content: b[..32].try_into().ok()?,
            meta: b[32..48].try_into().ok()?,
            names: b[48..].try_into().ok()?,
        })
    }
}

/// The names hash of an inode's names in one layer (sorted here).
pub(crate) fn names_hash(names: &[Vec<u8>]) -> [u8; 16] {
    let mut sorted: Vec<&Vec<u8>> = names.iter().collect();
    sorted.sort();
    let mut h = blake3::Hasher::new();
    for n in sorted {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// A layer's own entries: each identity with a path of it in the layer.
pub(crate) type LayerEntries = Vec<(IndexKey, Vec<u8>)>;

/// One entry: a layer holds `key` at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: IndexKey,
    pub chain: Digest,
    pub path: Vec<u8>,
}

fn shared_key(key: &IndexKey, chain: &Digest) -> Vec<u8> {
    let mut k = key.bytes().to_vec();
    k.extend_from_slice(chain.as_bytes());
    k
}

fn layer_key(chain: &Digest, key: &IndexKey) -> Vec<u8> {
    let mut k = chain.as_bytes().to_vec();
    k.extend_from_slice(&key.bytes());
    k
}

fn entry_of(k: &[u8], path: Vec<u8>) -> Option<Entry> {
    let key = IndexKey::from_bytes(k.get(..IDENTITY_LEN)?)?;
    let chain = Digest::from_bytes(k.get(IDENTITY_LEN..)?.try_into().ok()?);
    Some(Entry { key, chain, path })
}

/// Lookups in the index, many in a row.
pub(crate) struct Lookup<'a>(PrefixReader<'a>);

impl<'a> Lookup<'a> {
    pub(crate) fn new(meta: &'a Meta) -> Result<Lookup<'a>> {
        Ok(Lookup(meta.prefix_reader(CF_SHARED_FILES)?))
    }

    /// Layers holding an inode of identity `key` (exact: content,
    /// metadata and names).
    pub(crate) fn holders(&mut self, key: &IndexKey) -> Result<Vec<Entry>> {
        holders_with(&mut self.0, key)
    }

    /// Layers holding a file of this content, whatever its metadata.
    pub(crate) fn same_content(&mut self, content: &[u8; 32]) -> Result<Vec<Entry>> {
        entries_with(&mut self.0, content)
    }
}

fn entries_with(reader: &mut PrefixReader<'_>, prefix: &[u8]) -> Result<Vec<Entry>> {
    Ok(reader
        .with_prefix::<Vec<u8>>(prefix)?
        .into_iter()
        .filter_map(|(k, path)| entry_of(&k, path))
        .collect())
}

/// [`Lookup::holders`] through a reader of `shared_files` made elsewhere.
pub(crate) fn holders_with(reader: &mut PrefixReader<'_>, key: &IndexKey) -> Result<Vec<Entry>> {
    entries_with(reader, &key.bytes())
}

/// Every entry of the index.
pub(crate) fn all(meta: &Meta) -> Result<Vec<Entry>> {
    Ok(meta
        .all::<Vec<u8>>(CF_SHARED_FILES)?
        .into_iter()
        .filter_map(|(k, path)| entry_of(&k, path))
        .collect())
}

/// The identities layer `chain` has entries for.
pub(crate) fn layer_keys(meta: &Meta, chain: &Digest) -> Result<Vec<IndexKey>> {
    Ok(meta
        .with_prefix::<()>(CF_LAYER_FILES, chain.as_bytes())?
        .into_iter()
        .filter_map(|(k, ())| IndexKey::from_bytes(k.get(32..)?))
        .collect())
}

/// Whether layer `chain` has any entry (layers extracted before the index
/// existed have none).
pub(crate) fn is_indexed(meta: &Meta, chain: &Digest) -> Result<bool> {
    Ok(!layer_keys(meta, chain)?.is_empty())
}

/// Records layer `chain`'s entries.
pub(crate) fn put(
    batch: &mut Batch<'_>,
    chain: &Digest,
    entries: &[(IndexKey, Vec<u8>)],
) -> Result<()> {
    for (key, path) in entries {
        batch.put(CF_SHARED_FILES, &shared_key(key, chain), path)?;
        batch.put(CF_LAYER_FILES, &layer_key(chain, key), &())?;
    }
    Ok(())
}

/// Drops every entry of layer `chain` (its folder is going, or is being
/// extracted again).
pub(crate) fn drop_layer(meta: &Meta, batch: &mut Batch<'_>, chain: &Digest) -> Result<()> {
    for key in layer_keys(meta, chain)? {
        batch.delete(CF_SHARED_FILES, &shared_key(&key, chain))?;
        batch.delete(CF_LAYER_FILES, &layer_key(chain, &key))?;
    }
    Ok(())
}

/// Re-indexes one entry whose file's metadata changed: the entry is put
/// again under the file's metadata hash `meta` now.
pub(crate) fn reindex(batch: &mut Batch<'_>, entry: &Entry, meta: [u8; 16]) -> Result<()> {
    batch.delete(CF_SHARED_FILES, &shared_key(&entry.key, &entry.chain))?;
    batch.delete(CF_LAYER_FILES, &layer_key(&entry.chain, &entry.key))?;
    let key = IndexKey { meta, ..entry.key };
    put(batch, &entry.chain, &[(key, entry.path.clone())])
}
