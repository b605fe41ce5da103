//! RocksDB implementation of [`Engine`]. The only module that imports `rocksdb`.
//!
//! Options are set explicitly (SPEC §4): paranoid checks, checksum verification on every read,
//! WAL on, `sync_writes` per batch (RocksDB groups concurrent synced writers into one fsync:
//! group commit), an LRU block cache and a memtable budget we size ourselves.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor, CompactOptions,
    DB, DBCompressionType, DBRecoveryMode, Direction, ErrorKind, IngestExternalFileOptions,
    IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions,
    checkpoint::Checkpoint, statistics::Ticker,
};

use super::{BatchOp, Engine, EngineError, EngineStats, Ingested, Scan, Space, WalFile};

const META_CF: &str = "meta";
const LEVELS: usize = 7;
/// Bloom filter bits per key, for flushed, compacted and ingested tables alike.
const BLOOM_BITS: f64 = 10.0;

/// Tuning knobs, from the node config.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    pub block_cache_bytes: u64,
    /// Size of one memtable; up to `max_memtables` may exist at once.
    pub memtable_bytes: u64,
    pub max_memtables: u32,
    pub background_jobs: u32,
    /// When the write-ahead log is damaged other than in its last record, open with what
    /// precedes the damage (`WalRecovery::Salvage`) instead of refusing.
    pub salvage_wal: bool,
}

impl RocksOptions {
    /// Upper bound of memtable memory.
    pub fn memtable_budget_bytes(&self) -> u64 {
        self.memtable_bytes * u64::from(self.max_memtables)
    }
}

/// A RocksDB database with a data column family (`default`) and a `meta` column family.
pub struct RocksEngine {
    db: DB,
    opts: Options,
    cache: Mutex<Cache>,
    path: PathBuf,
    memtable_budget_bytes: u64,
    max_memtables: u64,
    background_jobs: u64,
    /// Tables written for ingestion wait here: beside the database directory, on the same
    /// filesystem (ingestion links them in), never inside it (RocksDB owns that directory's
    /// file names).
    staging: PathBuf,
    staged: AtomicU64,
    /// The last write-stall reading: when (ms since `opened`) and what (see `write_stalled`).
    stall_checked_ms: AtomicU64,
    stalled: std::sync::atomic::AtomicBool,
    opened: std::time::Instant,
    /// Opened by salvaging a damaged write-ahead log (see [`RocksEngine::open`]).
    salvaged: bool,
    /// The first unrecoverable write error ([`Engine::failed`]).
    failed: parking_lot::Mutex<Option<String>>,
}

/// How long one write-stall reading is reused: the properties take the DB mutex.
const STALL_CHECK_MS: u64 = 50;

fn map_err(e: rocksdb::Error) -> EngineError {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::Corruption => EngineError::Corruption(msg),
        _ if msg.contains("No space left") => EngineError::NoSpace(msg),
        _ => EngineError::Io(msg),
    }
}

impl RocksEngine {
    /// Opens (creating if missing) the database in `path`. No compaction filter: records are
    /// only removed by the node itself (range drops, tombstone and expiry GC), never by
    /// compaction on its own, because dropping a record drops the causal context that keeps
    /// an overwritten value on a stale replica from coming back.
    ///
    /// WAL replay tolerates a torn last record only (a write in flight at a crash, never
    /// acknowledged: `TolerateCorruptedTailRecords`); damage anywhere else is a `Corruption`
    /// error and the node does not start, unless `salvage_wal` — then it opens again with
    /// point-in-time recovery (everything before the first damaged record) and
    /// [`Engine::salvaged`] says so, so the node counts itself out of date until repaired.
    pub fn open(path: &Path, o: &RocksOptions) -> Result<RocksEngine, EngineError> {
        match Self::open_with(path, o, DBRecoveryMode::TolerateCorruptedTailRecords) {
            Err(EngineError::Corruption(msg)) if o.salvage_wal => {
                tracing::error!(path = %path.display(), error = %msg, "write-ahead log damaged: salvaging what precedes the damage (wal_recovery = salvage); the node serves no client reads until a full repair");
                let mut e = Self::open_with(path, o, DBRecoveryMode::PointInTime)?;
                e.salvaged = true;
                Ok(e)
            }
            Err(EngineError::Corruption(msg)) => Err(EngineError::Corruption(format!(
                "{msg} (the write-ahead log or a table is damaged; runbooks/repair.md \"A node that will not start\": wal_recovery = salvage opens with what precedes the damage)"
            ))),
            other => other,
        }
    }

