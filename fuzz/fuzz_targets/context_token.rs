//! Client context tokens (coordinator edge) and internal contexts (storage node): any bytes
//! are refused or open to a vector within the limits; nothing panics. Mirrored by
//! `common::context` and `common::convert` proptests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pairdb_common::context::{self, ContextKey, Keyring};

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::new(ContextKey::new(1, b"fuzz"), vec![ContextKey::new(2, b"old")]);
    if let Ok(vv) = ring.open(data) {
        // Only a token this ring sealed opens; sealing it again opens to the same vector.
        assert_eq!(ring.open(&ring.seal(&vv)).ok(), Some(vv));
    }
    if let Ok(vv) = context::decode_internal(data) {
        assert_eq!(context::decode_internal(&context::encode_internal(&vv)).ok(), Some(vv));
    }
});
