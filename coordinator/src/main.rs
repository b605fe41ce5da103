//! `pairdb-coordinator`: `serve` (default), `migrate` or `rotate-context-key`.

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
    /// Make a new cluster key seal client context tokens; tokens sealed with the previous key
    /// keep working for the grace period (every coordinator picks the new key up within its
    /// `context_key_refresh_ms`, or at once on the first token sealed with it).
    RotateContextKey {
        /// How long tokens sealed with the previous key stay valid.
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
    },
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
    if let Err(e) = pairdb_common::failpoint::setup() {
        eprintln!("pairdb-coordinator: {e}");
        std::process::exit(2);
    }
    let telemetry = pairdb_common::telemetry::init(cfg.log_json, "pairdb-coordinator");
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Migrate => {
            let meta = pairdb_coordinator::meta::connect(&cfg.database_url).await?;
            meta.migrate().await?;
            println!("migrations applied to {}", cfg.database_url);
        }
        Cmd::RotateContextKey { grace_secs } => {
            let meta = pairdb_coordinator::meta::connect(&cfg.database_url).await?;
            let secret = pairdb_common::context::new_secret()?;
            let id = meta
                .rotate_context_key(&secret, grace_secs.saturating_mul(1000))
                .await?;
            println!(
                "context key {id} is current; tokens sealed with the previous key stay valid for {grace_secs} s"
            );
        }
        Cmd::Serve => {
            let delay = std::time::Duration::from_millis(cfg.shutdown_drain_delay_ms);
            // Requests in flight get their own deadline to finish.
            let deadline = std::time::Duration::from_millis(cfg.request_timeout_ms + 1000);
            // The handler first: a SIGTERM while the server starts (its port may already
            // listen) ends the start and exits 0, never a death by the signal.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let started = tokio::select! {
                c = pairdb_coordinator::server::start(cfg) => Some(c?),
                _ = term.recv() => None,
            };
            match started {
                Some(c) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received; draining, then shutting down"),
                        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining, then shutting down"),
                    }
                    c.drain_and_shutdown(delay, deadline).await;
                }
                None => tracing::info!("SIGTERM received while starting; exiting"),
            }
        }
    }
    telemetry.shutdown();
    Ok(())
}
