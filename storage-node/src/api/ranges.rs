//! Range RPCs: streams and pulls, digests and key listings for verification and repair,
//! tombstone purges, range drops and the outage mark.

use super::*;

/// Most buckets one `RepairDigest` call may ask for (bounds the response).
pub(super) const MAX_REPAIR_BUCKETS: u64 = 1 << 20;

/// Longest descent session id.
pub(super) const MAX_SESSION_BYTES: usize = 128;

pub(super) fn check_session(session: &str) -> Result<()> {
    if session.len() > MAX_SESSION_BYTES {
        return Err(Error::Invalid(Common::InvalidArgument(format!(
            "session id is {} bytes; the limit is {MAX_SESSION_BYTES}",
            session.len()
        ))));
    }
    Ok(())
}

/// The salt of a descent session's short hashes.
pub(super) fn session_salt(session: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(session.as_bytes(), 0)
}

impl StorageApi {
    pub(super) async fn rpc_stream_range(
        &self,
        req: Request<pb::StreamRangeRequest>,
    ) -> Result<Response<<StorageApi as StorageNodeService>::StreamRangeStream>, Status> {
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
            metrics.served("stream_range", started.elapsed().as_secs_f64());
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    pub(super) async fn rpc_range_digest(
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

    pub(super) async fn rpc_repair_digest(
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

    pub(super) async fn rpc_repair_keys(
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

    pub(super) async fn rpc_purge_tombstones(
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

    pub(super) async fn rpc_mark_repaired(
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

    pub(super) async fn rpc_pull_range(
        &self,
        req: Request<pb::PullRangeRequest>,
    ) -> Result<Response<<StorageApi as StorageNodeService>::PullRangeStream>, Status> {
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

    pub(super) async fn rpc_drop_range(
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

    pub(super) async fn rpc_drop_tenant_range(
        &self,
        req: Request<pb::DropTenantRangeRequest>,
    ) -> Result<Response<pb::DropRangeResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let range =
            convert::explicit_range(req.range, req.whole_ring).map_err(|e| e.to_status())?;
        pairdb_common::validate::tenant_id(&req.tenant_id).map_err(|e| e.to_status())?;
        let tenant = req.tenant_id;
        let r = self
            .scan(move |s| s.drop_tenant_range(range, &tenant))
            .await;
        self.observe("drop_tenant_range", started, &r);
        let records = r?;
        self.node.schedule_reclaim();
        Ok(Response::new(pb::DropRangeResponse { records }))
    }
}
