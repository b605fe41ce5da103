//! The consistent-hash ring (SPEC §3). Pure data, no I/O: built from a membership list, it
//! answers preference lists and range ownership identically on every coordinator.
//!
//! - Each node owns `virtual_nodes` tokens: token *i* of node `id` is XXH64 (seed 0) of the
//!   UTF-8 bytes `"{id}#{i}"`. Equal membership lists give equal rings everywhere.
//! - A key with token *t* is owned by the first ring token ≥ *t* (wrapping); its preference
//!   list walks clockwise from there collecting distinct physical nodes. When nodes declare
//!   zones, the walk first takes nodes from zones not yet used, then fills from the rest, so
//!   replicas spread over zones whenever there are enough of them.
//! - Membership follows lifecycle *state*: NORMAL and LEAVING nodes own tokens; BOOTSTRAPPING
//!   nodes own none (they receive writes as pending replicas); health plays no part here.
//!
//! Why not the `hashring` crate: it has no virtual nodes or replica sets of its own, clones the
//! ring on every replica lookup, returns ring entries rather than distinct nodes, and places by
//! Rust's `Hash` through SipHash, which other-language clients cannot reproduce. This module is
//! ~200 lines with property tests.

use xxhash_rust::xxh64::xxh64;

use crate::token::TokenRange;

/// Lifecycle state of a storage node (durable intent, from the metadata store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    Bootstrapping,
    Normal,
    Leaving,
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Bootstrapping => "BOOTSTRAPPING",
            NodeState::Normal => "NORMAL",
            NodeState::Leaving => "LEAVING",
            NodeState::Removed => "REMOVED",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        match s {
            "BOOTSTRAPPING" => Some(NodeState::Bootstrapping),
            "NORMAL" => Some(NodeState::Normal),
            "LEAVING" => Some(NodeState::Leaving),
            "REMOVED" => Some(NodeState::Removed),
            _ => None,
        }
    }

    /// Whether nodes in this state own ring ranges.
    pub fn owns_ranges(self) -> bool {
        matches!(self, NodeState::Normal | NodeState::Leaving)
    }
}

/// A ring member as the ring needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    pub node_id: String,
    pub zone: String,
    pub virtual_nodes: u32,
    pub state: NodeState,
}

/// Default virtual nodes per node.
pub const DEFAULT_VIRTUAL_NODES: u32 = 150;
/// Most virtual nodes one node may have.
pub const MAX_VIRTUAL_NODES: u32 = 4096;

/// Token `i` of node `node_id`.
pub fn vnode_token(node_id: &str, i: u32) -> u64 {
    xxh64(format!("{node_id}#{i}").as_bytes(), 0)
}

/// An immutable ring. Cheap to share behind an `Arc`; rebuilt on every topology change.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Owning members, sorted by node id.
    members: Vec<RingMember>,
    /// `(token, index into members)`, sorted by token then node id.
    tokens: Vec<(u64, u32)>,
    zoned: bool,
    version: u64,
}

