//! `pairdbctl dev`: a whole cluster in one process — a coordinator on 127.0.0.1:50051 with
//! SQLite metadata, three storage nodes, and a `default` tenant — with everything under one data
//! directory, stopped cleanly by Ctrl-C and kept across restarts.

use std::path::PathBuf;

use anyhow::Context;
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::{self, NodeRecord, TenantRecord};
use pairdb_storage_node::Config;
use pairdb_storage_node::server::{self, StartOptions};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the cluster keeps its data (metadata database and one directory per node).
    #[arg(long, default_value = "./pairdb-dev")]
    pub data_dir: PathBuf,
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Coordinator gRPC port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Coordinator admin HTTP port.
    #[arg(long, default_value_t = 9100)]
    pub admin_port: u16,
    /// gRPC port of the first storage node; the others follow.
    #[arg(long, default_value_t = 7001)]
    pub storage_base_port: u16,
    /// Admin HTTP port of the first storage node; the others follow.
    #[arg(long, default_value_t = 9101)]
    pub admin_base_port: u16,
}

pub async fn run(a: DevArgs, json: bool) -> anyhow::Result<()> {
    pairdb_common::telemetry::init_logging(false);
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create {}", a.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&a.data_dir)?;
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let id = format!("dev-{}", i + 1);
        let cfg = Config {
            node_id: id.clone(),
            data_dir: data_dir.join(&id),
            grpc_addr: ([127, 0, 0, 1], a.storage_base_port + i).into(),
            admin_addr: ([127, 0, 0, 1], a.admin_base_port + i).into(),
            block_cache_mb: 64,
            memtable_mb: 16,
            ..Config::default()
        };
        let node = server::start(cfg, StartOptions::default())
            .await
            .with_context(|| format!("start storage node {id}"))?;
        nodes.push(node);
    }

    let url = format!("sqlite://{}", data_dir.join("meta.db").display());
    let store = meta::connect(&url).await?;
    store.migrate().await?;
    for n in &nodes {
        if store.get_node(&n.node.node_id).await?.is_none() {
            store
                .add_node(&NodeRecord::new(
                    &n.node.node_id,
                    "127.0.0.1",
                    n.grpc_addr.port(),
                    n.admin_addr.port(),
                    NodeState::Normal,
                ))
                .await?;
        }
    }
    if store.get_tenant("default").await?.is_none() {
        store
            .create_tenant(&TenantRecord::with_defaults("default"))
            .await?;
    }
    let ccfg = pairdb_coordinator::config::Config {
        coordinator_id: "dev-coordinator".into(),
        database_url: url.clone(),
        grpc_addr: ([127, 0, 0, 1], a.port).into(),
        admin_addr: ([127, 0, 0, 1], a.admin_port).into(),
        ..Default::default()
    };
    let coordinator = pairdb_coordinator::server::start_with(ccfg, store)
        .await
        .context("start coordinator")?;

    if json {
        let storage: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| serde_json::json!({"node_id": n.node.node_id, "grpc": n.grpc_addr.to_string(), "admin": format!("http://{}", n.admin_addr)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "coordinator": coordinator.grpc_addr.to_string(),
                "coordinator_admin": format!("http://{}", coordinator.admin_addr),
                "storage_nodes": storage,
                "database_url": url,
                "data_dir": data_dir,
            })
        );
    } else {
        println!("pairdb dev cluster is up (data in {})", data_dir.display());
        println!(
            "  coordinator      gRPC {}   admin http://{}",
            coordinator.grpc_addr, coordinator.admin_addr
        );
        for n in &nodes {
            println!(
                "  storage node {:<4} gRPC {}    admin http://{}",
                n.node.node_id, n.grpc_addr, n.admin_addr
            );
        }
        println!("  metadata         {url}");
        let c = coordinator.grpc_addr;
        println!("\nTry:");
        println!("  grpcurl -plaintext {c} list");
        println!(
            "  grpcurl -plaintext -d '{{\"tenant_id\":\"default\",\"key\":\"aGVsbG8=\",\"value\":\"d29ybGQ=\"}}' {c} pairdb.CoordinatorService/Write"
        );
        println!(
            "  grpcurl -plaintext -d '{{\"tenant_id\":\"default\",\"key\":\"aGVsbG8=\"}}' {c} pairdb.CoordinatorService/Read"
        );
        println!("\nCtrl-C stops the cluster; the data stays for the next start.");
    }
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    println!("stopping…");
    coordinator.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    println!("stopped");
    Ok(())
}
