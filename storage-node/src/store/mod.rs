//! The node's keyspace: key states in the engine, with per-key atomicity, dot minting,
//! checksums on every read, and the disk gate on every write path.
//!
//! Invariants:
//! - every record in the data space is `framing::encode_state` of a normalized `KeyState`;
//! - a key's record is read-modified-written only under its stripe lock, so a coordinated write
//!   or merge is atomic per key;
//! - a record that fails its checksum is never merged into, overwritten by a plain write, or
//!   streamed; only [`Store::repair`] replaces it;
//! - every write path (coordinated writes, applies of any origin, repair) passes the disk gate;
//!   reads, streams, digests and range drops do not;
//! - a streamed record is ingested as part of a table only for a key that had no record when
//!   its range's [`Fence`] was up and that no write touched before the table went in; every
//!   other streamed record is merged like any apply.
//!
//! Files: `write` (coordinated writes), `merge` (applies, read repair, repair), `ingest`
//! (streamed records and their fences), `stream` (range streams), `digest` (range and descent
//! digests), `session` (the descent sessions' record-hash cache), `listing` (key listings),
//! `maintain` (tombstone purge, range drop, integrity scan); this file holds the store, its
//! stripe locks and the read path.

mod digest;
mod ingest;
mod listing;
mod maintain;
mod merge;
mod session;
mod stream;
mod write;

pub use digest::*;
pub use ingest::*;
pub use listing::*;
pub use maintain::*;
pub use merge::*;
use session::*;
pub use stream::*;
pub use write::*;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pairdb_common::framing::{self, encode_state};
use pairdb_common::token::{self, TOKEN_BYTES, TokenRange};
use pairdb_common::version::{ConflictPolicy, KeyState, NewVersion, Version, VersionVector};
use pairdb_common::{now_ms, validate};
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use serde::Serialize;
use xxhash_rust::xxh64::Xxh64;

use crate::disk::DiskMonitor;
use crate::engine::{BatchOp, Engine, EngineError, Ingested, Scan, Space};
use crate::error::{Error, Result};
use crate::identity::{Identity, IdentityError};
use crate::metrics::Metrics;

const LOCK_STRIPES: usize = 4096;
/// Default hard cap on siblings per key.
pub const DEFAULT_MAX_SIBLINGS: usize = 100;
/// Siblings above which a write is logged and counted.
pub const SIBLING_WARN: usize = 25;
/// Store settings, from the node config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// fsync the WAL before acknowledging each write batch.
    pub sync_writes: bool,
    /// Streamed record bytes below which `apply_streamed` merges instead of ingesting a table.
    pub table_min_bytes: u64,
}

pub use pairdb_common::validate::BATCH_BUDGET_EXCEEDED;

pub use pairdb_common::token::{display_key, key_hash};

/// The keyspace of one storage node.
pub struct Store {
    engine: Arc<dyn Engine>,
    identity: Identity,
    locks: Box<[Mutex<()>]>,
    disk: Arc<DiskMonitor>,
    metrics: Arc<Metrics>,
    cfg: StoreConfig,
    fences: Arc<RwLock<Vec<Arc<FenceState>>>>,
    /// Fences up (ingests of streamed ranges in progress), readable without the registry lock.
    open_fences: Arc<std::sync::atomic::AtomicUsize>,
    /// Record hashes of recent anti-entropy descent sessions (see `repair_digest`).
    digest_cache: Mutex<Vec<(String, std::time::Instant, Arc<SessionLeaves>)>>,
}

/// A batch's commands split by their checks: a result slot per command (filled for one that
/// failed its check) and, for the rest, its index and data key, in order.
type Admitted<R> = (Vec<Option<Result<R>>>, Vec<(usize, Vec<u8>)>);

/// Checks every command of a batch (`check`), keying the ones that pass (`key`: tenant and
/// user key) so the batch can lock them all.
fn admit<C, R>(
    cmds: &[C],
    check: impl Fn(&C) -> Result<()>,
    key: impl Fn(&C) -> (&str, &[u8]),
) -> Admitted<R> {
    let mut results = Vec::with_capacity(cmds.len());
    let mut accepted = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        match check(c) {
            Ok(()) => {
                let (tenant, k) = key(c);
                accepted.push((i, token::data_key(tenant, k)));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    (results, accepted)
}

/// A batch's results, every slot filled (`what` names the batch in the unreachable case of
/// a command left without a result).
fn filled<R>(results: Vec<Option<Result<R>>>, what: &str) -> Vec<Result<R>> {
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::Engine(EngineError::Io(format!(
                    "{what} not processed"
                ))))
            })
        })
        .collect()
}

