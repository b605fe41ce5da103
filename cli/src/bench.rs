//! `pairdbctl bench`: benchmarks that always run their reference beside them in the same run,
//! so the numbers are comparable on whatever machine runs them.
//!
//! `bench storage`: raw RocksDB put/get (through the engine trait, no pairdb logic), the
//! storage engine put/get (framing, CRC, version algebra, per-key locks), a raw tonic unary
//! round trip (grpc.health.v1 Check against the node) and gRPC Write/Read against a storage
//! node started as a separate process, at each concurrency; plus the node's peak RSS.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_storage_node::engine::rocks::{RocksEngine, RocksOptions};
use pairdb_storage_node::engine::{BatchOp, Engine, Space};
use serde::Serialize;
use tonic::transport::Channel;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Storage node: engine and gRPC put/get beside raw RocksDB and a raw tonic ping.
    Storage(StorageArgs),
    /// YCSB-style workload against a coordinator, beside a raw tonic ping to it.
    Workload(crate::workload::WorkloadArgs),
    /// Range streaming (one stream and a whole bootstrap) beside a raw RocksDB scan.
    Stream(crate::streambench::StreamArgs),
    /// Anti-entropy repair of diverged replicas beside a naive full-range stream.
    Repair(crate::repairbench::RepairArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Seconds per measured step.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Seconds of warm-up before each gRPC step.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Client concurrency levels for the gRPC steps.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keys preloaded for the get steps.
    #[arg(long, default_value_t = 50_000)]
    pub keys: u64,
    /// fsync each write batch on the node.
    #[arg(long)]
    pub sync_writes: bool,
    /// The storage node binary (default: next to pairdbctl).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize, Clone)]
pub struct StepResult {
    pub name: String,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn summarize(
    name: &str,
    concurrency: usize,
    h: &Histogram<u64>,
    errors: u64,
    elapsed: Duration,
) -> StepResult {
    StepResult {
        name: name.to_string(),
        concurrency,
        ops: h.len(),
        errors,
        ops_per_sec: h.len() as f64 / elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    }
}

/// The raw reference: `grpc.health.v1.Health/Check` round trips from `concurrency` tasks.
pub async fn ping_step(
    name: &str,
    health: &tonic_health::pb::health_client::HealthClient<Channel>,
    concurrency: usize,
    duration: Duration,
) -> StepResult {
    let h = health.clone();
    load_step(name, concurrency, duration, move |_| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        }
    })
    .await
}

/// Runs `op(i)` from `concurrency` tasks until `duration` passes; `i` is a global sequence.
pub async fn load_step<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    op: F,
) -> StepResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, seq, errors) = (op.clone(), seq.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            while Instant::now() < deadline {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if op(i).await {
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            h
        }));
    }
    let mut all = new_hist();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(&h);
        }
    }
    summarize(
        name,
        concurrency,
        &all,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

fn value(size: usize, i: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
    }
    v
}

/// Synchronous single-thread loop for in-process engine steps.
fn sync_loop(name: &str, duration: Duration, mut op: impl FnMut(u64) -> bool) -> StepResult {
    let mut h = new_hist();
    let mut errors = 0;
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        if op(i) {
            let _ = h.record(t.elapsed().as_nanos().div_ceil(1000).max(1) as u64);
        } else {
            errors += 1;
        }
        i += 1;
    }
    summarize(name, 1, &h, errors, start.elapsed())
}

