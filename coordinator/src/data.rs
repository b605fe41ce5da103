//! The data path: quorum writes, reads and deletes with dotted-version-vector context.
//!
//! **Write.** The first available replica of the preference list is the coordinating replica:
//! it mints the dot and returns the key's whole state, which is then merged into the other
//! replicas. The coordinator answers after W acknowledgements; the rest of the replication runs
//! on in a task that owns it (a client hanging up never cuts it short) and records a hint for
//! every replica that missed the state. Without W the client gets QUORUM_NOT_MET: the write may
//! be partially applied; what landed is kept and hinted to the rest.
//!
//! **Read.** All N replicas are asked; the answer is the merge of the first R good responses.
//! The owned task keeps collecting until every replica answered or timed out and repairs each
//! replica whose state differs from the merge of all responses (a corrupt one through Repair).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pairdb_common::api::pb;
use pairdb_common::version::{ConflictPolicy, Dot, KeyState, Version, VersionVector};
use pairdb_common::worker::Supervisor;
use pairdb_common::{Error as E, ErrorCode, convert, now_ms, token, validate};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, NodeEntry};
use crate::error::Result;
use crate::hints::{Hints, Recorded};
use crate::meta::{Level, TenantRecord};
use crate::metrics::{Metrics, OpLabels};
use crate::tenants::Tenants;

type Nodes = Vec<Arc<NodeEntry>>;

/// One replica's answer to a read: its state (`None`: no record), or whether it failed with
/// a checksum failure and why.
type ReplicaRead = std::result::Result<Option<KeyState>, (bool, String)>;

/// Data-path settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Default deadline of a client request.
    pub request_timeout_ms: u64,
    /// Deadline of one replica RPC.
    pub replica_timeout_ms: u64,
    /// A replica away longer than this since its last full repair serves no reads.
    pub gc_grace_ms: u64,
    /// Most owned replication and read-repair tasks in flight.
    pub max_owned_tasks: usize,
}

pub struct DataPlane {
    pub cluster: Arc<Cluster>,
    pub tenants: Arc<Tenants>,
    pub hints: Arc<Hints>,
    pub metrics: Arc<Metrics>,
    pub cfg: DataConfig,
    /// Owned replication and read-repair tasks in flight (one per client request until every
    /// replica answered): a bound, so a flood of requests to slow replicas cannot pile up
    /// tasks without end.
    pub owned_tasks: Arc<tokio::sync::Semaphore>,
    /// Per-tenant request rates.
    pub limiter: crate::admission::RateLimiter,
    /// Owns the replication and read-repair tasks.
    pub sup: Supervisor,
}

