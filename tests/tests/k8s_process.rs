//! A cluster started from the dev overlay with exactly the command, arguments and environment
//! its objects give each container (pod names, ports, addresses and mount paths substituted:
//! `pairdb_tests::k8s::pods`) migrates, serves, joins, answers every probe path the manifests
//! name, drains with the preStop command and stops within its grace period, and exports every
//! metric the alert rules and dashboards use.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::tls::admin_http::AdminTarget;
use pairdb_tests::cluster::PgDb;
use pairdb_tests::k8s::Rendered;
use pairdb_tests::k8s::pods::{pod, wait_probes};
use pairdb_tests::monitoring::{SYNTHETIC, exported_names, referenced_metrics};
use pairdb_tests::*;
use serde_json::Value;

/// Metrics the dev overlay cannot export, and where they are checked instead.
const NOT_IN_DEV: &[(&str, &str)] = &[(
    "tls_certificate_expiry_timestamp_seconds",
    "exported only with TLS on; tests/tests/security/tls.rs checks it",
)];

/// `key-<i>` of tenant `k8s`, read at the tenant's default consistency.
async fn read_key(c: &mut pairdb_common::client::Coordinator, i: usize) -> pb::ReadResponse {
    c.read(pb::ReadRequest {
        tenant_id: "k8s".into(),
        key: format!("key-{i}").into_bytes(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn ctl(coord: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("pairdbctl").unwrap())
        .args(["--coordinator", coord])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_started_from_the_dev_manifests_serves_drains_and_exports_every_metric_used() {
    let _s = serial_async().await;
    let r = Rendered::overlay("dev").unwrap();
    let root = tempfile::tempdir().unwrap();
    let logs: PathBuf = root.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pg = PgDb::create().await.unwrap();
    let dev_url = r.data("Secret", "pairdb-database", "url").unwrap();
    let coord_grpc_port = 50051;
    let mut global = vec![(dev_url.clone(), pg.url.clone())];

    // The migration Job, then the coordinator Deployment's replicas.
    let mut migrate = pod(
        &r,
        "Job",
        "pairdb-migrate",
        "migrate",
        "pairdb-migrate-x1",
        root.path(),
        &global,
        &[],
    );
    migrate.spawn(&logs.join("migrate.log"));
    let status = migrate
        .child
        .as_mut()
        .unwrap()
        .child
        .as_mut()
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(logs.join("migrate.log")).unwrap()
    );

    let replicas = r.get("Deployment", "pairdb-coordinator").unwrap()["spec"]["replicas"]
        .as_u64()
        .unwrap();
    let mut coords = Vec::new();
    for i in 0..replicas {
        let name = format!("pairdb-coordinator-7d9f8-{i}");
        let mut p = pod(
            &r,
            "Deployment",
            "pairdb-coordinator",
            "coordinator",
            &name,
            root.path(),
            &global,
            &[],
        );
        p.spawn(&logs.join(format!("{name}.log")));
        coords.push(p);
    }
    for p in &coords {
        wait_probes(&r, "Deployment", "pairdb-coordinator", "coordinator", p).await;
    }
    let coord = format!("127.0.0.1:{}", coords[0].port(coord_grpc_port));
    // The Service address the storage pods join through is the first coordinator here.
    global.push((
        format!("pairdb-coordinator:{coord_grpc_port}"),
        coord.clone(),
    ));

    // Storage pods in order (OrderedReady): each joins, and is ready once registered.
    let sts = r.get("StatefulSet", "pairdb-storage").unwrap();
    let n = sts["spec"]["replicas"].as_u64().unwrap();
    let zones = ["zone-a", "zone-b", "zone-c"];
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("pairdb-storage-{i}");
        let mut subs = global.clone();
        subs.push((
            format!("{name}.pairdb-storage.pairdb.svc.cluster.local"),
            "127.0.0.1".into(),
        ));
        let mut p = pod(
            &r,
            "StatefulSet",
            "pairdb-storage",
            "storage-node",
            &name,
            root.path(),
            &subs,
            &[],
        );
        // What the `zone` init container writes (it needs a Kubernetes API to ask).
        let zone_file = p
            .env
            .iter()
            .find(|(k, _)| k == "PAIRDB_ZONE_FILE")
            .unwrap()
            .1
            .clone();
        std::fs::write(&zone_file, zones[i as usize % 3]).unwrap();
        p.spawn(&logs.join(format!("{name}.log")));
        wait_probes(&r, "StatefulSet", "pairdb-storage", "storage-node", &p).await;
        nodes.push(p);
    }

    // Every node joined and finished bootstrapping.
    let start = Instant::now();
    loop {
        let (ok, out) = ctl(&coord, &["--json", "cluster", "health"]);
        if ok && out.contains("\"status\":\"healthy\"") && out.contains("\"nodes_up\":3") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "cluster never healthy: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, list) = ctl(&coord, &["--json", "node", "list"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let mut seen_zones: Vec<String> = list
        .as_array()
        .or_else(|| list["nodes"].as_array())
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap().to_string())
        .collect();
    seen_zones.sort();
    assert_eq!(seen_zones, zones, "zones from the zone files: {list}");

    // Traffic: a tenant, writes and reads, an error, a repair.
    let (ok, out) = ctl(
        &coord,
        &["tenant", "create", "k8s", "--replication-factor", "3"],
    );
    assert!(ok, "{out}");
    let mut c = pairdb_common::client::Dial {
        address: coord.clone(),
        ..Default::default()
    }
    .connect()
    .await
    .unwrap();
    let start = Instant::now();
    let mut written = 0;
    while written < 200 {
        let w = c
            .write(pb::WriteRequest {
                tenant_id: "k8s".into(),
                key: format!("key-{written}").into_bytes(),
                value: b"value".to_vec(),
                ..Default::default()
            })
            .await;
        match w {
            Ok(_) => written += 1,
            // The tenant reaches every coordinator within its refresh.
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    for i in 0..200 {
        let got = read_key(&mut c, i).await;
        assert_eq!(
            (got.value.as_slice(), got.siblings.len()),
            (&b"value"[..], 1),
            "key-{i}"
        );
    }
    assert!(
        c.read(pb::ReadRequest {
            tenant_id: "no-such-tenant".into(),
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .is_err()
    );
    let (ok, out) = ctl(
        &coord,
        &[
            "repair",
            "start",
            "--tenant",
            "k8s",
            "--wait",
            "--timeout-secs",
            "60",
        ],
    );
    assert!(ok, "{out}");

    // The preStop drain of the last pod: readiness turns 503; coordinators route around it
    // (its heartbeat says maintenance), a client request sent to it anyway is refused there
    // (counted by code), and the data stays readable at QUORUM.
    let last_i = nodes.len() - 1;
    let last = &nodes[last_i];
    let pre = last.pre_stop.clone().unwrap();
    let out = Command::new(binary(&pre[0]).unwrap())
        .args(&pre[1..])
        .env_clear()
        .envs(last.env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preStop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = AdminTarget::parse(&format!("127.0.0.1:{}", last.port(9101)), None, None);
    assert_eq!(admin.get("/health/ready").await.unwrap().0, 503);
    assert_eq!(admin.get("/health/live").await.unwrap().0, 200);
    for i in 0..50 {
        assert_eq!(read_key(&mut c, i).await.value, b"value");
    }
    let mut direct = pb::storage_node_service_client::StorageNodeServiceClient::connect(format!(
        "http://127.0.0.1:{}",
        last.port(7001)
    ))
    .await
    .unwrap();
    let refused = direct
        .read(pb::KeyRef {
            tenant_id: "k8s".into(),
            key: b"key-0".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // Every metric a rule or a dashboard uses is exported by some process.
    tokio::time::sleep(pairdb_coordinator::gauges::GAUGE_INTERVAL + Duration::from_secs(1)).await;
    let mut exported = BTreeSet::new();
    for p in coords
        .iter()
        .map(|p| p.port(9100))
        .chain(nodes.iter().map(|p| p.port(9101)))
    {
        let (code, text) = AdminTarget::parse(&format!("127.0.0.1:{p}"), None, None)
            .get("/metrics")
            .await
            .unwrap();
        assert_eq!(code, 200);
        exported.extend(exported_names(&text));
    }
    let mut missing = Vec::new();
    for (metric, used_by) in referenced_metrics().unwrap() {
        let excused =
            SYNTHETIC.contains(&metric.as_str()) || NOT_IN_DEV.iter().any(|(m, _)| *m == metric);
        if !excused && !exported.contains(&metric) {
            missing.push(format!("{metric} ({used_by})"));
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported:\n{}",
        missing.join("\n")
    );

    // SIGTERM after the preStop: the node stops within its grace period, cleanly.
    let last = &mut nodes[last_i];
    let grace = last.grace;
    let status = last
        .child
        .as_mut()
        .unwrap()
        .signal_and_wait(rustix::process::Signal::TERM, grace)
        .unwrap();
    assert!(status.success(), "storage node exit: {status:?}");
    for p in &mut coords {
        let status = p
            .child
            .as_mut()
            .unwrap()
            .signal_and_wait(rustix::process::Signal::TERM, p.grace)
            .unwrap();
        assert!(status.success(), "coordinator exit: {status:?}");
    }
}
