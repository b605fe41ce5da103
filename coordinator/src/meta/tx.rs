//! What the store's methods (`store.rs`) share: running a statement on a connection or the
//! pool, reading one integer, the write transaction, the membership and change writes, and
//! the selects by table.

use pairdb_common::now_ms;

use super::rows::*;
use super::sql::{Arg, Backend, int};
use super::store::SqlMeta;
use super::*;

/// Now, as a bound Unix-ms parameter (the coordinator's clock: see `sql.rs`).
pub(crate) fn now() -> Arg<'static> {
    int(now_ms())
}

pub(crate) async fn run<B: Backend>(
    c: &mut B::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> MetaResult<u64> {
    Ok(B::run(c, sql, args).await?)
}

pub(crate) async fn rows<B: Backend>(
    c: &mut B::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> MetaResult<Vec<B::Row>> {
    Ok(B::rows(c, sql, args).await?)
}

/// Every row a statement returns, decoded by `row`.
pub(crate) async fn all<B: Backend, T>(
    c: &mut B::Connection,
    sql: &str,
    args: &[Arg<'_>],
    row: fn(&B::Row) -> MetaResult<T>,
) -> MetaResult<Vec<T>> {
    rows::<B>(c, sql, args).await?.iter().map(row).collect()
}

/// The one integer a statement returns (`RETURNING value`, `count(*)`), under `col`.
pub(crate) async fn one_int<B: Backend>(
    c: &mut B::Connection,
    sql: &str,
    args: &[Arg<'_>],
    col: &str,
) -> MetaResult<Option<i64>> {
    match rows::<B>(c, sql, args).await?.first() {
        Some(r) => Cols::<B>::new(r).opt_int(col),
        None => Ok(None),
    }
}

/// Bumps `ring_version` inside a transaction; the new version.
pub(crate) async fn bump_ring<B: Backend>(c: &mut B::Connection) -> MetaResult<u64> {
    let d = &B::DIALECT;
    let sql = d.sql(&format!(
        "UPDATE cluster_meta SET value = value + 1, updated_at = {} \
         WHERE key = 'ring_version' RETURNING value",
        d.ts("$1")
    ));
    let v = one_int::<B>(c, &sql, &[now()], "value").await?;
    Ok(to_u64(v.ok_or_else(|| {
        MetaError::BadRow("no ring_version row".into())
    })?))
}

pub(crate) async fn node_state<B: Backend>(
    c: &mut B::Connection,
    node_id: &str,
) -> MetaResult<Option<String>> {
    let sql = B::DIALECT.sql("SELECT state FROM storage_nodes WHERE node_id = $1");
    match rows::<B>(c, &sql, &[node_id.into()]).await?.first() {
        Some(r) => Ok(Some(Cols::<B>::new(r).text("state")?)),
        None => Ok(None),
    }
}

pub(crate) async fn insert_node<B: Backend>(
    c: &mut B::Connection,
    n: &NodeRecord,
) -> MetaResult<()> {
    let d = &B::DIALECT;
    let sql = d.sql(&format!(
        "INSERT INTO storage_nodes (node_id, host, port, admin_port, zone, virtual_nodes, state, \
         status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now})",
        now = d.ts("$9")
    ));
    let args = [
        (&n.node_id).into(),
        (&n.host).into(),
        int(n.port),
        int(n.admin_port),
        (&n.zone).into(),
        int(n.virtual_nodes),
        n.state.as_str().into(),
        n.status.as_str().into(),
        now(),
    ];
    run::<B>(c, &sql, &args).await?;
    Ok(())
}

/// Applies membership writes inside a transaction and bumps `ring_version` when there are any.
pub(crate) async fn apply_node_writes<B: Backend>(
    c: &mut B::Connection,
    nodes: &[NodeWrite],
) -> MetaResult<u64> {
    let d = &B::DIALECT;
    for w in nodes {
        match w {
            NodeWrite::Insert(n) => {
                match node_state::<B>(c, &n.node_id).await?.as_deref() {
                    Some("REMOVED") => {
                        let sql = d.sql("DELETE FROM storage_nodes WHERE node_id = $1");
                        run::<B>(c, &sql, &[(&n.node_id).into()]).await?;
                    }
                    Some(state) => {
                        return Err(MetaError::Conflict(format!(
                            "node {} exists and is {state}",
                            n.node_id
                        )));
                    }
                    None => {}
                }
                insert_node::<B>(c, n).await?;
            }
            NodeWrite::SetState { node_id, from, to } => {
                let Some(state) = node_state::<B>(c, node_id).await? else {
                    return Err(MetaError::NotFound(format!("node {node_id}")));
                };
                if !from.iter().any(|f| f.as_str() == state) {
                    let from: Vec<&str> = from.iter().map(|f| f.as_str()).collect();
                    return Err(MetaError::Conflict(format!(
                        "node {node_id} is {state}, not {}",
                        from.join(" or ")
                    )));
                }
                let sql = d.sql(&format!(
                    "UPDATE storage_nodes SET state = $2, updated_at = {} WHERE node_id = $1",
                    d.ts("$3")
                ));
                run::<B>(c, &sql, &[node_id.into(), to.as_str().into(), now()]).await?;
            }
            NodeWrite::SetAddress {
                node_id,
                host,
                port,
                admin_port,
            } => {
                let sql = d.sql(&format!(
                    "UPDATE storage_nodes SET host = $2, port = $3, admin_port = $4, updated_at = {} \
                     WHERE node_id = $1",
                    d.ts("$5")
                ));
                let args = [
                    node_id.into(),
                    host.into(),
                    int(*port),
                    int(*admin_port),
                    now(),
                ];
                run::<B>(c, &sql, &args).await?;
            }
        }
    }
    if nodes.is_empty() {
        let sql = "SELECT value FROM cluster_meta WHERE key = 'ring_version'";
        return Ok(to_u64(
            one_int::<B>(c, sql, &[], "value").await?.unwrap_or(0),
        ));
    }
    bump_ring::<B>(c).await
}

pub(crate) async fn insert_change<B: Backend>(
    c: &mut B::Connection,
    r: &ChangeRecord,
) -> MetaResult<()> {
    let d = &B::DIALECT;
    let sql = d.sql(&format!(
        "INSERT INTO pending_changes (change_id, type, node_id, status, progress, plan, params, \
         not_before, error, start_time, updated_at) \
         VALUES ($1, $2, $3, $4, {}, {}, {}, {}, $9, {now}, {now})",
        d.json("$5"),
        d.json("$6"),
        d.json("$7"),
        d.ts("$8"),
        now = d.ts("$10"),
    ));
    let args = [
        (&r.change_id).into(),
        r.kind.as_str().into(),
        (&r.node_id).into(),
        r.status.as_str().into(),
        (&r.progress).into(),
        (&r.plan).into(),
        (&r.params).into(),
        r.not_before_ms
            .map(|v| v.min(i64::MAX as u64) as i64)
            .into(),
        (&r.error).into(),
        now(),
    ];
    run::<B>(c, &sql, &args).await?;
    Ok(())
}

impl<B: Backend> SqlMeta<B> {
    pub async fn connect(url: &str, max_connections: u32) -> MetaResult<SqlMeta<B>> {
        Ok(SqlMeta {
            pool: B::connect(url, max_connections).await?,
        })
    }

    pub(super) async fn run(&self, sql: &str, args: &[Arg<'_>]) -> MetaResult<u64> {
        let mut c = self.pool.acquire().await?;
        run::<B>(&mut c, sql, args).await
    }

    /// Every row a statement returns on a pooled connection, decoded by `row`.
    pub(super) async fn all<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        row: fn(&B::Row) -> MetaResult<T>,
    ) -> MetaResult<Vec<T>> {
        let mut c = self.pool.acquire().await?;
        all::<B, T>(&mut c, sql, args, row).await
    }

    /// A write transaction holding the admission lock (see the module docs).
    pub(super) async fn begin_write(&self) -> MetaResult<sqlx::Transaction<'static, B>> {
        let d = &B::DIALECT;
        let mut tx = self.pool.begin().await?;
        let sql = d.sql(&format!(
            "UPDATE cluster_meta SET value = value + 1, updated_at = {} WHERE key = 'admission_lock'",
            d.ts("$1")
        ));
        run::<B>(&mut tx, &sql, &[now()]).await?;
        Ok(tx)
    }

    pub(super) fn tenant_args(t: &TenantRecord) -> [Arg<'_>; 12] {
        [
            (&t.tenant_id).into(),
            int(t.replication_factor),
            t.read_consistency.as_str().into(),
            t.write_consistency.as_str().into(),
            policy_str(t.conflict_policy).into(),
            int(t.max_value_bytes),
            int(t.sibling_warn),
            int(t.sibling_max),
            int(t.rate_limit_rps),
            int(t.max_state_bytes),
            now(),
            t.target_replication_factor.map(i64::from).into(),
        ]
    }

    pub(super) async fn changes_where(
        &self,
        filter: &str,
        args: &[Arg<'_>],
    ) -> MetaResult<Vec<ChangeRecord>> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "SELECT {} FROM pending_changes {filter}",
            change_cols(d)
        ));
        self.all(&sql, args, change_row::<B>).await
    }

    pub(super) async fn repairs_where(
        &self,
        filter: &str,
        args: &[Arg<'_>],
    ) -> MetaResult<Vec<RepairRecord>> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!("SELECT {} FROM repairs {filter}", repair_cols(d)));
        self.all(&sql, args, repair_row::<B>).await
    }

    pub(super) async fn nodes_where(
        &self,
        filter: &str,
        args: &[Arg<'_>],
    ) -> MetaResult<Vec<NodeRecord>> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!(
            "SELECT {} FROM storage_nodes {filter}",
            node_cols(d)
        ));
        self.all(&sql, args, node_row::<B>).await
    }

    pub(super) async fn tenants_where(
        &self,
        filter: &str,
        args: &[Arg<'_>],
    ) -> MetaResult<Vec<TenantRecord>> {
        let d = &B::DIALECT;
        let sql = d.sql(&format!("SELECT {} FROM tenants {filter}", tenant_cols(d)));
        self.all(&sql, args, tenant_row::<B>).await
    }
}
