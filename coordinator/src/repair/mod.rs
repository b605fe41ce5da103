//! Anti-entropy repair (SPEC §5): makes replicas converge whatever hints and read repair missed.
//!
//! **Durable state.** A run is a `repairs` row. Its *plan* (JSON) is fixed when the run starts:
//! one task per ring range (`(previous token, token]`), or the pieces of the one range asked
//! for, each with its state and counts. At most one run is active (`active_slot`). One
//! coordinator drives it on the job driver (`crate::jobs`) under a lease renewed with every
//! progress save (each second); any other coordinator's `repair` worker takes it over once the
//! lease expires and continues with the ranges not yet done. The same worker starts a cluster-wide run every `interval` after the
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

//!
//! Files: [`plan`] (documents), `compare` (pure decisions: who pulls what, regrouping,
//! fan-out), `piece` (the descent over one piece and tombstone GC), `keys` (key-by-key
//! comparison and rebuilding corrupt records); this file starts, claims and drives runs.

mod compare;
mod keys;
mod piece;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::token::TokenRange;
use pairdb_common::{Error as E, now_ms};
use tokio_util::sync::CancellationToken;

pub use plan::{Params, Progress, RangeState, RangeTask, new_run, plan};

use crate::cluster::{Cluster, NodeEntry};
use crate::jobs::{self, JobDriver, JobError, Run, Work, to_json};
use crate::meta::{ChangeKind, MetaError, MetaStore, RepairRecord};
use crate::metrics::Metrics;
use crate::node_call;
use plan::progress_of;

/// Replication factor assumed when no tenant exists yet.
const DEFAULT_N: usize = 3;
/// Descent and transfer rounds per piece before it counts as unconverged.
pub const ROUNDS: usize = 3;
/// Attempts of one range within a run before the run gives up on it.
const RANGE_ATTEMPTS: u32 = 3;
/// Least time between repairs started for a node back from a long outage.
const OUTAGE_RETRY_MS: u64 = 60_000;
/// Corrupt keys listed in a run's progress (the count is exact; the list is capped).
const LOST_LISTED: usize = 100;

/// Repair settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// How often the worker looks for a run to drive or start.
    pub poll_ms: u64,
    /// A cluster-wide run starts this long after the last run started (0 = never scheduled).
    pub interval_ms: u64,
    /// Ranges repaired at once.
    pub parallelism: usize,
    /// Throttle of each pull at its source (0 = unthrottled).
    pub max_bytes_per_sec: u64,
    /// Tombstones older than this are purged from a piece once its replicas hash equal.
    pub gc_grace_ms: u64,
    /// Wait before the cleanup after a replication-factor decrease (the topology cleanup grace).
    pub cleanup_grace_ms: u64,
}

/// A run's own state beside its plan: the records found lost (capped list, exact count).
#[derive(Default)]
struct Lost {
    listed: Vec<String>,
    total: u64,
}

/// A run being driven: its plan of range tasks.
type RepairRun = Run<RangeTask, Lost>;

