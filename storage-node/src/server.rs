//! Starting and stopping a storage node: engine, identity, disk manager, gRPC (with health and
//! reflection) and admin HTTP. Every background worker, owned task and blocking engine call
//! runs under one [`Supervisor`], which `/health` shows and `shutdown` stops within one
//! deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::api::pb::storage_node_service_server::StorageNodeServiceServer;
use pairdb_common::sim::Listener;
use pairdb_common::tls::listen::{self, ListenConfig};
use pairdb_common::tls::{ClientAuth, Role, Tls};
use pairdb_common::worker::Supervisor;
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

/// How long shutdown waits for every task together before giving up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A started storage node.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    sup: Supervisor,
}

/// Overrides for tests and embedding.
#[derive(Default)]
pub struct StartOptions {
    /// Replace statvfs with another usage source.
    pub usage_source: Option<Box<dyn UsageSource>>,
    /// Serve this engine instead of opening RocksDB in `data_dir/db` (the simulation's
    /// in-memory engine, kept across a simulated crash).
    pub engine: Option<Arc<dyn Engine>>,
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
    open_store_with(cfg, metrics, usage, None)
}

/// [`open_store`] over `engine` when given (else RocksDB in `data_dir/db`).
pub fn open_store_with(
    cfg: &Config,
    metrics: Arc<Metrics>,
    usage: Option<Box<dyn UsageSource>>,
    engine: Option<Arc<dyn Engine>>,
) -> Result<(Arc<Store>, Arc<DiskMonitor>), StartError> {
    let db_dir = cfg.data_dir.join("db");
    std::fs::create_dir_all(&db_dir).map_err(|source| StartError::DataDir {
        path: db_dir.clone(),
        source,
    })?;
    let engine: Arc<dyn Engine> = match engine {
        Some(e) => e,
        None => {
            let ropts = RocksOptions {
                block_cache_bytes: cfg.block_cache_mb << 20,
                memtable_bytes: cfg.memtable_mb << 20,
                max_memtables: cfg.max_memtables,
                background_jobs: cfg.background_jobs,
                salvage_wal: cfg.wal_recovery == crate::config::WalRecovery::Salvage,
            };
            Arc::new(
                RocksEngine::open(&db_dir, &ropts).map_err(|source| StartError::Engine {
                    path: db_dir.clone(),
                    source,
                })?,
            )
        }
    };
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
    let sup = Supervisor::new(metrics.workers.clone());
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
        sup.spawn_blocking("open-store", move || {
            open_store_with(&cfg, metrics, opts.usage_source, opts.engine)
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))??
    };
    let outage = {
        let engine = store.engine().clone();
        sup.spawn_blocking("open-outage", move || {
            let o = crate::outage::Outage::open(engine.clone())?;
            if engine.salvaged() {
                o.mark_out_of_date()?;
            }
            Ok::<_, crate::engine::EngineError>(o)
        })
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
            sup.clone(),
        )
        .with_tls(tls.clone())
        .with_backup_dir(cfg.backup_dir.clone()),
    );

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

    // gRPC health follows readiness (maintenance, --join, disk breaker), starting from the
    // state at start (a node with `--join` is not ready until it has registered).
    let health_service = {
        let n = node.clone();
        let initially = cfg.join.is_none() && node.not_ready_reasons().is_empty();
        pairdb_common::grpc::readiness_health(
            &sup,
            "pairdb.StorageNodeService",
            initially,
            move || n.not_ready_reasons().is_empty(),
        )
        .await
    };
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
        .layer(pairdb_common::otel::TraceLayer)
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
    let listen = |client_auth, alpn, name| ListenConfig {
        tls: tls.clone(),
        client_auth,
        alpn,
        on_refused: node.metrics.security.on_refused(),
        open: Some(node.metrics.process.listener(name)),
    };
    // Peers must show a cluster-CA certificate; RoleLayer then checks its role.
    let grpc_conns = listen::incoming(
        grpc_listener,
        listen(ClientAuth::Required, listen::ALPN_H2, "grpc"),
        &sup,
        "grpc-accept",
    );
    let admin_conns = listen::incoming(
        admin_listener,
        listen(ClientAuth::None, listen::ALPN_HTTP1, "admin"),
        &sup,
        "admin-accept",
    );
    let c = sup.cancel_token();
    sup.service(
        "grpc",
        grpc.serve_with_incoming_shutdown(listen::tonic_incoming(grpc_conns), async move {
            c.cancelled().await
        }),
    );

    let app = crate::admin::router(node.clone(), admin_token.as_deref());
    let c = sup.cancel_token();
    let listener = listen::AxumListener::new(admin_conns, admin_addr);
    sup.service(
        "admin-http",
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<listen::PeerInfo>(),
        )
        .with_graceful_shutdown(async move { c.cancelled().await })
        .into_future(),
    );

    let interval = Duration::from_millis(cfg.disk_sample_interval_ms);
    let s = sup.clone();
    sup.worker("disk-manager", move |cancel| {
        disk.clone().run(interval, s.clone(), cancel)
    });
    let s = sup.clone();
    sup.worker("liveness", move |cancel| {
        outage.clone().run(s.clone(), cancel)
    });
    if let Some(t) = &tls {
        let t = t.clone();
        sup.worker("tls-reload", move |cancel| t.clone().run_reload(cancel));
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
    crate::join::spawn(&cfg, grpc_addr, admin_addr, &tls, &node);
    Ok(RunningNode {
        node,
        grpc_addr,
        admin_addr,
        sup,
    })
}

impl RunningNode {
    /// Stops every task (all within the shutdown deadline) and flushes the engine.
    pub async fn shutdown(self) {
        self.sup.shutdown(SHUTDOWN_DEADLINE).await;
        let store = self.node.store.clone();
        // Every other task has stopped: the last blocking call flushes the memtables.
        let flushed = self
            .sup
            .spawn_blocking("flush", move || store.engine().flush())
            .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "flush on shutdown failed"),
            Err(e) => tracing::error!(error = %e, "flush on shutdown failed"),
        }
        tracing::info!(node_id = %self.node.node_id, "storage node stopped");
    }

    /// The cancellation token that stops the node (for embedding).
    pub fn cancel_token(&self) -> CancellationToken {
        self.sup.cancel_token()
    }

    /// The supervisor of this node's background work.
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }
}
