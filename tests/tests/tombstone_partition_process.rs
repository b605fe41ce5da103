//! S30 of FAULT-SCENARIOS.md (riak's `kv679_tombstone`, Cassandra's `gc_grace`): a key deleted
//! while one replica is partitioned away — running, holding the old value, unreachable — and
//! the partition outlasting the tombstone GC grace and the hint TTL. Real processes: 3 storage
//! nodes registered at TCP proxies, 1 coordinator, PostgreSQL; grace 4 s, hint TTL 2 s.
//!
//! Unlike a replica that was down (`repair.rs`), the partitioned node was never away by its
//! own measure: it serves reads as soon as the partition heals. So everything rests on one
//! rule — a tombstone is purged only once every replica holds it — and the test checks it:
//! past the grace, with the partition still up, a repair purges nothing; after the heal the
//! key never reads back at QUORUM or ALL (the tombstone dominates the old value and read repair
//! carries it over); a repair then purges it on every replica, and after that it reads back at
//! no level, on no replica, and not after the partitioned node restarts.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::client::Coordinator;
use pairdb_tests::cluster::{read_req, reason, wait_async, wait_repair, write_req};
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;

use pb::Consistency::{All, One, Quorum};

/// The versions `node` holds for `key`: (tombstone, value) of each; empty when it has none.
async fn on_node(c: &ProcCluster, node: &str, key: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let n = c.nodes.iter().find(|n| n.id == node).unwrap();
    n.read_t1(key)
        .await
        .unwrap()
        .state
        .map(|s| {
            s.versions
                .into_iter()
                .map(|v| (v.tombstone, v.value))
                .collect()
        })
        .unwrap_or_default()
}

async fn repair(a: &mut Coordinator) -> (pb::RepairStatus, serde_json::Value) {
    let run = a
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_repair(a, &run.repair_id, Duration::from_secs(60))
        .await
        .unwrap();
    let p = serde_json::from_str(&done.progress_json).unwrap_or_default();
    (done, p)
}

