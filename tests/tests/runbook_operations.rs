//! Executes every `sh` block of `runbooks/monitoring.md` and of `runbooks/kubernetes.md`, in
//! order, against a live multi-process cluster (three storage nodes, one coordinator,
//! PostgreSQL). For the Kubernetes runbook a fourth storage node starts with `--join`, the way
//! a new StatefulSet pod does, and the runbook waits for its bootstrap and decommissions it.
#![allow(clippy::unwrap_used)]

use pairdb_tests::k8s::repo_root;
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;

fn one_coordinator() -> ProcOptions {
    ProcOptions {
        coordinators: 1,
        ..ProcOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_monitoring_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(one_coordinator()).await.unwrap();
    let coord_admin = format!("127.0.0.1:{}", c.coords[0].admin);
    let node_admin = format!("127.0.0.1:{}", c.node("n1").admin);
    // Some traffic, so the metrics have values.
    let mut client = c.coord().await.unwrap();
    for i in 0..20 {
        let _ = client
            .write(pairdb_common::api::pb::WriteRequest {
                tenant_id: "t1".into(),
                key: format!("m{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await;
    }
    let log = run_runbook(
        "monitoring.md",
        6,
        vec![
            ("PAIRDB_COORDINATOR", c.coords[0].addr()),
            ("COORD_ADMIN", coord_admin),
            ("NODE_ADMIN", node_admin),
            ("REPO", repo_root().display().to_string()),
        ],
    )
    .await
    .unwrap();
    for want in [
        "storage node ready: HTTP 200",
        "coordinator ready: HTTP 200",
        "\"maintenance\"",
        "ready again: HTTP 200",
        "write_requests_total",
        "SUCCESS",
        "Cluster overview",
    ] {
        assert!(log.contains(want), "runbook output lacks {want:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_kubernetes_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(one_coordinator()).await.unwrap();
    let coord = c.coords[0].addr();
    // The scale-up: a new "pod" that registers itself.
    let node = c.new_node("pairdb-storage-3").unwrap();
    node.join = Some(coord.clone());
    node.start().unwrap();
    let new_admin = format!("127.0.0.1:{}", node.admin);
    let node_admin = format!("127.0.0.1:{}", c.node("n1").admin);
    let work = tempfile::tempdir().unwrap();
    let log = run_runbook(
        "kubernetes.md",
        6,
        vec![
            ("PAIRDB_COORDINATOR", coord),
            ("NEW_POD", "pairdb-storage-3".into()),
            ("NEW_POD_ADMIN", new_admin),
            ("NODE_ADMIN", node_admin),
            ("REPO", repo_root().display().to_string()),
            ("WORK", work.path().display().to_string()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");
    for want in [
        "pairdb-storage-2.crt",
        "readiness: HTTP 200",
        "draining, readiness: HTTP 503",
        "back, readiness: HTTP 200",
    ] {
        assert!(log.contains(want), "runbook output lacks {want:?}:\n{log}");
    }
    let nodes = c.meta.list_nodes().await.unwrap();
    let n = nodes
        .iter()
        .find(|n| n.node_id == "pairdb-storage-3")
        .unwrap();
    assert_eq!(
        n.state,
        pairdb_common::ring::NodeState::Removed,
        "the scale-down decommissioned the new node"
    );
}
