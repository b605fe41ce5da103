//! S01 of FAULT-SCENARIOS.md: an exhaustive model check (stateright, breadth-first over every
//! reachable state) of the causal-context protocol built on pairdb's own `KeyState` — the
//! same `apply_write` and `merge` the storage nodes run.
//!
//! The model: one key, 3 replicas, 2 clients each making one set-add (`PAIRDB_MODEL_ADDS`;
//! 1 explores about 20,000 distinct states in 3 s; 2 outgrows this machine's memory) (read a quorum of 2,
//! union the siblings' sets, add a unique element, write back with the read's context through a
//! coordinating replica of any choice, which mints the next dot of its own actor and sends its
//! new state to the other two). Replication messages are delivered in any order or lost; an
//! add is acknowledged once one of them arrives (W = 2 with the coordinator), and a client
//! whose messages were all lost gives up (`info`). A replica may lose its disk once: it comes
//! back empty under a new incarnation epoch (a new actor), as a storage node does.
//!
//! Properties, over every reachable state:
//! - no acknowledged element is missing from the merge of the replicas (no acked add lost);
//! - no two versions anywhere carry one dot with different values (riak's KV-679: a dot
//!   reused after lost state silently drops a write on merge);
//! - merging the replicas in any order gives one state (convergence once they exchange state);
//! - and, so the search is known to reach them: siblings exist in some state, and in some
//!   state every add was acknowledged.
//!
//! The same model with the epoch kept across the disk loss (the bug pairdb's epochs prevent)
//! must break a property: that test shows the checker can fail.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use pairdb_common::version::{Actor, ConflictPolicy, Dot, KeyState, NewVersion, VersionVector};
use stateright::{Checker, Model, Property};

const REPLICAS: usize = 3;
const CLIENTS: usize = 2;

/// Elements of a stored set value (`a,b,c`).
fn elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// The union of the live versions' sets.
fn union(s: &KeyState) -> BTreeSet<String> {
    s.versions()
        .iter()
        .filter(|v| !v.tombstone)
        .flat_map(|v| elements(&v.value))
        .collect()
}

fn hash_vv(vv: &VersionVector, h: &mut impl Hasher) {
    for (a, c) in vv.iter() {
        (a, c).hash(h);
    }
    for d in vv.cloud() {
        d.hash(h);
    }
}