/// A client write (or delete, when `tombstone`).
#[derive(Debug, Clone)]
pub struct WriteReq {
    pub tenant: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub tombstone: bool,
    pub context: VersionVector,
    pub consistency: Option<Level>,
    pub ttl_seconds: u32,
    pub idempotency_key: String,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub struct WriteOk {
    /// Covers exactly what the client wrote on top of (its context plus the new dot).
    pub context: VersionVector,
    pub dot: Dot,
    pub acked: u32,
    pub deduplicated: bool,
}

#[derive(Debug, Clone)]
pub struct ReadReq {
    pub tenant: String,
    pub key: Vec<u8>,
    pub consistency: Option<Level>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub struct ReadOk {
    pub siblings: Vec<Version>,
    pub value: Option<Vec<u8>>,
    pub context: VersionVector,
    pub responded: u32,
}

/// Why a read found nothing: NOT_FOUND, carrying the context (a deleted key still has one).
#[derive(Debug, Clone)]
pub struct NotFound {
    pub context: VersionVector,
}

enum WriteEvent {
    Coordinated(Box<pb::WriteResult>),
    Ack,
    Failed(String),
    /// A replica refused the request itself (bad input): no other replica will accept it.
    Rejected(E),
}

/// Converts a replica's key state, on a blocking thread when it is large.
async fn decode_state(sup: &Supervisor, st: pb::KeyState) -> std::result::Result<KeyState, String> {
    if !convert::is_large_state(&st) {
        return convert::state_from_pb(st).map_err(|e| e.to_string());
    }
    sup.spawn_blocking("decode-state", move || convert::state_from_pb(st))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Whether a batched item was refused only because its batch's answer grew too large.
fn budget_exceeded(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::ResourceExhausted
        && s.message().contains(validate::BATCH_BUDGET_EXCEEDED)
}

fn replica_error(status: &tonic::Status) -> E {
    E::from_status(status)
}

/// Whether a replica's error is about the request (every replica would say the same).
fn is_request_error(e: &E) -> bool {
    let n = e.code().number();
    (1000..2000).contains(&n) && e.code() != ErrorCode::ChecksumFailed
}

impl DataPlane {
    fn replicas(&self, tenant: &TenantRecord, key: &[u8]) -> Result<Vec<Arc<NodeEntry>>> {
        Ok(self.replicas_and_pending(tenant, key, false)?.0)
    }

    /// The key's replicas (current ring) and, when `with_pending`, its pending replicas (nodes
    /// gaining the key's range in an active topology change).
    fn replicas_and_pending(
        &self,
        tenant: &TenantRecord,
        key: &[u8],
        with_pending: bool,
    ) -> Result<(Nodes, Nodes)> {
        let snap = self.cluster.snapshot();
        let tok = token::token(&tenant.tenant_id, key);
        let list: Vec<Arc<NodeEntry>> = snap
            .ring
            .preference_list(tok, tenant.replication_factor as usize)
            .into_iter()
            .filter_map(|m| snap.nodes.get(&m.node_id).cloned())
            .collect();
        if list.is_empty() {
            return Err(E::NodeNotReady(
                "no storage nodes own ranges yet (add nodes first)".into(),
            )
            .into());
        }
        let pending = if with_pending {
            snap.pending_replicas(tok, tenant.replication_factor as usize)
        } else {
            Vec::new()
        };
        Ok((list, pending))
    }

    /// A slot for one owned task, or OVERLOADED.
    fn owned_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.owned_tasks.clone().try_acquire_owned().map_err(|_| {
            self.metrics
                .overloaded
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "owned_tasks",
                })
                .inc();
            E::Overloaded(format!(
                "{} replication and read-repair tasks are in flight on this coordinator; retry later",
                self.cfg.max_owned_tasks
            ))
            .into()
        })
    }

    fn deadline(&self, timeout_ms: u32) -> Duration {
        Duration::from_millis(match timeout_ms {
            0 => self.cfg.request_timeout_ms,
            t => u64::from(t).min(600_000),
        })
    }

