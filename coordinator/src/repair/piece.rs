//! One piece of a repair: compared across its replicas by a Merkle-style descent
//! (`RepairDigest`, batched per replica and level), whole buckets pulled into replicas holding
//! nothing there, leaves handed to `keys`, and tombstones purged once the replicas hash equal.

use std::collections::HashMap;
use std::sync::Arc;

use pairdb_common::api::pb;
use pairdb_common::ring;
use pairdb_common::token::TokenRange;
use pairdb_common::{convert, now_ms};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::compare::{Compared, LEAF_KEYS, Probe, fanout, regroup, sort_within};
use super::{ROUNDS, Repairs};
use crate::cluster::NodeEntry;
use crate::jobs::JobError;
use crate::node_call::{self, CallError, RPC_TIMEOUT};

/// Deepest descent (a bucket of width 1 cannot be split anyway).
const MAX_DEPTH: usize = 16;
/// Buckets asked for in one `RepairDigest` call, and leaf ranges in one `RepairKeys` call.
const BUCKETS_PER_CALL: u64 = 1 << 16;
const LEAVES_PER_CALL: usize = 4096;

/// What comparing and repairing one piece found and did.
#[derive(Debug, Default, Clone)]
pub(super) struct PieceStats {
    pub keys_differing: u64,
    pub keys_transferred: u64,
    pub bytes_transferred: u64,
    pub digest_bytes: u64,
    pub corrupt: u64,
    pub recovered: u64,
    pub lost: Vec<String>,
    pub converged: bool,
    pub tombstones_purged: u64,
}

impl PieceStats {
    fn add(&mut self, o: &PieceStats) {
        self.keys_differing += o.keys_differing;
        self.keys_transferred += o.keys_transferred;
        self.bytes_transferred += o.bytes_transferred;
        self.digest_bytes += o.digest_bytes;
        self.corrupt += o.corrupt;
        self.recovered += o.recovered;
        self.tombstones_purged += o.tombstones_purged;
        self.lost.extend(o.lost.iter().cloned());
    }
}

impl Repairs {
    /// Repairs one plan range: every piece of it (at the current ring's tokens) for every group.
    pub(super) async fn repair_range(
        &self,
        range: TokenRange,
        groups: &[(usize, Vec<String>)],
    ) -> Result<PieceStats, JobError> {
        let snap = self.cluster.snapshot();
        let mut total = PieceStats {
            converged: true,
            ..Default::default()
        };
        for (rf, tenants) in groups {
            for piece in ring::cut(range, &[&snap.ring]) {
                let replicas: Vec<Arc<NodeEntry>> = snap
                    .ring
                    .preference_list(piece.end, *rf)
                    .iter()
                    .filter_map(|m| snap.nodes.get(&m.node_id).cloned())
                    .collect();
                if let Some(down) = replicas.iter().find(|n| !n.health.is_available()) {
                    return Err(JobError::Precondition(format!(
                        "replica {} of {piece} is down; every replica must take part",
                        down.record.node_id
                    )));
                }
                let st = self.repair_piece(piece, &replicas, tenants).await?;
                total.converged &= st.converged;
                total.add(&st);
            }
        }
        self.metrics.repair_keys.inc_by(total.keys_transferred);
        self.metrics.repair_bytes.inc_by(total.bytes_transferred);
        self.metrics.repair_digest_bytes.inc_by(total.digest_bytes);
        Ok(total)
    }

