//! `pairdbctl dev`: three storage nodes in one process with data under one directory, stopped
//! cleanly by Ctrl-C and kept across restarts. (The coordinator joins this process once it
//! exists; until then clients talk to the storage nodes' internal API directly.)

use std::path::PathBuf;

use anyhow::Context;
use pairdb_storage_node::Config;
use pairdb_storage_node::server::{self, StartOptions};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the cluster keeps its data (one sub-directory per node).
    #[arg(long, default_value = "./pairdb-dev")]
    pub data_dir: PathBuf,
    /// Number of storage nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
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
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let id = format!("dev-{}", i + 1);
        let cfg = Config {
            node_id: id.clone(),
            data_dir: a.data_dir.join(&id),
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
    let endpoints: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node_id": n.node.node_id,
                "grpc": n.grpc_addr.to_string(),
                "admin": format!("http://{}", n.admin_addr),
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "storage_nodes": endpoints, "data_dir": a.data_dir })
        );
    } else {
        println!(
            "pairdb dev cluster is up (data in {})",
            a.data_dir.display()
        );
        for n in &nodes {
            println!(
                "  storage node {:<6} gRPC {}   admin http://{}",
                n.node.node_id, n.grpc_addr, n.admin_addr
            );
        }
        let first = &nodes[0];
        println!("\nTry:");
        println!("  grpcurl -plaintext {} list", first.grpc_addr);
        println!(
            "  grpcurl -plaintext -d '{{\"tenant_id\":\"default\",\"key\":\"aGVsbG8=\",\"value\":\"d29ybGQ=\"}}' {} pairdb.StorageNodeService/Write",
            first.grpc_addr
        );
        println!(
            "  grpcurl -plaintext -d '{{\"tenant_id\":\"default\",\"key\":\"aGVsbG8=\"}}' {} pairdb.StorageNodeService/Read",
            first.grpc_addr
        );
        println!("  curl -s http://{}/health", first.admin_addr);
        println!("\nCtrl-C stops the cluster; the data stays for the next start.");
    }
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    println!("stopping…");
    for n in nodes {
        n.shutdown().await;
    }
    println!("stopped");
    Ok(())
}
