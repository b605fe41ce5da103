//! TLS on every port: refusals, rotation on disk, SIGHUP.

use super::*;

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
