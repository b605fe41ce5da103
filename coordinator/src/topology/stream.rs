//! Streaming one range of a change to its gaining node and proving it arrived: the gaining
//! node pulls the range from a live current replica (`PullRange`, merged, so writes it took
//! meanwhile as a pending replica are kept), failing over to the next replica from the last
//! resume key; then range digests of gaining node and source are compared, differing buckets
//! pulled again, until the digests are equal or a whole pass changed nothing.

use pairdb_common::api::pb;
use pairdb_common::convert;
use pairdb_common::token::TokenRange;

use super::plan::{TaskState, hex, unhex};
use super::{ChangeRun, Topology, failed};
use crate::cluster::NodeEntry;
use crate::jobs::JobError;
use crate::node_call::{self, RPC_TIMEOUT};

/// Digest rounds before a range counts as not converged (retried later).
const VERIFY_ROUNDS: usize = 6;
const DIGEST_BUCKETS: u32 = 64;

impl Topology {
    /// Streams and verifies task `i` of a streaming change.
    pub(super) async fn transfer(&self, i: usize, run: &ChangeRun) -> Result<(), JobError> {
        failed(run, i, self.transfer_once(i, run).await)
    }

    async fn transfer_once(&self, i: usize, run: &ChangeRun) -> Result<(), JobError> {
        let task = run.lock().plan[i].clone();
        let snap = self.cluster.snapshot();
        let range = task.range();
        let dst = snap.nodes.get(&task.node).cloned().ok_or_else(|| {
            JobError::Precondition(format!("gaining node {} is not a member", task.node))
        })?;
        let mut source = task.source.clone();
        if task.state == TaskState::Pending {
            let mut last_err = JobError::Precondition(format!("no live source for {range}"));
            let mut done = false;
            // Live sources first, in preference order; then the rest (health may lag).
            let mut order: Vec<&String> = task
                .sources
                .iter()
                .filter(|s| snap.nodes.get(*s).is_some_and(|e| e.health.is_available()))
                .collect();
            let rest: Vec<&String> = task.sources.iter().filter(|s| !order.contains(s)).collect();
            order.extend(rest);
            for sid in order {
                let Some(src) = snap.nodes.get(sid).cloned() else {
                    continue;
                };
                let resume = unhex(&run.lock().plan[i].resume);
                let mut seen = (0u64, 0u64);
                let r = self
                    .pull(&dst, &src, range, Vec::new(), resume, run, |p| {
                        let mut w = run.lock();
                        let t = &mut w.plan[i];
                        t.resume = hex(&p.last_data_key);
                        t.keys += p.keys - seen.0;
                        t.bytes += p.bytes - seen.1;
                        self.metrics.stream_keys.inc_by(p.keys - seen.0);
                        self.metrics.stream_bytes.inc_by(p.bytes - seen.1);
                        seen = (p.keys, p.bytes);
                    })
                    .await;
                match r {
                    Ok(_) => {
                        source = Some(sid.clone());
                        done = true;
                        break;
                    }
                    Err(e) => {
                        run.check()?;
                        tracing::warn!(%range, gaining = %task.node, source = %sid, error = %e, "range stream broke; resuming from the next replica");
                        run.lock().plan[i].attempts += 1;
                        last_err = e;
                    }
                }
            }
            if !done {
                return Err(last_err);
            }
            let mut w = run.lock();
            w.plan[i].state = TaskState::Streamed;
            w.plan[i].source = source.clone();
        }
        // Verify against the source (or, if it is gone, another live replica).
        let candidates: Vec<String> = source.into_iter().chain(task.sources.clone()).collect();
        let mut last_err =
            JobError::Precondition(format!("no live replica to verify {range} against"));
        for sid in candidates {
            let Some(src) = snap.nodes.get(&sid).cloned() else {
                continue;
            };
            if !src.health.is_available() {
                continue;
            }
            match self.verify(&dst, &src, range, run).await {
                Ok(()) => {
                    let mut w = run.lock();
                    w.plan[i].state = TaskState::Verified;
                    w.plan[i].error = None;
                    return Ok(());
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Has `dst` pull `range` (of `tenants`, empty = all) from `src`, reporting each progress
    /// message; resumable.
    #[allow(clippy::too_many_arguments)]
    async fn pull(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        range: TokenRange,
        tenants: Vec<String>,
        resume: Vec<u8>,
        run: &ChangeRun,
        on: impl FnMut(&pb::PullProgress),
    ) -> Result<pb::PullProgress, JobError> {
        let (source_address, source_node_id) = node_call::source_of(src);
        let req = pb::PullRangeRequest {
            range: Some(convert::range_to_pb(range)),
            source_address,
            source_node_id,
            resume_after: resume,
            batch_size: self.cfg.stream_batch_size,
            max_bytes_per_sec: self.cfg.stream_max_bytes_per_sec,
            tenant_ids: tenants,
            ..Default::default()
        };
        node_call::pull(dst, req, run.cancel_token(), on)
            .await
            .map_err(|e| match e {
                node_call::CallError::Cancelled { .. } => run.stopped(),
                e => e.into(),
            })
    }

    async fn digest(
        &self,
        node: &NodeEntry,
        range: TokenRange,
    ) -> Result<Vec<pb::DigestBucket>, JobError> {
        let mut c = node.client.clone();
        let req = pb::RangeDigestRequest {
            range: Some(convert::range_to_pb(range)),
            buckets: DIGEST_BUCKETS,
        };
        Ok(
            node_call::call(node, "range digest", RPC_TIMEOUT, c.range_digest(req))
                .await?
                .buckets,
        )
    }

    /// Proves that `dst` holds everything `src` holds in `range` (see the module docs).
    pub(super) async fn verify(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        range: TokenRange,
        run: &ChangeRun,
    ) -> Result<(), JobError> {
        for _ in 0..VERIFY_ROUNDS {
            let (a, b) = tokio::join!(self.digest(src, range), self.digest(dst, range));
            let (a, b) = (a?, b?);
            let differing: Vec<TokenRange> = a
                .iter()
                .zip(b.iter())
                .filter(|(x, y)| x.hash != y.hash)
                .map(|(x, _)| convert::range_from_pb(x.range))
                .collect();
            if differing.is_empty() && a.len() == b.len() {
                return Ok(());
            }
            let mut changed = 0u64;
            for r in differing {
                changed += self
                    .pull(dst, src, r, Vec::new(), Vec::new(), run, |_| {})
                    .await?
                    .changed;
            }
            if changed == 0 {
                return Ok(());
            }
        }
        Err(JobError::Precondition(format!(
            "{} did not converge with {} over {range} in {VERIFY_ROUNDS} rounds",
            dst.record.node_id, src.record.node_id
        )))
    }

    /// [`Self::verify`] for one tenant's records only (digests cover every tenant, and other
    /// tenants' replica sets differ): `dst` pulls the tenant's records of `range` from `src`
    /// until a pass changes nothing there.
    pub(super) async fn verify_tenant(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        range: TokenRange,
        tenant: &str,
        run: &ChangeRun,
    ) -> Result<(), JobError> {
        for _ in 0..VERIFY_ROUNDS {
            let tenants = vec![tenant.to_string()];
            let p = self
                .pull(dst, src, range, tenants, Vec::new(), run, |_| {})
                .await?;
            if p.changed == 0 {
                return Ok(());
            }
        }
        Err(JobError::Precondition(format!(
            "{} did not converge with {} over {range} for tenant {tenant} in {VERIFY_ROUNDS} rounds",
            dst.record.node_id, src.record.node_id
        )))
    }
}
