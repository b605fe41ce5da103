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
/// Mixed into the digest of a bucket holding a corrupt record (see `digest_into`).
static CORRUPT_SALT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Default hard cap on siblings per key.
pub const DEFAULT_MAX_SIBLINGS: usize = 100;
/// Siblings above which a write is logged and counted.
pub const SIBLING_WARN: usize = 25;
/// Most buckets a digest may ask for.
pub const MAX_DIGEST_BUCKETS: u32 = 65_536;
/// Default [`StoreConfig::table_min_bytes`]: streamed records below this many bytes per call are
/// merged; above, new keys are ingested as a table (a table per tiny batch only feeds compaction).
pub const MIN_TABLE_BYTES: u64 = 1 << 20;
/// Record bytes per streamed batch (a record larger than this goes alone): with the 64 MiB
/// message limit, 512 records of 300 KiB would not fit one message.
pub const STREAM_BATCH_BYTES: usize = 4 << 20;
/// The slowest throttle a caller may ask a stream for: below it a scan (its thread, iterator and
/// pinned tables) could be held for days by one request.
pub const MIN_STREAM_BYTES_PER_SEC: u64 = 1 << 20;
/// Table builds per [`Store::apply_streamed`] call before the rest is merged instead (each
/// retry is caused by writes landing on keys of the table while it was built).
const TABLE_ATTEMPTS: u32 = 3;

/// Store settings, from the node config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// fsync the WAL before acknowledging each write batch.
    pub sync_writes: bool,
    /// Streamed record bytes below which `apply_streamed` merges instead of ingesting a table.
    pub table_min_bytes: u64,
}

/// A coordinated write (this node mints the dot).
#[derive(Debug, Clone)]
pub struct WriteCmd {
    pub tenant: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub tombstone: bool,
    pub context: VersionVector,
    pub ttl_seconds: u32,
    pub idempotency_key: String,
    pub policy: ConflictPolicy,
    /// 0 = default.
    pub max_siblings: u32,
    /// 0 = default (1 MiB); never above 16 MiB.
    pub max_value_bytes: u32,
    /// Siblings above which the write is logged and counted; 0 = default.
    pub sibling_warn: u32,
    /// The tenant's cap on the key's encoded state in bytes; 0 = default (3 MiB); never above
    /// `validate::HARD_MAX_STATE_BYTES`.
    pub max_state_bytes: u32,
}

#[derive(Debug, Clone)]
pub struct WriteReply {
    pub version: Version,
    pub deduplicated: bool,
    pub state: KeyState,
    /// Encoded size of `state` (what the answer carries).
    pub state_bytes: usize,
}

/// What a batch of writes or merges has staged for its one commit: per key its state (later
/// commands of the batch see it) and its encoded record, in first-touch order.
#[derive(Default)]
struct Staged {
    states: HashMap<Vec<u8>, KeyState>,
    records: HashMap<Vec<u8>, Vec<u8>>,
    order: Vec<Vec<u8>>,
}

impl Staged {
    fn put(&mut self, dk: &[u8], state: KeyState, record: Vec<u8>) {
        if !self.records.contains_key(dk) {
            self.order.push(dk.to_vec());
        }
        self.states.insert(dk.to_vec(), state);
        self.records.insert(dk.to_vec(), record);
    }

    fn encoded_len(&self, dk: &[u8]) -> usize {
        self.records.get(dk).map_or(0, Vec::len)
    }
}

pub use pairdb_common::validate::BATCH_BUDGET_EXCEEDED;

/// Why a state is being merged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Replica,
    ReadRepair,
    Hint,
    Stream,
    AntiEntropy,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Replica => "replica",
            Origin::ReadRepair => "read_repair",
            Origin::Hint => "hint",
            Origin::Stream => "stream",
            Origin::AntiEntropy => "anti_entropy",
        }
    }
}

/// A merge of a whole key state.
#[derive(Debug, Clone)]
pub struct ApplyCmd {
    pub tenant: String,
    pub key: Vec<u8>,
    pub state: KeyState,
    pub origin: Origin,
    /// `framing::encode_state(&state)`, already verified (a streamed record): stored as is when
    /// the key has no local record, saving the re-encode.
    pub record: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReply {
    pub changed: bool,
    pub siblings: usize,
}

/// A streamed record whose frame CRC has been checked, waiting to be applied.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub tenant: String,
    pub key: Vec<u8>,
    /// `token::data_key(tenant, key)`.
    pub data_key: Vec<u8>,
    /// A slice of the received message (no copy per record).
    pub record: bytes::Bytes,
}

/// What [`Store::apply_streamed`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamedReply {
    /// Records that changed this node (new keys plus merges that changed a state).
    pub changed: u64,
    /// Of those, records that went in as part of an ingested table.
    pub ingested: u64,
    /// Records refused (undecodable, or invalid for this node): skipped, never stored.
    pub refused: u64,
}

/// Write tracking over a token range while streamed records are being ingested into it.
///
/// Ingesting a table writes its records over whatever the key holds, so a table may only carry
/// keys with no record. A fence makes that safe against concurrent writes: while it is up,
/// every write to a key of its range notes the key before reading it (under the fence's gate,
/// held through the commit), and the ingest itself holds the gate exclusively. Raising a fence
/// waits for writes already in flight, so an existence check made after it sees them, and any
/// later write to a key of the table shows up as a noted key when the table goes in.
pub struct Fence {
    registry: Arc<RwLock<Vec<Arc<FenceState>>>>,
    state: Arc<FenceState>,
}

struct FenceState {
    range: TokenRange,
    gate: RwLock<()>,
    noted: Mutex<HashSet<Vec<u8>>>,
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.registry
            .write()
            .retain(|f| !Arc::ptr_eq(f, &self.state));
    }
}

/// Enters the gate of every fence covering one of `dks` and notes the keys there; the guards
/// are held until the write commits. Gates are taken in registry order, so writers never wait
/// on each other in a cycle (an ingest holds one gate and waits on nothing).
fn enter_fences<'r, 'k>(
    registry: &'r [Arc<FenceState>],
    dks: impl Iterator<Item = &'k [u8]> + Clone,
) -> Vec<RwLockReadGuard<'r, ()>> {
    let mut gates = Vec::new();
    for f in registry {
        let mut covered = dks
            .clone()
            .filter(|dk| token_of_data_key(dk).is_some_and(|t| f.range.contains(t)))
            .peekable();
        if covered.peek().is_none() {
            continue;
        }
        gates.push(f.gate.read());
        f.noted.lock().extend(covered.map(<[u8]>::to_vec));
    }
    gates
}

/// One streamed record.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub tenant: String,
    pub key: Vec<u8>,
    pub token: u64,
    pub record: Vec<u8>,
    pub crc32: u32,
}

