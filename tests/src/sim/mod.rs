//! Deterministic simulation of a whole pairdb cluster in one thread (issue G deliverable 4,
//! FAULT-SCENARIOS.md S10): 3 storage nodes and 2 coordinators — the real servers, tonic
//! and all, started by `server::start` — on turmoil's simulated network and clock, over the
//! in-memory engine (`MemEngine`) and metadata store (`MemMeta`), with set-add clients
//! (`workload.rs`) and a seeded fault schedule (`schedule.rs`: crashes, partitions one-way and
//! both ways, held links, a bridge, coordinator crashes, metadata-store outages) applied
//! between simulation steps. Afterwards every fault is healed and `check.rs` looks for lost,
//! phantom and stale reads and for replicas that do not converge, with the checkers of the
//! process nemesis (`crate::nemesis::check`).
//!
//! The seed fixes the fault schedule, the clients' choices, the network's latencies and the
//! order hosts run in; see TESTING.md for what it does not fix. Not simulated: TLS, RocksDB,
//! and the range streams of repair and topology changes (they run blocking scans).

mod check;
pub mod net;
pub mod schedule;
mod workload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::{MemMeta, MetaStore, NodeRecord, TenantRecord};
use pairdb_storage_node::engine::Engine;
use pairdb_storage_node::engine::memory::MemEngine;

use crate::nemesis::check::Verdict;
use crate::nemesis::history::History;
use schedule::{Fault, Step};

pub const NODE_PORT: u16 = 7000;
pub const NODE_ADMIN_PORT: u16 = 7100;
pub const COORD_PORT: u16 = 8000;
pub const COORD_ADMIN_PORT: u16 = 8100;

/// Every simulated run gives up after this much simulated time.
const SIM_LIMIT: Duration = Duration::from_secs(600);

pub fn node_name(i: usize) -> String {
    format!("sn{}", i + 1)
}

pub fn coord_name(i: usize) -> String {
    format!("co{}", i + 1)
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub coordinators: usize,
    pub clients: usize,
    pub keys: usize,
    /// Most adds one client makes; it stops earlier, half a second after the last fault
    /// heals, so the load spans the whole schedule.
    pub ops_per_client: usize,
    /// Storage-node faults in the schedule.
    pub faults: usize,
    /// Wipes every node's engine once the hints have drained, before the reads (the
    /// checkers' own test: every acknowledged add must then be reported lost).
    pub sabotage: bool,
    /// Replaces the seeded schedule (a scenario kept as a regression test).
    pub schedule: Option<Vec<Step>>,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            coordinators: 2,
            clients: 3,
            keys: 6,
            ops_per_client: 400,
            faults: 4,
            sabotage: false,
            schedule: None,
        }
    }
}

