//! Fail closed: a coordinating replica whose answer carries a key state that does not decode
//! fails the write — the coordinator never ships an empty state in its place for the other
//! replicas to acknowledge. One storage node is served through a wrapper that corrupts the
//! state of every Write/BatchWrite answer (as a buggy or hostile peer would).
#![allow(clippy::unwrap_used)]

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_server::{
    StorageNodeService, StorageNodeServiceServer,
};
use pairdb_coordinator::meta::{NodeStatus, NodeWrite};
use pairdb_storage_node::api::StorageApi;
use pairdb_tests::cluster::*;
use pairdb_tests::serial_async;
use tonic::{Request, Response, Status};

/// A key state no decoder accepts: a version without a dot.
fn garbage() -> Option<pb::KeyState> {
    Some(pb::KeyState {
        versions: vec![pb::Version::default()],
        context: None,
    })
}

struct Corrupting(StorageApi);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl StorageNodeService for Corrupting {
    async fn write(&self, r: Request<pb::WriteOp>) -> R<pb::WriteResult> {
        let mut out = self.0.write(r).await?;
        out.get_mut().state = garbage();
        Ok(out)
    }
    async fn batch_write(&self, r: Request<pb::BatchWriteRequest>) -> R<pb::BatchWriteResponse> {
        let mut out = self.0.batch_write(r).await?;
        for w in &mut out.get_mut().results {
            if w.error.is_none() {
                w.state = garbage();
            }
        }
        Ok(out)
    }
    async fn apply(&self, r: Request<pb::KeyVersions>) -> R<pb::ApplyResult> {
        self.0.apply(r).await
    }
    async fn batch_apply(&self, r: Request<pb::BatchApplyRequest>) -> R<pb::BatchApplyResponse> {
        self.0.batch_apply(r).await
    }
    async fn read(&self, r: Request<pb::KeyRef>) -> R<pb::ReadResult> {
        self.0.read(r).await
    }
    async fn batch_read(&self, r: Request<pb::BatchReadRequest>) -> R<pb::BatchReadResponse> {
        self.0.batch_read(r).await
    }
    async fn repair(&self, r: Request<pb::KeyVersions>) -> R<pb::ApplyResult> {
        self.0.repair(r).await
    }
    type StreamRangeStream = <StorageApi as StorageNodeService>::StreamRangeStream;
    async fn stream_range(&self, r: Request<pb::StreamRangeRequest>) -> R<Self::StreamRangeStream> {
        self.0.stream_range(r).await
    }
    async fn range_digest(&self, r: Request<pb::RangeDigestRequest>) -> R<pb::RangeDigestResponse> {
        self.0.range_digest(r).await
    }
    type PullRangeStream = <StorageApi as StorageNodeService>::PullRangeStream;
    async fn pull_range(&self, r: Request<pb::PullRangeRequest>) -> R<Self::PullRangeStream> {
        self.0.pull_range(r).await
    }
    async fn repair_digest(
        &self,
        r: Request<pb::RepairDigestRequest>,
    ) -> R<pb::RepairDigestResponse> {
        self.0.repair_digest(r).await
    }
    async fn repair_keys(&self, r: Request<pb::RepairKeysRequest>) -> R<pb::RepairKeysResponse> {
        self.0.repair_keys(r).await
    }
    async fn purge_tombstones(
        &self,
        r: Request<pb::PurgeTombstonesRequest>,
    ) -> R<pb::PurgeTombstonesResponse> {
        self.0.purge_tombstones(r).await
    }
    async fn drop_range(&self, r: Request<pb::DropRangeRequest>) -> R<pb::DropRangeResponse> {
        self.0.drop_range(r).await
    }
    async fn drop_tenant_range(
        &self,
        r: Request<pb::DropTenantRangeRequest>,
    ) -> R<pb::DropRangeResponse> {
        self.0.drop_tenant_range(r).await
    }
    async fn mark_repaired(
        &self,
        r: Request<pb::MarkRepairedRequest>,
    ) -> R<pb::MarkRepairedResponse> {
        self.0.mark_repaired(r).await
    }
    async fn node_info(&self, r: Request<pb::NodeInfoRequest>) -> R<pb::NodeInfoResponse> {
        self.0.node_info(r).await
    }
    async fn set_maintenance(
        &self,
        r: Request<pb::SetMaintenanceRequest>,
    ) -> R<pb::SetMaintenanceResponse> {
        self.0.set_maintenance(r).await
    }
    async fn create_backup_part(
        &self,
        r: Request<pb::BackupPartRequest>,
    ) -> R<pb::BackupPartResponse> {
        self.0.create_backup_part(r).await
    }
    async fn verify_backup_part(
        &self,
        r: Request<pb::BackupPartRequest>,
    ) -> R<pb::BackupPartResponse> {
        self.0.verify_backup_part(r).await
    }
    async fn delete_backup_part(
        &self,
        r: Request<pb::BackupPartRequest>,
    ) -> R<pb::BackupPartResponse> {
        self.0.delete_backup_part(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_does_not_decode_fails_the_write_and_reaches_no_other_replica() {
    let _s = serial_async().await;
    let mut c = TestCluster::start(ClusterOptions {
        backend: Backend::Sqlite,
        nodes: 3,
        coordinators: 0,
        hints: false,
        tweak: None,
    })
    .await
    .unwrap();
    // n1 is reached only through the corrupting wrapper.
    let node = c.nodes[0].as_ref().unwrap().node.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StorageNodeServiceServer::new(Corrupting(StorageApi::new(
                node,
            ))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    c.meta
        .write_nodes(&[NodeWrite::SetAddress {
            node_id: "n1".into(),
            host: "127.0.0.1".into(),
            port,
            admin_port: c.node_cfgs[0].admin_addr.port(),
        }])
        .await
        .unwrap();
    let cfg = coordinator_config(&c.db_url, "coord-fc", false).unwrap();
    c.coordinators
        .push(pairdb_coordinator::server::start(cfg).await.unwrap());
    c.wait_status(0, NodeStatus::Up).await.unwrap();
    let mut a = c.client(0).await.unwrap();
    let (mut failed, mut ok) = (Vec::new(), 0);
    for i in 0..40 {
        let key = format!("fc-{i}");
        match a
            .write(write_req(
                key.as_bytes(),
                b"v",
                vec![],
                pb::Consistency::Quorum,
            ))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(reason(&e).0, "INTERNAL", "{}", e.message());
                assert!(e.message().contains("does not decode"), "{}", e.message());
                failed.push(key);
            }
        }
    }
    assert!(!failed.is_empty(), "n1 coordinated none of the writes");
    assert!(
        ok > 0,
        "writes coordinated by the other replicas must succeed"
    );
    // What failed reached no other replica: nothing was shipped in place of the state.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for key in &failed {
        for i in 1..3 {
            let mut s = c.storage(i).await.unwrap();
            let r = s
                .read(pb::KeyRef {
                    tenant_id: "t1".into(),
                    key: key.as_bytes().to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!r.exists, "{key} reached node {i}");
        }
        // The version stays on the coordinating replica (repair spreads it).
        assert_eq!(
            c.node_values(0, key.as_bytes()).await.unwrap(),
            vec![b"v".to_vec()]
        );
    }
    server.abort();
    c.shutdown().await;
}
