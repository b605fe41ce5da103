//! Checkers over a recorded history and the cluster's final state: no acknowledged element
//! lost, no element nobody attempted (phantom), siblings within the cap, and every key's
//! replicas holding the same versions after the heal (raw per-replica reads).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use pairdb_common::api::pb;
use pairdb_common::client::Dial;
use serde::Serialize;
use tonic::Code;

use super::history::{History, Kind, Record};
use super::setadd::union;
use crate::cluster::read_req;
use crate::procs::ProcCluster;

/// What a run's checks found (one row of TESTING.md's table).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub ops: usize,
    pub acked: usize,
    pub info: usize,
    pub failed: usize,
    /// Acknowledged (key, element) pairs missing from the key's final set.
    pub lost: Vec<(String, String)>,
    /// Final elements no operation attempted.
    pub unexpected: Vec<(String, String)>,
    /// `info` operations whose element is in the final set (applied though unacknowledged).
    pub info_applied: usize,
    /// Reads (at QUORUM, R + W > N) that missed an element whose add was acknowledged before
    /// the read began: (key, element, reading process and operation).
    pub stale_reads: Vec<(String, String, usize, u64)>,
    pub reads: usize,
    pub max_siblings_seen: usize,
    /// From the heal until every key's replicas held the same versions.
    pub converged_ms: Option<u64>,
    /// Keys the checker read at ALL because hints alone had not made their replicas agree.
    pub read_repaired: usize,
}

impl Verdict {
    /// Acknowledged over attempted, in percent.
    pub fn availability(&self) -> f64 {
        if self.ops == 0 {
            return 0.0;
        }
        100.0 * self.acked as f64 / self.ops as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "ops {}, acked {}, info {} ({} applied), failed {}, lost {}, unexpected {}, reads {} (stale {}), max siblings {}, availability {:.1} %, converged in {} ms ({} keys read-repaired)",
            self.ops,
            self.acked,
            self.info,
            self.info_applied,
            self.failed,
            self.lost.len(),
            self.unexpected.len(),
            self.reads,
            self.stale_reads.len(),
            self.max_siblings_seen,
            self.availability(),
            self.converged_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            self.read_repaired
        )
    }
}

/// Every key's final set, read at QUORUM (retried until it answers, at most `deadline`).
pub async fn final_sets(
    dial: &Dial,
    keys: &BTreeSet<String>,
    deadline: Duration,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut client = dial.connect().await.map_err(anyhow::Error::msg)?;
    let until = Instant::now() + deadline;
    let mut out = BTreeMap::new();
    for k in keys {
        loop {
            match client
                .read(read_req(k.as_bytes(), pb::Consistency::Quorum))
                .await
            {
                Ok(r) => {
                    out.insert(k.clone(), union(&r.get_ref().siblings));
                    break;
                }
                Err(e) if e.code() == Code::NotFound => {
                    out.insert(k.clone(), BTreeSet::new());
                    break;
                }
                Err(e) if Instant::now() < until => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => anyhow::bail!("final read of {k}: {e}"),
            }
        }
    }
    Ok(out)
}

/// The keys the history touched.
pub fn keys(h: &History) -> BTreeSet<String> {
    h.records()
        .into_iter()
        .filter(|r| r.kind == Kind::Invoke)
        .map(|r| r.key)
        .collect()
}

/// Lost, phantom and sibling checks of `h` against the final sets.
pub fn check(h: &History, finals: &BTreeMap<String, BTreeSet<String>>) -> Verdict {
    let mut v = Verdict::default();
    let mut attempted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut acked = Vec::new();
    let mut info = Vec::new();
    // Adds only: reads are judged by `stale_reads`, other operations (a client's read-back
    // after an ack) are reads of their own.
    for r in h.records().into_iter().filter(|r| r.f == "add") {
        match r.kind {
            Kind::Invoke => {
                v.ops += 1;
                attempted.insert((r.key, r.element));
            }
            Kind::Ok => {
                v.acked += 1;
                v.max_siblings_seen = v.max_siblings_seen.max(r.siblings);
                acked.push((r.key, r.element));
            }
            Kind::Info => {
                v.info += 1;
                info.push((r.key, r.element));
            }
            Kind::Fail => v.failed += 1,
            Kind::Nemesis => {}
        }
    }
    v.stale_reads = stale_reads(h, &mut v.reads);
    let has = |k: &str, e: &str| finals.get(k).is_some_and(|s| s.contains(e));
    v.lost = acked.into_iter().filter(|(k, e)| !has(k, e)).collect();
    v.info_applied = info.iter().filter(|(k, e)| has(k, e)).count();
    for (k, set) in finals {
        for e in set {
            if !attempted.contains(&(k.clone(), e.clone())) {
                v.unexpected.push((k.clone(), e.clone()));
            }
        }
    }
    v
}

