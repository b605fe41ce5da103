//! The nemesis: faults applied to a process cluster on a seeded schedule. One storage node at a
//! time is killed (SIGKILL, restarted when healed), paused (SIGSTOP, then SIGCONT) or cut off
//! from every coordinator and every other node (its proxy drops all connections and refuses
//! new ones: a symmetric partition; the cluster must be started with `ProcOptions::proxied`).
//! The same seed gives the same schedule (which fault, which node, how long).

use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::History;
use crate::procs::ProcCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    Isolate,
}

/// One scheduled fault: on `node`, for `hold`, then healed and `gap` before the next.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: String,
    pub hold: Duration,
    pub gap: Duration,
}

/// `steps` faults drawn from `kinds` over `nodes` with `seed`.
pub fn schedule(seed: u64, steps: usize, nodes: &[String], kinds: &[FaultKind]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| Fault {
            kind: kinds[rng.random_range(0..kinds.len())],
            node: nodes[rng.random_range(0..nodes.len())].clone(),
            hold: Duration::from_millis(rng.random_range(2000..5000)),
            gap: Duration::from_millis(rng.random_range(1000..2000)),
        })
        .collect()
}

fn signal(c: &mut ProcCluster, node: &str, sig: rustix::process::Signal) -> Result<()> {
    let pid = c
        .node(node)
        .child
        .as_ref()
        .and_then(|g| g.pid())
        .context("node not running")?;
    let pid = rustix::process::Pid::from_raw(pid).context("bad pid")?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

/// Starts `f`.
pub async fn inject(c: &mut ProcCluster, h: &History, f: &Fault) -> Result<()> {
    h.nemesis(&format!("{:?} {}", f.kind, f.node));
    match f.kind {
        FaultKind::Kill => c.node(&f.node).kill9(),
        FaultKind::Pause => signal(c, &f.node, rustix::process::Signal::STOP),
        FaultKind::Isolate => {
            c.proxies
                .get_mut(&f.node)
                .context("isolating needs ProcOptions::proxied")?
                .cut();
            Ok(())
        }
    }
}

/// Ends `f`.
pub async fn heal(c: &mut ProcCluster, h: &History, f: &Fault) -> Result<()> {
    match f.kind {
        FaultKind::Kill => c.node(&f.node).start()?,
        FaultKind::Pause => signal(c, &f.node, rustix::process::Signal::CONT)?,
        FaultKind::Isolate => {
            c.proxies
                .get_mut(&f.node)
                .context("isolating needs ProcOptions::proxied")?
                .restore()
                .await?
        }
    }
    h.nemesis(&format!("heal {:?} {}", f.kind, f.node));
    Ok(())
}

/// Runs the whole schedule: each fault held, healed, then the gap.
pub async fn run(c: &mut ProcCluster, h: &History, faults: &[Fault]) -> Result<()> {
    for f in faults {
        inject(c, h, f).await?;
        tokio::time::sleep(f.hold).await;
        heal(c, h, f).await?;
        tokio::time::sleep(f.gap).await;
    }
    Ok(())
}
