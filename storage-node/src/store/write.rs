//! Coordinated writes: mint a dot for each write under its key's stripe lock, check the
//! client's context and the sibling caps, and commit the batch through the disk gate.

use super::*;
use pairdb_common::telemetry::LogEvery;
use std::time::Duration;

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
pub(super) struct Staged {
    states: HashMap<Vec<u8>, KeyState>,
    records: HashMap<Vec<u8>, Vec<u8>>,
    order: Vec<Vec<u8>>,
}

impl Staged {
    pub(super) fn put(&mut self, dk: &[u8], state: KeyState, record: Vec<u8>) {
        if !self.records.contains_key(dk) {
            self.order.push(dk.to_vec());
        }
        self.states.insert(dk.to_vec(), state);
        self.records.insert(dk.to_vec(), record);
    }

    pub(super) fn encoded_len(&self, dk: &[u8]) -> usize {
        self.records.get(dk).map_or(0, Vec::len)
    }
}

impl Store {
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
        let check = |c: &WriteCmd| {
            validate::key_ref(&c.tenant, &c.key)
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
                .map_err(Error::from)
        };
        let (mut results, accepted) =
            admit(&cmds, check, |c| (c.tenant.as_str(), c.key.as_slice()));
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
            fail_committed(&mut results, &accepted, &e);
        }
        drop(gates);
        drop(registry);
        drop(guards);
        filled(results, "write")
    }

    /// Commits what a batch staged, in one engine write.
    pub(super) fn commit(&self, staged: Staged, what: &str) -> Result<()> {
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
        // A full disk fails every batch until space is freed: one line per 10 s says so (every
        // refusal is counted in `errors_total` by operation and code).
        static COMMIT_FAILED: LogEvery = LogEvery::new(Duration::from_secs(10));
        self.engine.write(ops, self.cfg.sync_writes).map_err(|e| {
            if let Some(suppressed) = COMMIT_FAILED.allow() {
                tracing::error!(error = %e, suppressed, "commit {what} batch failed");
            }
            Error::from(e)
        })
    }

    /// The current state of `dk` within a batch (staged by an earlier command, or stored) and
    /// the size of its record (0 = none).
    pub(super) fn current(
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
    pub(super) fn check_own_counters(&self, state: &KeyState, what: &str) -> Result<()> {
        let own = state.max_counter_for(self.identity.actor());
        if own == 0 {
            return Ok(());
        }
        if let Err(e) = self.identity.check_own(own) {
            self.metrics.counter_refusals.inc();
            // Forged input a peer may repeat at will: counted each time, logged every 10 s.
            static REFUSED: LogEvery = LogEvery::new(Duration::from_secs(10));
            if let Some(suppressed) = REFUSED.allow() {
                tracing::error!(error = %e, suppressed, "refused {what}");
            }
            return Err(Error::Invalid(pairdb_common::Error::InvalidArgument(
                format!("{what}: {e}"),
            )));
        }
        self.identity.observe(own);
        Ok(())
    }

    pub(super) fn write_one(
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
}