/// Each finished operation (its ok, fail or info record) with the time it was invoked, in
/// history order; one whose invoke is not in the history is left out.
fn finished(records: &[Record]) -> Vec<(u64, &Record)> {
    let mut invoked: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        match r.kind {
            Kind::Invoke => {
                invoked.insert((r.proc, r.op_id), r.t_mono_ns);
            }
            Kind::Ok | Kind::Fail | Kind::Info => {
                if let Some(&began) = invoked.get(&(r.proc, r.op_id)) {
                    out.push((began, r));
                }
            }
            _ => {}
        }
    }
    out
}

/// Adds acknowledged although they began after the nemesis record `from` and were
/// acknowledged before the next record `until` (e.g. after `down a,b` and before
/// `heal KillTwo a,b`): (key, element).
pub fn acked_between(h: &History, from: &str, until: &str) -> Vec<(String, String)> {
    let records = h.records();
    let mut windows = Vec::new();
    let mut open: Option<u64> = None;
    for r in records.iter().filter(|r| r.kind == Kind::Nemesis) {
        if r.f.starts_with(from) {
            open = Some(r.t_mono_ns);
        } else if r.f.starts_with(until)
            && let Some(start) = open.take()
        {
            windows.push((start, r.t_mono_ns));
        }
    }
    finished(&records)
        .into_iter()
        .filter(|(began, r)| {
            r.kind == Kind::Ok
                && r.f == "add"
                && windows.iter().any(|(s, e)| began > s && r.t_mono_ns < *e)
        })
        .map(|(_, r)| (r.key.clone(), r.element.clone()))
        .collect()
}

/// Operation latencies, sorted (slowest last).
#[derive(Debug, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0.0–1.0; 1.0 is the slowest); zero when there are none.
    pub fn at(&self, q: f64) -> Duration {
        let n = self.0.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.0[((n as f64 * q) as usize).min(n - 1)]
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            self.len(),
            self.at(0.5),
            self.at(0.9),
            self.at(0.99),
            self.at(1.0)
        )
    }
}

/// How long each add took (invoke to its ok, fail or info) among the adds in flight at some
/// moment between the nemesis record starting with `from` and the next one starting with
/// `until`. An add never finished is left out (the run's end cut it).
pub fn add_latencies_during(h: &History, from: &str, until: &str) -> Latencies {
    let records = h.records();
    let nemesis = || records.iter().filter(|r| r.kind == Kind::Nemesis);
    let Some(start) = nemesis()
        .find(|r| r.f.starts_with(from))
        .map(|r| r.t_mono_ns)
    else {
        return Latencies(Vec::new());
    };
    let end = nemesis()
        .find(|r| r.t_mono_ns > start && r.f.starts_with(until))
        .map_or(u64::MAX, |r| r.t_mono_ns);
    let mut out: Vec<Duration> = finished(&records)
        .into_iter()
        .filter(|(began, r)| r.f == "add" && *began < end && r.t_mono_ns > start)
        .map(|(began, r)| Duration::from_nanos(r.t_mono_ns - began))
        .collect();
    out.sort();
    Latencies(out)
}

/// Keys whose QUORUM read through the first coordinator holds two siblings with the same
/// value: the same add recorded twice under different dots.
pub async fn duplicate_siblings(c: &ProcCluster, keys: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut client = c.coords[0].client().await?;
    let mut dup = Vec::new();
    for k in keys {
        let r = client
            .read(read_req(k.as_bytes(), pb::Consistency::Quorum))
            .await?
            .into_inner();
        let values: BTreeSet<&Vec<u8>> = r.siblings.iter().map(|s| &s.value).collect();
        if values.len() < r.siblings.len() {
            dup.push(k.clone());
        }
    }
    Ok(dup)
}

