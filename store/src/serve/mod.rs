//! `lstore serve`: the store over the OCI distribution API (v1.1), pull
//! and push, with an optional pull-through upstream.
//!
//! The server holds one lease for its whole life: it names the blobs
//! clients uploaded and no stored manifest names yet (`holds`), and
//! prefixes the upload files under `ingest/`. Metadata is read in short sessions per
//! request (never held while idle or while a blob streams), so CLI commands
//! run beside it; a blob being sent is an open file, which gc's unlink does
//! not disturb.

mod api;
mod auth;
mod blobs;
mod catalog;
mod holds;
mod manifests;
mod route;
mod tls;
mod uploads;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::{Error, Result};
use crate::lock::Lease;
use crate::reference::{is_domain, Reference};
use crate::store::Store;

use api::{empty, full, json, set, ApiError, ApiResult, Body};
use catalog::{page, CatalogCache, HostOrder};
use route::{parse_digest, query_param, ManifestRef, Route};
use uploads::Uploads;

/// How long a shutdown waits for requests in flight before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `lstore serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// Refuse every write (push, delete) with `DENIED`.
    pub read_only: bool,
    /// Registry hosts whose images win when several share a name, in order.
    pub namespaces: Vec<String>,
    /// Pull a manifest the store lacks from this registry (pull-through).
    pub upstream: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Basic authentication against this htpasswd file (bcrypt entries).
    pub htpasswd: Option<PathBuf>,
    /// Listen beyond loopback without TLS.
    pub insecure: bool,
    /// An upload no request used for this long is abandoned.
    pub upload_timeout: Duration,
    /// A request body that sends nothing for this long is cut.
    pub body_timeout: Duration,
    /// How pull-through reaches the upstream.
    pub pull: crate::pull::PullOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 5050)),
            read_only: false,
            namespaces: Vec::new(),
            upstream: None,
            tls_cert: None,
            tls_key: None,
            htpasswd: None,
            insecure: false,
            upload_timeout: uploads::UPLOAD_IDLE,
            body_timeout: uploads::BODY_IDLE,
            pull: crate::pull::PullOptions::default(),
        }
    }
}

impl ServeOptions {
    /// Refuses settings that would be unsafe or cannot work.
    fn check(&self) -> Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Invalid(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
        if !self.addr.ip().is_loopback() && self.tls_cert.is_none() && !self.insecure {
            return Err(Error::Invalid(format!(
                "refusing to serve {} without TLS: it is not a loopback address \
                 (give --tls-cert and --tls-key, or --insecure)",
                self.addr
            )));
        }
        if self.upload_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(Error::Invalid(
                "--upload-timeout and --body-timeout must be longer than 0 s".into(),
            ));
        }
        for host in self.namespaces.iter().chain(&self.upstream) {
            if !is_domain(host) {
                return Err(Error::Invalid(format!(
                    "{host:?} is not a registry host (host[:port])"
                )));
            }
        }
        Ok(())
    }
}

/// What every request handler shares.
struct State {
    store: Arc<Store>,
    lease: Arc<Lease>,
    /// Uploaded blobs waiting for a manifest, named in `lease`.
    holds: holds::Holds,
    /// Tags and images, read again when the store changed.
    catalogs: CatalogCache,
    /// `host:port` as bound: pushed images are named under it.
    own: String,
    opts: ServeOptions,
    uploads: Uploads,
    auth: Option<Arc<auth::Htpasswd>>,
    upstream: Option<upstream::Upstream>,
}

/// Runs the server until SIGTERM or SIGINT. `on_listening` is called with
/// the bound address once connections are accepted.
pub fn serve(
    store: Store,
    opts: ServeOptions,
    on_listening: &mut dyn FnMut(SocketAddr),
) -> Result<()> {
    opts.check()?;
    let auth = opts
        .htpasswd
        .as_deref()
        .map(auth::Htpasswd::load)
        .transpose()?
        .map(Arc::new);
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k)?),
        _ => None,
    };
    crate::frontend::run_with_lease(store, "lstore-serve", |store, lease| {
        run(store, lease, opts, auth, tls, on_listening)
    })
}

