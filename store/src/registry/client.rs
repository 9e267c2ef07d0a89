//! The HTTP side of the registry client: transport choice (HTTPS, or plain
//! HTTP for loopback and `--plain-http` registries), TLS roots, timeouts,
//! retries, redirects and authentication.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{self, Method, Response};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::auth::{
    basic_header, parse_www_authenticate, preferred_challenge, AuthCache, Challenge, HostAuth,
    Scopes, TokenResponse,
};
use super::credentials::{normalize_registry, Credentials, DockerConfig};
use super::error::{render_error_body, RegistryError};
use crate::reference::{is_loopback_domain, DOCKER_HUB_API_HOST, DOCKER_HUB_DOMAIN};

/// How a `RegistryClient` connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Allow plain HTTP with every registry (HTTPS is still tried first).
    /// Loopback registries always allow it, as with Docker.
    pub plain_http: bool,
    /// Extra trusted CA certificates (PEM), added to the system's.
    pub ca_file: Option<PathBuf>,
    /// A connection not made in this time fails.
    pub connect_timeout: Duration,
    /// A read that stalls this long fails.
    pub read_timeout: Duration,
    /// Attempts for a request that meets a connection reset or a 5xx/429.
    pub max_attempts: u32,
    /// First pause between attempts; it doubles each time (capped at 8 s).
    pub retry_delay: Duration,
    /// The Docker client configuration holding credentials; `None` is
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub docker_config: Option<DockerConfig>,
    /// Sent as `User-Agent`.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            plain_http: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_attempts: 4,
            retry_delay: Duration::from_millis(500),
            docker_config: None,
            user_agent: format!("lstore/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

const MAX_REDIRECTS: usize = 10;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
/// Error bodies are read up to this size for the message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Where Debian (and most distributions) keep the system CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A distribution-API client. Cheap to share between threads: pulls fetch
/// several blobs at once through one client.
pub struct RegistryClient {
    options: ClientOptions,
    /// Honours `HTTPS_PROXY`/`NO_PROXY`.
    agent: Agent,
    /// For loopback hosts, which are never proxied.
    direct_agent: Agent,
    docker_config: Option<DockerConfig>,
    /// `https://host` or `http://host` per registry host, once known.
    base_urls: Mutex<HashMap<String, String>>,
    /// Credentials given to `login` or read from the config file.
    credentials: Mutex<HashMap<String, Option<Credentials>>>,
    auth: AuthCache,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One request to a registry, before authentication.
pub(super) struct Call<'a> {
    pub method: Method,
    /// The registry API host (`registry-1.docker.io`, `127.0.0.1:5000`).
    pub host: &'a str,
    /// `/v2/…`, or an absolute URL (an upload `Location`).
    pub target: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub scopes: Scopes,
    /// Sent as is; `None` for bodiless methods.
    pub body: Option<&'a [u8]>,
    /// Whether repeating the request after a reset or a 5xx is harmless.
    pub idempotent: bool,
}

impl RegistryClient {
    /// A client with these options (reads the CA files it names).
    pub fn new(options: ClientOptions) -> Result<RegistryClient, RegistryError> {
        let system = system_bundle(std::env::var_os("SSL_CERT_FILE"));
        let tls = tls_config(system.as_deref(), options.ca_file.as_deref())?;
        let build = |direct: bool| {
            let mut config = Agent::config_builder()
                .http_status_as_error(false)
                // Redirects are followed here, to drop credentials when
                // they lead to another host.
                .max_redirects(0)
                .timeout_connect(Some(options.connect_timeout))
                .timeout_per_read(Some(options.read_timeout))
                .timeout_per_write(Some(options.read_timeout))
                .user_agent(options.user_agent.as_str())
                .accept_encoding("identity")
                .tls_config(tls.clone());
            if direct {
                config = config.proxy(None);
            }
            config.build().new_agent()
        };
        let docker_config = options
            .docker_config
            .clone()
            .or_else(DockerConfig::default_location);
        Ok(RegistryClient {
            agent: build(false),
            direct_agent: build(true),
            docker_config,
            base_urls: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            auth: AuthCache::default(),
            options,
        })
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Uses these credentials for `registry` for the client's life instead
    /// of the config file's.
    pub(crate) fn set_credentials(&self, registry: &str, credentials: Credentials) {
        lock(&self.credentials).insert(credential_host(registry), Some(credentials));
    }

    /// Logs in to `registry` (`docker.io`, `127.0.0.1:5000`, a URL): checks
    /// the credentials against the registry, then stores them in the Docker
    /// config file as `docker login` does. Returns the normalised registry.
    pub fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<String, RegistryError> {
        let registry = normalize_registry(registry)?;
        let host = api_host_of(&registry);
        let credentials = Credentials {
            username: username.to_string(),
            password: password.to_string(),
        };
        self.verify_credentials(&host, &credentials)?;
        let config = self
            .docker_config
            .as_ref()
            .ok_or_else(|| RegistryError::Credentials {
                path: PathBuf::from("~/.docker/config.json"),
                reason: "neither DOCKER_CONFIG nor HOME is set".to_string(),
            })?;
        config.store(&registry, &credentials)?;
        self.set_credentials(&registry, credentials);
        Ok(registry)
    }

    /// Removes stored credentials for `registry`; `false` when there were
    /// none.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        let registry = normalize_registry(registry)?;
        lock(&self.credentials).remove(&credential_host(&registry));
        match &self.docker_config {
            Some(config) => config.remove(&registry),
            None => Ok(false),
        }
    }

    fn verify_credentials(
        &self,
        host: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        let base = self.base_url(host)?;
        let login_failed = |detail: String| RegistryError::LoginFailed {
            host: host.to_string(),
            detail: if detail.is_empty() {
                "incorrect username or password".to_string()
            } else {
                detail
            },
        };
        if self.auth.host_auth(host).is_none() {
            // How the host authenticates: its answer to an anonymous /v2/.
            let url = format!("{base}/v2/");
            let response = self.send(host, &Method::GET, &url, &[], None, None, true)?;
            self.learn_host_auth(host, &response);
        }
        match self.auth.host_auth(host) {
            Some(HostAuth::Bearer { realm, service }) => {
                match self.fetch_token(
                    host,
                    &realm,
                    service.as_deref(),
                    &Scopes::none(),
                    Some(credentials),
                ) {
                    Ok(_) => Ok(()),
                    Err(RegistryError::AuthenticationRequired { detail, .. })
                    | Err(RegistryError::AccessDenied { detail, .. }) => Err(login_failed(detail)),
                    Err(e) => Err(e),
                }
            }
            // Basic, or a registry that asks for nothing: /v2/ with the
            // credentials must succeed.
            _ => {
                let url = format!("{base}/v2/");
                let auth = basic_header(&credentials.username, &credentials.password);
                let response = self.send(host, &Method::GET, &url, &[], Some(&auth), None, true)?;
                match response.status().as_u16() {
                    200..=299 => Ok(()),
                    401 | 403 => Err(login_failed(read_error_detail(response))),
                    status => Err(RegistryError::Status {
                        host: host.to_string(),
                        method: "GET".into(),
                        path: "/v2/".into(),
                        status,
                        detail: read_error_detail(response),
                    }),
                }
            }
        }
    }

    /// Sends `call` with authentication, retries and redirects, and returns
    /// the response whatever its status (401 after a fresh token is
    /// returned as is).
    pub(super) fn execute(&self, call: Call<'_>) -> Result<Response<Body>, RegistryError> {
        let base = self.base_url(call.host)?;
        let url = if call.target.starts_with("http://") || call.target.starts_with("https://") {
            call.target.to_string()
        } else {
            format!("{base}{}", call.target)
        };
        let mut scopes = call.scopes.clone();
        let mut challenged = false;
        loop {
            let authorization = self.authorization(call.host, &scopes)?;
            let response = self.send(
                call.host,
                &call.method,
                &url,
                &call.headers,
                authorization.as_deref(),
                call.body,
                call.idempotent,
            )?;
            if response.status() != http::StatusCode::UNAUTHORIZED || challenged {
                return Ok(response);
            }
            // Answer the challenge once: the host's scheme may have been
            // unknown, the token may have expired or lack a scope.
            challenged = true;
            let challenges = challenges_of(&response);
            match preferred_challenge(&challenges) {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                    ..
                }) => {
                    self.auth.forget_token(call.host, &scopes);
                    if let Some(scope) = scope {
                        scopes = scopes.with(scope);
                    }
                    self.auth.set_host_auth(
                        call.host,
                        HostAuth::Bearer {
                            realm: realm.clone(),
                            service: service.clone(),
                        },
                    );
                }
                Some(Challenge::Basic { .. }) => {
                    if self.credentials_for(call.host)?.is_none() {
                        return Ok(response);
                    }
                    self.auth.set_host_auth(call.host, HostAuth::Basic);
                }
                None => return Ok(response),
            }
        }
    }

    /// The `Authorization` header for a request to `host` needing `scopes`.
    fn authorization(&self, host: &str, scopes: &Scopes) -> Result<Option<String>, RegistryError> {
        match self.auth.host_auth(host) {
            None | Some(HostAuth::Anonymous) => Ok(None),
            Some(HostAuth::Basic) => Ok(self
                .credentials_for(host)?
                .map(|c| basic_header(&c.username, &c.password))),
            Some(HostAuth::Bearer { realm, service }) => {
                if let Some(token) = self.auth.token(host, scopes) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let credentials = self.credentials_for(host)?;
                let token = self.fetch_token(
                    host,
                    &realm,
                    service.as_deref(),
                    scopes,
                    credentials.as_ref(),
                )?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a token from the realm (distribution token spec) and caches it.
    fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &Scopes,
        credentials: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let realm_host = url_host(realm).unwrap_or_default().to_string();
        // Credentials and tokens travel over plain HTTP only where the
        // registry itself may be spoken to that way.
        let realm_allowed = realm.starts_with("https://")
            || (realm.starts_with("http://")
                && (is_loopback_domain(&realm_host) || self.options.plain_http));
        if !realm_allowed {
            return Err(RegistryError::InvalidResponse {
                host: host.to_string(),
                reason: format!("refusing token realm {realm:?}: not HTTPS"),
            });
        }
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        for scope in scopes.iter() {
            query.push(("scope", scope));
        }
        if let Some(c) = credentials {
            query.push(("account", &c.username));
        }
        let url = append_query(realm, &query);
        let authorization = credentials.map(|c| basic_header(&c.username, &c.password));
        let response = self.send(
            &realm_host,
            &Method::GET,
            &url,
            &[("Accept", "application/json".to_string())],
            authorization.as_deref(),
            None,
            true,
        )?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            401 => {
                return Err(RegistryError::AuthenticationRequired {
                    host: host.to_string(),
                    detail: read_error_detail(response),
                })
            }
            403 => {
                return Err(RegistryError::AccessDenied {
                    host: host.to_string(),
                    detail: read_error_detail(response),
                })
            }
            _ => {
                return Err(RegistryError::Status {
                    host: realm_host,
                    method: "GET".into(),
                    path: "token".into(),
                    status,
                    detail: read_error_detail(response),
                })
            }
        }
        let body = read_limited(response, 1024 * 1024).map_err(|e| RegistryError::Io {
            context: format!("reading a token from {realm_host}"),
            source: e,
        })?;
        let invalid = |reason: String| RegistryError::InvalidResponse {
            host: realm_host.clone(),
            reason,
        };
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("token response is not JSON: {e}")))?;
        let (token, lifetime) = parsed
            .into_token()
            .ok_or_else(|| invalid("token response has no token".to_string()))?;
        self.auth.store_token(host, scopes, token.clone(), lifetime);
        Ok(token)
    }

    /// Credentials for a registry API host, from `login`/`set_credentials`
    /// or the Docker config file (read once per host).
    fn credentials_for(&self, host: &str) -> Result<Option<Credentials>, RegistryError> {
        let key = credential_host(host);
        if let Some(known) = lock(&self.credentials).get(&key) {
            return Ok(known.clone());
        }
        let found = match &self.docker_config {
            Some(config) => config.credentials_for(&key)?,
            None => None,
        };
        lock(&self.credentials).insert(key, found.clone());
        Ok(found)
    }

    /// `https://host` or `http://host`. Only a host that may be spoken to
    /// in plain HTTP (loopback, `--plain-http`) is probed: `GET /v2/` over
    /// TLS, which a plain-HTTP server refuses in the handshake (no request
    /// reaches it), and whose answer, when TLS works, says how the host
    /// authenticates. Otherwise nothing is sent first: the first real
    /// request's 401 teaches the same (see `execute`), so an image already
    /// present costs one manifest request.
    pub(super) fn base_url(&self, host: &str) -> Result<String, RegistryError> {
        if let Some(base) = lock(&self.base_urls).get(host) {
            return Ok(base.clone());
        }
        let https = format!("https://{host}");
        let may_use_http = self.options.plain_http || is_loopback_domain(host);
        let base = if may_use_http {
            // Like Docker: HTTPS first, plain HTTP when the peer does not
            // speak TLS. A certificate problem is reported, not bypassed.
            let ping = self.send(
                host,
                &Method::GET,
                &format!("{https}/v2/"),
                &[],
                None,
                None,
                false,
            );
            match ping {
                Ok(response) => {
                    self.learn_host_auth(host, &response);
                    https
                }
                Err(e @ RegistryError::Certificate { .. }) => return Err(e),
                Err(e @ RegistryError::Connection { .. }) if is_unreachable(&e) => return Err(e),
                Err(_) => format!("http://{host}"),
            }
        } else {
            https
        };
        lock(&self.base_urls).insert(host.to_string(), base.clone());
        Ok(base)
    }

    /// Records how `host` wants to be authenticated, from a `/v2/` answer.
    fn learn_host_auth(&self, host: &str, response: &Response<Body>) {
        let host_auth = if response.status() == http::StatusCode::UNAUTHORIZED {
            match preferred_challenge(&challenges_of(response)) {
                Some(Challenge::Bearer { realm, service, .. }) => HostAuth::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                },
                Some(Challenge::Basic { .. }) => HostAuth::Basic,
                None => HostAuth::Anonymous,
            }
        } else {
            HostAuth::Anonymous
        };
        self.auth.set_host_auth(host, host_auth);
    }

    /// Sends one request, following GET/HEAD redirects (credentials only go
    /// to the original host) and retrying resets and 5xx/429 answers when
    /// `retries` allows.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        host: &str,
        method: &Method,
        url: &str,
        headers: &[(&'static str, String)],
        authorization: Option<&str>,
        body: Option<&[u8]>,
        retries: bool,
    ) -> Result<Response<Body>, RegistryError> {
        let attempts = if retries {
            self.options.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 1;
        loop {
            let result = self.send_following_redirects(method, url, headers, authorization, body);
            let last = attempt >= attempts;
            match result {
                Err(e) if !last && is_transient(&e) => {}
                Err(e) => return Err(transport_error(host, e)),
                Ok(response) if !last && is_retryable_status(response.status().as_u16()) => {
                    let wait = retry_after(&response);
                    drop(response);
                    std::thread::sleep(wait.unwrap_or_else(|| self.backoff(attempt)));
                    attempt += 1;
                    continue;
                }
                Ok(response) => return Ok(response),
            }
            std::thread::sleep(self.backoff(attempt));
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        (self.options.retry_delay * factor).min(MAX_RETRY_DELAY)
    }

    fn send_following_redirects(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, String)],
        authorization: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response<Body>, ureq::Error> {
        let origin = origin_of(url).to_ascii_lowercase();
        let follows = *method == Method::GET || *method == Method::HEAD;
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = origin_of(&current).eq_ignore_ascii_case(&origin);
            let auth = authorization.filter(|_| same_origin);
            let response = self.send_once(method, &current, headers, auth, body)?;
            if !follows || !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = header(&response, "location") else {
                return Ok(response);
            };
            current = resolve_location(&current, &location);
        }
        Err(ureq::Error::TooManyRedirects)
    }

    fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&'static str, String)],
        authorization: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Response<Body>, ureq::Error> {
        let agent = match url_host(url) {
            Some(host) if is_loopback_domain(host) => &self.direct_agent,
            _ => &self.agent,
        };
        let mut builder = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if let Some(auth) = authorization {
            builder = builder.header("Authorization", auth);
        }
        match body {
            Some(bytes) => agent.run(builder.body(bytes)?),
            None => agent.run(builder.body(())?),
        }
    }
}

