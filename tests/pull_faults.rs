//! `lstore pull` when the network or the registry misbehaves: a recording
//! proxy between lstore and a real `docker-registry` cuts connections
//! mid-blob, ignores ranges, corrupts bytes, stalls, or answers errors
//! itself. A pull either completes with the right content or fails with
//! one `error:` line and leaves nothing that `gc` does not remove.

mod common;

use common::checks::{assert_matches_umoci, check_inspect, Source};
use common::image::Image;
use common::registry::{Client, Fault, Proxy, Registry, Seen};
use common::scenes::{self, noise};
use common::{scratch, Compression, ImageBuilder, Lstore, TarBuilder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An image whose top layer is a few megabytes that do not compress, so a
/// download can be cut in the middle.
fn big_image(compression: Compression) -> Image {
    let mut big = TarBuilder::new();
    big.dir("data");
    big.file("data/random.bin", noise(3_000_000, 42))
        .mode(0o600);
    big.file("data/after", "after the big file\n");
    ImageBuilder::new()
        .layer(scenes::small_base())
        .tar(&big, compression)
        .build()
}

/// Pushes `image` as `repo:v1` (skopeo for compressed layers, a byte-exact
/// upload for uncompressed ones) and returns `<proxy>/repo:v1`.
fn serve(registry: &Registry, proxy: &Proxy, image: &Image, repo: &str) -> String {
    if image
        .layers
        .iter()
        .any(|l| l.compression == Compression::None)
    {
        registry.upload(repo, "v1", image);
    } else {
        let work = scratch();
        registry.push_image(work.path(), image, &format!("{repo}:v1"), &[]);
    }
    format!("{}/{repo}:v1", proxy.host())
}

/// The GETs of one blob, in order.
fn gets_of<'a>(seen: &'a [Seen], digest: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| s.blob_get() == Some(digest))
        .collect()
}

/// A failed pull left nothing listed, no layer folder for `chain`, and
/// nothing unfinished but (when the network failed, not the content) the
/// partial download of `partial_of`, kept for a resume; `gc` then leaves
/// an empty store.
fn assert_nothing_kept(store: &Lstore, failed_chain: &str, partial_of: Option<&str>) {
    assert!(store.images().is_empty(), "{:?}", store.images());
    for name in store.unfinished() {
        let allowed = partial_of.is_some_and(|digest| {
            name.starts_with("ingest/")
                && name.ends_with(&format!(
                    ".partial-{}",
                    digest.trim_start_matches("sha256:")
                ))
        });
        assert!(allowed, "left after the failed pull: {name}");
    }
    let chain_hex = failed_chain.trim_start_matches("sha256:").to_string();
    assert!(
        !store.layer_dirs().contains(&chain_hex),
        "the failed layer has a folder: {:?}",
        store.layer_dirs()
    );
    store.ok(&["gc"]);
    assert!(store.blobs().is_empty(), "blobs: {:?}", store.blobs());
    assert!(store.layer_dirs().is_empty(), "{:?}", store.layer_dirs());
    assert!(store.short_links().is_empty(), "{:?}", store.short_links());
    assert!(store.unfinished().is_empty(), "{:?}", store.unfinished());
    let fsck = store.run(&["fsck"]);
    assert!(fsck.success(), "fsck after gc: {}", fsck.stderr);
}

// ------------------------------------------------------------- resuming

#[test]
fn dropped_connections_resume_with_range() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    // Cut the first response after 1 MB and the first resumed one after
    // 700 kB more.
    let proxy = Proxy::start(&registry.host(), move |seen| {
        match (seen.blob_get() == Some(rule_big.as_str()), seen.nth) {
            (true, 0) => Fault::CutAfter(1_000_000),
            (true, 1) => Fault::CutAfter(700_000),
            _ => Fault::Pass,
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/resume");
    let client = Client::new();
    let store = Lstore::new();
    client.pull(&store, &reference, &[]);

    let seen = proxy.seen();
    let gets = gets_of(&seen, &big);
    let ranges: Vec<Option<&str>> = gets.iter().map(|s| s.header("range")).collect();
    assert_eq!(
        ranges,
        [None, Some("bytes=1000000-"), Some("bytes=1700000-")],
        "the download resumed where each connection dropped"
    );
    check_inspect(
        &store,
        &store.inspect(&reference),
        &image,
        &reference,
        Source::Layout,
    );
    assert_matches_umoci(&store, &reference, &image);
}

#[test]
fn registry_that_ignores_range_is_read_past_what_was_received() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        match (seen.blob_get() == Some(rule_big.as_str()), seen.nth) {
            (true, 0) => Fault::CutAfter(1_234_567),
            // The whole blob again, with 200 instead of 206.
            (true, _) => Fault::DropRange,
            _ => Fault::Pass,
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/norange");
    let client = Client::new();
    let store = Lstore::new();
    client.pull(&store, &reference, &[]);
    let seen = proxy.seen();
    let gets = gets_of(&seen, &big);
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].header("range"), Some("bytes=1234567-"));
    check_inspect(
        &store,
        &store.inspect(&reference),
        &image,
        &reference,
        Source::Layout,
    );
    assert_matches_umoci(&store, &reference, &image);
}

