//! `pairdb.StorageNodeService`: the gRPC edge of the storage node. Converts wire types to store
//! commands, enforces maintenance mode, counts and times every RPC. Only this module (and
//! `pairdb_common::convert`) touches prost types on the node.
//!
//! Files: `replica` (writes, applies, reads, record repair), `ranges` (streams, pulls,
//! digests, key listings, purges, drops); this file holds the service, the maintenance gate,
//! the blocking-call helpers and node info.

mod ranges;
mod replica;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_server::StorageNodeService;
use pairdb_common::{Error as Common, context, convert, failpoint};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::{ApplyCmd, ApplyReply, Origin, Store, WriteCmd, WriteReply};

/// Most items in one batch RPC.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Bytes of key state a batch answer may carry (items past it fail with OVERLOADED and are
/// sent again on their own), leaving room in the message for everything else.
pub const BATCH_ANSWER_BUDGET_BYTES: usize = 48 << 20;
/// Most sub-ranges and key hashes an anti-entropy filter may name.
const MAX_FILTER_RANGES: usize = 65_536;
const MAX_FILTER_KEYS: usize = 1 << 20;

pub struct StorageApi {
    node: Arc<Node>,
}

/// Checks the sizes of an anti-entropy filter and its tenant ids.
pub(crate) fn check_filter(
    sub_ranges: usize,
    tenant_ids: &[String],
    key_hashes: usize,
) -> Result<()> {
    if sub_ranges > MAX_FILTER_RANGES || key_hashes > MAX_FILTER_KEYS {
        return Err(Error::Invalid(Common::InvalidArgument(format!(
            "a filter may name at most {MAX_FILTER_RANGES} sub-ranges and {MAX_FILTER_KEYS} key hashes"
        ))));
    }
    Ok(pairdb_common::validate::tenant_filter(tenant_ids)?)
}

/// The anti-entropy narrowing of a stream or pull request, within its limits.
pub(crate) fn filter_from(
    sub_ranges: Vec<pb::TokenRange>,
    tenant_ids: Vec<String>,
    key_hashes: Vec<u64>,
) -> Result<crate::store::Filter> {
    check_filter(sub_ranges.len(), &tenant_ids, key_hashes.len())?;
    Ok(crate::store::Filter {
        sub_ranges: sub_ranges
            .into_iter()
            .map(|r| convert::range_from_pb(Some(r)))
            .collect(),
        tenants: tenant_ids.into_iter().collect(),
        key_hashes: key_hashes.into_iter().collect(),
    })
}

impl StorageApi {
    pub fn new(node: Arc<Node>) -> StorageApi {
        StorageApi { node }
    }

    fn observe<T>(&self, op: &'static str, started: Instant, r: &Result<T>) {
        let m = &self.node.metrics;
        m.served(op, started.elapsed().as_secs_f64());
        if let Err(e) = r {
            m.error(op, e.to_common().code());
        }
        self.node.recent.record(op, started.elapsed(), r.is_ok());
    }

    fn serving_clients(&self) -> Result<()> {
        if self.node.maintenance() {
            return Err(Error::Maintenance);
        }
        Ok(())
    }

    /// Runs a write (one op or a whole batch). Without `sync_writes` a small RocksDB write is
    /// a memtable insert plus an unsynced WAL append (microseconds), cheaper inline than a hop
    /// to the blocking pool (a hop costs two context switches). It runs on a blocking thread
    /// instead with `sync_writes` (concurrent synced ones share one fsync), when the request
    /// is large (`big`), while a streamed range is being ingested (`Store::fenced`: a write
    /// into it may wait on the ingest's gate), or while RocksDB is stalling writes
    /// (`Engine::write_stalled`), so neither ever holds the async workers.
    async fn write_path<T: Send + 'static>(
        &self,
        big: bool,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T> {
        let store = &self.node.store;
        if let Some(why) = store.engine().failed() {
            return Err(Error::StorageFailed(why));
        }
        let out = if big || store.sync_writes() || store.fenced() {
            self.blocking(f).await?
        } else if store.engine().write_stalled() {
            self.node.metrics.stalled_writes_offloaded.inc();
            self.blocking(f).await?
        } else {
            f(store)
        };
        failpoint::crash(failpoint::points::STORAGE_AFTER_WRITE);
        Ok(out)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T> {
        let store = self.node.store.clone();
        // The task owns the work: a client that goes away cannot cut a write in half.
        self.node
            .sup
            .spawn_blocking("storage", move || f(&store))
            .await
            .map_err(|e| Error::Engine(crate::engine::EngineError::Io(e.to_string())))
    }

    /// Runs a (short) scan on the node's scan pool.
    async fn scan<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.node.store.clone();
        self.node.scans.run(move || f(&store)).await?
    }
}

#[tonic::async_trait]
impl StorageNodeService for StorageApi {
    async fn write(&self, req: Request<pb::WriteOp>) -> Result<Response<pb::WriteResult>, Status> {
        self.rpc_write(req).await
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        self.rpc_batch_write(req).await
    }

