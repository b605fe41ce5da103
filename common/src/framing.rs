//! Persisted byte formats: every record is `format version (1 byte) ‖ CRC32 (4 bytes, LE) ‖ payload`.
//!
//! The CRC (crc32fast, IEEE polynomial) covers the payload. Decoding checks the format byte
//! first (an unknown format is an error, never a panic), then the CRC, then the payload.

use prost::Message;

use crate::api::pb;
use crate::convert;
use crate::version::KeyState;

/// Format byte of a key-state record (payload: prost `pairdb.KeyState`).
pub const RECORD_FORMAT_V1: u8 = 1;
/// Bytes before the payload.
pub const HEADER_BYTES: usize = 5;

/// Why a framed record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("unknown record format version {0}")]
    UnknownFormat(u8),
    #[error("CRC32 mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// CRC32 of `payload`.
pub fn crc32(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// Frames `payload` with `format` and its CRC32.
pub fn frame(format: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(format);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a framed record's format byte and CRC, returning its payload.
pub fn unframe(expected_format: u8, record: &[u8]) -> Result<&[u8], FrameError> {
    if record.len() < HEADER_BYTES {
        return Err(FrameError::Truncated(record.len()));
    }
    if record[0] != expected_format {
        return Err(FrameError::UnknownFormat(record[0]));
    }
    let stored = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let payload = &record[HEADER_BYTES..];
    let computed = crc32(payload);
    if stored != computed {
        return Err(FrameError::ChecksumMismatch { stored, computed });
    }
    Ok(payload)
}

/// The CRC32 stored in a record's header (no verification).
pub fn stored_crc(record: &[u8]) -> Option<u32> {
    (record.len() >= HEADER_BYTES)
        .then(|| u32::from_le_bytes([record[1], record[2], record[3], record[4]]))
}

/// Encodes a key state as a framed record. The encoding is canonical: equal states give equal bytes.
pub fn encode_state(state: &KeyState) -> Vec<u8> {
    frame(
        RECORD_FORMAT_V1,
        &convert::state_to_pb(state).encode_to_vec(),
    )
}

/// Decodes and verifies a framed key-state record.
pub fn decode_state(record: &[u8]) -> Result<KeyState, FrameError> {
    let payload = unframe(RECORD_FORMAT_V1, record)?;
    let pb = pb::KeyState::decode(payload).map_err(|e| FrameError::Payload(e.to_string()))?;
    convert::state_from_pb(pb).map_err(|e| FrameError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Actor, ConflictPolicy, Dot, NewVersion, VersionVector};
    use proptest::prelude::*;

    fn sample() -> KeyState {
        let mut s = KeyState::new();
        s.apply_write(NewVersion {
            dot: Dot::new(Actor::new("n1", 7), 3),
            context: VersionVector::new(),
            value: b"hello".to_vec(),
            tombstone: false,
            written_at_ms: 42,
            expires_at_ms: 0,
            idempotency_key: String::new(),
            policy: ConflictPolicy::Siblings,
            max_siblings: 10,
        });
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(decode_state(&encode_state(&s)).unwrap(), s);
    }

    #[test]
    fn unknown_format_is_an_error() {
        let mut r = encode_state(&sample());
        r[0] = 9;
        assert_eq!(decode_state(&r).unwrap_err(), FrameError::UnknownFormat(9));
        assert_eq!(decode_state(&[1, 2]).unwrap_err(), FrameError::Truncated(2));
    }

    proptest! {
        /// Flipping any single bit of a record is always detected, never a panic.
        #[test]
        fn any_flipped_bit_is_detected(byte in 0usize..64, bit in 0u8..8) {
            let mut r = encode_state(&sample());
            let i = byte % r.len();
            r[i] ^= 1 << bit;
            prop_assert!(decode_state(&r).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_state(&bytes);
        }
    }
}
