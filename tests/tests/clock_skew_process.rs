//! S24 (FAULT-SCENARIOS.md): clocks an hour off. One storage node runs an hour ahead and one
//! coordinator an hour behind (libfaketime, Debian's `faketime`, installed by
//! `scripts/setup.sh`; the monotonic clock is left alone, so timers and timeouts stay real)
//! while the set-add workload runs over both coordinators and another node is killed and
//! restarted (hints stored and replayed by skewed and unskewed coordinators). Nothing may be
//! lost or invented, QUORUM reads stay read-your-writes (sibling resolution uses causality,
//! never timestamps), replicas converge, and the skewed node is never taken for DOWN (liveness
//! is heartbeats, not clock comparisons). The test first shows the skew took effect: versions
//! the skewed node coordinated carry its clock, an hour ahead.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_coordinator::meta::NodeStatus;
use pairdb_tests::nemesis::check;
use pairdb_tests::nemesis::history::History;
use pairdb_tests::nemesis::setadd::SetAdd;
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::serial_async;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const HOUR_MS: u64 = 3_600_000;

fn skewed(offset: &str) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The largest `written_at_ms` among the versions of `keys` that `node` coordinated (its dot),
/// read from that node.
async fn newest_own_write(c: &ProcCluster, node: &str, keys: &[String]) -> u64 {
    let n = c.nodes.iter().find(|n| n.id == node).unwrap();
    let mut s = n.client().await.unwrap();
    let mut newest = 0;
    for k in keys {
        let r = s
            .read(pb::KeyRef {
                tenant_id: "t1".into(),
                key: k.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        for v in r.state.map(|s| s.versions).unwrap_or_default() {
            if v.dot.is_some_and(|d| d.node_id == node) {
                newest = newest.max(v.written_at_ms);
            }
        }
    }
    newest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_an_hour_ahead_and_a_coordinator_an_hour_behind_lose_nothing() {
    let _s = serial_async().await;
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: scripts/setup.sh installs Debian's faketime"
    );
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    c.wait_all_up().await.unwrap();
    {
        let n3 = c.node("n3");
        n3.kill9().unwrap();
        n3.env.extend(skewed("+1h"));
        n3.start().unwrap();
    }
    let db = c.db_url.clone();
    c.coords[1].kill9().unwrap();
    c.coords[1].env.extend(skewed("-1h"));
    c.coords[1].start(&db).unwrap();
    c.wait_all_up().await.unwrap();

    let h = History::new("clock-skew", 0);
    let load = SetAdd::start(
        &h,
        c.coord_dials(),
        4,
        20,
        1_000_000,
        Duration::from_secs(300),
    );
    let watch = |c: &ProcCluster| {
        let meta = c.meta.clone();
        async move {
            meta.get_node("n3")
                .await
                .ok()
                .flatten()
                .is_some_and(|n| n.status == NodeStatus::Down)
        }
    };
    let mut n3_down = 0;
    let wait_acked = async |c: &ProcCluster, at_least: usize, n3_down: &mut usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while load.acked() < at_least {
            assert!(std::time::Instant::now() < deadline, "the load stalled");
            if watch(c).await {
                *n3_down += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_acked(&c, 100, &mut n3_down).await;
    h.nemesis("kill n1");
    c.node("n1").kill9().unwrap();
    let before = load.acked();
    wait_acked(&c, before + 60, &mut n3_down).await;
    // Writes n1 missed became hints (stored by both coordinators, one an hour behind).
    let hinted = c.meta.count_hints_for("n1").await.unwrap();
    assert!(hinted > 0, "no hints stored while n1 was down");
    c.node("n1").start().unwrap();
    h.nemesis("heal n1");
    let before = load.acked();
    wait_acked(&c, before + 60, &mut n3_down).await;
    load.finish().await;

    let (v, converged) = check::after_heal(&c, &h).await.unwrap();
    println!(
        "clock skew: {}; {hinted} hints for n1 replayed; n3 seen DOWN {n3_down} times",
        v.summary()
    );

    // The skew was real: n3 stamped its own versions an hour ahead of this process's clock.
    let keys: Vec<String> = check::keys(&h).into_iter().collect();
    let ahead = newest_own_write(&c, "n3", &keys).await;
    let now = pairdb_common::now_ms();
    assert!(
        ahead > now + HOUR_MS - 10 * 60_000,
        "n3's newest own version was written at {ahead}, not an hour after {now}"
    );
    assert!(v.acked > 200, "{}", v.summary());
    assert!(v.lost.is_empty(), "lost {:?}", v.lost);
    assert!(v.unexpected.is_empty(), "unexpected {:?}", v.unexpected);
    assert!(v.stale_reads.is_empty(), "stale {:?}", v.stale_reads);
    converged.unwrap();
    assert_eq!(n3_down, 0, "the node an hour ahead was taken for DOWN");
}
