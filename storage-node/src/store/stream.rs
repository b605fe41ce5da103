//! Range streaming on the sending node: byte-bounded batches of verified records, filtered by
//! sub-ranges, tenants and key hashes.

use super::*;

/// Record bytes per streamed batch (a record larger than this goes alone): with the 64 MiB
/// message limit, 512 records of 300 KiB would not fit one message.
pub const STREAM_BATCH_BYTES: usize = 4 << 20;
/// The slowest throttle a caller may ask a stream for: below it a scan (its thread, iterator and
/// pinned tables) could be held for days by one request.
pub const MIN_STREAM_BYTES_PER_SEC: u64 = 1 << 20;
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
    pub(super) fn pieces(&self, range: TokenRange) -> Vec<(u64, u64)> {
        if self.sub_ranges.is_empty() {
            return range.pieces();
        }
        self.sub_ranges.iter().flat_map(|r| r.pieces()).collect()
    }

    pub(super) fn admits(&self, data_key: &[u8]) -> bool {
        (self.tenants.is_empty() || admits_tenant(&self.tenants, data_key))
            && (self.key_hashes.is_empty() || self.key_hashes.contains(&key_hash(data_key)))
    }
}

pub(super) fn admits_tenant(tenants: &HashSet<String>, data_key: &[u8]) -> bool {
    tenants.is_empty() || token::split_data_key(data_key).is_ok_and(|(_, t, _)| tenants.contains(t))
}

impl Store {
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
}
