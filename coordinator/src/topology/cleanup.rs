//! Cleanup: after the grace period, drops from a node the pieces of a range it no longer
//! replicates (every tenant's records, or one tenant's after its replication factor was
//! lowered). Before dropping any piece it re-checks that the node replicates that piece
//! neither in the current ring nor in any active change's future ring, and that a quorum of
//! the piece's current replicas verifiably hold the node's data (digest, or a pull pass that
//! changes nothing).

use pairdb_common::api::pb;
use pairdb_common::convert;
use pairdb_common::ring::{self, NodeState, Ring};
use pairdb_common::token::TokenRange;

use super::plan::{TaskState, parse_params};
use super::{ChangeRun, Task, Topology, failed};
use crate::jobs::JobError;
use crate::meta::{ChangeRecord, NodeStatus};
use crate::node_call::{self, RPC_TIMEOUT};

/// What a cleanup drops: every tenant's records of ranges a node no longer replicates at the
/// largest replication factor, or (after a decrease of one tenant's factor) that tenant's
/// records of ranges the node no longer replicates for it.
#[derive(Clone, Copy)]
struct Scope<'a> {
    n: usize,
    tenant: Option<&'a str>,
}

impl Topology {
    pub(super) async fn run_cleanup(
        &self,
        c: &ChangeRecord,
        run: &ChangeRun,
    ) -> Result<(), JobError> {
        let params = parse_params(c)?;
        let scope = match (&params.tenant, params.replication_factor) {
            (Some(t), Some(rf)) => {
                // The tenant's factor may have been raised again since: then nothing is surplus.
                let fanout = self
                    .meta
                    .get_tenant(t)
                    .await?
                    .map(|r| r.write_fanout() as usize);
                if fanout.is_none_or(|f| f > rf as usize) {
                    tracing::info!(change_id = %c.change_id, tenant = %t, "cleanup skipped: the tenant's replication factor is no longer lowered (or the tenant is gone)");
                    for task in run.lock().plan.iter_mut() {
                        task.state = TaskState::Skipped;
                    }
                    return Ok(());
                }
                Scope {
                    n: rf as usize,
                    tenant: Some(t.as_str()),
                }
            }
            _ => Scope {
                n: self.max_rf().await?,
                tenant: None,
            },
        };
        run.passes(
            self.cfg.stream_parallelism * 2,
            |t: &Task| !t.state.finished(),
            || async { Ok(self.cluster.refresh().await?) },
            |i, _| async move { failed(run, i, self.clean(i, scope, run).await) },
        )
        .await
    }

    /// Drops from one node the pieces of one range it no longer replicates, once a quorum of
    /// their current replicas is verified to hold its data.
    async fn clean(&self, i: usize, scope: Scope<'_>, run: &ChangeRun) -> Result<(), JobError> {
        let n = scope.n;
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
                let verified_one = match scope.tenant {
                    Some(t) => self.verify_tenant(re, &x, piece, t, run).await,
                    None => self.verify(re, &x, piece, run).await,
                };
                match verified_one {
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
            let r = match scope.tenant {
                Some(t) => {
                    let req = pb::DropTenantRangeRequest {
                        range,
                        whole_ring,
                        tenant_id: t.to_string(),
                    };
                    let call = client.drop_tenant_range(req);
                    node_call::call(&x, "tenant range drop", RPC_TIMEOUT, call).await?
                }
                None => {
                    let req = pb::DropRangeRequest { range, whole_ring };
                    node_call::call(&x, "range drop", RPC_TIMEOUT, client.drop_range(req)).await?
                }
            };
            dropped += r.records;
            self.metrics.cleanup_executed.inc();
        }
        let mut w = run.lock();
        w.plan[i].keys += dropped;
        w.plan[i].state = TaskState::Dropped;
        Ok(())
    }
}
