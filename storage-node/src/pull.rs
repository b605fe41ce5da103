//! Pulling a token range from another storage node (the target side of bootstrap, decommission,
//! replace and verification streams).
//!
//! The node opens `StreamRange` on the source and applies every record to its own store
//! (origin STREAM) with merge semantics, never an overwrite, so writes the node receives
//! meanwhile as a pending replica are kept. Each record's CRC is checked again on arrival; a
//! record that fails stops the pull with CHECKSUM_FAILED instead of storing damaged bytes.
//!
//! Records are gathered into chunks (32 MiB, or whatever arrived within a second) and applied
//! with [`crate::store::Store::apply_streamed`] under a fence over the range: keys the node
//! has no record for go in as one ingested table (no WAL, memtable or recompaction), the rest
//! are merged. The disk gate applies (inbound streaming obeys the breaker). After each applied
//! chunk the caller gets a [`pb::PullProgress`] with the last data key, so a broken pull
//! resumes where it stopped; when the caller goes away the pull stops at the next chunk.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::failpoint;
use pairdb_common::tls::Expect;
use pairdb_common::tls::connect::{self, ClientTls};
use pairdb_common::{Error as Common, convert, framing};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::Channel;

use crate::node::Node;
use crate::store::{Incoming, Origin};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 receive window of a pull (bytes).
const STREAM_WINDOW: u32 = 16 << 20;
/// Longest wait for one batch from the source before the pull is abandoned (resumable).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Record bytes gathered before they are applied together (new keys as one ingested table).
const CHUNK_BYTES: u64 = 32 << 20;
/// Longest a received record waits to be applied, so progress and the resume key keep moving
/// on a throttled stream.
const CHUNK_WAIT: Duration = Duration::from_secs(1);

/// One lazily connected HTTP/2 channel per source address, shared by every pull of this
/// process (a bootstrap pulls hundreds of ranges and verification buckets from few sources).
/// Keyed by address and the node id the source must prove (with TLS, by its certificate).
static CHANNELS: LazyLock<Mutex<HashMap<(String, String), Channel>>> =
    LazyLock::new(Default::default);

fn channel_to(node: &Node, address: &str, node_id: &str) -> Result<Channel, Status> {
    let mut map = CHANNELS.lock();
    let k = (address.to_string(), node_id.to_string());
    if let Some(c) = map.get(&k) {
        return Ok(c.clone());
    }
    let tls = ClientTls::cluster(&node.tls, Expect::storage_node(Some(node_id)));
    let ep = connect::endpoint(address)
        .map_err(|e| Common::InvalidArgument(format!("source_address: {e}")).to_status())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Bulk transfer: HTTP/2's default 64 KiB windows would stall every 512-record batch.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 2));
    let c = connect::lazy_channel(ep, tls);
    map.insert(k, c.clone());
    Ok(c)
}

fn internal(msg: String) -> Status {
    Common::Internal(msg).to_status()
}

/// Runs one pull, reporting progress on `tx` until done, failed, or the receiver is gone.
pub async fn run(
    node: Arc<Node>,
    req: pb::PullRangeRequest,
    tx: mpsc::Sender<Result<pb::PullProgress, Status>>,
) {
    if let Err(status) = pull(&node, req, &tx).await {
        let _ = tx.send(Err(status)).await;
    }
}

/// Checks a pull request before anything starts: the source address, the source's node id
/// (required with TLS: the source's certificate must name it, so a pull only reads from a
/// certified storage node), and the filters.
pub fn check(req: &pb::PullRangeRequest, tls: bool) -> Result<(), Status> {
    pairdb_common::validate::address(&req.source_address).map_err(|e| e.to_status())?;
    if req.source_node_id.is_empty() {
        if tls {
            return Err(Common::InvalidArgument(
                "source_node_id is required: the source's certificate must name that node".into(),
            )
            .to_status());
        }
    } else {
        pairdb_common::validate::node_id(&req.source_node_id)
            .map_err(|e| Common::InvalidArgument(format!("source_node_id: {e}")).to_status())?;
    }
    crate::api::check_filter(req.sub_ranges.len(), &req.tenant_ids, req.key_hashes.len())?;
    Ok(())
}

