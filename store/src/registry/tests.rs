//! Tests against a real `docker-registry` (plain HTTP, and TLS with Basic
//! auth) filled by `skopeo`, and against small in-process fakes for token
//! auth, redirects, retries and misbehaving registries.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::blobs::{FetchedBlob, MONOLITHIC_UPLOAD_MAX};
use super::credentials::Credentials;
use super::*;
use crate::digest::Digest;
use crate::oci::{self, Platform};
use crate::reference::Reference;

// ---------------------------------------------------------------- helpers

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Prints why a test does nothing and returns true when a tool is missing.
fn missing_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!("note: skipping, not installed: {}", missing.join(", "));
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client that never touches the real ~/.docker, with quick retries.
fn client_with(dir: &Path, tweak: impl FnOnce(&mut ClientOptions)) -> RegistryClient {
    let mut options = ClientOptions {
        docker_config: Some(DockerConfig::in_dir(&dir.join("docker"))),
        retry_delay: Duration::from_millis(20),
        ..ClientOptions::default()
    };
    tweak(&mut options);
    RegistryClient::new(options).unwrap()
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `docker-registry` child process, killed when dropped.
struct RegistryProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RegistryProcess {
    /// `extra` is appended to the config's `http:` section and top level.
    fn start(http_extra: &str, top_extra: &str) -> RegistryProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n{http_extra}{top_extra}",
            root = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = RegistryProcess {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.host())).unwrap()
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One image written into an OCI layout.
#[derive(Clone)]
struct TestImage {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    config: Vec<u8>,
    layer: Vec<u8>,
}

fn gzip_tar_layer(file_content: &str) -> (Vec<u8>, Digest) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(file_content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    builder
        .append_data(&mut header, "hello.txt", file_content.as_bytes())
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.hex()), bytes).unwrap();
    digest
}

fn make_image(layout: &Path, arch: &str, content: &str) -> TestImage {
    let (layer, diff_id) = gzip_tar_layer(content);
    let layer_digest = write_blob(layout, &layer);
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    )
    .into_bytes();
    let config_digest = write_blob(layout, &config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer_digest}","size":{}}}]}}"#,
        oci::OCI_MANIFEST,
        oci::OCI_CONFIG,
        config.len(),
        oci::OCI_LAYER_GZIP,
        layer.len()
    )
    .into_bytes();
    let manifest_digest = write_blob(layout, &manifest);
    TestImage {
        manifest,
        manifest_digest,
        config,
        layer,
    }
}

fn write_index_json(layout: &Path, entries: &[(String, Digest, usize, &str)]) {
    let manifests: Vec<String> = entries
        .iter()
        .map(|(media_type, digest, size, tag)| {
            format!(
                r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#
            )
        })
        .collect();
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            manifests.join(",")
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

/// Writes a layout holding a single-platform image (tag `single`) and a
/// two-platform index (tag `multi`). Returns (single, amd64, arm64, index
/// bytes).
fn write_layout(layout: &Path) -> (TestImage, TestImage, TestImage, Vec<u8>) {
    let single = make_image(layout, "amd64", "single");
    let amd64 = make_image(layout, "amd64", "amd64 content");
    let arm64 = make_image(layout, "arm64", "arm64 content");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{idx}","manifests":[{{"mediaType":"{m}","digest":"{a}","size":{asz},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{m}","digest":"{b}","size":{bsz},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
        idx = oci::OCI_INDEX,
        m = oci::OCI_MANIFEST,
        a = amd64.manifest_digest,
        asz = amd64.manifest.len(),
        b = arm64.manifest_digest,
        bsz = arm64.manifest.len(),
    )
    .into_bytes();
    let index_digest = write_blob(layout, &index);
    write_index_json(
        layout,
        &[
            (
                oci::OCI_MANIFEST.to_string(),
                single.manifest_digest,
                single.manifest.len(),
                "single",
            ),
            (
                oci::OCI_INDEX.to_string(),
                index_digest,
                index.len(),
                "multi",
            ),
        ],
    );
    (single, amd64, arm64, index)
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--dest-tls-verify=false",
    ]);
    cmd.args(extra);
    cmd.arg(format!("oci:{}:{tag}", layout.display()));
    cmd.arg(format!("docker://{dest}"));
    run(&mut cmd);
}

