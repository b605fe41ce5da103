//! The nemesis: faults applied to a process cluster on a seeded schedule. One process at a time:
//! a storage node is killed (SIGKILL, restarted when healed), paused (SIGSTOP, then SIGCONT),
//! cut off from every coordinator and every other node (its proxy drops all connections and
//! refuses new ones: a symmetric partition; the cluster must be started with
//! `ProcOptions::proxied`) or slowed at its proxy (latency, jitter and stalls), or, in network
//! namespaces (`ProcOptions::netns`), partitioned in the kernel: isolated, one-way (replies
//! lost) or bridged; or a coordinator is killed (SIGKILL mid-request, restarted when healed);
//! or the metadata store is stopped, alone or with a storage node down. The same seed gives
//! the same schedule (which fault, which process, how long).

use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::History;
use crate::procs::ProcCluster;
use crate::proxy::Impairment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    Isolate,
    /// SIGKILL of a coordinator (`Fault::node` is its id).
    KillCoordinator,
    /// The metadata store (the cluster's own PostgreSQL, `ProcOptions::own_postgres`) stopped,
    /// then started again.
    StopMetadataStore,
    /// S14 with a replica down: the storage node `Fault::node` killed, then the metadata store
    /// stopped; healed in the other order (PostgreSQL back, then the node). The hints for the
    /// dead node meet a stopped store.
    StopMetadataStoreNodeDown,
    /// SIGKILL of two storage nodes at once (`Fault::node` is `a,b`): with 3 nodes and RF 3 no
    /// write can meet W = 2. The history gets `down a,b` once both are dead.
    KillTwo,
    /// The node's veth set down at the bridge (`ProcOptions::netns`): a symmetric partition in
    /// the kernel, open connections silent rather than reset (S07).
    NetIsolate,
    /// Blackhole routes in the node's namespace toward every coordinator: requests arrive and
    /// are applied, the replies are lost (S08).
    OneWay,
    /// A bridge partition (`Fault::node` is `a,b`): coord-1 and `a` cannot reach each other,
    /// nor coord-2 and `b`; every node is still reachable from one coordinator (S07).
    Bridge,
    /// The node's link degraded at its proxy (`ProcOptions::proxied`): every chunk each way
    /// [`SLOW`]'s delay plus jitter later, 2 % of them held a further retransmission timeout.
    /// The node is up and answers everything, late.
    Slow,
    /// The node's disk lost (S16): SIGKILL, its data directory deleted, and when healed started
    /// again on an empty one with the same node id. The history records the epoch it had
    /// (`down n2 wiped, epoch E`) so a test can tell its new incarnation from the old.
    Wipe,
}

/// The impairment of [`FaultKind::Slow`]: a round trip through the node costs 300–500 ms,
/// far beyond a healthy one (a few ms) and well inside the 5 s request deadline.
pub const SLOW: Impairment = Impairment {
    delay: Duration::from_millis(150),
    jitter: Duration::from_millis(100),
    stall_per_mille: 20,
};

/// One scheduled fault: on `node`, for `hold`, then healed and `gap` before the next.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: String,
    pub hold: Duration,
    pub gap: Duration,
    /// A second fault that overlaps this one (S09's mixed faults): begun a third into this
    /// one's hold and healed before this one is (its own hold cut to fit; its gap unused).
    pub with: Option<Box<Fault>>,
}

impl Fault {
    /// One fault on `node`, with no other overlapping it.
    pub fn on(kind: FaultKind, node: &str, hold: Duration, gap: Duration) -> Fault {
        Fault {
            kind,
            node: node.to_string(),
            hold,
            gap,
            with: None,
        }
    }

    /// This fault and the one overlapping it: how many nemesis faults it records.
    pub fn count(&self) -> usize {
        1 + self.with.as_ref().map_or(0, |w| w.count())
    }
}

/// `steps` faults drawn from `kinds` over storage `nodes` (and `coordinators`, for
/// [`FaultKind::KillCoordinator`]) with `seed`.
pub fn schedule(
    seed: u64,
    steps: usize,
    nodes: &[String],
    coordinators: &[String],
    kinds: &[FaultKind],
) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..steps)
        .map(|_| {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let postgres = ["postgres".to_string()];
            let pool: &[String] = match kind {
                FaultKind::KillCoordinator => coordinators,
                FaultKind::StopMetadataStore => &postgres,
                _ => nodes,
            };
            let pick = rng.random_range(0..pool.len());
            let node = if matches!(kind, FaultKind::KillTwo | FaultKind::Bridge) {
                format!("{},{}", pool[pick], pool[(pick + 1) % pool.len()])
            } else {
                pool[pick].clone()
            };
            Fault {
                kind,
                node,
                hold: Duration::from_millis(rng.random_range(2000..5000)),
                gap: Duration::from_millis(rng.random_range(1000..2000)),
                with: None,
            }
        })
        .collect()
}

/// [`schedule`] with each fault overlapped by one drawn from `with_kinds` (over the same
/// pools; on another process than the first when both are storage nodes, so one node is
/// never faulted twice at once). The first schedule is the one [`schedule`] gives for `seed`.
pub fn schedule_overlapping(
    seed: u64,
    steps: usize,
    nodes: &[String],
    coordinators: &[String],
    kinds: &[FaultKind],
    with_kinds: &[FaultKind],
) -> Vec<Fault> {
    let mut firsts = schedule(seed, steps, nodes, coordinators, kinds);
    let mut seconds = schedule(
        seed ^ 0x9e37_79b9_7f4a_7c15,
        steps,
        nodes,
        coordinators,
        with_kinds,
    );
    for (f, mut w) in firsts.iter_mut().zip(seconds.drain(..)) {
        if w.node == f.node
            && let Some(i) = nodes.iter().position(|n| *n == w.node)
        {
            w.node = nodes[(i + 1) % nodes.len()].clone();
        }
        // Room for a third of a lead, the overlap, and a third after it.
        f.hold += Duration::from_secs(4);
        f.with = Some(Box::new(w));
    }
    firsts
}

