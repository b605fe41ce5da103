//! PostgreSQL metadata store (sqlx, runtime queries; no database needed at compile time).
//! Timestamps are TIMESTAMPTZ for psql readers, converted to Unix ms at the edge.

use pairdb_common::ring::NodeState;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::*;

pub struct PgMeta {
    pool: PgPool,
}

const NODE_COLS: &str = "node_id, host, port, admin_port, zone, virtual_nodes, state, status, \
    (extract(epoch from last_seen) * 1000)::bigint AS last_seen_ms, \
    (extract(epoch from created_at) * 1000)::bigint AS created_at_ms, \
    (extract(epoch from updated_at) * 1000)::bigint AS updated_at_ms";

const TENANT_COLS: &str = "tenant_id, replication_factor, read_consistency, write_consistency, \
    conflict_policy, max_value_bytes, sibling_warn, sibling_max, rate_limit_rps, max_state_bytes, \
    (extract(epoch from created_at) * 1000)::bigint AS created_at_ms, \
    (extract(epoch from updated_at) * 1000)::bigint AS updated_at_ms";

const HINT_COLS: &str = "hint_id, target_node_id, tenant_id, key, payload, \
    (extract(epoch from created_at) * 1000)::bigint AS created_at_ms, replay_count, last_error";

const REPAIR_COLS: &str = "repair_id, tenant_id, status, progress::text AS progress, \
    plan::text AS plan, params::text AS params, lease_owner, \
    (extract(epoch from lease_expires_at) * 1000)::bigint AS lease_expires_at_ms, \
    (extract(epoch from started_at) * 1000)::bigint AS started_at_ms, \
    (extract(epoch from completed_at) * 1000)::bigint AS completed_at_ms, error";

const CHANGE_COLS: &str = "change_id, type, node_id, status, progress::text AS progress, \
    plan::text AS plan, params::text AS params, lease_owner, \
    (extract(epoch from lease_expires_at) * 1000)::bigint AS lease_expires_at_ms, \
    (extract(epoch from start_time) * 1000)::bigint AS start_time_ms, \
    (extract(epoch from completed_at) * 1000)::bigint AS completed_at_ms, \
    (extract(epoch from not_before) * 1000)::bigint AS not_before_ms, error";

