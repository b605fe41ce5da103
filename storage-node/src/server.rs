//! Starting and stopping a storage node: engine, identity, disk manager, gRPC (with health and
//! reflection) and admin HTTP, each a named task that stops on one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb::storage_node_service_server::StorageNodeServiceServer;
use pairdb_common::tls::listen::{self, ListenConfig};
use pairdb_common::tls::{ClientAuth, Role, Tls};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::StorageApi;
use crate::config::Config;
use crate::disk::{DiskMonitor, StatvfsSource, UsageSource};
use crate::engine::Engine;
use crate::engine::rocks::{RocksEngine, RocksOptions};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::{Store, StoreConfig};

/// How long shutdown waits for each task before giving up on it.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A started storage node.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Overrides for tests and embedding.
#[derive(Default)]
pub struct StartOptions {
    /// Replace statvfs with another usage source.
    pub usage_source: Option<Box<dyn UsageSource>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("open RocksDB in {path}: {source}")]
    Engine {
        path: std::path::PathBuf,
        source: crate::engine::EngineError,
    },
    #[error("establish node identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("build reflection service: {0}")]
    Reflection(String),
    #[error("start-up task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Tls(#[from] pairdb_common::tls::TlsError),
    #[error("{0}")]
    Config(String),
}

/// Opens the engine in `data_dir/db` and establishes the node identity.
pub fn open_store(
    cfg: &Config,
    metrics: Arc<Metrics>,
    usage: Option<Box<dyn UsageSource>>,
) -> Result<(Arc<Store>, Arc<DiskMonitor>), StartError> {
    let db_dir = cfg.data_dir.join("db");
    std::fs::create_dir_all(&db_dir).map_err(|source| StartError::DataDir {
        path: db_dir.clone(),
        source,
    })?;
    let ropts = RocksOptions {
        block_cache_bytes: cfg.block_cache_mb << 20,
        memtable_bytes: cfg.memtable_mb << 20,
        max_memtables: cfg.max_memtables,
        background_jobs: cfg.background_jobs,
    };
    let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&db_dir, &ropts).map_err(
        |source| StartError::Engine {
            path: db_dir.clone(),
            source,
        },
    )?);
    let identity =
        Identity::establish(engine.as_ref(), &cfg.data_dir, &cfg.node_id, cfg.new_epoch)?;
    match &identity.new_epoch_reason {
        Some(reason) => {
            tracing::warn!(node_id = %cfg.node_id, epoch = identity.actor().epoch, %reason, "starting with a new incarnation epoch")
        }
        None => {
            tracing::info!(node_id = %cfg.node_id, epoch = identity.actor().epoch, "resuming incarnation epoch")
        }
    }
    let source = usage.unwrap_or_else(|| {
        Box::new(StatvfsSource {
            path: cfg.data_dir.clone(),
        })
    });
    let disk = Arc::new(DiskMonitor::new(source, cfg.disk.clone(), metrics.clone()));
    let store = Arc::new(Store::new(
        engine,
        identity,
        disk.clone(),
        metrics,
        StoreConfig {
            sync_writes: cfg.sync_writes,
            table_min_bytes: cfg.stream_table_min_kb << 10,
        },
    ));
    Ok((store, disk))
}

