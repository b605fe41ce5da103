//! Causal contexts on the wire, in two forms.
//!
//! - **Client tokens** (what `Read` returns and `Write`/`Delete` take back): sealed with a MAC
//!   under a cluster key, so a forged or edited token is INVALID_CONTEXT. Format:
//!   `0x82 (format) ‖ key id (u32 LE) ‖ prost pairdb.VersionVector ‖ HMAC-SHA256 (32 bytes)`
//!   over everything before the tag. The keys live in the metadata store and rotate: a
//!   [`Keyring`] accepts the current key and every previous one still within its grace.
//!   Clients must treat tokens as opaque bytes.
//! - **Internal contexts** (coordinator → storage node, `WriteOp.context`): `0x81 ‖ CRC32 ‖
//!   prost pairdb.VersionVector`. The coordinator has already opened the client's token; the
//!   node still validates everything it decodes (actor ids, counts, and its own counters).
//!
//! Both decoders bound their input ([`MAX_CONTEXT_BYTES`]) and build the vector in
//! O(n log n) (see `convert::vv_from_pb`).

use prost::Message;
use ring::hmac;

use crate::api::pb;
use crate::convert;
use crate::error::{Error, Result};
use crate::framing;
use crate::version::VersionVector;

/// Format byte of an internal (CRC-framed) context.
pub const CONTEXT_FORMAT_V1: u8 = 0x81;
/// Format byte of a sealed client token.
pub const TOKEN_FORMAT_V2: u8 = 0x82;
/// Largest context (either form) accepted: room for a vector at the count limits
/// (`validate::MAX_CONTEXT_ENTRIES` actors, `MAX_CONTEXT_DOTS` dots, 63-byte actor ids), so
/// every context a valid key state can produce fits.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024 * 1024;
/// Length of the MAC at the end of a token.
const TAG_BYTES: usize = 32;
/// Format byte and key id before the payload.
const TOKEN_HEADER_BYTES: usize = 5;

fn too_large(len: usize) -> Error {
    Error::InvalidContext(format!(
        "context is {len} bytes; the limit is {MAX_CONTEXT_BYTES}"
    ))
}

fn decode_vv(payload: &[u8]) -> Result<VersionVector> {
    let pb = pb::VersionVector::decode(payload)
        .map_err(|e| Error::InvalidContext(format!("context does not decode: {e}")))?;
    convert::vv_from_pb(pb).map_err(|e| Error::InvalidContext(e.to_string()))
}

/// Encodes a version vector as an internal context (coordinator → storage node).
pub fn encode_internal(vv: &VersionVector) -> Vec<u8> {
    framing::frame(CONTEXT_FORMAT_V1, &convert::vv_to_pb(vv).encode_to_vec())
}

/// Decodes an internal context; empty is the empty context. Garbage is INVALID_CONTEXT.
pub fn decode_internal(bytes: &[u8]) -> Result<VersionVector> {
    if bytes.is_empty() {
        return Ok(VersionVector::new());
    }
    if bytes.len() > MAX_CONTEXT_BYTES {
        return Err(too_large(bytes.len()));
    }
    let payload = framing::unframe(CONTEXT_FORMAT_V1, bytes)
        .map_err(|e| Error::InvalidContext(format!("not a pairdb context: {e}")))?;
    decode_vv(payload)
}

/// Bytes of a new cluster key's secret.
pub const SECRET_BYTES: usize = 32;

/// A new random secret for a cluster context key (from the operating system's generator).
pub fn new_secret() -> Result<[u8; SECRET_BYTES]> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| Error::Internal("the system random generator failed".into()))?;
    Ok(secret)
}

/// One cluster context key: its id and HMAC-SHA256 key.
pub struct ContextKey {
    id: u32,
    key: hmac::Key,
}

impl ContextKey {
    /// A key from its id and secret (the metadata store keeps 32 random bytes).
    pub fn new(id: u32, secret: &[u8]) -> ContextKey {
        ContextKey {
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextKey").field("id", &self.id).finish()
    }
}

/// Why a token did not open.
#[derive(Debug)]
pub enum OpenError {
    /// Sealed with a key this keyring does not hold (newer than it, or retired): the caller
    /// may reload its keys once and try again.
    UnknownKey(u32),
    /// Not a valid token (INVALID_CONTEXT).
    Invalid(Error),
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        match e {
            OpenError::UnknownKey(id) => Error::InvalidContext(format!(
                "context token was sealed with key {id}, which is unknown or past its grace: read the key again"
            )),
            OpenError::Invalid(e) => e,
        }
    }
}

/// The keys a coordinator seals and opens client tokens with: the current key seals, every
/// key still within its grace (the current one included) opens.
#[derive(Debug)]
pub struct Keyring {
    current: ContextKey,
    others: Vec<ContextKey>,
}

impl Keyring {
    pub fn new(current: ContextKey, others: Vec<ContextKey>) -> Keyring {
        Keyring { current, others }
    }

    /// The id of the key new tokens are sealed with.
    pub fn current_id(&self) -> u32 {
        self.current.id
    }

