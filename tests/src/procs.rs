//! Multi-process clusters: storage nodes and coordinators as separate processes (the real
//! binaries), killed with SIGKILL, restarted on the same ports and directories, with a fresh
//! PostgreSQL database per test; plus a load writer that records every acknowledged write.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::client::{Coordinator, Dial};
use pairdb_common::ring::{NodeState, Ring, RingMember};
use pairdb_coordinator::meta::{self, MetaStore, NodeRecord, TenantRecord};
use tonic::transport::Channel;

use crate::cluster::{PgDb, wait_async};
use crate::{ChildGuard, binary, free_port, wait_until};

/// TLS and token material of a secure process cluster: a CA, a certificate per process, the
/// bootstrap admin token. The test process acts as a coordinator towards storage nodes.
pub struct Secure {
    pub dir: std::path::PathBuf,
    ca_cert: String,
    ca_key: String,
    pub token: String,
}

impl Secure {
    pub fn new(dir: &std::path::Path) -> Result<Secure> {
        use pairdb_common::tls::certs;
        let dir = dir.join("tls");
        let ca = certs::new_ca("test CA", 30)?;
        certs::write_pair(&dir, "ca", &ca)?;
        let s = Secure {
            dir,
            ca_cert: ca.cert_pem,
            ca_key: ca.key_pem,
            token: pairdb_common::auth::new_token().token,
        };
        s.issue(certs::LeafSpec::coordinator(
            "coordinator",
            &["127.0.0.1", "localhost"],
            30,
        ))?;
        Ok(s)
    }

    /// Issues (or reissues) the certificate `spec.common_name`.
    pub fn issue(&self, spec: pairdb_common::tls::certs::LeafSpec) -> Result<()> {
        let issued = pairdb_common::tls::certs::issue(&self.ca_cert, &self.ca_key, &spec)?;
        pairdb_common::tls::certs::write_pair(&self.dir, &spec.common_name, &issued)?;
        Ok(())
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }

    /// `PAIRDB_TLS_*` for the process whose certificate is `name`.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let f = |ext: &str| self.dir.join(format!("{name}.{ext}")).display().to_string();
        vec![
            ("PAIRDB_TLS_CERT".into(), f("crt")),
            ("PAIRDB_TLS_KEY".into(), f("key")),
            ("PAIRDB_TLS_CA".into(), self.ca().display().to_string()),
            ("PAIRDB_ADMIN_TOKEN".into(), self.token.clone()),
        ]
    }

    /// A client TLS configuration presenting the coordinator certificate, expecting `expect`.
    pub fn client_tls(
        &self,
        expect: &pairdb_common::tls::Expect,
    ) -> Result<pairdb_common::tls::connect::ClientTls> {
        let cfg = pairdb_common::tls::connect::tool_config(
            &self.ca(),
            Some((
                &self.dir.join("coordinator.crt"),
                &self.dir.join("coordinator.key"),
            )),
            expect,
        )?;
        Ok(pairdb_common::tls::connect::ClientTls::Fixed(cfg))
    }
}

/// Spawns a server process and waits until it accepts connections on `port`.
fn spawn_listening(name: &str, cmd: &mut Command, port: u16) -> Result<ChildGuard> {
    let child = ChildGuard::spawn(name, cmd)?;
    wait_until(
        &format!("{name} listening"),
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    )?;
    Ok(child)
}

fn kill9(child: &mut Option<ChildGuard>) -> Result<()> {
    let mut g = child.take().context("not running")?;
    g.signal_and_wait(rustix::process::Signal::KILL, Duration::from_secs(10))?;
    Ok(())
}

/// A storage node process.
pub struct NodeProc {
    pub id: String,
    pub dir: std::path::PathBuf,
    pub grpc: u16,
    pub admin: u16,
    /// Coordinator to self-register with (`--join`).
    pub join: Option<String>,
    pub child: Option<ChildGuard>,
    /// TLS and admin token (a secure cluster).
    pub secure: Option<Arc<Secure>>,
    /// Extra environment, applied last (a test switching settings between restarts).
    pub env: Vec<(String, String)>,
}

