//! The metadata store: durable intent (membership and node lifecycle, tenants, hints, pending
//! changes, repairs, `ring_version`) behind one trait, with PostgreSQL (production) and SQLite
//! (embedded, `pairdbctl dev`) implementations that pass the same behaviour tests.
//!
//! Contract for every method: it is one transaction; it either fully happens or returns an
//! error; `ring_version` changes in the same transaction as the topology change it announces.
//! Timestamps cross the trait as Unix milliseconds.

pub mod postgres;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use pairdb_common::ring::NodeState;

/// Observed health of a node, as last recorded by a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    Down,
    Unknown,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "UP",
            NodeStatus::Down => "DOWN",
            NodeStatus::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(s: &str) -> NodeStatus {
        match s {
            "UP" => NodeStatus::Up,
            "DOWN" => NodeStatus::Down,
            _ => NodeStatus::Unknown,
        }
    }
}

/// A `storage_nodes` row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub admin_port: u16,
    pub zone: String,
    pub virtual_nodes: u32,
    pub state: NodeState,
    pub status: NodeStatus,
    pub last_seen_ms: Option<u64>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl NodeRecord {
    /// A node to register: default zone and virtual nodes, status UNKNOWN; the store sets the
    /// timestamps.
    pub fn new(
        node_id: &str,
        host: &str,
        port: u16,
        admin_port: u16,
        state: NodeState,
    ) -> NodeRecord {
        NodeRecord {
            node_id: node_id.to_string(),
            host: host.to_string(),
            port,
            admin_port,
            zone: String::new(),
            virtual_nodes: pairdb_common::ring::DEFAULT_VIRTUAL_NODES,
            state,
            status: NodeStatus::Unknown,
            last_seen_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}

/// Consistency level names as stored in `tenants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    One,
    Quorum,
    All,
    Any,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::One => "ONE",
            Level::Quorum => "QUORUM",
            Level::All => "ALL",
            Level::Any => "ANY",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "ONE" => Some(Level::One),
            "QUORUM" => Some(Level::Quorum),
            "ALL" => Some(Level::All),
            "ANY" => Some(Level::Any),
            _ => None,
        }
    }

    /// Acknowledgements needed out of `n` replicas (ANY: one, which a hint may provide).
    pub fn required(self, n: usize) -> usize {
        match self {
            Level::One | Level::Any => 1,
            Level::Quorum => n / 2 + 1,
            Level::All => n,
        }
    }
}

/// A `tenants` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub tenant_id: String,
    pub replication_factor: u32,
    pub read_consistency: Level,
    pub write_consistency: Level,
    pub conflict_policy: pairdb_common::version::ConflictPolicy,
    pub max_value_bytes: u32,
    pub sibling_warn: u32,
    pub sibling_max: u32,
    pub rate_limit_rps: u32,
    /// Cap on a key's encoded state in bytes (SPEC §2.2).
    pub max_state_bytes: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl TenantRecord {
    /// A tenant with every default of SPEC §2.
    pub fn with_defaults(tenant_id: &str) -> TenantRecord {
        TenantRecord {
            tenant_id: tenant_id.to_string(),
            replication_factor: 3,
            read_consistency: Level::Quorum,
            write_consistency: Level::Quorum,
            conflict_policy: pairdb_common::version::ConflictPolicy::Siblings,
            max_value_bytes: pairdb_common::validate::DEFAULT_MAX_VALUE_BYTES as u32,
            sibling_warn: 25,
            sibling_max: 100,
            rate_limit_rps: 0,
            max_state_bytes: pairdb_common::validate::DEFAULT_MAX_STATE_BYTES as u32,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}

pub fn policy_str(p: pairdb_common::version::ConflictPolicy) -> &'static str {
    match p {
        pairdb_common::version::ConflictPolicy::Siblings => "siblings",
        pairdb_common::version::ConflictPolicy::Lww => "lww",
    }
}

pub fn parse_policy(s: &str) -> pairdb_common::version::ConflictPolicy {
    if s == "lww" {
        pairdb_common::version::ConflictPolicy::Lww
    } else {
        pairdb_common::version::ConflictPolicy::Siblings
    }
}

/// A hint to record: a key state a replica missed.
#[derive(Debug, Clone)]
pub struct NewHint {
    pub target_node_id: String,
    pub tenant_id: String,
    pub key: Vec<u8>,
    /// `framing::encode_state` of the key state (format byte + CRC32 + payload).
    pub payload: Vec<u8>,
    pub created_at_ms: u64,
}

/// A `hints` row.
#[derive(Debug, Clone)]
pub struct HintRecord {
    pub hint_id: i64,
    pub target_node_id: String,
    pub tenant_id: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub created_at_ms: u64,
    pub replay_count: u32,
    pub last_error: Option<String>,
}

/// Pending hints for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct HintTarget {
    pub node_id: String,
    pub pending: u64,
    /// Payload bytes of the pending hints.
    pub bytes: u64,
    pub oldest_created_at_ms: u64,
}

