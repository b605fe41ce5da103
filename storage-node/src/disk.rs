//! Disk manager: samples the data directory's filesystem and gates writes (SPEC §4).
//!
//! States, by usage: `normal` < warning (80%) ≤ `warning` < throttle (90%) ≤ `throttled` <
//! breaker (95%) ≤ `circuit_broken`. A state is entered when usage reaches its threshold and left
//! only when usage falls below the threshold minus `hysteresis_percent`, so a disk hovering at a
//! threshold does not flap. Throttled: writes larger than `throttle_max_write_bytes` get
//! DISK_THROTTLED. Circuit broken: every write gets DISK_FULL. Deletes, reads, outbound streams
//! and compaction are never gated. Between samples the bytes written so far are added to the
//! last sample, and a large amount of writing forces a fresh sample, so the breaker trips before
//! the filesystem is actually full.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::Metrics;

/// One reading of a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl DiskUsage {
    pub fn usage_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        let used = self.total_bytes.saturating_sub(self.available_bytes);
        used as f64 * 100.0 / self.total_bytes as f64
    }
}

/// Where usage readings come from (statvfs in production; injected in tests).
pub trait UsageSource: Send + Sync + 'static {
    fn sample(&self) -> std::io::Result<DiskUsage>;
}

/// statvfs(3) of a path: blocks available to unprivileged users count as available.
pub struct StatvfsSource {
    pub path: PathBuf,
}

impl UsageSource for StatvfsSource {
    fn sample(&self) -> std::io::Result<DiskUsage> {
        let st = rustix::fs::statvfs(&self.path).map_err(std::io::Error::from)?;
        Ok(DiskUsage {
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

/// A usage source a test sets by hand (percent of a 100 GiB disk).
#[derive(Default)]
pub struct FixedUsage {
    hundredths_percent: AtomicU64,
}

impl FixedUsage {
    pub fn new(percent: f64) -> Arc<FixedUsage> {
        let f = Arc::new(FixedUsage::default());
        f.set(percent);
        f
    }

    pub fn set(&self, percent: f64) {
        self.hundredths_percent
            .store((percent * 100.0).round() as u64, Ordering::SeqCst);
    }
}

impl UsageSource for FixedUsage {
    fn sample(&self) -> std::io::Result<DiskUsage> {
        let total = 100u64 << 30;
        let used = total / 10_000 * self.hundredths_percent.load(Ordering::SeqCst);
        Ok(DiskUsage {
            total_bytes: total,
            available_bytes: total - used.min(total),
        })
    }
}

impl UsageSource for Arc<FixedUsage> {
    fn sample(&self) -> std::io::Result<DiskUsage> {
        self.as_ref().sample()
    }
}

/// Disk state, in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Normal,
    Warning,
    Throttled,
    CircuitBroken,
}

impl DiskState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Normal => "normal",
            DiskState::Warning => "warning",
            DiskState::Throttled => "throttled",
            DiskState::CircuitBroken => "circuit_broken",
        }
    }

    fn level(self) -> u8 {
        self as u8
    }
}

/// Thresholds, from the node config.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskThresholds {
    /// Usage at which the node logs and reports `warning`.
    pub warning_percent: f64,
    /// Usage at which writes larger than `throttle_max_write_bytes` are refused.
    pub throttle_percent: f64,
    /// Usage at which every write is refused (circuit breaker).
    pub breaker_percent: f64,
    /// How far below a threshold usage must fall to leave its state.
    pub hysteresis_percent: f64,
    /// Largest write accepted while throttled, in bytes.
    pub throttle_max_write_bytes: u64,
}

impl Default for DiskThresholds {
    fn default() -> Self {
        DiskThresholds {
            warning_percent: 80.0,
            throttle_percent: 90.0,
            breaker_percent: 95.0,
            hysteresis_percent: 0.5,
            throttle_max_write_bytes: 64 * 1024,
        }
    }
}

