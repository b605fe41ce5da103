//! `pairdbctl`: operations CLI for pairdb.
//!
//! - `dev`: an embedded single-process cluster for local development.
//! - `bench storage`: the storage-node benchmark (engine, gRPC, and references in one run).
//!
//! Human output by default, `--json` for machines.

mod bench;
mod dev;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pairdbctl", version, about = "pairdb operations CLI")]
struct Cli {
    /// Print machine-readable JSON instead of human tables.
    #[arg(long, global = true)]
    json: bool,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Dev(a) => dev::run(a, cli.json).await,
        Cmd::Bench(b) => bench::run(b, cli.json).await,
    }
}
