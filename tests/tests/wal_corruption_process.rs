//! S22 (b) and (c) of FAULT-SCENARIOS.md on a real storage-node process with `sync_writes`
//! (every write acknowledged only once its WAL record is on disk), killed with SIGKILL so the
//! writes live only in the write-ahead log, whose bytes the test then damages:
//! - a torn tail (the last record cut short, as a crash mid-append leaves it; that write was
//!   never acknowledged) is dropped and the node starts with every acknowledged write;
//! - damage inside the log stops the node from starting, with an error naming it, by default
//!   (`wal_recovery = strict`); with `wal_recovery = salvage` it opens with what precedes the
//!   damage and reports itself out of date (coordinators send it no client reads) until a full
//!   repair, across restarts.
//!
//! S22 (a), a flipped byte in an SST, is `storage-node/tests/corruption.rs`.
#![allow(clippy::unwrap_used)]

use pairdb_common::api::pb;
use pairdb_tests::procs::NodeProc;
use pairdb_tests::*;

const KEYS: usize = 300;

fn value_of(i: usize) -> Vec<u8> {
    format!("mark-{i:04}-").repeat(20).into_bytes()
}

/// Pseudo-random bytes (stored literally in the WAL, so they can be found there).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545f4914f6cdd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn op(key: &str, value: Vec<u8>) -> pb::WriteOp {
    pb::WriteOp {
        tenant_id: "t1".into(),
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    }
}

async fn node(dir: &std::path::Path) -> NodeProc {
    let mut n = NodeProc::new("w1", dir).unwrap();
    n.env.push(("PAIRDB_SYNC_WRITES".into(), "true".into()));
    n.log = Some(dir.join("w1.log"));
    n.start().unwrap();
    n
}

/// Writes the `KEYS` marked keys; every one acknowledged.
async fn write_marked(n: &NodeProc) {
    let mut c = n.client().await.unwrap();
    for i in 0..KEYS {
        c.write(op(&format!("k{i}"), value_of(i))).await.unwrap();
    }
}

/// The node's answer for `key`: its values and its reported unrepaired outage.
async fn read(n: &NodeProc, key: &str) -> (Vec<Vec<u8>>, u64) {
    let r = n.read_t1(key.as_bytes()).await.unwrap();
    let values = r
        .state
        .map(|s| s.versions.into_iter().map(|v| v.value).collect())
        .unwrap_or_default();
    (values, r.unrepaired_outage_ms)
}

/// The newest write-ahead log file (`NNNNNN.log`) of the node's database.
fn newest_wal(n: &NodeProc) -> std::path::PathBuf {
    let mut wals: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(n.dir.join("db"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .collect();
    wals.sort();
    wals.pop().expect("a WAL file").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_dropped_and_every_acknowledged_write_survives() {
    let _s = serial_async().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    write_marked(&n).await;
    // The write a crash interrupts: its record is the log's last, and is cut short below.
    let torn = noise(64 << 10);
    n.client()
        .await
        .unwrap()
        .write(op("torn", torn.clone()))
        .await
        .unwrap();
    n.kill9().unwrap();

    let wal = newest_wal(&n);
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 64 << 10, "the writes are in the WAL");
    let cut = bytes.len() - 100;
    // The torn value ends within the cut (only its record's own trailer follows it, no later
    // record), so the cut damages that record alone.
    let value_end = &torn[torn.len() - 16..];
    let tail_is_torn_value = bytes[cut..].windows(16).any(|w| w == value_end);
    bytes.truncate(cut);
    std::fs::write(&wal, &bytes).unwrap();

    n.start().expect("the node opens with a torn WAL tail");
    for i in 0..KEYS {
        let (values, _) = read(&n, &format!("k{i}")).await;
        assert_eq!(
            values,
            vec![value_of(i)],
            "acknowledged k{i} after the torn tail"
        );
    }
    let (torn_now, outage) = read(&n, "torn").await;
    if tail_is_torn_value {
        assert!(
            torn_now.is_empty(),
            "the torn record was dropped, not half-applied"
        );
    }
    assert!(
        outage < 3_600_000,
        "a torn tail does not make the node out of date ({outage} ms)"
    );
    println!(
        "torn tail: {KEYS} acknowledged writes intact; torn record {} (its bytes were the tail: {tail_is_torn_value})",
        if torn_now.is_empty() {
            "dropped"
        } else {
            "kept"
        }
    );
    n.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_the_wal_stops_the_node_unless_salvaged_then_it_is_out_of_date() {
    let _s = serial_async().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    write_marked(&n).await;
    n.kill9().unwrap();

    let wal = newest_wal(&n);
    let mut bytes = std::fs::read(&wal).unwrap();
    let at = bytes
        .windows(10)
        .position(|w| w == b"mark-0150-")
        .expect("k150's record in the WAL");
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xa5;
    }
    std::fs::write(&wal, &bytes).unwrap();

    // Strict (the default): the node does not start, and says why.
    let err = n.start().expect_err("a damaged WAL must stop the node");
    let log = std::fs::read_to_string(dir.path().join("w1.log")).unwrap();
    println!("strict start: {err:#}");
    assert!(
        log.contains("Corruption") && log.contains("wal_recovery = salvage"),
        "the error names the damage and the way out: {log}"
    );

    // Salvage: opens with what precedes the damage, out of date until a repair.
    n.env.push(("PAIRDB_WAL_RECOVERY".into(), "salvage".into()));
    n.start().expect("salvage opens the node");
    let mut kept = 0;
    for i in 0..KEYS {
        let (values, outage) = read(&n, &format!("k{i}")).await;
        assert!(
            outage >= 300 * 24 * 3_600_000,
            "a salvaged node reports itself out of date ({outage} ms)"
        );
        if i < 150 {
            assert_eq!(values, vec![value_of(i)], "k{i} precedes the damage");
        }
        if !values.is_empty() {
            kept += 1;
        }
    }
    assert!(kept < KEYS, "salvage dropped what followed the damage");
    println!("salvage: {kept} of {KEYS} keys kept, the node out of date");
    n.terminate().unwrap();

    // Out of date persists across a clean restart, which needs no salvage now.
    n.env.retain(|(k, _)| k != "PAIRDB_WAL_RECOVERY");
    n.start().expect("the salvaged node starts strict");
    let (_, outage) = read(&n, "k0").await;
    assert!(
        outage >= 300 * 24 * 3_600_000,
        "still out of date: {outage} ms"
    );
    n.terminate().unwrap();
}
