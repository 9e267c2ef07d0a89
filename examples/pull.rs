//! Opens a store, pulls an image into it, and lists the store's images.
//!
//! ```text
//! cargo run --example pull -- ROOT REFERENCE
//! ```
//!
//! ROOT is the store's root folder (made if missing); REFERENCE names the
//! image as `docker pull` reads it (`alpine`, `127.0.0.1:5000/app:v1`).
//! Registries on loopback are spoken to over plain HTTP, others over HTTPS
//! with the credentials of `~/.docker/config.json`. Run as root: layer
//! files keep their owners.

use std::path::Path;
use std::process::ExitCode;

use lstore::{Descriptor, ImportProgress, PullOptions, Store, StoreOptions};

/// Reports each layer on stderr. Layers are stored in parallel, so this
/// is called from several threads.
struct LayerLines;

impl ImportProgress for LayerLines {
    fn layer_started(&self, index: usize, desc: Option<&Descriptor>, reused: bool) {
        let state = if reused { "already stored" } else { "fetching" };
        match desc {
            Some(d) => eprintln!(
                "layer {}: {} ({} bytes): {state}",
                index + 1,
                d.digest,
                d.size
            ),
            None => eprintln!("layer {}: {state}", index + 1),
        }
    }

    fn layer_done(&self, index: usize) {
        eprintln!("layer {}: stored", index + 1);
    }
}

fn run(root: &Path, reference: &str) -> lstore::Result<()> {
    let store = Store::open(root, StoreOptions::default())?;

    // Without a platform, an index resolves to this host's platform.
    let pulled = store.pull(reference, &PullOptions::default(), &LayerLines)?;
    println!("pulled {}", pulled.reference);
    println!("id {}", pulled.id);
    println!("manifest {}", pulled.manifest);
    println!(
        "layers: {} fetched, {} already stored",
        pulled.layers_new, pulled.layers_reused
    );

    // One row per tag, as `lstore images` prints them.
    for row in store.images()? {
        println!(
            "image {}:{} {} {} bytes",
            row.repository.as_deref().unwrap_or("<none>"),
            row.tag.as_deref().unwrap_or("<none>"),
            row.id,
            row.size
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, reference] = args.as_slice() else {
        eprintln!("usage: pull ROOT REFERENCE");
        return ExitCode::from(2);
    };
    match run(Path::new(root), reference) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
