//! The history of a run: one record per client operation (invoke, then ok / fail / info) and
//! per fault, with monotonic timestamps, in the JSONL schema of FAULT-SCENARIOS.md §1. `fail`
//! means the operation certainly did not take effect; `info` that it may have (a timeout, a
//! quorum not met after dispatch, a dropped connection).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
    /// A fault the nemesis started or healed.
    Nemesis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub run: String,
    pub seed: u64,
    pub proc: usize,
    pub op_id: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `add` (a set-add: read, union, write back with the context), `read`, or the fault.
    pub f: String,
    pub key: String,
    pub element: String,
    pub siblings: usize,
    pub error: String,
    /// What a read saw (`f` = `read`): the union of the siblings' elements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<String>,
    pub t_mono_ns: u64,
}

/// A shared, append-only history.
#[derive(Clone)]
pub struct History {
    run: String,
    seed: u64,
    started: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl History {
    pub fn new(run: &str, seed: u64) -> History {
        History {
            run: run.to_string(),
            seed,
            started: Instant::now(),
            records: Arc::default(),
        }
    }

    /// A history recorded elsewhere (another process's JSON lines, in this schema), in order.
    pub fn from_jsonl(run: &str, jsonl: &str) -> anyhow::Result<History> {
        let h = History::new(run, 0);
        let mut records = Vec::new();
        for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
            records.push(serde_json::from_str::<Record>(line)?);
        }
        records.sort_by_key(|r| r.t_mono_ns);
        *h.lock() = records;
        Ok(h)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record now and returns its timestamp.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        proc: usize,
        op_id: u64,
        kind: Kind,
        f: &str,
        key: &str,
        element: &str,
        siblings: usize,
        error: &str,
    ) -> u64 {
        self.push(
            proc,
            op_id,
            kind,
            f,
            key,
            element,
            siblings,
            error,
            Vec::new(),
        )
    }

    /// The read of operation `op_id` (started at that operation's invoke) saw `observed`.
    pub fn read(&self, proc: usize, op_id: u64, key: &str, observed: Vec<String>) {
        self.push(proc, op_id, Kind::Ok, "read", key, "", 0, "", observed);
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        proc: usize,
        op_id: u64,
        kind: Kind,
        f: &str,
        key: &str,
        element: &str,
        siblings: usize,
        error: &str,
        observed: Vec<String>,
    ) -> u64 {
        let t = self.started.elapsed().as_nanos() as u64;
        self.lock().push(Record {
            run: self.run.clone(),
            seed: self.seed,
            proc,
            op_id,
            kind,
            f: f.to_string(),
            key: key.to_string(),
            element: element.to_string(),
            siblings,
            error: error.to_string(),
            observed,
            t_mono_ns: t,
        });
        t
    }

    /// A fault started (`what`) or healed (`heal …`).
    pub fn nemesis(&self, what: &str) {
        self.record(usize::MAX, 0, Kind::Nemesis, what, "", "", 0, "");
    }

    pub fn records(&self) -> Vec<Record> {
        self.lock().clone()
    }

    /// Writes the history as JSONL (kept as an artifact when a check fails).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for r in self.lock().iter() {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        Ok(())
    }
}
