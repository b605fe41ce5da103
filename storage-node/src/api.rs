//! `pairdb.StorageNodeService`: the gRPC edge of the storage node. Converts wire types to store
//! commands, enforces maintenance mode, counts and times every RPC. Only this module (and
//! `pairdb_common::convert`) touches prost types on the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_server::StorageNodeService;
use pairdb_common::{Error as Common, context, convert};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::{ApplyCmd, ApplyReply, Origin, Store, WriteCmd, WriteReply};

/// Most items in one batch RPC.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Bytes of key state a batch answer may carry (items past it fail with OVERLOADED and are
/// sent again on their own), leaving room in the message for everything else.
pub const BATCH_ANSWER_BUDGET_BYTES: usize = 48 << 20;
/// Requests whose values, contexts or states are larger than this are converted and applied
/// on a blocking thread, not on an async worker.
const INLINE_BYTES: usize = 64 << 10;
/// Most sub-ranges and key hashes an anti-entropy filter may name.
const MAX_FILTER_RANGES: usize = 65_536;
const MAX_FILTER_KEYS: usize = 1 << 20;

pub struct StorageApi {
    node: Arc<Node>,
}

impl StorageApi {
    pub fn new(node: Arc<Node>) -> StorageApi {
        StorageApi { node }
    }

    fn observe<T>(&self, op: &'static str, started: Instant, r: &Result<T>) {
        let m = &self.node.metrics;
        let labels = crate::metrics::OpLabels { op };
        m.requests.get_or_create(&labels).inc();
        m.latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = r {
            m.error(op, e.to_common().code());
        }
        self.node.recent.record(op, started.elapsed(), r.is_ok());
    }

    fn serving_clients(&self) -> Result<()> {
        if self.node.maintenance() {
            return Err(Error::Maintenance);
        }
        Ok(())
    }

