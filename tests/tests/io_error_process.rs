//! S20 (c) of FAULT-SCENARIOS.md: the disk answers a sync with EIO under a real storage-node
//! process. The node runs with `sync_writes` (a write is acknowledged only once its WAL record
//! is synced) under strace, which fails every `fdatasync` from the `FAIL_FROM`th on with EIO
//! without running it. The write whose sync fails is not acknowledged, and the node fails safe:
//! RocksDB turns read-only and the node says so — every later write is refused with
//! NODE_NOT_READY, `/health/ready` and `/health/live` answer 503 `storage_failed` (a liveness
//! probe restarts it: only a restart, replaying the WAL, knows what is durable after a failed
//! fsync), `storage_engine_failed` is 1 — while reads of everything acknowledged are still
//! served. Restarted without the fault, it holds every acknowledged write and takes writes.
//!
//! (a) and (b), a full disk, are `storage-node/tests/disk.rs`.
#![allow(clippy::unwrap_used)]

use pairdb_common::api::pb;
use pairdb_tests::procs::{NodeProc, admin_get, metric_sum};
use pairdb_tests::*;

/// The first `fdatasync` that fails. Opening the database syncs a handful of files first (its
/// manifest, options and first WAL); each acknowledged write syncs once more.
const FAIL_FROM: u32 = 40;
const MAX_WRITES: usize = 400;

fn op(key: &str) -> pb::WriteOp {
    pb::WriteOp {
        tenant_id: "t1".into(),
        key: key.as_bytes().to_vec(),
        value: format!("value-of-{key}").into_bytes(),
        ..Default::default()
    }
}

async fn read(n: &NodeProc, key: &str) -> Vec<Vec<u8>> {
    n.values_t1(key.as_bytes()).await.unwrap()
}

/// HTTP status and body of an admin GET (the helper fails on a non-2xx status).
async fn probe(n: &NodeProc, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{}{path}", n.admin))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The pid of the program strace (`tracer`) runs: its only child.
fn tracee(tracer: i32) -> i32 {
    let children =
        std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace runs the node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_sync_is_not_acknowledged_and_the_node_fails_safe_until_restarted() {
    let _s = serial_async().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = NodeProc::new("e1", dir.path()).unwrap();
    n.env.push(("PAIRDB_SYNC_WRITES".into(), "true".into()));
    n.log = Some(dir.path().join("e1.log"));
    n.wrap = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync",
        "-e",
        &format!("inject=fdatasync:error=EIO:when={FAIL_FROM}+"),
        "--",
    ]
    .map(String::from)
    .to_vec();
    n.start().unwrap();

    let mut c = n.client().await.unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..MAX_WRITES {
        let key = format!("k{i}");
        match c.write(op(&key)).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some((key, e));
                break;
            }
        }
    }
    let (failed_key, err) = refused.expect("a write met the injected EIO");
    println!(
        "{} writes acknowledged, then {failed_key}: {err:?}",
        acked.len()
    );
    assert!(
        acked.len() >= 5,
        "the fault began after the node had taken writes ({} acknowledged)",
        acked.len()
    );
    assert!(
        err.message().contains("I/O error") || err.message().contains("IO error"),
        "the refusal names the I/O error: {err:?}"
    );

    // Failed safe: later writes refused as NODE_NOT_READY; probes and the metric say why.
    let later = c.write(op("later")).await.unwrap_err();
    assert_eq!(later.code(), tonic::Code::Unavailable, "{later:?}");
    assert!(later.message().contains("storage failed"), "{later:?}");
    let (live, body) = probe(&n, "/health/live").await;
    assert_eq!(live, 503, "{body}");
    assert!(body.contains("storage_failed"), "{body}");
    let (ready, body) = probe(&n, "/health/ready").await;
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("storage_failed"), "{body}");
    let m = admin_get("127.0.0.1", n.admin, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(metric_sum(&m, "storage_engine_failed"), 1.0);
    // Reads are still served, every acknowledged write among them.
    for key in &acked {
        assert_eq!(read(&n, key).await, vec![op(key).value], "{key}");
    }
    assert!(read(&n, "later").await.is_empty(), "a refused write");

    // Restart without the fault (SIGKILL the node under strace; strace exits with it).
    let tracer = n.child.as_ref().and_then(|g| g.pid()).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(tracee(tracer)).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = n.kill9();
    n.wrap.clear();
    n.start().unwrap();
    for key in &acked {
        assert_eq!(
            read(&n, key).await,
            vec![op(key).value],
            "{key} after restart"
        );
    }
    // The refused write may or may not be there (its record reached the page cache: the
    // injected fdatasync did not run); nothing later is.
    assert!(read(&n, "later").await.is_empty());
    let (live, _) = probe(&n, "/health/live").await;
    assert_eq!(live, 200);
    n.client().await.unwrap().write(op("after")).await.unwrap();
    assert_eq!(read(&n, "after").await, vec![op("after").value]);
    n.terminate().unwrap();
}