async fn pull(
    node: &Arc<Node>,
    req: pb::PullRangeRequest,
    tx: &mpsc::Sender<Result<pb::PullProgress, Status>>,
) -> Result<(), Status> {
    let range = convert::range_from_pb(req.range);
    let channel = channel_to(node, &req.source_address, &req.source_node_id)?;
    let mut source = StorageNodeServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut stream = source
        .stream_range(pb::StreamRangeRequest {
            range: req.range,
            resume_after: req.resume_after.clone(),
            batch_size: req.batch_size,
            max_bytes_per_sec: req.max_bytes_per_sec,
            sub_ranges: req.sub_ranges.clone(),
            tenant_ids: req.tenant_ids.clone(),
            key_hashes: req.key_hashes.clone(),
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                Common::NodeNotReady(format!("source {}: {}", req.source_address, s.message()))
                    .to_status()
            } else {
                s
            }
        })?
        .into_inner();
    // The reader receives and checks batches into chunks while the applier applies the last one.
    let (ctx, mut crx) = mpsc::channel::<Chunk>(1);
    let source_address = req.source_address.clone();
    let metrics = node.metrics.clone();
    let reader = async move {
        let mut chunk = Chunk::default();
        let mut deadline = tokio::time::Instant::now() + CHUNK_WAIT;
        loop {
            let next = if chunk.entries.is_empty() {
                tokio::time::timeout(BATCH_TIMEOUT, stream.message()).await
            } else {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(r) => Ok(r),
                    // A slow source: apply what has arrived so progress still moves.
                    Err(_) => {
                        if ctx.send(std::mem::take(&mut chunk)).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                }
            };
            let batch = match next {
                Err(_) => {
                    return Err(Common::Timeout(format!(
                        "source {source_address} sent nothing for {}s",
                        BATCH_TIMEOUT.as_secs()
                    ))
                    .to_status());
                }
                Ok(r) => r?,
            };
            let Some(batch) = batch else {
                return Err(internal(format!(
                    "source {source_address} ended the stream of {range} before its last batch"
                )));
            };
            if chunk.entries.is_empty() {
                deadline = tokio::time::Instant::now() + CHUNK_WAIT;
            }
            for e in batch.entries {
                chunk.bytes += e.record.len() as u64;
                chunk.entries.push(verify(e, &source_address, &metrics)?);
            }
            chunk.corrupt_skipped += u64::from(batch.corrupt_skipped);
            if !batch.last_data_key.is_empty() {
                chunk.last_data_key = batch.last_data_key;
            }
            chunk.done = batch.done;
            let done = batch.done;
            if done || chunk.bytes >= CHUNK_BYTES {
                // The last chunk is sent too; the reader stops after it or when nobody listens.
                let sent = ctx.send(std::mem::take(&mut chunk)).await.is_ok();
                if !sent || done {
                    return Ok(());
                }
            }
        }
    };
    let mut progress = pb::PullProgress {
        last_data_key: req.resume_after.clone(),
        ..Default::default()
    };
    let origin = match pb::ApplyOrigin::try_from(req.origin) {
        Ok(pb::ApplyOrigin::AntiEntropy) => Origin::AntiEntropy,
        _ => Origin::Stream,
    };
    let fence = Arc::new(node.store.open_fence(range));
    let applier = async {
        while let Some(chunk) = crx.recv().await {
            let n = chunk.entries.len() as u64;
            let store = node.store.clone();
            let fence = fence.clone();
            let entries = chunk.entries;
            let reply = node
                .sup
                .spawn_blocking("apply-streamed", move || {
                    store.apply_streamed(&fence, entries, origin)
                })
                .await
                .map_err(|e| internal(format!("apply task failed: {e}")))?
                .map_err(Status::from)?;
            node.metrics.stream_keys_received.inc_by(n);
            node.metrics.stream_keys_ingested.inc_by(reply.ingested);
            node.metrics.stream_bytes_received.inc_by(chunk.bytes);
            progress.changed += reply.changed;
            progress.keys += n;
            progress.bytes += chunk.bytes;
            progress.corrupt_skipped += chunk.corrupt_skipped;
            if !chunk.last_data_key.is_empty() {
                progress.last_data_key = chunk.last_data_key;
            }
            progress.done = chunk.done;
            failpoint::crash(failpoint::points::STREAM_AFTER_BATCH);
            if tx.send(Ok(progress.clone())).await.is_err() {
                tracing::info!(%range, source = %req.source_address, keys = progress.keys, "pull stopped: the caller went away");
                return Ok(());
            }
            if progress.done {
                if origin == Origin::AntiEntropy {
                    tracing::debug!(%range, source = %req.source_address, keys = progress.keys, changed = progress.changed, "pulled repair keys");
                } else {
                    tracing::info!(%range, source = %req.source_address, keys = progress.keys, changed = progress.changed, "pulled range");
                }
                return Ok(());
            }
        }
        Ok(())
    };
    // The applier ends the pull (done, caller gone, or an error); the reader only feeds it.
    tokio::pin!(reader);
    tokio::pin!(applier);
    tokio::select! {
        r = &mut applier => r,
        r = &mut reader => match r {
            Ok(()) => applier.await,
            Err(e) => Err(e),
        },
    }
}

