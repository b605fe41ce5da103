//! The quorum write (see the `data` module docs): the coordinating replica, then the fan-out
//! of its state to the other replicas and the pending ones, then hints for every miss.

use std::sync::Arc;

use pairdb_common::api::pb;
use pairdb_common::version::KeyState;
use pairdb_common::{Error as E, convert, failpoint, validate};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{DataPlane, WriteOk, WriteReq, budget_exceeded, decode_state, is_request_error};
use crate::cluster::NodeEntry;
use crate::error::Result;
use crate::hints::Recorded;
use crate::meta::{Level, TenantRecord};
use crate::quorum::{Miss, Reply, call_one, fan_out};

type Answer = oneshot::Sender<std::result::Result<WriteOk, E>>;

/// One write's owned replication.
struct Replication {
    tenant: Arc<TenantRecord>,
    req: WriteReq,
    replicas: Vec<Arc<NodeEntry>>,
    pending: Vec<Arc<NodeEntry>>,
    level: Level,
    required: usize,
    deadline: Instant,
    /// The request's whole deadline, for messages.
    timeout: std::time::Duration,
}

/// What the coordinating-replica step ended with.
enum Coordinated {
    /// Replica `index` minted the dot; `state` is the key's whole state there.
    Done {
        index: usize,
        state: KeyState,
        result: Box<pb::WriteResult>,
    },
    /// A replica refused the request itself (bad input): no other replica will accept it.
    Rejected(E),
    /// No replica accepted it; why, per replica.
    Nobody(Vec<String>),
}

/// Sends the client its answer, once.
fn answer(slot: &mut Option<Answer>, a: std::result::Result<WriteOk, E>) {
    if let Some(tx) = slot.take() {
        let _ = tx.send(a);
    }
}

fn timed_out(w: &Replication, acked: usize) -> E {
    E::Timeout(format!(
        "write timed out after {} ms with {acked} of {} acknowledgements; it may or may not have been applied",
        w.timeout.as_millis(),
        w.required
    ))
}

impl DataPlane {
    /// A quorum write (see module docs).
    pub async fn write(self: &Arc<Self>, req: WriteReq) -> Result<WriteOk> {
        validate::key_ref(&req.tenant, &req.key)?;
        validate::idempotency_key(&req.idempotency_key)?;
        let tenant = self.tenants.get(&req.tenant).await?;
        self.limiter.admit(&tenant, &self.metrics)?;
        validate::value(
            &req.value,
            validate::effective_max_value_bytes(tenant.max_value_bytes),
        )?;
        let level = req.consistency.unwrap_or(tenant.write_consistency);
        let (replicas, pending) = self.replicas_and_pending(&tenant, &req.key, true)?;
        let required = level.required(tenant.replication_factor as usize);
        let timeout = self.deadline(req.timeout_ms);
        let deadline = Instant::now() + timeout;

        let slot = self.owned_slot()?;
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let w = Replication {
            tenant,
            req,
            replicas,
            pending,
            level,
            required,
            deadline,
            timeout,
        };
        drop(self.sup.spawn("replicate", async move {
            let _slot = slot;
            me.replicate(w, tx).await
        }));
        match rx.await {
            Ok(a) => Ok(a?),
            Err(_) => Err(E::Internal(
                "the write's replication task failed; the write may be partially applied".into(),
            )
            .into()),
        }
    }

