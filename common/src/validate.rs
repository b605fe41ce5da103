//! Input validation and the limits every process enforces on what it receives (SPEC §2.1, §8).
//! Every check answers a SPEC §5 code. A storage node runs the same checks as a coordinator: it
//! is a separate process on the network and never relies on a coordinator having checked.
//! ARCHITECTURE.md's "Limits" table lists each limit with its reason.

use crate::error::{Error, Result};

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 63;
/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default per-tenant value limit (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Hard cap on any value, whatever the tenant says (16 MiB).
pub const HARD_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Longest storage node id, which is also the name part of every actor (a StatefulSet pod name
/// fits; actors are repeated in every context, so they must stay short).
pub const MAX_NODE_ID_LEN: usize = 63;
/// Longest idempotency key (it is stored with its version on every replica).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Longest host name of a storage node (a DNS name is at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;
/// Longest zone name (a Kubernetes label value is at most 63 characters).
pub const MAX_ZONE_LEN: usize = 63;
/// Longest `host:port` address.
pub const MAX_ADDRESS_LEN: usize = MAX_HOST_LEN + 6;
/// Most actors (`(node id, epoch)` entries) in one version vector. A key's context gains one
/// per replica incarnation that ever coordinated a write to it.
pub const MAX_CONTEXT_ENTRIES: usize = 4096;
/// Most single dots (the dot cloud) in one version vector: one per folded, expired or read
/// sibling above its actor's contiguous counter.
pub const MAX_CONTEXT_DOTS: usize = 65_536;
/// Most versions in one key state (siblings, tombstones included), counting the merge of every
/// replica's state under partitions (7 replicas x the hard sibling cap of 1000).
pub const MAX_STATE_VERSIONS: usize = 8192;
/// Default cap on a key's encoded state (`max_state_bytes` of a tenant). A read answers the
/// whole state plus the winning value repeated in `value`; 3 MiB of state plus a 1 MiB value
/// keeps that answer inside the 4 MiB receive limit gRPC clients (grpcio, grpc-go, grpc-java,
/// grpcurl) use by default.
pub const DEFAULT_MAX_STATE_BYTES: usize = 3 * 1024 * 1024;
/// Hard cap on `max_state_bytes`: a largest value plus room for its context and siblings.
pub const HARD_MAX_STATE_BYTES: usize = HARD_MAX_VALUE_BYTES + 1024 * 1024;
/// Room a key state needs beyond its largest value (`max_state_bytes` must leave at least this).
pub const STATE_OVERHEAD_BYTES: usize = 64 * 1024;
/// The largest gRPC message any pairdb process accepts or sends by default (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What the worst-case merged state of a key plus its read answer may take of a message: a
/// tenant's `max_state_bytes x replication_factor + max_value_bytes` must fit (concurrent
/// writes coordinated by every replica apart, then merged, stay readable everywhere).
pub const MESSAGE_BUDGET_BYTES: usize = 56 * 1024 * 1024;
/// No stored state may exceed this: a merge that would is refused, so every record stays
/// readable and streamable in one message.
pub const MAX_STORED_STATE_BYTES: usize = 60 * 1024 * 1024;
/// The message of a batch item a storage node did not reach because the batch's answer would
/// have outgrown its budget: nothing was done for it; the caller sends it again on its own.
pub const BATCH_BUDGET_EXCEEDED: &str =
    "batch answer budget exceeded before this item; send it again on its own";
/// Request bytes (values, contexts, states) a coordinator puts in one batch RPC to a node.
pub const MAX_BATCH_REQUEST_BYTES: usize = 8 << 20;
/// Hard cap on siblings per key (a tenant's `sibling_max`).
pub const HARD_MAX_SIBLINGS: usize = 1000;
/// Most tenant ids one internal request may name (stream, digest and listing filters).
pub const MAX_TENANT_FILTER: usize = 1024;

/// A tenant id is 1–63 chars of `[a-z0-9][a-z0-9_-]*`.
pub fn tenant_id(tenant: &str) -> Result<()> {
    let bytes = tenant.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(Error::InvalidTenant("tenant id is empty".into()));
    };
    if bytes.len() > MAX_TENANT_ID_LEN {
        return Err(Error::InvalidTenant(format!(
            "tenant id is {} chars; the limit is {MAX_TENANT_ID_LEN}",
            bytes.len()
        )));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(Error::InvalidTenant(format!(
            "tenant id {tenant:?} must start with [a-z0-9]"
        )));
    }
    if let Some(bad) = bytes
        .iter()
        .find(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_' || **b == b'-'))
    {
        return Err(Error::InvalidTenant(format!(
            "tenant id {tenant:?} contains {:?}; allowed: [a-z0-9_-]",
            char::from(*bad)
        )));
    }
    Ok(())
}

/// A key is 1–1024 bytes with no NUL or ASCII control characters.
pub fn key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey("key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::KeyTooLarge(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(pos) = key.iter().position(|b| b.is_ascii_control()) {
        return Err(Error::InvalidKey(format!(
            "key contains control byte 0x{:02x} at offset {pos}",
            key[pos]
        )));
    }
    Ok(())
}

/// The effective value limit for a tenant setting (0 = default), never above the hard cap.
pub fn effective_max_value_bytes(configured: u32) -> usize {
    match configured {
        0 => DEFAULT_MAX_VALUE_BYTES,
        n => (n as usize).min(HARD_MAX_VALUE_BYTES),
    }
}

/// A value fits the tenant's limit (`max` bytes).
pub fn value(value: &[u8], max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::ValueTooLarge(format!(
            "value is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    Ok(())
}

/// A storage node id is 1–63 chars of `[a-z0-9._-]` starting with `[a-z0-9]` (a StatefulSet
/// pod name fits).
pub fn node_id(id: &str) -> Result<()> {
    if is_node_id(id) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "node id {} must be 1-{MAX_NODE_ID_LEN} chars of [a-z0-9._-] starting with [a-z0-9]",
        excerpt(id)
    )))
}

