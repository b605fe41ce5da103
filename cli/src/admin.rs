//! Commands that talk to one process's admin HTTP port rather than to a coordinator:
//! `node maintenance on|off` (the storage node's Kubernetes preStop hook drains with it), the
//! node actions `node compact|scan|snapshot|cache|wal-cleanup` (`NodeAdminCmd`), and
//! `k8s node-zone` (a storage pod's init container reads its Kubernetes node's zone label).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pairdb_common::tls::admin_http::AdminTarget;
use serde_json::{Value, json};

/// How to reach a storage node's admin port. Defaults fit a command run inside the node's
/// own container (the preStop hook): the same environment variables the node reads.
#[derive(Debug, clap::Args)]
pub struct AdminConn {
    /// `http://host:port` or `https://host:port` of the node's admin port.
    #[arg(
        long,
        env = "PAIRDB_ADMIN_URL",
        default_value = "http://127.0.0.1:9101"
    )]
    pub admin_url: String,
    /// CA bundle for an https admin URL (the node's own `PAIRDB_TLS_CA`).
    #[arg(long, env = "PAIRDB_TLS_CA")]
    pub admin_ca: Option<PathBuf>,
    /// The admin token (or `--admin-token-file`).
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "PAIRDB_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminConn {
    pub fn target(&self) -> Result<AdminTarget> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("read admin token {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        Ok(AdminTarget::parse(
            &self.admin_url,
            self.admin_ca.clone(),
            token,
        ))
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct MaintenanceArgs {
    pub mode: OnOff,
    #[command(flatten)]
    pub conn: AdminConn,
    /// After turning maintenance on, wait this long before returning, so coordinators see
    /// the node refuse client requests (and hint its writes) before it stops.
    #[arg(long, default_value_t = 0)]
    pub settle_secs: u64,
}

