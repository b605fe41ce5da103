//! Shared helpers for storage-node component tests: start a real node (RocksDB, gRPC, admin
//! HTTP) on ephemeral ports in a temp dir, and talk to it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_storage_node::Config;
use pairdb_storage_node::disk::UsageSource;
use pairdb_storage_node::server::{self, RunningNode, StartOptions};
use tonic::transport::Channel;

pub type Client = StorageNodeServiceClient<Channel>;

pub fn config(dir: &Path, node_id: &str) -> Config {
    Config {
        node_id: node_id.to_string(),
        data_dir: dir.to_path_buf(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        block_cache_mb: 16,
        memtable_mb: 8,
        disk_sample_interval_ms: 50,
        ..Config::default()
    }
}

pub async fn start(cfg: Config, usage: Option<Box<dyn UsageSource>>) -> (RunningNode, Client) {
    pairdb_common::telemetry::init_logging(false);
    let node = server::start(
        cfg,
        StartOptions {
            usage_source: usage,
            engine: None,
        },
    )
    .await
    .unwrap();
    let client = StorageNodeServiceClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .unwrap();
    (node, client)
}

pub fn write_op(tenant: &str, key: &[u8], value: &[u8], context: Vec<u8>) -> pb::WriteOp {
    pb::WriteOp {
        tenant_id: tenant.to_string(),
        key: key.to_vec(),
        value: value.to_vec(),
        context,
        ..Default::default()
    }
}

pub fn key_ref(tenant: &str, key: &[u8]) -> pb::KeyRef {
    pb::KeyRef {
        tenant_id: tenant.to_string(),
        key: key.to_vec(),
    }
}

/// The context token covering everything a ReadResult returned.
pub fn read_context(r: &pb::ReadResult) -> Vec<u8> {
    let state = pairdb_common::convert::state_from_pb(r.state.clone().unwrap_or_default()).unwrap();
    pairdb_common::context::encode_internal(&state.read_context())
}

/// Values of the live (non-tombstone) versions, sorted.
pub fn values(r: &pb::ReadResult) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = r
        .state
        .as_ref()
        .map(|s| {
            s.versions
                .iter()
                .filter(|v| !v.tombstone)
                .map(|v| v.value.clone())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `ErrorInfo.reason` of a status.
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The value of an un-labelled-by-op metric line (`name{node_id=...} value`), summed.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
