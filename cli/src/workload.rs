//! `pairdbctl bench workload`: YCSB-style workloads against a running coordinator, with a raw
//! tonic unary round trip (`grpc.health.v1.Health/Check` on the same coordinator) measured at
//! each concurrency in the same run as the reference.
//!
//! Workloads: A = 50% reads / 50% updates, B = 95/5, C = read-only, W = write-only (blind
//! updates, the same shape as etcd puts). Keys `user<N>` of tenant `bench` (created with the
//! `lww` policy if missing, so updates overwrite instead of piling up siblings), chosen
//! uniformly or by a scrambled Zipfian (θ = 0.99, as YCSB).
//!
//! `--target etcd --etcd-endpoints …` drives an etcd cluster with the same loop instead
//! (`target.rs`); it has no ping reference (the ratio is taken against pairdb's in the
//! comparison script, `scripts/bench-compare.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use pairdb_common::api::pb;
use parking_lot::Mutex;
use serde::Serialize;

use crate::target::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// a (50/50 read/update), b (95/5), c (read-only) or w (write-only).
    #[arg(long, default_value = "a")]
    pub workload: String,
    /// pairdb (the coordinator) or etcd (`--etcd-endpoints`).
    #[arg(long, default_value = "pairdb")]
    pub target: String,
    /// etcd members' client addresses, comma-separated (`--target etcd`).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// etcd reads are serializable (local to a member) instead of linearizable.
    #[arg(long)]
    pub etcd_serializable: bool,
    /// uniform or zipfian.
    #[arg(long, default_value = "zipfian")]
    pub distribution: String,
    /// Keys loaded before measuring.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Consistency for reads and writes (default: the tenant's, QUORUM).
    #[arg(long)]
    pub consistency: Option<String>,
    /// Skip loading (the keys already exist).
    #[arg(long)]
    pub no_load: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// `name=pid` of a server process (repeatable): each step reports its CPU microseconds
    /// per operation, and this client's own as `client`.
    #[arg(long = "cpu-pid")]
    pub cpu_pids: Vec<String>,
}

/// YCSB's Zipfian generator over `[0, n)`, scrambled so hot keys spread over the ring.
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Zipf {
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// Rank for a uniform `u` in [0, 1): 0 is the most popular.
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64 % self.n
    }

    pub fn next(&self, u: f64) -> u64 {
        xxhash_rust::xxh64::xxh64(&self.rank(u).to_le_bytes(), 0) % self.n
    }
}

