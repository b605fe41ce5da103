//! Admin HTTP API (axum) on its own port: health, metrics and operator actions (SPEC §4).
//! Long actions (compaction, integrity scan, snapshot) run on blocking threads; compaction runs
//! as a background job unless `?wait=true`, and `/api/v1/compaction/status` lists the jobs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::node::Node;

/// Most finished jobs remembered.
const JOB_HISTORY: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: String,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// Background admin jobs of a node.
#[derive(Default)]
pub struct Jobs {
    next: Mutex<u64>,
    list: Mutex<VecDeque<Job>>,
}

impl Jobs {
    fn start(&self, kind: &str) -> u64 {
        let id = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        let mut list = self.list.lock();
        list.push_back(Job {
            id,
            kind: kind.to_string(),
            started_at_ms: pairdb_common::now_ms(),
            finished_at_ms: None,
            duration_ms: None,
            result: None,
            error: None,
        });
        while list.len() > JOB_HISTORY {
            list.pop_front();
        }
        id
    }

    fn finish(&self, id: u64, started: Instant, r: Result<Value, String>) -> Option<Job> {
        let mut list = self.list.lock();
        let job = list.iter_mut().find(|j| j.id == id)?;
        job.finished_at_ms = Some(pairdb_common::now_ms());
        job.duration_ms = Some(started.elapsed().as_millis() as u64);
        match r {
            Ok(v) => job.result = Some(v),
            Err(e) => job.error = Some(e),
        }
        Some(job.clone())
    }

    pub fn running(&self) -> Vec<Job> {
        self.list
            .lock()
            .iter()
            .filter(|j| j.finished_at_ms.is_none())
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Job> {
        self.list.lock().iter().cloned().collect()
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub node: Arc<Node>,
    pub jobs: Arc<Jobs>,
}

/// The admin API. With `admin_token`, every `/api/v1/...` request needs
/// `Authorization: Bearer <admin_token>` (401 otherwise); `/health` and `/metrics` stay open
/// for probes and Prometheus. Every action (POST) is written to the audit log.
pub fn router(node: Arc<Node>, admin_token: Option<&str>) -> Router {
    let guard = Guard {
        token_hash: admin_token.map(|t| Arc::from(pairdb_common::auth::hash(t))),
        node: node.clone(),
    };
    let state = AdminState {
        node,
        jobs: Arc::new(Jobs::default()),
    };
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/compaction/trigger", post(compact_default))
        .route("/api/v1/compaction/trigger-all-levels", post(compact_all))
        .route("/api/v1/compaction/emergency", post(compact_emergency))
        .route("/api/v1/compaction/status", get(compaction_status))
        .route("/api/v1/sstables/count-by-level", get(sstables))
        .route("/api/v1/commitlog/cleanable-segments", get(wal_segments))
        .route("/api/v1/commitlog/cleanup", post(wal_cleanup))
        .route("/api/v1/integrity/scan-all", post(integrity_scan))
        .route("/api/v1/maintenance/enable", post(maintenance_on))
        .route("/api/v1/maintenance/disable", post(maintenance_off))
        .route("/api/v1/cache/reduce", post(cache_reduce))
        .route("/api/v1/snapshot", post(snapshot))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, guard_request))
}

#[derive(Clone)]
struct Guard {
    token_hash: Option<Arc<str>>,
    node: Arc<Node>,
}

/// Authenticates `/api/v1/...` requests and audits actions.
async fn guard_request(
    State(g): State<Guard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/") {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<pairdb_common::tls::listen::PeerInfo>>()
        .map(|c| c.0.describe())
        .unwrap_or_else(|| "?".into());
    let action = format!("{} {}", req.method(), req.uri());
    let mutating = req.method() != axum::http::Method::GET;
    let caller = match &g.token_hash {
        None => "anonymous",
        Some(h) => {
            let ok = pairdb_common::auth::bearer(req.headers().get(header::AUTHORIZATION))
                .ok()
                .flatten()
                .is_some_and(|t| pairdb_common::auth::hash_matches(h, t));
            if !ok {
                g.node.metrics.security.denied("unauthenticated");
                if mutating {
                    pairdb_common::telemetry::audit(
                        "unauthenticated",
                        &peer,
                        &action,
                        "",
                        "refused: UNAUTHENTICATED",
                    );
                }
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    Json(json!({
                        "error": "this admin API needs `Authorization: Bearer <admin token>`"
                    })),
                )
                    .into_response();
            }
            "admin token"
        }
    };
    let resp = next.run(req).await;
    if mutating {
        let outcome = if resp.status().is_success() {
            "ok".to_string()
        } else {
            format!("HTTP {}", resp.status().as_u16())
        };
        pairdb_common::telemetry::audit(caller, &peer, &action, "", &outcome);
    }
    resp
}

