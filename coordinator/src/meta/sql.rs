//! The seam between the one set of metadata statements (`store.rs`) and the two databases.
//!
//! Statements are written once, with `$N` parameters, and put through the backend's
//! [`Dialect`] for the few things PostgreSQL and SQLite spell differently: a Unix-ms value as a
//! stored timestamp and back (PostgreSQL keeps `TIMESTAMPTZ` for psql readers, SQLite integer
//! ms), a JSON parameter and column, the row locks of the hint claim, and the parameter sign.
//! Times come from a bound Unix-ms parameter (the coordinator's clock), except where clocks of
//! different coordinators would be compared: job leases and hint claims are taken, renewed and
//! judged expired, and hints stamped, by the database's own clock on PostgreSQL
//! ([`Dialect::clock`]), so a coordinator whose clock is ahead cannot take a lease another
//! still holds, nor one behind hold a lease past its end. SQLite is the embedded single-process store: its one process's
//! clock is the bound parameter.
//!
//! [`Backend`] is the rest of what differs: connecting, the migrations, and running a
//! statement with [`Arg`]s — concrete per database (`backends.rs`), so the shared code carries
//! no driver trait bounds.

use std::future::Future;
use std::pin::Pin;

use super::{JobTable, MetaResult};

/// How one database spells the few things the dialects disagree on.
pub struct Dialect {
    /// SQL for a Unix-ms integer expression as a stored timestamp.
    ts: fn(&str) -> String,
    /// SQL for a stored timestamp column as Unix ms (BIGINT).
    ms: fn(&str) -> String,
    /// Suffix that types a JSON text parameter.
    json_param: &'static str,
    /// Suffix that reads a JSON column as text.
    json_col: &'static str,
    /// Row locks of a claiming sub-select (concurrent claimers skip each other's rows).
    pub skip_locked: &'static str,
    /// The sign before a parameter number.
    param: &'static str,
    /// SQL for "now" in Unix ms where the lease clock decides, given the bound parameter that
    /// holds the caller's clock.
    clock: fn(&str) -> String,
}

impl Dialect {
    /// A statement written with `$N` parameters, in this dialect.
    pub fn sql(&self, sql: &str) -> String {
        if self.param == "$" {
            sql.to_string()
        } else {
            sql.replace('$', self.param)
        }
    }

    /// A Unix-ms parameter expression (e.g. `$3 + $4`) as a timestamp.
    pub fn ts(&self, expr: &str) -> String {
        (self.ts)(expr)
    }

    /// `col` (a timestamp) as Unix ms, named `alias`.
    pub fn ms(&self, col: &str, alias: &str) -> String {
        format!("{} AS {alias}", (self.ms)(col))
    }

    /// Now, in Unix ms, by the clock leases and claims are judged by: the database's on
    /// PostgreSQL (shared by every coordinator), the bound `param` on SQLite.
    pub fn clock(&self, param: &str) -> String {
        (self.clock)(param)
    }

    /// A JSON parameter.
    pub fn json(&self, param: &str) -> String {
        format!("{param}{}", self.json_param)
    }

    /// A JSON column as text, under its own name.
    pub fn json_col(&self, col: &str) -> String {
        if self.json_col.is_empty() {
            col.to_string()
        } else {
            format!("{col}{} AS {col}", self.json_col)
        }
    }
}

fn pg_ts(e: &str) -> String {
    format!("to_timestamp(({e})::bigint / 1000.0)")
}

fn pg_ms(col: &str) -> String {
    format!("(extract(epoch from {col}) * 1000)::bigint")
}

/// The database's clock; the caller's (`p`, still bound) is multiplied away so the statement
/// keeps one parameter list for both backends.
fn pg_clock(p: &str) -> String {
    format!("((extract(epoch from clock_timestamp()) * 1000)::bigint + 0 * {p}::bigint)")
}

fn same(e: &str) -> String {
    e.to_string()
}

pub const POSTGRES: Dialect = Dialect {
    ts: pg_ts,
    ms: pg_ms,
    json_param: "::jsonb",
    json_col: "::text",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    param: "$",
    clock: pg_clock,
};

/// SQLite stores timestamps as integer Unix ms and JSON as text; it has one writer at a time,
/// so a claiming UPDATE is atomic without row locks.
pub const SQLITE: Dialect = Dialect {
    ts: same,
    ms: same,
    json_param: "",
    json_col: "",
    skip_locked: "",
    param: "?",
    clock: same,
};

