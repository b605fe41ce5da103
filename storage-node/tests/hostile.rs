//! Hostile input at the storage node's own API, with no coordinator in between: forged
//! counters, oversized fields, keys grown past their state cap, and callers that open streams
//! and never read. The node must refuse each with the documented code, never panic or poison a
//! lock, and keep serving everyone else.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::context::encode_internal;
use pairdb_common::version::{Actor, Dot, VersionVector};
use support::*;

/// The node's actor, from a write's dot.
async fn actor_of(c: &mut Client) -> Actor {
    let r = c
        .write(write_op("t1", b"probe", b"v", vec![]))
        .await
        .unwrap()
        .into_inner();
    let d = r.version.unwrap().dot.unwrap();
    Actor::new(d.node_id, d.epoch)
}

fn big_client(c: &Client) -> Client {
    c.clone()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

#[tokio::test]
async fn forged_counters_for_the_nodes_own_actor_are_refused_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let me = actor_of(&mut c).await;
    for counter in [u64::MAX, u64::MAX - 1] {
        // As an entry of the write's context, and as a dot of its cloud.
        let mut entry = VersionVector::new();
        entry.raise(&me, counter);
        let mut cloud = VersionVector::new();
        cloud.add_dot(&Dot::new(me.clone(), counter));
        for ctx in [entry, cloud] {
            let err = c
                .write(write_op("t1", b"victim", b"v", encode_internal(&ctx)))
                .await
                .unwrap_err();
            assert_eq!(reason(&err), "INVALID_CONTEXT", "{}", err.message());
        }
        // As a version merged in (replica fan-out, hints, read repair).
        let forged = pb::KeyState {
            versions: vec![pb::Version {
                dot: Some(pb::Dot {
                    node_id: me.node_id.clone(),
                    epoch: me.epoch,
                    counter,
                }),
                value: b"forged".to_vec(),
                ..Default::default()
            }],
            context: None,
        };
        for origin in [
            pb::ApplyOrigin::Replica,
            pb::ApplyOrigin::Hint,
            pb::ApplyOrigin::AntiEntropy,
        ] {
            let err = c
                .apply(pb::KeyVersions {
                    tenant_id: "t1".into(),
                    key: b"victim".to_vec(),
                    state: Some(forged.clone()),
                    origin: origin as i32,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(reason(&err), "INVALID_ARGUMENT", "{}", err.message());
        }
        let err = c
            .repair(pb::KeyVersions {
                tenant_id: "t1".into(),
                key: b"victim".to_vec(),
                state: Some(forged),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "INVALID_ARGUMENT");
    }
    // Nothing was adopted or poisoned: 100 ordinary writes succeed with small, rising dots and
    // read back.
    let mut last = 0;
    for i in 0..100u32 {
        let key = format!("after-{i}");
        let r = c
            .write(write_op("t1", key.as_bytes(), &i.to_le_bytes(), vec![]))
            .await
            .unwrap()
            .into_inner();
        let counter = r.version.unwrap().dot.unwrap().counter;
        assert!(
            counter > last && counter < 1_000_000,
            "dot counter {counter}"
        );
        last = counter;
        let got = c
            .read(key_ref("t1", key.as_bytes()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(values(&got), vec![i.to_le_bytes().to_vec()]);
    }
    let m = http_get(node.admin_addr, "/metrics").await;
    assert!(metric(&m, "dot_counter_refusals_total") >= 10.0, "{m}");
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_fields_are_refused_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let cases: Vec<(pb::WriteOp, &str)> = vec![
        (
            pb::WriteOp {
                idempotency_key: "i".repeat(3 << 20),
                ..write_op("t1", b"k", b"", vec![])
            },
            "INVALID_ARGUMENT",
        ),
        (
            write_op(&"t".repeat(64), b"k", b"v", vec![]),
            "INVALID_TENANT",
        ),
        (
            write_op(&"t".repeat(60_000), b"k", b"v", vec![]),
            "INVALID_TENANT",
        ),
        (
            // A 60 KB actor id in the context.
            write_op("t1", b"k", b"v", {
                let mut vv = VersionVector::new();
                vv.raise(&Actor::new("a".repeat(60_000), 1), 5);
                encode_internal(&vv)
            }),
            "INVALID_CONTEXT",
        ),
        (
            // An actor id that is no node id.
            write_op("t1", b"k", b"v", {
                let mut vv = VersionVector::new();
                vv.raise(&Actor::new("Not A Node", 1), 5);
                encode_internal(&vv)
            }),
            "INVALID_CONTEXT",
        ),
        (
            pb::WriteOp {
                tombstone: true,
                ..write_op("t1", b"k", b"a value on a tombstone", vec![])
            },
            "INVALID_ARGUMENT",
        ),
    ];
    let mut big = big_client(&c);
    for (op, want) in cases {
        let err = big.write(op).await.unwrap_err();
        assert_eq!(reason(&err), want, "{}", err.message());
        assert!(
            err.message().len() < 1024,
            "messages quote excerpts: {}",
            err.message().len()
        );
    }
    // An actor id too long inside a merged state.
    let err = c
        .apply(pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
            state: Some(pb::KeyState {
                versions: vec![pb::Version {
                    dot: Some(pb::Dot {
                        node_id: "x".repeat(64),
                        epoch: 1,
                        counter: 1,
                    }),
                    ..Default::default()
                }],
                context: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_ARGUMENT");
    // A pull from an address that is no host:port, and tenant filters that are no tenants.
    for (addr, tenants, want) in [
        ("h".repeat(400) + ":1", vec![], "INVALID_ARGUMENT"),
        ("127.0.0.1".to_string(), vec![], "INVALID_ARGUMENT"),
        (
            "127.0.0.1:1".to_string(),
            vec!["NOT A TENANT".to_string()],
            "INVALID_TENANT",
        ),
    ] {
        let err = c
            .pull_range(pb::PullRangeRequest {
                source_address: addr,
                tenant_ids: tenants,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&err), want, "{}", err.message());
    }
    // Nothing was stored.
    let report = http_post(
        node.admin_addr,
        "/api/v1/integrity/scan-all",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(report["scanned"], 0);
    node.shutdown().await;
}

#[tokio::test]
async fn a_key_cannot_grow_past_its_state_cap_and_stays_readable_and_resolvable() {
    let dir = tempfile::tempdir().unwrap();
    let (node, c) = start(config(dir.path(), "n1"), None).await;
    let mut c = big_client(&c);
    let value = vec![7u8; 1 << 20];
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100 {
        let mut op = write_op("t1", b"hot", &value, vec![]);
        op.value[0] = i as u8;
        match c.write(op).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(reason(&e), "VALUE_TOO_LARGE", "{}", e.message());
                assert!(
                    e.message()
                        .contains("write the result back with the read's context")
                );
                refused += 1;
            }
        }
    }
    // The default cap (3 MiB) holds two 1 MiB siblings; a third would pass it.
    assert_eq!((ok, refused), (2, 98));
    let r = c.read(key_ref("t1", b"hot")).await.unwrap().into_inner();
    assert_eq!(values(&r).len(), 2);
    // Writing back with the read's context resolves the key.
    c.write(write_op("t1", b"hot", b"resolved", read_context(&r)))
        .await
        .unwrap();
    let r = c.read(key_ref("t1", b"hot")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"resolved".to_vec()]);
    // A tenant cap below the default applies, and a write that does not grow an over-cap key
    // (its resolution) is still accepted.
    let mut small = write_op("t1", b"small", &vec![1u8; 100_000], vec![]);
    small.max_state_bytes = 150_000;
    c.write(small.clone()).await.unwrap();
    let err = c.write(small.clone()).await.unwrap_err();
    assert_eq!(reason(&err), "VALUE_TOO_LARGE");
    let r = c.read(key_ref("t1", b"small")).await.unwrap().into_inner();
    let mut resolve = write_op("t1", b"small", &vec![2u8; 100_000], read_context(&r));
    resolve.max_state_bytes = 150_000;
    c.write(resolve).await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn streams_are_batched_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, c) = start(config(dir.path(), "n1"), None).await;
    let mut c = big_client(&c);
    for i in 0..100u32 {
        c.write(write_op(
            "t1",
            format!("k{i}").as_bytes(),
            &vec![i as u8; 300 << 10],
            vec![],
        ))
        .await
        .unwrap();
    }
    let mut s = c
        .stream_range(pb::StreamRangeRequest {
            batch_size: 512,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut batches, mut keys) = (0, 0);
    while let Some(b) = s.message().await.unwrap() {
        let bytes: usize = b.entries.iter().map(|e| e.record.len() + e.key.len()).sum();
        assert!(bytes <= (4 << 20) + (301 << 10), "a batch of {bytes} bytes");
        batches += 1;
        keys += b.entries.len();
        if b.done {
            break;
        }
    }
    assert_eq!(keys, 100);
    assert!(batches >= 8, "100 x 300 KiB in {batches} batches");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_streams_that_never_read_do_not_stop_writes_or_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "n1");
    // Synced writes run on blocking threads: the pool a flood of scans would starve.
    cfg.sync_writes = true;
    cfg.stream_stall_timeout_ms = 3_000;
    // A short queue: the callers waiting in it are admitted as the stalled ones time out.
    cfg.max_queued_scans = 8;
    let (node, c) = start(cfg, None).await;
    let mut c = big_client(&c);
    // Enough data that a stream fills its channel and HTTP/2 windows and then blocks.
    for i in 0..64u32 {
        c.write(write_op(
            "t1",
            format!("seed-{i}").as_bytes(),
            &vec![1u8; 256 << 10],
            vec![],
        ))
        .await
        .unwrap();
    }
    // 500 callers, each on its own connection (so HTTP/2 flow control is not shared), open a
    // stream and hold it for 8 s without reading a byte.
    let addr = node.grpc_addr;
    let holding = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Connections first (one after another: a burst of 500 connects only measures the
    // kernel's accept queue), then every stream at once.
    let mut conns = Vec::new();
    for _ in 0..500 {
        conns.push(StorageNodeClientBuilder::connect(addr).await);
    }
    let callers: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let holding = holding.clone();
            tokio::spawn(async move {
                let r = s
                    .stream_range(pb::StreamRangeRequest {
                        batch_size: 1,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(held) => {
                        holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(8)).await;
                        holding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(held);
                        Ok(())
                    }
                    Err(e) => Err(format!(
                        "{} ({:?}: {} {:?})",
                        reason(&e),
                        e.code(),
                        e.message(),
                        std::error::Error::source(&e)
                    )),
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // While they sit unread, writes (synced, on blocking threads) and heartbeats keep being
    // served (each within a generous liveness bound: a starved pool would hang them).
    let live = Duration::from_secs(10);
    let before = holding.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..100u32 {
        let w = c.write(write_op(
            "t1",
            format!("during-{i}").as_bytes(),
            b"v",
            vec![],
        ));
        tokio::time::timeout(live, w)
            .await
            .expect("write hung")
            .unwrap();
        tokio::time::timeout(live, c.node_info(pb::NodeInfoRequest {}))
            .await
            .expect("heartbeat hung")
            .unwrap();
    }
    let health = tokio::time::timeout(live, http_get(node.admin_addr, "/health"))
        .await
        .expect("health hung");
    assert!(health.contains("usage_percent"), "{health}");
    // The flood overlapped the writes: streams were held before and after them.
    let after = holding.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        before > 0 && after > 0,
        "held streams: {before} before, {after} after the writes"
    );
    let mut refused = 0;
    for c in callers {
        match c.await.unwrap() {
            Ok(()) => {}
            Err(r) => {
                assert!(r.starts_with("OVERLOADED "), "{r}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "every stream was admitted: the pool is not bounded"
    );
    let m = http_get(node.admin_addr, "/metrics").await;
    assert!(metric(&m, "streams_stalled_total") >= 1.0, "{m}");
    assert!(metric(&m, "scans_refused_total") >= 1.0);
    let mut s = c
        .stream_range(pb::StreamRangeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(b) = s.message().await.unwrap() {
        n += b.entries.len();
        if b.done {
            break;
        }
    }
    assert_eq!(n, 164, "a stream after the flood sees every record");
    node.shutdown().await;
}

#[tokio::test]
async fn a_delete_obeys_the_breaker_by_its_real_size() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Fixed(Arc<AtomicU64>);
    impl pairdb_storage_node::disk::UsageSource for Fixed {
        fn sample(&self) -> std::io::Result<pairdb_storage_node::disk::DiskUsage> {
            let total = 1u64 << 30;
            let used = total * self.0.load(Ordering::SeqCst) / 100;
            Ok(pairdb_storage_node::disk::DiskUsage {
                total_bytes: total,
                available_bytes: total - used,
            })
        }
    }
    let pct = Arc::new(AtomicU64::new(10));
    let dir = tempfile::tempdir().unwrap();
    let (node, c) = start(config(dir.path(), "n1"), Some(Box::new(Fixed(pct.clone())))).await;
    let mut c = big_client(&c);
    c.write(write_op("t1", b"k", b"v", vec![])).await.unwrap();
    pct.store(97, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A plain delete passes the breaker.
    let small = pb::WriteOp {
        tombstone: true,
        ..write_op("t1", b"k", b"", vec![])
    };
    c.write(small).await.unwrap();
    // A "delete" whose tombstone carries a 200 KB context is a large write: refused.
    let mut vv = VersionVector::new();
    for i in 0..4000u64 {
        vv.raise(&Actor::new(format!("node-{i:06}"), i), 1);
    }
    let big = pb::WriteOp {
        tombstone: true,
        ..write_op("t1", b"k2", b"", encode_internal(&vv))
    };
    let err = c.write(big).await.unwrap_err();
    assert_eq!(reason(&err), "DISK_FULL", "{}", err.message());
    node.shutdown().await;
}

/// A client on its own connection.
struct StorageNodeClientBuilder;

impl StorageNodeClientBuilder {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient::connect(
            format!("http://{addr}"),
        )
        .await
        .unwrap()
    }
}
