//! `pairdbctl bench stream`: range streaming throughput beside its reference, in one run.
//!
//! 1. Loads `--mb` MiB of records into a source storage node (flushed and compacted, so reads
//!    come from SST files).
//! 2. Reference: a raw sequential scan of the same data through the engine (RocksDB iterator,
//!    no framing checks, no network), run three times; the fastest counts.
//! 3. One stream: a second node pulls the whole ring from the source (`PullRange`, unthrottled):
//!    MB/s and keys/s of one stream, end to end (source scan, CRC checks, gRPC, existence check,
//!    table write and ingest).
//! 4. A whole bootstrap: a coordinator (SQLite metadata) with the source as the only NORMAL node
//!    and a tenant with replication factor 2, so a third node joining gains every range and
//!    receives all the data: planning, streaming (default parallelism), digest verification and
//!    the final transaction, timed from AddStorageNode to `completed`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pairdb_common::api::pb;
use pairdb_common::api::pb::coordinator_service_client::CoordinatorServiceClient;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_coordinator::meta::{self, TenantRecord};
use pairdb_storage_node::engine::{Scan, Space};
use pairdb_storage_node::server::RunningNode;

#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// MiB of record data to load and stream.
    #[arg(long, default_value_t = 1024)]
    pub mb: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Working directory (default: a temporary one, deleted afterwards).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// A kit storage node with the default cache and memtable (the bench measures them).
pub(crate) async fn node(id: &str, dir: &std::path::Path) -> anyhow::Result<RunningNode> {
    let any = pairdb_kit::loopback(0);
    let cfg = pairdb_storage_node::Config {
        block_cache_mb: pairdb_storage_node::Config::default().block_cache_mb,
        memtable_mb: pairdb_storage_node::Config::default().memtable_mb,
        ..pairdb_kit::node_config(id, dir, any, any)
    };
    pairdb_kit::start_node(cfg, None).await
}

/// An in-process coordinator for a benchmark (unthrottled streams and repairs, no scheduled
/// repair, fast change polling) and a client to it.
pub(crate) async fn coordinator(
    url: String,
    meta: std::sync::Arc<dyn meta::MetaStore>,
) -> anyhow::Result<(
    pairdb_coordinator::server::RunningCoordinator,
    CoordinatorServiceClient<tonic::transport::Channel>,
)> {
    let ccfg = pairdb_coordinator::config::Config {
        stream_max_bytes_per_sec: 0,
        repair_interval_secs: 0,
        repair_max_bytes_per_sec: 0,
        change_poll_ms: 200,
        ..pairdb_kit::coordinator_config(&url, "bench-coordinator")
    };
    let c = pairdb_kit::start_coordinator(ccfg, meta).await?;
    let client = CoordinatorServiceClient::connect(format!("http://{}", c.grpc_addr)).await?;
    Ok((c, client))
}