/// A batch whose commit failed: every command that had succeeded fails with `e`.
fn fail_committed<R>(results: &mut [Option<Result<R>>], accepted: &[(usize, Vec<u8>)], e: &Error) {
    for (i, _) in accepted {
        if matches!(results[*i], Some(Ok(_))) {
            results[*i] = Some(Err(e.clone()));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `[lo, hi]` as data-key bounds `[from, to)`; `to = None` means the end of the space.
fn piece_bounds(lo: u64, hi: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let from = lo.to_be_bytes().to_vec();
    let to = hi.checked_add(1).map(|h| h.to_be_bytes().to_vec());
    (from, to)
}

/// Smallest key strictly greater than `k`.
fn successor(k: &[u8]) -> Vec<u8> {
    let mut s = k.to_vec();
    s.push(0);
    s
}

fn token_of_data_key(k: &[u8]) -> Option<u64> {
    let b: [u8; TOKEN_BYTES] = k.get(..TOKEN_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl Store {
    pub fn new(
        engine: Arc<dyn Engine>,
        identity: Identity,
        disk: Arc<DiskMonitor>,
        metrics: Arc<Metrics>,
        cfg: StoreConfig,
    ) -> Store {
        Store {
            engine,
            identity,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            disk,
            metrics,
            cfg,
            fences: Default::default(),
            open_fences: Default::default(),
            digest_cache: Mutex::new(Vec::new()),
        }
    }

    /// Whether writes fsync before they are acknowledged.
    pub fn sync_writes(&self) -> bool {
        self.cfg.sync_writes
    }

    /// Whether a streamed range is being ingested: a write into it may then wait on the
    /// ingest's gate (an SST ingestion, perhaps with a memtable flush), so writes belong on
    /// blocking threads, not async workers.
    pub fn fenced(&self) -> bool {
        self.open_fences.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    fn stripe(dk: &[u8]) -> usize {
        (xxhash_rust::xxh64::xxh64(dk, 7) % LOCK_STRIPES as u64) as usize
    }

    fn lock_all<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = keys.map(Self::stripe).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| self.locks[i].lock()).collect()
    }

    /// Loads and verifies a record, with its size (0 when there is none). A checksum failure
    /// is counted, logged and returned.
    fn load_sized(&self, dk: &[u8], tenant: &str, key: &[u8]) -> Result<(Option<KeyState>, usize)> {
        let bytes = match self.engine.get(Space::Data, dk) {
            Ok(b) => b,
            Err(EngineError::Corruption(m)) => {
                self.metrics.checksum_failures.inc();
                tracing::error!(key = %display_key(tenant, key), error = %m, "engine checksum failed reading record");
                return Err(Error::Corrupt {
                    key: display_key(tenant, key),
                    detail: m,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let Some(bytes) = bytes else {
            return Ok((None, 0));
        };
        match framing::decode_state(&bytes) {
            Ok(s) => Ok((Some(s), bytes.len())),
            Err(e) => {
                self.metrics.checksum_failures.inc();
                tracing::error!(key = %display_key(tenant, key), data_key = %hex(dk), error = %e, "record checksum failed");
                Err(Error::Corrupt {
                    key: display_key(tenant, key),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Reads a key's state without expired versions; `None` when the node holds no record.
    pub fn read(&self, tenant: &str, key: &[u8]) -> Result<Option<KeyState>> {
        match self.read_record(tenant, key)? {
            Some(rec) => self.decode_read(tenant, key, &rec),
            None => Ok(None),
        }
    }

    /// A key's stored record, unverified (see [`Store::decode_read`]); `None` when there is none.
    pub fn read_record(&self, tenant: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        validate::key_ref(tenant, key)?;
        let dk = token::data_key(tenant, key);
        match self.engine.get(Space::Data, &dk) {
            Ok(b) => Ok(b),
            Err(EngineError::Corruption(m)) => {
                self.metrics.checksum_failures.inc();
                tracing::error!(key = %display_key(tenant, key), error = %m, "engine checksum failed reading record");
                Err(Error::Corrupt {
                    key: display_key(tenant, key),
                    detail: m,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Verifies and decodes a record from [`Store::read_record`], without expired versions
    /// (their dots stay covered by the state's context).
    pub fn decode_read(&self, tenant: &str, key: &[u8], record: &[u8]) -> Result<Option<KeyState>> {
        match framing::decode_state(record) {
            Ok(s) => Ok(Some(s.without_expired(now_ms()))),
            Err(e) => {
                self.metrics.checksum_failures.inc();
                tracing::error!(key = %display_key(tenant, key), error = %e, "record checksum failed");
                Err(Error::Corrupt {
                    key: display_key(tenant, key),
                    detail: e.to_string(),
                })
            }
        }
    }
}
