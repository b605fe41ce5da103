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

/// A loopback port nothing listens on right now, for a server started a moment later.
///
/// It is chosen *below* the kernel's ephemeral range (`ip_local_port_range`) when there is room:
/// a port from `bind(0)` comes from that range, where any outgoing connection (to PostgreSQL,
/// between nodes) may take it as its local port before the server binds it — the
/// "Address already in use" flake of a process test. Below the range only another explicit
/// binder can collide.
pub fn free_port() -> std::io::Result<u16> {
    let (lo, hi) = below_ephemeral();
    if hi > lo {
        for _ in 0..200 {
            let port = lo + (random() % u64::from(hi - lo)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Ports from 10000 up to the start of the ephemeral range (empty if it starts lower).
fn below_ephemeral() -> (u16, u16) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10_000, first)
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
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
        // Beside the data directories, shared by every node (and the coordinators) of `root`.
        backup_dir: Some(root.join("backups")),
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
        engine: None,
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

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_free() {
        let (lo, hi) = super::below_ephemeral();
        for _ in 0..20 {
            let p = super::free_port().unwrap();
            if hi > lo {
                assert!((lo..hi).contains(&p), "{p} not in {lo}..{hi}");
            }
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
