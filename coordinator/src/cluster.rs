//! The coordinator's view of the cluster: the ring (from durable intent in the metadata store)
//! and each node's observed health (from heartbeats, in memory), plus one long-lived gRPC
//! channel per storage node.
//!
//! Two named workers keep it current: `topology` polls `ring_version` and rebuilds the ring
//! within `ring_poll_ms` of a change; `failure-detector` pings every node every
//! `heartbeat_ms`, marks it DOWN after `down_after_misses` consecutive misses (UP again on the
//! first answer), and records status and `last_seen` in `storage_nodes` for operators.
//! *Invariant: health never changes ring membership; state does.*

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::ring::{Ring, RingMember};
use pairdb_common::tls::connect::{self, ClientTls};
use pairdb_common::tls::{Expect, Tls};
use pairdb_common::worker::Supervisor;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::meta::{MetaStore, NodeRecord, NodeStatus};

pub type StorageClient = StorageNodeServiceClient<Channel>;

/// Observed health of one node (lock-free counters).
#[derive(Debug, Default)]
pub struct Health {
    misses: AtomicU32,
    /// 0 = unknown, 1 = up, 2 = down.
    status: AtomicU32,
    last_seen_ms: AtomicU64,
    down_since_ms: AtomicU64,
    /// The node's unrepaired outage as its last heartbeat reported it.
    outage_ms: AtomicU64,
    /// The node reported maintenance mode in its last heartbeat.
    maintenance: AtomicBool,
    /// Smoothed latency of this coordinator's calls to the node, µs (0: none yet); see
    /// [`Health::observe_latency`].
    latency_us: AtomicU64,
}

/// How much slower than the fastest replica a node must answer before writes stop choosing it
/// as their coordinating replica ([`markedly_slower`]): twice as slow, and by at least this
/// much, so the noise between healthy nodes a few hundred µs apart never reorders them.
pub const SLOW_REPLICA_MARGIN: Duration = Duration::from_millis(20);

/// Whether a node whose smoothed latency is `latency_us` is markedly slower than the fastest
/// candidate (`fastest_us`): Cassandra's dynamic snitch and Dynamo's choice of the fastest
/// responder, in one rule. A node without samples (0) is never markedly slower.
pub fn markedly_slower(latency_us: u64, fastest_us: u64) -> bool {
    latency_us > fastest_us.saturating_mul(2)
        && latency_us > fastest_us + SLOW_REPLICA_MARGIN.as_micros() as u64
}

impl Health {
    pub fn status(&self) -> NodeStatus {
        match self.status.load(Ordering::Relaxed) {
            1 => NodeStatus::Up,
            2 => NodeStatus::Down,
            _ => NodeStatus::Unknown,
        }
    }

    /// Whether requests should be sent (unknown counts as up: a fresh coordinator tries).
    pub fn is_available(&self) -> bool {
        self.status() != NodeStatus::Down
    }

    /// How long the node was away since its last full repair (from its heartbeat).
    pub fn outage_ms(&self) -> u64 {
        self.outage_ms.load(Ordering::Relaxed)
    }

    pub fn set_outage_ms(&self, ms: u64) {
        self.outage_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the node said it is in maintenance mode (it refuses client requests).
    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Relaxed);
    }

    /// One call's latency (a timed-out call counts its whole deadline). An exponentially
    /// weighted mean, each sample weighing 1/8 (TCP's smoothed RTT): a node that turns slow is
    /// seen within a few calls, and every write and read fans out to every replica, so a node
    /// passed over as coordinating replica keeps being measured and is taken back once fast.
    pub fn observe_latency(&self, d: Duration) {
        let sample = (d.as_micros() as u64).max(1);
        // Racing updates may lose a sample; the mean does not need them all.
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// The smoothed latency, µs (0: no call measured yet).
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds since the node went down (0 when not down).
    pub fn down_for_ms(&self, now_ms: u64) -> u64 {
        match self.down_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => now_ms.saturating_sub(t),
        }
    }

    /// A request to the node failed at the transport level: counts as a miss (the circuit
    /// opens at the same threshold as the heartbeat's).
    pub fn record_failure(&self, down_after: u32) {
        let m = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
        if m >= down_after && self.status.swap(2, Ordering::Relaxed) != 2 {
            self.down_since_ms
                .store(pairdb_common::now_ms(), Ordering::Relaxed);
        }
    }

    pub fn record_success(&self) {
        self.misses.store(0, Ordering::Relaxed);
        self.status.store(1, Ordering::Relaxed);
        self.down_since_ms.store(0, Ordering::Relaxed);
        self.last_seen_ms
            .store(pairdb_common::now_ms(), Ordering::Relaxed);
    }
}

