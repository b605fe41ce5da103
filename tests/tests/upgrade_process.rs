//! runbooks/upgrade.md carried out on a live cluster under writes. Every process starts on the
//! previous release's binaries (the commit in `tests/upgrade-from`, built once and cached by
//! `scripts/build-previous.sh`); then each storage node and each coordinator is upgraded in
//! turn, the runbook's sections run before and after each stop, and the process restarted on
//! this build's binary in between. Half-way, the cluster runs both releases (two new storage
//! nodes and one new coordinator beside one old node and one old coordinator) and both
//! coordinators are checked to serve writes and reads. One storage node is then rolled back to
//! the previous release over the data directory the new one wrote, and forward again. A
//! writer runs at QUORUM throughout; at the end every write it saw acknowledged reads back and
//! sits on each of its replicas.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_tests::cluster::{read_req, wait_async, write_req};
use pairdb_tests::procs::{ProcCluster, ProcOptions, Writer};
use pairdb_tests::*;

const RUNBOOK: &str = "upgrade.md";

/// Sections 2 and 3 around a restart of storage node `id` on `bin_dir` (`None`: this build).
async fn cycle_node(c: &mut ProcCluster, coord: usize, id: &str, bin_dir: Option<PathBuf>) {
    let env = |c: &ProcCluster| {
        vec![
            ("PAIRDB_COORDINATOR", c.coords[coord].addr()),
            ("NODE", id.to_string()),
        ]
    };
    run_runbook_section(
        RUNBOOK,
        "2. Each storage node: before stopping it",
        1,
        env(c),
    )
    .await
    .unwrap();
    let n = c.node(id);
    n.terminate().unwrap();
    n.bin_dir = bin_dir;
    n.start().unwrap();
    let log = run_runbook_section(RUNBOOK, "3. Each storage node: after it is back", 1, env(c))
        .await
        .unwrap();
    assert!(
        log.contains(&format!("hints pending for {id} after the upgrade: 0")),
        "{log}"
    );
}

/// Section 4 after a restart of coordinator `i` on `bin_dir`.
async fn cycle_coordinator(c: &mut ProcCluster, i: usize, bin_dir: Option<PathBuf>) {
    let url = c.db_url.clone();
    let co = &mut c.coords[i];
    co.terminate().unwrap();
    co.bin_dir = bin_dir;
    co.start(&url).unwrap();
    let admin = format!("127.0.0.1:{}", co.admin);
    run_runbook_section(
        RUNBOOK,
        "4. Each coordinator: after it is back",
        1,
        vec![("COORD_ADMIN", admin)],
    )
    .await
    .unwrap();
}

/// A write and a read of a new key at QUORUM through every coordinator, each reading what the
/// other wrote (old and new coordinators and storage nodes interoperate both ways).
async fn every_coordinator_serves(c: &ProcCluster, tag: &str) {
    let mut clients = Vec::new();
    for co in &c.coords {
        clients.push(co.client().await.unwrap());
    }
    for (i, w) in clients.iter_mut().enumerate() {
        let key = format!("probe-{tag}-{i}");
        w.write(write_req(
            key.as_bytes(),
            tag.as_bytes(),
            vec![],
            pb::Consistency::Quorum,
        ))
        .await
        .unwrap_or_else(|e| panic!("write through coordinator {i} ({tag}): {e}"));
    }
    let n = clients.len();
    for (i, r) in clients.iter_mut().enumerate() {
        let key = format!("probe-{tag}-{}", (i + 1) % n);
        let got = r
            .read(read_req(key.as_bytes(), pb::Consistency::Quorum))
            .await
            .unwrap_or_else(|e| panic!("read through coordinator {i} ({tag}): {e}"))
            .into_inner();
        assert!(
            got.siblings.iter().any(|s| s.value == tag.as_bytes()),
            "{key} through coordinator {i}: {got:?}"
        );
    }
}

