//! Key-by-key comparison of a piece's leaves (`RepairKeys`: short hashes first, then full
//! entries of the keys that differ), the pulls [`plan_key`] decides, and rebuilding corrupt
//! records from the other replicas' intact states (`Repair`), or reporting them lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pairdb_common::api::pb;
use pairdb_common::convert;
use pairdb_common::token::{self, TokenRange};
use pairdb_common::version::KeyState;
use prost::Message;

use super::Repairs;
use super::compare::{KeyView, Listing, Probe, plan_key};
use super::piece::PieceStats;
use crate::cluster::NodeEntry;
use crate::jobs::JobError;
use crate::node_call::{self, CallError, RPC_TIMEOUT};

impl Repairs {
    /// Compares `leaves` key by key and has each replica pull the keys it lacks; rebuilds
    /// corrupt records from the other replicas. First pass: short key and state hashes from
    /// one replica per group; second pass: full entries (dots, context) of the differing keys.
    pub(super) async fn repair_leaves(
        &self,
        piece: TokenRange,
        leaves: &[Probe],
        replicas: &[Arc<NodeEntry>],
        tenants: &[String],
        session: &str,
        st: &mut PieceStats,
    ) -> Result<(), JobError> {
        let n = replicas.len();
        // Per replica: the (leaf, group) pairs it lists for.
        let mut asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for (li, l) in leaves.iter().enumerate() {
            for (g, members) in l.groups.iter().enumerate() {
                asked[members[0]].push((li, g));
            }
        }
        let first = self
            .list_keys(replicas, leaves, &asked, tenants, session, None, st)
            .await?;
        // Per leaf: short key → per group its short state (None: the group lacks the key).
        let mut shorts: Vec<HashMap<u32, Vec<Option<u32>>>> = vec![HashMap::new(); leaves.len()];
        // Per corrupt key, the replicas whose record of it failed its checksum.
        let mut corrupt: HashMap<(String, Vec<u8>), Vec<usize>> = HashMap::new();
        for (r, resp) in first.into_iter().enumerate() {
            let Some(resp) = resp else { continue };
            let mut at = 0usize;
            for ((li, g), count) in asked[r].iter().zip(&resp.range_counts) {
                let groups = leaves[*li].groups.len();
                for k in at..at + *count as usize {
                    let (Some(key), Some(state)) =
                        (resp.short_keys.get(k), resp.short_states.get(k))
                    else {
                        return Err(CallError::bad_answer(
                            "key listing",
                            &replicas[r],
                            "counts and keys disagree",
                        )
                        .into());
                    };
                    shorts[*li]
                        .entry(*key)
                        .or_insert_with(|| vec![None; groups])[*g] = Some(*state);
                }
                at += *count as usize;
            }
            for c in resp.corrupt {
                let tok = token::token(&c.tenant_id, &c.key);
                // The group holding a corrupt record is that replica alone (its hash is unique).
                let on = asked[r]
                    .iter()
                    .find(|(li, _)| leaves[*li].range.contains(tok))
                    .map(|(li, g)| leaves[*li].groups[*g].clone())
                    .unwrap_or_else(|| vec![r]);
                corrupt.entry((c.tenant_id, c.key)).or_default().extend(on);
            }
        }
        // Second pass: full entries of the keys whose state differs between groups.
        let mut wanted: Vec<HashSet<u32>> = vec![HashSet::new(); n];
        let mut differing = 0u64;
        for (li, keys) in shorts.iter().enumerate() {
            for (k, per_group) in keys {
                let first = per_group.iter().flatten().next();
                if per_group.iter().all(|s| s.as_ref() == first) {
                    continue;
                }
                differing += 1;
                for (g, s) in per_group.iter().enumerate() {
                    if s.is_some() {
                        wanted[leaves[li].groups[g][0]].insert(*k);
                    }
                }
            }
        }
        st.keys_differing += differing;
        let mut second_asked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for r in 0..n {
            if !wanted[r].is_empty() {
                second_asked[r] = asked[r].clone();
            }
        }
        let full = self
            .list_keys(
                replicas,
                leaves,
                &second_asked,
                tenants,
                session,
                Some(wanted.as_slice()),
                st,
            )
            .await?;
        let mut listing: Listing = HashMap::new();
        for (r, resp) in full.into_iter().enumerate() {
            let Some(resp) = resp else { continue };
            let mut dots = resp
                .dot_actors
                .iter()
                .copied()
                .zip(resp.dot_counters.iter().copied());
            let mut ctx = resp
                .context_actors
                .iter()
                .copied()
                .zip(resp.context_counters.iter().copied());
            let mut at = 0usize;
            for ((li, g), count) in second_asked[r].iter().zip(&resp.range_counts) {
                for k in at..at + *count as usize {
                    let (Some(kh), Some(sh), Some(dc), Some(cc)) = (
                        resp.key_hashes.get(k),
                        resp.state_hashes.get(k),
                        resp.dot_counts.get(k),
                        resp.context_counts.get(k),
                    ) else {
                        return Err(CallError::bad_answer(
                            "key listing",
                            &replicas[r],
                            "counts and keys disagree",
                        )
                        .into());
                    };
                    let mut view = KeyView {
                        state: *sh,
                        dots: dots.by_ref().take(*dc as usize).collect(),
                        context: ctx.by_ref().take(*cc as usize).collect(),
                    };
                    view.dots.sort_unstable();
                    let per = listing.entry(*kh).or_insert_with(|| vec![None; n]);
                    for m in &leaves[*li].groups[*g] {
                        per[*m] = Some(view.clone());
                    }
                }
                at += *count as usize;
            }
        }
        // Corrupt records are rebuilt through Repair, never pulled into (merges refuse them).
        let corrupt_hashes: HashSet<(usize, u64)> = corrupt
            .iter()
            .flat_map(|((t, k), on)| {
                let kh = token::key_hash(&token::data_key(t, k));
                on.iter().map(move |i| (*i, kh))
            })
            .collect();
        let mut pulls: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
        for (kh, per) in &listing {
            let first = per.iter().flatten().next().map(|v| v.state);
            if per.iter().all(|v| v.as_ref().map(|v| v.state) == first) {
                continue;
            }
            for (dst, src) in plan_key(per) {
                if !corrupt_hashes.contains(&(dst, *kh)) {
                    pulls.entry((dst, src)).or_default().push(*kh);
                }
            }
        }
        let ranges: Vec<TokenRange> = leaves.iter().map(|l| l.range).collect();
        let mut pulls: Vec<_> = pulls.into_iter().collect();
        pulls.sort_unstable_by_key(|((d, s), _)| (*d, *s));
        for ((dst, src), keys) in pulls {
            let p = self
                .pull(
                    &replicas[dst],
                    &replicas[src],
                    piece,
                    &ranges,
                    &keys,
                    tenants,
                )
                .await?;
            st.keys_transferred += p.keys;
            st.bytes_transferred += p.bytes;
        }
        let mut corrupt: Vec<_> = corrupt.into_iter().collect();
        corrupt.sort_unstable();
        for ((tenant, key), mut on) in corrupt {
            // A lost record is met again in every round; it is reported once.
            if st.lost.contains(&token::display_key(&tenant, &key)) {
                continue;
            }
            on.sort_unstable();
            on.dedup();
            st.corrupt += on.len() as u64;
            self.metrics.corrupted_entries.inc_by(on.len() as u64);
            let bad: Vec<&Arc<NodeEntry>> = on.iter().map(|i| &replicas[*i]).collect();
            match self.recover(&bad, replicas, &tenant, &key).await? {
                true => st.recovered += on.len() as u64,
                false => st.lost.push(token::display_key(&tenant, &key)),
            }
        }
        Ok(())
    }

