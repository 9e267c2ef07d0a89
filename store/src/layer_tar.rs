//! A layer's tar without its blob: rebuilt from the layer's tar-split
//! record and its `diff/` folder (see `tarsplit::assemble`), and checked
//! against the layer's diff id on the way, so that nothing that differs
//! from the tar the layer was made from is ever handed on as that layer.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::store::Store;

/// Writes layer `chain`'s tar to `out`; fails when it does not hash to
/// `diff_id` (the output is then wrong: the caller throws it away).
/// Returns the tar's size.
pub(crate) fn write_layer_tar(
    store: &Store,
    chain: &Digest,
    diff_id: &Digest,
    out: impl Write,
) -> Result<u64> {
    let layers = store.layer_store();
    let record = layers.tar_split_path(chain);
    if !record.is_file() {
        return Err(Error::Invalid(format!(
            "layer {chain} has no tar-split record, and its blob was dropped: its tar cannot \
             be rebuilt"
        )));
    }
    let mut hashing = HashingWriter::new(out);
    crate::tarsplit::assemble(&record, &layers.diff_dir(chain), &mut hashing)?;
    let (mut out, actual, size) = hashing.finish();
    out.flush()
        .map_err(|e| Error::io(format!("write the tar of layer {chain}"), e))?;
    if actual != *diff_id {
        return Err(Error::DigestMismatch {
            what: format!("layer {chain} rebuilt from its tar-split record and folder (diff_id)"),
            expected: *diff_id,
            actual,
        });
    }
    Ok(size)
}

/// Checks that layer `chain` rebuilds to `diff_id` (nothing written).
pub(crate) fn verify_layer_tar(store: &Store, chain: &Digest, diff_id: &Digest) -> Result<()> {
    write_layer_tar(store, chain, diff_id, io::sink()).map(|_| ())
}

/// A layer's tar compressed with gzip (as Docker pushes layers) into an
/// unnamed file under the store's `tmp/`, streamed: (file rewound to its
/// start, digest, size).
pub(crate) fn gzip_layer_tar(
    store: &Store,
    chain: &Digest,
    diff_id: &Digest,
) -> Result<(File, Digest, u64)> {
    let tmp = store.root().join("tmp");
    let file = tempfile::tempfile_in(&tmp).ctx(|| format!("create a file in {}", tmp.display()))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    write_layer_tar(store, chain, diff_id, &mut gz)?;
    let werr = |e: io::Error| Error::io(format!("compress the tar of layer {chain}"), e);
    let hashing = gz.finish().map_err(werr)?;
    let (buffered, digest, size) = hashing.finish();
    let mut file = buffered.into_inner().map_err(|e| werr(e.into_error()))?;
    io::Seek::rewind(&mut file).map_err(werr)?;
    Ok((file, digest, size))
}
