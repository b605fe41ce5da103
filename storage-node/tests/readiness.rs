//! Readiness means something: `/health/ready`, `/health` and gRPC health turn 503 /
//! NOT_SERVING while the node is in maintenance, behind its disk circuit breaker, or not yet
//! joined, and come back; liveness stays 200 through all of it. The guide's metric and
//! health names are what the node exports.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use pairdb_storage_node::disk::{DiskState, FixedUsage};
use serde_json::Value;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status_of(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

async fn grpc_health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

/// Waits until the gRPC health of the whole server and of the service is `want`.
async fn wait_grpc(addr: std::net::SocketAddr, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (
            grpc_health(addr, "").await,
            grpc_health(addr, "pairdb.StorageNodeService").await,
        );
        if now == (want, want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gRPC health {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn maintenance_and_the_disk_breaker_make_the_node_unready_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let usage = FixedUsage::new(10.0);
    let (node, _c) = start(config(dir.path(), "n1"), Some(Box::new(usage.clone()))).await;
    let admin = node.admin_addr;

    let (code, r) = status_of(admin, "/health/ready").await;
    assert_eq!((code, &r["ready"]), (200, &Value::Bool(true)), "{r}");
    assert_eq!(status_of(admin, "/health/live").await.0, 200);
    let (code, h) = status_of(admin, "/health").await;
    assert_eq!((code, h["status"].as_str()), (200, Some("healthy")), "{h}");
    wait_grpc(node.grpc_addr, ServingStatus::Serving).await;

    // Maintenance: 503 with the reason, NOT_SERVING; liveness unaffected.
    node.node.set_maintenance(true);
    let (code, r) = status_of(admin, "/health/ready").await;
    assert_eq!(code, 503, "{r}");
    assert_eq!(r["not_ready_reasons"], serde_json::json!(["maintenance"]));
    let (code, h) = status_of(admin, "/health").await;
    assert_eq!((code, h["status"].as_str()), (503, Some("maintenance")));
    assert_eq!(status_of(admin, "/health/live").await.0, 200);
    wait_grpc(node.grpc_addr, ServingStatus::NotServing).await;
    node.node.set_maintenance(false);
    assert_eq!(status_of(admin, "/health/ready").await.0, 200);
    wait_grpc(node.grpc_addr, ServingStatus::Serving).await;

    // Throttled is degraded but ready; the circuit breaker is not ready.
    usage.set(91.0);
    while node.node.disk.state() != DiskState::Throttled {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, h) = status_of(admin, "/health").await;
    assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "{h}");
    assert_eq!(h["disk_status"]["status"], "throttled");
    usage.set(96.0);
    while node.node.disk.state() != DiskState::CircuitBroken {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, r) = status_of(admin, "/health/ready").await;
    assert_eq!(code, 503);
    assert_eq!(
        r["not_ready_reasons"],
        serde_json::json!(["disk_circuit_broken"])
    );
    wait_grpc(node.grpc_addr, ServingStatus::NotServing).await;
    assert_eq!(status_of(admin, "/health/live").await.0, 200);
    usage.set(50.0);
    while node.node.disk.state() != DiskState::Normal {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of(admin, "/health/ready").await.0, 200);
    wait_grpc(node.grpc_addr, ServingStatus::Serving).await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_that_has_not_joined_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "n1");
    // Nothing listens there: registration keeps retrying.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cfg.join = Some(dead.to_string());
    let (node, _c) = start(cfg, None).await;
    let (code, r) = status_of(node.admin_addr, "/health/ready").await;
    assert_eq!(code, 503, "{r}");
    assert_eq!(r["not_ready_reasons"], serde_json::json!(["not_joined"]));
    assert_eq!(status_of(node.admin_addr, "/health/live").await.0, 200);
    assert_eq!(
        grpc_health(node.grpc_addr, "").await,
        ServingStatus::NotServing
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_guides_metric_and_health_names_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    for i in 0..50u32 {
        let k = format!("k{i}");
        c.write(write_op("t1", k.as_bytes(), b"v", vec![]))
            .await
            .unwrap();
        c.read(key_ref("t1", k.as_bytes())).await.unwrap();
    }
    node.node.store.engine().flush().unwrap();
    for i in 0..50u32 {
        c.read(key_ref("t1", format!("k{i}").as_bytes()))
            .await
            .unwrap();
    }
    // A refused request, counted by its error code.
    node.node.set_maintenance(true);
    assert!(c.read(key_ref("t1", b"k1")).await.is_err());
    node.node.set_maintenance(false);

    let m = http_get(node.admin_addr, "/metrics").await;
    for name in [
        "write_requests_total",
        "read_requests_total",
        "write_duration_seconds_bucket",
        "read_duration_seconds_bucket",
        "cache_hits_total",
        "cache_requests_total",
        "storage_keys_estimated",
        "wal_files",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
        "pairdb_build_info",
    ] {
        assert!(metric(&m, name) > 0.0, "{name} missing or zero");
    }
    for name in [
        "wal_bytes",
        "compaction_bytes_reclaimed_total",
        "compaction_read_bytes_total",
        "process_max_fds",
        "process_start_time_seconds",
        "rocksdb_memtable_entries",
    ] {
        assert!(m.lines().any(|l| l.starts_with(name)), "{name} missing");
    }
    assert!(m.contains("errors_total{"), "errors_total missing");
    assert!(
        m.lines()
            .any(|l| l.starts_with("errors_total{") && l.contains("error_code=\"")),
        "errors_total has no error_code label"
    );
    assert!(m.contains("node=\"n1\""), "series carry the node label");
    assert!(
        metric(&m, "connections_open") >= 1.0,
        "the test's own gRPC connection is open"
    );
    // A lookup miss then hit: the counters agree with each other.
    assert!(metric(&m, "cache_requests_total") >= metric(&m, "cache_hits_total"));

    let (_, h) = status_of(node.admin_addr, "/health").await;
    for path in [
        "/status",
        "/disk_usage_percent",
        "/disk_status/status",
        "/disk_status/usage_percent",
        "/disk_status/available_bytes",
        "/disk_status/is_throttled",
        "/disk_status/is_circuit_broken",
        "/cache_status/size_bytes",
        "/cache_status/utilization_percent",
        "/cache_status/hit_rate",
        "/memtable_status/size_bytes",
        "/memtable_status/entry_count",
        "/worker_pools/flush_pool/active_workers",
        "/worker_pools/compaction_pool/utilization_percent",
        "/metrics/write_qps",
        "/metrics/read_qps",
        "/metrics/cache_hit_rate",
        "/metrics/p99_write_latency_ms",
        "/metrics/p99_read_latency_ms",
    ] {
        assert!(h.pointer(path).is_some(), "/health has no {path}: {h}");
    }
    assert!(h["metrics"]["write_qps"].as_f64().unwrap() > 0.0, "{h}");
    node.shutdown().await;
}
