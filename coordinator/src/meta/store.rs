//! The metadata store's statements, written once for PostgreSQL and SQLite ([`SqlMeta`] over a
//! [`Backend`]; `sql.rs` says what the dialects spell differently, `rows.rs` reads the rows).
//!
//! Every transaction that reads before it writes (membership, admission, key rotation) starts
//! by bumping the `admission_lock` row: on PostgreSQL that row lock serializes them, on SQLite
//! it takes the database's write lock at once, so no read inside goes stale.

use pairdb_common::now_ms;

use super::rows::*;
use super::sql::{self, Backend, int};
use super::tx::*;
use super::*;

/// The metadata store on one database (`PgMeta`, `SqliteMeta`).
pub struct SqlMeta<B: Backend> {
    pub(super) pool: sqlx::Pool<B>,
}

pub type PgMeta = SqlMeta<sqlx::Postgres>;
pub type SqliteMeta = SqlMeta<sqlx::Sqlite>;

#[tonic::async_trait]
impl<B: Backend> MetaStore for SqlMeta<B> {
    async fn migrate(&self) -> MetaResult<()> {
        B::migrate(&self.pool).await
    }

    async fn clock_ms(&self) -> MetaResult<u64> {
        let mut c = self.pool.acquire().await?;
        let d = &B::DIALECT;
        let sql = d.sql(&format!("SELECT {} AS value", d.clock("$1")));
        let v = one_int::<B>(&mut c, &sql, &[int(now_ms())], "value").await?;
        Ok(to_u64(
            v.ok_or_else(|| MetaError::BadRow("no clock".into()))?,
        ))
    }

    async fn ring_version(&self) -> MetaResult<u64> {
        let mut c = self.pool.acquire().await?;
        let sql = "SELECT value FROM cluster_meta WHERE key = 'ring_version'";
        let v = one_int::<B>(&mut c, sql, &[], "value").await?;
        Ok(to_u64(v.ok_or_else(|| {
            MetaError::BadRow("no ring_version row".into())
        })?))
    }

    async fn list_nodes(&self) -> MetaResult<Vec<NodeRecord>> {
        self.nodes_where("ORDER BY node_id", &[]).await
    }

    async fn get_node(&self, node_id: &str) -> MetaResult<Option<NodeRecord>> {
        Ok(self
            .nodes_where("WHERE node_id = $1", &[node_id.into()])
            .await?
            .pop())
    }

