//! The pure decisions of a repair, tested like a spec: which replica pulls a key from which
//! ([`plan_key`]), how replicas regroup by the hashes they answered for a bucket
//! ([`regroup`]), and how finely a differing bucket is split ([`fanout`]). No I/O here.

use std::collections::HashMap;

use pairdb_common::token::TokenRange;

/// A differing bucket with at most this many keys (on every replica) is compared key by key.
pub(super) const LEAF_KEYS: u64 = 8;
/// Most sub-buckets a differing bucket is split into.
const MAX_FANOUT: u64 = 64;

/// One replica's record of a key as `RepairKeys` lists it. Actors are hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyView {
    pub state: u64,
    /// Live versions' dots `(actor, counter)`, sorted.
    pub dots: Vec<(u64, u64)>,
    /// Causal context entries `(actor, counter)`.
    pub context: HashMap<u64, u64>,
}

impl KeyView {
    /// Whether merging a version with dot `d` would leave this state as it is.
    fn covers(&self, d: (u64, u64)) -> bool {
        self.dots.binary_search(&d).is_ok() || self.context.get(&d.0).is_some_and(|c| *c >= d.1)
    }

    /// Whether merging `other` would change this state: it has a version this state neither
    /// holds nor has superseded, or a context entry beyond this state's.
    fn lacks(&self, other: &KeyView) -> bool {
        other.dots.iter().any(|d| !self.covers(*d))
            || other
                .context
                .iter()
                .any(|(a, c)| self.context.get(a).is_none_or(|mine| mine < c))
    }
}

/// A key as the replicas listed it: per key hash, each replica's view (`None`: no record).
pub(super) type Listing = HashMap<u64, Vec<Option<KeyView>>>;

/// Which replica pulls a key from which: each replica whose state would change by merging
/// another's, from the first such replica, then from others only for what is still lacking.
/// A replica without the key pulls it from holders. States that differ although no merge
/// would change either side (context details the lists do not show) are merged both ways.
pub(super) fn plan_key(per: &[Option<KeyView>]) -> Vec<(usize, usize)> {
    let empty = KeyView {
        state: 0,
        dots: Vec::new(),
        context: HashMap::new(),
    };
    let mut out = Vec::new();
    for dst in 0..per.len() {
        let mut have = per[dst].clone().unwrap_or_else(|| empty.clone());
        for src in (0..per.len()).filter(|s| *s != dst) {
            let Some(theirs) = &per[src] else { continue };
            let differs = per[dst].as_ref().map(|v| v.state) != Some(theirs.state);
            if !differs {
                continue;
            }
            if have.lacks(theirs) {
                out.push((dst, src));
                have.dots.extend(theirs.dots.iter().copied());
                have.dots.sort_unstable();
                have.dots.dedup();
                for (a, c) in &theirs.context {
                    let e = have.context.entry(*a).or_insert(0);
                    *e = (*e).max(*c);
                }
            }
        }
    }
    if out.is_empty() {
        // The states differ in what the lists do not show: merge every pair both ways.
        for dst in 0..per.len() {
            for src in (0..per.len()).filter(|s| *s != dst) {
                if per[src].is_some()
                    && per[src].as_ref().map(|v| v.state) != per[dst].as_ref().map(|v| v.state)
                {
                    out.push((dst, src));
                }
            }
        }
    }
    out
}

/// A bucket under comparison, and the replicas grouped by identical contents there: only the
/// first member of each group is asked for finer hashes or key listings on its group's behalf.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub range: TokenRange,
    pub buckets: u32,
    pub groups: Vec<Vec<usize>>,
}

/// What one bucket's hashes say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Compared {
    Equal,
    /// Some groups hold nothing here and the others agree: those replicas pull it whole.
    PullWhole {
        src: usize,
        dsts: Vec<usize>,
    },
    /// The replicas regrouped by their hash here, and the most keys one holds.
    Differ {
        groups: Vec<Vec<usize>>,
        most: u64,
    },
}