/// Has the node at `target` pull the whole ring from `source` (`PullRange`, unthrottled) and
/// waits for the last progress report.
pub(crate) async fn pull_whole_ring(
    target: std::net::SocketAddr,
    source: std::net::SocketAddr,
) -> anyhow::Result<pb::PullProgress> {
    let mut tc = StorageNodeServiceClient::connect(format!("http://{target}"))
        .await?
        .max_decoding_message_size(64 << 20);
    let mut s = tc
        .pull_range(pb::PullRangeRequest {
            range: Some(pairdb_common::convert::range_to_pb(
                pairdb_common::token::TokenRange::FULL,
            )),
            source_address: source.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = pb::PullProgress::default();
    while let Some(p) = s.message().await? {
        last = p;
        if last.done {
            break;
        }
    }
    Ok(last)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

pub async fn run(a: StreamArgs, json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let source = node("source", &dir).await?;
    let target = node("target", &dir).await?;
    let joiner = node("joiner", &dir).await?;

    // 1. Load.
    let count = (a.mb << 20) / (a.value_size as u64 + 40);
    let loaded = Instant::now();
    let store = source.node.store.clone();
    let vs = a.value_size;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut i = 0u64;
        while i < count {
            let cmds: Vec<_> = (i..(i + 1000).min(count))
                .map(|k| pairdb_storage_node::store::WriteCmd {
                    tenant: "bench".into(),
                    key: format!("key-{k:012}").into_bytes(),
                    value: vec![(k % 251) as u8; vs],
                    tombstone: false,
                    context: Default::default(),
                    ttl_seconds: 0,
                    idempotency_key: String::new(),
                    policy: pairdb_common::version::ConflictPolicy::Lww,
                    max_siblings: 0,
                    max_value_bytes: 0,
                    sibling_warn: 0,
                    max_state_bytes: 0,
                })
                .collect();
            for r in store.write_many(cmds, usize::MAX) {
                r.map_err(|e| anyhow::anyhow!("load: {e}"))?;
            }
            i += 1000;
        }
        store.engine().flush()?;
        store.engine().compact(true)?;
        Ok(())
    })
    .await??;
    let load_secs = loaded.elapsed().as_secs_f64();

    // 2. Reference: raw sequential scan, three times; the fastest is the reference (the machine
    //    is shared, so a single scan can be slowed by neighbours and flatter the ratio).
    let mut scans = Vec::new();
    for _ in 0..3 {
        let engine = source.node.store.engine().clone();
        scans.push(
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let (mut keys, mut bytes) = (0u64, 0u64);
                let _ = engine.scan(Space::Data, &[], None, &mut |k, v| {
                    keys += 1;
                    bytes += (k.len() + v.len()) as u64;
                    Scan::Continue
                });
                (keys, bytes, t.elapsed().as_secs_f64())
            })
            .await?,
        );
    }
    let (scan_keys, scan_bytes, scan_secs) = scans
        .iter()
        .copied()
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .context("no scan")?;
    let scan_all_secs: Vec<f64> = scans.iter().map(|s| s.2).collect();

    // 3. One stream, source → target.
    let t = Instant::now();
    let last = pull_whole_ring(target.grpc_addr, source.grpc_addr).await?;
    let stream_secs = t.elapsed().as_secs_f64();
    if !last.done || last.keys != scan_keys {
        bail!(
            "stream moved {} of {scan_keys} records (done: {})",
            last.keys,
            last.done
        );
    }

    // 4. A whole bootstrap through a coordinator.
    let url = format!("sqlite://{}", dir.join("meta.db").display());
    let meta = meta::connect(&url).await?;
    meta.migrate().await?;
    pairdb_kit::register(meta.as_ref(), &[&source]).await?;
    let mut t2 = TenantRecord::with_defaults("bench");
    t2.replication_factor = 2;
    meta.create_tenant(&t2).await?;
    let (coordinator, mut cc) = coordinator(url, meta.clone()).await?;
    let t = Instant::now();
    let r = cc
        .add_storage_node(pb::AddStorageNodeRequest {
            node_id: "joiner".into(),
            host: "127.0.0.1".into(),
            port: u32::from(joiner.grpc_addr.port()),
            admin_port: u32::from(joiner.admin_addr.port()),
            ..Default::default()
        })
        .await?
        .into_inner();
    let id = r.change.context("no bootstrap change")?.change_id;
    let change = loop {
        let c = meta.get_change(&id).await?.context("change vanished")?;
        if !c.status.is_active() {
            break c;
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("bootstrap still running after an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let boot_secs = t.elapsed().as_secs_f64();
    if change.status != meta::ChangeStatus::Completed {
        bail!("bootstrap ended {:?}: {:?}", change.status, change.error);
    }
    let progress: serde_json::Value = serde_json::from_str(&change.progress).unwrap_or_default();
    let boot_bytes = progress["bytes"].as_u64().unwrap_or(0);
    let boot_keys = progress["keys"].as_u64().unwrap_or(0);
    let ranges = progress["ranges_total"].as_u64().unwrap_or(0);
    coordinator.shutdown().await;

    let report = serde_json::json!({
        "benchmark": "stream",
        "records": scan_keys,
        "value_size": a.value_size,
        "load_secs": load_secs,
        "raw_scan": {"secs": scan_secs, "all_secs": scan_all_secs, "mb_per_sec": mbps(scan_bytes, scan_secs), "keys_per_sec": scan_keys as f64 / scan_secs, "bytes": scan_bytes},
        "one_stream": {"secs": stream_secs, "mb_per_sec": mbps(last.bytes, stream_secs), "keys_per_sec": last.keys as f64 / stream_secs, "bytes": last.bytes},
        "stream_vs_raw_scan": mbps(last.bytes, stream_secs) / mbps(scan_bytes, scan_secs),
        "bootstrap": {"secs": boot_secs, "bytes": boot_bytes, "keys": boot_keys, "ranges": ranges, "mb_per_sec": mbps(boot_bytes, boot_secs)},
    });
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} records of {} B values ({:.0} MiB in the scan), loaded in {load_secs:.1}s",
            scan_keys,
            a.value_size,
            scan_bytes as f64 / (1 << 20) as f64
        );
        println!(
            "raw RocksDB scan : {:>8.1} MB/s {:>10.0} keys/s ({scan_secs:.2}s, fastest of {:.2?}s)",
            mbps(scan_bytes, scan_secs),
            scan_keys as f64 / scan_secs,
            scan_all_secs
        );
        println!(
            "one stream       : {:>8.1} MB/s {:>10.0} keys/s ({stream_secs:.2}s) = {:.0}% of the raw scan",
            mbps(last.bytes, stream_secs),
            last.keys as f64 / stream_secs,
            report["stream_vs_raw_scan"].as_f64().unwrap_or(0.0) * 100.0
        );
        println!(
            "whole bootstrap  : {boot_secs:.1}s for {:.0} MiB, {boot_keys} keys, {ranges} ranges ({:.1} MB/s incl. planning and verification)",
            boot_bytes as f64 / (1 << 20) as f64,
            mbps(boot_bytes, boot_secs)
        );
    }
    for n in [source, target, joiner] {
        n.shutdown().await;
    }
    Ok(())
}