/// A `context_keys` row: a cluster key that seals client context tokens.
#[derive(Clone, PartialEq)]
pub struct ContextKeyRecord {
    pub key_id: u32,
    pub secret: Vec<u8>,
    /// `None` for the current key; a rotated-out key opens tokens until then.
    pub retires_at_ms: Option<u64>,
}

impl std::fmt::Debug for ContextKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextKeyRecord")
            .field("key_id", &self.key_id)
            .field("retires_at_ms", &self.retires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// Topology, tenants, repair, hints, tokens, and every tenant's data.
    Admin,
    /// One tenant's keys (`TokenRecord::tenant_id`).
    Tenant,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Tenant => "tenant",
        }
    }

    pub fn parse(s: &str) -> Option<TokenRole> {
        match s {
            "admin" => Some(TokenRole::Admin),
            "tenant" => Some(TokenRole::Tenant),
            _ => None,
        }
    }
}

/// A `tokens` row. The token itself is never stored: only its SHA-256 (`token_hash`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub token_id: String,
    pub token_hash: String,
    pub role: TokenRole,
    /// The tenant of a tenant token (`None` for admin tokens).
    pub tenant_id: Option<String>,
    /// Whether the token may write (tenant tokens; admin tokens always may).
    pub write: bool,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

impl TokenRecord {
    pub fn access_str(&self) -> &'static str {
        if self.write { "read-write" } else { "read" }
    }
}

/// What a topology change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Bootstrap,
    Decommission,
    Replace,
    Cleanup,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Bootstrap => "bootstrap",
            ChangeKind::Decommission => "decommission",
            ChangeKind::Replace => "replace",
            ChangeKind::Cleanup => "cleanup",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "bootstrap" => Some(ChangeKind::Bootstrap),
            "decommission" => Some(ChangeKind::Decommission),
            "replace" => Some(ChangeKind::Replace),
            "cleanup" => Some(ChangeKind::Cleanup),
            _ => None,
        }
    }
}

/// Where a topology change is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStatus {
    /// Recorded, waiting for admission (overlap and `max_concurrent_bootstraps`).
    Pending,
    /// Admitted: its plan is frozen and a coordinator drives it under a lease.
    Running,
    Completed,
    Failed,
    Aborted,
}

impl ChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Pending => "pending",
            ChangeStatus::Running => "running",
            ChangeStatus::Completed => "completed",
            ChangeStatus::Failed => "failed",
            ChangeStatus::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeStatus> {
        match s {
            "pending" => Some(ChangeStatus::Pending),
            "running" => Some(ChangeStatus::Running),
            "completed" => Some(ChangeStatus::Completed),
            "failed" => Some(ChangeStatus::Failed),
            "aborted" => Some(ChangeStatus::Aborted),
            _ => None,
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, ChangeStatus::Pending | ChangeStatus::Running)
    }
}

/// A `pending_changes` row. `plan`, `params` and `progress` are JSON documents owned by the
/// orchestrator (`crate::topology`); the store keeps them opaque.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub change_id: String,
    pub kind: ChangeKind,
    pub node_id: String,
    pub status: ChangeStatus,
    pub progress: String,
    pub plan: String,
    pub params: String,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<u64>,
    pub start_time_ms: u64,
    pub completed_at_ms: Option<u64>,
    /// Not to be started before this time (cleanup grace).
    pub not_before_ms: Option<u64>,
    pub error: Option<String>,
}