#[test]
fn connection_that_always_drops_fails_cleanly() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if seen.blob_get() == Some(rule_big.as_str()) {
            Fault::CutAfter(200_000)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/drops");
    let client = Client::new();
    let store = Lstore::new();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    let seen = proxy.seen();
    let gets = gets_of(&seen, &big);
    assert!(
        gets.len() > 2 && gets.len() < 20,
        "a bounded number of resumes, got {} requests",
        gets.len()
    );
    assert!(err.contains(&big), "error names the blob: {err}");
    assert_nothing_kept(&store, &image.chain_ids()[1], Some(&big));
}

#[test]
fn next_pull_resumes_the_partial_download() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    let broken = Arc::new(AtomicBool::new(true));
    let rule_broken = broken.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if rule_broken.load(Ordering::SeqCst) && seen.blob_get() == Some(rule_big.as_str()) {
            Fault::CutAfter(250_000)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/partial");
    let client = Client::new();
    let store = Lstore::new();
    client.fails(&store, &["pull", "-q", &reference]);
    let partials: Vec<String> = store
        .unfinished()
        .into_iter()
        .filter(|n| n.ends_with(&format!(".partial-{}", big.trim_start_matches("sha256:"))))
        .collect();
    assert_eq!(partials.len(), 1, "{:?}", store.unfinished());
    let held = std::fs::metadata(store.path(&partials[0])).unwrap().len();
    assert!(
        held > 0 && held < image.layers[1].size(),
        "partial of {held} bytes"
    );

    // The network is back: the next pull asks only for the rest.
    broken.store(false, Ordering::SeqCst);
    proxy.clear();
    client.pull(&store, &reference, &[]);
    let seen = proxy.seen();
    let gets = gets_of(&seen, &big);
    assert_eq!(gets.len(), 1, "one request for the rest of the blob");
    assert_eq!(
        gets[0].header("range"),
        Some(format!("bytes={held}-").as_str())
    );
    assert!(store.unfinished().is_empty(), "{:?}", store.unfinished());
    check_inspect(
        &store,
        &store.inspect(&reference),
        &image,
        &reference,
        Source::Layout,
    );
    assert_matches_umoci(&store, &reference, &image);
}

// ------------------------------------------------------------ corruption

#[test]
fn corrupted_layer_is_a_digest_error_and_leaves_nothing() {
    let registry = Registry::start();
    // Uncompressed, so a flipped byte in a file's data still parses as tar
    // and only the digests can tell.
    let mut top = TarBuilder::new();
    top.dir("data");
    top.file("data/payload", noise(50_000, 9));
    let image = ImageBuilder::new()
        .tar(&TarBuilder::new(), Compression::None)
        .tar(&top, Compression::None)
        .build();
    let layer = image.layers[1].digest.clone();
    let rule_layer = layer.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if seen.blob_get() == Some(rule_layer.as_str()) {
            // Inside data/payload's content (after two 512-byte headers).
            Fault::Corrupt(2_000)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/corrupt");
    let client = Client::new();
    let store = Lstore::new();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(err.contains(&layer), "error names the layer {layer}: {err}");
    assert_nothing_kept(&store, &image.chain_ids()[1], None);
}

#[test]
fn corrupted_gzip_layer_fails_cleanly() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if seen.blob_get() == Some(rule_big.as_str()) {
            Fault::Corrupt(1_500_000)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/corrupt-gzip");
    let client = Client::new();
    let store = Lstore::new();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    eprintln!("corrupted gzip layer: {err}");
    assert!(
        err.contains(&big[..19]),
        "error names the layer {big}: {err}"
    );
    assert_nothing_kept(&store, &image.chain_ids()[1], None);
}

#[test]
fn corrupted_config_and_manifest_are_refused() {
    let registry = Registry::start();
    let image = ImageBuilder::new().layer(scenes::small_base()).build();
    let config = image.config_digest.clone();
    let corrupt_manifest = Arc::new(AtomicBool::new(false));
    let rule_config = config.clone();
    let rule_manifest = corrupt_manifest.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if rule_manifest.load(Ordering::SeqCst) {
            if seen.is_manifest_get() {
                return Fault::Corrupt(10);
            }
        } else if seen.blob_get() == Some(rule_config.as_str()) {
            return Fault::Corrupt(5);
        }
        Fault::Pass
    });
    let reference = serve(&registry, &proxy, &image, "faults/config");
    let client = Client::new();
    let store = Lstore::new();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    assert!(
        err.contains("digest") && err.contains(&config),
        "config digest error: {err}"
    );
    assert_nothing_kept(&store, &image.chain_ids()[0], None);

    corrupt_manifest.store(true, Ordering::SeqCst);
    let err = client.fails(&store, &["pull", "-q", &reference]);
    assert!(
        err.contains("digest") && err.contains(&image.manifest_digest),
        "manifest digest error: {err}"
    );
    assert_nothing_kept(&store, &image.chain_ids()[0], None);
}