async fn run(
    store: Arc<Store>,
    lease: Arc<Lease>,
    opts: ServeOptions,
    auth: Option<Arc<auth::Htpasswd>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    on_listening: &mut dyn FnMut(SocketAddr),
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| Error::io(format!("listen on {}", opts.addr), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("bound address", e))?;
    let state = Arc::new(State {
        store,
        lease,
        own: bound.to_string(),
        upstream: opts
            .upstream
            .clone()
            .map(|u| upstream::Upstream::new(u, opts.pull.clone())),
        uploads: Uploads::with_limits(uploads::MAX_UPLOADS, opts.upload_timeout, opts.body_timeout),
        opts,
        holds: holds::Holds::new(holds::BLOB_HOLD),
        catalogs: CatalogCache::default(),
        auth,
    });
    on_listening(bound);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut sweep = tokio::time::interval(sweep_period(state.opts.upload_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let state = state.clone();
                tokio::spawn(async move {
                    state.uploads.sweep();
                    let _ = tokio::task::spawn_blocking(move || {
                        state.holds.expire(&state.store, &state.lease)
                    })
                    .await;
                });
            }
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                match &tls {
                    None => {
                        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move { let _ = conn.await; });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await else { return };
                            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                            let _ = watcher.watch(conn).await;
                        });
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// How often abandoned uploads and unclaimed blobs are looked for: often
/// enough that one outlives its limit by at most a quarter of it.
fn sweep_period(upload_timeout: Duration) -> Duration {
    (upload_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// The distribution API version header every response carries.
fn with_api_version(mut resp: Response<Body>) -> Response<Body> {
    set(&mut resp, "docker-distribution-api-version", "registry/2.0");
    resp
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let head = req.method() == Method::HEAD;
    let authorization = header(&req, hyper::header::AUTHORIZATION).map(str::to_string);
    let resp = match authorise(&state, authorization, head).await {
        Err(e) => e,
        Ok(()) => match dispatch(state, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(head),
        },
    };
    Ok(with_api_version(resp))
}

/// Basic auth with `--htpasswd`; every endpoint, `/v2/` included.
async fn authorise(
    state: &Arc<State>,
    header: Option<String>,
    head: bool,
) -> std::result::Result<(), Response<Body>> {
    let Some(htpasswd) = &state.auth else {
        return Ok(());
    };
    if htpasswd.check(header.as_deref()).await {
        return Ok(());
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    )
    .into_response(head);
    set(
        &mut resp,
        hyper::header::WWW_AUTHENTICATE,
        "Basic realm=\"lstore\"",
    );
    Err(resp)
}

fn header(req: &Request<Incoming>, name: impl hyper::header::AsHeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Runs store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("request failed: {e}"))))
}

async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let route = Route::parse(req.uri().path())?;
    let method = req.method().clone();
    let writes = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && state.opts.read_only {
        return Err(ApiError::denied("this server is read-only"));
    }
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(json(
            StatusCode::OK,
            "application/json",
            &serde_json::json!({}),
        )),
        (Route::Catalog, Method::GET) => list(&state, query, None).await,
        (Route::Tags { name }, Method::GET) => list(&state, query, Some(name)).await,
        (Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            // Clients may send one Accept header per media type.
            let accept: Vec<&str> = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let accept = (!accept.is_empty()).then(|| accept.join(","));
            let head = req.method() == Method::HEAD;
            get_manifest(&state, accept, head, query, name, reference).await
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            put_manifest(&state, req, name, reference).await
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            let order = host_order(&state, query);
            let st = state.clone();
            blocking(move || {
                let deletable: Vec<String> = std::iter::once(&st.own)
                    .chain(&st.opts.namespaces)
                    .map(|h| catalog::normalise_host(h))
                    .collect();
                manifests::delete(
                    &st.store,
                    &st.catalogs,
                    &name,
                    &reference,
                    &order,
                    &deletable,
                )
            })
            .await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        (Route::Blob { digest, .. }, Method::GET | Method::HEAD) => {
            let path = state.store.content().path(&digest);
            let range = header(&req, hyper::header::RANGE).map(str::to_string);
            let head = req.method() == Method::HEAD;
            blocking(move || blobs::respond(path, &digest, range.as_deref(), head)).await
        }
        (Route::Blob { .. }, Method::DELETE) => Err(ApiError::unsupported(
            "blobs are removed by lstore rmi and gc, not by the API",
        )),
        (Route::UploadStart { name }, Method::POST) => start_upload(&state, req, query, name).await,
        (Route::Upload { name, id }, Method::GET) => {
            let offset = state.uploads.offset(&id, &name)?;
            Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, offset))
        }
        (Route::Upload { name, id }, Method::PATCH) => {
            let range = match header(&req, hyper::header::CONTENT_RANGE) {
                None => None,
                Some(v) => Some(uploads::parse_content_range(v).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "BLOB_UPLOAD_INVALID",
                        format!("invalid Content-Range {v:?}"),
                    )
                })?),
            };
            let offset = state
                .uploads
                .append(&id, &name, req.into_body(), range)
                .await?;
            Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset))
        }
        (Route::Upload { name, id }, Method::PUT) => {
            let digest = query_param(query, "digest")
                .ok_or_else(|| ApiError::digest_invalid("PUT of an upload needs ?digest="))
                .and_then(|d| parse_digest(&d))?;
            finish_upload(&state, &id, &name, req.into_body(), digest).await
        }
        (Route::Upload { name, id }, Method::DELETE) => {
            state.uploads.cancel(&id, &name)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Route::Referrers { digest, .. }, Method::GET) => {
            let st = state.clone();
            let wanted = query_param(query, "artifactType");
            let filtered = wanted.is_some();
            let index = blocking(move || {
                manifests::referrers(&st.store, &st.catalogs, &digest, wanted.as_deref())
            })
            .await?;
            let mut resp = json(StatusCode::OK, crate::oci::OCI_INDEX, &index);
            if filtered {
                set(&mut resp, "oci-filters-applied", "artifactType");
            }
            Ok(resp)
        }
        (_, m) => Err(ApiError::unsupported(format!("{m} is not supported here"))),
    }
}

