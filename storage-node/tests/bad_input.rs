//! Bad input over gRPC gets the documented SPEC §5 codes, never a panic or a stored record.
#![allow(clippy::unwrap_used)]

mod support;

use pairdb_common::api::pb;
use support::*;
use tonic::Code;

#[tokio::test]
async fn bad_input_gets_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let cases: Vec<(pb::WriteOp, Code, &str)> = vec![
        (
            write_op("t1", b"", b"v", vec![]),
            Code::InvalidArgument,
            "INVALID_KEY",
        ),
        (
            write_op("t1", &[b'k'; 1025], b"v", vec![]),
            Code::InvalidArgument,
            "KEY_TOO_LARGE",
        ),
        (
            write_op("t1", b"a\0b", b"v", vec![]),
            Code::InvalidArgument,
            "INVALID_KEY",
        ),
        (
            write_op("t1", b"a\x01b", b"v", vec![]),
            Code::InvalidArgument,
            "INVALID_KEY",
        ),
        (
            write_op("Bad Tenant", b"k", b"v", vec![]),
            Code::InvalidArgument,
            "INVALID_TENANT",
        ),
        (
            write_op("", b"k", b"v", vec![]),
            Code::InvalidArgument,
            "INVALID_TENANT",
        ),
        (
            write_op("t1", b"k", &vec![0u8; 1024 * 1024 + 1], vec![]),
            Code::InvalidArgument,
            "VALUE_TOO_LARGE",
        ),
        (
            write_op("t1", b"k", b"v", b"garbage-context".to_vec()),
            Code::InvalidArgument,
            "INVALID_CONTEXT",
        ),
        // A context token with an unknown format version byte.
        (
            write_op("t1", b"k", b"v", vec![0x02, 0, 0, 0, 0]),
            Code::InvalidArgument,
            "INVALID_CONTEXT",
        ),
    ];
    for (op, code, want) in cases {
        let err = c.write(op).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, want),
            "{}",
            err.message()
        );
        use tonic_types::StatusExt;
        let info = err.get_details_error_info().unwrap();
        assert!(info.metadata.contains_key("code"));
    }
    // A tenant limit below the default applies; above the hard cap it is clamped to 16 MiB.
    let mut op = write_op("t1", b"k", &[0u8; 11], vec![]);
    op.max_value_bytes = 10;
    assert_eq!(reason(&c.write(op).await.unwrap_err()), "VALUE_TOO_LARGE");

    // Reads validate too.
    let err = c.read(key_ref("t1", b"")).await.unwrap_err();
    assert_eq!(reason(&err), "INVALID_KEY");
    let err = c.read(key_ref("no way", b"k")).await.unwrap_err();
    assert_eq!(reason(&err), "INVALID_TENANT");

    // A version without a dot in an Apply is rejected as INVALID_ARGUMENT.
    let err = c
        .apply(pb::KeyVersions {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
            state: Some(pb::KeyState {
                versions: vec![pb::Version::default()],
                context: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_ARGUMENT");

    // Batches answer per item: one bad op does not fail its neighbours.
    let r = c
        .batch_write(pb::BatchWriteRequest {
            ops: vec![
                write_op("t1", b"ok", b"v", vec![]),
                write_op("t1", b"", b"v", vec![]),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].error.is_none());
    assert_eq!(r.results[1].error.as_ref().unwrap().reason, "INVALID_KEY");
    assert_eq!(r.results[1].error.as_ref().unwrap().code, 1005);
    let err = c
        .batch_write(pb::BatchWriteRequest {
            ops: vec![write_op("t1", b"k", b"v", vec![]); 1001],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_ARGUMENT");

    // Nothing bad was stored; the node still serves.
    let report = http_post(
        node.admin_addr,
        "/api/v1/integrity/scan-all",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(report["scanned"], 1);
    assert_eq!(report["corrupt_count"], 0);
    node.shutdown().await;
}

#[tokio::test]
async fn maintenance_mode_refuses_clients_but_keeps_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    c.write(write_op("t1", b"k", b"v", vec![])).await.unwrap();
    http_post(
        node.admin_addr,
        "/api/v1/maintenance/enable",
        serde_json::json!({}),
    )
    .await;
    let err = c.read(key_ref("t1", b"k")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(reason(&err), "NODE_NOT_READY");
    assert_eq!(
        c.write(write_op("t1", b"k2", b"v", vec![]))
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    let mut s = c
        .stream_range(pb::StreamRangeRequest {
            range: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(b) = tokio_stream::StreamExt::next(&mut s).await {
        n += b.unwrap().entries.len();
    }
    assert_eq!(n, 1, "internal streaming keeps working in maintenance");
    let info = c
        .node_info(pb::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.maintenance);
    http_post(
        node.admin_addr,
        "/api/v1/maintenance/disable",
        serde_json::json!({}),
    )
    .await;
    c.read(key_ref("t1", b"k")).await.unwrap();
    node.shutdown().await;
}
