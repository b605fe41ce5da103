//! Multi-process clusters: storage nodes and coordinators as separate processes (the real
//! binaries), killed with SIGKILL, restarted on the same ports and directories, with a fresh
//! PostgreSQL database per test; plus a load writer that records every acknowledged write.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::client::{Coordinator, Dial};
use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::NodeRecord;
use tonic::transport::Channel;

use crate::netns::Host;
use crate::{ChildGuard, binary, free_port};

mod cluster;
mod load;
mod secure;

pub use cluster::{ProcCluster, ProcOptions};
pub use load::{Acked, Writer, preload};
pub use secure::Secure;

fn kill9(child: &mut Option<ChildGuard>) -> Result<()> {
    let mut g = child.take().context("not running")?;
    g.signal_and_wait(rustix::process::Signal::KILL, Duration::from_secs(10))?;
    Ok(())
}

/// SIGTERM (what systemd and Kubernetes send) and the exit status within 20 s, which must be 0.
fn terminate(child: &mut Option<ChildGuard>) -> Result<()> {
    let mut g = child.take().context("not running")?;
    let status = g.signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(20))?;
    anyhow::ensure!(
        status.success(),
        "{} exited with {status} after SIGTERM",
        g.name
    );
    Ok(())
}

fn append(path: &std::path::Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

/// The binary `name` from `dir` (another release's build), or this workspace's.
fn binary_in(dir: Option<&std::path::Path>, name: &str) -> Result<std::path::PathBuf> {
    match dir {
        Some(d) => {
            let p = d.join(name);
            anyhow::ensure!(p.exists(), "{} not found", p.display());
            Ok(p)
        }
        None => binary(name),
    }
}

/// A storage node process.
pub struct NodeProc {
    pub id: String,
    pub dir: std::path::PathBuf,
    pub grpc: u16,
    pub admin: u16,
    /// Coordinator to self-register with (`--join`).
    pub join: Option<String>,
    pub child: Option<ChildGuard>,
    /// TLS and admin token (a secure cluster).
    pub secure: Option<Arc<Secure>>,
    /// Extra environment, applied last (a test switching settings between restarts).
    pub env: Vec<(String, String)>,
    /// Run another release's binary from this directory (`None`: this workspace's).
    pub bin_dir: Option<std::path::PathBuf>,
    /// Where it runs: loopback, or a network namespace of the test's (`crate::netns`).
    pub host: Host,
    /// Append the process's stderr (its log) to this file.
    pub log: Option<std::path::PathBuf>,
    /// A program and its arguments the binary runs under (`strace … --`), on loopback only.
    pub wrap: Vec<String>,
}

impl NodeProc {
    pub fn new(id: &str, root: &std::path::Path) -> Result<NodeProc> {
        Ok(NodeProc {
            id: id.into(),
            dir: root.join(id),
            grpc: free_port()?,
            admin: free_port()?,
            join: None,
            child: None,
            secure: None,
            // Every node of a cluster and its coordinators share `root/backups`.
            env: vec![(
                "PAIRDB_BACKUP_DIR".into(),
                root.join("backups").display().to_string(),
            )],
            bin_dir: None,
            host: Host::loopback(),
            log: None,
            wrap: Vec::new(),
        })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host.ip, self.grpc)
    }

    pub fn start(&mut self) -> Result<()> {
        let bin = binary_in(self.bin_dir.as_deref(), "pairdb-storage-node")?;
        let mut cmd = match self.wrap.split_first() {
            None => self.host.command(&bin),
            Some((program, args)) => {
                anyhow::ensure!(self.host.ns.is_none(), "wrap runs on loopback only");
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
        };
        cmd.args(["--node-id", &self.id, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--grpc-addr",
                &self.addr(),
                "--admin-addr",
                &format!("{}:{}", self.host.ip, self.admin),
            ])
            // Every pull chunk with a new key goes in as an ingested table, so the process tests
            // run the fenced ingest path against their concurrent writes.
            .env("PAIRDB_STREAM_TABLE_MIN_KB", "0")
            .env("RUST_LOG", "warn");
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        if let Some(sec) = &self.secure {
            if !sec.dir.join(format!("{}.crt", self.id)).exists() {
                sec.issue(pairdb_common::tls::certs::LeafSpec::storage_node(
                    &self.id,
                    &["127.0.0.1", "localhost"],
                    30,
                ))?;
            }
            cmd.envs(sec.env(&self.id));
        }
        cmd.envs(self.env.iter().cloned());
        if let Some(path) = &self.log {
            cmd.stderr(append(path)?);
        }
        self.child = Some(spawn_listening(
            &self.id,
            &mut cmd,
            &self.host.ip,
            self.grpc,
        )?);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    /// Graceful stop (SIGTERM), which must exit 0.
    pub fn terminate(&mut self) -> Result<()> {
        terminate(&mut self.child)
    }

    pub fn record(&self) -> NodeRecord {
        NodeRecord::new(
            &self.id,
            &self.host.ip,
            self.grpc,
            self.admin,
            NodeState::Normal,
        )
    }

    /// A client to this node (with the coordinator certificate in a secure cluster).
    pub async fn client(&self) -> Result<StorageNodeServiceClient<Channel>> {
        let tls = match &self.secure {
            Some(sec) => {
                sec.client_tls(&pairdb_common::tls::Expect::storage_node(Some(&self.id)))?
            }
            None => pairdb_common::tls::connect::ClientTls::Off,
        };
        let ep = pairdb_common::tls::connect::endpoint(&self.addr()).map_err(anyhow::Error::msg)?;
        Ok(StorageNodeServiceClient::new(
            pairdb_common::tls::connect::channel(ep, tls).await?,
        ))
    }

    /// This node's own answer for tenant `t1`'s `key` (a raw replica read: tombstones and
    /// every sibling, no quorum).
    pub async fn read_t1(&self, key: &[u8]) -> Result<pairdb_common::api::pb::ReadResult> {
        Ok(self
            .client()
            .await?
            .read(pairdb_common::api::pb::KeyRef {
                tenant_id: "t1".into(),
                key: key.to_vec(),
            })
            .await?
            .into_inner())
    }

    /// The values this node holds for tenant `t1`'s `key` (tombstones' empty values too).
    pub async fn values_t1(&self, key: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .read_t1(key)
            .await?
            .state
            .map(|s| s.versions.into_iter().map(|v| v.value).collect())
            .unwrap_or_default())
    }

    /// The Prometheus text this node serves.
    pub async fn metrics(&self) -> Result<String> {
        admin_get(
            &self.host.ip,
            self.admin,
            "/metrics",
            self.secure.as_deref(),
        )
        .await
    }
}

/// GET `path` on an admin port at `ip` (HTTPS with the cluster CA and the admin token in a
/// secure cluster, which listens on loopback only).
pub async fn admin_get(ip: &str, port: u16, path: &str, secure: Option<&Secure>) -> Result<String> {
    let Some(sec) = secure else {
        return Ok(reqwest::get(format!("http://{ip}:{port}{path}"))
            .await?
            .text()
            .await?);
    };
    let auth = AdminAuth {
        ca: sec.ca(),
        token: Some(sec.token.clone()),
    };
    let (status, body) = auth.get(port, path).await?;
    anyhow::ensure!(status == 200, "{path}: HTTP {status}: {body}");
    Ok(body)
}

/// HTTPS requests to a local admin port: trusting `ca`, sending `token` when given.
#[derive(Clone)]
pub struct AdminAuth {
    pub ca: std::path::PathBuf,
    pub token: Option<String>,
}

impl AdminAuth {
    pub async fn get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.request(port, "GET", path).await
    }

    pub async fn post(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.request(port, "POST", path).await
    }

    async fn request(&self, port: u16, method: &str, path: &str) -> Result<(u16, String)> {
        pairdb_common::tls::admin_http::AdminTarget {
            addr: format!("127.0.0.1:{port}"),
            ca: Some(self.ca.clone()),
            token: self.token.clone(),
        }
        .request(method, path)
        .await
        .map_err(anyhow::Error::msg)
    }
}