fn engine_steps(a: &StorageArgs, dur: Duration) -> anyhow::Result<Vec<StepResult>> {
    let mut out = Vec::new();
    let tmp = tempfile::tempdir()?;
    let ropts = RocksOptions {
        block_cache_bytes: 256 << 20,
        memtable_bytes: 64 << 20,
        max_memtables: 3,
        background_jobs: 2,
        salvage_wal: false,
    };
    // Raw RocksDB: a put/get of the same key shape and value, no pairdb logic.
    let raw = RocksEngine::open(&tmp.path().join("raw"), &ropts)?;
    let vs = a.value_size;
    out.push(sync_loop("rocksdb_raw_put", dur, |i| {
        let k = pairdb_common::token::data_key("bench", format!("key-{}", i % a.keys).as_bytes());
        raw.write(
            vec![BatchOp::Put(Space::Data, k, value(vs, i))],
            a.sync_writes,
        )
        .is_ok()
    }));
    out.push(sync_loop("rocksdb_raw_get", dur, |i| {
        let k = pairdb_common::token::data_key(
            "bench",
            format!("key-{}", (i * 7919) % a.keys).as_bytes(),
        );
        raw.get(Space::Data, &k).is_ok()
    }));
    drop(raw);

    // The storage engine: what a coordinated write and a read cost inside the node.
    let cfg = pairdb_storage_node::Config {
        node_id: "bench".into(),
        data_dir: tmp.path().join("store"),
        sync_writes: a.sync_writes,
        ..Default::default()
    };
    let metrics = Arc::new(pairdb_storage_node::metrics::Metrics::new("bench"));
    let (store, _disk) = pairdb_storage_node::server::open_store(&cfg, metrics, None)?;
    let cmd = |i: u64| pairdb_storage_node::store::WriteCmd {
        tenant: "bench".into(),
        key: format!("key-{}", i % a.keys).into_bytes(),
        value: value(vs, i),
        tombstone: false,
        context: Default::default(),
        ttl_seconds: 0,
        idempotency_key: String::new(),
        policy: pairdb_common::version::ConflictPolicy::Lww,
        max_siblings: 0,
        max_value_bytes: 0,
        sibling_warn: 0,
        max_state_bytes: 0,
    };
    out.push(sync_loop("engine_put", dur, |i| {
        store
            .write_many(vec![cmd(i)], usize::MAX)
            .pop()
            .is_some_and(|r| r.is_ok())
    }));
    out.push(sync_loop("engine_get", dur, |i| {
        store
            .read("bench", format!("key-{}", (i * 7919) % a.keys).as_bytes())
            .is_ok()
    }));
    out.extend(context_steps(dur)?);
    Ok(out)
}

/// What a client context costs a coordinator per request: sealing the token it answers and
/// opening the one it is given (HMAC-SHA256), beside the CRC-only framing tokens had before
/// (the reference), for a typical read context (3 replicas' entries, 2 sibling dots).
fn context_steps(dur: Duration) -> anyhow::Result<Vec<StepResult>> {
    use pairdb_common::context::{self, ContextKey, Keyring};
    use pairdb_common::version::{Actor, Dot, VersionVector};
    let mut vv = VersionVector::new();
    for (i, n) in ["pairdb-storage-0", "pairdb-storage-1", "pairdb-storage-2"]
        .iter()
        .enumerate()
    {
        vv.raise(
            &Actor::new(*n, 1_764_000_000_000 + i as u64),
            1_234_567 + i as u64,
        );
    }
    vv.add_dot(&Dot::new(
        Actor::new("pairdb-storage-0", 1_764_000_000_000),
        1_300_001,
    ));
    vv.add_dot(&Dot::new(
        Actor::new("pairdb-storage-1", 1_764_000_000_001),
        1_300_003,
    ));
    let ring = Keyring::new(ContextKey::new(1, &context::new_secret()?), vec![]);
    Ok(vec![
        sync_loop("ctx_crc_roundtrip", dur, |_| {
            context::decode_internal(&context::encode_internal(&vv)).is_ok()
        }),
        sync_loop("ctx_mac_roundtrip", dur, |_| {
            ring.open(&ring.seal(&vv)).is_ok()
        }),
    ])
}

