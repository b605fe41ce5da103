//! Streamed records applied as ingested tables (`Store::apply_streamed`): keys new to the node go
//! in as one table, keys it holds are merged, and the result is exactly the merge of both sides;
//! a write that lands on a key of the table while the table is built is kept; the ingested data
//! survives a restart; applying the same records again changes nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use pairdb_common::token::{self, TokenRange};
use pairdb_common::version::{ConflictPolicy, KeyState};
use pairdb_storage_node::metrics::Metrics;
use pairdb_storage_node::server;
use pairdb_storage_node::store::{Incoming, Origin, Store, WriteCmd};

fn open(dir: &std::path::Path, id: &str) -> Arc<Store> {
    let cfg = support::config(dir, id);
    server::open_store(&cfg, Arc::new(Metrics::new(id)), None)
        .unwrap()
        .0
}

fn put(store: &Store, key: &str, value: Vec<u8>) {
    for r in store.write_many(
        vec![WriteCmd {
            tenant: "t".into(),
            key: key.as_bytes().to_vec(),
            value,
            tombstone: false,
            context: Default::default(),
            ttl_seconds: 0,
            idempotency_key: String::new(),
            policy: ConflictPolicy::Siblings,
            max_siblings: 0,
            max_value_bytes: 0,
            sibling_warn: 0,
            max_state_bytes: 0,
        }],
        usize::MAX,
    ) {
        r.unwrap();
    }
}

fn load(store: &Store, keys: u32, value_bytes: usize) {
    for i in 0..keys {
        put(store, &format!("k{i}"), vec![(i % 251) as u8; value_bytes]);
    }
}

/// Every record of `store`, as a stream delivers them (data-key order).
fn stream(store: &Store) -> Vec<Incoming> {
    let mut out = Vec::new();
    store
        .stream_range(
            TokenRange::FULL,
            &[],
            1000,
            0,
            &Default::default(),
            &|| false,
            &mut |b| {
                out.extend(b.entries.into_iter().map(|e| Incoming {
                    data_key: token::data_key(&e.tenant, &e.key),
                    tenant: e.tenant,
                    key: e.key,
                    record: e.record.into(),
                }));
                true
            },
        )
        .unwrap();
    out
}

fn state(store: &Store, key: &str) -> Option<KeyState> {
    store.read("t", key.as_bytes()).unwrap()
}

#[test]
fn new_keys_are_ingested_held_keys_merged_and_the_result_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("a"), "a");
    load(&source, 10_000, 300);
    let target_dir = dir.path().join("b");
    let target = open(&target_dir, "b");
    // The target holds its own, concurrent versions of k0..k999 and a key the source lacks.
    for i in 0..1000 {
        put(&target, &format!("k{i}"), b"target-side".to_vec());
    }
    put(&target, "only-target", b"mine".to_vec());
    let before: Vec<Option<KeyState>> = (0..1000)
        .map(|i| state(&target, &format!("k{i}")))
        .collect();

    let fence = target.open_fence(TokenRange::FULL);
    let reply = target
        .apply_streamed(&fence, stream(&source), Origin::Stream)
        .unwrap();
    drop(fence);
    assert_eq!(
        reply.ingested, 9000,
        "the keys new to the target go in as a table"
    );
    assert_eq!(
        reply.changed, 10_000,
        "merges with the target's versions change it too"
    );

    let check = |target: &Store| {
        for i in 0..10_000u32 {
            let key = format!("k{i}");
            let mut expected = state(&source, &key).unwrap();
            if let Some(Some(mine)) = before.get(i as usize) {
                expected.merge(mine);
                assert_eq!(expected.versions().len(), 2, "{key}: both sides' versions");
            }
            assert_eq!(state(target, &key).unwrap(), expected, "{key}");
        }
        assert!(state(target, "only-target").is_some());
    };
    check(&target);

    // Ingested tables are durable: reopen the target and look again.
    drop(target);
    let target = open(&target_dir, "b");
    check(&target);

    // The same records again change nothing, and none of them is ingested (all exist now).
    let fence = target.open_fence(TokenRange::FULL);
    let again = target
        .apply_streamed(&fence, stream(&source), Origin::Stream)
        .unwrap();
    assert_eq!(again.changed, 0);
    assert_eq!(again.ingested, 0);
}

#[test]
fn a_write_landing_on_a_table_key_before_the_ingest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("a"), "a");
    load(&source, 5000, 300);
    let target = open(&dir.path().join("b"), "b");
    let fence = target.open_fence(TokenRange::FULL);
    let raced = std::sync::atomic::AtomicBool::new(false);
    let reply = target
        .apply_streamed_with(&fence, stream(&source), Origin::Stream, &|| {
            // The table is written and not yet in: a pending-replica write arrives for k42.
            if !raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                put(&target, "k42", b"arrived-meanwhile".to_vec());
            }
        })
        .unwrap();
    assert!(raced.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        reply.ingested, 4999,
        "the table is rebuilt without the written key"
    );
    assert_eq!(reply.changed, 5000);
    let k42 = state(&target, "k42").unwrap();
    let values: Vec<&[u8]> = k42.versions().iter().map(|v| v.value.as_slice()).collect();
    assert_eq!(
        values.len(),
        2,
        "both the write and the streamed version: {values:?}"
    );
    assert!(values.contains(&b"arrived-meanwhile".as_slice()));
    assert_eq!(state(&target, "k7").unwrap(), state(&source, "k7").unwrap());
}

#[test]
fn a_small_batch_is_merged_not_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("a"), "a");
    load(&source, 100, 100);
    let target = open(&dir.path().join("b"), "b");
    let fence = target.open_fence(TokenRange::FULL);
    let reply = target
        .apply_streamed(&fence, stream(&source), Origin::Stream)
        .unwrap();
    assert_eq!((reply.changed, reply.ingested), (100, 0));
    assert_eq!(state(&target, "k5").unwrap(), state(&source, "k5").unwrap());
}
