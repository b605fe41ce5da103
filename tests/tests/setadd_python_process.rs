//! S03 of FAULT-SCENARIOS.md, baseline and read-your-writes, from a client nobody on the team
//! wrote: `tests/python/setadd.py`, plain Python grpcio, 4 threads of set-adds over 200 keys
//! through both coordinators (each call to a random one), no faults. Each add reads at QUORUM,
//! unions the siblings and writes back with the context; after each acknowledged add the
//! client reads the key again through a random coordinator. The Rust checkers judge the
//! history it prints: every add acknowledged, lost 0, phantoms 0, every QUORUM read holds
//! every element acknowledged before it began (read-your-writes across clients and
//! coordinators), replicas converged. Then the same at ONE (R = W = 1), where staleness is
//! only measured and printed, as the scenario asks.
#![allow(clippy::unwrap_used)]

use pairdb_tests::nemesis::check;
use pairdb_tests::nemesis::history::History;
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;

const WORKERS: usize = 4;
const KEYS: usize = 200;

/// Runs the Python set-add client and returns its history.
async fn python_setadd(c: &ProcCluster, prefix: &str, level: &str, ops: usize) -> History {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = std::process::Command::new(pairdb_tests::k8s::venv_bin("python"));
    cmd.arg(format!("{root}/tests/python/setadd.py"))
        .arg(format!("{root}/proto"))
        .args(["t1", prefix, level])
        .arg(KEYS.to_string())
        .arg(WORKERS.to_string())
        .arg(ops.to_string())
        .arg("240")
        .args(c.coords.iter().map(|co| co.addr()));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "setadd.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    History::from_jsonl(prefix, &String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_set_adds_read_their_writes_through_any_coordinator() {
    let _s = serial_async().await;
    let c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    c.wait_all_up().await.unwrap();

    let started = std::time::Instant::now();
    let h = python_setadd(&c, "py", "QUORUM", 2_500).await;
    let took = started.elapsed();
    let (v, converged) = check::after_heal(&c, &h).await.unwrap();
    println!("S03 QUORUM, {took:?}: {}", v.summary());
    assert!(
        v.ops >= 1_000,
        "only {} adds in {took:?}: the client did not run",
        v.ops
    );
    assert_eq!(
        (v.acked, v.failed, v.info),
        (v.ops, 0, 0),
        "an add failed without a fault"
    );
    assert!(
        v.lost.is_empty(),
        "lost {:?}",
        &v.lost[..v.lost.len().min(5)]
    );
    assert!(v.unexpected.is_empty(), "phantoms {:?}", v.unexpected);
    // Each add's own read and the read after its ack.
    assert!(
        v.reads >= 2 * v.acked,
        "{} reads for {} adds",
        v.reads,
        v.acked
    );
    assert!(
        v.stale_reads.is_empty(),
        "{} QUORUM reads missed an acknowledged element, e.g. {:?}",
        v.stale_reads.len(),
        &v.stale_reads[..v.stale_reads.len().min(5)]
    );
    converged.unwrap();
    assert_eq!(check::keys(&h).len(), KEYS);

    // R = W = 1: no read-your-writes promise; how stale reads are is measured, not asserted.
    let h = python_setadd(&c, "py-one", "ONE", 250).await;
    let (v, converged) = check::after_heal(&c, &h).await.unwrap();
    println!(
        "S03 ONE: {}; {} of {} reads missed an element acknowledged before they began",
        v.summary(),
        v.stale_reads.len(),
        v.reads
    );
    assert!(v.lost.is_empty() && v.unexpected.is_empty());
    converged.unwrap();
}
