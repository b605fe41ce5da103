//! Persisted records (framing + KeyState): any bytes decode to a normalized state that
//! re-encodes to itself, or are refused. Mirrored by `common::framing` proptests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pairdb_common::framing;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = framing::decode_state(data) {
        assert_eq!(framing::decode_state(&framing::encode_state(&s)).ok(), Some(s));
    }
});
