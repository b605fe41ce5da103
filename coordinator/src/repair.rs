//! Anti-entropy repair (SPEC §5): makes replicas converge whatever hints and read repair missed.
//!
//! **Durable state.** A run is a `repairs` row. Its *plan* (JSON) is fixed when the run starts:
//! one task per ring range (`(previous token, token]`), or the pieces of the one range asked
//! for, each with its state and counts. At most one run is active (`active_slot`). One
//! coordinator drives it under a lease renewed with every progress save (each second); any
//! other coordinator's `repair` worker takes it over once the lease expires and continues with
//! the ranges not yet done. The same worker starts a cluster-wide run every `interval` after the
//! last one started.
//!
//! **One range.** For each group of tenants sharing a replication factor (one tenant, when the
//! run is for one tenant), the range is cut at the current ring's tokens and every piece is
//! compared across its replicas by a Merkle-style descent (`RepairDigest`): the piece's hash
//! first, then each differing bucket split into sub-buckets sized by its key count, until a
//! bucket holds few keys. There every replica lists its keys with their state and dot hashes
//! (`RepairKeys`), and each replica pulls exactly the keys holding a dot it lacks from a replica
//! holding it (`PullRange` with a key filter; merge, origin ANTI_ENTROPY), so the entries move
//! both ways and nothing is overwritten. A bucket some replica holds nothing of is pulled whole
//! when the others agree. Records that fail their checksum are rebuilt from the other replicas
//! (`Repair`); one no replica holds intact is reported lost. The piece is compared again
//! afterwards; writes landing meanwhile can leave it differing, then it is repaired again (up to
//! [`ROUNDS`] times) and otherwise reported unconverged.
//!
//! **Throttle.** Ranges run `parallelism` at a time and pulls are limited to
//! `max_bytes_per_sec` at the source.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pairdb_common::api::pb;
use pairdb_common::ring::{self, Ring};
use pairdb_common::token::{self, TokenRange};
use pairdb_common::version::KeyState;
use pairdb_common::{Error as E, convert, now_ms};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, NodeEntry};
use crate::meta::{MetaError, MetaStore, RepairRecord};
use crate::metrics::Metrics;

/// Replication factor assumed when no tenant exists yet.
const DEFAULT_N: usize = 3;
/// Descent and transfer rounds per piece before it counts as unconverged.
pub const ROUNDS: usize = 3;
/// A differing bucket with at most this many keys (on every replica) is compared key by key.
const LEAF_KEYS: u64 = 8;
/// Most sub-buckets a differing bucket is split into.
const MAX_FANOUT: u64 = 64;
/// Deepest descent (a bucket of width 1 cannot be split anyway).
const MAX_DEPTH: usize = 16;
/// Buckets asked for in one `RepairDigest` call, and leaf ranges in one `RepairKeys` call.
const BUCKETS_PER_CALL: u64 = 1 << 16;
const LEAVES_PER_CALL: usize = 4096;
/// Attempts of one range within a run before the run gives up on it.
const RANGE_ATTEMPTS: u32 = 3;
const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence from a pull before it is abandoned.
const PULL_IDLE: Duration = Duration::from_secs(120);
/// Least time between repairs started for a node back from a long outage.
const OUTAGE_RETRY_MS: u64 = 60_000;
/// Corrupt keys listed in a run's progress (the count is exact; the list is capped).
const LOST_LISTED: usize = 100;

/// Repair settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// This coordinator's identity, written as `lease_owner`.
    pub owner: String,
    pub lease_ms: u64,
    pub poll_ms: u64,
    /// A cluster-wide run starts this long after the last run started (0 = never scheduled).
    pub interval_ms: u64,
    /// Ranges repaired at once.
    pub parallelism: usize,
    /// Throttle of each pull at its source (0 = unthrottled).
    pub max_bytes_per_sec: u64,
    /// Tombstones older than this are purged from a piece once its replicas hash equal.
    pub gc_grace_ms: u64,
}

