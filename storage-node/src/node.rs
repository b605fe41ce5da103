//! A running storage node's shared state: the store, disk manager, metrics and modes, as used by
//! the gRPC service, the admin HTTP API and the background workers.

use pairdb_common::worker::Supervisor;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::disk::DiskMonitor;
use crate::metrics::Metrics;
use crate::recent::Recent;
use crate::scan::ScanPool;
use crate::store::Store;

/// Bounds on the work callers can start on a node (from the config).
#[derive(Debug, Clone)]
pub struct NodeLimits {
    pub scan_threads: usize,
    pub max_queued_scans: usize,
    pub stream_stall_timeout_ms: u64,
    pub max_concurrent_pulls: usize,
}

pub struct Node {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub store: Arc<Store>,
    pub disk: Arc<DiskMonitor>,
    pub metrics: Arc<Metrics>,
    /// Time away since the last full repair (coordinators keep reads off a node away too long).
    pub outage: Arc<crate::outage::Outage>,
    pub started: Instant,
    /// Recent rates and latencies for `/health`.
    pub recent: Recent,
    /// Range streams (long scans).
    pub streams: ScanPool,
    /// Digests, key listings, purges and range drops (short scans).
    pub scans: ScanPool,
    /// Pulls this node may run at once.
    pub pulls: Arc<tokio::sync::Semaphore>,
    pub limits: NodeLimits,
    /// This node's TLS material (server, and client for pulls); `None`: plaintext.
    pub tls: Option<Arc<pairdb_common::tls::Tls>>,
    /// Where this node's backup parts go (`crate::backup`); `None`: backups are refused.
    pub backup_dir: Option<PathBuf>,
    /// The local maintenance switch (admin HTTP, the preStop hook).
    maintenance: AtomicBool,
    /// A coordinator's hold for an operator drain (`SetMaintenance`): `(held, cleared)` —
    /// the drain (its `drained_at_ms`) holding the node, 0 for none, and the newest drain an
    /// undrain released. A hold for a drain at or before `cleared` is stale (a coordinator
    /// that had not yet seen the undrain) and is ignored.
    drain: parking_lot::Mutex<(u64, u64)>,
    /// False from start until `--join` registered the node (always true without `--join`).
    joined: AtomicBool,
    /// When the compaction that reclaims dropped ranges is due (Unix ms; 0 = none).
    reclaim_due_ms: AtomicU64,
    reclaim_scheduled: AtomicBool,
    /// Owns this node's background work and blocking engine calls.
    pub sup: Supervisor,
}

