//! The nemesis harness (issue G, FAULT-SCENARIOS.md §1) over multi-process clusters
//! (`crate::procs`): a history of every client operation (`history.rs`), the set-add workload
//! (`setadd.rs`), a seeded fault schedule applied to the processes (`faults.rs`: kill -9,
//! SIGSTOP/SIGCONT, a symmetric partition through each node's proxy) and the checkers run
//! afterwards (`check.rs`: lost, phantom, siblings, replica convergence). Scenarios live in
//! `tests/tests/nemesis_process.rs`; TESTING.md keeps their results.

pub mod check;
pub mod faults;
pub mod history;
pub mod setadd;

/// The seed of a run: `PAIRDB_NEMESIS_SEED` (to replay a schedule), else a fresh one; printed
/// either way.
pub fn seed() -> u64 {
    let seed = std::env::var("PAIRDB_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("nemesis seed {seed} (replay with PAIRDB_NEMESIS_SEED={seed})");
    seed
}

/// `PAIRDB_NEMESIS_STEPS` faults per scenario (the long tier raises it), else `default`.
pub fn steps(default: usize) -> usize {
    std::env::var("PAIRDB_NEMESIS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