    /// The owned replication task of one write. It answers the client once: at the quorum, at
    /// the deadline, or when it cannot be met; it runs on to the last replica either way.
    async fn replicate(self: Arc<Self>, mut w: Replication, tx: Answer) {
        let mut client = Some(tx);
        let op = write_op(&w.tenant, &mut w.req);
        let coordinate = self.coordinate(&w.replicas, op);
        tokio::pin!(coordinate);
        let first = tokio::select! {
            c = &mut coordinate => c,
            () = tokio::time::sleep_until(w.deadline) => {
                answer(&mut client, Err(timed_out(&w, 0)));
                coordinate.await
            }
        };
        let (ci, state, result, mut misses) = match first {
            Coordinated::Done {
                index,
                state,
                result,
            } => (index, state, result, Vec::new()),
            Coordinated::Rejected(e) => return answer(&mut client, Err(e)),
            Coordinated::Nobody(misses) => {
                if client.is_some() {
                    self.metrics.quorum_failures.inc();
                }
                return answer(&mut client, Err(quorum_not_met(&w, 0, &misses)));
            }
        };

        // Ship the whole state to every other replica and to the pending replicas (which
        // never count toward W); hint the ones that miss it.
        let apply = pb::KeyVersions {
            tenant_id: w.req.tenant.clone(),
            key: w.req.key.clone(),
            state: Some(convert::state_to_pb(&state)),
            origin: pb::ApplyOrigin::Replica as i32,
            ..Default::default()
        };
        if !w.pending.is_empty() {
            self.metrics.pending_replica_writes.inc();
        }
        let targets = w
            .replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ci)
            .map(|(_, node)| (node.clone(), true))
            .chain(w.pending.iter().map(|node| (node.clone(), false)));
        let mut fan = fan_out(targets, &self.calls("apply"), |node| {
            let apply = apply.clone();
            async move {
                node.batcher
                    .apply(apply)
                    .await
                    .map(drop)
                    .map_err(|s| Miss::status(&s))
            }
        });
        if client.is_some() {
            let g = fan.gather(w.required.saturating_sub(1), w.deadline).await;
            let acked = 1 + g.acks;
            let a = if acked >= w.required {
                failpoint::crash(failpoint::points::COORD_AFTER_QUORUM);
                write_ok(&result, acked)
            } else if g.timed_out {
                Err(timed_out(&w, acked))
            } else {
                self.metrics.quorum_failures.inc();
                misses.extend(g.misses());
                Err(quorum_not_met(&w, acked, &misses))
            };
            answer(&mut client, a);
            for r in g.replies {
                self.hint_miss(&w, &state, r).await;
            }
        }
        while let Some(r) = fan.next().await {
            self.hint_miss(&w, &state, r).await;
        }
    }

    /// The coordinating replica: the first available one that accepts the write, in
    /// preference-list order except that a markedly slower one goes after the others
    /// ([`fastest_first`]); then the unavailable ones, in case they are back.
    async fn coordinate(&self, replicas: &[Arc<NodeEntry>], op: pb::WriteOp) -> Coordinated {
        let settings = self.calls("write");
        let mut order: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].serves_clients())
            .collect();
        fastest_first(&mut order, |i| replicas[i].health.latency_us());
        // Down ones last, in case they are back; never a drained one (it refuses clients).
        order.extend((0..replicas.len()).filter(|i| {
            let r = &replicas[*i];
            !r.health.is_available() && !r.record.drained() && !r.health.maintenance()
        }));
        let mut misses = Vec::new();
        for i in order {
            let node = &replicas[i];
            let call = async {
                let r = match node.batcher.write(op.clone()).await {
                    // The batch's answer would have outgrown a message before this op (nothing
                    // was done for it): send it on its own.
                    Err(s) if budget_exceeded(&s) => node
                        .client
                        .clone()
                        .write(op.clone())
                        .await
                        .map(tonic::Response::into_inner),
                    r => r,
                };
                match r {
                    Ok(resp) => Ok(Ok(resp)),
                    Err(s) => {
                        let e = E::from_status(&s);
                        if is_request_error(&e) {
                            return Ok(Err(e));
                        }
                        Err(Miss {
                            message: e.to_string(),
                            ..Miss::status(&s)
                        })
                    }
                }
            };
            let resp = match call_one(node.clone(), &settings, call).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Coordinated::Rejected(e),
                Err(m) => {
                    misses.push(format!("{}: {m}", node.record.node_id));
                    continue;
                }
            };
            // Fail closed: a state that does not decode is never replaced by an empty one the
            // other replicas would then acknowledge. The version stays on the coordinating
            // replica; read repair and anti-entropy spread it.
            let state = match resp.state.clone() {
                Some(st) => decode_state(&self.sup, st).await,
                None => Err("no state".to_string()),
            };
            return match state {
                Ok(state) => Coordinated::Done {
                    index: i,
                    state,
                    result: Box::new(resp),
                },
                Err(e) => {
                    tracing::error!(node_id = %node.record.node_id, error = %e, "coordinating replica answered a state that does not decode");
                    Coordinated::Rejected(E::Internal(format!(
                        "coordinating replica {} answered a key state that does not decode ({e}); the write may be partially applied",
                        node.record.node_id
                    )))
                }
            };
        }
        Coordinated::Nobody(misses)
    }

    /// Hints a replica that missed the state. A pending replica's miss is covered by its hint
    /// (and the change's verification). Only ANY stores the hint durably before going on: there
    /// a stored hint is what the level promises.
    async fn hint_miss(&self, w: &Replication, state: &KeyState, r: Reply<()>) {
        if r.result.is_ok() {
            return;
        }
        let target = &r.node.record.node_id;
        let span = tracing::info_span!(
            target: pairdb_common::otel::TARGET,
            "hint_record",
            node_id = %target,
        );
        use tracing::Instrument;
        async {
            if r.counts && w.level == Level::Any {
                let stored = self
                    .hints
                    .record_durable(target, &w.req.tenant, &w.req.key, state)
                    .await;
                if stored != Recorded::Stored {
                    tracing::warn!(node_id = %target, "an ANY write's hint was not stored");
                }
            } else {
                self.hints.enqueue(target, &w.req.tenant, &w.req.key, state);
            }
        }
        .instrument(span)
        .await
    }
}

