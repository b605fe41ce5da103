//! Stream batches from a (hostile) source node: decode the batch, then check each entry the way
//! `storage-node/src/pull.rs` does (frame, CRC it was sent with, key) and decode its record the
//! way `Store::apply_streamed` does. Mirrored by the `pull` proptests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pairdb_common::api::pb;
use pairdb_common::{framing, validate};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = pb::StreamBatch::decode(data) else { return };
    for e in batch.entries {
        if framing::unframe(framing::RECORD_FORMAT_V1, &e.record).is_err()
            || framing::stored_crc(&e.record) != Some(e.crc32)
            || validate::key_ref(&e.tenant_id, &e.key).is_err()
        {
            continue;
        }
        let _ = framing::decode_state(&e.record);
    }
});
