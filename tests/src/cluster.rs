//! An in-process cluster for tests: real storage nodes (RocksDB, gRPC) and real coordinators
//! on ephemeral ports, with SQLite or a freshly created PostgreSQL database as metadata store.
//! Nodes can be stopped and restarted on the same ports and directories.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_coordinator::meta::{self, MetaStore, NodeStatus, TenantRecord};
use pairdb_coordinator::server::RunningCoordinator;
use pairdb_storage_node::server::RunningNode;
use tonic::transport::Channel;

/// Which metadata store a test cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL reached by the coordinators through a [`crate::proxy::TcpProxy`] the test can
    /// cut (`TestCluster::meta_proxy`); the test's own `meta` connects directly.
    PostgresProxied,
}

/// Admin URL of the local PostgreSQL (scripts/setup.sh makes sure one runs).
pub fn pg_admin_url() -> String {
    std::env::var("PAIRDB_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A uniquely named PostgreSQL database, dropped when this guard drops.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> Result<PgDb> {
        use sqlx::Connection;
        let name = format!(
            "pairdb_test_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut c = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .context("connect to local PostgreSQL (scripts/setup.sh starts it)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await?;
        let base = pg_admin_url();
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base)
        );
        Ok(PgDb { name, url })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub backend: Backend,
    pub nodes: usize,
    pub coordinators: usize,
    pub hints: bool,
    /// Changes to every coordinator's config (after the test defaults).
    pub tweak: Option<fn(&mut pairdb_coordinator::config::Config)>,
}