impl NodeProc {
    pub fn new(id: &str, root: &std::path::Path) -> Result<NodeProc> {
        Ok(NodeProc {
            id: id.into(),
            dir: root.join(id),
            grpc: free_port()?,
            admin: free_port()?,
            join: None,
            child: None,
            secure: None,
            env: Vec::new(),
        })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }

    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary("pairdb-storage-node")?);
        cmd.args(["--node-id", &self.id, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--grpc-addr",
                &self.addr(),
                "--admin-addr",
                &format!("127.0.0.1:{}", self.admin),
            ])
            // Every pull chunk with a new key goes in as an ingested table, so the process tests
            // run the fenced ingest path against their concurrent writes.
            .env("PAIRDB_STREAM_TABLE_MIN_KB", "0")
            .env("RUST_LOG", "warn");
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        if let Some(sec) = &self.secure {
            if !sec.dir.join(format!("{}.crt", self.id)).exists() {
                sec.issue(pairdb_common::tls::certs::LeafSpec::storage_node(
                    &self.id,
                    &["127.0.0.1", "localhost"],
                    30,
                ))?;
            }
            cmd.envs(sec.env(&self.id));
        }
        cmd.envs(self.env.iter().cloned());
        self.child = Some(spawn_listening(&self.id, &mut cmd, self.grpc)?);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    pub fn record(&self) -> NodeRecord {
        NodeRecord::new(
            &self.id,
            "127.0.0.1",
            self.grpc,
            self.admin,
            NodeState::Normal,
        )
    }

    /// A client to this node (with the coordinator certificate in a secure cluster).
    pub async fn client(&self) -> Result<StorageNodeServiceClient<Channel>> {
        let tls = match &self.secure {
            Some(sec) => {
                sec.client_tls(&pairdb_common::tls::Expect::storage_node(Some(&self.id)))?
            }
            None => pairdb_common::tls::connect::ClientTls::Off,
        };
        let ep = pairdb_common::tls::connect::endpoint(&self.addr()).map_err(anyhow::Error::msg)?;
        Ok(StorageNodeServiceClient::new(
            pairdb_common::tls::connect::channel(ep, tls).await?,
        ))
    }

    /// The Prometheus text this node serves.
    pub async fn metrics(&self) -> Result<String> {
        admin_get(self.admin, "/metrics", self.secure.as_deref()).await
    }
}

/// GET `path` on a local admin port (HTTPS with the cluster CA and the admin token in a
/// secure cluster).
pub async fn admin_get(port: u16, path: &str, secure: Option<&Secure>) -> Result<String> {
    let Some(sec) = secure else {
        return Ok(reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await?
            .text()
            .await?);
    };
    let auth = AdminAuth {
        ca: sec.ca(),
        token: Some(sec.token.clone()),
    };
    let (status, body) = auth.get(port, path).await?;
    anyhow::ensure!(status == 200, "{path}: HTTP {status}: {body}");
    Ok(body)
}

/// HTTPS requests to a local admin port: trusting `ca`, sending `token` when given.
#[derive(Clone)]
pub struct AdminAuth {
    pub ca: std::path::PathBuf,
    pub token: Option<String>,
}

impl AdminAuth {
    pub async fn get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.request(port, "GET", path).await
    }

    pub async fn post(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.request(port, "POST", path).await
    }

    async fn request(&self, port: u16, method: &str, path: &str) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cfg = pairdb_common::tls::connect::tool_config(
            &self.ca,
            None,
            &pairdb_common::tls::Expect::any(),
        )?;
        let mut cfg = (*cfg).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        let auth = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        // A TLS close without close_notify still leaves the whole answer in `buf`.
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        Ok((status, body.to_string()))
    }
}

/// A coordinator process.
pub struct CoordProc {
    pub id: String,
    pub grpc: u16,
    pub admin: u16,
    pub env: Vec<(String, String)>,
    pub child: Option<ChildGuard>,
    pub secure: Option<Arc<Secure>>,
    /// Append the process's stderr (its log, the audit trail) to this file.
    pub log: Option<std::path::PathBuf>,
}

impl CoordProc {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }

    pub fn start(&mut self, db_url: &str) -> Result<()> {
        let mut cmd = Command::new(binary("pairdb-coordinator")?);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("PAIRDB_GRPC_ADDR", self.addr())
            .env("PAIRDB_ADMIN_ADDR", format!("127.0.0.1:{}", self.admin))
            .env("PAIRDB_COORDINATOR_ID", &self.id)
            .env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(sec) = &self.secure {
            cmd.envs(sec.env("coordinator"))
                .env("PAIRDB_AUTH", "required");
        }
        if let Some(path) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            cmd.stderr(f);
        }
        self.child = Some(spawn_listening(&self.id, &mut cmd, self.grpc)?);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// How a client reaches this coordinator (TLS and the admin token in a secure cluster).
    pub fn dial(&self) -> Dial {
        Dial {
            address: self.addr(),
            token: self.secure.as_ref().map(|s| s.token.clone()),
            ca: self.secure.as_ref().map(|s| s.ca()),
            ..Dial::default()
        }
    }

    pub async fn client(&self) -> Result<Coordinator> {
        self.dial().connect().await.map_err(anyhow::Error::msg)
    }
}