/// Hashes what identifies a state (equal states hash equal: a subset of `Eq`'s fields).
fn hash_state(s: &KeyState, h: &mut impl Hasher) {
    for v in s.versions() {
        (&v.dot, &v.value, v.tombstone).hash(h);
        hash_vv(&v.context, h);
    }
    hash_vv(s.context(), h);
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Client {
    /// Ready for add number `done`.
    Idle { done: usize },
    /// Read a quorum: what it saw, merged.
    Read { done: usize, seen: KeyState },
    /// Wrote `element`; waiting for a replication to land.
    Writing { done: usize, element: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    to: usize,
    state: KeyState,
    /// The client whose write this carries.
    from: usize,
    element: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sys {
    replicas: Vec<KeyState>,
    epochs: Vec<u64>,
    /// Each replica's next counter (its identity's reservation; restarts with a new epoch).
    next: Vec<u64>,
    net: Vec<Msg>,
    clients: Vec<Client>,
    acked: BTreeSet<String>,
    wiped: bool,
}

impl Hash for Sys {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for r in &self.replicas {
            hash_state(r, h);
        }
        (&self.epochs, &self.next, &self.acked, self.wiped).hash(h);
        for m in &self.net {
            (m.to, m.from, &m.element).hash(h);
            hash_state(&m.state, h);
        }
        for c in &self.clients {
            match c {
                Client::Idle { done } => (0, done).hash(h),
                Client::Read { done, seen } => {
                    (1, done).hash(h);
                    hash_state(seen, h);
                }
                Client::Writing { done, element } => (2, done, element).hash(h),
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Read { client: usize, a: usize, b: usize },
    Write { client: usize, coordinator: usize },
    Deliver(usize),
    Lose(usize),
    GiveUp(usize),
    LoseDisk(usize),
}

struct Protocol {
    adds: usize,
    /// The bug under test: a replica that lost its disk keeps its old epoch (actor).
    keep_epoch_on_disk_loss: bool,
}

impl Protocol {
    fn merged(s: &Sys, order: &[usize]) -> KeyState {
        let mut m = KeyState::new();
        for &i in order {
            m.merge(&s.replicas[i]);
        }
        m
    }
}

impl Model for Protocol {
    type State = Sys;
    type Action = Action;

    fn init_states(&self) -> Vec<Sys> {
        vec![Sys {
            replicas: vec![KeyState::new(); REPLICAS],
            epochs: vec![1; REPLICAS],
            next: vec![1; REPLICAS],
            net: Vec::new(),
            clients: vec![Client::Idle { done: 0 }; CLIENTS],
            acked: BTreeSet::new(),
            wiped: false,
        }]
    }

    fn actions(&self, s: &Sys, out: &mut Vec<Action>) {
        for (client, c) in s.clients.iter().enumerate() {
            match c {
                Client::Idle { done } if *done < self.adds => {
                    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
                        out.push(Action::Read { client, a, b });
                    }
                }
                Client::Read { .. } => {
                    for coordinator in 0..REPLICAS {
                        out.push(Action::Write {
                            client,
                            coordinator,
                        });
                    }
                }
                Client::Writing { .. } if !s.net.iter().any(|m| m.from == client) => {
                    out.push(Action::GiveUp(client));
                }
                _ => {}
            }
        }
        for i in 0..s.net.len() {
            out.push(Action::Deliver(i));
            out.push(Action::Lose(i));
        }
        if !s.wiped {
            for r in 0..REPLICAS {
                out.push(Action::LoseDisk(r));
            }
        }
    }

    fn next_state(&self, s: &Sys, action: Action) -> Option<Sys> {
        let mut s = s.clone();
        match action {
            Action::Read { client, a, b } => {
                let Client::Idle { done } = s.clients[client] else {
                    return None;
                };
                let mut seen = s.replicas[a].clone();
                seen.merge(&s.replicas[b]);
                s.clients[client] = Client::Read { done, seen };
            }
            Action::Write {
                client,
                coordinator,
            } => {
                let Client::Read { done, seen } = s.clients[client].clone() else {
                    return None;
                };
                let element = format!("c{client}-{done}");
                let mut set = union(&seen);
                set.insert(element.clone());
                let value = set.into_iter().collect::<Vec<_>>().join(",").into_bytes();
                let actor = Actor::new(format!("n{coordinator}"), s.epochs[coordinator]);
                let dot = Dot::new(actor, s.next[coordinator]);
                s.next[coordinator] += 1;
                s.replicas[coordinator].apply_write(NewVersion {
                    dot,
                    context: seen.read_context(),
                    value,
                    tombstone: false,
                    written_at_ms: 1,
                    expires_at_ms: 0,
                    idempotency_key: String::new(),
                    policy: ConflictPolicy::Siblings,
                    max_siblings: 100,
                });
                for to in (0..REPLICAS).filter(|&r| r != coordinator) {
                    s.net.push(Msg {
                        to,
                        state: s.replicas[coordinator].clone(),
                        from: client,
                        element: element.clone(),
                    });
                }
                s.clients[client] = Client::Writing { done, element };
            }
            Action::Deliver(i) => {
                let m = s.net.remove(i);
                s.replicas[m.to].merge(&m.state);
                if let Client::Writing { done, element } = &s.clients[m.from]
                    && *element == m.element
                {
                    s.acked.insert(element.clone());
                    s.clients[m.from] = Client::Idle { done: done + 1 };
                }
            }
            Action::Lose(i) => {
                s.net.remove(i);
            }
            Action::GiveUp(client) => {
                let Client::Writing { done, .. } = s.clients[client] else {
                    return None;
                };
                s.clients[client] = Client::Idle { done: done + 1 };
            }
            Action::LoseDisk(r) => {
                s.wiped = true;
                s.replicas[r] = KeyState::new();
                if !self.keep_epoch_on_disk_loss {
                    s.epochs[r] += 1;
                }
                s.next[r] = 1;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no acknowledged add lost", |_, s: &Sys| {
                let all = union(&Protocol::merged(s, &[0, 1, 2]));
                s.acked.iter().all(|e| all.contains(e))
            }),
            Property::always("one value per dot", |_, s: &Sys| {
                let mut seen: BTreeMap<&Dot, &Vec<u8>> = BTreeMap::new();
                let states = s.replicas.iter().chain(s.net.iter().map(|m| &m.state));
                for v in states.flat_map(|st| st.versions()) {
                    if *seen.entry(&v.dot).or_insert(&v.value) != &v.value {
                        return false;
                    }
                }
                true
            }),
            Property::always("merge order does not matter", |_, s: &Sys| {
                Protocol::merged(s, &[0, 1, 2]) == Protocol::merged(s, &[2, 0, 1])
                    && Protocol::merged(s, &[1, 2, 0]) == Protocol::merged(s, &[0, 2, 1])
            }),
            Property::sometimes("concurrent adds become siblings", |_, s: &Sys| {
                s.replicas.iter().any(|r| r.versions().len() >= 2)
            }),
            Property::sometimes("every add acknowledged", |m: &Protocol, s: &Sys| {
                s.acked.len() == m.adds * CLIENTS
            }),
        ]
    }
}

fn adds() -> usize {
    std::env::var("PAIRDB_MODEL_ADDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[test]
fn the_causal_protocol_loses_no_acknowledged_add_in_any_interleaving() {
    let checker = Protocol {
        adds: adds(),
        keep_epoch_on_disk_loss: false,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!(
        "states explored: {} (unique {})",
        checker.state_count(),
        checker.unique_state_count()
    );
    checker.assert_properties();
}

#[test]
fn reusing_an_actor_after_a_lost_disk_is_caught() {
    let checker = Protocol {
        adds: adds(),
        keep_epoch_on_disk_loss: true,
    }
    .checker()
    .spawn_bfs()
    .join();
    let found: Vec<&str> = ["no acknowledged add lost", "one value per dot"]
        .into_iter()
        .filter(|p| checker.discovery(p).is_some())
        .collect();
    println!("with the actor reused, the checker found: {found:?}");
    assert!(
        !found.is_empty(),
        "reusing a dot after lost state went unnoticed"
    );
}
