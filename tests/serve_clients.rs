//! `lstore serve` with the real clients a machine's other tools are: podman
//! pulls from it, containerd uses it as a `hosts.toml` mirror (with `ns`)
//! and runs what it pulled, skopeo pulls through it from a docker-registry
//! upstream, and skopeo authenticates to it over TLS. Each client keeps its
//! state in a temp dir of its own (tests/common/clients.rs).

mod common;

use common::clients::{Containerd, Podman};
use common::image::Image;
use common::mount::LstoreMount;
use common::peers::{skopeo_copy, skopeo_inspect};
use common::registry::{free_port, make_htpasswd, make_tls, Fault, Proxy, Registry};
use common::scenes::{noise, runnable_image, small_app, small_base};
use common::serve::Serve;
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, Compression, ImageBuilder, Lstore, TarBuilder};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ images

/// Two layers (a base and an app layer with a whiteout).
fn app_image(name: &str) -> Image {
    ImageBuilder::new()
        .layer(small_base())
        .layer(small_app(name))
        .build()
}

/// Two layers whose content is `name`'s own, so that no blob is shared
/// with another image made here.
fn own_image(name: &str) -> Image {
    let seed = name.bytes().map(u64::from).sum::<u64>();
    let mut base = TarBuilder::new();
    base.dir("data");
    base.file(format!("data/{name}.bin"), noise(30_000, seed));
    let mut top = TarBuilder::new();
    top.dir("etc");
    top.file("etc/name", format!("{name}\n"));
    ImageBuilder::new()
        .tar(&base, Compression::Gzip)
        .tar(&top, Compression::Gzip)
        .build()
}

/// What `lstore mount REF` shows.
fn lstore_tree(store: &Lstore, reference: &str) -> common::tree::Tree {
    let mount = LstoreMount::new(store, reference, false);
    snapshot(mount.root())
}

// ------------------------------------------------------------------ podman

#[test]
fn podman_pulls_from_serve_the_image_lstore_has() {
    let store = Lstore::new();
    let image = app_image("podman");
    store.load_image(&image, "example.com/clients/podman:v1");
    let served = Serve::start(&store, &["--namespace", "example.com"]);
    let podman = Podman::new(&[served.addr()]);
    let reference = format!("{}/clients/podman:v1", served.addr());

    podman.ok(&["pull", "-q", &reference]);

    let lstore = store.inspect("example.com/clients/podman:v1");
    let pulled = podman.inspect(&reference);
    assert_eq!(pulled["Digest"], lstore["digest"], "manifest digest");
    assert_eq!(
        format!("sha256:{}", pulled["Id"].as_str().unwrap_or_default()),
        lstore["id"].as_str().unwrap_or_default(),
        "image id (config digest)"
    );
    assert_eq!(lstore["digest"], image.manifest_digest.as_str());
    let podman_tree = snapshot(podman.mount(&reference).path());
    assert_same_tree(
        &lstore_tree(&store, "example.com/clients/podman:v1"),
        &podman_tree,
        "podman image mount vs lstore mount",
    );
}

#[test]
fn podman_pulls_through_serve_as_its_registries_conf_mirror() {
    // Nobody listens at the upstream: what podman gets, the mirror gave.
    let upstream = format!("127.0.0.1:{}", free_port());
    let name = format!("{upstream}/clients/mirrored:v1");
    let image = app_image("mirrored");
    let store = Lstore::new();
    store.load_image(&image, &name);
    let served = Serve::start(&store, &["--namespace", &upstream]);
    let podman = Podman::mirrored(&upstream, served.addr());

    podman.ok(&["pull", "-q", &name]);

    assert_eq!(
        podman.inspect(&name)["Digest"],
        image.manifest_digest.as_str(),
        "serve said:\n{}",
        served.stderr()
    );
}

// -------------------------------------------------------------- containerd

/// A containerd of its own pulls `name` with `served` as the hosts.toml
/// mirror of `upstream`, and gets `expected`.
fn containerd_pull_via(served: &Serve, upstream: &str, name: &str, expected: &Image) -> Containerd {
    let containerd = Containerd::start();
    containerd.mirror(upstream, served.addr());
    containerd.pull(name);
    assert_eq!(
        containerd.image_digest(name),
        expected.manifest_digest,
        "{name} through the mirror; serve said:\n{}",
        served.stderr()
    );
    containerd
}

