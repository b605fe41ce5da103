//! The metadata store: durable intent (membership and node lifecycle, tenants, hints, pending
//! changes, repairs, `ring_version`) behind one trait, with PostgreSQL (production) and SQLite
//! (embedded, `pairdbctl dev`) implementations that pass the same behaviour tests.
//!
//! Contract for every method: it is one transaction; it either fully happens or returns an
//! error; `ring_version` changes in the same transaction as the topology change it announces.
//! Timestamps cross the trait as Unix milliseconds.
//!
//! Files: `records.rs` (the rows as types), this file (the trait, errors, `connect`),
//! `store.rs` (every statement, once, for both databases), `sql.rs` (the dialect seam and the
//! job lease statements), `rows.rs` (reading rows), `tx.rs` (statements shared inside transactions), `backends.rs` (connect, migrate and run
//! per database), `memory.rs` (an in-memory store with the same semantics, for the
//! deterministic simulation).

mod backends;
mod memory;
mod records;
mod rows;
mod sql;
mod store;
mod tx;

pub use memory::MemMeta;
pub use records::*;
pub use store::{PgMeta, SqlMeta, SqliteMeta};

use std::sync::Arc;

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
    /// Now in Unix ms by the clock leases, claims and cleanup delays are judged by: the
    /// database's on PostgreSQL (one clock for every coordinator), this process's otherwise.
    async fn clock_ms(&self) -> MetaResult<u64> {
        Ok(pairdb_common::now_ms())
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRecord>>;
    async fn get_node(&self, node_id: &str) -> MetaResult<Option<NodeRecord>>;
    /// Inserts a node and increments `ring_version` atomically; returns the new ring version.
    /// `Conflict` if the node id exists.
    async fn add_node(&self, node: &NodeRecord) -> MetaResult<u64>;
    /// Drains a node (`Some(now)`) or ends its drain (`None`) and bumps `ring_version` in the
    /// same transaction, so every coordinator rebuilds its view within one ring poll; returns
    /// the new ring version. Draining a drained node keeps its first time. `NotFound` for an
    /// unknown node.
    async fn set_drained(&self, node_id: &str, drained_at_ms: Option<u64>) -> MetaResult<u64>;
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
    /// Deletes every hint for `target` (a removed node); returns how many.
    async fn delete_hints_for(&self, target: &str) -> MetaResult<u64>;

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
        Ok(Arc::new(PgMeta::connect(url, max_connections).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteMeta::connect(url, max_connections).await?))
    } else {
        Err(MetaError::Db(format!(
            "unsupported database URL {url:?}: use postgres://… or sqlite://…"
        )))
    }
}

pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}
