//! `pairdbctl`: operations CLI for pairdb.
//!
//! - `dev`: an embedded single-process cluster for local development.
//! - `bench storage`: the storage-node benchmark (engine, gRPC, and references in one run).
//! - `node …`, `changes …`: topology changes and their live progress (`topology.rs`).
//! - `repair start|status`: anti-entropy repair runs and their progress (`repair.rs`).
//! - `hints stats`: hinted handoff per target (`client.rs`).
//! - `backup …`: cluster backups and restore (`backup.rs`).
//!
//! Human output by default, `--json` for machines.

/// mimalloc: streaming and batched RPCs allocate and free many short-lived buffers across
/// threads, where glibc malloc spent a third of the CPU in arena locks and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod backup;
mod bench;
mod client;
mod cpu;
mod dev;
mod follow;
mod repair;
mod repairbench;
mod security;
mod streambench;
mod target;
mod topology;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pairdbctl", version, about = "pairdb operations CLI")]
struct Cli {
    /// Print machine-readable JSON instead of human tables.
    #[arg(long, global = true)]
    json: bool,
    /// Coordinator gRPC address.
    #[arg(
        long,
        global = true,
        env = "PAIRDB_COORDINATOR",
        default_value = "127.0.0.1:50051"
    )]
    coordinator: String,
    /// Bearer token sent on every call (shown once by `pairdbctl token create`).
    #[arg(long, global = true, env = "PAIRDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA bundle that verifies the coordinator's certificate (turns TLS on; so does https://).
    #[arg(long, global = true, env = "PAIRDB_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate to present (optional; with --tls-key).
    #[arg(long, global = true, env = "PAIRDB_TLS_CLIENT_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, global = true, env = "PAIRDB_TLS_CLIENT_KEY")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    fn dial(&self) -> pairdb_common::client::Dial {
        pairdb_common::client::Dial {
            address: self.coordinator.clone(),
            token: self.token.clone(),
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start an embedded development cluster in this process (Ctrl-C stops it; data is kept).
    Dev(dev::DevArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Write a value.
    Put(client::PutArgs),
    /// Read a key: the value, every sibling and the context.
    Get(client::GetArgs),
    /// Delete a key (a tombstone; pass the context from a get).
    Delete(client::DeleteArgs),
    /// Tenants.
    #[command(subcommand)]
    Tenant(client::TenantCmd),
    /// Cluster views.
    #[command(subcommand)]
    Cluster(client::ClusterCmd),
    /// Storage nodes: list, status, add (bootstrap), remove (decommission), replace.
    #[command(subcommand)]
    Node(topology::NodeCmd),
    /// Topology changes: list with progress, watch, abort.
    #[command(subcommand)]
    Changes(topology::ChangesCmd),
    /// Anti-entropy repair: start one, follow its progress.
    #[command(subcommand)]
    Repair(repair::RepairCmd),
    /// Cluster backups: create, list, get, verify, delete (through a coordinator) and
    /// restore (offline, into empty data directories and an empty metadata store).
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Hinted handoff: what is queued for which node.
    #[command(subcommand)]
    Hints(client::HintsCmd),
    /// Bearer tokens: create (shown once), list, revoke. Needs an admin token.
    #[command(subcommand)]
    Token(security::TokenCmd),
    /// Certificates for a small cluster: a CA, and per-role certificates signed by it.
    #[command(subcommand)]
    Certs(security::CertsCmd),
    /// Helpers for pods on Kubernetes (init containers).
    #[command(subcommand)]
    K8s(admin::K8sCmd),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        // A verdict (an unhealthy cluster) has its own exit status and was already printed.
        if let Some(v) = e.downcast_ref::<client::Verdict>() {
            eprintln!("{v}");
            std::process::exit(v.exit_code);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dial = cli.dial();
    let connect = || async { dial.connect().await.map_err(|e| anyhow::anyhow!(e)) };
    match cli.cmd {
        Cmd::Dev(a) => dev::run(a, cli.json).await,
        Cmd::Bench(b) => bench::run(b, &dial, cli.json).await,
        Cmd::Put(a) => client::put(&mut connect().await?, a, cli.json).await,
        Cmd::Get(a) => client::get(&mut connect().await?, a, cli.json).await,
        Cmd::Delete(a) => client::delete(&mut connect().await?, a, cli.json).await,
        Cmd::Tenant(t) => client::tenant(&mut connect().await?, t, cli.json).await,
        Cmd::Cluster(c) => client::cluster(&mut connect().await?, c, cli.json).await,
        Cmd::Node(topology::NodeCmd::Maintenance(a)) => admin::maintenance(a, cli.json).await,
        Cmd::Node(topology::NodeCmd::Admin(a)) => admin::node_admin(a, cli.json).await,
        Cmd::Node(n) => topology::node(&mut connect().await?, n, cli.json).await,
        Cmd::Changes(c) => topology::changes(&mut connect().await?, c, cli.json).await,
        Cmd::Repair(r) => repair::repair(&mut connect().await?, r, cli.json).await,
        Cmd::Backup(b) => backup::backup(&dial, b, cli.json).await,
        Cmd::Hints(h) => client::hints(&mut connect().await?, h, cli.json).await,
        Cmd::Token(t) => security::token(&mut connect().await?, t, cli.json).await,
        Cmd::Certs(c) => security::certs(c, cli.json),
        Cmd::K8s(k) => admin::k8s(k).await,
    }
}
