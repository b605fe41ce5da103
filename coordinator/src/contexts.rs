//! The cluster keys that seal client context tokens (`pairdb_common::context::Keyring`), kept
//! in the metadata store (`context_keys`) and cached here so the data path never waits on it.
//!
//! Every coordinator seals with the current key and opens with every key still within its
//! grace. The keys are reloaded every `refresh`; a token sealed with a key this coordinator
//! does not know yet (another coordinator rotated a moment ago) makes it reload at once — at
//! most once per second, so forged key ids cannot hammer the database — and try again.
//! Rotation: `pairdb-coordinator rotate-context-key` (see `MetaStore::rotate_context_key`).

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use pairdb_common::context::{ContextKey, Keyring, OpenError};
use pairdb_common::version::VersionVector;
use pairdb_common::{Error as E, context};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::meta::{MetaError, MetaResult, MetaStore};

/// Least time between two reloads caused by unknown ids (key ids here, token ids in `auth`).
const MIN_RELOAD_GAP: Duration = Duration::from_secs(1);

/// Lets an on-demand reload through at most once per [`MIN_RELOAD_GAP`] (the first at once),
/// so unknown ids sent by anyone cannot hammer the metadata store.
pub struct ReloadGate(Mutex<Instant>);

impl Default for ReloadGate {
    fn default() -> Self {
        ReloadGate(Mutex::new(
            Instant::now()
                .checked_sub(MIN_RELOAD_GAP)
                .unwrap_or_else(Instant::now),
        ))
    }
}

impl ReloadGate {
    /// Whether a reload may run now (and, if so, starts the next gap).
    pub fn pass(&self) -> bool {
        let mut last = self.0.lock();
        if last.elapsed() < MIN_RELOAD_GAP {
            return false;
        }
        *last = Instant::now();
        true
    }
}

pub struct ContextKeys {
    meta: Arc<dyn MetaStore>,
    ring: RwLock<Arc<Keyring>>,
    gate: ReloadGate,
    refresh: Duration,
}

async fn load(meta: &dyn MetaStore) -> MetaResult<Keyring> {
    let secret = context::new_secret().map_err(|e| MetaError::Db(e.to_string()))?;
    let mut keys = meta.context_keys(&secret).await?.into_iter();
    let current = keys
        .next()
        .ok_or_else(|| MetaError::BadRow("context_keys holds no current key".into()))?;
    Ok(Keyring::new(
        ContextKey::new(current.key_id, &current.secret),
        keys.map(|k| ContextKey::new(k.key_id, &k.secret)).collect(),
    ))
}

impl ContextKeys {
    /// Loads the keys (creating the first one on a new cluster).
    pub async fn load(meta: Arc<dyn MetaStore>, refresh: Duration) -> MetaResult<Arc<ContextKeys>> {
        let ring = load(meta.as_ref()).await?;
        Ok(Arc::new(ContextKeys {
            meta,
            ring: RwLock::new(Arc::new(ring)),
            gate: ReloadGate::default(),
            refresh,
        }))
    }

    /// Seals `vv` into a client token with the current key.
    pub fn seal(&self, vv: &VersionVector) -> Vec<u8> {
        self.ring.read().seal(vv)
    }

    /// Opens a client token (INVALID_CONTEXT when it is not one this cluster sealed, or its
    /// key is past its grace).
    pub async fn open(&self, token: &[u8]) -> Result<VersionVector, E> {
        let ring = self.ring.read().clone();
        match ring.open(token) {
            Err(OpenError::UnknownKey(id)) if id > ring.current_id() && self.may_reload() => {
                if let Err(e) = self.reload().await {
                    tracing::warn!(error = %e, "reload context keys failed");
                }
                let ring = self.ring.read().clone();
                ring.open(token).map_err(E::from)
            }
            r => r.map_err(E::from),
        }
    }

    fn may_reload(&self) -> bool {
        self.gate.pass()
    }

    /// Reads the keys from the metadata store again.
    pub async fn reload(&self) -> MetaResult<()> {
        let ring = load(self.meta.as_ref()).await?;
        *self.ring.write() = Arc::new(ring);
        Ok(())
    }

    /// The `context-keys` worker: reloads every `refresh` until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        pairdb_common::worker::every(self.refresh, &cancel, || async {
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "reload context keys failed");
            }
        })
        .await
    }
}
