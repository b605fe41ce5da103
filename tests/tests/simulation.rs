//! Deterministic simulation of the whole cluster (issue G deliverable 4, FAULT-SCENARIOS.md
//! S10; the harness is `pairdb_tests::sim`): 3 storage nodes, 2 coordinators and 3 set-add
//! clients in one thread on turmoil's simulated network and clock, through a seeded schedule
//! of crashes, partitions (both ways, one way, a bridge), held links, coordinator crashes and
//! metadata-store outages. Every seed must lose no acknowledged add, invent no element, serve
//! no stale QUORUM read, and converge after the heal.
//!
//! `PAIRDB_SIM_SEEDS=N` runs N seeds (default 50) from `PAIRDB_SIM_SEED` (default: a fixed
//! base, so CI runs the same 50); `scripts/faults.sh --sim --seeds N` is the long mode. A
//! failing seed is printed with the command that replays it.
//!
//! Built only with `--cfg tokio_unstable` (in its own target directory; `scripts/test.sh` and
//! `scripts/faults.sh --sim` do it): that is what lets turmoil seed each host runtime's RNG
//! (the one `tokio::select!` draws from), without which no seed replays the same run.
#![cfg(tokio_unstable)]
#![allow(clippy::unwrap_used)]

use pairdb_tests::nemesis::check;
use pairdb_tests::sim::{self, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn every_seed_keeps_every_acknowledged_add_and_converges() {
    if std::env::var("RUST_LOG").is_ok() {
        pairdb_common::telemetry::init_logging(false);
    }
    let base = env_u64("PAIRDB_SIM_SEED").unwrap_or(1_000);
    let count = env_u64("PAIRDB_SIM_SEEDS").unwrap_or(50);
    let mut failures = Vec::new();
    let (mut ops, mut acked, mut faults) = (0, 0, 0);
    let mut min_during = usize::MAX;
    let started = std::time::Instant::now();
    for seed in base..base + count {
        let out = match sim::run(&SimConfig::new(seed)) {
            Ok(o) => o,
            Err(e) => {
                let cfg = SimConfig::new(seed);
                let steps = sim::schedule::schedule(seed, cfg.faults, cfg.nodes, cfg.coordinators);
                failures.push(format!("seed {seed}: {e:#} (schedule {steps:?})"));
                continue;
            }
        };
        let v = &out.verdict;
        // Every fault overlapped the traffic: some add was in flight while it was on.
        let during = check::ops_during_faults(&out.history);
        let quiet: Vec<&(String, usize)> = during.iter().filter(|(_, n)| *n == 0).collect();
        let fewest = during.iter().map(|(_, n)| *n).min().unwrap_or(0);
        min_during = min_during.min(fewest);
        println!(
            "seed {seed}: {} faults (fewest adds in flight during one: {fewest}), {}; sim {} ms, read-repaired {}",
            out.schedule.len(),
            v.summary(),
            out.sim_ms,
            out.read_repaired
        );
        if during.len() != out.schedule.len() || !quiet.is_empty() {
            failures.push(format!(
                "seed {seed}: faults without traffic {quiet:?} ({} faults recorded of {})",
                during.len(),
                out.schedule.len()
            ));
        }
        ops += v.ops;
        acked += v.acked;
        faults += out.schedule.len();
        if !v.lost.is_empty() || !v.unexpected.is_empty() || !v.stale_reads.is_empty() {
            let path = std::env::temp_dir().join(format!("pairdb-sim-{seed}.jsonl"));
            let _ = out.history.save(&path);
            failures.push(format!(
                "seed {seed}: lost {:?}, unexpected {:?}, stale {:?} (history {}; schedule {:?})",
                v.lost,
                v.unexpected,
                v.stale_reads,
                path.display(),
                out.schedule
            ));
        }
    }
    println!(
        "{count} seeds from {base}: {faults} faults (at least {min_during} adds in flight during each), {ops} adds, {acked} acknowledged ({:.1} %), {:.1} s",
        100.0 * acked as f64 / ops.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed (replay one with scripts/faults.sh --sim --seeds 1 --from <seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same seed gives the same run: the same operations with the same outcomes, reads that
/// saw the same sets, the same faults.
#[test]
fn a_seed_replays_the_same_run() {
    let seed = env_u64("PAIRDB_SIM_SEED").unwrap_or(77);
    let a = sim::run(&SimConfig::new(seed)).unwrap();
    let b = sim::run(&SimConfig::new(seed)).unwrap();
    assert_eq!(a.schedule, b.schedule);
    if a.digest != b.digest {
        let (ra, rb) = (a.history.records(), b.history.records());
        let same = |x: &pairdb_tests::nemesis::history::Record,
                    y: &pairdb_tests::nemesis::history::Record| {
            (
                x.proc,
                x.op_id,
                x.kind,
                &x.f,
                &x.key,
                &x.element,
                x.siblings,
                &x.error,
                &x.observed,
            ) == (
                y.proc,
                y.op_id,
                y.kind,
                &y.f,
                &y.key,
                &y.element,
                y.siblings,
                &y.error,
                &y.observed,
            )
        };
        let i = ra
            .iter()
            .zip(&rb)
            .position(|(x, y)| !same(x, y))
            .unwrap_or(ra.len().min(rb.len()));
        panic!(
            "seed {seed}: the two runs differ from record {i} of {}/{}:\n{:?}\n{:?}",
            ra.len(),
            rb.len(),
            ra.get(i),
            rb.get(i)
        );
    }
    let c = sim::run(&SimConfig::new(seed + 1)).unwrap();
    assert_ne!(a.digest, c.digest, "another seed must give another run");
}

/// The checkers' own test in the simulation: with every replica wiped before the checks,
/// every acknowledged add must be reported lost.
#[test]
fn the_checkers_report_every_acknowledged_add_of_a_wiped_cluster_as_lost() {
    let mut cfg = SimConfig::new(5);
    cfg.sabotage = true;
    let out = sim::run(&cfg).unwrap();
    let v = &out.verdict;
    assert!(v.acked > 0, "{}", v.summary());
    assert_eq!(v.lost.len(), v.acked, "{}", v.summary());
}

/// Regression (TESTING.md, "Found by the simulation"): after a partition that lost segments
/// of the coordinators' connections to a node, the node must be back — hints delivered,
/// replicas equal — within seconds of the heal, not when HTTP/2 keep-alive's defaults give up
/// on the dead connection (30 s). Simulated time, so the bound is exact, not a timing.
#[test]
fn a_node_is_back_within_seconds_of_a_partition_healing() {
    use sim::schedule::{Fault, Step};
    for fault in [Fault::Isolate(2), Fault::OneWay(2)] {
        let mut cfg = SimConfig::new(11);
        cfg.schedule = Some(vec![Step {
            at_ms: 1_000,
            for_ms: 2_000,
            fault: fault.clone(),
        }]);
        let out = sim::run(&cfg).unwrap();
        let v = &out.verdict;
        assert!(v.lost.is_empty(), "{fault:?}: {}", v.summary());
        let converged = v.converged_ms.unwrap();
        assert!(
            converged < 10_000,
            "{fault:?}: replicas converged {converged} ms after the heal: {}",
            v.summary()
        );
    }
}
