//! Key encoding, the key token and token ranges (SPEC §2.1, §3, §4).
//!
//! **Encoding** of `(tenant, key)`: one byte holding the tenant id's length (1–63), the tenant
//! id's bytes, then the key's bytes. The tenant part is length-prefixed, so no two pairs encode
//! alike. **Token**: XXH64 with seed 0 over that encoding, as an unsigned 64-bit integer. Any
//! language with an XXH64 implementation can compute it (see the test vectors below and in README).
//! **Data key** on a storage node: the token as 8 big-endian bytes followed by the encoding, so
//! one token range is one contiguous RocksDB scan.

use xxhash_rust::xxh64::xxh64;

use crate::error::{Error, Result};

/// Length of the big-endian token prefix of a data key.
pub const TOKEN_BYTES: usize = 8;

/// Encodes `(tenant, key)` as `len(tenant) ‖ tenant ‖ key`. The caller has validated both.
pub fn encode_key(tenant: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + tenant.len() + key.len());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits an encoded key back into `(tenant, key)`.
pub fn decode_key(encoded: &[u8]) -> Result<(&str, &[u8])> {
    let (&len, rest) = encoded
        .split_first()
        .ok_or_else(|| Error::Internal("encoded key is empty".into()))?;
    let len = len as usize;
    if len == 0 || rest.len() < len {
        return Err(Error::Internal(format!(
            "encoded key of {} bytes has a bad tenant length {len}",
            encoded.len()
        )));
    }
    let tenant = std::str::from_utf8(&rest[..len])
        .map_err(|_| Error::Internal("encoded tenant id is not UTF-8".into()))?;
    Ok((tenant, &rest[len..]))
}

/// The ring token of an encoded key.
pub fn token_of_encoded(encoded: &[u8]) -> u64 {
    xxh64(encoded, 0)
}

/// The ring token of `(tenant, key)`.
pub fn token(tenant: &str, key: &[u8]) -> u64 {
    token_of_encoded(&encode_key(tenant, key))
}

/// A record's key hash as anti-entropy names it: XXH64 (seed 0) of its data key.
pub fn key_hash(data_key: &[u8]) -> u64 {
    xxh64(data_key, 0)
}

/// Human-readable `tenant/key` for logs and reports.
pub fn display_key(tenant: &str, key: &[u8]) -> String {
    format!("{tenant}/{}", String::from_utf8_lossy(key).escape_debug())
}

/// The storage-node data key: `token (u64 BE) ‖ encode_key(tenant, key)`.
pub fn data_key(tenant: &str, key: &[u8]) -> Vec<u8> {
    let encoded = encode_key(tenant, key);
    let mut out = Vec::with_capacity(TOKEN_BYTES + encoded.len());
    out.extend_from_slice(&token_of_encoded(&encoded).to_be_bytes());
    out.extend_from_slice(&encoded);
    out
}

/// Splits a data key into `(token, tenant, key)`.
pub fn split_data_key(data_key: &[u8]) -> Result<(u64, &str, &[u8])> {
    if data_key.len() <= TOKEN_BYTES {
        return Err(Error::Internal(format!(
            "data key of {} bytes is too short",
            data_key.len()
        )));
    }
    let (tok, encoded) = data_key.split_at(TOKEN_BYTES);
    let mut buf = [0u8; TOKEN_BYTES];
    buf.copy_from_slice(tok);
    let (tenant, key) = decode_key(encoded)?;
    Ok((u64::from_be_bytes(buf), tenant, key))
}

/// The ring interval `(start, end]`: excludes `start`, includes `end`, wraps past `u64::MAX`.
/// `start == end` is the whole ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
}

impl TokenRange {
    /// The whole ring.
    pub const FULL: TokenRange = TokenRange { start: 0, end: 0 };

