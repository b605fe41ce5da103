//! Cluster behaviour through `pairdb.CoordinatorService`, against both metadata stores:
//! consistency levels, siblings across coordinators, deletes, hinted handoff, quorum failure
//! and convergence, read repair, bad input.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::Consistency::{All, One, Quorum};
use pairdb_coordinator::meta::NodeStatus;
use pairdb_tests::cluster::*;
use pairdb_tests::serial_async;

async fn semantics(backend: Backend) {
    let c = TestCluster::start(ClusterOptions::three_by_two(backend, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    let mut b = c.client(1).await.unwrap();

    // Every level, paired so that R + W > N: the read must see the acknowledged write.
    // (ONE/ONE promises nothing of the kind: the one replica read may not have the write yet.)
    for (i, (w, r)) in [(One, All), (Quorum, Quorum), (All, One)]
        .into_iter()
        .enumerate()
    {
        let key = format!("level-{i}");
        let ack = a
            .write(write_req(key.as_bytes(), b"v", vec![], w))
            .await
            .unwrap()
            .into_inner();
        assert!(ack.replicas_acked >= [1, 2, 3][i], "{ack:?}");
        let got = a
            .read(read_req(key.as_bytes(), r))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, b"v");
    }
    // ANY is accepted for writes, refused for reads.
    a.write(write_req(b"any", b"v", vec![], pb::Consistency::Any))
        .await
        .unwrap();
    let err = a
        .read(read_req(b"any", pb::Consistency::Any))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "INVALID_ARGUMENT");

    // An empty value is found; a missing key is NOT_FOUND with code 1001.
    a.write(write_req(b"empty", b"", vec![], Quorum))
        .await
        .unwrap();
    let r = a
        .read(read_req(b"empty", Quorum))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.value.len(), r.siblings.len()), (0, 1));
    let err = a.read(read_req(b"missing", Quorum)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(reason(&err), ("KEY_NOT_FOUND".into(), "1001".into()));

    // Two writes with the same context through two coordinators: two siblings.
    a.write(write_req(b"k", b"v0", vec![], Quorum))
        .await
        .unwrap();
    let ctx = a
        .read(read_req(b"k", Quorum))
        .await
        .unwrap()
        .into_inner()
        .context;
    a.write(write_req(b"k", b"via-a", ctx.clone(), Quorum))
        .await
        .unwrap();
    b.write(write_req(b"k", b"via-b", ctx, Quorum))
        .await
        .unwrap();
    let r = b.read(read_req(b"k", Quorum)).await.unwrap().into_inner();
    let mut vals: Vec<Vec<u8>> = r.siblings.iter().map(|s| s.value.clone()).collect();
    vals.sort();
    assert_eq!(vals, vec![b"via-a".to_vec(), b"via-b".to_vec()]);
    // Writing back with the read context leaves one.
    a.write(write_req(b"k", b"resolved", r.context, Quorum))
        .await
        .unwrap();
    let r = b.read(read_req(b"k", Quorum)).await.unwrap().into_inner();
    assert_eq!(r.siblings.len(), 1);
    assert_eq!(r.value, b"resolved");

    // Delete, then NOT_FOUND carrying a context; a write after delete works.
    a.delete(pb::DeleteRequest {
        tenant_id: "t1".into(),
        key: b"k".to_vec(),
        context: r.context,
        consistency: Quorum as i32,
        timeout_ms: 0,
    })
    .await
    .unwrap();
    let err = b.read(read_req(b"k", Quorum)).await.unwrap_err();
    assert_eq!(reason(&err).0, "KEY_NOT_FOUND");
    use tonic_types::StatusExt;
    let ctx_b64 = err.get_details_error_info().unwrap().metadata["context"].clone();
    use base64::Engine;
    let ctx = base64::engine::general_purpose::STANDARD
        .decode(ctx_b64)
        .unwrap();
    assert_eq!(ctx.first(), Some(&pairdb_common::context::TOKEN_FORMAT_V2));
    a.write(write_req(b"k", b"reborn", ctx, Quorum))
        .await
        .unwrap();
    let r = b.read(read_req(b"k", Quorum)).await.unwrap().into_inner();
    assert_eq!((r.value.as_slice(), r.siblings.len()), (&b"reborn"[..], 1));

    // Unknown tenant, bad input.
    let mut w = write_req(b"x", b"v", vec![], Quorum);
    w.tenant_id = "nosuch".into();
    assert_eq!(
        reason(&a.write(w).await.unwrap_err()),
        ("TENANT_NOT_FOUND".into(), "1007".into())
    );
    for (w, want) in [
        (write_req(b"", b"v", vec![], Quorum), "INVALID_KEY"),
        (
            write_req(&[b'k'; 1025], b"v", vec![], Quorum),
            "KEY_TOO_LARGE",
        ),
        (write_req(b"a\0b", b"v", vec![], Quorum), "INVALID_KEY"),
        (
            write_req(b"k", &vec![0u8; 1024 * 1024 + 1], vec![], Quorum),
            "VALUE_TOO_LARGE",
        ),
        (
            write_req(b"k", b"v", b"junk".to_vec(), Quorum),
            "INVALID_CONTEXT",
        ),
    ] {
        assert_eq!(reason(&a.write(w).await.unwrap_err()).0, want);
    }
    let mut w = write_req(b"k", b"v", vec![], Quorum);
    w.tenant_id = "Bad!".into();
    assert_eq!(reason(&a.write(w).await.unwrap_err()).0, "INVALID_TENANT");

    // Both coordinators route with the same ring.
    let ra = a
        .get_ring(pb::GetRingRequest {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let rb = b
        .get_ring(pb::GetRingRequest {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            ra.ring_version,
            ra.key_replicas.clone(),
            ra.ownership.clone()
        ),
        (rb.ring_version, rb.key_replicas, rb.ownership)
    );
    assert_eq!(ra.key_replicas.len(), 3);
    c.shutdown().await;
}

async fn hinted_handoff(backend: Backend) {
    let mut c = TestCluster::start(ClusterOptions::three_by_two(backend, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    c.stop_node(2).await;
    let keys: Vec<String> = (0..40).map(|i| format!("hh-{i}")).collect();
    for k in &keys {
        let r = a
            .write(write_req(k.as_bytes(), k.as_bytes(), vec![], Quorum))
            .await
            .unwrap()
            .into_inner();
        assert!(r.replicas_acked >= 2);
    }
    // Hints are recorded by the write's own replication task, possibly just after the client
    // got its answer: wait for them.
    wait_async("hints recorded", Duration::from_secs(10), || async {
        c.meta.count_hints_for("n3").await.unwrap() >= keys.len() as u64
    })
    .await
    .unwrap();
    let stats = a
        .get_hint_stats(pb::GetHintStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.pending >= keys.len() as u64,
        "hints recorded: {stats:?}"
    );
    assert!(stats.targets.iter().all(|t| t.node_id == "n3"));

    c.restart_node(2).await.unwrap();
    wait_async("hints table empties", Duration::from_secs(30), || async {
        c.meta.count_hints_for("n3").await.unwrap() == 0
    })
    .await
    .unwrap();
    for k in &keys {
        assert_eq!(
            c.node_values(2, k.as_bytes()).await.unwrap(),
            vec![k.as_bytes().to_vec()],
            "n3 holds {k}"
        );
    }
    let replayed: u64 = c
        .coordinators
        .iter()
        .map(|x| x.data.metrics.hints_replayed.get())
        .sum();
    let stored: u64 = c
        .coordinators
        .iter()
        .map(|x| x.data.metrics.hints_stored.get())
        .sum();
    assert!(
        stored >= keys.len() as u64 && replayed >= keys.len() as u64,
        "stored {stored}, replayed {replayed}"
    );
    c.shutdown().await;
}

async fn quorum_not_met_then_converge(backend: Backend) {
    let mut c = TestCluster::start(ClusterOptions::three_by_two(backend, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    c.wait_status(0, NodeStatus::Up).await.unwrap();
    c.stop_node(1).await;
    c.stop_node(2).await;
    let err = a
        .write(write_req(b"lonely", b"v", vec![], Quorum))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&err), ("QUORUM_NOT_MET".into(), "2001".into()));
    assert!(
        err.message().contains("partially applied"),
        "{}",
        err.message()
    );
    assert_eq!(
        c.node_values(0, b"lonely").await.unwrap(),
        vec![b"v".to_vec()],
        "the survivor kept it"
    );
    c.restart_node(1).await.unwrap();
    c.restart_node(2).await.unwrap();
    for i in [1, 2] {
        wait_async("replica converges", Duration::from_secs(30), || async {
            c.node_values(i, b"lonely")
                .await
                .map(|v| v == vec![b"v".to_vec()])
                .unwrap_or(false)
        })
        .await
        .unwrap();
    }
    c.shutdown().await;
}

async fn read_repair(backend: Backend) {
    let mut c = TestCluster::start(ClusterOptions::three_by_two(backend, false))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    c.stop_node(2).await;
    for i in 0..20 {
        a.write(write_req(
            format!("rr-{i}").as_bytes(),
            b"v",
            vec![],
            Quorum,
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        c.meta.count_hints_for("n3").await.unwrap(),
        0,
        "hints are off"
    );
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    assert!(
        c.node_values(2, b"rr-0").await.unwrap().is_empty(),
        "n3 is stale"
    );
    for i in 0..20 {
        let k = format!("rr-{i}");
        a.read(read_req(k.as_bytes(), All)).await.unwrap();
        wait_async("read repair", Duration::from_secs(10), || async {
            c.node_values(2, k.as_bytes())
                .await
                .map(|v| v == vec![b"v".to_vec()])
                .unwrap_or(false)
        })
        .await
        .unwrap();
    }
    // The counter moves when the repair RPC returns, just after the replica has the key.
    wait_async(
        "read_repairs counts every repair",
        Duration::from_secs(10),
        || async {
            c.coordinators
                .iter()
                .map(|x| x.data.metrics.read_repairs.get())
                .sum::<u64>()
                >= 20
        },
    )
    .await
    .unwrap();
    c.shutdown().await;
}

/// Four concurrent writers keep going while coordinator 0 is replaced under them; every
/// acknowledged write is readable afterwards through the other coordinator, with its value.
async fn coordinator_restart_mid_traffic(backend: Backend) {
    use std::sync::Arc;
    use tokio::sync::RwLock;
    let mut c = TestCluster::start(ClusterOptions::three_by_two(backend, true))
        .await
        .unwrap();
    let addr = Arc::new(RwLock::new(c.coordinators[0].grpc_addr));
    let mut writers = Vec::new();
    for w in 0..4 {
        let addr = addr.clone();
        writers.push(tokio::spawn(async move {
            let connect = |a: std::net::SocketAddr| async move {
                pb::coordinator_service_client::CoordinatorServiceClient::connect(format!(
                    "http://{a}"
                ))
                .await
            };
            let mut client = connect(*addr.read().await).await.unwrap();
            let (mut acked, mut failed) = (Vec::new(), 0);
            for i in 0..120 {
                let k = format!("mid-{w}-{i}");
                match client
                    .write(write_req(k.as_bytes(), k.as_bytes(), vec![], Quorum))
                    .await
                {
                    Ok(_) => acked.push(k),
                    Err(_) => {
                        failed += 1;
                        // Back off briefly, as a client would: without it the count of failed
                        // writes measures how fast this loop spins while the old coordinator
                        // stops, not how long the cluster was unavailable.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        if let Ok(cl) = connect(*addr.read().await).await {
                            client = cl;
                        }
                    }
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart_coordinator(0).await.unwrap();
    *addr.write().await = c.coordinators[0].grpc_addr;
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(
        acked.len() >= 400,
        "acked {} (failed {failed})",
        acked.len()
    );
    let mut b = c.client(1).await.unwrap();
    for k in &acked {
        let r = b
            .read(read_req(k.as_bytes(), Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.value, k.as_bytes(), "acknowledged write {k} lost");
    }
    println!(
        "coordinator replaced mid-traffic: {} writes acknowledged, {failed} failed, none lost",
        acked.len()
    );
    c.shutdown().await;
}

macro_rules! both_backends {
    ($($name:ident => $f:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let _s = serial_async().await;
                    $f(Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let _s = serial_async().await;
                    $f(Backend::Postgres).await;
                }
            }
        )*
    };
}

both_backends!(
    semantics_and_bad_input => semantics,
    hinted_handoff_replays_to_a_restarted_replica => hinted_handoff,
    quorum_not_met_keeps_the_version_and_replicas_converge => quorum_not_met_then_converge,
    read_repair_fixes_a_stale_replica => read_repair,
    coordinator_restart_mid_traffic_loses_nothing => coordinator_restart_mid_traffic,
);

/// Writes `keys` at QUORUM through the first coordinator, waits until it has refused a hint
/// for each (n3 past the hint window), and checks that `hinted` hints are pending for n3.
async fn write_unhinted(c: &TestCluster, keys: std::ops::Range<usize>, prefix: &str, hinted: u64) {
    let mut a = c.client(0).await.unwrap();
    let dropped = || c.coordinators[0].data.metrics.hints_dropped.get();
    let before = dropped();
    let n = keys.len() as u64;
    for i in keys {
        a.write(write_req(
            format!("{prefix}-{i}").as_bytes(),
            b"v",
            vec![],
            Quorum,
        ))
        .await
        .unwrap();
    }
    wait_async("hints refused", Duration::from_secs(10), || async {
        dropped() >= before + n
    })
    .await
    .unwrap();
    assert_eq!(
        c.meta.count_hints_for("n3").await.unwrap(),
        hinted,
        "{prefix}: writes past the hint window were hinted"
    );
}

/// Three nodes and one coordinator (hints on, SQLite) whose config `tweak` adjusts.
fn one_coordinator(tweak: fn(&mut pairdb_coordinator::config::Config)) -> ClusterOptions {
    ClusterOptions {
        backend: Backend::Sqlite,
        nodes: 3,
        coordinators: 1,
        hints: true,
        tweak: Some(tweak),
    }
}

fn one_second_window(cfg: &mut pairdb_coordinator::config::Config) {
    cfg.max_hint_window_secs = 1;
}

/// No hints are recorded for a node down longer than `max_hint_window` (anti-entropy's job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hints_for_a_node_down_past_the_hint_window() {
    let _s = serial_async().await;
    let mut c = TestCluster::start(one_coordinator(one_second_window))
        .await
        .unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_unhinted(&c, 0..5, "win", 0).await;

    // S13: a coordinator restarted while the node is still down past the window does not
    // open it again: the window counts from `storage_nodes.last_seen`, and until its own
    // heartbeats judge n3 the new coordinator takes the status the old one recorded. (Before
    // that rule it judged n3 DOWN within its first write's three misses anyway, so this did
    // not fail without it; it holds the window shut across the restart.)
    c.coordinators.pop().unwrap().shutdown().await;
    let mut cfg = coordinator_config(&c.db_url, "coord-0", true).unwrap();
    one_second_window(&mut cfg);
    c.coordinators
        .push(pairdb_coordinator::server::start(cfg).await.unwrap());
    write_unhinted(&c, 0..5, "win-after-restart", 0).await;
    c.shutdown().await;
}

/// S13's flapping node (Cassandra 4.1's persistent hint window): n3 down, three writes hinted;
/// n3 back for a moment — seen, so `last_seen` moves — and down again before its hints were
/// delivered (replay runs once a minute here). Past the window counted from the oldest of
/// those hints, though not from the last time n3 was seen, writes are no longer hinted: a node
/// that flaps does not reopen the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_does_not_reopen_the_hint_window() {
    const WINDOW: Duration = Duration::from_secs(6);
    let _s = serial_async().await;
    let mut c = TestCluster::start(one_coordinator(|cfg| {
        cfg.max_hint_window_secs = WINDOW.as_secs();
        cfg.hint_replay_interval_ms = 60_000;
    }))
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    c.wait_all_up().await.unwrap();
    let write = |a: &mut pairdb_common::client::Coordinator, k: String| {
        let req = write_req(k.as_bytes(), b"v", vec![], Quorum);
        let mut a = a.clone();
        async move { a.write(req).await.unwrap() }
    };
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    let first_hints = std::time::Instant::now();
    for i in 0..3 {
        write(&mut a, format!("flap-{i}")).await;
    }
    wait_async("3 hints stored", Duration::from_secs(10), || async {
        c.meta.count_hints_for("n3").await.unwrap() == 3
    })
    .await
    .unwrap();
    // The flap, late in the window: seen again, then gone before any replay.
    tokio::time::sleep(WINDOW * 2 / 3).await;
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    c.stop_node(2).await;
    let gone_again = std::time::Instant::now();
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    tokio::time::sleep(
        (first_hints + WINDOW + Duration::from_millis(500))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    assert!(
        gone_again.elapsed() < WINDOW,
        "the flap took so long that the window since n3 was last seen has passed too ({:?})",
        gone_again.elapsed()
    );
    // Past the window of n3's oldest hint: no more.
    write_unhinted(&c, 3..6, "flap", 3).await;
    c.shutdown().await;
}

/// An operator drain: both coordinators route around the node at once (from its row, not
/// from errors), it is held in maintenance mode, every write meanwhile succeeds at QUORUM and
/// becomes a hint for it, a drain that would break a write quorum is refused, and after the
/// undrain the hints replay so the node holds every write made while it was drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_routed_around_and_catches_up_from_hints_on_undrain() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    let mut b = c.client(1).await.unwrap();
    c.wait_all_up().await.unwrap();
    let before = a
        .write(write_req(b"dr-before", b"old", vec![], Quorum))
        .await
        .unwrap()
        .into_inner();
    assert!(before.replicas_acked >= 2);

    let n = a
        .drain_storage_node(pb::DrainStorageNodeRequest {
            node_id: "n1".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(n.drained_at_ms > 0, "{n:?}");
    assert!(n.maintenance, "the node confirmed maintenance mode: {n:?}");
    let drained_at = n.drained_at_ms;
    assert!(c.nodes[0].as_ref().unwrap().node.maintenance());
    // The other coordinator reads the flag within one ring poll.
    wait_async(
        "coordinator 1 sees the drain",
        Duration::from_secs(5),
        || async {
            c.coordinators[1]
                .data
                .cluster
                .snapshot()
                .nodes
                .get("n1")
                .is_some_and(|e| e.record.drained() && !e.serves_clients())
        },
    )
    .await
    .unwrap();
    let listed = b
        .get_storage_node_status(pb::GetStorageNodeStatusRequest {
            node_id: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.drained_at_ms, n.drained_at_ms);

    // A second drain would leave ranges with one live replica of RF 3 (write quorum 2).
    let refused = a
        .drain_storage_node(pb::DrainStorageNodeRequest {
            node_id: "n2".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&refused).0, "TOPOLOGY_CONFLICT", "{refused:?}");
    assert!(!c.nodes[1].as_ref().unwrap().node.maintenance());

    // Writes through both coordinators succeed without n1 and are hinted for it; reads too.
    let keys: Vec<String> = (0..30).map(|i| format!("dr-{i}")).collect();
    let n1_served = || {
        let m = &c.nodes[0].as_ref().unwrap().node.metrics;
        m.read_requests.get() + m.write_requests.get()
    };
    let served_before = n1_served();
    for (i, k) in keys.iter().enumerate() {
        let cl = if i % 2 == 0 { &mut a } else { &mut b };
        let r = cl
            .write(write_req(k.as_bytes(), k.as_bytes(), vec![], Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.replicas_acked, 2, "{k}: n1 is not asked");
        let got = cl
            .read(read_req(k.as_bytes(), Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.siblings.len(), 1, "{k}");
    }
    // Not one read or write reached n1 (it would have refused it): the coordinators did not
    // learn of the drain from errors.
    assert_eq!(n1_served(), served_before);
    wait_async("hints recorded for n1", Duration::from_secs(10), || async {
        c.meta.count_hints_for("n1").await.unwrap() >= keys.len() as u64
    })
    .await
    .unwrap();
    // Nothing replays while it is drained.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(c.meta.count_hints_for("n1").await.unwrap() >= keys.len() as u64);

    let n = b
        .undrain_storage_node(pb::UndrainStorageNodeRequest {
            node_id: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.drained_at_ms, 0);
    assert!(!n.maintenance, "{n:?}");
    // A coordinator that has not yet seen the undrain asks the node to hold the old drain:
    // the node ignores it (it released that drain).
    c.storage(0)
        .await
        .unwrap()
        .set_maintenance(pb::SetMaintenanceRequest {
            enabled: true,
            drained_at_ms: drained_at,
        })
        .await
        .unwrap();
    assert!(!c.nodes[0].as_ref().unwrap().node.maintenance());
    // A drain instant far ahead of the node's clock is refused (it could never be released).
    let e = c
        .storage(0)
        .await
        .unwrap()
        .set_maintenance(pb::SetMaintenanceRequest {
            enabled: true,
            drained_at_ms: u64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(!c.nodes[0].as_ref().unwrap().node.maintenance());
    wait_async("n1's hints replay", Duration::from_secs(30), || async {
        c.meta.count_hints_for("n1").await.unwrap() == 0
    })
    .await
    .unwrap();
    for k in &keys {
        assert_eq!(
            c.node_values(0, k.as_bytes()).await.unwrap(),
            vec![k.as_bytes().to_vec()],
            "n1 holds {k}"
        );
    }
    assert_eq!(
        c.node_values(0, b"dr-before").await.unwrap(),
        vec![b"old".to_vec()]
    );
    c.shutdown().await;
}

/// Waits (at most 60 s) until t1, read through `client`, has `rf` replicas and no change left.
async fn rf_in_effect(client: &pairdb_common::client::Coordinator, rf: u32) {
    wait_async(
        &format!("RF {rf} in effect"),
        Duration::from_secs(60),
        || async {
            let t = client
                .clone()
                .get_tenant(pb::GetTenantRequest {
                    tenant_id: "t1".into(),
                })
                .await
                .unwrap()
                .into_inner();
            t.replication_factor == rf && t.target_replication_factor == 0
        },
    )
    .await
    .unwrap();
}

/// A replication-factor change moves data: raising t1 from 3 to 5 replicas keeps reads at 3
/// while a repair copies every key to the two replicas it adds (writes made meanwhile reach
/// them too), then the tenant reads at 5 and every node holds every key; lowering it back
/// to 3 waits for its repair the same way, and after the cleanup grace the two surplus copies
/// of every t1 key are dropped while another tenant's records on the same nodes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_change_copies_every_key_before_reads_count_the_new_replicas() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions {
        nodes: 5,
        coordinators: 2,
        tweak: Some(|cfg| cfg.cleanup_grace_secs = 2),
        ..ClusterOptions::three_by_two(Backend::Sqlite, true)
    })
    .await
    .unwrap();
    pairdb_kit::ensure_tenant(c.meta.as_ref(), "t2")
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    let mut b = c.client(1).await.unwrap();
    c.wait_all_up().await.unwrap();
    let before: Vec<String> = (0..40).map(|i| format!("rf-{i}")).collect();
    for k in &before {
        a.write(write_req(k.as_bytes(), k.as_bytes(), vec![], Quorum))
            .await
            .unwrap();
    }
    let holders = |k: String| {
        let c = &c;
        async move {
            let mut n = 0;
            for i in 0..5 {
                if c.node_values(i, k.as_bytes()).await.unwrap() == vec![k.as_bytes().to_vec()] {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(holders(before[0].clone()).await, 3, "RF 3: three copies");

    let set_rf = |rf: u32| pb::UpdateTenantRequest {
        tenant: Some(pb::Tenant {
            tenant_id: "t1".into(),
            replication_factor: rf,
            ..Default::default()
        }),
    };
    let t = a.update_tenant(set_rf(5)).await.unwrap().into_inner();
    assert_eq!((t.replication_factor, t.target_replication_factor), (3, 5));
    // Writes during the change, through both coordinators.
    let during: Vec<String> = (0..20).map(|i| format!("rf-during-{i}")).collect();
    for (i, k) in during.iter().enumerate() {
        let cl = if i % 2 == 0 { &mut a } else { &mut b };
        cl.write(write_req(k.as_bytes(), k.as_bytes(), vec![], Quorum))
            .await
            .unwrap();
    }
    rf_in_effect(&b, 5).await;
    for k in before.iter().chain(&during) {
        assert_eq!(
            holders(k.clone()).await,
            5,
            "{k} is on every replica of RF 5"
        );
    }

    let t = b.update_tenant(set_rf(3)).await.unwrap().into_inner();
    assert_eq!((t.replication_factor, t.target_replication_factor), (5, 3));
    rf_in_effect(&a, 3).await;
    for k in before.iter().chain(&during) {
        let got = a
            .read(read_req(k.as_bytes(), Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, k.as_bytes(), "{k} reads at RF 3");
    }
    // A second tenant at RF 5 on the same nodes: its copies are not t1's to drop.
    let mut other = write_req(b"t2-key", b"t2-value", vec![], Quorum);
    other.tenant_id = "t2".into();
    c.meta
        .update_tenant(&{
            let mut t = c.meta.get_tenant("t2").await.unwrap().unwrap();
            t.replication_factor = 5;
            t
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.write(other).await.unwrap();
    let t2_holders = || async {
        let mut n = 0;
        for i in 0..5 {
            let mut s = c.storage(i).await.unwrap();
            let r = s
                .read(pb::KeyRef {
                    tenant_id: "t2".into(),
                    key: b"t2-key".to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            n += usize::from(r.exists);
        }
        n
    };
    // The cleanup change runs after the 2 s grace and drops t1's surplus copies.
    let cleanup = wait_async("t1's cleanup change", Duration::from_secs(60), || async {
        c.meta.list_changes(true).await.unwrap().iter().any(|ch| {
            ch.node_id == "t1"
                && ch.kind == pairdb_coordinator::meta::ChangeKind::Cleanup
                && ch.status == pairdb_coordinator::meta::ChangeStatus::Completed
        })
    })
    .await;
    cleanup.unwrap();
    for k in before.iter().chain(&during) {
        assert_eq!(holders(k.clone()).await, 3, "{k}: only RF 3 copies left");
        let got = b
            .read(read_req(k.as_bytes(), Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, k.as_bytes(), "{k} still reads");
    }
    assert_eq!(t2_holders().await, 5, "t2's copies stay on every node");
    c.shutdown().await;
}

/// S02 of FAULT-SCENARIOS.md: read a context, then two writes with that same context at once —
/// through one coordinator, then through two — 500 times each (`PAIRDB_S02_REPS`). Each time
/// both are acknowledged, the next QUORUM read returns both values as siblings under two
/// different dots (never two values under one clock, never one lost), and a write with the
/// read's context leaves one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writes_with_one_context_always_become_two_siblings() {
    let _g = serial_async().await;
    let reps: usize = std::env::var("PAIRDB_S02_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let a = c.client(0).await.unwrap();
    let b = c.client(1).await.unwrap();
    for (mode, other) in [("one-coordinator", a.clone()), ("two-coordinators", b)] {
        let key = format!("s02-{mode}").into_bytes();
        a.clone()
            .write(write_req(&key, b"start", vec![], Quorum))
            .await
            .unwrap();
        for rep in 0..reps {
            let ctx = a
                .clone()
                .read(read_req(&key, Quorum))
                .await
                .unwrap()
                .into_inner()
                .context;
            let (x, y) = (format!("x-{rep}"), format!("y-{rep}"));
            let (mut first, mut second) = (a.clone(), other.clone());
            let (rx, ry) = tokio::join!(
                first.write(write_req(&key, x.as_bytes(), ctx.clone(), Quorum)),
                second.write(write_req(&key, y.as_bytes(), ctx, Quorum)),
            );
            rx.unwrap();
            ry.unwrap();
            let r = other
                .clone()
                .read(read_req(&key, Quorum))
                .await
                .unwrap()
                .into_inner();
            let mut values: Vec<Vec<u8>> = r.siblings.iter().map(|s| s.value.clone()).collect();
            values.sort();
            assert_eq!(
                values,
                vec![x.clone().into_bytes(), y.clone().into_bytes()],
                "{mode}, repetition {rep}"
            );
            let dots: std::collections::BTreeSet<(String, u64, u64)> = r
                .siblings
                .iter()
                .map(|s| {
                    let d = s.dot.clone().unwrap_or_default();
                    (d.node_id, d.epoch, d.counter)
                })
                .collect();
            assert_eq!(
                dots.len(),
                2,
                "{mode}, repetition {rep}: one dot, two values"
            );
            a.clone()
                .write(write_req(&key, b"resolved", r.context, Quorum))
                .await
                .unwrap();
            let r = other
                .clone()
                .read(read_req(&key, Quorum))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (r.siblings.len(), r.value.as_slice()),
                (1, b"resolved".as_slice()),
                "{mode}, repetition {rep}"
            );
        }
    }
    c.shutdown().await;
}

/// S29 of FAULT-SCENARIOS.md: replicas diverged without the coordinators' knowledge — n1 and
/// n2 each took a write of their own with no context (two concurrent versions under two
/// dots), n3 has nothing; and for a second key n1 and n2 hold a tombstone over a value that n3
/// still holds alone. A read at ALL answers the merge (both siblings; not found for the
/// deleted key), and read repair writes the merge — not the last writer — to every replica:
/// both siblings on all three, the tombstone on n3; the deleted key is not resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_writes_the_merge_of_diverged_replicas_and_never_resurrects() {
    let _g = serial_async().await;
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, false))
        .await
        .unwrap();
    c.wait_all_up().await.unwrap();
    let op = |key: &[u8], value: &[u8], context: Vec<u8>, tombstone: bool| pb::WriteOp {
        tenant_id: "t1".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context,
        tombstone,
        ..Default::default()
    };
    // Concurrent versions, one on each of n1 and n2, written straight to the nodes.
    for (i, v) in [(0, b"on-n1"), (1, b"on-n2")] {
        c.storage(i)
            .await
            .unwrap()
            .write(op(b"split", v, vec![], false))
            .await
            .unwrap();
    }
    // The same old value on all three, then a tombstone over it on n1 and n2 only.
    let mut a = c.client(0).await.unwrap();
    a.write(write_req(b"deleted", b"old", vec![], All))
        .await
        .unwrap();
    for i in 0..2 {
        let mut s = c.storage(i).await.unwrap();
        let r = s
            .read(pb::KeyRef {
                tenant_id: "t1".into(),
                key: b"deleted".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let state = pairdb_common::convert::state_from_pb(r.state.unwrap()).unwrap();
        let ctx = pairdb_common::context::encode_internal(&state.read_context());
        s.write(op(b"deleted", b"", ctx, true)).await.unwrap();
    }
    assert_eq!(
        c.node_values(0, b"split").await.unwrap(),
        vec![b"on-n1".to_vec()]
    );
    assert!(c.node_values(2, b"split").await.unwrap().is_empty());
    assert!(c.node_values(0, b"deleted").await.unwrap().is_empty());
    assert_eq!(
        c.node_values(2, b"deleted").await.unwrap(),
        vec![b"old".to_vec()]
    );

    let r = a.read(read_req(b"split", All)).await.unwrap().into_inner();
    let mut got: Vec<Vec<u8>> = r.siblings.iter().map(|s| s.value.clone()).collect();
    got.sort();
    let both = vec![b"on-n1".to_vec(), b"on-n2".to_vec()];
    assert_eq!(got, both, "ALL answers the merge");
    let err = a.read(read_req(b"deleted", All)).await.unwrap_err();
    assert_eq!(reason(&err).0, "KEY_NOT_FOUND", "{err:?}");

    for i in 0..3 {
        wait_async(
            "read repair wrote the merge",
            Duration::from_secs(10),
            || async { c.node_values(i, b"split").await.is_ok_and(|v| v == both) },
        )
        .await
        .unwrap();
    }
    wait_async("n3 got the tombstone", Duration::from_secs(10), || async {
        c.node_values(2, b"deleted")
            .await
            .is_ok_and(|v| v.is_empty())
    })
    .await
    .unwrap();
    for level in [One, Quorum, All] {
        for _ in 0..5 {
            let err = a.read(read_req(b"deleted", level)).await.unwrap_err();
            assert_eq!(reason(&err).0, "KEY_NOT_FOUND", "{level:?}");
        }
    }
    c.shutdown().await;
}
