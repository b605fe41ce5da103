//! The internal hop and the admin API: explicit destructive ranges, certified pull sources,
//! node identity on address changes, admin tokens.

use super::*;

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
    // A tenant-scoped drop needs an explicit range and a valid tenant id.
    for bad in [
        pb::DropTenantRangeRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        },
        pb::DropTenantRangeRequest {
            range: full,
            whole_ring: false,
            tenant_id: "t1".into(),
        },
        pb::DropTenantRangeRequest {
            range: Some(pb::TokenRange { start: 1, end: 2 }),
            whole_ring: false,
            tenant_id: String::new(),
        },
        pb::DropTenantRangeRequest {
            range: Some(pb::TokenRange { start: 1, end: 2 }),
            whole_ring: false,
            tenant_id: "../Bad Tenant".into(),
        },
    ] {
        assert_eq!(
            code(n1.drop_tenant_range(bad.clone()).await),
            tonic::Code::InvalidArgument,
            "{bad:?}"
        );
    }
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
