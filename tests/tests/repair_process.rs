//! Anti-entropy with real processes: a storage node is SIGKILLed while writes continue (hints
//! off, so only repair can bring it back in line), a repair starts, and the coordinator driving
//! it is SIGKILLed mid-run. The other coordinator takes the run over after the lease expires and
//! completes it while writes go on; afterwards (and one more run) every acknowledged write,
//! before and during the repair, reads back and the node's ranges hash equal to their replicas.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_tests::cluster::wait_repair;
use pairdb_tests::procs::{ProcCluster, ProcOptions, Writer, preload};
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_survives_kill9_of_its_driving_coordinator() {
    let _s = serial_async().await;
    let mut o = ProcOptions::default();
    for (k, v) in [
        ("PAIRDB_HINTS_ENABLED", "false"),
        ("PAIRDB_REPAIR_INTERVAL_SECS", "0"),
        // ~300 KB of missed records at 2 × 25 KB/s: the run lasts several seconds.
        ("PAIRDB_REPAIR_MAX_BYTES_PER_SEC", "25000"),
    ] {
        o.coord_env.push((k.into(), v.into()));
    }
    let mut c = ProcCluster::start(o).await.unwrap();
    let mut acked = preload(&mut c.coord().await.unwrap(), "before", 200, 1000)
        .await
        .unwrap();
    c.node("n3").kill9().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    acked.extend(
        preload(&mut c.coord().await.unwrap(), "missed", 300, 1000)
            .await
            .unwrap(),
    );
    c.node("n3").start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.check_digests("n3").await.is_err(),
        "n3 missed the writes made while it was down"
    );

    // Writes go on through both coordinators for the whole run.
    let writer = Writer::start(c.coord_dials(), "during", 100_000, Duration::from_secs(150));
    let mut client = c.coord().await.unwrap();
    let run = client
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Wait for the driver to have moved some keys, then SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let driver = loop {
        let s = client
            .get_repair_status(pb::GetRepairStatusRequest {
                repair_id: run.repair_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status, "running",
            "ended before it could be interrupted: {s:?}"
        );
        let p: serde_json::Value = serde_json::from_str(&s.progress_json).unwrap();
        if !s.driver.is_empty() && p["keys_transferred"].as_u64().unwrap_or(0) > 0 {
            break s.driver;
        }
        assert!(Instant::now() < deadline, "no progress: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim = c.coords.iter().position(|p| p.id == driver).unwrap();
    c.coords[victim].kill9().unwrap();
    let mut other = c.coords[1 - victim].client().await.unwrap();
    let done = wait_repair(&mut other, &run.repair_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{done:?}");
    let row = c.meta.get_repair(&run.repair_id).await.unwrap().unwrap();
    assert!(row.lease_owner.is_none());
    let (during, _) = writer.finish().await.unwrap();
    assert!(
        !during.is_empty(),
        "no write was acknowledged during the repair"
    );
    acked.extend(during);
    // A write cut short by the SIGKILL may have reached only some replicas (hints are off):
    // one more run repairs that too.
    let again = other
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_repair(&mut other, &again.repair_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{done:?}");
    c.check_digests("n3").await.unwrap();
    c.check_quorum_reads(&acked).await.unwrap();
}
