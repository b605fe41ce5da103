//! Executes every command of `runbooks/security.md` (its `sh` blocks, in order, as one bash
//! script) against a running multi-process cluster with TLS on every port, mutual TLS between
//! coordinators and storage nodes, and tokens required; then checks what the runbook did: the
//! node serves its reissued certificate, the revoked token is listed as revoked.
#![allow(clippy::unwrap_used)]

use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_security_runbook_runs_against_a_secured_cluster() {
    let _s = serial_async().await;
    let c = ProcCluster::start(ProcOptions {
        secure: true,
        ..ProcOptions::default()
    })
    .await
    .unwrap();
    let sec = c.secure.clone().unwrap();
    let n1 = c.nodes.iter().find(|n| n.id == "n1").unwrap();
    let cert_before = std::fs::read(sec.dir.join("n1.crt")).unwrap();
    let log = run_runbook(
        "security.md",
        6,
        vec![
            ("PAIRDB_COORDINATOR", c.coords[0].addr()),
            ("PAIRDB_TLS_CA", sec.ca().display().to_string()),
            ("PAIRDB_TOKEN", sec.token.clone()),
            ("CERT_DIR", sec.dir.display().to_string()),
            ("NODE_ID", "n1".into()),
            ("NODE_ADMIN", format!("127.0.0.1:{}", n1.admin)),
            ("TENANT", "t1".into()),
        ],
    )
    .await
    .unwrap();
    println!("{log}");
    assert!(log.contains("certificate expiry moved from"), "{log}");
    assert_ne!(std::fs::read(sec.dir.join("n1.crt")).unwrap(), cert_before);
    let tokens = c.meta.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!(
        tokens.iter().filter(|t| t.revoked_at_ms.is_some()).count(),
        1,
        "{tokens:?}"
    );
    // The cluster still serves over mutual TLS with the reissued node certificate.
    let mut n1c = n1.client().await.unwrap();
    let info = n1c
        .node_info(pairdb_common::api::pb::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "n1");
}
