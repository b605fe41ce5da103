//! A whole multi-process cluster: its own PostgreSQL database, storage nodes and coordinators
//! as processes, and the checks tests run against it afterwards (quorum reads, placement,
//! replica digests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pairdb_common::api::pb;
use pairdb_common::client::{Coordinator, Dial};
use pairdb_common::ring::{Ring, RingMember};
use pairdb_coordinator::meta::{self, MetaStore, TenantRecord};

use super::*;
use crate::cluster::{PgDb, wait_async};

/// Settings of a process cluster.
#[derive(Debug, Clone)]
pub struct ProcOptions {
    pub nodes: usize,
    pub coordinators: usize,
    /// Extra coordinator environment (throttles, grace, lease).
    pub coord_env: Vec<(String, String)>,
    /// Extra storage-node environment.
    pub node_env: Vec<(String, String)>,
    /// TLS on every port (mTLS to storage nodes), tokens required, admin tokens on the
    /// admin HTTP ports.
    pub secure: bool,
    /// Start every process from this directory's binaries (another release's build).
    pub bin_dir: Option<std::path::PathBuf>,
    /// Register each storage node at a TCP proxy in front of it, so a test can cut it off from
    /// every coordinator and every other node (a symmetric partition) and heal it.
    pub proxied: bool,
    /// Run the metadata store on a PostgreSQL server of the cluster's own
    /// ([`crate::pginstance::PgInstance`]), which a test may stop and start.
    pub own_postgres: bool,
    /// Run every storage node and coordinator in a network namespace of its own on a bridge
    /// ([`crate::netns::Net`]; needs root), so a test can partition them in the kernel.
    pub netns: bool,
}

impl Default for ProcOptions {
    fn default() -> Self {
        ProcOptions {
            nodes: 3,
            coordinators: 2,
            coord_env: vec![
                ("PAIRDB_CLEANUP_GRACE_SECS".into(), "2".into()),
                ("PAIRDB_JOB_LEASE_MS".into(), "3000".into()),
            ],
            node_env: Vec::new(),
            secure: false,
            bin_dir: None,
            proxied: false,
            own_postgres: false,
            netns: false,
        }
    }
}

pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub meta: Arc<dyn MetaStore>,
    pub nodes: Vec<NodeProc>,
    pub coords: Vec<CoordProc>,
    pub secure: Option<Arc<Secure>>,
    /// The proxy each storage node is registered at (`ProcOptions::proxied`), by node id.
    pub proxies: std::collections::BTreeMap<String, crate::proxy::TcpProxy>,
    _pg: Option<PgDb>,
    /// The cluster's own PostgreSQL server (`ProcOptions::own_postgres`).
    pub pg_server: Option<crate::pginstance::PgInstance>,
    /// The namespaces every process runs in (`ProcOptions::netns`), and the proxy that takes
    /// coordinators there to the metadata store; dropped after the processes.
    pub net: Option<crate::netns::Net>,
    _pg_proxy: Option<crate::proxy::TcpProxy>,
}

