//! Key listings for anti-entropy (`RepairKeys`): short salted hashes per key, or full entries
//! (dots, context) of the keys asked for.

use super::*;

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
    pub(super) fn approx_bytes(&self) -> usize {
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

impl Store {
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
}