    /// Seals `vv` into a client token.
    pub fn seal(&self, vv: &VersionVector) -> Vec<u8> {
        let pb = convert::vv_to_pb(vv);
        let mut out = Vec::with_capacity(TOKEN_HEADER_BYTES + pb.encoded_len() + TAG_BYTES);
        out.push(TOKEN_FORMAT_V2);
        out.extend_from_slice(&self.current.id.to_le_bytes());
        pb.encode(&mut out)
            .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        let tag = hmac::sign(&self.current.key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a client token; empty is the empty context. The MAC is checked (in constant time)
    /// before anything inside the token is decoded.
    pub fn open(&self, token: &[u8]) -> std::result::Result<VersionVector, OpenError> {
        let invalid = |m: String| OpenError::Invalid(Error::InvalidContext(m));
        if token.is_empty() {
            return Ok(VersionVector::new());
        }
        if token.len() > MAX_CONTEXT_BYTES {
            return Err(OpenError::Invalid(too_large(token.len())));
        }
        if token.len() < TOKEN_HEADER_BYTES + TAG_BYTES || token[0] != TOKEN_FORMAT_V2 {
            return Err(invalid(
                "not a pairdb context token (pass back the context a read returned, unchanged)"
                    .into(),
            ));
        }
        let id = u32::from_le_bytes([token[1], token[2], token[3], token[4]]);
        let key = std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.id == id)
            .ok_or(OpenError::UnknownKey(id))?;
        let (body, tag) = token.split_at(token.len() - TAG_BYTES);
        hmac::verify(&key.key, body, tag).map_err(|_| {
            invalid("context token failed authentication (it was edited or forged)".into())
        })?;
        decode_vv(&body[TOKEN_HEADER_BYTES..]).map_err(OpenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::version::{Actor, Dot};
    use proptest::prelude::*;

    fn vv() -> VersionVector {
        let mut vv = VersionVector::new();
        vv.raise(&Actor::new("n1", 5), 9);
        vv.add_dot(&Dot::new(Actor::new("n2", 1), 7));
        vv
    }

    fn code(e: OpenError) -> ErrorCode {
        Error::from(e).code()
    }

    #[test]
    fn internal_round_trip_and_garbage() {
        assert_eq!(decode_internal(&encode_internal(&vv())).unwrap(), vv());
        assert_eq!(decode_internal(b"").unwrap(), VersionVector::new());
        for garbage in [&b"garbage"[..], &[0x81, 0, 0, 0, 0, 1][..], &[0x81][..]] {
            assert_eq!(
                decode_internal(garbage).unwrap_err().code(),
                ErrorCode::InvalidContext
            );
        }
        let mut t = encode_internal(&vv());
        let last = t.len() - 1;
        t[last] ^= 0x40;
        assert_eq!(
            decode_internal(&t).unwrap_err().code(),
            ErrorCode::InvalidContext
        );
    }

    #[test]
    fn sealed_tokens_open_only_unedited_and_under_a_known_key() {
        let ring = Keyring::new(ContextKey::new(2, b"secret-two"), vec![]);
        let t = ring.seal(&vv());
        assert_eq!(ring.open(&t).unwrap(), vv());
        assert_eq!(ring.open(b"").unwrap(), VersionVector::new());
        // Every single-bit edit anywhere is refused.
        for i in 0..t.len() {
            for bit in [0x01u8, 0x80] {
                let mut e = t.clone();
                e[i] ^= bit;
                match ring.open(&e) {
                    Ok(_) => panic!("edited byte {i} opened"),
                    Err(OpenError::UnknownKey(_)) => assert!((1..5).contains(&i)),
                    Err(err) => assert_eq!(code(err), ErrorCode::InvalidContext),
                }
            }
        }
        // The old CRC-only format is no token.
        assert_eq!(
            code(ring.open(&encode_internal(&vv())).unwrap_err()),
            ErrorCode::InvalidContext
        );
        // A token sealed under another secret with the same id fails authentication.
        let other = Keyring::new(ContextKey::new(2, b"another"), vec![]);
        assert_eq!(
            code(ring.open(&other.seal(&vv())).unwrap_err()),
            ErrorCode::InvalidContext
        );
        // A key the ring does not hold is reported as unknown (the caller reloads keys).
        let newer = Keyring::new(ContextKey::new(3, b"three"), vec![]);
        assert!(matches!(
            ring.open(&newer.seal(&vv())),
            Err(OpenError::UnknownKey(3))
        ));
        // After a rotation the previous key still opens; new tokens use the new key.
        let rotated = Keyring::new(
            ContextKey::new(3, b"three"),
            vec![ContextKey::new(2, b"secret-two")],
        );
        assert_eq!(rotated.open(&t).unwrap(), vv());
        assert_eq!(rotated.seal(&vv())[1], 3);
    }

    proptest! {
        /// Arbitrary bytes never open and never panic.
        #[test]
        fn arbitrary_tokens_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let ring = Keyring::new(ContextKey::new(1, b"k"), vec![]);
            let r = ring.open(&bytes);
            prop_assert!(bytes.is_empty() || r.is_err());
            let _ = decode_internal(&bytes);
        }
    }
}
