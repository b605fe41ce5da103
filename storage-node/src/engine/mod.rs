//! The storage engine boundary: a small, synchronous key-value trait the rest of the node is
//! written against. [`rocks`] is the only module in the workspace that imports `rocksdb`;
//! [`memory`] is an in-memory implementation for the deterministic simulation.
//!
//! Contract: writes in one [`Engine::write`] call are atomic; a successful `write` with
//! `sync = true` is on stable storage; reads see every completed write. Errors are
//! [`EngineError`]; a detected on-disk corruption is `EngineError::Corruption`, never a panic.

pub mod memory;
pub mod rocks;

use std::path::{Path, PathBuf};

/// The two key spaces of a node: replicated data, and node-local metadata (identity, counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Data,
    Meta,
}

/// One operation of an atomic write batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
    /// Deletes every key in `[from, to)`.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
}

/// Engine failures, by what the caller must tell apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine's own checksums or structure are damaged.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// The filesystem has no room.
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("storage I/O error: {0}")]
    Io(String),
}

/// What `visit` returns to keep scanning or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Continue,
    Stop,
}

/// Numbers the admin API and metrics report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    pub memtable_bytes: u64,
    pub memtable_budget_bytes: u64,
    /// Flush and compaction threads RocksDB may run (`max_background_jobs`).
    pub background_jobs: u64,
    /// 1 when a flush or a compaction is waiting for a thread.
    pub flush_pending: u64,
    pub compaction_pending: u64,
    pub sst_files_by_level: Vec<u64>,
    pub sst_total_bytes: u64,
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
    pub block_cache_usage_bytes: u64,
    pub block_cache_capacity_bytes: u64,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
    pub estimated_keys: u64,
    pub live_wal_files: u64,
    pub live_wal_bytes: u64,
    pub memtable_entries: u64,
    /// Running totals since the engine opened.
    pub compaction_read_bytes: u64,
    pub compaction_write_bytes: u64,
    /// 1 once [`Engine::failed`]: writes refused until a restart.
    pub failed: u64,
}

/// How an [`Engine::ingest`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The file's records are in the space.
    Done,
    /// Refused: the memtable overlaps the file and `allow_flush` was false. Nothing changed.
    NeedsFlush,
}

/// A write-ahead-log file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalFile {
    pub name: String,
    pub size_bytes: u64,
    /// Whether every write in it is already in an SST (it only waits for purge).
    pub obsolete: bool,
}

/// The storage engine interface (see module docs for the contract).
pub trait Engine: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Applies `ops` atomically; `sync` forces the WAL to stable storage first.
    fn write(&self, ops: Vec<BatchOp>, sync: bool) -> Result<(), EngineError>;

    /// Visits keys in `[from, to)` in order (`to = None`: to the end of the space). A corruption
    /// met while iterating is returned after the keys visited so far.
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), EngineError>;

    /// For each of `keys` (strictly ascending), whether the space holds a record for it.
    fn existing(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<bool>, EngineError>;

    /// Writes `entries` (strictly ascending keys) as one sorted table file for later
    /// [`Engine::ingest`], returning its path. The file lives in the engine's staging directory.
    fn write_table(&self, entries: &[(&[u8], &[u8])]) -> Result<PathBuf, EngineError>;

    /// Adds a table written by [`Engine::write_table`] to the data space atomically, newer than
    /// every record already there, and durably. The file is consumed unless the result is
    /// `NeedsFlush` or an error (the caller removes it then).
    fn ingest(&self, table: &Path, allow_flush: bool) -> Result<Ingested, EngineError>;

    /// Flushes memtables to SST files and syncs the WAL.
    fn flush(&self) -> Result<(), EngineError>;

    /// Whether opening dropped what followed damage in the write-ahead log (`wal_recovery =
    /// salvage`): acknowledged writes may be missing until a repair brings them back.
    fn salvaged(&self) -> bool {
        false
    }

    /// Why the engine takes no more writes until the process restarts, once a write failed with
    /// an I/O error it does not recover from — a failed WAL sync above all: after a failed
    /// fsync the kernel may have dropped the unsynced pages and a later fsync may succeed
    /// without them (PostgreSQL's "fsyncgate"), so only a restart, replaying the WAL, knows
    /// what is durable. Out of space is not such an error: RocksDB resumes on its own.
    fn failed(&self) -> Option<String> {
        None
    }

    /// Compacts the whole data space (`all_levels`: also rewrite the bottommost level).
    fn compact(&self, all_levels: bool) -> Result<(), EngineError>;

    /// Writes a consistent checkpoint (hard-linked SSTs) into the new directory `dir`.
    fn checkpoint(&self, dir: &Path) -> Result<(), EngineError>;

    /// Whether a write may block now: RocksDB is delaying or stopping writes, or every
    /// memtable is full and waiting for a flush. A reading at most a few tens of milliseconds
    /// old (cheap enough to ask before every write batch).
    fn write_stalled(&self) -> bool;

    fn stats(&self) -> EngineStats;

    /// Resizes the block cache.
    fn set_block_cache_capacity(&self, bytes: u64);

    /// Write-ahead-log files and whether each is obsolete.
    fn wal_files(&self) -> Result<Vec<WalFile>, EngineError>;
}
