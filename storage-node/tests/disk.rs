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
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(mnt.path())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!(
                "SKIPPED real filesystem test: cannot mount tmpfs here ({other:?}); the injected-usage test covers the state machine"
            );
            return;
        }
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.path().to_path_buf());

    let data = mnt.path().join("node");
    let mut cfg = config(&data, "n1");
    cfg.memtable_mb = 1;
    let (node, mut c) = start(cfg, None).await;
    c.write(write_op("t1", b"before", b"v", vec![]))
        .await
        .unwrap();

    let fill_to = |percent: f64| {
        let st = rustix::fs::statvfs(mnt.path()).unwrap();
        let total = st.f_blocks * st.f_frsize;
        let avail = st.f_bavail * st.f_frsize;
        let used = total - avail;
        let target = (total as f64 * percent / 100.0) as u64;
        if target > used {
            let name = mnt
                .path()
                .join(format!("filler-{}", pairdb_common::now_ms()));
            std::fs::write(name, vec![0u8; (target - used) as usize]).unwrap();
        }
    };
    fill_to(91.0);
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

    fill_to(96.0);
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
    for e in std::fs::read_dir(mnt.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("filler-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    wait_state(&node, DiskState::Normal).await;
    c.write(write_op("t1", b"after", &big, vec![]))
        .await
        .unwrap();
    node.shutdown().await;
}