// ------------------------------------------------------------- stalls

/// A stalled connection, in the client's words or its HTTP library's.
fn is_timeout(err: &str) -> bool {
    err.contains("timed out") || err.contains("timeout")
}

#[test]
fn stalled_blob_download_times_out() {
    let registry = Registry::start();
    let image = big_image(Compression::Gzip);
    let big = image.layers[1].digest.clone();
    let rule_big = big.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if seen.blob_get() == Some(rule_big.as_str()) {
            Fault::StallAfter(300_000)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/stall");
    let client = Client::new().env("LSTORE_HTTP_TIMEOUT", "1");
    let store = Lstore::new();
    let started = Instant::now();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    let took = started.elapsed();
    assert!(is_timeout(&err), "{err}");
    // Each attempt waits one timeout; the resumes are bounded.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let seen = proxy.seen();
    let gets = gets_of(&seen, &big);
    assert!(gets.len() >= 2, "stalled downloads are resumed first");
    for (k, get) in gets.iter().enumerate().skip(1) {
        // Each stalled response delivered 300 kB before it stopped.
        assert_eq!(
            get.header("range"),
            Some(format!("bytes={}-", 300_000 * k).as_str()),
            "resume #{k}"
        );
        // ... and was given up after about one timeout.
        let waited = get.at.duration_since(gets[k - 1].at);
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "resume #{k} after {waited:?}"
        );
    }
    assert_nothing_kept(&store, &image.chain_ids()[1], Some(&big));
}

#[test]
fn stalled_manifest_times_out() {
    let registry = Registry::start();
    let image = ImageBuilder::new().layer(scenes::small_base()).build();
    let proxy = Proxy::start(&registry.host(), |seen| {
        if seen.is_manifest_get() {
            Fault::StallAfter(0)
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/stall-manifest");
    let client = Client::new().env("LSTORE_HTTP_TIMEOUT", "1");
    let store = Lstore::new();
    let started = Instant::now();
    let err = client.fails(&store, &["pull", "-q", &reference]);
    let took = started.elapsed();
    assert!(is_timeout(&err), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(store.images().is_empty());
}

// ------------------------------------------------------ registry answers

#[test]
fn unknown_repository_tag_and_blob() {
    let registry = Registry::start();
    let image = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("404"))
        .build();
    let layer = image.layers[1].digest.clone();
    let rule_layer = layer.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        if seen.blob_get() == Some(rule_layer.as_str()) {
            Fault::error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        } else if seen.path().starts_with("/v2/faults/nameless/") {
            Fault::error(404, "NAME_UNKNOWN", "repository name not known to registry")
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/present");
    let client = Client::new();
    let store = Lstore::new();
    let host = registry.host();

    let err = client.fails(&store, &["pull", &format!("{host}/faults/present:nope")]);
    assert!(
        err.contains("not found") && err.contains("manifest unknown"),
        "unknown tag: {err}"
    );
    // distribution answers MANIFEST_UNKNOWN for a repository it does not
    // have; other registries say NAME_UNKNOWN, with their own message.
    let err = client.fails(&store, &["pull", &format!("{host}/faults/absent:v1")]);
    assert!(
        err.contains("faults/absent:v1")
            && err.contains("not found")
            && err.contains("manifest unknown"),
        "unknown repository: {err}"
    );
    let err = client.fails(
        &store,
        &["pull", &format!("{}/faults/nameless:v1", proxy.host())],
    );
    assert!(
        err.contains("not found") && err.contains("repository name not known to registry"),
        "unknown repository (NAME_UNKNOWN): {err}"
    );

    // A manifest naming a blob the registry lost.
    let err = client.fails(&store, &["pull", "-q", &reference]);
    assert!(
        err.contains(&layer) && err.contains("blob unknown to registry"),
        "missing blob: {err}"
    );
    assert_nothing_kept(&store, &image.chain_ids()[1], Some(&layer));
}

#[test]
fn busy_registry_is_retried() {
    let registry = Registry::start();
    let image = ImageBuilder::new()
        .layer(scenes::small_base())
        .layer(scenes::small_app("busy"))
        .build();
    let layer = image.layers[1].digest.clone();
    let rule_layer = layer.clone();
    let proxy = Proxy::start(&registry.host(), move |seen| {
        let first = seen.nth == 0;
        if first && (seen.is_manifest_get() || seen.blob_get() == Some(rule_layer.as_str())) {
            Fault::error(503, "UNAVAILABLE", "try again")
        } else {
            Fault::Pass
        }
    });
    let reference = serve(&registry, &proxy, &image, "faults/busy");
    let client = Client::new();
    let store = Lstore::new();
    client.pull(&store, &reference, &[]);
    assert_eq!(proxy.manifest_gets(), 2, "manifest asked again after 503");
    assert_eq!(gets_of(&proxy.seen(), &layer).len(), 2);
    check_inspect(
        &store,
        &store.inspect(&reference),
        &image,
        &reference,
        Source::Layout,
    );
    assert_matches_umoci(&store, &reference, &image);
}
