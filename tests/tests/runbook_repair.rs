//! Executes every command of `runbooks/repair.md` (its `sh` blocks, in order, as one bash script
//! with `set -euo pipefail`) against a running cluster where one node missed writes and another
//! holds a corrupt record, then checks that the replicas converged and the record was rebuilt.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::Consistency::{All, Quorum};
use pairdb_coordinator::meta::NodeStatus;
use pairdb_storage_node::engine::{BatchOp, Space};
use pairdb_tests::cluster::*;
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_of_the_repair_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = TestCluster::start(ClusterOptions {
        backend: Backend::Postgres,
        nodes: 3,
        coordinators: 1,
        hints: false,
        tweak: Some(|cfg| cfg.repair_interval_secs = 0),
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    let key = |i: usize| format!("rb-{i:04}").into_bytes();
    for i in 0..200 {
        a.write(write_req(&key(i), b"v0", vec![], All))
            .await
            .unwrap();
    }
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    for i in 200..300 {
        a.write(write_req(&key(i), b"v1", vec![], Quorum))
            .await
            .unwrap();
    }
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    // One flipped byte in node 2's record of rb-0005.
    let engine = c.nodes[1].as_ref().unwrap().node.store.engine().clone();
    let dk = pairdb_common::token::data_key("t1", &key(5));
    let mut rec = engine.get(Space::Data, &dk).unwrap().unwrap();
    let at = rec.len() - 3;
    rec[at] ^= 0x01;
    engine
        .write(vec![BatchOp::Put(Space::Data, dk, rec)], true)
        .unwrap();

    let log = run_runbook(
        "repair.md",
        6,
        vec![
            (
                "PAIRDB_COORDINATOR",
                c.coordinators[0].grpc_addr.to_string(),
            ),
            ("DATABASE_URL", c.db_url.clone()),
            ("NODE_ADDR", c.node_cfgs[1].grpc_addr.to_string()),
            ("NODE_ADMIN", c.node_cfgs[1].admin_addr.to_string()),
            ("TENANT", "t1".into()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");
    assert!(
        log.contains("1 corrupt of"),
        "the first scan found the record:\n{log}"
    );
    assert!(log.contains("no corrupt records"));

    // Every replica holds the same state for every key, rb-0005 intact on node 2.
    for i in 0..300 {
        let mut states = Vec::new();
        for n in 0..3 {
            let r = c
                .storage(n)
                .await
                .unwrap()
                .read(pb::KeyRef {
                    tenant_id: "t1".into(),
                    key: key(i),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.exists, "key {i} missing on node {n}");
            states.push(r.state);
        }
        assert!(states.iter().all(|s| *s == states[0]), "key {i} differs");
    }
    let runs = c.meta.list_repairs(10).await.unwrap();
    assert!(
        runs.len() >= 2 && runs.iter().all(|r| r.status == "completed"),
        "{runs:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.shutdown().await;
}
