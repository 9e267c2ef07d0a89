//! Platforms: parsing, containerd's normalisation, matching an index.
