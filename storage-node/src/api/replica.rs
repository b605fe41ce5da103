//! Replica RPCs: coordinated writes, applies, reads and record repair, single and batched,
//! with their conversion from wire types and per-item errors.

use super::*;

/// Requests whose values, contexts or states are larger than this are converted and applied
/// on a blocking thread, not on an async worker.
pub(super) const INLINE_BYTES: usize = 64 << 10;
/// Whether a write op is large enough to convert and apply off the async workers.
pub(super) fn big_op(op: &pb::WriteOp) -> bool {
    op.value.len() + op.context.len() > INLINE_BYTES
}

/// Whether a key state is large enough to convert and merge off the async workers.
pub(super) fn big_state(s: Option<&pb::KeyState>) -> bool {
    s.is_some_and(convert::is_large_state)
}

/// Most items a batch may hold and still run inline: past it (a hostile or odd caller; the
/// coordinator sends at most 256) the batch's CPU would hold an async worker too long.
pub(super) const INLINE_ITEMS: usize = 256;

/// Whether a batch of write ops is large enough to run off the async workers.
pub(super) fn big_write_batch(ops: &[pb::WriteOp]) -> bool {
    let mut bytes = 0usize;
    ops.len() > INLINE_ITEMS
        || ops.iter().any(|op| {
            bytes += op.key.len() + op.value.len() + op.context.len();
            bytes > INLINE_BYTES
        })
}

/// Whether a batch of key states is large enough to convert and merge off the async workers:
/// more than [`INLINE_ITEMS`], one large state, or more than [`INLINE_BYTES`] of values in all.
pub(super) fn big_apply_batch(items: &[pb::KeyVersions]) -> bool {
    let mut bytes = 0usize;
    items.len() > INLINE_ITEMS
        || items.iter().any(|kv| {
            let st = kv.state.as_ref();
            bytes +=
                kv.key.len() + st.map_or(0, |s| s.versions.iter().map(|v| v.value.len()).sum());
            big_state(st) || bytes > INLINE_BYTES
        })
}

/// Runs one batch: converts every item (a bad one fails alone), applies the good ones with
/// `apply`, and answers each in order (inline when the batch is small, else on a blocking
/// thread: see `StorageApi::write_path`).
pub(super) fn run_batch<Req, Cmd, Rep, Out>(
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

pub(super) fn check_batch(n: usize) -> Result<()> {
    if n > MAX_BATCH_ITEMS {
        return Err(Error::Invalid(pairdb_common::Error::InvalidArgument(
            format!("batch of {n} items; the limit is {MAX_BATCH_ITEMS}"),
        )));
    }
    Ok(())
}

pub(super) fn write_cmd(op: pb::WriteOp) -> Result<WriteCmd> {
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

pub(super) fn origin(o: i32) -> Origin {
    match pb::ApplyOrigin::try_from(o) {
        Ok(pb::ApplyOrigin::ReadRepair) => Origin::ReadRepair,
        Ok(pb::ApplyOrigin::Hint) => Origin::Hint,
        Ok(pb::ApplyOrigin::Stream) => Origin::Stream,
        Ok(pb::ApplyOrigin::AntiEntropy) => Origin::AntiEntropy,
        _ => Origin::Replica,
    }
}

/// Client-path origins are refused in maintenance mode; internal ones are not.
pub(super) fn is_client_origin(o: Origin) -> bool {
    matches!(o, Origin::Replica | Origin::ReadRepair | Origin::Hint)
}

pub(super) fn apply_cmd(kv: pb::KeyVersions) -> Result<ApplyCmd> {
    Ok(ApplyCmd {
        state: convert::state_from_pb(kv.state.unwrap_or_default())?,
        origin: origin(kv.origin),
        tenant: kv.tenant_id,
        key: kv.key,
        record: None,
    })
}

pub(super) fn write_result(r: WriteReply) -> pb::WriteResult {
    pb::WriteResult {
        version: Some(convert::version_to_pb(&r.version)),
        deduplicated: r.deduplicated,
        state: Some(convert::state_to_pb(&r.state)),
        error: None,
    }
}

pub(super) fn apply_result(r: ApplyReply) -> pb::ApplyResult {
    pb::ApplyResult {
        changed: r.changed,
        sibling_count: r.siblings as u32,
        error: None,
    }
}

pub(super) fn read_result(
    state: Option<pairdb_common::version::KeyState>,
    outage_ms: u64,
) -> pb::ReadResult {
    pb::ReadResult {
        exists: state.is_some(),
        state: state.map(|s| convert::state_to_pb(&s)),
        unrepaired_outage_ms: outage_ms,
        error: None,
    }
}

pub(super) fn item_error(e: &Error) -> Option<pb::ItemError> {
    Some(e.to_common().to_item())
}

impl StorageApi {
    pub(super) async fn rpc_write(
        &self,
        req: Request<pb::WriteOp>,
    ) -> Result<Response<pb::WriteResult>, Status> {
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

    pub(super) async fn rpc_batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let started = Instant::now();
        let r = async {
            self.serving_clients()?;
            let ops = req.into_inner().ops;
            check_batch(ops.len())?;
            let big = big_write_batch(&ops);
            let results = self
                .write_path(big, move |s| {
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

    pub(super) async fn rpc_apply(
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

    pub(super) async fn rpc_batch_apply(
        &self,
        req: Request<pb::BatchApplyRequest>,
    ) -> Result<Response<pb::BatchApplyResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let items = req.into_inner().items;
            check_batch(items.len())?;
            let maintenance = self.node.maintenance();
            let big = big_apply_batch(&items);
            let results = self
                .write_path(big, move |s| {
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

    pub(super) async fn rpc_read(
        &self,
        req: Request<pb::KeyRef>,
    ) -> Result<Response<pb::ReadResult>, Status> {
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

    pub(super) async fn rpc_batch_read(
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

    pub(super) async fn rpc_repair(
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
