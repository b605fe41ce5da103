//! Corruption detection and repair: a flipped byte answers CHECKSUM_FAILED (DATA_LOSS), other
//! keys keep working, the metric counts it, the integrity scan lists exactly that key, and
//! Repair restores it. Never a panic.
#![allow(clippy::unwrap_used)]

mod support;

use pairdb_common::api::pb;
use pairdb_common::token;
use pairdb_storage_node::engine::{BatchOp, Space};
use support::*;
use tonic::Code;

#[tokio::test]
async fn flipped_record_byte_is_detected_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let mut good_state = None;
    for i in 0..50u32 {
        let w = c
            .write(write_op(
                "t1",
                format!("k{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
                vec![],
            ))
            .await
            .unwrap();
        if i == 7 {
            good_state = w.into_inner().state;
        }
    }
    let before = metric(
        &http_get(node.admin_addr, "/metrics").await,
        "checksum_failures_total",
    );

    // Flip one byte of k7's stored record through the raw engine.
    let engine = node.node.store.engine().clone();
    let dk = token::data_key("t1", b"k7");
    let mut rec = engine.get(Space::Data, &dk).unwrap().unwrap();
    let last = rec.len() - 3;
    rec[last] ^= 0x01;
    engine
        .write(vec![BatchOp::Put(Space::Data, dk, rec)], true)
        .unwrap();

    let err = c.read(key_ref("t1", b"k7")).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(reason(&err), "CHECKSUM_FAILED");
    // A coordinated write onto the corrupt record is refused too, never merged into it.
    let err = c
        .write(write_op("t1", b"k7", b"x", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    // Other keys are still served.
    for i in [0u32, 6, 8, 49] {
        let r = c
            .read(key_ref("t1", format!("k{i}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(values(&r), vec![format!("value-{i}").into_bytes()]);
    }
    let after = metric(
        &http_get(node.admin_addr, "/metrics").await,
        "checksum_failures_total",
    );
    assert!(
        after >= before + 2.0,
        "checksum_failures_total {before} -> {after}"
    );

    // The integrity scan lists exactly that key.
    let report = http_post(
        node.admin_addr,
        "/api/v1/integrity/scan-all",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(report["scanned"], 50);
    assert_eq!(report["corrupt_count"], 1, "{report}");
    assert_eq!(report["corrupt"][0]["tenant_id"], "t1");
    assert_eq!(report["corrupt"][0]["key"], "k7");

    // Repair with the good state (as a coordinator would fetch from another replica).
    let r = c
        .repair(pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"k7".to_vec(),
            state: good_state,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    let r = c.read(key_ref("t1", b"k7")).await.unwrap().into_inner();
    assert_eq!(values(&r), vec![b"value-7".to_vec()]);
    let report = http_post(
        node.admin_addr,
        "/api/v1/integrity/scan-all",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(report["corrupt_count"], 0);
    let m = http_get(node.admin_addr, "/metrics").await;
    assert!(metric(&m, "data_recovery_operations_total") >= 1.0);
    assert!(metric(&m, "corrupted_entries_total") >= 1.0);
    node.shutdown().await;
}

/// An unknown record format version is corruption too: reported, not a panic.
#[tokio::test]
async fn unknown_format_version_is_checksum_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    c.write(write_op("t1", b"k", b"v", vec![])).await.unwrap();
    let engine = node.node.store.engine().clone();
    let dk = token::data_key("t1", b"k");
    let mut rec = engine.get(Space::Data, &dk).unwrap().unwrap();
    rec[0] = 0x7f;
    engine
        .write(vec![BatchOp::Put(Space::Data, dk, rec)], true)
        .unwrap();
    let err = c.read(key_ref("t1", b"k")).await.unwrap_err();
    assert_eq!(reason(&err), "CHECKSUM_FAILED");
    assert!(err.message().contains("format"), "{}", err.message());
    node.shutdown().await;
}

/// A byte flipped inside an SST file on disk is caught by RocksDB's block checksum (read
/// checksum verification is on): the read answers DATA_LOSS, keys in other files are served.
#[tokio::test]
async fn flipped_sst_byte_on_disk_answers_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    // A value of pseudo-random bytes (LZ4 stores it literally) so it can be found in the file.
    let mut x = 0x9e3779b97f4a7c15u64;
    let value: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    c.write(write_op("t1", b"victim", &value, vec![]))
        .await
        .unwrap();
    node.node.store.engine().flush().unwrap();
    let victim_files: std::collections::HashSet<_> = sst_files(dir.path()).into_iter().collect();
    c.write(write_op("t1", b"bystander", b"fine", vec![]))
        .await
        .unwrap();
    node.node.store.engine().flush().unwrap();
    node.shutdown().await;

    let needle = &value[1000..1064];
    let mut flipped = false;
    for f in victim_files {
        let mut bytes = std::fs::read(&f).unwrap();
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[pos + 10] ^= 0xff;
            std::fs::write(&f, bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "value bytes not found in any SST file");

    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let err = c.read(key_ref("t1", b"victim")).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(reason(&err), "CHECKSUM_FAILED");
    let r = c
        .read(key_ref("t1", b"bystander"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(&r), vec![b"fine".to_vec()]);
    let report = http_post(
        node.admin_addr,
        "/api/v1/integrity/scan-all",
        serde_json::json!({}),
    )
    .await;
    assert!(
        report["engine_error"].is_string() || report["corrupt_count"].as_u64().unwrap() > 0,
        "scan must report the damage: {report}"
    );
    node.shutdown().await;
}

fn sst_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("db"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect()
}
