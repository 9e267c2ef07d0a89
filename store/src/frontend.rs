//! What the long-lived front-ends (`serve`, `snapshotter`) share: a tokio
//! runtime and a lease held for their whole life, so that `gc` and `rmi`
//! in other processes leave what they hand out alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lock::{Lease, LeaseContent};
use crate::store::Store;

/// Runs `run` on a multi-threaded runtime whose threads are called
/// `thread_name`, under a lease of this process that ends with it.
pub(crate) fn run_with_lease<F, Fut>(store: Store, thread_name: &str, run: F) -> Result<()>
where
    F: FnOnce(Arc<Store>, Arc<Lease>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .map_err(|e| Error::io(format!("start the {thread_name} runtime"), e))?;
    let store = Arc::new(store);
    let lease = Arc::new(store.read_session(|_| {
        store.lease(&LeaseContent {
            pid: std::process::id(),
            ..LeaseContent::default()
        })
    })?);
    let result = runtime.block_on(run(store, lease.clone()));
    // Work still running after the grace period is abandoned with the
    // runtime; the lease ends here whoever still holds a reference to it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    lease.release();
    result
}
