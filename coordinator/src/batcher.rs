//! Coalescing of replica operations per storage node (SPEC §9): concurrent Write, Apply and
//! Read operations bound for the same node travel as one BatchWrite / BatchApply / BatchRead
//! RPC on the node's HTTP/2 channel, so the number of RPCs stops growing with concurrency.
//!
//! Each node has one queue per operation kind and a drain task per queue. The drain task takes
//! whatever is queued (at least one item, at most `MAX_BATCH` items and
//! `MAX_BATCH_REQUEST_BYTES` of values and states) and sends it as one RPC. While a batch is in
//! flight the next one fills and goes when the first answers — or at once, up to
//! `MAX_IN_FLIGHT` outstanding, when it already holds `PARALLEL_BATCH` items — so under load a
//! node gets one large batch per round trip instead of many small ones (issue P measured 4 in
//! flight from the first item: more RPCs, more syscalls, more CPU per operation). With one
//! client in flight a batch holds one item, so latency at low load is one channel hop more
//! than a direct call. Per-item errors come back as the same `tonic::Status` (with its
//! `ErrorInfo`) a direct call would give. The drain tasks end when their queue's senders are
//! dropped (the node left the cluster view), or at shutdown once their queue is empty and
//! their batches answered. Drain tasks are owned tasks of the process's [`Supervisor`]; the
//! batch RPCs are futures inside them, not tasks of their own.
//!
//! Tracing: each item carries the span of the replica call that queued it; a batch RPC runs
//! in a `replica_batch` span whose parent is its first item's span (the others follow from
//! it), and that span's trace context travels in the RPC's metadata to the storage node.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pairdb_common::api::pb;
use pairdb_common::validate::MAX_BATCH_REQUEST_BYTES;
use pairdb_common::worker::Supervisor;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::StorageClient;

/// Most items per batch RPC (the storage node accepts up to 1000).
pub const MAX_BATCH: usize = 256;
/// Batch RPCs outstanding per node and operation kind.
pub const MAX_IN_FLIGHT: usize = 4;
/// A filling batch this large is sent without waiting for the one in flight.
pub const PARALLEL_BATCH: usize = 32;
/// Queue bound per node and operation kind.
const QUEUE: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, tonic::Status>>;
/// A queued item: the request, where its answer goes, the span of the call that queued it.
type Item<Req, Res> = (Req, Reply<Res>, tracing::Span);

/// The per-node batching front of a storage client.
#[derive(Clone)]
pub struct Batcher {
    writes: mpsc::Sender<Item<pb::WriteOp, pb::WriteResult>>,
    applies: mpsc::Sender<Item<pb::KeyVersions, pb::ApplyResult>>,
    reads: mpsc::Sender<Item<pb::KeyRef, pb::ReadResult>>,
}

/// A request carrying the current span's trace context.
fn traced<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    pairdb_common::otel::inject(&tracing::Span::current(), req.metadata_mut());
    req
}

fn write_size(op: &pb::WriteOp) -> usize {
    op.key.len() + op.value.len() + op.context.len() + op.idempotency_key.len()
}

fn apply_size(kv: &pb::KeyVersions) -> usize {
    prost::Message::encoded_len(kv)
}

fn read_size(k: &pb::KeyRef) -> usize {
    k.key.len() + k.tenant_id.len()
}

/// Splits a batch response into per-item results: an item carrying an `ItemError` becomes the
/// status a direct call would have returned.
fn per_item<T>(
    results: Vec<T>,
    error: impl Fn(&T) -> Option<&pb::ItemError>,
) -> Vec<Result<T, tonic::Status>> {
    results
        .into_iter()
        .map(|x| match error(&x) {
            Some(e) => Err(pairdb_common::Error::from_item(e).to_status()),
            None => Ok(x),
        })
        .collect()
}

/// Sends one batch and fans its answers (or its failure) back out to the items' callers.
async fn send_batch<Req, Res, Fut>(
    items: Vec<Item<Req, Res>>,
    timeout: Duration,
    send: &(impl Fn(Vec<Req>) -> Fut + Send + Sync),
) where
    Fut: std::future::Future<Output = Result<Vec<Result<Res, tonic::Status>>, tonic::Status>>,
{
    use tracing::Instrument;
    let span = tracing::info_span!(
        target: pairdb_common::otel::TARGET,
        parent: &items[0].2,
        "replica_batch",
        items = items.len(),
    );
    for (_, _, other) in &items[1..] {
        span.follows_from(other);
    }
    let (mut reqs, mut replies) = (
        Vec::with_capacity(items.len()),
        Vec::with_capacity(items.len()),
    );
    for (req, reply, _) in items {
        reqs.push(req);
        replies.push(reply);
    }
    let n = reqs.len();
    let outcome = match tokio::time::timeout(timeout, send(reqs).instrument(span)).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("replica batch timed out")),
    };
    match outcome {
        Ok(results) if results.len() == n => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Ok(results) => {
            let s =
                tonic::Status::internal(format!("batch of {n} answered {} results", results.len()));
            for reply in replies {
                let _ = reply.send(Err(s.clone()));
            }
        }
        Err(s) => {
            for reply in replies {
                let _ = reply.send(Err(s.clone()));
            }
        }
    }
}

/// Items waiting for the next batch of one queue.
struct Pending<Req, Res> {
    items: Vec<Item<Req, Res>>,
    bytes: usize,
    /// The item that would have overflowed the batch's bytes: it starts the next one.
    carried: Option<Item<Req, Res>>,
}

impl<Req, Res> Pending<Req, Res> {
    /// Whether no more items fit (by count or by bytes).
    fn full(&self) -> bool {
        self.items.len() >= MAX_BATCH || self.carried.is_some()
    }

