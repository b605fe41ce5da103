//! The dotted-version-vector algebra (SPEC §2.2). Pure data, no I/O.
//!
//! - A [`Dot`] `(actor, counter)` names one stored version; an [`Actor`] is a storage node's
//!   replica identity `(node_id, epoch)`.
//! - A [`VersionVector`] maps actors to the highest counter known; it *covers* a dot when its
//!   entry for the dot's actor is at least the dot's counter.
//! - A [`KeyState`] holds the live versions of one key (siblings, tombstones included) and
//!   `context`: the join of every causal context the state has absorbed.
//!
//! **Invariants of a normalized `KeyState`** (every constructor and operation keeps them):
//! versions are sorted by dot with no dot twice; no version's dot is covered by `context`;
//! `context` covers every version's own context.
//!
//! **Merge** is `context = a.context ⊔ b.context` and `versions = (a ∪ b) minus every version whose
//! dot the joined context covers`. Keeping the absorbed contexts (not only the live versions')
//! makes obsolescence transitive, so merge is a true semilattice join (commutative, associative,
//! idempotent) for *any* inputs, not only well-formed histories; property tests check it.
//!
//! Replication always ships whole key states, never lone versions: that is what makes a
//! vector-compressed context exact (a state holding dot `(a, n)` knows every earlier dot of `a`
//! for that key).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A replica identity: the storage node id plus its incarnation epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    pub node_id: String,
    pub epoch: u64,
}

impl Actor {
    pub fn new(node_id: impl Into<String>, epoch: u64) -> Actor {
        Actor {
            node_id: node_id.into(),
            epoch,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.epoch)
    }
}

/// The identity of one version: minted by the coordinating replica, never reused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl Dot {
    pub fn new(actor: Actor, counter: u64) -> Dot {
        Dot { actor, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// A causal context: per actor, the highest counter below which every dot is covered
/// (`entries`), plus single covered dots above it (the dot cloud). Canonical: a cloud dot is never
/// covered by its actor's entry, and a cloud dot right after the entry is absorbed into it, so
/// two vectors covering the same dots compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionVector {
    entries: BTreeMap<Actor, u64>,
    cloud: BTreeSet<Dot>,
}

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The contiguous counter covered for `actor` (0 if none).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.entries.get(actor).copied().unwrap_or(0)
    }

    /// The highest counter this vector mentions for `actor` (entry or cloud).
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        let cloud_max = self
            .cloud
            .range(Dot::new(actor.clone(), 0)..=Dot::new(actor.clone(), u64::MAX))
            .next_back()
            .map(|d| d.counter)
            .unwrap_or(0);
        self.get(actor).max(cloud_max)
    }

    /// Whether this vector covers `dot` (the version named by `dot` is obsolete given it).
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter || self.cloud.contains(dot)
    }

    /// Covers every dot of `actor` up to `counter`.
    pub fn raise(&mut self, actor: &Actor, counter: u64) {
        if counter <= self.get(actor) {
            return;
        }
        self.entries.insert(actor.clone(), counter);
        self.compact(actor);
    }

    /// Covers the single dot `dot`.
    pub fn add_dot(&mut self, dot: &Dot) {
        if self.covers(dot) {
            return;
        }
        self.cloud.insert(dot.clone());
        self.compact(&dot.actor);
    }

    /// Drops cloud dots the entry covers and absorbs those contiguous with it. Looks only at the
    /// actor's lowest cloud dots (each is removed at most once), so building a vector dot by dot
    /// stays O(n log n).
    fn compact(&mut self, actor: &Actor) {
        let mut top = self.get(actor);
        let lo = Dot::new(actor.clone(), 0);
        let hi = Dot::new(actor.clone(), u64::MAX);
        while let Some(first) = self.cloud.range(&lo..=&hi).next() {
            let c = first.counter;
            if c > top && Some(c) != top.checked_add(1) {
                break;
            }
            let first = first.clone();
            self.cloud.remove(&first);
            top = top.max(c);
        }
        if top > 0 {
            self.entries.insert(actor.clone(), top);
        }
    }

    /// Pointwise maximum with `other` (union of what both cover).
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, counter) in &other.entries {
            self.raise(actor, *counter);
        }
        for d in &other.cloud {
            self.add_dot(d);
        }
    }

    /// Whether this vector covers everything `other` covers.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(a, c)| self.get(a) >= *c)
            && other.cloud.iter().all(|d| self.covers(d))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.cloud.is_empty()
    }

    /// Number of entries plus cloud dots.
    pub fn len(&self) -> usize {
        self.entries.len() + self.cloud.len()
    }

    /// Entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> {
        self.entries.iter().map(|(a, c)| (a, *c))
    }

    /// Cloud dots in order.
    pub fn cloud(&self) -> impl Iterator<Item = &Dot> {
        self.cloud.iter()
    }

    /// Absorbs cloud dots of each actor into its entry when no dot at or below them is still
    /// live in `live`. Safe for a node's own *whole* key state: a state that knows dot `(a, n)`
    /// knows every earlier dot of `a` for that key, so every dot below is either live (kept
    /// uncovered) or already obsolete. Keeps clouds from growing with every fold.
    pub fn compact_against(&mut self, live: &[Version]) {
        let mut live_min: std::collections::HashMap<&Actor, u64> = Default::default();
        for v in live {
            let m = live_min.entry(&v.dot.actor).or_insert(u64::MAX);
            *m = (*m).min(v.dot.counter);
        }
        let actors: BTreeSet<Actor> = self.cloud.iter().map(|d| d.actor.clone()).collect();
        for actor in actors {
            let min = live_min.get(&actor).copied().unwrap_or(u64::MAX);
            let below: Option<u64> = self
                .cloud
                .range(Dot::new(actor.clone(), 0)..Dot::new(actor.clone(), min))
                .next_back()
                .map(|d| d.counter);
            if let Some(top) = below {
                self.raise(&actor, top);
            }
        }
    }

    /// Number of actor entries (not counting the dot cloud).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Number of single dots above their actors' entries (the dot cloud).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }
}

