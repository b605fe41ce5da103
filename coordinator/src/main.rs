//! `pairdb-coordinator`: `serve` (default) or `migrate`.

/// mimalloc: streaming and batched RPCs allocate and free many short-lived buffers across
/// threads, where glibc malloc spent a third of the CPU in arena locks and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use pairdb_coordinator::config::{Args, Config};

#[derive(Debug, Parser)]
#[command(
    name = "pairdb-coordinator",
    version,
    about = "pairdb coordinator (stateless quorum router)"
)]
struct Cli {
    #[command(flatten)]
    args: Args,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve pairdb.CoordinatorService (the default).
    Serve,
    /// Apply the embedded migrations to DATABASE_URL and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pairdb-coordinator: {e}");
            std::process::exit(2);
        }
    };
    pairdb_common::telemetry::init_logging(cfg.log_json);
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Migrate => {
            let meta = pairdb_coordinator::meta::connect(&cfg.database_url).await?;
            meta.migrate().await?;
            println!("migrations applied to {}", cfg.database_url);
        }
        Cmd::Serve => {
            let c = pairdb_coordinator::server::start(cfg).await?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
            }
            c.shutdown().await;
        }
    }
    Ok(())
}
