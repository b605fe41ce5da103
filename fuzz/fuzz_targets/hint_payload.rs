//! Hint payloads read back from the metadata store (framed key states a coordinator replays):
//! never a panic, and a payload that decodes converts to and from the wire state a replay sends.
//! Mirrored by the `coordinator::hints` proptest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pairdb_common::{convert, framing};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = framing::decode_state(data) {
        let wire = convert::state_to_pb(&s);
        assert_eq!(convert::state_from_pb(wire).ok(), Some(s));
    }
});
