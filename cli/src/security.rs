//! `pairdbctl token …` (bearer tokens through the coordinator; admin only) and
//! `pairdbctl certs …` (a CA and per-role certificates for a small cluster, written as PEM
//! files; production clusters may use cert-manager instead, see runbooks/security.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pairdb_common::api::pb;
use pairdb_common::tls::certs::{self, LeafSpec};
use serde_json::json;

use crate::client::describe;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token. The token is printed once; only its hash is stored.
    Create {
        /// `admin` or `tenant`.
        #[arg(long)]
        role: String,
        /// The tenant a tenant token reaches.
        #[arg(long, default_value = "")]
        tenant: String,
        /// A tenant token that may only read.
        #[arg(long)]
        read_only: bool,
        /// Who holds it, what for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime in seconds (0 = never expires).
        #[arg(long, default_value_t = 0)]
        expires_in_secs: u64,
    },
    /// List tokens (ids, roles, scopes, expiry, revocation; never the tokens).
    List,
    /// Revoke a token by id: refused at once by this coordinator, by the others within
    /// `token_refresh_ms` (5 s by default).
    Revoke { token_id: String },
}

fn ms(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else {
        format!("{}s", v / 1000)
    }
}

pub async fn token(
    c: &mut pairdb_common::client::Coordinator,
    cmd: TokenCmd,
    json_out: bool,
) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            role,
            tenant,
            read_only,
            description,
            expires_in_secs,
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    role,
                    tenant_id: tenant,
                    read_only,
                    description,
                    expires_in_secs,
                })
                .await
                .map_err(describe)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"token": r.token, "token_id": info.token_id, "role": info.role,
                           "tenant_id": info.tenant_id, "access": info.access,
                           "expires_at_ms": info.expires_at_ms})
                );
            } else {
                println!("token_id: {}", info.token_id);
                println!("token:    {}", r.token);
                println!(
                    "(shown once: store it now; it reaches {} with {} access)",
                    if info.role == "admin" {
                        "the whole cluster".to_string()
                    } else {
                        format!("tenant {}", info.tenant_id)
                    },
                    info.access
                );
            }
        }
        TokenCmd::List => {
            let r = c
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            if json_out {
                let v: Vec<_> = r
                    .tokens
                    .iter()
                    .map(|t| {
                        json!({"token_id": t.token_id, "role": t.role, "tenant_id": t.tenant_id,
                               "access": t.access, "description": t.description,
                               "created_at_ms": t.created_at_ms, "expires_at_ms": t.expires_at_ms,
                               "revoked_at_ms": t.revoked_at_ms})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<17} {:<7} {:<16} {:<10} {:<12} {:<12} DESCRIPTION",
                    "TOKEN_ID", "ROLE", "TENANT", "ACCESS", "EXPIRES", "REVOKED"
                );
                for t in &r.tokens {
                    println!(
                        "{:<17} {:<7} {:<16} {:<10} {:<12} {:<12} {}",
                        t.token_id,
                        t.role,
                        if t.tenant_id.is_empty() {
                            "-"
                        } else {
                            &t.tenant_id
                        },
                        t.access,
                        ms(t.expires_at_ms),
                        ms(t.revoked_at_ms),
                        t.description
                    );
                }
            }
        }
        TokenCmd::Revoke { token_id } => {
            let t = c
                .revoke_token(pb::RevokeTokenRequest { token_id })
                .await
                .map_err(describe)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({"token_id": t.token_id, "revoked_at_ms": t.revoked_at_ms})
                );
            } else {
                println!("revoked {}", t.token_id);
            }
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// A new CA: `<out>/ca.crt` and `<out>/ca.key` (keep the key offline).
    Ca {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "pairdb cluster CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// One certificate signed by the CA in `--ca-dir`: `<out>/<name>.crt` and `.key`.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// `coordinator`, `storage-node` or `client`.
        #[arg(long)]
        role: String,
        /// File name and common name (for a storage node: its node id).
        #[arg(long)]
        name: String,
        /// DNS names or IPs the process is reached at (repeat the flag).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// A CA plus a certificate for each listed storage node and coordinator (and one client
    /// certificate), for a small cluster or a test bed.
    Cluster {
        #[arg(long)]
        out: PathBuf,
        /// Storage node ids (comma separated).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Coordinator names (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "coordinator")]
        coordinators: Vec<String>,
        /// Hosts every certificate is valid for (besides its own name); repeat the flag.
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn spec(role: &str, name: &str, hosts: &[String], days: i64) -> Result<LeafSpec> {
    let h: Vec<&str> = hosts.iter().map(String::as_str).collect();
    Ok(match role {
        "storage-node" => {
            pairdb_common::validate::node_id(name)
                .map_err(|e| anyhow::anyhow!("--name must be the node id: {e}"))?;
            LeafSpec::storage_node(name, &h, days)
        }
        "coordinator" => LeafSpec::coordinator(name, &h, days),
        "client" => LeafSpec::client(name, days),
        o => anyhow::bail!("unknown role {o}: use coordinator, storage-node or client"),
    })
}

/// Writes a CA and the listed certificates under `out` (used by `certs cluster` and
/// `dev --tls`). Returns the files written.
pub fn write_cluster(
    out: &Path,
    nodes: &[String],
    coordinators: &[String],
    hosts: &[String],
    days: i64,
) -> Result<Vec<PathBuf>> {
    let ca = certs::new_ca("pairdb cluster CA", days.max(1) * 10)?;
    let mut files = Vec::new();
    let (c, k) = certs::write_pair(out, "ca", &ca)?;
    files.extend([c, k]);
    for (role, names) in [("storage-node", nodes), ("coordinator", coordinators)] {
        for n in names {
            let mut h = hosts.to_vec();
            if !h.contains(n) {
                h.push(n.clone());
            }
            let issued = certs::issue(&ca.cert_pem, &ca.key_pem, &spec(role, n, &h, days)?)?;
            let (c, k) = certs::write_pair(out, n, &issued)?;
            files.extend([c, k]);
        }
    }
    let issued = certs::issue(&ca.cert_pem, &ca.key_pem, &LeafSpec::client("client", days))?;
    let (c, k) = certs::write_pair(out, "client", &issued)?;
    files.extend([c, k]);
    Ok(files)
}

pub fn certs(cmd: CertsCmd, json_out: bool) -> Result<()> {
    let files = match cmd {
        CertsCmd::Ca { out, name, days } => {
            let ca = certs::new_ca(&name, days)?;
            let (c, k) = certs::write_pair(&out, "ca", &ca)?;
            vec![c, k]
        }
        CertsCmd::Issue {
            ca_dir,
            role,
            name,
            hosts,
            days,
            out,
        } => {
            let ca_cert = read(&ca_dir.join("ca.crt"))?;
            let ca_key = read(&ca_dir.join("ca.key"))?;
            let issued = certs::issue(&ca_cert, &ca_key, &spec(&role, &name, &hosts, days)?)?;
            let (c, k) = certs::write_pair(&out, &name, &issued)?;
            vec![c, k]
        }
        CertsCmd::Cluster {
            out,
            nodes,
            coordinators,
            hosts,
            days,
        } => write_cluster(&out, &nodes, &coordinators, &hosts, days)?,
    };
    if json_out {
        let v: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
        println!("{}", json!({ "files": v }));
    } else {
        for f in files {
            println!("wrote {}", f.display());
        }
    }
    Ok(())
}