#[derive(Debug, Serialize, Clone)]
pub struct OpStats {
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

#[derive(Debug, Serialize, Clone)]
pub struct StepReport {
    pub concurrency: usize,
    /// The raw tonic round trip to the same coordinator (none against etcd).
    pub ping: Option<OpStats>,
    pub read: Option<OpStats>,
    pub update: Option<OpStats>,
    pub total_ops_per_sec: f64,
    pub ratio_to_ping: Option<f64>,
    /// CPU microseconds per operation of each watched process (`--cpu-pid`), measure phase.
    pub cpu_us_per_op: std::collections::BTreeMap<String, f64>,
    /// The same during the raw ping reference.
    pub ping_cpu_us_per_op: std::collections::BTreeMap<String, f64>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn stats(h: &Histogram<u64>, errors: u64, secs: f64) -> OpStats {
    OpStats {
        ops: h.len(),
        errors,
        ops_per_sec: h.len() as f64 / secs,
        p50_us: h.value_at_quantile(0.5),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    }
}

fn level(s: &Option<String>) -> Result<i32> {
    Ok(match s.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None => 0,
        Some("ONE") => pb::Consistency::One as i32,
        Some("QUORUM") => pb::Consistency::Quorum as i32,
        Some("ALL") => pb::Consistency::All as i32,
        Some(o) => anyhow::bail!("unknown consistency {o}"),
    })
}

struct Shared {
    read: Mutex<Histogram<u64>>,
    update: Mutex<Histogram<u64>>,
    read_err: AtomicU64,
    update_err: AtomicU64,
}

fn op_stats(s: &crate::bench::StepResult) -> OpStats {
    OpStats {
        ops: s.ops,
        errors: s.errors,
        ops_per_sec: s.ops_per_sec,
        p50_us: s.p50_us,
        p95_us: s.p95_us,
        p99_us: s.p99_us,
        p999_us: s.p999_us,
    }
}

/// Writes `records` keys, 64 at a time.
async fn load(target: &Target, records: u64, value: &[u8]) -> Result<()> {
    let keys: Vec<u64> = (0..records).collect();
    for chunk in keys.chunks(64) {
        let futs = chunk.iter().map(|i| {
            let mut t = target.clone();
            let v = value.to_vec();
            async move { t.write(format!("user{i}").into_bytes(), v).await }
        });
        let ok = futures::future::join_all(futs).await;
        anyhow::ensure!(ok.iter().all(|x| *x), "load: a write failed");
    }
    Ok(())
}

/// One measured (or warm-up) phase at concurrency `c`.
async fn phase(
    target: &Target,
    c: usize,
    secs: u64,
    read_share: f64,
    records: u64,
    zipf: &Option<Arc<Zipf>>,
    value: &[u8],
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        read: Mutex::new(hist()),
        update: Mutex::new(hist()),
        read_err: AtomicU64::new(0),
        update_err: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (mut t, shared, zipf, value) =
            (target.clone(), shared.clone(), zipf.clone(), value.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut rh, mut uh) = (hist(), hist());
            while Instant::now() < deadline {
                let idx = match &zipf {
                    Some(z) => z.next(rand::random::<f64>()),
                    None => rand::random_range(0..records),
                };
                let key = format!("user{idx}").into_bytes();
                let started = Instant::now();
                let is_read = read_share > 0.0 && rand::random::<f64>() < read_share;
                let ok = match is_read {
                    true => t.read(key).await,
                    false => t.write(key, value.clone()).await,
                };
                let us = started.elapsed().as_micros().max(1) as u64;
                match (is_read, ok) {
                    (true, true) => drop(rh.record(us)),
                    (false, true) => drop(uh.record(us)),
                    (true, false) => drop(shared.read_err.fetch_add(1, Ordering::Relaxed)),
                    (false, false) => drop(shared.update_err.fetch_add(1, Ordering::Relaxed)),
                }
            }
            let _ = shared.read.lock().add(&rh);
            let _ = shared.update.lock().add(&uh);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    shared
}

pub async fn run(
    coordinator: &pairdb_common::client::Dial,
    a: WorkloadArgs,
    json: bool,
) -> Result<()> {
    let read_share = match a.workload.as_str() {
        "a" | "A" => 0.5,
        "b" | "B" => 0.95,
        "c" | "C" => 1.0,
        "w" | "W" => 0.0,
        o => anyhow::bail!("unknown workload {o}: use a, b, c or w"),
    };
    let zipf = match a.distribution.as_str() {
        "uniform" => None,
        "zipfian" => Some(Arc::new(Zipf::new(a.records, 0.99))),
        o => anyhow::bail!("unknown distribution {o}: use uniform or zipfian"),
    };
    let consistency = level(&a.consistency)?;
    let watched = crate::cpu::Watched::parse(&a.cpu_pids)?;
    let (target, health) = match a.target.as_str() {
        "pairdb" => {
            let channel = coordinator
                .channel()
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let client = coordinator
                .wrap(channel.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
            let tenant = pb::Tenant {
                tenant_id: "bench".into(),
                conflict_policy: pb::ConflictPolicy::Lww as i32,
                replication_factor: 3,
                ..Default::default()
            };
            let _ = client
                .clone()
                .create_tenant(pb::CreateTenantRequest {
                    tenant: Some(tenant),
                })
                .await;
            let health = tonic_health::pb::health_client::HealthClient::new(channel);
            let target = Target::Pairdb {
                client,
                tenant: "bench".into(),
                consistency,
            };
            (target, Some(health))
        }
        "etcd" => {
            anyhow::ensure!(
                !a.etcd_endpoints.is_empty(),
                "--target etcd needs --etcd-endpoints"
            );
            let t = Target::etcd(&a.etcd_endpoints, a.etcd_serializable).await?;
            (t, None)
        }
        o => anyhow::bail!("unknown target {o}: use pairdb or etcd"),
    };
    let value = vec![b'x'; a.value_size];
    if !a.no_load {
        let started = Instant::now();
        load(&target, a.records, &value).await.context("load")?;
        if !json {
            println!(
                "loaded {} records in {:.1} s",
                a.records,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let mut steps = Vec::new();
    for &c in &a.concurrency {
        // Reference: raw unary round trips on the same coordinator and concurrency.
        let mut ping = None;
        let mut ping_cpu = Default::default();
        if let Some(health) = &health {
            use crate::bench::ping_step;
            ping_step("ping", health, c, Duration::from_secs(a.warmup_secs)).await;
            let cpu = watched.sample();
            let p = ping_step("ping", health, c, Duration::from_secs(a.duration_secs)).await;
            ping_cpu = cpu.per_op_us(&watched.sample(), p.ops);
            ping = Some(op_stats(&p));
        }
        let (recs, w) = (a.records, a.warmup_secs);
        phase(&target, c, w, read_share, recs, &zipf, &value).await;
        let cpu = watched.sample();
        let started = Instant::now();
        let shared = phase(&target, c, a.duration_secs, read_share, recs, &zipf, &value).await;
        let secs = started.elapsed().as_secs_f64();
        let (r, u) = (shared.read.lock(), shared.update.lock());
        let cpu_us_per_op = cpu.per_op_us(&watched.sample(), r.len() + u.len());
        let read =
            (!r.is_empty()).then(|| stats(&r, shared.read_err.load(Ordering::Relaxed), secs));
        let update =
            (!u.is_empty()).then(|| stats(&u, shared.update_err.load(Ordering::Relaxed), secs));
        let total = (r.len() + u.len()) as f64 / secs;
        steps.push(StepReport {
            concurrency: c,
            ratio_to_ping: ping
                .as_ref()
                .map(|p: &OpStats| total / p.ops_per_sec.max(1.0)),
            ping,
            read,
            update,
            total_ops_per_sec: total,
            cpu_us_per_op,
            ping_cpu_us_per_op: ping_cpu,
        });
    }
    let report = serde_json::json!({
        "benchmark": "workload", "target": target.name(), "workload": a.workload, "distribution": a.distribution, "records": a.records,
        "value_size": a.value_size, "duration_secs": a.duration_secs, "consistency": a.consistency.clone().unwrap_or_else(|| "tenant default (QUORUM)".into()),
        "steps": steps,
    });
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_table(&a, target.name(), &steps);
    Ok(())
}

fn print_table(a: &WorkloadArgs, target: &str, steps: &[StepReport]) {
    println!(
        "{target} workload {} ({}), {} records, {}-byte values",
        a.workload, a.distribution, a.records, a.value_size
    );
    println!(
        "{:>5} {:<7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "conc", "op", "ops/s", "p50µs", "p95µs", "p99µs", "p999µs", "errors"
    );
    for s in steps {
        for (name, st) in [
            ("ping", s.ping.as_ref()),
            ("read", s.read.as_ref()),
            ("update", s.update.as_ref()),
        ] {
            if let Some(st) = st {
                println!(
                    "{:>5} {:<7} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7}",
                    s.concurrency,
                    name,
                    st.ops_per_sec,
                    st.p50_us,
                    st.p95_us,
                    st.p99_us,
                    st.p999_us,
                    st.errors
                );
            }
        }
        match s.ratio_to_ping {
            Some(r) => println!(
                "{:>5} total   {:>10.0}  ({:.0}% of the raw ping)",
                s.concurrency,
                s.total_ops_per_sec,
                r * 100.0
            ),
            None => println!("{:>5} total   {:>10.0}", s.concurrency, s.total_ops_per_sec),
        }
        for (name, us) in &s.cpu_us_per_op {
            let ping = s.ping_cpu_us_per_op.get(name).copied().unwrap_or(0.0);
            println!(
                "{:>5} cpu     {name}: {us:.1} µs/op (ping {ping:.1})",
                s.concurrency
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut counts = vec![0u32; 1000];
        for i in 0..100_000u32 {
            let u = (f64::from(i) + 0.5) / 100_000.0;
            let k = z.next(u);
            assert!(k < 1000);
            counts[k as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(top10 > 25_000, "top 10 keys get {top10} of 100000 draws");
        assert!(
            counts.iter().filter(|c| **c > 0).count() > 300,
            "tail is reached"
        );
    }
}
