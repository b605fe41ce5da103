//! Membership and topology RPCs: a request only *records* a change (node rows, a
//! `pending_changes` row and the ring version, in one transaction whose admission rules are
//! `crate::topology::rules`); `crate::topology` carries it out. Also the ring (cluster health is
//! `health.rs`).

use super::*;

/// A node as the API shows it: its row, with this coordinator's live view of its health
/// (`live`) when it has one.
pub(super) fn node_pb(n: &NodeRecord, live: Option<&Health>) -> pb::StorageNode {
    let status = live.map_or(n.status, Health::status);
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
        drained_at_ms: n.drained_at_ms.unwrap_or(0),
        maintenance: live.is_some_and(Health::maintenance),
    }
}

pub(super) fn node_record(a: &pb::AddStorageNodeRequest, state: NodeState) -> NodeRecord {
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

pub(super) fn change_pb(c: &ChangeRecord) -> pb::PendingChange {
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

pub(super) fn validate_node(a: &pb::AddStorageNodeRequest) -> Result<()> {
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

impl CoordinatorApi {
    /// Before a known node is trusted at a new address, the node there must prove it is that
    /// node: with TLS its certificate (from the cluster CA) must name the node id; without
    /// TLS (loopback or `--insecure`) it must at least answer NodeInfo with that id.
    pub(super) async fn prove_identity(&self, a: &pb::AddStorageNodeRequest) -> Result<()> {
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
    pub(super) async fn add_node(
        &self,
        a: &pb::AddStorageNodeRequest,
    ) -> Result<pb::TopologyChangeResponse> {
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
            ..Params::default()
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
    pub(super) async fn change_response(
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
            node: node.map(|n| node_pb(&n, self.live_status(node_id).as_deref())),
            change: change.as_ref().map(change_pb),
        })
    }

    pub(super) async fn rpc_add_storage_node(
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

    pub(super) async fn rpc_remove_storage_node(
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
                    ..Params::default()
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

    pub(super) async fn rpc_replace_storage_node(
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
                    ..Params::default()
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

    pub(super) async fn rpc_get_storage_node_status(
        &self,
        req: Request<pb::GetStorageNodeStatusRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        let id = req.into_inner().node_id;
        validate::node_id(&id).map_err(Error::from)?;
        match self.meta.get_node(&id).await.map_err(Error::from)? {
            Some(n) => Ok(Response::new(node_pb(&n, self.live_status(&id).as_deref()))),
            None => Err(Status::not_found(format!("storage node {id} not found"))),
        }
    }

    pub(super) async fn rpc_list_storage_nodes(
        &self,
        _req: Request<pb::ListStorageNodesRequest>,
    ) -> std::result::Result<Response<pb::ListStorageNodesResponse>, Status> {
        let nodes = self.meta.list_nodes().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListStorageNodesResponse {
            nodes: nodes
                .iter()
                .map(|n| node_pb(n, self.live_status(&n.node_id).as_deref()))
                .collect(),
        }))
    }

    pub(super) async fn rpc_list_pending_changes(
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

    pub(super) async fn rpc_abort_change(
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

    pub(super) async fn rpc_get_ring(
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
                    .map(|e| node_pb(&e.record, Some(&e.health)))
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

    pub(super) async fn rpc_drain_storage_node(
        &self,
        req: Request<pb::DrainStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        self.audited("DrainStorageNode", req, |req| async move {
            let started = Instant::now();
            let q = req.into_inner();
            let r = self.set_drain(&q.node_id, Some(q.force)).await;
            self.observe("drain_node", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    pub(super) async fn rpc_undrain_storage_node(
        &self,
        req: Request<pb::UndrainStorageNodeRequest>,
    ) -> std::result::Result<Response<pb::StorageNode>, Status> {
        self.audited("UndrainStorageNode", req, |req| async move {
            let started = Instant::now();
            let r = self.set_drain(&req.into_inner().node_id, None).await;
            self.observe("undrain_node", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    /// Drains (`Some(force)`) or undrains (`None`) a node: the `drained_at` row first (every
    /// coordinator routes by it within one ring poll; this one at once), then the node's own
    /// maintenance mode (best effort: the heartbeat asks a drained node again). The answer's
    /// `maintenance` is what the node said.
    async fn set_drain(&self, node_id: &str, drain: Option<bool>) -> Result<pb::StorageNode> {
        validate::node_id(node_id)?;
        let Some(node) = self.meta.get_node(node_id).await? else {
            return Err(MetaError::NotFound(format!("storage node {node_id}")).into());
        };
        if drain == Some(false) && !node.drained() {
            self.check_drain_keeps_quorum(node_id).await?;
        }
        self.meta
            .set_drained(node_id, drain.map(|_| pairdb_common::now_ms()))
            .await?;
        self.data.cluster.refresh().await?;
        // The drain the node is held for (a repeated drain keeps the first time), or the one
        // an undrain releases (every drain up to now when the row named none).
        let generation = match drain {
            Some(_) => self
                .meta
                .get_node(node_id)
                .await?
                .and_then(|n| n.drained_at_ms)
                .unwrap_or_else(pairdb_common::now_ms),
            None => node.drained_at_ms.unwrap_or_else(pairdb_common::now_ms),
        };
        let snap = self.data.cluster.snapshot();
        let entry = snap.nodes.get(node_id);
        if let Some(e) = entry {
            let timeout = std::time::Duration::from_millis(
                self.data.cluster.config().heartbeat_timeout_ms.max(1000),
            );
            let mut c = e.client.clone();
            let enabled = drain.is_some();
            match tokio::time::timeout(
                timeout,
                c.set_maintenance(pb::SetMaintenanceRequest {
                    enabled,
                    drained_at_ms: generation,
                }),
            )
            .await
            {
                Ok(Ok(r)) => e.health.set_maintenance(r.into_inner().enabled),
                Ok(Err(s)) => {
                    tracing::warn!(node_id, enabled, error = %s, "SetMaintenance refused")
                }
                Err(_) => tracing::warn!(node_id, enabled, "SetMaintenance timed out"),
            }
        }
        let row = self.meta.get_node(node_id).await?.unwrap_or(node);
        Ok(node_pb(&row, entry.map(|e| e.health.as_ref())))
    }

    /// Refuses a drain that would put more of some tenant's ranges below its write quorum
    /// than already are (counting nodes down, drained or in maintenance).
    async fn check_drain_keeps_quorum(&self, node_id: &str) -> Result<()> {
        let snap = self.data.cluster.snapshot();
        let tenants = self.meta.list_tenants().await?;
        let live = crate::replication::live_normal(&snap);
        let without = |id: &str| id != node_id && live(id);
        let before = crate::replication::tenant_coverage(&snap.ring, &tenants, &live);
        let after = crate::replication::tenant_coverage(&snap.ring, &tenants, &without);
        for (b, a) in before.iter().zip(&after) {
            if a.ranges_below_quorum > b.ranges_below_quorum {
                return Err(E::TopologyConflict(format!(
                    "draining {node_id} would leave {} of tenant {}'s {} ranges below its write \
                     quorum of {} (now {}); bring the other replicas back first, or drain with \
                     force and accept failed writes there",
                    a.ranges_below_quorum,
                    a.tenant_id,
                    a.ranges_total,
                    a.write_quorum,
                    b.ranges_below_quorum
                ))
                .into());
            }
        }
        Ok(())
    }
}
