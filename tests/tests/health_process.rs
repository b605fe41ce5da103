//! Health an operator can act on, tried on a real process cluster (3 storage nodes, one
//! coordinator, PostgreSQL): `pairdbctl cluster health` exits 0 while every range keeps its
//! write quorum (healthy; one node down is `reduced`, exit 3 only with `--strict`), exits 2
//! with two of three nodes down and lists the ranges below quorum; the coordinator's probes
//! answer 200 and gRPC health says SERVING; a drained storage node (`pairdbctl node
//! maintenance on`, the preStop hook) answers 503 on its readiness probe and back.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;
use serde_json::Value;

/// `pairdbctl --json cluster health [extra]` → (exit status, parsed output).
fn health(coord: &str, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(binary("pairdbctl").unwrap())
        .args(["--coordinator", coord, "--json", "cluster", "health"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "cluster health printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn wait_status(coord: &str, want: &str) -> (i32, Value) {
    let mut last = (0, Value::Null);
    let waited = wait_until(
        &format!("cluster health {want}"),
        Duration::from_secs(30),
        || {
            last = health(coord, &[]);
            last.1["status"] == want
        },
    );
    assert!(waited.is_ok(), "last answer: {:?}", last);
    last
}

fn t1(h: &Value) -> &Value {
    h["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == "t1")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_health_exit_status_follows_each_tenants_write_quorum() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions {
        coordinators: 1,
        ..ProcOptions::default()
    })
    .await
    .unwrap();
    let coord = c.coords[0].addr();
    let coord_admin = c.coords[0].admin;

    let (code, h) = wait_status(&coord, "healthy");
    assert_eq!(code, 0);
    assert_eq!(t1(&h)["ranges_below_quorum"], 0);
    assert_eq!(t1(&h)["write_quorum"], 2);
    assert!(t1(&h)["ranges_total"].as_u64().unwrap() > 0);

    // Coordinator probes and gRPC health.
    for path in ["/health/live", "/health/ready", "/health"] {
        let (status, body) = pairdb_common::tls::admin_http::AdminTarget::parse(
            &format!("127.0.0.1:{coord_admin}"),
            None,
            None,
        )
        .get(path)
        .await
        .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let serving = run_grpcurl(&["-plaintext", &coord, "grpc.health.v1.Health/Check"]).unwrap();
    assert!(serving.contains("SERVING"), "{serving}");

    // The preStop drain: readiness 503 while in maintenance, and back.
    let n1_admin = format!("http://127.0.0.1:{}", c.node("n1").admin);
    let ctl = |args: &[&str]| {
        Command::new(binary("pairdbctl").unwrap())
            .args(args)
            .output()
            .unwrap()
    };
    let on = ctl(&["node", "maintenance", "on", "--admin-url", &n1_admin]);
    assert!(on.status.success(), "{on:?}");
    let ready = pairdb_common::tls::admin_http::AdminTarget::parse(&n1_admin, None, None);
    assert_eq!(ready.get("/health/ready").await.unwrap().0, 503);
    let off = ctl(&["node", "maintenance", "off", "--admin-url", &n1_admin]);
    assert!(off.status.success(), "{off:?}");
    assert_eq!(ready.get("/health/ready").await.unwrap().0, 200);

    // One of three down: every QUORUM range keeps two live replicas.
    c.node("n3").kill9().unwrap();
    let (code, h) = wait_status(&coord, "reduced");
    assert_eq!(code, 0, "{h}");
    let t = t1(&h);
    assert_eq!(t["ranges_below_quorum"], 0, "{t}");
    assert_eq!(t["ranges_below_replication_factor"], t["ranges_total"]);
    assert_eq!(health(&coord, &["--strict"]).0, 3);

    // Two of three down: no range has a write quorum; the ranges are listed.
    c.node("n2").kill9().unwrap();
    let (code, h) = wait_status(&coord, "degraded");
    assert_eq!(code, 2, "{h}");
    let t = t1(&h);
    assert_eq!(t["ranges_below_quorum"], t["ranges_total"], "{t}");
    let first = &t["under_quorum"][0];
    assert_eq!(first["live_replicas"], serde_json::json!(["n1"]), "{first}");
    assert_eq!(first["unavailable_replicas"].as_array().unwrap().len(), 2);
}