    /// `RepairKeys` on each replica for the leaves it is asked for (in that order): short
    /// hashes when `wanted` is `None`, else full entries of the wanted short keys.
    #[allow(clippy::too_many_arguments)]
    async fn list_keys(
        &self,
        replicas: &[Arc<NodeEntry>],
        leaves: &[Probe],
        asked: &[Vec<(usize, usize)>],
        tenants: &[String],
        session: &str,
        wanted: Option<&[HashSet<u32>]>,
        st: &mut PieceStats,
    ) -> Result<Vec<Option<pb::RepairKeysResponse>>, JobError> {
        let calls = asked.iter().enumerate().map(|(r, pairs)| {
            let n = &replicas[r];
            let mut c = n.client.clone();
            let req = pb::RepairKeysRequest {
                ranges: pairs
                    .iter()
                    .map(|(li, _)| convert::range_to_pb(leaves[*li].range))
                    .collect(),
                tenant_ids: tenants.to_vec(),
                short: wanted.is_none(),
                session: session.to_string(),
                only_short_keys: wanted
                    .map(|w| w[r].iter().copied().collect())
                    .unwrap_or_default(),
            };
            async move {
                if pairs.is_empty() {
                    return Ok(None);
                }
                let resp =
                    node_call::call(n, "key listing", RPC_TIMEOUT, c.repair_keys(req)).await?;
                if resp.range_counts.len() != pairs.len() {
                    return Err(CallError::bad_answer(
                        "key listing",
                        n,
                        format!(
                            "answered {} ranges, not {}",
                            resp.range_counts.len(),
                            pairs.len()
                        ),
                    ));
                }
                Ok(Some(resp))
            }
        });
        let mut out = Vec::with_capacity(replicas.len());
        for r in futures::future::join_all(calls).await {
            let r = r?;
            if let Some(resp) = &r {
                st.digest_bytes += resp.encoded_len() as u64;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Rebuilds the corrupt records of `(tenant, key)` on `bad` from the other replicas'
    /// intact states (`Repair`). `Ok(false)`: no other replica holds it intact: it is lost, and
    /// the records stay as they are (reads of the key answer DATA_LOSS).
    async fn recover(
        &self,
        bad: &[&Arc<NodeEntry>],
        replicas: &[Arc<NodeEntry>],
        tenant: &str,
        key: &[u8],
    ) -> Result<bool, JobError> {
        let mut merged = KeyState::new();
        let mut found = false;
        let is_bad = |n: &NodeEntry| bad.iter().any(|b| b.record.node_id == n.record.node_id);
        for other in replicas.iter().filter(|r| !is_bad(r)) {
            let mut c = other.client.clone();
            let req = pb::KeyRef {
                tenant_id: tenant.to_string(),
                key: key.to_vec(),
            };
            // A replica that is unreachable, or corrupt by now, cannot help.
            if let Ok(r) = node_call::call(other, "read", RPC_TIMEOUT, c.read(req)).await
                && let Some(s) = r.state.filter(|_| r.exists)
                && let Ok(s) = convert::state_from_pb(s)
            {
                merged.merge(&s);
                found = true;
            }
        }
        if !found {
            self.metrics.repair_lost.inc();
            tracing::error!(key = %token::display_key(tenant, key), corrupt_on = bad.len(), "record is corrupt on every replica holding it: data lost (left in place, reads answer DATA_LOSS)");
            return Ok(false);
        }
        for node in bad {
            let mut c = node.client.clone();
            let req = pb::KeyVersions {
                tenant_id: tenant.to_string(),
                key: key.to_vec(),
                state: Some(convert::state_to_pb(&merged)),
                origin: pb::ApplyOrigin::AntiEntropy as i32,
                ..Default::default()
            };
            node_call::call(node, "record repair", RPC_TIMEOUT, c.repair(req)).await?;
            self.metrics.data_recovery_operations.inc();
            tracing::warn!(node_id = %node.record.node_id, key = %token::display_key(tenant, key), "rebuilt a corrupt record from the other replicas");
        }
        Ok(true)
    }
}
