//! The coordinator's configuration: one typed struct from a TOML file, then `PAIRDB_*`
//! environment variables, then flags; validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every setting of a coordinator (see `pairdb-coordinator --help`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity used for hint claims and logs. Default: `$POD_NAME`, else hostname + pid.
    pub coordinator_id: String,
    /// `postgres://…` (production) or `sqlite://…` (embedded).
    pub database_url: String,
    /// Apply migrations at start.
    pub migrate_on_start: bool,
    /// gRPC listen address (`pairdb.CoordinatorService`, health, reflection).
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (`/health`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Default client request deadline in ms.
    pub request_timeout_ms: u64,
    /// Deadline of one coordinator → storage node RPC in ms.
    pub replica_timeout_ms: u64,
    /// Heartbeat interval in ms.
    pub heartbeat_ms: u64,
    /// Heartbeat deadline in ms.
    pub heartbeat_timeout_ms: u64,
    /// Consecutive misses after which a node is DOWN for routing.
    pub down_after_misses: u32,
    /// How often `ring_version` is polled, in ms (ring changes are seen within this).
    pub ring_poll_ms: u64,
    /// How often tenant settings are reloaded, in ms.
    pub tenant_refresh_ms: u64,
    /// Record hints for replicas that miss writes.
    pub hints_enabled: bool,
    /// Hint replay interval in ms.
    pub hint_replay_interval_ms: u64,
    /// Delivery attempts before a hint is dropped.
    pub max_replay_attempts: u32,
    /// Hints older than this are dropped (must stay below the tombstone grace), in seconds.
    pub hint_ttl_secs: u64,
    /// No hints are recorded for a node down longer than this, in seconds.
    pub max_hint_window_secs: u64,
    /// Most pending hints per target node.
    pub max_hints_per_target: u64,
    /// Largest gRPC message, in MiB.
    pub max_message_mb: u64,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Lease of a job's driver (topology changes and repair runs); another coordinator takes
    /// the job over after it expires. (`job_lease_ms` is accepted as its old name.)
    #[serde(alias = "job_lease_ms")]
    pub job_lease_ms: u64,
    /// How often the topology worker looks for changes to drive.
    pub change_poll_ms: u64,
    /// Streaming changes (bootstrap, decommission, replace) that may run at once.
    pub max_concurrent_bootstraps: usize,
    /// Per-stream throttle in bytes per second (0 = unthrottled).
    pub stream_max_bytes_per_sec: u64,
    /// Records per streamed batch.
    pub stream_batch_size: u32,
    /// Ranges of one change streamed at once.
    pub stream_parallelism: usize,
    /// Grace period before surplus ranges are dropped after a change (default 24 h).
    pub cleanup_grace_secs: u64,
    /// On SIGTERM, how long the coordinator keeps serving while reporting not ready, before it
    /// closes its gRPC port and finishes what is in flight (time for a load balancer that
    /// probes readiness to move traffic; Kubernetes' preStop sleep does this, so 0 there).
    pub shutdown_drain_delay_ms: u64,
    /// Longest wait for hints to a gaining node to drain before a change finishes.
    pub hint_drain_timeout_ms: u64,
    /// Where this coordinator writes a cluster backup's manifest and metadata part
    /// (`pairdbctl backup create`); every storage node writes its part under its own
    /// `backup_dir`. One shared volume, the same path on every process, in production.
    /// None: backups are refused.
    pub backup_dir: Option<PathBuf>,
    /// Complete backups kept: after a new one completes, the oldest beyond this are deleted
    /// (0 = keep all).
    pub backup_retention: u32,
    /// Longest one storage node may take to write its part of a backup.
    pub backup_part_timeout_ms: u64,
    /// A cluster-wide anti-entropy repair starts this long after the last one started
    /// (default 6 h; 0 = only on demand).
    pub repair_interval_secs: u64,
    /// Ranges one repair compares at once.
    pub repair_parallelism: usize,
    /// Throttle of each repair transfer at its source, bytes per second (0 = unthrottled).
    pub repair_max_bytes_per_sec: u64,
    /// Tombstones are purged only when this old and only by a repair that found every replica
    /// of their range holding them (default 10 days; must exceed `hint_ttl_secs`).
    pub tombstone_gc_grace_secs: u64,
    /// How often the cluster context keys are reloaded from the metadata store (a key rotated
    /// elsewhere is also picked up at once, by the first token sealed with it).
    pub context_key_refresh_ms: u64,
    /// gRPC requests this coordinator works on at once; more are refused with OVERLOADED.
    pub max_concurrent_requests: usize,
    /// Owned replication and read-repair tasks in flight (one per client request until every
    /// replica answered); beyond it requests are refused with OVERLOADED.
    pub max_owned_tasks: usize,
    /// Hints waiting in memory to be stored; beyond it hints are dropped (and counted).
    pub hint_queue_max: usize,
    /// Payload MiB of hints waiting in memory to be stored.
    pub hint_queue_max_mb: u64,
    /// Connections of the hint store's own pool (apart from the main pool).
    pub hint_db_connections: u32,
    /// Most payload bytes of pending hints per target node.
    pub max_hint_bytes_per_target: u64,
    /// First delay before a failed hint delivery is tried again (doubles per attempt, at most
    /// 5 minutes).
    pub hint_retry_base_ms: u64,
    /// TLS on the gRPC and admin ports and to storage nodes (`[tls]`): this certificate (role
    /// coordinator) is also the client certificate storage nodes demand, and the CA verifies
    /// them (each node's certificate must name its node id).
    pub tls: pairdb_common::tls::TlsSettings,
    /// Bearer tokens: `off`, `permissive` (checked when sent; a request without one is
    /// served and counted: only while rolling tokens out) or `required`.
    pub auth: crate::auth::AuthMode,
    /// Bootstrap admin token (`PAIRDB_ADMIN_TOKEN`), so a fresh cluster can be administered;
    /// only its hash is kept. Empty: `admin_token_file`, else none.
    pub admin_token: String,
    /// File whose first line is the bootstrap admin token (a mounted Secret).
    pub admin_token_file: Option<PathBuf>,
    /// How often the tokens table is reloaded: the longest a token revoked on another
    /// coordinator keeps working here.
    pub token_refresh_ms: u64,
    /// Run on a non-loopback address without TLS or required tokens (logged at every start).
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        let id = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                format!("{host}-{}", std::process::id())
            });
        Config {
            coordinator_id: id,
            database_url: "sqlite://./pairdb-meta.db".into(),
            migrate_on_start: true,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
            request_timeout_ms: 5_000,
            replica_timeout_ms: 2_000,
            heartbeat_ms: 1_000,
            heartbeat_timeout_ms: 800,
            down_after_misses: 3,
            ring_poll_ms: 500,
            tenant_refresh_ms: 1_000,
            hints_enabled: true,
            hint_replay_interval_ms: 1_000,
            max_replay_attempts: 3,
            hint_ttl_secs: 7 * 24 * 3600,
            max_hint_window_secs: 3 * 3600,
            max_hints_per_target: 1_000_000,
            max_message_mb: 64,
            log_json: false,
            job_lease_ms: 10_000,
            change_poll_ms: 1_000,
            max_concurrent_bootstraps: 1,
            stream_max_bytes_per_sec: 256 << 20,
            stream_batch_size: 512,
            stream_parallelism: 2,
            cleanup_grace_secs: 24 * 3600,
            shutdown_drain_delay_ms: 0,
            hint_drain_timeout_ms: 30_000,
            backup_dir: None,
            backup_retention: 7,
            backup_part_timeout_ms: 600_000,
            repair_interval_secs: 6 * 3600,
            repair_parallelism: 2,
            repair_max_bytes_per_sec: 64 << 20,
            tombstone_gc_grace_secs: 10 * 24 * 3600,
            context_key_refresh_ms: 10_000,
            max_concurrent_requests: 4096,
            max_owned_tasks: 16_384,
            hint_queue_max: 10_000,
            hint_queue_max_mb: 64,
            hint_db_connections: 2,
            max_hint_bytes_per_target: 1 << 30,
            hint_retry_base_ms: 1_000,
            tls: Default::default(),
            auth: crate::auth::AuthMode::Off,
            admin_token: String::new(),
            admin_token_file: None,
            token_refresh_ms: 5_000,
            insecure: false,
        }
    }
}

