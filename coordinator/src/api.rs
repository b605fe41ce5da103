//! `pairdb.CoordinatorService`: the public gRPC edge. Converts wire types, counts and times
//! every request, maps errors through [`crate::error`]. Only this module touches the
//! coordinator's prost types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use pairdb_common::api::pb;
use pairdb_common::api::pb::coordinator_service_server::CoordinatorService;
use pairdb_common::ring::{MAX_VIRTUAL_NODES, NodeState};
use pairdb_common::{Error as E, convert, token, validate};
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::data::{DataPlane, ReadReq, WriteReq};
use crate::error::{Error, Result};
use crate::meta::{
    ChangeKind, ChangeRecord, Level, MetaStore, NodeRecord, NodeStatus, NodeWrite, TenantRecord,
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

fn tenant_pb(t: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.tenant_id.clone(),
        replication_factor: t.replication_factor,
        read_consistency: level_pb(t.read_consistency) as i32,
        write_consistency: level_pb(t.write_consistency) as i32,
        conflict_policy: convert::policy_to_pb(t.conflict_policy) as i32,
        max_value_bytes: t.max_value_bytes,
        sibling_warn: t.sibling_warn,
        sibling_max: t.sibling_max,
        rate_limit_rps: t.rate_limit_rps,
        max_state_bytes: t.max_state_bytes,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
    }
}

/// Applies the non-default fields of `p` onto `t`, validating each, then the rules between
/// them ([`check_tenant`]).
fn apply_tenant_fields(t: &mut TenantRecord, p: &pb::Tenant) -> Result<()> {
    if p.replication_factor != 0 {
        if !(1..=7).contains(&p.replication_factor) {
            return Err(E::InvalidArgument(format!(
                "replication_factor {} must be 1-7",
                p.replication_factor
            ))
            .into());
        }
        t.replication_factor = p.replication_factor;
    }
    if let Some(l) = level(p.read_consistency) {
        if l == Level::Any {
            return Err(E::InvalidArgument("ANY is not a read consistency".into()).into());
        }
        t.read_consistency = l;
    }
    if let Some(l) = level(p.write_consistency) {
        t.write_consistency = l;
    }
    if p.conflict_policy != 0 {
        t.conflict_policy = convert::policy_from_pb(p.conflict_policy);
    }
    if p.max_value_bytes != 0 {
        if p.max_value_bytes as usize > validate::HARD_MAX_VALUE_BYTES {
            return Err(E::InvalidArgument(format!(
                "max_value_bytes {} is above the 16 MiB cap",
                p.max_value_bytes
            ))
            .into());
        }
        t.max_value_bytes = p.max_value_bytes;
    }
    if p.sibling_max != 0 {
        if p.sibling_max as usize > validate::HARD_MAX_SIBLINGS {
            return Err(E::InvalidArgument(format!(
                "sibling_max must be at most {}",
                validate::HARD_MAX_SIBLINGS
            ))
            .into());
        }
        t.sibling_max = p.sibling_max;
    }
    if p.sibling_warn != 0 {
        t.sibling_warn = p.sibling_warn;
    }
    if p.rate_limit_rps != 0 {
        t.rate_limit_rps = p.rate_limit_rps;
    }
    if p.max_state_bytes != 0 {
        t.max_state_bytes = p.max_state_bytes;
    }
    check_tenant(t)
}

