//! Pulling a token range from another storage node (the target side of bootstrap, decommission,
//! replace and verification streams).
//!
//! The node opens `StreamRange` on the source and merges every record into its own store
//! (origin STREAM): a merge, never an overwrite, so writes the node receives meanwhile as a
//! pending replica are kept. Each record's CRC is checked again on arrival; a record that fails
//! stops the pull with CHECKSUM_FAILED instead of storing damaged bytes. The disk gate applies
//! (inbound streaming obeys the breaker). After each applied batch the caller gets a
//! [`pb::PullProgress`] with the last data key, so a broken pull resumes where it stopped;
//! when the caller goes away the pull stops at the next batch.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::{Error as Common, convert, framing};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::node::Node;
use crate::store::{ApplyCmd, Origin};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 receive window of a pull (bytes).
const STREAM_WINDOW: u32 = 16 << 20;
/// Longest wait for one batch from the source before the pull is abandoned (resumable).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// One lazily connected HTTP/2 channel per source address, shared by every pull of this
/// process (a bootstrap pulls hundreds of ranges and verification buckets from few sources).
static CHANNELS: LazyLock<Mutex<HashMap<String, Channel>>> = LazyLock::new(Default::default);

fn channel_to(address: &str) -> Result<Channel, Status> {
    let mut map = CHANNELS.lock();
    if let Some(c) = map.get(address) {
        return Ok(c.clone());
    }
    let c = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Common::InvalidArgument(format!("source_address: {e}")).to_status())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Bulk transfer: HTTP/2's default 64 KiB windows would stall every 512-record batch.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 2))
        .connect_lazy();
    map.insert(address.to_string(), c.clone());
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

async fn pull(
    node: &Arc<Node>,
    req: pb::PullRangeRequest,
    tx: &mpsc::Sender<Result<pb::PullProgress, Status>>,
) -> Result<(), Status> {
    if req.source_address.is_empty() || req.source_address.contains('/') {
        return Err(Common::InvalidArgument(format!(
            "source_address {:?} must be host:port",
            req.source_address
        ))
        .to_status());
    }
    let range = convert::range_from_pb(req.range);
    let channel = channel_to(&req.source_address)?;
    let mut source = StorageNodeServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut stream = source
        .stream_range(pb::StreamRangeRequest {
            range: req.range,
            resume_after: req.resume_after.clone(),
            batch_size: req.batch_size,
            max_bytes_per_sec: req.max_bytes_per_sec,
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
    // The reader receives batch N+1 while the applier merges batch N.
    let (btx, mut brx) = mpsc::channel::<pb::StreamBatch>(2);
    let source_address = req.source_address.clone();
    let reader = async move {
        loop {
            let batch = match tokio::time::timeout(BATCH_TIMEOUT, stream.message()).await {
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
            let done = batch.done;
            if btx.send(batch).await.is_err() || done {
                return Ok(());
            }
        }
    };
    let mut progress = pb::PullProgress {
        last_data_key: req.resume_after.clone(),
        ..Default::default()
    };
    let applier = async {
        while let Some(batch) = brx.recv().await {
            let n = batch.entries.len() as u64;
            let bytes: u64 = batch.entries.iter().map(|e| e.record.len() as u64).sum();
            let store = node.store.clone();
            let metrics = node.metrics.clone();
            let source = req.source_address.clone();
            let entries = batch.entries;
            let changed = tokio::task::spawn_blocking(move || -> Result<u64, Status> {
                let cmds = entries
                    .into_iter()
                    .map(|e| decode(e, &source, &metrics))
                    .collect::<Result<Vec<_>, Status>>()?;
                let mut changed = 0u64;
                for r in store.apply_many(cmds) {
                    changed += u64::from(r?.changed);
                }
                Ok(changed)
            })
            .await
            .map_err(|e| internal(format!("apply task failed: {e}")))??;
            node.metrics.stream_keys_received.inc_by(n);
            node.metrics.stream_bytes_received.inc_by(bytes);
            progress.changed += changed;
            progress.keys += n;
            progress.bytes += bytes;
            progress.corrupt_skipped += u64::from(batch.corrupt_skipped);
            if !batch.last_data_key.is_empty() {
                progress.last_data_key = batch.last_data_key;
            }
            progress.done = batch.done;
            if tx.send(Ok(progress.clone())).await.is_err() {
                tracing::info!(%range, source = %req.source_address, keys = progress.keys, "pull stopped: the caller went away");
                return Ok(());
            }
            if progress.done {
                tracing::info!(%range, source = %req.source_address, keys = progress.keys, changed = progress.changed, "pulled range");
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

/// Checks a streamed entry (frame CRC, and that the entry's CRC is the frame's) and turns it
/// into a merge that carries the verified bytes, stored as they are when the key is new here.
fn decode(
    e: pb::StreamEntry,
    source: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<ApplyCmd, Status> {
    let state = framing::decode_state(&e.record).map_err(|err| {
        metrics.checksum_failures.inc();
        Common::ChecksumFailed(format!(
            "streamed record {}/{} from {source} failed verification: {err}",
            e.tenant_id,
            String::from_utf8_lossy(&e.key),
        ))
        .to_status()
    })?;
    if framing::stored_crc(&e.record) != Some(e.crc32) {
        metrics.checksum_failures.inc();
        return Err(Common::ChecksumFailed(format!(
            "streamed record {}/{} carries a CRC that does not match its frame",
            e.tenant_id,
            String::from_utf8_lossy(&e.key)
        ))
        .to_status());
    }
    Ok(ApplyCmd {
        tenant: e.tenant_id,
        key: e.key,
        state,
        origin: Origin::Stream,
        record: Some(e.record),
    })
}
