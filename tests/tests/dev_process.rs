//! `pairdbctl dev` as a real process, driven by grpcurl, pairdbctl and a Python grpcio client: list, Write and Read through the
//! coordinator as JSON, then Ctrl-C (SIGINT), restart, and the key is still there.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pairdb_tests::*;

/// A base port with `n` consecutive free ports after it.
fn free_run(n: u16) -> Result<u16> {
    for _ in 0..50 {
        let base = free_port()?;
        if base > 65000 {
            continue;
        }
        let all: Vec<_> = (0..n)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if all.iter().all(|l| l.is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no run of {n} free ports")
}

fn start_dev(
    dir: &std::path::Path,
    port: u16,
    admin: u16,
    storage: u16,
    storage_admin: u16,
) -> Result<ChildGuard> {
    start_dev_with(dir, port, admin, storage, storage_admin, &[])
}

fn start_dev_with(
    dir: &std::path::Path,
    port: u16,
    admin: u16,
    storage: u16,
    storage_admin: u16,
    extra: &[&str],
) -> Result<ChildGuard> {
    let tls = extra.contains(&"--tls");
    let mut cmd = Command::new(binary("pairdbctl")?);
    cmd.arg("dev")
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .args([
            "--storage-base-port",
            &storage.to_string(),
            "--admin-base-port",
            &storage_admin.to_string(),
        ])
        .env("RUST_LOG", "warn");
    let guard = ChildGuard::spawn("pairdbctl dev", &mut cmd)?;
    let addr = format!("127.0.0.1:{port}");
    let ca = dir.join("tls").join("ca.crt").display().to_string();
    wait_until("pairdbctl dev serving", Duration::from_secs(30), || {
        let r = if tls {
            run_grpcurl(&["-cacert", &ca, &addr, "grpc.health.v1.Health/Check"])
        } else {
            run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
        };
        r.is_ok_and(|o| o.contains("SERVING"))
    })?;
    Ok(guard)
}

/// `pairdbctl dev --tls`: grpcurl (grpc-go, which insists on ALPN h2) reaches it only over
/// TLS with the printed CA, and only with the token; a tenant token made with pairdbctl reads
/// but cannot write when read-only.
#[test]
fn dev_tls_cluster_serves_grpcurl_over_tls_with_tokens_only() -> Result<()> {
    let _s = serial();
    let dir = tempfile::tempdir()?;
    let base = free_run(8)?;
    let (port, admin, storage, storage_admin) = (base, base + 1, base + 2, base + 5);
    let _dev = start_dev_with(dir.path(), port, admin, storage, storage_admin, &["--tls"])?;
    let addr = format!("127.0.0.1:{port}");
    let ca = dir.path().join("tls").join("ca.crt").display().to_string();
    let token = std::fs::read_to_string(dir.path().join("tls").join("admin-token"))?;
    let bearer = format!("authorization: Bearer {}", token.trim());
    let write = format!(
        "{{\"tenant_id\":\"default\",\"key\":\"{}\",\"value\":\"{}\"}}",
        b64(b"tls-key"),
        b64(b"tls-value")
    );
    let read = format!(
        "{{\"tenant_id\":\"default\",\"key\":\"{}\"}}",
        b64(b"tls-key")
    );
    // Plaintext is refused; TLS without a token is UNAUTHENTICATED.
    assert!(run_grpcurl(&["-plaintext", &addr, "list"]).is_err());
    let e = run_grpcurl(&[
        "-cacert",
        &ca,
        "-d",
        &write,
        &addr,
        "pairdb.CoordinatorService/Write",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("Unauthenticated"), "{e}");
    run_grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &bearer,
        "-d",
        &write,
        &addr,
        "pairdb.CoordinatorService/Write",
    ])?;
    let out = run_grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &bearer,
        "-d",
        &read,
        &addr,
        "pairdb.CoordinatorService/Read",
    ])?;
    assert!(out.contains(&b64(b"tls-value")), "{out}");
    // A read-only tenant token, made with pairdbctl over TLS.
    let made = Command::new(binary("pairdbctl")?)
        .args([
            "--coordinator",
            &addr,
            "--tls-ca",
            &ca,
            "--token",
            token.trim(),
            "--json",
        ])
        .args([
            "token",
            "create",
            "--role",
            "tenant",
            "--tenant",
            "default",
            "--read-only",
        ])
        .output()?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&made.stdout)?;
    let ro = format!(
        "authorization: Bearer {}",
        v["token"].as_str().unwrap_or_default()
    );
    let out = run_grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &ro,
        "-d",
        &read,
        &addr,
        "pairdb.CoordinatorService/Read",
    ])?;
    assert!(out.contains(&b64(b"tls-value")), "{out}");
    let e = run_grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &ro,
        "-d",
        &write,
        &addr,
        "pairdb.CoordinatorService/Write",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("PermissionDenied"), "{e}");
    // A storage node refuses grpcurl even with the cluster CA: it has no client certificate.
    let node = format!("127.0.0.1:{storage}");
    assert!(run_grpcurl(&["-cacert", &ca, &node, "pairdb.StorageNodeService/NodeInfo"]).is_err());
    Ok(())
}