/// The rules between a tenant's limits: one largest value fits its state cap, and the worst
/// merged state of a key (every replica coordinating writes apart under a partition, each up
/// to the cap) plus its read answer stays inside a message, so every key stays readable.
fn check_tenant(t: &TenantRecord) -> Result<()> {
    let value = validate::effective_max_value_bytes(t.max_value_bytes);
    let state = t.max_state_bytes as usize;
    if state > validate::HARD_MAX_STATE_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes {state} is above the {} cap",
            validate::HARD_MAX_STATE_BYTES
        ))
        .into());
    }
    if state < value + validate::STATE_OVERHEAD_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes {state} must be at least max_value_bytes ({value}) + {} (a largest value with its context)",
            validate::STATE_OVERHEAD_BYTES
        ))
        .into());
    }
    let worst = state * t.replication_factor as usize + value;
    if worst > validate::MESSAGE_BUDGET_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes x replication_factor + max_value_bytes = {worst} is above {}: a key merged from every replica could not be read in one message; lower max_state_bytes or max_value_bytes",
            validate::MESSAGE_BUDGET_BYTES
        ))
        .into());
    }
    if t.sibling_warn as usize > validate::HARD_MAX_SIBLINGS {
        return Err(E::InvalidArgument(format!(
            "sibling_warn must be at most {}",
            validate::HARD_MAX_SIBLINGS
        ))
        .into());
    }
    Ok(())
}

fn node_pb(n: &NodeRecord, live: Option<NodeStatus>) -> pb::StorageNode {
    let status = live.unwrap_or(n.status);
    pb::StorageNode {
        node_id: n.node_id.clone(),
        host: n.host.clone(),
        port: u32::from(n.port),
        admin_port: u32::from(n.admin_port),
        zone: n.zone.clone(),
        virtual_nodes: n.virtual_nodes,
        state: match n.state {
            NodeState::Bootstrapping => pb::NodeState::Bootstrapping,
            NodeState::Normal => pb::NodeState::Normal,
            NodeState::Leaving => pb::NodeState::Leaving,
            NodeState::Removed => pb::NodeState::Removed,
        } as i32,
        status: match status {
            NodeStatus::Up => pb::NodeStatus::Up,
            NodeStatus::Down => pb::NodeStatus::Down,
            NodeStatus::Unknown => pb::NodeStatus::Unknown,
        } as i32,
        last_seen_ms: n.last_seen_ms.unwrap_or(0),
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
    }
}

fn sibling(v: &pairdb_common::version::Version) -> pb::Sibling {
    pb::Sibling {
        value: v.value.clone(),
        written_at_ms: v.written_at_ms,
        dot: Some(convert::dot_to_pb(&v.dot)),
        expires_at_ms: v.expires_at_ms,
    }
}

