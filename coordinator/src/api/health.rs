//! `GetClusterHealth`: nodes, hints, pending changes and, per tenant, the ring ranges that
//! lack live NORMAL replicas (`crate::replication`). The cluster is `degraded` when any range
//! has fewer than its tenant's write quorum (writes at the tenant's default consistency to
//! keys there fail); `pairdbctl cluster health` exits non-zero on it.

use super::*;
use crate::replication::TenantCoverage;

fn coverage_pb(t: TenantCoverage) -> pb::TenantReplication {
    pb::TenantReplication {
        tenant_id: t.tenant_id,
        replication_factor: t.replication_factor,
        write_quorum: t.write_quorum,
        ranges_total: t.ranges_total,
        ranges_below_quorum: t.ranges_below_quorum,
        ranges_below_replication_factor: t.ranges_below_replication_factor,
        under_quorum: t
            .under_quorum
            .into_iter()
            .map(|u| pb::UnderReplicatedRange {
                range: Some(convert::range_to_pb(u.range)),
                live_replicas: u.live,
                unavailable_replicas: u.unavailable,
            })
            .collect(),
    }
}

impl CoordinatorApi {
    pub(super) async fn rpc_get_cluster_health(
        &self,
        _req: Request<pb::GetClusterHealthRequest>,
    ) -> std::result::Result<Response<pb::ClusterHealth>, Status> {
        let snap = self.data.cluster.snapshot();
        let nodes = self.meta.list_nodes().await.map_err(Error::from)?;
        let tenants = self.meta.list_tenants().await.map_err(Error::from)?;
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
            .map(|n| nodes::node_pb(n, self.live_status(&n.node_id).as_deref()))
            .collect();
        let count = |s: pb::NodeStatus| view.iter().filter(|n| n.status == s as i32).count() as u32;
        let (up, down) = (count(pb::NodeStatus::Up), count(pb::NodeStatus::Down));
        let live = crate::replication::live_normal(&snap);
        let replication: Vec<pb::TenantReplication> =
            crate::replication::tenant_coverage(&snap.ring, &tenants, &live)
                .into_iter()
                .map(coverage_pb)
                .collect();
        let all_normal_up = view.iter().all(|n| {
            n.status == pb::NodeStatus::Up as i32 && n.state == pb::NodeState::Normal as i32
        });
        let status = if view.is_empty() || up == 0 {
            "unavailable"
        } else if replication.iter().any(|t| t.ranges_below_quorum > 0) {
            "degraded"
        } else if !all_normal_up {
            "reduced"
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
            tenants: replication,
        }))
    }
}