fn read_all(mut blob: FetchedBlob) -> Vec<u8> {
    let mut out = Vec::new();
    blob.reader.read_to_end(&mut out).unwrap();
    out
}

// ------------------------------------------------ tests with docker-registry

#[test]
fn pull_side_against_docker_registry() {
    if missing_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let registry = RegistryProcess::start("", "");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (single, amd64, arm64, index) = write_layout(&layout);
    skopeo_push(
        &layout,
        "single",
        &format!("{}/lstore/single:v1", registry.host()),
        &[],
    );
    skopeo_push(
        &layout,
        "multi",
        &format!("{}/lstore/multi:v1", registry.host()),
        &[],
    );
    let client = client_with(work.path(), |_| {});

    // A tag, then the same manifest by digest.
    let r = registry.reference("lstore/single:v1");
    let fetched = client.get_manifest(&r).unwrap();
    assert_eq!(fetched.bytes, single.manifest);
    assert_eq!(fetched.digest, single.manifest_digest);
    assert_eq!(fetched.media_type, oci::OCI_MANIFEST);
    let pinned = r.by_digest(single.manifest_digest);
    assert_eq!(client.get_manifest(&pinned).unwrap().bytes, single.manifest);

    // A digest that does not exist, a tag, a repository.
    let err = client
        .get_manifest(&r.by_digest(Digest::of(b"nothing")))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    let err = client
        .get_manifest(&registry.reference("lstore/single:nope"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "manifest {}/lstore/single:nope not found: manifest unknown",
            registry.host()
        )
    );
    let err = client
        .get_manifest(&registry.reference("lstore/absent:v1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not found") && err.contains("unknown"),
        "{err}"
    );

    // Blobs: whole, from an offset, missing.
    let manifest: oci::Manifest = serde_json::from_slice(&fetched.bytes).unwrap();
    let layer = &manifest.layers[0];
    let blob = client.fetch_blob(&r, &layer.digest, 0).unwrap();
    assert_eq!(
        (blob.offset, blob.length),
        (0, Some(single.layer.len() as u64))
    );
    assert_eq!(read_all(blob), single.layer);
    let blob = client.fetch_blob(&r, &layer.digest, 10).unwrap();
    assert_eq!(blob.offset, 10);
    assert_eq!(read_all(blob), single.layer[10..]);
    let config = client.fetch_blob(&r, &manifest.config.digest, 0).unwrap();
    assert_eq!(read_all(config), single.config);
    let missing = Digest::of(b"no such blob");
    let err = client.fetch_blob(&r, &missing, 0).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "blob {missing} in {}/lstore/single not found",
            registry.host()
        )),
        "{err}"
    );

    // A multi-platform index and platform selection.
    let multi = registry.reference("lstore/multi:v1");
    let fetched_index = client.get_manifest(&multi).unwrap();
    assert_eq!(fetched_index.media_type, oci::OCI_INDEX);
    assert_eq!(fetched_index.bytes, index);
    let parsed: oci::Index = serde_json::from_slice(&fetched_index.bytes).unwrap();
    let arm = crate::platform::select(&parsed.manifests, &Platform::parse("linux/arm64").unwrap())
        .unwrap();
    assert_eq!(arm.digest, arm64.manifest_digest);
    let chosen = client.get_manifest(&multi.by_digest(arm.digest)).unwrap();
    assert_eq!(chosen.bytes, arm64.manifest);
    let amd = crate::platform::select(&parsed.manifests, &Platform::parse("linux/amd64").unwrap())
        .unwrap();
    assert_eq!(amd.digest, amd64.manifest_digest);
}

