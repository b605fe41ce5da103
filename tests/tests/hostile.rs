//! Hostile and oversized input through `pairdb.CoordinatorService` (in-process clusters, debug
//! build): forged and edited context tokens and key rotation, keys driven past their state cap,
//! oversized fields, tenant rate limits, the metadata store gone while a replica is down, and
//! TTL expiry racing a stale replica. Each test checks what clients saw and what replicas hold.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::Consistency::{All, Quorum};
use pairdb_coordinator::meta::NodeStatus;
use pairdb_tests::cluster::*;
use pairdb_tests::serial_async;
use prost::Message;

/// A token with the sealed format's header around `vv` and a tag nobody computed.
fn forged_token(vv: &pb::VersionVector) -> Vec<u8> {
    let mut t = vec![pairdb_common::context::TOKEN_FORMAT_V2];
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&vv.encode_to_vec());
    t.extend_from_slice(&[0x5a; 32]);
    t
}

/// The old CRC-only framing around `vv` (what the attack used).
fn crc_token(vv: &pb::VersionVector) -> Vec<u8> {
    pairdb_common::framing::frame(
        pairdb_common::context::CONTEXT_FORMAT_V1,
        &vv.encode_to_vec(),
    )
}

fn key_id(token: &[u8]) -> u32 {
    u32::from_le_bytes([token[1], token[2], token[3], token[4]])
}

