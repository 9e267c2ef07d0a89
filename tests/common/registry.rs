//! Registries for pull tests, all on loopback: a real `docker-registry`
//! (plain HTTP, or TLS with htpasswd Basic auth), a recording proxy in front
//! of it that can break responses on purpose (cut, corrupt, stall, answer
//! itself), a token server for Bearer auth, and a minimal HTTP client to put
//! images into a registry exactly as built (skopeo recompresses
//! uncompressed layers on the way to a registry).

use super::image::{blob_path, write_oci_layout, Image, LayoutNames, OCI_INDEX};
use super::lstore::{Lstore, Output};
use super::tarball::sha256_digest;
use serde_json::json;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a helper waits for a peer before giving up (a bound, not a
/// pause: every wait below ends as soon as its condition holds).
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

// ------------------------------------------------------------ docker-registry

/// What a `docker-registry` serves besides plain anonymous HTTP.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Demand Basic auth checked against this htpasswd file.
    pub htpasswd: Option<PathBuf>,
}

/// A `docker-registry` (CNCF distribution) child with its storage in a temp
/// dir; killed on drop. Its stderr (access log included) goes to `log()`.
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn start() -> Registry {
        Registry::start_with(RegistryConfig::default())
    }

    pub fn start_with(config: RegistryConfig) -> Registry {
        // A free port can be taken by someone else before the registry
        // binds it: then it exits, and another port is tried.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("lstore-registry-")
                .tempdir()
                .expect("registry dir");
            let mut registry = Registry::spawn(&config, dir, free_port());
            if registry.wait_ready() {
                return registry;
            }
        }
        panic!("docker-registry could not bind a port in 5 attempts");
    }

    fn spawn(config: &RegistryConfig, dir: TempDir, port: u16) -> Registry {
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = &config.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ));
        }
        if let Some(htpasswd) = &config.htpasswd {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lstore-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, yaml).expect("registry config");
        let log = fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        Registry { child, port, dir }
    }

    /// Waits until the registry says it listens on its port (it logs that
    /// once the socket is bound, so a port owned by another process is
    /// never mistaken for it). `false` when it exited because the port was
    /// taken.
    fn wait_ready(&mut self) -> bool {
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            if self.log().contains(&listening) {
                return true;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                if log.contains("address already in use") {
                    return false;
                }
                panic!("docker-registry exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the registry printed so far (access log lines included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `skopeo copy [extra] oci:LAYOUT:TAG docker://HOST/DEST` (TLS not
    /// verified; `extra` may add `--all`, `--format v2s2`, credentials).
    pub fn push_layout(&self, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
        let src = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://{}/{dest}", self.host());
        let mut args = vec![
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ];
        args.extend_from_slice(extra);
        args.push(&src);
        args.push(&dest);
        let output = Command::new("skopeo")
            .args(&args)
            .output()
            .expect("run skopeo");
        assert!(
            output.status.success(),
            "skopeo {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Writes `image` to a layout in `work` and pushes it with skopeo as
    /// `dest` (`name:tag`).
    pub fn push_image(&self, work: &Path, image: &Image, dest: &str, extra: &[&str]) {
        let layout = tempfile::Builder::new()
            .prefix("layout-")
            .tempdir_in(work)
            .expect("layout dir");
        write_oci_layout(layout.path(), &[(image, LayoutNames::ref_name("src"))]);
        self.push_layout(layout.path(), "src", dest, extra);
    }

    /// Uploads the blobs and the manifest of `image` byte for byte (plain
    /// HTTP registries only): what skopeo cannot do for uncompressed layers
    /// or zstd in Docker schema2. Returns the manifest digest.
    pub fn upload(&self, repo: &str, tag: &str, image: &Image) -> String {
        let addr = self.host();
        for (digest, bytes) in image.blobs() {
            if digest == image.manifest_digest {
                continue;
            }
            upload_blob(&addr, repo, &digest, bytes);
        }
        self.put_manifest(repo, tag, image.manifest_media_type(), &image.manifest);
        image.manifest_digest.clone()
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or a digest) of a
    /// manifest or index whose blobs and children are there already.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let response = http_call(
            &self.host(),
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            bytes,
        );
        assert_eq!(
            response.status,
            201,
            "PUT manifest {repo}:{reference}: {}",
            response.text()
        );
    }

    /// The manifest (or index) `repo:reference` as the registry serves it:
    /// (bytes, media type, sha256 digest). Plain HTTP registries only.
    pub fn manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String, String) {
        let accept = [
            OCI_INDEX,
            super::image::OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.list.v2+json",
            super::image::DOCKER_MANIFEST,
        ]
        .join(", ");
        let response = http_call(
            &self.host(),
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", &accept)],
            b"",
        );
        assert_eq!(
            response.status,
            200,
            "GET manifest {repo}:{reference}: {}",
            response.text()
        );
        let media_type = response
            .header("content-type")
            .unwrap_or_default()
            .to_string();
        let digest = sha256_digest(&response.body);
        (response.body, media_type, digest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST an upload session, then PUT the bytes with their digest.
fn upload_blob(addr: &str, repo: &str, digest: &str, bytes: &[u8]) {
    let started = http_call(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(started.status, 202, "start upload: {}", started.text());
    let location = started.header("location").expect("upload Location");
    // Locations are absolute URLs or paths; only the path matters here.
    let path = match location.find("://") {
        Some(i) => {
            let rest = &location[i + 3..];
            &rest[rest.find('/').unwrap_or(rest.len())..]
        }
        None => location,
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let target = format!("{path}{separator}digest={}", digest.replace(':', "%3A"));
    let done = http_call(
        addr,
        "PUT",
        &target,
        &[("Content-Type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(done.status, 201, "upload {digest}: {}", done.text());
}

// --------------------------------------------------------------- TLS and auth

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a throwaway CA and a certificate for `IP:127.0.0.1` in `dir`.
pub fn make_tls(dir: &Path) -> TlsFiles {
    let path = |name: &str| dir.join(name);
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let (cert, key, csr) = (path("server.pem"), path("server.key"), path("server.csr"));
    let ext = path("san.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write san.ext");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=lstore test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    TlsFiles { ca, cert, key }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An htpasswd file (bcrypt, as docker-registry requires) with one user.
pub fn make_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(output.status.success(), "htpasswd failed");
    let path = dir.join("htpasswd");
    fs::write(&path, &output.stdout).expect("write htpasswd");
    path
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ------------------------------------------------------------- HTTP plumbing

/// A request as a test server or the proxy received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// How many requests with the same method and path (query ignored)
    /// came before this one.
    pub nth: usize,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }

    /// The digest of a `GET /v2/<name>/blobs/<digest>`.
    pub fn blob_get(&self) -> Option<&str> {
        if self.method != "GET" {
            return None;
        }
        let (_, digest) = self.path().rsplit_once("/blobs/")?;
        digest.starts_with("sha256:").then_some(digest)
    }

    pub fn is_manifest_get(&self) -> bool {
        self.method == "GET" && self.path().contains("/manifests/")
    }

    /// The query parameter `key` (percent-decoded), every occurrence.
    pub fn query(&self, key: &str) -> Vec<String> {
        let Some((_, query)) = self.target.split_once('?') else {
            return Vec::new();
        };
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads a message head (start line + headers) up to the blank line.
/// `None` when the peer sent something that is not HTTP (a TLS hello) or
/// closed the connection.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    // Requests and status lines start with an upper-case letter; a TLS
    // hello does not, and may hold no newline to wait for.
    match reader.fill_buf() {
        Ok(buf) if buf.first().is_some_and(u8::is_ascii_uppercase) => {}
        _ => return None,
    }
    let mut start = String::new();
    let mut headers = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return None;
        }
        total += n;
        if total > 64 * 1024 {
            return None;
        }
        let line = String::from_utf8(line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']);
        if start.is_empty() {
            if line.is_empty() || !line.is_ascii() {
                return None;
            }
            start = line.to_string();
            continue;
        }
        if line.is_empty() {
            return Some((start, headers));
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// A response read by `http_call`.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error answer: `status`, and `code` as the first error of
    /// the spec's JSON body.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.error_code(), code, "{self:?}");
    }

    /// The `code` of the first error of a distribution-spec error body.
    pub fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", self.text()));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {v}"))
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

fn owned_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The body of a chunked message.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&data[..end]);
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        data = &data[end + 2..];
        out.extend_from_slice(&data[..size.min(data.len())]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// One plain-HTTP request on a fresh connection (`Connection: close`).
/// `headers` may frame the body themselves (`Transfer-Encoding: chunked`).
pub fn http_call(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .expect("timeout");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // A body framed by the caller (chunked) has no length of ours.
    if find_header(&owned_headers(headers), "transfer-encoding").is_none() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    // A server may answer (413, say) and close before it read the whole
    // body: its answer is what counts.
    let _ = stream.write_all(body);
    let mut reader = BufReader::new(stream);
    let (status_line, headers) =
        read_head(&mut reader).unwrap_or_else(|| panic!("{method} {target}: no HTTP response"));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut body = Vec::new();
    if method != "HEAD" {
        match find_header(&headers, "content-length").and_then(|l| l.parse::<u64>().ok()) {
            Some(len) => {
                reader
                    .take(len)
                    .read_to_end(&mut body)
                    .expect("read response body");
            }
            None => {
                reader.read_to_end(&mut body).expect("read response body");
                if find_header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"))
                {
                    body = dechunk(&body);
                }
            }
        }
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Writes a whole response and closes the connection.
fn respond(stream: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Handles one accepted connection: the request head was read already.
type Handler = dyn Fn(Seen, BufReader<TcpStream>) + Send + Sync;

/// An accept loop on a loopback port, one thread per connection; stopped
/// (and its stalled connections released) on drop.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let accept = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, seen, counts) = (handler.clone(), seen.clone(), counts.clone());
                    std::thread::spawn(move || {
                        // A backstop: no connection outlives a stuck peer.
                        let _ = stream.set_read_timeout(Some(PEER_TIMEOUT));
                        let mut reader = BufReader::new(stream);
                        // TLS hellos and garbage are closed at once, so a
                        // client probing for HTTPS falls back quickly.
                        let Some((start, headers)) = read_head(&mut reader) else {
                            return;
                        };
                        let mut parts = start.split_whitespace();
                        let method = parts.next().unwrap_or_default().to_string();
                        let target = parts.next().unwrap_or_default().to_string();
                        let key =
                            format!("{method} {}", target.split('?').next().unwrap_or_default());
                        let nth = {
                            let mut counts = counts.lock().expect("counts");
                            let n = counts.entry(key).or_insert(0);
                            *n += 1;
                            *n - 1
                        };
                        let request = Seen {
                            method,
                            target,
                            headers,
                            nth,
                            at: Instant::now(),
                        };
                        seen.lock().expect("seen").push(request.clone());
                        handler(request, reader);
                    });
                }
            })
        };
        Server {
            port,
            stop,
            seen,
            accept: Some(accept),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

// ----------------------------------------------------------------- the proxy

/// What the proxy does with one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward it and its response untouched.
    Pass,
    /// Forward the response head and this many body bytes, then close the
    /// connection.
    CutAfter(u64),
    /// Flip the body byte at this offset (all bits inverted).
    Corrupt(u64),
    /// Forward the head and this many body bytes, then send nothing more
    /// while keeping the connection open.
    StallAfter(u64),
    /// Forward the request without its `Range` header (a registry that
    /// ignores ranges).
    DropRange,
    /// Answer without asking the registry.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Fault {
    /// A distribution-style JSON error answer.
    pub fn error(status: u16, code: &str, message: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: json!({"errors": [{"code": code, "message": message}]})
                .to_string()
                .into_bytes(),
        }
    }
}

type Rule = dyn Fn(&Seen) -> Fault + Send + Sync;

/// A recording HTTP proxy in front of a plain-HTTP registry, one request per
/// connection. Every request is recorded before it is forwarded, so counts
/// are exact once the client has finished.
pub struct Proxy {
    server: Server,
}

impl Proxy {
    /// A proxy that forwards everything.
    pub fn pass(upstream: &str) -> Proxy {
        Proxy::start(upstream, |_| Fault::Pass)
    }

    /// A proxy that asks `rule` what to do with each request.
    pub fn start(upstream: &str, rule: impl Fn(&Seen) -> Fault + Send + Sync + 'static) -> Proxy {
        let upstream = upstream.to_string();
        let rule: Arc<Rule> = Arc::new(rule);
        let handler: Arc<Handler> = Arc::new(move |request, reader| {
            let fault = rule(&request);
            forward(&upstream, request, reader, fault);
        });
        let server = Server::start(handler);
        Proxy { server }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.server.seen()
    }

    /// Forgets what was recorded (counts for `nth` continue).
    pub fn clear(&self) {
        self.server.seen.lock().expect("seen").clear();
    }

    /// Digests of the blob GETs so far, in order.
    pub fn blob_gets(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter_map(|s| s.blob_get().map(str::to_string))
            .collect()
    }

    pub fn manifest_gets(&self) -> usize {
        self.seen().iter().filter(|s| s.is_manifest_get()).count()
    }
}

fn forward(upstream: &str, request: Seen, mut client_reader: BufReader<TcpStream>, fault: Fault) {
    let mut client = client_reader.get_ref().try_clone().expect("clone stream");
    if let Fault::Respond {
        status,
        headers,
        body,
    } = &fault
    {
        respond(&mut client, *status, headers, body);
        return;
    }
    let body_len = find_header(&request.headers, "content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if (&mut client_reader)
        .take(body_len)
        .read_to_end(&mut body)
        .is_err()
    {
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream) else {
        respond(&mut client, 502, &[], b"upstream unreachable");
        return;
    };
    let _ = up.set_read_timeout(Some(PEER_TIMEOUT));
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        let drop = name.eq_ignore_ascii_case("connection")
            || (matches!(fault, Fault::DropRange) && name.eq_ignore_ascii_case("range"));
        if !drop {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    if up.write_all(head.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut up_reader = BufReader::new(up);
    let Some((status_line, headers)) = read_head(&mut up_reader) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let mut head = format!("{status_line}\r\n");
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    if client.write_all(head.as_bytes()).is_err() {
        return;
    }
    let limit = match fault {
        Fault::CutAfter(n) | Fault::StallAfter(n) => Some(n),
        _ => None,
    };
    let corrupt_at = match fault {
        Fault::Corrupt(at) => Some(at),
        _ => None,
    };
    let mut offset = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut want = buf.len();
        if let Some(limit) = limit {
            let left = limit.saturating_sub(offset);
            if left == 0 {
                break;
            }
            want = want.min(left as usize);
        }
        let n = match up_reader.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = corrupt_at {
            if (offset..offset + n as u64).contains(&at) {
                buf[(at - offset) as usize] ^= 0xff;
            }
        }
        if client.write_all(&buf[..n]).is_err() {
            return;
        }
        offset += n as u64;
    }
    let _ = client.flush();
    if let Fault::StallAfter(_) = fault {
        // Hold the connection open, sending nothing, until the client gives
        // up (or the backstop read timeout ends it).
        let mut sink = [0u8; 1024];
        while let Ok(n) = client.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

// ------------------------------------------------------------ token server

/// A token endpoint (distribution token spec) that hands out `token` to
/// holders of the given Basic credentials, or to anyone when there are
/// none.
pub struct TokenServer {
    server: Server,
}

impl TokenServer {
    pub fn start(credentials: Option<(&str, &str)>, token: &str) -> TokenServer {
        let expected = credentials.map(|(u, p)| basic_auth(u, p));
        let token = token.to_string();
        let handler: Arc<Handler> = Arc::new(move |request, reader| {
            let mut stream = reader.into_inner();
            let authorized = match &expected {
                None => true,
                Some(want) => request.header("authorization") == Some(want.as_str()),
            };
            if !authorized {
                let body = json!({"errors": [{"code": "UNAUTHORIZED",
                    "message": "authentication required"}]});
                respond(
                    &mut stream,
                    401,
                    &[("Content-Type".into(), "application/json".into())],
                    body.to_string().as_bytes(),
                );
                return;
            }
            let body = json!({"token": token, "access_token": token, "expires_in": 300});
            respond(
                &mut stream,
                200,
                &[("Content-Type".into(), "application/json".into())],
                body.to_string().as_bytes(),
            );
        });
        TokenServer {
            server: Server::start(handler),
        }
    }

    /// The realm URL to name in a `WWW-Authenticate: Bearer` challenge.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.server.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.server.seen()
    }
}

/// A proxy rule that demands `Authorization: Bearer <token>` on every
/// request, answering 401 with a challenge naming `realm` otherwise.
pub fn bearer_gate(
    realm: String,
    service: &'static str,
    token: String,
) -> impl Fn(&Seen) -> Fault + Send + Sync {
    move |request: &Seen| {
        if request.header("authorization") == Some(format!("Bearer {token}").as_str()) {
            return Fault::Pass;
        }
        let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
        // Name the scope for repository requests, as registries do.
        if let Some(rest) = request.path().strip_prefix("/v2/") {
            let name = rest
                .rsplit_once("/manifests/")
                .or_else(|| rest.rsplit_once("/blobs/"))
                .map(|(name, _)| name);
            if let Some(name) = name {
                challenge.push_str(&format!(",scope=\"repository:{name}:pull\""));
            }
        }
        let body = json!({"errors": [{"code": "UNAUTHORIZED",
            "message": "authentication required"}]});
        Fault::Respond {
            status: 401,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("WWW-Authenticate".into(), challenge),
                (
                    "Docker-Distribution-API-Version".into(),
                    "registry/2.0".into(),
                ),
            ],
            body: body.to_string().into_bytes(),
        }
    }
}

// ------------------------------------------------------------- the client

/// Runs `lstore` as a registry client: `DOCKER_CONFIG` in a private temp
/// dir (never the user's credentials), no inherited `SSL_CERT_FILE` or
/// `LSTORE_HTTP_TIMEOUT`, plus the variables set with `env`.
pub struct Client {
    docker_config: TempDir,
    env: Vec<(String, String)>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            docker_config: tempfile::Builder::new()
                .prefix("lstore-docker-config-")
                .tempdir()
                .expect("docker config dir"),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> Client {
        self.set_env(name, value);
        self
    }

    /// Sets (or replaces) a variable for the commands run from now on.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
    }

    pub fn unset_env(&mut self, name: &str) {
        self.env.retain(|(n, _)| n != name);
    }

    /// The directory `DOCKER_CONFIG` names.
    pub fn docker_config(&self) -> &Path {
        self.docker_config.path()
    }

    fn command(&self, store: &Lstore, args: &[&str]) -> Command {
        let mut command = store.command(args);
        command
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("SSL_CERT_FILE")
            .env_remove("LSTORE_HTTP_TIMEOUT")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Runs `lstore ARGS…` with `stdin` as its standard input.
    pub fn run_with_input(&self, store: &Lstore, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(store, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lstore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        store.wait(args, child)
    }

    pub fn run(&self, store: &Lstore, args: &[&str]) -> Output {
        let child = self
            .command(store, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lstore");
        store.wait(args, child)
    }

    /// A command that must succeed.
    pub fn ok(&self, store: &Lstore, args: &[&str]) -> Output {
        let out = self.run(store, args);
        assert!(
            out.success(),
            "lstore {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            out.stdout,
            out.stderr
        );
        out
    }

    /// A command that must fail with one `error: …` line; returns it.
    pub fn fails(&self, store: &Lstore, args: &[&str]) -> String {
        let out = self.run(store, args);
        assert!(
            !out.success(),
            "lstore {} succeeded but should have failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        super::lstore::assert_one_line_error(&args.join(" "), &out);
        out.stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    }

    /// `lstore pull -q REF [extra…]`, which must succeed.
    pub fn pull(&self, store: &Lstore, reference: &str, extra: &[&str]) -> Output {
        let mut args = vec!["pull", "-q"];
        args.extend_from_slice(extra);
        args.push(reference);
        self.ok(store, &args)
    }
}

// ------------------------------------------------------- multi-platform

/// Writes an OCI layout whose index.json names (as `tag`) one image index
/// listing `images` with their platforms (`variant` when given).
pub fn write_platform_index_layout(dir: &Path, images: &[(&Image, Option<&str>)], tag: &str) {
    write_oci_layout(dir, &[]);
    let mut manifests = Vec::new();
    for (image, variant) in images {
        for (digest, bytes) in image.blobs() {
            fs::write(blob_path(dir, &digest), bytes).expect("write blob");
        }
        let mut platform = json!({"os": image.os, "architecture": image.architecture});
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
        }
        manifests.push(json!({
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": platform,
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let index = serde_json::to_vec(&index).expect("index json");
    let digest = sha256_digest(&index);
    fs::write(blob_path(dir, &digest), &index).expect("write index");
    let top = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&top).expect("index.json"),
    )
    .expect("write index.json");
}
