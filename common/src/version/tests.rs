//! Unit and property tests of the version algebra.

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;

fn actor(i: u8) -> Actor {
    Actor::new(format!("n{}", i % 3), u64::from(i / 3) + 1)
}

fn dot(i: u8, c: u64) -> Dot {
    Dot::new(actor(i), c)
}

fn version(d: Dot, ctx: VersionVector, value: &[u8], at: u64) -> Version {
    Version {
        dot: d,
        context: ctx,
        value: value.to_vec(),
        tombstone: false,
        written_at_ms: at,
        expires_at_ms: 0,
        idempotency_key: String::new(),
    }
}

fn new_version(d: Dot, ctx: VersionVector, value: &[u8], at: u64) -> NewVersion {
    NewVersion {
        dot: d,
        context: ctx,
        value: value.to_vec(),
        tombstone: false,
        written_at_ms: at,
        expires_at_ms: 0,
        idempotency_key: String::new(),
        policy: ConflictPolicy::Siblings,
        max_siblings: 100,
    }
}

fn arb_vv() -> impl Strategy<Value = VersionVector> {
    (
        prop::collection::vec((0u8..6, 0u64..12), 0..4),
        prop::collection::vec((0u8..6, 1u64..16), 0..3),
    )
        .prop_map(|(es, cloud)| {
            let mut vv: VersionVector = es.into_iter().map(|(a, c)| (actor(a), c)).collect();
            for (a, c) in cloud {
                vv.add_dot(&dot(a, c));
            }
            vv
        })
}

fn arb_version() -> impl Strategy<Value = Version> {
    (
        0u8..6,
        1u64..12,
        arb_vv(),
        prop::collection::vec(any::<u8>(), 0..3),
        0u64..5,
        any::<bool>(),
    )
        .prop_map(|(a, c, ctx, value, at, tomb)| {
            let mut v = version(dot(a, c), ctx, &value, at);
            v.tombstone = tomb;
            v
        })
}

fn arb_state() -> impl Strategy<Value = KeyState> {
    (prop::collection::vec(arb_version(), 0..6), arb_vv())
        .prop_map(|(vs, ctx)| KeyState::from_parts(vs, ctx))
}

fn merged(a: &KeyState, b: &KeyState) -> KeyState {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #[test]
    fn merge_is_commutative(a in arb_state(), b in arb_state()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in arb_state(), b in arb_state()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab.clone());
        prop_assert_eq!(merged(&ab, &a), ab);
    }

    #[test]
    fn normalized_state_keeps_invariants(a in arb_state(), b in arb_state()) {
        let m = merged(&a, &b);
        let dots: Vec<&Dot> = m.versions().iter().map(|v| &v.dot).collect();
        let mut sorted = dots.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&dots, &sorted, "sorted, unique dots");
        for v in m.versions() {
            prop_assert!(!m.context().covers(&v.dot), "live version {} covered", v.dot);
            prop_assert!(m.context().dominates(&v.context));
        }
    }

    /// A context supersedes exactly what it covers: writing back with the context of an older
    /// read drops what that read saw and keeps what arrived since.
    #[test]
    fn context_supersedes_exactly_what_it_covers(
        base in arb_state(), later in prop::collection::vec(arb_version(), 0..4),
    ) {
        let read_ctx = base.read_context();
        let mut state = base.clone();
        // Versions written after the read, with dots the read did not see.
        let unseen: Vec<Version> = later
            .into_iter()
            .enumerate()
            .map(|(i, mut v)| {
                v.dot = Dot::new(Actor::new("late", 1), i as u64 + 1);
                v.context = VersionVector::new();
                v
            })
            .collect();
        state.merge(&KeyState::from_parts(unseen.clone(), VersionVector::new()));
        let out = state.apply_write(new_version(Dot::new(Actor::new("w", 1), 1), read_ctx, b"new", 9));
        prop_assert_eq!(out.folded, 0);
        for v in base.versions() {
            prop_assert!(!state.versions().iter().any(|s| s.dot == v.dot), "read version kept");
        }
        for v in &unseen {
            prop_assert!(state.versions().iter().any(|s| s.dot == v.dot), "unseen version lost");
        }
        prop_assert!(state.versions().iter().any(|s| s.dot == out.version.dot));
    }

    /// Replicas that mint dots, ship whole states (sometimes not at all) and sync at random never
    /// lose a write no client saw, and converge after a full sync.
    #[test]
    fn concurrent_writes_never_lost(ops in prop::collection::vec((0usize..3, 0usize..3, 0u8..4, any::<u8>()), 1..40)) {
        simulate(&ops)?;
    }

    /// The sibling cap folds the oldest versions by LWW order, whatever order they arrived in.
    #[test]
    fn sibling_cap_folds_deterministically(
        stamps in prop::collection::vec(0u64..50, 3..12), cap in 1usize..5, rot in 0usize..12,
    ) {
        let versions: Vec<Version> = stamps
            .iter()
            .enumerate()
            .map(|(i, at)| version(Dot::new(Actor::new("c", 1), i as u64 + 1), VersionVector::new(), b"v", *at))
            .collect();
        let mut shuffled = versions.clone();
        shuffled.rotate_left(rot % versions.len());
        shuffled.reverse();
        let mut a = KeyState::from_parts(versions.clone(), VersionVector::new());
        let mut b = KeyState::from_parts(shuffled, VersionVector::new());
        let mut nv = new_version(Dot::new(Actor::new("w", 1), 1), VersionVector::new(), b"n", 100);
        nv.max_siblings = cap;
        let oa = a.apply_write(nv.clone());
        let ob = b.apply_write(nv);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(oa.folded, ob.folded);
        prop_assert_eq!(oa.folded, versions.len().saturating_sub(cap - 1));
        prop_assert_eq!(a.versions().len(), cap.min(versions.len() + 1));
        // The kept ones are the newest by (written_at_ms, dot).
        let mut by_age = versions.clone();
        by_age.sort_by(|x, y| x.lww_cmp(y));
        for v in &by_age[..oa.folded] {
            prop_assert!(!a.versions().iter().any(|s| s.dot == v.dot));
        }
    }
}

