//! An in-memory [`MetaStore`]: every method is one critical section over plain collections,
//! with the SQL stores' semantics (the behaviour suite in `tests/tests/meta_store` runs on it
//! too). For the deterministic simulation (`tests/tests/simulation.rs`), where the metadata
//! store must answer on the simulated clock without a database thread; nothing survives the
//! process. [`MemMeta::set_available`] makes every call fail as an unreachable database does
//! (a metadata-store outage).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pairdb_common::now_ms;
use pairdb_common::ring::NodeState;
use parking_lot::Mutex;

use super::*;

struct Hint {
    rec: HintRecord,
    claim_expires_at_ms: Option<u64>,
}

struct State {
    ring_version: u64,
    nodes: BTreeMap<String, NodeRecord>,
    tenants: BTreeMap<String, TenantRecord>,
    hints: BTreeMap<i64, Hint>,
    next_hint_id: i64,
    changes: Vec<ChangeRecord>,
    context_keys: Vec<ContextKeyRecord>,
    tokens: Vec<TokenRecord>,
    repairs: Vec<RepairRecord>,
}

pub struct MemMeta {
    state: Mutex<State>,
    available: AtomicBool,
}

impl Default for MemMeta {
    fn default() -> Self {
        MemMeta::new()
    }
}

impl MemMeta {
    pub fn new() -> MemMeta {
        MemMeta {
            state: Mutex::new(State {
                ring_version: 1,
                nodes: BTreeMap::new(),
                tenants: BTreeMap::new(),
                hints: BTreeMap::new(),
                next_hint_id: 1,
                changes: Vec::new(),
                context_keys: Vec::new(),
                tokens: Vec::new(),
                repairs: Vec::new(),
            }),
            available: AtomicBool::new(true),
        }
    }

    /// `false`: every call fails with a driver error (`PoolTimedOut`), as when the database is
    /// down; `true` again: calls succeed on the state as it was.
    pub fn set_available(&self, up: bool) {
        self.available.store(up, Ordering::SeqCst);
    }

    /// Runs `f` on the state, or fails as an unreachable database does.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> MetaResult<T>) -> MetaResult<T> {
        if !self.available.load(Ordering::SeqCst) {
            return Err(MetaError::Driver(Arc::new(sqlx::Error::PoolTimedOut)));
        }
        f(&mut self.state.lock())
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.ring_version += 1;
        self.ring_version
    }

    fn insert_node(&mut self, n: &NodeRecord) -> MetaResult<()> {
        if self.nodes.contains_key(&n.node_id) {
            return Err(MetaError::Conflict(format!(
                "duplicate key: node {}",
                n.node_id
            )));
        }
        let now = now_ms();
        let mut n = n.clone();
        n.created_at_ms = now;
        n.updated_at_ms = now;
        n.last_seen_ms = None;
        n.drained_at_ms = None;
        self.nodes.insert(n.node_id.clone(), n);
        Ok(())
    }

    /// All of `writes` or none of them (a failed write leaves the state as it was).
    fn apply_node_writes(&mut self, writes: &[NodeWrite]) -> MetaResult<u64> {
        let saved = self.nodes.clone();
        let r = self.apply_node_writes_inner(writes);
        if r.is_err() {
            self.nodes = saved;
        }
        r
    }

    fn apply_node_writes_inner(&mut self, writes: &[NodeWrite]) -> MetaResult<u64> {
        for w in writes {
            match w {
                NodeWrite::Insert(n) => {
                    match self.nodes.get(&n.node_id).map(|e| e.state) {
                        Some(NodeState::Removed) => {
                            self.nodes.remove(&n.node_id);
                        }
                        Some(state) => {
                            return Err(MetaError::Conflict(format!(
                                "node {} exists and is {}",
                                n.node_id,
                                state.as_str()
                            )));
                        }
                        None => {}
                    }
                    self.insert_node(n)?;
                }
                NodeWrite::SetState { node_id, from, to } => {
                    let Some(n) = self.nodes.get_mut(node_id) else {
                        return Err(MetaError::NotFound(format!("node {node_id}")));
                    };
                    if !from.contains(&n.state) {
                        let from: Vec<&str> = from.iter().map(|f| f.as_str()).collect();
                        return Err(MetaError::Conflict(format!(
                            "node {node_id} is {}, not {}",
                            n.state.as_str(),
                            from.join(" or ")
                        )));
                    }
                    n.state = *to;
                    n.updated_at_ms = now_ms();
                }
                NodeWrite::SetAddress {
                    node_id,
                    host,
                    port,
                    admin_port,
                } => {
                    if let Some(n) = self.nodes.get_mut(node_id) {
                        n.host = host.clone();
                        n.port = *port;
                        n.admin_port = *admin_port;
                        n.updated_at_ms = now_ms();
                    }
                }
            }
        }
        if writes.is_empty() {
            return Ok(self.ring_version);
        }
        Ok(self.bump())
    }

    fn insert_change(&mut self, c: &ChangeRecord) -> MetaResult<()> {
        if self.changes.iter().any(|e| e.change_id == c.change_id) {
            return Err(MetaError::Conflict(format!(
                "duplicate key: change {}",
                c.change_id
            )));
        }
        let mut c = c.clone();
        c.start_time_ms = now_ms();
        c.lease_owner = None;
        c.lease_expires_at_ms = None;
        self.changes.push(c);
        Ok(())
    }

    fn change_mut(&mut self, id: &str) -> Option<&mut ChangeRecord> {
        self.changes.iter_mut().find(|c| c.change_id == id)
    }
}

