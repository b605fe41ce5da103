//! Range digests (topology verification) and the anti-entropy descent's bucket hashes over a
//! session's record hashes.

use super::*;

/// Mixed into the digest of a bucket holding a corrupt record (see `digest_into`).
pub(super) static CORRUPT_SALT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Most buckets a digest may ask for.
pub const MAX_DIGEST_BUCKETS: u32 = 65_536;
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

/// A 64-bit hash shortened to 32 bits, salted (a descent session's salt): a collision between
/// two different values is rare and, with another salt next round, not repeated.
pub fn short_hash(h: u64, salt: u64) -> u32 {
    (xxhash_rust::xxh64::xxh64(&h.to_le_bytes(), salt) >> 32) as u32
}

/// One record as digests see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf {
    pub(super) token: u64,
    pub(super) hash: u64,
    pub(super) bytes: u64,
}

/// A record's digest hash: XXH64 over its data key and record payload.
pub(super) fn record_hash(data_key: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(data_key);
    h.update(payload);
    h.digest()
}

/// Where `token` lies in `scope`, counted from just after its start (1 ..= width).
pub(super) fn offset(scope: TokenRange, token: u64) -> u128 {
    match token.wrapping_sub(scope.start) {
        0 => 1u128 << 64,
        o => u128::from(o),
    }
}

/// Buckets of a range: each bucket's hash is XXH64 over its records' [`record_hash`]es (LE) in
/// data-key order, so it can be computed from a scan or from kept record hashes alike.
pub(super) struct Digester {
    ranges: Vec<TokenRange>,
    hashers: Vec<(Xxh64, u64, u64)>,
    start: u64,
    width: u128,
}

impl Digester {
    pub(super) fn new(range: TokenRange, buckets: u32) -> Digester {
        let ranges = range.split(buckets.clamp(1, MAX_DIGEST_BUCKETS));
        let hashers = ranges.iter().map(|_| (Xxh64::new(0), 0, 0)).collect();
        Digester {
            ranges,
            hashers,
            start: range.start,
            width: range.width(),
        }
    }

    pub(super) fn add(&mut self, l: &Leaf) {
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

    pub(super) fn finish(self, out: &mut Vec<DigestBucket>) {
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

impl Store {
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

    pub(super) fn digest_into(
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
}