/// Whether `id` is a valid node id (see [`node_id`]).
pub fn is_node_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NODE_ID_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// At most the first 64 characters of an input, quoted, for error messages (a hostile field
/// may be megabytes long).
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => format!("{s:?}"),
        Some((i, _)) => format!("{:?}… ({} bytes)", &s[..i], s.len()),
    }
}

/// An idempotency key is at most [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes (empty = none).
pub fn idempotency_key(k: &str) -> Result<()> {
    if k.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "idempotency_key is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY_BYTES}",
            k.len()
        )));
    }
    Ok(())
}

/// A storage node host: 1–253 characters, no whitespace, control characters, `/` or `@`
/// (it is joined with a port into a URL).
pub fn host(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= MAX_HOST_LEN
        && h.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/@?#".contains(&b));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "host {} must be 1-{MAX_HOST_LEN} printable characters without '/', '@', '?' or '#'",
            excerpt(h)
        )));
    }
    Ok(())
}

/// A zone name: at most 63 characters of `[A-Za-z0-9._-]` (empty = none).
pub fn zone(z: &str) -> Result<()> {
    let ok = z.len() <= MAX_ZONE_LEN
        && z.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "zone {} must be at most {MAX_ZONE_LEN} chars of [A-Za-z0-9._-]",
            excerpt(z)
        )));
    }
    Ok(())
}