fn postgres(c: &ProcCluster) -> Result<&crate::pginstance::PgInstance> {
    c.pg_server
        .as_ref()
        .context("stopping the metadata store needs ProcOptions::own_postgres")
}

fn coordinator<'a>(c: &'a mut ProcCluster, id: &str) -> Result<&'a mut crate::procs::CoordProc> {
    c.coords
        .iter_mut()
        .find(|co| co.id == id)
        .with_context(|| format!("no coordinator {id}"))
}

fn net(c: &mut ProcCluster) -> Result<&mut crate::netns::Net> {
    c.net
        .as_mut()
        .context("network faults need ProcOptions::netns")
}

/// The proxy in front of storage node `id`.
fn proxy<'a>(c: &'a mut ProcCluster, id: &str) -> Result<&'a mut crate::proxy::TcpProxy> {
    c.proxies
        .get_mut(id)
        .context("isolating or slowing a node needs ProcOptions::proxied")
}

/// `a,b` of a two-process fault.
fn pair(node: &str) -> Result<(&str, &str)> {
    node.split_once(',').context("a fault on two processes")
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
        FaultKind::KillCoordinator => coordinator(c, &f.node)?.kill9(),
        FaultKind::StopMetadataStore => postgres(c)?.stop(),
        FaultKind::StopMetadataStoreNodeDown => {
            c.node(&f.node).kill9()?;
            postgres(c)?.stop()
        }
        FaultKind::KillTwo => {
            let (a, b) = pair(&f.node)?;
            for n in [a, b] {
                c.node(n).kill9()?;
            }
            h.nemesis(&format!("down {}", f.node));
            Ok(())
        }
        FaultKind::Pause => signal(c, &f.node, rustix::process::Signal::STOP),
        FaultKind::NetIsolate => net(c)?.isolate(&f.node),
        FaultKind::OneWay => {
            let coords: Vec<String> = c.coords.iter().map(|co| co.id.clone()).collect();
            let net = net(c)?;
            for co in &coords {
                net.drop_from(&f.node, co)?;
            }
            Ok(())
        }
        FaultKind::Bridge => {
            let (a, b) = pair(&f.node)?;
            let net = net(c)?;
            net.cut("coord-1", a)?;
            net.cut("coord-2", b)
        }
        FaultKind::Isolate => {
            proxy(c, &f.node)?.cut();
            Ok(())
        }
        FaultKind::Slow => {
            proxy(c, &f.node)?.impair(SLOW);
            Ok(())
        }
        FaultKind::Wipe => {
            let n = c.node(&f.node);
            n.kill9()?;
            let identity: serde_json::Value =
                serde_json::from_slice(&std::fs::read(n.dir.join("identity.json"))?)?;
            // A `down` record: a moment, not a fault of its own (`check::ops_during_faults`).
            h.nemesis(&format!(
                "down {} wiped, epoch {}",
                f.node, identity["epoch"]
            ));
            std::fs::remove_dir_all(&n.dir)?;
            std::fs::create_dir_all(&n.dir)?;
            Ok(())
        }
    }
}

/// Ends `f`.
pub async fn heal(c: &mut ProcCluster, h: &History, f: &Fault) -> Result<()> {
    match f.kind {
        FaultKind::Kill | FaultKind::Wipe => c.node(&f.node).start()?,
        FaultKind::KillCoordinator => {
            let url = c.db_url.clone();
            coordinator(c, &f.node)?.start(&url)?
        }
        FaultKind::StopMetadataStore => postgres(c)?.start_again()?,
        FaultKind::StopMetadataStoreNodeDown => {
            postgres(c)?.start_again()?;
            c.node(&f.node).start()?
        }
        FaultKind::KillTwo => {
            let (a, b) = pair(&f.node)?;
            for n in [a, b] {
                c.node(n).start()?;
            }
        }
        FaultKind::Pause => signal(c, &f.node, rustix::process::Signal::CONT)?,
        FaultKind::NetIsolate => net(c)?.rejoin(&f.node)?,
        FaultKind::OneWay | FaultKind::Bridge => net(c)?.restore_routes()?,
        FaultKind::Isolate => proxy(c, &f.node)?.restore().await?,
        FaultKind::Slow => proxy(c, &f.node)?.impair(Impairment::default()),
    }
    h.nemesis(&format!("heal {:?} {}", f.kind, f.node));
    Ok(())
}

/// Runs the whole schedule: each fault held (the one overlapping it begun and healed within
/// the hold), healed, then the gap.
pub async fn run(c: &mut ProcCluster, h: &History, faults: &[Fault]) -> Result<()> {
    for f in faults {
        inject(c, h, f).await?;
        match &f.with {
            None => tokio::time::sleep(f.hold).await,
            Some(w) => {
                let lead = f.hold / 3;
                let inner = w.hold.min(f.hold - lead * 2);
                tokio::time::sleep(lead).await;
                inject(c, h, w).await?;
                tokio::time::sleep(inner).await;
                heal(c, h, w).await?;
                tokio::time::sleep(f.hold - lead - inner).await;
            }
        }
        heal(c, h, f).await?;
        tokio::time::sleep(f.gap).await;
    }
    Ok(())
}
