//! Data RPCs: Write, Read, Delete and the batches, with the tenant check of the caller,
//! context tokens opened and sealed, and per-item errors for batches.

use super::*;

pub(super) fn sibling(v: &pairdb_common::version::Version) -> pb::Sibling {
    pb::Sibling {
        value: v.value.clone(),
        written_at_ms: v.written_at_ms,
        dot: Some(convert::dot_to_pb(&v.dot)),
        expires_at_ms: v.expires_at_ms,
    }
}

pub(super) fn check_batch(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH_ITEMS {
        return Err(E::InvalidArgument(format!(
            "a batch needs 1 to {MAX_BATCH_ITEMS} items, got {n}"
        ))
        .into());
    }
    Ok(())
}

pub(super) fn item_error_from_status(s: &Status) -> pb::ItemError {
    E::from_status(s).to_item()
}

impl CoordinatorApi {
    /// Opens a client's context token (counting refusals).
    pub(super) async fn open_context(
        &self,
        token: &[u8],
    ) -> Result<pairdb_common::version::VersionVector> {
        self.contexts.open(token).await.map_err(|e| {
            self.data.metrics.context_refusals.inc();
            e.into()
        })
    }

    pub(super) async fn do_write(
        &self,
        w: pb::WriteRequest,
        tombstone: bool,
    ) -> Result<pb::WriteResponse> {
        let ok = self
            .data
            .write(WriteReq {
                context: self.open_context(&w.context).await?,
                consistency: level(w.consistency),
                tenant: w.tenant_id,
                key: w.key,
                value: if tombstone { Vec::new() } else { w.value },
                tombstone,
                ttl_seconds: w.ttl_seconds,
                idempotency_key: w.idempotency_key,
                timeout_ms: w.timeout_ms,
            })
            .await?;
        Ok(pb::WriteResponse {
            context: self.contexts.seal(&ok.context),
            dot: Some(convert::dot_to_pb(&ok.dot)),
            replicas_acked: ok.acked,
            deduplicated: ok.deduplicated,
        })
    }

    /// A read; NOT_FOUND travels as a status whose ErrorInfo metadata carries the context
    /// (base64) so a client can still write with it.
    pub(super) async fn do_read(
        &self,
        r: pb::ReadRequest,
    ) -> std::result::Result<pb::ReadResponse, Status> {
        let res = self
            .data
            .read(ReadReq {
                tenant: r.tenant_id,
                key: r.key,
                consistency: level(r.consistency),
                timeout_ms: r.timeout_ms,
            })
            .await
            .map_err(Status::from)?;
        match res {
            Ok(ok) => Ok(pb::ReadResponse {
                value: ok.value.unwrap_or_default(),
                siblings: ok.siblings.iter().map(sibling).collect(),
                context: self.contexts.seal(&ok.context),
                replicas_responded: ok.responded,
            }),
            Err(nf) => {
                use base64::Engine;
                let mut meta = HashMap::new();
                meta.insert(
                    "context".to_string(),
                    base64::engine::general_purpose::STANDARD
                        .encode(self.contexts.seal(&nf.context)),
                );
                Err(E::KeyNotFound.to_status_with(meta))
            }
        }
    }
    pub(super) async fn rpc_write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> std::result::Result<Response<pb::WriteResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let r = self.do_write(req.into_inner(), false).await;
        self.observe("write", started, &r);
        Ok(Response::new(r?))
    }

    pub(super) async fn rpc_read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> std::result::Result<Response<pb::ReadResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let r = self.do_read(req.into_inner()).await;
        let m = &self.data.metrics;
        let l = OpLabels { op: "read" };
        m.requests.get_or_create(&l).inc();
        m.latency
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        if let Err(s) = &r {
            m.error("read", E::from_status(s).code());
        }
        Ok(Response::new(r?))
    }

    pub(super) async fn rpc_delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> std::result::Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let d = req.into_inner();
        let r = self
            .do_write(
                pb::WriteRequest {
                    tenant_id: d.tenant_id,
                    key: d.key,
                    context: d.context,
                    consistency: d.consistency,
                    timeout_ms: d.timeout_ms,
                    ..Default::default()
                },
                true,
            )
            .await;
        self.observe("delete", started, &r);
        let w = r?;
        Ok(Response::new(pb::DeleteResponse {
            context: w.context,
            replicas_acked: w.replicas_acked,
        }))
    }

    pub(super) async fn rpc_batch_write(
        &self,
        req: Request<pb::BatchWriteItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchWriteItemsResponse>, Status> {
        let started = Instant::now();
        let who = Principal::of(&req);
        let items = req.into_inner().items;
        for w in &items {
            who.check_tenant(&w.tenant_id).map_err(Error::from)?;
        }
        let r = check_batch(items.len());
        self.observe("batch_write", started, &r);
        r?;
        let futs = items.into_iter().map(|w| self.do_write(w, false));
        let results = futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(resp) => pb::BatchWriteItemResult {
                    response: Some(resp),
                    error: None,
                },
                Err(e) => pb::BatchWriteItemResult {
                    response: None,
                    error: Some(e.to_common().to_item()),
                },
            })
            .collect();
        Ok(Response::new(pb::BatchWriteItemsResponse { results }))
    }

    pub(super) async fn rpc_batch_read(
        &self,
        req: Request<pb::BatchReadItemsRequest>,
    ) -> std::result::Result<Response<pb::BatchReadItemsResponse>, Status> {
        let started = Instant::now();
        let who = Principal::of(&req);
        let items = req.into_inner().items;
        for r in &items {
            who.check_tenant(&r.tenant_id).map_err(Error::from)?;
        }
        let r = check_batch(items.len());
        self.observe("batch_read", started, &r);
        r?;
        let futs = items.into_iter().map(|r| self.do_read(r));
        // The answer stays inside a message: items past the budget fail with OVERLOADED (read
        // them on their own).
        let mut budget = BATCH_ANSWER_BUDGET_BYTES;
        let results = futures::future::join_all(futs)
            .await
            .into_iter()
            .map(|r| {
                match r {
                Ok(resp) => match budget.checked_sub(prost::Message::encoded_len(&resp)) {
                    Some(left) => {
                        budget = left;
                        pb::BatchReadItemResult {
                            response: Some(resp),
                            error: None,
                        }
                    }
                    None => pb::BatchReadItemResult {
                        response: None,
                        error: Some(
                            E::Overloaded(
                                "the batch answer would outgrow a message; read this key on its own"
                                    .into(),
                            )
                            .to_item(),
                        ),
                    },
                },
                Err(s) => pb::BatchReadItemResult {
                    response: None,
                    error: Some(item_error_from_status(&s)),
                },
            }
            })
            .collect();
        Ok(Response::new(pb::BatchReadItemsResponse { results }))
    }
}