    fn open_with(
        path: &Path,
        o: &RocksOptions,
        recovery: DBRecoveryMode,
    ) -> Result<RocksEngine, EngineError> {
        let cache = Cache::new_lru_cache(o.block_cache_bytes as usize);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(BLOOM_BITS, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let mut data = Options::default();
        data.set_block_based_table_factory(&table);
        data.set_write_buffer_size(o.memtable_bytes as usize);
        data.set_max_write_buffer_number(o.max_memtables as i32);
        data.set_compression_type(DBCompressionType::Lz4);
        data.set_bottommost_compression_type(DBCompressionType::Zstd);
        data.set_level_compaction_dynamic_level_bytes(true);

        let mut meta = Options::default();
        meta.set_write_buffer_size(1 << 20);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_wal_recovery_mode(recovery);
        db_opts.set_max_background_jobs(o.background_jobs as i32);
        db_opts.set_db_write_buffer_size(o.memtable_budget_bytes() as usize + (2 << 20));
        db_opts.set_max_total_wal_size(o.memtable_budget_bytes() * 2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.enable_statistics();
        db_opts.set_keep_log_file_num(4);

        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, data),
            ColumnFamilyDescriptor::new(META_CF, meta),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(map_err)?;
        // Tables staged before a crash were never ingested: start empty.
        let staging = path.with_extension("ingest");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| {
            EngineError::Io(format!("create staging dir {}: {e}", staging.display()))
        })?;
        Ok(RocksEngine {
            db,
            opts: db_opts,
            cache: Mutex::new(cache),
            path: path.to_path_buf(),
            memtable_budget_bytes: o.memtable_budget_bytes(),
            max_memtables: u64::from(o.max_memtables),
            background_jobs: u64::from(o.background_jobs),
            staging,
            staged: AtomicU64::new(0),
            stall_checked_ms: AtomicU64::new(0),
            stalled: Default::default(),
            opened: std::time::Instant::now(),
            salvaged: false,
            failed: parking_lot::Mutex::new(None),
        })
    }

    /// Options for tables built outside the database: the data space's table format (bloom
    /// filters included) with LZ4, which is cheap to write; compaction recompresses later.
    fn table_writer_opts() -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(BLOOM_BITS, false);
        let mut o = Options::default();
        o.set_block_based_table_factory(&table);
        o.set_compression_type(DBCompressionType::Lz4);
        o
    }

    fn cf(&self, space: Space) -> Result<&rocksdb::ColumnFamily, EngineError> {
        let name = match space {
            Space::Data => rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
            Space::Meta => META_CF,
        };
        self.db
            .cf_handle(name)
            .ok_or_else(|| EngineError::Io(format!("column family {name} missing")))
    }

    fn read_opts() -> ReadOptions {
        let mut r = ReadOptions::default();
        r.set_verify_checksums(true);
        r
    }

    fn prop(&self, name: &str) -> u64 {
        self.cf(Space::Data)
            .ok()
            .and_then(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
            .unwrap_or(0)
    }
}

impl Engine for RocksEngine {
    fn salvaged(&self) -> bool {
        self.salvaged
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let cf = self.cf(space)?;
        self.db
            .get_pinned_cf_opt(cf, key, &Self::read_opts())
            .map(|v| v.map(|s| s.to_vec()))
            .map_err(map_err)
    }