struct NodeProc {
    child: std::process::Child,
    grpc: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProc {
    /// Peak resident set (VmHWM) of the node process, in MiB.
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

async fn start_node(a: &StorageArgs, dir: &std::path::Path) -> anyhow::Result<NodeProc> {
    let bin = match &a.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("pairdbctl has no directory")?
            .join("pairdb-storage-node"),
    };
    let (grpc, admin) = (pairdb_kit::free_port()?, pairdb_kit::free_port()?);
    let child = std::process::Command::new(&bin)
        .args(["--node-id", "bench", "--data-dir"])
        .arg(dir)
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .args([
            "--sync-writes",
            if a.sync_writes { "true" } else { "false" },
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let node = NodeProc {
        child,
        grpc: format!("http://127.0.0.1:{grpc}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        if Instant::now() > deadline {
            bail!("storage node did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(node)
}

pub async fn run(
    cmd: BenchCmd,
    coordinator: &pairdb_common::client::Dial,
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Storage(a) => storage(a, json).await,
        BenchCmd::Workload(a) => crate::workload::run(coordinator, a, json).await,
        BenchCmd::Stream(a) => crate::streambench::run(a, json).await,
        BenchCmd::Repair(a) => crate::repairbench::run(a, json).await,
    }
}

async fn storage(a: StorageArgs, json: bool) -> anyhow::Result<()> {
    let dur = Duration::from_secs(a.duration_secs);
    let warm = Duration::from_secs(a.warmup_secs);
    let ea = a.clone();
    let mut steps = tokio::task::spawn_blocking(move || engine_steps(&ea, dur)).await??;

    let tmp = tempfile::tempdir()?;
    let node = start_node(&a, tmp.path()).await?;
    let channel = Channel::from_shared(node.grpc.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connect to the storage node")?;
    let client = StorageNodeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());

    // Preload the keys the read steps fetch.
    for chunk in (0..a.keys).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| pb::WriteOp {
                tenant_id: "bench".into(),
                key: format!("key-{i}").into_bytes(),
                value: value(a.value_size, *i),
                conflict_policy: pb::ConflictPolicy::Lww as i32,
                ..Default::default()
            })
            .collect();
        client
            .clone()
            .batch_write(pb::BatchWriteRequest { ops })
            .await?;
    }

    let write_seq = Arc::new(AtomicU64::new(a.keys));
    for &c in &a.concurrency {
        ping_step("tonic_ping", &health, c, warm).await;
        steps.push(ping_step("tonic_ping", &health, c, dur).await);

        let put = |name: &'static str, d: Duration| {
            let (cl, seq, vs) = (client.clone(), write_seq.clone(), a.value_size);
            load_step(name, c, d, move |_| {
                let mut cl = cl.clone();
                // Fresh keys: measures a put, not a growing sibling set.
                let i = seq.fetch_add(1, Ordering::Relaxed);
                async move {
                    cl.write(pb::WriteOp {
                        tenant_id: "bench".into(),
                        key: format!("key-{i}").into_bytes(),
                        value: value(vs, i),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                }
            })
        };
        put("grpc_put", warm).await;
        steps.push(put("grpc_put", dur).await);

        let get = |name: &'static str, d: Duration| {
            let (cl, keys) = (client.clone(), a.keys);
            load_step(name, c, d, move |i| {
                let mut cl = cl.clone();
                async move {
                    cl.read(pb::KeyRef {
                        tenant_id: "bench".into(),
                        key: format!("key-{}", (i * 7919) % keys).into_bytes(),
                    })
                    .await
                    .is_ok()
                }
            })
        };
        get("grpc_get", warm).await;
        steps.push(get("grpc_get", dur).await);
    }
    let peak_rss_mb = node.peak_rss_mb();
    drop(node);

    let cfg = pairdb_storage_node::Config::default();
    let budget_mb = (cfg.block_cache_mb + cfg.memtable_mb * u64::from(cfg.max_memtables)) as f64;
    let ratios: Vec<serde_json::Value> = a
        .concurrency
        .iter()
        .filter_map(|c| {
            let find = |n: &str| {
                steps
                    .iter()
                    .find(|s| s.name == n && s.concurrency == *c)
                    .map(|s| s.ops_per_sec)
            };
            let ping = find("tonic_ping")?;
            Some(serde_json::json!({
                "concurrency": c,
                "grpc_put_vs_ping": find("grpc_put")? / ping,
                "grpc_get_vs_ping": find("grpc_get")? / ping,
            }))
        })
        .collect();
    let report = serde_json::json!({
        "benchmark": "storage",
        "value_size": a.value_size,
        "keys": a.keys,
        "duration_secs": a.duration_secs,
        "sync_writes": a.sync_writes,
        "steps": steps,
        "ratios": ratios,
        "node_peak_rss_mb": peak_rss_mb,
        "node_memory_budget_mb": budget_mb,
        "node_rss_limit_mb": budget_mb + 150.0,
    });
    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<18} {:>5} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "step", "conc", "ops/s", "p50µs", "p95µs", "p99µs", "p999µs", "errors"
    );
    for s in &steps {
        println!(
            "{:<18} {:>5} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>7}",
            s.name, s.concurrency, s.ops_per_sec, s.p50_us, s.p95_us, s.p99_us, s.p999_us, s.errors
        );
    }
    for r in &ratios {
        println!(
            "concurrency {:>3}: gRPC put = {:.0}% of raw ping, gRPC get = {:.0}% of raw ping",
            r["concurrency"],
            r["grpc_put_vs_ping"].as_f64().unwrap_or(0.0) * 100.0,
            r["grpc_get_vs_ping"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    match peak_rss_mb {
        Some(rss) => println!(
            "storage node peak RSS {rss:.0} MiB (budget: block cache + memtables {budget_mb:.0} MiB + 150 MiB = {:.0} MiB)",
            budget_mb + 150.0
        ),
        None => println!("storage node peak RSS: unavailable"),
    }
    Ok(())
}
