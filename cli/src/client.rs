//! Client commands of `pairdbctl`, all through `pairdb.CoordinatorService`: data (`put`, `get`,
//! `delete`), tenants, cluster and node views. Human tables by default, `--json` for machines.
//! Keys and values are taken as UTF-8 text; contexts are printed and accepted as base64.

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pairdb_common::api::pb;
use serde_json::{Value, json};

fn consistency(s: &Option<String>) -> Result<i32> {
    Ok(match s.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None => 0,
        Some("ONE") => pb::Consistency::One as i32,
        Some("QUORUM") => pb::Consistency::Quorum as i32,
        Some("ALL") => pb::Consistency::All as i32,
        Some("ANY") => pb::Consistency::Any as i32,
        Some(other) => anyhow::bail!("unknown consistency {other}: use ONE, QUORUM, ALL or ANY"),
    })
}

fn ctx(s: &Option<String>) -> Result<Vec<u8>> {
    match s {
        None => Ok(vec![]),
        Some(t) => B64
            .decode(t)
            .context("--context must be the base64 token a get printed"),
    }
}

/// A failed RPC as a one-line error naming the pairdb code.
pub fn describe(status: tonic::Status) -> anyhow::Error {
    let e = pairdb_common::Error::from_status(&status);
    anyhow::anyhow!(
        "{} ({} {}): {}",
        status.code(),
        e.code().number(),
        e.code().name(),
        status.message()
    )
}

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    pub tenant: String,
    pub key: String,
    pub value: String,
    /// Context token from a previous get (base64); without it the write becomes a sibling.
    #[arg(long)]
    pub context: Option<String>,
    #[arg(long)]
    pub consistency: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub ttl_seconds: u32,
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub tenant: String,
    pub key: String,
    #[arg(long)]
    pub consistency: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub tenant: String,
    pub key: String,
    #[arg(long)]
    pub context: Option<String>,
    #[arg(long)]
    pub consistency: Option<String>,
}

pub async fn put(
    c: &mut pairdb_common::client::Coordinator,
    a: PutArgs,
    json_out: bool,
) -> Result<()> {
    let r = c
        .write(pb::WriteRequest {
            tenant_id: a.tenant,
            key: a.key.into_bytes(),
            value: a.value.into_bytes(),
            context: ctx(&a.context)?,
            consistency: consistency(&a.consistency)?,
            ttl_seconds: a.ttl_seconds,
            idempotency_key: a.idempotency_key,
            timeout_ms: 0,
        })
        .await
        .map_err(describe)?
        .into_inner();
    let dot = r.dot.unwrap_or_default();
    if json_out {
        println!(
            "{}",
            json!({"context": B64.encode(&r.context), "replicas_acked": r.replicas_acked, "deduplicated": r.deduplicated, "dot": {"node_id": dot.node_id, "epoch": dot.epoch, "counter": dot.counter}})
        );
    } else {
        println!(
            "ok: acked by {} replicas, version {}@{}:{}",
            r.replicas_acked, dot.node_id, dot.epoch, dot.counter
        );
        println!("context: {}", B64.encode(&r.context));
    }
    Ok(())
}

