//! Hinted handoff (SPEC §5): when a replica misses a write, the key state it missed is recorded
//! in the metadata store (`hints`, payload = the framed key state). The `hint-replay` worker
//! delivers hints to targets that are up again — claimed with row locks, so coordinators never
//! deliver the same hint at once; delivery is an idempotent merge — deletes delivered hints,
//! counts failures in `replay_count`, and drops hints past `max_replay_attempts` or `hint_ttl`.
//! No hints are recorded for a node down longer than `max_hint_window` (anti-entropy covers
//! it), nor beyond `max_hints_per_target`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::version::KeyState;
use pairdb_common::{convert, framing, now_ms};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::meta::{MetaStore, NewHint};
use crate::metrics::Metrics;

/// Hint settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct HintConfig {
    pub enabled: bool,
    pub replay_interval_ms: u64,
    pub max_replay_attempts: u32,
    pub hint_ttl_secs: u64,
    pub max_hint_window_secs: u64,
    pub max_hints_per_target: u64,
    pub replay_batch: u32,
    pub rpc_timeout_ms: u64,
}

pub struct Hints {
    meta: Arc<dyn MetaStore>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    cfg: HintConfig,
    owner: String,
    /// Pending counts per target as of the last replay cycle (for the cap).
    pending: Mutex<HashMap<String, u64>>,
}

/// What happened to a hint we tried to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Stored,
    Disabled,
    /// The target has been down longer than the hint window.
    OutsideWindow,
    OverCap,
    Failed,
}

impl Hints {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        cfg: HintConfig,
        owner: String,
    ) -> Arc<Hints> {
        Arc::new(Hints {
            meta,
            cluster,
            metrics,
            cfg,
            owner,
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &HintConfig {
        &self.cfg
    }

    /// Records that `target` missed `state` for `(tenant, key)`.
    pub async fn record(
        &self,
        target: &str,
        tenant: &str,
        key: &[u8],
        state: &KeyState,
    ) -> Recorded {
        if !self.cfg.enabled {
            return Recorded::Disabled;
        }
        let now = now_ms();
        // How long the target has been unreachable: since the last time anyone saw it (this
        // coordinator's heartbeats, or `storage_nodes.last_seen` written by any coordinator), so
        // a freshly started coordinator does not restart the clock.
        let down_for = self
            .cluster
            .snapshot()
            .nodes
            .get(target)
            .map(|e| {
                if e.health.status() != crate::meta::NodeStatus::Down {
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
            .unwrap_or(0);
        if down_for > self.cfg.max_hint_window_secs * 1000 {
            self.metrics.hints_dropped.inc();
            return Recorded::OutsideWindow;
        }
        {
            let mut p = self.pending.lock();
            let n = p.entry(target.to_string()).or_insert(0);
            if *n >= self.cfg.max_hints_per_target {
                self.metrics.hints_dropped.inc();
                return Recorded::OverCap;
            }
            *n += 1;
        }
        let hint = NewHint {
            target_node_id: target.to_string(),
            tenant_id: tenant.to_string(),
            key: key.to_vec(),
            payload: framing::encode_state(state),
            created_at_ms: now,
        };
        match self.meta.insert_hint(&hint).await {
            Ok(()) => {
                self.metrics.hints_stored.inc();
                Recorded::Stored
            }
            Err(e) => {
                tracing::error!(target_node = target, error = %e, "record hint failed");
                Recorded::Failed
            }
        }
    }

    /// One replay cycle: deliver what can be delivered, drop what is dead.
    pub async fn replay_once(&self) -> Result<u64, crate::meta::MetaError> {
        let targets = self.meta.hint_targets().await?;
        self.metrics
            .hints_pending
            .set(targets.iter().map(|t| t.pending as i64).sum());
        *self.pending.lock() = targets
            .iter()
            .map(|t| (t.node_id.clone(), t.pending))
            .collect();
        let snap = self.cluster.snapshot();
        let mut delivered = 0;
        for t in targets {
            let Some(node) = snap.nodes.get(&t.node_id) else {
                continue;
            };
            if node.health.status() != crate::meta::NodeStatus::Up {
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
            let expired_before = now_ms().saturating_sub(self.cfg.hint_ttl_secs * 1000);
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
                match r {
                    Ok(Ok(_)) => {
                        self.meta.delete_hint(h.hint_id).await?;
                        self.metrics.hints_replayed.inc();
                        delivered += 1;
                    }
                    Ok(Err(status)) => {
                        self.metrics.hints_failed.inc();
                        self.meta.fail_hint(h.hint_id, status.message()).await?;
                        if status.code() == tonic::Code::Unavailable {
                            // The target went away again: stop spending attempts on it.
                            node.health
                                .record_failure(self.cluster.config().down_after_misses);
                            break;
                        }
                    }
                    Err(_) => {
                        self.metrics.hints_failed.inc();
                        self.meta.fail_hint(h.hint_id, "timed out").await?;
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
        let cutoff = now_ms().saturating_sub(self.cfg.hint_ttl_secs * 1000);
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
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.replay_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_cleanup = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.replay_once().await {
                tracing::warn!(error = %e, "hint replay cycle failed");
            }
            if last_cleanup.elapsed() > Duration::from_secs(30) {
                last_cleanup = Instant::now();
                if let Err(e) = self.cleanup_once().await {
                    tracing::warn!(error = %e, "hint cleanup failed");
                }
            }
        }
    }
}
