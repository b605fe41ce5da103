//! `pairdb.CoordinatorService`: the public gRPC edge. Converts wire types, counts and times
//! every request, maps errors through [`crate::error`]. Only this module touches the
//! coordinator's prost types.
//!
//! Files: `backup` (backup RPCs), `data` (data RPCs), `tenants` (tenant RPCs and the settings rules), `nodes`
//! (membership and topology RPCs, the ring), `health` (cluster health, ranges under quorum), `repair` (repair and hint RPCs);
//! this file holds the service, its audit wrapper, request accounting and the token RPCs.

mod backup;
mod data;
mod health;
mod nodes;
mod repair;
mod tenants;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pairdb_common::api::pb;
use pairdb_common::api::pb::coordinator_service_server::CoordinatorService;
use pairdb_common::ring::{MAX_VIRTUAL_NODES, NodeState};
use pairdb_common::{Error as E, convert, token, validate};
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::cluster::Health;
use crate::data::{DataPlane, ReadReq, WriteReq};
use crate::error::{Error, Result};
use crate::meta::{
    ChangeKind, ChangeRecord, Level, MetaError, MetaStore, NodeRecord, NodeStatus, NodeWrite,
    TenantRecord,
};
use crate::metrics::OpLabels;
use crate::topology::{self, Params, Topology};
use pairdb_common::tls::listen::PeerInfo;

/// Most items in one batch request.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Bytes of read answers one BatchRead may carry (inside the 64 MiB message limit).
pub const BATCH_ANSWER_BUDGET_BYTES: usize = 48 << 20;

pub struct CoordinatorApi {
    pub data: Arc<DataPlane>,
    pub contexts: Arc<crate::contexts::ContextKeys>,
    pub meta: Arc<dyn MetaStore>,
    pub topology: Arc<Topology>,
    pub repairs: Arc<crate::repair::Repairs>,
    pub auth: Arc<crate::auth::Auth>,
    pub backups: Arc<crate::backup::Backups>,
}

fn level(c: i32) -> Option<Level> {
    match pb::Consistency::try_from(c) {
        Ok(pb::Consistency::One) => Some(Level::One),
        Ok(pb::Consistency::Quorum) => Some(Level::Quorum),
        Ok(pb::Consistency::All) => Some(Level::All),
        Ok(pb::Consistency::Any) => Some(Level::Any),
        _ => None,
    }
}

fn level_pb(l: Level) -> pb::Consistency {
    match l {
        Level::One => pb::Consistency::One,
        Level::Quorum => pb::Consistency::Quorum,
        Level::All => pb::Consistency::All,
        Level::Any => pb::Consistency::Any,
    }
}

/// Longest request text written to one audit line.
const AUDIT_REQUEST_CHARS: usize = 2048;

/// An id of a change or repair run (uuids): at most 64 printable characters.
fn check_id(what: &str, id: &str) -> Result<()> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(E::InvalidArgument(format!(
            "{what} {} must be at most 64 printable characters",
            validate::excerpt(id)
        ))
        .into());
    }
    Ok(())
}

