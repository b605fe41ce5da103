//! The storage node's Prometheus metrics (SPEC §7), one registry per node so several nodes in
//! one process (`pairdbctl dev`, tests) each export their own, every series labelled
//! `node="<node id>"`. Names are the storage-node operations guide's wherever it has one
//! (`write_requests_total`, `read_requests_total`, `write_duration_seconds`,
//! `read_duration_seconds`, `errors_total{error_code}`, `cache_hits_total`,
//! `cache_requests_total`, `disk_*`, `checksum_failures_total`, `corrupted_entries_total`,
//! `data_recovery_operations_total`, `compaction_bytes_reclaimed_total`); the rest keep
//! pairdb's own. Counters get the `_total` suffix from the encoder. runbooks/monitoring.md
//! lists every metric.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::EngineStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub op: &'static str,
    pub error_code: &'static str,
}

/// A counter that follows a running total kept elsewhere (a RocksDB ticker): each refresh adds
/// what the total grew by since the last one, so concurrent scrapes never count twice.
#[derive(Default)]
pub struct TotalCounter {
    counter: Counter,
    seen: AtomicU64,
}

impl TotalCounter {
    pub fn follow(&self, total: u64) {
        let before = self.seen.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.counter.inc_by(total - before);
        }
    }

    fn metric(&self) -> Counter {
        self.counter.clone()
    }
}

/// Which of the guide's request families an RPC counts in: `Some(true)` writes, `Some(false)`
/// reads, `None` neither (streams, digests, listings).
pub fn is_write(op: &str) -> Option<bool> {
    match op {
        "write" | "batch_write" | "apply" | "batch_apply" | "repair" => Some(true),
        "read" | "batch_read" => Some(false),
        _ => None,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    pub level: String,
}

fn latency_histogram() -> Histogram {
    // 20 µs … ~5 s.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 18))
}

/// Every metric of a storage node.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<OpLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub write_requests: Counter,
    pub read_requests: Counter,
    pub write_duration: Histogram,
    pub read_duration: Histogram,
    pub cache_hits: TotalCounter,
    pub cache_misses: TotalCounter,
    pub cache_requests: TotalCounter,
    pub compaction_read_bytes: TotalCounter,
    pub compaction_write_bytes: TotalCounter,
    pub compaction_bytes_reclaimed: TotalCounter,
    pub estimated_keys: Gauge,
    pub memtable_entries: Gauge,
    pub wal_files: Gauge,
    pub wal_bytes: Gauge,
    pub sst_bytes: Gauge,
    pub checksum_failures: Counter,
    pub corrupted_entries: Counter,
    pub tombstones_purged: Counter,
    pub data_recovery_operations: Counter,
    pub disk_usage_percent: Gauge<f64, AtomicU64>,
    pub disk_available_bytes: Gauge,
    pub disk_state: Gauge,
    pub disk_throttle_events: Counter,
    pub disk_circuit_breaker_events: Counter,
    pub disk_full_rejections: Counter,
    pub disk_throttle_rejections: Counter,
    pub sibling_cap_folds: Counter,
    pub sibling_warnings: Counter,
    pub stream_keys_sent: Counter,
    pub stream_bytes_sent: Counter,
    pub stream_keys_received: Counter,
    pub stream_keys_ingested: Counter,
    pub stream_bytes_received: Counter,
    pub applied_versions: Family<OpLabels, Counter>,
    pub maintenance_mode: Gauge,
    pub storage_engine_failed: Gauge,
    pub memtable_bytes: Gauge,
    pub sst_files: Family<LevelLabels, Gauge>,
    pub compaction_pending_bytes: Gauge,
    pub running_compactions: Gauge,
    pub block_cache_usage_bytes: Gauge,
    pub block_cache_capacity_bytes: Gauge,
    pub block_cache_hit_ratio: Gauge<f64, AtomicU64>,
    pub counter_refusals: Counter,
    /// Small writes sent to the blocking pool because RocksDB was stalling writes.
    pub stalled_writes_offloaded: Counter,
    pub state_cap_refusals: Counter,
    pub stream_records_refused: Counter,
    pub scans_refused: Counter,
    pub streams_stalled: Counter,
    pub requests_refused: Counter,
    /// TLS certificate expiry, refused connections, denied requests.
    pub security: pairdb_common::tls::metrics::SecurityMetrics,
    /// Background worker panics, restarts and state (`pairdb_common::worker`).
    pub workers: pairdb_common::worker::WorkerMetrics,
    /// CPU, memory, fds, threads, build info, open connections.
    pub process: pairdb_common::process::ProcessMetrics,
}

