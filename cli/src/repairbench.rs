//! `pairdbctl bench repair`: anti-entropy repair of diverged replicas beside a naive full-range
//! stream of the same data, in one run.
//!
//! 1. Three storage nodes get `--keys` keys of one tenant (replication factor 3), identical
//!    except on `--divergence-pct` percent of the keys, where node 3 either lacks the key (half
//!    of them) or holds an older version the others have superseded (the other half). The data
//!    is flushed and compacted.
//! 2. *Truly different data*: the bytes of the records node 3 must receive (the other nodes'
//!    records of the differing keys).
//! 3. Repair: a coordinator (SQLite metadata) runs one unthrottled cluster-wide repair. Wall
//!    time, process CPU time, record bytes moved and digest/listing bytes received; then the
//!    three nodes' digests must be equal.
//! 4. Naive: a fourth node pulls the whole ring from node 1 (`PullRange`), which is what a repair
//!    without digests would send for one replica: time, CPU, bytes.
//!
//! Everything runs in this one process (2 cores here), so CPU is the process's user + system
//! time, which includes the storage nodes' work on both sides.

use std::time::{Duration, Instant};

use anyhow::bail;
use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::framing;
use pairdb_common::version::{Actor, ConflictPolicy, Dot, KeyState, NewVersion};
use pairdb_coordinator::meta;
use pairdb_storage_node::store::{ApplyCmd, Origin};

use crate::streambench::node;

