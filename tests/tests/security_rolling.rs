//! runbooks/security.md §5 carried out on a running multi-process cluster under writes: TLS,
//! mutual TLS and tokens switched on one process at a time (nodes with plaintext still
//! accepted, then coordinators with TLS and permissive tokens, then clients moved, then
//! plaintext and anonymous access switched off), with no acknowledged write lost. The audit
//! trail of the coordinators is read back at the end.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::client::Dial;
use pairdb_tests::procs::{ProcCluster, ProcOptions, Secure, Writer};
use pairdb_tests::*;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// A plaintext, token-less write through every coordinator: the transitional states of
/// steps 2–3 keep serving old clients (so the writer's traffic overlapped each restart).
async fn plaintext_write_works(c: &ProcCluster, key: &str) {
    for co in &c.coords {
        let mut w = Dial::plaintext(co.addr()).connect().await.unwrap();
        w.write(pairdb_tests::cluster::write_req(
            key.as_bytes(),
            b"probe",
            vec![],
            pb::Consistency::Quorum,
        ))
        .await
        .unwrap();
    }
}

async fn wait_all_up(c: &ProcCluster) {
    // One heartbeat round after the restart is visible in storage_nodes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.wait_all_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_are_enabled_one_process_at_a_time_under_writes_losing_nothing() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    let sec = Arc::new(Secure::new(c.dir.path()).unwrap());
    let log = c.dir.path().join("coordinators.log");
    // A plaintext, token-less application writing throughout steps 2–4.
    let plain = Writer::start(
        c.coord_dials(),
        "plain",
        1_000_000,
        Duration::from_secs(120),
    );

    // Step 2: each storage node restarts with TLS, still accepting plaintext.
    let ids: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();
    for id in &ids {
        sec.issue(pairdb_common::tls::certs::LeafSpec::storage_node(
            id,
            &["127.0.0.1", "localhost"],
            30,
        ))
        .unwrap();
        let n = c.node(id);
        n.kill9().unwrap();
        n.env = sec.env(id);
        n.env.push(kv("PAIRDB_TLS_ACCEPT_PLAINTEXT", "true"));
        n.start().unwrap();
        wait_all_up(&c).await;
        plaintext_write_works(&c, &format!("probe-node-{id}")).await;
    }
    // Step 3: each coordinator restarts with TLS (mutual TLS to the nodes), plaintext still
    // accepted, tokens checked when sent.
    for i in 0..c.coords.len() {
        let db = c.db_url.clone();
        let co = &mut c.coords[i];
        co.kill9().unwrap();
        co.env.extend(sec.env("coordinator"));
        co.env.push(kv("PAIRDB_TLS_ACCEPT_PLAINTEXT", "true"));
        co.env.push(kv("PAIRDB_AUTH", "permissive"));
        co.log = Some(log.clone());
        co.start(&db).unwrap();
        wait_all_up(&c).await;
        plaintext_write_works(&c, &format!("probe-coord-{i}")).await;
    }
    // Step 4: the application moves to TLS and a tenant token.
    let admin = Dial {
        address: c.coords[0].addr(),
        token: Some(sec.token.clone()),
        ca: Some(sec.ca()),
        ..Dial::default()
    };
    let made = admin
        .connect()
        .await
        .unwrap()
        .create_token(pb::CreateTokenRequest {
            role: "tenant".into(),
            tenant_id: "t1".into(),
            description: "the application".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let app: Vec<Dial> = c
        .coords
        .iter()
        .map(|co| Dial {
            address: co.addr(),
            token: Some(made.token.clone()),
            ca: Some(sec.ca()),
            ..Dial::default()
        })
        .collect();
    let secure = Writer::start(app, "secure", 1_000_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut acked, plain_failed) = plain.finish().await.unwrap();
    println!(
        "plaintext writer through steps 2-4: {} acknowledged, {plain_failed} failed",
        acked.len()
    );
    assert!(
        acked.len() > 100,
        "the plaintext writer made too little progress"
    );

    // Step 5: plaintext off on the nodes, then tokens required and plaintext off on the
    // coordinators (the settings of a fully secured cluster).
    for id in &ids {
        let n = c.node(id);
        n.kill9().unwrap();
        n.env.clear();
        n.secure = Some(sec.clone());
        n.start().unwrap();
        wait_all_up(&c).await;
    }
    for i in 0..c.coords.len() {
        let db = c.db_url.clone();
        let co = &mut c.coords[i];
        co.kill9().unwrap();
        co.env
            .retain(|(k, _)| !k.starts_with("PAIRDB_TLS") && k != "PAIRDB_AUTH");
        co.secure = Some(sec.clone());
        co.start(&db).unwrap();
        wait_all_up(&c).await;
    }
    c.secure = Some(sec.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (live, secure_failed) = secure.finish().await.unwrap();
    println!(
        "TLS + token writer through steps 4-5: {} acknowledged, {secure_failed} failed",
        live.len()
    );
    assert!(
        live.len() > 100,
        "the secured writer made too little progress"
    );
    acked.extend(live);

    // Fully secured now: plaintext and anonymous calls are refused.
    let anonymous = Dial {
        token: None,
        ..c.coords[0].dial()
    };
    let err = anonymous
        .connect()
        .await
        .unwrap()
        .read(pairdb_tests::cluster::read_req(b"x", pb::Consistency::One))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let plaintext = Dial::plaintext(c.coords[0].addr());
    let refused = match plaintext.connect().await {
        Err(_) => true,
        Ok(mut p) => p
            .read(pairdb_tests::cluster::read_req(b"x", pb::Consistency::One))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext still served after step 5");

    // Nothing acknowledged at any step was lost.
    c.check_quorum_reads(&acked).await.unwrap();

    // The audit trail names the bootstrap admin token that created the application's token.
    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("pairdb_audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("CreateToken")
            && l.contains("admin token bootstrap")
            && l.contains("the application")
            && l.contains("outcome=\"ok\"")
            && !l.contains('\u{1b}')),
        "{audit:#?}"
    );
}