/// The registry API host for a registry name (`docker.io` → its API host).
pub(super) fn api_host_of(registry: &str) -> String {
    if registry == DOCKER_HUB_DOMAIN {
        DOCKER_HUB_API_HOST.to_string()
    } else {
        registry.to_string()
    }
}

/// The host name credentials are kept under (Docker Hub's names are one).
fn credential_host(host: &str) -> String {
    match host {
        DOCKER_HUB_API_HOST | "index.docker.io" => DOCKER_HUB_DOMAIN.to_string(),
        other => other.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The system CA bundle: `SSL_CERT_FILE` when it names a file, else the
/// distribution's bundle when present.
fn system_bundle(ssl_cert_file: Option<std::ffi::OsString>) -> Option<PathBuf> {
    ssl_cert_file
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from(SYSTEM_CA_BUNDLE)).filter(|p| p.is_file()))
}

/// The system bundle plus the given CA file; Mozilla's roots when there is
/// neither.
fn tls_config(system: Option<&Path>, ca_file: Option<&Path>) -> Result<TlsConfig, RegistryError> {
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    if let Some(path) = system {
        // A damaged system bundle is not this program's to refuse: use the
        // certificates that parse.
        if let Ok(pem) = std::fs::read(path) {
            roots.extend(ureq::tls::parse_pem(&pem).filter_map(|item| match item {
                Ok(PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            }));
        }
    }
    if let Some(path) = ca_file {
        let ca_error = |reason: String| RegistryError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = certificates_in(&pem).map_err(ca_error)?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".to_string()));
        }
        roots.extend(certs);
    }
    let root_certs = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&roots)
    };
    Ok(TlsConfig::builder().root_certs(root_certs).build())
}

