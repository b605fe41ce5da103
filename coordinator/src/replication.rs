//! How well the ring covers each tenant: per tenant, the ring ranges whose replica set has
//! fewer live NORMAL replicas than the tenant's write quorum (writes at its default
//! consistency fail there) or than its replication factor. `GetClusterHealth` reports it, and
//! the `cluster-gauges` worker exports it as `tenant_ranges_below_quorum{tenant_id}`.

use std::collections::BTreeMap;

use pairdb_common::ring::Ring;
use pairdb_common::token::TokenRange;

use crate::meta::TenantRecord;

/// Most under-quorum ranges listed per tenant (the counts are always complete).
pub const MAX_LISTED_RANGES: usize = 100;

/// A range below its write quorum, and which of its replicas are live.
#[derive(Debug, Clone, PartialEq)]
pub struct UnderQuorum {
    pub range: TokenRange,
    pub live: Vec<String>,
    /// Down, unknown, or not NORMAL.
    pub unavailable: Vec<String>,
}

/// One tenant's coverage.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantCoverage {
    pub tenant_id: String,
    pub replication_factor: u32,
    pub write_quorum: u32,
    pub ranges_total: u32,
    pub ranges_below_quorum: u32,
    pub ranges_below_replication_factor: u32,
    /// The first [`MAX_LISTED_RANGES`] ranges below quorum.
    pub under_quorum: Vec<UnderQuorum>,
}

/// Whether a node counts as a live replica in `snap`: NORMAL, heartbeating and serving
/// clients (not drained, not in maintenance). Health is read once, here: a report counts
/// every range against the same live set even if a node goes down while it is computed.
pub fn live_normal(snap: &crate::cluster::Snapshot) -> impl Fn(&str) -> bool + use<> {
    let live: std::collections::HashSet<String> = snap
        .nodes
        .values()
        .filter(|e| {
            e.record.state == pairdb_common::ring::NodeState::Normal
                && e.health.status() == crate::meta::NodeStatus::Up
                && e.serves_clients()
        })
        .map(|e| e.record.node_id.clone())
        .collect();
    move |id: &str| live.contains(id)
}

/// What one replication factor and write quorum see of the ring: (ranges, below quorum,
/// below RF, the first under-quorum ranges).
type Coverage = (u32, u32, u32, Vec<UnderQuorum>);

/// Ranges of `ring` for `rf` replicas of which fewer than `w` (and fewer than `rf`) replicas
/// pass `live`.
fn coverage(ring: &Ring, rf: usize, w: usize, live: &dyn Fn(&str) -> bool) -> Coverage {
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
                listed.push(UnderQuorum {
                    range,
                    live: up.iter().map(|s| s.to_string()).collect(),
                    unavailable: down.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }
    (total, below_w, below_rf, listed)
}

/// Per tenant, the ranges below quorum and below RF (tenants sharing an RF and quorum share
/// one pass over the ring).
pub fn tenant_coverage(
    ring: &Ring,
    tenants: &[TenantRecord],
    live: &dyn Fn(&str) -> bool,
) -> Vec<TenantCoverage> {
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
            TenantCoverage {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Level;
    use pairdb_common::ring::{NodeState, RingMember};

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
        let all_up = tenant_coverage(&r, &tenants, &|_| true);
        assert!(all_up.iter().all(|t| t.ranges_below_quorum == 0
            && t.ranges_below_replication_factor == 0
            && t.ranges_total == 48));

        let one_down = tenant_coverage(&r, &tenants, &|id| id != "n3");
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

        let two_down = tenant_coverage(&r, &tenants, &|id| id == "n1");
        assert_eq!(two_down[0].ranges_below_quorum, 48);
        assert_eq!(two_down[2].ranges_below_quorum, 0, "ONE survives two");
        let listed = &two_down[0].under_quorum[0];
        assert_eq!(listed.live, vec!["n1".to_string()]);
        assert_eq!(listed.unavailable.len(), 2);
    }

    #[test]
    fn a_ring_smaller_than_the_rf_is_below_it() {
        let t = tenant_coverage(&ring(2), &[tenant("t", 3, Level::Quorum)], &|_| true);
        assert_eq!(t[0].ranges_below_replication_factor, t[0].ranges_total);
        assert_eq!(t[0].ranges_below_quorum, 0);
    }
}