fn host_order(state: &State, query: Option<&str>) -> HostOrder {
    let ns = query_param(query, "ns").filter(|h| is_domain(h));
    HostOrder::new(
        ns.as_deref(),
        &state.opts.namespaces,
        &state.own,
        state.upstream.as_ref().map(|u| u.registry.as_str()),
    )
}

async fn get_manifest(
    state: &Arc<State>,
    accept: Option<String>,
    head: bool,
    query: Option<&str>,
    name: String,
    reference: ManifestRef,
) -> ApiResult<Response<Body>> {
    let order = host_order(state, query);
    let lookup = {
        let (st, name, reference, order, accept) = (
            state.clone(),
            name.clone(),
            reference.clone(),
            order.clone(),
            accept.clone(),
        );
        move || {
            manifests::find(
                &st.store,
                &st.catalogs,
                &name,
                &reference,
                &order,
                accept.as_deref(),
            )
        }
    };
    let mut found = blocking(lookup.clone()).await?;
    if found.is_none() {
        let ns = query_param(query, "ns").filter(|h| is_domain(h));
        // A client's `ns` may choose among the hosts the operator named
        // (the upstream and the --namespace hosts), never send the server
        // (with its credentials) anywhere else.
        let allowed = |up: &upstream::Upstream| {
            ns.as_deref()
                .is_none_or(|h| up.may_pull_from(h, &state.opts.namespaces))
        };
        if let Some(up) = state.upstream.as_ref().filter(|up| allowed(up)) {
            let r = up.reference(ns.as_deref(), &name, &reference)?;
            let store = state.store.clone();
            let again = lookup.clone();
            up.pull(store, r, move || matches!(again(), Ok(Some(_))))
                .await?;
            found = blocking(lookup).await?;
        }
    }
    let found = found.ok_or_else(|| ApiError::manifest_unknown(&format!("{name}:{reference}")))?;
    let len = found.bytes.len();
    let mut resp = if head {
        empty(StatusCode::OK)
    } else {
        full(StatusCode::OK, found.bytes)
    };
    set(&mut resp, CONTENT_TYPE, &found.media_type);
    set(&mut resp, CONTENT_LENGTH, &len.to_string());
    set(
        &mut resp,
        "docker-content-digest",
        &found.digest.to_string(),
    );
    Ok(resp)
}

/// Reads a request body of at most `max` bytes.
async fn read_limited(req: Request<Incoming>, max: u64) -> ApiResult<Vec<u8>> {
    let too_large = || ApiError::too_large(format!("a manifest may have at most {max} bytes"));
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(too_large());
        }
    }
    let mut body = req.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::manifest_invalid(format!("request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > max {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn put_manifest(
    state: &Arc<State>,
    req: Request<Incoming>,
    name: String,
    reference: ManifestRef,
) -> ApiResult<Response<Body>> {
    let content_type = header(&req, CONTENT_TYPE).map(str::to_string);
    let bytes = read_limited(req, manifests::MANIFEST_MAX).await?;
    let word = match &reference {
        ManifestRef::Tag(t) => format!("{}/{name}:{t}", state.own),
        ManifestRef::Digest(d) => format!("{}/{name}@{d}", state.own),
    };
    let store_name =
        Reference::parse(&word).map_err(|e| ApiError::name_invalid(&format!("{word}: {e}")))?;
    let st = state.clone();
    let digest = blocking(move || {
        let (digest, named) = manifests::put(
            &st.store,
            &st.catalogs,
            &store_name,
            bytes,
            content_type.as_deref(),
        )?;
        // Stored: the image keeps its blobs from gc now, not serve.
        st.holds
            .release(&st.store, &st.lease, &named)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        // `keep-layer-blobs false`: the layer blobs the hold kept from the
        // import's drop go now, unless another push still holds them.
        if matches!(st.store.keeps_layer_blobs(), Ok(false)) {
            let _ = crate::layer_blobs::drop_layer_blobs(&st.store, Some(&[digest]), None);
        }
        Ok(digest)
    })
    .await?;
    let mut resp = empty(StatusCode::CREATED);
    set(
        &mut resp,
        LOCATION,
        &format!("/v2/{name}/manifests/{digest}"),
    );
    set(&mut resp, "docker-content-digest", &digest.to_string());
    set(&mut resp, CONTENT_LENGTH, "0");
    Ok(resp)
}

async fn start_upload(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<&str>,
    name: String,
) -> ApiResult<Response<Body>> {
    // Cross-repository mount: the store is one content store, so a blob it
    // has is there for every repository.
    if let Some(mount) = query_param(query, "mount") {
        let digest = parse_digest(&mount)?;
        if state.store.content().contains(&digest) {
            // Held for the manifest that will name it, as if uploaded.
            let st = state.clone();
            blocking(move || {
                st.holds
                    .hold(&st.store, &st.lease, digest)
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .await?;
            return Ok(blob_created(&name, &digest));
        }
    }
    let digest = query_param(query, "digest")
        .map(|d| parse_digest(&d))
        .transpose()?;
    let id = state.uploads.start(&state.store, &state.lease, &name)?;
    match digest {
        // Monolithic: the whole blob in this request.
        Some(digest) => finish_upload(state, &id, &name, req.into_body(), digest).await,
        None => {
            let has_body = req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v != "0");
            let offset = if has_body {
                state
                    .uploads
                    .append(&id, &name, req.into_body(), None)
                    .await?
            } else {
                0
            };
            Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset))
        }
    }
}