    fn add(&mut self, x: Item<Req, Res>, size: fn(&Req) -> usize) {
        let n = size(&x.0);
        // A larger item goes alone; the one that would overflow starts the next batch.
        if !self.items.is_empty() && self.bytes + n > MAX_BATCH_REQUEST_BYTES {
            self.carried = Some(x);
            return;
        }
        self.bytes += n;
        self.items.push(x);
    }

    /// The batch to send; the carried item starts the next.
    fn take(&mut self, size: fn(&Req) -> usize) -> Vec<Item<Req, Res>> {
        let batch = std::mem::take(&mut self.items);
        self.bytes = 0;
        if let Some(x) = self.carried.take() {
            self.add(x, size);
        }
        batch
    }
}

/// Drains one queue: batch, send, fan the answers back out. The batch RPCs in flight are
/// futures of this task (no task per batch). While a batch is in flight the next one fills:
/// it is sent when the one in flight answers, or at once (up to [`MAX_IN_FLIGHT`] in all)
/// when it already holds [`PARALLEL_BATCH`] items or is full — large batches under load,
/// one RPC per round trip rather than one per item. The task ends once its queue is closed
/// (or the process shuts down) and nothing is pending or in flight.
async fn drain<Req, Res, Fut>(
    cancel: tokio_util::sync::CancellationToken,
    mut rx: mpsc::Receiver<Item<Req, Res>>,
    timeout: Duration,
    size: fn(&Req) -> usize,
    send: impl Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
) where
    Req: Send + 'static,
    Res: Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<Result<Res, tonic::Status>>, tonic::Status>>
        + Send
        + 'static,
{
    let mut in_flight = FuturesUnordered::new();
    let mut pending = Pending {
        items: Vec::new(),
        bytes: 0,
        carried: None,
    };
    let mut open = true;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let ready = !pending.items.is_empty()
            && (in_flight.is_empty()
                || in_flight.len() < MAX_IN_FLIGHT
                    && (pending.full() || pending.items.len() >= PARALLEL_BATCH));
        if ready {
            in_flight.push(send_batch(pending.take(size), timeout, &send));
            continue;
        }
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            x = rx.recv(), if open && !pending.full() => match x {
                Some(x) => {
                    pending.add(x, size);
                    while !pending.full() {
                        match rx.try_recv() {
                            Ok(x) => pending.add(x, size),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            // At shutdown the queue is drained first (`biased`: the queue's branch wins
            // while it holds items).
            () = &mut cancelled, if open && !pending.full() => open = false,
            else => {
                if pending.items.is_empty() {
                    return;
                }
            }
        }
    }
}

impl Batcher {
    /// Starts the drain tasks for one node's client.
    pub fn start(client: StorageClient, timeout: Duration, sup: &Supervisor) -> Batcher {
        let (wtx, wrx) = mpsc::channel(QUEUE);
        let (atx, arx) = mpsc::channel(QUEUE);
        let (rtx, rrx) = mpsc::channel(QUEUE);
        let c = client.clone();
        drop(sup.spawn(
            "replica-batcher",
            drain(
                sup.cancel_token(),
                wrx,
                timeout,
                write_size,
                move |ops: Vec<pb::WriteOp>| {
                    let mut c = c.clone();
                    async move {
                        let r = c
                            .batch_write(traced(pb::BatchWriteRequest { ops }))
                            .await?
                            .into_inner();
                        Ok(per_item(r.results, |x| x.error.as_ref()))
                    }
                },
            ),
        ));
        let c = client.clone();
        drop(sup.spawn(
            "replica-batcher",
            drain(
                sup.cancel_token(),
                arx,
                timeout,
                apply_size,
                move |items: Vec<pb::KeyVersions>| {
                    let mut c = c.clone();
                    async move {
                        let r = c
                            .batch_apply(traced(pb::BatchApplyRequest { items }))
                            .await?
                            .into_inner();
                        Ok(per_item(r.results, |x| x.error.as_ref()))
                    }
                },
            ),
        ));
        let c = client;
        drop(sup.spawn(
            "replica-batcher",
            drain(
                sup.cancel_token(),
                rrx,
                timeout,
                read_size,
                move |keys: Vec<pb::KeyRef>| {
                    let mut c = c.clone();
                    async move {
                        let r = c
                            .batch_read(traced(pb::BatchReadRequest { keys }))
                            .await?
                            .into_inner();
                        Ok(per_item(r.results, |x| x.error.as_ref()))
                    }
                },
            ),
        ));
        Batcher {
            writes: wtx,
            applies: atx,
            reads: rtx,
        }
    }

    async fn call<Req, Res>(
        tx: &mpsc::Sender<Item<Req, Res>>,
        req: Req,
    ) -> Result<Res, tonic::Status> {
        let (reply, rx) = oneshot::channel();
        tx.send((req, reply, tracing::Span::current()))
            .await
            .map_err(|_| tonic::Status::unavailable("node batcher stopped"))?;
        rx.await
            .map_err(|_| tonic::Status::unavailable("node batcher dropped the request"))?
    }

    pub async fn write(&self, op: pb::WriteOp) -> Result<pb::WriteResult, tonic::Status> {
        Self::call(&self.writes, op).await
    }

    pub async fn apply(&self, kv: pb::KeyVersions) -> Result<pb::ApplyResult, tonic::Status> {
        Self::call(&self.applies, kv).await
    }

    pub async fn read(&self, k: pb::KeyRef) -> Result<pb::ReadResult, tonic::Status> {
        Self::call(&self.reads, k).await
    }
}