/// Turns maintenance on or off and confirms it from `/health/ready`.
pub async fn maintenance(a: MaintenanceArgs, json_out: bool) -> Result<()> {
    let t = a.conn.target()?;
    let path = match a.mode {
        OnOff::On => "/api/v1/maintenance/enable",
        OnOff::Off => "/api/v1/maintenance/disable",
    };
    let (status, body) = t.post(path).await.map_err(anyhow::Error::msg)?;
    if status != 200 {
        bail!("{path}: HTTP {status}: {body}");
    }
    let started = Instant::now();
    let ready = loop {
        let (_, body) = t.get("/health/ready").await.map_err(anyhow::Error::msg)?;
        let r: Value = serde_json::from_str(&body).context("parse /health/ready")?;
        let in_maintenance = r["not_ready_reasons"]
            .as_array()
            .is_some_and(|w| w.iter().any(|x| x == "maintenance"));
        if in_maintenance == matches!(a.mode, OnOff::On) {
            break r;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("maintenance did not take effect: {r}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if matches!(a.mode, OnOff::On) && a.settle_secs > 0 {
        tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;
    }
    if json_out {
        println!(
            "{}",
            json!({"maintenance": matches!(a.mode, OnOff::On), "ready": ready})
        );
    } else {
        println!(
            "maintenance {} on {}; ready: {}",
            if matches!(a.mode, OnOff::On) {
                "on"
            } else {
                "off"
            },
            a.conn.admin_url,
            ready["ready"]
        );
    }
    Ok(())
}

/// Admin actions on one storage node (its admin port; the admin token when it has one).
#[derive(Debug, clap::Subcommand)]
pub enum NodeAdminCmd {
    /// Compact the node's data: flushes nothing by default; `--all-levels` rewrites every
    /// level (reclaims space behind deletes and dropped ranges); `--emergency` flushes first
    /// (the disk-space runbook's step). Follows the job to its end, printing its progress.
    Compact {
        #[arg(long)]
        all_levels: bool,
        #[arg(long, conflicts_with = "all_levels")]
        emergency: bool,
        /// Return once the job started instead of following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Verify the checksum of every record; exits 2 when any is corrupt (the corruption
    /// runbook's first step).
    Scan {
        /// Longest the scan may take.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// A RocksDB checkpoint under the node's data directory (`snapshots/`); see
    /// `pairdbctl backup` for a whole-cluster backup.
    Snapshot {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Resize the block cache (memory pressure): `--target-size-mb N`.
    Cache {
        #[arg(long)]
        target_size_mb: u64,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Flush memtables so RocksDB deletes the WAL segments they made obsolete.
    WalCleanup {
        #[command(flatten)]
        conn: AdminConn,
    },
}

/// Runs one admin action; a non-2xx answer is an error (exit 1), a verdict (corrupt records)
/// exits 2.
pub async fn node_admin(cmd: NodeAdminCmd, json_out: bool) -> Result<()> {
    let long = Duration::from_secs(600);
    match cmd {
        NodeAdminCmd::Compact {
            all_levels,
            emergency,
            no_wait,
            conn,
        } => {
            let t = conn.target()?;
            let path = if emergency {
                "/api/v1/compaction/emergency"
            } else if all_levels {
                "/api/v1/compaction/trigger-all-levels"
            } else {
                "/api/v1/compaction/trigger"
            };
            let started = call(&t, "POST", path, "{}", long).await?;
            let id = started["job_id"]
                .as_u64()
                .context("no job_id in the answer")?;
            if no_wait {
                return print_value(&started, json_out);
            }
            let job = follow_job(&t, id, json_out).await?;
            if let Some(e) = job["error"].as_str() {
                bail!("compaction job {id} failed: {e}");
            }
            print_value(&job, json_out)
        }
        NodeAdminCmd::Scan { timeout_secs, conn } => {
            let t = conn.target()?;
            let timeout = Duration::from_secs(timeout_secs.max(1));
            let r = call(&t, "POST", "/api/v1/integrity/scan-all", "{}", timeout).await?;
            print_value(&r, json_out)?;
            let corrupt = r["corrupt_count"].as_u64().unwrap_or(0);
            if corrupt > 0 || !r["engine_error"].is_null() {
                return Err(crate::client::Verdict {
                    message: format!(
                        "{corrupt} corrupt records (engine error: {})",
                        r["engine_error"]
                    ),
                    exit_code: 2,
                }
                .into());
            }
            Ok(())
        }
        NodeAdminCmd::Snapshot { conn } => {
            let r = call(&conn.target()?, "POST", "/api/v1/snapshot", "{}", long).await?;
            print_value(&r, json_out)
        }
        NodeAdminCmd::Cache {
            target_size_mb,
            conn,
        } => {
            let body = json!({ "target_size_mb": target_size_mb }).to_string();
            let r = call(&conn.target()?, "POST", "/api/v1/cache/reduce", &body, long).await?;
            print_value(&r, json_out)
        }
        NodeAdminCmd::WalCleanup { conn } => {
            let r = call(
                &conn.target()?,
                "POST",
                "/api/v1/commitlog/cleanup",
                "{}",
                long,
            )
            .await?;
            print_value(&r, json_out)
        }
    }
}

/// One admin request whose answer must be 2xx JSON.
async fn call(
    t: &AdminTarget,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Value> {
    let (status, text) = t
        .send(method, path, body, timeout)
        .await
        .map_err(anyhow::Error::msg)?;
    if !(200..300).contains(&status) {
        bail!("{method} {path}: HTTP {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text}"))
}

/// Polls `/api/v1/compaction/status` until job `id` finished; prints a line per change of
/// RocksDB's pending compaction bytes (to stderr with `--json`, so stdout stays one document).
async fn follow_job(t: &AdminTarget, id: u64, json_out: bool) -> Result<Value> {
    let mut last = None;
    loop {
        let st = call(t, "GET", "/api/v1/compaction/status", "{}", REQUEST).await?;
        let job = st["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["id"].as_u64() == Some(id)).cloned())
            .with_context(|| format!("job {id} is no longer listed (node restarted?)"))?;
        if !job["finished_at_ms"].is_null() {
            return Ok(job);
        }
        let line = format!(
            "compaction job {id}: running, {} compactions, {} bytes pending",
            st["running_compactions"], st["pending_compaction_bytes"]
        );
        if last.as_ref() != Some(&line) {
            if json_out {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            last = Some(line);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const REQUEST: Duration = pairdb_common::tls::admin_http::REQUEST_TIMEOUT;

fn print_value(v: &Value, json_out: bool) -> Result<()> {
    if json_out {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum K8sCmd {
    /// Write the `topology.kubernetes.io/zone` label of a Kubernetes node to a file (a
    /// storage pod's init container; the node reads the file as `PAIRDB_ZONE_FILE`). Uses
    /// the pod's service account (it needs `get` on nodes).
    NodeZone {
        /// The Kubernetes node (the downward API's `spec.nodeName`).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
        service_account: PathBuf,
    },
}

/// The zone label of a Node object as the API returns it ("" when it has none).
pub fn zone_of(node: &Value) -> String {
    node["metadata"]["labels"]["topology.kubernetes.io/zone"]
        .as_str()
        .or_else(|| node["metadata"]["labels"]["failure-domain.beta.kubernetes.io/zone"].as_str())
        .unwrap_or_default()
        .to_string()
}

pub async fn k8s(cmd: K8sCmd) -> Result<()> {
    let K8sCmd::NodeZone {
        node,
        out,
        service_account,
    } = cmd;
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context("not in a Kubernetes pod")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let token = std::fs::read_to_string(service_account.join("token"))
        .context("read the service account token")?;
    let t = AdminTarget {
        addr: format!("{host}:{port}"),
        ca: Some(service_account.join("ca.crt")),
        token: Some(token.trim().to_string()),
    };
    let (status, body) = t
        .get(&format!("/api/v1/nodes/{node}"))
        .await
        .map_err(anyhow::Error::msg)?;
    if status != 200 {
        bail!("GET node {node}: HTTP {status}: {body}");
    }
    let zone = zone_of(&serde_json::from_str(&body).context("parse the Node object")?);
    std::fs::write(&out, &zone).with_context(|| format!("write {}", out.display()))?;
    println!("node {node}: zone {zone:?} → {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_comes_from_the_standard_label() {
        let n = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "eu-1a"}}});
        assert_eq!(zone_of(&n), "eu-1a");
        let old = json!({"metadata": {"labels": {"failure-domain.beta.kubernetes.io/zone": "z"}}});
        assert_eq!(zone_of(&old), "z");
        assert_eq!(zone_of(&json!({"metadata": {}})), "");
    }
}
