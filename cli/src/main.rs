//! `pairdbctl`: operations CLI for pairdb.
//!
//! - `dev`: an embedded single-process cluster for local development.
//! - `bench storage`: the storage-node benchmark (engine, gRPC, and references in one run).
//! - `node …`, `changes …`: topology changes and their live progress (`topology.rs`).
//! - `repair start|status`: anti-entropy repair runs and their progress (`repair.rs`).
//!
//! Human output by default, `--json` for machines.

/// mimalloc: streaming and batched RPCs allocate and free many short-lived buffers across
/// threads, where glibc malloc spent a third of the CPU in arena locks and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod client;
mod dev;
mod follow;
mod repair;
mod repairbench;
mod streambench;
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
    #[command(subcommand)]
    cmd: Cmd,
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
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Dev(a) => dev::run(a, cli.json).await,
        Cmd::Bench(b) => bench::run(b, &cli.coordinator, cli.json).await,
        Cmd::Put(a) => {
            client::put(&mut client::connect(&cli.coordinator).await?, a, cli.json).await
        }
        Cmd::Get(a) => {
            client::get(&mut client::connect(&cli.coordinator).await?, a, cli.json).await
        }
        Cmd::Delete(a) => {
            client::delete(&mut client::connect(&cli.coordinator).await?, a, cli.json).await
        }
        Cmd::Tenant(t) => {
            client::tenant(&mut client::connect(&cli.coordinator).await?, t, cli.json).await
        }
        Cmd::Cluster(c) => {
            client::cluster(&mut client::connect(&cli.coordinator).await?, c, cli.json).await
        }
        Cmd::Node(n) => {
            topology::node(&mut client::connect(&cli.coordinator).await?, n, cli.json).await
        }
        Cmd::Changes(c) => {
            topology::changes(&mut client::connect(&cli.coordinator).await?, c, cli.json).await
        }
        Cmd::Repair(r) => {
            repair::repair(&mut client::connect(&cli.coordinator).await?, r, cli.json).await
        }
    }
}
