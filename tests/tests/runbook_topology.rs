//! Executes every command of `runbooks/topology.md` (its `sh` blocks, in order, as one bash
//! script with `set -euo pipefail`) against a running multi-process cluster, then checks that
//! the cluster ended where the runbook says and that no preloaded write was lost.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use pairdb_common::ring::NodeState;
use pairdb_tests::procs::{ProcCluster, ProcOptions, preload};
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_topology_runbook_runs_against_a_live_cluster() {
    let _s = serial_async().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let md = std::fs::read_to_string(root.join("runbooks/topology.md")).unwrap();
    let blocks = sh_blocks(&md);
    assert!(blocks.len() >= 6, "runbook has {} sh blocks", blocks.len());

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
    let path = runbook_path().unwrap();
    let script = format!("set -euo pipefail\nset -x\n{}", blocks.join("\n"));
    let coord = c.coords[0].addr();
    let db_url = c.db_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .env("PAIRDB_COORDINATOR", coord)
            .env("DATABASE_URL", db_url)
            .env("NEW_NODE", "n4")
            .env("NEW_NODE_ADDR", &addrs["n4"])
            .env("OLD_NODE", "n3")
            .env("REPLACEMENT_NODE", "n5")
            .env("REPLACEMENT_ADDR", &addrs["n5"])
            .env("SPARE_NODE", "n6")
            .env("SPARE_ADDR", &addrs["n6"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "runbook failed:\n{log}");
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
