//! The inline write path (small BatchWrite / BatchApply run on the async workers when
//! `sync_writes` is off) against the blocking one (`sync_writes` on): under concurrent batches
//! of coordinated writes and merges of another replica's states on the same keys, every
//! acknowledged write is in the key's state after a restart, no dot is minted twice, and
//! both paths end with the same sibling sets.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use pairdb_common::api::pb;
use support::*;

const KEYS: usize = 8;
const TASKS: usize = 8;
const BATCHES: usize = 10;

fn op(key: usize, value: String) -> pb::WriteOp {
    pb::WriteOp {
        max_siblings: 1000,
        ..write_op("t", format!("k{key}").as_bytes(), value.as_bytes(), vec![])
    }
}

/// Runs the workload against a node with `sync_writes`; returns per key the live values and
/// the number of versions read back after a restart.
async fn run(sync_writes: bool) -> Vec<BTreeSet<Vec<u8>>> {
    let dir = tempfile::tempdir().unwrap();
    let remote_dir = tempfile::tempdir().unwrap();
    let cfg = pairdb_storage_node::Config {
        sync_writes,
        ..config(dir.path(), "inline")
    };
    let (node, client) = start(cfg.clone(), None).await;
    let (remote, mut rc) = start(config(remote_dir.path(), "remote"), None).await;

    // The remote replica's states, minted first, merged into the node during the writes.
    let mut remote_states = Vec::new();
    for k in 0..KEYS {
        let r = rc
            .write(op(k, format!("remote-{k}")))
            .await
            .unwrap()
            .into_inner();
        remote_states.push(pb::KeyVersions {
            tenant_id: "t".into(),
            key: format!("k{k}").into_bytes(),
            state: r.state,
            origin: pb::ApplyOrigin::Replica as i32,
            ..Default::default()
        });
    }

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut c = client.clone();
        let states = remote_states.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..BATCHES {
                let ops: Vec<pb::WriteOp> = (0..KEYS)
                    .map(|k| op(k, format!("t{t}-b{b}-k{k}")))
                    .collect();
                let expect: Vec<String> = ops
                    .iter()
                    .map(|o| String::from_utf8(o.value.clone()).unwrap())
                    .collect();
                let r = c
                    .batch_write(pb::BatchWriteRequest { ops })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.results.len(), KEYS);
                for (res, v) in r.results.iter().zip(expect) {
                    assert!(res.error.is_none(), "{:?}", res.error);
                    let dot = res.version.as_ref().unwrap().dot.clone().unwrap();
                    acked.push((v, (dot.node_id, dot.epoch, dot.counter)));
                }
                if b % 3 == t % 3 {
                    let a = c
                        .batch_apply(pb::BatchApplyRequest {
                            items: states.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(a.results.iter().all(|x| x.error.is_none()));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let dots: BTreeSet<_> = acked.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(dots.len(), acked.len(), "a dot was minted twice");

    // Everything acknowledged survives a restart of the node.
    node.shutdown().await;
    let (node, mut client) = start(cfg, None).await;
    let mut per_key = Vec::new();
    for k in 0..KEYS {
        let r = client
            .read(key_ref("t", format!("k{k}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        let got: BTreeSet<Vec<u8>> = values(&r).into_iter().collect();
        let mut want: BTreeSet<Vec<u8>> = acked
            .iter()
            .filter(|(v, _)| v.ends_with(&format!("-k{k}")))
            .map(|(v, _)| v.clone().into_bytes())
            .collect();
        want.insert(format!("remote-{k}").into_bytes());
        assert_eq!(got.len(), TASKS * BATCHES + 1, "key k{k}");
        assert_eq!(got, want, "key k{k}: lost or phantom versions");
        per_key.push(got);
    }
    node.shutdown().await;
    remote.shutdown().await;
    per_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_blocking_writes_keep_every_acknowledged_version() {
    let inline = run(false).await;
    let blocking = run(true).await;
    assert_eq!(inline, blocking);
}

/// While a streamed range is being ingested (a fence is up) writes leave the async workers
/// (a write into the range may wait on the ingest's gate); they still succeed.
#[tokio::test]
async fn writes_go_to_the_blocking_pool_while_a_fence_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "fenced"), None).await;
    let store = node.node.store.clone();
    assert!(!store.fenced());
    let fence = store.open_fence(pairdb_common::token::TokenRange::FULL);
    assert!(store.fenced());
    let r = c.write(op(0, "during".into())).await.unwrap().into_inner();
    assert!(r.error.is_none());
    drop(fence);
    assert!(!store.fenced());
    node.shutdown().await;
}
