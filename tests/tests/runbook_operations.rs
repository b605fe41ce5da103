//! Executes every `sh` block of `runbooks/monitoring.md`, `runbooks/operations.md`,
//! `runbooks/backup.md`, `runbooks/disk-space.md` and `runbooks/kubernetes.md`, in order, against a live multi-process cluster (three storage
//! nodes, one coordinator, PostgreSQL). For the Kubernetes runbook a fourth storage node starts with `--join`, the way
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
        7,
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
        "alert first look done",
    ] {
        assert!(log.contains(want), "runbook output lacks {want:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_day2_operations_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(one_coordinator()).await.unwrap();
    let node_admin = format!("127.0.0.1:{}", c.node("n2").admin);
    let log = run_runbook(
        "operations.md",
        5,
        vec![
            ("PAIRDB_COORDINATOR", c.coords[0].addr()),
            ("NODE", "n2".into()),
            ("NODE_ADMIN", node_admin),
            ("TENANT", "t1".into()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");
    for want in [
        "n2: serving drained, maintenance on",
        "n2: serving yes, maintenance off",
        "hints pending for n2 after undrain: 0",
        "written while n2 was drained",
        "\"corrupt_count\": 0",
        "capacity_bytes_after",
        "wal_files_after",
        "SERVING",
        "{\"replication_factor\":2,\"target_replication_factor\":0}",
        "{\"replication_factor\":3,\"target_replication_factor\":0}",
        // The cleanup of the decrease's surplus copies ran before the increase.
        "\"status\":\"completed\"}",
    ] {
        assert!(log.contains(want), "runbook output lacks {want:?}:\n{log}");
    }
    let n2 = c.meta.get_node("n2").await.unwrap().unwrap();
    assert!(!n2.drained(), "undrained in the metadata store");
    // The write made while n2 was drained reached it afterwards (its hint replayed).
    let s = c.node("n2").client().await.unwrap();
    pairdb_tests::cluster::wait_async(
        "n2 holds the drained-time write",
        std::time::Duration::from_secs(20),
        || {
            let mut s = s.clone();
            async move {
                s.read(pairdb_common::api::pb::KeyRef {
                    tenant_id: "t1".into(),
                    key: b"runbook:drained".to_vec(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().state.is_some_and(|st| {
                        st.versions
                            .iter()
                            .any(|v| v.value == b"written while n2 was drained")
                    })
                })
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_backup_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let c = ProcCluster::start(one_coordinator()).await.unwrap();
    let mut client = c.coord().await.unwrap();
    for i in 0..50 {
        client
            .write(pairdb_common::api::pb::WriteRequest {
                tenant_id: "t1".into(),
                key: format!("bk{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let log = run_runbook(
        "backup.md",
        3,
        vec![
            ("PAIRDB_COORDINATOR", c.coords[0].addr()),
            (
                "BACKUP_DIR",
                c.dir.path().join("backups").display().to_string(),
            ),
            ("WORK", work.path().display().to_string()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");
    for want in [
        ": completed",
        "intact (every file matches its checksum)",
        "metadata restored: 3 nodes",
        " deleted",
    ] {
        assert!(log.contains(want), "runbook output lacks {want:?}:\n{log}");
    }
    // The restore's metadata store names the nodes at their new addresses.
    let url = format!(
        "sqlite://{}",
        work.path().join("restored").join("meta.db").display()
    );
    let meta = pairdb_coordinator::meta::connect(&url).await.unwrap();
    let nodes = meta.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.port / 100 == 177), "{nodes:?}");
    assert!(meta.get_tenant("t1").await.unwrap().is_some());
    // Deleted everywhere: nothing of it is left in the shared backup directory.
    let left = std::fs::read_dir(c.dir.path().join("backups"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_disk_space_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(one_coordinator()).await.unwrap();
    let mut client = c.coord().await.unwrap();
    for i in 0..200 {
        client
            .write(pairdb_common::api::pb::WriteRequest {
                tenant_id: "t1".into(),
                key: format!("ds{i}").into_bytes(),
                value: vec![b'x'; 1000],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let node = c.node("n1");
    let (admin, dir) = (
        format!("127.0.0.1:{}", node.admin),
        node.dir.display().to_string(),
    );
    let log = run_runbook(
        "disk-space.md",
        3,
        vec![("NODE_ADMIN", admin), ("DATA_DIR", dir)],
    )
    .await
    .unwrap();
    println!("{log}");
    for want in [
        "\"usage_percent\"",
        "total_files",
        "cleanable_bytes",
        "wal_files_after",
        "\"sst_bytes_after\"",
        "ready: HTTP 200",
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