impl Ring {
    /// Builds the ring of `ring_version` from a membership list (states that own no ranges are
    /// left out).
    pub fn build(members: impl IntoIterator<Item = RingMember>, version: u64) -> Ring {
        let mut members: Vec<RingMember> = members
            .into_iter()
            .filter(|m| m.state.owns_ranges())
            .collect();
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        members.dedup_by(|a, b| a.node_id == b.node_id);
        let mut tokens = Vec::new();
        for (idx, m) in members.iter().enumerate() {
            for i in 0..m.virtual_nodes.clamp(1, MAX_VIRTUAL_NODES) {
                tokens.push((vnode_token(&m.node_id, i), idx as u32));
            }
        }
        // Ties (astronomically rare) break by node id, so every coordinator agrees.
        tokens.sort_unstable();
        tokens.dedup_by(|a, b| a.0 == b.0);
        let zoned = members.iter().any(|m| !m.zone.is_empty());
        Ring {
            members,
            tokens,
            zoned,
            version,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    fn first_at_or_after(&self, token: u64) -> usize {
        let i = self.tokens.partition_point(|(t, _)| *t < token);
        if i == self.tokens.len() { 0 } else { i }
    }

    /// The first `n` distinct nodes clockwise from `token` (zone-aware), in preference order.
    pub fn preference_list(&self, token: u64, n: usize) -> Vec<&RingMember> {
        if self.tokens.is_empty() || n == 0 {
            return Vec::new();
        }
        let want = n.min(self.members.len());
        let start = self.first_at_or_after(token);
        let mut picked: Vec<u32> = Vec::with_capacity(want);
        let walk = (0..self.tokens.len()).map(|k| self.tokens[(start + k) % self.tokens.len()].1);
        if self.zoned {
            let mut zones: Vec<&str> = Vec::new();
            for idx in walk.clone() {
                if picked.len() == want {
                    break;
                }
                let m = &self.members[idx as usize];
                if !picked.contains(&idx) && !zones.contains(&m.zone.as_str()) {
                    zones.push(&m.zone);
                    picked.push(idx);
                }
            }
        }
        for idx in walk {
            if picked.len() == want {
                break;
            }
            if !picked.contains(&idx) {
                picked.push(idx);
            }
        }
        picked
            .into_iter()
            .map(|i| &self.members[i as usize])
            .collect()
    }

    /// The ring after a topology change: `add` joins as owners, `remove` leaves (same version).
    pub fn with_changes(&self, add: &[RingMember], remove: &[&str]) -> Ring {
        let members = self
            .members
            .iter()
            .filter(|m| !remove.contains(&m.node_id.as_str()))
            .cloned()
            .chain(add.iter().map(|m| RingMember {
                state: NodeState::Normal,
                ..m.clone()
            }))
            .collect::<Vec<_>>();
        Ring::build(members, self.version)
    }

    /// Every ring token, ascending.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.tokens.iter().map(|(t, _)| *t)
    }

    /// Every ring range `(previous token, token]` with its replica set for `n` replicas.
    pub fn ranges(&self, n: usize) -> Vec<(TokenRange, Vec<&RingMember>)> {
        let len = self.tokens.len();
        (0..len)
            .map(|i| {
                let end = self.tokens[i].0;
                let start = self.tokens[(i + len - 1) % len].0;
                (TokenRange::new(start, end), self.preference_list(end, n))
            })
            .collect()
    }

    /// The fraction of the ring for which each member is the first replica, by member order.
    pub fn ownership(&self) -> Vec<f64> {
        let mut out = vec![0f64; self.members.len()];
        for (range, reps) in self.ranges(1) {
            if let Some(first) = reps.first()
                && let Some(i) = self.members.iter().position(|m| m.node_id == first.node_id)
            {
                out[i] += range.width() as f64 / 2f64.powi(64);
            }
        }
        out
    }
}

/// A range a node must receive when the ring changes from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub range: TokenRange,
    /// The node that becomes a replica of `range`.
    pub gaining: String,
    /// The replicas of `range` before the change, in preference order (where to stream from).
    pub sources: Vec<String>,
}

