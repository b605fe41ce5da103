//! Rows of the metadata tables as records, and the column lists that select them, written
//! once for both databases (integers of any width, timestamps as Unix ms, JSON as text).

use std::marker::PhantomData;

use pairdb_common::ring::NodeState;

use super::sql::{Backend, Dialect};
use super::*;

/// One row's columns, read through the backend.
pub(crate) struct Cols<'r, B: Backend> {
    row: &'r B::Row,
    db: PhantomData<B>,
}

impl<'r, B: Backend> Cols<'r, B> {
    pub fn new(row: &'r B::Row) -> Self {
        Cols {
            row,
            db: PhantomData,
        }
    }

    pub fn opt_text(&self, col: &str) -> MetaResult<Option<String>> {
        Ok(B::text(self.row, col)?)
    }

    pub fn text(&self, col: &str) -> MetaResult<String> {
        self.opt_text(col)?
            .ok_or_else(|| MetaError::BadRow(format!("{col} is NULL")))
    }

    pub fn opt_int(&self, col: &str) -> MetaResult<Option<i64>> {
        Ok(B::int(self.row, col)?)
    }

    pub fn int(&self, col: &str) -> MetaResult<i64> {
        self.opt_int(col)?
            .ok_or_else(|| MetaError::BadRow(format!("{col} is NULL")))
    }

    /// A non-negative integer column that fits `T` (a port, a count, a byte limit).
    pub fn num<T: TryFrom<i64>>(&self, col: &str) -> MetaResult<T> {
        let v = self.int(col)?;
        T::try_from(v).map_err(|_| MetaError::BadRow(format!("{col} = {v} is out of range")))
    }

    /// A Unix-ms column (negative clamps to 0).
    pub fn ms(&self, col: &str) -> MetaResult<Option<u64>> {
        Ok(self.opt_int(col)?.map(to_u64))
    }

    pub fn bytes(&self, col: &str) -> MetaResult<Vec<u8>> {
        B::bytes(self.row, col)?.ok_or_else(|| MetaError::BadRow(format!("{col} is NULL")))
    }

    fn level(&self, col: &str) -> MetaResult<Level> {
        let s = self.text(col)?;
        Level::parse(&s).ok_or_else(|| MetaError::BadRow(format!("{col} = {s}")))
    }
}

pub(crate) fn node_cols(d: &Dialect) -> String {
    format!(
        "node_id, host, port, admin_port, zone, virtual_nodes, state, status, {}, {}, {}, {}",
        d.ms("last_seen", "last_seen_ms"),
        d.ms("created_at", "created_at_ms"),
        d.ms("updated_at", "updated_at_ms"),
        d.ms("drained_at", "drained_at_ms"),
    )
}

pub(crate) fn node_row<B: Backend>(r: &B::Row) -> MetaResult<NodeRecord> {
    let c = Cols::<B>::new(r);
    let state = c.text("state")?;
    Ok(NodeRecord {
        node_id: c.text("node_id")?,
        host: c.text("host")?,
        port: c.num("port")?,
        admin_port: c.num("admin_port")?,
        zone: c.text("zone")?,
        virtual_nodes: c.num("virtual_nodes")?,
        state: NodeState::parse(&state)
            .ok_or_else(|| MetaError::BadRow(format!("node state {state}")))?,
        status: NodeStatus::parse(&c.text("status")?),
        last_seen_ms: c.ms("last_seen_ms")?,
        created_at_ms: c.ms("created_at_ms")?.unwrap_or(0),
        updated_at_ms: c.ms("updated_at_ms")?.unwrap_or(0),
        drained_at_ms: c.ms("drained_at_ms")?,
    })
}

pub(crate) fn tenant_cols(d: &Dialect) -> String {
    format!(
        "tenant_id, replication_factor, read_consistency, write_consistency, conflict_policy, \
         max_value_bytes, sibling_warn, sibling_max, rate_limit_rps, max_state_bytes, \
         target_replication_factor, {}, {}",
        d.ms("created_at", "created_at_ms"),
        d.ms("updated_at", "updated_at_ms"),
    )
}

pub(crate) fn tenant_row<B: Backend>(r: &B::Row) -> MetaResult<TenantRecord> {
    let c = Cols::<B>::new(r);
    Ok(TenantRecord {
        tenant_id: c.text("tenant_id")?,
        replication_factor: c.num("replication_factor")?,
        read_consistency: c.level("read_consistency")?,
        write_consistency: c.level("write_consistency")?,
        conflict_policy: parse_policy(&c.text("conflict_policy")?),
        max_value_bytes: c.num("max_value_bytes")?,
        sibling_warn: c.num("sibling_warn")?,
        sibling_max: c.num("sibling_max")?,
        rate_limit_rps: c.num("rate_limit_rps")?,
        max_state_bytes: c.num("max_state_bytes")?,
        created_at_ms: c.ms("created_at_ms")?.unwrap_or(0),
        updated_at_ms: c.ms("updated_at_ms")?.unwrap_or(0),
        target_replication_factor: c
            .opt_int("target_replication_factor")?
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    MetaError::BadRow(format!("target_replication_factor = {v} is out of range"))
                })
            })
            .transpose()?,
    })
}

pub(crate) fn token_cols(d: &Dialect) -> String {
    format!(
        "token_id, token_hash, role, tenant_id, access, description, {}, {}, {}",
        d.ms("created_at", "created_ms"),
        d.ms("expires_at", "expires_ms"),
        d.ms("revoked_at", "revoked_ms"),
    )
}

