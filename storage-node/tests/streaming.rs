//! Range streaming and digests: 10k keys spread over the ring; a sub-range streamed into a second
//! node makes their digests for it equal; resuming a broken stream from a middle key gives the
//! same result as one unbroken stream.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;

use pairdb_common::api::pb;
use pairdb_common::token::{self, TokenRange};
use support::*;
use tokio_stream::StreamExt;

fn range_pb(r: TokenRange) -> Option<pb::TokenRange> {
    Some(pb::TokenRange {
        start: r.start,
        end: r.end,
    })
}

async fn stream_all(
    c: &mut Client,
    range: TokenRange,
    resume_after: Vec<u8>,
    limit_batches: Option<usize>,
) -> (Vec<pb::StreamEntry>, Vec<u8>) {
    let mut s = c
        .stream_range(pb::StreamRangeRequest {
            range: range_pb(range),
            resume_after,
            batch_size: 300,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let mut last = Vec::new();
    let mut batches = 0;
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        assert_eq!(b.corrupt_skipped, 0);
        for e in &b.entries {
            assert_eq!(pairdb_common::framing::stored_crc(&e.record), Some(e.crc32));
            assert!(range.contains(e.token), "entry outside the range");
        }
        out.extend(b.entries);
        last = b.last_data_key;
        batches += 1;
        if limit_batches == Some(batches) {
            break;
        }
    }
    (out, last)
}

async fn ingest(c: &mut Client, entries: &[pb::StreamEntry]) {
    for chunk in entries.chunks(500) {
        let items = chunk
            .iter()
            .map(|e| {
                let state = pairdb_common::framing::decode_state(&e.record).unwrap();
                pb::KeyVersions {
                    tenant_id: e.tenant_id.clone(),
                    key: e.key.to_vec(),
                    state: Some(pairdb_common::convert::state_to_pb(&state)),
                    origin: pb::ApplyOrigin::Stream as i32,
                    ..Default::default()
                }
            })
            .collect();
        let r = c
            .batch_apply(pb::BatchApplyRequest { items })
            .await
            .unwrap()
            .into_inner();
        assert!(r.results.iter().all(|x| x.error.is_none()));
    }
}

async fn digest(c: &mut Client, range: TokenRange) -> pb::RangeDigestResponse {
    c.range_digest(pb::RangeDigestRequest {
        range: range_pb(range),
        buckets: 32,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn stream_sub_range_into_second_node_then_digests_match_and_resume_is_exact() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (na, mut a) = start(config(da.path(), "src"), None).await;
    let (nb, mut b) = start(config(db.path(), "dst"), None).await;
    let n = 10_000u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| {
                write_op(
                    if i % 2 == 0 { "ta" } else { "tb" },
                    format!("key-{i}").as_bytes(),
                    format!("v{i}").as_bytes(),
                    vec![],
                )
            })
            .collect();
        let r = a
            .batch_write(pb::BatchWriteRequest { ops })
            .await
            .unwrap()
            .into_inner();
        assert!(r.results.iter().all(|x| x.error.is_none()));
    }

    // A wrapping sub-range: roughly the last quarter of the ring plus the first eighth.
    let range = TokenRange::new(u64::MAX / 4 * 3, u64::MAX / 8);
    let expected = (0..n)
        .filter(|i| {
            range.contains(token::token(
                if i % 2 == 0 { "ta" } else { "tb" },
                format!("key-{i}").as_bytes(),
            ))
        })
        .count();
    let (entries, _) = stream_all(&mut a, range, vec![], None).await;
    assert_eq!(entries.len(), expected);
    assert!(
        expected > 3000 && expected < 4500,
        "range holds {expected} keys"
    );

    // The whole ring's digest differs before ingesting, the sub-range's matches after.
    assert_ne!(
        digest(&mut a, range).await.buckets,
        digest(&mut b, range).await.buckets
    );
    ingest(&mut b, &entries).await;
    let (dga, dgb) = (digest(&mut a, range).await, digest(&mut b, range).await);
    assert_eq!(dga.buckets, dgb.buckets);
    assert_eq!(
        dga.buckets.iter().map(|x| x.keys).sum::<u64>(),
        expected as u64
    );
    assert_ne!(
        digest(&mut a, TokenRange::FULL).await.buckets,
        digest(&mut b, TokenRange::FULL).await.buckets
    );

    // A later change on one side shows up in exactly one bucket.
    let (changed_tenant, changed_key) = (&entries[17].tenant_id, entries[17].key.clone());
    b.write(write_op(changed_tenant, &changed_key, b"changed", vec![]))
        .await
        .unwrap();
    let dgb2 = digest(&mut b, range).await;
    let differing = dga
        .buckets
        .iter()
        .zip(&dgb2.buckets)
        .filter(|(x, y)| x.hash != y.hash)
        .count();
    assert_eq!(differing, 1);

    // Resume: stop after 3 batches, continue from the last key: same entries as unbroken.
    let (first, last) = stream_all(&mut a, range, vec![], Some(3)).await;
    assert_eq!(first.len(), 900);
    let (rest, _) = stream_all(&mut a, range, last, None).await;
    let keys = |v: &[pb::StreamEntry]| {
        v.iter()
            .map(|e| (e.tenant_id.clone(), e.key.clone()))
            .collect::<Vec<_>>()
    };
    let mut resumed = keys(&first);
    resumed.extend(keys(&rest));
    assert_eq!(resumed, keys(&entries));

    // Drop the range on the destination: its digest is empty again.
    let dropped = b
        .drop_range(pb::DropRangeRequest {
            range: range_pb(range),
            whole_ring: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dropped.records, expected as u64);
    assert!(
        digest(&mut b, range)
            .await
            .buckets
            .iter()
            .all(|x| x.keys == 0)
    );
    na.shutdown().await;
    nb.shutdown().await;
}

/// A descent session answers every level from the record hashes of one scan, exactly as
/// scanning each level would (whole ring, a wrapping range, sub-ranges, tenant filter).
#[tokio::test]
async fn session_digests_equal_scanned_digests_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let ops: Vec<_> = (0..2000u32)
        .map(|i| {
            write_op(
                if i % 3 == 0 { "ta" } else { "tb" },
                format!("key-{i}").as_bytes(),
                b"v",
                vec![],
            )
        })
        .collect();
    for chunk in ops.chunks(500) {
        c.batch_write(pb::BatchWriteRequest {
            ops: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
    let store = node.node.store.clone();
    let wrapping = TokenRange::new(u64::MAX - (1 << 62), 1 << 62);
    for scope in [
        TokenRange::FULL,
        wrapping,
        TokenRange::new(1 << 60, 1 << 63),
    ] {
        for tenants in [HashSet::new(), HashSet::from(["ta".to_string()])] {
            let subs = scope.split(8);
            let levels: Vec<Vec<(TokenRange, u32)>> = vec![
                vec![(scope, 1)],
                vec![(scope, 64)],
                subs.iter().map(|r| (*r, 16)).collect(),
                vec![(subs[0], 3), (subs[7], 5)],
            ];
            for (i, level) in levels.iter().enumerate() {
                let scanned = store.repair_digest(level, &tenants, None).unwrap();
                let cached = store
                    .repair_digest(level, &tenants, Some(("s", scope)))
                    .unwrap();
                assert_eq!(scanned, cached, "scope {scope}, level {i}");
                assert!(scanned.0.iter().any(|b| b.keys > 0));
            }
        }
    }
}

/// A tenant-scoped drop deletes exactly that tenant's records of the range, across more keys
/// than one delete batch, and leaves other tenants' and other ranges' records.
#[tokio::test]
async fn a_tenant_range_drop_leaves_other_tenants_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(config(dir.path(), "n1"), None).await;
    let n = 2 * pairdb_storage_node::store::DROP_BATCH_KEYS as u32 + 1000;
    let ops: Vec<_> = (0..n)
        .map(|i| {
            write_op(
                if i % 2 == 0 { "ta" } else { "tb" },
                format!("key-{i}").as_bytes(),
                b"v",
                vec![],
            )
        })
        .collect();
    for chunk in ops.chunks(500) {
        c.batch_write(pb::BatchWriteRequest {
            ops: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
    let store = node.node.store.clone();
    let count = |tenant: &str, range: TokenRange| {
        let mut keys = 0u64;
        let tenants = HashSet::from([tenant.to_string()]);
        for b in store
            .repair_digest(&[(range, 1)], &tenants, None)
            .unwrap()
            .0
        {
            keys += b.keys;
        }
        keys
    };
    // The lower half of the ring: about half of each tenant's keys.
    let lower = TokenRange::new(0, 1 << 63);
    let upper = TokenRange::new(1 << 63, 0);
    let (ta_lower, ta_upper, tb_lower) =
        (count("ta", lower), count("ta", upper), count("tb", lower));
    assert!(ta_lower > 0 && ta_upper > 0 && tb_lower > 0);
    let dropped = c
        .drop_tenant_range(pb::DropTenantRangeRequest {
            range: range_pb(lower),
            whole_ring: false,
            tenant_id: "ta".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dropped.records, ta_lower);
    assert_eq!(count("ta", lower), 0);
    assert_eq!(count("ta", upper), ta_upper);
    assert_eq!(count("tb", lower), tb_lower);
    // The whole ring, more keys than one batch.
    let all = c
        .drop_tenant_range(pb::DropTenantRangeRequest {
            range: Some(pb::TokenRange { start: 0, end: 0 }),
            whole_ring: true,
            tenant_id: "tb".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.records, u64::from(n / 2));
    assert!(all.records > pairdb_storage_node::store::DROP_BATCH_KEYS as u64);
    assert_eq!(count("tb", TokenRange::FULL), 0);
    assert_eq!(count("ta", TokenRange::FULL), ta_upper);
    node.shutdown().await;
}
