//! Hinted handoff (SPEC §5): when a replica misses a write, the key state it missed is recorded
//! in the metadata store (`hints`, payload = the framed key state). The `hint-replay` worker
//! delivers hints to targets that are up again — claimed with row locks, so coordinators never
//! deliver the same hint at once; delivery is an idempotent merge — deletes delivered hints,
//! counts failures in `replay_count`, and drops hints past `max_replay_attempts` or `hint_ttl`.
//! No hints are recorded for a node down longer than `max_hint_window` (anti-entropy covers
//! it) — counted from when anyone last saw it, and from its oldest undelivered hint, so
//! neither a coordinator's restart nor a node that flaps reopens the window — nor beyond
//! `max_hints_per_target` or `max_hint_bytes_per_target`.
//!
//! **Recording never delays an acknowledgement.** A write hands its hints to an in-memory queue
//! bounded in count and bytes ([`Hints::enqueue`], no waiting) and the `hint-writer` worker
//! stores them in batches through its own small connection pool, so a slow or stopped
//! metadata store neither holds a write nor takes the connections other work needs. A hint that
//! finds the queue full, or whose batch the store refuses, is counted
//! (`hints_dropped_by_reason`) and logged; anti-entropy repairs what it would have carried.
//! Only consistency ANY waits for the hint to be stored ([`Hints::record_durable`]): there the
//! hint *is* the acknowledgement.
//!
//! **Replay backs off per hint**: a failed delivery is not claimed again for
//! `hint_retry_base_ms × 2^attempts` (at most 5 minutes). A target that refused only because
//! its disk breaker is engaged or it is in maintenance does not spend an attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use pairdb_common::api::pb;
use pairdb_common::ring::NodeState;
use pairdb_common::version::KeyState;
use pairdb_common::{ErrorCode, convert, failpoint, framing, now_ms};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::meta::{MetaStore, NewHint};
use crate::metrics::{Metrics, ReasonLabels};

/// Hints stored per metadata-store statement.
const WRITE_BATCH: usize = 256;
/// Payload bytes stored per metadata-store statement.
const WRITE_BATCH_BYTES: usize = 8 << 20;
/// Longest a batch of hints may take to store before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two deliveries of a hint that keeps failing.
const MAX_RETRY_MS: u64 = 300_000;

/// Hint settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct HintConfig {
    pub enabled: bool,
    pub replay_interval_ms: u64,
    pub max_replay_attempts: u32,
    pub hint_ttl_secs: u64,
    pub max_hint_window_secs: u64,
    pub max_hints_per_target: u64,
    pub max_hint_bytes_per_target: u64,
    pub replay_batch: u32,
    pub rpc_timeout_ms: u64,
    /// Hints waiting in memory to be stored, in count and in payload bytes.
    pub queue_max: usize,
    pub queue_max_bytes: usize,
    /// First retry delay of a failed delivery (doubles per attempt).
    pub retry_base_ms: u64,
}

/// One hint on its way to the metadata store; `done` is told whether it was stored.
struct Queued {
    hint: NewHint,
    done: Option<oneshot::Sender<bool>>,
}

/// Pending hints of one target as this coordinator counts them: from the last replay cycle's
/// totals plus what it queued since.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    count: u64,
    bytes: u64,
    /// When the oldest of them was created, on tokio's clock (the simulated one in a
    /// simulation): from the store's age of it at the last replay cycle, or this
    /// coordinator's first hint since.
    oldest: Option<tokio::time::Instant>,
}

pub struct Hints {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: HintConfig,
    owner: String,
    pending: Mutex<HashMap<String, Pending>>,
    queue: mpsc::Sender<Queued>,
    /// Held by the running writer; a restarted writer (after a panic) finds it again.
    queue_rx: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    queued_bytes: AtomicUsize,
}

/// What happened to a hint we tried to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// In the queue (or, from [`Hints::record_durable`], stored).
    Stored,
    Disabled,
    /// The target has been down longer than the hint window.
    OutsideWindow,
    OverCap,
    /// The queue was full or the metadata store failed.
    Failed,
}

