//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an in-process OTLP collector
//! (a `TraceService` gRPC server in this test), one client Write carrying a W3C
//! `traceparent` produces one trace across both services: the coordinator's request span is
//! the client span's child, its replica calls and batch RPCs are below it, and each storage
//! node's `BatchWrite` (the coordinating replica) or `BatchApply` (the others) span is the
//! child of a coordinator batch span.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use pairdb_common::api::pb;
use pairdb_tests::procs::{ProcCluster, ProcOptions};
use pairdb_tests::*;

/// One received span: service, name, trace id, span id, parent span id (hex).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_is_one_trace_across_coordinator_and_storage_nodes() {
    let _s = serial_async().await;
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let otel = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
    ];
    let c = ProcCluster::start(ProcOptions {
        coordinators: 1,
        coord_env: otel.clone(),
        node_env: otel,
        ..ProcOptions::default()
    })
    .await
    .unwrap();
    let mut client = c.coord().await.unwrap();
    // The cluster is up when a write succeeds; that write's trace is not the one we follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = client
            .write(pb::WriteRequest {
                tenant_id: "t1".into(),
                key: b"warm-up".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await;
        if w.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no write succeeded: {w:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut req = tonic::Request::new(pb::WriteRequest {
        tenant_id: "t1".into(),
        key: b"traced".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    client.write(req).await.unwrap();

    // Every replica answered the write (three BatchWrite spans on the nodes).
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans: Vec<Got> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == TRACE)
            .cloned()
            .collect();
        let on_nodes = spans
            .iter()
            .filter(|s| s.service == "pairdb-storage-node")
            .count();
        if on_nodes >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace incomplete after 20 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let root = spans
        .iter()
        .find(|s| s.service == "pairdb-coordinator" && s.name == "/pairdb.CoordinatorService/Write")
        .unwrap_or_else(|| panic!("no coordinator request span: {spans:#?}"));
    assert_eq!(root.parent, CLIENT_SPAN, "the client's span is the parent");
    let calls: Vec<&Got> = spans.iter().filter(|s| s.name == "replica_call").collect();
    assert_eq!(calls.len(), 3, "{spans:#?}");
    // Each node's request span hangs, through the coordinator's batch span and replica call,
    // off the coordinator's request span.
    for node_span in spans.iter().filter(|s| s.service == "pairdb-storage-node") {
        // The coordinating replica writes (minting the version); the others apply it.
        assert!(
            [
                "/pairdb.StorageNodeService/BatchWrite",
                "/pairdb.StorageNodeService/BatchApply"
            ]
            .contains(&node_span.name.as_str()),
            "{node_span:?}"
        );
        let mut chain = vec![node_span.name.clone()];
        let mut at = node_span;
        while let Some(p) = by_id.get(at.parent.as_str()) {
            chain.push(format!("{}:{}", p.service, p.name));
            at = p;
        }
        assert_eq!(
            at.id, root.id,
            "storage span not below the coordinator's request: {chain:?}"
        );
        assert!(
            chain.iter().any(|c| c.ends_with("replica_batch")),
            "{chain:?}"
        );
        assert!(
            chain.iter().any(|c| c.ends_with("replica_call")),
            "{chain:?}"
        );
    }
    assert!(
        spans
            .iter()
            .any(|s| s.name == "/pairdb.StorageNodeService/BatchWrite"),
        "{spans:#?}"
    );
    drop(c);
    server.abort();
}