    fn replica_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.replica_timeout_ms)
    }

    fn observe_replica(&self, op: &'static str, started: Instant) {
        self.metrics
            .replica_latency
            .get_or_create(&OpLabels { op })
            .observe(started.elapsed().as_secs_f64());
    }

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
        let n = tenant.replication_factor as usize;
        let required = level.required(n);
        let deadline = self.deadline(req.timeout_ms);

        let slot = self.owned_slot()?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let me = self.clone();
        let t = tenant.clone();
        drop(self.sup.spawn("replicate", async move {
            let _slot = slot;
            me.replicate(t, req, replicas, pending, level, tx).await
        }));

        let mut acked = 0usize;
        let mut coordinated: Option<Box<pb::WriteResult>> = None;
        let mut failures: Vec<String> = Vec::new();
        let wait = async {
            while let Some(ev) = rx.recv().await {
                match ev {
                    WriteEvent::Coordinated(r) => {
                        coordinated = Some(r);
                        acked += 1;
                    }
                    WriteEvent::Ack => acked += 1,
                    WriteEvent::Failed(m) => failures.push(m),
                    WriteEvent::Rejected(e) => return Err(e),
                }
                if acked >= required && coordinated.is_some() {
                    return Ok(());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, wait).await {
            Err(_) => {
                return Err(E::Timeout(format!(
                    "write timed out after {} ms with {acked} of {required} acknowledgements; it may or may not have been applied",
                    deadline.as_millis()
                ))
                .into());
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
        let Some(r) = coordinated.filter(|_| acked >= required) else {
            self.metrics.quorum_failures.inc();
            return Err(E::QuorumNotMet(format!(
                "{acked} of {required} required replicas acknowledged ({}); the write may be partially applied, and what landed is kept and hinted to the other replicas",
                failures.join("; ")
            ))
            .into());
        };
        let version = convert::version_from_pb(r.version.unwrap_or_default())?;
        let mut context = version.context.clone();
        context.add_dot(&version.dot);
        Ok(WriteOk {
            context,
            dot: version.dot,
            acked: acked as u32,
            deduplicated: r.deduplicated,
        })
    }

    /// The owned replication task of one write.
    async fn replicate(
        self: Arc<Self>,
        tenant: Arc<TenantRecord>,
        req: WriteReq,
        replicas: Vec<Arc<NodeEntry>>,
        pending_replicas: Vec<Arc<NodeEntry>>,
        level: Level,
        tx: mpsc::UnboundedSender<WriteEvent>,
    ) {
        let op = pb::WriteOp {
            tenant_id: req.tenant.clone(),
            key: req.key.clone(),
            value: req.value,
            tombstone: req.tombstone,
            context: pairdb_common::context::encode_internal(&req.context),
            ttl_seconds: req.ttl_seconds,
            idempotency_key: req.idempotency_key,
            conflict_policy: convert::policy_to_pb(tenant.conflict_policy) as i32,
            max_siblings: tenant.sibling_max,
            max_value_bytes: tenant.max_value_bytes,
            sibling_warn: tenant.sibling_warn,
            max_state_bytes: tenant.max_state_bytes,
        };
        // 1. Coordinating replica: the first available one that accepts the write.
        let mut coordinator: Option<(usize, KeyState)> = None;
        let mut order: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].health.is_available())
            .collect();
        order.extend((0..replicas.len()).filter(|i| !replicas[*i].health.is_available()));
        for i in order {
            let node = &replicas[i];
            let started = Instant::now();
            let r = tokio::time::timeout(self.replica_timeout(), async {
                match node.batcher.write(op.clone()).await {
                    // The batch's answer would have outgrown a message before this op (nothing
                    // was done for it): send it on its own.
                    Err(s) if budget_exceeded(&s) => node
                        .client
                        .clone()
                        .write(op.clone())
                        .await
                        .map(tonic::Response::into_inner),
                    r => r,
                }
            })
            .await;
            self.observe_replica("write", started);
            match r {
                Ok(Ok(resp)) => {
                    node.health.record_success();
                    // Fail closed: a state that does not decode is never replaced by an empty
                    // one the other replicas would then acknowledge. The version stays on the
                    // coordinating replica; read repair and anti-entropy spread it.
                    let state = match resp.state.clone() {
                        Some(st) => decode_state(&self.sup, st).await,
                        None => Err("no state".to_string()),
                    };
                    let state = match state {
                        Ok(st) => st,
                        Err(e) => {
                            tracing::error!(node_id = %node.record.node_id, error = %e, "coordinating replica answered a state that does not decode");
                            let _ = tx.send(WriteEvent::Rejected(E::Internal(format!(
                                "coordinating replica {} answered a key state that does not decode ({e}); the write may be partially applied",
                                node.record.node_id
                            ))));
                            return;
                        }
                    };
                    let _ = tx.send(WriteEvent::Coordinated(Box::new(resp)));
                    coordinator = Some((i, state));
                    break;
                }
                Ok(Err(status)) => {
                    let e = replica_error(&status);
                    if is_request_error(&e) {
                        let _ = tx.send(WriteEvent::Rejected(e));
                        return;
                    }
                    if status.code() == tonic::Code::Unavailable {
                        node.health
                            .record_failure(self.cluster.config().down_after_misses);
                    }
                    let _ = tx.send(WriteEvent::Failed(format!("{}: {e}", node.record.node_id)));
                }
                Err(_) => {
                    node.health
                        .record_failure(self.cluster.config().down_after_misses);
                    let _ = tx.send(WriteEvent::Failed(format!(
                        "{}: timed out",
                        node.record.node_id
                    )));
                }
            }
        }
        let Some((ci, state)) = coordinator else {
            return;
        };
        // 2. Ship the whole state to every other replica and to the pending replicas (which
        //    never count toward W); hint the ones that miss it.
        let apply = pb::KeyVersions {
            tenant_id: req.tenant.clone(),
            key: req.key.clone(),
            state: Some(convert::state_to_pb(&state)),
            origin: pb::ApplyOrigin::Replica as i32,
            ..Default::default()
        };
        if !pending_replicas.is_empty() {
            self.metrics.pending_replica_writes.inc();
        }
        let targets = replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ci)
            .map(|(_, node)| (node.clone(), true))
            .chain(pending_replicas.into_iter().map(|node| (node, false)));
        let mut pending: FuturesUnordered<_> = targets
            .map(|(node, counts)| {
                let apply = apply.clone();
                let timeout = self.replica_timeout();
                async move {
                    let started = Instant::now();
                    let r = if node.health.is_available() {
                        match tokio::time::timeout(timeout, node.batcher.apply(apply)).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(s)) => Err((
                                s.code() == tonic::Code::Unavailable,
                                s.message().to_string(),
                            )),
                            Err(_) => Err((true, "timed out".to_string())),
                        }
                    } else {
                        Err((false, "node is down".to_string()))
                    };
                    (node, counts, r, started)
                }
            })
            .collect();
        let mut durable = FuturesUnordered::new();
        while let Some((node, counts, r, started)) = pending.next().await {
            self.observe_replica("apply", started);
            match r {
                Ok(()) => {
                    node.health.record_success();
                    if counts {
                        let _ = tx.send(WriteEvent::Ack);
                    }
                }
                Err((transport, msg)) => {
                    if transport {
                        node.health
                            .record_failure(self.cluster.config().down_after_misses);
                    }
                    // A pending replica's miss is covered by its hint (and the change's
                    // verification); it never counts toward W either way. Only ANY waits for
                    // the hint to be stored: there it is the acknowledgement.
                    let failed = WriteEvent::Failed(format!("{}: {msg}", node.record.node_id));
                    if counts && level == Level::Any {
                        let _ = tx.send(failed);
                        let hints = self.hints.clone();
                        let (target, tenant, key) = (
                            node.record.node_id.clone(),
                            req.tenant.clone(),
                            req.key.clone(),
                        );
                        let (tx, state) = (tx.clone(), state.clone());
                        durable.push(async move {
                            if hints.record_durable(&target, &tenant, &key, &state).await
                                == Recorded::Stored
                            {
                                let _ = tx.send(WriteEvent::Ack);
                            }
                        });
                    } else {
                        self.hints
                            .enqueue(&node.record.node_id, &req.tenant, &req.key, &state);
                        if counts {
                            let _ = tx.send(failed);
                        }
                    }
                }
            }
        }
        while durable.next().await.is_some() {}
    }

    /// A quorum read (see module docs). `Err(Ok(NotFound))` when no live version exists.
    pub async fn read(
        self: &Arc<Self>,
        req: ReadReq,
    ) -> Result<std::result::Result<ReadOk, NotFound>> {
        validate::key_ref(&req.tenant, &req.key)?;
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
        let deadline = self.deadline(req.timeout_ms);
        let slot = self.owned_slot()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, ReplicaRead)>();
        let me = self.clone();
        let (tenant_id, key) = (req.tenant.clone(), req.key.clone());
        drop(self.sup.spawn("read-repair", async move {
            let _slot = slot;
            me.read_and_repair(tenant_id, key, replicas, tx).await
        }));

        let mut merged = KeyState::new();
        let mut good = 0usize;
        let mut failures = Vec::new();
        let mut corrupt = 0usize;
        let wait = async {
            while let Some((node, r)) = rx.recv().await {
                match r {
                    Ok(s) => {
                        good += 1;
                        if let Some(s) = s {
                            merged.merge(&s);
                        }
                        if good >= required {
                            return;
                        }
                    }
                    Err((data_loss, m)) => {
                        corrupt += usize::from(data_loss);
                        failures.push(format!("{node}: {m}"));
                    }
                }
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            return Err(E::Timeout(format!(
                "read timed out after {} ms with {good} of {required} responses",
                deadline.as_millis()
            ))
            .into());
        }
        // Corrupt replicas alone keep the read from its quorum (the others answered): the
        // data is damaged, not unreachable. Anti-entropy rebuilds it where a copy survives.
        if good < required && corrupt > 0 && good + (failures.len() - corrupt) < required {
            return Err(E::ChecksumFailed(format!(
                "the record is corrupt on {corrupt} replica(s) and only {good} of {required} required replicas answered intact ({})",
                failures.join("; ")
            ))
            .into());
        }
        if good < required {
            self.metrics.quorum_failures.inc();
            return Err(E::QuorumNotMet(format!(
                "{good} of {required} required replicas responded ({})",
                failures.join("; ")
            ))
            .into());
        }
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

    /// Asks every replica, forwards each answer, then repairs the stale ones.
    async fn read_and_repair(
        self: Arc<Self>,
        tenant: String,
        key: Vec<u8>,
        replicas: Vec<Arc<NodeEntry>>,
        tx: mpsc::UnboundedSender<(String, ReplicaRead)>,
    ) {
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .cloned()
            .map(|node| {
                let timeout = self.replica_timeout();
                let gc_grace_ms = self.cfg.gc_grace_ms;
                let sup = self.sup.clone();
                let kr = pb::KeyRef {
                    tenant_id: tenant.clone(),
                    key: key.clone(),
                };
                async move {
                    let started = Instant::now();
                    if !node.health.is_available() {
                        return (
                            node,
                            Err((false, false, "node is down".to_string())),
                            started,
                        );
                    }
                    let outage = node.health.outage_ms();
                    if outage > gc_grace_ms {
                        let why = format!(
                            "was away {} s, longer than the tombstone GC grace: it serves no reads until a repair completes",
                            outage / 1000
                        );
                        return (node, Err((false, false, why)), started);
                    }
                    let read = async {
                        match node.batcher.read(kr.clone()).await {
                            Err(s) if budget_exceeded(&s) => node
                                .client
                                .clone()
                                .read(kr)
                                .await
                                .map(tonic::Response::into_inner),
                            r => r,
                        }
                    };
                    let r = match tokio::time::timeout(timeout, read).await {
                        // Back from a long outage (no heartbeat told us yet): not an answer.
                        Ok(Ok(resp)) if resp.unrepaired_outage_ms > gc_grace_ms => {
                            node.health.set_outage_ms(resp.unrepaired_outage_ms);
                            Err((false, false, format!(
                                "was away {} s, longer than the tombstone GC grace: it serves no reads until a repair completes",
                                resp.unrepaired_outage_ms / 1000
                            )))
                        }
                        Ok(Ok(resp)) => {
                            let state = match resp.state {
                                Some(st) => decode_state(&sup, st).await.map(Some),
                                None => Ok(None),
                            };
                            match state {
                                Ok(s) => Ok(if resp.exists {
                                    s.or_else(|| Some(KeyState::new()))
                                } else {
                                    None
                                }),
                                Err(e) => Err((false, false, format!("bad state: {e}"))),
                            }
                        }
                        Ok(Err(s)) => Err((
                            s.code() == tonic::Code::Unavailable,
                            s.code() == tonic::Code::DataLoss,
                            s.message().to_string(),
                        )),
                        Err(_) => Err((true, false, "timed out".to_string())),
                    };
                    (node, r, started)
                }
            })
            .collect();
        let mut answers: HashMap<String, Option<KeyState>> = HashMap::new();
        let mut corrupt: Vec<Arc<NodeEntry>> = Vec::new();
        let mut nodes: HashMap<String, Arc<NodeEntry>> = HashMap::new();
        while let Some((node, r, started)) = pending.next().await {
            self.observe_replica("read", started);
            let id = node.record.node_id.clone();
            match r {
                Ok(s) => {
                    node.health.record_success();
                    answers.insert(id.clone(), s.clone());
                    let _ = tx.send((id.clone(), Ok(s)));
                }
                Err((transport, data_loss, m)) => {
                    if transport {
                        node.health
                            .record_failure(self.cluster.config().down_after_misses);
                    }
                    if data_loss {
                        corrupt.push(node.clone());
                    }
                    let _ = tx.send((id.clone(), Err((data_loss, m))));
                }
            }
            nodes.insert(id, node);
        }
        drop(tx);
        // Read repair against the merge of every answer.
        let mut merged = KeyState::new();
        for s in answers.values().flatten() {
            merged.merge(s);
        }
        if merged.is_empty() {
            return;
        }
        let state = Some(convert::state_to_pb(&merged));
        for (id, s) in &answers {
            let stale = match s {
                Some(s) => *s != merged,
                None => true,
            };
            if !stale {
                continue;
            }
            let Some(node) = nodes.get(id) else { continue };
            let mut c = node.client.clone();
            let req = pb::KeyVersions {
                tenant_id: tenant.clone(),
                key: key.clone(),
                state: state.clone(),
                origin: pb::ApplyOrigin::ReadRepair as i32,
                ..Default::default()
            };
            if let Ok(Ok(_)) = tokio::time::timeout(self.replica_timeout(), c.apply(req)).await {
                self.metrics.read_repairs.inc();
            }
        }
        for node in corrupt {
            let mut c = node.client.clone();
            let req = pb::KeyVersions {
                tenant_id: tenant.clone(),
                key: key.clone(),
                state: state.clone(),
                origin: pb::ApplyOrigin::ReadRepair as i32,
                ..Default::default()
            };
            match tokio::time::timeout(self.replica_timeout(), c.repair(req)).await {
                Ok(Ok(_)) => {
                    self.metrics.read_repairs.inc();
                    tracing::warn!(node_id = %node.record.node_id, tenant_id = %tenant, "repaired a corrupt replica from the others");
                }
                _ => {
                    tracing::error!(node_id = %node.record.node_id, tenant_id = %tenant, "repair of a corrupt replica failed")
                }
            }
        }
    }
}
