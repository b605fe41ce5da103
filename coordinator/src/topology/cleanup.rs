//! Cleanup: after the grace period, drops from a node the pieces of a range it no longer
//! replicates. Before dropping any piece it re-checks that the node replicates that piece
//! neither in the current ring nor in any active change's future ring, and that a quorum of
//! the piece's current replicas verifiably hold the node's data (digest, or a pull pass that
//! changes nothing).

use pairdb_common::api::pb;
use pairdb_common::convert;
use pairdb_common::ring::{self, NodeState, Ring};
use pairdb_common::token::TokenRange;

use super::plan::TaskState;
use super::{ChangeRun, Task, Topology, failed};
use crate::jobs::JobError;
use crate::meta::NodeStatus;
use crate::node_call::{self, RPC_TIMEOUT};

impl Topology {
    pub(super) async fn run_cleanup(&self, run: &ChangeRun) -> Result<(), JobError> {
        let n = self.max_rf().await?;
        run.passes(
            self.cfg.stream_parallelism * 2,
            |t: &Task| !t.state.finished(),
            || async { Ok(self.cluster.refresh().await?) },
            |i, _| async move { failed(run, i, self.clean(i, n, run).await) },
        )
        .await
    }

    /// Drops from one node the pieces of one range it no longer replicates, once a quorum of
    /// their current replicas is verified to hold its data.
    async fn clean(&self, i: usize, n: usize, run: &ChangeRun) -> Result<(), JobError> {
        let task = run.lock().plan[i].clone();
        let snap = self.cluster.snapshot();
        let Some(x) = snap.nodes.get(&task.node).cloned() else {
            run.lock().plan[i].state = TaskState::Skipped;
            return Ok(());
        };
        if x.record.state == NodeState::Removed && x.health.status() == NodeStatus::Down {
            tracing::warn!(node_id = %task.node, "cleanup skipped: the node is removed and unreachable (wipe its data directory before reusing it)");
            run.lock().plan[i].state = TaskState::Skipped;
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
                return Err(JobError::Precondition(format!(
                    "no replica of {piece} to verify against; not dropping it"
                )));
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
                match self.verify(re, &x, piece, run).await {
                    Ok(()) => verified += 1,
                    Err(e) => {
                        run.check()?;
                        why.push(e.to_string())
                    }
                }
            }
            if verified < need {
                return Err(JobError::Precondition(format!(
                    "only {verified} of the {need} replicas needed hold {piece} of {} ({}); not dropping it",
                    task.node,
                    why.join("; ")
                )));
            }
            let mut client = x.client.clone();
            let (range, whole_ring) = convert::explicit_range_to_pb(piece);
            let req = pb::DropRangeRequest { range, whole_ring };
            let r = node_call::call(&x, "range drop", RPC_TIMEOUT, client.drop_range(req)).await?;
            dropped += r.records;
            self.metrics.cleanup_executed.inc();
        }
        let mut w = run.lock();
        w.plan[i].keys += dropped;
        w.plan[i].state = TaskState::Dropped;
        Ok(())
    }
}