    pub fn new(start: u64, end: u64) -> TokenRange {
        TokenRange { start, end }
    }

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: u64) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => token > self.start && token <= self.end,
            std::cmp::Ordering::Greater => token > self.start || token <= self.end,
        }
    }

    /// The range as at most two non-wrapping inclusive token intervals `[lo, hi]`, in ring order
    /// starting just after `start`.
    pub fn pieces(&self) -> Vec<(u64, u64)> {
        let (s, e) = (self.start, self.end);
        if s == e {
            // Whole ring, starting after `s`.
            if s == u64::MAX {
                return vec![(0, u64::MAX)];
            }
            let mut v = vec![(s + 1, u64::MAX)];
            v.push((0, s));
            return v;
        }
        if s < e {
            return vec![(s + 1, e)];
        }
        let mut v = Vec::with_capacity(2);
        if s < u64::MAX {
            v.push((s + 1, u64::MAX));
        }
        v.push((0, e));
        v
    }

    /// Number of tokens in the range (the whole ring counts as 2^64, saturated).
    pub fn width(&self) -> u128 {
        if self.start == self.end {
            1u128 << 64
        } else {
            u128::from(self.end.wrapping_sub(self.start))
        }
    }

    /// Splits the range into `n` consecutive sub-ranges of (almost) equal width, in ring order.
    /// `n` is clamped to 1..=width.
    pub fn split(&self, n: u32) -> Vec<TokenRange> {
        let width = self.width();
        let n = u128::from(n.max(1)).min(width);
        let mut out = Vec::with_capacity(n as usize);
        let mut prev = self.start;
        for i in 1..=n {
            let end = if i == n {
                self.end
            } else {
                self.start.wrapping_add((width * i / n) as u64)
            };
            out.push(TokenRange::new(prev, end));
            prev = end;
        }
        out
    }
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fixed vectors: another language's XXH64(seed 0) over the same bytes must give these.
    #[test]
    fn token_test_vectors() {
        assert_eq!(
            encode_key("default", b"user:1"),
            b"\x07defaultuser:1".to_vec()
        );
        assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);
        assert_eq!(token("default", b"user:1"), xxh64(b"\x07defaultuser:1", 0));
        assert_eq!(token("default", b"user:1"), TOKEN_DEFAULT_USER1);
        assert_eq!(token("t1", b"k"), TOKEN_T1_K);
    }

    // Computed independently with Python's `xxhash.xxh64_intdigest(encoded, 0)`; README lists
    // them for other languages.
    const TOKEN_DEFAULT_USER1: u64 = 0x20e1740dfecf3f55;
    const TOKEN_T1_K: u64 = 0xe9cdce39596363d0;

    #[test]
    fn encoding_never_collides_across_tenants() {
        // ("ab", "c") vs ("a", "bc") would collide without the length prefix.
        assert_ne!(encode_key("ab", b"c"), encode_key("a", b"bc"));
        let dk = data_key("ab", b"c");
        let (tok, t, k) = split_data_key(&dk).unwrap();
        assert_eq!((tok, t, k), (token("ab", b"c"), "ab", &b"c"[..]));
    }

    #[test]
    fn range_semantics() {
        let r = TokenRange::new(10, 20);
        assert!(!r.contains(10) && r.contains(11) && r.contains(20) && !r.contains(21));
        let w = TokenRange::new(u64::MAX - 1, 5);
        assert!(w.contains(u64::MAX) && w.contains(0) && w.contains(5) && !w.contains(6));
        assert!(!w.contains(u64::MAX - 1));
        assert_eq!(w.pieces(), vec![(u64::MAX, u64::MAX), (0, 5)]);
        assert!(TokenRange::FULL.contains(0) && TokenRange::FULL.contains(u64::MAX));
        assert_eq!(TokenRange::FULL.pieces(), vec![(1, u64::MAX), (0, 0)]);
    }

    proptest! {
        #[test]
        fn pieces_cover_exactly_the_range(s in any::<u64>(), e in any::<u64>(), t in any::<u64>()) {
            let r = TokenRange::new(s, e);
            let in_pieces = r.pieces().iter().any(|(lo, hi)| t >= *lo && t <= *hi);
            prop_assert_eq!(in_pieces, r.contains(t));
        }

        #[test]
        fn split_partitions_the_range(s in any::<u64>(), e in any::<u64>(), n in 1u32..50, t in any::<u64>()) {
            let r = TokenRange::new(s, e);
            let parts = r.split(n);
            prop_assert_eq!(parts.first().unwrap().start, s);
            prop_assert_eq!(parts.last().unwrap().end, e);
            let owners = parts.iter().filter(|p| p.contains(t)).count();
            prop_assert_eq!(owners, usize::from(r.contains(t)));
        }
    }
}
