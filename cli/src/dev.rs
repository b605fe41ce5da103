//! `pairdbctl dev`: a whole cluster in one process — a coordinator on 127.0.0.1:50051 with
//! SQLite metadata, three storage nodes, and a `default` tenant — with everything under one data
//! directory, stopped cleanly by Ctrl-C and kept across restarts.

use std::path::PathBuf;

use anyhow::Context;
use pairdb_coordinator::meta;

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
    /// TLS on every port and tokens required: writes a throwaway CA, certificates and a
    /// bootstrap admin token under `<data-dir>/tls` (kept across restarts) and prints how to
    /// point grpcurl, curl and pairdbctl at them.
    #[arg(long)]
    pub tls: bool,
}

/// The dev cluster's security material (`--tls`).
struct DevTls {
    dir: PathBuf,
    token: String,
}

impl DevTls {
    fn settings(&self, name: &str) -> pairdb_common::tls::TlsSettings {
        pairdb_common::tls::TlsSettings {
            cert: Some(self.dir.join(format!("{name}.crt"))),
            key: Some(self.dir.join(format!("{name}.key"))),
            ca: Some(self.dir.join("ca.crt")),
            ..Default::default()
        }
    }
}

fn dev_tls(data_dir: &std::path::Path, nodes: u16) -> anyhow::Result<DevTls> {
    let dir = data_dir.join("tls");
    let ids: Vec<String> = (1..=nodes).map(|i| format!("dev-{i}")).collect();
    let complete = dir.join("ca.crt").exists()
        && dir.join("dev-coordinator.crt").exists()
        && ids.iter().all(|n| dir.join(format!("{n}.crt")).exists());
    if !complete {
        crate::security::write_cluster(
            &dir,
            &ids,
            &["dev-coordinator".to_string()],
            &["127.0.0.1".to_string(), "localhost".to_string()],
            30,
        )?;
    }
    let token_file = dir.join("admin-token");
    if !token_file.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&token_file, pairdb_common::auth::new_token().token)?;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    Ok(DevTls { dir, token })
}

pub async fn run(a: DevArgs, json: bool) -> anyhow::Result<()> {
    pairdb_common::telemetry::init_logging(false);
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create {}", a.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&a.data_dir)?;
    let sec = if a.tls {
        Some(dev_tls(&data_dir, a.nodes)?)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let id = format!("dev-{}", i + 1);
        let cfg = pairdb_storage_node::Config {
            block_cache_mb: 64,
            memtable_mb: 16,
            tls: sec.as_ref().map(|t| t.settings(&id)).unwrap_or_default(),
            admin_token: sec.as_ref().map(|t| t.token.clone()).unwrap_or_default(),
            ..pairdb_kit::node_config(
                &id,
                &data_dir,
                pairdb_kit::loopback(a.storage_base_port + i),
                pairdb_kit::loopback(a.admin_base_port + i),
            )
        };
        nodes.push(pairdb_kit::start_node(cfg, None).await?);
    }

    let url = format!("sqlite://{}", data_dir.join("meta.db").display());
    let store = meta::connect(&url).await?;
    store.migrate().await?;
    pairdb_kit::register(store.as_ref(), &nodes.iter().collect::<Vec<_>>()).await?;
    pairdb_kit::ensure_tenant(store.as_ref(), "default").await?;
    let ccfg = pairdb_coordinator::config::Config {
        grpc_addr: pairdb_kit::loopback(a.port),
        admin_addr: pairdb_kit::loopback(a.admin_port),
        tls: sec
            .as_ref()
            .map(|t| t.settings("dev-coordinator"))
            .unwrap_or_default(),
        auth: if sec.is_some() {
            pairdb_coordinator::auth::AuthMode::Required
        } else {
            pairdb_coordinator::auth::AuthMode::Off
        },
        admin_token: sec.as_ref().map(|t| t.token.clone()).unwrap_or_default(),
        backup_dir: Some(data_dir.join("backups")),
        ..pairdb_kit::coordinator_config(&url, "dev-coordinator")
    };
    let coordinator = pairdb_kit::start_coordinator(ccfg, store).await?;

    let scheme = if sec.is_some() { "https" } else { "http" };
    if json {
        let storage: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| serde_json::json!({"node_id": n.node.node_id, "grpc": n.grpc_addr.to_string(), "admin": format!("{scheme}://{}", n.admin_addr)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "coordinator": coordinator.grpc_addr.to_string(),
                "coordinator_admin": format!("{scheme}://{}", coordinator.admin_addr),
                "storage_nodes": storage,
                "database_url": url,
                "data_dir": data_dir,
                "tls_ca": sec.as_ref().map(|t| t.dir.join("ca.crt")),
                "admin_token_file": sec.as_ref().map(|t| t.dir.join("admin-token")),
            })
        );
    } else if let Some(t) = &sec {
        let ca = t.dir.join("ca.crt");
        let tok = t.dir.join("admin-token");
        let c = coordinator.grpc_addr;
        println!(
            "pairdb dev cluster is up with TLS and tokens (data in {})",
            data_dir.display()
        );
        println!(
            "  coordinator      gRPC {c}   admin https://{}",
            coordinator.admin_addr
        );
        for n in &nodes {
            println!(
                "  storage node {:<4} gRPC {}    admin https://{}",
                n.node.node_id, n.grpc_addr, n.admin_addr
            );
        }
        println!("  CA               {}", ca.display());
        println!(
            "  admin token      {} (bootstrap token: make real ones with `pairdbctl token create`)",
            tok.display()
        );
        println!("\nTry:");
        println!(
            "  export PAIRDB_TLS_CA={} PAIRDB_TOKEN=$(cat {})",
            ca.display(),
            tok.display()
        );
        println!("  pairdbctl cluster status");
        println!("  pairdbctl token create --role tenant --tenant default");
        println!(
            "  grpcurl -cacert {} -H \"authorization: Bearer $PAIRDB_TOKEN\" {c} list",
            ca.display()
        );
        println!(
            "  grpcurl -cacert {} -H \"authorization: Bearer $PAIRDB_TOKEN\" -d '{{\"tenant_id\":\"default\",\"key\":\"aGVsbG8=\",\"value\":\"d29ybGQ=\"}}' {c} pairdb.CoordinatorService/Write",
            ca.display()
        );
        println!(
            "  curl --cacert {} -H \"Authorization: Bearer $PAIRDB_TOKEN\" -X POST https://{}/api/v1/integrity/scan-all",
            ca.display(),
            nodes
                .first()
                .map(|n| n.admin_addr.to_string())
                .unwrap_or_default()
        );
        println!(
            "\nStorage nodes admit only the coordinator's and each other's certificates (mTLS)."
        );
        println!(
            "Ctrl-C stops the cluster; the data, certificates and token stay for the next start."
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
