//! Topology orchestration (SPEC §5): bootstrap, decommission, replace and cleanup, driven by
//! any coordinator, one at a time per change, resumable after a crash.
//!
//! **Durable state.** A change is a `pending_changes` row. Its *plan* (JSON) is frozen when the
//! change is admitted: one task per token range a node gains (for cleanups: per range a node
//! drops), computed with [`ring::transfers`] over the whole replica set (every replica position,
//! for the largest replication factor in use), never only primary ranges. Each task carries its
//! state (`pending` → `streamed` → `verified`; cleanups `dropped`/`skipped`), its resume key,
//! and counts, so a coordinator that takes the change over continues range by range and, inside
//! a range, from the last data key applied.
//!
//! **One driver.** Every coordinator runs the `topology-changes` worker. It claims a change's
//! lease (`lease_owner`, `lease_expires_at`) and renews it with every progress save (each
//! second); a coordinator that dies stops renewing and another claims the change after the
//! lease expires. Losing the lease (or an abort) cancels the driver's work at once.
//!
//! **Admission.** A pending change becomes running inside one transaction under the metadata
//! store's admission lock, only while the ring version it was planned against is current, and
//! only if no running change's ranges overlap its own (cleanups may overlap each other) and, for
//! streaming changes, fewer than `max_concurrent_bootstraps` streaming changes run.
//!
//! **Streaming.** The gaining node pulls each range from a live current replica
//! (`PullRange`; merges, so the writes it receives meanwhile as a pending replica are kept),
//! failing over to the next replica from the last resume key. **Verification** compares range
//! digests of gaining node and source; for each differing bucket the node pulls the bucket
//! again and counts records that changed its state; a range is verified when the digests are
//! equal or a whole pass changed nothing (the node holds everything the source holds, plus
//! newer writes). Then hints for the gaining nodes are replayed, and one transaction moves the
//! nodes to their final states, bumps `ring_version`, and schedules the cleanup.
//!
//! **Cleanup** runs after the grace period. Before dropping any piece of a range from a node it
//! re-checks that the node replicates that piece neither in the current ring nor in any active
//! change's future ring, and that a quorum of the piece's current replicas verifiably hold the
//! node's data (digest, or a pull pass that changes nothing). Only then does it drop the piece.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pairdb_common::api::pb;
use pairdb_common::ring::{self, NodeState, Ring, RingMember};
use pairdb_common::token::TokenRange;
use pairdb_common::{Error as E, convert, now_ms};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, NodeEntry};
use crate::meta::{
    ChangeKind, ChangeRecord, ChangeStatus, MetaError, MetaStore, NodeRecord, NodeStatus, NodeWrite,
};
use crate::metrics::{ChangeLabels, Metrics};

/// Replication factor assumed when no tenant exists yet.
const DEFAULT_N: usize = 3;
/// Digest rounds before a range counts as not converged (retried later).
const VERIFY_ROUNDS: usize = 6;
const DIGEST_BUCKETS: u32 = 64;
/// Longest silence from a pull before it is abandoned (and resumed).
const PULL_IDLE: Duration = Duration::from_secs(120);
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Orchestration settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// This coordinator's identity, written as `lease_owner`.
    pub owner: String,
    pub lease_ms: u64,
    pub poll_ms: u64,
    pub max_concurrent_bootstraps: usize,
    /// Per-stream throttle at the source (0 = unthrottled).
    pub stream_max_bytes_per_sec: u64,
    pub stream_batch_size: u32,
    /// Ranges of one change streamed at once.
    pub stream_parallelism: usize,
    /// Delay between a change and the cleanup of the data it made surplus.
    pub cleanup_grace_ms: u64,
    /// Longest wait for hints to a gaining node to drain before finishing a change.
    pub hint_drain_timeout_ms: u64,
}

