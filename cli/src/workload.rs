//! `pairdbctl bench workload`: YCSB-style workloads against a running coordinator, with a raw
//! tonic unary round trip (`grpc.health.v1.Health/Check` on the same coordinator) measured at
//! each concurrency in the same run as the reference.
//!
//! Workloads: A = 50% reads / 50% updates, B = 95/5, C = read-only. Keys `user<N>` of tenant
//! `bench` (created with the `lww` policy if missing, so updates overwrite instead of piling up
//! siblings), chosen uniformly or by a scrambled Zipfian (θ = 0.99, as YCSB).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use pairdb_common::api::pb;
use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// a (50/50 read/update), b (95/5) or c (read-only).
    #[arg(long, default_value = "a")]
    pub workload: String,
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
    pub ping: OpStats,
    pub read: Option<OpStats>,
    pub update: Option<OpStats>,
    pub total_ops_per_sec: f64,
    pub ratio_to_ping: f64,
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

pub async fn run(
    coordinator: &pairdb_common::client::Dial,
    a: WorkloadArgs,
    json: bool,
) -> Result<()> {
    let read_share = match a.workload.as_str() {
        "a" | "A" => 0.5,
        "b" | "B" => 0.95,
        "c" | "C" => 1.0,
        o => anyhow::bail!("unknown workload {o}: use a, b or c"),
    };
    let zipf = match a.distribution.as_str() {
        "uniform" => None,
        "zipfian" => Some(Arc::new(Zipf::new(a.records, 0.99))),
        o => anyhow::bail!("unknown distribution {o}: use uniform or zipfian"),
    };
    let consistency = level(&a.consistency)?;
    let watched = crate::cpu::Watched::parse(&a.cpu_pids)?;
    let channel = coordinator
        .channel()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let client = coordinator
        .wrap(channel.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);

    let mut tenant = pb::Tenant {
        tenant_id: "bench".into(),
        conflict_policy: pb::ConflictPolicy::Lww as i32,
        ..Default::default()
    };
    tenant.replication_factor = 3;
    let _ = client
        .clone()
        .create_tenant(pb::CreateTenantRequest {
            tenant: Some(tenant),
        })
        .await;
    let value = vec![b'x'; a.value_size];
    if !a.no_load {
        let started = Instant::now();
        for chunk in (0..a.records).collect::<Vec<_>>().chunks(64) {
            let futs = chunk.iter().map(|i| {
                let mut c = client.clone();
                let v = value.clone();
                async move {
                    c.write(pb::WriteRequest {
                        tenant_id: "bench".into(),
                        key: format!("user{i}").into_bytes(),
                        value: v,
                        consistency,
                        ..Default::default()
                    })
                    .await
                }
            });
            for r in futures::future::join_all(futs).await {
                r.context("load")?;
            }
        }
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
        use crate::bench::ping_step;
        ping_step("ping", &health, c, Duration::from_secs(a.warmup_secs)).await;
        let cpu = watched.sample();
        let ping = ping_step("ping", &health, c, Duration::from_secs(a.duration_secs)).await;
        let ping_cpu = cpu.per_op_us(&watched.sample(), ping.ops);
        let mut measure = None;
        for phase in ["warmup", "measure"] {
            let secs = if phase == "warmup" {
                a.warmup_secs
            } else {
                a.duration_secs
            };
            let shared = Arc::new(Shared {
                read: Mutex::new(hist()),
                update: Mutex::new(hist()),
                read_err: AtomicU64::new(0),
                update_err: AtomicU64::new(0),
            });
            let deadline = Instant::now() + Duration::from_secs(secs);
            let started = Instant::now();
            let cpu = watched.sample();
            let mut tasks = Vec::new();
            for _ in 0..c {
                let (mut cl, shared, zipf, value) =
                    (client.clone(), shared.clone(), zipf.clone(), value.clone());
                let records = a.records;
                tasks.push(tokio::spawn(async move {
                    let (mut rh, mut uh) = (hist(), hist());
                    while Instant::now() < deadline {
                        let idx = match &zipf {
                            Some(z) => z.next(rand::random::<f64>()),
                            None => rand::random_range(0..records),
                        };
                        let key = format!("user{idx}").into_bytes();
                        let t = Instant::now();
                        if rand::random::<f64>() < read_share {
                            match cl
                                .read(pb::ReadRequest {
                                    tenant_id: "bench".into(),
                                    key,
                                    consistency,
                                    timeout_ms: 0,
                                })
                                .await
                            {
                                Ok(_) => {
                                    let _ = rh.record(t.elapsed().as_micros().max(1) as u64);
                                }
                                Err(_) => {
                                    shared.read_err.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        } else {
                            match cl
                                .write(pb::WriteRequest {
                                    tenant_id: "bench".into(),
                                    key,
                                    value: value.clone(),
                                    consistency,
                                    ..Default::default()
                                })
                                .await
                            {
                                Ok(_) => {
                                    let _ = uh.record(t.elapsed().as_micros().max(1) as u64);
                                }
                                Err(_) => {
                                    shared.update_err.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    let _ = shared.read.lock().add(&rh);
                    let _ = shared.update.lock().add(&uh);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let secs = started.elapsed().as_secs_f64();
            if phase == "measure" {
                let r = shared.read.lock();
                let u = shared.update.lock();
                let cpu = cpu.per_op_us(&watched.sample(), r.len() + u.len());
                let read = (!r.is_empty())
                    .then(|| stats(&r, shared.read_err.load(Ordering::Relaxed), secs));
                let update = (!u.is_empty())
                    .then(|| stats(&u, shared.update_err.load(Ordering::Relaxed), secs));
                measure = Some((read, update, (r.len() + u.len()) as f64 / secs, cpu));
            }
        }
        let (read, update, total, cpu_us_per_op) = measure.unwrap_or_default();
        let ping_stats = OpStats {
            ops: ping.ops,
            errors: ping.errors,
            ops_per_sec: ping.ops_per_sec,
            p50_us: ping.p50_us,
            p95_us: ping.p95_us,
            p99_us: ping.p99_us,
            p999_us: ping.p999_us,
        };
        steps.push(StepReport {
            concurrency: c,
            ratio_to_ping: total / ping_stats.ops_per_sec.max(1.0),
            ping: ping_stats,
            read,
            update,
            total_ops_per_sec: total,
            cpu_us_per_op,
            ping_cpu_us_per_op: ping_cpu,
        });
    }
    let report = serde_json::json!({
        "benchmark": "workload", "workload": a.workload, "distribution": a.distribution, "records": a.records,
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
    println!(
        "workload {} ({}), {} records, {}-byte values",
        a.workload, a.distribution, a.records, a.value_size
    );
    println!(
        "{:>5} {:<7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "conc", "op", "ops/s", "p50µs", "p95µs", "p99µs", "p999µs", "errors"
    );
    for s in &steps {
        for (name, st) in [
            ("ping", Some(&s.ping)),
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
        println!(
            "{:>5} total   {:>10.0}  ({:.0}% of the raw ping)",
            s.concurrency,
            s.total_ops_per_sec,
            s.ratio_to_ping * 100.0
        );
        for (name, us) in &s.cpu_us_per_op {
            let ping = s.ping_cpu_us_per_op.get(name).copied().unwrap_or(0.0);
            println!(
                "{:>5} cpu     {name}: {us:.1} µs/op (ping {ping:.1})",
                s.concurrency
            );
        }
    }
    Ok(())
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