    /// Runs a write. Without `sync_writes` a small RocksDB write is a memtable insert plus an
    /// unsynced WAL append (microseconds), cheaper inline than a hop to the blocking pool; with
    /// it, or when the request is large (`big`), it runs on a blocking thread (concurrent synced
    /// ones share one fsync).
    async fn write_path<T: Send + 'static>(
        &self,
        big: bool,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T> {
        if big || self.node.store.sync_writes() {
            self.blocking(f).await
        } else {
            Ok(f(&self.node.store))
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T> {
        let store = self.node.store.clone();
        // The task owns the work: a client that goes away cannot cut a write in half.
        self.node
            .sup
            .spawn_blocking("storage", move || f(&store))
            .await
            .map_err(|e| Error::Engine(crate::engine::EngineError::Io(e.to_string())))
    }

    /// Runs a (short) scan on the node's scan pool.
    async fn scan<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.node.store.clone();
        self.node.scans.run(move || f(&store)).await?
    }
}

/// Whether a write op is large enough to convert and apply off the async workers.
fn big_op(op: &pb::WriteOp) -> bool {
    op.value.len() + op.context.len() > INLINE_BYTES
}

/// Whether a key state is large enough to convert and merge off the async workers.
fn big_state(s: Option<&pb::KeyState>) -> bool {
    s.is_some_and(convert::is_large_state)
}

/// Runs one batch: converts every item (a bad one fails alone), applies the good ones with
/// `apply`, and answers each in order. Runs on a blocking thread (a batch may be large).
fn run_batch<Req, Cmd, Rep, Out>(
    items: Vec<Req>,
    convert: impl Fn(Req) -> Result<Cmd>,
    apply: impl FnOnce(Vec<Cmd>) -> Vec<Result<Rep>>,
    answer: impl Fn(Result<Rep>) -> Out,
) -> Vec<Out> {
    let decoded: Vec<Result<Cmd>> = items.into_iter().map(convert).collect();
    let mut flags = Vec::with_capacity(decoded.len());
    let mut good = Vec::with_capacity(decoded.len());
    let mut bad = Vec::new();
    for d in decoded {
        match d {
            Ok(c) => {
                flags.push(true);
                good.push(c);
            }
            Err(e) => {
                flags.push(false);
                bad.push(e);
            }
        }
    }
    let mut done = apply(good).into_iter();
    let mut bad = bad.into_iter();
    flags
        .into_iter()
        .map(|ok| {
            let r = if ok {
                done.next()
                    .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
            } else {
                Err(bad
                    .next()
                    .unwrap_or_else(|| Error::Overloaded("no result".into())))
            };
            answer(r)
        })
        .collect()
}

fn check_batch(n: usize) -> Result<()> {
    if n > MAX_BATCH_ITEMS {
        return Err(Error::Invalid(pairdb_common::Error::InvalidArgument(
            format!("batch of {n} items; the limit is {MAX_BATCH_ITEMS}"),
        )));
    }
    Ok(())
}

fn write_cmd(op: pb::WriteOp) -> Result<WriteCmd> {
    Ok(WriteCmd {
        context: context::decode_internal(&op.context)?,
        policy: convert::policy_from_pb(op.conflict_policy),
        tenant: op.tenant_id,
        key: op.key,
        value: op.value,
        tombstone: op.tombstone,
        ttl_seconds: op.ttl_seconds,
        idempotency_key: op.idempotency_key,
        max_siblings: op.max_siblings,
        max_value_bytes: op.max_value_bytes,
        sibling_warn: op.sibling_warn,
        max_state_bytes: op.max_state_bytes,
    })
}

fn origin(o: i32) -> Origin {
    match pb::ApplyOrigin::try_from(o) {
        Ok(pb::ApplyOrigin::ReadRepair) => Origin::ReadRepair,
        Ok(pb::ApplyOrigin::Hint) => Origin::Hint,
        Ok(pb::ApplyOrigin::Stream) => Origin::Stream,
        Ok(pb::ApplyOrigin::AntiEntropy) => Origin::AntiEntropy,
        _ => Origin::Replica,
    }
}

/// Client-path origins are refused in maintenance mode; internal ones are not.
fn is_client_origin(o: Origin) -> bool {
    matches!(o, Origin::Replica | Origin::ReadRepair | Origin::Hint)
}

fn apply_cmd(kv: pb::KeyVersions) -> Result<ApplyCmd> {
    Ok(ApplyCmd {
        state: convert::state_from_pb(kv.state.unwrap_or_default())?,
        origin: origin(kv.origin),
        tenant: kv.tenant_id,
        key: kv.key,
        record: None,
    })
}

fn write_result(r: WriteReply) -> pb::WriteResult {
    pb::WriteResult {
        version: Some(convert::version_to_pb(&r.version)),
        deduplicated: r.deduplicated,
        state: Some(convert::state_to_pb(&r.state)),
        error: None,
    }
}

fn apply_result(r: ApplyReply) -> pb::ApplyResult {
    pb::ApplyResult {
        changed: r.changed,
        sibling_count: r.siblings as u32,
        error: None,
    }
}

fn read_result(state: Option<pairdb_common::version::KeyState>, outage_ms: u64) -> pb::ReadResult {
    pb::ReadResult {
        exists: state.is_some(),
        state: state.map(|s| convert::state_to_pb(&s)),
        unrepaired_outage_ms: outage_ms,
        error: None,
    }
}

fn item_error(e: &Error) -> Option<pb::ItemError> {
    Some(e.to_common().to_item())
}

#[tonic::async_trait]
impl StorageNodeService for StorageApi {
    async fn write(&self, req: Request<pb::WriteOp>) -> Result<Response<pb::WriteResult>, Status> {
        let started = Instant::now();
        let r = async {
            self.serving_clients()?;
            let op = req.into_inner();
            let big = big_op(&op);
            self.write_path(big, move |s| {
                let cmd = write_cmd(op)?;
                s.write_many(vec![cmd], usize::MAX)
                    .pop()
                    .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
            })
            .await?
        }
        .await;
        self.observe("write", started, &r);
        Ok(Response::new(write_result(r?)))
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let started = Instant::now();
        let r = async {
            self.serving_clients()?;
            let ops = req.into_inner().ops;
            check_batch(ops.len())?;
            let results = self
                .blocking(move |s| {
                    run_batch(
                        ops,
                        write_cmd,
                        |good| s.write_many(good, BATCH_ANSWER_BUDGET_BYTES),
                        |r| match r {
                            Ok(w) => write_result(w),
                            Err(e) => pb::WriteResult {
                                error: item_error(&e),
                                ..Default::default()
                            },
                        },
                    )
                })
                .await?;
            Ok(pb::BatchWriteResponse { results })
        }
        .await;
        self.observe("batch_write", started, &r);
        Ok(Response::new(r?))
    }