/// `pending_changes.params`: how the change alters the ring.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Nodes that become owners.
    #[serde(default)]
    pub adds: Vec<String>,
    /// Nodes that stop owning.
    #[serde(default)]
    pub removes: Vec<String>,
    /// The removed nodes are dead: never stream from them and never clean them up.
    #[serde(default)]
    pub force: bool,
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
    fn finished(self) -> bool {
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
    fn new(range: TokenRange, node: String, sources: Vec<String>) -> Task {
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

fn progress_of(plan: &[Task], phase: &str, started: Instant, waiting: Option<String>) -> Progress {
    let total = plan.len();
    let done = plan.iter().filter(|t| t.state.finished()).count();
    let percent = if total == 0 {
        100.0
    } else {
        (done as f64 * 100.0 / total as f64 * 10.0).round() / 10.0
    };
    let elapsed = started.elapsed().as_secs_f64();
    let eta_secs =
        (done > 0 && done < total).then(|| (elapsed / done as f64 * (total - done) as f64) as u64);
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

pub fn parse_params(c: &ChangeRecord) -> Params {
    serde_json::from_str(&c.params).unwrap_or_default()
}

fn parse_plan(c: &ChangeRecord) -> Result<Vec<Task>, String> {
    if c.plan.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&c.plan).map_err(|e| format!("bad plan of change {}: {e}", c.change_id))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
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
    nodes: &HashMap<String, Arc<NodeEntry>>,
    c: &ChangeRecord,
) -> Option<Ring> {
    if c.kind == ChangeKind::Cleanup {
        return None;
    }
    let p = parse_params(c);
    let adds: Vec<RingMember> = p
        .adds
        .iter()
        .filter_map(|id| nodes.get(id).map(|e| member(&e.record)))
        .collect();
    let removes: Vec<&str> = p.removes.iter().map(String::as_str).collect();
    Some(ring.with_changes(&adds, &removes))
}

fn overlaps(a: &[TokenRange], b: &[TokenRange]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.contains(y.end) || y.contains(x.end)))
}

