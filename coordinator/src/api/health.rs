//! `GetClusterHealth`: nodes, hints, pending changes and, per tenant, the ring ranges that
//! lack live NORMAL replicas. The cluster is `degraded` when any range has fewer than its
//! tenant's write quorum (writes at the tenant's default consistency to keys there fail);
//! `pairdbctl cluster health` exits non-zero on it.

use std::collections::BTreeMap;

use super::*;

/// Most under-quorum ranges listed per tenant (the counts are always complete).
pub const MAX_LISTED_RANGES: usize = 100;

/// What one replication factor and write quorum see of the ring: (ranges, below quorum,
/// below RF, the first under-quorum ranges).
type Coverage = (u32, u32, u32, Vec<pb::UnderReplicatedRange>);

/// Ranges of `ring` for `rf` replicas of which fewer than `w` (and fewer than `rf`) replicas
/// pass `live`.
fn coverage(
    ring: &pairdb_common::ring::Ring,
    rf: usize,
    w: usize,
    live: &dyn Fn(&str) -> bool,
) -> Coverage {
    let (mut total, mut below_w, mut below_rf, mut listed) = (0, 0, 0, Vec::new());
    for (range, replicas) in ring.ranges(rf) {
        total += 1;
        let (up, down): (Vec<&str>, Vec<&str>) = replicas
            .iter()
            .map(|m| m.node_id.as_str())
            .partition(|id| live(id));
        // A ring with fewer members than the RF is short of replicas too.
        if up.len() < rf {
            below_rf += 1;
        }
        if up.len() < w {
            below_w += 1;
            if listed.len() < MAX_LISTED_RANGES {
                listed.push(pb::UnderReplicatedRange {
                    range: Some(convert::range_to_pb(range)),
                    live_replicas: up.iter().map(|s| s.to_string()).collect(),
                    unavailable_replicas: down.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }
    (total, below_w, below_rf, listed)
}

/// Per tenant, the ranges below quorum and below RF (tenants sharing an RF and quorum share
/// one pass over the ring).
pub fn tenant_replication(
    ring: &pairdb_common::ring::Ring,
    tenants: &[TenantRecord],
    live: &dyn Fn(&str) -> bool,
) -> Vec<pb::TenantReplication> {
    let mut seen: BTreeMap<(usize, usize), Coverage> = BTreeMap::new();
    tenants
        .iter()
        .map(|t| {
            let rf = t.replication_factor as usize;
            let w = t.write_consistency.required(rf);
            let (total, below_w, below_rf, listed) = seen
                .entry((rf, w))
                .or_insert_with(|| coverage(ring, rf, w, live))
                .clone();
            pb::TenantReplication {
                tenant_id: t.tenant_id.clone(),
                replication_factor: rf as u32,
                write_quorum: w as u32,
                ranges_total: total,
                ranges_below_quorum: below_w,
                ranges_below_replication_factor: below_rf,
                under_quorum: listed,
            }
        })
        .collect()
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
            .map(|n| nodes::node_pb(n, self.live_status(&n.node_id)))
            .collect();
        let count = |s: pb::NodeStatus| view.iter().filter(|n| n.status == s as i32).count() as u32;
        let (up, down) = (count(pb::NodeStatus::Up), count(pb::NodeStatus::Down));
        let live = |id: &str| {
            snap.nodes.get(id).is_some_and(|e| {
                e.record.state == NodeState::Normal && e.health.status() == NodeStatus::Up
            })
        };
        let replication = tenant_replication(&snap.ring, &tenants, &live);
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

#[cfg(test)]
mod tests {
    use super::*;
    use pairdb_common::ring::{Ring, RingMember};

    fn tenant(id: &str, rf: u32, w: Level) -> TenantRecord {
        let mut t = TenantRecord::with_defaults(id);
        t.replication_factor = rf;
        t.write_consistency = w;
        t
    }

    fn ring(n: usize) -> Ring {
        Ring::build(
            (1..=n).map(|i| RingMember {
                node_id: format!("n{i}"),
                zone: String::new(),
                virtual_nodes: 16,
                state: NodeState::Normal,
            }),
            1,
        )
    }

    #[test]
    fn one_node_down_keeps_quorum_two_do_not() {
        let r = ring(3);
        let tenants = [
            tenant("q", 3, Level::Quorum),
            tenant("all", 3, Level::All),
            tenant("one", 3, Level::One),
        ];
        let all_up = tenant_replication(&r, &tenants, &|_| true);
        assert!(all_up.iter().all(|t| t.ranges_below_quorum == 0
            && t.ranges_below_replication_factor == 0
            && t.ranges_total == 48));

        let one_down = tenant_replication(&r, &tenants, &|id| id != "n3");
        assert_eq!(
            one_down[0].ranges_below_quorum, 0,
            "QUORUM of 3 survives one"
        );
        assert_eq!(one_down[0].ranges_below_replication_factor, 48);
        assert_eq!(
            one_down[1].ranges_below_quorum, 48,
            "ALL needs every replica"
        );
        assert_eq!(one_down[2].ranges_below_quorum, 0);

        let two_down = tenant_replication(&r, &tenants, &|id| id == "n1");
        assert_eq!(two_down[0].ranges_below_quorum, 48);
        assert_eq!(two_down[2].ranges_below_quorum, 0, "ONE survives two");
        let listed = &two_down[0].under_quorum[0];
        assert_eq!(listed.live_replicas, vec!["n1".to_string()]);
        assert_eq!(listed.unavailable_replicas.len(), 2);
    }

    #[test]
    fn a_ring_smaller_than_the_rf_is_below_it() {
        let t = tenant_replication(&ring(2), &[tenant("t", 3, Level::Quorum)], &|_| true);
        assert_eq!(t[0].ranges_below_replication_factor, t[0].ranges_total);
        assert_eq!(t[0].ranges_below_quorum, 0);
    }
}
