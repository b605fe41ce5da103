//! Maintenance over ranges: tombstone purge, range drop and the integrity scan.

use super::*;

/// Keys deleted per write batch by [`Store::drop_tenant_range`].
pub const DROP_BATCH_KEYS: usize = 4096;

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

impl Store {
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

    /// Deletes the records of `tenant` whose token lies in `range`, leaving every other
    /// tenant's: the surplus copies after a decrease of that tenant's replication factor.
    /// Data keys start with the token, so this scans the range and deletes the tenant's keys
    /// in batches of [`DROP_BATCH_KEYS`] (bounded memory however many the tenant has).
    pub fn drop_tenant_range(&self, range: TokenRange, tenant: &str) -> Result<u64> {
        let mut count = 0u64;
        for (lo, hi) in range.pieces() {
            let (mut from, to) = piece_bounds(lo, hi);
            loop {
                let mut batch = Vec::new();
                let mut next = None;
                self.engine
                    .scan(Space::Data, &from, to.as_deref(), &mut |k, _| {
                        if matches!(token::split_data_key(k), Ok((_, t, _)) if t == tenant) {
                            batch.push(BatchOp::Delete(Space::Data, k.to_vec()));
                            if batch.len() >= DROP_BATCH_KEYS {
                                next = Some(successor(k));
                                return Scan::Stop;
                            }
                        }
                        Scan::Continue
                    })?;
                count += batch.len() as u64;
                if !batch.is_empty() {
                    self.engine.write(batch, true)?;
                }
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        tracing::info!(%range, tenant, records = count, "dropped a tenant's records in a token range");
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
