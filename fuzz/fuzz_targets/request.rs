//! Request conversion at the storage node's edge: a WriteOp's fields and internal context, a
//! KeyVersions' state, each checked the way `storage-node/src/api.rs` and `store.rs` do.
//! Mirrored by the `storage_node::api` proptests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pairdb_common::api::pb;
use pairdb_common::{context, convert, validate};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = pb::WriteOp::decode(data) {
        let _ = validate::key_ref(&op.tenant_id, &op.key);
        let _ = validate::value(&op.value, validate::effective_max_value_bytes(op.max_value_bytes));
        let _ = validate::idempotency_key(&op.idempotency_key);
        let _ = validate::effective_max_state_bytes(op.max_state_bytes);
        let _ = validate::effective_max_siblings(op.max_siblings);
        let _ = context::decode_internal(&op.context);
    }
    if let Ok(kv) = pb::KeyVersions::decode(data) {
        let _ = validate::key_ref(&kv.tenant_id, &kv.key);
        let _ = convert::state_from_pb(kv.state.unwrap_or_default());
    }
    if let Ok(req) = pb::PullRangeRequest::decode(data) {
        let _ = validate::address(&req.source_address);
        let _ = validate::tenant_filter(&req.tenant_ids);
    }
});