#[derive(Clone, Default)]
struct Replica {
    state: KeyState,
    /// Ghost knowledge: every dot this replica has ever learned of (for checking only).
    seen: BTreeSet<Dot>,
}

fn simulate(ops: &[(usize, usize, u8, u8)]) -> Result<(), TestCaseError> {
    let mut replicas: Vec<Replica> = vec![Replica::default(); 3];
    let actors: Vec<Actor> = (0..3).map(|i| Actor::new(format!("r{i}"), 1)).collect();
    let mut counters = [0u64; 3];
    let mut written: Vec<Dot> = Vec::new();
    let mut witnessed: HashSet<Dot> = HashSet::new();
    for (step, (read_from, coord, ship_mask, kind)) in ops.iter().enumerate() {
        match kind % 3 {
            // A client reads one replica and writes back through a coordinating replica.
            0 | 1 => {
                let read = replicas[*read_from].clone();
                let ctx = if kind % 2 == 0 {
                    read.state.read_context()
                } else {
                    VersionVector::new()
                };
                if !ctx.is_empty() {
                    witnessed.extend(read.seen.iter().cloned());
                }
                let c = *coord;
                counters[c] = counters[c].max(replicas[c].state.max_counter_for(&actors[c])) + 1;
                let d = Dot::new(actors[c].clone(), counters[c]);
                let r = &mut replicas[c];
                r.state
                    .apply_write(new_version(d.clone(), ctx, &[step as u8], step as u64));
                r.seen.insert(d.clone());
                written.push(d);
                let shipped = replicas[c].clone();
                for (i, other) in replicas.iter_mut().enumerate() {
                    if i != c && ship_mask & (1 << i) != 0 {
                        other.state.merge(&shipped.state);
                        other.seen.extend(shipped.seen.iter().cloned());
                    }
                }
            }
            // Anti-entropy between two replicas.
            _ => {
                let (a, b) = (*read_from, *coord);
                if a != b {
                    let sb = replicas[b].clone();
                    let ra = &mut replicas[a];
                    ra.state.merge(&sb.state);
                    ra.seen.extend(sb.seen);
                }
            }
        }
    }
    let mut all = KeyState::new();
    for r in &replicas {
        all.merge(&r.state);
    }
    for r in &mut replicas {
        r.state.merge(&all);
        prop_assert_eq!(&r.state, &all, "replicas converge");
    }
    for d in &written {
        let present = all.versions().iter().any(|v| &v.dot == d);
        prop_assert!(
            present || witnessed.contains(d),
            "write {} lost though no client saw it",
            d
        );
    }
    Ok(())
}

#[test]
fn two_writes_with_the_same_context_become_siblings_and_a_covering_write_leaves_one() {
    let mut s = KeyState::new();
    s.apply_write(new_version(dot(0, 1), VersionVector::new(), b"a", 1));
    let ctx = s.read_context();
    s.apply_write(new_version(dot(0, 2), ctx.clone(), b"b", 2));
    s.apply_write(new_version(dot(0, 3), ctx, b"c", 3));
    assert_eq!(s.versions().len(), 2, "b and c are concurrent siblings");
    s.apply_write(new_version(dot(0, 4), s.read_context(), b"d", 4));
    assert_eq!(s.versions().len(), 1);
    assert_eq!(s.versions()[0].value, b"d");
}

#[test]
fn tombstones_and_ttl_are_hidden_from_reads() {
    let mut s = KeyState::new();
    let mut nv = new_version(dot(0, 1), VersionVector::new(), b"", 1);
    nv.expires_at_ms = 10;
    s.apply_write(nv);
    assert_eq!(
        s.visible(9, ConflictPolicy::Siblings).len(),
        1,
        "empty value is a value"
    );
    assert!(
        s.visible(10, ConflictPolicy::Siblings).is_empty(),
        "expired at its deadline"
    );
    let mut del = new_version(dot(0, 2), s.read_context(), b"", 2);
    del.tombstone = true;
    s.apply_write(del);
    assert!(s.all_tombstones());
    assert!(s.visible(0, ConflictPolicy::Siblings).is_empty());
    assert!(s.winner(0).is_none());
}

