//! Streamed records (`PullRange` on the receiving node): fences that tell which keys had no
//! record while a range streamed in, table ingestion for those, merges for the rest.

use super::*;

/// Default [`StoreConfig::table_min_bytes`]: streamed records below this many bytes per call are
/// merged; above, new keys are ingested as a table (a table per tiny batch only feeds compaction).
pub const MIN_TABLE_BYTES: u64 = 1 << 20;
/// Table builds per [`Store::apply_streamed`] call before the rest is merged instead (each
/// retry is caused by writes landing on keys of the table while it was built).
pub(super) const TABLE_ATTEMPTS: u32 = 3;

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
    open: Arc<std::sync::atomic::AtomicUsize>,
}

pub(super) struct FenceState {
    range: TokenRange,
    gate: RwLock<()>,
    noted: Mutex<HashSet<Vec<u8>>>,
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.registry
            .write()
            .retain(|f| !Arc::ptr_eq(f, &self.state));
        self.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Enters the gate of every fence covering one of `dks` and notes the keys there; the guards
/// are held until the write commits. Gates are taken in registry order, so writers never wait
/// on each other in a cycle (an ingest holds one gate and waits on nothing).
pub(super) fn enter_fences<'r, 'k>(
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

impl Store {
    /// Raises a fence over `range` for [`Store::apply_streamed`]; it comes down when dropped.
    pub fn open_fence(&self, range: TokenRange) -> Fence {
        let state = Arc::new(FenceState {
            range,
            gate: RwLock::new(()),
            noted: Mutex::new(HashSet::new()),
        });
        // Counted first: a write that sees no fence counted runs inline, and finds none in
        // the registry either (taking the registry exclusively waits for writes in flight).
        self.open_fences
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.fences.write().push(state.clone());
        Fence {
            registry: self.fences.clone(),
            state,
            open: self.open_fences.clone(),
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

    pub(super) fn decode_incoming(&self, e: &Incoming) -> Result<KeyState> {
        framing::decode_state(&e.record).map_err(|err| {
            self.metrics.checksum_failures.inc();
            Error::Corrupt {
                key: display_key(&e.tenant, &e.key),
                detail: format!("streamed record: {err}"),
            }
        })
    }
}