    fn write(&self, ops: Vec<BatchOp>, sync: bool) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                BatchOp::Put(s, k, v) => batch.put_cf(self.cf(s)?, k, v),
                BatchOp::Delete(s, k) => batch.delete_cf(self.cf(s)?, k),
                BatchOp::DeleteRange(s, from, to) => batch.delete_range_cf(self.cf(s)?, from, to),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(|e| {
            let io = e.kind() == ErrorKind::IOError;
            let e = map_err(e);
            if let (true, EngineError::Io(msg)) = (io, &e) {
                // RocksDB is read-only from here on (a hard background error); say so once.
                let mut failed = self.failed.lock();
                if failed.is_none() {
                    tracing::error!(error = %msg, "storage engine failed: writes refused until the node restarts (runbooks/repair.md \"A node whose storage failed\")");
                    *failed = Some(msg.clone());
                }
            }
            e
        })
    }

    fn failed(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), EngineError> {
        let cf = self.cf(space)?;
        let mut ro = Self::read_opts();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        // Bulk scans should not evict the hot working set.
        ro.fill_cache(false);
        ro.set_readahead_size(2 << 20);
        let iter = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(map_err)?;
            if visit(&k, &v) == Scan::Stop {
                break;
            }
        }
        Ok(())
    }

    fn existing(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<bool>, EngineError> {
        let Some(last) = keys.last() else {
            return Ok(Vec::new());
        };
        let cf = self.cf(space)?;
        let mut ro = Self::read_opts();
        let mut bound = last.to_vec();
        bound.push(0);
        ro.set_iterate_upper_bound(bound);
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        let mut out = Vec::with_capacity(keys.len());
        let mut sought = false;
        for k in keys {
            // One seek per key the iterator is behind; once past the bound every later key is
            // absent, so an empty range costs a single seek.
            if !sought || it.key().is_some_and(|cur| cur < *k) {
                it.seek(k);
                sought = true;
            }
            out.push(it.key() == Some(*k));
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    fn write_table(&self, entries: &[(&[u8], &[u8])]) -> Result<PathBuf, EngineError> {
        let path = self.staging.join(format!(
            "{:08}.sst",
            self.staged.fetch_add(1, Ordering::Relaxed)
        ));
        let opts = Self::table_writer_opts();
        let mut w = SstFileWriter::create(&opts);
        let written = w.open(&path).and_then(|_| {
            for (k, v) in entries {
                w.put(k, v)?;
            }
            w.finish()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(map_err(e));
        }
        Ok(path)
    }

    fn ingest(&self, table: &Path, allow_flush: bool) -> Result<Ingested, EngineError> {
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        io.set_allow_blocking_flush(allow_flush);
        match self
            .db
            .ingest_external_file_cf_opts(self.cf(Space::Data)?, &io, vec![table])
        {
            Ok(()) => {
                // Moving links the file in; the staged name is left behind.
                let _ = std::fs::remove_file(table);
                Ok(Ingested::Done)
            }
            Err(e) if !allow_flush && e.to_string().contains("requires flush") => {
                Ok(Ingested::NeedsFlush)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    fn flush(&self) -> Result<(), EngineError> {
        for space in [Space::Data, Space::Meta] {
            self.db.flush_cf(self.cf(space)?).map_err(map_err)?;
        }
        self.db.flush_wal(true).map_err(map_err)
    }

    fn compact(&self, all_levels: bool) -> Result<(), EngineError> {
        let mut co = CompactOptions::default();
        co.set_exclusive_manual_compaction(false);
        if all_levels {
            co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        }
        self.db
            .compact_range_cf_opt(self.cf(Space::Data)?, None::<&[u8]>, None::<&[u8]>, &co);
        Ok(())
    }

    fn write_stalled(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.opened.elapsed().as_millis() as u64 + 1;
        let last = self.stall_checked_ms.load(Relaxed);
        if now.saturating_sub(last) >= STALL_CHECK_MS
            && self
                .stall_checked_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let stalled = self.prop("rocksdb.actual-delayed-write-rate") > 0
                || self.prop("rocksdb.is-write-stopped") > 0
                || self.prop("rocksdb.mem-table-flush-pending") > 0
                    && self.prop("rocksdb.num-immutable-mem-table") + 1 >= self.max_memtables;
            self.stalled.store(stalled, Relaxed);
        }
        self.stalled.load(Relaxed)
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), EngineError> {
        let cp = Checkpoint::new(&self.db).map_err(map_err)?;
        cp.create_checkpoint(dir).map_err(map_err)
    }

    fn stats(&self) -> EngineStats {
        let cache = self.cache.lock().map(|c| c.get_usage()).unwrap_or(0) as u64;
        let capacity = self.prop("rocksdb.block-cache-capacity");
        let sst_files_by_level = (0..LEVELS)
            .map(|l| self.prop(&format!("rocksdb.num-files-at-level{l}")))
            .collect();
        let wal = self.wal_files().unwrap_or_default();
        EngineStats {
            memtable_bytes: self.prop("rocksdb.cur-size-all-mem-tables"),
            memtable_budget_bytes: self.memtable_budget_bytes,
            background_jobs: self.background_jobs,
            flush_pending: self.prop("rocksdb.mem-table-flush-pending"),
            compaction_pending: self.prop("rocksdb.compaction-pending"),
            sst_files_by_level,
            sst_total_bytes: self.prop("rocksdb.total-sst-files-size"),
            pending_compaction_bytes: self.prop("rocksdb.estimate-pending-compaction-bytes"),
            running_compactions: self.prop("rocksdb.num-running-compactions"),
            running_flushes: self.prop("rocksdb.num-running-flushes"),
            block_cache_usage_bytes: cache,
            block_cache_capacity_bytes: capacity,
            block_cache_hits: self.opts.get_ticker_count(Ticker::BlockCacheHit),
            block_cache_misses: self.opts.get_ticker_count(Ticker::BlockCacheMiss),
            estimated_keys: self.prop("rocksdb.estimate-num-keys"),
            live_wal_files: wal.iter().filter(|w| !w.obsolete).count() as u64,
            live_wal_bytes: wal
                .iter()
                .filter(|w| !w.obsolete)
                .map(|w| w.size_bytes)
                .sum(),
            memtable_entries: self.prop("rocksdb.num-entries-active-mem-table")
                + self.prop("rocksdb.num-entries-imm-mem-tables"),
            compaction_read_bytes: self.opts.get_ticker_count(Ticker::CompactReadBytes),
            compaction_write_bytes: self.opts.get_ticker_count(Ticker::CompactWriteBytes),
            failed: u64::from(self.failed.lock().is_some()),
        }
    }

    fn set_block_cache_capacity(&self, bytes: u64) {
        if let Ok(mut c) = self.cache.lock() {
            c.set_capacity(bytes as usize);
        }
    }

    fn wal_files(&self) -> Result<Vec<WalFile>, EngineError> {
        // A WAL whose number is below the oldest log still needed holds only flushed writes.
        let keep_from = self
            .db
            .property_int_value("rocksdb.min-log-number-to-keep")
            .map_err(map_err)?
            .unwrap_or(0);
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.path).map_err(|e| EngineError::Io(e.to_string()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(num) = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size_bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(WalFile {
                name,
                size_bytes,
                obsolete: num < keep_from,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
