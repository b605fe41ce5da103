//! SPEC §8 from outside: TLS on every port, mutual TLS on the internal hop, bearer tokens,
//! explicit destructive ranges, node identity on address changes, secure by default. One
//! in-process cluster (three storage nodes, two coordinators, SQLite) with TLS and tokens on;
//! the binaries for the start-up refusals. Harness here; `tls.rs` (certificates, rotation,
//! SIGHUP), `tokens.rs`, `internal.rs` (destructive RPCs, node identity, admin API),
//! `startup.rs` (refusing insecure binds).
#![allow(clippy::unwrap_used)]

mod internal;
mod startup;
mod tls;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::client::Dial;

use pairdb_common::tls::certs::{self, LeafSpec};
use pairdb_common::tls::connect::{self, ClientTls};
use pairdb_common::tls::{Expect, TlsSettings};
use pairdb_coordinator::auth::AuthMode;
use pairdb_coordinator::meta::{self, MetaStore};
use pairdb_coordinator::server::RunningCoordinator;
use pairdb_storage_node::server::{RunningNode, StartOptions};
use pairdb_tests::cluster::{coordinator_config, free_addr, read_req, wait_async, write_req};
use pairdb_tests::*;

const BOOTSTRAP: &str = "bootstrap-admin-token-for-tests-0123456789";

struct Ca {
    dir: PathBuf,
    cert: String,
    key: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let ca = certs::new_ca(name, 30).unwrap();
        certs::write_pair(dir, "ca", &ca).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            cert: ca.cert_pem,
            key: ca.key_pem,
        }
    }

    fn issue(&self, spec: LeafSpec) -> (PathBuf, PathBuf) {
        let i = certs::issue(&self.cert, &self.key, &spec).unwrap();
        certs::write_pair(&self.dir, &spec.common_name, &i).unwrap()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn settings(&self, name: &str) -> TlsSettings {
        TlsSettings {
            cert: Some(self.dir.join(format!("{name}.crt"))),
            key: Some(self.dir.join(format!("{name}.key"))),
            ca: Some(self.ca()),
            reload_interval_ms: 200,
            ..Default::default()
        }
    }

    /// A client TLS config presenting certificate `name` (or none), expecting `expect`.
    fn client(&self, name: Option<&str>, expect: Expect) -> ClientTls {
        let pair = name.map(|n| {
            (
                self.dir.join(format!("{n}.crt")),
                self.dir.join(format!("{n}.key")),
            )
        });
        ClientTls::Fixed(
            connect::tool_config(
                &self.ca(),
                pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                &expect,
            )
            .unwrap(),
        )
    }
}

struct Secure {
    _dir: tempfile::TempDir,
    ca: Ca,
    other_ca: Ca,
    meta: Arc<dyn MetaStore>,
    nodes: Vec<RunningNode>,
    node_cfgs: Vec<pairdb_storage_node::Config>,
    coords: Vec<RunningCoordinator>,
}

async fn start() -> Secure {
    pairdb_common::telemetry::init_logging(false);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("tls"), "cluster CA");
    let other_ca = Ca::new(&dir.path().join("other"), "someone else's CA");
    let hosts = ["127.0.0.1", "localhost"];
    ca.issue(LeafSpec::coordinator("coordinator", &hosts, 30));
    ca.issue(LeafSpec::client("app", 30));
    ca.issue(LeafSpec::coordinator("expired", &hosts, -2));
    other_ca.issue(LeafSpec::coordinator("coordinator", &hosts, 30));
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let meta = meta::connect(&url).await.unwrap();
    meta.migrate().await.unwrap();
    let mut nodes = Vec::new();
    let mut node_cfgs = Vec::new();
    for i in 1..=3 {
        let id = format!("n{i}");
        ca.issue(LeafSpec::storage_node(&id, &hosts, 30));
        let cfg = pairdb_storage_node::Config {
            tls: ca.settings(&id),
            admin_token: BOOTSTRAP.into(),
            ..pairdb_kit::node_config(&id, dir.path(), free_addr().unwrap(), free_addr().unwrap())
        };
        let n = pairdb_kit::start_node(cfg.clone(), None).await.unwrap();
        pairdb_kit::register(meta.as_ref(), &[&n]).await.unwrap();
        nodes.push(n);
        node_cfgs.push(cfg);
    }
    for t in ["a", "b"] {
        pairdb_kit::ensure_tenant(meta.as_ref(), t).await.unwrap();
    }
    let mut coords = Vec::new();
    for i in 0..2 {
        let mut cfg = coordinator_config(&url, &format!("coord-{i}"), true).unwrap();
        cfg.tls = ca.settings("coordinator");
        cfg.auth = AuthMode::Required;
        cfg.admin_token = BOOTSTRAP.into();
        cfg.token_refresh_ms = 500;
        coords.push(
            pairdb_kit::start_coordinator(cfg, meta.clone())
                .await
                .unwrap(),
        );
    }
    Secure {
        _dir: dir,
        ca,
        other_ca,
        meta,
        nodes,
        node_cfgs,
        coords,
    }
}

impl Secure {
    fn dial(&self, i: usize, token: Option<&str>) -> Dial {
        Dial {
            address: self.coords[i].grpc_addr.to_string(),
            token: token.map(str::to_string),
            ca: Some(self.ca.ca()),
            ..Dial::default()
        }
    }

    async fn node_client(
        &self,
        i: usize,
        tls: ClientTls,
    ) -> Result<StorageNodeServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
        let ep = connect::endpoint(&self.nodes[i].grpc_addr.to_string()).unwrap();
        connect::channel(ep, tls)
            .await
            .map(StorageNodeServiceClient::new)
    }

    /// NodeInfo on node `i` as a client with certificate `name` (`None`: no certificate).
    async fn node_info(&self, i: usize, tls: ClientTls) -> Result<String, String> {
        let mut c = self.node_client(i, tls).await.map_err(|e| e.to_string())?;
        c.node_info(pb::NodeInfoRequest {})
            .await
            .map(|r| r.into_inner().node_id)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    async fn create_token(&self, role: &str, tenant: &str, read_only: bool) -> (String, String) {
        let r = self
            .dial(0, Some(BOOTSTRAP))
            .connect()
            .await
            .unwrap()
            .create_token(pb::CreateTokenRequest {
                role: role.into(),
                tenant_id: tenant.into(),
                read_only,
                description: "test".into(),
                expires_in_secs: 0,
            })
            .await
            .unwrap()
            .into_inner();
        (r.info.unwrap().token_id, r.token)
    }

    async fn shutdown(self) {
        for c in self.coords {
            c.shutdown().await;
        }
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.unwrap_err().code()
}