/// Every range some node gains when the ring changes from `old` to `new`, over the *whole*
/// replica set of `n` replicas — not only primary ownership: a node that becomes the third
/// replica of a range must receive it too. Works for additions, removals and replacements.
///
/// The ring is cut at every token of both rings; inside one such piece no token of either ring
/// intervenes, so every key of the piece has the same old and new preference lists. Adjacent
/// pieces with the same gaining node and sources are merged.
pub fn transfers(old: &Ring, new: &Ring, n: usize) -> Vec<Transfer> {
    let mut bounds: Vec<u64> = old
        .tokens
        .iter()
        .chain(new.tokens.iter())
        .map(|(t, _)| *t)
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    if bounds.is_empty() || new.is_empty() {
        return Vec::new();
    }
    let ids = |r: &Ring, t: u64| -> Vec<String> {
        r.preference_list(t, n)
            .iter()
            .map(|m| m.node_id.clone())
            .collect()
    };
    let mut out: Vec<Transfer> = Vec::new();
    let len = bounds.len();
    for i in 0..len {
        let end = bounds[i];
        let start = bounds[(i + len - 1) % len];
        let range = TokenRange::new(start, end);
        let before = ids(old, end);
        for g in ids(new, end) {
            if before.contains(&g) {
                continue;
            }
            // Extend the previous transfer of this node when contiguous with the same sources.
            if let Some(prev) = out
                .iter_mut()
                .rev()
                .find(|t| t.gaining == g && t.range.end == start && t.sources == before)
            {
                prev.range.end = end;
            } else {
                out.push(Transfer {
                    range,
                    gaining: g.clone(),
                    sources: before.clone(),
                });
            }
        }
    }
    out
}

