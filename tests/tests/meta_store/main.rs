//! The same behaviour suite against every metadata store: SQLite (a temp file), PostgreSQL
//! (a database created for each test on the local server and dropped afterwards) and the
//! in-memory store of the simulation (`MemMeta`). Each behaviour is its own test on each
//! backend (`<behaviour>::sqlite`, `<behaviour>::postgres`, `<behaviour>::memory`),
//! on a fresh, migrated store. Behaviours: `basics.rs` (migrations, nodes, drain, tenants, hints,
//! context keys), `topology.rs` (topology changes, racing admissions), `jobs.rs` (tokens,
//! repairs); the job driver's lease under a panic is at the end of this file.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::*;
use pairdb_tests::cluster::PgDb;

mod basics;
mod jobs;
mod topology;

pub fn node(id: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        host: "127.0.0.1".into(),
        port: 7001,
        admin_port: 9101,
        zone: "z1".into(),
        virtual_nodes: 150,
        state,
        status: NodeStatus::Unknown,
        last_seen_ms: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        drained_at_ms: None,
    }
}

pub fn change(id: &str, kind: ChangeKind, node_id: &str) -> ChangeRecord {
    ChangeRecord {
        change_id: id.into(),
        kind,
        node_id: node_id.into(),
        status: ChangeStatus::Pending,
        progress: r#"{"phase":"pending"}"#.into(),
        plan: "[]".into(),
        params: r#"{"adds":["n3"]}"#.into(),
        lease_owner: None,
        lease_expires_at_ms: None,
        start_time_ms: 0,
        completed_at_ms: None,
        not_before_ms: None,
        error: None,
    }
}