impl FromIterator<(Actor, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Actor, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (a, c) in iter {
            vv.raise(&a, c);
        }
        vv
    }
}

/// One stored version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub dot: Dot,
    /// The causal context the version was written with: every dot it covers is obsolete.
    pub context: VersionVector,
    pub value: Vec<u8>,
    pub tombstone: bool,
    pub written_at_ms: u64,
    /// 0 = never expires.
    pub expires_at_ms: u64,
    /// Empty = none.
    pub idempotency_key: String,
}

impl Version {
    /// Whether the version has expired at `now_ms` (expired versions read as absent).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// Whether a read at `now_ms` shows this version (not a tombstone, not expired).
    pub fn is_visible(&self, now_ms: u64) -> bool {
        !self.tombstone && !self.is_expired(now_ms)
    }

    /// The last-writer-wins order: `(written_at_ms, dot)`; the greatest wins.
    pub fn lww_cmp(&self, other: &Version) -> std::cmp::Ordering {
        (self.written_at_ms, &self.dot).cmp(&(other.written_at_ms, &other.dot))
    }

    /// Deterministic choice between two versions carrying the same dot (which a correct system
    /// never produces): the one that is greater by content wins, on every replica alike.
    fn content_cmp(&self, other: &Version) -> std::cmp::Ordering {
        (
            self.written_at_ms,
            self.tombstone,
            &self.value,
            self.expires_at_ms,
            &self.idempotency_key,
            &self.context,
        )
            .cmp(&(
                other.written_at_ms,
                other.tombstone,
                &other.value,
                other.expires_at_ms,
                &other.idempotency_key,
                &other.context,
            ))
    }
}

/// What a replica keeps when versions are concurrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Keep every concurrent version (the default: never lose a concurrent write).
    #[default]
    Siblings,
    /// The coordinating replica keeps only the winner by `(written_at_ms, dot)`.
    Lww,
}

/// The live versions of one key and the causal context they have absorbed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    versions: Vec<Version>,
    context: VersionVector,
}

/// Outcome of a coordinated write on a [`KeyState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The version stored by this write.
    pub version: Version,
    /// Versions dropped because the sibling cap or the LWW policy folded them.
    pub folded: usize,
}

/// Parameters of a coordinated write, decided by the coordinating replica.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub dot: Dot,
    /// The client's context (what it read); empty = concurrent with everything.
    pub context: VersionVector,
    pub value: Vec<u8>,
    pub tombstone: bool,
    pub written_at_ms: u64,
    pub expires_at_ms: u64,
    pub idempotency_key: String,
    pub policy: ConflictPolicy,
    /// Hard cap on siblings kept (at least 1).
    pub max_siblings: usize,
}

impl KeyState {
    /// The empty state (a key never written, or fully purged).
    pub fn new() -> KeyState {
        KeyState::default()
    }

    /// Builds a normalized state from arbitrary parts (for decoding and tests).
    pub fn from_parts(versions: Vec<Version>, context: VersionVector) -> KeyState {
        let mut s = KeyState { versions, context };
        s.normalize();
        s
    }