fn certificates_in(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(format!("invalid PEM: {e}")),
        }
    }
    Ok(certs)
}

/// Errors worth another attempt: the connection broke or stalled.
fn is_transient(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::TimedOut
                | ErrorKind::Interrupted
        ),
        ureq::Error::Timeout(_) | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds, capped at 30 s.
fn retry_after(response: &Response<Body>) -> Option<Duration> {
    let seconds: u64 = header(response, "retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(30)))
}

/// The rustls error behind a failure: ureq reports handshake failures as
/// I/O errors wrapping it.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// A one-line error for a failed exchange with `host`.
fn transport_error(host: &str, e: ureq::Error) -> RegistryError {
    use std::io::ErrorKind;
    let host = host.to_string();
    if let Some(tls) = rustls_error(&e) {
        let reason = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                RegistryError::Certificate { host, reason }
            }
            _ => RegistryError::Tls { host, reason },
        };
    }
    match e {
        ureq::Error::Timeout(t) => RegistryError::Timeout {
            host,
            reason: timeout_reason(t),
        },
        ureq::Error::Io(io) if matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            RegistryError::Timeout {
                host,
                reason: io.to_string(),
            }
        }
        ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            RegistryError::Connection {
                host,
                reason: "connection refused".to_string(),
            }
        }
        ureq::Error::HostNotFound => RegistryError::Connection {
            host,
            reason: "host not found".to_string(),
        },
        ureq::Error::Tls(reason) => RegistryError::Tls {
            host,
            reason: reason.to_string(),
        },
        ureq::Error::Pem(pem) => RegistryError::Tls {
            host,
            reason: format!("{pem:?}"),
        },
        other => RegistryError::Connection {
            host,
            reason: other.to_string(),
        },
    }
}