#[derive(Debug, Clone, clap::Args)]
pub struct RepairArgs {
    /// Keys per replica.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Percent of the keys node 3 lacks or holds stale.
    #[arg(long, default_value_t = 1.0)]
    pub divergence_pct: f64,
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

/// User + system CPU seconds of this process.
fn cpu_secs() -> f64 {
    crate::cpu::cpu_secs(None).unwrap_or(0.0)
}

fn version(state: &mut KeyState, counter: u64, value: Vec<u8>) {
    let context = state.read_context();
    state.apply_write(NewVersion {
        dot: Dot::new(Actor::new("loader", 1), counter),
        context,
        value,
        tombstone: false,
        written_at_ms: 1_700_000_000_000 + counter,
        expires_at_ms: 0,
        idempotency_key: String::new(),
        policy: ConflictPolicy::Siblings,
        max_siblings: 100,
    });
}

pub async fn run(a: RepairArgs, json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let nodes = [
        node("n1", &dir).await?,
        node("n2", &dir).await?,
        node("n3", &dir).await?,
    ];
    let every = (100.0 / a.divergence_pct.clamp(0.001, 100.0))
        .round()
        .max(1.0) as u64;

    // 1. Load: identical states, except node 3 on every `every`-th key.
    let loaded = Instant::now();
    let stores: Vec<_> = nodes.iter().map(|n| n.node.store.clone()).collect();
    let (keys, vs) = (a.keys, a.value_size);
    let (differing, different_bytes) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
            let (mut differing, mut bytes) = (0u64, 0u64);
            let mut i = 0u64;
            while i < keys {
                let mut batches: [Vec<ApplyCmd>; 3] = Default::default();
                for k in i..(i + 1000).min(keys) {
                    let key = format!("key-{k:012}").into_bytes();
                    let mut old = KeyState::new();
                    version(&mut old, 2 * k + 1, vec![(k % 251) as u8; vs]);
                    let diverged = k % every == 0;
                    let mut current = old.clone();
                    if diverged && (k / every) % 2 == 1 {
                        version(&mut current, 2 * k + 2, vec![(k % 241) as u8; vs]);
                    }
                    let cmd = |state: &KeyState| ApplyCmd {
                        tenant: "bench".into(),
                        key: key.clone(),
                        state: state.clone(),
                        origin: Origin::Replica,
                        record: None,
                    };
                    batches[0].push(cmd(&current));
                    batches[1].push(cmd(&current));
                    if diverged {
                        differing += 1;
                        bytes += framing::encode_state(&current).len() as u64;
                        if (k / every) % 2 == 1 {
                            batches[2].push(cmd(&old));
                        }
                    } else {
                        batches[2].push(cmd(&current));
                    }
                }
                for (s, b) in stores.iter().zip(batches) {
                    for r in s.apply_many(b) {
                        r.map_err(|e| anyhow::anyhow!("load: {e}"))?;
                    }
                }
                i += 1000;
            }
            for s in &stores {
                s.engine().flush()?;
                s.engine().compact(true)?;
            }
            Ok((differing, bytes))
        })
        .await??;
    let load_secs = loaded.elapsed().as_secs_f64();

    // 3. Repair through a coordinator.
    let url = format!("sqlite://{}", dir.join("meta.db").display());
    let meta = meta::connect(&url).await?;
    meta.migrate().await?;
    pairdb_kit::register(meta.as_ref(), &nodes.iter().collect::<Vec<_>>()).await?;
    pairdb_kit::ensure_tenant(meta.as_ref(), "bench").await?;
    let (coordinator, mut cc) = crate::streambench::coordinator(url, meta.clone()).await?;
    // Let the failure detector see every node up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t, cpu) = (Instant::now(), cpu_secs());
    let run = cc
        .start_repair(pb::StartRepairRequest::default())
        .await?
        .into_inner();
    let done = loop {
        let s = cc
            .get_repair_status(pb::GetRepairStatusRequest {
                repair_id: run.repair_id.clone(),
            })
            .await?
            .into_inner();
        if s.status != "running" {
            break s;
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("repair still running after an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (repair_secs, repair_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    if done.status != "completed" {
        bail!("repair ended {}: {}", done.status, done.error);
    }
    let p: serde_json::Value = serde_json::from_str(&done.progress_json)?;
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let mut digests = Vec::new();
    for node in &nodes {
        let mut c = StorageNodeServiceClient::connect(format!("http://{}", node.grpc_addr)).await?;
        let d = c
            .range_digest(pb::RangeDigestRequest {
                range: None,
                buckets: 1024,
            })
            .await?
            .into_inner();
        digests.push(d.buckets.iter().map(|b| b.hash).collect::<Vec<_>>());
    }
    if digests.iter().any(|d| *d != digests[0]) {
        bail!("replicas still differ after the repair");
    }
    coordinator.shutdown().await;

    // 4. Naive: one replica's worth of a full-range stream.
    let fresh = node("n4", &dir).await?;
    let (t, cpu) = (Instant::now(), cpu_secs());
    let last = crate::streambench::pull_whole_ring(fresh.grpc_addr, nodes[0].grpc_addr).await?;
    let (naive_secs, naive_cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    if !last.done {
        bail!("the naive stream did not finish");
    }
    let repair_bytes = n("bytes_transferred") + n("digest_bytes");
    let report = serde_json::json!({
        "benchmark": "repair",
        "keys": a.keys,
        "value_size": a.value_size,
        "differing_keys": differing,
        "truly_different_bytes": different_bytes,
        "load_secs": load_secs,
        "repair": {
            "secs": repair_secs, "cpu_secs": repair_cpu,
            "keys_differing": n("keys_differing"), "keys_transferred": n("keys_transferred"),
            "record_bytes": n("bytes_transferred"), "digest_bytes": n("digest_bytes"),
            "total_bytes": repair_bytes,
            "bytes_vs_different": repair_bytes as f64 / different_bytes.max(1) as f64,
            "ranges": n("ranges_total"),
        },
        "naive_full_stream": {
            "secs": naive_secs, "cpu_secs": naive_cpu, "keys": last.keys, "bytes": last.bytes,
            "bytes_vs_different": last.bytes as f64 / different_bytes.max(1) as f64,
        },
    });
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "{} keys of {} B values per replica, {differing} differing on node 3 ({:.2} MiB truly different), loaded in {load_secs:.1}s",
            a.keys,
            a.value_size,
            mib(different_bytes)
        );
        println!(
            "repair     : {repair_secs:>7.2}s, {repair_cpu:>6.2} CPU-s, {:.2} MiB records + {:.2} MiB digests = {:.2} MiB ({:.2}x the different data), {} keys moved",
            mib(n("bytes_transferred")),
            mib(n("digest_bytes")),
            mib(repair_bytes),
            report["repair"]["bytes_vs_different"]
                .as_f64()
                .unwrap_or(0.0),
            n("keys_transferred")
        );
        println!(
            "naive full : {naive_secs:>7.2}s, {naive_cpu:>6.2} CPU-s, {:.2} MiB ({:.0}x the different data), {} keys",
            mib(last.bytes),
            report["naive_full_stream"]["bytes_vs_different"]
                .as_f64()
                .unwrap_or(0.0),
            last.keys
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
    fresh.shutdown().await;
    Ok(())
}