pub(crate) fn token_row<B: Backend>(r: &B::Row) -> MetaResult<TokenRecord> {
    let c = Cols::<B>::new(r);
    let role = c.text("role")?;
    Ok(TokenRecord {
        token_id: c.text("token_id")?,
        token_hash: c.text("token_hash")?,
        role: TokenRole::parse(&role)
            .ok_or_else(|| MetaError::BadRow(format!("token role {role:?}")))?,
        tenant_id: c.opt_text("tenant_id")?,
        write: c.text("access")? == "read-write",
        description: c.text("description")?,
        created_at_ms: c.ms("created_ms")?.unwrap_or(0),
        expires_at_ms: c.ms("expires_ms")?,
        revoked_at_ms: c.ms("revoked_ms")?,
    })
}

pub(crate) fn hint_cols(d: &Dialect) -> String {
    format!(
        "hint_id, target_node_id, tenant_id, key, payload, {}, replay_count, last_error",
        d.ms("created_at", "created_at_ms"),
    )
}

pub(crate) fn hint_row<B: Backend>(r: &B::Row) -> MetaResult<HintRecord> {
    let c = Cols::<B>::new(r);
    Ok(HintRecord {
        hint_id: c.int("hint_id")?,
        target_node_id: c.text("target_node_id")?,
        tenant_id: c.text("tenant_id")?,
        key: c.bytes("key")?,
        payload: c.bytes("payload")?,
        created_at_ms: c.ms("created_at_ms")?.unwrap_or(0),
        replay_count: c.num("replay_count")?,
        last_error: c.opt_text("last_error")?,
    })
}

pub(crate) fn change_cols(d: &Dialect) -> String {
    format!(
        "change_id, type, node_id, status, {}, {}, {}, lease_owner, {}, {}, {}, {}, error",
        d.json_col("progress"),
        d.json_col("plan"),
        d.json_col("params"),
        d.ms("lease_expires_at", "lease_expires_at_ms"),
        d.ms("start_time", "start_time_ms"),
        d.ms("completed_at", "completed_at_ms"),
        d.ms("not_before", "not_before_ms"),
    )
}

pub(crate) fn change_row<B: Backend>(r: &B::Row) -> MetaResult<ChangeRecord> {
    let c = Cols::<B>::new(r);
    let kind = c.text("type")?;
    let status = c.text("status")?;
    Ok(ChangeRecord {
        change_id: c.text("change_id")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| MetaError::BadRow(format!("change type {kind}")))?,
        node_id: c.text("node_id")?,
        status: ChangeStatus::parse(&status)
            .ok_or_else(|| MetaError::BadRow(format!("change status {status}")))?,
        progress: c.text("progress")?,
        plan: c.text("plan")?,
        params: c.text("params")?,
        lease_owner: c.opt_text("lease_owner")?,
        lease_expires_at_ms: c.ms("lease_expires_at_ms")?,
        start_time_ms: c.ms("start_time_ms")?.unwrap_or(0),
        completed_at_ms: c.ms("completed_at_ms")?,
        not_before_ms: c.ms("not_before_ms")?,
        error: c.opt_text("error")?,
    })
}

pub(crate) fn repair_cols(d: &Dialect) -> String {
    format!(
        "repair_id, tenant_id, status, {}, {}, {}, lease_owner, {}, {}, {}, error",
        d.json_col("progress"),
        d.json_col("plan"),
        d.json_col("params"),
        d.ms("lease_expires_at", "lease_expires_at_ms"),
        d.ms("started_at", "started_at_ms"),
        d.ms("completed_at", "completed_at_ms"),
    )
}

pub(crate) fn repair_row<B: Backend>(r: &B::Row) -> MetaResult<RepairRecord> {
    let c = Cols::<B>::new(r);
    Ok(RepairRecord {
        repair_id: c.text("repair_id")?,
        tenant_id: c.opt_text("tenant_id")?,
        status: c.text("status")?,
        progress: c.text("progress")?,
        plan: c.text("plan")?,
        params: c.text("params")?,
        lease_owner: c.opt_text("lease_owner")?,
        lease_expires_at_ms: c.ms("lease_expires_at_ms")?,
        started_at_ms: c.ms("started_at_ms")?.unwrap_or(0),
        completed_at_ms: c.ms("completed_at_ms")?,
        error: c.opt_text("error")?,
    })
}

/// One target's line of `hint_targets` (`target_node_id`, `pending`, `bytes`, `oldest`).
pub(crate) fn hint_target_row<B: Backend>(r: &B::Row) -> MetaResult<HintTarget> {
    let c = Cols::<B>::new(r);
    Ok(HintTarget {
        node_id: c.text("target_node_id")?,
        pending: to_u64(c.int("pending")?),
        bytes: to_u64(c.opt_int("bytes")?.unwrap_or(0)),
        oldest_created_at_ms: c.ms("oldest")?.unwrap_or(0),
    })
}

/// A `context_keys` row (`key_id`, `secret`, `retires_at_ms`).
pub(crate) fn context_key_row<B: Backend>(r: &B::Row) -> MetaResult<ContextKeyRecord> {
    let c = Cols::<B>::new(r);
    Ok(ContextKeyRecord {
        key_id: c.num("key_id")?,
        secret: c.bytes("secret")?,
        retires_at_ms: c.ms("retires_at_ms")?,
    })
}
