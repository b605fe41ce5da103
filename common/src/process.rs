//! Process and build metrics both binaries export, read from Linux `/proc/self` at each
//! scrape (the names Prometheus client libraries use, so stock dashboards work):
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`,
//! `process_start_time_seconds`; `pairdb_build_info{version,commit,component}` (always 1);
//! and `connections_open{listener}`, the connections each port holds now.
//!
//! CPU time is in clock ticks of 100 per second (`USER_HZ`, fixed by the kernel ABI on every
//! architecture pairdb runs on). Off Linux every reading is simply absent.

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

const TICKS_PER_SEC: f64 = 100.0;

/// The commit the binary was built from: `PAIRDB_GIT_COMMIT` at build time (the Dockerfiles
/// set it), else `unknown`.
pub const BUILD_COMMIT: &str = match option_env!("PAIRDB_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// User + system CPU seconds of `pid` (this process when `None`); `None` when it cannot be
/// read (the process is gone, or this is not Linux).
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let f = stat_fields(pid)?;
    let tick = |i: usize| f.get(i)?.parse::<f64>().ok();
    Some((tick(11)? + tick(12)?) / TICKS_PER_SEC)
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, is index 0).
fn stat_fields(pid: Option<u32>) -> Option<Vec<String>> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// A `Key:   123 kB` line of `/proc/self/status`, in bytes when it has a `kB` unit.
fn status_value(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut it = line[key.len()..].trim_start_matches(':').split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    Some(if it.next() == Some("kB") { n * 1024 } else { n })
}

/// The soft `Max open files` limit from `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Unix seconds when this process started: boot time plus the start tick.
fn start_time_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let start: f64 = stat_fields(None)?.get(19)?.parse().ok()?;
    Some(btime + start / TICKS_PER_SEC)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
    pub component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `grpc` or `admin`.
    pub listener: &'static str,
}

/// Process, build and connection metrics of one process (register once per registry).
#[derive(Default)]
pub struct ProcessMetrics {
    cpu: Counter<f64, AtomicU64>,
    cpu_seen: Mutex<f64>,
    rss: Gauge,
    vsize: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge<f64, AtomicU64>,
    pub connections: Family<ListenerLabels, Gauge>,
}

impl ProcessMetrics {
    /// Registers every metric; `component` is `coordinator` or `storage-node`.
    pub fn register(&self, registry: &mut Registry, component: &'static str) {
        if let Some(t) = start_time_secs() {
            self.start_time.set(t);
        }
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of this process",
            self.cpu.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            self.rss.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory of this process",
            self.vsize.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The soft limit on open file descriptors",
            self.max_fds.clone(),
        );
        registry.register("process_threads", "OS threads", self.threads.clone());
        registry.register(
            "process_start_time_seconds",
            "Start time of this process (Unix seconds)",
            self.start_time.clone(),
        );
        registry.register(
            "pairdb_build",
            "Always 1; the labels name the build: version, commit, component",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
                component,
            }),
        );
        registry.register(
            "connections_open",
            "Connections each listener holds now (grpc, admin)",
            self.connections.clone(),
        );
    }

    /// Reads `/proc/self` into the gauges; call before encoding the registry.
    pub fn refresh(&self) {
        if let Some(now) = cpu_secs(None) {
            let mut seen = self.cpu_seen.lock();
            if now > *seen {
                self.cpu.inc_by(now - *seen);
                *seen = now;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(v) = status_value(&status, "VmRSS") {
                self.rss.set(v as i64);
            }
            if let Some(v) = status_value(&status, "VmSize") {
                self.vsize.set(v as i64);
            }
            if let Some(v) = status_value(&status, "Threads") {
                self.threads.set(v as i64);
            }
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(d.count() as i64);
        }
        if let Some(m) = max_fds() {
            self.max_fds.set(m as i64);
        }
    }

    /// The gauge a listener keeps its open connections in.
    pub fn listener(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_with_and_without_units() {
        let s = "Name:\tx\nVmSize:\t  1000 kB\nVmRSS:\t     12 kB\nThreads:\t7\n";
        assert_eq!(status_value(s, "VmRSS"), Some(12 * 1024));
        assert_eq!(status_value(s, "VmSize"), Some(1000 * 1024));
        assert_eq!(status_value(s, "Threads"), Some(7));
        assert_eq!(status_value(s, "VmSwap"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let m = ProcessMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r, "test");
        // Burn a little CPU so the counter is above zero.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        m.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let value = |name: &str| -> f64 {
            out.lines()
                .find(|l| l.starts_with(name) && !l.starts_with('#'))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_start_time_seconds") > 1.6e9);
        assert!(out.contains("pairdb_build_info{"), "{out}");
    }
}