/// A job row's lease fields, whichever table it is in.
struct Lease<'a> {
    owner: &'a mut Option<String>,
    expires_at_ms: &'a mut Option<u64>,
    plan: &'a mut String,
    progress: &'a mut String,
    error: &'a mut Option<String>,
}

fn job<'a>(s: &'a mut State, table: JobTable, id: &str) -> Option<Lease<'a>> {
    match table {
        JobTable::Change => s
            .changes
            .iter_mut()
            .find(|c| c.change_id == id && c.status.is_active())
            .map(|c| Lease {
                owner: &mut c.lease_owner,
                expires_at_ms: &mut c.lease_expires_at_ms,
                plan: &mut c.plan,
                progress: &mut c.progress,
                error: &mut c.error,
            }),
        JobTable::Repair => s
            .repairs
            .iter_mut()
            .find(|r| r.repair_id == id && r.status == "running")
            .map(|r| Lease {
                owner: &mut r.lease_owner,
                expires_at_ms: &mut r.lease_expires_at_ms,
                plan: &mut r.plan,
                progress: &mut r.progress,
                error: &mut r.error,
            }),
    }
}

#[tonic::async_trait]
impl MetaStore for MemMeta {
    async fn migrate(&self) -> MetaResult<()> {
        self.with(|_| Ok(()))
    }