/// Read-your-writes across clients: every read at QUORUM must contain every element whose add
/// was acknowledged before the read began (its operation's invoke).
fn stale_reads(h: &History, reads: &mut usize) -> Vec<(String, String, usize, u64)> {
    let records = h.records();
    let ok = finished(&records);
    let mut acked: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (_, r) in ok
        .iter()
        .filter(|(_, r)| r.kind == Kind::Ok && r.f == "add")
    {
        acked
            .entry(r.key.clone())
            .or_default()
            .push((r.t_mono_ns, r.element.clone()));
    }
    *reads += records
        .iter()
        .filter(|r| r.kind == Kind::Ok && r.f == "read")
        .count();
    let mut stale = Vec::new();
    for (began, r) in ok
        .iter()
        .filter(|(_, r)| r.kind == Kind::Ok && r.f == "read")
    {
        let began = *began;
        let seen: BTreeSet<&String> = r.observed.iter().collect();
        for (t, e) in acked.get(&r.key).into_iter().flatten() {
            if *t < began && !seen.contains(e) {
                stale.push((r.key.clone(), e.clone(), r.proc, r.op_id));
            }
        }
    }
    stale
}

/// Each fault of the history with the number of operations in flight at some moment while
/// it was on (begun before its heal and not finished before it started; one never finished
/// counts as in flight to the end). A fault opens at a nemesis record `X` (or `start X`) and
/// closes at the next `heal X`; `down …` records mark a moment, not a fault. Positions in the
/// history order it (records are appended under one lock), so this holds for simulated time
/// too. A fault never healed lasts until the end.
pub fn ops_during_faults(h: &History) -> Vec<(String, usize)> {
    let records = h.records();
    // Each add's span: where it was invoked and where it ended.
    let mut spans: BTreeMap<(usize, u64), (usize, usize)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        match r.kind {
            Kind::Invoke => {
                spans.insert((r.proc, r.op_id), (i, records.len()));
            }
            Kind::Ok | Kind::Fail | Kind::Info if r.f == "add" => {
                if let Some(s) = spans.get_mut(&(r.proc, r.op_id)) {
                    s.1 = s.1.min(i);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.kind != Kind::Nemesis || r.f.starts_with("heal ") || r.f.starts_with("down ") {
            continue;
        }
        let fault = r.f.strip_prefix("start ").unwrap_or(&r.f);
        let heal = format!("heal {fault}");
        let end = records[i + 1..]
            .iter()
            .position(|e| e.kind == Kind::Nemesis && e.f == heal)
            .map_or(records.len(), |p| i + 1 + p);
        let during = spans
            .values()
            .filter(|(invoked, ended)| *invoked < end && *ended > i)
            .count();
        out.push((fault.to_string(), during));
    }
    out
}

/// A replica's versions of one key, as comparable tuples: (dot node, epoch, counter,
/// tombstone, value).
pub type Versions = BTreeSet<(String, u64, u64, bool, Vec<u8>)>;

/// The versions a storage node's `Read` answered.
pub fn versions(r: pb::ReadResult) -> Versions {
    r.state
        .map(|st| {
            st.versions
                .into_iter()
                .map(|v| {
                    let d = v.dot.unwrap_or_default();
                    (d.node_id, d.epoch, d.counter, v.tombstone, v.value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each replica's versions of `key`, read from the node itself.
async fn replica_versions(c: &ProcCluster, node: &str, key: &str) -> Result<Versions> {
    let n = c
        .nodes
        .iter()
        .find(|n| n.id == node)
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    Ok(versions(n.read_t1(key.as_bytes()).await?))
}

/// Dots that name more than one version across every running node and every key of `keys`:
/// a dot (node, epoch, counter) is minted once in the whole cluster (counters are node-wide),
/// so two versions under one dot are a replica that reused its clock — Riak's KV-679, a node
/// restarted on a lost disk counting from where an older incarnation had. Each as
/// `node:epoch:counter` with the (key, tombstone, value) it names.
pub async fn reused_dots(c: &ProcCluster, keys: &BTreeSet<String>) -> Result<Vec<String>> {
    type Named = BTreeSet<(String, bool, Vec<u8>)>;
    let mut by_dot: BTreeMap<(String, u64, u64), Named> = BTreeMap::new();
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        for k in keys {
            for (node, epoch, counter, tombstone, value) in replica_versions(c, &n.id, k).await? {
                by_dot.entry((node, epoch, counter)).or_default().insert((
                    k.clone(),
                    tombstone,
                    value,
                ));
            }
        }
    }
    Ok(by_dot
        .into_iter()
        .filter(|(_, named)| named.len() > 1)
        .map(|((n, e, ct), named)| format!("{n}:{e}:{ct} names {named:?}"))
        .collect())
}

/// How long converging took after the heal, and the keys that hints alone did not bring
/// together within [`READ_REPAIR_AFTER`] and were read at ALL (read repair).
#[derive(Debug, Default)]
pub struct Converged {
    pub after: Duration,
    pub read_repaired: BTreeSet<String>,
}

/// The checks after the last heal, on a process cluster: every hint delivered (at most 60 s),
/// every key's final set read at QUORUM through the first coordinator, the history's checks
/// ([`check`]), and replica convergence ([`converge`], at most 90 s; its time and read repairs
/// go into the verdict). The convergence result is returned for the caller to judge.
pub async fn after_heal(c: &ProcCluster, h: &History) -> Result<(Verdict, Result<Converged>)> {
    crate::cluster::wait_async("hints drained", Duration::from_secs(60), || async {
        c.meta.hint_targets().await.is_ok_and(|t| t.is_empty())
    })
    .await?;
    let keys = keys(h);
    let finals = final_sets(&c.coords[0].dial(), &keys, Duration::from_secs(60)).await?;
    let mut v = check(h, &finals);
    let converged = converge(c, &keys, Duration::from_secs(90)).await;
    if let Ok(cv) = &converged {
        v.converged_ms = Some(cv.after.as_millis() as u64);
        v.read_repaired = cv.read_repaired.len();
    }
    Ok((v, converged))
}

/// How long replicas may differ after the heal before the checker reads a key at ALL, as an
/// operator's read or repair would. A version only one replica holds — a write the coordinating
/// replica applied after its coordinator gave up on it (a request delivered late, after a
/// partition healed; TESTING.md "Found") — has no hint to bring it anywhere else.
pub const READ_REPAIR_AFTER: Duration = Duration::from_secs(10);

/// Waits until every key's replicas (current ring, RF 3) hold the same versions; after
/// [`READ_REPAIR_AFTER`] reads each key that still differs at ALL.
pub async fn converge(
    c: &ProcCluster,
    keys: &BTreeSet<String>,
    deadline: Duration,
) -> Result<Converged> {
    let started = Instant::now();
    let ring = c.ring().await?;
    let mut last = String::new();
    let mut read_repaired = BTreeSet::new();
    while started.elapsed() < deadline {
        let mut differ = Vec::new();
        for k in keys {
            let tok = pairdb_common::token::token("t1", k.as_bytes());
            let mut states = Vec::new();
            for m in ring.preference_list(tok, 3) {
                match replica_versions(c, &m.node_id, k).await {
                    Ok(v) => states.push(v),
                    Err(e) => {
                        differ.push(format!("{k} on {}: {e}", m.node_id));
                        states.clear();
                        break;
                    }
                }
            }
            if states.windows(2).any(|w| w[0] != w[1]) {
                // Each replica's dots, so a failure shows who is missing what.
                let dots: Vec<String> = states
                    .iter()
                    .map(|v| {
                        v.iter()
                            .map(|(n, e, c, t, _)| {
                                format!("{n}:{e}:{c}{}", if *t { "†" } else { "" })
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                differ.push(format!("{k}: replicas differ: {dots:?}"));
            }
        }
        if differ.is_empty() {
            return Ok(Converged {
                after: started.elapsed(),
                read_repaired,
            });
        }
        if started.elapsed() > READ_REPAIR_AFTER
            && let Ok(mut client) = c.coord().await
        {
            // (A read at ALL fails while a coordinator still counts a replica down: retried on
            // the next round.)
            for k in differ.iter().filter_map(|d| d.split(':').next()) {
                read_repaired.insert(k.to_string());
                let _ = client
                    .read(read_req(k.as_bytes(), pb::Consistency::All))
                    .await;
            }
        }
        last = format!(
            "{} keys, e.g. {:?}",
            differ.len(),
            &differ[..differ.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("replicas did not converge within {deadline:?}: {last}")
}
