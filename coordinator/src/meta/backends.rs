//! The two databases behind [`Backend`]: connecting, migrations, running a statement with
//! [`Arg`]s, and reading columns. Everything else is the shared `store.rs`.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column, Postgres, Row, Sqlite, TypeInfo};

use super::sql::{Arg, Backend, Dialect, Fut, POSTGRES, SQLITE};
use super::{MetaError, MetaResult};

/// Binds `args` onto a statement of database `$db`.
macro_rules! bound {
    ($db:ty, $sql:expr, $args:expr) => {{
        let mut q = sqlx::query::<$db>(AssertSqlSafe($sql));
        for a in $args {
            q = match *a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        q
    }};
}

/// The [`Backend`] methods both drivers implement the same way: running a statement with
/// its arguments, and reading text and binary columns.
macro_rules! runs {
    ($db:ty, $row:ty) => {
        fn run<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &'a [Arg<'a>],
        ) -> Fut<'a, u64> {
            Box::pin(async move { Ok(bound!($db, sql, args).execute(conn).await?.rows_affected()) })
        }

        fn rows<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            args: &'a [Arg<'a>],
        ) -> Fut<'a, Vec<$row>> {
            Box::pin(async move { bound!($db, sql, args).fetch_all(conn).await })
        }

        fn text(row: &$row, col: &str) -> Result<Option<String>, sqlx::Error> {
            row.try_get(col)
        }

        fn bytes(row: &$row, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
            row.try_get(col)
        }
    };
}

/// Schema changes are additive only (new tables, new nullable or defaulted columns, new
/// indexes): every release reads and writes a schema that later releases migrated, which is
/// what a rolling upgrade (old and new coordinators on one database) and a rollback need. An
/// applied migration is never edited (sqlx refuses a changed checksum; `tests/tests/formats.rs`
/// pins them).
fn migrate_error(e: sqlx::migrate::MigrateError) -> MetaError {
    MetaError::Db(format!("migrate: {e}"))
}

impl Backend for Postgres {
    const DIALECT: Dialect = POSTGRES;

    fn connect(url: &str, max_connections: u32) -> Fut<'_, sqlx::Pool<Self>> {
        Box::pin(async move {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
        })
    }

    fn migrate(
        pool: &sqlx::Pool<Self>,
    ) -> Pin<Box<dyn Future<Output = MetaResult<()>> + Send + '_>> {
        Box::pin(async move {
            let mut m = sqlx::migrate!("../migrations/postgres");
            // A schema newer than this release (a later release ran its migrations) is
            // accepted: migrations only add (see [`migrate_error`]), so a rollback
            // or a mixed-version rollout keeps working.
            m.set_ignore_missing(true);
            m.run(pool).await.map_err(migrate_error)
        })
    }

    runs!(Postgres, PgRow);

    fn int(row: &PgRow, col: &str) -> Result<Option<i64>, sqlx::Error> {
        // INTEGER columns are INT4 in PostgreSQL; computed ones (counts, ms) are INT8.
        match row.try_column(col)?.type_info().name() {
            "INT2" => Ok(row.try_get::<Option<i16>, _>(col)?.map(i64::from)),
            "INT4" => Ok(row.try_get::<Option<i32>, _>(col)?.map(i64::from)),
            _ => row.try_get(col),
        }
    }
}

impl Backend for Sqlite {
    const DIALECT: Dialect = SQLITE;

    fn connect(url: &str, max_connections: u32) -> Fut<'_, sqlx::Pool<Self>> {
        Box::pin(async move {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            SqlitePoolOptions::new()
                // One writer at a time: more connections only wait on each other.
                .max_connections(max_connections.min(4))
                .connect_with(opts)
                .await
        })
    }

    fn migrate(
        pool: &sqlx::Pool<Self>,
    ) -> Pin<Box<dyn Future<Output = MetaResult<()>> + Send + '_>> {
        Box::pin(async move {
            let mut m = sqlx::migrate!("../migrations/sqlite");
            // A schema newer than this release (a later release ran its migrations) is
            // accepted: migrations only add (see [`migrate_error`]), so a rollback
            // or a mixed-version rollout keeps working.
            m.set_ignore_missing(true);
            m.run(pool).await.map_err(migrate_error)
        })
    }

    runs!(Sqlite, SqliteRow);

    fn int(row: &SqliteRow, col: &str) -> Result<Option<i64>, sqlx::Error> {
        row.try_get(col)
    }
}