/// A `host:port` address (a port in 1-65535), as internal requests name storage nodes.
pub fn address(a: &str) -> Result<()> {
    let bad = || {
        Error::InvalidArgument(format!(
            "address {} must be host:port (at most {MAX_ADDRESS_LEN} chars)",
            excerpt(a)
        ))
    };
    if a.len() > MAX_ADDRESS_LEN {
        return Err(bad());
    }
    let (h, p) = a.rsplit_once(':').ok_or_else(bad)?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    host(h).map_err(|_| bad())?;
    match p.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// Tenant ids of an internal filter: at most [`MAX_TENANT_FILTER`], each valid.
pub fn tenant_filter(ids: &[String]) -> Result<()> {
    if ids.len() > MAX_TENANT_FILTER {
        return Err(Error::InvalidArgument(format!(
            "{} tenant ids; the limit is {MAX_TENANT_FILTER}",
            ids.len()
        )));
    }
    ids.iter().try_for_each(|t| tenant_id(t))
}

/// The effective key-state cap for a tenant setting (0 = default), within the hard cap.
pub fn effective_max_state_bytes(configured: u32) -> usize {
    match configured {
        0 => DEFAULT_MAX_STATE_BYTES,
        n => (n as usize).min(HARD_MAX_STATE_BYTES),
    }
}

/// The effective sibling cap for a setting (0 = default 100), within the hard cap.
pub fn effective_max_siblings(configured: u32) -> usize {
    match configured {
        0 => 100,
        n => (n as usize).clamp(1, HARD_MAX_SIBLINGS),
    }
}

/// Validates `(tenant, key)` together.
pub fn key_ref(tenant: &str, k: &[u8]) -> Result<()> {
    tenant_id(tenant)?;
    key(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "default", "t-1", "0_x", &"a".repeat(63)] {
            assert!(tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a.b", "é", &"a".repeat(64)] {
            assert_eq!(
                tenant_id(bad).unwrap_err().code(),
                ErrorCode::InvalidTenant,
                "{bad}"
            );
        }
    }

    #[test]
    fn keys() {
        assert!(key(b"k").is_ok());
        assert!(key(&[b'x'; 1024]).is_ok());
        assert!(key("ünïcode".as_bytes()).is_ok());
        assert_eq!(key(b"").unwrap_err().code(), ErrorCode::InvalidKey);
        assert_eq!(
            key(&[b'x'; 1025]).unwrap_err().code(),
            ErrorCode::KeyTooLarge
        );
        assert_eq!(key(b"a\0b").unwrap_err().code(), ErrorCode::InvalidKey);
        assert_eq!(key(b"a\nb").unwrap_err().code(), ErrorCode::InvalidKey);
        assert_eq!(key(b"a\x7fb").unwrap_err().code(), ErrorCode::InvalidKey);
    }

    #[test]
    fn fields_with_limits() {
        assert!(node_id("n1").is_ok() && node_id(&"a".repeat(63)).is_ok());
        let long = "a".repeat(60_000);
        let e = node_id(&long).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(
            e.to_string().len() < 300,
            "the message quotes an excerpt only"
        );
        assert!(idempotency_key(&"k".repeat(255)).is_ok());
        assert!(idempotency_key(&"k".repeat(256)).is_err());
        for ok in [
            "localhost",
            "10.0.0.1",
            "pairdb-0.pairdb.ns.svc.cluster.local",
            "::1",
        ] {
            assert!(host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "u@h", &"h".repeat(254)] {
            assert!(host(bad).is_err(), "{bad}");
        }
        for ok in ["127.0.0.1:7001", "node-1:1", "[::1]:7001"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "h:0",
            "h:65536",
            "h:x",
            "/x:1",
            &format!("{}:1", "h".repeat(300)),
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
        assert!(zone("").is_ok() && zone("eu-west-1a").is_ok());
        assert!(zone("a b").is_err() && zone(&"z".repeat(64)).is_err());
        assert!(tenant_filter(&vec!["t".to_string(); 1024]).is_ok());
        assert!(tenant_filter(&vec!["t".to_string(); 1025]).is_err());
        assert_eq!(effective_max_state_bytes(0), DEFAULT_MAX_STATE_BYTES);
        assert_eq!(effective_max_state_bytes(u32::MAX), HARD_MAX_STATE_BYTES);
        assert_eq!(effective_max_siblings(0), 100);
        assert_eq!(effective_max_siblings(u32::MAX), HARD_MAX_SIBLINGS);
    }

    #[test]
    fn values() {
        assert!(value(b"", 10).is_ok());
        assert!(value(&[0; 10], 10).is_ok());
        assert_eq!(
            value(&[0; 11], 10).unwrap_err().code(),
            ErrorCode::ValueTooLarge
        );
        assert_eq!(effective_max_value_bytes(0), DEFAULT_MAX_VALUE_BYTES);
        assert_eq!(effective_max_value_bytes(u32::MAX), HARD_MAX_VALUE_BYTES);
        assert_eq!(effective_max_value_bytes(5), 5);
    }
}