    /// Live versions, sorted by dot.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The join of every context this state absorbed.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.context.is_empty()
    }

    /// Re-establishes the invariants: absorb every version's context, drop covered versions,
    /// keep one version per dot, sort by dot.
    fn normalize(&mut self) {
        for v in &self.versions {
            self.context.join(&v.context);
        }
        let ctx = &self.context;
        self.versions.retain(|v| !ctx.covers(&v.dot));
        self.versions
            .sort_by(|a, b| a.dot.cmp(&b.dot).then(b.content_cmp(a)));
        self.versions
            .dedup_by(|later, earlier| later.dot == earlier.dot);
    }

    /// Merges `other` into `self` (replica sync, read repair, hints, streaming). Returns whether
    /// `self` changed. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &KeyState) -> bool {
        let before = self.clone();
        self.context.join(&other.context);
        self.versions.extend(other.versions.iter().cloned());
        self.normalize();
        *self != before
    }

    /// The causal context a read of this state returns: everything absorbed plus every live dot.
    /// Writing back with it supersedes exactly what was read.
    pub fn read_context(&self) -> VersionVector {
        let mut ctx = self.context.clone();
        for v in &self.versions {
            ctx.add_dot(&v.dot);
        }
        ctx
    }

    /// The highest counter this state knows for `actor` (in dots or contexts).
    pub fn max_counter_for(&self, actor: &Actor) -> u64 {
        self.versions
            .iter()
            .filter(|v| &v.dot.actor == actor)
            .map(|v| v.dot.counter)
            .chain(std::iter::once(self.context.max_counter(actor)))
            .max()
            .unwrap_or(0)
    }

    /// A live (not tombstone) version carrying `idempotency_key`, if one is still present.
    pub fn find_idempotent(&self, idempotency_key: &str, now_ms: u64) -> Option<&Version> {
        if idempotency_key.is_empty() {
            return None;
        }
        self.versions
            .iter()
            .find(|v| v.idempotency_key == idempotency_key && !v.is_expired(now_ms))
    }

    /// Applies a coordinated write: drops versions covered by the client context, stores the new
    /// version, and folds versions beyond the sibling cap (oldest first, by LWW order) or, under
    /// the LWW policy, every other version. Folding adds the folded dots to the new version's
    /// context, so every replica that merges the result drops them too.
    pub fn apply_write(&mut self, new: NewVersion) -> WriteOutcome {
        let mut context = new.context;
        let mut survivors: Vec<&Version> = self
            .versions
            .iter()
            .filter(|v| !context.covers(&v.dot))
            .collect();
        let mut folded = 0;
        match new.policy {
            // Every local version goes: cover each actor up to its highest local counter (this
            // state knows every earlier dot of those actors, so nothing unseen is covered).
            ConflictPolicy::Lww => {
                for v in &survivors {
                    context.raise(&v.dot.actor, v.dot.counter);
                    folded += 1;
                }
            }
            ConflictPolicy::Siblings => {
                let keep_others = new.max_siblings.max(1) - 1;
                if survivors.len() > keep_others {
                    survivors.sort_by(|a, b| a.lww_cmp(b));
                    let excess = survivors.len() - keep_others;
                    for v in &survivors[..excess] {
                        context.add_dot(&v.dot);
                        folded += 1;
                    }
                }
            }
        }
        let kept: Vec<Version> = self
            .versions
            .iter()
            .filter(|v| !context.covers(&v.dot))
            .cloned()
            .collect();
        context.compact_against(&kept);
        let version = Version {
            dot: new.dot,
            context,
            value: new.value,
            tombstone: new.tombstone,
            written_at_ms: new.written_at_ms,
            expires_at_ms: new.expires_at_ms,
            idempotency_key: new.idempotency_key,
        };
        self.versions.push(version.clone());
        self.normalize();
        WriteOutcome { version, folded }
    }

    /// Versions a read shows at `now_ms`: no tombstones, nothing expired, and (under LWW) only
    /// the winner. Several versions sharing an idempotency key (a retried write that reached two
    /// coordinating replicas) show once: the smallest dot.
    pub fn visible(&self, now_ms: u64, policy: ConflictPolicy) -> Vec<&Version> {
        let mut out: Vec<&Version> = Vec::with_capacity(self.versions.len());
        let mut keys: std::collections::HashSet<&str> = Default::default();
        for v in self.versions.iter().filter(|v| v.is_visible(now_ms)) {
            if !v.idempotency_key.is_empty() && !keys.insert(v.idempotency_key.as_str()) {
                continue;
            }
            out.push(v);
        }
        if policy == ConflictPolicy::Lww
            && let Some(w) = out.iter().copied().max_by(|a, b| a.lww_cmp(b))
        {
            return vec![w];
        }
        out
    }

    /// The deterministic winner among visible versions: greatest `(written_at_ms, dot)`.
    pub fn winner(&self, now_ms: u64) -> Option<&Version> {
        self.versions
            .iter()
            .filter(|v| v.is_visible(now_ms))
            .max_by(|a, b| a.lww_cmp(b))
    }

    /// Removes versions expired at `now_ms`, folding their dots into the context so that merging
    /// with a replica that still holds them does not bring them back. Returns how many went.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let before = self.versions.len();
        let expired: Vec<Dot> = self
            .versions
            .iter()
            .filter(|v| v.is_expired(now_ms))
            .map(|v| v.dot.clone())
            .collect();
        for d in &expired {
            self.context.add_dot(d);
        }
        self.normalize();
        before - self.versions.len()
    }

    /// The state without versions expired at `now_ms` (what a read returns).
    pub fn without_expired(mut self, now_ms: u64) -> KeyState {
        self.versions.retain(|v| !v.is_expired(now_ms));
        self
    }

    /// Whether every live version is a tombstone (a deleted key; reads answer NOT_FOUND).
    pub fn all_tombstones(&self) -> bool {
        self.versions.iter().all(|v| v.tombstone)
    }
}

#[cfg(test)]
mod tests;
