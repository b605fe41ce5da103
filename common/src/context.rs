//! The opaque causal-context token clients carry between a read and a write.
//!
//! Format: `0x81 (format) ‖ CRC32 ‖ prost pairdb.VersionVector`. Clients must treat it as
//! opaque bytes; the CRC makes garbage or truncated tokens fail with INVALID_CONTEXT instead of
//! being misread as a real context.

use prost::Message;

use crate::api::pb;
use crate::convert;
use crate::error::{Error, Result};
use crate::framing;
use crate::version::VersionVector;

/// Format byte of a context token.
pub const CONTEXT_FORMAT_V1: u8 = 0x81;
/// Largest context token accepted.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;

/// Encodes a version vector as a context token.
pub fn encode(vv: &VersionVector) -> Vec<u8> {
    framing::frame(CONTEXT_FORMAT_V1, &convert::vv_to_pb(vv).encode_to_vec())
}

/// Decodes a context token; an empty token is the empty context.
pub fn decode(token: &[u8]) -> Result<VersionVector> {
    if token.is_empty() {
        return Ok(VersionVector::new());
    }
    if token.len() > MAX_CONTEXT_BYTES {
        return Err(Error::InvalidContext(format!(
            "context is {} bytes; the limit is {MAX_CONTEXT_BYTES}",
            token.len()
        )));
    }
    let payload = framing::unframe(CONTEXT_FORMAT_V1, token)
        .map_err(|e| Error::InvalidContext(format!("not a pairdb context token: {e}")))?;
    let pb = pb::VersionVector::decode(payload)
        .map_err(|e| Error::InvalidContext(format!("context does not decode: {e}")))?;
    convert::vv_from_pb(pb).map_err(|e| Error::InvalidContext(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::version::Actor;

    #[test]
    fn round_trip_and_garbage() {
        let mut vv = VersionVector::new();
        vv.raise(&Actor::new("n1", 5), 9);
        assert_eq!(decode(&encode(&vv)).unwrap(), vv);
        assert_eq!(decode(b"").unwrap(), VersionVector::new());
        for garbage in [&b"garbage"[..], &[0x81, 0, 0, 0, 0, 1][..], &[0x81][..]] {
            assert_eq!(
                decode(garbage).unwrap_err().code(),
                ErrorCode::InvalidContext
            );
        }
        let mut t = encode(&vv);
        let last = t.len() - 1;
        t[last] ^= 0x40;
        assert_eq!(decode(&t).unwrap_err().code(), ErrorCode::InvalidContext);
    }
}
