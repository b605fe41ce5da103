//! `pairdbctl node list|status|add|remove|replace` and `changes list|watch|abort`: topology
//! changes and their live progress (a progress bar in a terminal, plain lines otherwise,
//! JSON lines with `--json`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pairdb_common::api::pb;
use serde_json::{Value, json};

use crate::client::{describe, print_nodes};

type Client = pairdb_common::client::Coordinator;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCmd {
    /// Every storage node with state and status.
    List,
    /// Maintenance (drain) mode of one node, over its admin port: client requests are refused
    /// so coordinators route around it; readiness turns 503. The storage pod's preStop hook.
    Maintenance(crate::admin::MaintenanceArgs),
    Status {
        node_id: String,
    },
    /// Drain a node for maintenance: every coordinator stops sending it client reads and
    /// writes (its writes become hints) and holds it in maintenance mode. Refused when some
    /// tenant's range would fall below its write quorum, unless `--force`.
    Drain {
        node_id: String,
        #[arg(long)]
        force: bool,
    },
    /// End a drain: the node serves clients again and its hints replay. Fails if the node
    /// did not leave maintenance mode.
    Undrain {
        node_id: String,
    },
    /// Admin actions on one storage node, over its admin port.
    #[command(flatten)]
    Admin(crate::admin::NodeAdminCmd),
    /// Add a storage node: it bootstraps (streams the ranges it gains) unless the cluster is
    /// empty or `--initial-member` forms a new cluster.
    Add {
        #[command(flatten)]
        node: NewNode,
        #[arg(long)]
        initial_member: bool,
        /// Follow the bootstrap until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Decommission a node: it streams its ranges to the nodes inheriting them, then leaves.
    Remove {
        node_id: String,
        /// The node is dead: source its ranges from surviving replicas.
        #[arg(long)]
        force: bool,
        /// Required with --force: data only the dead node held may be lost.
        #[arg(long)]
        acknowledge_data_loss: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Replace a node by a new one: the new node streams from the survivors, then the old one
    /// is removed.
    Replace {
        old_node_id: String,
        #[command(flatten)]
        new: NewNode,
        #[arg(long)]
        wait: bool,
    },
}

/// A node to register (add, or the replacement in a replace).
#[derive(Debug, clap::Args)]
pub struct NewNode {
    node_id: String,
    /// host:port of the node's gRPC address.
    address: String,
    #[arg(long, default_value_t = 0)]
    admin_port: u32,
    #[arg(long, default_value = "")]
    zone: String,
    #[arg(long, default_value_t = 0)]
    virtual_nodes: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum ChangesCmd {
    /// Active changes with progress (`--all`: finished ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Follow a change until it finishes; fails if it ends other than completed.
    Watch {
        change_id: String,
        #[arg(long, default_value_t = 86_400)]
        timeout_secs: u64,
    },
    /// Roll an active change back (the ring returns to its previous state).
    Abort { change_id: String },
}

fn add_request(n: NewNode, initial_member: bool) -> Result<pb::AddStorageNodeRequest> {
    let (host, port) = n
        .address
        .rsplit_once(':')
        .context("address must be host:port")?;
    Ok(pb::AddStorageNodeRequest {
        node_id: n.node_id,
        host: host.into(),
        port: port.parse().context("port must be a number")?,
        virtual_nodes: n.virtual_nodes,
        zone: n.zone,
        admin_port: n.admin_port,
        initial_member,
    })
}

pub async fn node(c: &mut Client, cmd: NodeCmd, json_out: bool) -> Result<()> {
    let (resp, wait) = match cmd {
        NodeCmd::Maintenance(a) => return crate::admin::maintenance(a, json_out).await,
        NodeCmd::Admin(a) => return crate::admin::node_admin(a, json_out).await,
        NodeCmd::Drain { node_id, force } => {
            let n = c
                .drain_storage_node(pb::DrainStorageNodeRequest { node_id, force })
                .await
                .map_err(describe)?
                .into_inner();
            print_drain(&n, json_out);
            if !n.maintenance {
                eprintln!(
                    "warning: {} did not confirm maintenance mode (coordinators route around it \
                     anyway; its heartbeat is asked again)",
                    n.node_id
                );
            }
            return Ok(());
        }
        NodeCmd::Undrain { node_id } => {
            let n = c
                .undrain_storage_node(pb::UndrainStorageNodeRequest { node_id })
                .await
                .map_err(describe)?
                .into_inner();
            print_drain(&n, json_out);
            if n.maintenance {
                bail!(
                    "{} is undrained but still in maintenance mode: check `pairdbctl node \
                     maintenance off` on it",
                    n.node_id
                );
            }
            return Ok(());
        }
        NodeCmd::List => {
            let ns = c
                .list_storage_nodes(pb::ListStorageNodesRequest {})
                .await
                .map_err(describe)?
                .into_inner()
                .nodes;
            print_nodes(&ns, json_out);
            return Ok(());
        }
        NodeCmd::Status { node_id } => {
            let n = c
                .get_storage_node_status(pb::GetStorageNodeStatusRequest {
                    node_id: node_id.clone(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            let changes = c
                .list_pending_changes(pb::ListPendingChangesRequest {
                    include_finished: false,
                })
                .await
                .map_err(describe)?
                .into_inner()
                .changes;
            let mine: Vec<pb::PendingChange> = changes
                .into_iter()
                .filter(|ch| ch.node_id == node_id)
                .collect();
            // One JSON document: the node and its active changes.
            if json_out {
                println!(
                    "{}",
                    serde_json::json!({
                        "node": crate::client::node_json(&n),
                        "changes": mine.iter().map(change_json).collect::<Vec<_>>(),
                    })
                );
                return Ok(());
            }
            print_nodes(&[n], false);
            if !mine.is_empty() {
                print_changes(&mine, false);
            }
            return Ok(());
        }
        NodeCmd::Add {
            node,
            initial_member,
            wait,
        } => {
            let req = add_request(node, initial_member)?;
            (
                c.add_storage_node(req)
                    .await
                    .map_err(describe)?
                    .into_inner(),
                wait,
            )
        }
        NodeCmd::Remove {
            node_id,
            force,
            acknowledge_data_loss,
            wait,
        } => (
            c.remove_storage_node(pb::RemoveStorageNodeRequest {
                node_id,
                force,
                acknowledge_data_loss,
            })
            .await
            .map_err(describe)?
            .into_inner(),
            wait,
        ),
        NodeCmd::Replace {
            old_node_id,
            new,
            wait,
        } => {
            let new = add_request(new, false)?;
            (
                c.replace_storage_node(pb::ReplaceStorageNodeRequest {
                    old_node_id,
                    new_node: Some(new),
                })
                .await
                .map_err(describe)?
                .into_inner(),
                wait,
            )
        }
    };
    print_nodes(&resp.node.into_iter().collect::<Vec<_>>(), json_out);
    if let Some(ch) = resp.change {
        print_changes(std::slice::from_ref(&ch), json_out);
        if wait {
            watch(c, &ch.change_id, Duration::from_secs(86_400), json_out).await?;
        }
    }
    Ok(())
}

pub async fn changes(c: &mut Client, cmd: ChangesCmd, json_out: bool) -> Result<()> {
    match cmd {
        ChangesCmd::List { all } => {
            let cs = c
                .list_pending_changes(pb::ListPendingChangesRequest {
                    include_finished: all,
                })
                .await
                .map_err(describe)?
                .into_inner()
                .changes;
            print_changes(&cs, json_out);
            Ok(())
        }
        ChangesCmd::Watch {
            change_id,
            timeout_secs,
        } => watch(c, &change_id, Duration::from_secs(timeout_secs), json_out).await,
        ChangesCmd::Abort { change_id } => {
            let ch = c
                .abort_change(pb::AbortChangeRequest { change_id })
                .await
                .map_err(describe)?
                .into_inner();
            print_changes(&[ch], json_out);
            Ok(())
        }
    }
}

fn progress(ch: &pb::PendingChange) -> Value {
    serde_json::from_str(&ch.progress_json).unwrap_or(Value::Null)
}

fn change_json(ch: &pb::PendingChange) -> Value {
    json!({
        "change_id": ch.change_id, "type": ch.r#type, "node_id": ch.node_id, "status": ch.status,
        "progress": progress(ch), "lease_owner": ch.lease_owner,
        "lease_expires_at_ms": ch.lease_expires_at_ms, "start_time_ms": ch.start_time_ms,
        "completed_at_ms": ch.completed_at_ms, "error": ch.error,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// One line of progress: phase, ranges, keys, bytes, ETA, and why it waits.
fn summary(ch: &pb::PendingChange) -> String {
    let p = progress(ch);
    let mut s = format!(
        "{} {}/{} ranges ({}%), {} keys, {}",
        p["phase"].as_str().unwrap_or(""),
        p["ranges_done"].as_u64().unwrap_or(0),
        p["ranges_total"].as_u64().unwrap_or(0),
        p["percent"].as_f64().unwrap_or(0.0),
        p["keys"].as_u64().unwrap_or(0),
        mib(p["bytes"].as_u64().unwrap_or(0)),
    );
    if let Some(eta) = p["eta_secs"].as_u64() {
        s.push_str(&format!(", eta {eta}s"));
    }
    if let Some(w) = p["waiting"].as_str() {
        s.push_str(&format!(" — {w}"));
    }
    s
}

pub fn print_changes(cs: &[pb::PendingChange], json_out: bool) {
    if json_out {
        println!("{}", Value::Array(cs.iter().map(change_json).collect()));
        return;
    }
    println!(
        "{:<40} {:<12} {:<14} {:<10} {:<20} PROGRESS",
        "CHANGE", "TYPE", "NODE", "STATUS", "DRIVER"
    );
    for ch in cs {
        println!(
            "{:<40} {:<12} {:<14} {:<10} {:<20} {}{}",
            ch.change_id,
            ch.r#type,
            ch.node_id,
            ch.status,
            ch.lease_owner,
            summary(ch),
            if ch.error.is_empty() {
                String::new()
            } else {
                format!(" [error: {}]", ch.error)
            }
        );
    }
}

/// Follows a change until it ends (`crate::follow`). Fails unless it completes.
pub async fn watch(
    c: &mut Client,
    change_id: &str,
    timeout: Duration,
    json_out: bool,
) -> Result<()> {
    crate::follow::follow("change", change_id, timeout, json_out, || {
        let mut c = c.clone();
        async move {
            let cs = c
                .list_pending_changes(pb::ListPendingChangesRequest {
                    include_finished: true,
                })
                .await
                .map_err(describe)?
                .into_inner()
                .changes;
            let Some(ch) = cs.into_iter().find(|ch| ch.change_id == change_id) else {
                bail!("no topology change {change_id}");
            };
            let p = progress(&ch);
            Ok(crate::follow::Seen {
                status: ch.status.clone(),
                ranges_done: p["ranges_done"].as_u64().unwrap_or(0),
                ranges_total: p["ranges_total"].as_u64().unwrap_or(0),
                summary: summary(&ch),
                error: ch.error.clone(),
                json: change_json(&ch),
            })
        }
    })
    .await
}

fn print_drain(n: &pb::StorageNode, json_out: bool) {
    if json_out {
        println!("{}", crate::client::node_json(n));
    } else {
        println!(
            "{}: serving {}, maintenance {}",
            n.node_id,
            crate::client::serving(n),
            if n.maintenance { "on" } else { "off" }
        );
    }
}