#[test]
fn push_side_against_docker_registry() {
    if missing_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let registry = RegistryProcess::start("", "");
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |_| {});
    let repo = registry.reference("pushed/app:1.0");

    // A layer above the monolithic limit goes up in chunks.
    let big: Vec<u8> = (0..(MONOLITHIC_UPLOAD_MAX as usize + 3 * 1024 * 1024 + 17))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let big_digest = Digest::of(&big);
    let small = b"small layer bytes".to_vec();
    let small_digest = Digest::of(&small);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::of(config);

    assert!(!client.blob_exists(&repo, &big_digest).unwrap());
    client
        .upload_blob(&repo, &big_digest, big.len() as u64, &mut big.as_slice())
        .unwrap();
    client
        .upload_blob(
            &repo,
            &small_digest,
            small.len() as u64,
            &mut small.as_slice(),
        )
        .unwrap();
    client
        .upload_blob(&repo, &config_digest, config.len() as u64, &mut &config[..])
        .unwrap();
    assert!(client.blob_exists(&repo, &big_digest).unwrap());
    assert_eq!(
        read_all(client.fetch_blob(&repo, &big_digest, 0).unwrap()),
        big
    );

    // Wrong digest or size: refused before the registry commits anything.
    let wrong = Digest::of(b"something else");
    let err = client
        .upload_blob(&repo, &wrong, small.len() as u64, &mut small.as_slice())
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(!client.blob_exists(&repo, &wrong).unwrap());
    let err = client
        .upload_blob(
            &repo,
            &small_digest,
            small.len() as u64 + 1,
            &mut small.as_slice(),
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
    let err = client
        .upload_blob(&repo, &small_digest, 3, &mut small.as_slice())
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");

    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{small_digest}","size":{}}},{{"mediaType":"{}","digest":"{big_digest}","size":{}}}]}}"#,
        oci::OCI_MANIFEST,
        oci::OCI_CONFIG,
        config.len(),
        oci::OCI_LAYER_TAR,
        small.len(),
        oci::OCI_LAYER_TAR,
        big.len()
    );
    let pushed = client
        .put_manifest(&repo, oci::OCI_MANIFEST, manifest.as_bytes())
        .unwrap();
    assert_eq!(pushed, Digest::of(manifest.as_bytes()));
    // A pinned target must match the bytes.
    assert!(matches!(
        client.put_manifest(
            &repo.by_digest(wrong),
            oci::OCI_MANIFEST,
            manifest.as_bytes()
        ),
        Err(RegistryError::DigestMismatch { .. })
    ));

    // Another tool sees exactly what was pushed.
    let output = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/pushed/app:1.0", registry.host()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, manifest.as_bytes());
    let copy = work.path().join("copy");
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg("--dest-oci-accept-uncompressed-layers")
        .arg(format!("docker://{}/pushed/app:1.0", registry.host()))
        .arg(format!("oci:{}:x", copy.display())));
    assert_eq!(
        std::fs::read(copy.join("blobs/sha256").join(big_digest.hex())).unwrap(),
        big
    );

    // Cross-repository mount within the registry; none across registries.
    let other = registry.reference("pushed/other:1");
    assert!(!client.blob_exists(&other, &big_digest).unwrap());
    assert!(client.mount_blob(&other, &big_digest, &repo).unwrap());
    assert!(client.blob_exists(&other, &big_digest).unwrap());
    assert!(!client.mount_blob(&other, &wrong, &repo).unwrap());
    let elsewhere = Reference::parse("quay.io/pushed/app:1").unwrap();
    assert!(!client
        .mount_blob(&other, &small_digest, &elsewhere)
        .unwrap());
    // By-digest push of the same manifest into the other repository.
    client
        .upload_blob(
            &other,
            &small_digest,
            small.len() as u64,
            &mut small.as_slice(),
        )
        .unwrap();
    client
        .upload_blob(
            &other,
            &config_digest,
            config.len() as u64,
            &mut &config[..],
        )
        .unwrap();
    let by_digest = other.by_digest(pushed);
    assert_eq!(
        client
            .put_manifest(&by_digest, oci::OCI_MANIFEST, manifest.as_bytes())
            .unwrap(),
        pushed
    );
    assert_eq!(
        client.get_manifest(&by_digest).unwrap().bytes,
        manifest.as_bytes()
    );
}

