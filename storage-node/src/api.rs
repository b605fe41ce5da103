//! `pairdb.StorageNodeService`: the gRPC edge of the storage node. Converts wire types to store
//! commands, enforces maintenance mode, counts and times every RPC. Only this module (and
//! `pairdb_common::convert`) touches prost types on the node.

use std::sync::Arc;
use std::time::Instant;

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

    /// Runs a write. Without `sync_writes` a RocksDB write is a memtable insert plus an
    /// unsynced WAL append (microseconds), cheaper inline than a hop to the blocking pool; with
    /// it, the fsync runs on a blocking thread (concurrent ones share one fsync).
    async fn write_path<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T> {
        if self.node.store.sync_writes() {
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
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| {
                Error::Engine(crate::engine::EngineError::Io(format!(
                    "storage task failed: {e}"
                )))
            })
    }
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
        context: context::decode(&op.context)?,
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
            let cmd = write_cmd(req.into_inner())?;
            let mut out = self.write_path(move |s| s.write_many(vec![cmd])).await?;
            out.pop()
                .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
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
            // Decode each op; a bad one fails alone.
            let decoded: Vec<Result<WriteCmd>> = ops.into_iter().map(write_cmd).collect();
            let good: Vec<WriteCmd> = decoded
                .iter()
                .filter_map(|d| d.as_ref().ok().cloned())
                .collect();
            let mut done = self
                .blocking(move |s| s.write_many(good))
                .await?
                .into_iter();
            let results = decoded
                .into_iter()
                .map(|d| {
                    match d.and_then(|_| {
                        done.next()
                            .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
                    }) {
                        Ok(w) => write_result(w),
                        Err(e) => pb::WriteResult {
                            error: item_error(&e),
                            ..Default::default()
                        },
                    }
                })
                .collect();
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
            let cmd = apply_cmd(req.into_inner())?;
            if is_client_origin(cmd.origin) {
                self.serving_clients()?;
            }
            let mut out = self.write_path(move |s| s.apply_many(vec![cmd])).await?;
            out.pop()
                .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
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
            let decoded: Vec<Result<ApplyCmd>> = items
                .into_iter()
                .map(|kv| {
                    let c = apply_cmd(kv)?;
                    if maintenance && is_client_origin(c.origin) {
                        return Err(Error::Maintenance);
                    }
                    Ok(c)
                })
                .collect();
            let good: Vec<ApplyCmd> = decoded
                .iter()
                .filter_map(|d| d.as_ref().ok().cloned())
                .collect();
            let mut done = self
                .blocking(move |s| s.apply_many(good))
                .await?
                .into_iter();
            let results = decoded
                .into_iter()
                .map(|d| {
                    match d.and_then(|_| {
                        done.next()
                            .unwrap_or_else(|| Err(Error::Overloaded("no result".into())))
                    }) {
                        Ok(a) => apply_result(a),
                        Err(e) => pb::ApplyResult {
                            error: item_error(&e),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            Ok(pb::BatchApplyResponse { results })
        }
        .await;
        self.observe("batch_apply", started, &r);
        Ok(Response::new(r?))
    }

    async fn read(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::ReadResult>, Status> {
        let started = Instant::now();
        let r = (|| {
            self.serving_clients()?;
            let k = req.into_inner();
            self.node.store.read(&k.tenant_id, &k.key)
        })();
        self.observe("read", started, &r);
        Ok(Response::new(read_result(r?, self.node.outage.outage_ms())))
    }

    async fn batch_read(
        &self,
        req: Request<pb::BatchReadRequest>,
    ) -> Result<Response<pb::BatchReadResponse>, Status> {
        let started = Instant::now();
        let r = (|| {
            self.serving_clients()?;
            let keys = req.into_inner().keys;
            check_batch(keys.len())?;
            let outage = self.node.outage.outage_ms();
            let results = keys
                .into_iter()
                .map(|k| match self.node.store.read(&k.tenant_id, &k.key) {
                    Ok(s) => read_result(s, outage),
                    Err(e) => pb::ReadResult {
                        error: item_error(&e),
                        ..Default::default()
                    },
                })
                .collect();
            Ok(pb::BatchReadResponse { results })
        })();
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
        let filter = filter_from(req.sub_ranges, req.tenant_ids, req.key_hashes);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.node.store.clone();
        let metrics = self.node.metrics.clone();
        tokio::task::spawn_blocking(move || {
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
                tx.blocking_send(Ok(msg)).is_ok()
            };
            let r = store.stream_range(
                range,
                &req.resume_after,
                batch_size,
                req.max_bytes_per_sec,
                &filter,
                &mut sink,
            );
            if let Err(e) = &r {
                tracing::error!(%range, error = %e, "range stream failed");
                metrics.error("stream_range", e.to_common().code());
                let _ = tx.blocking_send(Err(e.clone().into()));
            }
            let labels = crate::metrics::OpLabels { op: "stream_range" };
            metrics.requests.get_or_create(&labels).inc();
            metrics
                .latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        });
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
        let r = self
            .blocking(move |s| s.range_digest(range, buckets))
            .await
            .and_then(|d| d);
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
            .blocking(move |s| {
                let session = scope
                    .filter(|_| !session.is_empty())
                    .map(|sc| (session.as_str(), sc));
                s.repair_digest(&queries, &tenants, session)
            })
            .await
            .and_then(|d| d);
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
            .blocking(move |s| {
                let mode = if short {
                    crate::store::Listing::Short { salt }
                } else {
                    crate::store::Listing::Full { salt, only: &only }
                };
                s.repair_keys(&ranges, &tenants, mode)
            })
            .await
            .and_then(|d| d);
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
        let range = convert::range_from_pb(req.range);
        let tenants = req.tenant_ids.into_iter().collect();
        let before = req.written_before_ms;
        let r = self
            .blocking(move |s| s.purge_tombstones(range, &tenants, before))
            .await
            .and_then(|d| d);
        self.observe("purge_tombstones", started, &r);
        Ok(Response::new(pb::PurgeTombstonesResponse { purged: r? }))
    }

    async fn mark_repaired(
        &self,
        req: Request<pb::MarkRepairedRequest>,
    ) -> Result<Response<pb::MarkRepairedResponse>, Status> {
        let at = req.into_inner().node_started_at_ms;
        let outage = self.node.outage.clone();
        let cleared = tokio::task::spawn_blocking(move || outage.mark_repaired(at))
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
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::pull::run(self.node.clone(), req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn drop_range(
        &self,
        req: Request<pb::DropRangeRequest>,
    ) -> Result<Response<pb::DropRangeResponse>, Status> {
        let started = Instant::now();
        let range = convert::range_from_pb(req.into_inner().range);
        let r = self
            .blocking(move |s| s.drop_range(range))
            .await
            .and_then(|d| d);
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

/// The anti-entropy narrowing of a stream or pull request.
pub(crate) fn filter_from(
    sub_ranges: Vec<pb::TokenRange>,
    tenant_ids: Vec<String>,
    key_hashes: Vec<u64>,
) -> crate::store::Filter {
    crate::store::Filter {
        sub_ranges: sub_ranges
            .into_iter()
            .map(|r| convert::range_from_pb(Some(r)))
            .collect(),
        tenants: tenant_ids.into_iter().collect(),
        key_hashes: key_hashes.into_iter().collect(),
    }
}

/// The salt of a descent session's short hashes.
fn session_salt(session: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(session.as_bytes(), 0)
}