/// Applies membership writes inside a transaction and bumps `ring_version` when there are any.
async fn apply_node_writes(tx: &mut sqlx::PgConnection, nodes: &[NodeWrite]) -> MetaResult<u64> {
    for w in nodes {
        match w {
            NodeWrite::Insert(n) => {
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT state FROM storage_nodes WHERE node_id = $1 FOR UPDATE",
                )
                .bind(&n.node_id)
                .fetch_optional(&mut *tx)
                .await?;
                match existing.as_deref() {
                    Some("REMOVED") => {
                        sqlx::query("DELETE FROM storage_nodes WHERE node_id = $1")
                            .bind(&n.node_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Some(state) => {
                        return Err(MetaError::Conflict(format!(
                            "node {} exists and is {state}",
                            n.node_id
                        )));
                    }
                    None => {}
                }
                sqlx::query(
                    "INSERT INTO storage_nodes (node_id, host, port, admin_port, zone, virtual_nodes, state, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&n.node_id)
                .bind(&n.host)
                .bind(i32::from(n.port))
                .bind(i32::from(n.admin_port))
                .bind(&n.zone)
                .bind(n.virtual_nodes as i32)
                .bind(n.state.as_str())
                .bind(n.status.as_str())
                .execute(&mut *tx)
                .await?;
            }
            NodeWrite::SetState { node_id, from, to } => {
                let state: Option<String> = sqlx::query_scalar(
                    "SELECT state FROM storage_nodes WHERE node_id = $1 FOR UPDATE",
                )
                .bind(node_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(state) = state else {
                    return Err(MetaError::NotFound(format!("node {node_id}")));
                };
                if !from.iter().any(|f| f.as_str() == state) {
                    return Err(MetaError::Conflict(format!(
                        "node {node_id} is {state}, not {}",
                        from.iter()
                            .map(|f| f.as_str())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
                sqlx::query(
                    "UPDATE storage_nodes SET state = $2, updated_at = now() WHERE node_id = $1",
                )
                .bind(node_id)
                .bind(to.as_str())
                .execute(&mut *tx)
                .await?;
            }
            NodeWrite::SetAddress {
                node_id,
                host,
                port,
                admin_port,
            } => {
                sqlx::query(
                    "UPDATE storage_nodes SET host = $2, port = $3, admin_port = $4, updated_at = now() \
                     WHERE node_id = $1",
                )
                .bind(node_id)
                .bind(host)
                .bind(i32::from(*port))
                .bind(i32::from(*admin_port))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    let v: i64 = if nodes.is_empty() {
        sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = 'ring_version'")
            .fetch_one(&mut *tx)
            .await?
    } else {
        sqlx::query_scalar(
            "UPDATE cluster_meta SET value = value + 1, updated_at = now() WHERE key = 'ring_version' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
    };
    Ok(to_u64(v))
}

async fn insert_change(tx: &mut sqlx::PgConnection, c: &ChangeRecord) -> MetaResult<()> {
    sqlx::query(
        "INSERT INTO pending_changes (change_id, type, node_id, status, progress, plan, params, \
         not_before, error) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, \
         to_timestamp($8::bigint / 1000.0), $9)",
    )
    .bind(&c.change_id)
    .bind(c.kind.as_str())
    .bind(&c.node_id)
    .bind(c.status.as_str())
    .bind(&c.progress)
    .bind(&c.plan)
    .bind(&c.params)
    .bind(c.not_before_ms.map(|v| v as i64))
    .bind(&c.error)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn node_row(r: &PgRow) -> MetaResult<NodeRecord> {
    let state: String = r.try_get("state")?;
    Ok(NodeRecord {
        node_id: r.try_get("node_id")?,
        host: r.try_get("host")?,
        port: r.try_get::<i32, _>("port")? as u16,
        admin_port: r.try_get::<i32, _>("admin_port")? as u16,
        zone: r.try_get("zone")?,
        virtual_nodes: r.try_get::<i32, _>("virtual_nodes")? as u32,
        state: NodeState::parse(&state)
            .ok_or_else(|| MetaError::BadRow(format!("node state {state}")))?,
        status: NodeStatus::parse(&r.try_get::<String, _>("status")?),
        last_seen_ms: r.try_get::<Option<i64>, _>("last_seen_ms")?.map(to_u64),
        created_at_ms: to_u64(r.try_get("created_at_ms")?),
        updated_at_ms: to_u64(r.try_get("updated_at_ms")?),
    })
}

fn level(r: &PgRow, col: &str) -> MetaResult<Level> {
    let s: String = r.try_get(col)?;
    Level::parse(&s).ok_or_else(|| MetaError::BadRow(format!("{col} = {s}")))
}

fn tenant_row(r: &PgRow) -> MetaResult<TenantRecord> {
    Ok(TenantRecord {
        tenant_id: r.try_get("tenant_id")?,
        replication_factor: r.try_get::<i32, _>("replication_factor")? as u32,
        read_consistency: level(r, "read_consistency")?,
        write_consistency: level(r, "write_consistency")?,
        conflict_policy: parse_policy(&r.try_get::<String, _>("conflict_policy")?),
        max_value_bytes: r.try_get::<i32, _>("max_value_bytes")? as u32,
        sibling_warn: r.try_get::<i32, _>("sibling_warn")? as u32,
        sibling_max: r.try_get::<i32, _>("sibling_max")? as u32,
        rate_limit_rps: r.try_get::<i32, _>("rate_limit_rps")? as u32,
        max_state_bytes: r.try_get::<i32, _>("max_state_bytes")? as u32,
        created_at_ms: to_u64(r.try_get("created_at_ms")?),
        updated_at_ms: to_u64(r.try_get("updated_at_ms")?),
    })
}

fn token_row(r: &PgRow) -> MetaResult<TokenRecord> {
    let role: String = r.try_get("role")?;
    let access: String = r.try_get("access")?;
    Ok(TokenRecord {
        token_id: r.try_get("token_id")?,
        token_hash: r.try_get("token_hash")?,
        role: TokenRole::parse(&role)
            .ok_or_else(|| MetaError::BadRow(format!("token role {role:?}")))?,
        tenant_id: r.try_get("tenant_id")?,
        write: access == "read-write",
        description: r.try_get("description")?,
        created_at_ms: to_u64(r.try_get::<Option<i64>, _>("created_ms")?.unwrap_or(0)),
        expires_at_ms: r.try_get::<Option<i64>, _>("expires_ms")?.map(to_u64),
        revoked_at_ms: r.try_get::<Option<i64>, _>("revoked_ms")?.map(to_u64),
    })
}

fn hint_row(r: &PgRow) -> MetaResult<HintRecord> {
    Ok(HintRecord {
        hint_id: r.try_get("hint_id")?,
        target_node_id: r.try_get("target_node_id")?,
        tenant_id: r.try_get("tenant_id")?,
        key: r.try_get("key")?,
        payload: r.try_get("payload")?,
        created_at_ms: to_u64(r.try_get("created_at_ms")?),
        replay_count: r.try_get::<i32, _>("replay_count")? as u32,
        last_error: r.try_get("last_error")?,
    })
}

impl PgMeta {
    pub async fn connect(url: &str, max_connections: u32) -> MetaResult<PgMeta> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(PgMeta { pool })
    }
}

#[tonic::async_trait]
impl MetaStore for PgMeta {
    async fn migrate(&self) -> MetaResult<()> {
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| MetaError::Db(format!("migrate: {e}")))
    }

    async fn ring_version(&self) -> MetaResult<u64> {
        let v: i64 =
            sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = 'ring_version'")
                .fetch_one(&self.pool)
                .await?;
        Ok(to_u64(v))
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRecord>> {
        let sql = format!("SELECT {NODE_COLS} FROM storage_nodes ORDER BY node_id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_row).collect()
    }

    async fn get_node(&self, node_id: &str) -> MetaResult<Option<NodeRecord>> {
        let sql = format!("SELECT {NODE_COLS} FROM storage_nodes WHERE node_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(node_row).transpose()
    }

    async fn add_node(&self, n: &NodeRecord) -> MetaResult<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO storage_nodes (node_id, host, port, admin_port, zone, virtual_nodes, state, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&n.node_id)
        .bind(&n.host)
        .bind(i32::from(n.port))
        .bind(i32::from(n.admin_port))
        .bind(&n.zone)
        .bind(n.virtual_nodes as i32)
        .bind(n.state.as_str())
        .bind(n.status.as_str())
        .execute(&mut *tx)
        .await?;
        let v: i64 = sqlx::query_scalar(
            "UPDATE cluster_meta SET value = value + 1, updated_at = now() WHERE key = 'ring_version' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(to_u64(v))
    }

    async fn record_status(
        &self,
        node_id: &str,
        status: NodeStatus,
        last_seen_ms: Option<u64>,
    ) -> MetaResult<()> {
        sqlx::query(
            "UPDATE storage_nodes SET status = $2, \
             last_seen = COALESCE(to_timestamp($3::bigint / 1000.0), last_seen), updated_at = now() \
             WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(status.as_str())
        .bind(last_seen_ms.map(|v| v as i64))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO tenants (tenant_id, replication_factor, read_consistency, write_consistency, \
             conflict_policy, max_value_bytes, sibling_warn, sibling_max, rate_limit_rps, max_state_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&t.tenant_id)
        .bind(t.replication_factor as i32)
        .bind(t.read_consistency.as_str())
        .bind(t.write_consistency.as_str())
        .bind(policy_str(t.conflict_policy))
        .bind(t.max_value_bytes as i32)
        .bind(t.sibling_warn as i32)
        .bind(t.sibling_max as i32)
        .bind(t.rate_limit_rps as i32)
        .bind(t.max_state_bytes as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_tenant(&self, tenant_id: &str) -> MetaResult<Option<TenantRecord>> {
        let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE tenant_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_row).transpose()
    }

    async fn update_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        let r = sqlx::query(
            "UPDATE tenants SET replication_factor = $2, read_consistency = $3, write_consistency = $4, \
             conflict_policy = $5, max_value_bytes = $6, sibling_warn = $7, sibling_max = $8, \
             rate_limit_rps = $9, max_state_bytes = $10, updated_at = now() WHERE tenant_id = $1",
        )
        .bind(&t.tenant_id)
        .bind(t.replication_factor as i32)
        .bind(t.read_consistency.as_str())
        .bind(t.write_consistency.as_str())
        .bind(policy_str(t.conflict_policy))
        .bind(t.max_value_bytes as i32)
        .bind(t.sibling_warn as i32)
        .bind(t.sibling_max as i32)
        .bind(t.rate_limit_rps as i32)
        .bind(t.max_state_bytes as i32)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(MetaError::NotFound(format!("tenant {}", t.tenant_id)));
        }
        Ok(())
    }

    async fn list_tenants(&self) -> MetaResult<Vec<TenantRecord>> {
        let sql = format!("SELECT {TENANT_COLS} FROM tenants ORDER BY tenant_id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_row).collect()
    }

    async fn insert_hints(&self, hints: &[NewHint]) -> MetaResult<()> {
        if hints.is_empty() {
            return Ok(());
        }
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO hints (target_node_id, tenant_id, key, payload, created_at) ",
        );
        q.push_values(hints, |mut b, h| {
            b.push_bind(&h.target_node_id)
                .push_bind(&h.tenant_id)
                .push_bind(&h.key)
                .push_bind(&h.payload)
                .push("to_timestamp(")
                .push_bind_unseparated(h.created_at_ms as i64)
                .push_unseparated("::bigint / 1000.0)");
        });
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn claim_hints(
        &self,
        target: &str,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> MetaResult<Vec<HintRecord>> {
        // Row locks with SKIP LOCKED: concurrent coordinators claim disjoint hints.
        let sql = format!(
            "UPDATE hints SET claimed_by = $2, claim_expires_at = now() + ($3::bigint * interval '1 millisecond') \
             WHERE hint_id IN ( \
               SELECT hint_id FROM hints WHERE target_node_id = $1 \
                 AND (claim_expires_at IS NULL OR claim_expires_at <= now()) \
               ORDER BY hint_id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING {HINT_COLS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target)
            .bind(owner)
            .bind(lease_ms as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<HintRecord> = rows.iter().map(hint_row).collect::<MetaResult<_>>()?;
        out.sort_by_key(|h| h.hint_id);
        Ok(out)
    }

    async fn delete_hint(&self, hint_id: i64) -> MetaResult<()> {
        sqlx::query("DELETE FROM hints WHERE hint_id = $1")
            .bind(hint_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn fail_hint(
        &self,
        hint_id: i64,
        error: &str,
        spend: bool,
        retry_after_ms: u64,
    ) -> MetaResult<()> {
        sqlx::query(
            "UPDATE hints SET replay_count = replay_count + $3, last_error = $2, claimed_by = NULL, \
             claim_expires_at = now() + ($4::bigint * interval '1 millisecond') WHERE hint_id = $1",
        )
        .bind(hint_id)
        .bind(error)
        .bind(i32::from(spend))
        .bind(retry_after_ms.min(i64::MAX as u64) as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_dead_hints(&self, cutoff_ms: u64, max_attempts: u32) -> MetaResult<u64> {
        let r = sqlx::query(
            "DELETE FROM hints WHERE created_at < to_timestamp($1::bigint / 1000.0) OR replay_count >= $2",
        )
        .bind(cutoff_ms as i64)
        .bind(max_attempts as i32)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn hint_targets(&self) -> MetaResult<Vec<HintTarget>> {
        let rows = sqlx::query(
            "SELECT target_node_id, count(*) AS pending, sum(octet_length(payload))::bigint AS bytes, \
             (extract(epoch from min(created_at)) * 1000)::bigint AS oldest \
             FROM hints GROUP BY target_node_id ORDER BY target_node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HintTarget {
                    node_id: r.try_get("target_node_id")?,
                    pending: to_u64(r.try_get("pending")?),
                    bytes: to_u64(r.try_get("bytes")?),
                    oldest_created_at_ms: to_u64(r.try_get("oldest")?),
                })
            })
            .collect()
    }

    async fn count_hints_for(&self, target: &str) -> MetaResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM hints WHERE target_node_id = $1")
            .bind(target)
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(n))
    }

    async fn create_change(
        &self,
        c: &ChangeRecord,
        nodes: &[NodeWrite],
        admit: &ChangeAdmit,
    ) -> MetaResult<u64> {
        let mut tx = self.pool.begin().await?;
        // The admission lock: a row lock every admitting transaction takes first.
        sqlx::query(
            "UPDATE cluster_meta SET value = value + 1, updated_at = now() WHERE key = 'admission_lock'",
        )
        .execute(&mut *tx)
        .await?;
        let sql = format!("SELECT {NODE_COLS} FROM storage_nodes ORDER BY node_id");
        let members = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(node_row)
            .collect::<MetaResult<Vec<_>>>()?;
        let max_rf: Option<i64> =
            sqlx::query_scalar("SELECT MAX(replication_factor)::bigint FROM tenants")
                .fetch_one(&mut *tx)
                .await?;
        admit(&Membership {
            nodes: members,
            max_rf: max_rf.map(|v| v as u32),
        })
        .map_err(MetaError::Conflict)?;
        let v = apply_node_writes(&mut tx, nodes).await?;
        insert_change(&mut tx, c).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn write_nodes(&self, nodes: &[NodeWrite]) -> MetaResult<u64> {
        let mut tx = self.pool.begin().await?;
        let v = apply_node_writes(&mut tx, nodes).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn get_change(&self, change_id: &str) -> MetaResult<Option<ChangeRecord>> {
        let sql = format!("SELECT {CHANGE_COLS} FROM pending_changes WHERE change_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(change_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(change_row).transpose()
    }

    async fn list_changes(&self, include_finished: bool) -> MetaResult<Vec<ChangeRecord>> {
        let filter = if include_finished {
            ""
        } else {
            "WHERE status IN ('pending', 'running')"
        };
        let sql = format!(
            "SELECT {CHANGE_COLS} FROM pending_changes {filter} ORDER BY start_time, change_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(change_row).collect()
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
        let mut tx = self.pool.begin().await?;
        // The admission lock: a row lock every admitting transaction takes first.
        sqlx::query(
            "UPDATE cluster_meta SET value = value + 1, updated_at = now() WHERE key = 'admission_lock'",
        )
        .execute(&mut *tx)
        .await?;
        let v: i64 =
            sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = 'ring_version'")
                .fetch_one(&mut *tx)
                .await?;
        if to_u64(v) != ring_version {
            return Ok(Err(format!(
                "ring version moved to {v} while planning against {ring_version}"
            )));
        }
        let sql = format!("SELECT {CHANGE_COLS} FROM pending_changes WHERE status = 'running'");
        let running = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(change_row)
            .collect::<MetaResult<Vec<_>>>()?;
        if let Err(why) = admit(&running) {
            return Ok(Err(why));
        }
        let r = sqlx::query(
            "UPDATE pending_changes SET status = 'running', plan = $3::jsonb, progress = $4::jsonb, \
             updated_at = now() WHERE change_id = $1 AND status = 'pending' AND lease_owner = $2",
        )
        .bind(change_id)
        .bind(owner)
        .bind(plan)
        .bind(progress)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(Err("change is no longer pending under this lease".into()));
        }
        tx.commit().await?;
        Ok(Ok(()))
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
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE pending_changes SET status = $3, error = COALESCE($4, error), completed_at = now(), \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
             WHERE change_id = $1 AND status IN ('pending', 'running') \
               AND ($2::text IS NULL OR lease_owner = $2)",
        )
        .bind(change_id)
        .bind(owner)
        .bind(status.as_str())
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(MetaError::Conflict(format!(
                "change {change_id} is not active{}",
                if owner.is_some() {
                    " under this lease"
                } else {
                    ""
                }
            )));
        }
        let v = apply_node_writes(&mut tx, nodes).await?;
        if let Some(c) = follow_up {
            insert_change(&mut tx, c).await?;
        }
        tx.commit().await?;
        Ok(v)
    }

    async fn context_keys(&self, initial_secret: &[u8]) -> MetaResult<Vec<ContextKeyRecord>> {
        sqlx::query(
            "INSERT INTO context_keys (key_id, secret) SELECT 1, $1 \
             WHERE NOT EXISTS (SELECT 1 FROM context_keys) ON CONFLICT DO NOTHING",
        )
        .bind(initial_secret)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT key_id, secret, (extract(epoch from retires_at) * 1000)::bigint AS retires_at_ms \
             FROM context_keys WHERE retires_at IS NULL OR retires_at > now() \
             ORDER BY (retires_at IS NULL) DESC, key_id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ContextKeyRecord {
                    key_id: r.try_get::<i32, _>("key_id")? as u32,
                    secret: r.try_get("secret")?,
                    retires_at_ms: r.try_get::<Option<i64>, _>("retires_at_ms")?.map(to_u64),
                })
            })
            .collect()
    }

    async fn rotate_context_key(&self, secret: &[u8], grace_ms: u64) -> MetaResult<u32> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE context_keys IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM context_keys WHERE retires_at IS NOT NULL AND retires_at <= now()",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE context_keys SET retires_at = now() + ($1::bigint * interval '1 millisecond') \
             WHERE retires_at IS NULL",
        )
        .bind(grace_ms.min(i64::MAX as u64) as i64)
        .execute(&mut *tx)
        .await?;
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO context_keys (key_id, secret) \
             SELECT COALESCE(max(key_id), 0) + 1, $1 FROM context_keys RETURNING key_id",
        )
        .bind(secret)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id as u32)
    }

    async fn create_token(&self, t: &TokenRecord) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO tokens (token_id, token_hash, role, tenant_id, access, description, \
             created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::bigint / 1000.0), \
             to_timestamp($8::bigint / 1000.0))",
        )
        .bind(&t.token_id)
        .bind(&t.token_hash)
        .bind(t.role.as_str())
        .bind(&t.tenant_id)
        .bind(t.access_str())
        .bind(&t.description)
        .bind(t.created_at_ms as i64)
        .bind(t.expires_at_ms.map(|v| v.min(i64::MAX as u64) as i64))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_tokens(&self) -> MetaResult<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT token_id, token_hash, role, tenant_id, access, description, \
             (extract(epoch from created_at) * 1000)::bigint AS created_ms, \
             (extract(epoch from expires_at) * 1000)::bigint AS expires_ms, \
             (extract(epoch from revoked_at) * 1000)::bigint AS revoked_ms \
             FROM tokens ORDER BY created_at, token_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    async fn revoke_token(&self, token_id: &str) -> MetaResult<TokenRecord> {
        let row = sqlx::query(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE token_id = $1 \
             RETURNING token_id, token_hash, role, tenant_id, access, description, \
             (extract(epoch from created_at) * 1000)::bigint AS created_ms, \
             (extract(epoch from expires_at) * 1000)::bigint AS expires_ms, \
             (extract(epoch from revoked_at) * 1000)::bigint AS revoked_ms",
        )
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => token_row(&r),
            None => Err(MetaError::NotFound(format!("token {token_id}"))),
        }
    }

    async fn create_repair(&self, r: &RepairRecord) -> MetaResult<()> {
        let res = sqlx::query(
            "INSERT INTO repairs (repair_id, tenant_id, status, progress, plan, params, \
             started_at, active_slot, updated_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, \
                     to_timestamp($7::bigint / 1000.0), 1, now())",
        )
        .bind(&r.repair_id)
        .bind(&r.tenant_id)
        .bind(&r.status)
        .bind(&r.progress)
        .bind(&r.plan)
        .bind(&r.params)
        .bind(r.started_at_ms as i64)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match MetaError::from(e) {
                MetaError::Conflict(_) => {
                    let active: Option<String> = sqlx::query_scalar(
                        "SELECT repair_id FROM repairs WHERE active_slot IS NOT NULL",
                    )
                    .fetch_optional(&self.pool)
                    .await?;
                    Err(MetaError::Conflict(format!(
                        "repair {} is already running",
                        active.unwrap_or_else(|| r.repair_id.clone())
                    )))
                }
                other => Err(other),
            },
        }
    }

    async fn get_repair(&self, repair_id: &str) -> MetaResult<Option<RepairRecord>> {
        let sql = format!("SELECT {REPAIR_COLS} FROM repairs WHERE repair_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repair_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(repair_row).transpose()
    }

    async fn list_repairs(&self, limit: u32) -> MetaResult<Vec<RepairRecord>> {
        let sql = format!(
            "SELECT {REPAIR_COLS} FROM repairs ORDER BY started_at DESC, repair_id DESC LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(repair_row).collect()
    }

    async fn claim_job(
        &self,
        table: JobTable,
        id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> MetaResult<bool> {
        let r = sqlx::query(sqlx::AssertSqlSafe(super::sql::claim_job(
            &super::sql::POSTGRES,
            table,
        )))
        .bind(id)
        .bind(owner)
        .bind(now_ms as i64)
        .bind(lease_ms as i64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
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
        let r = sqlx::query(sqlx::AssertSqlSafe(super::sql::save_job(
            &super::sql::POSTGRES,
            table,
        )))
        .bind(id)
        .bind(owner)
        .bind(now_ms as i64)
        .bind(lease_ms as i64)
        .bind(plan)
        .bind(progress)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
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
        let r = sqlx::query(
            "UPDATE repairs SET status = $3, plan = $4::jsonb, progress = $5::jsonb, error = $6, \
             completed_at = now(), active_slot = NULL, lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = now() \
             WHERE repair_id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(repair_id)
        .bind(owner)
        .bind(status)
        .bind(plan)
        .bind(progress)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
