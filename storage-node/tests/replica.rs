//! Engine and replica-identity behaviour through the real gRPC API: durability across restart,
//! siblings from concurrent coordinated writes, supersession by context, and epochs that never
//! let a dot be reused.
#![allow(clippy::unwrap_used)]

mod support;

use pairdb_common::api::pb;
use support::*;

#[tokio::test]
async fn data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    for i in 0..100u32 {
        c.write(write_op(
            "t1",
            format!("k{i}").as_bytes(),
            &i.to_be_bytes(),
            vec![],
        ))
        .await
        .unwrap();
    }
    c.write(write_op("t1", b"empty", b"", vec![]))
        .await
        .unwrap();
    let epoch = node.node.store.identity().actor().epoch;
    node.shutdown().await;

    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    assert_eq!(
        node.node.store.identity().actor().epoch,
        epoch,
        "same directory keeps its epoch"
    );
    for i in 0..100u32 {
        let r = c
            .read(key_ref("t1", format!("k{i}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(values(&r), vec![i.to_be_bytes().to_vec()]);
    }
    let r = c.read(key_ref("t1", b"empty")).await.unwrap().into_inner();
    assert!(r.exists);
    assert_eq!(
        values(&r),
        vec![Vec::<u8>::new()],
        "an empty value is a value"
    );
    let r = c.read(key_ref("t1", b"never")).await.unwrap().into_inner();
    assert!(!r.exists);
    node.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_with_one_context_become_siblings_and_a_covering_write_leaves_one() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    c.write(write_op("t1", b"k", b"v0", vec![])).await.unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    let ctx = read_context(&r);

    // Two clients write with the same context, concurrently.
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = tokio::join!(
        c1.write(write_op("t1", b"k", b"from-a", ctx.clone())),
        c2.write(write_op("t1", b"k", b"from-b", ctx.clone())),
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_ne!(
        a.version.unwrap().dot,
        b.version.unwrap().dot,
        "distinct dots"
    );
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"from-a".to_vec(), b"from-b".to_vec()]);

    // Writing back with the context of that read supersedes both.
    let w = c
        .write(write_op("t1", b"k", b"merged", read_context(&r)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.state.unwrap().versions.len(), 1);
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"merged".to_vec()]);

    // A write with no context is concurrent with everything: it becomes a sibling.
    c.write(write_op("t1", b"k", b"blind", vec![]))
        .await
        .unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"blind".to_vec(), b"merged".to_vec()]);
    node.shutdown().await;
}

#[tokio::test]
async fn delete_is_a_tombstone_and_write_after_delete_works() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    c.write(write_op("t1", b"k", b"v", vec![])).await.unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    let mut del = write_op("t1", b"k", b"", read_context(&r));
    del.tombstone = true;
    c.write(del).await.unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert!(r.exists, "the tombstone is stored");
    assert!(values(&r).is_empty(), "no live value");
    c.write(write_op("t1", b"k", b"again", read_context(&r)))
        .await
        .unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"again".to_vec()]);
    node.shutdown().await;
}

#[tokio::test]
async fn idempotent_retry_does_not_create_a_second_sibling() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let mut op = write_op("t1", b"k", b"v", vec![]);
    op.idempotency_key = "req-42".into();
    let first = c.write(op.clone()).await.unwrap().into_inner();
    let retry = c.write(op).await.unwrap().into_inner();
    assert!(retry.deduplicated);
    assert_eq!(first.version.unwrap().dot, retry.version.unwrap().dot);
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r).len(), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn ttl_expires_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let mut op = write_op("t1", b"k", b"v", vec![]);
    op.ttl_seconds = 1;
    c.write(op).await.unwrap();
    let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
    assert_eq!(values(&r).len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = c.read(key_ref("t1", b"k")).await.unwrap().into_inner();
        if values(&r).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    node.shutdown().await;
}