#[test]
fn dev_cluster_serves_grpcurl_and_keeps_data_across_ctrl_c() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let (port, admin, storage, storage_admin) =
        (free_port()?, free_port()?, free_run(3)?, free_run(3)?);
    let addr = format!("127.0.0.1:{port}");
    let mut dev = start_dev(dir.path(), port, admin, storage, storage_admin)?;

    let list = run_grpcurl(&["-plaintext", &addr, "list"])?;
    assert!(
        list.lines()
            .any(|l| l.trim() == "pairdb.CoordinatorService"),
        "{list}"
    );
    assert!(
        !list.contains("pairdb.StorageNodeService"),
        "the coordinator advertises only what it serves: {list}"
    );

    let w = format!(
        r#"{{"tenant_id":"default","key":"{}","value":"{}"}}"#,
        b64(b"hello"),
        b64(b"world")
    );
    let out = run_grpcurl(&[
        "-plaintext",
        "-d",
        &w,
        &addr,
        "pairdb.CoordinatorService/Write",
    ])?;
    let out: serde_json::Value = serde_json::from_str(&out)?;
    assert!(out["context"].is_string(), "{out}");
    assert!(out["replicasAcked"].as_u64().unwrap() >= 2, "{out}");

    let r = format!(r#"{{"tenant_id":"default","key":"{}"}}"#, b64(b"hello"));
    let out: serde_json::Value = serde_json::from_str(&run_grpcurl(&[
        "-plaintext",
        "-d",
        &r,
        &addr,
        "pairdb.CoordinatorService/Read",
    ])?)?;
    assert_eq!(out["value"], b64(b"world"));

    // A missing key: NotFound, and the ErrorInfo detail decodes (google.rpc descriptors served).
    let missing = format!(r#"{{"tenant_id":"default","key":"{}"}}"#, b64(b"nope"));
    let err = run_grpcurl(&[
        "-plaintext",
        "-d",
        &missing,
        &addr,
        "pairdb.CoordinatorService/Read",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("NotFound") && err.contains("KEY_NOT_FOUND") && err.contains("1001"),
        "{err}"
    );

    // pairdbctl against the same cluster: siblings shown, resolved with the printed context.
    let ctl = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new(binary("pairdbctl")?)
            .args(["--coordinator", &addr, "--json"])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pairdbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_str(&String::from_utf8_lossy(&out.stdout))?)
    };
    ctl(&["put", "default", "user:1", "alice"])?;
    ctl(&["put", "default", "user:1", "bob"])?;
    let got = ctl(&["get", "default", "user:1"])?;
    assert_eq!(got["siblings"].as_array().unwrap().len(), 2, "{got}");
    ctl(&[
        "put",
        "default",
        "user:1",
        "carol",
        "--context",
        got["context"].as_str().unwrap(),
    ])?;
    let got = ctl(&["get", "default", "user:1"])?;
    assert_eq!(
        (
            got["value"].as_str(),
            got["siblings"].as_array().unwrap().len()
        ),
        (Some("carol"), 1)
    );
    let health = ctl(&["cluster", "health"])?;
    assert_eq!(health["nodes_total"], 3);
    let tenants = ctl(&["tenant", "list"])?;
    assert!(
        tenants
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tenant_id"] == "default")
    );

    // The write-only bench workload (scripts/bench-compare.sh's W) writes real keys: every
    // operation succeeds and a bench key reads back with the bench's value.
    let bench = ctl(&[
        "bench",
        "workload",
        "--workload",
        "w",
        "--records",
        "40",
        "--concurrency",
        "2",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0",
        "--value-size",
        "16",
    ])?;
    let step = &bench["steps"][0];
    assert_eq!(bench["target"], "pairdb", "{bench}");
    assert!(step["read"].is_null(), "write-only: {step}");
    assert!(step["update"]["ops"].as_u64().unwrap() > 0, "{step}");
    assert_eq!(step["update"]["errors"], 0, "{step}");
    assert!(step["ping"]["ops"].as_u64().unwrap() > 0, "{step}");
    let got = ctl(&["get", "bench", "user7"])?;
    assert_eq!(
        got["value"].as_str(),
        Some("x".repeat(16).as_str()),
        "{got}"
    );

    // A client written with plain Python grpcio from the .proto files.
    let venv = std::env::var("PAIRDB_VENV")
        .map_err(|_| anyhow::anyhow!("PAIRDB_VENV unset: run through scripts/test.sh"))?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(format!("{venv}/bin/python"))
        .arg(format!("{root}/tests/python/client_smoke.py"))
        .arg(format!("{root}/proto"))
        .arg(&addr)
        .output()?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "python client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let status = dev.signal_and_wait(rustix::process::Signal::INT, Duration::from_secs(20))?;
    assert!(status.success(), "clean exit on Ctrl-C: {status}");

    let _dev = start_dev(dir.path(), port, admin, storage, storage_admin)?;
    let out: serde_json::Value = serde_json::from_str(&run_grpcurl(&[
        "-plaintext",
        "-d",
        &r,
        &addr,
        "pairdb.CoordinatorService/Read",
    ])?)?;
    assert_eq!(out["value"], b64(b"world"), "data kept across restart");
    Ok(())
}