    async fn add_node(&self, n: &NodeRecord) -> MetaResult<u64> {
        let mut tx = self.pool.begin().await?;
        insert_node::<B>(&mut tx, n).await?;
        let v = bump_ring::<B>(&mut tx).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn set_drained(&self, node_id: &str, drained_at_ms: Option<u64>) -> MetaResult<u64> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE storage_nodes SET drained_at = CASE WHEN {at} IS NULL THEN NULL \
             ELSE COALESCE(drained_at, {at}) END, updated_at = {now} WHERE node_id = $1",
            at = d.ts("$2"),
            now = d.ts("$3")
        ));
        let at = drained_at_ms.map(|v| v.min(i64::MAX as u64) as i64);
        let mut tx = self.begin_write().await?;
        if run::<B>(&mut tx, &sql, &[node_id.into(), at.into(), now()]).await? == 0 {
            return Err(MetaError::NotFound(format!("storage node {node_id}")));
        }
        let v = bump_ring::<B>(&mut tx).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn record_status(
        &self,
        node_id: &str,
        status: NodeStatus,
        last_seen_ms: Option<u64>,
    ) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE storage_nodes SET status = $2, last_seen = COALESCE({}, last_seen), \
             updated_at = {} WHERE node_id = $1",
            d.ts("$3"),
            d.ts("$4")
        ));
        let seen = last_seen_ms.map(|v| v.min(i64::MAX as u64) as i64);
        self.run(
            &sql,
            &[node_id.into(), status.as_str().into(), seen.into(), now()],
        )
        .await?;
        Ok(())
    }

    async fn create_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "INSERT INTO tenants (tenant_id, replication_factor, read_consistency, \
             write_consistency, conflict_policy, max_value_bytes, sibling_warn, sibling_max, \
             rate_limit_rps, max_state_bytes, created_at, updated_at, target_replication_factor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {now}, {now}, $12)",
            now = d.ts("$11")
        ));
        self.run(&sql, &Self::tenant_args(t)).await?;
        Ok(())
    }

    async fn get_tenant(&self, tenant_id: &str) -> MetaResult<Option<TenantRecord>> {
        Ok(self
            .tenants_where("WHERE tenant_id = $1", &[tenant_id.into()])
            .await?
            .pop())
    }

    async fn update_tenant(&self, t: &TenantRecord) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE tenants SET replication_factor = $2, read_consistency = $3, \
             write_consistency = $4, conflict_policy = $5, max_value_bytes = $6, \
             sibling_warn = $7, sibling_max = $8, rate_limit_rps = $9, max_state_bytes = $10, \
             updated_at = {}, target_replication_factor = $12 WHERE tenant_id = $1",
            d.ts("$11")
        ));
        if self.run(&sql, &Self::tenant_args(t)).await? == 0 {
            return Err(MetaError::NotFound(format!("tenant {}", t.tenant_id)));
        }
        Ok(())
    }

    async fn list_tenants(&self) -> MetaResult<Vec<TenantRecord>> {
        self.tenants_where("ORDER BY tenant_id", &[]).await
    }

    async fn insert_hints(&self, hints: &[NewHint]) -> MetaResult<()> {
        if hints.is_empty() {
            return Ok(());
        }
        let d = &B::DIALECT;
        let mut values = Vec::with_capacity(hints.len());
        let mut args = Vec::with_capacity(hints.len() * 5);
        for (i, h) in hints.iter().enumerate() {
            let p = |k: usize| format!("${}", i * 5 + k);
            values.push(format!(
                "({}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                // The store's clock (every coordinator judges the TTL by it, not by the
                // clock of the coordinator that stored the hint).
                d.ts(&d.clock(&p(5)))
            ));
            args.extend([
                (&h.target_node_id).into(),
                (&h.tenant_id).into(),
                (&h.key).into(),
                (&h.payload).into(),
                int(h.created_at_ms),
            ]);
        }
        let sql = d.sql(&format!(
            "INSERT INTO hints (target_node_id, tenant_id, key, payload, created_at) VALUES {}",
            values.join(", ")
        ));
        self.run(&sql, &args).await?;
        Ok(())
    }

    async fn claim_hints(
        &self,
        target: &str,
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> MetaResult<Vec<HintRecord>> {
        // PostgreSQL: row locks with SKIP LOCKED, so concurrent coordinators claim disjoint
        // hints; SQLite: the UPDATE is atomic under its one writer.
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE hints SET claimed_by = $2, claim_expires_at = {expires} \
             WHERE hint_id IN ( \
               SELECT hint_id FROM hints WHERE target_node_id = $1 \
                 AND (claim_expires_at IS NULL OR claim_expires_at <= {now}) \
               ORDER BY hint_id LIMIT $5{lock}) \
             RETURNING {cols}",
            expires = d.ts(&format!("{} + $4", d.clock("$3"))),
            now = d.ts(&d.clock("$3")),
            lock = d.skip_locked,
            cols = hint_cols(d),
        ));
        let args = [
            target.into(),
            owner.into(),
            now(),
            int(lease_ms),
            int(limit),
        ];
        let mut out = self.all(&sql, &args, hint_row::<B>).await?;
        out.sort_by_key(|h| h.hint_id);
        Ok(out)
    }

    async fn delete_hint(&self, hint_id: i64) -> MetaResult<()> {
        let sql = B::DIALECT.sql("DELETE FROM hints WHERE hint_id = $1");
        self.run(&sql, &[hint_id.into()]).await?;
        Ok(())
    }

    async fn fail_hint(
        &self,
        hint_id: i64,
        error: &str,
        spend: bool,
        retry_after_ms: u64,
    ) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE hints SET replay_count = replay_count + $3, last_error = $2, \
             claimed_by = NULL, claim_expires_at = {} WHERE hint_id = $1",
            d.ts(&format!("{} + $4", d.clock("$5")))
        ));
        self.run(
            &sql,
            &[
                hint_id.into(),
                error.into(),
                int(spend),
                int(retry_after_ms),
                int(now_ms()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_dead_hints(&self, cutoff_ms: u64, max_attempts: u32) -> MetaResult<u64> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "DELETE FROM hints WHERE created_at < {} OR replay_count >= $2",
            d.ts("$1")
        ));
        self.run(&sql, &[int(cutoff_ms), int(max_attempts)]).await
    }

    async fn hint_targets(&self) -> MetaResult<Vec<HintTarget>> {
        let d = &B::DIALECT;
        let sql = format!(
            "SELECT target_node_id, count(*) AS pending, sum(length(payload)) AS bytes, {} \
             FROM hints GROUP BY target_node_id ORDER BY target_node_id",
            d.ms("min(created_at)", "oldest")
        );
        self.all(&sql, &[], hint_target_row::<B>).await
    }

    async fn count_hints_for(&self, target: &str) -> MetaResult<u64> {
        let mut c = self.pool.acquire().await?;
        let sql = B::DIALECT.sql("SELECT count(*) AS n FROM hints WHERE target_node_id = $1");
        let n = one_int::<B>(&mut c, &sql, &[target.into()], "n").await?;
        Ok(to_u64(n.unwrap_or(0)))
    }

    async fn delete_hints_for(&self, target: &str) -> MetaResult<u64> {
        let sql = B::DIALECT.sql("DELETE FROM hints WHERE target_node_id = $1");
        self.run(&sql, &[target.into()]).await
    }

    async fn create_change(
        &self,
        c: &ChangeRecord,
        nodes: &[NodeWrite],
        admit: &ChangeAdmit,
    ) -> MetaResult<u64> {
        let d = &B::DIALECT;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {} FROM storage_nodes ORDER BY node_id",
            node_cols(d)
        );
        let members = all::<B, _>(&mut tx, &sql, &[], node_row::<B>).await?;
        let sql = "SELECT MAX(replication_factor) AS rf FROM tenants";
        let max_rf = one_int::<B>(&mut tx, sql, &[], "rf").await?;
        admit(&Membership {
            nodes: members,
            max_rf: max_rf.map(|v| v as u32),
        })
        .map_err(MetaError::Conflict)?;
        let v = apply_node_writes::<B>(&mut tx, nodes).await?;
        insert_change::<B>(&mut tx, c).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn write_nodes(&self, nodes: &[NodeWrite]) -> MetaResult<u64> {
        let mut tx = self.begin_write().await?;
        let v = apply_node_writes::<B>(&mut tx, nodes).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn get_change(&self, change_id: &str) -> MetaResult<Option<ChangeRecord>> {
        Ok(self
            .changes_where("WHERE change_id = $1", &[change_id.into()])
            .await?
            .pop())
    }

    async fn list_changes(&self, include_finished: bool) -> MetaResult<Vec<ChangeRecord>> {
        let filter = if include_finished {
            "ORDER BY start_time, change_id"
        } else {
            "WHERE status IN ('pending', 'running') ORDER BY start_time, change_id"
        };
        self.changes_where(filter, &[]).await
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
        let d = &B::DIALECT;
        let mut tx = self.begin_write().await?;
        let sql = "SELECT value FROM cluster_meta WHERE key = 'ring_version'";
        let v = to_u64(one_int::<B>(&mut tx, sql, &[], "value").await?.unwrap_or(0));
        if v != ring_version {
            return Ok(Err(format!(
                "ring version moved to {v} while planning against {ring_version}"
            )));
        }
        let sql = format!(
            "SELECT {} FROM pending_changes WHERE status = 'running'",
            change_cols(d)
        );
        let running = all::<B, _>(&mut tx, &sql, &[], change_row::<B>).await?;
        if let Err(why) = admit(&running) {
            return Ok(Err(why));
        }
        let sql = d.sql(&format!(
            "UPDATE pending_changes SET status = 'running', plan = {}, progress = {}, \
             updated_at = {} WHERE change_id = $1 AND status = 'pending' AND lease_owner = $2",
            d.json("$3"),
            d.json("$4"),
            d.ts("$5")
        ));
        let args = [
            change_id.into(),
            owner.into(),
            plan.into(),
            progress.into(),
            now(),
        ];
        if run::<B>(&mut tx, &sql, &args).await? != 1 {
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
        let d = &B::DIALECT;
        let mut tx = self.begin_write().await?;
        let sql = d.sql(&format!(
            "UPDATE pending_changes SET status = $3, error = COALESCE($4, error), \
             completed_at = {now}, lease_owner = NULL, lease_expires_at = NULL, updated_at = {now} \
             WHERE change_id = $1 AND status IN ('pending', 'running') \
               AND ($2 IS NULL OR lease_owner = $2)",
            now = d.ts("$5")
        ));
        let args = [
            change_id.into(),
            owner.into(),
            status.as_str().into(),
            error.into(),
            now(),
        ];
        if run::<B>(&mut tx, &sql, &args).await? != 1 {
            let lease = if owner.is_some() {
                " under this lease"
            } else {
                ""
            };
            return Err(MetaError::Conflict(format!(
                "change {change_id} is not active{lease}"
            )));
        }
        let v = apply_node_writes::<B>(&mut tx, nodes).await?;
        if let Some(c) = follow_up {
            insert_change::<B>(&mut tx, c).await?;
        }
        tx.commit().await?;
        Ok(v)
    }

    async fn context_keys(&self, initial_secret: &[u8]) -> MetaResult<Vec<ContextKeyRecord>> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "INSERT INTO context_keys (key_id, secret, created_at) SELECT 1, $1, {} \
             WHERE NOT EXISTS (SELECT 1 FROM context_keys) ON CONFLICT DO NOTHING",
            d.ts("$2")
        ));
        self.run(&sql, &[initial_secret.into(), now()]).await?;
        let sql = d.sql(&format!(
            "SELECT key_id, secret, {} FROM context_keys \
             WHERE retires_at IS NULL OR retires_at > {} \
             ORDER BY (retires_at IS NULL) DESC, key_id DESC",
            d.ms("retires_at", "retires_at_ms"),
            d.ts("$1")
        ));
        self.all(&sql, &[now()], context_key_row::<B>).await
    }

    async fn rotate_context_key(&self, secret: &[u8], grace_ms: u64) -> MetaResult<u32> {
        let d = &B::DIALECT;
        let mut tx = self.begin_write().await?;
        let sql = d.sql(&format!(
            "DELETE FROM context_keys WHERE retires_at IS NOT NULL AND retires_at <= {}",
            d.ts("$1")
        ));
        run::<B>(&mut tx, &sql, &[now()]).await?;
        let sql = d.sql(&format!(
            "UPDATE context_keys SET retires_at = {} WHERE retires_at IS NULL",
            d.ts("$1")
        ));
        run::<B>(&mut tx, &sql, &[int(now_ms().saturating_add(grace_ms))]).await?;
        let sql = d.sql(&format!(
            "INSERT INTO context_keys (key_id, secret, created_at) \
             SELECT COALESCE(max(key_id), 0) + 1, $1, {} FROM context_keys RETURNING key_id",
            d.ts("$2")
        ));
        let id = one_int::<B>(&mut tx, &sql, &[secret.into(), now()], "key_id").await?;
        tx.commit().await?;
        let id = id.ok_or_else(|| MetaError::BadRow("no key_id returned".into()))?;
        u32::try_from(id).map_err(|_| MetaError::BadRow(format!("key_id {id}")))
    }

    async fn create_token(&self, t: &TokenRecord) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "INSERT INTO tokens (token_id, token_hash, role, tenant_id, access, description, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, {}, {})",
            d.ts("$7"),
            d.ts("$8")
        ));
        let args = [
            (&t.token_id).into(),
            (&t.token_hash).into(),
            t.role.as_str().into(),
            (&t.tenant_id).into(),
            t.access_str().into(),
            (&t.description).into(),
            int(t.created_at_ms),
            t.expires_at_ms
                .map(|v| v.min(i64::MAX as u64) as i64)
                .into(),
        ];
        self.run(&sql, &args).await?;
        Ok(())
    }

    async fn list_tokens(&self) -> MetaResult<Vec<TokenRecord>> {
        let d = &B::DIALECT;
        let sql = format!(
            "SELECT {} FROM tokens ORDER BY created_at, token_id",
            token_cols(d)
        );
        self.all(&sql, &[], token_row::<B>).await
    }

    async fn revoke_token(&self, token_id: &str) -> MetaResult<TokenRecord> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, {}) WHERE token_id = $1 \
             RETURNING {}",
            d.ts("$2"),
            token_cols(d)
        ));
        self.all(&sql, &[token_id.into(), now()], token_row::<B>)
            .await?
            .pop()
            .ok_or_else(|| MetaError::NotFound(format!("token {token_id}")))
    }

    async fn create_repair(&self, r: &RepairRecord) -> MetaResult<()> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "INSERT INTO repairs (repair_id, tenant_id, status, progress, plan, params, \
             started_at, active_slot, updated_at) VALUES ($1, $2, $3, {}, {}, {}, {}, 1, {})",
            d.json("$4"),
            d.json("$5"),
            d.json("$6"),
            d.ts("$7"),
            d.ts("$8")
        ));
        let args = [
            (&r.repair_id).into(),
            (&r.tenant_id).into(),
            (&r.status).into(),
            (&r.progress).into(),
            (&r.plan).into(),
            (&r.params).into(),
            int(r.started_at_ms),
            now(),
        ];
        match self.run(&sql, &args).await {
            Ok(_) => Ok(()),
            Err(MetaError::Conflict(_)) => {
                let active = self
                    .repairs_where("WHERE active_slot IS NOT NULL", &[])
                    .await?;
                Err(MetaError::Conflict(format!(
                    "repair {} is already running",
                    active
                        .first()
                        .map_or(r.repair_id.as_str(), |a| &a.repair_id)
                )))
            }
            Err(e) => Err(e),
        }
    }

    async fn get_repair(&self, repair_id: &str) -> MetaResult<Option<RepairRecord>> {
        Ok(self
            .repairs_where("WHERE repair_id = $1", &[repair_id.into()])
            .await?
            .pop())
    }

    async fn list_repairs(&self, limit: u32) -> MetaResult<Vec<RepairRecord>> {
        self.repairs_where(
            "ORDER BY started_at DESC, repair_id DESC LIMIT $1",
            &[int(limit)],
        )
        .await
    }

    async fn claim_job(
        &self,
        table: JobTable,
        id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> MetaResult<bool> {
        let sql = sql::claim_job(&B::DIALECT, table);
        let args = [id.into(), owner.into(), int(now_ms), int(lease_ms)];
        Ok(self.run(&sql, &args).await? == 1)
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
        let sql = sql::save_job(&B::DIALECT, table);
        let args = [
            id.into(),
            owner.into(),
            int(now_ms),
            int(lease_ms),
            plan.into(),
            progress.into(),
            error.into(),
        ];
        Ok(self.run(&sql, &args).await? == 1)
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
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "UPDATE repairs SET status = $3, plan = {}, progress = {}, error = $6, \
             completed_at = {now}, active_slot = NULL, lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = {now} \
             WHERE repair_id = $1 AND lease_owner = $2 AND status = 'running'",
            d.json("$4"),
            d.json("$5"),
            now = d.ts("$7")
        ));
        let args = [
            repair_id.into(),
            owner.into(),
            status.into(),
            plan.into(),
            progress.into(),
            error.into(),
            now(),
        ];
        Ok(self.run(&sql, &args).await? == 1)
    }
}