pub async fn get(
    c: &mut pairdb_common::client::Coordinator,
    a: GetArgs,
    json_out: bool,
) -> Result<()> {
    let r = c
        .read(pb::ReadRequest {
            tenant_id: a.tenant,
            key: a.key.into_bytes(),
            consistency: consistency(&a.consistency)?,
            timeout_ms: 0,
        })
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            use tonic_types::StatusExt;
            let context = s
                .get_details_error_info()
                .and_then(|i| i.metadata.get("context").cloned())
                .unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"found": false, "error": s.message(), "context": context})
                );
            } else {
                println!("not found: {}", s.message());
                if !context.is_empty() {
                    println!("context: {context}");
                }
            }
            std::process::exit(1);
        }
        Err(s) => return Err(describe(s)),
    };
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).unwrap_or_else(|_| format!("base64:{}", B64.encode(b)))
    };
    if json_out {
        let sibs: Vec<Value> = r
            .siblings
            .iter()
            .map(|s| {
                let d = s.dot.clone().unwrap_or_default();
                json!({"value": text(&s.value), "written_at_ms": s.written_at_ms, "dot": format!("{}@{}:{}", d.node_id, d.epoch, d.counter)})
            })
            .collect();
        println!(
            "{}",
            json!({"found": true, "value": text(&r.value), "siblings": sibs, "context": B64.encode(&r.context), "replicas_responded": r.replicas_responded})
        );
    } else {
        println!("value: {}", text(&r.value));
        if r.siblings.len() > 1 {
            println!(
                "{} siblings (concurrent writes; put with this context to resolve):",
                r.siblings.len()
            );
        }
        for s in &r.siblings {
            let d = s.dot.clone().unwrap_or_default();
            println!(
                "  - {:<30} written_at_ms={} dot={}@{}:{}",
                text(&s.value),
                s.written_at_ms,
                d.node_id,
                d.epoch,
                d.counter
            );
        }
        println!("context: {}", B64.encode(&r.context));
    }
    Ok(())
}

