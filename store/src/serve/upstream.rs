//! Pull-through: a manifest the store lacks is pulled from the upstream
//! registry (or containerd's `ns` host) with lstore's own pull; requests for
//! one image at once wait for one pull.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::import::NoProgress;
use crate::pull::PullOptions;
use crate::reference::Reference;
use crate::store::Store;

use super::api::{ApiError, ApiResult};
use super::route::ManifestRef;

pub struct Upstream {
    /// `host[:port]` of the registry missing images come from.
    pub registry: String,
    options: PullOptions,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Upstream {
    pub fn new(registry: String, options: PullOptions) -> Upstream {
        Upstream {
            registry,
            options,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a client's `ns` host may be pulled from: the upstream itself
    /// or one of the `--namespace` hosts.
    pub fn may_pull_from(&self, host: &str, namespaces: &[String]) -> bool {
        host == self.registry || namespaces.iter().any(|n| n == host)
    }

    /// The reference to pull for `path`/`reference`: at the `ns` host when
    /// containerd names one, else at the upstream.
    pub fn reference(
        &self,
        ns: Option<&str>,
        path: &str,
        reference: &ManifestRef,
    ) -> ApiResult<Reference> {
        let host = ns.unwrap_or(&self.registry);
        let word = match reference {
            ManifestRef::Tag(t) => format!("{host}/{path}:{t}"),
            ManifestRef::Digest(d) => format!("{host}/{path}@{d}"),
        };
        Reference::parse(&word).map_err(|e| ApiError::name_invalid(&format!("{word}: {e}")))
    }

    /// Pulls `r` unless the same pull is running: then waits for it, and
    /// `present` (checked once the wait is over) says whether it is needed.
    pub async fn pull(
        &self,
        store: Arc<Store>,
        r: Reference,
        present: impl Fn() -> bool,
    ) -> ApiResult<()> {
        let key = r.to_string();
        let gate = {
            let mut map = self
                .inflight
                .lock()
                .map_err(|_| ApiError::internal("pull table poisoned"))?;
            map.entry(key.clone()).or_default().clone()
        };
        let _turn = gate.lock().await;
        if present() {
            return Ok(());
        }
        let word = key.clone();
        let options = self.options.clone();
        let pulled =
            tokio::task::spawn_blocking(move || store.pull(&word, &options, &NoProgress)).await;
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&key);
        }
        match pulled {
            Ok(Ok(_)) => Ok(()),
            // To a mirror's client (containerd, podman) a miss sends it on
            // to the next host, so every failure upstream is a miss here.
            Ok(Err(e)) => Err(ApiError::new(
                hyper::StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("{key} is not in the store and pulling it failed: {e}"),
            )),
            Err(e) => Err(ApiError::internal(format!("pull of {key}: {e}"))),
        }
    }
}
