//! The quorum read (see the `data` module docs): every replica asked through the fan-out,
//! the merge of the first R good answers returned, then read repair of the stale replicas.

use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::version::{ConflictPolicy, KeyState, Version};
use pairdb_common::worker::Supervisor;
use pairdb_common::{Error as E, convert, now_ms};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{DataPlane, NotFound, ReadOk, ReadReq, budget_exceeded, decode_state};
use crate::cluster::NodeEntry;
use crate::error::Result;
use crate::meta::Level;
use crate::quorum::{Gathered, Miss, Reply, fan_out};

/// A replica's answer: its state, `None` when it holds no record of the key.
type Answer = Option<KeyState>;

/// What the read task tells the waiting client: the merge of the quorum's answers and how
/// many replicas gave them.
type Verdict = std::result::Result<(KeyState, usize), E>;

/// The message for a replica that is back from an outage longer than the GC grace.
fn away_too_long(outage_ms: u64) -> String {
    format!(
        "was away {} s, longer than the tombstone GC grace: it serves no reads until a repair completes",
        outage_ms / 1000
    )
}

/// One replica's read, as a fan-out call.
async fn read_one(
    node: Arc<NodeEntry>,
    kr: pb::KeyRef,
    gc_grace_ms: u64,
    sup: Supervisor,
) -> std::result::Result<Answer, Miss> {
    let outage = node.health.outage_ms();
    if outage > gc_grace_ms {
        return Err(Miss::refused(away_too_long(outage)));
    }
    let resp = match node.batcher.read(kr.clone()).await {
        Err(s) if budget_exceeded(&s) => node
            .client
            .clone()
            .read(kr)
            .await
            .map(tonic::Response::into_inner),
        r => r,
    }
    .map_err(|s| Miss::status(&s))?;
    // Back from a long outage (no heartbeat told us yet): not an answer.
    if resp.unrepaired_outage_ms > gc_grace_ms {
        node.health.set_outage_ms(resp.unrepaired_outage_ms);
        return Err(Miss::refused(away_too_long(resp.unrepaired_outage_ms)));
    }
    let state = match resp.state {
        Some(st) => Some(
            decode_state(&sup, st)
                .await
                .map_err(|e| Miss::refused(format!("bad state: {e}")))?,
        ),
        None => None,
    };
    Ok(if resp.exists {
        state.or_else(|| Some(KeyState::new()))
    } else {
        None
    })
}

/// The client's answer from what the quorum gathered.
fn verdict(g: &Gathered<Answer>, required: usize, timeout: Duration) -> Verdict {
    let good = g.acks;
    if good >= required {
        let mut merged = KeyState::new();
        for s in g
            .replies
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .flatten()
        {
            merged.merge(s);
        }
        return Ok((merged, good));
    }
    if g.timed_out {
        return Err(E::Timeout(format!(
            "read timed out after {} ms with {good} of {required} responses",
            timeout.as_millis()
        )));
    }
    let failures = g.misses();
    let corrupt = g
        .replies
        .iter()
        .filter(|r| r.result.as_ref().is_err_and(|m| m.data_loss))
        .count();
    // Corrupt replicas alone keep the read from its quorum (the others answered): the data
    // is damaged, not unreachable. Anti-entropy rebuilds it where a copy survives.
    if corrupt > 0 && good + (failures.len() - corrupt) < required {
        return Err(E::ChecksumFailed(format!(
            "the record is corrupt on {corrupt} replica(s) and only {good} of {required} required replicas answered intact ({})",
            failures.join("; ")
        )));
    }
    Err(E::QuorumNotMet(format!(
        "{good} of {required} required replicas responded ({})",
        failures.join("; ")
    )))
}

