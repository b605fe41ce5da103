//! Start-up refusals: a non-loopback bind without TLS and auth.

use super::*;

/// Runs a binary with `args` and returns whether it is still running after it had time to
/// start (and its stderr when it exited).
fn starts(bin: &str, args: &[&str], env: &[(&str, &str)], port: u16) -> Result<(), String> {
    let mut cmd = std::process::Command::new(binary(bin).unwrap());
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(err);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("{bin} neither started nor exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_non_loopback_bind_without_tls_and_auth_refuses_to_start_unless_insecure() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n").display().to_string();
    let (g, a) = (free_port().unwrap(), free_port().unwrap());
    let grpc = format!("0.0.0.0:{g}");
    let admin = format!("127.0.0.1:{a}");
    let node = [
        "--node-id",
        "n1",
        "--data-dir",
        &data,
        "--grpc-addr",
        &grpc,
        "--admin-addr",
        &admin,
    ];
    let err = starts("pairdb-storage-node", &node, &[], g).unwrap_err();
    assert!(
        err.contains("refusing to start") && err.contains("--insecure"),
        "{err}"
    );
    let mut insecure = node.to_vec();
    insecure.push("--insecure");
    starts("pairdb-storage-node", &insecure, &[], g).unwrap();

    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let (cg, ca) = (free_port().unwrap(), free_port().unwrap());
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("PAIRDB_GRPC_ADDR", &*format!("0.0.0.0:{cg}")),
        ("PAIRDB_ADMIN_ADDR", &*format!("127.0.0.1:{ca}")),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = starts("pairdb-coordinator", &["serve"], &env, cg).unwrap_err();
    assert!(err.contains("refusing to start"), "{err}");
    let mut env = env;
    env.push(("PAIRDB_INSECURE", "true"));
    starts("pairdb-coordinator", &["serve"], &env, cg).unwrap();
}
