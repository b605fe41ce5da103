//! Topology lifecycle against a multi-process cluster (storage nodes and coordinators as
//! processes, PostgreSQL): bootstrap, decommission, replace, abort, two bootstraps at once, the
//! driving coordinator and a source node killed mid-stream. A writer records every
//! acknowledged write; afterwards every one must read back at QUORUM, every replica of the
//! final ring must hold it, digests of the changed node's ranges must match their replicas, and
//! after the grace period nodes must no longer hold what they stopped replicating.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::{ChangeKind, ChangeStatus};
use pairdb_tests::procs::{ProcCluster, ProcOptions, Writer, metrics_text, preload};
use pairdb_tests::*;

const CHANGE_DEADLINE: Duration = Duration::from_secs(120);

fn throttled(bytes_per_sec: u64) -> ProcOptions {
    let mut o = ProcOptions::default();
    o.coord_env.push((
        "PAIRDB_STREAM_MAX_BYTES_PER_SEC".into(),
        bytes_per_sec.to_string(),
    ));
    o
}

/// Waits until a running change has streamed some but not all ranges.
async fn wait_mid_stream(c: &ProcCluster, id: &str) {
    for _ in 0..600 {
        let ch = c.change(id).await.unwrap();
        let p: serde_json::Value = serde_json::from_str(&ch.progress).unwrap_or_default();
        let keys = p["keys"].as_u64().unwrap_or(0);
        let done = p["ranges_done"].as_u64().unwrap_or(0);
        let total = p["ranges_total"].as_u64().unwrap_or(0);
        if ch.status == ChangeStatus::Running && keys > 0 && done < total {
            return;
        }
        assert!(
            ch.status.is_active(),
            "change ended before mid-stream: {ch:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("change {id} never reached mid-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Runs with TLS on every port, mTLS between coordinators and storage nodes (the new node's
/// pulls verify their sources' certificates), tokens required and admin tokens on the admin
/// ports: the secured cluster loses nothing either, and the new node joins (`--join`) on the
/// strength of its certificate alone.
async fn bootstrap_3_to_4_under_writes_loses_nothing_and_cleanup_drops_surplus() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions {
        secure: true,
        ..ProcOptions::default()
    })
    .await
    .unwrap();
    // Secure really is on: the coordinator refuses a client without a token, and a node
    // refuses plaintext.
    let anonymous = pairdb_common::client::Dial {
        token: None,
        ..c.coords[0].dial()
    };
    let err = anonymous
        .connect()
        .await
        .unwrap()
        .get_hint_stats(pb::GetHintStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let plain =
        pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient::connect(
            format!("http://{}", c.nodes[0].addr()),
        )
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut p) => p.node_info(pb::NodeInfoRequest {}).await.is_err(),
    };
    assert!(
        refused,
        "a storage node served plaintext in a secure cluster"
    );
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 2000, 200)
        .await
        .unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(60));
    // Self-registration: the node joins through a coordinator and bootstraps.
    let coord = c.coords[0].addr();
    let n4 = c.new_node("n4").unwrap();
    n4.join = Some(coord);
    n4.start().unwrap();
    let id = c.change_of("n4", ChangeKind::Bootstrap).await.unwrap();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, failed) = writer.finish().await.unwrap();
    println!(
        "bootstrap under writes: {} acknowledged, {failed} failed",
        live.len()
    );
    assert!(live.len() > 50, "writer made too little progress");
    acked.extend(live);
    assert_eq!(
        c.meta.get_node("n4").await.unwrap().unwrap().state,
        NodeState::Normal
    );
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n4").await.unwrap();
    // The new node's ranges went in as ingested tables while the writer was writing to them.
    let metrics = c.node("n4").metrics().await.unwrap();
    let ingested = metrics
        .lines()
        .find(|l| l.starts_with("stream_keys_ingested_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(ingested > 0.0, "no streamed key was ingested:\n{metrics}");
    c.wait_cleanup("n4", CHANGE_DEADLINE).await.unwrap();
    c.check_placement(&acked, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_4_to_3_under_writes_and_removal_below_rf_is_refused() {
    let _s = serial_async().await;
    let c = ProcCluster::start(ProcOptions {
        nodes: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 2000, 200)
        .await
        .unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(60));
    let r = c
        .coord()
        .await
        .unwrap()
        .remove_storage_node(pb::RemoveStorageNodeRequest {
            node_id: "n4".into(),
            force: false,
            acknowledge_data_loss: false,
        })
        .await
        .unwrap()
        .into_inner();
    let id = r.change.unwrap().change_id;
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, _) = writer.finish().await.unwrap();
    acked.extend(live);
    assert_eq!(
        c.meta.get_node("n4").await.unwrap().unwrap().state,
        NodeState::Removed
    );
    // Three nodes left with RF 3: another removal is refused.
    let refused = c
        .coord()
        .await
        .unwrap()
        .remove_storage_node(pb::RemoveStorageNodeRequest {
            node_id: "n1".into(),
            force: false,
            acknowledge_data_loss: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        cluster::reason(&refused).0,
        "TOPOLOGY_CONFLICT",
        "{refused:?}"
    );
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n1").await.unwrap();
    c.wait_cleanup("n4", CHANGE_DEADLINE).await.unwrap();
    c.check_placement(&acked, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driving_coordinator_killed_mid_bootstrap_another_resumes() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(throttled(256 << 10)).await.unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 4000, 1000)
        .await
        .unwrap();
    let n4 = c.new_node("n4").unwrap();
    n4.start().unwrap();
    let n4_addr = n4.addr();
    let r = c
        .coord()
        .await
        .unwrap()
        .add_storage_node(pb::AddStorageNodeRequest {
            node_id: "n4".into(),
            host: "127.0.0.1".into(),
            port: n4_addr.rsplit_once(':').unwrap().1.parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = r.change.unwrap().change_id;
    wait_mid_stream(&c, &id).await;
    let driver = c.change(&id).await.unwrap().lease_owner.unwrap();
    let before: serde_json::Value =
        serde_json::from_str(&c.change(&id).await.unwrap().progress).unwrap();
    c.coords
        .iter_mut()
        .find(|p| p.id == driver)
        .unwrap()
        .kill9()
        .unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(60));
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, _) = writer.finish().await.unwrap();
    acked.extend(live);
    let survivor = c.coords.iter().find(|p| p.running()).unwrap();
    assert_ne!(survivor.id, driver);
    // The survivor finished the change (its own counter says so).
    let metrics = metrics_text(survivor.admin).await.unwrap();
    assert!(
        metrics.contains(r#"bootstrap_operations_total{kind="bootstrap",result="completed"} 1"#),
        "the surviving coordinator did not complete the bootstrap:\n{metrics}"
    );
    let survivor = survivor.id.clone();
    println!(
        "driver {driver} killed at {} of {} ranges; {survivor} finished",
        before["ranges_done"], before["ranges_total"]
    );
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n4").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_node_killed_mid_stream_resumes_from_another_replica() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(throttled(256 << 10)).await.unwrap();
    let acked = preload(&mut c.coord().await.unwrap(), "pre", 4000, 1000)
        .await
        .unwrap();
    let coord = c.coords[0].addr();
    let n4 = c.new_node("n4").unwrap();
    n4.join = Some(coord);
    n4.start().unwrap();
    let id = c.change_of("n4", ChangeKind::Bootstrap).await.unwrap();
    wait_mid_stream(&c, &id).await;
    // Kill the source of a range that is still streaming.
    let plan: Vec<serde_json::Value> =
        serde_json::from_str(&c.change(&id).await.unwrap().plan).unwrap();
    let victim = plan
        .iter()
        .find(|t| t["state"] == "pending")
        .map(|t| t["sources"][0].as_str().unwrap().to_string())
        .unwrap();
    c.node(&victim).kill9().unwrap();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let plan: Vec<serde_json::Value> =
        serde_json::from_str(&c.change(&id).await.unwrap().plan).unwrap();
    let rerouted = plan
        .iter()
        .filter(|t| t["sources"][0] == victim.as_str() && t["source"] != victim.as_str())
        .count();
    println!("source {victim} killed; {rerouted} ranges streamed from another replica");
    assert!(rerouted > 0, "no range failed over to another replica");
    c.check_quorum_reads(&acked).await.unwrap();
    c.node(&victim).start().unwrap();
    c.check_placement(&acked, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_killed_node_rereplicates_everything_it_held() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    let acked = preload(&mut c.coord().await.unwrap(), "pre", 2000, 200)
        .await
        .unwrap();
    c.node("n3").kill9().unwrap();
    let id = c.replace_node("n3", "n5").await.unwrap();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        c.meta.get_node("n3").await.unwrap().unwrap().state,
        NodeState::Removed
    );
    // Every key has all three replicas again, the new node included.
    c.check_placement(&acked, false).await.unwrap();
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n5").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bootstraps_requested_together_both_complete() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 2000, 200)
        .await
        .unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(90));
    let (a, b) = (c.coords[0].addr(), c.coords[1].addr());
    let n4 = c.new_node("n4").unwrap();
    n4.join = Some(a);
    n4.start().unwrap();
    let n5 = c.new_node("n5").unwrap();
    n5.join = Some(b);
    n5.start().unwrap();
    let id4 = c.change_of("n4", ChangeKind::Bootstrap).await.unwrap();
    let id5 = c.change_of("n5", ChangeKind::Bootstrap).await.unwrap();
    c.wait_change(&id4, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    c.wait_change(&id5, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, _) = writer.finish().await.unwrap();
    acked.extend(live);
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n4").await.unwrap();
    c.check_digests("n5").await.unwrap();
    c.check_placement(&acked, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_bootstrap_restores_the_ring_and_loses_nothing() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(throttled(256 << 10)).await.unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 4000, 1000)
        .await
        .unwrap();
    let version_before = c.meta.ring_version().await.unwrap();
    let coord = c.coords[0].addr();
    let n4 = c.new_node("n4").unwrap();
    n4.join = Some(coord);
    n4.start().unwrap();
    let id = c.change_of("n4", ChangeKind::Bootstrap).await.unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(60));
    wait_mid_stream(&c, &id).await;
    let aborted = c
        .coord()
        .await
        .unwrap()
        .abort_change(pb::AbortChangeRequest {
            change_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.status, "aborted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (live, _) = writer.finish().await.unwrap();
    acked.extend(live);
    assert_eq!(
        c.meta.get_node("n4").await.unwrap().unwrap().state,
        NodeState::Removed
    );
    assert!(c.meta.ring_version().await.unwrap() > version_before);
    let ring = c
        .coord()
        .await
        .unwrap()
        .get_ring(pb::GetRingRequest::default())
        .await
        .unwrap()
        .into_inner();
    let owners: Vec<String> = ring.nodes.iter().map(|n| n.node_id.clone()).collect();
    assert_eq!(owners, vec!["n1", "n2", "n3"]);
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_placement(&acked, false).await.unwrap();
    // The aborted node's data is cleaned up after the grace period.
    c.wait_cleanup("n4", CHANGE_DEADLINE).await.unwrap();
}

/// S14 with a topology change: the metadata store (the cluster's own PostgreSQL, stopped with
/// `pg_ctl`) goes away (1) when a change is asked for — it is refused and nothing of it is
/// left once the store is back — and (2) for 6 s in the middle of a bootstrap's stream, longer
/// than the 3 s job lease, under writes. The driver cannot renew its lease or save progress
/// meanwhile; once the store is back the change is driven on (by it or another coordinator)
/// and completes: the ring 4 NORMAL members, every write acknowledged before, during and after
/// the outage read back at QUORUM, n4's digests equal its replicas', and after the cleanup
/// every replica of the new ring holds each write and no other node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_survives_the_metadata_store_stopping_mid_stream() {
    let _s = serial_async().await;
    let mut o = throttled(256 << 10);
    o.own_postgres = true;
    let mut c = ProcCluster::start(o).await.unwrap();
    c.wait_all_up().await.unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 4000, 1000)
        .await
        .unwrap();
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(180));
    let add = |node_id: &str, addr: &str| pb::AddStorageNodeRequest {
        node_id: node_id.into(),
        host: "127.0.0.1".into(),
        port: addr.rsplit_once(':').unwrap().1.parse().unwrap(),
        ..Default::default()
    };

    // (1) Asked for while the store is stopped: refused, nothing left behind.
    let n5_addr = c.new_node("n5").unwrap().addr();
    let mut coord = c.coord().await.unwrap();
    c.pg_server.as_ref().unwrap().stop().unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        coord.add_storage_node(add("n5", &n5_addr)),
    )
    .await
    .expect("the add was answered while the store was stopped");
    let err = refused.expect_err("a change was accepted with the metadata store stopped");
    println!("add during the outage: {:?} {}", err.code(), err.message());
    c.pg_server.as_ref().unwrap().start_again().unwrap();
    cluster::wait_async("the store is back", Duration::from_secs(30), || async {
        c.meta.list_nodes().await.is_ok()
    })
    .await
    .unwrap();
    assert!(c.meta.get_node("n5").await.unwrap().is_none());
    assert!(
        c.meta
            .list_changes(true)
            .await
            .unwrap()
            .iter()
            .all(|ch| ch.node_id != "n5"),
        "a change for n5 was left behind"
    );

    // (2) Stopped mid-stream, longer than the job lease.
    let n4 = c.new_node("n4").unwrap();
    n4.start().unwrap();
    let n4_addr = n4.addr();
    let id = coord
        .add_storage_node(add("n4", &n4_addr))
        .await
        .unwrap()
        .into_inner()
        .change
        .unwrap()
        .change_id;
    wait_mid_stream(&c, &id).await;
    let before = writer.acked();
    c.pg_server.as_ref().unwrap().stop().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = writer.acked() - before;
    c.pg_server.as_ref().unwrap().start_again().unwrap();
    println!("{during} writes acknowledged while the store was stopped mid-stream");
    assert!(
        during > 50,
        "the writer stalled while the store was stopped"
    );
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, failed) = writer.finish().await.unwrap();
    println!(
        "bootstrap across a metadata-store outage: {} writes acknowledged, {failed} failed",
        live.len()
    );
    assert_eq!(failed, 0, "writes failed while the store was away");
    acked.extend(live);
    let ring = c.ring().await.unwrap();
    assert_eq!(ring.members().len(), 4, "{:?}", ring.members());
    assert!(
        ring.members().iter().all(|m| m.state == NodeState::Normal),
        "{:?}",
        ring.members()
    );
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n4").await.unwrap();
    c.wait_cleanup("n4", CHANGE_DEADLINE).await.unwrap();
    c.check_placement(&acked, true).await.unwrap();
}