impl CoordinatorApi {
    /// Runs an admin action and writes its audit line: the caller (token id or certificate),
    /// its connection, the request (admin requests carry no secrets) and the outcome.
    async fn audited<T, R, F, Fut>(
        &self,
        action: &'static str,
        req: Request<T>,
        f: F,
    ) -> std::result::Result<Response<R>, Status>
    where
        T: std::fmt::Debug,
        F: FnOnce(Request<T>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<R>, Status>>,
    {
        let caller = Principal::of(&req).describe();
        let peer = req
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.describe())
            .unwrap_or_default();
        let mut request = format!("{:?}", req.get_ref());
        if request.len() > AUDIT_REQUEST_CHARS {
            let mut cut = AUDIT_REQUEST_CHARS;
            while !request.is_char_boundary(cut) {
                cut -= 1;
            }
            request.truncate(cut);
            request.push('…');
        }
        let r = f(req).await;
        let outcome = match &r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{}: {}", E::from_status(s).code().name(), s.message()),
        };
        pairdb_common::telemetry::audit(&caller, &peer, action, &request, &outcome);
        r
    }

    fn observe<T>(&self, op: &'static str, started: Instant, r: &Result<T>) {
        let m = &self.data.metrics;
        let l = OpLabels { op };
        m.requests.get_or_create(&l).inc();
        m.latency
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = r {
            m.error(op, e.to_common().code());
        }
    }

    /// This coordinator's live view of a node's health.
    fn live_status(&self, node_id: &str) -> Option<Arc<Health>> {
        self.data
            .cluster
            .snapshot()
            .nodes
            .get(node_id)
            .map(|e| e.health.clone())
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> std::result::Result<Response<pb::WriteResponse>, Status> {
        self.rpc_write(req).await
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadResponse>, Status> {
        self.rpc_read(req).await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> std::result::Result<Response<pb::DeleteResponse>, Status> {
        self.rpc_delete(req).await
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchWriteItemsResponse>, Status> {
        self.rpc_batch_write(req).await
    }

    async fn batch_read(
        &self,
        req: Request<pb::BatchReadItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchReadItemsResponse>, Status> {
        self.rpc_batch_read(req).await
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.rpc_create_tenant(req).await
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.rpc_get_tenant(req).await
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.rpc_update_tenant(req).await
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> std::result::Result<Response<pb::ListTenantsResponse>, Status> {
        self.rpc_list_tenants(req).await
    }

    async fn add_storage_node(
        &self,
        req: Request<pb::AddStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.rpc_add_storage_node(req).await
    }

    async fn remove_storage_node(
        &self,
        req: Request<pb::RemoveStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.rpc_remove_storage_node(req).await
    }

    async fn replace_storage_node(
        &self,
        req: Request<pb::ReplaceStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.rpc_replace_storage_node(req).await
    }

    async fn create_backup(
        &self,
        req: Request<pb::CreateBackupRequest>,
    ) -> std::result::Result<Response<pb::BackupInfo>, Status> {
        self.rpc_create_backup(req).await
    }

    async fn get_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::BackupInfo>, Status> {
        self.rpc_get_backup(req).await
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> std::result::Result<Response<pb::ListBackupsResponse>, Status> {
        self.rpc_list_backups(req).await
    }

    async fn verify_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::VerifyBackupResponse>, Status> {
        self.rpc_verify_backup(req).await
    }

    async fn delete_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::DeleteBackupResponse>, Status> {
        self.rpc_delete_backup(req).await
    }

    async fn drain_storage_node(
        &self,
        req: Request<pb::DrainStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        self.rpc_drain_storage_node(req).await
    }

    async fn undrain_storage_node(
        &self,
        req: Request<pb::UndrainStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        self.rpc_undrain_storage_node(req).await
    }

    async fn get_storage_node_status(
        &self,
        req: Request<pb::GetStorageNodeStatusRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        self.rpc_get_storage_node_status(req).await
    }

    async fn list_storage_nodes(
        &self,
        req: Request<pb::ListStorageNodesRequest>,
    ) -> std::result::Result<Response<pb::ListStorageNodesResponse>, Status> {
        self.rpc_list_storage_nodes(req).await
    }

    async fn list_pending_changes(
        &self,
        req: Request<pb::ListPendingChangesRequest>,
    ) -> std::result::Result<Response<pb::ListPendingChangesResponse>, Status> {
        self.rpc_list_pending_changes(req).await
    }

    async fn abort_change(
        &self,
        req: Request<pb::AbortChangeRequest>,
    ) -> std::result::Result<Response<pb::PendingChange>, Status> {
        self.rpc_abort_change(req).await
    }

    async fn get_cluster_health(
        &self,
        req: Request<pb::GetClusterHealthRequest>,
    ) -> std::result::Result<Response<pb::ClusterHealth>, Status> {
        self.rpc_get_cluster_health(req).await
    }

    async fn get_ring(
        &self,
        req: Request<pb::GetRingRequest>,
    ) -> std::result::Result<Response<pb::RingView>, Status> {
        self.rpc_get_ring(req).await
    }

    async fn start_repair(
        &self,
        req: Request<pb::StartRepairRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        self.rpc_start_repair(req).await
    }

    async fn get_repair_status(
        &self,
        req: Request<pb::GetRepairStatusRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        self.rpc_get_repair_status(req).await
    }

    async fn get_hint_stats(
        &self,
        req: Request<pb::GetHintStatsRequest>,
    ) -> std::result::Result<Response<pb::HintStats>, Status> {
        self.rpc_get_hint_stats(req).await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateTokenResponse>, Status> {
        self.audited("CreateToken", req, |req| async move {
            let r = crate::tokens::create(&self.meta, &self.auth, req.into_inner()).await;
            Ok(Response::new(r?))
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> std::result::Result<Response<pb::ListTokensResponse>, Status> {
        self.audited("ListTokens", req, |_req| async move {
            Ok(Response::new(crate::tokens::list(&self.meta).await?))
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> std::result::Result<Response<pb::TokenInfo>, Status> {
        self.audited("RevokeToken", req, |req| async move {
            let id = req.into_inner().token_id;
            Ok(Response::new(
                crate::tokens::revoke(&self.meta, &self.auth, &id).await?,
            ))
        })
        .await
    }
}
