//! The storage node's configuration: one typed struct, from a TOML file, then environment
//! variables (`PAIRDB_*`), then flags (later wins), validated at start with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::disk::DiskThresholds;

/// Every setting of a storage node. Each field has a default; see `pairdb-storage-node --help`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Stable node id (`[a-z0-9][a-z0-9._-]*`, ≤ 63 chars). Default: `$POD_NAME`, else the hostname.
    pub node_id: String,
    /// Data directory: holds `identity.json`, `db/` (RocksDB) and `snapshots/`.
    pub data_dir: PathBuf,
    /// gRPC listen address (`pairdb.StorageNodeService`, health, reflection).
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (`/health`, `/metrics`, `/api/v1/...`).
    pub admin_addr: SocketAddr,
    /// fsync the WAL before acknowledging each write batch (concurrent writers share one fsync).
    pub sync_writes: bool,
    /// What to do at start when the write-ahead log is damaged other than in its last record:
    /// `strict` refuses to start (the error names the damage); `salvage` opens with what
    /// precedes it and serves no client reads until a full repair.
    pub wal_recovery: WalRecovery,
    /// Streamed records of one pull chunk below this many KiB are merged one by one; above, keys
    /// new to the node go in as one ingested table. 0: always a table.
    pub stream_table_min_kb: u64,
    /// RocksDB block cache size in MiB.
    pub block_cache_mb: u64,
    /// Size of one memtable in MiB.
    pub memtable_mb: u64,
    /// Memtables that may exist at once (memtable budget = memtable_mb × max_memtables).
    pub max_memtables: u32,
    /// RocksDB background flush and compaction threads.
    pub background_jobs: u32,
    /// Disk usage sampling interval in milliseconds.
    pub disk_sample_interval_ms: u64,
    /// Disk thresholds (percent of the filesystem) and the throttle's write size limit.
    pub disk: DiskThresholds,
    /// Largest gRPC message accepted or sent, in MiB.
    pub max_message_mb: u64,
    /// Most concurrent gRPC requests per connection.
    pub max_concurrent_requests: usize,
    /// Most gRPC requests the node works on at once over every connection; more are refused
    /// with OVERLOADED (health checks always pass).
    pub max_inflight_requests: usize,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    /// Coordinator gRPC address (`host:port`) to register with at start (AddStorageNode):
    /// a new node bootstraps, a known one is left as it is (its address updated if it moved).
    pub join: Option<String>,
    /// Where this node writes its part of a cluster backup (`pairdbctl backup create`): a
    /// directory outside `data_dir`, ideally another volume (one shared by every process in
    /// production). None: backups are refused.
    pub backup_dir: Option<PathBuf>,
    /// Host other nodes and coordinators reach this node at. Default: the gRPC listen IP, or
    /// (when that is unspecified) `$POD_IP`, else the hostname.
    pub advertise_host: String,
    /// Failure-domain label for zone-aware placement.
    pub zone: String,
    /// Ring tokens for this node when it registers (0 = the default, 150).
    pub virtual_nodes: u32,
    /// Start with a new incarnation epoch (a new actor). The restore path for a data directory
    /// restored whole, `identity.json` included (a volume snapshot): without it the node would
    /// resume an epoch whose later counters other replicas already hold.
    pub new_epoch: bool,
    /// Threads that run range scans (streams, digests, listings, purges), apart from the write
    /// path; scans beyond them queue (up to `max_queued_scans`, then OVERLOADED).
    pub scan_threads: usize,
    /// Scans that may wait for a scan thread before new ones are refused with OVERLOADED.
    pub max_queued_scans: usize,
    /// Longest a range stream waits for its receiver to take the next batch before it is
    /// abandoned (a caller that stops reading cannot pin a scan, its iterator and its thread).
    pub stream_stall_timeout_ms: u64,
    /// Range pulls (`PullRange`) this node runs at once; more are refused with OVERLOADED.
    pub max_concurrent_pulls: usize,
    /// TLS on the gRPC and admin ports (`[tls]`). With it, `StorageNodeService` admits only
    /// peers whose client certificate from the cluster CA carries the coordinator or
    /// storage-node role, and pulls verify the source's certificate names the source node.
    pub tls: pairdb_common::tls::TlsSettings,
    /// Bearer token the admin HTTP API's `/api/v1/...` actions require (`PAIRDB_ADMIN_TOKEN`);
    /// `/health` and `/metrics` stay open. Empty: `admin_token_file`, else no token.
    pub admin_token: String,
    /// File whose first line is the admin token (a mounted Secret).
    pub admin_token_file: Option<PathBuf>,
    /// Run on a non-loopback address without TLS or an admin token (logged loudly at start).
    pub insecure: bool,
}