/// One bound parameter, in the few types the metadata tables use.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Bytes(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Bytes(v)
    }
}

/// A count or size as a bound integer (the tables hold them as INTEGER/BIGINT).
pub fn int(v: impl TryInto<i64>) -> Arg<'static> {
    Arg::Int(Some(v.try_into().unwrap_or(i64::MAX)))
}

pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// What one database implements for the shared statements (`backends.rs`).
pub trait Backend: sqlx::Database {
    const DIALECT: Dialect;

    /// Opens a pool of at most `max_connections`.
    fn connect(url: &str, max_connections: u32) -> Fut<'_, sqlx::Pool<Self>>;

    /// Applies this database's embedded migrations.
    fn migrate(
        pool: &sqlx::Pool<Self>,
    ) -> Pin<Box<dyn Future<Output = MetaResult<()>> + Send + '_>>;

    /// Runs a statement; the rows it affected.
    fn run<'a>(conn: &'a mut Self::Connection, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, u64>;

    /// Runs a statement; the rows it returned.
    fn rows<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> Fut<'a, Vec<Self::Row>>;

    /// An integer column of any width (NULL: `None`).
    fn int(row: &Self::Row, col: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A text column (NULL: `None`).
    fn text(row: &Self::Row, col: &str) -> Result<Option<String>, sqlx::Error>;
    /// A binary column (NULL: `None`).
    fn bytes(row: &Self::Row, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
}

impl JobTable {
    fn table(self) -> &'static str {
        match self {
            JobTable::Change => "pending_changes",
            JobTable::Repair => "repairs",
        }
    }

    fn id_column(self) -> &'static str {
        match self {
            JobTable::Change => "change_id",
            JobTable::Repair => "repair_id",
        }
    }

    /// The condition for a row whose job is still active.
    fn active(self) -> &'static str {
        match self {
            JobTable::Change => "status IN ('pending', 'running')",
            JobTable::Repair => "status = 'running'",
        }
    }
}

/// Binds: `$1` id, `$2` owner, `$3` now (ms), `$4` lease (ms).
pub(crate) fn claim_job(d: &Dialect, t: JobTable) -> String {
    let (table, id, active) = (t.table(), t.id_column(), t.active());
    d.sql(&format!(
        "UPDATE {table} SET lease_owner = $2, lease_expires_at = {expires}, updated_at = {now} \
         WHERE {id} = $1 AND {active} \
           AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at IS NULL \
                OR lease_expires_at < {now})",
        expires = d.ts(&format!("{} + $4", d.clock("$3"))),
        now = d.ts(&d.clock("$3")),
    ))
}

/// Binds: `$1` id, `$2` owner, `$3` now (ms), `$4` lease (ms), `$5` plan or NULL, `$6`
/// progress, `$7` error or NULL.
pub(crate) fn save_job(d: &Dialect, t: JobTable) -> String {
    let (table, id, active) = (t.table(), t.id_column(), t.active());
    d.sql(&format!(
        "UPDATE {table} SET plan = COALESCE({plan}, plan), progress = {progress}, error = $7, \
         lease_expires_at = {expires}, updated_at = {now} \
         WHERE {id} = $1 AND lease_owner = $2 AND {active}",
        plan = d.json("$5"),
        progress = d.json("$6"),
        expires = d.ts(&format!("{} + $4", d.clock("$3"))),
        now = d.ts(&d.clock("$3")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_statements_come_out_in_each_dialect() {
        let pg = claim_job(&POSTGRES, JobTable::Change);
        assert!(
            pg.contains("to_timestamp((((extract(epoch from clock_timestamp()) * 1000)::bigint + 0 * $3::bigint) + $4)::bigint / 1000.0)"),
            "{pg}"
        );
        assert!(pg.contains("change_id = $1 AND status IN ('pending', 'running')"));
        let lite = save_job(&SQLITE, JobTable::Repair);
        assert!(!lite.contains('$'), "{lite}");
        assert!(
            lite.contains("lease_expires_at = ?3 + ?4, updated_at = ?3"),
            "{lite}"
        );
        assert!(lite.contains("repair_id = ?1 AND lease_owner = ?2 AND status = 'running'"));
        assert_eq!(
            POSTGRES.ms("created_at", "c"),
            "(extract(epoch from created_at) * 1000)::bigint AS c"
        );
        assert_eq!(SQLITE.json_col("plan"), "plan");
        assert_eq!(POSTGRES.json_col("plan"), "plan::text AS plan");
    }
}
