//! A rolling restart of coordinators behind a load balancer fails no request: on SIGTERM a
//! coordinator reports not ready, closes its gRPC port (new connections go to the other one),
//! sends HTTP/2 GOAWAY on its open connections and finishes every request in flight before
//! its workers stop. Four Rust (tonic) clients and one Python grpcio client write at QUORUM
//! through a TCP balancer in front of both coordinators (a Kubernetes Service routes
//! connections the same way), without retries of their own;
//! each coordinator is stopped with SIGTERM and started again in turn, twice, while they
//! write. Every request must succeed, every write read back, and the clients must have been
//! moved between coordinators (each saw both).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::client::Dial;
use pairdb_tests::cluster::{wait_async, write_req};
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::proxy::TcpBalancer;
use pairdb_tests::*;

const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_coordinators_behind_a_balancer_fails_no_request() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    c.wait_all_up().await.unwrap();
    let upstreams = c
        .coords
        .iter()
        .map(|co| co.addr().parse().unwrap())
        .collect();
    let lb = TcpBalancer::start(upstreams).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..CLIENTS {
        let (stop, acked_total) = (stop.clone(), acked_total.clone());
        let addr = lb.addr.to_string();
        writers.push(tokio::spawn(async move {
            let mut client = Dial::plaintext(addr).connect().await.unwrap();
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(180);
            for i in 0..200_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let k = format!("drain-{w}-{i}");
                let req = write_req(k.as_bytes(), k.as_bytes(), vec![], pb::Consistency::Quorum);
                match client.write(req).await {
                    Ok(_) => {
                        acked.push(k);
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(format!("{k}: {:?} {}", e.code(), e.message())),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failed)
        }));
    }
    let more = |since: usize, what: &'static str| {
        let acked_total = acked_total.clone();
        async move {
            wait_async(what, Duration::from_secs(30), || async {
                acked_total.load(Ordering::Relaxed) >= since + 100
            })
            .await
            .unwrap();
            acked_total.load(Ordering::Relaxed)
        }
    };
    // A client nobody on the team wrote: plain Python grpcio (tests/python/writer.py).
    let stop_file = c.dir.path().join("python-writer.stop");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = std::process::Command::new(pairdb_tests::k8s::venv_bin("python"))
        .arg(format!("{root}/tests/python/writer.py"))
        .arg(format!("{root}/proto"))
        .arg(lb.addr.to_string())
        .args(["t1", "drain-py"])
        .arg(&stop_file)
        .arg("180")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = more(0, "writes before the restarts").await;
    let url = c.db_url.clone();
    for round in 0..2 {
        for i in 0..c.coords.len() {
            let co = &mut c.coords[i];
            co.terminate().unwrap();
            // While it is down, everything goes to the other one.
            seen = more(seen, "writes while one coordinator is down").await;
            co.start(&url).unwrap();
            co.wait_ready().await.unwrap();
            seen = more(seen, "writes after the restart").await;
            println!("round {round}, coordinator {i} restarted; {seen} writes acknowledged");
        }
    }
    stop.store(true, Ordering::Relaxed);
    std::fs::write(&stop_file, b"").unwrap();
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    let out = tokio::task::spawn_blocking(move || python.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "python writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py_acked: Vec<String> = py["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    println!(
        "python grpcio client: {} acknowledged, {} failed",
        py_acked.len(),
        py["failed"].as_array().unwrap().len()
    );
    assert!(py_acked.len() > 100, "the python client wrote throughout");
    for f in py["failed"].as_array().unwrap() {
        failed.push(format!("python {f}"));
    }
    acked.extend(py_acked);
    let per_upstream = lb.connections.lock().unwrap().clone();
    println!(
        "{} writes acknowledged, {} failed; balancer connections per coordinator: {per_upstream:?}",
        acked.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the rolling restart, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Clients were moved: each coordinator took connections after a restart of the other.
    assert!(
        per_upstream.iter().all(|n| *n > CLIENTS),
        "{per_upstream:?}"
    );
    let pairs: Vec<(String, Vec<u8>)> = acked
        .into_iter()
        .map(|k| {
            let v = k.clone().into_bytes();
            (k, v)
        })
        .collect();
    c.check_quorum_reads(&pairs).await.unwrap();
}

/// Reads HTTP/2 frames from `s` until a GOAWAY (type 7); false if the connection ends first.
async fn until_goaway(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 9];
    loop {
        if s.read_exact(&mut header).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return false;
        }
        if header[3] == 7 {
            return true;
        }
    }
}

/// The order of a drain, as a client sees it: by the time an open connection receives
/// HTTP/2 GOAWAY, the coordinator's port already refuses connections, so a client that
/// reconnects on the GOAWAY (grpcio does at once) is sent to another coordinator and is never
/// accepted into a listen backlog about to be reset. Three SIGTERMs, each checked on a raw
/// HTTP/2 connection opened before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_reaches_clients_only_after_the_port_is_closed() {
    use tokio::io::AsyncWriteExt;
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions {
        coordinators: 1,
        ..ProcOptions::default()
    })
    .await
    .unwrap();
    c.wait_all_up().await.unwrap();
    let url = c.db_url.clone();
    for round in 0..3 {
        let co = &mut c.coords[0];
        let addr = co.addr();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The client preface and an empty SETTINGS frame.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let pid = co.child.as_ref().and_then(|g| g.pid()).unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), until_goaway(&mut s))
            .await
            .unwrap();
        assert!(got, "round {round}: the connection ended without GOAWAY");
        let again = tokio::net::TcpStream::connect(&addr).await;
        assert!(
            again.is_err(),
            "round {round}: a new connection was accepted after GOAWAY"
        );
        // A connection left open holds the drain until its deadline: close it.
        drop(s);
        co.terminate().unwrap();
        co.start(&url).unwrap();
        co.wait_ready().await.unwrap();
    }
}