/// Cuts `range` at every token of every ring in `rings`: within one returned piece no token of
/// those rings intervenes, so each ring gives every key of the piece the same preference list.
pub fn cut(range: TokenRange, rings: &[&Ring]) -> Vec<TokenRange> {
    let mut bounds: Vec<u64> = rings
        .iter()
        .flat_map(|r| r.tokens())
        .filter(|t| range.contains(*t) && *t != range.end)
        .collect();
    bounds.sort_unstable_by_key(|t| t.wrapping_sub(range.start));
    bounds.dedup();
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut start = range.start;
    for b in bounds {
        out.push(TokenRange::new(start, b));
        start = b;
    }
    out.push(TokenRange::new(start, range.end));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, zone: &str) -> RingMember {
        RingMember {
            node_id: id.into(),
            zone: zone.into(),
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            state: NodeState::Normal,
        }
    }

    #[test]
    fn vnode_tokens_are_fixed() {
        // Other languages: XXH64(seed 0) of "n1#0".
        assert_eq!(vnode_token("n1", 0), xxh64(b"n1#0", 0));
    }

    #[test]
    fn state_decides_membership_not_health() {
        let mut b = member("n4", "");
        b.state = NodeState::Bootstrapping;
        let mut l = member("n3", "");
        l.state = NodeState::Leaving;
        let ring = Ring::build(vec![member("n1", ""), member("n2", ""), l, b], 1);
        let ids: Vec<&str> = ring.members().iter().map(|m| m.node_id.as_str()).collect();
        assert_eq!(ids, vec!["n1", "n2", "n3"]);
    }

    #[test]
    fn zones_spread_replicas() {
        let ring = Ring::build(
            vec![
                member("a1", "a"),
                member("a2", "a"),
                member("b1", "b"),
                member("b2", "b"),
                member("c1", "c"),
            ],
            1,
        );
        for t in [0u64, 1 << 20, u64::MAX / 3, u64::MAX - 5] {
            let zones: Vec<&str> = ring
                .preference_list(t, 3)
                .iter()
                .map(|m| m.zone.as_str())
                .collect();
            let mut z = zones.clone();
            z.sort();
            z.dedup();
            assert_eq!(z.len(), 3, "{zones:?}");
        }
    }

    #[test]
    fn ownership_is_balanced_with_vnodes() {
        let ring = Ring::build((1..=4).map(|i| member(&format!("n{i}"), "")), 1);
        let own = ring.ownership();
        assert!((own.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for o in own {
            assert!(o > 0.18 && o < 0.32, "ownership {o}");
        }
    }

    #[test]
    fn a_new_fourth_node_gains_every_replica_position_not_just_primary_ranges() {
        let old = Ring::build((1..=3).map(|i| member(&format!("n{i}"), "")), 1);
        let new = Ring::build((1..=4).map(|i| member(&format!("n{i}"), "")), 2);
        let ts = transfers(&old, &new, 3);
        assert!(ts.iter().all(|t| t.gaining == "n4" && t.sources.len() == 3));
        let covered: f64 = ts
            .iter()
            .map(|t| t.range.width() as f64 / 2f64.powi(64))
            .sum();
        // With RF 3 over 4 nodes each node holds 3/4 of the ring; primary-only would be ~1/4.
        assert!(
            covered > 0.65 && covered < 0.85,
            "n4 gains {covered} of the ring"
        );
    }

    proptest! {
        /// Cut pieces tile the range exactly and no ring token falls strictly inside a piece.
        #[test]
        fn cut_tiles_the_range(start in any::<u64>(), end in any::<u64>(), token in any::<u64>()) {
            let ring = Ring::build((0..3).map(|i| member(&format!("node-{i}"), "")), 1);
            let range = TokenRange::new(start, end);
            let pieces = cut(range, &[&ring]);
            let holding = pieces.iter().filter(|p| p.contains(token)).count();
            prop_assert_eq!(holding, usize::from(range.contains(token)));
            for p in &pieces {
                prop_assert!(ring.tokens().all(|t| !p.contains(t) || t == p.end));
            }
        }

        /// For every key: each node in the new replica set that was not in the old one is sent
        /// exactly that key's range from the old replicas, and nobody else is sent anything.
        #[test]
        fn transfers_cover_exactly_the_gained_replica_positions(
            before in 2usize..6, add in 0usize..2, remove in 0usize..2, n in 1usize..4, token in any::<u64>(),
        ) {
            let old = Ring::build((0..before).map(|i| member(&format!("node-{i}"), "")), 1);
            let new_members: Vec<RingMember> = (remove..before + add).map(|i| member(&format!("node-{i}"), "")).collect();
            let new = Ring::build(new_members, 2);
            let ts = transfers(&old, &new, n);
            let old_pref: Vec<String> = old.preference_list(token, n).iter().map(|m| m.node_id.clone()).collect();
            let new_pref: Vec<String> = new.preference_list(token, n).iter().map(|m| m.node_id.clone()).collect();
            for g in &new_pref {
                let covering: Vec<&Transfer> = ts.iter().filter(|t| &t.gaining == g && t.range.contains(token)).collect();
                if old_pref.contains(g) {
                    prop_assert!(covering.is_empty(), "{} already a replica but is sent the range", g);
                } else {
                    prop_assert_eq!(covering.len(), 1, "{} gains {} but no single transfer covers it", g, token);
                    prop_assert_eq!(&covering[0].sources, &old_pref);
                }
            }
            for t in ts.iter().filter(|t| t.range.contains(token)) {
                prop_assert!(new_pref.contains(&t.gaining), "{} sent a range it does not replicate", t.gaining);
            }
        }

        #[test]
        fn preference_lists_are_distinct_deterministic_and_start_at_the_owner(
            n_nodes in 1usize..8, n in 1usize..5, token in any::<u64>(), rot in 0usize..8,
        ) {
            let mut members: Vec<RingMember> = (0..n_nodes).map(|i| member(&format!("node-{i}"), "")).collect();
            let a = Ring::build(members.clone(), 1);
            members.rotate_left(rot % n_nodes);
            let b = Ring::build(members, 1);
            let pa: Vec<String> = a.preference_list(token, n).iter().map(|m| m.node_id.clone()).collect();
            let pb: Vec<String> = b.preference_list(token, n).iter().map(|m| m.node_id.clone()).collect();
            prop_assert_eq!(&pa, &pb, "membership order does not matter");
            prop_assert_eq!(pa.len(), n.min(n_nodes));
            let mut d = pa.clone();
            d.sort();
            d.dedup();
            prop_assert_eq!(d.len(), pa.len(), "distinct nodes");
            // The first replica owns the range containing the token.
            let owner = a.ranges(1).into_iter().find(|(r, _)| r.contains(token)).map(|(_, reps)| reps[0].node_id.clone());
            prop_assert_eq!(owner.as_ref(), pa.first());
        }
    }
}