/// Longest request text written to one audit line.
const AUDIT_REQUEST_CHARS: usize = 2048;

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

    /// Before a known node is trusted at a new address, the node there must prove it is that
    /// node: with TLS its certificate (from the cluster CA) must name the node id; without
    /// TLS (loopback or `--insecure`) it must at least answer NodeInfo with that id.
    async fn prove_identity(&self, a: &pb::AddStorageNodeRequest) -> Result<()> {
        let ch = crate::cluster::node_channel(
            self.data.cluster.tls(),
            &a.node_id,
            &a.host,
            a.port as u16,
            self.data.cluster.config().connect_timeout_ms,
        )
        .map_err(E::InvalidArgument)?;
        let mut c =
            pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient::new(ch);
        let info = tokio::time::timeout(
            std::time::Duration::from_millis(self.data.cluster.config().replica_timeout_ms),
            c.node_info(pb::NodeInfoRequest {}),
        )
        .await
        .map_err(|_| {
            E::TopologyConflict(format!(
                "storage node {} moves to {}:{} only once the node there proves its identity; it did not answer in time",
                a.node_id, a.host, a.port
            ))
        })?
        .map_err(|s| {
            E::TopologyConflict(format!(
                "storage node {} moves to {}:{} only once the node there proves its identity: {}",
                a.node_id,
                a.host,
                a.port,
                s.message()
            ))
        })?
        .into_inner();
        if info.node_id != a.node_id {
            return Err(E::TopologyConflict(format!(
                "the node at {}:{} is {:?}, not {:?}: address not changed",
                a.host, a.port, info.node_id, a.node_id
            ))
            .into());
        }
        Ok(())
    }

    /// AddStorageNode: idempotent for a node that re-registers (`--join` on every start).
    async fn add_node(&self, a: &pb::AddStorageNodeRequest) -> Result<pb::TopologyChangeResponse> {
        let nodes = self.meta.list_nodes().await?;
        if let Some(n) = nodes
            .iter()
            .find(|n| n.node_id == a.node_id && n.state != NodeState::Removed)
        {
            if n.host != a.host
                || u32::from(n.port) != a.port
                || u32::from(n.admin_port) != a.admin_port
            {
                if n.host != a.host || u32::from(n.port) != a.port {
                    self.prove_identity(a).await?;
                }
                self.meta
                    .write_nodes(&[NodeWrite::SetAddress {
                        node_id: a.node_id.clone(),
                        host: a.host.clone(),
                        port: a.port as u16,
                        admin_port: a.admin_port as u16,
                    }])
                    .await?;
                self.data.cluster.refresh().await?;
                tracing::info!(node_id = %a.node_id, host = %a.host, port = a.port, "storage node address changed");
            }
            return self.change_response(&a.node_id, "").await;
        }
        // A cluster with no owners holds no data: the node joins as NORMAL straight away.
        let forming = a.initial_member || !nodes.iter().any(|n| n.state.owns_ranges());
        if forming {
            self.meta
                .write_nodes(&[NodeWrite::Insert(node_record(a, NodeState::Normal))])
                .await?;
            self.data.cluster.refresh().await?;
            tracing::info!(node_id = %a.node_id, host = %a.host, port = a.port, "storage node added as NORMAL (forming the cluster)");
            return self.change_response(&a.node_id, "").await;
        }
        let params = Params {
            adds: vec![a.node_id.clone()],
            removes: vec![],
            force: false,
        };
        let change = topology::new_change(ChangeKind::Bootstrap, &a.node_id, &params, &[], None);
        self.meta
            .create_change(
                &change,
                &[NodeWrite::Insert(node_record(a, NodeState::Bootstrapping))],
                &topology::rules::bootstrap,
            )
            .await?;
        self.data.cluster.refresh().await?;
        tracing::info!(node_id = %a.node_id, host = %a.host, port = a.port, change_id = %change.change_id, "storage node bootstrapping");
        self.change_response(&a.node_id, &change.change_id).await
    }

    /// The node and its change (`change_id`, or else its active change, if any).
    async fn change_response(
        &self,
        node_id: &str,
        change_id: &str,
    ) -> Result<pb::TopologyChangeResponse> {
        let node = self.meta.get_node(node_id).await?;
        let change = if change_id.is_empty() {
            self.meta.list_changes(false).await?.into_iter().find(|c| {
                c.node_id == node_id
                    || topology::parse_params(c)
                        .is_ok_and(|p| p.adds.iter().chain(&p.removes).any(|n| n == node_id))
            })
        } else {
            self.meta.get_change(change_id).await?
        };
        Ok(pb::TopologyChangeResponse {
            node: node.map(|n| node_pb(&n, self.live_status(node_id))),
            change: change.as_ref().map(change_pb),
        })
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

    fn live_status(&self, node_id: &str) -> Option<NodeStatus> {
        self.data
            .cluster
            .snapshot()
            .nodes
            .get(node_id)
            .map(|e| e.health.status())
    }

    /// Opens a client's context token (counting refusals).
    async fn open_context(&self, token: &[u8]) -> Result<pairdb_common::version::VersionVector> {
        self.contexts.open(token).await.map_err(|e| {
            self.data.metrics.context_refusals.inc();
            e.into()
        })
    }

    async fn do_write(&self, w: pb::WriteRequest, tombstone: bool) -> Result<pb::WriteResponse> {
        let ok = self
            .data
            .write(WriteReq {
                context: self.open_context(&w.context).await?,
                consistency: level(w.consistency),
                tenant: w.tenant_id,
                key: w.key,
                value: if tombstone { Vec::new() } else { w.value },
                tombstone,
                ttl_seconds: w.ttl_seconds,
                idempotency_key: w.idempotency_key,
                timeout_ms: w.timeout_ms,
            })
            .await?;
        Ok(pb::WriteResponse {
            context: self.contexts.seal(&ok.context),
            dot: Some(convert::dot_to_pb(&ok.dot)),
            replicas_acked: ok.acked,
            deduplicated: ok.deduplicated,
        })
    }

    /// A read; NOT_FOUND travels as a status whose ErrorInfo metadata carries the context
    /// (base64) so a client can still write with it.
    async fn do_read(&self, r: pb::ReadRequest) -> std::result::Result<pb::ReadResponse, Status> {
        let res = self
            .data
            .read(ReadReq {
                tenant: r.tenant_id,
                key: r.key,
                consistency: level(r.consistency),
                timeout_ms: r.timeout_ms,
            })
            .await
            .map_err(Status::from)?;
        match res {
            Ok(ok) => Ok(pb::ReadResponse {
                value: ok.value.unwrap_or_default(),
                siblings: ok.siblings.iter().map(sibling).collect(),
                context: self.contexts.seal(&ok.context),
                replicas_responded: ok.responded,
            }),
            Err(nf) => {
                use base64::Engine;
                let mut meta = HashMap::new();
                meta.insert(
                    "context".to_string(),
                    base64::engine::general_purpose::STANDARD
                        .encode(self.contexts.seal(&nf.context)),
                );
                Err(E::KeyNotFound.to_status_with(meta))
            }
        }
    }
}