/// What a storage node does at start when its write-ahead log is damaged (`wal_recovery`). A
/// torn last record — a write in flight at a crash, never acknowledged — is dropped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WalRecovery {
    /// Damage anywhere else stops the node from starting, with an error naming it (Cassandra's
    /// behaviour on a bad commit-log checksum): acknowledged writes are never dropped silently.
    #[default]
    Strict,
    /// Open with everything before the first damaged record and drop the rest (RocksDB's
    /// point-in-time recovery). The node then counts itself out of date, so coordinators send
    /// it no client reads until a full repair has brought the lost writes back from replicas.
    /// Only acts when the log is damaged: a clean start is unaffected.
    Salvage,
}

/// `$name` when set and non-empty, else this machine's hostname.
pub fn env_or_hostname(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
}

fn default_node_id() -> String {
    env_or_hostname("POD_NAME").unwrap_or_else(|| "node-1".to_string())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: default_node_id(),
            data_dir: PathBuf::from("./data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9101)),
            sync_writes: false,
            wal_recovery: WalRecovery::Strict,
            stream_table_min_kb: 1024,
            block_cache_mb: 256,
            memtable_mb: 64,
            max_memtables: 3,
            background_jobs: 2,
            disk_sample_interval_ms: 1000,
            disk: DiskThresholds::default(),
            max_message_mb: 64,
            max_concurrent_requests: 1024,
            max_inflight_requests: 8192,
            log_json: false,
            join: None,
            backup_dir: None,
            advertise_host: String::new(),
            zone: String::new(),
            virtual_nodes: 0,
            new_epoch: false,
            scan_threads: 4,
            max_queued_scans: 64,
            stream_stall_timeout_ms: 30_000,
            max_concurrent_pulls: 8,
            tls: Default::default(),
            admin_token: String::new(),
            admin_token_file: None,
            insecure: false,
        }
    }
}