/// Waits until the writer has had `more` writes acknowledged beyond `since`: the traffic
/// overlapped what happened before.
async fn writes_continue(w: &Writer, since: usize, more: usize, what: &str) -> usize {
    wait_async(what, Duration::from_secs(30), || async {
        w.acked() >= since + more
    })
    .await
    .unwrap();
    w.acked()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_the_previous_release_under_writes_loses_nothing() {
    let _s = serial_async().await;
    let prev = previous_bin_dir().unwrap();
    let mut c = ProcCluster::start(ProcOptions {
        bin_dir: Some(prev.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    c.wait_all_up().await.unwrap();
    // The cluster really runs the previous release.
    let info = procs::metrics_text(c.coords[0].admin).await.unwrap();
    let commit = std::fs::read_to_string(prev.join(".complete")).unwrap();
    println!(
        "previous release {}; its build info: {}",
        commit.trim(),
        build_info(&info)
    );

    let writer = Writer::start(
        c.coord_dials(),
        "upgrade",
        1_000_000,
        Duration::from_secs(300),
    );
    let mut seen = writes_continue(&writer, 0, 50, "writes on the previous release").await;
    run_runbook_section(
        RUNBOOK,
        "0. Before you start",
        1,
        vec![("PAIRDB_COORDINATOR", c.coords[0].addr())],
    )
    .await
    .unwrap();

    // Storage nodes n1 and n2, then coordinator 2: both releases side by side.
    for id in ["n1", "n2"] {
        cycle_node(&mut c, 0, id, None).await;
        seen = writes_continue(&writer, seen, 20, &format!("writes after upgrading {id}")).await;
    }
    cycle_coordinator(&mut c, 1, None).await;
    seen = writes_continue(&writer, seen, 20, "writes with one coordinator upgraded").await;
    every_coordinator_serves(&c, "mixed").await;
    // Really mixed: each process runs the binary it should.
    let running =
        |pid: Option<i32>| std::fs::read_link(format!("/proc/{}/exe", pid.unwrap())).unwrap();
    for (id, old) in [("n1", false), ("n2", false), ("n3", true)] {
        let exe = running(c.node(id).child.as_ref().unwrap().pid());
        assert_eq!(exe.starts_with(&prev), old, "{id} runs {}", exe.display());
    }
    for (i, old) in [(0, true), (1, false)] {
        let exe = running(c.coords[i].child.as_ref().unwrap().pid());
        assert_eq!(
            exe.starts_with(&prev),
            old,
            "coordinator {i} runs {}",
            exe.display()
        );
    }
    let old_info = build_info(&procs::metrics_text(c.coords[0].admin).await.unwrap());
    assert!(old_info.contains(commit.trim()), "{old_info}");
    let new_info = build_info(&procs::metrics_text(c.coords[1].admin).await.unwrap());
    println!("mixed: coordinator 1 {old_info}; coordinator 2 {new_info}");

    // The rest.
    cycle_node(&mut c, 1, "n3", None).await;
    cycle_coordinator(&mut c, 0, None).await;
    seen = writes_continue(&writer, seen, 20, "writes after the upgrade").await;
    every_coordinator_serves(&c, "upgraded").await;

    // Rollback of one storage node onto the data directory this build wrote, and forward.
    cycle_node(&mut c, 0, "n2", Some(prev.clone())).await;
    seen = writes_continue(&writer, seen, 20, "writes with n2 rolled back").await;
    every_coordinator_serves(&c, "rolled-back").await;
    cycle_node(&mut c, 0, "n2", None).await;
    writes_continue(&writer, seen, 20, "writes after n2 is upgraded again").await;

    let (acked, failed) = writer.finish().await.unwrap();
    println!(
        "{} writes acknowledged, {failed} failed (requests to a coordinator while it restarted)",
        acked.len()
    );
    c.check_quorum_reads(&acked).await.unwrap();
    // Every replica holds every acknowledged write: the hints of each drain were delivered.
    c.check_placement(&acked, false).await.unwrap();
}

/// The `pairdb_build_info` line of a metrics page.
fn build_info(metrics: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with("pairdb_build_info"))
        .unwrap_or("(no pairdb_build_info)")
        .to_string()
}