fn timeout_reason(t: ureq::Timeout) -> String {
    match t {
        ureq::Timeout::Connect => "connecting".to_string(),
        ureq::Timeout::PerRead => "no data received".to_string(),
        ureq::Timeout::PerWrite => "could not send".to_string(),
        other => other.to_string(),
    }
}

fn is_unreachable(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Connection { reason, .. }
        if reason == "connection refused" || reason == "host not found")
}

pub(super) fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn challenges_of(response: &Response<Body>) -> Vec<Challenge> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_www_authenticate)
        .collect()
}

/// Reads at most `limit` bytes of a body.
pub(super) fn read_limited(response: Response<Body>, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The rendered error body of a failed response (empty when unreadable).
pub(super) fn read_error_detail(response: Response<Body>) -> String {
    match read_limited(response, MAX_ERROR_BODY) {
        Ok(body) => render_error_body(&body),
        Err(_) => String::new(),
    }
}

/// `scheme://authority` of an absolute URL.
fn origin_of(url: &str) -> &str {
    let Some(scheme_end) = url.find("://") else {
        return url;
    };
    let rest = &url[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &url[..scheme_end + 3 + end]
}

/// The `host[:port]` of an absolute URL.
pub(super) fn url_host(url: &str) -> Option<&str> {
    let origin = origin_of(url);
    let (_, authority) = origin.split_once("://")?;
    // Drop userinfo, if any.
    Some(authority.rsplit('@').next().unwrap_or(authority))
}

/// Resolves a `Location` header against the URL it answered (RFC 3986
/// reference resolution, enough for what registries send).
pub(super) fn resolve_location(base: &str, location: &str) -> String {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin = origin_of(base);
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path_and_query = &base[origin.len()..];
    let path = path_and_query.split(['?', '#']).next().unwrap_or_default();
    if location.starts_with('?') {
        return format!("{origin}{path}{location}");
    }
    let dir = match path.rfind('/') {
        Some(slash) => &path[..=slash],
        None => "/",
    };
    format!("{origin}{dir}{location}")
}

/// Appends `key=value` pairs (percent-encoded) to a URL's query.
pub(super) fn append_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = url.to_string();
    for (key, value) in pairs {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&percent_encode(key));
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_locations() {
        let base = "https://r.io:5000/v2/a/b/blobs/uploads/?x=1";
        assert_eq!(
            resolve_location(base, "/v2/a/b/blobs/uploads/uuid?_state=s"),
            "https://r.io:5000/v2/a/b/blobs/uploads/uuid?_state=s"
        );
        assert_eq!(
            resolve_location(base, "http://other:1/x"),
            "http://other:1/x"
        );
        assert_eq!(
            resolve_location(base, "//cdn.example/x"),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve_location(base, "uuid"),
            "https://r.io:5000/v2/a/b/blobs/uploads/uuid"
        );
        assert_eq!(
            resolve_location("https://h/v2/x", "?y=2"),
            "https://h/v2/x?y=2"
        );
        assert_eq!(resolve_location("https://h", "x"), "https://h/x");
    }

    #[test]
    fn url_parts() {
        assert_eq!(origin_of("https://h:1/a?b"), "https://h:1");
        assert_eq!(origin_of("http://h?x"), "http://h");
        assert_eq!(url_host("https://u:p@h:1/a"), Some("h:1"));
        assert_eq!(url_host("http://[::1]:5000/v2/"), Some("[::1]:5000"));
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            append_query(
                "https://auth/token",
                &[("service", "reg.io"), ("scope", "repository:a/b:pull,push")]
            ),
            "https://auth/token?service=reg.io&scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            append_query("https://a/t?x=1", &[("k", "v w")]),
            "https://a/t?x=1&k=v%20w"
        );
    }

    #[test]
    fn credential_hosts() {
        assert_eq!(credential_host("registry-1.docker.io"), "docker.io");
        assert_eq!(credential_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(api_host_of("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host_of("quay.io"), "quay.io");
    }

    #[test]
    fn retry_policy() {
        let client = RegistryClient::new(ClientOptions {
            retry_delay: Duration::from_millis(100),
            ..ClientOptions::default()
        })
        .unwrap();
        assert_eq!(client.backoff(1), Duration::from_millis(100));
        assert_eq!(client.backoff(3), Duration::from_millis(400));
        assert_eq!(client.backoff(30), MAX_RETRY_DELAY);
        assert!(is_retryable_status(503) && is_retryable_status(429));
        assert!(!is_retryable_status(404) && !is_retryable_status(501));
        let reset = ureq::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&reset));
        let refused = ureq::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!is_transient(&refused));
        assert_eq!(
            transport_error("h:1", refused).to_string(),
            "cannot reach h:1: connection refused"
        );
    }

    #[test]
    fn client_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RegistryClient>();
        assert_send_sync::<RegistryError>();
    }

    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = tls_config(None, Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(tls_config(None, Some(&missing)).is_err());
        // A damaged system bundle is tolerated.
        assert!(tls_config(Some(&empty), None).is_ok());
    }

    #[test]
    fn ssl_cert_file_names_the_system_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "").unwrap();
        assert_eq!(system_bundle(Some(bundle.clone().into())), Some(bundle));
        let default = Some(PathBuf::from(SYSTEM_CA_BUNDLE)).filter(|p| p.is_file());
        assert_eq!(
            system_bundle(Some(dir.path().join("absent").into())),
            default
        );
        assert_eq!(system_bundle(Some("".into())), default);
        assert_eq!(system_bundle(None), default);
    }
}
