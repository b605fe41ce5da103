//! S23 and S11 (FAULT-SCENARIOS.md): a process aborted between a step and the record of it,
//! under load. Each test restarts one storage node or coordinator from the servers built with
//! crash points (`scripts/build-failpoints.sh`) with one point armed; the point aborts the
//! process (SIGABRT, as a power cut: no destructor, no flush) the n-th time it is reached.
//! The test waits for that exit, checks from the process's log that the point and nothing
//! else ended it, restarts the process from the ordinary build, and checks the invariants:
//! no acknowledged write lost, no phantom, replicas converged, a redelivered hint makes no
//! duplicate sibling, a topology change completes and leaves one ring.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::failpoint::{self, points};
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::ChangeKind;
use pairdb_tests::nemesis::history::History;
use pairdb_tests::nemesis::{check, setadd};
use pairdb_tests::procs::{self, ProcCluster, ProcOptions, Writer, preload};
use pairdb_tests::*;

const SIGABRT: i32 = 6;
const CHANGE_DEADLINE: Duration = Duration::from_secs(120);

/// The process a point is armed in.
#[derive(Debug, Clone, Copy)]
enum Target {
    Node(usize),
    Coord(usize),
}

/// Restarts `t` from the crash-point build with `point` armed as `actions`, its log in
/// `log` (the abort's own line is looked for there).
fn arm(c: &mut ProcCluster, t: Target, point: &str, actions: &str, log: &std::path::Path) {
    let dir = failpoint_bin_dir().unwrap();
    let env = (failpoint::ENV.to_string(), format!("{point}={actions}"));
    match t {
        Target::Node(i) => {
            let n = &mut c.nodes[i];
            n.terminate().unwrap();
            n.bin_dir = Some(dir);
            n.env.push(env);
            n.log = Some(log.to_path_buf());
            n.start().unwrap();
        }
        Target::Coord(i) => {
            let db = c.db_url.clone();
            let co = &mut c.coords[i];
            co.terminate().unwrap();
            co.bin_dir = Some(dir);
            co.env.push(env);
            co.log = Some(log.to_path_buf());
            co.start(&db).unwrap();
        }
    }
}