impl ClusterOptions {
    /// Three storage nodes and two coordinators on `backend`, no tweaks.
    pub fn three_by_two(backend: Backend, hints: bool) -> ClusterOptions {
        ClusterOptions {
            backend,
            nodes: 3,
            coordinators: 2,
            hints,
            tweak: None,
        }
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub meta: Arc<dyn MetaStore>,
    pub node_cfgs: Vec<pairdb_storage_node::Config>,
    pub nodes: Vec<Option<RunningNode>>,
    pub coordinators: Vec<RunningCoordinator>,
    pub hints: bool,
    pub tweak: Option<fn(&mut pairdb_coordinator::config::Config)>,
    /// With `Backend::PostgresProxied`: the proxy between the coordinators and PostgreSQL.
    pub meta_proxy: Option<crate::proxy::TcpProxy>,
    _pg: Option<PgDb>,
}

pub use pairdb_kit::free_addr;

pub fn coordinator_config(
    db_url: &str,
    id: &str,
    hints: bool,
) -> Result<pairdb_coordinator::config::Config> {
    Ok(pairdb_coordinator::config::Config {
        request_timeout_ms: 5_000,
        replica_timeout_ms: 1_000,
        heartbeat_ms: 200,
        heartbeat_timeout_ms: 300,
        down_after_misses: 2,
        ring_poll_ms: 200,
        tenant_refresh_ms: 500,
        hints_enabled: hints,
        hint_replay_interval_ms: 200,
        ..pairdb_kit::coordinator_config(db_url, id)
    })
}

impl TestCluster {
    pub async fn start(o: ClusterOptions) -> Result<TestCluster> {
        pairdb_common::telemetry::init_logging(false);
        let dir = tempfile::tempdir()?;
        let (pg, db_url) = match o.backend {
            Backend::Sqlite => (
                None,
                format!("sqlite://{}", dir.path().join("meta.db").display()),
            ),
            Backend::Postgres | Backend::PostgresProxied => {
                let db = PgDb::create().await?;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let meta = meta::connect(&db_url).await?;
        let (db_url, meta_proxy) = match o.backend {
            Backend::PostgresProxied => {
                // postgres://user@host:port/db → the same through the proxy.
                let (head, rest) = db_url.split_once('@').context("PostgreSQL URL without @")?;
                let (hostport, db) = rest.split_once('/').context("PostgreSQL URL without db")?;
                let upstream = tokio::net::lookup_host(hostport)
                    .await?
                    .next()
                    .context("resolve PostgreSQL")?;
                let proxy = crate::proxy::TcpProxy::start(upstream).await?;
                (format!("{head}@{}/{db}", proxy.addr), Some(proxy))
            }
            _ => (db_url, None),
        };
        meta.migrate().await?;
        let mut node_cfgs = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..o.nodes {
            let id = format!("n{}", i + 1);
            let (cfg, node) = start_node_on_free_ports(&id, dir.path()).await?;
            pairdb_kit::register(meta.as_ref(), &[&node]).await?;
            node_cfgs.push(cfg);
            nodes.push(Some(node));
        }
        meta.create_tenant(&TenantRecord::with_defaults("t1"))
            .await?;
        let mut coordinators = Vec::new();
        for i in 0..o.coordinators {
            let mut cfg = coordinator_config(&db_url, &format!("coord-{i}"), o.hints)?;
            cfg.backup_dir = Some(dir.path().join("backups"));
            if let Some(t) = o.tweak {
                t(&mut cfg);
            }
            coordinators.push(pairdb_coordinator::server::start(cfg).await?);
        }
        Ok(TestCluster {
            dir,
            db_url,
            meta,
            node_cfgs,
            nodes,
            coordinators,
            hints: o.hints,
            tweak: o.tweak,
            meta_proxy,
            _pg: pg,
        })
    }

    pub async fn client(&self, i: usize) -> Result<pairdb_common::client::Coordinator> {
        pairdb_common::client::Dial::plaintext(self.coordinators[i].grpc_addr.to_string())
            .connect()
            .await
            .map_err(anyhow::Error::msg)
    }

    pub async fn storage(&self, i: usize) -> Result<StorageNodeServiceClient<Channel>> {
        Ok(
            StorageNodeServiceClient::connect(format!("http://{}", self.node_cfgs[i].grpc_addr))
                .await?,
        )
    }

    /// Stops coordinator `i` and starts a fresh one on the same metadata store (new port).
    pub async fn restart_coordinator(&mut self, i: usize) -> Result<()> {
        let id = format!("coord-{i}-r{}", rand::random::<u16>());
        let mut cfg = coordinator_config(&self.db_url, &id, self.hints)?;
        cfg.backup_dir = Some(self.dir.path().join("backups"));
        if let Some(t) = self.tweak {
            t(&mut cfg);
        }
        let fresh = pairdb_coordinator::server::start(cfg).await?;
        let old = std::mem::replace(&mut self.coordinators[i], fresh);
        old.shutdown().await;
        Ok(())
    }

    pub async fn stop_node(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].is_some() {
            bail!("node {i} is running");
        }
        self.nodes[i] = Some(start_node(&self.node_cfgs[i]).await?);
        Ok(())
    }

    /// Waits until every coordinator sees node `i` with `status`.
    pub async fn wait_status(&self, i: usize, status: NodeStatus) -> Result<()> {
        let id = &self.node_cfgs[i].node_id;
        wait_async(
            &format!("{id} {status:?}"),
            Duration::from_secs(15),
            || async {
                self.coordinators.iter().all(|c| {
                    c.data
                        .cluster
                        .snapshot()
                        .nodes
                        .get(id)
                        .is_some_and(|e| e.health.status() == status)
                })
            },
        )
        .await
    }

    /// Waits until every coordinator sees every node Up.
    pub async fn wait_all_up(&self) -> Result<()> {
        for i in 0..self.node_cfgs.len() {
            self.wait_status(i, NodeStatus::Up).await?;
        }
        Ok(())
    }

    /// The state node `i` holds for `(t1, key)`, read through its own storage API.
    pub async fn node_values(&self, i: usize, key: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut c = self.storage(i).await?;
        let r = c
            .read(pb::KeyRef {
                tenant_id: "t1".into(),
                key: key.to_vec(),
            })
            .await?
            .into_inner();
        let mut v: Vec<Vec<u8>> = r
            .state
            .map(|s| {
                s.versions
                    .into_iter()
                    .filter(|v| !v.tombstone)
                    .map(|v| v.value)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        Ok(v)
    }

    pub async fn shutdown(self) {
        for c in self.coordinators {
            c.shutdown().await;
        }
        for n in self.nodes.into_iter().flatten() {
            n.shutdown().await;
        }
    }
}

/// A kit node that sees its disk 10% full whatever the machine's disk is.
async fn start_node(cfg: &pairdb_storage_node::Config) -> Result<RunningNode> {
    pairdb_kit::start_node(cfg.clone(), Some(10.0)).await
}

/// Starts node `id` under `root` on two free ports, choosing again (at most 3 times) when a
/// port was taken between the choice and the bind: a free port is only free when it is
/// chosen (CI saw "bind admin address …: Address already in use" once at a cluster's first
/// node).
async fn start_node_on_free_ports(
    id: &str,
    root: &std::path::Path,
) -> Result<(pairdb_storage_node::Config, RunningNode)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut cfg = pairdb_kit::node_config(id, root, free_addr()?, free_addr()?);
        if attempt > 1 {
            // A fresh directory: the failed start's database may still be closing.
            cfg.data_dir = root.join(format!("{id}-{attempt}"));
        }
        match start_node(&cfg).await {
            Ok(node) => return Ok((cfg, node)),
            Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                eprintln!("{id}: {e:#}; choosing other ports");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Polls an async condition until it holds or `deadline` passes.
pub async fn wait_async<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ErrorInfo.reason` and numeric code of a status.
pub fn reason(s: &tonic::Status) -> (String, String) {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|i| {
            (
                i.reason,
                i.metadata.get("code").cloned().unwrap_or_default(),
            )
        })
        .unwrap_or_default()
}

pub fn write_req(
    key: &[u8],
    value: &[u8],
    context: Vec<u8>,
    consistency: pb::Consistency,
) -> pb::WriteRequest {
    pb::WriteRequest {
        tenant_id: "t1".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context,
        consistency: consistency as i32,
        ..Default::default()
    }
}

pub fn read_req(key: &[u8], consistency: pb::Consistency) -> pb::ReadRequest {
    pb::ReadRequest {
        tenant_id: "t1".into(),
        key: key.to_vec(),
        consistency: consistency as i32,
        timeout_ms: 0,
    }
}

/// Polls a repair through `client` until it is no longer running (at most `deadline`); returns
/// its final status.
pub async fn wait_repair(
    client: &mut pairdb_common::client::Coordinator,
    repair_id: &str,
    deadline: Duration,
) -> Result<pb::RepairStatus> {
    let until = Instant::now() + deadline;
    loop {
        let s = client
            .get_repair_status(pb::GetRepairStatusRequest {
                repair_id: repair_id.to_string(),
            })
            .await?
            .into_inner();
        if s.status != "running" {
            return Ok(s);
        }
        if Instant::now() > until {
            bail!("repair still running: {}", s.progress_json);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
