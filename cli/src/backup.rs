//! `pairdbctl backup create|list|get|verify|delete` (through a coordinator) and
//! `backup restore` (offline, on the machine that holds the backup and the new data
//! directories: each node's part into its empty data directory, the metadata part into an
//! empty metadata store). See runbooks/backup.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pairdb_common::api::pb;
use pairdb_coordinator::backup::NodeAddress;
use serde_json::{Value, json};

use crate::client::describe;

type Client = pairdb_common::client::Coordinator;

#[derive(Debug, clap::Subcommand)]
pub enum BackupCmd {
    /// Back up the whole cluster: every storage node's checkpoint (under its backup_dir) and
    /// the metadata store's state (under the coordinator's), then a manifest. Follows it to
    /// the end unless `--no-wait`.
    Create {
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Complete backups, oldest first.
    List,
    /// One backup: completed, or running / failed on this coordinator.
    Get { backup_id: String },
    /// Re-read every file of every part against its checksum; exits 2 when anything is off.
    Verify { backup_id: String },
    /// Delete a backup everywhere.
    Delete { backup_id: String },
    /// Rebuild a cluster from a backup, before its processes start: each `--data-dir` node's
    /// part into that (empty) directory, and the metadata into the (empty) `--database-url`
    /// store, with `--address` for nodes that moved. Then start the nodes and coordinators
    /// and run `pairdbctl repair start --wait`.
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (the coordinators' and storage nodes' `backup_dir`).
    #[arg(long)]
    pub backup_dir: PathBuf,
    #[arg(long)]
    pub backup_id: String,
    /// The new cluster's (empty) metadata store; omit to restore node data only.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// `NODE=DIR`: restore NODE's part into DIR (repeat per node on this machine).
    #[arg(long = "data-dir", value_parser = parse_pair)]
    pub data_dirs: Vec<(String, String)>,
    /// `NODE=HOST:PORT[:ADMIN_PORT]`: where NODE listens in the new cluster (default: where
    /// it was).
    #[arg(long = "address", value_parser = parse_pair)]
    pub addresses: Vec<(String, String)>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn parse_address(s: &str) -> Result<NodeAddress> {
    let mut it = s.rsplitn(3, ':').collect::<Vec<_>>();
    it.reverse();
    let (host, port, admin) = match it.as_slice() {
        [h, p] => (*h, *p, "0"),
        [h, p, a] => (*h, *p, *a),
        _ => bail!("{s:?} is not HOST:PORT[:ADMIN_PORT]"),
    };
    Ok(NodeAddress {
        host: host.to_string(),
        port: port.parse().context("port")?,
        admin_port: admin.parse().context("admin port")?,
    })
}

fn info_json(b: &pb::BackupInfo) -> Value {
    json!({
        "backup_id": b.backup_id, "status": b.status, "error": b.error,
        "created_at_ms": b.created_at_ms, "completed_at_ms": b.completed_at_ms,
        "ring_version": b.ring_version, "tenants": b.tenants, "bytes": b.bytes,
        "coordinator_id": b.coordinator_id,
        "nodes": b.nodes.iter().map(|n| json!({"node_id": n.node_id, "address": n.address,
            "epoch": n.epoch, "files": n.files, "bytes": n.bytes, "linked": n.linked})).collect::<Vec<_>>(),
    })
}

fn print_info(b: &pb::BackupInfo, json_out: bool) {
    if json_out {
        println!("{}", info_json(b));
        return;
    }
    println!(
        "backup {}: {}{}",
        b.backup_id,
        b.status,
        if b.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", b.error)
        }
    );
    if b.status == "completed" {
        println!(
            "  {} nodes, {} tenants, {} bytes, ring version {}",
            b.nodes.len(),
            b.tenants,
            b.bytes,
            b.ring_version
        );
        for n in &b.nodes {
            println!(
                "  {:<16} {:<22} epoch {:<14} {:>5} files {:>12} bytes{}",
                n.node_id,
                n.address,
                n.epoch,
                n.files,
                n.bytes,
                if n.linked { " (linked)" } else { "" }
            );
        }
    }
}

pub async fn backup(
    dial: &pairdb_common::client::Dial,
    cmd: BackupCmd,
    json_out: bool,
) -> Result<()> {
    if let BackupCmd::Restore(a) = cmd {
        return restore(a, json_out).await;
    }
    let mut c: Client = dial.connect().await.map_err(anyhow::Error::msg)?;
    match cmd {
        BackupCmd::Create {
            no_wait,
            timeout_secs,
        } => {
            let b = c
                .create_backup(pb::CreateBackupRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            if no_wait {
                print_info(&b, json_out);
                return Ok(());
            }
            let started = Instant::now();
            let mut last = String::new();
            let b = loop {
                let got = c
                    .get_backup(pb::BackupRequest {
                        backup_id: b.backup_id.clone(),
                    })
                    .await
                    .map_err(describe)?
                    .into_inner();
                if got.status != "running" {
                    break got;
                }
                let line = format!(
                    "backup {}: running for {} s",
                    got.backup_id,
                    started.elapsed().as_secs()
                );
                if line != last && !json_out {
                    println!("{line}");
                    last = line;
                }
                if started.elapsed() > Duration::from_secs(timeout_secs) {
                    bail!(
                        "backup {} still running after {timeout_secs} s",
                        got.backup_id
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            print_info(&b, json_out);
            if b.status != "completed" {
                bail!("backup {} {}: {}", b.backup_id, b.status, b.error);
            }
        }
        BackupCmd::List => {
            let all = c
                .list_backups(pb::ListBackupsRequest {})
                .await
                .map_err(describe)?
                .into_inner()
                .backups;
            if json_out {
                println!("{}", Value::Array(all.iter().map(info_json).collect()));
            } else {
                println!(
                    "{:<24} {:>15} {:>6} {:>8} {:>14}",
                    "BACKUP", "CREATED (ms)", "NODES", "TENANTS", "BYTES"
                );
                for b in &all {
                    println!(
                        "{:<24} {:>15} {:>6} {:>8} {:>14}",
                        b.backup_id,
                        b.created_at_ms,
                        b.nodes.len(),
                        b.tenants,
                        b.bytes
                    );
                }
            }
        }
        BackupCmd::Get { backup_id } => {
            let b = c
                .get_backup(pb::BackupRequest { backup_id })
                .await
                .map_err(describe)?
                .into_inner();
            print_info(&b, json_out);
        }
        BackupCmd::Verify { backup_id } => {
            let r = c
                .verify_backup(pb::BackupRequest { backup_id })
                .await
                .map_err(describe)?
                .into_inner();
            let id = r
                .backup
                .as_ref()
                .map(|b| b.backup_id.clone())
                .unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"backup_id": id, "intact": r.problems.is_empty(), "problems": r.problems})
                );
            } else if r.problems.is_empty() {
                println!("backup {id}: intact (every file matches its checksum)");
            } else {
                println!("backup {id}: {} problems", r.problems.len());
                for p in &r.problems {
                    println!("  {p}");
                }
            }
            if !r.problems.is_empty() {
                return Err(crate::client::Verdict {
                    message: format!("backup {id} is damaged"),
                    exit_code: 2,
                }
                .into());
            }
        }
        BackupCmd::Delete { backup_id } => {
            let r = c
                .delete_backup(pb::BackupRequest { backup_id })
                .await
                .map_err(describe)?
                .into_inner();
            let id = r
                .backup
                .as_ref()
                .map(|b| b.backup_id.clone())
                .unwrap_or_default();
            if json_out {
                println!("{}", json!({"backup_id": id, "left": r.left}));
            } else {
                println!("backup {id} deleted");
                for l in &r.left {
                    println!("  part left behind: {l}");
                }
            }
            if !r.left.is_empty() {
                bail!("{} parts of backup {id} could not be deleted", r.left.len());
            }
        }
        BackupCmd::Restore(_) => unreachable!("handled above"),
    }
    Ok(())
}

async fn restore(a: RestoreArgs, json_out: bool) -> Result<()> {
    pairdb_common::backup::check_id(&a.backup_id)?;
    let manifest = pairdb_coordinator::backup::read_manifest(&a.backup_dir, &a.backup_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut restored = Vec::new();
    for (node, dir) in &a.data_dirs {
        if !manifest.nodes.iter().any(|n| &n.node_id == node) {
            bail!("backup {} has no part for {node}", a.backup_id);
        }
        // A one-shot command: the copy may block this runtime.
        let part = pairdb_storage_node::backup::restore(
            &a.backup_dir,
            &a.backup_id,
            node,
            std::path::Path::new(dir),
        )
        .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
        if !json_out {
            println!(
                "{node}: {} files, {} bytes restored into {dir}",
                part.files.len(),
                part.total_bytes()
            );
        }
        restored.push(json!({"node_id": node, "data_dir": dir, "files": part.files.len(), "bytes": part.total_bytes()}));
    }
    let mut metadata = false;
    if let Some(url) = &a.database_url {
        let mut addresses = HashMap::new();
        for (node, at) in &a.addresses {
            addresses.insert(node.clone(), parse_address(at)?);
        }
        let meta = pairdb_coordinator::meta::connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        meta.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        pairdb_coordinator::backup::restore_metadata(
            meta.as_ref(),
            &a.backup_dir,
            &a.backup_id,
            &addresses,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        metadata = true;
        if !json_out {
            println!(
                "metadata restored: {} nodes, {} tenants",
                manifest.nodes.len(),
                manifest.tenants
            );
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"backup_id": a.backup_id, "nodes": restored, "metadata": metadata})
        );
    } else {
        println!(
            "next: start the storage nodes (each takes a new epoch) and coordinators, then run `pairdbctl repair start --wait`"
        );
    }
    Ok(())
}