/// A `repairs` row: one anti-entropy run. `params`, `plan` and `progress` are JSON documents
/// owned by `crate::repair`; the store keeps them opaque.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairRecord {
    pub repair_id: String,
    /// The tenant repaired; `None` = every tenant.
    pub tenant_id: Option<String>,
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub progress: String,
    pub plan: String,
    pub params: String,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<u64>,
    pub started_at_ms: u64,
    pub completed_at_ms: Option<u64>,
    pub error: Option<String>,
}

/// The tables holding lease-driven jobs (`crate::jobs`): topology changes and repair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobTable {
    Change,
    Repair,
}

impl JobTable {
    pub fn as_str(self) -> &'static str {
        match self {
            JobTable::Change => "topology change",
            JobTable::Repair => "repair",
        }
    }
}

/// A membership write made in the same transaction as a change (and a `ring_version` bump).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeWrite {
    /// Inserts a node, or re-creates one whose row is REMOVED; `Conflict` otherwise.
    Insert(NodeRecord),
    /// Moves a node to `to` if it is in one of `from`; `Conflict` otherwise.
    SetState {
        node_id: String,
        from: Vec<NodeState>,
        to: NodeState,
    },
    /// Changes where a node listens (a restarted pod with a new address).
    SetAddress {
        node_id: String,
        host: String,
        port: u16,
        admin_port: u16,
    },
}

/// What a new change's admission rules see, read inside its transaction.
#[derive(Debug, Clone)]
pub struct Membership {
    pub nodes: Vec<NodeRecord>,
    /// The largest replication factor over tenants (`None` without tenants).
    pub max_rf: Option<u32>,
}

/// Admission rules of a new change (`crate::topology::rules`), run inside its transaction.
pub type ChangeAdmit = dyn Fn(&Membership) -> Result<(), String> + Send + Sync;

/// Admission check run inside the admission transaction with every running change.
pub type AdmitFn = dyn Fn(&[ChangeRecord]) -> Result<(), String> + Send + Sync;