    async fn apply(
        &self,
        req: Request<pb::KeyVersions>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        self.rpc_apply(req).await
    }

    async fn batch_apply(
        &self,
        req: Request<pb::BatchApplyRequest>,
    ) -> Result<Response<pb::BatchApplyResponse>, Status> {
        self.rpc_batch_apply(req).await
    }

    async fn read(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::ReadResult>, Status> {
        self.rpc_read(req).await
    }

    async fn batch_read(
        &self,
        req: Request<pb::BatchReadRequest>,
    ) -> Result<Response<pb::BatchReadResponse>, Status> {
        self.rpc_batch_read(req).await
    }

    async fn repair(
        &self,
        req: Request<pb::KeyVersions>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        self.rpc_repair(req).await
    }

    type StreamRangeStream = ReceiverStream<Result<pb::StreamBatch, Status>>;

    async fn stream_range(
        &self,
        req: Request<pb::StreamRangeRequest>,
    ) -> Result<Response<Self::StreamRangeStream>, Status> {
        self.rpc_stream_range(req).await
    }

    async fn range_digest(
        &self,
        req: Request<pb::RangeDigestRequest>,
    ) -> Result<Response<pb::RangeDigestResponse>, Status> {
        self.rpc_range_digest(req).await
    }

    async fn repair_digest(
        &self,
        req: Request<pb::RepairDigestRequest>,
    ) -> Result<Response<pb::RepairDigestResponse>, Status> {
        self.rpc_repair_digest(req).await
    }

    async fn repair_keys(
        &self,
        req: Request<pb::RepairKeysRequest>,
    ) -> Result<Response<pb::RepairKeysResponse>, Status> {
        self.rpc_repair_keys(req).await
    }

    async fn purge_tombstones(
        &self,
        req: Request<pb::PurgeTombstonesRequest>,
    ) -> Result<Response<pb::PurgeTombstonesResponse>, Status> {
        self.rpc_purge_tombstones(req).await
    }

    async fn mark_repaired(
        &self,
        req: Request<pb::MarkRepairedRequest>,
    ) -> Result<Response<pb::MarkRepairedResponse>, Status> {
        self.rpc_mark_repaired(req).await
    }

    type PullRangeStream = ReceiverStream<Result<pb::PullProgress, Status>>;

    async fn pull_range(
        &self,
        req: Request<pb::PullRangeRequest>,
    ) -> Result<Response<Self::PullRangeStream>, Status> {
        self.rpc_pull_range(req).await
    }

    async fn drop_range(
        &self,
        req: Request<pb::DropRangeRequest>,
    ) -> Result<Response<pb::DropRangeResponse>, Status> {
        self.rpc_drop_range(req).await
    }

    async fn drop_tenant_range(
        &self,
        req: Request<pb::DropTenantRangeRequest>,
    ) -> Result<Response<pb::DropRangeResponse>, Status> {
        self.rpc_drop_tenant_range(req).await
    }

    async fn node_info(
        &self,
        _req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        let d = self.node.disk.status();
        Ok(Response::new(pb::NodeInfoResponse {
            node_id: self.node.node_id.clone(),
            epoch: self.node.store.identity().actor().epoch,
            version: env!("CARGO_PKG_VERSION").to_string(),
            disk: Some(pb::DiskStatus {
                usage_percent: d.usage_percent,
                available_bytes: d.available_bytes,
                total_bytes: d.total_bytes,
                is_throttled: d.is_throttled,
                is_circuit_broken: d.is_circuit_broken,
                state: d.state.as_str().to_string(),
            }),
            maintenance: self.node.maintenance(),
            uptime_secs: self.node.started.elapsed().as_secs(),
            data_dir: self.node.data_dir.display().to_string(),
            unrepaired_outage_ms: self.node.outage.outage_ms(),
            started_at_ms: self.node.outage.started_ms(),
        }))
    }

    /// Only a coordinator may hold a node in maintenance (see [`coordinator_only`]).
    async fn set_maintenance(
        &self,
        req: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        let (enabled, drain) = (req.get_ref().enabled, req.get_ref().drained_at_ms);
        let audit = self.coordinator_only(
            &req,
            format!("SetMaintenance enabled={enabled} drained_at_ms={drain}"),
        )?;
        let latest = pairdb_common::now_ms().saturating_add(crate::node::MAX_DRAIN_CLOCK_SKEW_MS);
        if drain > latest {
            let s = Status::from(Error::Invalid(Common::InvalidArgument(format!(
                "drained_at_ms {drain} is more than {} s ahead of this node's clock",
                crate::node::MAX_DRAIN_CLOCK_SKEW_MS / 1000
            ))));
            audit.done(&format!("{:?}: {}", s.code(), s.message()));
            return Err(s);
        }
        match (enabled, drain) {
            (on, 0) => self.node.set_maintenance(on),
            (true, d) => self.node.hold_drain(d),
            (false, d) => self.node.release_drain(d),
        }
        audit.done("ok");
        Ok(Response::new(pb::SetMaintenanceResponse {
            enabled: self.node.maintenance(),
        }))
    }

    async fn create_backup_part(
        &self,
        req: Request<pb::BackupPartRequest>,
    ) -> Result<Response<pb::BackupPartResponse>, Status> {
        let id = req.get_ref().backup_id.clone();
        let audit = self.coordinator_only(&req, format!("CreateBackupPart {id}"))?;
        let r = self
            .backup_call(move |n| {
                let part = crate::backup::create(n, &id)?;
                let root = n.backup_dir.clone().unwrap_or_default();
                Ok(part_answer(&root, &part, Vec::new(), true))
            })
            .await;
        audit.result(&r);
        Ok(Response::new(r?))
    }

    async fn verify_backup_part(
        &self,
        req: Request<pb::BackupPartRequest>,
    ) -> Result<Response<pb::BackupPartResponse>, Status> {
        let id = req.get_ref().backup_id.clone();
        let audit = self.coordinator_only(&req, format!("VerifyBackupPart {id}"))?;
        let r = self
            .backup_call(move |n| {
                let (part, problems) = crate::backup::verify(n, &id)?;
                let root = n.backup_dir.clone().unwrap_or_default();
                Ok(part_answer(&root, &part, problems, true))
            })
            .await;
        audit.result(&r);
        Ok(Response::new(r?))
    }

    async fn delete_backup_part(
        &self,
        req: Request<pb::BackupPartRequest>,
    ) -> Result<Response<pb::BackupPartResponse>, Status> {
        let id = req.get_ref().backup_id.clone();
        let audit = self.coordinator_only(&req, format!("DeleteBackupPart {id}"))?;
        let node_id = self.node.node_id.clone();
        let r = self
            .backup_call(move |n| {
                Ok(pb::BackupPartResponse {
                    node_id,
                    existed: crate::backup::delete(n, &id)?,
                    ..Default::default()
                })
            })
            .await;
        audit.result(&r);
        Ok(Response::new(r?))
    }
}

/// The audit line of a coordinator-only call, written once its outcome is known.
struct Audit {
    caller: String,
    conn: String,
    action: String,
}

impl Audit {
    fn done(&self, outcome: &str) {
        pairdb_common::telemetry::audit(&self.caller, &self.conn, &self.action, "", outcome);
    }