pub async fn delete(
    c: &mut pairdb_common::client::Coordinator,
    a: DeleteArgs,
    json_out: bool,
) -> Result<()> {
    let r = c
        .delete(pb::DeleteRequest {
            tenant_id: a.tenant,
            key: a.key.into_bytes(),
            context: ctx(&a.context)?,
            consistency: consistency(&a.consistency)?,
            timeout_ms: 0,
        })
        .await
        .map_err(describe)?
        .into_inner();
    if json_out {
        println!(
            "{}",
            json!({"deleted": true, "replicas_acked": r.replicas_acked, "context": B64.encode(&r.context)})
        );
    } else {
        println!("deleted (acked by {} replicas)", r.replicas_acked);
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (unset options take the defaults: RF 3, QUORUM, siblings, 1 MiB).
    Create(TenantArgs),
    Get {
        tenant: String,
    },
    List,
    /// Change a tenant's settings (only the options given).
    Update(TenantArgs),
}

#[derive(Debug, clap::Args)]
pub struct TenantArgs {
    pub tenant: String,
    #[arg(long)]
    pub replication_factor: Option<u32>,
    #[arg(long)]
    pub read_consistency: Option<String>,
    #[arg(long)]
    pub write_consistency: Option<String>,
    /// siblings or lww
    #[arg(long)]
    pub conflict_policy: Option<String>,
    #[arg(long)]
    pub max_value_bytes: Option<u32>,
    /// Cap on a key's encoded state (siblings, tombstones, context) in bytes.
    #[arg(long)]
    pub max_state_bytes: Option<u32>,
    #[arg(long)]
    pub sibling_max: Option<u32>,
    #[arg(long)]
    pub sibling_warn: Option<u32>,
    /// Client requests per second on each coordinator (0 keeps the current value).
    #[arg(long)]
    pub rate_limit_rps: Option<u32>,
}

fn tenant_msg(a: &TenantArgs) -> Result<pb::Tenant> {
    Ok(pb::Tenant {
        tenant_id: a.tenant.clone(),
        replication_factor: a.replication_factor.unwrap_or(0),
        read_consistency: consistency(&a.read_consistency)?,
        write_consistency: consistency(&a.write_consistency)?,
        conflict_policy: match a.conflict_policy.as_deref() {
            None => 0,
            Some("siblings") => pb::ConflictPolicy::Siblings as i32,
            Some("lww") => pb::ConflictPolicy::Lww as i32,
            Some(o) => anyhow::bail!("unknown conflict policy {o}: use siblings or lww"),
        },
        max_value_bytes: a.max_value_bytes.unwrap_or(0),
        max_state_bytes: a.max_state_bytes.unwrap_or(0),
        sibling_max: a.sibling_max.unwrap_or(0),
        sibling_warn: a.sibling_warn.unwrap_or(0),
        rate_limit_rps: a.rate_limit_rps.unwrap_or(0),
        ..Default::default()
    })
}

fn tenant_json(t: &pb::Tenant) -> Value {
    let level = |c: i32| {
        pb::Consistency::try_from(c)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_default()
    };
    json!({
        "tenant_id": t.tenant_id, "replication_factor": t.replication_factor,
        "read_consistency": level(t.read_consistency), "write_consistency": level(t.write_consistency),
        "conflict_policy": pb::ConflictPolicy::try_from(t.conflict_policy).map(|p| p.as_str_name().to_lowercase()).unwrap_or_default(),
        "max_value_bytes": t.max_value_bytes, "max_state_bytes": t.max_state_bytes,
        "sibling_max": t.sibling_max, "sibling_warn": t.sibling_warn,
        "rate_limit_rps": t.rate_limit_rps,
        "target_replication_factor": t.target_replication_factor,
    })
}

fn print_tenants(ts: &[pb::Tenant], json_out: bool) {
    if json_out {
        println!("{}", Value::Array(ts.iter().map(tenant_json).collect()));
        return;
    }
    println!(
        "{:<24} {:>6} {:<8} {:<8} {:<9} {:>10} {:>10} {:>8}",
        "TENANT", "RF", "READ", "WRITE", "POLICY", "MAX_VALUE", "MAX_STATE", "RPS"
    );
    for t in ts {
        let j = tenant_json(t);
        // "3→5" while a replication-factor change is in progress.
        let rf = match t.target_replication_factor {
            0 => t.replication_factor.to_string(),
            to => format!("{}→{to}", t.replication_factor),
        };
        println!(
            "{:<24} {:>6} {:<8} {:<8} {:<9} {:>10} {:>10} {:>8}",
            t.tenant_id,
            rf,
            j["read_consistency"].as_str().unwrap_or(""),
            j["write_consistency"].as_str().unwrap_or(""),
            j["conflict_policy"].as_str().unwrap_or(""),
            t.max_value_bytes,
            t.max_state_bytes,
            t.rate_limit_rps
        );
    }
}

pub async fn tenant(
    c: &mut pairdb_common::client::Coordinator,
    cmd: TenantCmd,
    json_out: bool,
) -> Result<()> {
    let ts = match cmd {
        TenantCmd::Create(a) => vec![
            c.create_tenant(pb::CreateTenantRequest {
                tenant: Some(tenant_msg(&a)?),
            })
            .await
            .map_err(describe)?
            .into_inner(),
        ],
        TenantCmd::Update(a) => vec![
            c.update_tenant(pb::UpdateTenantRequest {
                tenant: Some(tenant_msg(&a)?),
            })
            .await
            .map_err(describe)?
            .into_inner(),
        ],
        TenantCmd::Get { tenant } => vec![
            c.get_tenant(pb::GetTenantRequest { tenant_id: tenant })
                .await
                .map_err(describe)?
                .into_inner(),
        ],
        TenantCmd::List => {
            c.list_tenants(pb::ListTenantsRequest {})
                .await
                .map_err(describe)?
                .into_inner()
                .tenants
        }
    };
    print_tenants(&ts, json_out);
    Ok(())
}

pub fn node_json(n: &pb::StorageNode) -> Value {
    json!({
        "node_id": n.node_id, "host": n.host, "port": n.port, "admin_port": n.admin_port, "zone": n.zone,
        "virtual_nodes": n.virtual_nodes,
        "state": pb::NodeState::try_from(n.state).map(|s| s.as_str_name()).unwrap_or("?"),
        "status": pb::NodeStatus::try_from(n.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "last_seen_ms": n.last_seen_ms,
        "drained_at_ms": n.drained_at_ms,
        "maintenance": n.maintenance,
        "serving": serving(n),
    })
}

/// Whether the node takes client requests: `yes`, `drained` (an operator drained it) or
/// `maintenance` (it said so in its last heartbeat).
pub fn serving(n: &pb::StorageNode) -> &'static str {
    if n.drained_at_ms != 0 {
        "drained"
    } else if n.maintenance {
        "maintenance"
    } else {
        "yes"
    }
}

pub fn print_nodes(ns: &[pb::StorageNode], json_out: bool) {
    if json_out {
        println!("{}", Value::Array(ns.iter().map(node_json).collect()));
        return;
    }
    println!(
        "{:<16} {:<22} {:<14} {:<8} {:<12} {:<8} {:>6}",
        "NODE", "ADDRESS", "STATE", "STATUS", "SERVING", "ZONE", "VNODES"
    );
    for n in ns {
        let j = node_json(n);
        println!(
            "{:<16} {:<22} {:<14} {:<8} {:<12} {:<8} {:>6}",
            n.node_id,
            format!("{}:{}", n.host, n.port),
            j["state"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            serving(n),
            n.zone,
            n.virtual_nodes
        );
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum HintsCmd {
    /// Pending hints per target node (the whole cluster, from the metadata store) and this
    /// coordinator's stored/replayed/failed counters.
    Stats,
}

pub async fn hints(
    c: &mut pairdb_common::client::Coordinator,
    cmd: HintsCmd,
    json_out: bool,
) -> Result<()> {
    match cmd {
        HintsCmd::Stats => {
            let h = c
                .get_hint_stats(pb::GetHintStatsRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            let now = pairdb_common::now_ms();
            let age = |t: &pb::HintTargetStats| now.saturating_sub(t.oldest_created_at_ms) / 1000;
            if json_out {
                let targets: Vec<Value> = h
                    .targets
                    .iter()
                    .map(|t| {
                        json!({"node_id": t.node_id, "pending": t.pending, "bytes": t.bytes,
                               "oldest_created_at_ms": t.oldest_created_at_ms,
                               "oldest_age_secs": age(t)})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"pending": h.pending, "stored_total": h.stored_total,
                           "replayed_total": h.replayed_total, "failed_total": h.failed_total,
                           "targets": targets})
                );
                return Ok(());
            }
            println!(
                "pending {} (this coordinator: stored {}, replayed {}, failed {})",
                h.pending, h.stored_total, h.replayed_total, h.failed_total
            );
            if !h.targets.is_empty() {
                println!(
                    "{:<16} {:>10} {:>14} {:>12}",
                    "TARGET", "PENDING", "BYTES", "OLDEST (s)"
                );
                for t in &h.targets {
                    println!(
                        "{:<16} {:>10} {:>14} {:>12}",
                        t.node_id,
                        t.pending,
                        t.bytes,
                        age(t)
                    );
                }
            }
            Ok(())
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Nodes with state and status.
    Status,
    /// Cluster health: nodes, and per tenant the ranges short of live NORMAL replicas.
    /// Exit status: 0 healthy or reduced (a node down, every range keeps its write quorum),
    /// 2 degraded (some range below its tenant's write quorum) or unavailable, 3 reduced
    /// with `--strict`.
    Health {
        /// Also fail (exit 3) when redundancy is reduced but every write quorum holds.
        #[arg(long)]
        strict: bool,
    },
    /// Ring version, ownership, and optionally a key's replicas.
    Ring {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        key: Option<String>,
    },
}

pub async fn cluster(
    c: &mut pairdb_common::client::Coordinator,
    cmd: ClusterCmd,
    json_out: bool,
) -> Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let ns = c
                .list_storage_nodes(pb::ListStorageNodesRequest {})
                .await
                .map_err(describe)?
                .into_inner()
                .nodes;
            print_nodes(&ns, json_out);
        }
        ClusterCmd::Health { strict } => {
            let h = c
                .get_cluster_health(pb::GetClusterHealthRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            print_health(&h, json_out);
            let exit_code = match h.status.as_str() {
                "healthy" => 0,
                "reduced" if !strict => 0,
                "reduced" => 3,
                _ => 2,
            };
            if exit_code != 0 {
                return Err(Verdict {
                    exit_code,
                    message: format!("cluster {}", h.status),
                }
                .into());
            }
        }
        ClusterCmd::Ring { tenant, key } => {
            let r = c
                .get_ring(pb::GetRingRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    key: key.unwrap_or_default().into_bytes(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            if json_out {
                let own: Vec<Value> = r
                    .nodes
                    .iter()
                    .zip(&r.ownership)
                    .map(|(n, o)| {
                        let mut j = node_json(n);
                        j["ownership"] = json!(o);
                        j
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"ring_version": r.ring_version, "tokens": r.tokens, "ownership": own, "key_token": r.key_token, "key_replicas": r.key_replicas})
                );
            } else {
                println!("ring version {}, {} tokens", r.ring_version, r.tokens);
                println!(
                    "  {:<16} {:<14} {:<8} {:<12} {:>9}",
                    "NODE", "STATE", "STATUS", "SERVING", "OWNS"
                );
                for (n, o) in r.nodes.iter().zip(&r.ownership) {
                    let j = node_json(n);
                    println!(
                        "  {:<16} {:<14} {:<8} {:<12} {:>8.1}%",
                        n.node_id,
                        j["state"].as_str().unwrap_or(""),
                        j["status"].as_str().unwrap_or(""),
                        serving(n),
                        o * 100.0
                    );
                }
                println!("  (OWNS: share of the token space where the node is the first replica)");
                if !r.key_replicas.is_empty() {
                    println!(
                        "key token {} → replicas {}",
                        r.key_token,
                        r.key_replicas.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

/// An answer that is not an error yet must end the command with a non-zero exit status.
#[derive(Debug)]
pub struct Verdict {
    pub exit_code: i32,
    pub message: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Verdict {}

fn print_health(h: &pb::ClusterHealth, json_out: bool) {
    let tenants: Vec<Value> = h
        .tenants
        .iter()
        .map(|t| {
            json!({
                "tenant_id": t.tenant_id,
                "replication_factor": t.replication_factor,
                "write_quorum": t.write_quorum,
                "ranges_total": t.ranges_total,
                "ranges_below_quorum": t.ranges_below_quorum,
                "ranges_below_replication_factor": t.ranges_below_replication_factor,
                "under_quorum": t.under_quorum.iter().map(|r| {
                    let range = r.range.unwrap_or_default();
                    json!({"start": range.start, "end": range.end, "live_replicas": r.live_replicas, "unavailable_replicas": r.unavailable_replicas})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    if json_out {
        println!(
            "{}",
            json!({"status": h.status, "nodes_total": h.nodes_total, "nodes_up": h.nodes_up, "nodes_down": h.nodes_down, "ring_version": h.ring_version, "pending_changes": h.pending_changes, "hints_pending": h.hints_pending, "nodes": h.nodes.iter().map(node_json).collect::<Vec<_>>(), "tenants": tenants})
        );
        return;
    }
    println!(
        "cluster {}: {}/{} nodes up, ring version {}, {} pending changes, {} hints pending",
        h.status, h.nodes_up, h.nodes_total, h.ring_version, h.pending_changes, h.hints_pending
    );
    print_nodes(&h.nodes, false);
    for t in &h.tenants {
        println!(
            "tenant {:<16} RF {} W {}: {}/{} ranges below write quorum, {} below RF",
            t.tenant_id,
            t.replication_factor,
            t.write_quorum,
            t.ranges_below_quorum,
            t.ranges_total,
            t.ranges_below_replication_factor
        );
        for r in &t.under_quorum {
            let range = r.range.unwrap_or_default();
            println!(
                "  ({}, {}]  live: [{}]  unavailable: [{}]",
                range.start,
                range.end,
                r.live_replicas.join(", "),
                r.unavailable_replicas.join(", ")
            );
        }
    }
}
