//! The metadata store's rows as types, and the small enums stored in them as text.

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
    /// When an operator drained the node (`None`: serving). While set, coordinators send it
    /// no client reads or writes (its writes become hints) and hold it in maintenance mode.
    pub drained_at_ms: Option<u64>,
}

impl NodeRecord {
    /// Whether an operator drained the node.
    pub fn drained(&self) -> bool {
        self.drained_at_ms.is_some()
    }

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
            drained_at_ms: None,
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
    /// A replication-factor change in progress (`crate::tenants` docs): the factor the
    /// tenant moves to once a repair over the larger of the two has completed.
    pub target_replication_factor: Option<u32>,
}

impl TenantRecord {
    /// The replica count writes go to: the larger of the factor and a target being moved to
    /// (the extra replicas receive writes without counting toward W).
    pub fn write_fanout(&self) -> u32 {
        self.target_replication_factor
            .map_or(self.replication_factor, |t| t.max(self.replication_factor))
    }

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
            target_replication_factor: None,
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