    async fn apply(
        &self,
        req: Request<pb::KeyVersions>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        let started = Instant::now();
        let r = async {
            let kv = req.into_inner();
            if is_client_origin(origin(kv.origin)) {
                self.serving_clients()?;
            }
            let big = big_state(kv.state.as_ref());
            self.write_path(big, move |s| {
                let cmd = apply_cmd(kv)?;
                s.apply_many(vec![cmd])
                    .pop()
                    .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
            })
            .await?
        }
        .await;
        self.observe("apply", started, &r);
        Ok(Response::new(apply_result(r?)))
    }

    async fn batch_apply(
        &self,
        req: Request<pb::BatchApplyRequest>,
    ) -> Result<Response<pb::BatchApplyResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let items = req.into_inner().items;
            check_batch(items.len())?;
            let maintenance = self.node.maintenance();
            let results = self
                .blocking(move |s| {
                    run_batch(
                        items,
                        |kv| {
                            if maintenance && is_client_origin(origin(kv.origin)) {
                                return Err(Error::Maintenance);
                            }
                            apply_cmd(kv)
                        },
                        |good| s.apply_many(good),
                        |r| match r {
                            Ok(a) => apply_result(a),
                            Err(e) => pb::ApplyResult {
                                error: item_error(&e),
                                ..Default::default()
                            },
                        },
                    )
                })
                .await?;
            Ok(pb::BatchApplyResponse { results })
        }
        .await;
        self.observe("batch_apply", started, &r);
        Ok(Response::new(r?))
    }

    async fn read(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::ReadResult>, Status> {
        let started = Instant::now();
        let r = async {
            self.serving_clients()?;
            let k = req.into_inner();
            match self.node.store.read_record(&k.tenant_id, &k.key)? {
                None => Ok(None),
                Some(rec) if rec.len() <= INLINE_BYTES => {
                    self.node.store.decode_read(&k.tenant_id, &k.key, &rec)
                }
                Some(rec) => {
                    self.blocking(move |s| s.decode_read(&k.tenant_id, &k.key, &rec))
                        .await?
                }
            }
        }
        .await;
        self.observe("read", started, &r);
        Ok(Response::new(read_result(r?, self.node.outage.outage_ms())))
    }

    async fn batch_read(
        &self,
        req: Request<pb::BatchReadRequest>,
    ) -> Result<Response<pb::BatchReadResponse>, Status> {
        let started = Instant::now();
        let r = async {
            self.serving_clients()?;
            let keys = req.into_inner().keys;
            check_batch(keys.len())?;
            let outage = self.node.outage.outage_ms();
            // Gets run inline (a memtable or block-cache hit is microseconds; a hop to a
            // blocking thread per batch would cost more); only large records are decoded on a
            // blocking thread, together.
            let store = &self.node.store;
            let mut budget = BATCH_ANSWER_BUDGET_BYTES;
            let mut results: Vec<pb::ReadResult> = Vec::with_capacity(keys.len());
            let mut large: Vec<(usize, pb::KeyRef, Vec<u8>)> = Vec::new();
            let fail = |e: &Error| pb::ReadResult {
                error: item_error(e),
                ..Default::default()
            };
            for (i, k) in keys.into_iter().enumerate() {
                let rec = store.read_record(&k.tenant_id, &k.key).and_then(|rec| {
                    if let Some(r) = &rec {
                        // Past the budget the answer would outgrow a message: the caller
                        // reads this key on its own.
                        budget = budget.checked_sub(r.len()).ok_or_else(|| {
                            Error::Overloaded(crate::store::BATCH_BUDGET_EXCEEDED.into())
                        })?;
                    }
                    Ok(rec)
                });
                let r = match rec {
                    Ok(Some(rec)) if rec.len() > INLINE_BYTES => {
                        large.push((i, k, rec));
                        results.push(pb::ReadResult::default());
                        continue;
                    }
                    Ok(Some(rec)) => store.decode_read(&k.tenant_id, &k.key, &rec),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                results.push(match r {
                    Ok(st) => read_result(st, outage),
                    Err(e) => fail(&e),
                });
            }
            if !large.is_empty() {
                let decoded = self
                    .blocking(move |s| {
                        large
                            .into_iter()
                            .map(|(i, k, rec)| (i, s.decode_read(&k.tenant_id, &k.key, &rec)))
                            .collect::<Vec<_>>()
                    })
                    .await?;
                for (i, r) in decoded {
                    results[i] = match r {
                        Ok(st) => read_result(st, outage),
                        Err(e) => fail(&e),
                    };
                }
            }
            Ok(pb::BatchReadResponse { results })
        }
        .await;
        self.observe("batch_read", started, &r);
        Ok(Response::new(r?))
    }

    async fn repair(
        &self,
        req: Request<pb::KeyVersions>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        let started = Instant::now();
        let r = async {
            let cmd = apply_cmd(req.into_inner())?;
            self.blocking(move |s| s.repair(cmd)).await?
        }
        .await;
        self.observe("repair", started, &r);
        Ok(Response::new(apply_result(r?)))
    }

    type StreamRangeStream = ReceiverStream<Result<pb::StreamBatch, Status>>;

    async fn stream_range(
        &self,
        req: Request<pb::StreamRangeRequest>,
    ) -> Result<Response<Self::StreamRangeStream>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let range = convert::range_from_pb(req.range);
        let batch_size = match req.batch_size {
            0 => 512,
            n => n as usize,
        };
        let filter = filter_from(req.sub_ranges, req.tenant_ids, req.key_hashes)?;
        let permit = self.node.streams.admit().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.node.store.clone();
        let metrics = self.node.metrics.clone();
        let stall = Duration::from_millis(self.node.limits.stream_stall_timeout_ms);
        let handle = tokio::runtime::Handle::current();
        drop(self.node.sup.spawn_blocking("range-stream", move || {
            let _permit = permit;
            let mut stalled = false;
            let mut sink = |b: crate::store::StreamBatch| {
                let msg = pb::StreamBatch {
                    entries: b
                        .entries
                        .into_iter()
                        .map(|e| pb::StreamEntry {
                            tenant_id: e.tenant,
                            key: e.key.into(),
                            token: e.token,
                            record: e.record.into(),
                            crc32: e.crc32,
                        })
                        .collect(),
                    last_data_key: b.last_data_key,
                    done: b.done,
                    corrupt_skipped: b.corrupt_skipped,
                };
                // A receiver that stops reading gets `stall` to take the batch; one that left
                // closes the channel, which wakes this at once.
                match handle.block_on(tokio::time::timeout(stall, tx.send(Ok(msg)))) {
                    Ok(sent) => sent.is_ok(),
                    Err(_) => {
                        stalled = true;
                        false
                    }
                }
            };
            let gone = || tx.is_closed();
            let r = store.stream_range(
                range,
                &req.resume_after,
                batch_size,
                req.max_bytes_per_sec,
                &filter,
                &gone,
                &mut sink,
            );
            if stalled {
                metrics.streams_stalled.inc();
                tracing::warn!(%range, stall_ms = stall.as_millis() as u64, "range stream abandoned: its receiver stopped reading");
            }
            if let Err(e) = &r {
                tracing::error!(%range, error = %e, "range stream failed");
                metrics.error("stream_range", e.to_common().code());
                let _ =
                    handle.block_on(tokio::time::timeout(stall, tx.send(Err(e.clone().into()))));
            }
            let labels = crate::metrics::OpLabels { op: "stream_range" };
            metrics.requests.get_or_create(&labels).inc();
            metrics
                .latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn range_digest(
        &self,
        req: Request<pb::RangeDigestRequest>,
    ) -> Result<Response<pb::RangeDigestResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let range = convert::range_from_pb(req.range);
        let buckets = match req.buckets {
            0 => 64,
            n => n,
        };
        let r = self.scan(move |s| s.range_digest(range, buckets)).await;
        self.observe("range_digest", started, &r);
        let d = r?;
        Ok(Response::new(pb::RangeDigestResponse {
            buckets: d
                .buckets
                .into_iter()
                .map(|b| pb::DigestBucket {
                    range: Some(convert::range_to_pb(b.range)),
                    hash: b.hash,
                    keys: b.keys,
                    bytes: b.bytes,
                })
                .collect(),
            corrupt: d.corrupt,
        }))
    }

    async fn repair_digest(
        &self,
        req: Request<pb::RepairDigestRequest>,
    ) -> Result<Response<pb::RepairDigestResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let total: u64 = req.queries.iter().map(|q| u64::from(q.buckets)).sum();
        if total > MAX_REPAIR_BUCKETS {
            return Err(Common::InvalidArgument(format!(
                "a repair digest may ask for at most {MAX_REPAIR_BUCKETS} buckets, not {total}"
            ))
            .to_status());
        }
        pairdb_common::validate::tenant_filter(&req.tenant_ids).map_err(|e| e.to_status())?;
        check_session(&req.session).map_err(Status::from)?;
        let queries: Vec<_> = req
            .queries
            .into_iter()
            .map(|q| (convert::range_from_pb(q.range), q.buckets.max(1)))
            .collect();
        let tenants = req.tenant_ids.into_iter().collect();
        let scope = req.scope.map(|r| convert::range_from_pb(Some(r)));
        let salt = session_salt(&req.session);
        let short = req.short_hashes;
        let session = req.session;
        let r = self
            .scan(move |s| {
                let session = scope
                    .filter(|_| !session.is_empty())
                    .map(|sc| (session.as_str(), sc));
                s.repair_digest(&queries, &tenants, session)
            })
            .await;
        self.observe("repair_digest", started, &r);
        let (buckets, corrupt) = r?;
        let (hashes, short_hashes) = if short {
            let short = |b: &crate::store::DigestBucket| match b.keys {
                0 => 0,
                _ => crate::store::short_hash(b.hash, salt),
            };
            (Vec::new(), buckets.iter().map(short).collect())
        } else {
            (buckets.iter().map(|b| b.hash).collect(), Vec::new())
        };
        Ok(Response::new(pb::RepairDigestResponse {
            hashes,
            short_hashes,
            keys: buckets.iter().map(|b| b.keys).collect(),
            corrupt,
        }))
    }

    async fn repair_keys(
        &self,
        req: Request<pb::RepairKeysRequest>,
    ) -> Result<Response<pb::RepairKeysResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        pairdb_common::validate::tenant_filter(&req.tenant_ids).map_err(|e| e.to_status())?;
        check_session(&req.session).map_err(Status::from)?;
        if req.ranges.len() > MAX_FILTER_RANGES || req.only_short_keys.len() > MAX_FILTER_KEYS {
            return Err(Common::InvalidArgument(format!(
                "a key listing may name at most {MAX_FILTER_RANGES} ranges and {MAX_FILTER_KEYS} keys"
            ))
            .to_status());
        }
        let ranges: Vec<_> = req
            .ranges
            .into_iter()
            .map(|r| convert::range_from_pb(Some(r)))
            .collect();
        let tenants = req.tenant_ids.into_iter().collect();
        let salt = session_salt(&req.session);
        let short = req.short;
        let only: std::collections::HashSet<u32> = req.only_short_keys.into_iter().collect();
        let r = self
            .scan(move |s| {
                let mode = if short {
                    crate::store::Listing::Short { salt }
                } else {
                    crate::store::Listing::Full { salt, only: &only }
                };
                s.repair_keys(&ranges, &tenants, mode)
            })
            .await;
        self.observe("repair_keys", started, &r);
        let l = r?;
        Ok(Response::new(pb::RepairKeysResponse {
            key_hashes: l.key_hashes,
            state_hashes: l.state_hashes,
            dot_counts: l.dot_counts,
            dot_actors: l.dot_actors,
            dot_counters: l.dot_counters,
            context_counts: l.context_counts,
            context_actors: l.context_actors,
            context_counters: l.context_counters,
            short_keys: l.short_keys,
            short_states: l.short_states,
            range_counts: l.range_counts,
            corrupt: l
                .corrupt
                .into_iter()
                .map(|(tenant_id, key)| pb::CorruptKey { tenant_id, key })
                .collect(),
        }))
    }

    async fn purge_tombstones(
        &self,
        req: Request<pb::PurgeTombstonesRequest>,
    ) -> Result<Response<pb::PurgeTombstonesResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        pairdb_common::validate::tenant_filter(&req.tenant_ids).map_err(|e| e.to_status())?;
        let range =
            convert::explicit_range(req.range, req.whole_ring).map_err(|e| e.to_status())?;
        if req.written_before_ms == 0 {
            return Err(Common::InvalidArgument(
                "written_before_ms is required: tombstones written before it are purged".into(),
            )
            .to_status());
        }
        let tenants = req.tenant_ids.into_iter().collect();
        let before = req.written_before_ms;
        let r = self
            .scan(move |s| s.purge_tombstones(range, &tenants, before))
            .await;
        self.observe("purge_tombstones", started, &r);
        Ok(Response::new(pb::PurgeTombstonesResponse { purged: r? }))
    }

    async fn mark_repaired(
        &self,
        req: Request<pb::MarkRepairedRequest>,
    ) -> Result<Response<pb::MarkRepairedResponse>, Status> {
        let at = req.into_inner().node_started_at_ms;
        let outage = self.node.outage.clone();
        let cleared = self
            .node
            .sup
            .spawn_blocking("mark-repaired", move || outage.mark_repaired(at))
            .await
            .map_err(|e| Common::Internal(format!("mark repaired: {e}")).to_status())?
            .map_err(|e| Status::from(Error::Engine(e)))?;
        Ok(Response::new(pb::MarkRepairedResponse { cleared }))
    }

    type PullRangeStream = ReceiverStream<Result<pb::PullProgress, Status>>;

    async fn pull_range(
        &self,
        req: Request<pb::PullRangeRequest>,
    ) -> Result<Response<Self::PullRangeStream>, Status> {
        let labels = crate::metrics::OpLabels { op: "pull_range" };
        self.node.metrics.requests.get_or_create(&labels).inc();
        let req = req.into_inner();
        crate::pull::check(&req, self.node.tls.is_some())?;
        let permit = self.node.pulls.clone().try_acquire_owned().map_err(|_| {
            Status::from(Error::Overloaded(format!(
                "{} range pulls are running on this node; retry later",
                self.node.limits.max_concurrent_pulls
            )))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.node.clone();
        drop(self.node.sup.spawn("pull-range", async move {
            let _permit = permit;
            crate::pull::run(node, req, tx).await
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn drop_range(
        &self,
        req: Request<pb::DropRangeRequest>,
    ) -> Result<Response<pb::DropRangeResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let range =
            convert::explicit_range(req.range, req.whole_ring).map_err(|e| e.to_status())?;
        let r = self.scan(move |s| s.drop_range(range)).await;
        self.observe("drop_range", started, &r);
        let records = r?;
        self.node.schedule_reclaim();
        Ok(Response::new(pb::DropRangeResponse { records }))
    }

    async fn node_info(
        &self,
        _req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        let d = self.node.disk.status();
        Ok(Response::new(pb::NodeInfoResponse {
            node_id: self.node.node_id.clone(),
            epoch: self.node.store.identity().actor().epoch,
            version: env!("CARGO_PKG_VERSION").to_string(),
            disk: Some(pb::DiskStatus {
                usage_percent: d.usage_percent,
                available_bytes: d.available_bytes,
                total_bytes: d.total_bytes,
                is_throttled: d.is_throttled,
                is_circuit_broken: d.is_circuit_broken,
                state: d.state.as_str().to_string(),
            }),
            maintenance: self.node.maintenance(),
            uptime_secs: self.node.started.elapsed().as_secs(),
            data_dir: self.node.data_dir.display().to_string(),
            unrepaired_outage_ms: self.node.outage.outage_ms(),
            started_at_ms: self.node.outage.started_ms(),
        }))
    }
}

/// Most buckets one `RepairDigest` call may ask for (bounds the response).
const MAX_REPAIR_BUCKETS: u64 = 1 << 20;

/// Checks the sizes of an anti-entropy filter and its tenant ids.
pub(crate) fn check_filter(
    sub_ranges: usize,
    tenant_ids: &[String],
    key_hashes: usize,
) -> Result<()> {
    if sub_ranges > MAX_FILTER_RANGES || key_hashes > MAX_FILTER_KEYS {
        return Err(Error::Invalid(Common::InvalidArgument(format!(
            "a filter may name at most {MAX_FILTER_RANGES} sub-ranges and {MAX_FILTER_KEYS} key hashes"
        ))));
    }
    Ok(pairdb_common::validate::tenant_filter(tenant_ids)?)
}

/// The anti-entropy narrowing of a stream or pull request, within its limits.
pub(crate) fn filter_from(
    sub_ranges: Vec<pb::TokenRange>,
    tenant_ids: Vec<String>,
    key_hashes: Vec<u64>,
) -> Result<crate::store::Filter> {
    check_filter(sub_ranges.len(), &tenant_ids, key_hashes.len())?;
    Ok(crate::store::Filter {
        sub_ranges: sub_ranges
            .into_iter()
            .map(|r| convert::range_from_pb(Some(r)))
            .collect(),
        tenants: tenant_ids.into_iter().collect(),
        key_hashes: key_hashes.into_iter().collect(),
    })
}

/// Longest descent session id.
const MAX_SESSION_BYTES: usize = 128;

fn check_session(session: &str) -> Result<()> {
    if session.len() > MAX_SESSION_BYTES {
        return Err(Error::Invalid(Common::InvalidArgument(format!(
            "session id is {} bytes; the limit is {MAX_SESSION_BYTES}",
            session.len()
        ))));
    }
    Ok(())
}

/// The salt of a descent session's short hashes.
fn session_salt(session: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(session.as_bytes(), 0)
}

#[cfg(test)]
mod tests {
    //! Request conversion of hostile bytes (mirrors the `request` fuzz target): converting any
    //! WriteOp or KeyVersions never panics, and what converts is within the node's limits.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn valid_op() -> pb::WriteOp {
        let mut vv = pairdb_common::version::VersionVector::new();
        vv.raise(&pairdb_common::version::Actor::new("n2", 7), 9);
        pb::WriteOp {
            tenant_id: "t1".into(),
            key: b"k".to_vec(),
            value: b"value".to_vec(),
            context: context::encode_internal(&vv),
            idempotency_key: "idem".into(),
            ..Default::default()
        }
    }

    fn check(bytes: &[u8]) {
        if let Ok(op) = pb::WriteOp::decode(bytes)
            && let Ok(c) = write_cmd(op)
        {
            assert!(
                c.context.len()
                    <= pairdb_common::validate::MAX_CONTEXT_ENTRIES
                        + pairdb_common::validate::MAX_CONTEXT_DOTS
            );
        }
        if let Ok(kv) = pb::KeyVersions::decode(bytes) {
            let _ = apply_cmd(kv);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes);
        }

        #[test]
        fn mutated_requests_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = valid_op().encode_to_vec();
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] ^= b;
            }
            check(&bytes);
        }
    }
}
