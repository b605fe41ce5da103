//! Fault test: a storage node process is killed with SIGKILL under write load and restarted.
//! Writers record every acknowledged write; afterwards every acknowledged write must be
//! readable at QUORUM with its value, and once hints have drained every replica must hold it
//! (read through each node's own storage API).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_coordinator::meta::{self, TenantRecord};
use pairdb_tests::cluster::{coordinator_config, read_req, wait_async, write_req};
use pairdb_tests::procs::NodeProc;
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_replica_under_load_loses_no_acknowledged_write_and_replicas_converge() {
    let _s = serial_async().await;
    pairdb_common::telemetry::init_logging(false);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| NodeProc::new(&format!("k{i}"), dir.path()).unwrap())
        .collect();
    let db_url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = meta::connect(&db_url).await.unwrap();
    store.migrate().await.unwrap();
    for n in &mut nodes {
        n.start().unwrap();
        store.add_node(&n.record()).await.unwrap();
    }
    store
        .create_tenant(&TenantRecord::with_defaults("t1"))
        .await
        .unwrap();
    let coord = pairdb_coordinator::server::start(
        coordinator_config(&db_url, "fault-coord", true).unwrap(),
    )
    .await
    .unwrap();
    let addr = coord.grpc_addr;

    // Writers: unique keys, QUORUM, record what was acknowledged; bounded in count and time.
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut writers = Vec::new();
    for w in 0..4 {
        writers.push(tokio::spawn(async move {
            let mut c = pb::coordinator_service_client::CoordinatorServiceClient::connect(format!(
                "http://{addr}"
            ))
            .await
            .unwrap();
            let (mut acked, mut failed) = (Vec::new(), 0u32);
            for i in 0..5_000 {
                if Instant::now() > stop_at {
                    break;
                }
                let k = format!("w{w}-{i}");
                match c
                    .write(write_req(
                        k.as_bytes(),
                        k.as_bytes(),
                        vec![],
                        pb::Consistency::Quorum,
                    ))
                    .await
                {
                    Ok(_) => acked.push(k),
                    Err(_) => failed += 1,
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nodes[1].kill9().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nodes[1].start().unwrap();
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    println!(
        "kill -9 under load: {} writes acknowledged, {failed} failed",
        acked.len()
    );
    assert!(
        acked.len() > 100,
        "too few writes acknowledged: {}",
        acked.len()
    );

    // Every acknowledged write is readable at QUORUM, with its value.
    let mut c =
        pb::coordinator_service_client::CoordinatorServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    for k in &acked {
        let r = c
            .read(read_req(k.as_bytes(), pb::Consistency::Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.value, k.as_bytes(), "acknowledged write {k} lost");
    }
    // Hints drain to the restarted node; then every replica holds every acknowledged write.
    wait_async("hints drain", Duration::from_secs(60), || async {
        store.count_hints_for("k2").await.unwrap() == 0
    })
    .await
    .unwrap();
    let acked = Arc::new(acked);
    for n in &nodes {
        let mut s = pb::storage_node_service_client::StorageNodeServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            n.grpc
        ))
        .await
        .unwrap();
        let mut missing = Vec::new();
        for k in acked.iter() {
            let r = s
                .read(pb::KeyRef {
                    tenant_id: "t1".into(),
                    key: k.as_bytes().to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            let has = r
                .state
                .map(|st| st.versions.iter().any(|v| v.value == k.as_bytes()))
                .unwrap_or(false);
            if !has {
                missing.push(k.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{} misses {} acknowledged writes, e.g. {:?}",
            n.id,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    coord.shutdown().await;
}