    fn result<T>(&self, r: &Result<T, Status>) {
        match r {
            Ok(_) => self.done("ok"),
            Err(s) => self.done(&format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

impl StorageApi {
    /// Calls only a coordinator may make (maintenance, backups): over TLS the peer's
    /// certificate must carry the coordinator role (another storage node is admitted to this
    /// service for streaming, not for these). Audited like the admin port's actions.
    fn coordinator_only<T>(&self, req: &Request<T>, action: String) -> Result<Audit, Status> {
        let info = req
            .extensions()
            .get::<pairdb_common::tls::listen::PeerInfo>();
        let audit = Audit {
            caller: info
                .and_then(|i| i.peer.as_ref())
                .map(|p| p.describe())
                .unwrap_or_else(|| "anonymous".into()),
            conn: info.map(|i| i.describe()).unwrap_or_default(),
            action,
        };
        let coordinator = info.is_none_or(|i| {
            !i.tls
                || i.peer
                    .as_ref()
                    .is_some_and(|p| p.has_role(pairdb_common::tls::Role::Coordinator))
        });
        if !coordinator {
            self.node.metrics.security.denied("role");
            audit.done("denied");
            return Err(
                Common::PermissionDenied("only a coordinator may make this call".into())
                    .to_status(),
            );
        }
        Ok(audit)
    }

    /// Runs backup file work on the blocking pool.
    async fn backup_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> std::result::Result<T, Common> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.node.clone();
        self.node
            .sup
            .spawn_blocking("backup", move || f(&node))
            .await
            .map_err(|e| Common::Internal(format!("backup task: {e}")).to_status())?
            .map_err(|e| e.to_status())
    }
}

/// A part as the wire shows it.
fn part_answer(
    root: &std::path::Path,
    part: &pairdb_common::backup::NodePart,
    problems: Vec<String>,
    existed: bool,
) -> pb::BackupPartResponse {
    let doc = pairdb_common::backup::node_part_path(root, &part.backup_id, &part.node_id)
        .map(|p| p.join("part.json"));
    let part_sha256 = doc
        .ok()
        .and_then(|p| pairdb_common::backup::sha256_file(&p).ok())
        .map(|(h, _)| h)
        .unwrap_or_default();
    pb::BackupPartResponse {
        node_id: part.node_id.clone(),
        epoch: part.epoch,
        files: part.files.len() as u32,
        bytes: part.total_bytes(),
        linked: part.linked,
        problems,
        part_sha256,
        existed,
    }
}