async fn not_found(a: &mut Coordinator, key: &[u8], level: pb::Consistency) {
    let r = a.read(read_req(key, level)).await;
    match r {
        Err(e) => assert_eq!(reason(&e).0, "KEY_NOT_FOUND", "{level:?}: {e:?}"),
        Ok(r) => panic!("{level:?} read the deleted key back: {:?}", r.into_inner()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_across_a_partition_longer_than_the_grace_never_reappears() {
    let _s = serial_async().await;
    let mut o = ProcOptions {
        coordinators: 1,
        proxied: true,
        ..Default::default()
    };
    for (k, v) in [
        ("PAIRDB_TOMBSTONE_GC_GRACE_SECS", "4"),
        ("PAIRDB_HINT_TTL_SECS", "2"),
        ("PAIRDB_MAX_HINT_WINDOW_SECS", "2"),
        ("PAIRDB_REPAIR_INTERVAL_SECS", "0"),
    ] {
        o.coord_env.push((k.into(), v.into()));
    }
    let mut c = ProcCluster::start(o).await.unwrap();
    c.wait_all_up().await.unwrap();
    let mut a = c.coord().await.unwrap();
    let gone = b"gone".to_vec();
    a.write(write_req(&gone, b"old value", vec![], All))
        .await
        .unwrap();
    for i in 0..20 {
        a.write(write_req(
            format!("kept-{i}").as_bytes(),
            b"kept",
            vec![],
            All,
        ))
        .await
        .unwrap();
    }

    // Partition n3 (the process keeps running), then delete at QUORUM.
    c.proxies.get_mut("n3").unwrap().cut();
    let ctx = a
        .read(read_req(&gone, Quorum))
        .await
        .unwrap()
        .into_inner()
        .context;
    wait_async(
        "a QUORUM delete with n3 cut off",
        Duration::from_secs(20),
        || {
            let mut a = a.clone();
            let ctx = ctx.clone();
            let gone = gone.clone();
            async move {
                a.delete(pb::DeleteRequest {
                    tenant_id: "t1".into(),
                    key: gone,
                    context: ctx,
                    consistency: Quorum as i32,
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        },
    )
    .await
    .unwrap();
    // The fault overlapped the delete: n3 missed it, and the coordinator hinted it.
    assert_eq!(
        on_node(&c, "n3", &gone).await,
        vec![(false, b"old value".to_vec())]
    );
    wait_async("a hint for n3", Duration::from_secs(10), || async {
        c.meta.count_hints_for("n3").await.unwrap() > 0
    })
    .await
    .unwrap();

    // Past the hint TTL and the grace, still partitioned: the hint is dropped undelivered,
    // and a repair cannot reach n3, so it fails and purges nothing.
    wait_async(
        "n3's hint past its TTL dropped",
        Duration::from_secs(30),
        || async { c.meta.count_hints_for("n3").await.unwrap() == 0 },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (done, p) = repair(&mut a).await;
    assert_eq!(
        done.status, "failed",
        "a replica is unreachable: {done:?} {p}"
    );
    for n in ["n1", "n2"] {
        let s = on_node(&c, n, &gone).await;
        assert!(
            !s.is_empty() && s.iter().all(|(t, _)| *t),
            "{n} keeps the tombstone while n3 lacks it: {s:?}"
        );
    }
    assert_eq!(
        on_node(&c, "n3", &gone).await,
        vec![(false, b"old value".to_vec())],
        "the hint was not delivered through the partition"
    );

    // Heal. n3 serves reads at once (it was never down), old value and all.
    c.proxies.get_mut("n3").unwrap().restore().await.unwrap();
    wait_async(
        "n3 back in the ring's reads",
        Duration::from_secs(30),
        || {
            let mut a = a.clone();
            async move { a.read(read_req(b"kept-1", All)).await.is_ok() }
        },
    )
    .await
    .unwrap();
    for _ in 0..10 {
        not_found(&mut a, &gone, Quorum).await;
        not_found(&mut a, &gone, All).await;
    }
    // The ALL reads met n3's old value and repaired it with the tombstone.
    wait_async(
        "read repair gave n3 the tombstone",
        Duration::from_secs(10),
        || {
            let (c, gone) = (&c, gone.clone());
            async move {
                let s = on_node(c, "n3", &gone).await;
                !s.is_empty() && s.iter().all(|(t, _)| *t)
            }
        },
    )
    .await
    .unwrap();

    // Every replica holds it now: the next repair purges it everywhere.
    let (done, p) = repair(&mut a).await;
    assert_eq!(done.status, "completed", "{done:?} {p}");
    assert!(p["tombstones_purged"].as_u64().unwrap_or(0) >= 1, "{p}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            on_node(&c, n, &gone).await.is_empty(),
            "{n} still holds the key"
        );
    }
    for level in [One, Quorum, All] {
        for _ in 0..10 {
            not_found(&mut a, &gone, level).await;
        }
    }
    // Nor after the once-partitioned node restarts.
    c.node("n3").kill9().unwrap();
    c.node("n3").start().unwrap();
    assert!(on_node(&c, "n3", &gone).await.is_empty());
    // Its outage (restart plus up to 5 s of unrecorded liveness) may exceed the 4 s grace,
    // so it may serve no reads until a repair: run repairs until one completes.
    let mut completed = false;
    for _ in 0..10 {
        if repair(&mut a).await.0.status == "completed" {
            completed = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(completed, "no repair completed after n3 restarted");
    wait_async("n3 serving again", Duration::from_secs(30), || {
        let mut a = a.clone();
        async move { a.read(read_req(b"kept-1", All)).await.is_ok() }
    })
    .await
    .unwrap();
    not_found(&mut a, &gone, All).await;
    assert!(on_node(&c, "n3", &gone).await.is_empty());
    for i in 0..20 {
        let r = a
            .read(read_req(format!("kept-{i}").as_bytes(), All))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.siblings.len(), 1, "kept-{i}");
    }
}
