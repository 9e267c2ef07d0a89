//! `lstore snapshotter`: containerd's snapshots API
//! (`containerd.services.snapshots.v1`) on a unix socket, for containerd's
//! `[proxy_plugins.lstore] type = "snapshot"`.
//!
//! Committed snapshots are lstore layer folders, so containerd, ctr,
//! nerdctl and the CRI share the layers lstore holds, and a layer
//! containerd unpacks becomes an lstore layer. Snapshot records live in
//! the store's RocksDB (family `snapshots`) and are roots for `gc` and
//! `rmi`. As `serve`, the server holds one lease for its life (it names the
//! staging folders of commits) and touches metadata only in short sessions
//! per request, so lstore commands run beside it.

mod api;
mod codec;
mod filter;
mod service;
mod snapshots;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Store;

pub use snapshots::{Info, Kind, Mount, SnapshotError, SnapshotRecord, Snapshots};

/// The socket used without `--socket`.
pub const DEFAULT_SOCKET: &str = "/run/lstore/snapshotter.sock";

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `lstore snapshotter`'s settings.
#[derive(Debug, Clone)]
pub struct SnapshotterOptions {
    /// The unix socket to listen on (replaced if a stale one is there).
    pub socket: PathBuf,
}

impl Default for SnapshotterOptions {
    fn default() -> Self {
        SnapshotterOptions {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// Runs the snapshotter until SIGTERM or SIGINT. `on_listening` is called
/// with the socket's path once requests are accepted.
pub fn serve(
    store: Store,
    opts: SnapshotterOptions,
    on_listening: &mut dyn FnMut(&Path),
) -> Result<()> {
    let result = crate::frontend::run_with_lease(store, "lstore-snapshotter", |store, lease| {
        run(store, lease, &opts, on_listening)
    });
    let _ = std::fs::remove_file(&opts.socket);
    result
}

/// Binds the socket: its folder made if needed, a socket left by a dead
/// server replaced, one a live server answers on refused.
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Invalid(format!(
            "{} is in use by a running server",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "{} exists and is not a socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("listen on {}", path.display()), e))?;
    // containerd runs as root; nobody else has business with layers.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

async fn run(
    store: Arc<Store>,
    lease: Arc<crate::lock::Lease>,
    opts: &SnapshotterOptions,
    on_listening: &mut dyn FnMut(&Path),
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let listener = bind(&opts.socket)?;
    on_listening(&opts.socket);
    let service = api::snapshots_server::SnapshotsServer::new(service::Service::new(store, lease));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(service.clone());
                let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
