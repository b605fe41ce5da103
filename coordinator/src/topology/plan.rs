//! A topology change's persisted documents and the pure decisions over them: `params` (how
//! the ring changes), the `plan` (one [`Task`] per token range a node gains, or for a cleanup
//! drops), the `progress` document, the future ring, overlap of two plans, and the order in
//! which a range's sources are tried. No I/O here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use pairdb_common::now_ms;
use pairdb_common::ring::{NodeState, Ring, RingMember};
use pairdb_common::token::TokenRange;
use serde::{Deserialize, Serialize};

use crate::cluster::NodeEntry;
use crate::jobs::{self, JobError, to_json};
use crate::meta::{ChangeKind, ChangeRecord, ChangeStatus, NodeRecord};

/// `pending_changes.params`: how the change alters the ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The format of this change's documents ([`jobs::FORMAT_VERSION`]).
    #[serde(default = "jobs::format_v1")]
    pub format_version: u32,
    /// Nodes that become owners.
    #[serde(default)]
    pub adds: Vec<String>,
    /// Nodes that stop owning.
    #[serde(default)]
    pub removes: Vec<String>,
    /// The removed nodes are dead: never stream from them and never clean them up.
    #[serde(default)]
    pub force: bool,
    /// A cleanup after this tenant's replication factor was lowered: only its records are
    /// dropped, and only from nodes outside its first `replication_factor` replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            format_version: jobs::FORMAT_VERSION,
            adds: Vec::new(),
            removes: Vec::new(),
            force: false,
            tenant: None,
            replication_factor: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Streamed,
    Verified,
    Dropped,
    Skipped,
}

impl TaskState {
    pub(super) fn finished(self) -> bool {
        matches!(
            self,
            TaskState::Verified | TaskState::Dropped | TaskState::Skipped
        )
    }
}

/// One range of a plan. For streaming changes `node` gains `(start, end]` from `sources`; for
/// cleanups `node` drops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub start: u64,
    pub end: u64,
    pub node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    pub state: TaskState,
    /// Hex of the last data key applied (resume point).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub keys: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Task {
    pub fn new(range: TokenRange, node: String, sources: Vec<String>) -> Task {
        Task {
            start: range.start,
            end: range.end,
            node,
            sources,
            state: TaskState::Pending,
            resume: String::new(),
            source: None,
            keys: 0,
            bytes: 0,
            attempts: 0,
            error: None,
        }
    }

    pub fn range(&self) -> TokenRange {
        TokenRange::new(self.start, self.end)
    }
}

/// `pending_changes.progress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub ranges_done: usize,
    pub ranges_total: usize,
    pub keys: u64,
    pub bytes: u64,
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Why the change is not moving (admission wait, failing range…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

pub(super) fn progress_of(
    plan: &[Task],
    phase: &str,
    started: Instant,
    waiting: Option<String>,
) -> Progress {
    let total = plan.len();
    let done = plan.iter().filter(|t| t.state.finished()).count();
    let (percent, eta_secs) = jobs::fraction(done, total, started);
    Progress {
        phase: phase.to_string(),
        ranges_done: done,
        ranges_total: total,
        keys: plan.iter().map(|t| t.keys).sum(),
        bytes: plan.iter().map(|t| t.bytes).sum(),
        percent,
        eta_secs,
        waiting,
    }
}

/// The change's params; an undecodable document is [`JobError::BadDocument`].
pub fn parse_params(c: &ChangeRecord) -> Result<Params, JobError> {
    jobs::decode("params", &c.change_id, &c.params)
}

/// The change's plan (empty while it is pending and unplanned); an undecodable document is
/// [`JobError::BadDocument`], never an empty plan.
pub fn parse_plan(c: &ChangeRecord) -> Result<Vec<Task>, JobError> {
    if c.plan.trim().is_empty() {
        return Ok(Vec::new());
    }
    jobs::decode("plan", &c.change_id, &c.plan)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn member(rec: &NodeRecord) -> RingMember {
    RingMember {
        node_id: rec.node_id.clone(),
        zone: rec.zone.clone(),
        virtual_nodes: rec.virtual_nodes,
        state: NodeState::Normal,
    }
}

/// The ring a streaming change leads to, from the current ring (`None` for cleanups).
pub fn future_ring(
    ring: &Ring,
    nodes: &BTreeMap<String, Arc<NodeEntry>>,
    c: &ChangeRecord,
) -> Result<Option<Ring>, JobError> {
    if c.kind == ChangeKind::Cleanup {
        return Ok(None);
    }
    let p = parse_params(c)?;
    let adds: Vec<RingMember> = p
        .adds
        .iter()
        .filter_map(|id| nodes.get(id).map(|e| member(&e.record)))
        .collect();
    let removes: Vec<&str> = p.removes.iter().map(String::as_str).collect();
    Ok(Some(ring.with_changes(&adds, &removes)))
}

pub(super) fn overlaps(a: &[TokenRange], b: &[TokenRange]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.contains(y.end) || y.contains(x.end)))
}