impl ProcCluster {
    /// PostgreSQL database, `nodes` NORMAL storage nodes, tenant `t1` (RF 3), coordinators.
    pub async fn start(o: ProcOptions) -> Result<ProcCluster> {
        let dir = tempfile::tempdir()?;
        let secure = if o.secure {
            Some(Arc::new(Secure::new(dir.path())?))
        } else {
            None
        };
        let (pg, pg_server, db_url) = if o.own_postgres {
            let server =
                tokio::task::spawn_blocking(crate::pginstance::PgInstance::start).await??;
            let url = server.url("postgres");
            (None, Some(server), url)
        } else {
            let pg = PgDb::create().await?;
            let url = pg.url.clone();
            (Some(pg), None, url)
        };
        let meta = meta::connect(&db_url).await?;
        meta.migrate().await?;
        let mut net = if o.netns {
            Some(crate::netns::Net::new()?)
        } else {
            None
        };
        // Coordinators in namespaces reach PostgreSQL through a proxy on the bridge.
        let (coord_db_url, pg_proxy) = match &net {
            None => (db_url.clone(), None),
            Some(n) => {
                let mut url = reqwest::Url::parse(&db_url)?;
                let upstream: std::net::SocketAddr = format!(
                    "{}:{}",
                    url.host_str().context("database host")?,
                    url.port().unwrap_or(5432)
                )
                .parse()?;
                let p =
                    crate::proxy::TcpProxy::start_on(format!("{}:0", n.gateway).parse()?, upstream)
                        .await?;
                url.set_host(Some(&n.gateway))?;
                url.set_port(Some(p.addr.port()))
                    .map_err(|()| anyhow::anyhow!("database port"))?;
                (url.to_string(), Some(p))
            }
        };
        let mut nodes = Vec::new();
        let mut proxies = std::collections::BTreeMap::new();
        for i in 1..=o.nodes {
            let mut n = NodeProc::new(&format!("n{i}"), dir.path())?;
            if let Some(net) = &mut net {
                n.host = net.host(&n.id)?;
                // Not loopback: servers refuse to run unauthenticated unless told to (the
                // bridge is the test's own, reachable from this machine only).
                n.env.push(("PAIRDB_INSECURE".into(), "true".into()));
            }
            n.secure = secure.clone();
            n.env.extend(o.node_env.iter().cloned());
            n.bin_dir = o.bin_dir.clone();
            n.start()?;
            let mut record = n.record();
            if o.proxied {
                let p = crate::proxy::TcpProxy::start(n.addr().parse()?).await?;
                record.port = p.addr.port();
                proxies.insert(n.id.clone(), p);
            }
            meta.add_node(&record).await?;
            nodes.push(n);
        }
        meta.create_tenant(&TenantRecord::with_defaults("t1"))
            .await?;
        let mut coords = Vec::new();
        for i in 1..=o.coordinators {
            let id = format!("coord-{i}");
            let (host, insecure) = match &mut net {
                Some(net) => (
                    net.host(&id)?,
                    Some(("PAIRDB_INSECURE".into(), "true".into())),
                ),
                None => (crate::netns::Host::loopback(), None),
            };
            let mut c = CoordProc {
                id,
                host,
                grpc: free_port()?,
                admin: free_port()?,
                env: std::iter::once((
                    "PAIRDB_BACKUP_DIR".to_string(),
                    dir.path().join("backups").display().to_string(),
                ))
                .chain(o.coord_env.iter().cloned())
                .chain(insecure)
                .collect(),
                child: None,
                secure: secure.clone(),
                log: None,
                bin_dir: o.bin_dir.clone(),
            };
            c.start(&coord_db_url)?;
            coords.push(c);
        }
        Ok(ProcCluster {
            dir,
            db_url: coord_db_url,
            meta,
            nodes,
            coords,
            secure,
            proxies,
            _pg: pg,
            pg_server,
            net,
            _pg_proxy: pg_proxy,
        })
    }

    /// Waits (at most 30 s) until the metadata store shows every storage node UP.
    pub async fn wait_all_up(&self) -> Result<()> {
        wait_async("every node UP", Duration::from_secs(30), || async {
            self.meta.list_nodes().await.is_ok_and(|ns| {
                ns.iter()
                    .all(|n| n.status == pairdb_coordinator::meta::NodeStatus::Up)
            })
        })
        .await
    }

    /// A new node process (not started).
    pub fn new_node(&mut self, id: &str) -> Result<&mut NodeProc> {
        let mut n = NodeProc::new(id, self.dir.path())?;
        n.secure = self.secure.clone();
        self.nodes.push(n);
        self.nodes.last_mut().context("pushed")
    }

    pub fn node(&mut self, id: &str) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// How clients reach every running coordinator.
    pub fn coord_dials(&self) -> Vec<Dial> {
        self.coords
            .iter()
            .filter(|c| c.running())
            .map(|c| c.dial())
            .collect()
    }

