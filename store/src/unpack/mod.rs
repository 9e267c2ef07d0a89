//! Layer extraction: decompress, hash and apply a layer tar safely.
