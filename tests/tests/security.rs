//! SPEC §8 from outside: TLS on every port, mutual TLS on the internal hop, bearer tokens,
//! explicit destructive ranges, node identity on address changes, secure by default. One
//! in-process cluster (three storage nodes, two coordinators, SQLite) with TLS and tokens on;
//! the binaries for the start-up refusals.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::client::Dial;
use pairdb_common::ring::NodeState;
use pairdb_common::tls::certs::{self, LeafSpec};
use pairdb_common::tls::connect::{self, ClientTls};
use pairdb_common::tls::{Expect, TlsSettings};
use pairdb_coordinator::auth::AuthMode;
use pairdb_coordinator::meta::{self, MetaStore, NodeRecord, TenantRecord};
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
            node_id: id.clone(),
            data_dir: dir.path().join(&id),
            grpc_addr: free_addr().unwrap(),
            admin_addr: free_addr().unwrap(),
            block_cache_mb: 16,
            memtable_mb: 8,
            tls: ca.settings(&id),
            admin_token: BOOTSTRAP.into(),
            ..Default::default()
        };
        let n = pairdb_storage_node::server::start(cfg.clone(), StartOptions::default())
            .await
            .unwrap();
        meta.add_node(&NodeRecord::new(
            &id,
            "127.0.0.1",
            n.grpc_addr.port(),
            n.admin_addr.port(),
            NodeState::Normal,
        ))
        .await
        .unwrap();
        nodes.push(n);
        node_cfgs.push(cfg);
    }
    for t in ["a", "b"] {
        meta.create_tenant(&TenantRecord::with_defaults(t))
            .await
            .unwrap();
    }
    let mut coords = Vec::new();
    for i in 0..2 {
        let mut cfg = coordinator_config(&url, &format!("coord-{i}"), true).unwrap();
        cfg.tls = ca.settings("coordinator");
        cfg.auth = AuthMode::Required;
        cfg.admin_token = BOOTSTRAP.into();
        cfg.token_refresh_ms = 500;
        coords.push(
            pairdb_coordinator::server::start_with(cfg, meta.clone())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_ports_refuse_plaintext_foreign_expired_and_wrong_role_certificates() {
    let _s = serial_async().await;
    let c = start().await;
    let storage = Expect::storage_node(Some("n1"));

    // Plaintext against TLS ports: coordinator and node.
    let plain = pairdb_common::client::Dial::plaintext(c.coords[0].grpc_addr.to_string());
    let r = match plain.connect().await {
        Err(_) => true,
        Ok(mut p) => p
            .get_tenant(pb::GetTenantRequest {
                tenant_id: "a".into(),
            })
            .await
            .is_err(),
    };
    assert!(r, "a coordinator answered plaintext");
    assert!(c.node_info(0, ClientTls::Off).await.is_err());

    // A coordinator-role certificate from the cluster CA is admitted.
    assert_eq!(
        c.node_info(0, c.ca.client(Some("coordinator"), storage.clone()))
            .await
            .unwrap(),
        "n1"
    );
    // No certificate: the handshake fails.
    let none = c.node_info(0, c.ca.client(None, storage.clone())).await;
    assert!(none.is_err(), "{none:?}");
    // A client-role certificate from the cluster CA: PERMISSION_DENIED on StorageNodeService.
    let app = c
        .node_info(0, c.ca.client(Some("app"), storage.clone()))
        .await
        .unwrap_err();
    assert!(app.starts_with("PermissionDenied"), "{app}");
    // A coordinator certificate signed by another CA, and an expired one: refused.
    let foreign = ClientTls::Fixed(
        connect::tool_config(
            &c.ca.ca(),
            Some((
                &c.other_ca.dir.join("coordinator.crt"),
                &c.other_ca.dir.join("coordinator.key"),
            )),
            &storage,
        )
        .unwrap(),
    );
    assert!(c.node_info(0, foreign).await.is_err());
    let expired = c
        .node_info(0, c.ca.client(Some("expired"), storage.clone()))
        .await;
    assert!(expired.is_err(), "{expired:?}");
    // The client side checks node identity too: n2's certificate is not n1's.
    let wrong = c
        .node_info(1, c.ca.client(Some("coordinator"), storage.clone()))
        .await;
    assert!(wrong.is_err(), "n2 passed for n1: {wrong:?}");
    // A client trusting only the other CA does not accept the cluster's servers.
    let fooled = Dial {
        ca: Some(c.other_ca.ca()),
        ..c.dial(0, Some(BOOTSTRAP))
    };
    assert!(fooled.connect().await.is_err());

    // The data path works end to end over mTLS with a token.
    let mut a = c.dial(0, Some(BOOTSTRAP)).connect().await.unwrap();
    let mut w = write_req(b"k", b"v", vec![], pb::Consistency::All);
    w.tenant_id = "a".into();
    assert_eq!(a.write(w).await.unwrap().into_inner().replicas_acked, 3);

    // The expiry of every loaded certificate is exported.
    let (_, m) = pairdb_tests::procs::AdminAuth {
        ca: c.ca.ca(),
        token: None,
    }
    .get(c.nodes[0].admin_addr.port(), "/metrics")
    .await
    .unwrap();
    assert!(
        m.contains("tls_certificate_expiry_timestamp_seconds{")
            && m.contains("kind=\"cert\"")
            && m.contains("kind=\"ca\""),
        "{m}"
    );
    c.shutdown().await;
}

/// The certificate a TLS server presents to a new connection.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    let cfg = connect::tool_config(
        &ca.ca(),
        Some((
            &ca.dir.join("coordinator.crt"),
            &ca.dir.join("coordinator.key"),
        )),
        &Expect::any(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_rotated_on_disk_is_served_to_new_connections_without_a_restart() {
    let _s = serial_async().await;
    let c = start().await;
    let addr = c.nodes[0].grpc_addr;
    let old = pem_der(&c.ca.dir.join("n1.crt"));
    assert_eq!(served_certificate(addr, &c.ca).await, old);
    // A live connection, made before the rotation, keeps working after it.
    let mut live = c
        .node_client(
            0,
            c.ca.client(Some("coordinator"), Expect::storage_node(Some("n1"))),
        )
        .await
        .unwrap();
    c.ca.issue(LeafSpec::storage_node(
        "n1",
        &["127.0.0.1", "localhost"],
        60,
    ));
    let new = pem_der(&c.ca.dir.join("n1.crt"));
    assert_ne!(new, old);
    wait_async(
        "the node serves the new certificate",
        Duration::from_secs(10),
        || async { served_certificate(addr, &c.ca).await == new },
    )
    .await
    .unwrap();
    assert!(live.node_info(pb::NodeInfoRequest {}).await.is_ok());
    // The coordinator's port reloads too, and its gauges follow the new files.
    c.ca.issue(LeafSpec::coordinator(
        "coordinator",
        &["127.0.0.1", "localhost"],
        90,
    ));
    let newc = pem_der(&c.ca.dir.join("coordinator.crt"));
    wait_async(
        "the coordinator serves its new certificate",
        Duration::from_secs(10),
        || async { served_certificate(c.coords[0].grpc_addr, &c.ca).await == newc },
    )
    .await
    .unwrap();
    // A broken file keeps the last good certificate in use.
    std::fs::write(c.ca.dir.join("n1.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_certificate(addr, &c.ca).await, new);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_scoped_read_only_revocable_and_stored_hashed() {
    let _s = serial_async().await;
    let c = start().await;
    let (_, ta) = c.create_token("tenant", "a", false).await;
    let (ro_id, ro) = c.create_token("tenant", "a", true).await;
    let (admin_id, admin) = c.create_token("admin", "", false).await;
    let on = |t: &str, tenant: &str| {
        let mut w = write_req(b"k", b"v", vec![], pb::Consistency::Quorum);
        w.tenant_id = tenant.into();
        let mut r = read_req(b"k", pb::Consistency::Quorum);
        r.tenant_id = tenant.into();
        (t.to_string(), w, r)
    };

    // No token, a malformed one, an unknown one: UNAUTHENTICATED.
    let mut none = c.dial(0, None).connect().await.unwrap();
    let (_, w, r) = on("", "a");
    assert_eq!(
        code(none.write(w.clone()).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(none.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    let mut forged = c
        .dial(0, Some(&format!("{}x", &ta[..ta.len() - 1])))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        code(forged.write(w.clone()).await),
        tonic::Code::Unauthenticated
    );

    // Tenant token for a: reads and writes a, nothing of b, no admin method.
    let mut a = c.dial(0, Some(&ta)).connect().await.unwrap();
    a.write(w.clone()).await.unwrap();
    a.read(r.clone()).await.unwrap();
    let (_, wb, rb) = on("", "b");
    assert_eq!(
        code(a.write(wb.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(a.read(rb.clone()).await),
        tonic::Code::PermissionDenied
    );
    let batch = pb::BatchWriteItemsRequest {
        items: vec![w.clone(), wb.clone()],
    };
    assert_eq!(
        code(a.batch_write(batch).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            a.get_tenant(pb::GetTenantRequest {
                tenant_id: "b".into()
            })
            .await
        ),
        tonic::Code::PermissionDenied
    );
    assert!(
        a.get_tenant(pb::GetTenantRequest {
            tenant_id: "a".into()
        })
        .await
        .is_ok()
    );
    let remove = pb::RemoveStorageNodeRequest {
        node_id: "n1".into(),
        force: true,
        acknowledge_data_loss: true,
    };
    assert_eq!(
        code(a.remove_storage_node(remove.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(a.list_tokens(pb::ListTokensRequest {}).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            a.update_tenant(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    tenant_id: "a".into(),
                    replication_factor: 1,
                    ..Default::default()
                })
            })
            .await
        ),
        tonic::Code::PermissionDenied
    );
    // Read-only: reads, never writes or deletes.
    let mut r_only = c.dial(0, Some(&ro)).connect().await.unwrap();
    r_only.read(r.clone()).await.unwrap();
    assert_eq!(
        code(r_only.write(w.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            r_only
                .delete(pb::DeleteRequest {
                    tenant_id: "a".into(),
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .await
        ),
        tonic::Code::PermissionDenied
    );
    // An admin token reaches everything (a token made on coordinator 0 works on 1 at once).
    let mut adm = c.dial(1, Some(&admin)).connect().await.unwrap();
    adm.write(wb.clone()).await.unwrap();
    adm.list_tokens(pb::ListTokensRequest {}).await.unwrap();

    // Revoked on coordinator 0: refused there at once, on coordinator 1 within the refresh
    // (token_refresh_ms = 500).
    let mut ro1 = c.dial(1, Some(&ro)).connect().await.unwrap();
    ro1.read(r.clone()).await.unwrap();
    let mut admin0 = c.dial(0, Some(&admin)).connect().await.unwrap();
    admin0
        .revoke_token(pb::RevokeTokenRequest {
            token_id: ro_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        code(r_only.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    let revoked_at = std::time::Instant::now();
    wait_async(
        "coordinator 1 refuses the revoked token",
        Duration::from_secs(5),
        || {
            let mut ro1 = ro1.clone();
            let r = r.clone();
            async move { ro1.read(r).await.is_err() }
        },
    )
    .await
    .unwrap();
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        code(ro1.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );

    // The tokens table holds hashes only, and list shows the revocation.
    let rows = c.meta.list_tokens().await.unwrap();
    assert_eq!(rows.len(), 3);
    for t in [&ta, &ro, &admin] {
        assert!(
            rows.iter()
                .all(|row| !row.token_hash.contains(&t[5..]) && row.token_hash != *t)
        );
        assert!(
            rows.iter()
                .any(|row| pairdb_common::auth::hash_matches(&row.token_hash, t))
        );
    }
    let listed = admin0
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let ro_row = listed.iter().find(|t| t.token_id == ro_id).unwrap();
    assert!(ro_row.revoked_at_ms > 0 && ro_row.access == "read");
    assert!(
        listed
            .iter()
            .any(|t| t.token_id == admin_id && t.role == "admin")
    );
    // Bad token requests are refused with a clear code.
    for bad in [
        pb::CreateTokenRequest {
            role: "root".into(),
            ..Default::default()
        },
        pb::CreateTokenRequest {
            role: "tenant".into(),
            tenant_id: "nope".into(),
            ..Default::default()
        },
        pb::CreateTokenRequest {
            role: "admin".into(),
            tenant_id: "a".into(),
            ..Default::default()
        },
    ] {
        let s = admin0.create_token(bad).await.unwrap_err();
        assert!(
            matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{s:?}"
        );
    }
    // An expired token is refused.
    let r2 = admin0
        .create_token(pb::CreateTokenRequest {
            role: "tenant".into(),
            tenant_id: "a".into(),
            expires_in_secs: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut soon = c.dial(0, Some(&r2.token)).connect().await.unwrap();
    soon.read(r.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(soon.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destructive_rpcs_need_explicit_ranges_and_pulls_need_a_certified_source() {
    let _s = serial_async().await;
    let c = start().await;
    let mut n1 = c
        .node_client(
            0,
            c.ca.client(Some("coordinator"), Expect::storage_node(Some("n1"))),
        )
        .await
        .unwrap();
    assert_eq!(
        code(n1.drop_range(pb::DropRangeRequest::default()).await),
        tonic::Code::InvalidArgument
    );
    let full = Some(pb::TokenRange { start: 7, end: 7 });
    assert_eq!(
        code(
            n1.drop_range(pb::DropRangeRequest {
                range: full,
                whole_ring: false
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            n1.purge_tombstones(pb::PurgeTombstonesRequest {
                written_before_ms: 1,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            n1.purge_tombstones(pb::PurgeTombstonesRequest {
                range: Some(pb::TokenRange { start: 1, end: 2 }),
                written_before_ms: 0,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    // An explicit range is served.
    n1.drop_range(pb::DropRangeRequest {
        range: Some(pb::TokenRange { start: 1, end: 2 }),
        whole_ring: false,
    })
    .await
    .unwrap();
    // A pull needs the source's node id, and the source must prove it.
    let src = c.nodes[1].grpc_addr.to_string();
    let pull = |id: &str| pb::PullRangeRequest {
        range: Some(pb::TokenRange { start: 1, end: 2 }),
        source_address: src.clone(),
        source_node_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(n1.pull_range(pull("")).await),
        tonic::Code::InvalidArgument
    );
    // n2's address claimed to be n3: the handshake fails, nothing is pulled.
    let mut s = n1.pull_range(pull("n3")).await.unwrap().into_inner();
    let mut failed = false;
    while let Some(m) = s.message().await.transpose() {
        match m {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(p) if p.done => break,
            Ok(_) => {}
        }
    }
    assert!(
        failed,
        "a pull from a source with the wrong identity succeeded"
    );
    let mut s = n1.pull_range(pull("n2")).await.unwrap().into_inner();
    let mut last = pb::PullProgress::default();
    while let Some(p) = s.message().await.unwrap() {
        last = p;
    }
    assert!(last.done);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_moves_only_when_its_new_address_proves_its_identity() {
    let _s = serial_async().await;
    let c = start().await;
    let mut adm = c.dial(0, Some(BOOTSTRAP)).connect().await.unwrap();
    let moved = |port: u16| pb::AddStorageNodeRequest {
        node_id: "n1".into(),
        host: "127.0.0.1".into(),
        port: u32::from(port),
        admin_port: u32::from(c.nodes[0].admin_addr.port()),
        ..Default::default()
    };
    // Re-pointing NORMAL n1 at n2's address: n2's certificate does not name n1.
    let s = adm
        .add_storage_node(moved(c.nodes[1].grpc_addr.port()))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    let rec = c.meta.get_node("n1").await.unwrap().unwrap();
    assert_eq!(rec.port, c.nodes[0].grpc_addr.port());
    // A storage node's certificate registers that node only, without a token.
    let node_dial = |name: &str| {
        let tls = c.ca.client(Some(name), Expect::any());
        let addr = c.coords[0].grpc_addr.to_string();
        async move {
            let ep = connect::endpoint(&addr).unwrap();
            let ch = connect::channel(ep, tls).await.unwrap();
            Dial::default().wrap(ch).unwrap()
        }
    };
    let mut as_n2 = node_dial("n2").await;
    let same = pb::AddStorageNodeRequest {
        node_id: "n2".into(),
        host: "127.0.0.1".into(),
        port: u32::from(c.nodes[1].grpc_addr.port()),
        admin_port: u32::from(c.nodes[1].admin_addr.port()),
        ..Default::default()
    };
    as_n2.add_storage_node(same).await.unwrap();
    assert_eq!(
        code(
            as_n2
                .add_storage_node(moved(c.nodes[0].grpc_addr.port()))
                .await
        ),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(as_n2.get_hint_stats(pb::GetHintStatsRequest {}).await),
        tonic::Code::Unauthenticated
    );
    let _ = &c.node_cfgs;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_admin_api_needs_the_admin_token_but_probes_do_not() {
    let _s = serial_async().await;
    let c = start().await;
    let port = c.nodes[0].admin_addr.port();
    let sec = pairdb_tests::procs::AdminAuth {
        ca: c.ca.ca(),
        token: None,
    };
    // /health and /metrics answer without a token (over HTTPS).
    assert!(sec.get(port, "/health").await.unwrap().0 == 200);
    assert!(sec.get(port, "/metrics").await.unwrap().0 == 200);
    let (status, body) = sec.post(port, "/api/v1/maintenance/enable").await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!c.nodes[0].node.maintenance());
    let wrong = pairdb_tests::procs::AdminAuth {
        token: Some("not-the-token-0123456789abcdef".into()),
        ..sec.clone()
    };
    assert_eq!(
        wrong
            .post(port, "/api/v1/maintenance/enable")
            .await
            .unwrap()
            .0,
        401
    );
    let admin = pairdb_tests::procs::AdminAuth {
        token: Some(BOOTSTRAP.into()),
        ..sec
    };
    assert_eq!(
        admin
            .post(port, "/api/v1/maintenance/enable")
            .await
            .unwrap()
            .0,
        200
    );
    assert!(c.nodes[0].node.maintenance());
    assert_eq!(
        admin
            .post(port, "/api/v1/maintenance/disable")
            .await
            .unwrap()
            .0,
        200
    );
    c.shutdown().await;
}

/// Runs a binary with `args` and returns whether it is still running after it had time to
/// start (and its stderr when it exited).
fn starts(bin: &str, args: &[&str], env: &[(&str, &str)], port: u16) -> Result<(), String> {
    let mut cmd = std::process::Command::new(binary(bin).unwrap());
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(err);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("{bin} neither started nor exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_non_loopback_bind_without_tls_and_auth_refuses_to_start_unless_insecure() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n").display().to_string();
    let (g, a) = (free_port().unwrap(), free_port().unwrap());
    let grpc = format!("0.0.0.0:{g}");
    let admin = format!("127.0.0.1:{a}");
    let node = [
        "--node-id",
        "n1",
        "--data-dir",
        &data,
        "--grpc-addr",
        &grpc,
        "--admin-addr",
        &admin,
    ];
    let err = starts("pairdb-storage-node", &node, &[], g).unwrap_err();
    assert!(
        err.contains("refusing to start") && err.contains("--insecure"),
        "{err}"
    );
    let mut insecure = node.to_vec();
    insecure.push("--insecure");
    starts("pairdb-storage-node", &insecure, &[], g).unwrap();

    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let (cg, ca) = (free_port().unwrap(), free_port().unwrap());
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("PAIRDB_GRPC_ADDR", &*format!("0.0.0.0:{cg}")),
        ("PAIRDB_ADMIN_ADDR", &*format!("127.0.0.1:{ca}")),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = starts("pairdb-coordinator", &["serve"], &env, cg).unwrap_err();
    assert!(err.contains("refusing to start"), "{err}");
    let mut env = env;
    env.push(("PAIRDB_INSECURE", "true"));
    starts("pairdb-coordinator", &["serve"], &env, cg).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_at_once() {
    let _s = serial_async().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("tls"), "cluster CA");
    let hosts = ["127.0.0.1", "localhost"];
    ca.issue(LeafSpec::coordinator("coordinator", &hosts, 30));
    ca.issue(LeafSpec::storage_node("n1", &hosts, 30));
    let cfg = pairdb_storage_node::Config {
        node_id: "n1".into(),
        data_dir: dir.path().join("n1"),
        grpc_addr: free_addr().unwrap(),
        admin_addr: free_addr().unwrap(),
        block_cache_mb: 16,
        memtable_mb: 8,
        // Polling would take an hour: only the signal can explain a prompt reload.
        tls: TlsSettings {
            reload_interval_ms: 3_600_000,
            ..ca.settings("n1")
        },
        ..Default::default()
    };
    let n = pairdb_storage_node::server::start(cfg, StartOptions::default())
        .await
        .unwrap();
    // The reload worker has installed its SIGHUP handler once it has run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = pem_der(&ca.dir.join("n1.crt"));
    assert_eq!(served_certificate(n.grpc_addr, &ca).await, old);
    ca.issue(LeafSpec::storage_node("n1", &hosts, 60));
    let new = pem_der(&ca.dir.join("n1.crt"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(n.grpc_addr, &ca).await,
        old,
        "reloaded without a signal"
    );
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    wait_async("SIGHUP reloads", Duration::from_secs(3), || async {
        served_certificate(n.grpc_addr, &ca).await == new
    })
    .await
    .unwrap();
    n.shutdown().await;
}