async fn read_token(c: &TestCluster, i: usize, key: &[u8]) -> Vec<u8> {
    let mut a = c.client(i).await.unwrap();
    a.read(read_req(key, Quorum))
        .await
        .unwrap()
        .into_inner()
        .context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_edited_and_retired_context_tokens_are_refused_and_writes_go_on() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions {
        tweak: Some(|cfg| cfg.context_key_refresh_ms = 300),
        ..ClusterOptions::three_by_two(Backend::Sqlite, true)
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    // Learn every replica's actor from the dots writes return.
    let mut actors = BTreeSet::new();
    for i in 0..60 {
        let r = a
            .write(write_req(
                format!("learn-{i}").as_bytes(),
                b"v",
                vec![],
                Quorum,
            ))
            .await
            .unwrap()
            .into_inner();
        let d = r.dot.unwrap();
        actors.insert((d.node_id, d.epoch));
    }
    assert_eq!(actors.len(), 3, "every replica coordinated some write");
    for counter in [u64::MAX, u64::MAX - 1] {
        let vv = pb::VersionVector {
            entries: actors
                .iter()
                .map(|(n, e)| pb::VectorEntry {
                    node_id: n.clone(),
                    epoch: *e,
                    counter,
                })
                .collect(),
            dots: vec![],
        };
        for token in [forged_token(&vv), crc_token(&vv)] {
            for i in 0..2 {
                let mut client = c.client(i).await.unwrap();
                let err = client
                    .write(write_req(b"learn-0", b"evil", token.clone(), Quorum))
                    .await
                    .unwrap_err();
                assert_eq!(reason(&err), ("INVALID_CONTEXT".into(), "1008".into()));
                let err = client
                    .delete(pb::DeleteRequest {
                        tenant_id: "t1".into(),
                        key: b"learn-1".to_vec(),
                        context: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(reason(&err).0, "INVALID_CONTEXT");
            }
        }
    }
    // An edited token (one counter changed, everything else as sealed) is refused too.
    let real = read_token(&c, 0, b"learn-0").await;
    let body = &real[5..real.len() - 32];
    let mut vv = pb::VersionVector::decode(body).unwrap();
    match vv.entries.first_mut() {
        Some(e) => e.counter += 1,
        None => vv.dots[0].counter += 1,
    }
    let mut edited = real[..5].to_vec();
    edited.extend_from_slice(&vv.encode_to_vec());
    edited.extend_from_slice(&real[real.len() - 32..]);
    let err = a
        .write(write_req(b"learn-0", b"evil", edited, Quorum))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "INVALID_CONTEXT");
    // 100 ordinary writes through every coordinator succeed and read back.
    for i in 0..2 {
        let mut client = c.client(i).await.unwrap();
        for k in 0..100 {
            let key = format!("after-{i}-{k}");
            client
                .write(write_req(key.as_bytes(), key.as_bytes(), vec![], Quorum))
                .await
                .unwrap();
            let got = client.read(read_req(key.as_bytes(), Quorum)).await.unwrap();
            assert_eq!(got.into_inner().value, key.as_bytes());
        }
    }
    // Rotation: a token sealed before it keeps working during the grace, on every coordinator.
    let before = read_token(&c, 0, b"after-0-0").await;
    assert_eq!(key_id(&before), 1);
    let secret = pairdb_common::context::new_secret().unwrap();
    let new_id = c.meta.rotate_context_key(&secret, 3_000).await.unwrap();
    assert_eq!(new_id, 2);
    wait_async(
        "coordinator 0 sealing with key 2",
        Duration::from_secs(10),
        || async { key_id(&read_token(&c, 0, b"after-0-1").await) == 2 },
    )
    .await
    .unwrap();
    let mut b = c.client(1).await.unwrap();
    b.write(write_req(
        b"after-0-0",
        b"within-grace",
        before.clone(),
        Quorum,
    ))
    .await
    .unwrap();
    // A token sealed with the new key opens everywhere.
    let fresh = read_token(&c, 0, b"after-0-1").await;
    b.write(write_req(b"after-0-1", b"new-key", fresh, Quorum))
        .await
        .unwrap();
    // After the grace the old key is gone: its tokens are refused.
    let old = read_token(&c, 1, b"after-1-0").await;
    let old = if key_id(&old) == 1 { old } else { before };
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    wait_async(
        "the retired key refused",
        Duration::from_secs(10),
        || async {
            let mut a = c.client(0).await.unwrap();
            a.write(write_req(b"after-1-0", b"late", old.clone(), Quorum))
                .await
                .is_err_and(|e| reason(&e).0 == "INVALID_CONTEXT")
        },
    )
    .await
    .unwrap();
    let metrics = c.coordinators[0].data.metrics.context_refusals.get();
    assert!(metrics >= 4, "refusals counted: {metrics}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_writes_past_the_state_cap_are_refused_and_the_key_stays_resolvable() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    let value = vec![3u8; 1 << 20];
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100u32 {
        let mut v = value.clone();
        v[..4].copy_from_slice(&i.to_le_bytes());
        match a.write(write_req(b"hot", &v, vec![], Quorum)).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(reason(&e), ("VALUE_TOO_LARGE".into(), "1003".into()));
                assert!(e.message().contains("max_state_bytes"), "{}", e.message());
                refused += 1;
            }
        }
    }
    assert_eq!(
        (ok, refused),
        (2, 98),
        "the 3 MiB default cap holds two 1 MiB siblings"
    );
    // Readable by a client with gRPC's default 4 MiB receive limit.
    let r = a.read(read_req(b"hot", Quorum)).await.unwrap().into_inner();
    assert_eq!(r.siblings.len(), 2);
    a.write(write_req(b"hot", b"resolved", r.context, Quorum))
        .await
        .unwrap();
    let r = a.read(read_req(b"hot", All)).await.unwrap().into_inner();
    assert_eq!(
        (r.value.as_slice(), r.siblings.len()),
        (&b"resolved"[..], 1)
    );
    // Tenant settings that could build unreadable keys are refused.
    for (state, value, rf) in [
        (1u32 << 20, 1u32 << 20, 3u32),
        (17 << 20, 16 << 20, 3),
        (32 << 20, 0, 1),
    ] {
        let err = a
            .create_tenant(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    tenant_id: "bad-limits".into(),
                    replication_factor: rf,
                    max_value_bytes: value,
                    max_state_bytes: state,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&err).0, "INVALID_ARGUMENT", "{}", err.message());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_at_the_coordinator() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    let mut w = write_req(b"k", b"", vec![], Quorum);
    w.idempotency_key = "i".repeat(3 << 20);
    let err = a.write(w).await.unwrap_err();
    assert_eq!(reason(&err).0, "INVALID_ARGUMENT");
    assert!(
        err.message().contains("idempotency_key"),
        "{}",
        err.message()
    );
    let err = a
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                tenant_id: "t".repeat(64),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "INVALID_TENANT");
    let add = |node_id: String, host: String, zone: String| pb::AddStorageNodeRequest {
        node_id,
        host,
        port: 7001,
        zone,
        ..Default::default()
    };
    for req in [
        add("n".repeat(60_000), "127.0.0.1".into(), String::new()),
        add("n9".into(), "h".repeat(300), String::new()),
        add("n9".into(), "evil/host".into(), String::new()),
        add("n9".into(), "127.0.0.1".into(), "z".repeat(64)),
    ] {
        let err = a.add_storage_node(req).await.unwrap_err();
        assert_eq!(reason(&err).0, "INVALID_ARGUMENT", "{}", err.message());
        assert!(err.message().len() < 1024);
    }
    // A NORMAL node's address cannot be pointed anywhere invalid either.
    let err = a
        .add_storage_node(add("n1".into(), "h".repeat(300), String::new()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).0, "INVALID_ARGUMENT");
    assert_eq!(c.meta.list_nodes().await.unwrap().len(), 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_limit_gets_overloaded_and_others_do_not() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    a.create_tenant(pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            tenant_id: "limited".into(),
            rate_limit_rps: 50,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    // 500 requests in one second for "limited", 100 for t1 alongside.
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..600u64 {
        let mut client = a.clone();
        let tenant = if i % 6 == 5 { "t1" } else { "limited" };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_micros(i * 1_666)).await;
            let mut w = write_req(format!("rl-{i}").as_bytes(), b"v", vec![], Quorum);
            w.tenant_id = tenant.into();
            (tenant, client.write(w).await.map_err(|e| reason(&e).0))
        }));
    }
    let (mut ok, mut overloaded, mut other_ok) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            ("limited", Ok(_)) => ok += 1,
            ("limited", Err(r)) => {
                assert_eq!(r, "OVERLOADED");
                overloaded += 1;
            }
            (_, r) => {
                r.unwrap();
                other_ok += 1;
            }
        }
    }
    println!("rate limit 50/s driven at 500/s for 1 s: {ok} admitted, {overloaded} refused");
    assert_eq!(ok + overloaded, 500);
    // A full bucket (50) plus a second of refill (50), give or take scheduling.
    assert!((60..=150).contains(&ok), "admitted {ok}");
    assert_eq!(other_ok, 100, "the other tenant is untouched");
    let text = c.coordinators[0].data.metrics.render();
    assert!(text.contains("rate_limited_requests_total{tenant_id=\"limited\"}"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_go_on_with_the_metadata_store_gone_and_a_replica_down() {
    let _s = serial_async().await;
    let mut c = TestCluster::start(ClusterOptions::three_by_two(Backend::PostgresProxied, true))
        .await
        .unwrap();
    let mut clients = [c.client(0).await.unwrap(), c.client(1).await.unwrap()];
    clients[0]
        .write(write_req(b"warm", b"v", vec![], Quorum))
        .await
        .unwrap();
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    c.meta_proxy.as_mut().unwrap().cut();
    // The store is gone: every coordinator's pools fail from now on.
    assert!(
        c.coordinators[0].meta.ring_version().await.is_err(),
        "the metadata store is still reachable"
    );
    let mut written = Vec::new();
    for k in 0..100 {
        let key = format!("no-meta-{k}");
        let client = &mut clients[k % 2];
        let w = write_req(key.as_bytes(), key.as_bytes(), vec![], Quorum);
        let r = tokio::time::timeout(Duration::from_secs(10), client.write(w))
            .await
            .expect("a write waited on the metadata store");
        r.unwrap();
        written.push(key);
    }
    // The hints that could not be stored are counted.
    wait_async(
        "hints counted as not stored",
        Duration::from_secs(30),
        || async {
            c.coordinators.iter().all(|x| {
                x.data
                    .metrics
                    .render()
                    .contains("hints_dropped_by_reason_total{reason=\"store_failed\"}")
            })
        },
    )
    .await
    .unwrap();
    // The store is still gone after the writes: they really ran without it.
    assert!(c.coordinators[1].meta.ring_version().await.is_err());
    // Back to normal: a repair gives the returning replica what its lost hints carried.
    c.meta_proxy.as_mut().unwrap().restore().await.unwrap();
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    let mut a = c.client(0).await.unwrap();
    let started = a
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_repair(&mut a, &started.repair_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{}", done.progress_json);
    for key in &written {
        assert_eq!(
            c.node_values(2, key.as_bytes()).await.unwrap(),
            vec![key.as_bytes().to_vec()],
            "{key} on the returning replica"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_overwrite_never_brings_the_old_value_back() {
    let _s = serial_async().await;
    let mut c = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, false))
        .await
        .unwrap();
    let mut a = c.client(0).await.unwrap();
    a.write(write_req(b"ttl", b"permanent", vec![], All))
        .await
        .unwrap();
    // The third replica misses the overwrite (hints are off), which expires after a second.
    c.stop_node(2).await;
    c.wait_status(2, NodeStatus::Down).await.unwrap();
    let ctx = a
        .read(read_req(b"ttl", Quorum))
        .await
        .unwrap()
        .into_inner()
        .context;
    let mut w = write_req(b"ttl", b"short-lived", ctx, Quorum);
    w.ttl_seconds = 1;
    a.write(w).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Compaction on the two replicas that hold the expired overwrite.
    for i in 0..2 {
        let url = format!(
            "http://{}/api/v1/compaction/trigger-all-levels?wait=true",
            c.node_cfgs[i].admin_addr
        );
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(r.status().is_success());
        // The record keeps its causal context: it covers the permanent value.
        let mut s = c.storage(i).await.unwrap();
        let got = s
            .read(pb::KeyRef {
                tenant_id: "t1".into(),
                key: b"ttl".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            got.exists,
            "replica {i} dropped the expired record and its context"
        );
    }
    c.restart_node(2).await.unwrap();
    c.wait_status(2, NodeStatus::Up).await.unwrap();
    assert_eq!(
        c.node_values(2, b"ttl").await.unwrap(),
        vec![b"permanent".to_vec()]
    );
    for level in [Quorum, All] {
        for _ in 0..10 {
            let err = a.read(read_req(b"ttl", level)).await.unwrap_err();
            assert_eq!(reason(&err).0, "KEY_NOT_FOUND", "{level:?}");
        }
    }
    // A repair makes the stale replica drop the overwritten value too.
    let started = a
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_repair(&mut a, &started.repair_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{}", done.progress_json);
    assert!(c.node_values(2, b"ttl").await.unwrap().is_empty());
    for _ in 0..10 {
        let err = a
            .read(read_req(b"ttl", pb::Consistency::One))
            .await
            .unwrap_err();
        assert_eq!(reason(&err).0, "KEY_NOT_FOUND");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_to_a_node_in_maintenance_wait_without_spending_attempts() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions {
        tweak: Some(|cfg| cfg.hint_retry_base_ms = 100),
        ..ClusterOptions::three_by_two(Backend::Sqlite, true)
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    let admin = c.node_cfgs[2].admin_addr;
    let post = |path: &'static str| async move {
        let r = reqwest::Client::new()
            .post(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    };
    post("/api/v1/maintenance/enable").await;
    for i in 0..20 {
        a.write(write_req(
            format!("mt-{i}").as_bytes(),
            b"v",
            vec![],
            Quorum,
        ))
        .await
        .unwrap();
    }
    wait_async("hints for n3 stored", Duration::from_secs(15), || async {
        c.meta.count_hints_for("n3").await.unwrap() >= 20
    })
    .await
    .unwrap();
    // Coordinators see the maintenance in the node's heartbeat and do not even try: many
    // replay cycles later every hint is still there and no attempt was spent.
    wait_async("maintenance seen", Duration::from_secs(10), || async {
        c.coordinators.iter().all(|x| {
            x.data
                .cluster
                .snapshot()
                .nodes
                .get("n3")
                .is_some_and(|e| !e.serves_clients())
        })
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.meta.count_hints_for("n3").await.unwrap() >= 20);
    assert_eq!(
        c.meta.delete_dead_hints(0, 1).await.unwrap(),
        0,
        "an attempt was spent"
    );
    post("/api/v1/maintenance/disable").await;
    wait_async("hints to n3 delivered", Duration::from_secs(30), || async {
        c.meta.count_hints_for("n3").await.unwrap() == 0
    })
    .await
    .unwrap();
    for i in 0..20 {
        let key = format!("mt-{i}");
        assert_eq!(
            c.node_values(2, key.as_bytes()).await.unwrap(),
            vec![b"v".to_vec()]
        );
    }
    c.shutdown().await;
}