    async fn ring_version(&self) -> MetaResult<u64> {
        self.with(|s| Ok(s.ring_version))
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRecord>> {
        self.with(|s| Ok(s.nodes.values().cloned().collect()))
    }

    async fn get_node(&self, node_id: &str) -> MetaResult<Option<NodeRecord>> {
        self.with(|s| Ok(s.nodes.get(node_id).cloned()))
    }

    async fn add_node(&self, node: &NodeRecord) -> MetaResult<u64> {
        self.with(|s| {
            s.insert_node(node)?;
            Ok(s.bump())
        })
    }

    async fn set_drained(&self, node_id: &str, drained_at_ms: Option<u64>) -> MetaResult<u64> {
        self.with(|s| {
            let Some(n) = s.nodes.get_mut(node_id) else {
                return Err(MetaError::NotFound(format!("storage node {node_id}")));
            };
            n.drained_at_ms = drained_at_ms.map(|at| n.drained_at_ms.unwrap_or(at));
            n.updated_at_ms = now_ms();
            Ok(s.bump())
        })
    }

    async fn record_status(
        &self,
        node_id: &str,
        status: NodeStatus,
        last_seen_ms: Option<u64>,
    ) -> MetaResult<()> {
        self.with(|s| {
            if let Some(n) = s.nodes.get_mut(node_id) {
                n.status = status;
                n.last_seen_ms = last_seen_ms.or(n.last_seen_ms);
                n.updated_at_ms = now_ms();
            }
            Ok(())
        })
    }

    async fn create_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        self.with(|s| {
            // The schemas' CHECK on the factor.
            if !(1..=7).contains(&t.replication_factor) {
                return Err(MetaError::BadRow(format!(
                    "tenant {}: replication factor {}",
                    t.tenant_id, t.replication_factor
                )));
            }
            if s.tenants.contains_key(&t.tenant_id) {
                return Err(MetaError::Conflict(format!(
                    "duplicate key: tenant {}",
                    t.tenant_id
                )));
            }
            let now = now_ms();
            let mut t = t.clone();
            t.created_at_ms = now;
            t.updated_at_ms = now;
            s.tenants.insert(t.tenant_id.clone(), t);
            Ok(())
        })
    }

    async fn get_tenant(&self, tenant_id: &str) -> MetaResult<Option<TenantRecord>> {
        self.with(|s| Ok(s.tenants.get(tenant_id).cloned()))
    }

