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
//!
//! Both run their replica calls through the quorum fan-out (`quorum.rs`): the owned task
//! gathers until the quorum, answers the waiting client once through a oneshot, then drains
//! the rest. Files: `write.rs` (coordinating replica, replication, hints), `read.rs` (read,
//! read repair), this file (requests, answers, replica selection, the owned-task bound).

use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::version::{Dot, KeyState, Version, VersionVector};
use pairdb_common::worker::Supervisor;
use pairdb_common::{Error as E, ErrorCode, convert, token, validate};

use crate::cluster::{Cluster, NodeEntry};
use crate::error::Result;
use crate::hints::Hints;
use crate::meta::{Level, TenantRecord};
use crate::metrics::Metrics;
use crate::quorum::CallSettings;
use crate::tenants::Tenants;

mod read;
mod write;

type Nodes = Vec<Arc<NodeEntry>>;

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
            let mut p = snap.pending_replicas(tok, tenant.replication_factor as usize);
            // A replication-factor change to more replicas: the ones it adds get every write
            // too (not counted toward W) while the repair copies them the rest.
            let fanout = tenant.write_fanout() as usize;
            if fanout > list.len() {
                for m in snap.ring.preference_list(tok, fanout) {
                    if list.iter().chain(&p).all(|e| e.record.node_id != m.node_id)
                        && let Some(e) = snap.nodes.get(&m.node_id)
                    {
                        p.push(e.clone());
                    }
                }
            }
            p
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

    /// Settings of one fan-out's replica calls.
    fn calls(&self, op: &'static str) -> CallSettings {
        CallSettings {
            per_call: self.replica_timeout(),
            down_after_misses: self.cluster.config().down_after_misses,
            op,
            metrics: self.metrics.clone(),
        }
    }
}
