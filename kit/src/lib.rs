//! The in-process cluster kit: storage nodes and coordinators started inside the calling
//! process, registered in a metadata store, on loopback ports. One launcher shared by
//! `pairdbctl dev`, the benches (`pairdbctl bench stream|repair`) and the in-process tests
//! (`tests/src/cluster.rs`), so that what they start is built the same way.
//!
//! Multi-process clusters (the process tests, `pairdbctl bench workload`) start binaries
//! instead; they share [`free_port`] from here.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::{MetaStore, NodeRecord, TenantRecord};
use pairdb_coordinator::server::RunningCoordinator;
use pairdb_storage_node::server::{RunningNode, StartOptions};

/// A loopback port nothing listens on right now (the OS picks it; another process could
/// take it before the caller binds, which on a test machine is rare enough).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// [`free_port`] as a loopback address.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// `127.0.0.1:port` (0: any free port, chosen when the server binds).
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A storage node's settings for a kit cluster: `id` under `root`, small cache and memtable.
pub fn node_config(
    id: &str,
    root: &Path,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
) -> pairdb_storage_node::Config {
    pairdb_storage_node::Config {
        node_id: id.into(),
        data_dir: root.join(id),
        grpc_addr,
        admin_addr,
        block_cache_mb: 16,
        memtable_mb: 8,
        ..Default::default()
    }
}

/// Starts one storage node in this process. `disk_percent` pins the disk usage the node sees
/// (tests: the disk breaker never trips because the machine's disk is full).
pub async fn start_node(
    cfg: pairdb_storage_node::Config,
    disk_percent: Option<f64>,
) -> anyhow::Result<RunningNode> {
    let id = cfg.node_id.clone();
    let opts = StartOptions {
        usage_source: disk_percent.map(|p| {
            Box::new(pairdb_storage_node::disk::FixedUsage::new(p))
                as Box<dyn pairdb_storage_node::disk::UsageSource>
        }),
    };
    pairdb_storage_node::server::start(cfg, opts)
        .await
        .with_context(|| format!("start storage node {id}"))
}

/// Registers each node as NORMAL in the metadata store unless it is there already (a
/// restarted dev cluster keeps its membership).
pub async fn register(meta: &dyn MetaStore, nodes: &[&RunningNode]) -> anyhow::Result<()> {
    for n in nodes {
        let id = &n.node.node_id;
        if meta.get_node(id).await?.is_none() {
            meta.add_node(&NodeRecord::new(
                id,
                "127.0.0.1",
                n.grpc_addr.port(),
                n.admin_addr.port(),
                NodeState::Normal,
            ))
            .await
            .with_context(|| format!("register storage node {id}"))?;
        }
    }
    Ok(())
}

/// Creates `tenant` with the default settings unless it exists.
pub async fn ensure_tenant(meta: &dyn MetaStore, tenant: &str) -> anyhow::Result<()> {
    if meta.get_tenant(tenant).await?.is_none() {
        meta.create_tenant(&TenantRecord::with_defaults(tenant))
            .await
            .with_context(|| format!("create tenant {tenant}"))?;
    }
    Ok(())
}

/// A coordinator's settings for a kit cluster: loopback, any free ports.
pub fn coordinator_config(database_url: &str, id: &str) -> pairdb_coordinator::config::Config {
    pairdb_coordinator::config::Config {
        coordinator_id: id.into(),
        database_url: database_url.into(),
        grpc_addr: loopback(0),
        admin_addr: loopback(0),
        ..Default::default()
    }
}

/// Starts a coordinator in this process on an already opened metadata store.
pub async fn start_coordinator(
    cfg: pairdb_coordinator::config::Config,
    meta: Arc<dyn MetaStore>,
) -> anyhow::Result<RunningCoordinator> {
    let id = cfg.coordinator_id.clone();
    pairdb_coordinator::server::start_with(cfg, meta)
        .await
        .with_context(|| format!("start coordinator {id}"))
}
