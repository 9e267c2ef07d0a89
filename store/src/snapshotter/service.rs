//! The gRPC service: each call decoded, run on a blocking thread over
//! `Snapshots`, its outcome encoded with the code containerd expects.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::api;
use super::snapshots::{Info, Kind, Mount, SnapshotError, Snapshots};
use crate::lock::Lease;
use crate::store::Store;

/// Infos per `List` message (containerd's own server sends 100).
const LIST_BATCH: usize = 100;

pub(super) struct Service {
    store: Arc<Store>,
    lease: Arc<Lease>,
}

impl Service {
    pub(super) fn new(store: Arc<Store>, lease: Arc<Lease>) -> Service {
        Service { store, lease }
    }

    /// Runs `f` over the snapshots off the async workers.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshots<'_>) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        let lease = self.lease.clone();
        tokio::task::spawn_blocking(move || f(&Snapshots::new(&store, &lease)))
            .await
            .map_err(|e| Status::internal(format!("request failed: {e}")))?
            .map_err(status)
    }
}

fn status(e: SnapshotError) -> Status {
    let text = e.to_string();
    match e {
        SnapshotError::NotFound(_) => Status::not_found(text),
        SnapshotError::AlreadyExists(_) => Status::already_exists(text),
        SnapshotError::FailedPrecondition(_) => Status::failed_precondition(text),
        SnapshotError::InvalidArgument(_) => Status::invalid_argument(text),
        SnapshotError::Store(_) => Status::unknown(text),
    }
}

fn labels(map: BTreeMap<String, String>) -> BTreeMap<String, String> {
    map
}

fn mounts(m: Vec<Mount>) -> Vec<api::Mount> {
    m.into_iter()
        .map(|m| api::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(nanos: u64) -> api::Timestamp {
    api::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn info(i: Info) -> api::Info {
    let kind = match i.record.kind {
        Kind::View => api::KIND_VIEW,
        Kind::Active => api::KIND_ACTIVE,
        Kind::Committed => api::KIND_COMMITTED,
    };
    api::Info {
        name: i.name,
        parent: i.record.parent,
        kind,
        created_at: Some(timestamp(i.record.created)),
        updated_at: Some(timestamp(i.record.updated)),
        labels: i.record.labels,
    }
}

type ListStream = tonic::codegen::BoxStream<api::ListSnapshotsResponse>;

#[tonic::async_trait]
impl api::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .run(move |s| s.prepare(Kind::Active, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(api::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        req: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .run(move |s| s.prepare(Kind::View, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        req: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = req.into_inner();
        let m = self.run(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(api::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        req: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = self.run(move |s| s.stat(&r.key)).await?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(info(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let Some(given) = r.info else {
            return Err(Status::invalid_argument("update without a snapshot"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .run(move |s| s.update(&given.name, labels(given.labels), &paths))
            .await?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info(i)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let infos = self.run(move |s| s.walk(&r.filters)).await?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(info).peekable();
        while infos.peek().is_some() {
            let batch: Vec<api::Info> = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(api::ListSnapshotsResponse { info: batch }));
        }
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(
            batches,
        ))))
    }

    async fn usage(
        &self,
        req: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let r = req.into_inner();
        let (size, inodes) = self.run(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(api::UsageResponse {
            size: size as i64,
            inodes: inodes as i64,
        }))
    }

    async fn cleanup(&self, _req: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