/// Settings of a process cluster.
#[derive(Debug, Clone)]
pub struct ProcOptions {
    pub nodes: usize,
    pub coordinators: usize,
    /// Extra coordinator environment (throttles, grace, lease).
    pub coord_env: Vec<(String, String)>,
    /// TLS on every port (mTLS to storage nodes), tokens required, admin tokens on the
    /// admin HTTP ports.
    pub secure: bool,
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
            secure: false,
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
    _pg: PgDb,
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
        let pg = PgDb::create().await?;
        let meta = meta::connect(&pg.url).await?;
        meta.migrate().await?;
        let mut nodes = Vec::new();
        for i in 1..=o.nodes {
            let mut n = NodeProc::new(&format!("n{i}"), dir.path())?;
            n.secure = secure.clone();
            n.start()?;
            meta.add_node(&n.record()).await?;
            nodes.push(n);
        }
        meta.create_tenant(&TenantRecord::with_defaults("t1"))
            .await?;
        let mut coords = Vec::new();
        for i in 1..=o.coordinators {
            let mut c = CoordProc {
                id: format!("coord-{i}"),
                grpc: free_port()?,
                admin: free_port()?,
                env: o.coord_env.clone(),
                child: None,
                secure: secure.clone(),
                log: None,
            };
            c.start(&pg.url)?;
            coords.push(c);
        }
        Ok(ProcCluster {
            dir,
            db_url: pg.url.clone(),
            meta,
            nodes,
            coords,
            secure,
            _pg: pg,
        })
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

/// Acknowledged writes: (key, value).
pub type Acked = Vec<(String, Vec<u8>)>;

/// A bounded writer: unique keys at QUORUM, round-robin over coordinators, recording every
/// acknowledged write (key, value). Stops when told, after `max` writes, or after `max_time`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(Acked, u64)>,
}

impl Writer {
    pub fn start(coords: Vec<Dial>, prefix: &str, max: usize, max_time: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let prefix = prefix.to_string();
        let handle = tokio::spawn(async move {
            let deadline = Instant::now() + max_time;
            let mut clients = Vec::new();
            for d in &coords {
                if let Ok(c) = d.connect().await {
                    clients.push(c);
                }
            }
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            for i in 0..max {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline || clients.is_empty() {
                    break;
                }
                let k = format!("{prefix}-{i}");
                let v = format!("value-of-{k}").into_bytes();
                let n = clients.len();
                let c = &mut clients[i % n];
                let req =
                    crate::cluster::write_req(k.as_bytes(), &v, vec![], pb::Consistency::Quorum);
                match tokio::time::timeout(Duration::from_secs(10), c.write(req)).await {
                    Ok(Ok(_)) => acked.push((k, v)),
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failed)
        });
        Writer { stop, handle }
    }

    pub async fn finish(self) -> Result<(Acked, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.handle.await?)
    }
}

/// Loads `count` keys of about `value_bytes` each through BatchWrite at QUORUM.
pub async fn preload(
    c: &mut Coordinator,
    prefix: &str,
    count: usize,
    value_bytes: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let items: Vec<pb::WriteRequest> = chunk
            .iter()
            .map(|i| {
                let k = format!("{prefix}-{i}");
                let mut v = format!("value-of-{k}-").into_bytes();
                v.resize(value_bytes.max(v.len()), b'x');
                crate::cluster::write_req(k.as_bytes(), &v, vec![], pb::Consistency::Quorum)
            })
            .collect();
        let r = c
            .batch_write(pb::BatchWriteItemsRequest {
                items: items.clone(),
            })
            .await?
            .into_inner();
        for (item, res) in items.into_iter().zip(r.results) {
            anyhow::ensure!(res.error.is_none(), "preload write failed: {:?}", res.error);
            out.push((String::from_utf8_lossy(&item.key).into_owned(), item.value));
        }
    }
    Ok(out)
}

/// The Prometheus text a process serves on its admin port.
pub async fn metrics_text(admin_port: u16) -> Result<String> {
    Ok(
        reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .await?
            .text()
            .await?,
    )
}