#[test]
fn containerd_pulls_through_a_hosts_toml_mirror_naming_ns_and_runs_the_image() {
    // The upstream is a loopback port nobody listens on: every byte comes
    // from lstore. A different image under the same path on docker.io is
    // what serve would give without `ns`.
    let upstream = format!("127.0.0.1:{}", free_port());
    let greeting = "served by lstore for the ns host";
    let image = runnable_image(greeting);
    let decoy = app_image("decoy");
    let name = format!("{upstream}/clients/run:v1");
    let store = Lstore::new();
    store.load_image(&image, &name);
    store.load_image(&decoy, "docker.io/clients/run:v1");
    let served = Serve::start(&store, &[]);

    // The image of the ns host, not docker.io's.
    let containerd = containerd_pull_via(&served, &upstream, &name, &image);
    let ctr_tree = {
        let mount = containerd.mount(&name);
        snapshot(mount.path())
    };
    assert_same_tree(
        &lstore_tree(&store, &name),
        &ctr_tree,
        "ctr images mount vs lstore mount",
    );
    let out = containerd.ctr_ok(&["run", "--rm", &name, "lstore-serve-run"]);
    assert_eq!(out.stdout.trim(), greeting, "ctr run output");
}

#[test]
fn containerd_mirror_with_upstream_fills_the_store_from_the_ns_registry() {
    // The registry answers lstore only: containerd going around the mirror
    // is refused. serve's own --upstream is unreachable, so the image can
    // only come from the registry containerd names in `ns`.
    let registry = Registry::start();
    let image = own_image("through");
    registry.upload("clients/through", "v1", &image);
    let gate = Proxy::start(&registry.host(), |seen| {
        if seen
            .header("user-agent")
            .unwrap_or_default()
            .starts_with("lstore/")
        {
            Fault::Pass
        } else {
            Fault::error(403, "DENIED", "this registry serves lstore only")
        }
    });
    let store = Lstore::new();
    let unreachable = format!("127.0.0.1:{}", free_port());
    // The ns host must be one the operator named for serve to pull from it.
    let served = Serve::start(
        &store,
        &["--upstream", &unreachable, "--namespace", &gate.host()],
    );
    let name = format!("{}/clients/through:v1", gate.host());

    containerd_pull_via(&served, &gate.host(), &name, &image);

    assert!(
        store.listed_references().contains(&name),
        "lstore images lists {name}: {:?}",
        store.listed_references()
    );
    assert!(
        !gate.blob_gets().is_empty(),
        "lstore fetched the blobs from the ns registry"
    );
}

// ------------------------------------------------------------ pull-through

/// Requests the upstream saw, as "METHOD path" (query dropped) with counts.
fn requests_by_path(proxy: &Proxy) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for seen in proxy.seen() {
        *counts
            .entry(format!("{} {}", seen.method, seen.path()))
            .or_insert(0) += 1;
    }
    counts
}

/// The same requests with one image's names replaced by a placeholder, so
/// that pulls of two images of the same shape compare equal.
fn shape(counts: &BTreeMap<String, usize>, image: &Image, repo: &str) -> BTreeMap<String, usize> {
    let mut names: Vec<(String, String)> = vec![(repo.to_string(), "REPO".to_string())];
    names.push((image.manifest_digest.clone(), "MANIFEST".into()));
    names.push((image.config_digest.clone(), "CONFIG".into()));
    for (i, layer) in image.layers.iter().enumerate() {
        names.push((layer.digest.clone(), format!("LAYER{i}")));
    }
    counts
        .iter()
        .map(|(request, n)| {
            let mut request = request.clone();
            for (from, to) in &names {
                request = request.replace(from.as_str(), to);
            }
            (request, *n)
        })
        .collect()
}

fn oci_dest(dir: &Path, name: &str) -> String {
    format!("oci:{}:v1", dir.join(name).display())
}