/// An admin error answered as JSON `{"error": ...}`.
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn on_blocking<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&Node) -> T + Send + 'static,
) -> Result<T, AdminError> {
    let n = node.clone();
    node.sup
        .spawn_blocking("admin", move || f(&n))
        .await
        .map_err(|e| {
            AdminError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("admin task failed: {e}"),
            )
        })
}

/// `/health`: the node's state as JSON, with the storage-node operations guide's field names
/// (`status`, `disk_status`, `cache_status.hit_rate`, `memtable_status.size_bytes`,
/// `worker_pools`, `metrics`); HTTP 503 whenever the node is not ready (see
/// [`Node::not_ready_reasons`]), so a load balancer can act on it.
async fn health(State(s): State<AdminState>) -> Response {
    let n = &s.node;
    let stats = n.store.engine().stats();
    let disk = n.disk.status();
    let workers = n.sup.statuses();
    let worker_down = workers
        .iter()
        .any(|w| w.state != pairdb_common::worker::WorkerState::Running);
    let not_ready = n.not_ready_reasons();
    let status = if n.maintenance() {
        "maintenance"
    } else if !not_ready.is_empty() {
        "unavailable"
    } else if disk.is_throttled || disk.last_error.is_some() || worker_down {
        "degraded"
    } else {
        "healthy"
    };
    let lookups = stats.block_cache_hits + stats.block_cache_misses;
    let hit_rate = if lookups > 0 {
        stats.block_cache_hits as f64 / lookups as f64
    } else {
        0.0
    };
    let percent = |used: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            (used as f64 * 1000.0 / of as f64).round() / 10.0
        }
    };
    let pool = |active: u64, queued: u64| {
        json!({
            "active_workers": active,
            "queued_tasks": queued,
            "max_workers": stats.background_jobs,
            "utilization_percent": percent(active, stats.background_jobs),
        })
    };
    let recent = n.recent.snapshot();
    let (mut write_qps, mut read_qps, mut p99_write_us, mut p99_read_us) = (0.0, 0.0, 0, 0);
    for (op, r) in &recent {
        match crate::metrics::is_write(op) {
            Some(true) => {
                write_qps += r.ops_per_sec;
                p99_write_us = p99_write_us.max(r.p99_us);
            }
            Some(false) => {
                read_qps += r.ops_per_sec;
                p99_read_us = p99_read_us.max(r.p99_us);
            }
            None => {}
        }
    }
    let body = json!({
        "status": status,
        "ready": not_ready.is_empty(),
        "not_ready_reasons": not_ready,
        "node_id": n.node_id,
        "epoch": n.store.identity().actor().epoch,
        "uptime_secs": n.started.elapsed().as_secs(),
        "maintenance": n.maintenance(),
        "joined": n.joined(),
        "disk_usage_percent": disk.usage_percent,
        "disk_status": {
            "status": disk.state,
            "usage_percent": disk.usage_percent,
            "available_bytes": disk.available_bytes,
            "total_bytes": disk.total_bytes,
            "is_throttled": disk.is_throttled,
            "is_circuit_broken": disk.is_circuit_broken,
            "last_error": disk.last_error,
        },
        "cache_status": {
            "size_bytes": stats.block_cache_usage_bytes,
            "capacity_bytes": stats.block_cache_capacity_bytes,
            "utilization_percent": percent(stats.block_cache_usage_bytes, stats.block_cache_capacity_bytes),
            "hit_rate": hit_rate,
        },
        "memtable_status": {
            "size_bytes": stats.memtable_bytes,
            "entry_count": stats.memtable_entries,
            "budget_bytes": stats.memtable_budget_bytes,
        },
        "worker_pools": {
            "flush_pool": pool(stats.running_flushes, stats.flush_pending),
            "compaction_pool": pool(stats.running_compactions, stats.compaction_pending),
        },
        "metrics": {
            "write_qps": write_qps,
            "read_qps": read_qps,
            "cache_hit_rate": hit_rate,
            "p99_write_latency_ms": p99_write_us as f64 / 1000.0,
            "p99_read_latency_ms": p99_read_us as f64 / 1000.0,
        },
        "keys_estimated": stats.estimated_keys,
        "workers": workers,
        "background_jobs": {
            "running_compactions": stats.running_compactions,
            "running_flushes": stats.running_flushes,
            "pending_compaction_bytes": stats.pending_compaction_bytes,
            "admin_jobs": s.jobs.running(),
        },
        "recent": recent,
    });
    (pairdb_common::probes::ready_status(&not_ready), Json(body)).into_response()
}

