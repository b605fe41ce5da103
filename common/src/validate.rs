//! Input validation (SPEC §2.1): tenant ids, keys, values. Every check answers a SPEC §5 code.

use crate::error::{Error, Result};

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 63;
/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default per-tenant value limit (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Hard cap on any value, whatever the tenant says (16 MiB).
pub const HARD_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

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
    let b = id.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "node id {id:?} must be 1-63 chars of [a-z0-9._-] starting with [a-z0-9]"
        )));
    }
    Ok(())
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