/// Checked records of consecutive batches, applied together.
#[derive(Default)]
struct Chunk {
    entries: Vec<Incoming>,
    bytes: u64,
    corrupt_skipped: u64,
    last_data_key: Vec<u8>,
    done: bool,
}

/// Checks a streamed entry: its frame (format byte and CRC over the payload) and that the CRC
/// it was sent with is the frame's.
fn verify(
    e: pb::StreamEntry,
    source: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<Incoming, Status> {
    let fail = |detail: String| {
        metrics.checksum_failures.inc();
        Common::ChecksumFailed(format!(
            "streamed record {}/{} from {source} failed verification: {detail}",
            e.tenant_id,
            String::from_utf8_lossy(&e.key),
        ))
        .to_status()
    };
    if let Err(err) = framing::unframe(framing::RECORD_FORMAT_V1, &e.record) {
        return Err(fail(err.to_string()));
    }
    if framing::stored_crc(&e.record) != Some(e.crc32) {
        return Err(fail("the CRC it was sent with is not its frame's".into()));
    }
    pairdb_common::validate::key_ref(&e.tenant_id, &e.key)
        .map_err(|err| Common::InvalidArgument(format!("streamed key: {err}")).to_status())?;
    Ok(Incoming {
        data_key: pairdb_common::token::data_key(&e.tenant_id, &e.key),
        tenant: e.tenant_id,
        key: e.key.to_vec(),
        record: e.record,
    })
}

#[cfg(test)]
mod tests {
    //! Stream batches from a hostile source (mirrors the `stream_batch` fuzz target): whatever
    //! arrives, checking an entry never panics, and only entries whose frame and key are valid
    //! pass.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn valid_batch(n: usize) -> pb::StreamBatch {
        let mut s = pairdb_common::version::KeyState::new();
        s.apply_write(pairdb_common::version::NewVersion {
            dot: pairdb_common::version::Dot::new(pairdb_common::version::Actor::new("n1", 1), 3),
            context: Default::default(),
            value: b"v".to_vec(),
            tombstone: false,
            written_at_ms: 1,
            expires_at_ms: 0,
            idempotency_key: String::new(),
            policy: Default::default(),
            max_siblings: 10,
        });
        let record = framing::encode_state(&s);
        pb::StreamBatch {
            entries: (0..n)
                .map(|i| pb::StreamEntry {
                    tenant_id: "t1".into(),
                    key: format!("k{i}").into_bytes().into(),
                    token: i as u64,
                    crc32: framing::stored_crc(&record).unwrap_or(0),
                    record: record.clone().into(),
                })
                .collect(),
            last_data_key: vec![1, 2, 3],
            done: false,
            corrupt_skipped: 0,
        }
    }

    fn check_all(bytes: &[u8]) {
        let metrics = crate::metrics::Metrics::new("t");
        if let Ok(b) = pb::StreamBatch::decode(bytes) {
            for e in b.entries {
                if let Ok(inc) = verify(e, "src:1", &metrics) {
                    assert!(pairdb_common::validate::key_ref(&inc.tenant, &inc.key).is_ok());
                    assert!(framing::unframe(framing::RECORD_FORMAT_V1, &inc.record).is_ok());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_batches_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_all(&bytes);
        }

        #[test]
        fn mutated_batches_never_panic(n in 1usize..6, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = valid_batch(n).encode_to_vec();
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] ^= b;
            }
            check_all(&bytes);
        }
    }

    #[test]
    fn a_valid_batch_verifies() {
        let metrics = crate::metrics::Metrics::new("t");
        for e in valid_batch(3).entries {
            verify(e, "src:1", &metrics).unwrap_or_else(|_| panic!("valid entry refused"));
        }
    }
}