impl DataPlane {
    /// A quorum read (see module docs). `Err(Ok(NotFound))` when no live version exists.
    pub async fn read(
        self: &Arc<Self>,
        req: ReadReq,
    ) -> Result<std::result::Result<ReadOk, NotFound>> {
        pairdb_common::validate::key_ref(&req.tenant, &req.key)?;
        let tenant = self.tenants.get(&req.tenant).await?;
        self.limiter.admit(&tenant, &self.metrics)?;
        let level = match req.consistency.unwrap_or(tenant.read_consistency) {
            Level::Any => {
                return Err(E::InvalidArgument("ANY is a write consistency level".into()).into());
            }
            l => l,
        };
        let replicas = self.replicas(&tenant, &req.key)?;
        let required = level.required(tenant.replication_factor as usize);
        let timeout = self.deadline(req.timeout_ms);
        let deadline = Instant::now() + timeout;
        let slot = self.owned_slot()?;
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let kr = pb::KeyRef {
            tenant_id: req.tenant,
            key: req.key,
        };
        drop(self.sup.spawn("read-repair", async move {
            let _slot = slot;
            me.read_and_repair(kr, replicas, required, deadline, timeout, tx)
                .await
        }));
        let (merged, good) = match rx.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                if matches!(e, E::QuorumNotMet(_)) {
                    self.metrics.quorum_failures.inc();
                }
                return Err(e.into());
            }
            Err(_) => return Err(E::Internal("the read task failed".into()).into()),
        };
        let now = now_ms();
        let context = merged.read_context();
        let visible: Vec<Version> = merged
            .visible(now, tenant.conflict_policy)
            .into_iter()
            .cloned()
            .collect();
        if visible.is_empty() {
            return Ok(Err(NotFound { context }));
        }
        let value = match tenant.conflict_policy {
            ConflictPolicy::Lww => visible.first().map(|v| v.value.clone()),
            ConflictPolicy::Siblings => merged.winner(now).map(|v| v.value.clone()),
        };
        Ok(Ok(ReadOk {
            siblings: visible,
            value,
            context,
            responded: good as u32,
        }))
    }

    /// Asks every replica, answers the client at the quorum, then repairs the stale ones.
    async fn read_and_repair(
        self: Arc<Self>,
        kr: pb::KeyRef,
        replicas: Vec<Arc<NodeEntry>>,
        required: usize,
        deadline: Instant,
        timeout: Duration,
        tx: oneshot::Sender<Verdict>,
    ) {
        let (gc_grace_ms, sup) = (self.cfg.gc_grace_ms, self.sup.clone());
        let targets = replicas.into_iter().map(|n| (n, true));
        let mut fan = fan_out(targets, &self.calls("read"), |node| {
            read_one(node, kr.clone(), gc_grace_ms, sup.clone())
        });
        let g = fan.gather(required, deadline).await;
        let _ = tx.send(verdict(&g, required, timeout));
        let mut replies = g.replies;
        while let Some(r) = fan.next().await {
            replies.push(r);
        }
        drop(fan);
        use tracing::Instrument;
        let span = tracing::info_span!(target: pairdb_common::otel::TARGET, "read_repair");
        self.repair(kr, replies).instrument(span).await;
    }

    /// Read repair against the merge of every answer: a stale replica gets the merge through
    /// Apply, a corrupt one through Repair.
    async fn repair(&self, kr: pb::KeyRef, replies: Vec<Reply<Answer>>) {
        let mut merged = KeyState::new();
        for s in replies
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .flatten()
        {
            merged.merge(s);
        }
        if merged.is_empty() {
            return;
        }
        let state = Some(convert::state_to_pb(&merged));
        let req = pb::KeyVersions {
            tenant_id: kr.tenant_id.clone(),
            key: kr.key,
            state,
            origin: pb::ApplyOrigin::ReadRepair as i32,
            ..Default::default()
        };
        for r in &replies {
            let mut c = r.node.client.clone();
            match &r.result {
                Ok(Some(s)) if *s == merged => {}
                Ok(_) => {
                    let call = c.apply(req.clone());
                    if let Ok(Ok(_)) = tokio::time::timeout(self.replica_timeout(), call).await {
                        self.metrics.read_repairs.inc();
                    }
                }
                Err(m) if m.data_loss => {
                    let call = c.repair(req.clone());
                    match tokio::time::timeout(self.replica_timeout(), call).await {
                        Ok(Ok(_)) => {
                            self.metrics.read_repairs.inc();
                            tracing::warn!(node_id = %r.node.record.node_id, tenant_id = %kr.tenant_id, "repaired a corrupt replica from the others");
                        }
                        _ => {
                            tracing::error!(node_id = %r.node.record.node_id, tenant_id = %kr.tenant_id, "repair of a corrupt replica failed")
                        }
                    }
                }
                Err(_) => {}
            }
        }
    }
}