/// Starts a node and returns once both listeners are bound and the node is serving.
pub async fn start(cfg: Config, opts: StartOptions) -> Result<RunningNode, StartError> {
    let metrics = Arc::new(Metrics::new(&cfg.node_id));
    let admin_token = cfg.admin_token().map_err(StartError::Config)?;
    if let Some(warning) = cfg
        .exposure(admin_token.is_some())
        .map_err(|e| StartError::Config(e.to_string()))?
    {
        tracing::warn!(
            "INSECURE (--insecure): {warning}; anyone who can reach these ports can read and erase this node's data"
        );
    }
    let tls = Tls::load_optional(&cfg.tls, metrics.security.on_loaded())?;
    let (store, disk) = {
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || open_store(&cfg, metrics, opts.usage_source))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??
    };
    let outage = {
        let engine = store.engine().clone();
        tokio::task::spawn_blocking(move || crate::outage::Outage::open(engine))
            .await
            .map_err(|e| StartError::Task(e.to_string()))?
            .map_err(|e| StartError::Task(format!("record liveness: {e}")))?
    };
    let outage = Arc::new(outage);
    let node = Arc::new(
        Node::new(
            cfg.node_id.clone(),
            cfg.data_dir.clone(),
            store,
            disk.clone(),
            metrics,
            outage.clone(),
            crate::node::NodeLimits {
                scan_threads: cfg.scan_threads,
                max_queued_scans: cfg.max_queued_scans,
                stream_stall_timeout_ms: cfg.stream_stall_timeout_ms,
                max_concurrent_pulls: cfg.max_concurrent_pulls,
            },
        )
        .with_tls(tls.clone()),
    );
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();

    let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
    let grpc_listener = TcpListener::bind(cfg.grpc_addr)
        .await
        .map_err(bind_err("gRPC", cfg.grpc_addr))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(bind_err("gRPC", cfg.grpc_addr))?;
    let admin_listener = TcpListener::bind(cfg.admin_addr)
        .await
        .map_err(bind_err("admin", cfg.admin_addr))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(bind_err("admin", cfg.admin_addr))?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StorageNodeServiceServer<StorageApi>>()
        .await;
    let (reflection, reflection_alpha) =
        pairdb_common::grpc::reflection(&["pairdb.StorageNodeService"])
            .map_err(|e| StartError::Reflection(e.to_string()))?;
    let max_msg = (cfg.max_message_mb << 20) as usize;
    let svc = StorageNodeServiceServer::new(StorageApi::new(node.clone()))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let refused = node.metrics.clone();
    let denied = node.metrics.clone();
    let grpc = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(cfg.max_concurrent_requests)
        .layer(pairdb_common::grpc::RoleLayer::new(
            "/pairdb.StorageNodeService/",
            &[Role::Coordinator, Role::StorageNode],
            move || denied.security.denied("role"),
        ))
        .layer(pairdb_common::grpc::AdmissionLayer::new(
            cfg.max_inflight_requests,
            move || {
                refused.requests_refused.inc();
            },
        ))
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(svc);
    let listen = |client_auth, alpn| ListenConfig {
        tls: tls.clone(),
        client_auth,
        alpn,
        on_refused: node.metrics.security.on_refused(),
    };
    // Peers must show a cluster-CA certificate; RoleLayer then checks its role.
    let grpc_conns = listen::incoming(
        grpc_listener,
        listen(ClientAuth::Required, listen::ALPN_H2),
        cancel.clone(),
    );
    let admin_conns = listen::incoming(
        admin_listener,
        listen(ClientAuth::None, listen::ALPN_HTTP1),
        cancel.clone(),
    );
    let c = cancel.clone();
    tasks.push((
        "grpc",
        tokio::spawn(async move {
            if let Err(e) = grpc
                .serve_with_incoming_shutdown(listen::tonic_incoming(grpc_conns), c.cancelled())
                .await
            {
                tracing::error!(error = %e, "gRPC server stopped with an error");
            }
        }),
    ));

    let app = crate::admin::router(node.clone(), admin_token.as_deref());
    let c = cancel.clone();
    tasks.push((
        "admin-http",
        tokio::spawn(async move {
            let listener = listen::AxumListener::new(admin_conns, admin_addr);
            if let Err(e) = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<listen::PeerInfo>(),
            )
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await
            {
                tracing::error!(error = %e, "admin HTTP server stopped with an error");
            }
        }),
    ));

    let interval = Duration::from_millis(cfg.disk_sample_interval_ms);
    tasks.push((
        "disk-manager",
        tokio::spawn(disk.run(interval, cancel.clone())),
    ));
    tasks.push(("liveness", tokio::spawn(outage.run(cancel.clone()))));
    if let Some(t) = &tls {
        tasks.push((
            "tls-reload",
            tokio::spawn(t.clone().run_reload(cancel.clone())),
        ));
    }

    tracing::info!(
        node_id = %cfg.node_id,
        grpc = %grpc_addr,
        admin = %admin_addr,
        data_dir = %cfg.data_dir.display(),
        sync_writes = cfg.sync_writes,
        tls = tls.is_some(),
        admin_token = admin_token.is_some(),
        "storage node serving"
    );
    crate::join::spawn(&cfg, grpc_addr, admin_addr, &tls, cancel.clone());
    Ok(RunningNode {
        node,
        grpc_addr,
        admin_addr,
        cancel,
        tasks,
    })
}

impl RunningNode {
    /// Stops every task (each within the shutdown deadline) and flushes the engine.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for (name, task) in self.tasks {
            match tokio::time::timeout(SHUTDOWN_DEADLINE, task).await {
                Ok(_) => tracing::debug!(task = name, "stopped"),
                Err(_) => tracing::warn!(task = name, "did not stop within the deadline"),
            }
        }
        let store = self.node.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = store.engine().flush() {
                tracing::error!(error = %e, "flush on shutdown failed");
            }
        })
        .await;
        tracing::info!(node_id = %self.node.node_id, "storage node stopped");
    }

    /// The cancellation token that stops the node (for embedding).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