/// A fresh, migrated SQLite store (its directory lives as long as the returned guard).
pub async fn sqlite() -> (Arc<dyn MetaStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A fresh, migrated PostgreSQL store in a database of its own (dropped with the guard).
pub async fn postgres() -> (Arc<dyn MetaStore>, PgDb) {
    let db = PgDb::create().await.unwrap();
    let store = connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

/// One test per behaviour per backend.
macro_rules! on_both {
    ($($module:ident::$behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            #[tokio::test]
            async fn sqlite() {
                let (store, _dir) = super::sqlite().await;
                super::$module::$behaviour(store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (store, _db) = super::postgres().await;
                super::$module::$behaviour(store).await;
            }

            #[tokio::test]
            async fn memory() {
                let store: std::sync::Arc<dyn super::MetaStore> =
                    std::sync::Arc::new(super::MemMeta::new());
                super::$module::$behaviour(store).await;
            }
        }
    )*};
}

on_both!(
    basics::migrations_are_idempotent_and_the_ring_starts_at_one,
    basics::nodes,
    basics::drain,
    basics::tenants,
    basics::hints,
    basics::context_keys,
    topology::changes,
    topology::racing_decommissions,
    jobs::tokens,
    jobs::repairs,
);

/// A job whose work panics stops renewing its lease with it (the keeper runs in the same
/// task), is no longer counted as driven, and another coordinator takes it over once the
/// lease expires.
#[tokio::test]
async fn a_panicking_job_leaves_its_lease_to_expire_and_another_driver_takes_over() {
    use pairdb_coordinator::jobs::{JobDriver, Run, Work};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let c = change("p1", ChangeKind::Bootstrap, "n9");
    store.create_change(&c, &[], &|_| Ok(())).await.unwrap();
    let sup = pairdb_common::worker::Supervisor::default();
    let a = JobDriver::new(
        JobTable::Change,
        store.clone(),
        sup.clone(),
        "a".into(),
        1_000,
    );
    let now = pairdb_common::now_ms();
    let d = a.clone();
    let started = a
        .take(c.clone(), now, move |_, cancel| async move {
            let run: Run<u32> = Run::new(
                d,
                "p1",
                "[]",
                Work::new(vec![1], "test", ()),
                cancel,
                |_| "{}".into(),
            );
            run.keeping_lease(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                panic!("a bug in a step");
            })
            .await
        })
        .await
        .unwrap();
    assert!(started && a.is_driving("p1"));
    let lease = || async {
        store
            .get_change("p1")
            .await
            .unwrap()
            .unwrap()
            .lease_expires_at_ms
            .unwrap()
    };
    let first = lease().await;
    pairdb_tests::cluster::wait_async(
        "the panicked job to be forgotten",
        Duration::from_secs(5),
        || async { !a.is_driving("p1") },
    )
    .await
    .unwrap();
    assert!(
        lease().await > first,
        "the keeper renewed while the work ran"
    );
    let last = lease().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        lease().await,
        last,
        "nothing renews the lease after the panic"
    );
    let b = JobDriver::new(
        JobTable::Change,
        store.clone(),
        sup.clone(),
        "b".into(),
        1_000,
    );
    let later = last + 1;
    assert!(
        !a.claim("p1", Some("a"), later).await.unwrap(),
        "the coordinator it panicked on backs off before taking it again"
    );
    assert!(
        b.claim("p1", Some("a"), later).await.unwrap(),
        "another driver takes over after expiry"
    );
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

/// S24 on PostgreSQL: leases are judged by the database's clock, one for every coordinator.
/// A coordinator an hour behind takes a 60 s lease; one an hour ahead cannot take it over (by
/// the first's clock the lease ended 59 minutes ago, by the second's an hour ago), and the
/// lease ends 60 s after the database's now, whatever the holder's clock said. Cleanup delays
/// are set and judged by `clock_ms`, which is the database's too.
#[tokio::test]
async fn postgres_judges_leases_by_its_own_clock_not_the_coordinators() {
    let (store, _db) = postgres().await;
    let c = change("skew", ChangeKind::Bootstrap, "n9");
    store.create_change(&c, &[], &|_| Ok(())).await.unwrap();
    let real = pairdb_common::now_ms();
    let hour = 3_600_000;
    let db_now = store.clock_ms().await.unwrap();
    assert!(
        db_now.abs_diff(real) < 5_000,
        "this machine's PostgreSQL and clock agree"
    );
    assert!(
        store
            .claim_job(JobTable::Change, "skew", "behind", real - hour, 60_000)
            .await
            .unwrap()
    );
    // A coordinator an hour ahead, whose clock says the lease ran out long ago.
    let ahead_claims = async || {
        store
            .claim_job(JobTable::Change, "skew", "ahead", real + hour, 60_000)
            .await
            .unwrap()
    };
    assert!(
        !ahead_claims().await,
        "a coordinator an hour ahead took a lease the database says runs another minute"
    );
    let expires = store
        .get_change("skew")
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at_ms
        .unwrap();
    assert!(
        expires.abs_diff(db_now + 60_000) < 5_000,
        "the lease ends 60 s after the database's now ({expires} vs {db_now})"
    );
    // Saves renew by the same clock.
    assert!(
        store
            .save_job(
                JobTable::Change,
                "skew",
                "behind",
                real - hour,
                60_000,
                None,
                "{}",
                None
            )
            .await
            .unwrap()
    );
    assert!(!ahead_claims().await);

    // A hint stored by a coordinator an hour behind is stamped by the database's clock, so its
    // TTL and age are the same for every coordinator.
    let hint = pairdb_coordinator::meta::NewHint {
        target_node_id: "n9".into(),
        tenant_id: "t".into(),
        key: b"k".to_vec(),
        payload: vec![1],
        created_at_ms: real - hour,
    };
    store.insert_hints(&[hint]).await.unwrap();
    let t = store.hint_targets().await.unwrap();
    let stamped = t[0].oldest_created_at_ms;
    assert!(
        stamped.abs_diff(db_now) < 5_000,
        "the hint is stamped {stamped}, the database's now is {db_now}"
    );
    assert_eq!(
        store.delete_dead_hints(db_now - 60_000, 100).await.unwrap(),
        0,
        "a TTL cutoff a minute before the database's now drops nothing"
    );
}