#[derive(Debug, Clone, Default)]
pub struct StreamBatch {
    pub entries: Vec<StreamEntry>,
    pub last_data_key: Vec<u8>,
    pub done: bool,
    pub corrupt_skipped: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestBucket {
    pub range: TokenRange,
    pub hash: u64,
    pub keys: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub buckets: Vec<DigestBucket>,
    pub corrupt: u64,
}

/// One corrupt record found by an integrity scan.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptEntry {
    pub tenant_id: String,
    /// The key, lossily as UTF-8.
    pub key: String,
    pub key_hex: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    pub scanned: u64,
    pub corrupt: Vec<CorruptEntry>,
    /// Set when the engine itself reported corruption and the scan could not go on past it.
    pub engine_error: Option<String>,
    pub duration_ms: u64,
}

/// Which records of a range a stream covers (anti-entropy narrows streams to the keys a
/// replica lacks). The default admits every record of the range.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Sorted, disjoint sub-ranges of the range (empty = the whole range).
    pub sub_ranges: Vec<TokenRange>,
    /// Only these tenants' records (empty = every tenant's).
    pub tenants: HashSet<String>,
    /// Only records whose [`key_hash`] is listed (empty = every record).
    pub key_hashes: HashSet<u64>,
}

impl Filter {
    fn pieces(&self, range: TokenRange) -> Vec<(u64, u64)> {
        if self.sub_ranges.is_empty() {
            return range.pieces();
        }
        self.sub_ranges.iter().flat_map(|r| r.pieces()).collect()
    }

    fn admits(&self, data_key: &[u8]) -> bool {
        (self.tenants.is_empty() || admits_tenant(&self.tenants, data_key))
            && (self.key_hashes.is_empty() || self.key_hashes.contains(&key_hash(data_key)))
    }
}

fn admits_tenant(tenants: &HashSet<String>, data_key: &[u8]) -> bool {
    tenants.is_empty() || token::split_data_key(data_key).is_ok_and(|(_, t, _)| tenants.contains(t))
}

pub use pairdb_common::token::{display_key, key_hash};

/// A 64-bit hash shortened to 32 bits, salted (a descent session's salt): a collision between
/// two different values is rare and, with another salt next round, not repeated.
pub fn short_hash(h: u64, salt: u64) -> u32 {
    (xxhash_rust::xxh64::xxh64(&h.to_le_bytes(), salt) >> 32) as u32
}

/// How `Store::repair_keys` lists keys.
#[derive(Debug, Clone, Copy)]
pub enum Listing<'a> {
    /// Short key and state hashes only (salted).
    Short { salt: u64 },
    /// Full entries, of only the keys whose short key hash is in the set (empty = all).
    Full { salt: u64, only: &'a HashSet<u32> },
}

/// An actor as anti-entropy names it: XXH64 of node id, a zero byte and the epoch (LE).
pub fn actor_hash(actor: &pairdb_common::version::Actor) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(actor.node_id.as_bytes());
    h.update(&[0]);
    h.update(&actor.epoch.to_le_bytes());
    h.digest()
}

/// Per record of some ranges, what anti-entropy compares (see `RepairKeysResponse`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyListing {
    pub key_hashes: Vec<u64>,
    pub state_hashes: Vec<u64>,
    pub dot_counts: Vec<u32>,
    pub dot_actors: Vec<u64>,
    pub dot_counters: Vec<u64>,
    pub context_counts: Vec<u32>,
    pub context_actors: Vec<u64>,
    pub context_counters: Vec<u64>,
    pub short_keys: Vec<u32>,
    pub short_states: Vec<u32>,
    pub range_counts: Vec<u32>,
    /// `(tenant, key)` of records that failed their checksum.
    pub corrupt: Vec<(String, Vec<u8>)>,
}

/// Most bytes one key listing may answer (well inside a message).
pub const MAX_LISTING_BYTES: usize = 32 << 20;

impl KeyListing {
    /// About how many bytes the listing takes on the wire.
    fn approx_bytes(&self) -> usize {
        (self.key_hashes.len() + self.state_hashes.len() + self.dot_actors.len()) * 8
            + self.dot_counters.len() * 10
            + self.context_actors.len() * 18
            + (self.dot_counts.len() + self.context_counts.len()) * 5
            + (self.short_keys.len() + self.short_states.len()) * 4
            + self
                .corrupt
                .iter()
                .map(|(t, k)| t.len() + k.len() + 4)
                .sum::<usize>()
    }
}

/// How long a descent session's record hashes are kept, and how many record hashes all kept
/// sessions hold together (24 bytes each: ~100 MiB). A larger scope is scanned per level.
const DIGEST_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
const DIGEST_CACHE_MAX_RECORDS: usize = 4 << 20;

/// A descent session's record hashes in scope order, and the corrupt records among them.
type SessionLeaves = (Vec<Leaf>, u64);

/// One record as digests see it.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    token: u64,
    hash: u64,
    bytes: u64,
}

/// A record's digest hash: XXH64 over its data key and record payload.
fn record_hash(data_key: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(data_key);
    h.update(payload);
    h.digest()
}

/// Where `token` lies in `scope`, counted from just after its start (1 ..= width).
fn offset(scope: TokenRange, token: u64) -> u128 {
    match token.wrapping_sub(scope.start) {
        0 => 1u128 << 64,
        o => u128::from(o),
    }
}

/// Buckets of a range: each bucket's hash is XXH64 over its records' [`record_hash`]es (LE) in
/// data-key order, so it can be computed from a scan or from kept record hashes alike.
struct Digester {
    ranges: Vec<TokenRange>,
    hashers: Vec<(Xxh64, u64, u64)>,
    start: u64,
    width: u128,
}

impl Digester {
    fn new(range: TokenRange, buckets: u32) -> Digester {
        let ranges = range.split(buckets.clamp(1, MAX_DIGEST_BUCKETS));
        let hashers = ranges.iter().map(|_| (Xxh64::new(0), 0, 0)).collect();
        Digester {
            ranges,
            hashers,
            start: range.start,
            width: range.width(),
        }
    }

    fn add(&mut self, l: &Leaf) {
        let count = self.ranges.len() as u128;
        let off = u128::from(l.token.wrapping_sub(self.start).wrapping_sub(1));
        let mut idx = (off * count / self.width) as usize;
        // Rounding can put a token one bucket early; the bucket ranges are authoritative.
        while idx + 1 < self.ranges.len() && !self.ranges[idx].contains(l.token) {
            idx += 1;
        }
        let h = &mut self.hashers[idx.min(self.ranges.len() - 1)];
        h.0.update(&l.hash.to_le_bytes());
        h.1 += 1;
        h.2 += l.bytes;
    }

