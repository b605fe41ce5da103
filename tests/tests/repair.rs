//! Anti-entropy repair through `pairdb.CoordinatorService` (StartRepair / GetRepairStatus):
//! replicas that diverged while one was cut off (hints disabled, so nothing else repairs them)
//! converge after one repair, and a repair whose coordinator dies is finished by another.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::Consistency::{All, Quorum};
use pairdb_coordinator::meta::NodeStatus;
use pairdb_tests::cluster::*;
use pairdb_tests::serial_async;
use serde_json::Value;

/// Every node's 256-bucket digest of the whole ring.
async fn digests(c: &TestCluster) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..c.node_cfgs.len() {
        let mut s = c.storage(i).await.unwrap();
        let d = s
            .range_digest(pb::RangeDigestRequest {
                range: None,
                buckets: 256,
            })
            .await
            .unwrap()
            .into_inner();
        out.push(d.buckets.iter().map(|b| b.hash).collect());
    }
    out
}

/// The raw state (tombstones included) node `i` holds for `(t1, key)`.
async fn state_on(c: &TestCluster, i: usize, key: &[u8]) -> Option<pb::KeyState> {
    let r = c
        .storage(i)
        .await
        .unwrap()
        .read(pb::KeyRef {
            tenant_id: "t1".into(),
            key: key.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    r.state.filter(|_| r.exists)
}

/// The raw state each node holds for `(t1, key)`.
async fn states(c: &TestCluster, key: &[u8]) -> Vec<Option<pb::KeyState>> {
    let mut out = Vec::new();
    for i in 0..c.node_cfgs.len() {
        out.push(state_on(c, i, key).await);
    }
    out
}

async fn start_repair(c: &TestCluster, coordinator: usize) -> pb::RepairStatus {
    c.client(coordinator)
        .await
        .unwrap()
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner()
}

async fn status(c: &TestCluster, coordinator: usize, id: &str) -> pb::RepairStatus {
    c.client(coordinator)
        .await
        .unwrap()
        .get_repair_status(pb::GetRepairStatusRequest {
            repair_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls until the run ends; returns its final status and progress.
async fn wait_repair(c: &TestCluster, coordinator: usize, id: &str) -> (pb::RepairStatus, Value) {
    let mut client = c.client(coordinator).await.unwrap();
    let s = pairdb_tests::cluster::wait_repair(&mut client, id, Duration::from_secs(120))
        .await
        .unwrap();
    let p: Value = serde_json::from_str(&s.progress_json).unwrap();
    (s, p)
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// Writes 300 keys everywhere, then cuts node 3 off and writes 200 new keys, updates 100,
/// deletes 50 and adds a concurrent sibling to 20. Returns the cluster with node 3 back up.
async fn diverge(
    backend: Backend,
    coordinators: usize,
    tweak: Option<fn(&mut pairdb_coordinator::config::Config)>,
) -> TestCluster {
    let mut c = TestCluster::start(ClusterOptions {
        backend,
        nodes: 3,
        coordinators,
        hints: false,
        tweak,
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    let value = |tag: &str, i: usize| format!("{tag}-{i}-{}", "x".repeat(200)).into_bytes();
    for i in 0..300 {
        a.write(write_req(&key(i), &value("v0", i), vec![], All))
            .await
            .unwrap();
    }
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    for i in 300..500 {
        a.write(write_req(&key(i), &value("new", i), vec![], Quorum))
            .await
            .unwrap();
    }
    for i in 0..150 {
        let ctx = a
            .read(read_req(&key(i), Quorum))
            .await
            .unwrap()
            .into_inner()
            .context;
        if i < 100 {
            a.write(write_req(&key(i), &value("v1", i), ctx, Quorum))
                .await
                .unwrap();
        } else {
            a.delete(pb::DeleteRequest {
                tenant_id: "t1".into(),
                key: key(i),
                context: ctx,
                consistency: Quorum as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    for i in 150..170 {
        a.write(write_req(&key(i), &value("sibling", i), vec![], Quorum))
            .await
            .unwrap();
    }
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    c
}

/// Keys node 3 missed: 200 new, 100 updated, 50 deleted, 20 with a new sibling.
const MISSED: u64 = 370;

async fn repair_converges_diverged_replicas(backend: Backend) {
    let c = diverge(backend, 1, None).await;
    let before = digests(&c).await;
    assert_eq!(
        before[0], before[1],
        "the two live replicas took every write"
    );
    assert_ne!(before[0], before[2], "node 3 missed writes");

    let run = start_repair(&c, 0).await;
    assert_eq!(run.status, "running");
    // Only one repair at a time.
    let err = c
        .client(0)
        .await
        .unwrap()
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "TOPOLOGY_CONFLICT", "{err:?}");
    let (done, p) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "completed", "{done:?}");
    assert_eq!(p["ranges_done"], p["ranges_total"]);
    assert_eq!(p["ranges_unconverged"], 0);
    // Exactly the keys node 3 missed differ, and each moves once: to node 3 only (the stale
    // versions node 3 held are superseded on the others, so they do not travel back).
    assert_eq!(p["keys_differing"], MISSED, "{p}");
    assert_eq!(p["keys_transferred"], MISSED, "{p}");

    let after = digests(&c).await;
    assert!(
        after.iter().all(|d| *d == after[0]),
        "digests differ after repair"
    );
    for i in 0..500 {
        let s = states(&c, &key(i)).await;
        assert!(s[0].is_some(), "key {i} missing");
        assert!(s.iter().all(|x| *x == s[0]), "key {i} differs: {s:?}");
        let versions = &s[0].as_ref().unwrap().versions;
        match i {
            100..150 => assert!(versions.iter().all(|v| v.tombstone), "key {i} came back"),
            150..170 => assert_eq!(versions.len(), 2, "key {i} lost a sibling"),
            _ => assert_eq!(versions.len(), 1),
        }
    }

    // A second run finds nothing to do.
    let again = start_repair(&c, 0).await;
    let (done, p) = wait_repair(&c, 0, &again.repair_id).await;
    assert_eq!(done.status, "completed");
    assert_eq!(
        (p["keys_differing"].as_u64(), p["keys_transferred"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    // The newest run is the default status.
    assert_eq!(status(&c, 0, "").await.repair_id, again.repair_id);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_converges_diverged_replicas_postgres() {
    let _g = serial_async().await;
    repair_converges_diverged_replicas(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_converges_diverged_replicas_sqlite() {
    let _g = serial_async().await;
    repair_converges_diverged_replicas(Backend::Sqlite).await;
}

/// The driving coordinator stops mid-run (its lease is left behind, as after a crash); the
/// other takes the run over when the lease expires and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_whose_coordinator_dies_is_resumed_by_another() {
    let _g = serial_async().await;
    let mut c = diverge(
        Backend::Postgres,
        2,
        Some(|cfg| {
            cfg.job_lease_ms = 2_000;
            cfg.change_poll_ms = 200;
            cfg.repair_parallelism = 1;
            // ~100 KiB of missed records at 20 KB/s: the run lasts several seconds.
            cfg.repair_max_bytes_per_sec = 20_000;
        }),
    )
    .await;
    let run = start_repair(&c, 0).await;
    // Wait until a coordinator drives it and has finished some ranges, not all.
    let driver = loop {
        let s = status(&c, 0, &run.repair_id).await;
        assert_eq!(
            s.status, "running",
            "the run ended before it could be interrupted: {s:?}"
        );
        let p: Value = serde_json::from_str(&s.progress_json).unwrap();
        if !s.driver.is_empty() && p["keys_transferred"].as_u64().unwrap_or(0) > 0 {
            break s.driver;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = if driver == "coord-0" { 0 } else { 1 };
    let survivor = 1 - victim;
    c.coordinators.remove(victim).shutdown().await;
    let survivor = if survivor > victim {
        survivor - 1
    } else {
        survivor
    };
    let (done, p) = wait_repair(&c, survivor, &run.repair_id).await;
    assert_eq!(done.status, "completed", "{done:?}");
    assert_eq!(p["ranges_done"], p["ranges_total"]);
    let completed = c.coordinators[survivor]
        .data
        .metrics
        .repair_runs
        .get_or_create(&pairdb_coordinator::metrics::ResultLabels {
            result: "completed",
        })
        .get();
    assert_eq!(completed, 1, "the surviving coordinator finished the run");
    let after = digests(&c).await;
    assert!(
        after.iter().all(|d| *d == after[0]),
        "digests differ after the resumed repair"
    );
    // Ranges the first driver finished count; one it was in the middle of is compared again.
    let moved = p["keys_transferred"].as_u64().unwrap();
    assert!(
        moved > 0 && moved <= MISSED,
        "no missed key moved twice: {p}"
    );
    c.shutdown().await;
}

/// Flips a byte of `(t1, key)`'s stored record on node `i` (through its raw engine).
fn corrupt(c: &TestCluster, i: usize, key: &[u8]) {
    use pairdb_storage_node::engine::{BatchOp, Space};
    let engine = c.nodes[i].as_ref().unwrap().node.store.engine().clone();
    let dk = pairdb_common::token::data_key("t1", key);
    let mut rec = engine.get(Space::Data, &dk).unwrap().unwrap();
    let at = rec.len() - 3;
    rec[at] ^= 0x01;
    engine
        .write(vec![BatchOp::Put(Space::Data, dk, rec)], true)
        .unwrap();
}

/// Node `i`'s integrity scan: the `tenant/key` of every corrupt record it lists.
async fn scan_all(c: &TestCluster, i: usize) -> Vec<String> {
    let r: Value = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/integrity/scan-all",
            c.node_cfgs[i].admin_addr
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut keys: Vec<String> = r["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["tenant_id"].as_str().unwrap(),
                e["key"].as_str().unwrap()
            )
        })
        .collect();
    keys.sort();
    keys
}

/// 100 records corrupted on one node are listed by its scan, rebuilt by one repair from the
/// other replicas and read intact; a record corrupt on every replica is reported lost, counted,
/// left in place, and reads DATA_LOSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_rebuilds_corrupt_records_and_reports_the_unrecoverable() {
    let _g = serial_async().await;
    let c = TestCluster::start(ClusterOptions {
        backend: Backend::Sqlite,
        nodes: 3,
        coordinators: 1,
        hints: false,
        tweak: None,
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    for i in 0..400 {
        a.write(write_req(
            &key(i),
            format!("value-{i}").as_bytes(),
            vec![],
            All,
        ))
        .await
        .unwrap();
    }
    let damaged: Vec<usize> = (0..400).step_by(4).collect();
    assert_eq!(damaged.len(), 100);
    for i in &damaged {
        corrupt(&c, 0, &key(*i));
    }
    let mut expected: Vec<String> = damaged
        .iter()
        .map(|i| format!("t1/{}", String::from_utf8(key(*i)).unwrap()))
        .collect();
    expected.sort();
    assert_eq!(
        scan_all(&c, 0).await,
        expected,
        "the scan lists exactly the damaged records"
    );
    assert!(scan_all(&c, 1).await.is_empty());

    let run = start_repair(&c, 0).await;
    let (done, p) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "completed", "{done:?}");
    assert_eq!(
        (p["corrupt"].as_u64(), p["recovered"].as_u64()),
        (Some(100), Some(100)),
        "{p}"
    );
    assert!(
        scan_all(&c, 0).await.is_empty(),
        "every damaged record was rebuilt"
    );
    for i in &damaged {
        let s = states(&c, &key(*i)).await;
        assert!(
            s[0].is_some() && s.iter().all(|x| *x == s[0]),
            "key {i}: {s:?}"
        );
        let got = a.read(read_req(&key(*i), All)).await.unwrap().into_inner();
        assert_eq!(got.value, format!("value-{i}").into_bytes());
    }
    let m = &c.coordinators[0].data.metrics;
    assert_eq!(m.data_recovery_operations.get(), 100);
    assert_eq!(m.corrupted_entries.get(), 100);

    // One record corrupt on every replica: nothing to rebuild it from.
    let lost = key(7);
    for n in 0..3 {
        corrupt(&c, n, &lost);
    }
    let run = start_repair(&c, 0).await;
    let (done, p) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "failed", "{done:?}");
    assert!(done.error.contains("DATA_LOSS"), "{}", done.error);
    assert_eq!(p["lost_total"], 1, "{p}");
    assert_eq!(p["lost"], serde_json::json!(["t1/key-0007"]), "{p}");
    assert_eq!(m.repair_lost.get(), 1);
    for n in 0..3 {
        assert_eq!(
            scan_all(&c, n).await,
            vec!["t1/key-0007".to_string()],
            "left in place on node {n}"
        );
    }
    let err = a.read(read_req(&lost, Quorum)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert_eq!(reason(&err).0, "CHECKSUM_FAILED");
    // Other keys are unaffected.
    let got = a
        .read(read_req(&key(8), Quorum))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"value-8");
    c.shutdown().await;
}

/// A key deleted while a replica is down, then garbage-collected after the grace, never comes
/// back: not through hint replay (the hint outlived its TTL), not through reads (the returning
/// node was away longer than the grace and serves no reads until repaired), not through
/// anti-entropy (the purge waits until every replica holds the tombstone), not when the node
/// restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_deleted_while_a_replica_was_down_never_reappears_after_gc() {
    let _g = serial_async().await;
    let mut c = TestCluster::start(ClusterOptions {
        backend: Backend::Postgres,
        nodes: 3,
        coordinators: 1,
        hints: true,
        tweak: Some(|cfg| {
            cfg.tombstone_gc_grace_secs = 4;
            cfg.hint_ttl_secs = 2;
            cfg.max_hint_window_secs = 2;
            // Only the runs this test starts.
            cfg.repair_interval_secs = 0;
        }),
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    let gone = b"gone".to_vec();
    a.write(write_req(&gone, b"old value", vec![], All))
        .await
        .unwrap();
    for i in 0..50 {
        a.write(write_req(&key(i), b"kept", vec![], All))
            .await
            .unwrap();
    }
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    let ctx = a
        .read(read_req(&gone, Quorum))
        .await
        .unwrap()
        .into_inner()
        .context;
    a.delete(pb::DeleteRequest {
        tenant_id: "t1".into(),
        key: gone.clone(),
        context: ctx,
        consistency: Quorum as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Past the grace, but a replica is missing: the repair fails and purges nothing.
    let run = start_repair(&c, 0).await;
    let (done, _) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "failed", "{done:?}");
    for i in 0..2 {
        let s = state_on(&c, i, &gone).await;
        assert!(
            s.as_ref()
                .is_some_and(|s| s.versions.iter().all(|v| v.tombstone)),
            "{s:?}"
        );
    }

    // Node 3 returns with the old value; its hint (the tombstone) is past its TTL: dropped.
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    let m = c.coordinators[0].data.metrics.clone();
    wait_async(
        "the expired hint dropped",
        Duration::from_secs(10),
        || async { m.hints_cleanup_deleted.get() >= 1 },
    )
    .await
    .unwrap();
    assert_eq!(m.hints_replayed.get(), 0, "an expired hint was replayed");
    assert_eq!(
        c.node_values(2, &gone).await.unwrap(),
        vec![b"old value".to_vec()]
    );
    // It was away longer than the grace: no read is served from it.
    for _ in 0..20 {
        let err = a
            .read(read_req(&gone, pb::Consistency::One))
            .await
            .unwrap_err();
        assert_eq!(reason(&err).0, "KEY_NOT_FOUND", "{err:?}");
    }
    let err = a.read(read_req(&key(1), All)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // A full repair gives node 3 the tombstone, then every replica holds it: purged everywhere.
    let run = start_repair(&c, 0).await;
    let (done, p) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "completed", "{done:?}");
    assert!(p["tombstones_purged"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(
        states(&c, &gone).await,
        vec![None, None, None],
        "purged on every replica"
    );
    // Node 3 serves reads again.
    wait_async("node 3 forgiven", Duration::from_secs(5), || async {
        a.clone().read(read_req(&key(1), All)).await.is_ok()
    })
    .await
    .unwrap();
    let assert_gone = |s: Vec<Option<pb::KeyState>>| assert_eq!(s, vec![None, None, None]);
    for consistency in [pb::Consistency::One, Quorum, All] {
        let err = a.read(read_req(&gone, consistency)).await.unwrap_err();
        assert_eq!(reason(&err).0, "KEY_NOT_FOUND");
    }
    let run = start_repair(&c, 0).await;
    let (done, _) = wait_repair(&c, 0, &run.repair_id).await;
    assert_eq!(done.status, "completed");
    assert_gone(states(&c, &gone).await);
    c.stop_node(2).await;
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    let err = a.read(read_req(&gone, All)).await.unwrap_err();
    assert_eq!(reason(&err).0, "KEY_NOT_FOUND");
    assert_gone(states(&c, &gone).await);
    c.shutdown().await;
}