    async fn update_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        self.with(|s| {
            let Some(e) = s.tenants.get_mut(&t.tenant_id) else {
                return Err(MetaError::NotFound(format!("tenant {}", t.tenant_id)));
            };
            let created = e.created_at_ms;
            *e = t.clone();
            e.created_at_ms = created;
            e.updated_at_ms = now_ms();
            Ok(())
        })
    }

    async fn list_tenants(&self) -> MetaResult<Vec<TenantRecord>> {
        self.with(|s| Ok(s.tenants.values().cloned().collect()))
    }

    async fn insert_hints(&self, hints: &[NewHint]) -> MetaResult<()> {
        self.with(|s| {
            for h in hints {
                let id = s.next_hint_id;
                s.next_hint_id += 1;
                s.hints.insert(
                    id,
                    Hint {
                        rec: HintRecord {
                            hint_id: id,
                            target_node_id: h.target_node_id.clone(),
                            tenant_id: h.tenant_id.clone(),
                            key: h.key.clone(),
                            payload: h.payload.clone(),
                            created_at_ms: h.created_at_ms,
                            replay_count: 0,
                            last_error: None,
                        },
                        claim_expires_at_ms: None,
                    },
                );
            }
            Ok(())
        })
    }

    async fn claim_hints(
        &self,
        target: &str,
        _owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> MetaResult<Vec<HintRecord>> {
        self.with(|s| {
            let now = now_ms();
            let mut out = Vec::new();
            for h in s.hints.values_mut() {
                if out.len() >= limit as usize {
                    break;
                }
                if h.rec.target_node_id == target && h.claim_expires_at_ms.is_none_or(|e| e <= now)
                {
                    h.claim_expires_at_ms = Some(now.saturating_add(lease_ms));
                    out.push(h.rec.clone());
                }
            }
            Ok(out)
        })
    }

    async fn delete_hint(&self, hint_id: i64) -> MetaResult<()> {
        self.with(|s| {
            s.hints.remove(&hint_id);
            Ok(())
        })
    }

    async fn fail_hint(
        &self,
        hint_id: i64,
        error: &str,
        spend: bool,
        retry_after_ms: u64,
    ) -> MetaResult<()> {
        self.with(|s| {
            if let Some(h) = s.hints.get_mut(&hint_id) {
                h.rec.replay_count += u32::from(spend);
                h.rec.last_error = Some(error.to_string());
                h.claim_expires_at_ms = Some(now_ms().saturating_add(retry_after_ms));
            }
            Ok(())
        })
    }

    async fn delete_dead_hints(&self, cutoff_ms: u64, max_attempts: u32) -> MetaResult<u64> {
        self.with(|s| {
            let before = s.hints.len();
            s.hints.retain(|_, h| {
                h.rec.created_at_ms >= cutoff_ms && h.rec.replay_count < max_attempts
            });
            Ok((before - s.hints.len()) as u64)
        })
    }

    async fn hint_targets(&self) -> MetaResult<Vec<HintTarget>> {
        self.with(|s| {
            let mut by: BTreeMap<&str, HintTarget> = BTreeMap::new();
            for h in s.hints.values() {
                let t = by
                    .entry(&h.rec.target_node_id)
                    .or_insert_with(|| HintTarget {
                        node_id: h.rec.target_node_id.clone(),
                        pending: 0,
                        bytes: 0,
                        oldest_created_at_ms: u64::MAX,
                    });
                t.pending += 1;
                t.bytes += h.rec.payload.len() as u64;
                t.oldest_created_at_ms = t.oldest_created_at_ms.min(h.rec.created_at_ms);
            }
            Ok(by.into_values().collect())
        })
    }

    async fn count_hints_for(&self, target: &str) -> MetaResult<u64> {
        self.with(|s| {
            Ok(s.hints
                .values()
                .filter(|h| h.rec.target_node_id == target)
                .count() as u64)
        })
    }

    async fn delete_hints_for(&self, target: &str) -> MetaResult<u64> {
        self.with(|s| {
            let before = s.hints.len();
            s.hints.retain(|_, h| h.rec.target_node_id != target);
            Ok((before - s.hints.len()) as u64)
        })
    }

    async fn create_change(
        &self,
        c: &ChangeRecord,
        nodes: &[NodeWrite],
        admit: &ChangeAdmit,
    ) -> MetaResult<u64> {
        self.with(|s| {
            let membership = Membership {
                nodes: s.nodes.values().cloned().collect(),
                max_rf: s.tenants.values().map(|t| t.replication_factor).max(),
            };
            admit(&membership).map_err(MetaError::Conflict)?;
            if s.changes.iter().any(|e| e.change_id == c.change_id) {
                return Err(MetaError::Conflict(format!(
                    "duplicate key: change {}",
                    c.change_id
                )));
            }
            let v = s.apply_node_writes(nodes)?;
            s.insert_change(c)?;
            Ok(v)
        })
    }

    async fn write_nodes(&self, nodes: &[NodeWrite]) -> MetaResult<u64> {
        self.with(|s| s.apply_node_writes(nodes))
    }

    async fn get_change(&self, change_id: &str) -> MetaResult<Option<ChangeRecord>> {
        self.with(|s| Ok(s.changes.iter().find(|c| c.change_id == change_id).cloned()))
    }

    async fn list_changes(&self, include_finished: bool) -> MetaResult<Vec<ChangeRecord>> {
        self.with(|s| {
            let mut out: Vec<ChangeRecord> = s
                .changes
                .iter()
                .filter(|c| include_finished || c.status.is_active())
                .cloned()
                .collect();
            out.sort_by(|a, b| {
                (a.start_time_ms, &a.change_id).cmp(&(b.start_time_ms, &b.change_id))
            });
            Ok(out)
        })
    }

    async fn admit_change(
        &self,
        change_id: &str,
        owner: &str,
        ring_version: u64,
        plan: &str,
        progress: &str,
        admit: &AdmitFn,
    ) -> MetaResult<Result<(), String>> {
        self.with(|s| {
            if s.ring_version != ring_version {
                return Ok(Err(format!(
                    "ring version moved to {} while planning against {ring_version}",
                    s.ring_version
                )));
            }
            let running: Vec<ChangeRecord> = s
                .changes
                .iter()
                .filter(|c| c.status == ChangeStatus::Running)
                .cloned()
                .collect();
            if let Err(why) = admit(&running) {
                return Ok(Err(why));
            }
            match s.change_mut(change_id) {
                Some(c)
                    if c.status == ChangeStatus::Pending
                        && c.lease_owner.as_deref() == Some(owner) =>
                {
                    c.status = ChangeStatus::Running;
                    c.plan = plan.to_string();
                    c.progress = progress.to_string();
                    Ok(Ok(()))
                }
                _ => Ok(Err("change is no longer pending under this lease".into())),
            }
        })
    }

    async fn finish_change(
        &self,
        change_id: &str,
        owner: Option<&str>,
        status: ChangeStatus,
        error: Option<&str>,
        nodes: &[NodeWrite],
        follow_up: Option<&ChangeRecord>,
    ) -> MetaResult<u64> {
        self.with(|s| {
            let Some(i) = s.changes.iter().position(|c| {
                c.change_id == change_id
                    && c.status.is_active()
                    && owner.is_none_or(|o| c.lease_owner.as_deref() == Some(o))
            }) else {
                let lease = if owner.is_some() {
                    " under this lease"
                } else {
                    ""
                };
                return Err(MetaError::Conflict(format!(
                    "change {change_id} is not active{lease}"
                )));
            };
            if let Some(f) = follow_up
                && s.changes.iter().any(|e| e.change_id == f.change_id)
            {
                return Err(MetaError::Conflict(format!(
                    "duplicate key: change {}",
                    f.change_id
                )));
            }
            let v = s.apply_node_writes(nodes)?;
            let c = &mut s.changes[i];
            c.status = status;
            if let Some(e) = error {
                c.error = Some(e.to_string());
            }
            c.completed_at_ms = Some(now_ms());
            c.lease_owner = None;
            c.lease_expires_at_ms = None;
            if let Some(f) = follow_up {
                s.insert_change(f)?;
            }
            Ok(v)
        })
    }

    async fn context_keys(&self, initial_secret: &[u8]) -> MetaResult<Vec<ContextKeyRecord>> {
        self.with(|s| {
            if s.context_keys.is_empty() {
                s.context_keys.push(ContextKeyRecord {
                    key_id: 1,
                    secret: initial_secret.to_vec(),
                    retires_at_ms: None,
                });
            }
            let now = now_ms();
            let mut out: Vec<ContextKeyRecord> = s
                .context_keys
                .iter()
                .filter(|k| k.retires_at_ms.is_none_or(|r| r > now))
                .cloned()
                .collect();
            out.sort_by_key(|k| (k.retires_at_ms.is_some(), std::cmp::Reverse(k.key_id)));
            Ok(out)
        })
    }

    async fn rotate_context_key(&self, secret: &[u8], grace_ms: u64) -> MetaResult<u32> {
        self.with(|s| {
            let now = now_ms();
            s.context_keys
                .retain(|k| k.retires_at_ms.is_none_or(|r| r > now));
            for k in &mut s.context_keys {
                if k.retires_at_ms.is_none() {
                    k.retires_at_ms = Some(now.saturating_add(grace_ms));
                }
            }
            let id = s.context_keys.iter().map(|k| k.key_id).max().unwrap_or(0) + 1;
            s.context_keys.push(ContextKeyRecord {
                key_id: id,
                secret: secret.to_vec(),
                retires_at_ms: None,
            });
            Ok(id)
        })
    }

    async fn create_token(&self, t: &TokenRecord) -> MetaResult<()> {
        self.with(|s| {
            // The schemas' CHECK: a tenant token names its tenant, an admin token none.
            if (t.role == TokenRole::Tenant) != t.tenant_id.is_some() {
                return Err(MetaError::BadRow(format!(
                    "token {}: role {} with tenant {:?}",
                    t.token_id,
                    t.role.as_str(),
                    t.tenant_id
                )));
            }
            if s.tokens
                .iter()
                .any(|e| e.token_id == t.token_id || e.token_hash == t.token_hash)
            {
                return Err(MetaError::Conflict(format!(
                    "duplicate key: token {}",
                    t.token_id
                )));
            }
            let mut t = t.clone();
            t.revoked_at_ms = None;
            s.tokens.push(t);
            Ok(())
        })
    }

    async fn list_tokens(&self) -> MetaResult<Vec<TokenRecord>> {
        self.with(|s| {
            let mut out = s.tokens.clone();
            out.sort_by(|a, b| (a.created_at_ms, &a.token_id).cmp(&(b.created_at_ms, &b.token_id)));
            Ok(out)
        })
    }

    async fn revoke_token(&self, token_id: &str) -> MetaResult<TokenRecord> {
        self.with(|s| {
            let Some(t) = s.tokens.iter_mut().find(|t| t.token_id == token_id) else {
                return Err(MetaError::NotFound(format!("token {token_id}")));
            };
            t.revoked_at_ms = t.revoked_at_ms.or(Some(now_ms()));
            Ok(t.clone())
        })
    }

    async fn create_repair(&self, r: &RepairRecord) -> MetaResult<()> {
        self.with(|s| {
            if let Some(active) = s.repairs.iter().find(|e| e.status == "running") {
                return Err(MetaError::Conflict(format!(
                    "repair {} is already running",
                    active.repair_id
                )));
            }
            if s.repairs.iter().any(|e| e.repair_id == r.repair_id) {
                return Err(MetaError::Conflict(format!(
                    "repair {} is already running",
                    r.repair_id
                )));
            }
            let mut r = r.clone();
            r.lease_owner = None;
            r.lease_expires_at_ms = None;
            r.completed_at_ms = None;
            s.repairs.push(r);
            Ok(())
        })
    }

    async fn get_repair(&self, repair_id: &str) -> MetaResult<Option<RepairRecord>> {
        self.with(|s| Ok(s.repairs.iter().find(|r| r.repair_id == repair_id).cloned()))
    }

    async fn list_repairs(&self, limit: u32) -> MetaResult<Vec<RepairRecord>> {
        self.with(|s| {
            let mut out = s.repairs.clone();
            out.sort_by(|a, b| {
                (b.started_at_ms, &b.repair_id).cmp(&(a.started_at_ms, &a.repair_id))
            });
            out.truncate(limit as usize);
            Ok(out)
        })
    }

    async fn claim_job(
        &self,
        table: JobTable,
        id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> MetaResult<bool> {
        self.with(|s| {
            let Some(l) = job(s, table, id) else {
                return Ok(false);
            };
            let free = l.owner.as_deref().is_none_or(|o| o == owner)
                || l.expires_at_ms.is_none_or(|e| e < now_ms);
            if free {
                *l.owner = Some(owner.to_string());
                *l.expires_at_ms = Some(now_ms.saturating_add(lease_ms));
            }
            Ok(free)
        })
    }

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
    ) -> MetaResult<bool> {
        self.with(|s| {
            let Some(l) = job(s, table, id) else {
                return Ok(false);
            };
            if l.owner.as_deref() != Some(owner) {
                return Ok(false);
            }
            if let Some(p) = plan {
                *l.plan = p.to_string();
            }
            *l.progress = progress.to_string();
            *l.error = error.map(str::to_string);
            *l.expires_at_ms = Some(now_ms.saturating_add(lease_ms));
            Ok(true)
        })
    }

    async fn finish_repair(
        &self,
        repair_id: &str,
        owner: &str,
        status: &str,
        plan: &str,
        progress: &str,
        error: Option<&str>,
    ) -> MetaResult<bool> {
        self.with(|s| {
            let Some(r) = s.repairs.iter_mut().find(|r| {
                r.repair_id == repair_id
                    && r.status == "running"
                    && r.lease_owner.as_deref() == Some(owner)
            }) else {
                return Ok(false);
            };
            r.status = status.to_string();
            r.plan = plan.to_string();
            r.progress = progress.to_string();
            r.error = error.map(str::to_string);
            r.completed_at_ms = Some(now_ms());
            r.lease_owner = None;
            r.lease_expires_at_ms = None;
            Ok(true)
        })
    }
}
