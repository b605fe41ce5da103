//! A running storage node's shared state: the store, disk manager, metrics and modes, as used by
//! the gRPC service, the admin HTTP API and the background workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::disk::DiskMonitor;
use crate::metrics::Metrics;
use crate::recent::Recent;
use crate::store::Store;

pub struct Node {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub store: Arc<Store>,
    pub disk: Arc<DiskMonitor>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Recent rates and latencies for `/health`.
    pub recent: Recent,
    maintenance: AtomicBool,
}

impl Node {
    pub fn new(
        node_id: String,
        data_dir: PathBuf,
        store: Arc<Store>,
        disk: Arc<DiskMonitor>,
        metrics: Arc<Metrics>,
    ) -> Node {
        Node {
            node_id,
            data_dir,
            store,
            disk,
            metrics,
            started: Instant::now(),
            recent: Recent::default(),
            maintenance: AtomicBool::new(false),
        }
    }

    /// Maintenance (drain) mode: client reads and writes are refused with UNAVAILABLE so
    /// coordinators route around the node; internal streaming and repair keep working.
    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::SeqCst)
    }

    pub fn set_maintenance(&self, on: bool) {
        let was = self.maintenance.swap(on, Ordering::SeqCst);
        if was != on {
            self.metrics.maintenance_mode.set(i64::from(on));
            tracing::warn!(node_id = %self.node_id, enabled = on, "maintenance mode changed");
        }
    }
}