/// Moves the replicas that answer markedly slower than the fastest of `order`
/// ([`crate::cluster::markedly_slower`]) behind the others, each group keeping its order. The
/// coordinating replica is on every write's critical path (it mints the dot before the others
/// are written), so a slow one would slow every write of the keys it comes first for — a
/// third of them on three nodes — while reads and the rest of the fan-out already take the
/// first answers.
fn fastest_first(order: &mut [usize], latency_us: impl Fn(usize) -> u64) {
    let Some(fastest) = order
        .iter()
        .map(|i| latency_us(*i))
        .filter(|l| *l > 0)
        .min()
    else {
        return;
    };
    order.sort_by_key(|i| crate::cluster::markedly_slower(latency_us(*i), fastest));
}

/// The storage-node operation; takes the value (nothing after needs it).
fn write_op(tenant: &TenantRecord, req: &mut WriteReq) -> pb::WriteOp {
    pb::WriteOp {
        tenant_id: req.tenant.clone(),
        key: req.key.clone(),
        value: std::mem::take(&mut req.value),
        tombstone: req.tombstone,
        context: pairdb_common::context::encode_internal(&req.context),
        ttl_seconds: req.ttl_seconds,
        idempotency_key: req.idempotency_key.clone(),
        conflict_policy: convert::policy_to_pb(tenant.conflict_policy) as i32,
        max_siblings: tenant.sibling_max,
        max_value_bytes: tenant.max_value_bytes,
        sibling_warn: tenant.sibling_warn,
        max_state_bytes: tenant.max_state_bytes,
    }
}

fn write_ok(r: &pb::WriteResult, acked: usize) -> std::result::Result<WriteOk, E> {
    let version = convert::version_from_pb(r.version.clone().unwrap_or_default())?;
    let mut context = version.context.clone();
    context.add_dot(&version.dot);
    Ok(WriteOk {
        context,
        dot: version.dot,
        acked: acked as u32,
        deduplicated: r.deduplicated,
    })
}

fn quorum_not_met(w: &Replication, acked: usize, misses: &[String]) -> E {
    E::QuorumNotMet(format!(
        "{acked} of {} required replicas acknowledged ({}); the write may be partially applied, and what landed is kept and hinted to the other replicas",
        w.required,
        misses.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::fastest_first;
    use crate::cluster::Health;
    use std::time::Duration;

    fn ordered(latencies: &[u64]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..latencies.len()).collect();
        fastest_first(&mut order, |i| latencies[i]);
        order
    }

    #[test]
    fn a_markedly_slower_replica_stops_coordinating_writes_and_order_is_kept_otherwise() {
        // Healthy nodes a few hundred µs apart keep the preference-list order.
        assert_eq!(ordered(&[900, 400, 1_200]), vec![0, 1, 2]);
        // No samples yet: the preference list.
        assert_eq!(ordered(&[0, 0, 0]), vec![0, 1, 2]);
        // The first replica 300 ms slow goes last; the others keep their order.
        assert_eq!(ordered(&[300_000, 900, 1_000]), vec![1, 2, 0]);
        // Twice as slow but by less than the margin: noise, not a slow node.
        assert_eq!(ordered(&[5_000, 2_000, 2_100]), vec![0, 1, 2]);
        // Two slow ones keep their relative order behind the fast one.
        assert_eq!(ordered(&[400_000, 300_000, 1_000]), vec![2, 0, 1]);
        // A node without samples is not judged slow.
        assert_eq!(ordered(&[0, 300_000, 1_000]), vec![0, 2, 1]);
    }

    #[test]
    fn the_smoothed_latency_follows_a_node_that_turns_slow_and_back() {
        let h = Health::default();
        assert_eq!(h.latency_us(), 0);
        for _ in 0..20 {
            h.observe_latency(Duration::from_millis(1));
        }
        assert_eq!(h.latency_us(), 1_000);
        // A few slow answers and it is markedly slower than a 1 ms peer.
        for _ in 0..4 {
            h.observe_latency(Duration::from_millis(300));
        }
        assert!(
            crate::cluster::markedly_slower(h.latency_us(), 1_000),
            "{}",
            h.latency_us()
        );
        // Fast again: taken back within a few dozen calls.
        for _ in 0..40 {
            h.observe_latency(Duration::from_millis(1));
        }
        assert!(
            !crate::cluster::markedly_slower(h.latency_us(), 1_000),
            "{}",
            h.latency_us()
        );
    }
}