/// What a run saw.
pub struct Outcome {
    pub verdict: Verdict,
    pub history: History,
    pub schedule: Vec<Step>,
    /// Simulated time the run took, to the end of the checks.
    pub sim_ms: u64,
    /// Keys whose replicas still differed after the hints drained and were brought together
    /// by read repair (reads at ALL).
    pub read_repaired: usize,
    /// A digest of the history without its real-time stamps: equal digests, equal runs.
    pub digest: u64,
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

type HostResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn storage_host(
    id: String,
    dir: std::path::PathBuf,
    engine: Arc<MemEngine>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = HostResult>>> {
    move || {
        let (id, dir, engine) = (id.clone(), dir.clone(), engine.clone());
        Box::pin(async move {
            let cfg = pairdb_storage_node::Config {
                node_id: id.clone(),
                data_dir: dir,
                grpc_addr: any(NODE_PORT),
                admin_addr: any(NODE_ADMIN_PORT),
                insecure: true,
                ..Default::default()
            };
            let opts = pairdb_storage_node::server::StartOptions {
                usage_source: Some(Box::new(pairdb_storage_node::disk::FixedUsage::new(10.0))),
                engine: Some(engine as Arc<dyn Engine>),
            };
            let _node = pairdb_storage_node::server::start(cfg, opts)
                .await
                .map_err(|e| format!("start {id}: {e}"))?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

fn coordinator_host(
    id: String,
    meta: Arc<MemMeta>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = HostResult>>> {
    move || {
        let (id, meta) = (id.clone(), meta.clone());
        Box::pin(async move {
            let cfg = pairdb_coordinator::config::Config {
                coordinator_id: id.clone(),
                database_url: "memory:".into(),
                grpc_addr: any(COORD_PORT),
                admin_addr: any(COORD_ADMIN_PORT),
                insecure: true,
                ..Default::default()
            };
            // A coordinator that cannot start (the metadata store is down) exits and is
            // started again, as a supervisor (Kubernetes) would.
            let _c = loop {
                match pairdb_coordinator::server::start_with(cfg.clone(), meta.clone()).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(coordinator = %id, error = %e, "start failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

/// Starts or heals `f` on the simulation.
fn apply(sim: &mut turmoil::Sim<'_>, meta: &MemMeta, f: &Fault, start: bool, cfg: &SimConfig) {
    let others = |i: usize| -> Vec<String> {
        (0..cfg.nodes)
            .filter(|j| *j != i)
            .map(node_name)
            .chain((0..cfg.coordinators).map(coord_name))
            .collect()
    };
    match (f, start) {
        (Fault::Crash(i), true) => sim.crash(node_name(*i)),
        (Fault::Crash(i), false) => sim.bounce(node_name(*i)),
        (Fault::Isolate(i), _) => {
            for o in others(*i) {
                if start {
                    sim.partition(node_name(*i), o);
                } else {
                    sim.repair(node_name(*i), o);
                }
            }
        }
        (Fault::OneWay(i), _) => {
            for c in (0..cfg.coordinators).map(coord_name) {
                if start {
                    sim.partition_oneway(node_name(*i), c);
                } else {
                    sim.repair_oneway(node_name(*i), c);
                }
            }
        }
        (Fault::Hold(i), _) => {
            for o in others(*i) {
                if start {
                    sim.hold(node_name(*i), o);
                } else {
                    sim.release(node_name(*i), o);
                }
            }
        }
        (Fault::Bridge, _) => {
            let pairs = [(coord_name(0), node_name(2)), (coord_name(1), node_name(0))];
            for (a, b) in pairs {
                if start {
                    sim.partition(a, b);
                } else {
                    sim.repair(a, b);
                }
            }
        }
        (Fault::CrashCoordinator(i), true) => sim.crash(coord_name(*i)),
        (Fault::CrashCoordinator(i), false) => sim.bounce(coord_name(*i)),
        (Fault::MetaDown, _) => meta.set_available(!start),
    }
}

fn digest(h: &History) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut d = std::collections::hash_map::DefaultHasher::new();
    for r in h.records() {
        (
            r.proc,
            r.op_id,
            format!("{:?}", r.kind),
            &r.f,
            &r.key,
            &r.element,
        )
            .hash(&mut d);
        (r.siblings, &r.error, &r.observed).hash(&mut d);
    }
    d.finish()
}

/// Runs one simulation to the end of its checks.
pub fn run(cfg: &SimConfig) -> Result<Outcome> {
    net::install();
    let steps = cfg
        .schedule
        .clone()
        .unwrap_or_else(|| schedule::schedule(cfg.seed, cfg.faults, cfg.nodes, cfg.coordinators));
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(net::epoch())
        .simulation_duration(SIM_LIMIT)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(1 << 16)
        .enable_random_order()
        .build();

    let meta = Arc::new(MemMeta::new());
    let dirs = tempfile::tempdir()?;
    let mut engines = Vec::new();
    register(&meta, cfg)?;
    for i in 0..cfg.nodes {
        let dir = dirs.path().join(node_name(i));
        let engine = Arc::new(MemEngine::open(&dir.join("staging"))?);
        engines.push(engine.clone());
        sim.host(node_name(i), storage_host(node_name(i), dir, engine));
    }
    for i in 0..cfg.coordinators {
        sim.host(coord_name(i), coordinator_host(coord_name(i), meta.clone()));
    }
    let history = History::new("sim", cfg.seed);
    let coords: Vec<String> = (0..cfg.coordinators).map(coord_name).collect();
    // The load runs until half a second after the last heal, so every fault meets traffic.
    let until =
        Duration::from_millis(steps.iter().map(|s| s.at_ms + s.for_ms).max().unwrap_or(0) + 500);
    for w in 0..cfg.clients {
        let (h, coords, c) = (history.clone(), coords.clone(), cfg.clone());
        sim.client(format!("client{}", w + 1), async move {
            let load = workload::Load {
                keys: c.keys,
                max_ops: c.ops_per_client,
                until,
            };
            workload::set_add(h, w, coords, load, c.seed).await;
            Ok(())
        });
    }

    // Faults start and heal between steps, at their simulated times.
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        events.push((s.at_ms, i, true));
        events.push((s.at_ms + s.for_ms, i, false));
    }
    events.sort();
    let mut next = 0;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        while next < events.len() && events[next].0 <= now {
            let (_, i, start) = events[next];
            let what = if start { "start" } else { "heal" };
            history.nemesis(&format!("{what} {:?}", steps[i].fault));
            apply(&mut sim, &meta, &steps[i].fault, start, cfg);
            next += 1;
        }
        let done = sim.step().map_err(|e| anyhow::anyhow!("simulation: {e}"))?;
        if done && next == events.len() {
            break;
        }
    }

    // Sabotage wipes the engines once the hints have drained (a hint delivered later
    // would put some adds back).
    let wipe = cfg.sabotage.then_some(engines);
    let result = Arc::new(parking_lot::Mutex::new(None));
    let r = result.clone();
    let (h, m, c) = (history.clone(), meta.clone(), cfg.clone());
    sim.client("checker", async move {
        let out = check::after_heal(&h, m, &c, wipe).await;
        *r.lock() = Some(out);
        Ok(())
    });
    sim.run().map_err(|e| anyhow::anyhow!("simulation: {e}"))?;
    let sim_ms = sim.elapsed().as_millis() as u64;
    let (verdict, read_repaired) = result
        .lock()
        .take()
        .context("the checker did not finish")??;
    Ok(Outcome {
        digest: digest(&history),
        verdict,
        history,
        schedule: steps,
        sim_ms,
        read_repaired,
    })
}

fn register(meta: &MemMeta, cfg: &SimConfig) -> Result<()> {
    // MemMeta's calls never wait: run them to completion here, outside the simulation.
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        for i in 0..cfg.nodes {
            let n = node_name(i);
            meta.add_node(&NodeRecord::new(
                &n,
                &n,
                NODE_PORT,
                NODE_ADMIN_PORT,
                NodeState::Normal,
            ))
            .await?;
        }
        meta.create_tenant(&TenantRecord::with_defaults("t1"))
            .await?;
        anyhow::Ok(())
    })
}