/// `/health/live`: 200 while the process serves HTTP, 503 once the storage engine failed
/// ([`crate::engine::Engine::failed`]): a restart is what fixes that (the WAL replays), so a
/// liveness probe should restart the node.
async fn live(State(s): State<AdminState>) -> Response {
    match s.node.store.engine().failed() {
        None => pairdb_common::probes::live().await.into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "storage_failed", "error": error })),
        )
            .into_response(),
    }
}

/// `/health/ready`: 200 when the node should get client traffic, else 503 with the reasons
/// (maintenance, not_joined, disk_circuit_broken, shutting_down). Liveness
/// (`pairdb_common::probes::live`) depends on nothing a restart would not fix.
async fn ready(State(s): State<AdminState>) -> Response {
    pairdb_common::probes::ready(s.node.not_ready_reasons())
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let body = s.node.metrics.render(&s.node.store.engine().stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
struct WaitQuery {
    #[serde(default)]
    wait: bool,
}

#[derive(Clone, Copy)]
enum CompactionKind {
    Default,
    AllLevels,
    Emergency,
}

async fn compact(s: AdminState, kind: CompactionKind, wait: bool) -> Result<Response, AdminError> {
    let name = match kind {
        CompactionKind::Default => "compaction",
        CompactionKind::AllLevels => "compaction_all_levels",
        CompactionKind::Emergency => "compaction_emergency",
    };
    let id = s.jobs.start(name);
    let started = Instant::now();
    let node = s.node.clone();
    let jobs = s.jobs.clone();
    let task = s.node.sup.spawn_blocking("compaction", move || {
        let engine = node.store.engine();
        let before = engine.stats();
        let r = (|| {
            if matches!(kind, CompactionKind::Emergency) {
                engine.flush()?;
            }
            engine.compact(!matches!(kind, CompactionKind::Default))
        })();
        let after = engine.stats();
        let r = r
            .map(|_| {
                json!({
                    "sst_bytes_before": before.sst_total_bytes,
                    "sst_bytes_after": after.sst_total_bytes,
                    "sst_files_before": before.sst_files_by_level,
                    "sst_files_after": after.sst_files_by_level,
                })
            })
            .map_err(|e| e.to_string());
        match &r {
            Ok(v) => tracing::info!(job = id, kind = name, result = %v, "compaction finished"),
            Err(e) => tracing::error!(job = id, kind = name, error = %e, "compaction failed"),
        }
        jobs.finish(id, started, r)
    });
    if wait {
        let job = task
            .await
            .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return Ok(Json(json!({ "status": "completed", "job": job })).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "started", "job_id": id })),
    )
        .into_response())
}

async fn compact_default(
    State(s): State<AdminState>,
    q: Query<WaitQuery>,
) -> Result<Response, AdminError> {
    compact(s, CompactionKind::Default, q.wait).await
}

async fn compact_all(
    State(s): State<AdminState>,
    q: Query<WaitQuery>,
) -> Result<Response, AdminError> {
    compact(s, CompactionKind::AllLevels, q.wait).await
}

async fn compact_emergency(
    State(s): State<AdminState>,
    q: Query<WaitQuery>,
) -> Result<Response, AdminError> {
    compact(s, CompactionKind::Emergency, q.wait).await
}

async fn compaction_status(State(s): State<AdminState>) -> Json<Value> {
    let st = s.node.store.engine().stats();
    Json(json!({
        "running_compactions": st.running_compactions,
        "running_flushes": st.running_flushes,
        "pending_compaction_bytes": st.pending_compaction_bytes,
        "jobs": s.jobs.all(),
    }))
}