pub struct Repairs {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: RepairConfig,
    driver: Arc<JobDriver>,
    /// When this coordinator started: with no run on record, the first is due an interval later.
    started_ms: u64,
}
/// Each reachable node's current start (`NodeInfo.started_at_ms`), asked when a run begins.
async fn node_starts(nodes: &BTreeMap<String, Arc<NodeEntry>>) -> BTreeMap<String, u64> {
    let asks = nodes.values().map(|n| {
        let mut c = n.client.clone();
        async move {
            let info = node_call::call(
                n,
                "node info",
                Duration::from_secs(5),
                c.node_info(pb::NodeInfoRequest {}),
            )
            .await
            .ok()?;
            Some((n.record.node_id.clone(), info.started_at_ms))
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

impl Repairs {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: RepairConfig,
        driver: Arc<JobDriver>,
    ) -> Arc<Repairs> {
        Arc::new(Repairs {
            meta,
            cluster,
            metrics,
            cfg,
            driver,
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
        self.driver
            .every(every, cancel, || self.clone().tick())
            .await
    }

    async fn tick(self: Arc<Self>) -> Result<(), MetaError> {
        if self.driver.driving() > 0 {
            return Ok(());
        }
        let now = now_ms();
        let recent = self.meta.list_repairs(1).await?;
        let active = recent.first().filter(|r| r.status == "running").cloned();
        let Some(r) = active else {
            self.start_when_due(recent.first(), now).await;
            return Ok(());
        };
        let me = self.clone();
        self.driver
            .take(
                r,
                now,
                move |r, cancel| async move { me.drive(r, cancel).await },
            )
            .await?;
        Ok(())
    }

    /// Starts the scheduled run when `interval` passed since the last one started, or a run
    /// for a node back from a long outage.
    async fn start_when_due(&self, last: Option<&RepairRecord>, now: u64) {
        let last_start = last.map_or(self.started_ms, |r| r.started_at_ms);
        let due = self.cfg.interval_ms > 0 && last_start + self.cfg.interval_ms <= now;
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
            && last.is_none_or(|r| r.started_at_ms + OUTAGE_RETRY_MS <= now);
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
    }

    /// Drives one run until every range is done or failed, or the lease is lost.
    async fn drive(&self, r: RepairRecord, cancel: CancellationToken) -> Result<(), JobError> {
        let params: Params = jobs::decode("params", &r.repair_id, &r.params)?;
        let plan: Vec<RangeTask> = jobs::decode("plan", &r.repair_id, &r.plan)?;
        let prior: Progress = jobs::decode("progress", &r.repair_id, &r.progress)?;
        let lost = Lost {
            listed: prior.lost,
            total: prior.lost_total,
        };
        let run: RepairRun = Run::new(
            self.driver.clone(),
            &r.repair_id,
            &r.plan,
            Work::new(plan, "repairing", lost),
            cancel,
            |w| {
                to_json(&progress_of(
                    &w.plan,
                    w.started,
                    &w.extra.listed,
                    w.extra.total,
                ))
            },
        );
        run.keeping_lease(self.run_ranges(&params, &run)).await?;
        let (plan, progress) = {
            let w = run.lock();
            (
                w.plan.clone(),
                progress_of(&w.plan, w.started, &w.extra.listed, w.extra.total),
            )
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
                self.driver.owner(),
                status,
                &to_json(&plan),
                &to_json(&progress),
                error.as_deref(),
            )
            .await?;
        if !ok {
            return Err(JobError::LeaseLost);
        }
        self.metrics
            .repair_runs
            .get_or_create(&crate::metrics::ResultLabels { result: status })
            .inc();
        if status == "completed" && params.whole {
            self.forgive_outages(&params.node_starts).await;
        }
        if let (true, Some(t), Some(rf)) = (
            status == "completed",
            &params.tenant,
            params.set_replication_factor,
        ) {
            self.finish_rf_change(t, rf).await;
        }
        tracing::info!(repair_id = %r.repair_id, status, ranges = progress.ranges_total, keys_differing = progress.keys_differing, keys_transferred = progress.keys_transferred, bytes_transferred = progress.bytes_transferred, digest_bytes = progress.digest_bytes, "repair finished");
        Ok(())
    }

    /// Repairs every pending range, `parallelism` at a time, retrying failed ones up to
    /// [`RANGE_ATTEMPTS`] times within the run.
    async fn run_ranges(&self, params: &Params, run: &RepairRun) -> Result<(), JobError> {
        run.passes(
            self.cfg.parallelism,
            |t: &RangeTask| t.state == RangeState::Pending,
            || async {
                self.cluster.refresh().await?;
                Ok(self.groups(params).await?)
            },
            |i, groups| async move {
                let range = run.lock().plan[i].range();
                let r = self.repair_range(range, &groups).await;
                self.record(run, i, range, r)
            },
        )
        .await
    }

    /// Records the outcome of one attempt at range `i`.
    fn record(
        &self,
        run: &RepairRun,
        i: usize,
        range: TokenRange,
        r: Result<piece::PieceStats, JobError>,
    ) -> Result<(), JobError> {
        let mut w = run.lock();
        let t = &mut w.plan[i];
        t.attempts += 1;
        let st = match r {
            Ok(st) => st,
            Err(e) => {
                if t.attempts >= RANGE_ATTEMPTS && !run.cancel_token().is_cancelled() {
                    t.state = RangeState::Failed;
                    self.metrics
                        .repair_ranges
                        .get_or_create(&crate::metrics::ResultLabels { result: "failed" })
                        .inc();
                }
                tracing::warn!(range = %range, error = %e, "repair of a range failed");
                t.error = Some(e.to_string());
                return Err(e);
            }
        };
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
        w.extra.total += st.lost.len() as u64;
        for k in st.lost {
            if w.extra.listed.len() < LOST_LISTED {
                w.extra.listed.push(k);
            }
        }
        Ok(())
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
            let rf = params.replication_factor.unwrap_or(rf);
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

    /// The repair of a replication-factor change completed: the tenant now reads and
    /// counts quorums at `rf` (unless its change was cancelled or retargeted meanwhile).
    async fn finish_rf_change(&self, tenant: &str, rf: u32) {
        let r = async {
            let Some(mut t) = self.meta.get_tenant(tenant).await? else {
                return Ok::<_, MetaError>(false);
            };
            if t.target_replication_factor != Some(rf) {
                return Ok(false);
            }
            let from = t.replication_factor;
            t.replication_factor = rf;
            t.target_replication_factor = None;
            self.meta.update_tenant(&t).await?;
            if rf < from {
                self.schedule_rf_cleanup(tenant, from, rf).await?;
            }
            Ok(true)
        }
        .await;
        match r {
            Ok(true) => tracing::info!(
                tenant,
                replication_factor = rf,
                "replication factor change completed"
            ),
            Ok(false) => tracing::info!(
                tenant,
                replication_factor = rf,
                "replication factor change superseded; left as it is"
            ),
            Err(e) => {
                tracing::error!(tenant, error = %e, "replication factor change: could not record the new factor (start the change again)")
            }
        }
    }

    /// After a decrease from `from` to `to` replicas, the nodes past the tenant's first `to`
    /// replicas of each range hold surplus copies: a cleanup change (driven like a topology
    /// change's, after the cleanup grace, so coordinators still on the old factor have moved
    /// on) drops that tenant's records there once the remaining replicas are verified to hold
    /// them. Left behind, such a copy would come back into use, stale, if the factor were
    /// raised again (a key deleted meanwhile would reappear).
    async fn schedule_rf_cleanup(&self, tenant: &str, from: u32, to: u32) -> Result<(), MetaError> {
        let snap = self.cluster.snapshot();
        let plan: Vec<crate::topology::Task> = snap
            .ring
            .ranges(from as usize)
            .into_iter()
            .flat_map(|(range, reps)| {
                reps.into_iter()
                    .skip(to as usize)
                    .map(move |m| crate::topology::Task::new(range, m.node_id.clone(), Vec::new()))
            })
            .collect();
        if plan.is_empty() {
            return Ok(());
        }
        let params = crate::topology::Params {
            tenant: Some(tenant.to_string()),
            replication_factor: Some(to),
            ..Default::default()
        };
        let change = crate::topology::new_change(
            ChangeKind::Cleanup,
            tenant,
            &params,
            &plan,
            Some(now_ms() + self.cfg.cleanup_grace_ms),
        );
        self.meta.create_change(&change, &[], &|_| Ok(())).await?;
        tracing::info!(tenant, from, to, change_id = %change.change_id, ranges = plan.len(), "surplus copies of the lowered replication factor will be cleaned up after the grace");
        Ok(())
    }

    /// Fails with TOPOLOGY_CONFLICT while a repair runs (only one runs at a time).
    pub async fn check_idle(&self) -> Result<(), crate::error::Error> {
        if let Some(r) = self.meta.list_repairs(1).await?.first()
            && r.status == "running"
        {
            return Err(E::TopologyConflict(format!(
                "repair {} is running; change the replication factor once it finished",
                r.repair_id
            ))
            .into());
        }
        Ok(())
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
            match node_call::call(
                n,
                "mark repaired",
                node_call::RPC_TIMEOUT,
                c.mark_repaired(req),
            )
            .await
            {
                Ok(r) if r.cleared => {
                    tracing::info!(node_id = %n.record.node_id, "node repaired after its outage; it serves reads again")
                }
                Ok(_) => {
                    tracing::info!(node_id = %n.record.node_id, "node restarted during this repair; the next one clears it")
                }
                Err(e) => tracing::warn!(error = %e, "could not mark node repaired"),
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
