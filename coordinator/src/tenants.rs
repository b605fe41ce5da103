//! Tenant settings, cached in memory so the data path never waits on the metadata store: the
//! whole table is reloaded every `refresh_ms`; a tenant this coordinator has not seen yet is
//! looked up once (and a missing one remembered for `refresh_ms`, so unknown-tenant traffic
//! cannot hammer the database). At most [`MISS_LOOKUPS`] such lookups run at once: a flood of
//! made-up tenant ids gets OVERLOADED instead of taking the connections every other worker
//! of the coordinator needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::meta::{MetaStore, TenantRecord};

/// Cache misses looked up in the metadata store at once.
pub const MISS_LOOKUPS: usize = 2;
/// Longest a cache miss waits for a lookup slot.
const MISS_WAIT: Duration = Duration::from_millis(500);

pub struct Tenants {
    meta: Arc<dyn MetaStore>,
    lookups: tokio::sync::Semaphore,
    cache: RwLock<HashMap<String, Arc<TenantRecord>>>,
    missing: RwLock<HashMap<String, Instant>>,
    refresh: Duration,
}

impl Tenants {
    pub fn new(meta: Arc<dyn MetaStore>, refresh_ms: u64) -> Arc<Tenants> {
        Arc::new(Tenants {
            meta,
            lookups: tokio::sync::Semaphore::new(MISS_LOOKUPS),
            cache: RwLock::new(HashMap::new()),
            missing: RwLock::new(HashMap::new()),
            refresh: Duration::from_millis(refresh_ms),
        })
    }

    /// The tenant's settings, or TENANT_NOT_FOUND.
    pub async fn get(&self, tenant_id: &str) -> Result<Arc<TenantRecord>> {
        if let Some(t) = self.cache.read().get(tenant_id) {
            return Ok(t.clone());
        }
        let not_found = || pairdb_common::Error::TenantNotFound(tenant_id.to_string()).into();
        if let Some(at) = self.missing.read().get(tenant_id)
            && at.elapsed() < self.refresh
        {
            return Err(not_found());
        }
        let _slot = match tokio::time::timeout(MISS_WAIT, self.lookups.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(pairdb_common::Error::Overloaded(format!(
                    "tenant {} is not cached and {MISS_LOOKUPS} lookups are already running; retry",
                    pairdb_common::validate::excerpt(tenant_id)
                ))
                .into());
            }
        };
        match self.meta.get_tenant(tenant_id).await? {
            Some(t) => {
                let t = Arc::new(t);
                self.cache.write().insert(tenant_id.to_string(), t.clone());
                Ok(t)
            }
            None => {
                let mut m = self.missing.write();
                if m.len() > 10_000 {
                    m.clear();
                }
                m.insert(tenant_id.to_string(), Instant::now());
                Err(not_found())
            }
        }
    }

    /// Puts a tenant this coordinator just wrote into the cache.
    pub fn remember(&self, t: TenantRecord) {
        self.missing.write().remove(&t.tenant_id);
        self.cache.write().insert(t.tenant_id.clone(), Arc::new(t));
    }

    pub async fn reload(&self) -> Result<()> {
        let all = self.meta.list_tenants().await?;
        let map = all
            .into_iter()
            .map(|t| (t.tenant_id.clone(), Arc::new(t)))
            .collect();
        *self.cache.write() = map;
        self.missing.write().clear();
        Ok(())
    }

    /// The largest replication factor in use (topology decisions need it).
    pub fn max_replication_factor(&self) -> u32 {
        self.cache
            .read()
            .values()
            .map(|t| t.replication_factor)
            .max()
            .unwrap_or(3)
    }

    /// How often the cache reloads every tenant.
    pub fn refresh_period(&self) -> Duration {
        self.refresh
    }

    /// The refresh worker.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        pairdb_common::worker::every(self.refresh, &cancel, || async {
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "reload tenants failed; keeping the cached ones");
            }
        })
        .await
    }
}