#[test]
fn unreachable_registry_is_one_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |_| {});
    let port = free_port();
    let r = Reference::parse(&format!("127.0.0.1:{port}/x:1")).unwrap();
    let err = client.get_manifest(&r).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("cannot reach 127.0.0.1:{port}: connection refused")
    );
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("ext.cnf");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca)
        .args(["-days", "2", "-subj", "/CN=lstore test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", "/CN=127.0.0.1"]));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", "2"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    (ca, cert, key)
}

/// bcrypt of "s3cret-pass" (cost 4, made once with libxcrypt).
const HTPASSWD: &str = "alice:$2b$04$jw/73etGJozgf9za.mZ6DeExJYYu3UyqFVH0U9tOL3W0lc6tzI/G.\n";

#[test]
fn basic_auth_over_tls_with_login_and_logout() {
    if missing_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(work.path());
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let registry = RegistryProcess::start(
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
        &format!(
            "auth:\n  htpasswd:\n    realm: lstore-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let layout = work.path().join("layout");
    let (single, ..) = write_layout(&layout);
    skopeo_push(
        &layout,
        "single",
        &format!("{}/secure/app:v1", registry.host()),
        &["--dest-creds", "alice:s3cret-pass"],
    );
    let r = registry.reference("secure/app:v1");

    // Without the CA the certificate is refused, not bypassed for plain HTTP.
    let no_ca = client_with(work.path(), |_| {});
    let err = no_ca.get_manifest(&r).unwrap_err();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("not trusted"), "{err}");

    // With the CA but without credentials.
    let anonymous = client_with(work.path(), |o| o.ca_file = Some(ca.clone()));
    let err = anonymous.get_manifest(&r).unwrap_err();
    assert!(
        matches!(err, RegistryError::AuthenticationRequired { .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("{}: authentication required", registry.host())));

    // A wrong password fails the login and stores nothing.
    let err = anonymous
        .login(&registry.host(), "alice", "wrong")
        .unwrap_err();
    assert!(matches!(err, RegistryError::LoginFailed { .. }), "{err}");
    let config = DockerConfig::in_dir(&work.path().join("docker"));
    assert_eq!(config.credentials_for(&registry.host()).unwrap(), None);

    // The right one is checked, stored, and used by later clients.
    let stored = anonymous
        .login(
            &format!("https://{}/", registry.host()),
            "alice",
            "s3cret-pass",
        )
        .unwrap();
    assert_eq!(stored, registry.host());
    assert_eq!(
        config
            .credentials_for(&registry.host())
            .unwrap()
            .unwrap()
            .username,
        "alice"
    );
    let fresh = client_with(work.path(), |o| o.ca_file = Some(ca.clone()));
    let fetched = fresh.get_manifest(&r).unwrap();
    assert_eq!(fetched.bytes, single.manifest);
    let manifest: oci::Manifest = serde_json::from_slice(&fetched.bytes).unwrap();
    assert_eq!(
        read_all(fresh.fetch_blob(&r, &manifest.layers[0].digest, 0).unwrap()),
        single.layer
    );
    // Pushing works with the same credentials.
    let data = b"pushed over tls".to_vec();
    let d = Digest::of(&data);
    fresh
        .upload_blob(&r, &d, data.len() as u64, &mut data.as_slice())
        .unwrap();
    assert!(fresh.blob_exists(&r, &d).unwrap());

    assert!(fresh.logout(&registry.host()).unwrap());
    assert!(!fresh.logout(&registry.host()).unwrap());
    let after = client_with(work.path(), |o| o.ca_file = Some(ca.clone()));
    assert!(matches!(
        after.get_manifest(&r),
        Err(RegistryError::AuthenticationRequired { .. })
    ));
}

// ------------------------------------------------------ in-process fakes

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct SeenRequest {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

impl SeenRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

struct FakeResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl FakeResponse {
    fn new(status: u16) -> FakeResponse {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> FakeResponse {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> FakeResponse {
        self.body = body.into();
        self
    }
}

type Handler = dyn Fn(&SeenRequest) -> FakeResponse + Send + Sync;

/// A minimal HTTP/1.1 server on loopback: one response per connection.
struct FakeServer {
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(handler: impl Fn(&SeenRequest) -> FakeResponse + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let handler = handler.clone();
                    let seen = seen.clone();
                    std::thread::spawn(move || serve_connection(stream, &*handler, &seen));
                }
            })
        };
        FakeServer {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(mut stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<SeenRequest>>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // A TLS handshake (the client probing for HTTPS on loopback): answer
    // in plain HTTP, as a plain HTTP server does.
    let mut first = [0u8; 1];
    if stream.peek(&mut first).unwrap_or(0) == 0 || first[0] == 0x16 {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = SeenRequest {
        method,
        path,
        headers,
    };
    seen.lock().unwrap().push(request.clone());
    let response = handler(&request);
    let mut out = format!("HTTP/1.1 {} Fake\r\n", response.status);
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = response.headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed {
        out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let _ = stream.write_all(out.as_bytes());
    if request.method != "HEAD" {
        let _ = stream.write_all(&response.body);
    }
    let _ = stream.flush();
}

fn query_param(path: &str, key: &str) -> Vec<String> {
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

const MANIFEST_BODY: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;

#[test]
fn bearer_token_flow_with_cached_tokens() {
    let token_requests = Arc::new(AtomicUsize::new(0));
    let token_server = {
        let count = token_requests.clone();
        FakeServer::start(move |req| {
            count.fetch_add(1, Ordering::SeqCst);
            // bob:hunter2
            if req.header("authorization") != Some("Basic Ym9iOmh1bnRlcjI=") {
                return FakeResponse::new(401)
                    .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#);
            }
            assert_eq!(query_param(&req.path, "service"), ["fake-registry"]);
            assert_eq!(query_param(&req.path, "account"), ["bob"]);
            let scopes = query_param(&req.path, "scope");
            let token = if scopes.is_empty() {
                "login-token".to_string()
            } else {
                format!("token-for {}", scopes.join(" "))
            };
            FakeResponse::new(200).body(format!(r#"{{"access_token":"{token}","expires_in":300}}"#))
        })
    };
    let realm = format!("http://{}/token", token_server.host());
    let registry = {
        let realm = realm.clone();
        FakeServer::start(move |req| {
            let challenge = |scope: Option<&str>| {
                let mut value = format!(r#"Bearer realm="{realm}",service="fake-registry""#);
                if let Some(scope) = scope {
                    value.push_str(&format!(r#",scope="{scope}""#));
                }
                FakeResponse::new(401)
                    .header("WWW-Authenticate", value)
                    .header("Content-Type", "application/json")
                    .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
            };
            let auth = req.header("authorization").unwrap_or_default();
            if req.path == "/v2/" {
                return if auth == "Bearer login-token" {
                    FakeResponse::new(200)
                } else {
                    challenge(None)
                };
            }
            if req.path.starts_with("/v2/team/app/manifests/") {
                return if auth == "Bearer token-for repository:team/app:pull" {
                    FakeResponse::new(200)
                        .header("Content-Type", oci::OCI_MANIFEST)
                        .header(
                            "Docker-Content-Digest",
                            Digest::of(MANIFEST_BODY.as_bytes()).to_string(),
                        )
                        .body(MANIFEST_BODY)
                } else {
                    challenge(Some("repository:team/app:pull"))
                };
            }
            FakeResponse::new(404)
        })
    };

    let work = tempfile::tempdir().unwrap();
    let r = Reference::parse(&format!("{}/team/app:1", registry.host())).unwrap();

    // Anonymous: the token server refuses, so authentication is required.
    let anonymous = client_with(work.path(), |_| {});
    let err = anonymous.get_manifest(&r).unwrap_err();
    assert!(
        matches!(err, RegistryError::AuthenticationRequired { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad credentials"), "{err}");

    // Wrong password at login.
    let err = anonymous
        .login(&registry.host(), "bob", "nope")
        .unwrap_err();
    assert!(matches!(err, RegistryError::LoginFailed { .. }), "{err}");

    // Right password: login stores it, then pulls reuse one token per scope.
    let client = client_with(work.path(), |_| {});
    client.login(&registry.host(), "bob", "hunter2").unwrap();
    let before = token_requests.load(Ordering::SeqCst);
    for _ in 0..3 {
        let fetched = client.get_manifest(&r).unwrap();
        assert_eq!(fetched.bytes, MANIFEST_BODY.as_bytes());
    }
    assert_eq!(
        token_requests.load(Ordering::SeqCst) - before,
        1,
        "token cached"
    );
    let manifest_requests: Vec<SeenRequest> = registry
        .requests()
        .into_iter()
        .filter(|q| q.path.contains("/manifests/"))
        .collect();
    let last = manifest_requests.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some("Bearer token-for repository:team/app:pull")
    );
    assert!(last.header("accept").unwrap().contains(oci::OCI_INDEX));

    // A second client reads the stored credentials from config.json.
    let second = client_with(work.path(), |_| {});
    assert_eq!(
        second.get_manifest(&r).unwrap().bytes,
        MANIFEST_BODY.as_bytes()
    );
}

#[test]
fn blob_redirects_drop_credentials_on_other_hosts() {
    let blob = b"blob bytes served by storage".to_vec();
    let digest = Digest::of(&blob);
    let storage = {
        let blob = blob.clone();
        FakeServer::start(move |req| {
            if let Some(range) = req.header("range") {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                return FakeResponse::new(206)
                    .header(
                        "Content-Range",
                        format!("bytes {start}-{}/{}", blob.len() - 1, blob.len()),
                    )
                    .body(blob[start..].to_vec());
            }
            FakeResponse::new(200).body(blob.clone())
        })
    };
    let storage_url = format!("http://{}/bucket/object?sig=abc", storage.host());
    let registry = FakeServer::start(move |req| {
        if req.path == "/v2/" {
            return FakeResponse::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        if req.header("authorization").is_none() {
            return FakeResponse::new(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        if req.path.starts_with("/v2/a/blobs/") {
            // Relative first, then off to storage.
            return FakeResponse::new(307).header("Location", "/v2/a/redirected");
        }
        if req.path == "/v2/a/redirected" {
            return FakeResponse::new(302).header("Location", storage_url.clone());
        }
        FakeResponse::new(404)
    });
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |_| {});
    client.set_credentials(
        &registry.host(),
        Credentials {
            username: "u".into(),
            password: "p".into(),
        },
    );
    let r = Reference::parse(&format!("{}/a:1", registry.host())).unwrap();
    assert_eq!(read_all(client.fetch_blob(&r, &digest, 0).unwrap()), blob);
    let resumed = client.fetch_blob(&r, &digest, 5).unwrap();
    assert_eq!(resumed.offset, 5);
    assert_eq!(read_all(resumed), blob[5..]);

    // The same-host hop kept the credentials; storage never saw them.
    let redirected = registry
        .requests()
        .into_iter()
        .find(|q| q.path == "/v2/a/redirected")
        .unwrap();
    assert_eq!(redirected.header("authorization"), Some("Basic dTpw"));
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 2);
    assert!(at_storage
        .iter()
        .all(|q| q.header("authorization").is_none()));
    assert_eq!(at_storage[0].path, "/bucket/object?sig=abc");
}

#[test]
fn retries_server_errors_and_reports_ignored_ranges() {
    let failures_left = Arc::new(AtomicUsize::new(2));
    let blob = b"0123456789".to_vec();
    let digest = Digest::of(&blob);
    let registry = {
        let failures_left = failures_left.clone();
        let blob = blob.clone();
        FakeServer::start(move |req| {
            if req.path == "/v2/" {
                return FakeResponse::new(200);
            }
            if req.path.contains("/manifests/flaky") {
                if failures_left.load(Ordering::SeqCst) > 0 {
                    failures_left.fetch_sub(1, Ordering::SeqCst);
                    return FakeResponse::new(503).body("try later");
                }
                return FakeResponse::new(200)
                    .header("Content-Type", oci::OCI_MANIFEST)
                    .body(MANIFEST_BODY);
            }
            if req.path.contains("/manifests/broken") {
                return FakeResponse::new(500)
                    .body(r#"{"errors":[{"code":"UNKNOWN","message":"storage on fire"}]}"#);
            }
            if req.path.contains("/blobs/") {
                // Ignores Range.
                return FakeResponse::new(200).body(blob.clone());
            }
            FakeResponse::new(404)
        })
    };
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |_| {});
    let flaky = Reference::parse(&format!("{}/x:flaky", registry.host())).unwrap();
    assert_eq!(
        client.get_manifest(&flaky).unwrap().bytes,
        MANIFEST_BODY.as_bytes()
    );
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);

    let broken = Reference::parse(&format!("{}/x:broken", registry.host())).unwrap();
    let err = client.get_manifest(&broken).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: GET /v2/x/manifests/broken failed with HTTP 500: unknown: storage on fire",
            registry.host()
        )
    );
    let attempts = registry
        .requests()
        .iter()
        .filter(|q| q.path.contains("broken"))
        .count();
    assert_eq!(attempts, ClientOptions::default().max_attempts as usize);

    let fetched = client.fetch_blob(&flaky, &digest, 4).unwrap();
    assert_eq!(fetched.offset, 0, "the registry restarted from 0");
    assert_eq!(read_all(fetched), blob);
}

#[test]
fn manifests_are_checked() {
    let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 10];
    let registry = FakeServer::start(move |req| {
        let path = req.path.as_str();
        if path == "/v2/" {
            return FakeResponse::new(200);
        }
        if path.ends_with("/manifests/huge") {
            return FakeResponse::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .body(big.clone());
        }
        if path.ends_with("/manifests/huge-chunked") {
            // No length announced: only reading tells.
            let mut body = format!("{:x}\r\n", big.len()).into_bytes();
            body.extend_from_slice(&big);
            body.extend_from_slice(b"\r\n0\r\n\r\n");
            return FakeResponse::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .header("Transfer-Encoding", "chunked")
                .body(body);
        }
        if path.ends_with("/manifests/lying") {
            return FakeResponse::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .header("Docker-Content-Digest", Digest::of(b"other").to_string())
                .body(MANIFEST_BODY);
        }
        if path.ends_with("/manifests/schema1") {
            return FakeResponse::new(200)
                .header(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
                .body(r#"{"schemaVersion":1}"#);
        }
        if path.contains("/manifests/sha256:") {
            // Whatever was asked, the same body.
            return FakeResponse::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .body(MANIFEST_BODY);
        }
        FakeResponse::new(404)
    });
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |_| {});
    let at = |tag: &str| Reference::parse(&format!("{}/m:{tag}", registry.host())).unwrap();

    assert!(matches!(
        client.get_manifest(&at("huge")),
        Err(RegistryError::ManifestTooLarge { .. })
    ));
    assert!(matches!(
        client.get_manifest(&at("huge-chunked")),
        Err(RegistryError::ManifestTooLarge { .. })
    ));
    let err = client.get_manifest(&at("lying")).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("Docker-Content-Digest"), "{err}");
    let err = client.get_manifest(&at("schema1")).unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { .. }),
        "{err}"
    );

    // Pinned: the body must hash to the pinned digest.
    let right = at("x").by_digest(Digest::of(MANIFEST_BODY.as_bytes()));
    assert_eq!(
        client.get_manifest(&right).unwrap().bytes,
        MANIFEST_BODY.as_bytes()
    );
    let wrong = at("x").by_digest(Digest::of(b"pinned elsewhere"));
    let err = client.get_manifest(&wrong).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[test]
fn stalled_reads_time_out() {
    // Accepts, reads the request, then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let work = tempfile::tempdir().unwrap();
    let client = client_with(work.path(), |o| {
        o.read_timeout = Duration::from_millis(300);
        o.max_attempts = 2;
    });
    let r = Reference::parse(&format!("127.0.0.1:{port}/x:1")).unwrap();
    let started = Instant::now();
    let err = client.get_manifest(&r).unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