/// Waits for `t` to exit on its own, checks that the armed point aborted it, and restarts it
/// from the ordinary build with nothing armed.
async fn crashed_then_restart(
    c: &mut ProcCluster,
    t: Target,
    point: &str,
    log: &std::path::Path,
    deadline: Duration,
) {
    let start = Instant::now();
    let status = loop {
        let child = match t {
            Target::Node(i) => &mut c.nodes[i].child,
            Target::Coord(i) => &mut c.coords[i].child,
        };
        if let Some(s) = child.as_mut().unwrap().exited().unwrap() {
            *child = None;
            break s;
        }
        assert!(
            start.elapsed() < deadline,
            "{t:?} did not reach {point} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.signal(), Some(SIGABRT), "{t:?} exited with {status}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains(&format!("crash point {point} reached")),
        "{t:?} aborted, but not at {point}:\n{text}"
    );
    println!("{t:?} aborted at {point} after {:?}", start.elapsed());
    let unarm = |env: &mut Vec<(String, String)>| env.retain(|(k, _)| k != failpoint::ENV);
    match t {
        Target::Node(i) => {
            let n = &mut c.nodes[i];
            n.bin_dir = None;
            unarm(&mut n.env);
            n.start().unwrap();
        }
        Target::Coord(i) => {
            let db = c.db_url.clone();
            let co = &mut c.coords[i];
            co.bin_dir = None;
            unarm(&mut co.env);
            co.start(&db).unwrap();
        }
    }
}

/// What a set-add run under one crash saw.
struct Outcome {
    verdict: check::Verdict,
    duplicates: Vec<String>,
}

/// The set-add load (4 clients, 20 keys, QUORUM) across the crash of `t` at `point`; `before`
/// runs once the load is going and the point armed (to make the point reachable).
async fn set_add_across_crash(
    name: &str,
    c: &mut ProcCluster,
    t: Target,
    point: &str,
    actions: &str,
    before: impl AsyncFnOnce(&mut ProcCluster),
) -> Outcome {
    let log = c.dir.path().join(format!("{name}.log"));
    arm(c, t, point, actions, &log);
    c.wait_all_up().await.unwrap();
    let h = History::new(name, 0);
    let load = setadd::SetAdd::start(
        &h,
        c.coord_dials(),
        4,
        20,
        1_000_000,
        Duration::from_secs(300),
    );
    cluster::wait_async("the load runs", Duration::from_secs(30), || async {
        load.acked() >= 50
    })
    .await
    .unwrap();
    let fault = format!("crash {point}");
    h.nemesis(&format!("start {fault}"));
    before(c).await;
    crashed_then_restart(c, t, point, &log, Duration::from_secs(90)).await;
    h.nemesis(&format!("heal {fault}"));
    // The load goes on across the restart.
    let at = load.acked();
    cluster::wait_async("the load goes on", Duration::from_secs(60), || async {
        load.acked() >= at + 100
    })
    .await
    .unwrap();
    load.finish().await;

    let during = check::ops_during_faults(&h);
    println!("{name}: operations in flight during the crash {during:?}");
    assert!(
        during[0].1 >= 5,
        "only {} operations during {fault}",
        during[0].1
    );
    // Hints first: a crash may have left one claimed until its claim lapses.
    let (v, converged) = check::after_heal(c, &h).await.unwrap();
    converged.unwrap();
    let keys = check::keys(&h);
    let duplicates = check::duplicate_siblings(c, &keys).await.unwrap();
    println!(
        "{name}: {}; keys with duplicate siblings {duplicates:?}",
        v.summary()
    );
    assert!(v.lost.is_empty(), "lost {:?}", v.lost);
    assert!(v.unexpected.is_empty(), "phantoms {:?}", v.unexpected);
    assert!(v.stale_reads.is_empty(), "stale reads {:?}", v.stale_reads);
    Outcome {
        verdict: v,
        duplicates,
    }
}

async fn started(o: ProcOptions) -> ProcCluster {
    let c = ProcCluster::start(o).await.unwrap();
    c.wait_all_up().await.unwrap();
    c
}

/// Storage node: a write in the WAL and memtable, its reply never sent (n2 aborts on the
/// 40th write it applies). The coordinator counts n2 as missed — or, when n2 coordinated,
/// retries the write on another replica — and the restarted n2 keeps what it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_aborted_after_write_before_ack_loses_nothing() {
    let _s = serial_async().await;
    let mut c = started(ProcOptions::default()).await;
    let o = set_add_across_crash(
        "storage-after-write",
        &mut c,
        Target::Node(1),
        points::STORAGE_AFTER_WRITE,
        "39*off->return",
        async |_| {},
    )
    .await;
    assert!(o.verdict.acked > 0);
}

/// Coordinator: W replicas acknowledged, the client never answered and no hint stored for the
/// third replica (coord-1 aborts on its 40th quorum). The add is indeterminate to its client;
/// it is found applied or not, never half: the third replica gets it by read repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_aborted_after_quorum_before_reply_loses_nothing() {
    let _s = serial_async().await;
    let mut c = started(ProcOptions::default()).await;
    let o = set_add_across_crash(
        "coordinator-after-quorum",
        &mut c,
        Target::Coord(0),
        points::COORD_AFTER_QUORUM,
        "39*off->return",
        async |_| {},
    )
    .await;
    assert!(
        o.verdict.info > 0,
        "no add was left indeterminate by the abort"
    );
}