/// The last bytes of an upload, then the blob verified and stored.
async fn finish_upload(
    state: &Arc<State>,
    id: &str,
    name: &str,
    body: Incoming,
    digest: crate::Digest,
) -> ApiResult<Response<Body>> {
    let keep = uploads::Keep {
        store: &state.store,
        lease: &state.lease,
        holds: &state.holds,
    };
    state.uploads.complete(id, name, body, digest, keep).await?;
    Ok(blob_created(name, &digest))
}

fn upload_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Response<Body> {
    let mut resp = empty(status);
    set(
        &mut resp,
        LOCATION,
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(
        &mut resp,
        hyper::header::RANGE,
        &uploads::range_header(offset),
    );
    set(&mut resp, "docker-upload-uuid", id);
    set(&mut resp, CONTENT_LENGTH, "0");
    resp
}

fn blob_created(name: &str, digest: &crate::Digest) -> Response<Body> {
    let mut resp = empty(StatusCode::CREATED);
    set(&mut resp, LOCATION, &format!("/v2/{name}/blobs/{digest}"));
    set(&mut resp, "docker-content-digest", &digest.to_string());
    set(&mut resp, CONTENT_LENGTH, "0");
    resp
}

/// `_catalog` (no name) or `tags/list`, with `n`/`last` paging.
async fn list(
    state: &Arc<State>,
    query: Option<&str>,
    name: Option<String>,
) -> ApiResult<Response<Body>> {
    let n = match query_param(query, "n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("invalid n {v:?}"),
            )
        })?),
    };
    let last = query_param(query, "last");
    let st = state.clone();
    let for_name = name.clone();
    let items = blocking(move || {
        let catalog = st
            .catalogs
            .get(&st.store)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match &for_name {
            None => Ok(catalog.repositories()),
            Some(path) => {
                if !catalog.has_repository(path) {
                    return Err(ApiError::name_unknown(path));
                }
                Ok(catalog.tags(path))
            }
        }
    })
    .await?;
    let (items, more) = page(items, n, last.as_deref());
    let (endpoint, body) = match &name {
        None => (
            "/v2/_catalog".to_string(),
            serde_json::json!({ "repositories": items }),
        ),
        Some(path) => (
            format!("/v2/{path}/tags/list"),
            serde_json::json!({ "name": path, "tags": items }),
        ),
    };
    let mut resp = json(StatusCode::OK, "application/json", &body);
    if let (true, Some(n)) = (more, n) {
        let mut link = format!("<{endpoint}?n={n}");
        if let Some(l) = items.last() {
            link.push_str(&format!("&last={l}"));
        }
        link.push_str(">; rel=\"next\"");
        set(&mut resp, hyper::header::LINK, &link);
    }
    Ok(resp)
}

#[cfg(test)]
mod testing {
    use crate::lock::{Lease, LeaseContent};
    use crate::store::Store;
    use crate::StoreOptions;

    /// A fresh store and a lease in it, as serve holds one.
    pub fn store() -> (tempfile::TempDir, Store, Lease) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let lease = store
            .read_session(|_| store.lease(&LeaseContent::default()))
            .unwrap();
        (dir, store, lease)
    }
}
