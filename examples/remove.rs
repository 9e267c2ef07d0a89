//! Removes images from a store, then shows what the store still holds.
//!
//! ```text
//! cargo run --example remove -- ROOT REFERENCE...
//! ```
//!
//! Each REFERENCE is a name (the name is removed), an image id or a manifest
//! digest (every name of that image is removed). An image no name holds any
//! more is removed, and every blob and layer folder no other image uses is
//! removed with it, as `docker rmi` does.

use std::path::Path;
use std::process::ExitCode;

use lstore::{Store, StoreOptions};

fn run(root: &Path, references: &[String]) -> lstore::Result<bool> {
    let store = Store::open(root, StoreOptions::default())?;

    // A word naming nothing does not stop the others: it is reported in
    // `not_removed`.
    let removal = store.rmi(references)?;
    for name in &removal.untagged {
        println!("untagged {name}");
    }
    for id in &removal.deleted_images {
        println!("deleted {id}");
    }
    println!(
        "freed {} bytes ({} blobs, {} layers)",
        removal.freed_bytes, removal.deleted_blobs, removal.deleted_layers
    );
    for failed in &removal.not_removed {
        eprintln!("not removed: {}: {}", failed.reference, failed.error);
    }

    let usage = store.df()?;
    println!(
        "left: {} images, {} blobs ({} bytes), {} layers ({} bytes)",
        usage.images, usage.blobs, usage.blob_bytes, usage.layers, usage.layer_bytes
    );
    Ok(removal.not_removed.is_empty())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((root, references)) = args.split_first().filter(|(_, refs)| !refs.is_empty()) else {
        eprintln!("usage: remove ROOT REFERENCE...");
        return ExitCode::from(2);
    };
    match run(Path::new(root), references) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
