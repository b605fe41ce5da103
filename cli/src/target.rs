//! What `pairdbctl bench workload` drives: a pairdb coordinator, or an etcd cluster as the
//! reference (`--target etcd`, through the `etcd-client` crate), with the same keys, values,
//! operation mix and concurrency, so the two are measured by one load generator.
//!
//! On etcd a read is a linearizable Range (etcd's default, a quorum read through the leader,
//! like pairdb's QUORUM) and a write a Put; `--etcd-serializable` makes reads local.

use anyhow::Result;
use pairdb_common::api::pb;

/// One side of the benchmark; cheap to clone (each load task owns one).
#[derive(Clone)]
pub enum Target {
    Pairdb {
        client: pairdb_common::client::Coordinator,
        tenant: String,
        consistency: i32,
    },
    Etcd {
        kv: etcd_client::KvClient,
        serializable: bool,
    },
}

impl Target {
    /// An etcd cluster's KV client over its endpoints (`host:port`, comma-separated).
    pub async fn etcd(endpoints: &[String], serializable: bool) -> Result<Target> {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| match e.starts_with("http") {
                true => e.clone(),
                false => format!("http://{e}"),
            })
            .collect();
        let client = etcd_client::Client::connect(&urls, None)
            .await
            .map_err(|e| anyhow::anyhow!("connect to etcd {}: {e}", endpoints.join(",")))?;
        Ok(Target::Etcd {
            kv: client.kv_client(),
            serializable,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Target::Pairdb { .. } => "pairdb",
            Target::Etcd { .. } => "etcd",
        }
    }

    /// One read; whether it succeeded (a missing key is a success).
    pub async fn read(&mut self, key: Vec<u8>) -> bool {
        match self {
            Target::Pairdb {
                client,
                tenant,
                consistency,
            } => match client
                .read(pb::ReadRequest {
                    tenant_id: tenant.clone(),
                    key,
                    consistency: *consistency,
                    timeout_ms: 0,
                })
                .await
            {
                Ok(_) => true,
                Err(s) => s.code() == tonic::Code::NotFound,
            },
            Target::Etcd { kv, serializable } => {
                let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                kv.get(key, opts).await.is_ok()
            }
        }
    }

    /// One blind write (no context: the bench tenant is last-writer-wins).
    pub async fn write(&mut self, key: Vec<u8>, value: Vec<u8>) -> bool {
        match self {
            Target::Pairdb {
                client,
                tenant,
                consistency,
            } => client
                .write(pb::WriteRequest {
                    tenant_id: tenant.clone(),
                    key,
                    value,
                    consistency: *consistency,
                    ..Default::default()
                })
                .await
                .is_ok(),
            Target::Etcd { kv, .. } => kv.put(key, value, None).await.is_ok(),
        }
    }
}