/// S11: a hint delivered and acknowledged, its row never deleted (coord-1 aborts at its first
/// delivered hint; coord-2 replays no hints in this test). The row is delivered again after
/// its claim lapses — an idempotent merge: no duplicate sibling, nothing lost, every hint row
/// gone in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_delivered_then_coordinator_aborted_before_delete_is_redelivered_once_merged() {
    let _s = serial_async().await;
    let mut c = started(ProcOptions::default()).await;
    // coord-2 stores hints but leaves replay to coord-1.
    let toml = c.dir.path().join("coord-2.toml");
    std::fs::write(&toml, "hint_replay_interval_ms = 3600000\n").unwrap();
    let db = c.db_url.clone();
    let co2 = &mut c.coords[1];
    co2.terminate().unwrap();
    co2.env
        .push(("PAIRDB_CONFIG".into(), toml.display().to_string()));
    co2.start(&db).unwrap();
    let o = set_add_across_crash(
        "hint-after-send",
        &mut c,
        Target::Coord(0),
        points::HINT_AFTER_SEND,
        "return",
        async |c: &mut ProcCluster| {
            // n3 down for 3 s: writes to it become hints; back, and coord-1 delivers them.
            c.nodes[2].kill9().unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let pending: u64 = c
                .meta
                .hint_targets()
                .await
                .unwrap()
                .iter()
                .map(|t| t.pending)
                .sum();
            println!("hints pending for n3: {pending}");
            assert!(pending > 0, "no write became a hint while n3 was down");
            c.nodes[2].start().unwrap();
        },
    )
    .await;
    // The restarted coord-1 delivered the rest, the one it had delivered before the abort
    // among them; coord-2 delivered none.
    let replayed = |text: String| procs::metric_sum(&text, "hints_replayed_total");
    let by1 = replayed(c.coords[0].metrics().await.unwrap());
    let by2 = replayed(c.coords[1].metrics().await.unwrap());
    println!("hints replayed after the restart: coord-1 {by1}, coord-2 {by2}");
    assert!(by1 > 0.0 && by2 == 0.0, "coord-1 {by1}, coord-2 {by2}");
    assert!(
        o.duplicates.is_empty(),
        "a redelivered hint made duplicate siblings: {:?}",
        o.duplicates
    );
}

fn throttled() -> ProcOptions {
    let mut o = ProcOptions::default();
    o.coord_env.push((
        "PAIRDB_STREAM_MAX_BYTES_PER_SEC".into(),
        (256u64 << 10).to_string(),
    ));
    o
}

/// A bootstrap of n4 under writes with a crash point armed in `t`, `t` restarted after it
/// aborted; the change must complete, every acknowledged write read back at QUORUM, n4's
/// ranges match their replicas, and the ring be the 4-node ring with n4 NORMAL.
async fn bootstrap_across_crash(c: &mut ProcCluster, t: Target, point: &str, actions: &str) {
    let mut acked = preload(&mut c.coord().await.unwrap(), "pre", 4000, 1000)
        .await
        .unwrap();
    let log = c.dir.path().join("crash.log");
    let coord = c.coords[0].addr();
    {
        let n4 = c.new_node("n4").unwrap();
        n4.join = Some(coord);
    }
    let n4 = c.nodes.len() - 1;
    if let Target::Node(_) = t {
        // The new node itself is the one armed (it streams).
        arm_new(c, n4, point, actions, &log);
    } else {
        // The coordinator first: n4 joins through it.
        arm(c, t, point, actions, &log);
        c.nodes[n4].start().unwrap();
    }
    let t = match t {
        Target::Node(_) => Target::Node(n4),
        t => t,
    };
    let writer = Writer::start(c.coord_dials(), "live", 50_000, Duration::from_secs(120));
    let id = c.change_of("n4", ChangeKind::Bootstrap).await.unwrap();
    crashed_then_restart(c, t, point, &log, Duration::from_secs(90)).await;
    let during = writer.acked();
    c.wait_change(&id, "completed", CHANGE_DEADLINE)
        .await
        .unwrap();
    let (live, failed) = writer.finish().await.unwrap();
    println!(
        "{point}: {} live writes acknowledged ({during} before the restart), {failed} failed",
        live.len()
    );
    assert!(during > 0, "no write was acknowledged before the crash");
    acked.extend(live);
    c.check_quorum_reads(&acked).await.unwrap();
    if let Target::Node(_) = t {
        c.check_digests("n4").await.unwrap();
    }
    // After the cleanup every replica of the new ring holds every acknowledged write and no
    // other node does. (A driver that died just before the ring update took with it the
    // pending-replica copies of its last writes, with no hint: n4's digests can differ
    // until the cleanup, which verifies a quorum of the new replicas before dropping.)
    c.wait_cleanup("n4", Duration::from_secs(90)).await.unwrap();
    c.check_placement(&acked, true).await.unwrap();
    let ring = c.ring().await.unwrap();
    let members: Vec<(String, NodeState)> = ring
        .members()
        .iter()
        .map(|m| (m.node_id.clone(), m.state))
        .collect();
    assert_eq!(members.len(), 4, "{members:?}");
    assert!(
        members.iter().all(|(_, s)| *s == NodeState::Normal),
        "{members:?}"
    );
    // Every coordinator serves the new ring: a write lands on n4's replicas through each.
    for co in &c.coords {
        let mut client = co.client().await.unwrap();
        client
            .write(cluster::write_req(
                b"after-change",
                b"v",
                vec![],
                pb::Consistency::All,
            ))
            .await
            .unwrap();
    }
}

