//! `pairdb-storage-node`: parse config, start, run until SIGTERM or SIGINT, stop cleanly.

/// mimalloc: streaming and batched RPCs allocate and free many short-lived buffers across
/// threads, where glibc malloc spent a third of the CPU in arena locks and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use pairdb_storage_node::config::{Args, Config};
use pairdb_storage_node::server::{self, StartOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = match Config::load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pairdb-storage-node: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = pairdb_common::failpoint::setup() {
        eprintln!("pairdb-storage-node: {e}");
        std::process::exit(2);
    }
    let telemetry = pairdb_common::telemetry::init(cfg.log_json, "pairdb-storage-node");
    // The handler first: a SIGTERM while the node starts (its port may already listen) ends
    // the start and exits 0, never a death by the signal.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let node = tokio::select! {
        n = server::start(cfg, StartOptions::default()) => n?,
        _ = term.recv() => {
            tracing::info!("SIGTERM received while starting; exiting");
            telemetry.shutdown();
            return Ok(());
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
    node.shutdown().await;
    telemetry.shutdown();
    Ok(())
}
