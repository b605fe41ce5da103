//! The disk circuit breaker: thresholds driven by an injected usage source, then a real small
//! filesystem (tmpfs) filled with filler files.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use pairdb_storage_node::disk::{DiskState, FixedUsage};
use support::*;
use tonic::Code;

async fn wait_state(node: &pairdb_storage_node::server::RunningNode, want: DiskState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.node.disk.state() != want {
        assert!(
            Instant::now() < deadline,
            "disk state stuck at {:?}, want {want:?}",
            node.node.disk.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn thresholds_throttle_then_break_then_step_back() {
    let dir = tempfile::tempdir().unwrap();
    let usage = FixedUsage::new(89.0);
    let (node, mut c) = start(config(dir.path(), "n1"), Some(Box::new(usage.clone()))).await;
    let big = vec![7u8; 256 * 1024];

    // 89%: normal service (warning state), large writes accepted.
    wait_state(&node, DiskState::Warning).await;
    c.write(write_op("t1", b"big", &big, vec![])).await.unwrap();

    // 91%: large writes DISK_THROTTLED (UNAVAILABLE), small ones succeed.
    usage.set(91.0);
    wait_state(&node, DiskState::Throttled).await;
    let err = c
        .write(write_op("t1", b"big2", &big, vec![]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "DISK_THROTTLED")
    );
    c.write(write_op("t1", b"small", b"ok", vec![]))
        .await
        .unwrap();
    let health: serde_json::Value =
        serde_json::from_str(&http_get(node.admin_addr, "/health").await).unwrap();
    assert_eq!(health["disk_status"]["is_throttled"], true);
    assert_eq!(health["disk_status"]["is_circuit_broken"], false);

    // 96%: every write DISK_FULL (RESOURCE_EXHAUSTED); reads and deletes still work.
    usage.set(96.0);
    wait_state(&node, DiskState::CircuitBroken).await;
    let err = c
        .write(write_op("t1", b"tiny", b"x", vec![]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "DISK_FULL")
    );
    let r = c.read(key_ref("t1", b"small")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"ok".to_vec()]);
    let mut del = write_op(
        "t1",
        b"big",
        b"",
        read_context(&c.read(key_ref("t1", b"big")).await.unwrap().into_inner()),
    );
    del.tombstone = true;
    c.write(del).await.unwrap();
    assert!(values(&c.read(key_ref("t1", b"big")).await.unwrap().into_inner()).is_empty());
    // Replica merges obey the breaker too (hint replay, repair and inbound streams use them).
    let w = c.read(key_ref("t1", b"small")).await.unwrap().into_inner();
    let err = c
        .apply(pairdb_common::api::pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"other".to_vec(),
            state: w.state,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "DISK_FULL");
    let health: serde_json::Value =
        serde_json::from_str(&http_get(node.admin_addr, "/health").await).unwrap();
    assert_eq!(health["disk_status"]["is_circuit_broken"], true);

    // 94%: back to throttled (small writes pass, large refused); 85%: warning, all pass.
    usage.set(94.0);
    wait_state(&node, DiskState::Throttled).await;
    c.write(write_op("t1", b"small2", b"ok", vec![]))
        .await
        .unwrap();
    assert_eq!(
        reason(
            &c.write(write_op("t1", b"big3", &big, vec![]))
                .await
                .unwrap_err()
        ),
        "DISK_THROTTLED"
    );
    usage.set(85.0);
    wait_state(&node, DiskState::Warning).await;
    c.write(write_op("t1", b"big4", &big, vec![]))
        .await
        .unwrap();

    let m = http_get(node.admin_addr, "/metrics").await;
    assert_eq!(
        metric(&m, "disk_circuit_breaker_events_total"),
        2.0,
        "engaged + disengaged"
    );
    assert_eq!(metric(&m, "disk_throttle_events_total"), 2.0);
    assert!(metric(&m, "disk_full_rejections_total") >= 2.0);
    node.shutdown().await;
}

/// A real 48 MiB tmpfs filled with filler files: the statvfs-driven manager throttles at 90%
/// and breaks at 95%, before RocksDB ever sees ENOSPC.
#[tokio::test]
async fn real_small_filesystem_trips_the_breaker() {
    let Some(mnt) = Tmpfs::mount(48) else {
        return;
    };

    let data = mnt.path().join("node");
    let mut cfg = config(&data, "n1");
    cfg.memtable_mb = 1;
    let (node, mut c) = start(cfg, None).await;
    c.write(write_op("t1", b"before", b"v", vec![]))
        .await
        .unwrap();

    mnt.fill_to(91.0);
    wait_state(&node, DiskState::Throttled).await;
    let big = vec![1u8; 512 * 1024];
    assert_eq!(
        reason(
            &c.write(write_op("t1", b"big", &big, vec![]))
                .await
                .unwrap_err()
        ),
        "DISK_THROTTLED"
    );
    c.write(write_op("t1", b"small", b"ok", vec![]))
        .await
        .unwrap();

    mnt.fill_to(96.0);
    wait_state(&node, DiskState::CircuitBroken).await;
    assert_eq!(
        reason(
            &c.write(write_op("t1", b"small2", b"ok", vec![]))
                .await
                .unwrap_err()
        ),
        "DISK_FULL"
    );
    let r = c.read(key_ref("t1", b"small")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"ok".to_vec()]);

    // Free the filler: writes come back.
    mnt.free_filler();
    wait_state(&node, DiskState::Normal).await;
    c.write(write_op("t1", b"after", &big, vec![]))
        .await
        .unwrap();
    node.shutdown().await;
}

/// S20 (b): RocksDB itself meets ENOSPC. The breaker is blinded (an injected usage source that
/// always reads 50%, as when the disk fills between two samples faster than the breaker can
/// see) and a real tmpfs is filled to the last byte. The write that meets the full disk is
/// refused with DISK_FULL and never acknowledged; the node does not crash, serves every
/// acknowledged write, and takes writes again once space is freed, without a restart (RocksDB's
/// own recovery from a no-space error); after a restart everything acknowledged is there.
#[tokio::test]
async fn rocksdb_meeting_enospc_refuses_writes_serves_reads_and_resumes() {
    let Some(mnt) = Tmpfs::mount(32) else {
        return;
    };
    let data = mnt.path().join("node");
    let mut cfg = config(&data, "n1");
    cfg.memtable_mb = 1;
    let (node, mut c) = start(cfg.clone(), Some(Box::new(FixedUsage::new(50.0)))).await;
    let value = |i: usize| format!("{i:06}").repeat(170).into_bytes();
    let mut acked: Vec<usize> = Vec::new();
    for i in 0..200 {
        c.write(write_op(
            "t1",
            format!("k{i}").as_bytes(),
            &value(i),
            vec![],
        ))
        .await
        .unwrap();
        acked.push(i);
    }
    mnt.fill_to(100.0);

    // Write on until RocksDB refuses (flush or WAL append meets ENOSPC), bounded.
    let mut refused = None;
    for i in 200..20_000 {
        match c
            .write(write_op(
                "t1",
                format!("k{i}").as_bytes(),
                &value(i),
                vec![],
            ))
            .await
        {
            Ok(_) => acked.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("20,000 writes on a full 32 MiB filesystem all succeeded");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "DISK_FULL"),
        "{err:?}"
    );
    println!(
        "ENOSPC met after {} acknowledged writes: {}",
        acked.len(),
        err.message()
    );
    // Still refusing (not a one-off), still alive, still serving every acknowledged write.
    let again = c
        .write(write_op("t1", b"again", b"v", vec![]))
        .await
        .unwrap_err();
    assert_eq!(reason(&again), "DISK_FULL");
    assert!(
        http_get(node.admin_addr, "/health/live")
            .await
            .contains("alive")
    );
    let check_all = |c: Client, acked: Vec<usize>| async move {
        let mut c = c;
        for i in acked {
            let r = c
                .read(key_ref("t1", format!("k{i}").as_bytes()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(values(&r), vec![value(i)], "k{i}");
        }
    };
    check_all(c.clone(), acked.clone()).await;

    // Space freed: writes resume without a restart (bounded wait for RocksDB's recovery).
    mnt.free_filler();
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed_after = loop {
        match c.write(write_op("t1", b"after", b"v", vec![])).await {
            Ok(_) => break Instant::now(),
            Err(e) => {
                assert_eq!(reason(&e), "DISK_FULL", "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "writes did not resume within 60 s of space being freed: {e:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "writes resumed {:?} after the filler was removed",
        resumed_after - (deadline - Duration::from_secs(60))
    );
    check_all(c.clone(), acked.clone()).await;
    node.shutdown().await;

    let (node, c) = start(cfg, None).await;
    check_all(c, acked).await;
    node.shutdown().await;
}

/// A small tmpfs of our own (root only: without it the test says SKIPPED and returns), with
/// filler files that take its space, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let mnt = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(mnt.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(mnt)),
            other => {
                // CI runs as root: there a mount that fails is a failure, not a skip.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run as root: cannot mount tmpfs ({other:?})"
                );
                println!(
                    "SKIPPED real filesystem test: cannot mount tmpfs here ({other:?}); the injected-usage test covers the state machine"
                );
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Adds filler until `percent` of the filesystem is used; at 100, until a write of one
    /// more byte fails with ENOSPC.
    fn fill_to(&self, percent: f64) {
        let st = rustix::fs::statvfs(self.path()).unwrap();
        let total = st.f_blocks * st.f_frsize;
        let used = total - st.f_bavail * st.f_frsize;
        let target = (total as f64 * percent / 100.0) as u64;
        let name = |n: u32| {
            self.path()
                .join(format!("filler-{}-{n}", pairdb_common::now_ms()))
        };
        if target > used {
            // At 100% this may itself fail part-way: that is the point.
            let _ = std::fs::write(name(0), vec![0u8; (target - used) as usize]);
        }
        if percent >= 100.0 {
            for n in 1..10_000 {
                if std::fs::write(name(n), vec![0u8; 4096]).is_err() {
                    return;
                }
            }
            panic!("the filesystem never filled");
        }
    }

    fn free_filler(&self) {
        for e in std::fs::read_dir(self.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("filler-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}