/// Starts new node `i` armed (it has no process to restart yet).
fn arm_new(c: &mut ProcCluster, i: usize, point: &str, actions: &str, log: &std::path::Path) {
    let n = &mut c.nodes[i];
    n.bin_dir = Some(failpoint_bin_dir().unwrap());
    n.env
        .push((failpoint::ENV.to_string(), format!("{point}={actions}")));
    n.log = Some(log.to_path_buf());
    n.start().unwrap();
}

/// Stream: the gaining node applied a streamed batch and aborted before reporting it (the
/// caller's resume point is older than what it holds). The pull resumes from the saved point
/// after n4's restart; re-applying a batch is a merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaining_node_aborted_after_a_streamed_batch_resumes_and_completes() {
    let _s = serial_async().await;
    let mut c = started(throttled()).await;
    bootstrap_across_crash(
        &mut c,
        Target::Node(0),
        points::STREAM_AFTER_BATCH,
        "2*off->return",
    )
    .await;
}

/// A bootstrap driven by the only coordinator, which aborts at `point` (so the armed one
/// drives; after its restart it claims the change again once its lease lapses).
async fn driver_aborted_at(point: &str) {
    let _s = serial_async().await;
    let mut c = started(ProcOptions {
        coordinators: 1,
        ..throttled()
    })
    .await;
    bootstrap_across_crash(&mut c, Target::Coord(0), point, "return").await;
}

/// Ring update: the driver aborted with the change streamed and verified, the ring not yet
/// updated; restarted, it finishes the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_aborted_before_the_ring_update_finishes_after_restart() {
    driver_aborted_at(points::RING_BEFORE_UPDATE).await;
}

/// Ring update: the driver aborted just after the transaction that ended the change (node
/// states, ring version, cleanup follow-up). Nothing is redone and the cleanup still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_aborted_after_the_ring_update_leaves_one_ring_and_cleans_up() {
    driver_aborted_at(points::RING_AFTER_UPDATE).await;
}

/// The ordinary build has no crash points: a server asked to arm one refuses to start.
#[test]
fn the_ordinary_build_refuses_to_arm_a_crash_point() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary("pairdb-storage-node").unwrap())
        .args(["--node-id", "x", "--data-dir"])
        .arg(dir.path())
        .env(
            failpoint::ENV,
            format!("{}=return", points::STORAGE_AFTER_WRITE),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no crash points"), "{stderr}");
}