/// Flags and environment; unset ones keep the file's (or default) value.
#[derive(Debug, clap::Args, Default)]
pub struct Args {
    /// TOML file with any `Config` fields.
    #[arg(long, env = "PAIRDB_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long, env = "PAIRDB_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    #[arg(long, env = "PAIRDB_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    #[arg(long, env = "PAIRDB_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    #[arg(long, env = "PAIRDB_MIGRATE_ON_START")]
    pub migrate_on_start: Option<bool>,
    #[arg(long, env = "PAIRDB_HINTS_ENABLED")]
    pub hints_enabled: Option<bool>,
    #[arg(long, env = "PAIRDB_LOG_JSON")]
    pub log_json: Option<bool>,
    /// Grace period before surplus ranges are dropped after a topology change.
    #[arg(long, env = "PAIRDB_CLEANUP_GRACE_SECS")]
    pub cleanup_grace_secs: Option<u64>,
    /// On SIGTERM, keep serving this long while not ready before draining.
    #[arg(long, env = "PAIRDB_SHUTDOWN_DRAIN_DELAY_MS")]
    pub shutdown_drain_delay_ms: Option<u64>,
    /// Directory for cluster backups' manifests and metadata parts.
    #[arg(long, env = "PAIRDB_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Complete backups kept (0 = all).
    #[arg(long, env = "PAIRDB_BACKUP_RETENTION")]
    pub backup_retention: Option<u32>,
    #[arg(long, env = "PAIRDB_MAX_CONCURRENT_BOOTSTRAPS")]
    pub max_concurrent_bootstraps: Option<usize>,
    /// Per-stream throttle in bytes per second (0 = unthrottled).
    #[arg(long, env = "PAIRDB_STREAM_MAX_BYTES_PER_SEC")]
    pub stream_max_bytes_per_sec: Option<u64>,
    /// Lease of a job's driver in ms (topology changes and repairs).
    #[arg(long, env = "PAIRDB_JOB_LEASE_MS", alias = "change-lease-ms")]
    pub job_lease_ms: Option<u64>,
    /// Seconds between scheduled anti-entropy repairs (0 = only on demand).
    #[arg(long, env = "PAIRDB_REPAIR_INTERVAL_SECS")]
    pub repair_interval_secs: Option<u64>,
    /// Per-transfer repair throttle in bytes per second (0 = unthrottled).
    #[arg(long, env = "PAIRDB_REPAIR_MAX_BYTES_PER_SEC")]
    pub repair_max_bytes_per_sec: Option<u64>,
    /// Tombstone GC grace in seconds (must exceed the hint TTL).
    #[arg(long, env = "PAIRDB_TOMBSTONE_GC_GRACE_SECS")]
    pub tombstone_gc_grace_secs: Option<u64>,
    #[arg(long, env = "PAIRDB_HINT_TTL_SECS")]
    pub hint_ttl_secs: Option<u64>,
    /// Seconds a node may be down and still get hints (at most the hint TTL).
    #[arg(long, env = "PAIRDB_MAX_HINT_WINDOW_SECS")]
    pub max_hint_window_secs: Option<u64>,
    /// Most pending hints per target node (over the cluster, as of the last replay cycle).
    #[arg(long, env = "PAIRDB_MAX_HINTS_PER_TARGET")]
    pub max_hints_per_target: Option<u64>,
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
    /// Bearer tokens: off, permissive or required.
    #[arg(long, env = "PAIRDB_AUTH")]
    pub auth: Option<crate::auth::AuthMode>,
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[arg(long, env = "PAIRDB_TOKEN_REFRESH_MS")]
    pub token_refresh_ms: Option<u64>,
    /// Listen on non-loopback addresses without TLS or required tokens.
    #[arg(long, env = "PAIRDB_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("read {}: {e}", p.display())))?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("parse {}: {e}", p.display())))?
            }
            None => Config::default(),
        };
        if let Some(v) = args.database_url {
            c.database_url = v;
        }
        if let Some(v) = args.grpc_addr {
            c.grpc_addr = v;
        }
        if let Some(v) = args.admin_addr {
            c.admin_addr = v;
        }
        if let Some(v) = args.coordinator_id {
            c.coordinator_id = v;
        }
        if let Some(v) = args.migrate_on_start {
            c.migrate_on_start = v;
        }
        if let Some(v) = args.hints_enabled {
            c.hints_enabled = v;
        }
        if let Some(v) = args.log_json {
            c.log_json = v;
        }
        if let Some(v) = args.shutdown_drain_delay_ms {
            c.shutdown_drain_delay_ms = v;
        }
        if let Some(v) = args.cleanup_grace_secs {
            c.cleanup_grace_secs = v;
        }
        if args.backup_dir.is_some() {
            c.backup_dir = args.backup_dir;
        }
        if let Some(v) = args.backup_retention {
            c.backup_retention = v;
        }
        if let Some(v) = args.max_concurrent_bootstraps {
            c.max_concurrent_bootstraps = v;
        }
        if let Some(v) = args.stream_max_bytes_per_sec {
            c.stream_max_bytes_per_sec = v;
        }
        if let Some(v) = args.job_lease_ms {
            c.job_lease_ms = v;
        }
        if let Some(v) = args.repair_interval_secs {
            c.repair_interval_secs = v;
        }
        if let Some(v) = args.repair_max_bytes_per_sec {
            c.repair_max_bytes_per_sec = v;
        }
        if let Some(v) = args.tombstone_gc_grace_secs {
            c.tombstone_gc_grace_secs = v;
        }
        if let Some(v) = args.hint_ttl_secs {
            c.hint_ttl_secs = v;
        }
        if let Some(v) = args.max_hints_per_target {
            c.max_hints_per_target = v;
        }
        if let Some(v) = args.max_hint_window_secs {
            c.max_hint_window_secs = v;
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
        if let Some(v) = args.tls_accept_plaintext {
            c.tls.accept_plaintext = v;
        }
        if let Some(v) = args.auth {
            c.auth = v;
        }
        if let Some(v) = args.admin_token {
            c.admin_token = v;
        }
        if args.admin_token_file.is_some() {
            c.admin_token_file = args.admin_token_file;
        }
        if let Some(v) = args.token_refresh_ms {
            c.token_refresh_ms = v;
        }
        if let Some(v) = args.insecure {
            c.insecure = v;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.database_url.starts_with("postgres") || self.database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError(format!(
                "database_url {:?} must start with postgres:// or sqlite://",
                self.database_url
            )));
        }
        if self.coordinator_id.is_empty() {
            return Err(ConfigError("coordinator_id must not be empty".into()));
        }
        for (name, v) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("replica_timeout_ms", self.replica_timeout_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("ring_poll_ms", self.ring_poll_ms),
            ("tenant_refresh_ms", self.tenant_refresh_ms),
            ("hint_replay_interval_ms", self.hint_replay_interval_ms),
            ("job_lease_ms", self.job_lease_ms),
            ("change_poll_ms", self.change_poll_ms),
            ("context_key_refresh_ms", self.context_key_refresh_ms),
            ("hint_retry_base_ms", self.hint_retry_base_ms),
            ("token_refresh_ms", self.token_refresh_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                return Err(ConfigError(format!("{name} must be 1-3600000")));
            }
        }
        if self.shutdown_drain_delay_ms > 300_000 {
            return Err(ConfigError(
                "shutdown_drain_delay_ms must be at most 300000 (a stop must not wait longer than any termination grace)"
                    .into(),
            ));
        }
        if self.ring_poll_ms > 1000 {
            return Err(ConfigError(
                "ring_poll_ms must be at most 1000 (ring changes must be seen within a second)"
                    .into(),
            ));
        }
        if self.down_after_misses == 0 || self.max_replay_attempts == 0 {
            return Err(ConfigError(
                "down_after_misses and max_replay_attempts must be at least 1".into(),
            ));
        }
        if self.max_concurrent_bootstraps == 0
            || self.stream_parallelism == 0
            || self.repair_parallelism == 0
        {
            return Err(ConfigError(
                "max_concurrent_bootstraps, stream_parallelism and repair_parallelism must be at least 1"
                    .into(),
            ));
        }
        if !(64..=256).contains(&self.max_message_mb) {
            return Err(ConfigError(
                "max_message_mb must be 64-256 (key states are capped so that every one fits 64 MiB)"
                    .into(),
            ));
        }
        for (name, v) in [
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_owned_tasks", self.max_owned_tasks),
            ("hint_queue_max", self.hint_queue_max),
        ] {
            if v == 0 || v > 10_000_000 {
                return Err(ConfigError(format!("{name} must be 1-10000000")));
            }
        }
        if self.hint_queue_max_mb == 0
            || self.hint_queue_max_mb > 65_536
            || !(1..=64).contains(&self.hint_db_connections)
            || self.max_hint_bytes_per_target == 0
        {
            return Err(ConfigError(
                "hint_queue_max_mb must be 1-65536, hint_db_connections 1-64 and max_hint_bytes_per_target at least 1"
                    .into(),
            ));
        }
        if self.stream_batch_size == 0 || self.stream_batch_size > 10_000 {
            return Err(ConfigError("stream_batch_size must be 1-10000".into()));
        }
        if self.job_lease_ms < 1_000 {
            return Err(ConfigError(
                "job_lease_ms must be at least 1000 (progress is saved every second)".into(),
            ));
        }
        if self.tombstone_gc_grace_secs <= self.hint_ttl_secs {
            return Err(ConfigError(
                "tombstone_gc_grace_secs must exceed hint_ttl_secs (a hint must never outlive the tombstones it could undo)"
                    .into(),
            ));
        }
        if self.max_hint_window_secs > self.hint_ttl_secs {
            return Err(ConfigError(
                "max_hint_window_secs must not exceed hint_ttl_secs".into(),
            ));
        }
        self.tls.validate().map_err(ConfigError)?;
        let token = self.admin_token().map_err(ConfigError)?;
        if token.is_some() && self.auth == crate::auth::AuthMode::Off {
            return Err(ConfigError(
                "an admin token is configured but auth is off: set auth = \"required\" (PAIRDB_AUTH=required) or \"permissive\"".into(),
            ));
        }
        // Exposure (secure by default) is checked by `server::start`, not here: `migrate`
        // and `rotate-context-key` listen on nothing and run with the serving config (the
        // Kubernetes migration Job does).
        Ok(())
    }

    /// The bootstrap admin token, if configured.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        pairdb_common::auth::read_bootstrap_token(
            &self.admin_token,
            self.admin_token_file.as_deref(),
        )
    }

    /// Secure by default: `Err` when listening beyond loopback without TLS or required
    /// tokens (and not `insecure`); `Ok(Some(warning))` when `insecure` allowed it.
    pub fn exposure(&self) -> Result<Option<String>, ConfigError> {
        pairdb_common::tls::check_exposure(
            &[("gRPC", self.grpc_addr), ("admin", self.admin_addr)],
            &self.tls,
            (self.auth != crate::auth::AuthMode::Required)
                .then_some("required bearer tokens (auth = \"required\")"),
            self.insecure,
        )
        .map_err(ConfigError)
    }
}