impl Metrics {
    pub fn new(node_id: &str) -> Metrics {
        let mut registry = Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node_id.to_string()),
            )]
            .into_iter(),
        );
        let m = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            write_requests: Counter::default(),
            read_requests: Counter::default(),
            write_duration: latency_histogram(),
            read_duration: latency_histogram(),
            cache_hits: TotalCounter::default(),
            cache_misses: TotalCounter::default(),
            cache_requests: TotalCounter::default(),
            compaction_read_bytes: TotalCounter::default(),
            compaction_write_bytes: TotalCounter::default(),
            compaction_bytes_reclaimed: TotalCounter::default(),
            estimated_keys: Gauge::default(),
            memtable_entries: Gauge::default(),
            wal_files: Gauge::default(),
            wal_bytes: Gauge::default(),
            sst_bytes: Gauge::default(),
            checksum_failures: Counter::default(),
            corrupted_entries: Counter::default(),
            tombstones_purged: Counter::default(),
            data_recovery_operations: Counter::default(),
            disk_usage_percent: Gauge::default(),
            disk_available_bytes: Gauge::default(),
            disk_state: Gauge::default(),
            disk_throttle_events: Counter::default(),
            disk_circuit_breaker_events: Counter::default(),
            disk_full_rejections: Counter::default(),
            disk_throttle_rejections: Counter::default(),
            sibling_cap_folds: Counter::default(),
            sibling_warnings: Counter::default(),
            stream_keys_sent: Counter::default(),
            stream_bytes_sent: Counter::default(),
            stream_keys_received: Counter::default(),
            stream_keys_ingested: Counter::default(),
            stream_bytes_received: Counter::default(),
            applied_versions: Family::default(),
            maintenance_mode: Gauge::default(),
            storage_engine_failed: Gauge::default(),
            memtable_bytes: Gauge::default(),
            sst_files: Family::default(),
            compaction_pending_bytes: Gauge::default(),
            running_compactions: Gauge::default(),
            block_cache_usage_bytes: Gauge::default(),
            block_cache_capacity_bytes: Gauge::default(),
            block_cache_hit_ratio: Gauge::default(),
            counter_refusals: Counter::default(),
            stalled_writes_offloaded: Counter::default(),
            state_cap_refusals: Counter::default(),
            stream_records_refused: Counter::default(),
            scans_refused: Counter::default(),
            streams_stalled: Counter::default(),
            requests_refused: Counter::default(),
            security: Default::default(),
            workers: Default::default(),
            process: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "storage_requests",
            "Storage node RPCs served, by operation",
            m.requests.clone(),
        );
        r.register(
            "errors",
            "Storage node RPC errors, by operation and pairdb error code",
            m.errors.clone(),
        );
        r.register(
            "write_requests",
            "Write RPCs served (write, batch_write, apply, batch_apply, repair; by operation: storage_requests_total{op})",
            m.write_requests.clone(),
        );
        r.register(
            "read_requests",
            "Read RPCs served (read, batch_read; by operation: storage_requests_total{op})",
            m.read_requests.clone(),
        );
        r.register(
            "write_duration_seconds",
            "Latency of write RPCs",
            m.write_duration.clone(),
        );
        r.register(
            "read_duration_seconds",
            "Latency of read RPCs",
            m.read_duration.clone(),
        );
        r.register("cache_hits", "Block cache hits", m.cache_hits.metric());
        r.register(
            "cache_misses",
            "Block cache misses",
            m.cache_misses.metric(),
        );
        r.register(
            "cache_requests",
            "Block cache lookups (hits + misses)",
            m.cache_requests.metric(),
        );
        r.register(
            "compaction_read_bytes",
            "Bytes compactions read",
            m.compaction_read_bytes.metric(),
        );
        r.register(
            "compaction_write_bytes",
            "Bytes compactions wrote",
            m.compaction_write_bytes.metric(),
        );
        r.register(
            "compaction_bytes_reclaimed",
            "Bytes compactions read minus bytes they wrote: space given back",
            m.compaction_bytes_reclaimed.metric(),
        );
        r.register(
            "storage_keys_estimated",
            "Records in the data space (RocksDB's estimate, counting overwrites until compaction drops them)",
            m.estimated_keys.clone(),
        );
        r.register(
            "rocksdb_memtable_entries",
            "Entries in the memtables",
            m.memtable_entries.clone(),
        );
        r.register(
            "wal_files",
            "Live write-ahead-log files",
            m.wal_files.clone(),
        );
        r.register(
            "wal_bytes",
            "Bytes in live write-ahead-log files",
            m.wal_bytes.clone(),
        );
        r.register(
            "rocksdb_sst_bytes",
            "Bytes in SST files",
            m.sst_bytes.clone(),
        );
        r.register(
            "storage_request_duration_seconds",
            "Storage node RPC latency",
            m.latency.clone(),
        );
        r.register(
            "checksum_failures",
            "Records whose CRC32 or engine checksum failed when read",
            m.checksum_failures.clone(),
        );
        r.register(
            "corrupted_entries",
            "Corrupt records found by integrity scans",
            m.corrupted_entries.clone(),
        );
        r.register(
            "tombstones_purged",
            "Tombstones garbage-collected after every replica was found to hold them",
            m.tombstones_purged.clone(),
        );
        r.register(
            "data_recovery_operations",
            "Corrupt records replaced by Repair",
            m.data_recovery_operations.clone(),
        );
        r.register(
            "disk_usage_percent",
            "Filesystem usage of the data directory",
            m.disk_usage_percent.clone(),
        );
        r.register(
            "disk_available_bytes",
            "Bytes available on the data directory's filesystem",
            m.disk_available_bytes.clone(),
        );
        r.register(
            "disk_state",
            "Disk state: 0 normal, 1 warning, 2 throttled, 3 circuit broken",
            m.disk_state.clone(),
        );
        r.register(
            "disk_throttle_events",
            "Disk throttle engaged or disengaged",
            m.disk_throttle_events.clone(),
        );
        r.register(
            "disk_circuit_breaker_events",
            "Disk circuit breaker engaged or disengaged",
            m.disk_circuit_breaker_events.clone(),
        );
        r.register(
            "disk_full_rejections",
            "Writes refused with DISK_FULL",
            m.disk_full_rejections.clone(),
        );
        r.register(
            "disk_throttle_rejections",
            "Writes refused with DISK_THROTTLED",
            m.disk_throttle_rejections.clone(),
        );
        r.register(
            "sibling_cap_folds",
            "Siblings folded by LWW because a key reached its sibling cap",
            m.sibling_cap_folds.clone(),
        );
        r.register(
            "sibling_warnings",
            "Writes that left a key above the sibling warning level",
            m.sibling_warnings.clone(),
        );
        r.register(
            "stream_keys_sent",
            "Records sent by range streams",
            m.stream_keys_sent.clone(),
        );
        r.register(
            "stream_bytes_sent",
            "Record bytes sent by range streams",
            m.stream_bytes_sent.clone(),
        );
        r.register(
            "stream_keys_received",
            "Records received and applied by range pulls",
            m.stream_keys_received.clone(),
        );
        r.register(
            "stream_keys_ingested",
            "Records of range pulls that went in as part of an ingested table",
            m.stream_keys_ingested.clone(),
        );
        r.register(
            "stream_bytes_received",
            "Record bytes received by range pulls",
            m.stream_bytes_received.clone(),
        );
        r.register(
            "applied_states",
            "Key states merged, by origin",
            m.applied_versions.clone(),
        );
        r.register(
            "maintenance_mode",
            "1 while the node is in maintenance (drain) mode",
            m.maintenance_mode.clone(),
        );
        r.register(
            "storage_engine_failed",
            "1 once a write failed with an I/O error (a failed WAL sync): writes are refused until the node restarts",
            m.storage_engine_failed.clone(),
        );
        r.register(
            "rocksdb_memtable_bytes",
            "Memory held by memtables",
            m.memtable_bytes.clone(),
        );
        r.register(
            "rocksdb_sst_files",
            "SST files per level",
            m.sst_files.clone(),
        );
        r.register(
            "rocksdb_compaction_pending_bytes",
            "Estimated bytes compaction still has to rewrite",
            m.compaction_pending_bytes.clone(),
        );
        r.register(
            "rocksdb_running_compactions",
            "Compactions running now",
            m.running_compactions.clone(),
        );
        r.register(
            "rocksdb_block_cache_usage_bytes",
            "Block cache memory in use",
            m.block_cache_usage_bytes.clone(),
        );
        r.register(
            "rocksdb_block_cache_capacity_bytes",
            "Block cache capacity",
            m.block_cache_capacity_bytes.clone(),
        );
        r.register(
            "rocksdb_block_cache_hit_ratio",
            "Block cache hits / lookups since start",
            m.block_cache_hit_ratio.clone(),
        );
        r.register(
            "dot_counter_refusals",
            "Inputs refused for naming this replica with a counter beyond its reservation (forged, or a directory restored whole)",
            m.counter_refusals.clone(),
        );
        r.register(
            "stalled_writes_offloaded",
            "Small write RPCs run on the blocking pool instead of inline because RocksDB was delaying or stopping writes",
            m.stalled_writes_offloaded.clone(),
        );
        r.register(
            "state_cap_refusals",
            "Writes and merges refused because the key's state would pass its cap",
            m.state_cap_refusals.clone(),
        );
        r.register(
            "stream_records_refused",
            "Streamed records refused (undecodable or invalid for this node), never stored",
            m.stream_records_refused.clone(),
        );
        r.register(
            "scans_refused",
            "Scans (streams, digests, listings) refused with OVERLOADED: every scan thread busy and the queue full",
            m.scans_refused.clone(),
        );
        r.register(
            "streams_stalled",
            "Range streams abandoned because their receiver stopped taking batches",
            m.streams_stalled.clone(),
        );
        r.register(
            "requests_refused",
            "gRPC requests refused with OVERLOADED: the node was working on max_inflight_requests",
            m.requests_refused.clone(),
        );
        m.security.register(r);
        m.workers.register(r);
        m.process.register(r, "storage-node");
        Metrics { registry, ..m }
    }

    /// Counts an RPC error by its pairdb code.
    pub fn error(&self, op: &'static str, code: pairdb_common::ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                op,
                error_code: code.name(),
            })
            .inc();
    }

    /// Counts one served RPC and its latency: in `storage_requests_total{op}` and, for reads
    /// and writes, the guide's `read_requests_total`/`write_requests_total` and durations.
    pub fn served(&self, op: &'static str, secs: f64) {
        let labels = OpLabels { op };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(secs);
        match is_write(op) {
            Some(true) => {
                self.write_requests.inc();
                self.write_duration.observe(secs);
            }
            Some(false) => {
                self.read_requests.inc();
                self.read_duration.observe(secs);
            }
            None => {}
        }
    }

    /// Refreshes the engine gauges and renders the registry as Prometheus text.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.memtable_bytes.set(stats.memtable_bytes as i64);
        self.storage_engine_failed.set(stats.failed as i64);
        for (level, n) in stats.sst_files_by_level.iter().enumerate() {
            self.sst_files
                .get_or_create(&LevelLabels {
                    level: level.to_string(),
                })
                .set(*n as i64);
        }
        self.compaction_pending_bytes
            .set(stats.pending_compaction_bytes as i64);
        self.running_compactions
            .set(stats.running_compactions as i64);
        self.block_cache_usage_bytes
            .set(stats.block_cache_usage_bytes as i64);
        self.block_cache_capacity_bytes
            .set(stats.block_cache_capacity_bytes as i64);
        let lookups = stats.block_cache_hits + stats.block_cache_misses;
        if lookups > 0 {
            self.block_cache_hit_ratio
                .set(stats.block_cache_hits as f64 / lookups as f64);
        }
        self.cache_hits.follow(stats.block_cache_hits);
        self.cache_misses.follow(stats.block_cache_misses);
        self.cache_requests.follow(lookups);
        self.compaction_read_bytes
            .follow(stats.compaction_read_bytes);
        self.compaction_write_bytes
            .follow(stats.compaction_write_bytes);
        self.compaction_bytes_reclaimed.follow(
            stats
                .compaction_read_bytes
                .saturating_sub(stats.compaction_write_bytes),
        );
        self.estimated_keys.set(stats.estimated_keys as i64);
        self.memtable_entries.set(stats.memtable_entries as i64);
        self.wal_files.set(stats.live_wal_files as i64);
        self.wal_bytes.set(stats.live_wal_bytes as i64);
        self.sst_bytes.set(stats.sst_total_bytes as i64);
        self.process.refresh();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encode metrics failed");
        }
        out
    }
}
