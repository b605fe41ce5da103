//! Recent request rates and latency percentiles for `/health`: per operation, the last complete
//! 10-second window (and the one being filled).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

const WINDOW: Duration = Duration::from_secs(10);

struct Window {
    started: Instant,
    count: u64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Window {
    fn new(now: Instant) -> Option<Window> {
        Some(Window {
            started: now,
            count: 0,
            errors: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 2).ok()?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RecentOp {
    pub ops_per_sec: f64,
    pub errors_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub window_secs: u64,
}

/// Per-operation sliding windows.
#[derive(Default)]
pub struct Recent {
    ops: Mutex<HashMap<&'static str, (Window, Option<RecentOp>)>>,
}

impl Recent {
    pub fn record(&self, op: &'static str, latency: Duration, ok: bool) {
        let now = Instant::now();
        let mut ops = self.ops.lock();
        let entry = match ops.get_mut(op) {
            Some(e) => e,
            None => {
                let Some(w) = Window::new(now) else { return };
                ops.entry(op).or_insert((w, None))
            }
        };
        if now.duration_since(entry.0.started) >= WINDOW {
            entry.1 = Some(summarize(&entry.0, now));
            if let Some(w) = Window::new(now) {
                entry.0 = w;
            }
        }
        let w = &mut entry.0;
        w.count += 1;
        if !ok {
            w.errors += 1;
        }
        let _ = w.hist.record((latency.as_micros() as u64).max(1));
    }

    /// The last complete window per op (or the current partial one if none completed yet).
    pub fn snapshot(&self) -> HashMap<&'static str, RecentOp> {
        let now = Instant::now();
        self.ops
            .lock()
            .iter()
            .map(|(op, (w, last))| {
                let s = match last {
                    Some(l) if now.duration_since(w.started) < WINDOW * 2 => l.clone(),
                    _ => summarize(w, now),
                };
                (*op, s)
            })
            .collect()
    }
}

fn summarize(w: &Window, now: Instant) -> RecentOp {
    let secs = now.duration_since(w.started).as_secs_f64().max(0.001);
    RecentOp {
        ops_per_sec: w.count as f64 / secs,
        errors_per_sec: w.errors as f64 / secs,
        p50_us: w.hist.value_at_quantile(0.5),
        p99_us: w.hist.value_at_quantile(0.99),
        window_secs: secs.round() as u64,
    }
}
