//! CPU time of processes, for the benchmarks' "CPU microseconds per operation per process"
//! figures (they hold across machines; throughput does not), read by
//! [`pairdb_common::process::cpu_secs`] from Linux `/proc/<pid>/stat`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

pub use pairdb_common::process::cpu_secs;

/// Named processes whose CPU a benchmark step reports; this process is always one of them,
/// as `client`.
#[derive(Debug, Clone, Default)]
pub struct Watched(Vec<(String, Option<u32>)>);

impl Watched {
    /// From `name=pid` arguments.
    pub fn parse(args: &[String]) -> Result<Watched> {
        let mut w = vec![("client".to_string(), None)];
        for a in args {
            let (name, pid) = a
                .split_once('=')
                .with_context(|| format!("--cpu-pid {a}: expected name=pid"))?;
            let pid: u32 = pid
                .parse()
                .with_context(|| format!("--cpu-pid {a}: {pid} is not a process id"))?;
            anyhow::ensure!(
                cpu_secs(Some(pid)).is_some(),
                "--cpu-pid {a}: cannot read /proc/{pid}/stat"
            );
            w.push((name.to_string(), Some(pid)));
        }
        Ok(Watched(w))
    }

    /// A reading of every watched process.
    pub fn sample(&self) -> Sample {
        Sample(
            self.0
                .iter()
                .map(|(n, p)| (n.clone(), cpu_secs(*p)))
                .collect(),
        )
    }
}

/// CPU seconds per watched process at one moment.
pub struct Sample(Vec<(String, Option<f64>)>);

impl Sample {
    /// CPU microseconds per operation of each process between `self` and `later`, over `ops`
    /// operations; a process that could not be read at either end is left out.
    pub fn per_op_us(&self, later: &Sample, ops: u64) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .zip(&later.0)
            .filter_map(|((name, a), (_, b))| {
                let spent = (*b)? - (*a)?;
                Some((name.clone(), spent * 1e6 / ops.max(1) as f64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work_and_bad_pids_are_refused() {
        let before = cpu_secs(None).expect("this process's stat");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_secs(None).unwrap();
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(Watched::parse(&["x".into()]).is_err());
        assert!(Watched::parse(&["x=notapid".into()]).is_err());
        assert!(Watched::parse(&[format!("me={}", std::process::id())]).is_ok());
    }

    #[test]
    fn per_op_figures_skip_unreadable_processes() {
        let a = Sample(vec![("c".into(), Some(1.0)), ("gone".into(), None)]);
        let b = Sample(vec![("c".into(), Some(1.5)), ("gone".into(), Some(9.0))]);
        let m = a.per_op_us(&b, 1000);
        assert_eq!(m.len(), 1);
        assert!((m["c"] - 500.0).abs() < 1e-9);
    }
}
