//! The descent sessions' record-hash cache: one scan of a piece per session, kept for
//! `DIGEST_CACHE_TTL` and bounded in records over all sessions.

use super::*;

/// How long a descent session's record hashes are kept, and how many record hashes all kept
/// sessions hold together (24 bytes each: ~100 MiB). A larger scope is scanned per level.
pub(super) const DIGEST_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
pub(super) const DIGEST_CACHE_MAX_RECORDS: usize = 4 << 20;

/// A descent session's record hashes in scope order, and the corrupt records among them.
pub(super) type SessionLeaves = (Vec<Leaf>, u64);

impl Store {
    /// The record hashes of `scope` for a descent session: from the cache, or one scan.
    pub(super) fn session_leaves(
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
    pub(super) fn leaf(
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
}