    /// A client to the first running coordinator.
    pub async fn coord(&self) -> Result<Coordinator> {
        let c = self
            .coords
            .iter()
            .find(|c| c.running())
            .context("no coordinator running")?;
        c.client().await
    }

    pub fn coord_addrs(&self) -> Vec<String> {
        self.coords
            .iter()
            .filter(|c| c.running())
            .map(|c| c.addr())
            .collect()
    }

    /// Every change (finished too), by id.
    pub async fn change(&self, id: &str) -> Result<meta::ChangeRecord> {
        self.meta.get_change(id).await?.context("no such change")
    }

    /// Starts new node `new` and has it replace `old` (ReplaceStorageNode); returns the change.
    pub async fn replace_node(&mut self, old: &str, new: &str) -> Result<String> {
        let n = self.new_node(new)?;
        n.start()?;
        let port: u32 = n.grpc.into();
        let r = self
            .coord()
            .await?
            .replace_storage_node(pb::ReplaceStorageNodeRequest {
                old_node_id: old.into(),
                new_node: Some(pb::AddStorageNodeRequest {
                    node_id: new.into(),
                    host: "127.0.0.1".into(),
                    port,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        Ok(r.change.context("no change in the reply")?.change_id)
    }

    /// The newest change of `kind` for `node_id`, waiting up to 10 s for it to appear.
    pub async fn change_of(&self, node_id: &str, kind: meta::ChangeKind) -> Result<String> {
        for _ in 0..100 {
            let all = self.meta.list_changes(true).await?;
            if let Some(ch) = all
                .iter()
                .rev()
                .find(|ch| ch.kind == kind && ch.node_id == node_id)
            {
                return Ok(ch.change_id.clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no {kind:?} change for {node_id}")
    }

    /// Waits until change `id` has the status `want` (fails early if it ends otherwise).
    pub async fn wait_change(&self, id: &str, want: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let c = self.change(id).await?;
            if c.status.as_str() == want {
                return Ok(());
            }
            if !c.status.is_active() {
                anyhow::bail!(
                    "change {id} ended {} ({:?}), not {want}",
                    c.status.as_str(),
                    c.error
                );
            }
            if start.elapsed() > deadline {
                anyhow::bail!(
                    "change {id} still {} after {deadline:?}: {} {:?}",
                    c.status.as_str(),
                    c.progress,
                    c.error
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the cleanup scheduled by `after` (same node id, created later) to complete.
    pub async fn wait_cleanup(&self, node_id: &str, deadline: Duration) -> Result<()> {
        wait_async("cleanup completes", deadline, || async {
            let all = self.meta.list_changes(true).await.unwrap_or_default();
            let cleanups: Vec<_> = all
                .iter()
                .filter(|c| c.kind == meta::ChangeKind::Cleanup && c.node_id == node_id)
                .collect();
            !cleanups.is_empty()
                && cleanups
                    .iter()
                    .all(|c| c.status == meta::ChangeStatus::Completed)
        })
        .await
    }

    /// The ring of the metadata store's current membership.
    pub async fn ring(&self) -> Result<Ring> {
        let nodes = self.meta.list_nodes().await?;
        Ok(Ring::build(
            nodes.iter().map(|n| RingMember {
                node_id: n.node_id.clone(),
                zone: n.zone.clone(),
                virtual_nodes: n.virtual_nodes,
                state: n.state,
            }),
            self.meta.ring_version().await?,
        ))
    }

    /// Asserts every acknowledged write reads back at QUORUM with its value.
    pub async fn check_quorum_reads(&self, acked: &[(String, Vec<u8>)]) -> Result<()> {
        let mut c = self.coord().await?;
        let mut lost = Vec::new();
        for (k, v) in acked {
            let r = c
                .read(crate::cluster::read_req(
                    k.as_bytes(),
                    pb::Consistency::Quorum,
                ))
                .await;
            match r {
                Ok(r) if r.get_ref().siblings.iter().any(|s| &s.value == v) => {}
                other => lost.push(format!("{k}: {:?}", other.map(|r| r.into_inner().value))),
            }
        }
        anyhow::ensure!(
            lost.is_empty(),
            "{} of {} acknowledged writes not readable at QUORUM, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        Ok(())
    }

    /// Asserts every replica (current ring, RF 3) of every acknowledged key holds it, and
    /// (with `no_surplus`) that no other node does. Retries while hints drain.
    pub async fn check_placement(
        &self,
        acked: &[(String, Vec<u8>)],
        no_surplus: bool,
    ) -> Result<()> {
        let ring = self.ring().await?;
        let mut clients = std::collections::HashMap::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            clients.insert(n.id.clone(), n.client().await?);
        }
        let mut last = String::new();
        for _ in 0..60 {
            let mut problems = Vec::new();
            for (id, c) in clients.iter_mut() {
                for chunk in acked.chunks(500) {
                    let keys = chunk
                        .iter()
                        .map(|(k, _)| pb::KeyRef {
                            tenant_id: "t1".into(),
                            key: k.as_bytes().to_vec(),
                        })
                        .collect();
                    let rs = c
                        .batch_read(pb::BatchReadRequest { keys })
                        .await?
                        .into_inner()
                        .results;
                    anyhow::ensure!(
                        rs.len() == chunk.len(),
                        "batch read answered {} of {}",
                        rs.len(),
                        chunk.len()
                    );
                    for ((k, v), r) in chunk.iter().zip(rs) {
                        let tok = pairdb_common::token::token("t1", k.as_bytes());
                        let replica = ring
                            .preference_list(tok, 3)
                            .iter()
                            .any(|m| &m.node_id == id);
                        let has = r
                            .state
                            .map(|s| s.versions.iter().any(|x| &x.value == v))
                            .unwrap_or(false);
                        if replica && !has {
                            problems.push(format!("replica {id} misses {k}"));
                        }
                        if no_surplus && !replica && r.exists {
                            problems.push(format!(
                                "{id} still holds {k}, which it no longer replicates"
                            ));
                        }
                    }
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            last = format!(
                "{} problems, e.g. {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("placement check failed: {last}")
    }

    /// Asserts that for every ring range a node replicates, its digest equals the other
    /// replicas' (writes stopped, hints drained). Retries while hints drain.
    pub async fn check_digests(&self, node_id: &str) -> Result<()> {
        let ring = self.ring().await?;
        let mut clients = std::collections::HashMap::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            clients.insert(n.id.clone(), n.client().await?);
        }
        let mut last = String::new();
        for _ in 0..40 {
            let mut differ = 0usize;
            let mut checked = 0usize;
            for (range, reps) in ring.ranges(3) {
                let ids: Vec<String> = reps.iter().map(|m| m.node_id.clone()).collect();
                if !ids.iter().any(|i| i == node_id) {
                    continue;
                }
                let mut hashes = Vec::new();
                for id in &ids {
                    let Some(c) = clients.get_mut(id) else {
                        continue;
                    };
                    let d = c
                        .range_digest(pb::RangeDigestRequest {
                            range: Some(pairdb_common::convert::range_to_pb(range)),
                            buckets: 1,
                        })
                        .await?
                        .into_inner();
                    hashes.push(d.buckets.iter().map(|b| b.hash).collect::<Vec<_>>());
                }
                checked += 1;
                if hashes.windows(2).any(|w| w[0] != w[1]) {
                    differ += 1;
                }
            }
            anyhow::ensure!(checked > 0, "{node_id} replicates no range");
            if differ == 0 {
                return Ok(());
            }
            last = format!("{differ} of {checked} ranges of {node_id} differ from their replicas");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("{last}")
    }
}
