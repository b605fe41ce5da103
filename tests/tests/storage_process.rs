//! The storage node as a real process, driven by a client nobody on the team wrote (grpcurl):
//! reflection lists the service, a write then read round-trips as JSON, health answers, SIGTERM
//! stops it cleanly, and the data is there after a restart.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use pairdb_tests::*;

fn start_node(dir: &std::path::Path, grpc: u16, admin: u16) -> Result<(ChildGuard, Duration)> {
    let mut cmd = Command::new(binary("pairdb-storage-node")?);
    cmd.args(["--node-id", "p1", "--data-dir"])
        .arg(dir)
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("RUST_LOG", "warn");
    let guard = ChildGuard::spawn("pairdb-storage-node", &mut cmd)?;
    let ready = wait_until("storage node /health", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
    })?;
    Ok((guard, ready))
}

#[test]
fn grpcurl_lists_writes_and_reads_then_sigterm_and_restart() -> Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let (grpc, admin) = (free_port()?, free_port()?);
    let (mut node, ready) = start_node(dir.path(), grpc, admin)?;
    println!("storage node ready in {} ms", ready.as_millis());
    let addr = format!("127.0.0.1:{grpc}");

    let list = run_grpcurl(&["-plaintext", &addr, "list"])?;
    assert!(
        list.lines()
            .any(|l| l.trim() == "pairdb.StorageNodeService"),
        "{list}"
    );
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])?;
    assert!(health.contains("SERVING"), "{health}");

    let body = format!(
        r#"{{"tenant_id":"demo","key":"{}","value":"{}"}}"#,
        b64(b"hello"),
        b64(b"world")
    );
    let written = run_grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        "pairdb.StorageNodeService/Write",
    ])?;
    let written: serde_json::Value = serde_json::from_str(&written)?;
    assert_eq!(written["version"]["value"], b64(b"world"));
    assert_eq!(written["version"]["dot"]["nodeId"], "p1");

    let read_body = format!(r#"{{"tenant_id":"demo","key":"{}"}}"#, b64(b"hello"));
    let read = run_grpcurl(&[
        "-plaintext",
        "-d",
        &read_body,
        &addr,
        "pairdb.StorageNodeService/Read",
    ])?;
    let read: serde_json::Value = serde_json::from_str(&read)?;
    assert_eq!(read["exists"], true);
    assert_eq!(read["state"]["versions"][0]["value"], b64(b"world"));

    // Bad input through grpcurl: the documented code and reason.
    let bad = format!(
        r#"{{"tenant_id":"demo","key":"{}","value":"eA=="}}"#,
        b64(b"a\0b")
    );
    let err = run_grpcurl(&[
        "-plaintext",
        "-d",
        &bad,
        &addr,
        "pairdb.StorageNodeService/Write",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("InvalidArgument"), "{err}");

    let status = node.signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(15))?;
    assert!(status.success(), "clean exit on SIGTERM, got {status}");

    let (_node, _) = start_node(dir.path(), grpc, admin)?;
    let read = run_grpcurl(&[
        "-plaintext",
        "-d",
        &read_body,
        &addr,
        "pairdb.StorageNodeService/Read",
    ])?;
    assert!(
        read.contains(&b64(b"world")),
        "data survives restart: {read}"
    );
    Ok(())
}
