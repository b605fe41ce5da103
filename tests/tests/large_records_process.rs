//! Large records (300 KiB each) through every path that moves records in bulk, against a
//! multi-process cluster on PostgreSQL: hint replay to a node that was down, a bootstrap that
//! streams them, and an anti-entropy repair of a range a replica lost. 512 of these records
//! would not fit one 64 MiB message: every batch must be bounded in bytes, not only in count,
//! or the transfer fails and is retried forever.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_coordinator::meta::ChangeKind;
use pairdb_tests::procs::{ProcCluster, ProcOptions, metrics_text, preload};
use pairdb_tests::*;

const RECORD: usize = 300 << 10;
const DEADLINE: Duration = Duration::from_secs(180);

fn big_client(
    c: pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient<
        tonic::transport::Channel,
    >,
) -> pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient<
    tonic::transport::Channel,
> {
    c.max_decoding_message_size(64 << 20)
}

/// Keys `(tenant t1)` a node holds, by streaming its whole ring.
async fn held_keys(c: &ProcCluster, id: &str) -> Vec<Vec<u8>> {
    let n = c.nodes.iter().find(|n| n.id == id).unwrap();
    let mut s = big_client(n.client().await.unwrap())
        .stream_range(pb::StreamRangeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut keys = Vec::new();
    while let Some(b) = s.message().await.unwrap() {
        keys.extend(b.entries.into_iter().map(|e| e.key.to_vec()));
        if b.done {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_bootstrap_and_repair_move_300_kib_records() {
    let _s = serial_async().await;
    let mut c = ProcCluster::start(ProcOptions::default()).await.unwrap();
    let mut coord = c.coord().await.unwrap();
    let mut acked = preload(&mut coord, "big", 120, RECORD).await.unwrap();

    // Hint replay: n3 misses 40 large writes, comes back, and receives them as hints.
    c.node("n3").kill9().unwrap();
    let down = pairdb_tests::cluster::wait_async("n3 down", DEADLINE, || {
        let mut coord = coord.clone();
        async move {
            let h = coord
                .get_cluster_health(pb::GetClusterHealthRequest {})
                .await
                .unwrap()
                .into_inner();
            h.nodes_down == 1
        }
    });
    down.await.unwrap();
    let missed = preload(&mut coord, "missed", 40, RECORD).await.unwrap();
    pairdb_tests::cluster::wait_async("40 hints for n3", DEADLINE, || async {
        c.meta.count_hints_for("n3").await.unwrap() >= 40
    })
    .await
    .unwrap();
    c.node("n3").start().unwrap();
    pairdb_tests::cluster::wait_async("hints to n3 delivered", DEADLINE, || async {
        c.meta.count_hints_for("n3").await.unwrap() == 0
    })
    .await
    .unwrap();
    let on_n3 = held_keys(&c, "n3").await;
    for (k, _) in &missed {
        assert!(
            on_n3.contains(&k.as_bytes().to_vec()),
            "{k} not replayed to n3"
        );
    }
    acked.extend(missed);

    // Bootstrap: n4 joins and streams its ranges of large records.
    let coord_addr = c.coords[0].addr();
    let n4 = c.new_node("n4").unwrap();
    n4.join = Some(coord_addr);
    n4.start().unwrap();
    let n4_admin = n4.admin;
    let change = loop {
        let all = c.meta.list_changes(true).await.unwrap();
        if let Some(ch) = all.iter().find(|ch| ch.kind == ChangeKind::Bootstrap) {
            break ch.change_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.wait_change(&change, "completed", DEADLINE).await.unwrap();
    c.check_quorum_reads(&acked).await.unwrap();
    c.check_digests("n4").await.unwrap();
    let m = metrics_text(n4_admin).await.unwrap();
    let received = m
        .lines()
        .find(|l| l.starts_with("stream_bytes_received_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // About a third of 48 MiB per replica: many 4 MiB stream batches of 300 KiB records.
    assert!(received > (16 << 20) as f64, "n4 received {received} bytes");

    // Repair: n1 loses half its ring; a repair brings every large record back.
    c.wait_cleanup("n4", DEADLINE).await.unwrap();
    let before = held_keys(&c, "n1").await.len();
    let n1 = c.nodes.iter().find(|n| n.id == "n1").unwrap();
    let dropped = n1
        .client()
        .await
        .unwrap()
        .drop_range(pb::DropRangeRequest {
            range: Some(pb::TokenRange {
                start: 0,
                end: u64::MAX / 2,
            }),
            whole_ring: false,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(dropped > 0, "nothing dropped");
    assert!(held_keys(&c, "n1").await.len() < before);
    let started = coord
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = pairdb_tests::cluster::wait_repair(&mut coord, &started.repair_id, DEADLINE)
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{}", done.progress_json);
    assert_eq!(
        held_keys(&c, "n1").await.len(),
        before,
        "n1 after the repair"
    );
    c.check_digests("n1").await.unwrap();
    c.check_quorum_reads(&acked).await.unwrap();
}