#[test]
fn pull_through_serve_fetches_from_docker_registry_once_for_concurrent_clients() {
    let registry = Registry::start();
    // Client requests for the second image's tag, as seen in front of serve.
    let asked = Arc::new(AtomicUsize::new(0));
    // The upstream proxy records what the upstream is asked and holds the
    // second image's manifest until both clients have asked serve for it,
    // so that the two requests surely overlap.
    let upstream = {
        let asked = asked.clone();
        Proxy::start(&registry.host(), move |seen| {
            if seen.path() == "/v2/clients/second/manifests/v1" {
                let deadline = Instant::now() + Duration::from_secs(30);
                while asked.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Fault::Pass
        })
    };
    let first = own_image("first");
    let second = own_image("second");
    registry.upload("clients/first", "v1", &first);
    registry.upload("clients/second", "v1", &second);
    let store = Lstore::new();
    let served = Serve::start(&store, &["--upstream", &upstream.host()]);
    let out = scratch();
    let tls_off = ["--src-tls-verify=false"];

    // One client: the image comes through, and is now in the store.
    let source = format!("docker://{}/clients/first:v1", served.addr());
    let seen = skopeo_inspect(&["--tls-verify=false"], &source);
    assert_eq!(seen["Digest"], first.manifest_digest.as_str());
    skopeo_copy(&tls_off, &source, &oci_dest(out.path(), "first"));
    let stored = format!("{}/clients/first:v1", upstream.host());
    assert!(
        store.listed_references().contains(&stored),
        "lstore images lists {stored}: {:?}",
        store.listed_references()
    );
    assert_eq!(
        store.inspect(&stored)["digest"],
        first.manifest_digest.as_str()
    );
    let one_client = shape(&requests_by_path(&upstream), &first, "clients/first");
    assert!(
        one_client.keys().any(|r| r.contains("LAYER1")),
        "the upstream was asked for the layers: {one_client:?}"
    );

    // Two clients at once, for an image of the same shape: the upstream
    // sees the requests of one pull, not two.
    upstream.clear();
    let front = {
        let asked = asked.clone();
        Proxy::start(served.addr(), move |seen| {
            if seen.path() == "/v2/clients/second/manifests/v1" {
                asked.fetch_add(1, Ordering::SeqCst);
            }
            Fault::Pass
        })
    };
    let source = format!("docker://{}/clients/second:v1", front.host());
    std::thread::scope(|scope| {
        for client in ["a", "b"] {
            let (source, dest) = (&source, oci_dest(out.path(), client));
            scope.spawn(move || skopeo_copy(&tls_off, source, &dest));
        }
    });
    let two_clients = shape(&requests_by_path(&upstream), &second, "clients/second");
    assert_eq!(
        two_clients,
        one_client,
        "two concurrent clients make one upstream pull; serve said:\n{}",
        served.stderr()
    );
    for client in ["a", "b"] {
        let index: serde_json::Value = serde_json::from_slice(
            &fs::read(out.path().join(client).join("index.json")).expect("index.json"),
        )
        .expect("index JSON");
        assert_eq!(
            index["manifests"][0]["digest"],
            second.manifest_digest.as_str(),
            "client {client} got the image"
        );
    }
}

// ------------------------------------------------------------ TLS and auth

#[test]
fn serve_over_tls_with_htpasswd_admits_the_right_password_only() {
    let dir = scratch();
    let tls = make_tls(dir.path());
    let htpasswd = make_htpasswd(dir.path(), "alice", "right horse");
    // skopeo's cert dir: the CA as ca.crt.
    let certs = dir.path().join("certs");
    fs::create_dir_all(&certs).expect("certs dir");
    fs::copy(&tls.ca, certs.join("ca.crt")).expect("ca.crt");
    let certs = certs.to_str().expect("utf-8").to_string();
    let image = app_image("auth");
    let store = Lstore::new();
    store.load_image(&image, "example.com/clients/auth:v1");
    let served = Serve::start(
        &store,
        &[
            "--namespace",
            "example.com",
            "--tls-cert",
            tls.cert.to_str().expect("utf-8"),
            "--tls-key",
            tls.key.to_str().expect("utf-8"),
            "--htpasswd",
            htpasswd.to_str().expect("utf-8"),
        ],
    );
    let source = format!("docker://{}/clients/auth:v1", served.addr());

    // Right password, CA trusted: the whole image comes over TLS.
    skopeo_copy(
        &["--src-cert-dir", &certs, "--src-creds", "alice:right horse"],
        &source,
        &oci_dest(dir.path(), "copy"),
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("copy/index.json")).expect("index"))
            .expect("index JSON");
    assert_eq!(
        index["manifests"][0]["digest"],
        image.manifest_digest.as_str()
    );

    let inspect = |extra: &[&str]| {
        let mut args = vec!["--insecure-policy", "inspect", "--cert-dir", &certs];
        args.extend_from_slice(extra);
        args.push(&source);
        let out = Command::new("skopeo").args(&args).output().expect("skopeo");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
        )
    };
    for (what, extra) in [
        ("a wrong password", vec!["--creds", "alice:wrong horse"]),
        ("an unknown user", vec!["--creds", "bob:right horse"]),
        ("no credentials", vec!["--no-creds"]),
    ] {
        let (ok, stderr) = inspect(&extra);
        assert!(!ok, "skopeo inspect with {what} succeeded");
        assert!(
            stderr.contains("401") || stderr.contains("unauthorized"),
            "with {what}, skopeo was not refused for authentication: {stderr}"
        );
    }
    let (ok, _) = inspect(&["--creds", "alice:right horse"]);
    assert!(ok, "skopeo inspect with the right password");

    // Without the CA the certificate is not trusted.
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "inspect",
            "--creds",
            "alice:right horse",
        ])
        .arg(&source)
        .output()
        .expect("skopeo");
    assert!(!out.status.success(), "an unknown CA was trusted");
}
