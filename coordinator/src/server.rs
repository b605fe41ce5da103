//! Starting and stopping a coordinator: metadata store, cluster view, tenants, hints, gRPC and
//! admin HTTP. Every background worker and owned task runs under one
//! [`Supervisor`](pairdb_common::worker::Supervisor), which `/health` shows and `shutdown` stops
//! within one deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use pairdb_common::api::pb::coordinator_service_server::CoordinatorServiceServer;
use pairdb_common::sim::Listener;
use pairdb_common::tls::listen::{self, ListenConfig};
use pairdb_common::tls::{ClientAuth, Tls};
use pairdb_common::worker::Supervisor;

use crate::api::CoordinatorApi;
use crate::auth::{Auth, AuthLayer};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::Config;
use crate::data::{DataConfig, DataPlane};
use crate::hints::{HintConfig, Hints};
use crate::jobs::JobDriver;
use crate::meta::{self, JobTable, MetaStore};
use crate::metrics::Metrics;
use crate::repair::{RepairConfig, Repairs};
use crate::tenants::Tenants;
use crate::topology::{Topology, TopologyConfig};

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How long after a draining coordinator's gRPC port closes its open connections are told to
/// go away (HTTP/2 GOAWAY): long enough for the accept loop to stop and the listener to close,
/// so clients that reconnect on the GOAWAY are refused here (and go to another coordinator)
/// instead of landing in a backlog about to be reset.
const GOAWAY_AFTER_PORT_CLOSE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata store: {0}")]
    Meta(#[from] meta::MetaError),
    #[error("bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("build reflection service: {0}")]
    Reflection(String),
    #[error("{0}")]
    Tls(#[from] pairdb_common::tls::TlsError),
    #[error("{0}")]
    Config(String),
}

pub struct RunningCoordinator {
    pub data: Arc<DataPlane>,
    pub meta: Arc<dyn MetaStore>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    sup: Supervisor,
    /// Resolves when the gRPC server has stopped and finished its requests.
    grpc_done: tokio::sync::oneshot::Receiver<()>,
}

/// Starts a coordinator on an already-open metadata store (hints share its pool).
pub async fn start_with(
    cfg: Config,
    meta: Arc<dyn MetaStore>,
) -> Result<RunningCoordinator, StartError> {
    let hint_meta = meta.clone();
    start_with_stores(cfg, meta, hint_meta).await
}

/// Starts a coordinator with `hint_meta` as the store hints are recorded in and replayed from
/// (its own connection pool, so hints can neither wait on nor exhaust the main one).
pub async fn start_with_stores(
    cfg: Config,
    meta: Arc<dyn MetaStore>,
    hint_meta: Arc<dyn MetaStore>,
) -> Result<RunningCoordinator, StartError> {
    if cfg.migrate_on_start {
        meta.migrate().await?;
    }
    let metrics = Arc::new(Metrics::new());
    let sup = Supervisor::new(metrics.workers.clone());
    if let Some(warning) = cfg
        .exposure()
        .map_err(|e| StartError::Config(e.to_string()))?
    {
        tracing::warn!(
            "INSECURE (--insecure): {warning}; anyone who can reach these ports can read and change every tenant's data and the topology"
        );
    }
    let tls = Tls::load_optional(&cfg.tls, metrics.security.on_loaded())?;
    let bootstrap = cfg.admin_token().map_err(StartError::Config)?;
    let anonymous = metrics.clone();
    let auth = Auth::load(
        cfg.auth,
        bootstrap.as_deref(),
        meta.clone(),
        Duration::from_millis(cfg.token_refresh_ms),
        move || {
            anonymous.anonymous_requests.inc();
        },
    )
    .await?;
    let cluster = Cluster::new(
        meta.clone(),
        ClusterConfig {
            heartbeat_ms: cfg.heartbeat_ms,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            down_after_misses: cfg.down_after_misses,
            ring_poll_ms: cfg.ring_poll_ms,
            connect_timeout_ms: cfg.replica_timeout_ms.min(1000),
            replica_timeout_ms: cfg.replica_timeout_ms,
        },
        tls.clone(),
        sup.clone(),
    );
    cluster.refresh().await?;
    let tenants = Tenants::new(meta.clone(), cfg.tenant_refresh_ms);
    tenants.reload().await.map_err(|e| match e {
        crate::error::Error::Meta(m) => StartError::Meta(m),
        other => StartError::Meta(meta::MetaError::Db(other.to_string())),
    })?;
    let contexts = crate::contexts::ContextKeys::load(
        meta.clone(),
        Duration::from_millis(cfg.context_key_refresh_ms),
    )
    .await?;
    let hints = Hints::new(
        hint_meta,
        cluster.clone(),
        metrics.clone(),
        HintConfig {
            enabled: cfg.hints_enabled,
            replay_interval_ms: cfg.hint_replay_interval_ms,
            max_replay_attempts: cfg.max_replay_attempts,
            hint_ttl_secs: cfg.hint_ttl_secs,
            max_hint_window_secs: cfg.max_hint_window_secs,
            max_hints_per_target: cfg.max_hints_per_target,
            max_hint_bytes_per_target: cfg.max_hint_bytes_per_target,
            replay_batch: 100,
            rpc_timeout_ms: cfg.replica_timeout_ms,
            queue_max: cfg.hint_queue_max,
            queue_max_bytes: (cfg.hint_queue_max_mb << 20) as usize,
            retry_base_ms: cfg.hint_retry_base_ms,
        },
        cfg.coordinator_id.clone(),
    );
    let driver = |table| {
        JobDriver::new(
            table,
            meta.clone(),
            sup.clone(),
            cfg.coordinator_id.clone(),
            cfg.job_lease_ms,
        )
    };
    let topology = Topology::new(
        meta.clone(),
        cluster.clone(),
        metrics.clone(),
        TopologyConfig {
            poll_ms: cfg.change_poll_ms,
            max_concurrent_bootstraps: cfg.max_concurrent_bootstraps,
            stream_max_bytes_per_sec: cfg.stream_max_bytes_per_sec,
            stream_batch_size: cfg.stream_batch_size,
            stream_parallelism: cfg.stream_parallelism,
            cleanup_grace_ms: cfg.cleanup_grace_secs.saturating_mul(1000),
            hint_drain_timeout_ms: cfg.hint_drain_timeout_ms,
        },
        driver(JobTable::Change),
    );
    let repairs = Repairs::new(
        meta.clone(),
        cluster.clone(),
        metrics.clone(),
        RepairConfig {
            poll_ms: cfg.change_poll_ms,
            interval_ms: cfg.repair_interval_secs.saturating_mul(1000),
            parallelism: cfg.repair_parallelism,
            max_bytes_per_sec: cfg.repair_max_bytes_per_sec,
            gc_grace_ms: cfg.tombstone_gc_grace_secs.saturating_mul(1000),
            cleanup_grace_ms: cfg.cleanup_grace_secs.saturating_mul(1000),
        },
        driver(JobTable::Repair),
    );
    let data = Arc::new(DataPlane {
        cluster: cluster.clone(),
        tenants: tenants.clone(),
        hints: hints.clone(),
        metrics: metrics.clone(),
        cfg: DataConfig {
            request_timeout_ms: cfg.request_timeout_ms,
            replica_timeout_ms: cfg.replica_timeout_ms,
            gc_grace_ms: cfg.tombstone_gc_grace_secs.saturating_mul(1000),
            max_owned_tasks: cfg.max_owned_tasks,
        },
        owned_tasks: Arc::new(tokio::sync::Semaphore::new(cfg.max_owned_tasks)),
        limiter: Default::default(),
        sup: sup.clone(),
    });

    let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
    let grpc_listener = Listener::bind(cfg.grpc_addr)
        .await
        .map_err(bind_err("gRPC", cfg.grpc_addr))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(bind_err("gRPC", cfg.grpc_addr))?;
    let admin_listener = Listener::bind(cfg.admin_addr)
        .await
        .map_err(bind_err("admin", cfg.admin_addr))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(bind_err("admin", cfg.admin_addr))?;

    {
        let c = cluster.clone();
        sup.worker("topology", move |cancel| c.clone().run_topology(cancel));
        let c = cluster.clone();
        sup.worker("failure-detector", move |cancel| {
            c.clone().run_failure_detector(cancel)
        });
        let t = tenants.clone();
        sup.worker("tenant-refresh", move |cancel| t.clone().run(cancel));
        let h = hints.clone();
        sup.worker("hint-replay", move |cancel| h.clone().run(cancel));
        let h = hints.clone();
        sup.worker("hint-writer", move |cancel| h.clone().run_writer(cancel));
        let k = contexts.clone();
        sup.worker("context-keys", move |cancel| k.clone().run(cancel));
        let t = topology.clone();
        sup.worker("topology-changes", move |cancel| t.clone().run(cancel));
        let r = repairs.clone();
        sup.worker("repair", move |cancel| r.clone().run(cancel));
        let a = auth.clone();
        sup.worker("token-refresh", move |cancel| a.clone().run(cancel));
        let (d, m) = (data.clone(), meta.clone());
        sup.worker("cluster-gauges", move |cancel| {
            crate::gauges::run(d.clone(), m.clone(), cancel)
        });
        if let Some(t) = &tls {
            let t = t.clone();
            sup.worker("tls-reload", move |cancel| t.clone().run_reload(cancel));
        }
    }

    // gRPC health follows readiness: NOT_SERVING once shutdown begins.
    let health_service = {
        let s = sup.clone();
        pairdb_common::grpc::readiness_health(&sup, "pairdb.CoordinatorService", true, move || {
            !s.is_shutting_down()
        })
        .await
    };
    let (reflection, reflection_alpha) =
        pairdb_common::grpc::reflection(&["pairdb.CoordinatorService"])
            .map_err(|e| StartError::Reflection(e.to_string()))?;
    let max_msg = (cfg.max_message_mb << 20) as usize;
    let backups = Arc::new(crate::backup::Backups {
        meta: meta.clone(),
        cluster: cluster.clone(),
        dir: cfg.backup_dir.clone(),
        retention: cfg.backup_retention,
        part_timeout: Duration::from_millis(cfg.backup_part_timeout_ms),
        coordinator_id: cfg.coordinator_id.clone(),
        sup: sup.clone(),
        taking: Default::default(),
    });
    let svc = CoordinatorServiceServer::new(CoordinatorApi {
        data: data.clone(),
        contexts: contexts.clone(),
        meta: meta.clone(),
        topology: topology.clone(),
        repairs: repairs.clone(),
        auth: auth.clone(),
        backups,
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let refused = metrics.clone();
    let grpc = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(cfg.request_timeout_ms * 4))
        .layer(pairdb_common::otel::TraceLayer)
        .layer(pairdb_common::grpc::AdmissionLayer::new(
            cfg.max_concurrent_requests,
            move || {
                refused
                    .overloaded
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: "concurrency",
                    })
                    .inc();
            },
        ))
        .layer(AuthLayer {
            auth: auth.clone(),
            metrics: metrics.clone(),
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(svc);
    let listen = |client_auth, alpn, name| ListenConfig {
        tls: tls.clone(),
        client_auth,
        alpn,
        on_refused: metrics.security.on_refused(),
        open: Some(metrics.process.listener(name)),
    };
    // A client certificate is optional: tokens authenticate clients; a storage node's
    // certificate lets it register itself (`--join`).
    let grpc_conns = listen::incoming_until(
        grpc_listener,
        listen(ClientAuth::Optional, listen::ALPN_H2, "grpc"),
        &sup,
        "grpc-accept",
        sup.serving_token(),
    );
    let admin_conns = listen::incoming(
        admin_listener,
        listen(ClientAuth::None, listen::ALPN_HTTP1, "admin"),
        &sup,
        "admin-accept",
    );
    // The gRPC server stops on the serving token (a drain: no new connections, HTTP/2 GOAWAY
    // on the open ones, requests in flight finish) before the workers they use are cancelled.
    // The port closes first and GOAWAY follows [`GOAWAY_AFTER_PORT_CLOSE`] later: a client
    // told to go away reconnects at once, and had the port still been open its new
    // connection could land in the listen backlog just as the listener closed and be reset
    // (a failed request, and grpcio then fails every call for its reconnect backoff). The
    // connections still in their handshake at the close are served and told to go away too.
    let c = sup.serving_token();
    let (grpc_stopped, grpc_done) = tokio::sync::oneshot::channel::<()>();
    let serve = grpc.serve_with_incoming_shutdown(listen::tonic_incoming(grpc_conns), async move {
        c.cancelled().await;
        tokio::time::sleep(GOAWAY_AFTER_PORT_CLOSE).await;
    });
    sup.service("grpc", async move {
        let r = serve.await;
        let _ = grpc_stopped.send(());
        r
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(pairdb_common::probes::live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(data.clone());
    let c = sup.cancel_token();
    let listener = listen::AxumListener::new(admin_conns, admin_addr);
    sup.service(
        "admin-http",
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .into_future(),
    );
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, coordinator_id = %cfg.coordinator_id, tls = tls.is_some(), auth = ?cfg.auth, "coordinator serving");
    Ok(RunningCoordinator {
        data,
        meta,
        grpc_addr,
        admin_addr,
        sup,
        grpc_done,
    })
}

/// Opens the metadata store named by the config (a main pool, and a small one for hints)
/// and starts.
pub async fn start(cfg: Config) -> Result<RunningCoordinator, StartError> {
    let meta = meta::connect(&cfg.database_url).await?;
    let hint_meta = meta::connect_with(&cfg.database_url, cfg.hint_db_connections).await?;
    start_with_stores(cfg, meta, hint_meta).await
}

/// Why the coordinator should get no client traffic (empty: ready): only `shutting_down`.
/// A metadata-store outage does not count (the data path goes on with the last ring), nor do
/// storage nodes being down (storage nodes `--join` through the coordinators' Service, so a
/// coordinator must be reachable before any node is).
fn not_ready_reasons(d: &DataPlane) -> Vec<&'static str> {
    if d.sup.is_shutting_down() {
        vec!["shutting_down"]
    } else {
        Vec::new()
    }
}

/// `/health`: ring, storage nodes as this coordinator sees them, workers; 503 when not ready.
async fn health(State(d): State<Arc<DataPlane>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let snap = d.cluster.snapshot();
    let nodes: Vec<serde_json::Value> = snap
        .nodes
        .values()
        .map(|e| {
            serde_json::json!({
                "node_id": e.record.node_id,
                "state": e.record.state.as_str(),
                "status": e.health.status().as_str(),
                "last_seen_ms": e.health.last_seen_ms(),
            })
        })
        .collect();
    let up = snap
        .nodes
        .values()
        .filter(|e| e.health.status() == crate::meta::NodeStatus::Up)
        .count();
    let workers = d.sup.statuses();
    let failed = workers
        .iter()
        .any(|w| w.state != pairdb_common::worker::WorkerState::Running);
    let why = not_ready_reasons(&d);
    let meta_ok = d.cluster.meta_reachable();
    let status = if !why.is_empty() {
        "unavailable"
    } else if (up > 0 || snap.nodes.is_empty()) && !failed && meta_ok {
        "healthy"
    } else {
        "degraded"
    };
    let body = serde_json::json!({
        "status": status,
        "ready": why.is_empty(),
        "not_ready_reasons": why,
        "metadata_store_reachable": meta_ok,
        "ring_version": snap.version,
        "storage_nodes_up": up,
        "storage_nodes": nodes,
        "workers": workers,
    });
    (pairdb_common::probes::ready_status(&why), axum::Json(body)).into_response()
}

/// `/health/ready`: 200 when the coordinator should get client traffic, else 503.
async fn ready(State(d): State<Arc<DataPlane>>) -> axum::response::Response {
    pairdb_common::probes::ready(not_ready_reasons(&d))
}

async fn render_metrics(State(d): State<Arc<DataPlane>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let snap = d.cluster.snapshot();
    let up = snap
        .nodes
        .values()
        .filter(|e| e.health.status() == crate::meta::NodeStatus::Up)
        .count();
    let down = snap
        .nodes
        .values()
        .filter(|e| e.health.status() == crate::meta::NodeStatus::Down)
        .count();
    d.metrics.nodes_up.set(up as i64);
    d.metrics.nodes_down.set(down as i64);
    d.metrics.ring_version.set(snap.version as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.render(),
    )
        .into_response()
}

impl RunningCoordinator {
    /// Stops every worker and owned task, all within [`SHUTDOWN_DEADLINE`].
    pub async fn shutdown(self) {
        self.sup.shutdown(SHUTDOWN_DEADLINE).await;
        tracing::info!("coordinator stopped");
    }

    /// The graceful stop of SIGTERM: readiness and gRPC health report shutting down at once
    /// while requests are still served for `delay` (load balancers that probe readiness take
    /// the coordinator out of rotation), then the gRPC port closes (new connections are
    /// refused and go to another coordinator), open connections get HTTP/2 GOAWAY, and every
    /// request in flight finishes (at most `deadline`); only then are the workers those
    /// requests use cancelled ([`Self::shutdown`]).
    pub async fn drain_and_shutdown(self, delay: Duration, deadline: Duration) {
        self.sup.begin_drain();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "draining: not ready; serving on until the delay ends"
        );
        tokio::time::sleep(delay).await;
        self.sup.stop_serving();
        match tokio::time::timeout(deadline, self.grpc_done).await {
            Ok(_) => tracing::info!("gRPC server drained: every request in flight finished"),
            Err(_) => tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "requests still in flight at the drain deadline; stopping anyway"
            ),
        }
        self.sup.shutdown(SHUTDOWN_DEADLINE).await;
        tracing::info!("coordinator stopped");
    }

    /// The supervisor of this coordinator's background work.
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }
}