/// Metadata-store failures, by what the caller must tell apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// A row with that identity already exists.
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The database failed or is unreachable: the driver's error, kept as the source.
    #[error("metadata store: {0}")]
    Driver(#[source] Arc<sqlx::Error>),
    /// The store could not be set up (connection URL, migrations, key material).
    #[error("metadata store: {0}")]
    Db(String),
    #[error("bad row in metadata store: {0}")]
    BadRow(String),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error()
            && db.is_unique_violation()
        {
            return MetaError::Conflict(db.message().to_string());
        }
        MetaError::Driver(Arc::new(e))
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// The metadata store interface (see module docs for the contract).
#[tonic::async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Applies embedded migrations (idempotent).
    async fn migrate(&self) -> MetaResult<()>;

    /// The current ring version (changes with every topology change).
    async fn ring_version(&self) -> MetaResult<u64>;

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRecord>>;
    async fn get_node(&self, node_id: &str) -> MetaResult<Option<NodeRecord>>;
    /// Inserts a node and increments `ring_version` atomically; returns the new ring version.
    /// `Conflict` if the node id exists.
    async fn add_node(&self, node: &NodeRecord) -> MetaResult<u64>;
    /// Records observed health (does not change the ring).
    async fn record_status(
        &self,
        node_id: &str,
        status: NodeStatus,
        last_seen_ms: Option<u64>,
    ) -> MetaResult<()>;

    async fn create_tenant(&self, t: &TenantRecord) -> MetaResult<()>;
    async fn get_tenant(&self, tenant_id: &str) -> MetaResult<Option<TenantRecord>>;
    /// Replaces every setting of an existing tenant; `NotFound` otherwise.
    async fn update_tenant(&self, t: &TenantRecord) -> MetaResult<()>;
    async fn list_tenants(&self) -> MetaResult<Vec<TenantRecord>>;

    /// Records hints, all in one statement.
    async fn insert_hints(&self, hints: &[NewHint]) -> MetaResult<()>;
    /// Claims up to `limit` unclaimed (or lease-expired) hints for `target` for `lease_ms`, so
    /// concurrent coordinators never deliver the same hint at once.
    async fn claim_hints(
        &self,
        target: &str,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> MetaResult<Vec<HintRecord>>;
    async fn delete_hint(&self, hint_id: i64) -> MetaResult<()>;
    /// Releases the claim of a hint that was not delivered, recording `error`; it is not
    /// claimed again for `retry_after_ms`. `spend` counts the attempt toward
    /// `max_replay_attempts` (a target that refused only for being full or in maintenance
    /// does not spend one).
    async fn fail_hint(
        &self,
        hint_id: i64,
        error: &str,
        spend: bool,
        retry_after_ms: u64,
    ) -> MetaResult<()>;
    /// Deletes hints created before `cutoff_ms` or tried `max_attempts` times; returns how many.
    async fn delete_dead_hints(&self, cutoff_ms: u64, max_attempts: u32) -> MetaResult<u64>;
    async fn hint_targets(&self) -> MetaResult<Vec<HintTarget>>;
    async fn count_hints_for(&self, target: &str) -> MetaResult<u64>;

    /// Records a new change in one transaction under the admission lock: calls `admit` with
    /// the membership as it is inside the transaction (so two requests never both pass a rule
    /// that only one of them may), then applies `nodes` (with a `ring_version` bump when there
    /// are any) and inserts the change; returns the ring version. `Conflict` when `admit`
    /// refuses (its reason) or a node write's precondition fails.
    async fn create_change(
        &self,
        c: &ChangeRecord,
        nodes: &[NodeWrite],
        admit: &ChangeAdmit,
    ) -> MetaResult<u64>;
    /// Applies membership writes alone (address changes), with a `ring_version` bump.
    async fn write_nodes(&self, nodes: &[NodeWrite]) -> MetaResult<u64>;
    async fn get_change(&self, change_id: &str) -> MetaResult<Option<ChangeRecord>>;
    /// Active changes (pending, running), plus finished ones when asked, oldest first.
    async fn list_changes(&self, include_finished: bool) -> MetaResult<Vec<ChangeRecord>>;
    /// Admits a pending change `owner` holds the lease of: under the admission lock (so two
    /// coordinators never admit side by side), and only while `ring_version` is still
    /// `ring_version`, calls `admit` with every running change; on `Ok` the change becomes
    /// running with its frozen `plan` and `progress`. The inner `Err` says why it must wait.
    async fn admit_change(
        &self,
        change_id: &str,
        owner: &str,
        ring_version: u64,
        plan: &str,
        progress: &str,
        admit: &AdmitFn,
    ) -> MetaResult<Result<(), String>>;
    /// Ends an active change in one transaction: final status and error, membership writes
    /// (with a `ring_version` bump when there are any), and an optional follow-up change (the
    /// cleanup). With `owner`, the lease must still be theirs. Returns the ring version.
    /// `Conflict` when the change is not active or the lease was lost.
    async fn finish_change(
        &self,
        change_id: &str,
        owner: Option<&str>,
        status: ChangeStatus,
        error: Option<&str>,
        nodes: &[NodeWrite],
        follow_up: Option<&ChangeRecord>,
    ) -> MetaResult<u64>;

    /// The context keys that still open tokens (the current one and those within their
    /// grace), current first. Creates the first key from `initial_secret` when there is none.
    async fn context_keys(&self, initial_secret: &[u8]) -> MetaResult<Vec<ContextKeyRecord>>;
    /// Makes a new key (from `secret`) the current one; the previous current key keeps opening
    /// tokens for `grace_ms`; keys past their grace are deleted. Returns the new key's id.
    async fn rotate_context_key(&self, secret: &[u8], grace_ms: u64) -> MetaResult<u32>;

    /// Stores a new token (`Conflict` if its id exists).
    async fn create_token(&self, t: &TokenRecord) -> MetaResult<()>;
    /// Every token, revoked ones included, oldest first.
    async fn list_tokens(&self) -> MetaResult<Vec<TokenRecord>>;
    /// Marks a token revoked now. `NotFound` for an unknown id; revoking twice keeps the
    /// first time.
    async fn revoke_token(&self, token_id: &str) -> MetaResult<TokenRecord>;

    /// Records a new running repair. `Conflict` (naming the active run) while another is active:
    /// at most one repair runs at a time.
    async fn create_repair(&self, r: &RepairRecord) -> MetaResult<()>;
    async fn get_repair(&self, repair_id: &str) -> MetaResult<Option<RepairRecord>>;
    /// The newest `limit` repairs, newest first.
    async fn list_repairs(&self, limit: u32) -> MetaResult<Vec<RepairRecord>>;
    /// Takes or renews the lease of the active job `id` in `table` for `lease_ms`: succeeds
    /// when the lease is free, already `owner`'s, or expired. One driver at a time.
    async fn claim_job(
        &self,
        table: JobTable,
        id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> MetaResult<bool>;
    /// Persists plan (when given), progress and error of a job `owner` drives, renewing the
    /// lease. `false` when the lease was lost or the job is no longer active (aborted).
    #[allow(clippy::too_many_arguments)]
    async fn save_job(
        &self,
        table: JobTable,
        id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        plan: Option<&str>,
        progress: &str,
        error: Option<&str>,
    ) -> MetaResult<bool>;
    /// Ends a running repair `owner` drives (with its final plan and progress). `false` when
    /// the lease was lost.
    async fn finish_repair(
        &self,
        repair_id: &str,
        owner: &str,
        status: &str,
        plan: &str,
        progress: &str,
        error: Option<&str>,
    ) -> MetaResult<bool>;
}

/// Opens the store a URL names: `postgres://…` or `sqlite://…` (created if missing).
pub async fn connect(url: &str) -> MetaResult<Arc<dyn MetaStore>> {
    connect_with(url, 8).await
}

/// [`connect`] with a pool of at most `max_connections`.
pub async fn connect_with(url: &str, max_connections: u32) -> MetaResult<Arc<dyn MetaStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgMeta::connect(url, max_connections).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteMeta::connect(url, max_connections).await?,
        ))
    } else {
        Err(MetaError::Db(format!(
            "unsupported database URL {url:?}: use postgres://… or sqlite://…"
        )))
    }
}