impl DiskThresholds {
    fn state_for(&self, usage: f64) -> DiskState {
        if usage >= self.breaker_percent {
            DiskState::CircuitBroken
        } else if usage >= self.throttle_percent {
            DiskState::Throttled
        } else if usage >= self.warning_percent {
            DiskState::Warning
        } else {
            DiskState::Normal
        }
    }

    /// The state after `current` given `usage`: up at the threshold, down only below it minus
    /// the hysteresis.
    pub fn next_state(&self, current: DiskState, usage: f64) -> DiskState {
        let up = self.state_for(usage);
        let down = self.state_for(usage + self.hysteresis_percent);
        if up > current {
            up
        } else if down < current {
            down
        } else {
            current
        }
    }
}

/// What `/health` and NodeInfo report.
#[derive(Debug, Clone, Serialize)]
pub struct DiskStatus {
    pub state: DiskState,
    pub usage_percent: f64,
    pub available_bytes: u64,
    pub total_bytes: u64,
    pub is_throttled: bool,
    pub is_circuit_broken: bool,
    pub last_error: Option<String>,
}

struct Inner {
    state: DiskState,
    usage: DiskUsage,
    last_error: Option<String>,
}

/// The disk manager of one node.
pub struct DiskMonitor {
    source: Box<dyn UsageSource>,
    thresholds: DiskThresholds,
    inner: RwLock<Inner>,
    /// Bytes accepted for writing since the last sample.
    written_since_sample: AtomicU64,
    metrics: Arc<Metrics>,
}

impl DiskMonitor {
    pub fn new(
        source: Box<dyn UsageSource>,
        thresholds: DiskThresholds,
        metrics: Arc<Metrics>,
    ) -> DiskMonitor {
        let m = DiskMonitor {
            source,
            thresholds,
            inner: RwLock::new(Inner {
                state: DiskState::Normal,
                usage: DiskUsage::default(),
                last_error: None,
            }),
            written_since_sample: AtomicU64::new(0),
            metrics,
        };
        m.sample_now();
        m
    }

    /// Takes a reading now and moves the state machine; logs and counts every change.
    pub fn sample_now(&self) {
        let reading = self.source.sample();
        self.written_since_sample.store(0, Ordering::Relaxed);
        let mut inner = self.inner.write();
        let usage = match reading {
            Ok(u) => u,
            Err(e) => {
                if inner.last_error.is_none() {
                    tracing::error!(error = %e, "sample disk usage failed; keeping the last state");
                }
                inner.last_error = Some(e.to_string());
                return;
            }
        };
        inner.last_error = None;
        inner.usage = usage;
        let pct = usage.usage_percent();
        self.metrics.disk_usage_percent.set(pct);
        self.metrics
            .disk_available_bytes
            .set(usage.available_bytes as i64);
        let old = inner.state;
        let new = self.thresholds.next_state(old, pct);
        if new == old {
            return;
        }
        inner.state = new;
        self.metrics.disk_state.set(i64::from(new.level()));
        drop(inner);
        self.log_transition(old, new, pct, usage.available_bytes);
    }

    fn log_transition(&self, old: DiskState, new: DiskState, pct: f64, available: u64) {
        let broken = |s: DiskState| s == DiskState::CircuitBroken;
        let throttled = |s: DiskState| s >= DiskState::Throttled;
        if broken(new) && !broken(old) {
            self.metrics.disk_circuit_breaker_events.inc();
            tracing::error!(
                usage_percent = pct,
                available_bytes = available,
                "Disk circuit breaker ENGAGED: rejecting all writes"
            );
        } else if broken(old) && !broken(new) {
            self.metrics.disk_circuit_breaker_events.inc();
            tracing::warn!(
                usage_percent = pct,
                available_bytes = available,
                "Disk circuit breaker DISENGAGED"
            );
        }
        if throttled(new) && !throttled(old) {
            self.metrics.disk_throttle_events.inc();
            tracing::warn!(
                usage_percent = pct,
                available_bytes = available,
                "Disk throttle ENGAGED: rejecting large writes"
            );
        } else if throttled(old) && !throttled(new) {
            self.metrics.disk_throttle_events.inc();
            tracing::info!(
                usage_percent = pct,
                available_bytes = available,
                "Disk throttle DISENGAGED"
            );
        }
        tracing::info!(
            from = old.as_str(),
            to = new.as_str(),
            usage_percent = pct,
            "disk state changed"
        );
    }