/// Wiping the data directory gives the node a new epoch: every dot it mints afterwards belongs
/// to a new actor, so no dot minted before the wipe is ever reused.
#[tokio::test]
async fn wiped_directory_gets_a_new_epoch_and_never_reuses_a_dot() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let mut before = Vec::new();
    for i in 0..20u32 {
        let w = c
            .write(write_op("t1", format!("k{i}").as_bytes(), b"v", vec![]))
            .await
            .unwrap();
        before.push(w.into_inner().version.unwrap().dot.unwrap());
    }
    let old_epoch = node.node.store.identity().actor().epoch;
    node.shutdown().await;
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();

    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let new_epoch = node.node.store.identity().actor().epoch;
    assert!(
        new_epoch > old_epoch,
        "new epoch {new_epoch} after wipe (was {old_epoch})"
    );
    for i in 0..20u32 {
        let w = c
            .write(write_op("t1", format!("k{i}").as_bytes(), b"v2", vec![]))
            .await
            .unwrap();
        let d = w.into_inner().version.unwrap().dot.unwrap();
        assert!(!before.iter().any(|b| b == &d), "dot {d:?} reused");
        assert_eq!(d.epoch, new_epoch);
    }
    node.shutdown().await;
}

/// A database restored from a snapshot is detected (its counter is behind identity.json) and
/// the node takes a new epoch, so dots minted after the snapshot are not minted again.
#[tokio::test]
async fn restored_snapshot_gets_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    c.write(write_op("t1", b"a", b"1", vec![])).await.unwrap();
    let snap = http_post(node.admin_addr, "/api/v1/snapshot", serde_json::json!({})).await;
    let snap_path = std::path::PathBuf::from(snap["path"].as_str().unwrap());
    assert!(
        snap_path.join("CURRENT").exists(),
        "checkpoint written: {snap}"
    );
    let after = c
        .write(write_op("t1", b"b", b"2", vec![]))
        .await
        .unwrap()
        .into_inner();
    let old_epoch = node.node.store.identity().actor().epoch;
    node.shutdown().await;

    // Restore: replace db/ with the snapshot, keep identity.json.
    let db = dir.path().join("db");
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::rename(&snap_path, &db).unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    assert!(node.node.store.identity().actor().epoch > old_epoch);
    let r = c.read(key_ref("t1", b"a")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"1".to_vec()], "snapshot data restored");
    let w = c
        .write(write_op("t1", b"b", b"3", vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(w.version.unwrap().dot, after.version.unwrap().dot);
    node.shutdown().await;
}

#[tokio::test]
async fn merging_a_remote_state_keeps_both_histories() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (na, mut a) = start(config(dir_a.path(), "na"), None).await;
    let (nb, mut b) = start(config(dir_b.path(), "nb"), None).await;
    let wa = a
        .write(write_op("t1", b"k", b"on-a", vec![]))
        .await
        .unwrap()
        .into_inner();
    b.write(write_op("t1", b"k", b"on-b", vec![]))
        .await
        .unwrap();
    let applied = b
        .apply(pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
            state: wa.state.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.changed);
    assert_eq!(applied.sibling_count, 2);
    // Applying the same state again is a no-op (idempotent merge).
    let again = b
        .apply(pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
            state: wa.state,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    na.shutdown().await;
    nb.shutdown().await;
}

/// The tenant's sibling limits travel with the write: above `sibling_warn` the write is
/// counted; at `max_siblings` the oldest are folded by LWW and counted.
#[tokio::test]
async fn sibling_warn_and_cap_from_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    for i in 0..5u8 {
        let mut op = write_op("t1", b"hot", &[b'a' + i], vec![]);
        op.sibling_warn = 2;
        op.max_siblings = 3;
        c.write(op).await.unwrap();
    }
    let r = c.read(key_ref("t1", b"hot")).await.unwrap().into_inner();
    assert_eq!(
        values(&r),
        vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()],
        "the oldest two were folded"
    );
    let m = http_get(node.admin_addr, "/metrics").await;
    assert_eq!(metric(&m, "sibling_cap_folds_total"), 2.0);
    assert_eq!(
        metric(&m, "sibling_warnings_total"),
        3.0,
        "writes 3, 4 and 5 left more than 2 siblings"
    );
    node.shutdown().await;
}
