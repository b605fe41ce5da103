//! The coordinator's Prometheus metrics (SPEC §7): requests, errors by code, latency, replica
//! RPC latency, hints, read repairs. One registry per coordinator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub op: &'static str,
    pub error_code: &'static str,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<OpLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub replica_latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub hints_stored: Counter,
    pub hints_replayed: Counter,
    pub hints_failed: Counter,
    pub hints_cleanup_deleted: Counter,
    pub hints_dropped: Counter,
    pub hints_pending: Gauge,
    pub hints_pending_bytes: Gauge,
    pub hints_oldest_age_seconds: Gauge,
    /// Cluster-wide views the `cluster-gauges` worker refreshes (`crate::gauges`).
    pub ranges_below_quorum: Family<TenantLabels, Gauge>,
    pub ranges_below_replication_factor: Family<TenantLabels, Gauge>,
    pub jobs_running: Family<KindLabels, Gauge>,
    pub job_seconds_since_progress: Family<KindLabels, Gauge>,
    pub metadata_store_up: Gauge,
    pub hints_dropped_by_reason: Family<ReasonLabels, Counter>,
    pub hint_queue_depth: Gauge,
    pub rate_limited: Family<TenantLabels, Counter>,
    pub overloaded: Family<ReasonLabels, Counter>,
    pub context_refusals: Counter,
    /// TLS certificate expiry, refused connections, denied requests.
    pub security: pairdb_common::tls::metrics::SecurityMetrics,
    /// Background worker panics, restarts and state (`pairdb_common::worker`).
    pub workers: pairdb_common::worker::WorkerMetrics,
    /// CPU, memory, fds, threads, build info, open connections.
    pub process: pairdb_common::process::ProcessMetrics,
    /// Requests served without a token in `auth = "permissive"` mode.
    pub anonymous_requests: Counter,
    pub read_repairs: Counter,
    pub quorum_failures: Counter,
    pub nodes_up: Gauge,
    pub nodes_down: Gauge,
    pub ring_version: Gauge,
    pub bootstrap_operations: Family<ChangeLabels, Counter>,
    pub concurrent_bootstraps: Gauge,
    pub cleanup_scheduled: Counter,
    pub cleanup_executed: Counter,
    pub stream_keys: Counter,
    pub stream_bytes: Counter,
    pub pending_replica_writes: Counter,
    pub repair_runs: Family<ResultLabels, Counter>,
    pub repair_ranges: Family<ResultLabels, Counter>,
    pub repair_keys: Counter,
    pub repair_bytes: Counter,
    pub repair_digest_bytes: Counter,
    pub corrupted_entries: Counter,
    pub data_recovery_operations: Counter,
    pub repair_lost: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency as fn() -> Histogram),
            replica_latency: Family::new_with_constructor(latency as fn() -> Histogram),
            hints_stored: Counter::default(),
            hints_replayed: Counter::default(),
            hints_failed: Counter::default(),
            hints_cleanup_deleted: Counter::default(),
            hints_dropped: Counter::default(),
            hints_pending: Gauge::default(),
            hints_pending_bytes: Gauge::default(),
            hints_oldest_age_seconds: Gauge::default(),
            ranges_below_quorum: Family::default(),
            ranges_below_replication_factor: Family::default(),
            jobs_running: Family::default(),
            job_seconds_since_progress: Family::default(),
            metadata_store_up: Gauge::default(),
            hints_dropped_by_reason: Family::default(),
            hint_queue_depth: Gauge::default(),
            rate_limited: Family::default(),
            overloaded: Family::default(),
            context_refusals: Counter::default(),
            security: Default::default(),
            workers: Default::default(),
            process: Default::default(),
            anonymous_requests: Counter::default(),
            read_repairs: Counter::default(),
            quorum_failures: Counter::default(),
            nodes_up: Gauge::default(),
            nodes_down: Gauge::default(),
            ring_version: Gauge::default(),
            bootstrap_operations: Family::default(),
            concurrent_bootstraps: Gauge::default(),
            cleanup_scheduled: Counter::default(),
            cleanup_executed: Counter::default(),
            stream_keys: Counter::default(),
            stream_bytes: Counter::default(),
            pending_replica_writes: Counter::default(),
            repair_runs: Family::default(),
            repair_ranges: Family::default(),
            repair_keys: Counter::default(),
            repair_bytes: Counter::default(),
            repair_digest_bytes: Counter::default(),
            corrupted_entries: Counter::default(),
            data_recovery_operations: Counter::default(),
            repair_lost: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "coordinator_requests",
            "Client requests, by operation",
            m.requests.clone(),
        );
        r.register(
            "coordinator_errors",
            "Client request errors, by operation and pairdb code",
            m.errors.clone(),
        );
        r.register(
            "coordinator_request_duration_seconds",
            "Client request latency",
            m.latency.clone(),
        );
        r.register(
            "replica_rpc_duration_seconds",
            "Coordinator to storage node RPC latency",
            m.replica_latency.clone(),
        );
        r.register(
            "hints_stored",
            "Hints recorded for replicas that missed a write",
            m.hints_stored.clone(),
        );
        r.register(
            "hints_replayed",
            "Hints delivered",
            m.hints_replayed.clone(),
        );
        r.register(
            "hints_failed",
            "Hint deliveries that failed",
            m.hints_failed.clone(),
        );
        r.register(
            "hints_cleanup_deleted",
            "Hints deleted after their TTL or attempts ran out",
            m.hints_cleanup_deleted.clone(),
        );
        r.register(
            "hints_dropped",
            "Hints not recorded (target down past the hint window, over a per-target cap, queue full, or the metadata store failed)",
            m.hints_dropped.clone(),
        );
        r.register(
            "hints_pending",
            "Hints waiting for delivery",
            m.hints_pending.clone(),
        );
        r.register(
            "hints_dropped_by_reason",
            "Hints not recorded, by reason: window, count_cap, bytes_cap, queue_full, store_failed",
            m.hints_dropped_by_reason.clone(),
        );
        r.register(
            "hint_queue_depth",
            "Hints waiting in memory to be written to the metadata store",
            m.hint_queue_depth.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Client requests refused with OVERLOADED by their tenant's rate_limit_rps",
            m.rate_limited.clone(),
        );
        r.register(
            "overloaded_requests",
            "Requests refused with OVERLOADED by an admission limit (concurrency, owned_tasks)",
            m.overloaded.clone(),
        );
        r.register(
            "context_token_refusals",
            "Client context tokens refused (forged, edited, or sealed with a retired key)",
            m.context_refusals.clone(),
        );
        r.register(
            "read_repairs",
            "Replicas repaired by reads",
            m.read_repairs.clone(),
        );
        r.register(
            "quorum_failures",
            "Requests that could not reach their consistency level",
            m.quorum_failures.clone(),
        );
        r.register(
            "storage_nodes_up",
            "Storage nodes this coordinator sees up",
            m.nodes_up.clone(),
        );
        r.register(
            "storage_nodes_down",
            "Storage nodes this coordinator sees down",
            m.nodes_down.clone(),
        );
        r.register(
            "ring_version",
            "Ring version this coordinator routes with",
            m.ring_version.clone(),
        );
        r.register(
            "bootstrap_operations",
            "Topology changes finished by this coordinator, by kind (bootstrap, decommission, replace, cleanup) and result",
            m.bootstrap_operations.clone(),
        );
        r.register(
            "concurrent_bootstraps_gauge",
            "Topology changes this coordinator is driving now",
            m.concurrent_bootstraps.clone(),
        );
        r.register(
            "cleanup_scheduled",
            "Cleanup changes scheduled after topology changes",
            m.cleanup_scheduled.clone(),
        );
        r.register(
            "cleanup_executed",
            "Token ranges dropped by cleanups",
            m.cleanup_executed.clone(),
        );
        r.register(
            "topology_stream_keys",
            "Records moved by range streams this coordinator drove",
            m.stream_keys.clone(),
        );
        r.register(
            "topology_stream_bytes",
            "Record bytes moved by range streams this coordinator drove",
            m.stream_bytes.clone(),
        );
        r.register(
            "pending_replica_writes",
            "Write fan-outs to pending replicas (nodes gaining the key's range)",
            m.pending_replica_writes.clone(),
        );
        r.register(
            "repair_runs",
            "Anti-entropy repair runs finished by this coordinator, by result",
            m.repair_runs.clone(),
        );
        r.register(
            "repair_ranges",
            "Ranges repaired, by result (converged, unconverged, failed)",
            m.repair_ranges.clone(),
        );
        r.register(
            "repair_keys",
            "Records moved between replicas by anti-entropy repair",
            m.repair_keys.clone(),
        );
        r.register(
            "repair_bytes",
            "Record bytes moved between replicas by anti-entropy repair",
            m.repair_bytes.clone(),
        );
        r.register(
            "repair_digest_bytes",
            "Bytes of digests and key listings anti-entropy repair received",
            m.repair_digest_bytes.clone(),
        );
        r.register(
            "corrupted_entries",
            "Corrupt records found by anti-entropy repair",
            m.corrupted_entries.clone(),
        );
        r.register(
            "data_recovery_operations",
            "Corrupt records rebuilt from other replicas",
            m.data_recovery_operations.clone(),
        );
        r.register(
            "repair_lost_records",
            "Corrupt records no replica held intact (DATA_LOSS)",
            m.repair_lost.clone(),
        );
        m.security.register(r);
        m.workers.register(r);
        m.process.register(r, "coordinator");
        r.register(
            "hints_pending_bytes",
            "Payload bytes of hints waiting for their target (cluster-wide)",
            m.hints_pending_bytes.clone(),
        );
        r.register(
            "hints_oldest_age_seconds",
            "Age of the oldest hint still waiting for its target (cluster-wide; 0: none)",
            m.hints_oldest_age_seconds.clone(),
        );
        r.register(
            "tenant_ranges_below_quorum",
            "Ring ranges with fewer live NORMAL replicas than the tenant's write quorum: writes there fail",
            m.ranges_below_quorum.clone(),
        );
        r.register(
            "tenant_ranges_below_replication_factor",
            "Ring ranges with fewer live NORMAL replicas than the tenant's replication factor",
            m.ranges_below_replication_factor.clone(),
        );
        r.register(
            "jobs_running",
            "Running topology changes and repair runs, by kind (cluster-wide)",
            m.jobs_running.clone(),
        );
        r.register(
            "job_seconds_since_progress",
            "Longest time any running job of this kind has gone without its progress changing (as this coordinator watched it)",
            m.job_seconds_since_progress.clone(),
        );
        r.register(
            "metadata_store_up",
            "1 when the last cluster-gauges refresh reached the metadata store",
            m.metadata_store_up.clone(),
        );
        r.register(
            "anonymous_requests",
            "Requests served without a bearer token (auth = permissive); must reach 0 before auth = required",
            m.anonymous_requests.clone(),
        );
        // Known label values start at 0, so dashboards and alerts see a series before the
        // first event.
        for reason in ["concurrency", "owned_tasks"] {
            drop(m.overloaded.get_or_create(&ReasonLabels { reason }));
        }
        Metrics { registry, ..m }
    }

    pub fn error(&self, op: &'static str, code: pairdb_common::ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                op,
                error_code: code.name(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encode metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