/// Regroups replicas by the `(hash, keys)` each group answered for one bucket (groups only
/// split or join: members of a group hold identical contents).
pub(super) fn regroup(groups: &[Vec<usize>], answers: &[(u64, u64)]) -> Compared {
    let mut by: Vec<((u64, u64), Vec<usize>)> = Vec::new();
    for (members, a) in groups.iter().zip(answers) {
        match by.iter_mut().find(|(v, _)| v == a) {
            Some((_, m)) => m.extend(members.iter().copied()),
            None => by.push((*a, members.clone())),
        }
    }
    if by.len() <= 1 {
        return Compared::Equal;
    }
    let holders: Vec<&((u64, u64), Vec<usize>)> = by.iter().filter(|(v, _)| v.1 > 0).collect();
    if holders.len() == 1 {
        return Compared::PullWhole {
            src: holders[0].1[0],
            dsts: by
                .iter()
                .filter(|(v, _)| v.1 == 0)
                .flat_map(|(_, m)| m.iter().copied())
                .collect(),
        };
    }
    Compared::Differ {
        most: by.iter().map(|(v, _)| v.1).max().unwrap_or(0),
        groups: by.into_iter().map(|(_, m)| m).collect(),
    }
}

/// Sub-buckets for a differing bucket holding up to `keys` keys.
pub(super) fn fanout(keys: u64) -> u32 {
    keys.div_ceil(LEAF_KEYS)
        .next_power_of_two()
        .clamp(2, MAX_FANOUT) as u32
}

/// Sorts ranges in stream order inside `within` (by distance from its start).
pub(super) fn sort_within(within: TokenRange, ranges: &mut [TokenRange]) {
    ranges.sort_unstable_by_key(|r| r.start.wrapping_sub(within.start));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_sizes_sub_buckets_to_the_leaf_size_within_bounds() {
        assert_eq!(fanout(9), 2);
        assert_eq!(fanout(35), 8);
        assert_eq!(fanout(100_000), 64);
    }

    fn view(state: u64, dots: &[(u64, u64)], context: &[(u64, u64)]) -> Option<KeyView> {
        let mut dots = dots.to_vec();
        dots.sort_unstable();
        Some(KeyView {
            state,
            dots,
            context: context.iter().copied().collect(),
        })
    }

    #[test]
    fn a_missing_key_is_pulled_by_the_replica_lacking_it_only() {
        let per = vec![view(1, &[(7, 1)], &[]), view(1, &[(7, 1)], &[]), None];
        assert_eq!(plan_key(&per), vec![(2, 0)]);
    }

    #[test]
    fn a_stale_version_moves_only_towards_the_replica_that_has_not_superseded_it() {
        // Replicas 0 and 1 hold (7,2), written over (7,1); replica 2 still holds (7,1).
        let new = view(2, &[(7, 2)], &[(7, 1)]);
        let per = vec![new.clone(), new, view(1, &[(7, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(2, 0)]);
    }

    #[test]
    fn concurrent_versions_move_both_ways() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(8, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn a_replica_lacking_versions_from_two_others_pulls_from_both() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(8, 1)], &[]), None];
        let plan = plan_key(&per);
        assert!(plan.contains(&(2, 0)) && plan.contains(&(2, 1)), "{plan:?}");
    }

    #[test]
    fn states_differing_only_in_unlisted_detail_are_merged_both_ways() {
        let per = vec![view(1, &[(7, 1)], &[]), view(2, &[(7, 1)], &[])];
        assert_eq!(plan_key(&per), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn regroup_joins_equal_answers_and_spots_empty_groups() {
        let g = vec![vec![0, 1], vec![2]];
        assert_eq!(regroup(&g, &[(5, 3), (5, 3)]), Compared::Equal);
        assert_eq!(
            regroup(&g, &[(5, 3), (0, 0)]),
            Compared::PullWhole {
                src: 0,
                dsts: vec![2]
            }
        );
        assert_eq!(
            regroup(&g, &[(5, 3), (6, 4)]),
            Compared::Differ {
                groups: vec![vec![0, 1], vec![2]],
                most: 4
            }
        );
        let alone = vec![vec![0], vec![1], vec![2]];
        assert_eq!(
            regroup(&alone, &[(5, 3), (6, 4), (5, 3)]),
            Compared::Differ {
                groups: vec![vec![0, 2], vec![1]],
                most: 4
            }
        );
    }
}
