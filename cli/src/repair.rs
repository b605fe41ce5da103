//! `pairdbctl repair start|status`: anti-entropy repair runs and their live progress (a
//! progress bar in a terminal, a line per change of progress otherwise, JSON with `--json`).

use std::time::Duration;

use anyhow::Result;
use pairdb_common::api::pb;
use serde_json::{Value, json};

use crate::client::describe;

type Client = pairdb_common::client::Coordinator;

#[derive(Debug, clap::Subcommand)]
pub enum RepairCmd {
    /// Start a repair of every tenant, or of one (`--tenant`). One repair runs at a time.
    Start {
        #[arg(long)]
        tenant: Option<String>,
        /// Only the token range `(start, end]` (decimal tokens).
        #[arg(long, num_args = 2, value_names = ["START", "END"])]
        range: Option<Vec<u64>>,
        /// Follow the repair until it ends; fails unless it completes.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 86_400)]
        timeout_secs: u64,
    },
    /// Status and progress of a repair (default: the newest).
    Status {
        repair_id: Option<String>,
        /// Follow it until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 86_400)]
        timeout_secs: u64,
    },
}

pub async fn repair(c: &mut Client, cmd: RepairCmd, json_out: bool) -> Result<()> {
    match cmd {
        RepairCmd::Start {
            tenant,
            range,
            wait,
            timeout_secs,
        } => {
            let r = c
                .start_repair(pb::StartRepairRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    range: range.map(|r| pb::TokenRange {
                        start: r[0],
                        end: r[1],
                    }),
                })
                .await
                .map_err(describe)?
                .into_inner();
            print(&r, json_out);
            if wait {
                follow(c, &r.repair_id, Duration::from_secs(timeout_secs), json_out).await?;
            }
            Ok(())
        }
        RepairCmd::Status {
            repair_id,
            watch,
            timeout_secs,
        } => {
            let id = repair_id.unwrap_or_default();
            let r = status(c, &id).await?;
            if watch {
                follow(c, &r.repair_id, Duration::from_secs(timeout_secs), json_out).await
            } else {
                print(&r, json_out);
                Ok(())
            }
        }
    }
}

async fn status(c: &mut Client, repair_id: &str) -> Result<pb::RepairStatus> {
    Ok(c.get_repair_status(pb::GetRepairStatusRequest {
        repair_id: repair_id.to_string(),
    })
    .await
    .map_err(describe)?
    .into_inner())
}

fn progress(r: &pb::RepairStatus) -> Value {
    serde_json::from_str(&r.progress_json).unwrap_or(Value::Null)
}

fn to_json(r: &pb::RepairStatus) -> Value {
    json!({
        "repair_id": r.repair_id, "status": r.status, "progress": progress(r),
        "started_at_ms": r.started_at_ms, "completed_at_ms": r.completed_at_ms, "error": r.error,
        "driver": r.driver,
    })
}

/// One line: ranges, differing keys, what moved, corruption, ETA.
fn summary(r: &pb::RepairStatus) -> String {
    let p = progress(r);
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let mut s = format!(
        "{}/{} ranges ({}%), {} keys differing, {} keys / {:.1} MiB moved, {:.1} MiB of digests",
        n("ranges_done") + n("ranges_failed"),
        n("ranges_total"),
        p["percent"].as_f64().unwrap_or(0.0),
        n("keys_differing"),
        n("keys_transferred"),
        n("bytes_transferred") as f64 / (1 << 20) as f64,
        n("digest_bytes") as f64 / (1 << 20) as f64,
    );
    if n("corrupt") > 0 {
        s.push_str(&format!(
            ", {} corrupt ({} recovered, {} lost)",
            n("corrupt"),
            n("recovered"),
            n("lost_total")
        ));
    }
    if n("ranges_failed") > 0 {
        s.push_str(&format!(", {} failed", n("ranges_failed")));
    }
    if n("ranges_unconverged") > 0 {
        s.push_str(&format!(", {} unconverged", n("ranges_unconverged")));
    }
    if let Some(eta) = p["eta_secs"].as_u64() {
        s.push_str(&format!(", eta {eta}s"));
    }
    s
}

fn print(r: &pb::RepairStatus, json_out: bool) {
    if json_out {
        println!("{}", to_json(r));
        return;
    }
    println!(
        "{:<24} {:<10} {:<20} PROGRESS",
        "REPAIR", "STATUS", "DRIVER"
    );
    println!(
        "{:<24} {:<10} {:<20} {}",
        r.repair_id,
        r.status,
        r.driver,
        summary(r)
    );
    if !r.error.is_empty() {
        println!("error: {}", r.error);
    }
    if let Some(lost) = progress(r)["lost"].as_array().filter(|l| !l.is_empty()) {
        println!("lost records (corrupt on every replica):");
        for k in lost {
            println!("  {}", k.as_str().unwrap_or_default());
        }
    }
}

/// Follows a repair until it ends (`crate::follow`). Fails unless it completes.
async fn follow(c: &mut Client, repair_id: &str, timeout: Duration, json_out: bool) -> Result<()> {
    crate::follow::follow("repair", repair_id, timeout, json_out, || {
        let mut c = c.clone();
        async move {
            let r = status(&mut c, repair_id).await?;
            let p = progress(&r);
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            Ok(crate::follow::Seen {
                status: r.status.clone(),
                ranges_done: n("ranges_done") + n("ranges_failed"),
                ranges_total: n("ranges_total"),
                summary: summary(&r),
                error: r.error.clone(),
                json: to_json(&r),
            })
        }
    })
    .await
}