/// A `pending_changes` row as both backends select it (their `CHANGE_COLS` give the same
/// column names and types: text, and Unix ms as BIGINT).
pub(crate) fn change_row<R>(r: &R) -> MetaResult<ChangeRecord>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get("type")?;
    let status: String = r.try_get("status")?;
    let ms = |col: &str| -> MetaResult<Option<u64>> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(to_u64))
    };
    Ok(ChangeRecord {
        change_id: r.try_get("change_id")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| MetaError::BadRow(format!("change type {kind}")))?,
        node_id: r.try_get("node_id")?,
        status: ChangeStatus::parse(&status)
            .ok_or_else(|| MetaError::BadRow(format!("change status {status}")))?,
        progress: r.try_get("progress")?,
        plan: r.try_get("plan")?,
        params: r.try_get("params")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at_ms: ms("lease_expires_at_ms")?,
        start_time_ms: ms("start_time_ms")?.unwrap_or(0),
        completed_at_ms: ms("completed_at_ms")?,
        not_before_ms: ms("not_before_ms")?,
        error: r.try_get("error")?,
    })
}

/// A `repairs` row as both backends select it (`REPAIR_COLS`: text, and Unix ms as BIGINT).
pub(crate) fn repair_row<R>(r: &R) -> MetaResult<RepairRecord>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let ms = |col: &str| -> MetaResult<Option<u64>> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(to_u64))
    };
    Ok(RepairRecord {
        repair_id: r.try_get("repair_id")?,
        tenant_id: r.try_get("tenant_id")?,
        status: r.try_get("status")?,
        progress: r.try_get("progress")?,
        plan: r.try_get("plan")?,
        params: r.try_get("params")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at_ms: ms("lease_expires_at_ms")?,
        started_at_ms: ms("started_at_ms")?.unwrap_or(0),
        completed_at_ms: ms("completed_at_ms")?,
        error: r.try_get("error")?,
    })
}

pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}