/// A coordinator process.
pub struct CoordProc {
    pub id: String,
    pub grpc: u16,
    pub admin: u16,
    pub env: Vec<(String, String)>,
    pub child: Option<ChildGuard>,
    pub secure: Option<Arc<Secure>>,
    /// Append the process's stderr (its log, the audit trail) to this file.
    pub log: Option<std::path::PathBuf>,
    /// Run another release's binary from this directory (`None`: this workspace's).
    pub bin_dir: Option<std::path::PathBuf>,
    /// Where it runs: loopback, or a network namespace of the test's (`crate::netns`).
    pub host: Host,
}

impl CoordProc {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host.ip, self.grpc)
    }

    pub fn start(&mut self, db_url: &str) -> Result<()> {
        let mut cmd = self
            .host
            .command(&binary_in(self.bin_dir.as_deref(), "pairdb-coordinator")?);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("PAIRDB_GRPC_ADDR", self.addr())
            .env(
                "PAIRDB_ADMIN_ADDR",
                format!("{}:{}", self.host.ip, self.admin),
            )
            .env("PAIRDB_COORDINATOR_ID", &self.id)
            .env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(sec) = &self.secure {
            cmd.envs(sec.env("coordinator"))
                .env("PAIRDB_AUTH", "required");
        }
        if let Some(path) = &self.log {
            cmd.stderr(append(path)?);
        }
        self.child = Some(spawn_listening(
            &self.id,
            &mut cmd,
            &self.host.ip,
            self.grpc,
        )?);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    /// Graceful stop (SIGTERM), which must exit 0.
    pub fn terminate(&mut self) -> Result<()> {
        terminate(&mut self.child)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits (at most 30 s) until `/health/ready` answers 200 (plaintext admin port).
    pub async fn wait_ready(&self) -> Result<()> {
        let ready = format!("http://{}:{}/health/ready", self.host.ip, self.admin);
        crate::cluster::wait_async(
            &format!("{} ready", self.id),
            Duration::from_secs(30),
            || async {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
            },
        )
        .await
    }

    /// How a client reaches this coordinator (TLS and the admin token in a secure cluster).
    pub fn dial(&self) -> Dial {
        Dial {
            address: self.addr(),
            token: self.secure.as_ref().map(|s| s.token.clone()),
            ca: self.secure.as_ref().map(|s| s.ca()),
            ..Dial::default()
        }
    }

    pub async fn client(&self) -> Result<Coordinator> {
        self.dial().connect().await.map_err(anyhow::Error::msg)
    }

    /// The Prometheus text this coordinator serves.
    pub async fn metrics(&self) -> Result<String> {
        admin_get(
            &self.host.ip,
            self.admin,
            "/metrics",
            self.secure.as_deref(),
        )
        .await
    }
}

/// The sum of every sample of `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Prometheus text a process serves on its admin port.
pub async fn metrics_text(admin_port: u16) -> Result<String> {
    Ok(
        reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .await?
            .text()
            .await?,
    )
}

/// Spawns a server process and waits (at most 20 s) until it accepts connections on
/// `ip:port`; fails at once, with its exit status, if it exits first.
fn spawn_listening(name: &str, cmd: &mut Command, ip: &str, port: u16) -> Result<ChildGuard> {
    let mut guard = ChildGuard::spawn(name, cmd)?;
    let started = std::time::Instant::now();
    loop {
        if std::net::TcpStream::connect((ip, port)).is_ok() {
            return Ok(guard);
        }
        if let Some(child) = guard.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            guard.child = None;
            anyhow::bail!("{name} exited before listening: {status}");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{name} not listening on {ip}:{port} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