/// One storage node as the coordinator knows it.
pub struct NodeEntry {
    pub record: NodeRecord,
    pub client: StorageClient,
    /// Coalesces concurrent data operations to this node into batch RPCs.
    pub batcher: crate::batcher::Batcher,
    pub health: Arc<Health>,
}

impl NodeEntry {
    /// Whether client reads and writes go to the node: not DOWN, not drained by an operator
    /// (`storage_nodes.drained_at`, the same on every coordinator) and not in maintenance by
    /// its own last heartbeat (a pod's preStop). A node that does not serve clients gets a
    /// hint for each write instead, replayed once it serves again.
    pub fn serves_clients(&self) -> bool {
        self.health.is_available() && !self.record.drained() && !self.health.maintenance()
    }
}

/// An immutable snapshot: ring + nodes. Replaced wholesale on topology change.
pub struct Snapshot {
    pub ring: Ring,
    /// By node id, in id order (iteration order is part of what a simulation seed replays).
    pub nodes: BTreeMap<String, Arc<NodeEntry>>,
    pub version: u64,
    /// The ring each active topology change leads to (bootstrapping nodes in, leaving nodes
    /// out). Writes also go to the nodes these rings add to a key's preference list.
    pub futures: Vec<Ring>,
}

impl Snapshot {
    /// Pending replicas of a key: nodes in the key's preference list of some future ring but
    /// not of the current one. They receive writes without counting toward W.
    pub fn pending_replicas(&self, token: u64, n: usize) -> Vec<Arc<NodeEntry>> {
        if self.futures.is_empty() {
            return Vec::new();
        }
        let current = self.ring.preference_list(token, n);
        let mut out: Vec<Arc<NodeEntry>> = Vec::new();
        for f in &self.futures {
            for m in f.preference_list(token, n) {
                if current.iter().any(|c| c.node_id == m.node_id)
                    || out.iter().any(|o| o.record.node_id == m.node_id)
                {
                    continue;
                }
                if let Some(e) = self.nodes.get(&m.node_id) {
                    out.push(e.clone());
                }
            }
        }
        out
    }
}

/// Cluster settings, from the coordinator config.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub heartbeat_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub down_after_misses: u32,
    pub ring_poll_ms: u64,
    pub connect_timeout_ms: u64,
    /// Deadline of one replica (batch) RPC.
    pub replica_timeout_ms: u64,
}

pub struct Cluster {
    meta: Arc<dyn MetaStore>,
    cfg: ClusterConfig,
    snap: RwLock<Arc<Snapshot>>,
    /// Health survives snapshot rebuilds.
    health: RwLock<HashMap<String, Arc<Health>>>,
    /// TLS to storage nodes (`None`: plaintext).
    tls: Option<Arc<Tls>>,
    /// Owns each node's batcher tasks.
    sup: Supervisor,
    /// Whether the last ring poll reached the metadata store (`/health`; the data path goes
    /// on with the last ring without it, so readiness does not depend on it).
    meta_reachable: std::sync::atomic::AtomicBool,
}