fn check_batch(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH_ITEMS {
        return Err(E::InvalidArgument(format!(
            "a batch needs 1 to {MAX_BATCH_ITEMS} items, got {n}"
        ))
        .into());
    }
    Ok(())
}

fn item_error_from_status(s: &Status) -> pb::ItemError {
    E::from_status(s).to_item()
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> std::result::Result<Response<pb::WriteResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let r = self.do_write(req.into_inner(), false).await;
        self.observe("write", started, &r);
        Ok(Response::new(r?))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let r = self.do_read(req.into_inner()).await;
        let m = &self.data.metrics;
        let l = OpLabels { op: "read" };
        m.requests.get_or_create(&l).inc();
        m.latency
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        if let Err(s) = &r {
            m.error("read", E::from_status(s).code());
        }
        Ok(Response::new(r?))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> std::result::Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let d = req.into_inner();
        let r = self
            .do_write(
                pb::WriteRequest {
                    tenant_id: d.tenant_id,
                    key: d.key,
                    context: d.context,
                    consistency: d.consistency,
                    timeout_ms: d.timeout_ms,
                    ..Default::default()
                },
                true,
            )
            .await;
        self.observe("delete", started, &r);
        let w = r?;
        Ok(Response::new(pb::DeleteResponse {
            context: w.context,
            replicas_acked: w.replicas_acked,
        }))
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchWriteItemsResponse>, Status> {
        let started = Instant::now();
        let who = Principal::of(&req);
        let items = req.into_inner().items;
        for w in &items {
            who.check_tenant(&w.tenant_id).map_err(Error::from)?;
        }
        let r = check_batch(items.len());
        self.observe("batch_write", started, &r);
        r?;
        let futs = items.into_iter().map(|w| self.do_write(w, false));
        let results = futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(resp) => pb::BatchWriteItemResult {
                    response: Some(resp),
                    error: None,
                },
                Err(e) => pb::BatchWriteItemResult {
                    response: None,
                    error: Some(e.to_common().to_item()),
                },
            })
            .collect();
        Ok(Response::new(pb::BatchWriteItemsResponse { results }))
    }

    async fn batch_read(
        &self,
        req: Request<pb::BatchReadItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchReadItemsResponse>, Status> {
        let started = Instant::now();
        let who = Principal::of(&req);
        let items = req.into_inner().items;
        for r in &items {
            who.check_tenant(&r.tenant_id).map_err(Error::from)?;
        }
        let r = check_batch(items.len());
        self.observe("batch_read", started, &r);
        r?;
        let futs = items.into_iter().map(|r| self.do_read(r));
        // The answer stays inside a message: items past the budget fail with OVERLOADED (read
        // them on their own).
        let mut budget = BATCH_ANSWER_BUDGET_BYTES;
        let results = futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| {
                match r {
                Ok(resp) => match budget.checked_sub(prost::Message::encoded_len(&resp)) {
                    Some(left) => {
                        budget = left;
                        pb::BatchReadItemResult {
                            response: Some(resp),
                            error: None,
                        }
                    }
                    None => pb::BatchReadItemResult {
                        response: None,
                        error: Some(
                            E::Overloaded(
                                "the batch answer would outgrow a message; read this key on its own"
                                    .into(),
                            )
                            .to_item(),
                        ),
                    },
                },
                Err(s) => pb::BatchReadItemResult {
                    response: None,
                    error: Some(item_error_from_status(&s)),
                },
            }
            })
            .collect();
        Ok(Response::new(pb::BatchReadItemsResponse { results }))
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.audited("CreateTenant", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let p = req.into_inner().tenant.unwrap_or_default();
                validate::tenant_id(&p.tenant_id)?;
                let mut t = TenantRecord::with_defaults(&p.tenant_id);
                apply_tenant_fields(&mut t, &p)?;
                self.meta.create_tenant(&t).await.map_err(|e| match e {
                    crate::meta::MetaError::Conflict(_) => Error::from(E::InvalidArgument(
                        format!("tenant {} already exists", t.tenant_id),
                    )),
                    other => other.into(),
                })?;
                let t = self.meta.get_tenant(&t.tenant_id).await?.unwrap_or(t);
                self.data.tenants.remember(t.clone());
                Ok(tenant_pb(&t))
            }
            .await;
            self.observe("create_tenant", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let id = req.into_inner().tenant_id;
        validate::tenant_id(&id).map_err(Error::from)?;
        match self.meta.get_tenant(&id).await.map_err(Error::from)? {
            Some(t) => Ok(Response::new(tenant_pb(&t))),
            None => Err(Error::from(E::TenantNotFound(id)).into()),
        }
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.audited("UpdateTenant", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let p = req.into_inner().tenant.unwrap_or_default();
                validate::tenant_id(&p.tenant_id)?;
                let mut t = self
                    .meta
                    .get_tenant(&p.tenant_id)
                    .await?
                    .ok_or_else(|| E::TenantNotFound(p.tenant_id.clone()))?;
                apply_tenant_fields(&mut t, &p)?;
                self.meta.update_tenant(&t).await?;
                let t = self.meta.get_tenant(&t.tenant_id).await?.unwrap_or(t);
                self.data.tenants.remember(t.clone());
                Ok(tenant_pb(&t))
            }
            .await;
            self.observe("update_tenant", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    async fn list_tenants(
        &self,
        _req: Request<pb::ListTenantsRequest>,
    ) -> std::result::Result<Response<pb::ListTenantsResponse>, Status> {
        let all = self.meta.list_tenants().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: all.iter().map(tenant_pb).collect(),
        }))
    }

    async fn add_storage_node(
        &self,
        req: Request<pb::AddStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.audited("AddStorageNode", req, |req| async move {
            let started = Instant::now();
            let who = Principal::of(&req);
            let r = async {
                let a = req.into_inner();
                validate_node(&a)?;
                who.check_node(&a.node_id)?;
                self.add_node(&a).await
            }
            .await;
            self.observe("add_storage_node", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    async fn remove_storage_node(
        &self,
        req: Request<pb::RemoveStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.audited("RemoveStorageNode", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let q = req.into_inner();
                validate::node_id(&q.node_id)?;
                let node = self.meta.get_node(&q.node_id).await?.ok_or_else(|| {
                    E::InvalidArgument(format!("storage node {} not found", q.node_id))
                })?;
                if q.force && !q.acknowledge_data_loss {
                    return Err(E::InvalidArgument(
                        "force removes a node without streaming from it: data only that node holds may be lost; \
                         repeat with acknowledge_data_loss to confirm"
                            .into(),
                    )
                    .into());
                }
                if node.state != NodeState::Normal {
                    return Err(E::TopologyConflict(format!(
                        "storage node {} is {}; only a NORMAL node can be removed",
                        q.node_id,
                        node.state.as_str()
                    ))
                    .into());
                }
                let params = Params {
                    adds: vec![],
                    removes: vec![q.node_id.clone()],
                    force: q.force,
                };
                let change = topology::new_change(ChangeKind::Decommission, &q.node_id, &params, &[], None);
                self.meta
                    .create_change(
                        &change,
                        &[NodeWrite::SetState {
                            node_id: q.node_id.clone(),
                            from: vec![NodeState::Normal],
                            to: NodeState::Leaving,
                        }],
                        &topology::rules::removal(&q.node_id, q.force),
                    )
                    .await?;
                tracing::warn!(node_id = %q.node_id, force = q.force, change_id = %change.change_id, "decommission requested");
                self.change_response(&q.node_id, &change.change_id).await
            }
            .await;
            self.observe("remove_storage_node", started, &r);
            Ok(Response::new(r?))

        })
        .await
    }

    async fn replace_storage_node(
        &self,
        req: Request<pb::ReplaceStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::TopologyChangeResponse>, Status> {
        self.audited("ReplaceStorageNode", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let q = req.into_inner();
                let new = q
                    .new_node
                    .ok_or_else(|| E::InvalidArgument("new_node is required".into()))?;
                validate_node(&new)?;
                validate::node_id(&q.old_node_id)?;
                if new.node_id == q.old_node_id {
                    return Err(E::InvalidArgument(
                        "the new node needs its own node_id (a replacement is a new replica identity)".into(),
                    )
                    .into());
                }
                let old = self.meta.get_node(&q.old_node_id).await?.ok_or_else(|| {
                    E::InvalidArgument(format!("storage node {} not found", q.old_node_id))
                })?;
                if old.state != NodeState::Normal {
                    return Err(E::TopologyConflict(format!(
                        "storage node {} is {}; only a NORMAL node can be replaced",
                        q.old_node_id,
                        old.state.as_str()
                    ))
                    .into());
                }
                let params = Params {
                    adds: vec![new.node_id.clone()],
                    removes: vec![q.old_node_id.clone()],
                    force: false,
                };
                let change = topology::new_change(ChangeKind::Replace, &new.node_id, &params, &[], None);
                self.meta
                    .create_change(
                        &change,
                        &[
                            NodeWrite::Insert(node_record(&new, NodeState::Bootstrapping)),
                            NodeWrite::SetState {
                                node_id: q.old_node_id.clone(),
                                from: vec![NodeState::Normal],
                                to: NodeState::Leaving,
                            },
                        ],
                        &topology::rules::replacement(&q.old_node_id),
                    )
                    .await?;
                tracing::warn!(old = %q.old_node_id, new = %new.node_id, change_id = %change.change_id, "replace requested");
                self.change_response(&new.node_id, &change.change_id).await
            }
            .await;
            self.observe("replace_storage_node", started, &r);
            Ok(Response::new(r?))

        })
        .await
    }

    async fn get_storage_node_status(
        &self,
        req: Request<pb::GetStorageNodeStatusRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        let id = req.into_inner().node_id;
        validate::node_id(&id).map_err(Error::from)?;
        match self.meta.get_node(&id).await.map_err(Error::from)? {
            Some(n) => Ok(Response::new(node_pb(&n, self.live_status(&id)))),
            None => Err(Status::not_found(format!("storage node {id} not found"))),
        }
    }

    async fn list_storage_nodes(
        &self,
        _req: Request<pb::ListStorageNodesRequest>,
    ) -> std::result::Result<Response<pb::ListStorageNodesResponse>, Status> {
        let nodes = self.meta.list_nodes().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListStorageNodesResponse {
            nodes: nodes
                .iter()
                .map(|n| node_pb(n, self.live_status(&n.node_id)))
                .collect(),
        }))
    }

    async fn list_pending_changes(
        &self,
        req: Request<pb::ListPendingChangesRequest>,
    ) -> std::result::Result<Response<pb::ListPendingChangesResponse>, Status> {
        let all = self
            .meta
            .list_changes(req.into_inner().include_finished)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListPendingChangesResponse {
            changes: all.iter().map(change_pb).collect(),
        }))
    }

    async fn abort_change(
        &self,
        req: Request<pb::AbortChangeRequest>,
    ) -> std::result::Result<Response<pb::PendingChange>, Status> {
        self.audited("AbortChange", req, |req| async move {
            let started = Instant::now();
            let id = req.into_inner().change_id;
            let r = match check_id("change_id", &id) {
                Ok(()) => self.topology.abort(&id).await,
                Err(e) => Err(e),
            };
            self.observe("abort_change", started, &r);
            Ok(Response::new(change_pb(&r?)))
        })
        .await
    }

    async fn get_cluster_health(
        &self,
        _req: Request<pb::GetClusterHealthRequest>,
    ) -> std::result::Result<Response<pb::ClusterHealth>, Status> {
        let snap = self.data.cluster.snapshot();
        let nodes = self.meta.list_nodes().await.map_err(Error::from)?;
        let hints: u64 = self
            .meta
            .hint_targets()
            .await
            .map_err(Error::from)?
            .iter()
            .map(|t| t.pending)
            .sum();
        let pending_changes = self
            .meta
            .list_changes(false)
            .await
            .map_err(Error::from)?
            .len() as u64;
        let view: Vec<pb::StorageNode> = nodes
            .iter()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| node_pb(n, self.live_status(&n.node_id)))
            .collect();
        let up = view
            .iter()
            .filter(|n| n.status == pb::NodeStatus::Up as i32)
            .count() as u32;
        let down = view
            .iter()
            .filter(|n| n.status == pb::NodeStatus::Down as i32)
            .count() as u32;
        let status = if view.is_empty() || up == 0 {
            "unavailable"
        } else if down > 0 {
            "degraded"
        } else {
            "healthy"
        };
        Ok(Response::new(pb::ClusterHealth {
            status: status.into(),
            nodes_total: view.len() as u32,
            nodes_up: up,
            nodes_down: down,
            ring_version: snap.version,
            pending_changes,
            hints_pending: hints,
            nodes: view,
        }))
    }

    async fn get_ring(
        &self,
        req: Request<pb::GetRingRequest>,
    ) -> std::result::Result<Response<pb::RingView>, Status> {
        let q = req.into_inner();
        let snap = self.data.cluster.snapshot();
        let ring = &snap.ring;
        let members: Vec<pb::StorageNode> = ring
            .members()
            .iter()
            .filter_map(|m| {
                snap.nodes
                    .get(&m.node_id)
                    .map(|e| node_pb(&e.record, Some(e.health.status())))
            })
            .collect();
        let (key_replicas, key_token) = if q.tenant_id.is_empty() {
            (vec![], 0)
        } else {
            validate::key_ref(&q.tenant_id, &q.key).map_err(Error::from)?;
            let rf = self
                .data
                .tenants
                .get(&q.tenant_id)
                .await
                .map(|t| t.replication_factor)
                .unwrap_or(3);
            let t = token::token(&q.tenant_id, &q.key);
            (
                ring.preference_list(t, rf as usize)
                    .iter()
                    .map(|m| m.node_id.clone())
                    .collect(),
                t,
            )
        };
        Ok(Response::new(pb::RingView {
            ring_version: snap.version,
            nodes: members,
            tokens: ring.token_count() as u32,
            ownership: ring.ownership(),
            key_replicas,
            key_token,
        }))
    }

    async fn start_repair(
        &self,
        req: Request<pb::StartRepairRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        self.audited("StartRepair", req, |req| async move {
            let q = req.into_inner();
            let tenant = (!q.tenant_id.is_empty()).then_some(q.tenant_id);
            if let Some(t) = &tenant {
                validate::tenant_id(t).map_err(|e| e.to_status())?;
            }
            let params = crate::repair::Params {
                tenant,
                trigger: "manual".into(),
                ..Default::default()
            };
            let range = q.range.map(|r| convert::range_from_pb(Some(r)));
            let run = self.repairs.start(params, range).await?;
            Ok(Response::new(repair_status(&run)))
        })
        .await
    }

    async fn get_repair_status(
        &self,
        req: Request<pb::GetRepairStatusRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        let id = req.into_inner().repair_id;
        check_id("repair_id", &id)?;
        let run = self.repairs.status(&id).await?;
        Ok(Response::new(repair_status(&run)))
    }

    async fn get_hint_stats(
        &self,
        _req: Request<pb::GetHintStatsRequest>,
    ) -> std::result::Result<Response<pb::HintStats>, Status> {
        let targets = self.meta.hint_targets().await.map_err(Error::from)?;
        let m = &self.data.metrics;
        Ok(Response::new(pb::HintStats {
            pending: targets.iter().map(|t| t.pending).sum(),
            stored_total: m.hints_stored.get(),
            replayed_total: m.hints_replayed.get(),
            failed_total: m.hints_failed.get(),
            targets: targets
                .iter()
                .map(|t| pb::HintTargetStats {
                    node_id: t.node_id.clone(),
                    pending: t.pending,
                    oldest_created_at_ms: t.oldest_created_at_ms,
                })
                .collect(),
        }))
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

fn node_record(a: &pb::AddStorageNodeRequest, state: NodeState) -> NodeRecord {
    let mut n = NodeRecord::new(
        &a.node_id,
        &a.host,
        a.port as u16,
        a.admin_port as u16,
        state,
    );
    n.zone = a.zone.clone();
    if a.virtual_nodes != 0 {
        n.virtual_nodes = a.virtual_nodes;
    }
    n
}

fn change_pb(c: &ChangeRecord) -> pb::PendingChange {
    pb::PendingChange {
        change_id: c.change_id.clone(),
        r#type: c.kind.as_str().to_string(),
        node_id: c.node_id.clone(),
        status: c.status.as_str().to_string(),
        progress_json: c.progress.clone(),
        lease_owner: c.lease_owner.clone().unwrap_or_default(),
        lease_expires_at_ms: c.lease_expires_at_ms.unwrap_or(0),
        start_time_ms: c.start_time_ms,
        completed_at_ms: c.completed_at_ms.unwrap_or(0),
        error: c.error.clone().unwrap_or_default(),
    }
}

fn validate_node(a: &pb::AddStorageNodeRequest) -> Result<()> {
    validate::node_id(&a.node_id)?;
    validate::host(&a.host)?;
    validate::zone(&a.zone)?;
    if a.port == 0 || a.port > 65535 || a.admin_port > 65535 {
        return Err(E::InvalidArgument(
            "a port in 1-65535 is required (admin_port 0-65535)".into(),
        )
        .into());
    }
    if a.virtual_nodes > MAX_VIRTUAL_NODES {
        return Err(E::InvalidArgument(format!(
            "virtual_nodes must be at most {MAX_VIRTUAL_NODES}"
        ))
        .into());
    }
    Ok(())
}

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

fn repair_status(r: &crate::meta::RepairRecord) -> pb::RepairStatus {
    pb::RepairStatus {
        repair_id: r.repair_id.clone(),
        status: r.status.clone(),
        progress_json: r.progress.clone(),
        started_at_ms: r.started_at_ms,
        completed_at_ms: r.completed_at_ms.unwrap_or(0),
        error: r.error.clone().unwrap_or_default(),
        driver: r.lease_owner.clone().unwrap_or_default(),
    }
}