    /// Compares one piece across its replicas and moves what differs, until the replicas hash
    /// equal or [`ROUNDS`] rounds ran.
    async fn repair_piece(
        &self,
        piece: TokenRange,
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
    ) -> Result<PieceStats, JobError> {
        let mut st = PieceStats::default();
        if replicas.len() < 2 {
            st.converged = true;
            return Ok(st);
        }
        for round in 0..=ROUNDS {
            // Each round is a fresh session: the nodes rescan the piece once for its descent,
            // and short hashes get a new salt.
            let session = format!("{}/{}/{round}", now_ms(), piece.start);
            let alone: Vec<Vec<usize>> = (0..replicas.len()).map(|r| vec![r]).collect();
            let mut level = vec![Probe {
                range: piece,
                buckets: 1,
                groups: alone,
            }];
            let mut leaves: Vec<Probe> = Vec::new();
            let mut whole: Vec<(usize, usize, TokenRange)> = Vec::new();
            // The whole piece is compared with full 64-bit hashes (convergence is decided
            // there); deeper levels with short ones.
            let mut short = false;
            for _ in 0..MAX_DEPTH {
                if level.is_empty() {
                    break;
                }
                let answers = self
                    .digests(replicas, &level, tenants, (&session, piece), short, &mut st)
                    .await?;
                short = true;
                let mut next = Vec::new();
                for (p, buckets) in level.iter().zip(answers) {
                    for (b, per_group) in p.range.split(p.buckets).into_iter().zip(buckets) {
                        match regroup(&p.groups, &per_group) {
                            Compared::Equal => {}
                            Compared::PullWhole { src, dsts } => {
                                whole.extend(dsts.into_iter().map(|d| (d, src, b)));
                            }
                            Compared::Differ { groups, most } => {
                                let probe = Probe {
                                    range: b,
                                    buckets: fanout(most),
                                    groups,
                                };
                                if most <= LEAF_KEYS || b.width() <= 1 {
                                    leaves.push(probe);
                                } else {
                                    next.push(probe);
                                }
                            }
                        }
                    }
                }
                level = next;
            }
            leaves.extend(level);
            if round == ROUNDS || (leaves.is_empty() && whole.is_empty()) {
                st.converged = leaves.is_empty() && whole.is_empty();
                if st.converged {
                    st.tombstones_purged += self.purge(piece, replicas, tenants).await?;
                }
                return Ok(st);
            }
            // Whole buckets to replicas holding nothing there.
            let mut pulls: HashMap<(usize, usize), Vec<TokenRange>> = HashMap::new();
            for (dst, src, b) in whole {
                pulls.entry((dst, src)).or_default().push(b);
            }
            for ((dst, src), ranges) in &mut pulls {
                sort_within(piece, ranges);
                let p = self
                    .pull(
                        &replicas[*dst],
                        &replicas[*src],
                        piece,
                        ranges,
                        &[],
                        tenants,
                    )
                    .await?;
                st.keys_differing += p.keys;
                st.keys_transferred += p.keys;
                st.bytes_transferred += p.bytes;
            }
            // Leaves: key by key.
            leaves.sort_unstable_by_key(|p| p.range.start.wrapping_sub(piece.start));
            for chunk in leaves.chunks(LEAVES_PER_CALL) {
                self.repair_leaves(piece, chunk, replicas, tenants, &session, &mut st)
                    .await?;
            }
        }
        Ok(st)
    }

    /// Tombstone GC on a piece every replica was just found to hold identically: each replica
    /// drops the tombstones older than the grace, the same ones everywhere.
    async fn purge(
        &self,
        piece: TokenRange,
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
    ) -> Result<u64, JobError> {
        let before = now_ms().saturating_sub(self.cfg.gc_grace_ms);
        let calls = replicas.iter().map(|n| {
            let mut c = n.client.clone();
            let (range, whole_ring) = convert::explicit_range_to_pb(piece);
            let req = pb::PurgeTombstonesRequest {
                range,
                tenant_ids: tenants.to_vec(),
                written_before_ms: before,
                whole_ring,
            };
            async move {
                node_call::call(n, "tombstone purge", RPC_TIMEOUT, c.purge_tombstones(req))
                    .await
                    .map(|r| r.purged)
            }
        });
        let mut most = 0;
        for r in futures::future::join_all(calls).await {
            most = most.max(r?);
        }
        Ok(most)
    }

