//! The seeded fault schedule of a simulation run: which fault, on which host, from when and
//! for how long, all drawn from the seed (FAULT-SCENARIOS.md S10). Faults may overlap: a
//! storage-node fault with a coordinator crash or a metadata-store outage.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fault. Nodes and coordinators are numbered from 0 (`sn1` is node 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a storage node (its engine survives: acknowledged writes were in its WAL);
    /// restarted at the heal.
    Crash(usize),
    /// A storage node cut off from every other host; in-flight segments are lost.
    Isolate(usize),
    /// Replies from a storage node to the coordinators are lost, requests still arrive and
    /// are applied (S08: applied but unacknowledged).
    OneWay(usize),
    /// Every message to and from a storage node is held and delivered at the heal, as when
    /// the process is paused (SIGSTOP) and continued.
    Hold(usize),
    /// A bridge (S07): coordinator 1 cannot reach node 3, coordinator 2 cannot reach node 1;
    /// node 2 is reachable from both.
    Bridge,
    /// A coordinator killed, restarted at the heal.
    CrashCoordinator(usize),
    /// The metadata store unreachable (every call fails).
    MetaDown,
}

impl Fault {
    /// Whether the fault impairs a storage node (at most one at a time, so that QUORUM stays
    /// reachable and availability is measured against single faults).
    pub fn on_node(&self) -> bool {
        matches!(
            self,
            Fault::Crash(_) | Fault::Isolate(_) | Fault::OneWay(_) | Fault::Hold(_) | Fault::Bridge
        )
    }
}

/// A fault from `at_ms` to `at_ms + for_ms` of simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u64,
    pub for_ms: u64,
    pub fault: Fault,
}

/// `count` storage-node faults one after another from 1 s on, each with a 30 % chance of a
/// coordinator crash or metadata-store outage overlapping it.
pub fn schedule(seed: u64, count: usize, nodes: usize, coordinators: usize) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = 1_000;
    for _ in 0..count {
        let node = rng.random_range(0..nodes);
        let fault = match rng.random_range(0..5) {
            0 => Fault::Crash(node),
            1 => Fault::Isolate(node),
            2 => Fault::OneWay(node),
            3 => Fault::Hold(node),
            _ => Fault::Bridge,
        };
        let for_ms = rng.random_range(500..3_000);
        let gap = rng.random_range(200..1_500);
        out.push(Step {
            at_ms: t,
            for_ms,
            fault,
        });
        if rng.random_bool(0.3) {
            let extra = if rng.random_bool(0.5) {
                Fault::CrashCoordinator(rng.random_range(0..coordinators))
            } else {
                Fault::MetaDown
            };
            // Starts during the node fault and is healed before the next one starts.
            let offset = rng.random_range(0..for_ms);
            let longest = for_ms - offset + gap - 1;
            out.push(Step {
                at_ms: t + offset,
                for_ms: rng.random_range(300..2_000).min(longest),
                fault: extra,
            });
        }
        t += for_ms + gap;
    }
    out.sort_by_key(|s| s.at_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_node_faults_never_overlap() {
        assert_eq!(schedule(7, 10, 3, 2), schedule(7, 10, 3, 2));
        assert_ne!(schedule(7, 10, 3, 2), schedule(8, 10, 3, 2));
        let s = schedule(7, 50, 3, 2);
        let nodes: Vec<&Step> = s.iter().filter(|s| s.fault.on_node()).collect();
        assert_eq!(nodes.len(), 50);
        for w in nodes.windows(2) {
            assert!(w[0].at_ms + w[0].for_ms < w[1].at_ms, "{w:?}");
        }
        // No two faults of any kind overlap but a node fault and one other.
        let mut ends: Vec<(u64, u64)> = s.iter().map(|s| (s.at_ms, s.at_ms + s.for_ms)).collect();
        ends.sort();
        for (i, a) in ends.iter().enumerate() {
            let open = ends.iter().skip(i + 1).filter(|b| b.0 < a.1).count();
            assert!(open <= 1, "{a:?} overlaps {open} faults");
        }
    }
}