    pub fn state(&self) -> DiskState {
        self.inner.read().state
    }

    pub fn status(&self) -> DiskStatus {
        let inner = self.inner.read();
        DiskStatus {
            state: inner.state,
            usage_percent: inner.usage.usage_percent(),
            available_bytes: inner.usage.available_bytes,
            total_bytes: inner.usage.total_bytes,
            is_throttled: inner.state >= DiskState::Throttled,
            is_circuit_broken: inner.state == DiskState::CircuitBroken,
            last_error: inner.last_error.clone(),
        }
    }

    /// Admits or refuses a write of `bytes` (the real encoded size of what is stored). A delete
    /// (a record holding only tombstones) passes the throttle and the breaker while it is at
    /// most `throttle_max_write_bytes`, so deletes keep working on a full disk; a larger one
    /// (a tombstone carrying a huge context) is gated like any write.
    pub fn check_write(&self, bytes: u64, is_delete: bool) -> Result<(), Error> {
        if is_delete && bytes <= self.thresholds.throttle_max_write_bytes {
            return Ok(());
        }
        // Writing a lot since the last sample: look again before trusting the old reading.
        let pending = self
            .written_since_sample
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        let (state, usage) = {
            let inner = self.inner.read();
            (inner.state, inner.usage)
        };
        let resample_after = (usage.total_bytes / 200).clamp(1 << 20, 256 << 20);
        if pending > resample_after {
            self.sample_now();
        }
        let (state, usage) = if pending > resample_after {
            let inner = self.inner.read();
            (inner.state, inner.usage)
        } else {
            (state, usage)
        };
        match state {
            DiskState::CircuitBroken => {
                self.metrics.disk_full_rejections.inc();
                Err(Error::DiskFull(format!(
                    "disk usage {:.1}% is at or above the breaker threshold {}%",
                    usage.usage_percent(),
                    self.thresholds.breaker_percent
                )))
            }
            DiskState::Throttled if bytes > self.thresholds.throttle_max_write_bytes => {
                self.metrics.disk_throttle_rejections.inc();
                Err(Error::DiskThrottled(format!(
                    "disk usage {:.1}% is past the throttle threshold {}%; writes over {} bytes are refused (this one is {bytes})",
                    usage.usage_percent(),
                    self.thresholds.throttle_percent,
                    self.thresholds.throttle_max_write_bytes
                )))
            }
            _ if usage.total_bytes > 0 && bytes.saturating_mul(2) > usage.available_bytes => {
                self.metrics.disk_full_rejections.inc();
                Err(Error::DiskFull(format!(
                    "{bytes} bytes do not fit in the {} bytes left",
                    usage.available_bytes
                )))
            }
            _ => Ok(()),
        }
    }

    /// The sampling worker: one reading every `interval` until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        sup: pairdb_common::worker::Supervisor,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    // statvfs is a blocking syscall; keep it off the async workers.
                    let _ = sup.spawn_blocking("disk-sample", move || me.sample_now()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_steps() {
        let t = DiskThresholds::default();
        let mut s = DiskState::Normal;
        for (usage, want) in [
            (79.9, DiskState::Normal),
            (80.0, DiskState::Warning),
            (89.0, DiskState::Warning),
            (91.0, DiskState::Throttled),
            (89.8, DiskState::Throttled),
            (96.0, DiskState::CircuitBroken),
            (94.8, DiskState::CircuitBroken),
            (94.0, DiskState::Throttled),
            (85.0, DiskState::Warning),
            (50.0, DiskState::Normal),
        ] {
            s = t.next_state(s, usage);
            assert_eq!(s, want, "at {usage}%");
        }
    }
}