    /// One level of the descent: each probe's buckets from one replica per group (its first
    /// member). Per probe, per bucket, per group: `(hash, keys)` (short hashes widened).
    async fn digests(
        &self,
        replicas: &[Arc<NodeEntry>],
        level: &[Probe],
        tenants: &[String],
        (session, scope): (&str, TokenRange),
        short: bool,
        st: &mut PieceStats,
    ) -> Result<Vec<Vec<Vec<(u64, u64)>>>, JobError> {
        let mut out: Vec<Vec<Vec<(u64, u64)>>> = level
            .iter()
            .map(|p| vec![vec![(0, 0); p.groups.len()]; p.range.split(p.buckets).len()])
            .collect();
        let mut start = 0;
        while start < level.len() {
            let mut end = start;
            let mut buckets = 0u64;
            while end < level.len()
                && (end == start || buckets + u64::from(level[end].buckets) <= BUCKETS_PER_CALL)
            {
                buckets += u64::from(level[end].buckets);
                end += 1;
            }
            // Per replica: the (probe, group) pairs it answers for.
            let mut asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); replicas.len()];
            for (pi, p) in level.iter().enumerate().take(end).skip(start) {
                for (g, members) in p.groups.iter().enumerate() {
                    asked[members[0]].push((pi, g));
                }
            }
            let calls = asked.iter().enumerate().map(|(r, pairs)| {
                let n = &replicas[r];
                let mut c = n.client.clone();
                let req = pb::RepairDigestRequest {
                    queries: pairs
                        .iter()
                        .map(|(pi, _)| pb::DigestQuery {
                            range: Some(convert::range_to_pb(level[*pi].range)),
                            buckets: level[*pi].buckets,
                        })
                        .collect(),
                    tenant_ids: tenants.to_vec(),
                    session: session.to_string(),
                    scope: Some(convert::range_to_pb(scope)),
                    short_hashes: short,
                };
                let expected: usize = pairs
                    .iter()
                    .map(|(pi, _)| level[*pi].range.split(level[*pi].buckets).len())
                    .sum();
                async move {
                    if pairs.is_empty() {
                        return Ok(None);
                    }
                    let r = node_call::call(n, "repair digest", RPC_TIMEOUT, c.repair_digest(req))
                        .await?;
                    let got = if short {
                        r.short_hashes.len()
                    } else {
                        r.hashes.len()
                    };
                    if got != expected || r.keys.len() != expected {
                        return Err(CallError::bad_answer(
                            "repair digest",
                            n,
                            format!("answered {got} buckets, not {expected}"),
                        ));
                    }
                    Ok::<_, CallError>(Some(r))
                }
            });
            for (r, resp) in futures::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                let Some(resp) = resp? else { continue };
                st.digest_bytes += resp.encoded_len() as u64;
                let hashes: Vec<u64> = if short {
                    resp.short_hashes.iter().map(|h| u64::from(*h)).collect()
                } else {
                    resp.hashes
                };
                let mut i = 0;
                for (pi, g) in &asked[r] {
                    for slot in out[*pi].iter_mut() {
                        slot[*g] = (hashes[i], resp.keys[i]);
                        i += 1;
                    }
                }
            }
            start = end;
        }
        Ok(out)
    }

    /// Has `dst` pull from `src` the records of `sub_ranges` of `piece` (only `keys` when given).
    pub(super) async fn pull(
        &self,
        dst: &NodeEntry,
        src: &NodeEntry,
        piece: TokenRange,
        sub_ranges: &[TokenRange],
        keys: &[u64],
        tenants: &[String],
    ) -> Result<pb::PullProgress, JobError> {
        let (source_address, source_node_id) = node_call::source_of(src);
        let req = pb::PullRangeRequest {
            range: Some(convert::range_to_pb(piece)),
            source_address,
            source_node_id,
            max_bytes_per_sec: self.cfg.max_bytes_per_sec,
            sub_ranges: sub_ranges
                .iter()
                .map(|r| convert::range_to_pb(*r))
                .collect(),
            tenant_ids: tenants.to_vec(),
            key_hashes: keys.to_vec(),
            origin: pb::ApplyOrigin::AntiEntropy as i32,
            ..Default::default()
        };
        Ok(node_call::pull(dst, req, &CancellationToken::new(), |_| {}).await?)
    }
}
