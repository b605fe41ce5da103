//! The admin HTTP API does the real thing: compaction compacts, cache reduce resizes, WAL
//! cleanup flushes, health and metrics report what they claim.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn admin_endpoints_act_on_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    // Three flushed L0 files (below RocksDB's automatic L0 compaction trigger of four, so
    // they are still there when we look).
    for round in 0..3 {
        for i in 0..200u32 {
            c.write(write_op(
                "t1",
                format!("k{i}").as_bytes(),
                format!("r{round}").as_bytes(),
                vec![],
            ))
            .await
            .unwrap();
        }
        node.node.store.engine().flush().unwrap();
    }
    let levels: Value =
        serde_json::from_str(&http_get(node.admin_addr, "/api/v1/sstables/count-by-level").await)
            .unwrap();
    assert!(
        levels["levels"][0]["files"].as_u64().unwrap() >= 2,
        "{levels}"
    );

    let r = http_post(
        node.admin_addr,
        "/api/v1/compaction/trigger-all-levels?wait=true",
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "completed", "{r}");
    let levels: Value =
        serde_json::from_str(&http_get(node.admin_addr, "/api/v1/sstables/count-by-level").await)
            .unwrap();
    assert_eq!(
        levels["levels"][0]["files"], 0,
        "L0 compacted away: {levels}"
    );
    assert_eq!(levels["total_files"], 1, "{levels}");
    let status: Value =
        serde_json::from_str(&http_get(node.admin_addr, "/api/v1/compaction/status").await)
            .unwrap();
    assert_eq!(status["jobs"][0]["kind"], "compaction_all_levels");

    // Background compaction job: accepted, then finishes.
    let r = http_post(node.admin_addr, "/api/v1/compaction/trigger", json!({})).await;
    assert_eq!(r["status"], "started");
    let r = http_post(
        node.admin_addr,
        "/api/v1/compaction/emergency?wait=true",
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "completed");

    // Cache reduce really resizes.
    let r = http_post(
        node.admin_addr,
        "/api/v1/cache/reduce",
        json!({"target_size_mb": 4}),
    )
    .await;
    assert_eq!(r["capacity_bytes_before"], 16u64 << 20);
    assert_eq!(r["capacity_bytes_after"], 4u64 << 20);
    let h: Value = serde_json::from_str(&http_get(node.admin_addr, "/health").await).unwrap();
    assert_eq!(h["cache_status"]["capacity_bytes"], 4u64 << 20);
    assert_eq!(h["status"], "healthy");
    assert!(
        h["recent"]["write"]["ops_per_sec"].as_f64().unwrap() > 0.0,
        "{h}"
    );
    assert!(h["disk_status"]["usage_percent"].as_f64().unwrap() > 0.0);
    // Every supervised worker is listed, by name, and running.
    let workers = h["workers"].as_array().unwrap();
    for name in [
        "disk-manager",
        "liveness",
        "grpc",
        "admin-http",
        "grpc-accept",
    ] {
        let w = workers.iter().find(|w| w["name"] == name);
        assert!(
            w.is_some_and(|w| w["state"] == "running" && w["restarts"] == 0),
            "{name}: {workers:?}"
        );
    }

    // WAL: writes make the current WAL live; cleanup flushes so it becomes obsolete and goes.
    c.write(write_op("t1", b"wal", b"x", vec![])).await.unwrap();
    let r = http_post(node.admin_addr, "/api/v1/commitlog/cleanup", json!({})).await;
    assert_eq!(r["status"], "completed");
    let segs: Value = serde_json::from_str(
        &http_get(node.admin_addr, "/api/v1/commitlog/cleanable-segments").await,
    )
    .unwrap();
    assert!(segs["segments"].is_array());

    let m = http_get(node.admin_addr, "/metrics").await;
    for name in [
        "storage_requests_total",
        "disk_usage_percent",
        "rocksdb_sst_files",
        "rocksdb_block_cache_capacity_bytes",
        "checksum_failures_total",
        "worker_up",
    ] {
        assert!(m.contains(name), "metric {name} missing");
    }
    node.shutdown().await;
}