    fn finish(self, out: &mut Vec<DigestBucket>) {
        out.extend(
            self.ranges
                .into_iter()
                .zip(self.hashers)
                .map(|(range, (h, keys, bytes))| DigestBucket {
                    range,
                    hash: if keys == 0 { 0 } else { h.digest() },
                    keys,
                    bytes,
                }),
        );
    }
}

/// The keyspace of one storage node.
pub struct Store {
    engine: Arc<dyn Engine>,
    identity: Identity,
    locks: Box<[Mutex<()>]>,
    disk: Arc<DiskMonitor>,
    metrics: Arc<Metrics>,
    cfg: StoreConfig,
    fences: Arc<RwLock<Vec<Arc<FenceState>>>>,
    /// Record hashes of recent anti-entropy descent sessions (see `repair_digest`).
    digest_cache: Mutex<Vec<(String, std::time::Instant, Arc<SessionLeaves>)>>,
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
            digest_cache: Mutex::new(Vec::new()),
        }
    }

    /// Whether writes fsync before they are acknowledged.
    pub fn sync_writes(&self) -> bool {
        self.cfg.sync_writes
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

    /// Coordinated writes, atomically per key, committed in one engine batch. One result per
    /// command, in order; a bad command fails alone. `response_budget` bounds the bytes of key
    /// state the results carry: commands past it are not applied and fail with OVERLOADED
    /// (the caller sends them again on their own), so no answer outgrows a message.
    pub fn write_many(
        &self,
        cmds: Vec<WriteCmd>,
        response_budget: usize,
    ) -> Vec<Result<WriteReply>> {
        let now = now_ms();
        let mut results: Vec<Option<Result<WriteReply>>> = Vec::with_capacity(cmds.len());
        let mut accepted: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let check = validate::key_ref(&c.tenant, &c.key)
                .and_then(|_| {
                    validate::value(
                        &c.value,
                        validate::effective_max_value_bytes(c.max_value_bytes),
                    )
                })
                .and_then(|_| validate::idempotency_key(&c.idempotency_key))
                .and_then(|_| match c.tombstone && !c.value.is_empty() {
                    true => Err(pairdb_common::Error::InvalidArgument(
                        "a tombstone carries no value".into(),
                    )),
                    false => Ok(()),
                })
                .map_err(Error::from);
            match check {
                Ok(()) => {
                    accepted.push((i, token::data_key(&c.tenant, &c.key)));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let guards = self.lock_all(accepted.iter().map(|(_, dk)| dk.as_slice()));
        let registry = self.fences.read();
        let gates = enter_fences(&registry, accepted.iter().map(|(_, dk)| dk.as_slice()));
        let mut staged = Staged::default();
        let mut answered = 0usize;
        for (i, dk) in &accepted {
            if answered > response_budget {
                results[*i] = Some(Err(Error::Overloaded(BATCH_BUDGET_EXCEEDED.into())));
                continue;
            }
            let r = self.write_one(&cmds[*i], dk, now, &mut staged);
            if let Ok(w) = &r {
                answered += w.state_bytes;
            }
            results[*i] = Some(r);
        }
        if let Err(e) = self.commit(staged, "write") {
            for (i, _) in &accepted {
                if matches!(results[*i], Some(Ok(_))) {
                    results[*i] = Some(Err(e.clone()));
                }
            }
        }
        drop(gates);
        drop(registry);
        drop(guards);
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Engine(EngineError::Io("write not processed".into())))
                })
            })
            .collect()
    }

    /// Commits what a batch staged, in one engine write.
    fn commit(&self, staged: Staged, what: &str) -> Result<()> {
        let ops: Vec<BatchOp> = staged
            .order
            .into_iter()
            .filter_map(|dk| {
                let bytes = staged.records.get(&dk)?.clone();
                Some(BatchOp::Put(Space::Data, dk, bytes))
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        self.engine.write(ops, self.cfg.sync_writes).map_err(|e| {
            tracing::error!(error = %e, "commit {what} batch failed");
            Error::from(e)
        })
    }

    /// The current state of `dk` within a batch (staged by an earlier command, or stored) and
    /// the size of its record (0 = none).
    fn current(
        &self,
        staged: &Staged,
        dk: &[u8],
        tenant: &str,
        key: &[u8],
    ) -> Result<(Option<KeyState>, usize)> {
        if let Some(s) = staged.states.get(dk) {
            return Ok((Some(s.clone()), staged.encoded_len(dk)));
        }
        self.load_sized(dk, tenant, key)
    }

    /// Refuses a state carrying a counter for this node's own actor beyond its reservation
    /// (forged input; see [`Identity::check_own`]); adopts the others.
    fn check_own_counters(&self, state: &KeyState, what: &str) -> Result<()> {
        let own = state.max_counter_for(self.identity.actor());
        if own == 0 {
            return Ok(());
        }
        if let Err(e) = self.identity.check_own(own) {
            self.metrics.counter_refusals.inc();
            tracing::error!(error = %e, "refused {what}");
            return Err(Error::Invalid(pairdb_common::Error::InvalidArgument(
                format!("{what}: {e}"),
            )));
        }
        self.identity.observe(own);
        Ok(())
    }

    fn write_one(
        &self,
        c: &WriteCmd,
        dk: &[u8],
        now: u64,
        staged: &mut Staged,
    ) -> Result<WriteReply> {
        let (state, old_len) = self.current(staged, dk, &c.tenant, &c.key)?;
        let mut state = state.unwrap_or_default();
        if let Some(v) = state.find_idempotent(&c.idempotency_key, now) {
            return Ok(WriteReply {
                version: v.clone(),
                deduplicated: true,
                state_bytes: old_len,
                state,
            });
        }
        let actor = self.identity.actor().clone();
        let from_context = c.context.max_counter(&actor);
        if from_context > 0 && self.identity.check_own(from_context).is_err() {
            self.metrics.counter_refusals.inc();
            return Err(Error::Invalid(pairdb_common::Error::InvalidContext(
                format!(
                    "the context names this replica ({actor}) with counter {from_context}, beyond any it has minted"
                ),
            )));
        }
        let seen = state.max_counter_for(&actor).max(from_context);
        let counter = self
            .identity
            .next_counter(seen, self.engine.as_ref())
            .map_err(|e| match e {
                IdentityError::BeyondReservation { .. } => {
                    self.metrics.counter_refusals.inc();
                    Error::Invalid(pairdb_common::Error::InvalidArgument(format!(
                        "stored state of {}: {e}",
                        display_key(&c.tenant, &c.key)
                    )))
                }
                other => Error::Engine(EngineError::Io(format!("reserve dot counter: {other}"))),
            })?;
        let written_at_ms = match c.policy {
            // LWW: the coordinating replica's write must win locally even under clock skew.
            ConflictPolicy::Lww => state
                .versions()
                .iter()
                .map(|v| v.written_at_ms.saturating_add(1))
                .fold(now, u64::max),
            ConflictPolicy::Siblings => now,
        };
        let max_siblings = validate::effective_max_siblings(c.max_siblings);
        state.purge_expired(now);
        let out = state.apply_write(NewVersion {
            dot: pairdb_common::version::Dot::new(actor, counter),
            context: c.context.clone(),
            value: c.value.clone(),
            tombstone: c.tombstone,
            written_at_ms,
            expires_at_ms: match c.ttl_seconds {
                0 => 0,
                t => now.saturating_add(u64::from(t) * 1000),
            },
            idempotency_key: c.idempotency_key.clone(),
            policy: c.policy,
            max_siblings,
        });
        let record = encode_state(&state);
        let cap = validate::effective_max_state_bytes(c.max_state_bytes);
        // A key already over the cap (older data, merged partitions) stays writable by writes
        // that do not grow it: that is how it is resolved.
        if record.len() > cap && record.len() > old_len {
            self.metrics.state_cap_refusals.inc();
            return Err(Error::Invalid(pairdb_common::Error::ValueTooLarge(
                format!(
                    "the write would make the state of {} {} bytes, over the tenant's max_state_bytes ({cap}); \
                 it has {} versions: read the key, merge its siblings and write the result back with the read's context",
                    display_key(&c.tenant, &c.key),
                    record.len(),
                    state.versions().len()
                ),
            )));
        }
        self.disk
            .check_write((dk.len() + record.len()) as u64, c.tombstone)?;
        if out.folded > 0 && c.policy == ConflictPolicy::Siblings {
            self.metrics.sibling_cap_folds.inc_by(out.folded as u64);
            tracing::warn!(key = %display_key(&c.tenant, &c.key), folded = out.folded, max_siblings, "sibling cap reached; folded the oldest by LWW");
        }
        let siblings = state.versions().len();
        let warn = match c.sibling_warn {
            0 => SIBLING_WARN,
            n => n as usize,
        };
        if siblings > warn {
            self.metrics.sibling_warnings.inc();
            tracing::warn!(key = %display_key(&c.tenant, &c.key), siblings, "key has many siblings; clients should resolve them");
        }
        let state_bytes = record.len();
        staged.put(dk, state.clone(), record);
        Ok(WriteReply {
            version: out.version,
            deduplicated: false,
            state_bytes,
            state,
        })
    }

    /// Merges whole key states (replication, read repair, hints, streaming, anti-entropy).
    pub fn apply_many(&self, cmds: Vec<ApplyCmd>) -> Vec<Result<ApplyReply>> {
        self.merge_many(cmds, false)
    }

    /// Like [`Store::apply_many`] for one key, but a corrupt local record is replaced by the
    /// given (good) state instead of failing.
    pub fn repair(&self, cmd: ApplyCmd) -> Result<ApplyReply> {
        self.merge_many(vec![cmd], true).pop().unwrap_or_else(|| {
            Err(Error::Engine(EngineError::Io(
                "repair not processed".into(),
            )))
        })
    }

    /// Raises a fence over `range` for [`Store::apply_streamed`]; it comes down when dropped.
    pub fn open_fence(&self, range: TokenRange) -> Fence {
        let state = Arc::new(FenceState {
            range,
            gate: RwLock::new(()),
            noted: Mutex::new(HashSet::new()),
        });
        // Taking the registry exclusively waits for every write in flight.
        self.fences.write().push(state.clone());
        Fence {
            registry: self.fences.clone(),
            state,
        }
    }

    /// Applies verified streamed records (strictly ascending data keys, all in the fence's
    /// range): keys this node has no record for go in as one ingested table; the rest, and any
    /// key a write touched meanwhile, are merged like [`Store::apply_many`]. Either way the
    /// result equals merging every record, and it is durable when this returns.
    pub fn apply_streamed(
        &self,
        fence: &Fence,
        entries: Vec<Incoming>,
        origin: Origin,
    ) -> Result<StreamedReply> {
        self.apply_streamed_with(fence, entries, origin, &|| {})
    }

    /// [`Store::apply_streamed`], calling `before_ingest` after each table is written and
    /// before it goes in (tests use it to race a write against the ingest).
    #[doc(hidden)]
    pub fn apply_streamed_with(
        &self,
        fence: &Fence,
        entries: Vec<Incoming>,
        origin: Origin,
        before_ingest: &dyn Fn(),
    ) -> Result<StreamedReply> {
        let bytes: usize = entries.iter().map(|e| e.key.len() + e.record.len()).sum();
        self.disk.check_write(bytes as u64, false)?;
        // Every record is decoded and validated before anything of it is stored (a source node
        // is as untrusted as any other peer): one that does not decode, or that carries a
        // counter of ours beyond our reservation, is refused alone and counted.
        let mut reply = StreamedReply::default();
        let mut states: HashMap<Vec<u8>, KeyState> = HashMap::with_capacity(entries.len());
        let mut kept = Vec::with_capacity(entries.len());
        for e in entries {
            let checked = self
                .decode_incoming(&e)
                .and_then(|st| self.check_own_counters(&st, "streamed record").map(|_| st));
            match checked {
                Ok(st) => {
                    states.insert(e.data_key.clone(), st);
                    kept.push(e);
                }
                Err(err) => {
                    reply.refused += 1;
                    tracing::error!(key = %display_key(&e.tenant, &e.key), error = %err, "refused a streamed record");
                }
            }
        }
        let entries = kept;
        let ordered = entries.windows(2).all(|w| w[0].data_key < w[1].data_key)
            && entries.iter().all(|e| {
                token_of_data_key(&e.data_key).is_some_and(|t| fence.state.range.contains(t))
            });
        let (mut table, mut merge): (Vec<Incoming>, Vec<Incoming>) = if ordered {
            {
                // With the gate held no write to the range is in flight: what was noted so far is
                // committed, so the existence check below sees it.
                let _gate = fence.state.gate.write();
                fence.state.noted.lock().clear();
            }
            let keys: Vec<&[u8]> = entries.iter().map(|e| e.data_key.as_slice()).collect();
            let exists = self.engine.existing(Space::Data, &keys)?;
            let noted = fence.state.noted.lock();
            let mut flags = exists.into_iter();
            entries
                .into_iter()
                .partition(|e| !flags.next().unwrap_or(true) && !noted.contains(&e.data_key))
        } else {
            (Vec::new(), entries)
        };
        let mut attempts = 0;
        let mut staged: Option<std::path::PathBuf> = None;
        let mut allow_flush = false;
        while !table.is_empty() {
            let table_bytes: u64 = table.iter().map(|e| e.record.len() as u64).sum();
            if staged.is_none()
                && (table_bytes < self.cfg.table_min_bytes || attempts == TABLE_ATTEMPTS)
            {
                merge.append(&mut table);
                break;
            }
            let path = match &staged {
                Some(p) => p.clone(),
                None => {
                    attempts += 1;
                    let pairs: Vec<(&[u8], &[u8])> = table
                        .iter()
                        .map(|e| (e.data_key.as_slice(), e.record.as_ref()))
                        .collect();
                    let p = self.engine.write_table(&pairs)?;
                    staged = Some(p.clone());
                    p
                }
            };
            before_ingest();
            let outcome = {
                let _gate = fence.state.gate.write();
                let noted = fence.state.noted.lock();
                if table.iter().any(|e| noted.contains(&e.data_key)) {
                    // Written meanwhile: those keys are merged, the table rebuilt without them.
                    let (clean, touched): (Vec<_>, Vec<_>) = std::mem::take(&mut table)
                        .into_iter()
                        .partition(|e| !noted.contains(&e.data_key));
                    table = clean;
                    merge.extend(touched);
                    None
                } else {
                    Some(self.engine.ingest(&path, allow_flush))
                }
            };
            match outcome {
                Some(Ok(Ingested::Done)) => {
                    staged = None;
                    reply.ingested = table.len() as u64;
                    reply.changed += reply.ingested;
                    table.clear();
                }
                Some(Ok(Ingested::NeedsFlush)) => {
                    // Flush outside the gate; the retry may flush only what arrived since.
                    if let Err(e) = self.engine.flush() {
                        let _ = std::fs::remove_file(&path);
                        return Err(e.into());
                    }
                    allow_flush = true;
                }
                Some(Err(e)) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e.into());
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                    staged = None;
                }
            }
        }
        if reply.ingested > 0 {
            self.metrics
                .applied_versions
                .get_or_create(&crate::metrics::OpLabels {
                    op: origin.as_str(),
                })
                .inc_by(reply.ingested);
        }
        let cmds: Vec<ApplyCmd> = merge
            .iter()
            .filter_map(|e| {
                Some(ApplyCmd {
                    tenant: e.tenant.clone(),
                    key: e.key.clone(),
                    state: states.remove(&e.data_key)?,
                    origin,
                    record: Some(e.record.to_vec()),
                })
            })
            .collect();
        for r in self.apply_many(cmds) {
            match r {
                Ok(a) => reply.changed += u64::from(a.changed),
                // Refused for what it is (not for the node's state): skipped, counted, logged
                // by the check; retrying would refuse it again.
                Err(Error::Invalid(_)) => reply.refused += 1,
                Err(e) => return Err(e),
            }
        }
        if reply.refused > 0 {
            self.metrics.stream_records_refused.inc_by(reply.refused);
        }
        Ok(reply)
    }

    fn decode_incoming(&self, e: &Incoming) -> Result<KeyState> {
        framing::decode_state(&e.record).map_err(|err| {
            self.metrics.checksum_failures.inc();
            Error::Corrupt {
                key: display_key(&e.tenant, &e.key),
                detail: format!("streamed record: {err}"),
            }
        })
    }

    fn merge_many(&self, cmds: Vec<ApplyCmd>, repair: bool) -> Vec<Result<ApplyReply>> {
        let mut results: Vec<Option<Result<ApplyReply>>> = Vec::with_capacity(cmds.len());
        let mut accepted: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let check = validate::key_ref(&c.tenant, &c.key)
                .map_err(Error::from)
                .and_then(|_| self.check_own_counters(&c.state, "incoming key state"));
            match check {
                Ok(()) => {
                    accepted.push((i, token::data_key(&c.tenant, &c.key)));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let guards = self.lock_all(accepted.iter().map(|(_, dk)| dk.as_slice()));
        let registry = self.fences.read();
        let gates = enter_fences(&registry, accepted.iter().map(|(_, dk)| dk.as_slice()));
        let mut staged = Staged::default();
        let mut recovered = 0u64;
        for (i, dk) in &accepted {
            let c = &cmds[*i];
            let r = match self.current(&staged, dk, &c.tenant, &c.key) {
                Ok((cur, old_len)) => self.merge_one(c, dk, cur, old_len, &mut staged),
                Err(Error::Corrupt { key, detail }) if repair => {
                    let record = encode_state(&c.state);
                    self.check_stored_size(&c.tenant, &c.key, record.len(), 0)
                        .and_then(|_| {
                            self.disk.check_write(
                                (dk.len() + record.len()) as u64,
                                c.state.all_tombstones(),
                            )
                        })
                        .map(|_| {
                            tracing::warn!(key = %key, corrupt = %detail, "replacing corrupt record with repaired state");
                            recovered += 1;
                            let siblings = c.state.versions().len();
                            staged.put(dk, c.state.clone(), record);
                            ApplyReply {
                                changed: true,
                                siblings,
                            }
                        })
                }
                Err(e) => Err(e),
            };
            if r.is_ok() {
                self.metrics
                    .applied_versions
                    .get_or_create(&crate::metrics::OpLabels {
                        op: c.origin.as_str(),
                    })
                    .inc();
            }
            results[*i] = Some(r);
        }
        match self.commit(staged, "merge") {
            Ok(()) if recovered > 0 => {
                self.metrics.data_recovery_operations.inc_by(recovered);
            }
            Ok(()) => {}
            Err(e) => {
                for (i, _) in &accepted {
                    if matches!(results[*i], Some(Ok(_))) {
                        results[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        drop(gates);
        drop(registry);
        drop(guards);
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Engine(EngineError::Io("merge not processed".into())))
                })
            })
            .collect()
    }

    /// Merges one incoming state into the key's current one and stages the result when it
    /// changed: through the stored-size bound and the disk gate, by the real record size.
    fn merge_one(
        &self,
        c: &ApplyCmd,
        dk: &[u8],
        current: Option<KeyState>,
        old_len: usize,
        staged: &mut Staged,
    ) -> Result<ApplyReply> {
        let existed = current.is_some();
        let mut s = current.unwrap_or_default();
        let changed = s.merge(&c.state) || (!existed && !s.is_empty());
        if changed {
            // A new key whose merge is exactly the verified record: keep its bytes.
            let record = match &c.record {
                Some(r) if !existed && s == c.state => r.clone(),
                _ => encode_state(&s),
            };
            self.check_stored_size(&c.tenant, &c.key, record.len(), old_len)?;
            self.disk
                .check_write((dk.len() + record.len()) as u64, s.all_tombstones())?;
            let siblings = s.versions().len();
            staged.put(dk, s, record);
            return Ok(ApplyReply { changed, siblings });
        }
        Ok(ApplyReply {
            changed,
            siblings: s.versions().len(),
        })
    }

    /// No merge may grow a record past [`validate::MAX_STORED_STATE_BYTES`]: it could no
    /// longer be read, streamed or repaired in one message.
    fn check_stored_size(
        &self,
        tenant: &str,
        key: &[u8],
        len: usize,
        old_len: usize,
    ) -> Result<()> {
        if len > validate::MAX_STORED_STATE_BYTES && len > old_len {
            self.metrics.state_cap_refusals.inc();
            return Err(Error::Invalid(pairdb_common::Error::ValueTooLarge(
                format!(
                    "merging would make the state of {} {len} bytes, over the {} bytes any record may hold; resolve its siblings",
                    display_key(tenant, key),
                    validate::MAX_STORED_STATE_BYTES
                ),
            )));
        }
        Ok(())
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

    /// Streams the records of `range` in data-key order, strictly after `resume_after` when
    /// given, in batches of at most `batch_size` records and [`STREAM_BATCH_BYTES`] bytes (a
    /// larger record goes alone), calling `sink` per batch until it returns false. Corrupt
    /// records are skipped and counted, never sent. `max_bytes_per_sec` (0 = off) throttles
    /// by sleeping this (blocking) thread, never below [`MIN_STREAM_BYTES_PER_SEC`]; `gone`
    /// is asked between batches, during throttle sleeps and every few thousand records a
    /// filter skips, so a departed receiver stops the scan within a second. `filter` narrows
    /// the stream to some records.
    #[allow(clippy::too_many_arguments)]
    pub fn stream_range(
        &self,
        range: TokenRange,
        resume_after: &[u8],
        batch_size: usize,
        max_bytes_per_sec: u64,
        filter: &Filter,
        gone: &dyn Fn() -> bool,
        sink: &mut dyn FnMut(StreamBatch) -> bool,
    ) -> Result<()> {
        let batch_size = batch_size.clamp(1, 10_000);
        let throttle = match max_bytes_per_sec {
            0 => None,
            n => Some(n.max(MIN_STREAM_BYTES_PER_SEC)),
        };
        let pieces = filter.pieces(range);
        let resume_token = (!resume_after.is_empty())
            .then(|| token_of_data_key(resume_after))
            .flatten();
        let start_piece = resume_token
            .and_then(|t| pieces.iter().position(|(lo, hi)| t >= *lo && t <= *hi))
            .unwrap_or(0);
        let started = std::time::Instant::now();
        let mut sent_bytes = 0u64;
        let mut batch = StreamBatch::default();
        let mut batch_bytes = 0usize;
        let mut visited = 0u64;
        let mut open = true;
        // Sleeps until the throttle allows `sent_bytes`, in slices, noticing a departed receiver.
        let pace = |sent_bytes: u64| -> bool {
            let Some(rate) = throttle else { return true };
            let due = std::time::Duration::from_secs_f64(sent_bytes as f64 / rate as f64);
            while let Some(wait) = due.checked_sub(started.elapsed()) {
                if gone() {
                    return false;
                }
                std::thread::sleep(wait.min(std::time::Duration::from_millis(100)));
            }
            !gone()
        };
        for (pi, (lo, hi)) in pieces.iter().enumerate().skip(start_piece) {
            let (mut from, to) = piece_bounds(*lo, *hi);
            if pi == start_piece && resume_token.is_some() {
                from = successor(resume_after);
            }
            let mut scan_err = None;
            self.engine.scan(Space::Data, &from, to.as_deref(), &mut |k, v| {
                visited += 1;
                if visited.is_multiple_of(4096) && gone() {
                    open = false;
                    return Scan::Stop;
                }
                let Ok((tok, tenant, key)) = token::split_data_key(k) else {
                    batch.corrupt_skipped += 1;
                    return Scan::Continue;
                };
                if !filter.admits(k) {
                    return Scan::Continue;
                }
                match framing::unframe(framing::RECORD_FORMAT_V1, v) {
                    Ok(_) => {
                        batch.entries.push(StreamEntry {
                            tenant: tenant.to_string(),
                            key: key.to_vec(),
                            token: tok,
                            record: v.to_vec(),
                            crc32: framing::stored_crc(v).unwrap_or(0),
                        });
                        sent_bytes += v.len() as u64;
                        batch_bytes += k.len() + v.len();
                    }
                    Err(e) => {
                        self.metrics.checksum_failures.inc();
                        tracing::error!(key = %display_key(tenant, key), error = %e, "skipping corrupt record in range stream");
                        batch.corrupt_skipped += 1;
                    }
                }
                batch.last_data_key = k.to_vec();
                if batch.entries.len() >= batch_size || batch_bytes >= STREAM_BATCH_BYTES {
                    let full = std::mem::take(&mut batch);
                    batch_bytes = 0;
                    self.metrics.stream_keys_sent.inc_by(full.entries.len() as u64);
                    self.metrics.stream_bytes_sent.inc_by(full.entries.iter().map(|e| e.record.len() as u64).sum());
                    if !sink(full) || !pace(sent_bytes) {
                        open = false;
                        return Scan::Stop;
                    }
                }
                Scan::Continue
            }).unwrap_or_else(|e| scan_err = Some(e));
            if let Some(e) = scan_err {
                self.metrics.checksum_failures.inc();
                return Err(e.into());
            }
            if !open {
                return Ok(());
            }
        }
        batch.done = true;
        if !pace(sent_bytes) {
            return Ok(());
        }
        self.metrics
            .stream_keys_sent
            .inc_by(batch.entries.len() as u64);
        self.metrics
            .stream_bytes_sent
            .inc_by(batch.entries.iter().map(|e| e.record.len() as u64).sum());
        sink(batch);
        Ok(())
    }

    /// Bucket hashes of `range` split into `buckets` equal-width sub-ranges. A bucket's hash is
    /// XXH64 over its records' hashes (XXH64 of data key and record payload, LE) in order;
    /// records are canonical, so replicas holding equal states hash equal.
    pub fn range_digest(&self, range: TokenRange, buckets: u32) -> Result<Digest> {
        let mut out = Vec::new();
        let corrupt = self.digest_into(range, buckets, &HashSet::new(), &mut out)?;
        Ok(Digest {
            buckets: out,
            corrupt,
        })
    }

    /// One level of an anti-entropy descent: the buckets of every `(range, buckets)` query in
    /// order, counting only `tenants`' records (empty = all), and the corrupt records met. With
    /// a `session` (an id and a scope holding every query), the scope is scanned once and its
    /// record hashes kept for the session's next levels (a descent asks for ever finer buckets
    /// of the same piece), instead of one scan per level.
    pub fn repair_digest(
        &self,
        queries: &[(TokenRange, u32)],
        tenants: &HashSet<String>,
        session: Option<(&str, TokenRange)>,
    ) -> Result<(Vec<DigestBucket>, u64)> {
        let mut out = Vec::new();
        let mut corrupt = 0;
        let cached = match session {
            Some((id, scope))
                if queries.iter().all(|(r, _)| {
                    scope.contains(r.end) && (r.start == scope.start || scope.contains(r.start))
                }) =>
            {
                Some((scope, self.session_leaves(id, scope, tenants)?))
            }
            _ => None,
        };
        for (range, buckets) in queries {
            match &cached {
                Some((scope, leaves)) => {
                    let (lo, hi) = (offset(*scope, range.start), offset(*scope, range.end));
                    let lo = if range.start == scope.start { 0 } else { lo };
                    let from = leaves.0.partition_point(|l| offset(*scope, l.token) <= lo);
                    let to = leaves.0.partition_point(|l| offset(*scope, l.token) <= hi);
                    let mut d = Digester::new(*range, *buckets);
                    for l in &leaves.0[from.min(to)..to] {
                        d.add(l);
                    }
                    d.finish(&mut out);
                }
                None => corrupt += self.digest_into(*range, *buckets, tenants, &mut out)?,
            }
        }
        if let Some((_, leaves)) = &cached {
            corrupt += leaves.1;
        }
        Ok((out, corrupt))
    }

    /// The record hashes of `scope` for a descent session: from the cache, or one scan.
    fn session_leaves(
        &self,
        id: &str,
        scope: TokenRange,
        tenants: &HashSet<String>,
    ) -> Result<Arc<SessionLeaves>> {
        let mut names: Vec<&str> = tenants.iter().map(String::as_str).collect();
        names.sort_unstable();
        let key = format!("{id}|{}|{}|{}", scope.start, scope.end, names.join(","));
        {
            let mut cache = self.digest_cache.lock();
            cache.retain(|(_, at, _)| at.elapsed() < DIGEST_CACHE_TTL);
            if let Some((_, _, leaves)) = cache.iter().find(|(k, _, _)| *k == key) {
                return Ok(leaves.clone());
            }
        }
        let mut leaves = Vec::new();
        let mut corrupt = 0u64;
        for (lo, hi) in scope.pieces() {
            let (from, to) = piece_bounds(lo, hi);
            self.engine
                .scan(Space::Data, &from, to.as_deref(), &mut |k, v| {
                    if let Some(l) = self.leaf(k, v, tenants, &mut corrupt) {
                        leaves.push(l);
                    }
                    Scan::Continue
                })?;
        }
        if corrupt > 0 {
            self.metrics.checksum_failures.inc_by(corrupt);
        }
        let leaves = Arc::new((leaves, corrupt));
        if leaves.0.len() <= DIGEST_CACHE_MAX_RECORDS {
            let mut cache = self.digest_cache.lock();
            // A new session of the same scope supersedes older ones; then the oldest go first.
            let prefix = format!("|{}|{}|", scope.start, scope.end);
            cache.retain(|(k, _, _)| !k.contains(&prefix));
            let held = |c: &Vec<(String, std::time::Instant, Arc<SessionLeaves>)>| {
                c.iter().map(|(_, _, l)| l.0.len()).sum::<usize>()
            };
            while !cache.is_empty() && held(&cache) + leaves.0.len() > DIGEST_CACHE_MAX_RECORDS {
                cache.remove(0);
            }
            cache.push((key, std::time::Instant::now(), leaves.clone()));
        }
        Ok(leaves)
    }

    /// A record as digests see it: its token, [`record_hash`] and size; `None` when filtered
    /// out or not a data key. A corrupt record gets a hash no other digest will match.
    fn leaf(
        &self,
        k: &[u8],
        v: &[u8],
        tenants: &HashSet<String>,
        corrupt: &mut u64,
    ) -> Option<Leaf> {
        let token = token_of_data_key(k)?;
        if !admits_tenant(tenants, k) {
            return None;
        }
        let hash = match framing::unframe(framing::RECORD_FORMAT_V1, v) {
            Ok(payload) => record_hash(k, payload),
            Err(_) => {
                // Never equal to another replica's bucket (nor to this one's next digest), so
                // comparisons always descend to a corrupt record, even one corrupt everywhere.
                *corrupt += 1;
                let mut h = Xxh64::new(0);
                h.update(b"\xffcorrupt");
                h.update(self.identity.actor().node_id.as_bytes());
                h.update(&CORRUPT_SALT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
                h.digest()
            }
        };
        Some(Leaf {
            token,
            hash,
            bytes: v.len() as u64,
        })
    }

    fn digest_into(
        &self,
        range: TokenRange,
        buckets: u32,
        tenants: &HashSet<String>,
        out: &mut Vec<DigestBucket>,
    ) -> Result<u64> {
        let mut d = Digester::new(range, buckets);
        let mut corrupt = 0u64;
        for (lo, hi) in range.pieces() {
            let (from, to) = piece_bounds(lo, hi);
            self.engine
                .scan(Space::Data, &from, to.as_deref(), &mut |k, v| {
                    if let Some(l) = self.leaf(k, v, tenants, &mut corrupt) {
                        d.add(&l);
                    }
                    Scan::Continue
                })?;
        }
        if corrupt > 0 {
            self.metrics.checksum_failures.inc_by(corrupt);
        }
        d.finish(out);
        Ok(corrupt)
    }

    /// Anti-entropy leaves: per record of `ranges` (of `tenants`, empty = all), in data-key
    /// order, its key hash, state hash, version dots and context entries; corrupt records are
    /// listed apart.
    pub fn repair_keys(
        &self,
        ranges: &[TokenRange],
        tenants: &HashSet<String>,
        mode: Listing,
    ) -> Result<KeyListing> {
        let mut out = KeyListing::default();
        let mut corrupt = 0u64;
        let mut too_big = false;
        for range in ranges {
            let listed = out.key_hashes.len() + out.short_keys.len();
            for (lo, hi) in range.pieces() {
                let (from, to) = piece_bounds(lo, hi);
                self.engine
                    .scan(Space::Data, &from, to.as_deref(), &mut |k, v| {
                        let Ok((_, tenant, key)) = token::split_data_key(k) else {
                            return Scan::Continue;
                        };
                        if !tenants.is_empty() && !tenants.contains(tenant) {
                            return Scan::Continue;
                        }
                        let state = framing::unframe(framing::RECORD_FORMAT_V1, v)
                            .ok()
                            .and_then(|payload| {
                                let s = framing::decode_state(v).ok()?;
                                Some((xxhash_rust::xxh64::xxh64(payload, 0), s))
                            });
                        let kh = key_hash(k);
                        match (state, mode) {
                            (Some((state_hash, _)), Listing::Short { salt }) => {
                                out.short_keys.push(short_hash(kh, salt));
                                out.short_states.push(short_hash(state_hash, salt));
                            }
                            (Some(_), Listing::Full { salt, only })
                                if !only.is_empty() && !only.contains(&short_hash(kh, salt)) => {}
                            (Some((state_hash, s)), Listing::Full { .. }) => {
                                out.key_hashes.push(kh);
                                out.state_hashes.push(state_hash);
                                out.dot_counts.push(s.versions().len() as u32);
                                for v in s.versions() {
                                    out.dot_actors.push(actor_hash(&v.dot.actor));
                                    out.dot_counters.push(v.dot.counter);
                                }
                                let before = out.context_actors.len();
                                for (a, c) in s.context().iter() {
                                    out.context_actors.push(actor_hash(a));
                                    out.context_counters.push(c);
                                }
                                out.context_counts
                                    .push((out.context_actors.len() - before) as u32);
                            }
                            (None, _) => {
                                corrupt += 1;
                                out.corrupt.push((tenant.to_string(), key.to_vec()));
                            }
                        }
                        if out.approx_bytes() > MAX_LISTING_BYTES {
                            too_big = true;
                            return Scan::Stop;
                        }
                        Scan::Continue
                    })?;
                if too_big {
                    return Err(Error::Invalid(pairdb_common::Error::InvalidArgument(
                        format!(
                            "the listing would exceed {MAX_LISTING_BYTES} bytes; ask for fewer or narrower ranges"
                        ),
                    )));
                }
            }
            out.range_counts
                .push((out.key_hashes.len() + out.short_keys.len() - listed) as u32);
        }
        if corrupt > 0 {
            self.metrics.checksum_failures.inc_by(corrupt);
        }
        Ok(out)
    }

    /// Tombstone garbage collection: deletes the records of `range` (of `tenants`, empty = all)
    /// whose every version is a tombstone written, or a value that expired, before
    /// `written_before_ms`. Only anti-entropy
    /// calls it, right after every replica of the range was found to hold the same records, so
    /// each replica drops the same tombstones. Each record is re-checked under its stripe lock;
    /// one a write touched meanwhile (a live version, or a newer tombstone) stays.
    pub fn purge_tombstones(
        &self,
        range: TokenRange,
        tenants: &HashSet<String>,
        written_before_ms: u64,
    ) -> Result<u64> {
        // A version that expired counts as a tombstone written when it expired (its record is
        // never dropped earlier: its context is what keeps an overwritten value on a stale
        // replica from coming back).
        let now = now_ms();
        let purgeable = |record: &[u8]| {
            framing::decode_state(record).is_ok_and(|s| {
                !s.versions().is_empty()
                    && s.versions().iter().all(|v| {
                        (v.tombstone && v.written_at_ms < written_before_ms)
                            || (v.is_expired(now) && v.expires_at_ms < written_before_ms)
                    })
            })
        };
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        for (lo, hi) in range.pieces() {
            let (from, to) = piece_bounds(lo, hi);
            self.engine
                .scan(Space::Data, &from, to.as_deref(), &mut |k, v| {
                    if admits_tenant(tenants, k) && purgeable(v) {
                        candidates.push(k.to_vec());
                    }
                    Scan::Continue
                })?;
        }
        let mut purged = 0u64;
        for chunk in candidates.chunks(512) {
            let _guards = self.lock_all(chunk.iter().map(Vec::as_slice));
            let registry = self.fences.read();
            let _gates = enter_fences(&registry, chunk.iter().map(Vec::as_slice));
            let mut ops = Vec::new();
            for dk in chunk {
                if let Some(v) = self.engine.get(Space::Data, dk)?
                    && purgeable(&v)
                {
                    ops.push(BatchOp::Delete(Space::Data, dk.clone()));
                }
            }
            purged += ops.len() as u64;
            if !ops.is_empty() {
                self.engine.write(ops, self.cfg.sync_writes)?;
            }
        }
        if purged > 0 {
            self.metrics.tombstones_purged.inc_by(purged);
            tracing::debug!(%range, purged, "purged tombstones every replica holds");
        }
        Ok(purged)
    }

    /// Deletes every record of `range` with range deletes; returns how many records there were.
    /// (The API schedules a compaction afterwards so the space is reclaimed.)
    pub fn drop_range(&self, range: TokenRange) -> Result<u64> {
        let mut count = 0u64;
        let mut ops = Vec::new();
        for (lo, hi) in range.pieces() {
            let (from, to) = piece_bounds(lo, hi);
            self.engine
                .scan(Space::Data, &from, to.as_deref(), &mut |_, _| {
                    count += 1;
                    Scan::Continue
                })?;
            // Keys with token u64::MAX sort below [0xff; 9] (the byte after the token is a
            // tenant length, at most 63).
            let to = to.unwrap_or_else(|| vec![0xff; TOKEN_BYTES + 1]);
            ops.push(BatchOp::DeleteRange(Space::Data, from, to));
        }
        self.engine.write(ops, true)?;
        tracing::info!(%range, records = count, "dropped token range");
        Ok(count)
    }

    /// Reads and verifies every record; reports exactly the corrupt ones.
    pub fn integrity_scan(&self) -> IntegrityReport {
        let started = std::time::Instant::now();
        let mut scanned = 0u64;
        let mut corrupt = Vec::new();
        let res = self.engine.scan(Space::Data, &[], None, &mut |k, v| {
            scanned += 1;
            let (tenant, key) = match token::split_data_key(k) {
                Ok((_, t, key)) => (t.to_string(), key.to_vec()),
                Err(e) => {
                    corrupt.push(CorruptEntry {
                        tenant_id: String::new(),
                        key: String::new(),
                        key_hex: hex(k),
                        detail: format!("bad data key: {e}"),
                    });
                    return Scan::Continue;
                }
            };
            if let Err(e) = framing::decode_state(v) {
                corrupt.push(CorruptEntry {
                    key: String::from_utf8_lossy(&key).to_string(),
                    key_hex: hex(&key),
                    tenant_id: tenant,
                    detail: e.to_string(),
                });
            }
            Scan::Continue
        });
        let engine_error = res.err().map(|e| e.to_string());
        let found = corrupt.len() as u64 + u64::from(engine_error.is_some());
        if found > 0 {
            self.metrics.corrupted_entries.inc_by(found);
            self.metrics.checksum_failures.inc_by(found);
            tracing::error!(
                corrupt = found,
                scanned,
                "integrity scan found corrupt records"
            );
        }
        IntegrityReport {
            scanned,
            corrupt,
            engine_error,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}