async fn sstables(State(s): State<AdminState>) -> Json<Value> {
    let st = s.node.store.engine().stats();
    let levels: Vec<Value> = st
        .sst_files_by_level
        .iter()
        .enumerate()
        .map(|(l, n)| json!({ "level": l, "files": n }))
        .collect();
    Json(json!({
        "levels": levels,
        "total_files": st.sst_files_by_level.iter().sum::<u64>(),
        "total_bytes": st.sst_total_bytes,
    }))
}

async fn wal_segments(State(s): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let files = s
        .node
        .store
        .engine()
        .wal_files()
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let cleanable: Vec<_> = files.iter().filter(|f| f.obsolete).cloned().collect();
    Ok(Json(json!({
        "cleanable_segments": cleanable,
        "cleanable_bytes": cleanable.iter().map(|f| f.size_bytes).sum::<u64>(),
        "segments": files,
    })))
}

async fn wal_cleanup(State(s): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let r = on_blocking(&s.node, |n| {
        let e = n.store.engine();
        let before = e.wal_files()?;
        // Flushing memtables makes every current WAL obsolete; RocksDB deletes obsolete WALs.
        e.flush()?;
        let after = e.wal_files()?;
        Ok::<_, crate::engine::EngineError>((before, after))
    })
    .await?;
    let (before, after) =
        r.map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let sum = |v: &[crate::engine::WalFile]| v.iter().map(|f| f.size_bytes).sum::<u64>();
    Ok(Json(json!({
        "status": "completed",
        "wal_files_before": before.len(),
        "wal_bytes_before": sum(&before),
        "wal_files_after": after.len(),
        "wal_bytes_after": sum(&after),
    })))
}

async fn integrity_scan(State(s): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let report = on_blocking(&s.node, |n| n.store.integrity_scan()).await?;
    Ok(Json(json!({
        "scanned": report.scanned,
        "corrupt_count": report.corrupt.len(),
        "corrupt": report.corrupt,
        "engine_error": report.engine_error,
        "duration_ms": report.duration_ms,
    })))
}

async fn maintenance_on(State(s): State<AdminState>) -> Json<Value> {
    s.node.set_maintenance(true);
    Json(json!({ "maintenance": true }))
}

async fn maintenance_off(State(s): State<AdminState>) -> Json<Value> {
    s.node.set_maintenance(false);
    Json(json!({ "maintenance": false }))
}

#[derive(Debug, Deserialize)]
struct CacheReduce {
    target_size_mb: u64,
}

async fn cache_reduce(
    State(s): State<AdminState>,
    Json(req): Json<CacheReduce>,
) -> Result<Json<Value>, AdminError> {
    if req.target_size_mb == 0 || req.target_size_mb > 1 << 20 {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "target_size_mb must be between 1 and 1048576".into(),
        ));
    }
    let e = s.node.store.engine();
    let before = e.stats();
    e.set_block_cache_capacity(req.target_size_mb << 20);
    let after = e.stats();
    tracing::warn!(target_size_mb = req.target_size_mb, "block cache resized");
    Ok(Json(json!({
        "capacity_bytes_before": before.block_cache_capacity_bytes,
        "capacity_bytes_after": after.block_cache_capacity_bytes,
        "usage_bytes_after": after.block_cache_usage_bytes,
    })))
}

async fn snapshot(State(s): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let r = on_blocking(&s.node, |n| {
        let dir = n
            .data_dir
            .join("snapshots")
            .join(format!("snapshot-{}", pairdb_common::now_ms()));
        std::fs::create_dir_all(dir.parent().unwrap_or(&n.data_dir)).map_err(|e| e.to_string())?;
        let engine: &dyn Engine = n.store.engine().as_ref();
        engine.checkpoint(&dir).map_err(|e| e.to_string())?;
        // Reserve a new counter block so a restore of this snapshot is detected (new epoch).
        n.store
            .identity()
            .reserve_block(engine)
            .map_err(|e| e.to_string())?;
        let bytes: u64 = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok::<_, String>((dir, bytes))
    })
    .await?;
    let (dir, bytes) = r.map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    tracing::info!(path = %dir.display(), bytes, "snapshot written");
    Ok(Json(
        json!({ "status": "completed", "path": dir, "bytes": bytes }),
    ))
}