fn plan_ranges(plan_json: &str) -> Vec<TokenRange> {
    serde_json::from_str::<Vec<Task>>(plan_json)
        .map(|p| p.iter().map(Task::range).collect())
        .unwrap_or_default()
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

/// The in-memory state of a change being driven, saved every second.
struct Driving {
    plan: Vec<Task>,
    phase: String,
    waiting: Option<String>,
    started: Instant,
}

type Shared = Arc<Mutex<Driving>>;

/// Persists a driven change's plan, progress and error, renewing the lease with each save. The
/// plan is written only when it changed since the last save.
struct Saver {
    meta: Arc<dyn MetaStore>,
    change_id: String,
    owner: String,
    lease_ms: u64,
    state: Shared,
    last_plan: Mutex<String>,
}

impl Saver {
    /// `Ok(false)`: the lease is lost or the change is no longer active.
    async fn save(&self) -> Result<bool, MetaError> {
        let (plan, progress, error) = {
            let s = self.state.lock();
            let p = progress_of(&s.plan, &s.phase, s.started, s.waiting.clone());
            (to_json(&s.plan), to_json(&p), s.waiting.clone())
        };
        let changed = *self.last_plan.lock() != plan;
        let saved = self
            .meta
            .save_change(
                &self.change_id,
                &self.owner,
                now_ms(),
                self.lease_ms,
                changed.then_some(plan.as_str()),
                &progress,
                error.as_deref(),
            )
            .await?;
        if saved && changed {
            *self.last_plan.lock() = plan;
        }
        Ok(saved)
    }
}

pub struct Topology {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: TopologyConfig,
    driving: Mutex<HashSet<String>>,
}

impl Topology {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: TopologyConfig,
    ) -> Arc<Topology> {
        Arc::new(Topology {
            meta,
            cluster,
            metrics,
            cfg,
            driving: Mutex::new(HashSet::new()),
        })
    }

    pub fn config(&self) -> &TopologyConfig {
        &self.cfg
    }

    /// The largest replication factor over tenants (ranges are planned for every position).
    pub async fn max_rf(&self) -> Result<usize, MetaError> {
        let tenants = self.meta.list_tenants().await?;
        Ok(tenants
            .iter()
            .map(|t| t.replication_factor as usize)
            .max()
            .unwrap_or(DEFAULT_N)
            .max(1))
    }

    /// The `topology-changes` worker: claims active changes whose lease is free and drives
    /// each in its own task.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let every = Duration::from_millis(self.cfg.poll_ms);
        crate::lease::every(every, cancel.clone(), "topology", || {
            self.clone().tick(&cancel)
        })
        .await
    }

    async fn tick(self: Arc<Self>, cancel: &CancellationToken) -> Result<(), MetaError> {
        let now = now_ms();
        for c in self.meta.list_changes(false).await? {
            if self.driving.lock().contains(&c.change_id) {
                continue;
            }
            if c.not_before_ms.is_some_and(|t| t > now) {
                continue;
            }
            if let (Some(owner), Some(exp)) = (&c.lease_owner, c.lease_expires_at_ms)
                && owner != &self.cfg.owner
                && exp > now
            {
                continue;
            }
            if !self
                .meta
                .claim_change(&c.change_id, &self.cfg.owner, now, self.cfg.lease_ms)
                .await?
            {
                continue;
            }
            if c.lease_owner
                .as_deref()
                .is_some_and(|o| o != self.cfg.owner)
            {
                tracing::warn!(change_id = %c.change_id, previous = ?c.lease_owner, "took over a topology change whose driver stopped renewing its lease");
            }
            self.driving.lock().insert(c.change_id.clone());
            let me = self.clone();
            let token = cancel.child_token();
            tokio::spawn(async move {
                let id = c.change_id.clone();
                let kind = c.kind;
                if kind != ChangeKind::Cleanup {
                    me.metrics.concurrent_bootstraps.inc();
                }
                if let Err(e) = me.drive(c, token).await {
                    tracing::warn!(change_id = %id, error = %e, "topology change paused; it will be retried");
                }
                if kind != ChangeKind::Cleanup {
                    me.metrics.concurrent_bootstraps.dec();
                }
                me.driving.lock().remove(&id);
            });
        }
        Ok(())
    }

    /// Drives one change until it finishes, must wait, or the lease is lost.
    async fn drive(&self, mut c: ChangeRecord, cancel: CancellationToken) -> Result<(), String> {
        if c.status == ChangeStatus::Pending {
            match self.admit(&c).await? {
                Some(plan) => {
                    tracing::info!(change_id = %c.change_id, kind = c.kind.as_str(), node_id = %c.node_id, "topology change admitted");
                    c.plan = plan;
                    c.status = ChangeStatus::Running;
                }
                None => return Ok(()),
            }
        }
        let state: Shared = Arc::new(Mutex::new(Driving {
            plan: parse_plan(&c)?,
            phase: "streaming".into(),
            waiting: None,
            started: Instant::now(),
        }));
        if c.kind == ChangeKind::Cleanup {
            state.lock().phase = "cleanup".into();
        }
        // The saver persists progress and renews the lease; losing either cancels the work.
        let saver = Arc::new(Saver {
            meta: self.meta.clone(),
            change_id: c.change_id.clone(),
            owner: self.cfg.owner.clone(),
            lease_ms: self.cfg.lease_ms,
            state: state.clone(),
            last_plan: Mutex::new(c.plan.clone()),
        });
        let saver_stop = CancellationToken::new();
        let saver_task = {
            let saver = saver.clone();
            let cancel = cancel.clone();
            let stop = saver_stop.clone();
            let every = Duration::from_millis((self.cfg.lease_ms / 5).clamp(100, 1000));
            tokio::spawn(async move {
                let job = saver.change_id.clone();
                crate::lease::keep(|| saver.save(), every, cancel, stop, &job).await
            })
        };
        let r = match c.kind {
            ChangeKind::Cleanup => self.run_cleanup(&c, &state, &cancel).await,
            _ => self.run_streams(&c, &state, &cancel).await,
        };
        saver_stop.cancel();
        let _ = saver_task.await;
        let outcome = match r {
            Ok(()) => self.finish(&c, &saver).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            // Persist the reason for operators (while the lease is still ours).
            state.lock().waiting = Some(e.clone());
            let _ = saver.save().await;
        }
        outcome
    }

    /// Plans a pending change against the current ring and admits it. `Ok(None)`: it waits.
    async fn admit(&self, c: &ChangeRecord) -> Result<Option<String>, String> {
        self.cluster.refresh().await.map_err(|e| e.to_string())?;
        let snap = self.cluster.snapshot();
        let plan: Vec<Task> = if c.kind == ChangeKind::Cleanup {
            parse_plan(c)?
        } else {
            let n = self.max_rf().await.map_err(|e| e.to_string())?;
            let params = parse_params(c);
            let future = future_ring(&snap.ring, &snap.nodes, c)
                .ok_or_else(|| "no future ring".to_string())?;
            ring::transfers(&snap.ring, &future, n)
                .into_iter()
                .map(|t| {
                    Task::new(
                        t.range,
                        t.gaining,
                        order_sources(t.sources, c.kind, &params),
                    )
                })
                .collect()
        };
        let plan_json = to_json(&plan);
        let progress = to_json(&progress_of(&plan, "streaming", Instant::now(), None));
        let kind = c.kind;
        let max = self.cfg.max_concurrent_bootstraps.max(1);
        let mine: Vec<TokenRange> = plan.iter().map(Task::range).collect();
        // Streaming changes and cleanups whose ranges overlap never run side by side: a cleanup
        // must not drop a range that a change is streaming into the same node.
        let check = move |running: &[ChangeRecord]| -> Result<(), String> {
            let streaming = running
                .iter()
                .filter(|r| r.kind != ChangeKind::Cleanup)
                .count();
            if kind != ChangeKind::Cleanup && streaming >= max {
                return Err(format!(
                    "{streaming} streaming change(s) running; max_concurrent_bootstraps is {max}"
                ));
            }
            for r in running {
                if kind == ChangeKind::Cleanup && r.kind == ChangeKind::Cleanup {
                    continue;
                }
                if overlaps(&mine, &plan_ranges(&r.plan)) {
                    return Err(format!(
                        "waits for change {}, whose ranges overlap",
                        r.change_id
                    ));
                }
            }
            Ok(())
        };
        match self
            .meta
            .admit_change(
                &c.change_id,
                &self.cfg.owner,
                snap.version,
                &plan_json,
                &progress,
                &check,
            )
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(()) => Ok(Some(plan_json)),
            Err(why) => {
                let p = Progress {
                    phase: "pending".into(),
                    waiting: Some(why.clone()),
                    ..Default::default()
                };
                let _ = self
                    .meta
                    .save_change(
                        &c.change_id,
                        &self.cfg.owner,
                        now_ms(),
                        self.cfg.lease_ms,
                        None,
                        &to_json(&p),
                        None,
                    )
                    .await;
                tracing::debug!(change_id = %c.change_id, reason = %why, "topology change waits for admission");
                Ok(None)
            }
        }
    }

    /// Runs `work` on every unfinished task of the plan, `parallelism` at a time, pass after
    /// pass (with a fresh ring before each, and 2 s between passes that had failures) until
    /// every task is finished or the work is cancelled (lease lost, change aborted).
    async fn run_passes<F, Fut>(
        &self,
        c: &ChangeRecord,
        state: &Shared,
        cancel: &CancellationToken,
        parallelism: usize,
        work: F,
    ) -> Result<(), String>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            if cancel.is_cancelled() {
                return Err("lease lost or change aborted".into());
            }
            let todo: Vec<usize> = {
                let s = state.lock();
                (0..s.plan.len())
                    .filter(|i| !s.plan[*i].state.finished())
                    .collect()
            };
            if todo.is_empty() {
                return Ok(());
            }
            self.cluster.refresh().await.map_err(|e| e.to_string())?;
            let work = &work;
            let failures: Vec<String> = futures::stream::iter(todo)
                .map(|i| async move {
                    let r = work(i).await;
                    if let Err(e) = &r {
                        state.lock().plan[i].error = Some(e.clone());
                    }
                    r
                })
                .buffer_unordered(parallelism.max(1))
                .filter_map(|r| async move { r.err() })
                .collect()
                .await;
            match failures.first() {
                Some(first) => {
                    let msg = format!("{} range(s) failed, retrying: {first}", failures.len());
                    tracing::warn!(change_id = %c.change_id, kind = c.kind.as_str(), "{msg}");
                    state.lock().waiting = Some(msg);
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                None => state.lock().waiting = None,
            }
        }
    }

    async fn run_streams(
        &self,
        c: &ChangeRecord,
        state: &Shared,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        self.run_passes(c, state, cancel, self.cfg.stream_parallelism, |i| {
            self.transfer(i, state, cancel)
        })
        .await?;
        // Hints recorded for the gaining nodes while they were pending replicas.
        state.lock().phase = "replaying hints".into();
        let gaining: HashSet<String> = state.lock().plan.iter().map(|t| t.node.clone()).collect();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.hint_drain_timeout_ms);
        for node in gaining {
            loop {
                let left = self
                    .meta
                    .count_hints_for(&node)
                    .await
                    .map_err(|e| e.to_string())?;
                if left == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(change_id = %c.change_id, node_id = %node, hints = left, "hints to the gaining node did not drain in time; they stay queued for replay");
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err("lease lost or change aborted".into()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        Ok(())
    }

    /// Streams and verifies one task of a streaming change.
    async fn transfer(
        &self,
        i: usize,
        state: &Shared,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let task = state.lock().plan[i].clone();
        let snap = self.cluster.snapshot();
        let range = task.range();
        let dst = snap
            .nodes
            .get(&task.node)
            .cloned()
            .ok_or_else(|| format!("gaining node {} is not a member", task.node))?;
        let mut source = task.source.clone();
        if task.state == TaskState::Pending {
            let mut last_err = format!("no live source for {range}");
            let mut done = false;
            // Live sources first, in preference order; then the rest (health may lag).
            let mut order: Vec<&String> = task
                .sources
                .iter()
                .filter(|s| snap.nodes.get(*s).is_some_and(|e| e.health.is_available()))
                .collect();
            let rest: Vec<&String> = task.sources.iter().filter(|s| !order.contains(s)).collect();
            order.extend(rest);
            for sid in order {
                let Some(src) = snap.nodes.get(sid).cloned() else {
                    continue;
                };
                let resume = unhex(&state.lock().plan[i].resume);
                let mut seen = (0u64, 0u64);
                let r = self
                    .pull(&dst, &src, range, resume, cancel, |p| {
                        let mut s = state.lock();
                        let t = &mut s.plan[i];
                        t.resume = hex(&p.last_data_key);
                        t.keys += p.keys - seen.0;
                        t.bytes += p.bytes - seen.1;
                        self.metrics.stream_keys.inc_by(p.keys - seen.0);
                        self.metrics.stream_bytes.inc_by(p.bytes - seen.1);
                        seen = (p.keys, p.bytes);
                    })
                    .await;
                match r {
                    Ok(_) => {
                        source = Some(sid.clone());
                        done = true;
                        break;
                    }
                    Err(e) => {
                        if cancel.is_cancelled() {
                            return Err(e);
                        }
                        tracing::warn!(%range, gaining = %task.node, source = %sid, error = %e, "range stream broke; resuming from the next replica");
                        state.lock().plan[i].attempts += 1;
                        last_err = format!("{sid}: {e}");
                    }
                }
            }
            if !done {
                return Err(last_err);
            }
            let mut s = state.lock();
            s.plan[i].state = TaskState::Streamed;
            s.plan[i].source = source.clone();
        }
        // Verify against the source (or, if it is gone, another live replica).
        let candidates: Vec<String> = source.into_iter().chain(task.sources.clone()).collect();
        let mut last_err = format!("no live replica to verify {range} against");
        for sid in candidates {
            let Some(src) = snap.nodes.get(&sid).cloned() else {
                continue;
            };
            if !src.health.is_available() {
                continue;
            }
            match self.verify(&dst, &src, range, cancel).await {
                Ok(()) => {
                    let mut s = state.lock();
                    s.plan[i].state = TaskState::Verified;
                    s.plan[i].error = None;
                    return Ok(());
                }
                Err(e) => last_err = format!("verify against {sid}: {e}"),
            }
        }
        Err(last_err)
    }

    /// Has `dst` pull `range` from `src`, reporting each progress message; resumable.
    async fn pull(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        range: TokenRange,
        resume: Vec<u8>,
        cancel: &CancellationToken,
        mut on: impl FnMut(&pb::PullProgress),
    ) -> Result<pb::PullProgress, String> {
        let mut client = dst.client.clone();
        let req = pb::PullRangeRequest {
            range: Some(convert::range_to_pb(range)),
            source_address: format!("{}:{}", src.record.host, src.record.port),
            source_node_id: src.record.node_id.clone(),
            resume_after: resume,
            batch_size: self.cfg.stream_batch_size,
            max_bytes_per_sec: self.cfg.stream_max_bytes_per_sec,
            ..Default::default()
        };
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return Err("cancelled".into()),
            r = tokio::time::timeout(RPC_TIMEOUT, client.pull_range(req)) => match r {
                Err(_) => return Err("pull did not start in time".into()),
                Ok(Err(s)) => return Err(E::from_status(&s).to_string()),
                Ok(Ok(resp)) => resp.into_inner(),
            }
        };
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Err("cancelled".into()),
                m = tokio::time::timeout(PULL_IDLE, stream.message()) => m,
            };
            match msg {
                Err(_) => return Err(format!("no progress for {}s", PULL_IDLE.as_secs())),
                Ok(Err(s)) => return Err(E::from_status(&s).to_string()),
                Ok(Ok(None)) => return Err("the pull ended before its last batch".into()),
                Ok(Ok(Some(p))) => {
                    on(&p);
                    if p.done {
                        return Ok(p);
                    }
                }
            }
        }
    }

    async fn digest(
        &self,
        node: &NodeEntry,
        range: TokenRange,
    ) -> Result<Vec<pb::DigestBucket>, String> {
        let mut c = node.client.clone();
        let r = tokio::time::timeout(
            RPC_TIMEOUT,
            c.range_digest(pb::RangeDigestRequest {
                range: Some(convert::range_to_pb(range)),
                buckets: DIGEST_BUCKETS,
            }),
        )
        .await
        .map_err(|_| format!("digest of {range} on {} timed out", node.record.node_id))?
        .map_err(|s| format!("digest on {}: {}", node.record.node_id, E::from_status(&s)))?;
        Ok(r.into_inner().buckets)
    }

    /// Proves that `dst` holds everything `src` holds in `range` (see module docs).
    async fn verify(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        range: TokenRange,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        for _ in 0..VERIFY_ROUNDS {
            let (a, b) = tokio::join!(self.digest(src, range), self.digest(dst, range));
            let (a, b) = (a?, b?);
            let differing: Vec<TokenRange> = a
                .iter()
                .zip(b.iter())
                .filter(|(x, y)| x.hash != y.hash)
                .map(|(x, _)| convert::range_from_pb(x.range))
                .collect();
            if differing.is_empty() && a.len() == b.len() {
                return Ok(());
            }
            let mut changed = 0u64;
            for r in differing {
                changed += self
                    .pull(dst, src, r, Vec::new(), cancel, |_| {})
                    .await?
                    .changed;
            }
            if changed == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "{} did not converge with {} over {range} in {VERIFY_ROUNDS} rounds",
            dst.record.node_id, src.record.node_id
        ))
    }

    async fn run_cleanup(
        &self,
        c: &ChangeRecord,
        state: &Shared,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let n = self.max_rf().await.map_err(|e| e.to_string())?;
        self.run_passes(c, state, cancel, self.cfg.stream_parallelism * 2, |i| {
            self.clean(i, n, state, cancel)
        })
        .await
    }

    /// Drops from one node the pieces of one range it no longer replicates, once a quorum of
    /// their current replicas is verified to hold its data.
    async fn clean(
        &self,
        i: usize,
        n: usize,
        state: &Shared,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let task = state.lock().plan[i].clone();
        let snap = self.cluster.snapshot();
        let Some(x) = snap.nodes.get(&task.node).cloned() else {
            state.lock().plan[i].state = TaskState::Skipped;
            return Ok(());
        };
        if x.record.state == NodeState::Removed && x.health.status() == NodeStatus::Down {
            tracing::warn!(node_id = %task.node, "cleanup skipped: the node is removed and unreachable (wipe its data directory before reusing it)");
            state.lock().plan[i].state = TaskState::Skipped;
            return Ok(());
        }
        let mut rings: Vec<&Ring> = vec![&snap.ring];
        rings.extend(snap.futures.iter());
        let mut drops: Vec<(TokenRange, Vec<String>)> = Vec::new();
        for piece in ring::cut(task.range(), &rings) {
            let keeps = rings.iter().any(|r| {
                r.preference_list(piece.end, n)
                    .iter()
                    .any(|m| m.node_id == task.node)
            });
            if keeps {
                continue;
            }
            let mut reps: Vec<String> = snap
                .ring
                .preference_list(piece.end, n)
                .iter()
                .map(|m| m.node_id.clone())
                .collect();
            reps.sort();
            match drops.last_mut() {
                Some((r, prev)) if *prev == reps && r.end == piece.start => r.end = piece.end,
                _ => drops.push((piece, reps)),
            }
        }
        let mut dropped = 0u64;
        for (piece, reps) in drops {
            if reps.is_empty() {
                return Err(format!(
                    "no replica of {piece} to verify against; not dropping it"
                ));
            }
            let need = reps.len() / 2 + 1;
            let mut verified = 0;
            let mut why = Vec::new();
            for r in &reps {
                if verified >= need {
                    break;
                }
                let Some(re) = snap.nodes.get(r).filter(|e| e.health.is_available()) else {
                    why.push(format!("{r}: down"));
                    continue;
                };
                match self.verify(re, &x, piece, cancel).await {
                    Ok(()) => verified += 1,
                    Err(e) => why.push(e),
                }
            }
            if verified < need {
                return Err(format!(
                    "only {verified} of the {need} replicas needed hold {piece} of {} ({}); not dropping it",
                    task.node,
                    why.join("; ")
                ));
            }
            let mut client = x.client.clone();
            let r = tokio::time::timeout(
                RPC_TIMEOUT,
                client.drop_range({
                    let (range, whole_ring) = convert::explicit_range_to_pb(piece);
                    pb::DropRangeRequest { range, whole_ring }
                }),
            )
            .await
            .map_err(|_| format!("drop of {piece} on {} timed out", task.node))?
            .map_err(|s| format!("drop on {}: {}", task.node, E::from_status(&s)))?;
            dropped += r.into_inner().records;
            self.metrics.cleanup_executed.inc();
        }
        let mut s = state.lock();
        s.plan[i].keys += dropped;
        s.plan[i].state = TaskState::Dropped;
        Ok(())
    }

    /// Ends a change whose work is done: final node states, `ring_version`, cleanup.
    async fn finish(&self, c: &ChangeRecord, saver: &Saver) -> Result<(), String> {
        // The final plan and progress, saved while the lease is still ours.
        {
            let mut s = saver.state.lock();
            s.phase = "finishing".into();
            s.waiting = None;
        }
        let saved = saver.save().await.map_err(|e| e.to_string())?;
        if !saved {
            return Err("lost the lease before finishing".into());
        }
        let params = parse_params(c);
        let (nodes, follow_up) = if c.kind == ChangeKind::Cleanup {
            (Vec::new(), None)
        } else {
            self.cluster.refresh().await.map_err(|e| e.to_string())?;
            let snap = self.cluster.snapshot();
            let n = self.max_rf().await.map_err(|e| e.to_string())?;
            let future = future_ring(&snap.ring, &snap.nodes, c)
                .ok_or_else(|| "no future ring".to_string())?;
            let mut nodes = Vec::new();
            for a in &params.adds {
                nodes.push(NodeWrite::SetState {
                    node_id: a.clone(),
                    from: vec![NodeState::Bootstrapping],
                    to: NodeState::Normal,
                });
            }
            for r in &params.removes {
                nodes.push(NodeWrite::SetState {
                    node_id: r.clone(),
                    from: vec![NodeState::Leaving],
                    to: NodeState::Removed,
                });
            }
            // Ranges that nodes stop replicating: transfers from the new ring back to the old.
            let losing: Vec<Task> = ring::transfers(&future, &snap.ring, n)
                .into_iter()
                .filter(|t| !(params.force && params.removes.contains(&t.gaining)))
                .map(|t| Task::new(t.range, t.gaining, Vec::new()))
                .collect();
            let cleanup = (!losing.is_empty()).then(|| {
                new_change(
                    ChangeKind::Cleanup,
                    &c.node_id,
                    &Params::default(),
                    &losing,
                    Some(now_ms() + self.cfg.cleanup_grace_ms),
                )
            });
            (nodes, cleanup)
        };
        let v = self
            .meta
            .finish_change(
                &c.change_id,
                Some(&self.cfg.owner),
                ChangeStatus::Completed,
                None,
                &nodes,
                follow_up.as_ref(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if follow_up.is_some() {
            self.metrics.cleanup_scheduled.inc();
        }
        self.metrics
            .bootstrap_operations
            .get_or_create(&ChangeLabels {
                kind: c.kind.as_str(),
                result: "completed",
            })
            .inc();
        let _ = self.cluster.refresh().await;
        tracing::info!(change_id = %c.change_id, kind = c.kind.as_str(), node_id = %c.node_id, ring_version = v, "topology change completed");
        Ok(())
    }

    /// Rolls an active change back: node states as before, `ring_version`++, and a cleanup of
    /// what the gaining nodes received. Any coordinator may abort; the driver stops when its
    /// next lease renewal fails.
    pub async fn abort(&self, change_id: &str) -> Result<ChangeRecord, crate::error::Error> {
        let c = self
            .meta
            .get_change(change_id)
            .await?
            .ok_or_else(|| E::InvalidArgument(format!("no topology change {change_id}")))?;
        if !c.status.is_active() {
            return Err(E::TopologyConflict(format!(
                "change {change_id} is already {}",
                c.status.as_str()
            ))
            .into());
        }
        let params = parse_params(&c);
        let mut nodes = Vec::new();
        let mut cleanup: Vec<Task> = Vec::new();
        if c.kind != ChangeKind::Cleanup {
            for a in &params.adds {
                nodes.push(NodeWrite::SetState {
                    node_id: a.clone(),
                    from: vec![NodeState::Bootstrapping],
                    to: NodeState::Removed,
                });
                cleanup.push(Task::new(TokenRange::FULL, a.clone(), Vec::new()));
            }
            for r in &params.removes {
                nodes.push(NodeWrite::SetState {
                    node_id: r.clone(),
                    from: vec![NodeState::Leaving],
                    to: NodeState::Normal,
                });
            }
            // Existing nodes that received ranges keep them until cleanup proves them surplus.
            for t in parse_plan(&c).unwrap_or_default() {
                if !params.adds.contains(&t.node) {
                    cleanup.push(Task::new(t.range(), t.node.clone(), Vec::new()));
                }
            }
        }
        let follow_up = (!cleanup.is_empty()).then(|| {
            new_change(
                ChangeKind::Cleanup,
                &c.node_id,
                &Params::default(),
                &cleanup,
                Some(now_ms() + self.cfg.cleanup_grace_ms),
            )
        });
        self.meta
            .finish_change(
                change_id,
                None,
                ChangeStatus::Aborted,
                Some("aborted by operator"),
                &nodes,
                follow_up.as_ref(),
            )
            .await
            .map_err(|e| match e {
                MetaError::Conflict(m) => E::TopologyConflict(m).into(),
                other => crate::error::Error::from(other),
            })?;
        self.metrics
            .bootstrap_operations
            .get_or_create(&ChangeLabels {
                kind: c.kind.as_str(),
                result: "aborted",
            })
            .inc();
        let _ = self.cluster.refresh().await;
        tracing::warn!(change_id, kind = c.kind.as_str(), node_id = %c.node_id, "topology change aborted");
        Ok(self.meta.get_change(change_id).await?.unwrap_or(c))
    }
}

/// Source order for one range: for a decommission the leaving node first (it holds
/// everything); for a replace the node being replaced last (survivors first); for a forced
/// removal never the dead node.
fn order_sources(mut sources: Vec<String>, kind: ChangeKind, p: &Params) -> Vec<String> {
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
