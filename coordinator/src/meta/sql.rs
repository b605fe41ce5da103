//! Statements both backends share, written once: the dialects differ only in how a Unix-ms
//! parameter becomes a timestamp, what "now" is, a JSON cast, and the parameter sign
//! (statements are written with `$N`; SQLite's are rewritten to its `?N`).

use super::JobTable;

/// How one backend spells the few things the dialects disagree on.
pub(crate) struct Dialect {
    /// SQL for a Unix-ms integer expression as a stored timestamp.
    pub ms: fn(&str) -> String,
    /// Suffix that types an integer parameter (`::bigint` where inference needs it).
    pub int: &'static str,
    /// Suffix that types a JSON text parameter.
    pub json: &'static str,
    /// SQL for the current time, given that `$3` holds it in Unix ms.
    pub now: &'static str,
    /// The sign before a parameter number.
    pub param: &'static str,
}

impl Dialect {
    /// A statement written with `$N` parameters, in this dialect.
    fn finish(&self, sql: String) -> String {
        if self.param == "$" {
            sql
        } else {
            sql.replace('$', self.param)
        }
    }
}

fn pg_ms(e: &str) -> String {
    format!("to_timestamp(({e}) / 1000.0)")
}

fn sqlite_ms(e: &str) -> String {
    e.to_string()
}

pub(crate) const POSTGRES: Dialect = Dialect {
    ms: pg_ms,
    int: "::bigint",
    json: "::jsonb",
    now: "now()",
    param: "$",
};

/// SQLite stores timestamps as integer Unix ms.
pub(crate) const SQLITE: Dialect = Dialect {
    ms: sqlite_ms,
    int: "",
    json: "",
    now: "$3",
    param: "?",
};

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
    let (table, id, active, int) = (t.table(), t.id_column(), t.active(), d.int);
    d.finish(format!(
        "UPDATE {table} SET lease_owner = $2, lease_expires_at = {expires}, updated_at = {now} \
         WHERE {id} = $1 AND {active} \
           AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at IS NULL \
                OR lease_expires_at < {now_ts})",
        expires = (d.ms)(&format!("$3{int} + $4{int}")),
        now = d.now,
        now_ts = (d.ms)(&format!("$3{int}")),
    ))
}

/// Binds: `$1` id, `$2` owner, `$3` now (ms), `$4` lease (ms), `$5` plan or NULL, `$6`
/// progress, `$7` error or NULL.
pub(crate) fn save_job(d: &Dialect, t: JobTable) -> String {
    let (table, id, active, int, json) = (t.table(), t.id_column(), t.active(), d.int, d.json);
    d.finish(format!(
        "UPDATE {table} SET plan = COALESCE($5{json}, plan), progress = $6{json}, error = $7, \
         lease_expires_at = {expires}, updated_at = {now} \
         WHERE {id} = $1 AND lease_owner = $2 AND {active}",
        expires = (d.ms)(&format!("$3{int} + $4{int}")),
        now = d.now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_statements_come_out_in_each_dialect() {
        let pg = claim_job(&POSTGRES, JobTable::Change);
        assert!(pg.contains("to_timestamp(($3::bigint + $4::bigint) / 1000.0)"));
        assert!(pg.contains("change_id = $1 AND status IN ('pending', 'running')"));
        let lite = save_job(&SQLITE, JobTable::Repair);
        assert!(!lite.contains('$'), "{lite}");
        assert!(lite.contains("lease_expires_at = ?3 + ?4, updated_at = ?3"));
        assert!(lite.contains("repair_id = ?1 AND lease_owner = ?2 AND status = 'running'"));
    }
}
