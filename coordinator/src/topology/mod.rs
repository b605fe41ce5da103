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
//! **One driver.** Every coordinator runs the `topology-changes` worker on the job driver
//! (`crate::jobs`): it claims a change's lease (`lease_owner`, `lease_expires_at`) and renews
//! it with every progress save (each second); a coordinator that dies stops renewing and
//! another claims the change after the lease expires. Losing the lease (or an abort) cancels
//! the work at once.
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

//! Files: [`plan`] (documents and pure decisions), [`rules`] (admission of a new change,
//! inside its transaction), `stream` (pull and verify),
//! `cleanup`, `finish` (finish and abort); this file claims, admits and drives.

mod cleanup;
mod finish;
pub mod plan;
pub mod rules;
mod stream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pairdb_common::ring;
use pairdb_common::token::TokenRange;
use tokio_util::sync::CancellationToken;

pub use plan::{
    Params, Progress, Task, TaskState, future_ring, new_change, new_change_id, parse_params,
};

use crate::cluster::Cluster;
use crate::jobs::{JobDriver, JobError, Run, Work, to_json};
use crate::meta::{ChangeKind, ChangeRecord, ChangeStatus, MetaError, MetaStore};
use crate::metrics::Metrics;
use plan::{order_sources, overlaps, parse_plan, plan_ranges, progress_of};

/// Replication factor assumed when no tenant exists yet.
pub(crate) const DEFAULT_N: usize = 3;

/// A change being driven: its plan of range tasks.
type ChangeRun = Run<Task>;

/// Orchestration settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// How often the worker looks for changes to claim.
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

pub struct Topology {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: TopologyConfig,
    driver: Arc<JobDriver>,
}

impl Topology {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: TopologyConfig,
        driver: Arc<JobDriver>,
    ) -> Arc<Topology> {
        Arc::new(Topology {
            meta,
            cluster,
            metrics,
            cfg,
            driver,
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
        self.driver
            .every(every, cancel, || self.clone().tick())
            .await
    }

    async fn tick(self: Arc<Self>) -> Result<(), MetaError> {
        // The store's clock: a cleanup's delay was set by whichever coordinator finished the
        // change, so it is judged by the clock that coordinator used (`finish.rs`).
        let now = self.meta.clock_ms().await?;
        for c in self.meta.list_changes(false).await? {
            if c.not_before_ms.is_some_and(|t| t > now) {
                continue;
            }
            let me = self.clone();
            self.driver
                .take(c, now, move |c, cancel| async move {
                    let streaming = c.kind != ChangeKind::Cleanup;
                    if streaming {
                        me.metrics.concurrent_bootstraps.inc();
                    }
                    let r = me.drive(c, cancel).await;
                    if streaming {
                        me.metrics.concurrent_bootstraps.dec();
                    }
                    r
                })
                .await?;
        }
        Ok(())
    }

    /// Drives one change until it finishes, must wait, or the lease is lost.
    async fn drive(&self, mut c: ChangeRecord, cancel: CancellationToken) -> Result<(), JobError> {
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
        let phase = if c.kind == ChangeKind::Cleanup {
            "cleanup"
        } else {
            "streaming"
        };
        let run: ChangeRun = Run::new(
            self.driver.clone(),
            &c.change_id,
            &c.plan,
            Work::new(parse_plan(&c)?, phase, ()),
            cancel,
            |w| {
                to_json(&progress_of(
                    &w.plan,
                    &w.phase,
                    w.started,
                    w.waiting.clone(),
                ))
            },
        );
        run.keeping_lease(async {
            match c.kind {
                ChangeKind::Cleanup => self.run_cleanup(&c, &run).await,
                _ => self.run_streams(&run).await,
            }
        })
        .await?;
        let r = self.finish(&c, &run).await;
        if let Err(e) = &r
            && !e.is_stop()
        {
            // Persist the reason for operators (while the lease is still ours).
            run.lock().waiting = Some(e.to_string());
            let _ = run.save().await;
        }
        r
    }

    /// Plans a pending change against the current ring and admits it. `Ok(None)`: it waits.
    async fn admit(&self, c: &ChangeRecord) -> Result<Option<String>, JobError> {
        self.cluster.refresh().await?;
        let snap = self.cluster.snapshot();
        let plan: Vec<Task> = if c.kind == ChangeKind::Cleanup {
            parse_plan(c)?
        } else {
            let n = self.max_rf().await?;
            let params = parse_params(c)?;
            let future = future_ring(&snap.ring, &snap.nodes, c)?
                .ok_or_else(|| JobError::Precondition("no future ring".into()))?;
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
                let theirs = plan_ranges(r).map_err(|e| {
                    format!(
                        "waits for change {}, whose plan cannot be read: {e}",
                        r.change_id
                    )
                })?;
                if overlaps(&mine, &theirs) {
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
                self.driver.owner(),
                snap.version,
                &plan_json,
                &progress,
                &check,
            )
            .await?
        {
            Ok(()) => Ok(Some(plan_json)),
            Err(why) => {
                let p = Progress {
                    phase: "pending".into(),
                    waiting: Some(why.clone()),
                    ..Default::default()
                };
                let _ = self
                    .driver
                    .save(&c.change_id, None, &to_json(&p), None)
                    .await;
                tracing::debug!(change_id = %c.change_id, reason = %why, "topology change waits for admission");
                Ok(None)
            }
        }
    }

    /// Streams and verifies every range of a streaming change, then waits (bounded) for the
    /// hints recorded for the gaining nodes while they were pending replicas.
    async fn run_streams(&self, run: &ChangeRun) -> Result<(), JobError> {
        run.passes(
            self.cfg.stream_parallelism,
            |t: &Task| !t.state.finished(),
            || async { Ok(self.cluster.refresh().await?) },
            |i, _| self.transfer(i, run),
        )
        .await?;
        run.lock().phase = "replaying hints".into();
        let gaining: HashSet<String> = run.lock().plan.iter().map(|t| t.node.clone()).collect();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.hint_drain_timeout_ms);
        for node in gaining {
            loop {
                let left = self.meta.count_hints_for(&node).await?;
                if left == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(change_id = %run.id(), node_id = %node, hints = left, "hints to the gaining node did not drain in time; they stay queued for replay");
                    break;
                }
                tokio::select! {
                    _ = run.cancel_token().cancelled() => return Err(run.stopped()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        Ok(())
    }
}

/// Records a failed attempt on task `i` (the pass retries it).
fn failed(run: &ChangeRun, i: usize, r: Result<(), JobError>) -> Result<(), JobError> {
    if let Err(e) = &r
        && !e.is_stop()
    {
        run.lock().plan[i].error = Some(e.to_string());
    }
    r
}
