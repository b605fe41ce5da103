//! Executes every command of `runbooks/topology.md` (its `sh` blocks, in order, as one bash
//! script with `set -euo pipefail`) against a running multi-process cluster, then checks that
//! the cluster ended where the runbook says and that no preloaded write was lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::ring::NodeState;
use pairdb_tests::procs::{ProcCluster, ProcOptions, preload};
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_topology_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    let acked = preload(&mut c.coord().await.unwrap(), "rb", 500, 100)
        .await
        .unwrap();
    let mut addrs = std::collections::HashMap::new();
    for id in ["n4", "n5", "n6"] {
        let n = c.new_node(id).unwrap();
        n.start().unwrap();
        addrs.insert(id, n.addr());
    }
    let log = run_runbook(
        "topology.md",
        6,
        vec![
            ("PAIRDB_COORDINATOR", c.coords[0].addr()),
            ("DATABASE_URL", c.db_url.clone()),
            ("NEW_NODE", "n4".into()),
            ("NEW_NODE_ADDR", addrs["n4"].clone()),
            ("OLD_NODE", "n3".into()),
            ("REPLACEMENT_NODE", "n5".into()),
            ("REPLACEMENT_ADDR", addrs["n5"].clone()),
            ("SPARE_NODE", "n6".into()),
            ("SPARE_ADDR", addrs["n6"].clone()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");

    // Where the runbook leaves the cluster: n4 added then removed, n3 replaced by n5, the
    // n6 bootstrap aborted, n5 force-removed.
    let state = |id: &'static str| {
        let meta = c.meta.clone();
        async move { meta.get_node(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state("n1").await, NodeState::Normal);
    assert_eq!(state("n2").await, NodeState::Normal);
    for id in ["n3", "n4", "n5", "n6"] {
        assert_eq!(state(id).await, NodeState::Removed, "{id}");
    }
    assert!(
        log.contains("aborted"),
        "the abort shows in the runbook output"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.check_quorum_reads(&acked).await.unwrap();
}