/// How often an HTTP/2 PING checks each connection to a storage node, busy or idle, and how
/// long its answer may take before the connection is closed and the next request dials a new
/// one. A connection whose packets are black-holed (a partition that dropped segments, a lost
/// conntrack or NAT entry, a peer whose network was reset) is otherwise only noticed by
/// HTTP/2 keep-alive: with tonic's defaults it kept a node DOWN for ~30 s after the network
/// healed (found by the simulation, `tests/tests/simulation.rs`; TESTING.md). One PING per
/// node every 2 s costs nothing measurable.
pub const NODE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const NODE_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazy channel to `host:port` that, with TLS, only completes its handshake with the
/// storage node `node_id` (its certificate from the cluster CA must carry the storage-node
/// role and name that node).
pub fn node_channel(
    tls: &Option<Arc<Tls>>,
    node_id: &str,
    host: &str,
    port: u16,
    connect_timeout_ms: u64,
) -> Result<Channel, String> {
    let ep = connect::endpoint(&format!("{host}:{port}"))
        .map_err(|e| format!("bad address for {node_id}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(connect_timeout_ms))
        .http2_keep_alive_interval(NODE_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(NODE_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    // Lazy: connects on first use and reconnects after failures, one HTTP/2 channel per node.
    Ok(connect::lazy_channel(
        ep,
        ClientTls::cluster(tls, Expect::storage_node(Some(node_id))),
    ))
}

/// Asks a node drained at `drained_at_ms` to be in maintenance mode (best effort: the
/// coordinators route around it by its `drained_at` row either way, and the next heartbeat
/// asks again). A coordinator whose view is stale may ask after the undrain: the node ignores
/// a hold for a drain an undrain released.
pub async fn hold_in_maintenance(
    c: &mut StorageClient,
    node_id: &str,
    drained_at_ms: u64,
    timeout: Duration,
) {
    let r = tokio::time::timeout(
        timeout,
        c.set_maintenance(pb::SetMaintenanceRequest {
            enabled: true,
            drained_at_ms,
        }),
    )
    .await;
    match r {
        Ok(Ok(_)) => tracing::info!(node_id, "drained node held in maintenance mode"),
        Ok(Err(s)) => tracing::warn!(node_id, error = %s, "drained node refused maintenance mode"),
        Err(_) => tracing::warn!(
            node_id,
            "drained node did not answer SetMaintenance in time"
        ),
    }
}

impl Cluster {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        cfg: ClusterConfig,
        tls: Option<Arc<Tls>>,
        sup: Supervisor,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            meta,
            cfg,
            tls,
            sup,
            snap: RwLock::new(Arc::new(Snapshot {
                ring: Ring::default(),
                nodes: BTreeMap::new(),
                version: 0,
                futures: Vec::new(),
            })),
            health: RwLock::new(HashMap::new()),
            meta_reachable: std::sync::atomic::AtomicBool::new(true),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub fn tls(&self) -> &Option<Arc<Tls>> {
        &self.tls
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().clone()
    }

    /// Reloads membership from the metadata store and rebuilds the ring.
    pub async fn refresh(&self) -> crate::meta::MetaResult<()> {
        let version = self.meta.ring_version().await?;
        let records = self.meta.list_nodes().await?;
        let changes = self.meta.list_changes(false).await?;
        let old = self.snapshot();
        let mut nodes = BTreeMap::new();
        for rec in records {
            let health = self
                .health
                .write()
                .entry(rec.node_id.clone())
                .or_default()
                .clone();
            // Reuse the channel (and its batcher) when the address did not change.
            let (client, batcher) = match old.nodes.get(&rec.node_id) {
                Some(e) if e.record.host == rec.host && e.record.port == rec.port => {
                    (e.client.clone(), e.batcher.clone())
                }
                _ => match node_channel(
                    &self.tls,
                    &rec.node_id,
                    &rec.host,
                    rec.port,
                    self.cfg.connect_timeout_ms,
                ) {
                    Ok(ch) => {
                        let client = StorageNodeServiceClient::new(ch)
                            .max_decoding_message_size(64 << 20)
                            .max_encoding_message_size(64 << 20);
                        let timeout = Duration::from_millis(self.cfg.replica_timeout_ms);
                        let batcher =
                            crate::batcher::Batcher::start(client.clone(), timeout, &self.sup);
                        (client, batcher)
                    }
                    Err(e) => {
                        tracing::error!(node_id = %rec.node_id, error = %e, "skip node with a bad address");
                        continue;
                    }
                },
            };
            nodes.insert(
                rec.node_id.clone(),
                Arc::new(NodeEntry {
                    record: rec,
                    client,
                    batcher,
                    health,
                }),
            );
        }
        let ring = Ring::build(
            nodes.values().map(|e| RingMember {
                node_id: e.record.node_id.clone(),
                zone: e.record.zone.clone(),
                virtual_nodes: e.record.virtual_nodes,
                state: e.record.state,
            }),
            version,
        );
        let futures: Vec<Ring> = changes
            .iter()
            .filter_map(|c| {
                crate::topology::future_ring(&ring, &nodes, c)
                    .inspect_err(|e| tracing::error!(change_id = %c.change_id, error = %e, "change left out of the future rings"))
                    .ok()
                    .flatten()
            })
            .collect();
        if version != old.version {
            tracing::info!(
                ring_version = version,
                nodes = nodes.len(),
                owners = ring.members().len(),
                changes = futures.len(),
                "ring rebuilt"
            );
        }
        *self.snap.write() = Arc::new(Snapshot {
            ring,
            nodes,
            version,
            futures,
        });
        Ok(())
    }

    /// The topology worker: rebuilds the ring whenever `ring_version` moves.
    /// Whether the last ring poll reached the metadata store.
    pub fn meta_reachable(&self) -> bool {
        self.meta_reachable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn run_topology(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.ring_poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let current = self.snapshot().version;
            let r = match self.meta.ring_version().await {
                Ok(v) if v == current => Ok(()),
                Ok(_) => self.refresh().await,
                Err(e) => Err(e),
            };
            self.meta_reachable
                .store(r.is_ok(), std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("metadata store reachable again");
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "poll ring version failed; serving with the last ring");
                }
                _ => {}
            }
        }
    }

    /// The failure detector: heartbeats every node, keeps health and `storage_nodes` current.
    pub async fn run_failure_detector(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recorded: HashMap<String, (NodeStatus, Instant)> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let snap = self.snapshot();
            let timeout = Duration::from_millis(self.cfg.heartbeat_timeout_ms);
            let pings = snap.nodes.values().map(|e| {
                let e = e.clone();
                async move {
                    let mut c = e.client.clone();
                    let ok =
                        match tokio::time::timeout(timeout, c.node_info(pb::NodeInfoRequest {}))
                            .await
                        {
                            Ok(Ok(info)) => {
                                let info = info.into_inner();
                                e.health.set_outage_ms(info.unrepaired_outage_ms);
                                e.health.set_maintenance(info.maintenance);
                                // A drained node that restarted (or missed the drain's call)
                                // is put back into maintenance.
                                if let Some(at) = e.record.drained_at_ms
                                    && !info.maintenance
                                {
                                    hold_in_maintenance(&mut c, &e.record.node_id, at, timeout)
                                        .await;
                                }
                                true
                            }
                            _ => false,
                        };
                    (e, ok)
                }
            });
            for (e, ok) in futures::future::join_all(pings).await {
                let before = e.health.status();
                if ok {
                    e.health.record_success();
                } else {
                    e.health.record_failure(self.cfg.down_after_misses);
                }
                let after = e.health.status();
                if before != after {
                    match after {
                        NodeStatus::Down => {
                            tracing::warn!(node_id = %e.record.node_id, "storage node DOWN")
                        }
                        _ => {
                            tracing::info!(node_id = %e.record.node_id, status = after.as_str(), "storage node status")
                        }
                    }
                }
                // Persist on change, and last_seen at most every 10 s.
                let due = match recorded.get(&e.record.node_id) {
                    Some((s, at)) => *s != after || at.elapsed() > Duration::from_secs(10),
                    None => true,
                };
                if due && after != NodeStatus::Unknown {
                    let seen = (e.health.last_seen_ms() > 0).then(|| e.health.last_seen_ms());
                    if let Err(err) = self
                        .meta
                        .record_status(&e.record.node_id, after, seen)
                        .await
                    {
                        tracing::warn!(node_id = %e.record.node_id, error = %err, "record node status failed");
                    } else {
                        recorded.insert(e.record.node_id.clone(), (after, Instant::now()));
                    }
                }
            }
        }
    }
}
