//! Merges: states from other replicas (`Apply`, origins in [`Origin`]) and read repair merged
//! into the stored state under the key's stripe lock; [`Store::repair`] alone replaces a
//! record that fails its checksum.

use super::*;

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

impl Store {
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

    pub(super) fn merge_many(&self, cmds: Vec<ApplyCmd>, repair: bool) -> Vec<Result<ApplyReply>> {
        let (mut results, accepted) = admit(
            &cmds,
            |c: &ApplyCmd| {
                validate::key_ref(&c.tenant, &c.key)
                    .map_err(Error::from)
                    .and_then(|_| self.check_own_counters(&c.state, "incoming key state"))
            },
            |c| (c.tenant.as_str(), c.key.as_slice()),
        );
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
            Err(e) => fail_committed(&mut results, &accepted, &e),
        }
        drop(gates);
        drop(registry);
        drop(guards);
        filled(results, "merge")
    }

    /// Merges one incoming state into the key's current one and stages the result when it
    /// changed: through the stored-size bound and the disk gate, by the real record size.
    pub(super) fn merge_one(
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
    pub(super) fn check_stored_size(
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
}
