//! Crash points for the crash-between-steps tests (FAULT-SCENARIOS.md S23, S11): named places
//! where a test can make the process abort as a power cut would, between a step and the
//! record of it (a write applied and not yet acknowledged, a hint delivered and not yet
//! deleted, …). They are compiled in only with the cargo feature `failpoints` (the `fail`
//! crate, as TiKV uses it); a release build has none and refuses `PAIRDB_FAILPOINTS`.
//!
//! `PAIRDB_FAILPOINTS="name=actions;…"` arms points at start, in `fail`'s action syntax:
//! `return` aborts, `25%return` aborts one time in four, `3*off->return` aborts the fourth
//! time. The points, where they are and what a crash there must not break, are listed in
//! TESTING.md (S23).

/// The environment variable that arms crash points at start.
pub const ENV: &str = "PAIRDB_FAILPOINTS";

/// Every crash point in the servers (kept in one place so the tests and TESTING.md name the
/// same ones).
pub mod points {
    /// Storage node: the write is in the WAL and memtable, its reply not yet sent.
    pub const STORAGE_AFTER_WRITE: &str = "storage.after_write_before_ack";
    /// Storage node: a streamed batch applied, its progress (the caller's resume point) not
    /// yet sent.
    pub const STREAM_AFTER_BATCH: &str = "stream.after_batch_before_checkpoint";
    /// Coordinator: W replicas acknowledged, the client not yet answered (nor hints stored).
    pub const COORD_AFTER_QUORUM: &str = "coordinator.after_quorum_before_reply";
    /// Coordinator: a hint delivered and acknowledged, its row not yet deleted.
    pub const HINT_AFTER_SEND: &str = "hint.after_send_before_delete";
    /// Coordinator: a topology change streamed and verified, the ring not yet updated.
    pub const RING_BEFORE_UPDATE: &str = "topology.before_ring_update";
    /// Coordinator: the ring updated, the change's own bookkeeping after it not yet done.
    pub const RING_AFTER_UPDATE: &str = "topology.after_ring_update";
}

/// Arms the points `PAIRDB_FAILPOINTS` names. An error when the variable is set and this
/// build has no crash points, or when an entry does not parse.
pub fn setup() -> Result<(), String> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(());
    };
    if spec.trim().is_empty() {
        return Ok(());
    }
    arm(&spec)
}

#[cfg(feature = "failpoints")]
fn arm(spec: &str) -> Result<(), String> {
    for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("{ENV}: `{entry}` is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("{ENV}: {name}: {e}"))?;
        eprintln!("crash point {} armed: {}", name.trim(), actions.trim());
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn arm(_spec: &str) -> Result<(), String> {
    Err(format!(
        "{ENV} is set but this build has no crash points (build with the cargo feature `failpoints`)"
    ))
}

/// Aborts the process here when the point `name` is armed and its actions say `return`.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) {
    fn returned(name: &str) -> bool {
        fail::fail_point!(name, |_| true);
        false
    }
    if returned(name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Aborts the process here when the point `name` is armed (never, in this build).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash(_name: &str) {}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    #[test]
    fn a_bad_entry_is_an_error() {
        assert!(super::arm("no-equals-sign").is_err());
        assert!(super::arm("x=notanaction(").is_err());
    }
}

#[cfg(all(test, not(feature = "failpoints")))]
mod tests {
    #[test]
    fn a_build_without_crash_points_refuses_to_arm_one() {
        let e = super::arm("storage.after_write_before_ack=return").unwrap_err();
        assert!(e.contains("failpoints"), "{e}");
        // And a point is a no-op.
        super::crash(super::points::STORAGE_AFTER_WRITE);
    }
}
