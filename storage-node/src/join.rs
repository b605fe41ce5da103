//! Self-registration (`--join <coordinator>`): at start the node calls AddStorageNode with its
//! stable identity (the StatefulSet pod name), so scaling a StatefulSet up bootstraps a node and
//! restarting a pod is a no-op (or an address update). Retries with exponential backoff
//! (`backon`) while the coordinator is unreachable; stops on an answer that retrying cannot
//! change (bad request, topology conflict) and logs it.

use std::net::SocketAddr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use pairdb_common::api::pb;
use pairdb_common::api::pb::coordinator_service_client::CoordinatorServiceClient;
use pairdb_common::auth::BearerToken;
use pairdb_common::tls::Expect;
use pairdb_common::tls::connect::{self, ClientTls};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The host coordinators and other nodes reach this node at.
pub fn advertise_host(cfg: &Config, grpc: SocketAddr) -> String {
    if !cfg.advertise_host.is_empty() {
        return cfg.advertise_host.clone();
    }
    if !grpc.ip().is_unspecified() {
        return grpc.ip().to_string();
    }
    crate::config::env_or_hostname("POD_IP").unwrap_or_else(|| "127.0.0.1".into())
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

/// Registers once (with retries); returns the node's state as the coordinator reports it.
/// With TLS the node's certificate (storage-node role, its node id) is what authorizes it to
/// register itself; `token` (the admin token, when configured) is sent as well.
pub async fn register(
    coordinator: &str,
    req: pb::AddStorageNodeRequest,
    tls: ClientTls,
    token: BearerToken,
    cancel: CancellationToken,
) -> Result<pb::TopologyChangeResponse, String> {
    let ep = connect::endpoint(coordinator)?.connect_timeout(Duration::from_secs(5));
    let attempt = || {
        let (ep, tls, token) = (ep.clone(), tls.clone(), token.clone());
        let req = req.clone();
        async move {
            let ch = connect::channel(ep, tls)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut c = CoordinatorServiceClient::with_interceptor(ch, token);
            c.add_storage_node(req).await.map(|r| r.into_inner())
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times();
    let run = attempt
        .retry(backoff)
        .when(retryable)
        .notify(|e, wait| tracing::warn!(error = %e.message(), retry_in = ?wait, "joining the cluster failed; retrying"));
    tokio::select! {
        _ = cancel.cancelled() => Err("stopped before joining".into()),
        r = run => r.map_err(|s| format!("{}: {}", s.code(), s.message())),
    }
}

/// Registers in the background and logs the outcome; the node is not ready until it has.
pub fn spawn(
    cfg: &Config,
    grpc: SocketAddr,
    admin: SocketAddr,
    tls: &Option<std::sync::Arc<pairdb_common::tls::Tls>>,
    node: &std::sync::Arc<crate::node::Node>,
) {
    let sup = &node.sup;
    let cancel = sup.cancel_token();
    let Some(coordinator) = cfg.join.clone() else {
        return;
    };
    // Not ready (readiness probe, gRPC health) until registered.
    node.set_joined(false);
    let joined = node.clone();
    let tls = ClientTls::cluster(tls, Expect::any());
    let token = match cfg
        .admin_token()
        .and_then(|t| BearerToken::new(t.as_deref()))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "admin token unusable; joining without it");
            BearerToken::default()
        }
    };
    let req = pb::AddStorageNodeRequest {
        node_id: cfg.node_id.clone(),
        host: advertise_host(cfg, grpc),
        port: u32::from(grpc.port()),
        virtual_nodes: cfg.virtual_nodes,
        zone: cfg.zone.clone(),
        admin_port: u32::from(admin.port()),
        initial_member: false,
    };
    drop(sup.spawn("join", async move {
        match register(&coordinator, req, tls, token, cancel).await {
            Ok(r) => {
                let state = r
                    .node
                    .map(|n| {
                        pb::NodeState::try_from(n.state)
                            .unwrap_or_default()
                            .as_str_name()
                    })
                    .unwrap_or("UNKNOWN");
                let change = r.change.map(|c| c.change_id).unwrap_or_default();
                tracing::info!(%coordinator, state, change_id = %change, "registered with the cluster");
                joined.set_joined(true);
            }
            Err(e) => tracing::error!(%coordinator, error = %e, "could not join the cluster"),
        }
    }));
}
