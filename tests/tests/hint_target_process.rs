//! S12 (FAULT-SCENARIOS.md, Cassandra's `test_hintedhandoff_decom`): hints stored for a
//! down node while the topology changes around it or without it. A process cluster of 4
//! storage nodes, 2 coordinators and PostgreSQL; n4 killed, 100 writes at QUORUM (hints for
//! n4), then a change. Every acknowledged write must read back at QUORUM and, after the
//! change and its cleanup, be on every replica of the new ring; no hint may outlive its
//! purpose.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_tests::procs::{self, Acked, ProcCluster, ProcOptions, Writer};
use pairdb_tests::*;

const CHANGE_DEADLINE: Duration = Duration::from_secs(120);

/// 4 nodes, n4 killed, then 100 writes at QUORUM; returns them once some became hints.
async fn n4_down_and_100_writes() -> (ProcCluster, Acked) {
    let mut c = ProcCluster::start(ProcOptions {
        nodes: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    c.wait_all_up().await.unwrap();
    c.node("n4").kill9().unwrap();
    let writer = Writer::start(c.coord_dials(), "s12", 100, Duration::from_secs(60));
    cluster::wait_async("100 writes", Duration::from_secs(60), || async {
        writer.acked() >= 100
    })
    .await
    .unwrap();
    let (acked, failed) = writer.finish().await.unwrap();
    assert_eq!((acked.len(), failed), (100, 0));
    // Hints are written behind the acknowledgements: wait for them to land.
    cluster::wait_async("hints for n4", Duration::from_secs(10), || async {
        c.meta.count_hints_for("n4").await.unwrap() > 0
    })
    .await
    .unwrap();
    println!(
        "hints pending for n4: {}",
        c.meta.count_hints_for("n4").await.unwrap()
    );
    (c, acked)
}

/// The literal scenario, at RF 3: n1 is decommissioned while n4 is down (n4 gains ranges, so
/// the change waits for it), n4 comes back, the change completes, n4's hints are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_down_node_are_delivered_across_a_decommission_around_it() {
    let _s = serial_async().await;
    let (mut c, acked) = n4_down_and_100_writes().await;
    let r = c
        .coord()
        .await
        .unwrap()
        .remove_storage_node(pb::RemoveStorageNodeRequest {
            node_id: "n1".into(),
            force: false,
            acknowledge_data_loss: false,
        })
        .await
        .unwrap()
        .into_inner();
    let id = r.change.unwrap().change_id;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        c.change(&id).await.unwrap().status.is_active(),
        "the decommission finished without n4, which gains ranges"
    );
    c.node("n4").start().unwrap();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    cluster::wait_async("n4's hints delivered", Duration::from_secs(60), || async {
        c.meta.count_hints_for("n4").await.unwrap() == 0
    })
    .await
    .unwrap();
    c.check_quorum_reads(&acked).await.unwrap();
    c.wait_cleanup("n1", CHANGE_DEADLINE).await.unwrap();
    c.check_placement(&acked, true).await.unwrap();
}

/// The hint target itself leaves: dead n4 is replaced by n5, which streams n4's ranges from
/// the live replicas. n4's hints have no one to go to; they are dropped at once (not kept
/// until their TTL, holding the pending-hint gauges and alerts up), and n5 holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_replaced_node_are_dropped_and_its_writes_are_on_the_new_replicas() {
    let _s = serial_async().await;
    let (mut c, acked) = n4_down_and_100_writes().await;
    let id = c.replace_node("n4", "n5").await.unwrap();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    cluster::wait_async("n4's hints dropped", Duration::from_secs(30), || async {
        c.meta.count_hints_for("n4").await.unwrap() == 0
    })
    .await
    .unwrap();
    let mut dropped = 0.0;
    for co in &c.coords {
        dropped += procs::metric_sum(&co.metrics().await.unwrap(), "hints_cleanup_deleted_total");
    }
    assert!(dropped > 0.0, "no coordinator counted the dropped hints");
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_placement(&acked, false).await.unwrap();
}

/// S13's bound under load (CASSANDRA-14309's analogue: hints must not grow without bound
/// while a node is down). `max_hints_per_target` 100 on both coordinators, the set-add load,
/// n3 killed for 8 s: the `hints` table for n3, sampled every 200 ms, never passes what two
/// coordinators may admit against one cap (each judges the table's count as of its last
/// replay cycle plus its own since), the coordinators count the hints they refused at the cap,
/// and after n3 is back nothing acknowledged is lost and the replicas converge — what the
/// refused hints held reaches n3 with the next write of each key, or by read repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_down_node_stay_within_their_cap_under_load() {
    use pairdb_tests::nemesis::check;
    use pairdb_tests::nemesis::history::History;
    use pairdb_tests::nemesis::setadd::SetAdd;
    const CAP: u64 = 100;
    let _s = serial_async().await;
    let mut o = ProcOptions::default();
    o.coord_env
        .push(("PAIRDB_MAX_HINTS_PER_TARGET".into(), CAP.to_string()));
    let mut c = ProcCluster::start(o).await.unwrap();
    c.wait_all_up().await.unwrap();
    let h = History::new("hint-cap", 0);
    let load = SetAdd::start(
        &h,
        c.coord_dials(),
        4,
        20,
        1_000_000,
        Duration::from_secs(120),
    );
    cluster::wait_async("the load runs", Duration::from_secs(30), || async {
        load.acked() >= 50
    })
    .await
    .unwrap();
    h.nemesis("Kill n3");
    c.node("n3").kill9().unwrap();
    let acked_before = load.acked();
    let mut max_seen = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        max_seen = max_seen.max(c.meta.count_hints_for("n3").await.unwrap());
    }
    let adds_while_down = load.acked() - acked_before;
    c.node("n3").start().unwrap();
    h.nemesis("heal Kill n3");
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish().await;
    let mut at_cap = 0.0;
    for co in &c.coords {
        let m = co.metrics().await.unwrap();
        at_cap += m
            .lines()
            .filter(|l| l.starts_with("hints_dropped_by_reason_total{") && l.contains("count_cap"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    println!(
        "hint-cap: {adds_while_down} adds acknowledged while n3 was down; most hints for n3 seen {max_seen} (cap {CAP} per coordinator view); {at_cap} refused at the cap"
    );
    assert!(
        adds_while_down as u64 > 2 * CAP,
        "the load outran the cap while n3 was down ({adds_while_down} adds)"
    );
    assert!(
        max_seen <= 2 * CAP,
        "{max_seen} hints pending for n3 with a cap of {CAP} on 2 coordinators"
    );
    assert!(at_cap > 0.0, "no coordinator refused a hint at the cap");
    let (v, converged) = check::after_heal(&c, &h).await.unwrap();
    println!("hint-cap: {}", v.summary());
    assert!(v.lost.is_empty() && v.unexpected.is_empty() && v.stale_reads.is_empty());
    converged.unwrap();
}