/// The ranges of a change's plan.
pub(super) fn plan_ranges(c: &ChangeRecord) -> Result<Vec<TokenRange>, JobError> {
    Ok(parse_plan(c)?.iter().map(Task::range).collect())
}

/// A new change id: kind, node and a millisecond timestamp.
pub fn new_change_id(kind: ChangeKind, node_id: &str) -> String {
    format!("{}-{node_id}-{}", kind.as_str(), now_ms())
}

/// A change row as created (pending, no lease).
pub fn new_change(
    kind: ChangeKind,
    node_id: &str,
    params: &Params,
    plan: &[Task],
    not_before_ms: Option<u64>,
) -> ChangeRecord {
    ChangeRecord {
        change_id: new_change_id(kind, node_id),
        kind,
        node_id: node_id.to_string(),
        status: ChangeStatus::Pending,
        progress: to_json(&Progress {
            phase: "pending".into(),
            ranges_total: plan.len(),
            ..Default::default()
        }),
        plan: to_json(&plan),
        params: to_json(params),
        lease_owner: None,
        lease_expires_at_ms: None,
        start_time_ms: now_ms(),
        completed_at_ms: None,
        not_before_ms,
        error: None,
    }
}

/// Source order for one range: for a decommission the leaving node first (it holds
/// everything); for a replace the node being replaced last (survivors first); for a forced
/// removal never the dead node.
pub(super) fn order_sources(mut sources: Vec<String>, kind: ChangeKind, p: &Params) -> Vec<String> {
    let removed = |s: &String| p.removes.contains(s);
    if p.force {
        sources.retain(|s| !removed(s));
    } else if kind == ChangeKind::Decommission {
        sources.sort_by_key(|s| !removed(s));
    } else {
        sources.sort_by_key(removed);
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_put_the_leaving_node_first_survivors_first_on_replace_and_drop_dead_nodes() {
        let src = vec!["a".to_string(), "b".into(), "c".into()];
        let p = Params {
            adds: vec![],
            removes: vec!["b".into()],
            force: false,
            ..Params::default()
        };
        assert_eq!(
            order_sources(src.clone(), ChangeKind::Decommission, &p),
            vec!["b", "a", "c"]
        );
        assert_eq!(
            order_sources(src.clone(), ChangeKind::Replace, &p),
            vec!["a", "c", "b"]
        );
        let forced = Params { force: true, ..p };
        assert_eq!(
            order_sources(src, ChangeKind::Decommission, &forced),
            vec!["a", "c"]
        );
    }

    #[test]
    fn overlap_is_interval_intersection_on_the_ring() {
        let r = TokenRange::new;
        assert!(overlaps(&[r(0, 10)], &[r(5, 20)]));
        assert!(!overlaps(&[r(0, 10)], &[r(10, 20)]));
        assert!(overlaps(&[r(0, 100)], &[r(10, 20)]));
        assert!(overlaps(&[r(u64::MAX - 5, 5)], &[r(2, 3)]));
        assert!(!overlaps(&[r(u64::MAX - 5, 5)], &[r(5, 9)]));
    }

    #[test]
    fn progress_counts_finished_tasks_and_resume_keys_round_trip() {
        let mut plan: Vec<Task> = (0..4)
            .map(|i| Task::new(TokenRange::new(i, i + 1), "n".into(), vec![]))
            .collect();
        plan[0].state = TaskState::Verified;
        plan[1].keys = 7;
        let p = progress_of(&plan, "streaming", Instant::now(), None);
        assert_eq!((p.ranges_done, p.ranges_total, p.keys), (1, 4, 7));
        assert_eq!(p.percent, 25.0);
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), vec![0, 1, 0xab, 0xff]);
    }
}