/// `repairs.params`: what a run covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
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
    fn new(r: TokenRange) -> RangeTask {
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

fn progress_of(plan: &[RangeTask], started: Instant, lost: &[String], lost_total: u64) -> Progress {
    let total = plan.len();
    let finished = plan
        .iter()
        .filter(|t| t.state != RangeState::Pending)
        .count();
    let percent = if total == 0 {
        100.0
    } else {
        (finished as f64 * 1000.0 / total as f64).round() / 10.0
    };
    let elapsed = started.elapsed().as_secs_f64();
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
        eta_secs: (finished > 0 && finished < total)
            .then(|| (elapsed / finished as f64 * (total - finished) as f64) as u64),
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

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// The state of a run being driven, saved every second.
struct Driving {
    plan: Vec<RangeTask>,
    started: Instant,
    lost: Vec<String>,
    lost_total: u64,
    waiting: Option<String>,
}

impl Driving {
    fn progress(&self) -> Progress {
        progress_of(&self.plan, self.started, &self.lost, self.lost_total)
    }
}

type Shared = Arc<Mutex<Driving>>;

/// What comparing and repairing one piece found and did.
#[derive(Debug, Default, Clone)]
struct PieceStats {
    keys_differing: u64,
    keys_transferred: u64,
    bytes_transferred: u64,
    digest_bytes: u64,
    corrupt: u64,
    recovered: u64,
    lost: Vec<String>,
    converged: bool,
    tombstones_purged: u64,
}

impl PieceStats {
    fn add(&mut self, o: &PieceStats) {
        self.keys_differing += o.keys_differing;
        self.keys_transferred += o.keys_transferred;
        self.bytes_transferred += o.bytes_transferred;
        self.digest_bytes += o.digest_bytes;
        self.corrupt += o.corrupt;
        self.recovered += o.recovered;
        self.tombstones_purged += o.tombstones_purged;
        self.lost.extend(o.lost.iter().cloned());
    }
}

/// One replica's record of a key as `RepairKeys` lists it. Actors are hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyView {
    state: u64,
    /// Live versions' dots `(actor, counter)`, sorted.
    dots: Vec<(u64, u64)>,
    /// Causal context entries `(actor, counter)`.
    context: HashMap<u64, u64>,
}

impl KeyView {
    /// Whether merging a version with dot `d` would leave this state as it is.
    fn covers(&self, d: (u64, u64)) -> bool {
        self.dots.binary_search(&d).is_ok() || self.context.get(&d.0).is_some_and(|c| *c >= d.1)
    }

    /// Whether merging `other` would change this state: it has a version this state neither
    /// holds nor has superseded, or a context entry beyond this state's.
    fn lacks(&self, other: &KeyView) -> bool {
        other.dots.iter().any(|d| !self.covers(*d))
            || other
                .context
                .iter()
                .any(|(a, c)| self.context.get(a).is_none_or(|mine| mine < c))
    }
}

/// A key as the replicas listed it: per key hash, each replica's view (`None`: no record).
type Listing = HashMap<u64, Vec<Option<KeyView>>>;

/// Which replica pulls a key from which: each replica whose state would change by merging
/// another's, from the first such replica, then from others only for what is still lacking.
/// A replica without the key pulls it from holders. States that differ although no merge
/// would change either side (context details the lists do not show) are merged both ways.
fn plan_key(per: &[Option<KeyView>]) -> Vec<(usize, usize)> {
    let empty = KeyView {
        state: 0,
        dots: Vec::new(),
        context: HashMap::new(),
    };
    let mut out = Vec::new();
    for dst in 0..per.len() {
        let mut have = per[dst].clone().unwrap_or_else(|| empty.clone());
        for src in (0..per.len()).filter(|s| *s != dst) {
            let Some(theirs) = &per[src] else { continue };
            let differs = per[dst].as_ref().map(|v| v.state) != Some(theirs.state);
            if !differs {
                continue;
            }
            if have.lacks(theirs) {
                out.push((dst, src));
                have.dots.extend(theirs.dots.iter().copied());
                have.dots.sort_unstable();
                have.dots.dedup();
                for (a, c) in &theirs.context {
                    let e = have.context.entry(*a).or_insert(0);
                    *e = (*e).max(*c);
                }
            }
        }
    }
    if out.is_empty() {
        // The states differ in what the lists do not show: merge every pair both ways.
        for dst in 0..per.len() {
            for src in (0..per.len()).filter(|s| *s != dst) {
                if per[src].is_some()
                    && per[src].as_ref().map(|v| v.state) != per[dst].as_ref().map(|v| v.state)
                {
                    out.push((dst, src));
                }
            }
        }
    }
    out
}

/// A bucket under comparison, and the replicas grouped by identical contents there: only the
/// first member of each group is asked for finer hashes or key listings on its group's behalf.
#[derive(Debug, Clone)]
struct Probe {
    range: TokenRange,
    buckets: u32,
    groups: Vec<Vec<usize>>,
}

/// What one bucket's hashes say.
#[derive(Debug, PartialEq, Eq)]
enum Compared {
    Equal,
    /// Some groups hold nothing here and the others agree: those replicas pull it whole.
    PullWhole {
        src: usize,
        dsts: Vec<usize>,
    },
    /// The replicas regrouped by their hash here, and the most keys one holds.
    Differ {
        groups: Vec<Vec<usize>>,
        most: u64,
    },
}

/// Regroups replicas by the `(hash, keys)` each group answered for one bucket (groups only
/// split or join: members of a group hold identical contents).
fn regroup(groups: &[Vec<usize>], answers: &[(u64, u64)]) -> Compared {
    let mut by: Vec<((u64, u64), Vec<usize>)> = Vec::new();
    for (members, a) in groups.iter().zip(answers) {
        match by.iter_mut().find(|(v, _)| v == a) {
            Some((_, m)) => m.extend(members.iter().copied()),
            None => by.push((*a, members.clone())),
        }
    }
    if by.len() <= 1 {
        return Compared::Equal;
    }
    let holders: Vec<&((u64, u64), Vec<usize>)> = by.iter().filter(|(v, _)| v.1 > 0).collect();
    if holders.len() == 1 {
        return Compared::PullWhole {
            src: holders[0].1[0],
            dsts: by
                .iter()
                .filter(|(v, _)| v.1 == 0)
                .flat_map(|(_, m)| m.iter().copied())
                .collect(),
        };
    }
    Compared::Differ {
        most: by.iter().map(|(v, _)| v.1).max().unwrap_or(0),
        groups: by.into_iter().map(|(_, m)| m).collect(),
    }
}

pub struct Repairs {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: RepairConfig,
    driving: Mutex<Option<String>>,
    /// When this coordinator started: with no run on record, the first is due an interval later.
    started_ms: u64,
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

/// Each reachable node's current start (`NodeInfo.started_at_ms`), asked when a run begins.
async fn node_starts(nodes: &HashMap<String, Arc<NodeEntry>>) -> BTreeMap<String, u64> {
    let asks = nodes.values().map(|n| {
        let mut c = n.client.clone();
        async move {
            let r =
                tokio::time::timeout(Duration::from_secs(5), c.node_info(pb::NodeInfoRequest {}))
                    .await;
            match r {
                Ok(Ok(info)) => Some((n.record.node_id.clone(), info.into_inner().started_at_ms)),
                _ => None,
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Sub-buckets for a differing bucket holding up to `keys` keys.
fn fanout(keys: u64) -> u32 {
    keys.div_ceil(LEAF_KEYS)
        .next_power_of_two()
        .clamp(2, MAX_FANOUT) as u32
}

/// Sorts ranges in stream order inside `within` (by distance from its start).
fn sort_within(within: TokenRange, ranges: &mut [TokenRange]) {
    ranges.sort_unstable_by_key(|r| r.start.wrapping_sub(within.start));
}

impl Repairs {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: RepairConfig,
    ) -> Arc<Repairs> {
        Arc::new(Repairs {
            meta,
            cluster,
            metrics,
            cfg,
            driving: Mutex::new(None),
            started_ms: now_ms(),
        })
    }

    /// Starts a run (`StartRepair`, or the schedule). `Conflict` while another run is active.
    pub async fn start(
        &self,
        params: Params,
        range: Option<TokenRange>,
    ) -> Result<RepairRecord, crate::error::Error> {
        if let Some(t) = &params.tenant
            && self.meta.get_tenant(t).await?.is_none()
        {
            return Err(E::TenantNotFound(format!("tenant {t} does not exist")).into());
        }
        self.cluster.refresh().await?;
        let snap = self.cluster.snapshot();
        if snap.ring.is_empty() {
            return Err(E::NodeNotReady("the ring has no storage nodes".into()).into());
        }
        let plan = plan(&snap.ring, range);
        let whole = params.tenant.is_none() && range.is_none();
        let params = Params {
            whole,
            node_starts: if whole {
                node_starts(&snap.nodes).await
            } else {
                BTreeMap::new()
            },
            ..params
        };
        let run = new_run(&params, &plan);
        match self.meta.create_repair(&run).await {
            Ok(()) => {
                tracing::info!(repair_id = %run.repair_id, tenant = ?params.tenant, trigger = %params.trigger, ranges = plan.len(), "repair started");
                Ok(run)
            }
            Err(MetaError::Conflict(msg)) => Err(E::TopologyConflict(msg).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The `repair` worker: drives the active run when its lease is free, and starts the
    /// scheduled run when it is due.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let every = Duration::from_millis(self.cfg.poll_ms);
        crate::lease::every(every, cancel.clone(), "repair", || {
            self.clone().tick(&cancel)
        })
        .await
    }

    async fn tick(self: Arc<Self>, cancel: &CancellationToken) -> Result<(), MetaError> {
        if self.driving.lock().is_some() {
            return Ok(());
        }
        let now = now_ms();
        let recent = self.meta.list_repairs(1).await?;
        let active = recent.first().filter(|r| r.status == "running").cloned();
        let Some(r) = active else {
            let last = recent.first().map_or(self.started_ms, |r| r.started_at_ms);
            let due = self.cfg.interval_ms > 0 && last + self.cfg.interval_ms <= now;
            // A node back from an outage longer than the grace serves no reads until a full
            // repair completes: start one (at most once a minute while it keeps failing) —
            // unless repairs are on demand only (`interval` 0).
            let snap = self.cluster.snapshot();
            let outage = self.cfg.interval_ms > 0
                && snap
                    .nodes
                    .values()
                    .any(|n| n.health.outage_ms() > self.cfg.gc_grace_ms)
                && snap.nodes.values().all(|n| n.health.is_available())
                && recent
                    .first()
                    .is_none_or(|r| r.started_at_ms + OUTAGE_RETRY_MS <= now);
            if (due || outage) && !snap.ring.is_empty() {
                let params = Params {
                    tenant: None,
                    trigger: if due { "scheduled" } else { "outage" }.into(),
                    ..Default::default()
                };
                match self.start(params, None).await {
                    Ok(_) | Err(crate::error::Error::Pairdb(E::TopologyConflict(_))) => {}
                    Err(e) => tracing::warn!(error = %e, "could not start the scheduled repair"),
                }
            }
            return Ok(());
        };
        if let (Some(owner), Some(exp)) = (&r.lease_owner, r.lease_expires_at_ms)
            && owner != &self.cfg.owner
            && exp > now
        {
            return Ok(());
        }
        if !self
            .meta
            .claim_repair(&r.repair_id, &self.cfg.owner, now, self.cfg.lease_ms)
            .await?
        {
            return Ok(());
        }
        if r.lease_owner
            .as_deref()
            .is_some_and(|o| o != self.cfg.owner)
        {
            tracing::warn!(repair_id = %r.repair_id, previous = ?r.lease_owner, "took over a repair whose driver stopped renewing its lease");
        }
        *self.driving.lock() = Some(r.repair_id.clone());
        let me = self.clone();
        let token = cancel.child_token();
        tokio::spawn(async move {
            let id = r.repair_id.clone();
            if let Err(e) = me.drive(r, token).await {
                tracing::warn!(repair_id = %id, error = %e, "repair paused; it will be resumed");
            }
            *me.driving.lock() = None;
        });
        Ok(())
    }

    async fn save(
        &self,
        id: &str,
        state: &Shared,
        last_plan: &Mutex<String>,
    ) -> Result<bool, MetaError> {
        let (plan, progress, waiting) = {
            let s = state.lock();
            (to_json(&s.plan), to_json(&s.progress()), s.waiting.clone())
        };
        let changed = *last_plan.lock() != plan;
        let saved = self
            .meta
            .save_repair(
                id,
                &self.cfg.owner,
                now_ms(),
                self.cfg.lease_ms,
                changed.then_some(plan.as_str()),
                &progress,
                waiting.as_deref(),
            )
            .await?;
        if saved && changed {
            *last_plan.lock() = plan;
        }
        Ok(saved)
    }

    /// Drives one run until every range is done or failed, or the lease is lost.
    async fn drive(&self, r: RepairRecord, cancel: CancellationToken) -> Result<(), String> {
        let params: Params = serde_json::from_str(&r.params).unwrap_or_default();
        let plan: Vec<RangeTask> = serde_json::from_str(&r.plan)
            .map_err(|e| format!("bad plan of repair {}: {e}", r.repair_id))?;
        let prior: Progress = serde_json::from_str(&r.progress).unwrap_or_default();
        let state: Shared = Arc::new(Mutex::new(Driving {
            plan,
            started: Instant::now(),
            lost: prior.lost,
            lost_total: prior.lost_total,
            waiting: None,
        }));
        let saver_stop = CancellationToken::new();
        let last_plan = Mutex::new(r.plan.clone());
        let every = Duration::from_millis((self.cfg.lease_ms / 5).clamp(100, 1000));
        let saver = crate::lease::keep(
            || self.save(&r.repair_id, &state, &last_plan),
            every,
            cancel.clone(),
            saver_stop.clone(),
            &r.repair_id,
        );
        let work = async {
            let r = self.run_ranges(&params, &state, &cancel).await;
            saver_stop.cancel();
            r
        };
        let (result, ()) = tokio::join!(work, saver);
        result?;
        let (plan, progress) = {
            let s = state.lock();
            (s.plan.clone(), s.progress())
        };
        let failed = progress.ranges_failed;
        let (status, error) = if failed > 0 {
            let first = plan
                .iter()
                .find_map(|t| t.error.clone())
                .unwrap_or_default();
            (
                "failed",
                Some(format!("{failed} range(s) could not be repaired: {first}")),
            )
        } else if progress.lost_total > 0 {
            (
                "failed",
                Some(format!(
                    "{} record(s) are corrupt on every replica (DATA_LOSS)",
                    progress.lost_total
                )),
            )
        } else {
            ("completed", None)
        };
        let ok = self
            .meta
            .finish_repair(
                &r.repair_id,
                &self.cfg.owner,
                status,
                &to_json(&plan),
                &to_json(&progress),
                error.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !ok {
            return Err("lost the lease before finishing".into());
        }
        self.metrics
            .repair_runs
            .get_or_create(&crate::metrics::ResultLabels { result: status })
            .inc();
        if status == "completed" && params.whole {
            self.forgive_outages(&params.node_starts).await;
        }
        tracing::info!(repair_id = %r.repair_id, status, ranges = progress.ranges_total, keys_differing = progress.keys_differing, keys_transferred = progress.keys_transferred, bytes_transferred = progress.bytes_transferred, digest_bytes = progress.digest_bytes, "repair finished");
        Ok(())
    }

    /// Repairs every pending range, `parallelism` at a time, retrying failed ones.
    async fn run_ranges(
        &self,
        params: &Params,
        state: &Shared,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        loop {
            if cancel.is_cancelled() {
                return Err("lease lost".into());
            }
            let todo: Vec<usize> = {
                let s = state.lock();
                (0..s.plan.len())
                    .filter(|i| s.plan[*i].state == RangeState::Pending)
                    .collect()
            };
            if todo.is_empty() {
                return Ok(());
            }
            self.cluster.refresh().await.map_err(|e| e.to_string())?;
            let groups = self.groups(params).await.map_err(|e| e.to_string())?;
            let groups = &groups;
            let failures = futures::stream::iter(todo)
                .map(|i| async move {
                    let range = state.lock().plan[i].range();
                    let r = tokio::select! {
                        _ = cancel.cancelled() => Err("lease lost".to_string()),
                        r = self.repair_range(range, groups) => r,
                    };
                    let mut s = state.lock();
                    let t = &mut s.plan[i];
                    t.attempts += 1;
                    match r {
                        Ok(st) => {
                            t.state = RangeState::Done;
                            t.error = None;
                            t.keys_differing = st.keys_differing;
                            t.keys_transferred = st.keys_transferred;
                            t.bytes_transferred = st.bytes_transferred;
                            t.digest_bytes = st.digest_bytes;
                            t.corrupt = st.corrupt;
                            t.recovered = st.recovered;
                            t.tombstones_purged = st.tombstones_purged;
                            t.converged = st.converged;
                            self.metrics
                                .repair_ranges
                                .get_or_create(&crate::metrics::ResultLabels {
                                    result: if st.converged {
                                        "converged"
                                    } else {
                                        "unconverged"
                                    },
                                })
                                .inc();
                            s.lost_total += st.lost.len() as u64;
                            for k in st.lost {
                                if s.lost.len() < LOST_LISTED {
                                    s.lost.push(k);
                                }
                            }
                            false
                        }
                        Err(e) => {
                            if t.attempts >= RANGE_ATTEMPTS && !cancel.is_cancelled() {
                                t.state = RangeState::Failed;
                                self.metrics
                                    .repair_ranges
                                    .get_or_create(&crate::metrics::ResultLabels {
                                        result: "failed",
                                    })
                                    .inc();
                            }
                            tracing::warn!(range = %range, error = %e, "repair of a range failed");
                            t.error = Some(e);
                            true
                        }
                    }
                })
                .buffer_unordered(self.cfg.parallelism.max(1))
                .filter(|failed| futures::future::ready(*failed))
                .count()
                .await;
            if failures > 0 {
                state.lock().waiting = Some(format!("{failures} range(s) failed; retrying"));
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            } else {
                state.lock().waiting = None;
            }
        }
    }

    /// Tenant groups compared together: `(replication factor, tenants)`; an empty tenant list
    /// means every record (all tenants share one factor).
    async fn groups(&self, params: &Params) -> Result<Vec<(usize, Vec<String>)>, MetaError> {
        let tenants = self.meta.list_tenants().await?;
        if let Some(t) = &params.tenant {
            let rf = tenants
                .iter()
                .find(|x| &x.tenant_id == t)
                .map(|x| x.replication_factor as usize)
                .unwrap_or(DEFAULT_N);
            return Ok(vec![(rf, vec![t.clone()])]);
        }
        let mut by_rf: HashMap<usize, Vec<String>> = HashMap::new();
        for t in &tenants {
            by_rf
                .entry(t.replication_factor as usize)
                .or_default()
                .push(t.tenant_id.clone());
        }
        Ok(match by_rf.len() {
            0 => vec![(DEFAULT_N, Vec::new())],
            1 => vec![(*by_rf.keys().next().unwrap_or(&DEFAULT_N), Vec::new())],
            _ => by_rf.into_iter().collect(),
        })
    }

    /// Repairs one plan range: every piece of it (at the current ring's tokens) for every group.
    async fn repair_range(
        &self,
        range: TokenRange,
        groups: &[(usize, Vec<String>)],
    ) -> Result<PieceStats, String> {
        let snap = self.cluster.snapshot();
        let mut total = PieceStats {
            converged: true,
            ..Default::default()
        };
        for (rf, tenants) in groups {
            for piece in ring::cut(range, &[&snap.ring]) {
                let replicas: Vec<Arc<NodeEntry>> = snap
                    .ring
                    .preference_list(piece.end, *rf)
                    .iter()
                    .filter_map(|m| snap.nodes.get(&m.node_id).cloned())
                    .collect();
                if let Some(down) = replicas.iter().find(|n| !n.health.is_available()) {
                    return Err(format!(
                        "replica {} of {piece} is down; every replica must take part",
                        down.record.node_id
                    ));
                }
                let st = self.repair_piece(piece, &replicas, tenants).await?;
                total.converged &= st.converged;
                total.add(&st);
            }
        }
        self.metrics.repair_keys.inc_by(total.keys_transferred);
        self.metrics.repair_bytes.inc_by(total.bytes_transferred);
        self.metrics.repair_digest_bytes.inc_by(total.digest_bytes);
        Ok(total)
    }

    /// Compares one piece across its replicas and moves what differs, until the replicas hash
    /// equal or [`ROUNDS`] rounds ran.
    async fn repair_piece(
        &self,
        piece: TokenRange,
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
    ) -> Result<PieceStats, String> {
        let mut st = PieceStats::default();
        if replicas.len() < 2 {
            st.converged = true;
            return Ok(st);
        }
        for round in 0..=ROUNDS {
            // Each round is a fresh session: the nodes rescan the piece once for its descent,
            // and short hashes get a new salt.
            let session = format!("{}/{}/{round}", now_ms(), piece.start);
            let alone: Vec<Vec<usize>> = (0..replicas.len()).map(|r| vec![r]).collect();
            let mut level = vec![Probe {
                range: piece,
                buckets: 1,
                groups: alone,
            }];
            let mut leaves: Vec<Probe> = Vec::new();
            let mut whole: Vec<(usize, usize, TokenRange)> = Vec::new();
            // The whole piece is compared with full 64-bit hashes (convergence is decided
            // there); deeper levels with short ones.
            let mut short = false;
            for _ in 0..MAX_DEPTH {
                if level.is_empty() {
                    break;
                }
                let answers = self
                    .digests(replicas, &level, tenants, (&session, piece), short, &mut st)
                    .await?;
                short = true;
                let mut next = Vec::new();
                for (p, buckets) in level.iter().zip(answers) {
                    for (b, per_group) in p.range.split(p.buckets).into_iter().zip(buckets) {
                        match regroup(&p.groups, &per_group) {
                            Compared::Equal => {}
                            Compared::PullWhole { src, dsts } => {
                                whole.extend(dsts.into_iter().map(|d| (d, src, b)));
                            }
                            Compared::Differ { groups, most } => {
                                let probe = Probe {
                                    range: b,
                                    buckets: fanout(most),
                                    groups,
                                };
                                if most <= LEAF_KEYS || b.width() <= 1 {
                                    leaves.push(probe);
                                } else {
                                    next.push(probe);
                                }
                            }
                        }
                    }
                }
                level = next;
            }
            leaves.extend(level);
            if round == ROUNDS || (leaves.is_empty() && whole.is_empty()) {
                st.converged = leaves.is_empty() && whole.is_empty();
                if st.converged {
                    st.tombstones_purged += self.purge(piece, replicas, tenants).await?;
                }
                return Ok(st);
            }
            // Whole buckets to replicas holding nothing there.
            let mut pulls: HashMap<(usize, usize), Vec<TokenRange>> = HashMap::new();
            for (dst, src, b) in whole {
                pulls.entry((dst, src)).or_default().push(b);
            }
            for ((dst, src), ranges) in &mut pulls {
                sort_within(piece, ranges);
                let p = self
                    .pull(
                        &replicas[*dst],
                        &replicas[*src],
                        piece,
                        ranges,
                        &[],
                        tenants,
                    )
                    .await?;
                st.keys_differing += p.keys;
                st.keys_transferred += p.keys;
                st.bytes_transferred += p.bytes;
            }
            // Leaves: key by key.
            leaves.sort_unstable_by_key(|p| p.range.start.wrapping_sub(piece.start));
            for chunk in leaves.chunks(LEAVES_PER_CALL) {
                self.repair_leaves(piece, chunk, replicas, tenants, &session, &mut st)
                    .await?;
            }
        }
        Ok(st)
    }

    /// After a complete cluster-wide run: every node that came back before the run started
    /// had each of its ranges compared and repaired, so its outage no longer keeps it from
    /// serving reads.
    async fn forgive_outages(&self, node_starts: &BTreeMap<String, u64>) {
        let snap = self.cluster.snapshot();
        for n in snap.nodes.values() {
            if n.health.outage_ms() == 0 {
                continue;
            }
            let Some(started) = node_starts.get(&n.record.node_id) else {
                continue;
            };
            let mut c = n.client.clone();
            let req = pb::MarkRepairedRequest {
                node_started_at_ms: *started,
            };
            match tokio::time::timeout(RPC_TIMEOUT, c.mark_repaired(req)).await {
                Ok(Ok(r)) if r.get_ref().cleared => {
                    tracing::info!(node_id = %n.record.node_id, "node repaired after its outage; it serves reads again")
                }
                Ok(Ok(_)) => {
                    tracing::info!(node_id = %n.record.node_id, "node restarted during this repair; the next one clears it")
                }
                _ => tracing::warn!(node_id = %n.record.node_id, "could not mark node repaired"),
            }
        }
    }

    /// Tombstone GC on a piece every replica was just found to hold identically: each replica
    /// drops the tombstones older than the grace, the same ones everywhere.
    async fn purge(
        &self,
        piece: TokenRange,
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
    ) -> Result<u64, String> {
        let before = now_ms().saturating_sub(self.cfg.gc_grace_ms);
        let calls = replicas.iter().map(|n| {
            let mut c = n.client.clone();
            let (range, whole_ring) = convert::explicit_range_to_pb(piece);
            let req = pb::PurgeTombstonesRequest {
                range,
                tenant_ids: tenants.to_vec(),
                written_before_ms: before,
                whole_ring,
            };
            async move {
                tokio::time::timeout(RPC_TIMEOUT, c.purge_tombstones(req))
                    .await
                    .map_err(|_| format!("tombstone purge on {} timed out", n.record.node_id))?
                    .map_err(|s| {
                        format!(
                            "tombstone purge on {}: {}",
                            n.record.node_id,
                            E::from_status(&s)
                        )
                    })
                    .map(|r| r.into_inner().purged)
            }
        });
        let mut most = 0;
        for r in futures::future::join_all(calls).await {
            most = most.max(r?);
        }
        Ok(most)
    }

    /// One level of the descent: each probe's buckets from one replica per group (its first
    /// member). Per probe, per bucket, per group: `(hash, keys)` (short hashes widened).
    async fn digests(
        &self,
        replicas: &[Arc<NodeEntry>],
        level: &[Probe],
        tenants: &[String],
        (session, scope): (&str, TokenRange),
        short: bool,
        st: &mut PieceStats,
    ) -> Result<Vec<Vec<Vec<(u64, u64)>>>, String> {
        let mut out: Vec<Vec<Vec<(u64, u64)>>> = level
            .iter()
            .map(|p| vec![vec![(0, 0); p.groups.len()]; p.range.split(p.buckets).len()])
            .collect();
        let mut start = 0;
        while start < level.len() {
            let mut end = start;
            let mut buckets = 0u64;
            while end < level.len()
                && (end == start || buckets + u64::from(level[end].buckets) <= BUCKETS_PER_CALL)
            {
                buckets += u64::from(level[end].buckets);
                end += 1;
            }
            // Per replica: the (probe, group) pairs it answers for.
            let mut asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); replicas.len()];
            for (pi, p) in level.iter().enumerate().take(end).skip(start) {
                for (g, members) in p.groups.iter().enumerate() {
                    asked[members[0]].push((pi, g));
                }
            }
            let calls = asked.iter().enumerate().map(|(r, pairs)| {
                let n = &replicas[r];
                let mut c = n.client.clone();
                let req = pb::RepairDigestRequest {
                    queries: pairs
                        .iter()
                        .map(|(pi, _)| pb::DigestQuery {
                            range: Some(convert::range_to_pb(level[*pi].range)),
                            buckets: level[*pi].buckets,
                        })
                        .collect(),
                    tenant_ids: tenants.to_vec(),
                    session: session.to_string(),
                    scope: Some(convert::range_to_pb(scope)),
                    short_hashes: short,
                };
                let expected: usize = pairs
                    .iter()
                    .map(|(pi, _)| level[*pi].range.split(level[*pi].buckets).len())
                    .sum();
                async move {
                    if pairs.is_empty() {
                        return Ok(None);
                    }
                    let r = tokio::time::timeout(RPC_TIMEOUT, c.repair_digest(req))
                        .await
                        .map_err(|_| format!("digest on {} timed out", n.record.node_id))?
                        .map_err(|s| {
                            format!("digest on {}: {}", n.record.node_id, E::from_status(&s))
                        })?
                        .into_inner();
                    let got = if short {
                        r.short_hashes.len()
                    } else {
                        r.hashes.len()
                    };
                    if got != expected || r.keys.len() != expected {
                        return Err(format!(
                            "digest on {} answered {got} buckets, not {expected}",
                            n.record.node_id
                        ));
                    }
                    Ok(Some(r))
                }
            });
            for (r, resp) in futures::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                let Some(resp) = resp? else { continue };
                st.digest_bytes += resp.encoded_len() as u64;
                let hashes: Vec<u64> = if short {
                    resp.short_hashes.iter().map(|h| u64::from(*h)).collect()
                } else {
                    resp.hashes
                };
                let mut i = 0;
                for (pi, g) in &asked[r] {
                    for slot in out[*pi].iter_mut() {
                        slot[*g] = (hashes[i], resp.keys[i]);
                        i += 1;
                    }
                }
            }
            start = end;
        }
        Ok(out)
    }

    /// Compares `leaves` key by key and has each replica pull the keys it lacks; rebuilds
    /// corrupt records from the other replicas. First pass: short key and state hashes from
    /// one replica per group; second pass: full entries (dots, context) of the differing keys.
    async fn repair_leaves(
        &self,
        piece: TokenRange,
        leaves: &[Probe],
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
        session: &str,
        st: &mut PieceStats,
    ) -> Result<(), String> {
        let n = replicas.len();
        // Per replica: the (leaf, group) pairs it lists for.
        let mut asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for (li, l) in leaves.iter().enumerate() {
            for (g, members) in l.groups.iter().enumerate() {
                asked[members[0]].push((li, g));
            }
        }
        let first = self
            .list_keys(replicas, leaves, &asked, tenants, session, None, st)
            .await?;
        // Per leaf: short key → per group its short state (None: the group lacks the key).
        let mut shorts: Vec<HashMap<u32, Vec<Option<u32>>>> = vec![HashMap::new(); leaves.len()];
        // Per corrupt key, the replicas whose record of it failed its checksum.
        let mut corrupt: HashMap<(String, Vec<u8>), Vec<usize>> = HashMap::new();
        for (r, resp) in first.into_iter().enumerate() {
            let Some(resp) = resp else { continue };
            let mut at = 0usize;
            for ((li, g), count) in asked[r].iter().zip(&resp.range_counts) {
                let groups = leaves[*li].groups.len();
                for k in at..at + *count as usize {
                    let (Some(key), Some(state)) =
                        (resp.short_keys.get(k), resp.short_states.get(k))
                    else {
                        return Err(format!(
                            "key listing on {} is inconsistent",
                            replicas[r].record.node_id
                        ));
                    };
                    shorts[*li]
                        .entry(*key)
                        .or_insert_with(|| vec![None; groups])[*g] = Some(*state);
                }
                at += *count as usize;
            }
            for c in resp.corrupt {
                let tok = token::token(&c.tenant_id, &c.key);
                // The group holding a corrupt record is that replica alone (its hash is unique).
                let on = asked[r]
                    .iter()
                    .find(|(li, _)| leaves[*li].range.contains(tok))
                    .map(|(li, g)| leaves[*li].groups[*g].clone())
                    .unwrap_or_else(|| vec![r]);
                corrupt.entry((c.tenant_id, c.key)).or_default().extend(on);
            }
        }
        // Second pass: full entries of the keys whose state differs between groups.
        let mut wanted: Vec<HashSet<u32>> = vec![HashSet::new(); n];
        let mut differing = 0u64;
        for (li, keys) in shorts.iter().enumerate() {
            for (k, per_group) in keys {
                let first = per_group.iter().flatten().next();
                if per_group.iter().all(|s| s.as_ref() == first) {
                    continue;
                }
                differing += 1;
                for (g, s) in per_group.iter().enumerate() {
                    if s.is_some() {
                        wanted[leaves[li].groups[g][0]].insert(*k);
                    }
                }
            }
        }
        st.keys_differing += differing;
        let mut second_asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for r in 0..n {
            if !wanted[r].is_empty() {
                second_asked[r] = asked[r].clone();
            }
        }
        let full = self
            .list_keys(
                replicas,
                leaves,
                &second_asked,
                tenants,
                session,
                Some(wanted.as_slice()),
                st,
            )
            .await?;
        let mut listing: Listing = HashMap::new();
        for (r, resp) in full.into_iter().enumerate() {
            let Some(resp) = resp else { continue };
            let mut dots = resp
                .dot_actors
                .iter()
                .copied()
                .zip(resp.dot_counters.iter().copied());
            let mut ctx = resp
                .context_actors
                .iter()
                .copied()
                .zip(resp.context_counters.iter().copied());
            let mut at = 0usize;
            for ((li, g), count) in second_asked[r].iter().zip(&resp.range_counts) {
                for k in at..at + *count as usize {
                    let (Some(kh), Some(sh), Some(dc), Some(cc)) = (
                        resp.key_hashes.get(k),
                        resp.state_hashes.get(k),
                        resp.dot_counts.get(k),
                        resp.context_counts.get(k),
                    ) else {
                        return Err(format!(
                            "key listing on {} is inconsistent",
                            replicas[r].record.node_id
                        ));
                    };
                    let mut view = KeyView {
                        state: *sh,
                        dots: dots.by_ref().take(*dc as usize).collect(),
                        context: ctx.by_ref().take(*cc as usize).collect(),
                    };
                    view.dots.sort_unstable();
                    let per = listing.entry(*kh).or_insert_with(|| vec![None; n]);
                    for m in &leaves[*li].groups[*g] {
                        per[*m] = Some(view.clone());
                    }
                }
                at += *count as usize;
            }
        }
        // Corrupt records are rebuilt through Repair, never pulled into (merges refuse them).
        let corrupt_hashes: HashSet<(usize, u64)> = corrupt
            .iter()
            .flat_map(|((t, k), on)| {
                let kh = token::key_hash(&token::data_key(t, k));
                on.iter().map(move |i| (*i, kh))
            })
            .collect();
        let mut pulls: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
        for (kh, per) in &listing {
            let first = per.iter().flatten().next().map(|v| v.state);
            if per.iter().all(|v| v.as_ref().map(|v| v.state) == first) {
                continue;
            }
            for (dst, src) in plan_key(per) {
                if !corrupt_hashes.contains(&(dst, *kh)) {
                    pulls.entry((dst, src)).or_default().push(*kh);
                }
            }
        }
        let ranges: Vec<TokenRange> = leaves.iter().map(|l| l.range).collect();
        let mut pulls: Vec<_> = pulls.into_iter().collect();
        pulls.sort_unstable_by_key(|((d, s), _)| (*d, *s));
        for ((dst, src), keys) in pulls {
            let p = self
                .pull(
                    &replicas[dst],
                    &replicas[src],
                    piece,
                    &ranges,
                    &keys,
                    tenants,
                )
                .await?;
            st.keys_transferred += p.keys;
            st.bytes_transferred += p.bytes;
        }
        let mut corrupt: Vec<_> = corrupt.into_iter().collect();
        corrupt.sort_unstable();
        for ((tenant, key), mut on) in corrupt {
            // A lost record is met again in every round; it is reported once.
            if st.lost.contains(&token::display_key(&tenant, &key)) {
                continue;
            }
            on.sort_unstable();
            on.dedup();
            st.corrupt += on.len() as u64;
            self.metrics.corrupted_entries.inc_by(on.len() as u64);
            let bad: Vec<&Arc<NodeEntry>> = on.iter().map(|i| &replicas[*i]).collect();
            match self.recover(&bad, replicas, &tenant, &key).await? {
                true => st.recovered += on.len() as u64,
                false => st.lost.push(token::display_key(&tenant, &key)),
            }
        }
        Ok(())
    }

    /// `RepairKeys` on each replica for the leaves it is asked for (in that order): short
    /// hashes when `wanted` is `None`, else full entries of the wanted short keys.
    #[allow(clippy::too_many_arguments)]
    async fn list_keys(
        &self,
        replicas: &[Arc<NodeEntry>],
        leaves: &[Probe],
        asked: &[Vec<(usize, usize)>],
        tenants: &[String],
        session: &str,
        wanted: Option<&[HashSet<u32>]>,
        st: &mut PieceStats,
    ) -> Result<Vec<Option<pb::RepairKeysResponse>>, String> {
        let calls = asked.iter().enumerate().map(|(r, pairs)| {
            let n = &replicas[r];
            let mut c = n.client.clone();
            let req = pb::RepairKeysRequest {
                ranges: pairs
                    .iter()
                    .map(|(li, _)| convert::range_to_pb(leaves[*li].range))
                    .collect(),
                tenant_ids: tenants.to_vec(),
                short: wanted.is_none(),
                session: session.to_string(),
                only_short_keys: wanted
                    .map(|w| w[r].iter().copied().collect())
                    .unwrap_or_default(),
            };
            async move {
                if pairs.is_empty() {
                    return Ok(None);
                }
                let resp = tokio::time::timeout(RPC_TIMEOUT, c.repair_keys(req))
                    .await
                    .map_err(|_| format!("key listing on {} timed out", n.record.node_id))?
                    .map_err(|s| {
                        format!(
                            "key listing on {}: {}",
                            n.record.node_id,
                            E::from_status(&s)
                        )
                    })?
                    .into_inner();
                if resp.range_counts.len() != pairs.len() {
                    return Err(format!(
                        "key listing on {} answered {} ranges, not {}",
                        n.record.node_id,
                        resp.range_counts.len(),
                        pairs.len()
                    ));
                }
                Ok(Some(resp))
            }
        });
        let mut out = Vec::with_capacity(replicas.len());
        for r in futures::future::join_all(calls).await {
            let r = r?;
            if let Some(resp) = &r {
                st.digest_bytes += resp.encoded_len() as u64;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Rebuilds the corrupt records of `(tenant, key)` on `bad` from the other replicas'
    /// intact states (`Repair`). `Ok(false)`: no other replica holds it intact: it is lost, and
    /// the records stay as they are (reads of the key answer DATA_LOSS).
    async fn recover(
        &self,
        bad: &[&Arc<NodeEntry>],
        replicas: &[Arc<NodeEntry>],
        tenant: &str,
        key: &[u8],
    ) -> Result<bool, String> {
        let mut merged = KeyState::new();
        let mut found = false;
        let is_bad = |n: &NodeEntry| bad.iter().any(|b| b.record.node_id == n.record.node_id);
        for other in replicas.iter().filter(|r| !is_bad(r)) {
            let mut c = other.client.clone();
            let req = pb::KeyRef {
                tenant_id: tenant.to_string(),
                key: key.to_vec(),
            };
            // A replica that is unreachable, or corrupt by now, cannot help.
            if let Ok(Ok(r)) = tokio::time::timeout(RPC_TIMEOUT, c.read(req)).await {
                let r = r.into_inner();
                if let Some(s) = r.state.filter(|_| r.exists)
                    && let Ok(s) = convert::state_from_pb(s)
                {
                    merged.merge(&s);
                    found = true;
                }
            }
        }
        if !found {
            self.metrics.repair_lost.inc();
            tracing::error!(key = %token::display_key(tenant, key), corrupt_on = bad.len(), "record is corrupt on every replica holding it: data lost (left in place, reads answer DATA_LOSS)");
            return Ok(false);
        }
        for node in bad {
            let mut c = node.client.clone();
            let req = pb::KeyVersions {
                tenant_id: tenant.to_string(),
                key: key.to_vec(),
                state: Some(convert::state_to_pb(&merged)),
                origin: pb::ApplyOrigin::AntiEntropy as i32,
                ..Default::default()
            };
            tokio::time::timeout(RPC_TIMEOUT, c.repair(req))
                .await
                .map_err(|_| format!("repair on {} timed out", node.record.node_id))?
                .map_err(|s| {
                    format!("repair on {}: {}", node.record.node_id, E::from_status(&s))
                })?;
            self.metrics.data_recovery_operations.inc();
            tracing::warn!(node_id = %node.record.node_id, key = %token::display_key(tenant, key), "rebuilt a corrupt record from the other replicas");
        }
        Ok(true)
    }

    /// Has `dst` pull from `src` the records of `sub_ranges` of `piece` (only `keys` when given).
    async fn pull(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        piece: TokenRange,
        sub_ranges: &[TokenRange],
        keys: &[u64],
        tenants: &[String],
    ) -> Result<pb::PullProgress, String> {
        let mut c = dst.client.clone();
        let req = pb::PullRangeRequest {
            range: Some(convert::range_to_pb(piece)),
            source_address: format!("{}:{}", src.record.host, src.record.port),
            source_node_id: src.record.node_id.clone(),
            max_bytes_per_sec: self.cfg.max_bytes_per_sec,
            sub_ranges: sub_ranges
                .iter()
                .map(|r| convert::range_to_pb(*r))
                .collect(),
            tenant_ids: tenants.to_vec(),
            key_hashes: keys.to_vec(),
            origin: pb::ApplyOrigin::AntiEntropy as i32,
            ..Default::default()
        };
        let what = || {
            format!(
                "pull of {piece} by {} from {}",
                dst.record.node_id, src.record.node_id
            )
        };
        let mut stream = tokio::time::timeout(RPC_TIMEOUT, c.pull_range(req))
            .await
            .map_err(|_| format!("{} did not start in time", what()))?
            .map_err(|s| format!("{}: {}", what(), E::from_status(&s)))?
            .into_inner();
        loop {
            match tokio::time::timeout(PULL_IDLE, stream.message()).await {
                Err(_) => return Err(format!("{} stalled", what())),
                Ok(Err(s)) => return Err(format!("{}: {}", what(), E::from_status(&s))),
                Ok(Ok(None)) => return Err(format!("{} ended before its last batch", what())),
                Ok(Ok(Some(p))) if p.done => return Ok(p),
                Ok(Ok(Some(_))) => {}
            }
        }
    }

    /// The run `GetRepairStatus` describes: `repair_id`, or the newest.
    pub async fn status(&self, repair_id: &str) -> Result<RepairRecord, crate::error::Error> {
        let r = if repair_id.is_empty() {
            self.meta.list_repairs(1).await?.into_iter().next()
        } else {
            self.meta.get_repair(repair_id).await?
        };
        r.ok_or_else(|| {
            E::InvalidArgument(if repair_id.is_empty() {
                "no repair has run yet".into()
            } else {
                format!("no repair {repair_id}")
            })
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_sizes_sub_buckets_to_the_leaf_size_within_bounds() {
        assert_eq!(fanout(9), 2);
        assert_eq!(fanout(35), 8);
        assert_eq!(fanout(100_000), 64);
    }

    fn view(state: u64, dots: &[(u64, u64)], context: &[(u64, u64)]) -> Option<KeyView> {
        let mut dots = dots.to_vec();
        dots.sort_unstable();
        Some(KeyView {
            state,
            dots,
            context: context.iter().copied().collect(),
        })
    }

    #[test]
    fn a_missing_key_is_pulled_by_the_replica_lacking_it_only() {
        let per = vec![view(1, &[(7, 1)], &[]), view(1, &[(7, 1)], &[]), None];
        assert_eq!(plan_key(&per), vec![(2, 0)]);
    }

    #[test]
    fn a_stale_version_moves_only_towards_the_replica_that_has_not_superseded_it() {
        // Replicas 0 and 1 hold (7,2), written over (7,1); replica 2 still holds (7,1).
        let new = view(2, &[(7, 2)], &[(7, 1)]);
        let per = vec![new.clone(), new, view(1, &[(7, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(2, 0)]);
    }

    #[test]
    fn concurrent_versions_move_both_ways() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(8, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn a_replica_lacking_versions_from_two_others_pulls_from_both() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(8, 1)], &[]), None];
        let plan = plan_key(&per);
        assert!(plan.contains(&(2, 0)) && plan.contains(&(2, 1)), "{plan:?}");
    }

    #[test]
    fn states_differing_only_in_unlisted_detail_are_merged_both_ways() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(7, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn regroup_joins_equal_answers_and_spots_empty_groups() {
        let g = vec![vec![0, 1], vec![2]];
        assert_eq!(regroup(&g, &[(5, 3), (5, 3)]), Compared::Equal);
        assert_eq!(
            regroup(&g, &[(5, 3), (0, 0)]),
            Compared::PullWhole {
                src: 0,
                dsts: vec![2]
            }
        );
        assert_eq!(
            regroup(&g, &[(5, 3), (6, 4)]),
            Compared::Differ {
                groups: vec![vec![0, 1], vec![2]],
                most: 4
            }
        );
        let alone = vec![vec![0], vec![1], vec![2]];
        assert_eq!(
            regroup(&alone, &[(5, 3), (6, 4), (5, 3)]),
            Compared::Differ {
                groups: vec![vec![0, 2], vec![1]],
                most: 4
            }
        );
    }

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