/// Folding one dot never covers a concurrent sibling of the same actor with a lower counter
/// (the dot cloud keeps folds exact).
#[test]
fn purging_an_expired_dot_keeps_a_lower_sibling_of_the_same_actor() {
    let mut s = KeyState::new();
    s.apply_write(new_version(dot(0, 2), VersionVector::new(), b"keep", 1));
    let mut nv = new_version(dot(0, 3), VersionVector::new(), b"ttl", 1);
    nv.expires_at_ms = 5;
    s.apply_write(nv);
    assert_eq!(s.purge_expired(6), 1);
    assert_eq!(s.versions().len(), 1);
    assert_eq!(s.versions()[0].value, b"keep");
    assert!(s.context().covers(&dot(0, 3)) && !s.context().covers(&dot(0, 2)));
}

#[test]
fn version_vector_is_canonical() {
    let mut a = VersionVector::new();
    a.add_dot(&dot(0, 2));
    a.add_dot(&dot(0, 1));
    let mut b = VersionVector::new();
    b.raise(&actor(0), 2);
    assert_eq!(a, b, "contiguous cloud dots are absorbed into the entry");
    a.add_dot(&dot(0, 5));
    assert!(a.covers(&dot(0, 5)) && !a.covers(&dot(0, 4)) && !a.covers(&dot(0, 6)));
    assert_eq!(a.max_counter(&actor(0)), 5);
    a.raise(&actor(0), 6);
    assert_eq!(a.cloud().count(), 0);
}

#[test]
fn repeated_folds_keep_the_context_small() {
    let mut s = KeyState::new();
    for i in 1..=500u64 {
        let mut nv = new_version(dot(0, i * 3), VersionVector::new(), b"x", i);
        nv.max_siblings = 4;
        s.apply_write(nv);
    }
    assert_eq!(s.versions().len(), 4);
    assert!(
        s.context().len() < 8,
        "context grew to {} entries",
        s.context().len()
    );
}

#[test]
fn purged_expired_versions_do_not_come_back_by_merge() {
    let mut nv = new_version(dot(0, 1), VersionVector::new(), b"x", 1);
    nv.expires_at_ms = 5;
    let mut a = KeyState::new();
    a.apply_write(nv);
    let b = a.clone();
    assert_eq!(a.purge_expired(6), 1);
    a.merge(&b);
    assert!(a.versions().is_empty());
}

#[test]
fn lww_keeps_only_the_winner_and_shows_one() {
    let mut s = KeyState::new();
    s.apply_write(new_version(dot(0, 1), VersionVector::new(), b"a", 5));
    let mut nv = new_version(dot(1, 1), VersionVector::new(), b"b", 7);
    nv.policy = ConflictPolicy::Lww;
    let out = s.apply_write(nv);
    assert_eq!(out.folded, 1);
    assert_eq!(s.versions().len(), 1);
    // A replica that still has "a" converges to the winner after merge.
    let mut other = KeyState::new();
    other.apply_write(new_version(dot(0, 1), VersionVector::new(), b"a", 5));
    other.merge(&s);
    assert_eq!(other, s);
}

#[test]
fn lww_read_shows_single_winner_of_diverged_replicas() {
    let mut a = KeyState::new();
    a.apply_write(new_version(dot(0, 1), VersionVector::new(), b"a", 5));
    let mut b = KeyState::new();
    b.apply_write(new_version(dot(1, 1), VersionVector::new(), b"b", 7));
    a.merge(&b);
    let vis = a.visible(0, ConflictPolicy::Lww);
    assert_eq!(vis.len(), 1);
    assert_eq!(vis[0].value, b"b");
    assert_eq!(a.visible(0, ConflictPolicy::Siblings).len(), 2);
}

#[test]
fn idempotent_duplicates_show_once() {
    let mut s = KeyState::new();
    let mut nv = new_version(dot(0, 1), VersionVector::new(), b"a", 5);
    nv.idempotency_key = "req-1".into();
    s.apply_write(nv.clone());
    assert!(s.find_idempotent("req-1", 0).is_some());
    assert!(s.find_idempotent("req-2", 0).is_none());
    nv.dot = dot(1, 1);
    s.apply_write(nv);
    assert_eq!(s.versions().len(), 2);
    assert_eq!(s.visible(0, ConflictPolicy::Siblings).len(), 1);
}

#[test]
fn max_counter_sees_dots_and_contexts() {
    let mut s = KeyState::new();
    let mut ctx = VersionVector::new();
    ctx.raise(&actor(0), 40);
    s.apply_write(new_version(dot(1, 3), ctx, b"a", 1));
    assert_eq!(s.max_counter_for(&actor(0)), 40);
    assert_eq!(s.max_counter_for(&actor(1)), 3);
    assert_eq!(s.max_counter_for(&actor(2)), 0);
}
