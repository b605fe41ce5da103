//! Ending a change: [`Topology::finish`] (final node states, `ring_version`, and the cleanup
//! of what the change made surplus, in one transaction) and [`Topology::abort`] (node states
//! as before, and a cleanup of what the gaining nodes received).

use pairdb_common::ring::{self, NodeState};
use pairdb_common::token::TokenRange;
use pairdb_common::{Error as E, failpoint};

use super::plan::{Params, Task, future_ring, new_change, parse_params, parse_plan};
use super::{ChangeRun, Topology};
use crate::jobs::JobError;
use crate::meta::{ChangeKind, ChangeRecord, ChangeStatus, MetaError, NodeWrite};
use crate::metrics::ChangeLabels;

impl Topology {
    /// Ends a change whose work is done: final node states, `ring_version`, cleanup.
    pub(super) async fn finish(&self, c: &ChangeRecord, run: &ChangeRun) -> Result<(), JobError> {
        // The final plan and progress, saved while the lease is still ours.
        {
            let mut w = run.lock();
            w.phase = "finishing".into();
            w.waiting = None;
        }
        run.save().await?;
        let params = parse_params(c)?;
        // The cleanup's delay by the store's clock, which every coordinator judges it by.
        let now = self.meta.clock_ms().await?;
        let (nodes, follow_up) = if c.kind == ChangeKind::Cleanup {
            (Vec::new(), None)
        } else {
            self.cluster.refresh().await?;
            let snap = self.cluster.snapshot();
            let n = self.max_rf().await?;
            let future = future_ring(&snap.ring, &snap.nodes, c)?
                .ok_or_else(|| JobError::Precondition("no future ring".into()))?;
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
                    Some(now + self.cfg.cleanup_grace_ms),
                )
            });
            (nodes, cleanup)
        };
        failpoint::crash(failpoint::points::RING_BEFORE_UPDATE);
        let v = self
            .meta
            .finish_change(
                &c.change_id,
                Some(self.driver.owner()),
                ChangeStatus::Completed,
                None,
                &nodes,
                follow_up.as_ref(),
            )
            .await?;
        failpoint::crash(failpoint::points::RING_AFTER_UPDATE);
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
        let params = parse_params(&c).map_err(|e| E::Internal(e.to_string()))?;
        let now = self.meta.clock_ms().await?;
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
            for t in parse_plan(&c).map_err(|e| E::Internal(e.to_string()))? {
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
                Some(now + self.cfg.cleanup_grace_ms),
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