/// Command-line flags; each also reads a `PAIRDB_*` environment variable. Unset flags keep the
/// file's (or default) value.
#[derive(Debug, Parser, Default)]
#[command(
    name = "pairdb-storage-node",
    version,
    about = "pairdb storage node (RocksDB replica)"
)]
pub struct Args {
    /// TOML file with any `Config` fields.
    #[arg(long, env = "PAIRDB_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "PAIRDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    #[arg(long, env = "PAIRDB_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    #[arg(long, env = "PAIRDB_SYNC_WRITES")]
    pub sync_writes: Option<bool>,
    #[arg(long, env = "PAIRDB_WAL_RECOVERY", value_enum)]
    pub wal_recovery: Option<WalRecovery>,
    #[arg(long, env = "PAIRDB_STREAM_TABLE_MIN_KB")]
    pub stream_table_min_kb: Option<u64>,
    #[arg(long, env = "PAIRDB_BLOCK_CACHE_MB")]
    pub block_cache_mb: Option<u64>,
    #[arg(long, env = "PAIRDB_MEMTABLE_MB")]
    pub memtable_mb: Option<u64>,
    #[arg(long, env = "PAIRDB_DISK_WARNING_PERCENT")]
    pub disk_warning_percent: Option<f64>,
    #[arg(long, env = "PAIRDB_DISK_THROTTLE_PERCENT")]
    pub disk_throttle_percent: Option<f64>,
    #[arg(long, env = "PAIRDB_DISK_BREAKER_PERCENT")]
    pub disk_breaker_percent: Option<f64>,
    #[arg(long, env = "PAIRDB_THROTTLE_MAX_WRITE_BYTES")]
    pub throttle_max_write_bytes: Option<u64>,
    #[arg(long, env = "PAIRDB_DISK_SAMPLE_INTERVAL_MS")]
    pub disk_sample_interval_ms: Option<u64>,
    #[arg(long, env = "PAIRDB_LOG_JSON")]
    pub log_json: Option<bool>,
    /// Register with this coordinator (host:port) at start; a new node bootstraps.
    #[arg(long, env = "PAIRDB_JOIN")]
    pub join: Option<String>,
    /// Directory for this node's parts of cluster backups (outside the data directory).
    #[arg(long, env = "PAIRDB_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    #[arg(long, env = "PAIRDB_ZONE")]
    pub zone: Option<String>,
    /// A file holding the zone (written by the Kubernetes init container
    /// `pairdbctl k8s node-zone` from the node's `topology.kubernetes.io/zone` label); used
    /// when `--zone` is not given.
    #[arg(long, env = "PAIRDB_ZONE_FILE")]
    pub zone_file: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_VIRTUAL_NODES")]
    pub virtual_nodes: Option<u32>,
    /// Start with a new incarnation epoch (after restoring a whole data directory).
    #[arg(long, env = "PAIRDB_NEW_EPOCH")]
    pub new_epoch: Option<bool>,
    /// PEM certificate chain (turns TLS on with --tls-key and --tls-ca).
    #[arg(long, env = "PAIRDB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the cluster CA.
    #[arg(long, env = "PAIRDB_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Also accept plaintext on the TLS ports (rolling enablement only).
    #[arg(long, env = "PAIRDB_TLS_ACCEPT_PLAINTEXT")]
    pub tls_accept_plaintext: Option<bool>,
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Listen on non-loopback addresses without TLS or an admin token.
    #[arg(long, env = "PAIRDB_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// File, then environment and flags (already merged by clap), then validation.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| ConfigError(format!("parse {}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident => $($target:ident).+),* $(,)?) => {
                $(if let Some(v) = args.$field { c.$($target).+ = v; })*
            };
        }
        overlay!(
            node_id => node_id,
            data_dir => data_dir,
            grpc_addr => grpc_addr,
            admin_addr => admin_addr,
            sync_writes => sync_writes,
            wal_recovery => wal_recovery,
            stream_table_min_kb => stream_table_min_kb,
            block_cache_mb => block_cache_mb,
            memtable_mb => memtable_mb,
            disk_warning_percent => disk.warning_percent,
            disk_throttle_percent => disk.throttle_percent,
            disk_breaker_percent => disk.breaker_percent,
            throttle_max_write_bytes => disk.throttle_max_write_bytes,
            disk_sample_interval_ms => disk_sample_interval_ms,
            log_json => log_json,
            advertise_host => advertise_host,
            zone => zone,
            virtual_nodes => virtual_nodes,
            new_epoch => new_epoch,
            tls_accept_plaintext => tls.accept_plaintext,
            admin_token => admin_token,
            insecure => insecure,
        );
        if args.join.is_some() {
            c.join = args.join;
        }
        if args.backup_dir.is_some() {
            c.backup_dir = args.backup_dir;
        }
        if let (true, Some(f)) = (c.zone.is_empty(), &args.zone_file) {
            c.zone = std::fs::read_to_string(f)
                .map_err(|e| ConfigError(format!("zone_file {}: {e}", f.display())))?
                .trim()
                .to_string();
        }
        if args.tls_cert.is_some() {
            c.tls.cert = args.tls_cert;
        }
        if args.tls_key.is_some() {
            c.tls.key = args.tls_key;
        }
        if args.tls_ca.is_some() {
            c.tls.ca = args.tls_ca;
        }
        if args.admin_token_file.is_some() {
            c.admin_token_file = args.admin_token_file;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the message names the field and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        pairdb_common::validate::node_id(&self.node_id)
            .map_err(|e| ConfigError(format!("node_id: {e}")))?;
        pairdb_common::validate::zone(&self.zone).map_err(|e| ConfigError(format!("zone: {e}")))?;
        if !self.advertise_host.is_empty() {
            pairdb_common::validate::host(&self.advertise_host)
                .map_err(|e| ConfigError(format!("advertise_host: {e}")))?;
        }
        if let Some(b) = &self.backup_dir
            && (b.starts_with(&self.data_dir) || self.data_dir.starts_with(b))
        {
            return Err(ConfigError(format!(
                "backup_dir {} must be outside data_dir {} (a backup must survive losing the data directory)",
                b.display(),
                self.data_dir.display()
            )));
        }
        let d = &self.disk;
        if !(0.0 < d.warning_percent
            && d.warning_percent < d.throttle_percent
            && d.throttle_percent < d.breaker_percent
            && d.breaker_percent <= 100.0)
        {
            return Err(ConfigError(format!(
                "disk thresholds must satisfy 0 < warning ({}) < throttle ({}) < breaker ({}) <= 100",
                d.warning_percent, d.throttle_percent, d.breaker_percent
            )));
        }
        if !(0.0..5.0).contains(&d.hysteresis_percent) {
            return Err(ConfigError(
                "disk.hysteresis_percent must be in [0, 5)".into(),
            ));
        }
        if self.block_cache_mb < 8 {
            return Err(ConfigError("block_cache_mb must be at least 8".into()));
        }
        if !(1..=4096).contains(&self.memtable_mb) || !(2..=16).contains(&self.max_memtables) {
            return Err(ConfigError(
                "memtable_mb must be 1-4096 and max_memtables 2-16".into(),
            ));
        }
        if self.disk_sample_interval_ms == 0 || self.disk_sample_interval_ms > 60_000 {
            return Err(ConfigError(
                "disk_sample_interval_ms must be 1-60000".into(),
            ));
        }
        if !(64..=256).contains(&self.max_message_mb) {
            return Err(ConfigError(
                "max_message_mb must be 64-256 (key states are capped so that every one fits 64 MiB)"
                    .into(),
            ));
        }
        if self.max_concurrent_requests == 0 || self.max_inflight_requests == 0 {
            return Err(ConfigError(
                "max_concurrent_requests and max_inflight_requests must be at least 1".into(),
            ));
        }
        if !(1..=64).contains(&self.scan_threads)
            || self.max_queued_scans > 100_000
            || !(1..=256).contains(&self.max_concurrent_pulls)
        {
            return Err(ConfigError(
                "scan_threads must be 1-64, max_queued_scans at most 100000, max_concurrent_pulls 1-256"
                    .into(),
            ));
        }
        if !(1_000..=3_600_000).contains(&self.stream_stall_timeout_ms) {
            return Err(ConfigError(
                "stream_stall_timeout_ms must be 1000-3600000".into(),
            ));
        }
        if self.background_jobs == 0 {
            return Err(ConfigError("background_jobs must be at least 1".into()));
        }
        self.tls.validate().map_err(ConfigError)?;
        let token = self.admin_token().map_err(ConfigError)?;
        self.exposure(token.is_some())?;
        Ok(())
    }

    /// The admin HTTP token, if configured.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        pairdb_common::auth::read_bootstrap_token(
            &self.admin_token,
            self.admin_token_file.as_deref(),
        )
    }

    /// Secure by default: `Err` when listening beyond loopback without TLS or an admin token
    /// (and not `insecure`); `Ok(Some(warning))` when `insecure` allowed it.
    pub fn exposure(&self, has_admin_token: bool) -> Result<Option<String>, ConfigError> {
        pairdb_common::tls::check_exposure(
            &[("gRPC", self.grpc_addr), ("admin", self.admin_addr)],
            &self.tls,
            (!has_admin_token).then_some("an admin token (admin_token or admin_token_file)"),
            self.insecure,
        )
        .map_err(ConfigError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let mut c = Config::default();
        c.disk.throttle_percent = 99.0;
        assert!(c.validate().unwrap_err().to_string().contains("throttle"));
        let c = Config {
            node_id: "Bad Id".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("node_id"));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "node_id = \"n7\"\nblock_cache_mb = 64\n[disk]\nbreaker_percent = 97.0\n",
        )
        .unwrap();
        let args = Args {
            config: Some(path.clone()),
            block_cache_mb: Some(32),
            ..Args::default()
        };
        let c = Config::load(args).unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.block_cache_mb, c.disk.breaker_percent),
            ("n7", 32, 97.0)
        );
        std::fs::write(&path, "nodeid = 1\n").unwrap();
        let err = Config::load(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
