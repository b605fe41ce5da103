//! The set-add workload (FAULT-SCENARIOS.md §1): each key holds a set of elements. A client
//! reads the key (value and context) at QUORUM, unions the sets of all siblings, adds one new
//! element and writes the union back with the context. An acknowledged element that is
//! missing from the key's final union is a lost write; a final element nobody attempted is a
//! phantom. Siblings are what concurrent writes must produce, so the workload needs no
//! linearizability to decide either.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::client::Dial;
use tonic::Code;

use super::history::{History, Kind};
use crate::cluster::{read_req, write_req};

/// Pause after a failed operation.
const BACKOFF: Duration = Duration::from_millis(100);

/// Elements of a stored value: comma-separated.
pub fn elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// The union of every sibling's elements (what a set-add client merges before adding).
pub fn union(siblings: &[pb::Sibling]) -> BTreeSet<String> {
    siblings.iter().flat_map(|s| elements(&s.value)).collect()
}

pub fn encode(set: &BTreeSet<String>) -> Vec<u8> {
    set.iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Whether a write error means it certainly was not applied (refused before anything was
/// written); anything else may have been applied (`info`).
pub fn definitely_not_applied(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

/// A bounded set-add load: `workers` clients, each on its own coordinator in turn, adding
/// unique elements to `keys` keys until stopped, `max_ops` operations or `max_time`.
pub struct SetAdd {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl SetAdd {
    pub fn start(
        history: &History,
        coords: Vec<Dial>,
        workers: usize,
        keys: usize,
        max_ops: usize,
        max_time: Duration,
    ) -> SetAdd {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for w in 0..workers {
            let (stop, acked, h) = (stop.clone(), acked.clone(), history.clone());
            let dial = coords[w % coords.len()].clone();
            handles.push(tokio::spawn(async move {
                let deadline = Instant::now() + max_time;
                let Ok(mut client) = dial.connect().await else {
                    return;
                };
                for i in 0..max_ops {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let op = i as u64;
                    let key = format!("set-{}", (i * 7 + w * 13) % keys);
                    let element = format!("w{w}e{i}");
                    h.record(w, op, Kind::Invoke, "add", &key, &element, 0, "");
                    let read = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.read(read_req(key.as_bytes(), pb::Consistency::Quorum)),
                    )
                    .await;
                    let (mut set, context, siblings) = match read {
                        Ok(Ok(r)) => {
                            let r = r.into_inner();
                            (union(&r.siblings), r.context, r.siblings.len())
                        }
                        Ok(Err(e)) if e.code() == Code::NotFound => {
                            (BTreeSet::new(), Vec::new(), 0)
                        }
                        Ok(Err(e)) => {
                            // Nothing was written.
                            tokio::time::sleep(BACKOFF).await;
                            h.record(w, op, Kind::Fail, "add", &key, &element, 0, &e.to_string());
                            continue;
                        }
                        Err(_) => {
                            h.record(
                                w,
                                op,
                                Kind::Fail,
                                "add",
                                &key,
                                &element,
                                0,
                                "read timed out",
                            );
                            continue;
                        }
                    };
                    h.read(w, op, &key, set.iter().cloned().collect());
                    set.insert(element.clone());
                    let req = write_req(
                        key.as_bytes(),
                        &encode(&set),
                        context,
                        pb::Consistency::Quorum,
                    );
                    let wrote =
                        tokio::time::timeout(Duration::from_secs(10), client.write(req)).await;
                    let (kind, error) = match wrote {
                        Ok(Ok(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            (Kind::Ok, String::new())
                        }
                        Ok(Err(e)) if definitely_not_applied(e.code()) => {
                            (Kind::Fail, e.to_string())
                        }
                        Ok(Err(e)) => (Kind::Info, e.to_string()),
                        Err(_) => (Kind::Info, "write timed out".to_string()),
                    };
                    h.record(w, op, kind, "add", &key, &element, siblings, &error);
                    if kind != Kind::Ok {
                        // A client backs off after an error instead of spinning on it.
                        tokio::time::sleep(BACKOFF).await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        SetAdd {
            stop,
            acked,
            handles,
        }
    }

    /// Adds acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the workers and waits for them.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
    }
}