impl Hints {
    /// `meta` is the store hints are written to and replayed from (its own pool, apart from
    /// the coordinator's main one).
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: HintConfig,
        owner: String,
    ) -> Arc<Hints> {
        let (tx, rx) = mpsc::channel(cfg.queue_max.max(1));
        Arc::new(Hints {
            meta,
            cluster,
            metrics,
            cfg,
            owner,
            pending: Mutex::new(HashMap::new()),
            queue: tx,
            queue_rx: tokio::sync::Mutex::new(rx),
            queued_bytes: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &HintConfig {
        &self.cfg
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics.hints_dropped.inc();
        self.metrics
            .hints_dropped_by_reason
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// How long `target` has been unreachable: since the last time anyone saw it (this
    /// coordinator's heartbeats, or `storage_nodes.last_seen` written by any coordinator), so
    /// a freshly started coordinator does not restart the clock; until its own heartbeats have
    /// judged the node, it goes by the node's recorded status.
    fn down_for_ms(&self, target: &str, now: u64) -> u64 {
        self.cluster
            .snapshot()
            .nodes
            .get(target)
            .map(|e| {
                // A drained node is away from the moment it was drained.
                if let Some(at) = e.record.drained_at_ms {
                    return now.saturating_sub(at);
                }
                let down = match e.health.status() {
                    crate::meta::NodeStatus::Down => true,
                    crate::meta::NodeStatus::Up => false,
                    // Not judged here yet (this coordinator just started): the cluster's word,
                    // the status another coordinator (or this one before its restart) recorded,
                    // so a restart does not reopen the window (CASSANDRA-14309).
                    crate::meta::NodeStatus::Unknown => {
                        e.record.status == crate::meta::NodeStatus::Down
                    }
                };
                if !down {
                    return 0;
                }
                let seen = e
                    .health
                    .last_seen_ms()
                    .max(e.record.last_seen_ms.unwrap_or(0));
                match seen {
                    0 => e.health.down_for_ms(now),
                    t => now.saturating_sub(t),
                }
            })
            .unwrap_or(0)
    }

    /// Checks the window and the per-target caps and puts the hint in the queue without
    /// waiting. `done` hears whether it was stored.
    fn admit(
        &self,
        target: &str,
        tenant: &str,
        key: &[u8],
        state: &KeyState,
        done: Option<oneshot::Sender<bool>>,
    ) -> Recorded {
        if !self.cfg.enabled {
            return Recorded::Disabled;
        }
        let now = now_ms();
        let window_ms = self.cfg.max_hint_window_secs.saturating_mul(1000);
        if self.down_for_ms(target, now) > window_ms {
            self.dropped("window");
            return Recorded::OutsideWindow;
        }
        let payload = framing::encode_state(state);
        let size = payload.len();
        {
            let mut p = self.pending.lock();
            let n = p.entry(target.to_string()).or_default();
            // The persistent window (Cassandra 4.1's, CASSANDRA-14309): a target whose oldest
            // undelivered hint is older than the window gets no more, so a node that flaps —
            // seen for a moment, then gone again before its hints were delivered — does not
            // restart the window and pile up hints without end.
            if n.oldest
                .is_some_and(|t| t.elapsed().as_millis() as u64 > window_ms)
            {
                drop(p);
                self.dropped("window");
                return Recorded::OutsideWindow;
            }
            if n.count >= self.cfg.max_hints_per_target {
                self.dropped("count_cap");
                return Recorded::OverCap;
            }
            if n.bytes.saturating_add(size as u64) > self.cfg.max_hint_bytes_per_target {
                self.dropped("bytes_cap");
                return Recorded::OverCap;
            }
            n.count += 1;
            n.bytes += size as u64;
            n.oldest.get_or_insert_with(tokio::time::Instant::now);
        }
        let admitted = self
            .queued_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b + size <= self.cfg.queue_max_bytes).then_some(b + size)
            })
            .is_ok();
        let item = Queued {
            hint: NewHint {
                target_node_id: target.to_string(),
                tenant_id: tenant.to_string(),
                key: key.to_vec(),
                payload,
                created_at_ms: now,
            },
            done,
        };
        if admitted && self.queue.try_send(item).is_ok() {
            self.metrics.hint_queue_depth.inc();
            return Recorded::Stored;
        }
        if admitted {
            self.queued_bytes.fetch_sub(size, Ordering::SeqCst);
        }
        self.dropped("queue_full");
        // Once per hint while the metadata store is away would flood the log; each drop is
        // counted in `hints_dropped_by_reason_total{reason="queue_full"}`.
        static QUEUE_FULL: pairdb_common::telemetry::LogEvery =
            pairdb_common::telemetry::LogEvery::new(std::time::Duration::from_secs(10));
        if let Some(suppressed) = QUEUE_FULL.allow() {
            tracing::warn!(
                target_node = target,
                suppressed,
                "hint queue full; dropped a hint (anti-entropy covers it)"
            );
        }
        Recorded::Failed
    }

    /// Queues a hint that `target` missed `state` for `(tenant, key)`; never waits.
    pub fn enqueue(&self, target: &str, tenant: &str, key: &[u8], state: &KeyState) -> Recorded {
        self.admit(target, tenant, key, state, None)
    }

    /// Queues a hint and waits until it is stored (consistency ANY: the stored hint is the
    /// acknowledgement).
    pub async fn record_durable(
        &self,
        target: &str,
        tenant: &str,
        key: &[u8],
        state: &KeyState,
    ) -> Recorded {
        let (tx, rx) = oneshot::channel();
        match self.admit(target, tenant, key, state, Some(tx)) {
            Recorded::Stored => match rx.await {
                Ok(true) => Recorded::Stored,
                _ => Recorded::Failed,
            },
            other => other,
        }
    }

    /// The `hint-writer` worker: stores queued hints in batches until cancelled, then stores
    /// what is left (bounded by the shutdown deadline of its caller).
    pub async fn run_writer(self: Arc<Self>, cancel: CancellationToken) {
        let mut rx = self.queue_rx.lock().await;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => { rx.close(); rx.recv().await }
                q = rx.recv() => q,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            let mut bytes = batch[0].hint.payload.len();
            while batch.len() < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(q) => {
                        bytes += q.hint.payload.len();
                        batch.push(q);
                    }
                    Err(_) => break,
                }
            }
            self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.metrics.hint_queue_depth.dec_by(batch.len() as i64);
            self.store_batch(batch).await;
        }
    }

    async fn store_batch(&self, batch: Vec<Queued>) {
        let (hints, dones): (Vec<NewHint>, Vec<Option<oneshot::Sender<bool>>>) =
            batch.into_iter().map(|q| (q.hint, q.done)).unzip();
        let r = match tokio::time::timeout(WRITE_TIMEOUT, self.meta.insert_hints(&hints)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("timed out after {} s", WRITE_TIMEOUT.as_secs())),
        };
        let stored = match r {
            Ok(()) => {
                self.metrics.hints_stored.inc_by(hints.len() as u64);
                true
            }
            Err(e) => {
                for _ in &hints {
                    self.dropped("store_failed");
                }
                let mut p = self.pending.lock();
                for h in &hints {
                    if let Some(n) = p.get_mut(&h.target_node_id) {
                        n.count = n.count.saturating_sub(1);
                        n.bytes = n.bytes.saturating_sub(h.payload.len() as u64);
                    }
                }
                tracing::error!(hints = hints.len(), error = %e, "storing hints failed; dropped them (anti-entropy covers them)");
                false
            }
        };
        for d in dones.into_iter().flatten() {
            let _ = d.send(stored);
        }
    }

    /// Delay before a hint that failed `attempts` times is tried again.
    fn retry_after_ms(&self, attempts: u32) -> u64 {
        self.cfg
            .retry_base_ms
            .saturating_mul(1u64 << attempts.min(20))
            .min(MAX_RETRY_MS)
    }

    /// One replay cycle: deliver what can be delivered, drop what is dead.
    pub async fn replay_once(&self) -> Result<u64, crate::meta::MetaError> {
        let targets = self.meta.hint_targets().await?;
        self.metrics
            .hints_pending
            .set(targets.iter().map(|t| t.pending as i64).sum());
        // The store's clock, which stamped `created_at` (S24): read once per cycle, and used
        // only for ages (never compared with this coordinator's clock).
        let store_now = self.meta.clock_ms().await?;
        let read_at = tokio::time::Instant::now();
        *self.pending.lock() = targets
            .iter()
            .map(|t| {
                let age = Duration::from_millis(store_now.saturating_sub(t.oldest_created_at_ms));
                (
                    t.node_id.clone(),
                    Pending {
                        count: t.pending,
                        bytes: t.bytes,
                        oldest: (t.pending > 0).then(|| read_at.checked_sub(age)).flatten(),
                    },
                )
            })
            .collect();
        let snap = self.cluster.snapshot();
        let expired_before = store_now.saturating_sub(self.cfg.hint_ttl_secs * 1000);
        let mut delivered = 0;
        for t in targets {
            let Some(node) = snap.nodes.get(&t.node_id) else {
                continue;
            };
            // A removed node's ranges were streamed to their new replicas from live ones
            // (S12): its hints have no one to go to and would only hold the hint gauges up.
            if node.record.state == NodeState::Removed {
                let n = self.meta.delete_hints_for(&t.node_id).await?;
                self.metrics.hints_cleanup_deleted.inc_by(n);
                tracing::info!(node_id = %t.node_id, deleted = n, "dropped the hints of a removed node");
                continue;
            }
            // Up, and serving clients again: a drained node's hints wait for its undrain.
            if node.health.status() != crate::meta::NodeStatus::Up || !node.serves_clients() {
                continue;
            }
            let hints = self
                .meta
                .claim_hints(
                    &t.node_id,
                    &self.owner,
                    self.cfg.rpc_timeout_ms * 4 + 10_000,
                    self.cfg.replay_batch,
                )
                .await?;
            for h in hints {
                // Past its TTL (which the config keeps below the tombstone GC grace) a hint is
                // dropped, never replayed: it could carry a value whose tombstone is gone.
                if h.created_at_ms < expired_before {
                    self.meta.delete_hint(h.hint_id).await?;
                    self.metrics.hints_cleanup_deleted.inc();
                    continue;
                }
                let state = match framing::decode_state(&h.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(hint_id = h.hint_id, error = %e, "hint payload corrupt; dropping it");
                        self.meta.delete_hint(h.hint_id).await?;
                        self.metrics.hints_failed.inc();
                        continue;
                    }
                };
                let mut c = node.client.clone();
                let req = pb::KeyVersions {
                    tenant_id: h.tenant_id.clone(),
                    key: h.key.clone(),
                    state: Some(convert::state_to_pb(&state)),
                    origin: pb::ApplyOrigin::Hint as i32,
                    ..Default::default()
                };
                let r = tokio::time::timeout(
                    Duration::from_millis(self.cfg.rpc_timeout_ms),
                    c.apply(req),
                )
                .await;
                let retry = self.retry_after_ms(h.replay_count);
                match r {
                    Ok(Ok(_)) => {
                        failpoint::crash(failpoint::points::HINT_AFTER_SEND);
                        self.meta.delete_hint(h.hint_id).await?;
                        self.metrics.hints_replayed.inc();
                        delivered += 1;
                    }
                    Ok(Err(status)) => {
                        self.metrics.hints_failed.inc();
                        let code = pairdb_common::Error::from_status(&status).code();
                        // A full disk or a node in maintenance will take the hint later: wait,
                        // but do not spend one of its attempts.
                        let spend = !matches!(
                            code,
                            ErrorCode::DiskFull
                                | ErrorCode::DiskThrottled
                                | ErrorCode::NodeNotReady
                        );
                        self.meta
                            .fail_hint(h.hint_id, status.message(), spend, retry)
                            .await?;
                        if status.code() == tonic::Code::Unavailable {
                            // The target went away again (or drains): stop for this cycle.
                            if spend {
                                node.health
                                    .record_failure(self.cluster.config().down_after_misses);
                            }
                            break;
                        }
                    }
                    Err(_) => {
                        self.metrics.hints_failed.inc();
                        self.meta
                            .fail_hint(h.hint_id, "timed out", true, retry)
                            .await?;
                        node.health
                            .record_failure(self.cluster.config().down_after_misses);
                        break;
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// Deletes hints past their TTL or attempts.
    pub async fn cleanup_once(&self) -> Result<u64, crate::meta::MetaError> {
        // The store's clock, which stamped `created_at` (S24).
        let cutoff = self
            .meta
            .clock_ms()
            .await?
            .saturating_sub(self.cfg.hint_ttl_secs * 1000);
        let n = self
            .meta
            .delete_dead_hints(cutoff, self.cfg.max_replay_attempts)
            .await?;
        if n > 0 {
            self.metrics.hints_cleanup_deleted.inc_by(n);
            tracing::warn!(
                deleted = n,
                "dropped hints past their TTL or replay attempts; anti-entropy must cover them"
            );
        }
        Ok(n)
    }

    /// The `hint-replay` worker.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let period = Duration::from_millis(self.cfg.replay_interval_ms);
        let last_cleanup = Mutex::new(Instant::now());
        pairdb_common::worker::every(period, &cancel, || async {
            if let Err(e) = self.replay_once().await {
                tracing::warn!(error = %e, "hint replay cycle failed");
            }
            let due = last_cleanup.lock().elapsed() > Duration::from_secs(30);
            if due {
                *last_cleanup.lock() = Instant::now();
                if let Err(e) = self.cleanup_once().await {
                    tracing::warn!(error = %e, "hint cleanup failed");
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! Hint payloads read back from the metadata store are untrusted bytes (mirrors the
    //! `record` fuzz target): decoding any payload the replay path meets never panics.
    use pairdb_common::framing;
    use proptest::prelude::*;

    fn payload() -> Vec<u8> {
        let mut s = pairdb_common::version::KeyState::new();
        s.apply_write(pairdb_common::version::NewVersion {
            dot: pairdb_common::version::Dot::new(pairdb_common::version::Actor::new("n1", 1), 3),
            context: Default::default(),
            value: vec![7; 64],
            tombstone: false,
            written_at_ms: 1,
            expires_at_ms: 0,
            idempotency_key: String::new(),
            policy: Default::default(),
            max_siblings: 10,
        });
        framing::encode_state(&s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn hint_payloads_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
            let mut p = payload();
            for (at, b) in flips {
                let i = at % p.len();
                p[i] ^= b;
            }
            p.truncate(cut % (p.len() + 1));
            let _ = framing::decode_state(&p);
        }
    }
}