/// Quiet time after the last DropRange before the reclaiming compaction runs (a cleanup drops
/// hundreds of small ranges; one compaction at the end rewrites the files once).
pub const RECLAIM_DELAY_MS: u64 = 3_000;
/// How far in the future (by this node's clock) a drain's `drained_at_ms` may be: the
/// coordinators' clocks may run ahead by this much. A later one is refused: held, it could
/// only be released by an undrain of that same instant, and released, it would make the node
/// ignore every later drain (both last until a restart).
pub const MAX_DRAIN_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        data_dir: PathBuf,
        store: Arc<Store>,
        disk: Arc<DiskMonitor>,
        metrics: Arc<Metrics>,
        outage: Arc<crate::outage::Outage>,
        limits: NodeLimits,
        sup: Supervisor,
    ) -> Node {
        let pool = |name| {
            ScanPool::new(
                name,
                limits.scan_threads,
                limits.max_queued_scans,
                metrics.clone(),
                sup.clone(),
            )
        };
        Node {
            streams: pool("range stream"),
            scans: pool("scan"),
            pulls: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_pulls)),
            limits,
            node_id,
            data_dir,
            store,
            disk,
            metrics,
            outage,
            started: Instant::now(),
            recent: Recent::default(),
            tls: None,
            backup_dir: None,
            maintenance: AtomicBool::new(false),
            drain: parking_lot::Mutex::new((0, 0)),
            joined: AtomicBool::new(true),
            reclaim_due_ms: AtomicU64::new(0),
            reclaim_scheduled: AtomicBool::new(false),
            sup,
        }
    }

    /// The node with a backup directory (before it is shared).
    pub fn with_backup_dir(mut self, dir: Option<PathBuf>) -> Node {
        self.backup_dir = dir;
        self
    }

    /// The node with TLS material (before it is shared).
    pub fn with_tls(mut self, tls: Option<Arc<pairdb_common::tls::Tls>>) -> Node {
        self.tls = tls;
        self
    }

    /// Maintenance (drain) mode: client reads and writes are refused with UNAVAILABLE so
    /// coordinators route around the node; internal streaming and repair keep working.
    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::SeqCst) || self.drain.lock().0 != 0
    }

    /// Whether `--join` registration has succeeded (true without `--join`).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::SeqCst)
    }

    pub fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::SeqCst);
    }

    /// Why the node should get no client traffic now, for the readiness probe and gRPC
    /// health (empty: ready): `maintenance` (drained by an operator or the preStop hook),
    /// `not_joined` (`--join` has not registered it yet), `disk_circuit_broken` (every write
    /// would be refused with DISK_FULL), `shutting_down`. Liveness never depends on these.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if self.maintenance() {
            why.push("maintenance");
        }
        if !self.joined() {
            why.push("not_joined");
        }
        if self.disk.status().is_circuit_broken {
            why.push("disk_circuit_broken");
        }
        if self.store.engine().failed().is_some() {
            why.push("storage_failed");
        }
        if self.sup.cancel_token().is_cancelled() {
            why.push("shutting_down");
        }
        why
    }

    /// The local switch (admin HTTP `maintenance/enable|disable`).
    pub fn set_maintenance(&self, on: bool) {
        let before = self.maintenance();
        self.maintenance.store(on, Ordering::SeqCst);
        self.maintenance_changed(before);
    }

    /// A coordinator holds the node in maintenance for the drain made at `drained_at_ms`
    /// (ignored if an undrain already released that drain or a later one).
    pub fn hold_drain(&self, drained_at_ms: u64) {
        let before = self.maintenance();
        {
            let mut d = self.drain.lock();
            if drained_at_ms > d.1 {
                d.0 = d.0.max(drained_at_ms);
            }
        }
        self.maintenance_changed(before);
    }

    /// An undrain releases every drain made at or before `drained_at_ms`, and the local
    /// switch too (the operator wants the node serving).
    pub fn release_drain(&self, drained_at_ms: u64) {
        let before = self.maintenance();
        {
            let mut d = self.drain.lock();
            d.1 = d.1.max(drained_at_ms);
            if d.0 <= d.1 {
                d.0 = 0;
            }
        }
        self.maintenance.store(false, Ordering::SeqCst);
        self.maintenance_changed(before);
    }

    fn maintenance_changed(&self, before: bool) {
        let on = self.maintenance();
        if before != on {
            self.metrics.maintenance_mode.set(i64::from(on));
            tracing::warn!(node_id = %self.node_id, enabled = on, "maintenance mode changed");
        }
    }

    /// Schedules a full compaction `RECLAIM_DELAY_MS` after the last call, so the space behind
    /// range deletes is given back to the filesystem.
    pub fn schedule_reclaim(self: &Arc<Self>) {
        self.reclaim_due_ms
            .store(pairdb_common::now_ms() + RECLAIM_DELAY_MS, Ordering::SeqCst);
        if self.reclaim_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        drop(self.sup.spawn("reclaim-compaction", async move {
            loop {
                let due = node.reclaim_due_ms.load(Ordering::SeqCst);
                let now = pairdb_common::now_ms();
                if now >= due {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(due - now)).await;
            }
            node.reclaim_scheduled.store(false, Ordering::SeqCst);
            let store = node.store.clone();
            let started = Instant::now();
            let compaction = node
                .sup
                .spawn_blocking("reclaim-compaction", move || store.engine().compact(true));
            match compaction.await {
                Ok(Ok(())) => tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compacted to reclaim dropped ranges"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "reclaiming compaction failed"),
                Err(e) => tracing::warn!(error = %e, "reclaiming compaction task failed"),
            }
        }));
    }
}
