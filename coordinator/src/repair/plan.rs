//! A repair run's persisted documents: `params` (what the run covers), the `plan` (one
//! [`RangeTask`] per ring range, with what repairing it found and moved) and the `progress`
//! document. No I/O here.

use std::collections::BTreeMap;
use std::time::Instant;

use pairdb_common::now_ms;
use pairdb_common::ring::{self, Ring};
use pairdb_common::token::TokenRange;
use serde::{Deserialize, Serialize};

use crate::jobs::{self, to_json};
use crate::meta::RepairRecord;

/// `repairs.params`: what a run covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The format of this run's documents ([`jobs::FORMAT_VERSION`]).
    #[serde(default = "jobs::format_v1")]
    pub format_version: u32,
    /// `None` = every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `manual` or `scheduled`.
    #[serde(default)]
    pub trigger: String,
    /// Every tenant over the whole ring (such a run, completed, forgives node outages).
    #[serde(default)]
    pub whole: bool,
    /// Per node, the start it was in when the run began (`NodeInfo.started_at_ms`): a node
    /// still in that start when the run completes had every range compared while up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_starts: BTreeMap<String, u64>,
    /// Compare this many replicas of the tenant's ranges instead of its replication factor
    /// (a replication-factor change: the larger of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<usize>,
    /// On completion, make this the tenant's replication factor (if the tenant still moves
    /// to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_replication_factor: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            format_version: jobs::FORMAT_VERSION,
            tenant: None,
            trigger: String::new(),
            whole: false,
            node_starts: BTreeMap::new(),
            replication_factor: None,
            set_replication_factor: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeState {
    Pending,
    Done,
    Failed,
}

/// One range of a run's plan, with what repairing it found and moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeTask {
    pub start: u64,
    pub end: u64,
    pub state: RangeState,
    /// Keys some replica lacked or held differently.
    #[serde(default)]
    pub keys_differing: u64,
    /// Records pulled between replicas, and their bytes.
    #[serde(default)]
    pub keys_transferred: u64,
    #[serde(default)]
    pub bytes_transferred: u64,
    /// Bytes of digests and key listings received.
    #[serde(default)]
    pub digest_bytes: u64,
    /// Corrupt records found, and how many of them were rebuilt from other replicas.
    #[serde(default)]
    pub corrupt: u64,
    #[serde(default)]
    pub recovered: u64,
    /// Tombstones purged (per replica) once every replica held them and the grace passed.
    #[serde(default)]
    pub tombstones_purged: u64,
    /// All replicas hashed equal after the repair.
    #[serde(default)]
    pub converged: bool,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RangeTask {
    pub(super) fn new(r: TokenRange) -> RangeTask {
        RangeTask {
            start: r.start,
            end: r.end,
            state: RangeState::Pending,
            keys_differing: 0,
            keys_transferred: 0,
            bytes_transferred: 0,
            digest_bytes: 0,
            corrupt: 0,
            recovered: 0,
            tombstones_purged: 0,
            converged: false,
            attempts: 0,
            error: None,
        }
    }

    pub fn range(&self) -> TokenRange {
        TokenRange::new(self.start, self.end)
    }
}

/// `repairs.progress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub ranges_total: usize,
    pub ranges_done: usize,
    pub ranges_failed: usize,
    pub ranges_unconverged: usize,
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    pub keys_differing: u64,
    pub keys_transferred: u64,
    pub bytes_transferred: u64,
    pub digest_bytes: u64,
    pub corrupt: u64,
    pub recovered: u64,
    pub tombstones_purged: u64,
    /// Records corrupt on every replica (DATA_LOSS), as `tenant/key`; capped list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
    #[serde(default)]
    pub lost_total: u64,
}

pub(super) fn progress_of(
    plan: &[RangeTask],
    started: Instant,
    lost: &[String],
    lost_total: u64,
) -> Progress {
    let total = plan.len();
    let finished = plan
        .iter()
        .filter(|t| t.state != RangeState::Pending)
        .count();
    let (percent, eta_secs) = jobs::fraction(finished, total, started);
    Progress {
        ranges_total: total,
        ranges_done: plan.iter().filter(|t| t.state == RangeState::Done).count(),
        ranges_failed: plan
            .iter()
            .filter(|t| t.state == RangeState::Failed)
            .count(),
        ranges_unconverged: plan
            .iter()
            .filter(|t| t.state == RangeState::Done && !t.converged)
            .count(),
        percent,
        eta_secs,
        keys_differing: plan.iter().map(|t| t.keys_differing).sum(),
        keys_transferred: plan.iter().map(|t| t.keys_transferred).sum(),
        bytes_transferred: plan.iter().map(|t| t.bytes_transferred).sum(),
        digest_bytes: plan.iter().map(|t| t.digest_bytes).sum(),
        corrupt: plan.iter().map(|t| t.corrupt).sum(),
        recovered: plan.iter().map(|t| t.recovered).sum(),
        tombstones_purged: plan.iter().map(|t| t.tombstones_purged).sum(),
        lost: lost.to_vec(),
        lost_total,
    }
}

/// The plan of a run: the ring's ranges, or the pieces of `range` cut at the ring's tokens.
pub fn plan(ring: &Ring, range: Option<TokenRange>) -> Vec<RangeTask> {
    match range {
        Some(r) => ring::cut(r, &[ring])
            .into_iter()
            .map(RangeTask::new)
            .collect(),
        None => ring
            .ranges(1)
            .into_iter()
            .map(|(r, _)| RangeTask::new(r))
            .collect(),
    }
}

/// A new repair row (running, no lease).
pub fn new_run(params: &Params, plan: &[RangeTask]) -> RepairRecord {
    let now = now_ms();
    RepairRecord {
        repair_id: format!("repair-{now}"),
        tenant_id: params.tenant.clone(),
        status: "running".into(),
        progress: to_json(&progress_of(plan, Instant::now(), &[], 0)),
        plan: to_json(&plan),
        params: to_json(params),
        lease_owner: None,
        lease_expires_at_ms: None,
        started_at_ms: now,
        completed_at_ms: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_finished_ranges_and_sums_their_counts() {
        let mut plan = vec![
            RangeTask::new(TokenRange::new(0, 10)),
            RangeTask::new(TokenRange::new(10, 20)),
        ];
        plan[0].state = RangeState::Done;
        plan[0].keys_transferred = 5;
        plan[0].converged = true;
        plan[1].state = RangeState::Failed;
        let p = progress_of(&plan, Instant::now(), &[], 0);
        assert_eq!((p.ranges_done, p.ranges_failed, p.percent), (1, 1, 100.0));
        assert_eq!(p.keys_transferred, 5);
        assert_eq!(p.ranges_unconverged, 0);
    }
}
