//! Bearer tokens: their format, their hash, and the client-side interceptor.
//!
//! A token is `pdbt_<id>_<secret>`: `id` is 16 hex digits (public: the lookup key, shown by
//! `pairdbctl token list` and written in the audit log), `secret` is 32 random bytes in
//! unpadded base64url. Only `SHA-256(token)` is stored. A slow password hash is not needed:
//! the secret is 256 random bits, so the hash cannot be brute-forced, and a fast hash keeps
//! the per-request check cheap. Hashes are compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};

/// Every pairdb-issued token starts with this.
pub const TOKEN_PREFIX: &str = "pdbt_";
/// Longest `authorization` value looked at (a longer one is refused unread).
pub const MAX_TOKEN_BYTES: usize = 512;
/// Shortest bootstrap admin token accepted from config (it is chosen by an operator).
pub const MIN_BOOTSTRAP_TOKEN_BYTES: usize = 24;

/// A freshly generated token (the whole token is shown once, then only `hash` is kept).
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub hash: String,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom reads the OS generator; it only fails when the OS has none (a broken
    // system, where nothing secure can be done).
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .unwrap_or_else(|_| panic!("the operating system's random generator failed"));
    b
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token.
pub fn new_token() -> NewToken {
    let id = hex(&random::<8>());
    let token = format!(
        "{TOKEN_PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(random::<32>())
    );
    let hash = hash(&token);
    NewToken { id, token, hash }
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Whether `token` hashes to `stored` (constant time in the hash bytes).
pub fn hash_matches(stored: &str, token: &str) -> bool {
    let h = hash(token);
    h.as_bytes().ct_eq(stored.as_bytes()).into()
}

/// The id of a pairdb-format token (`None` for any other string, e.g. a bootstrap token).
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(id)
}

/// Why a request's credentials could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// An `authorization` header that is not `Bearer <token>`, or too long.
    Malformed,
}

/// The bearer token in an `authorization` header value, if there is one.
pub fn bearer(v: Option<&tonic::codegen::http::HeaderValue>) -> Result<Option<&str>, BearerError> {
    let Some(v) = v else {
        return Ok(None);
    };
    if v.len() > MAX_TOKEN_BYTES + 7 {
        return Err(BearerError::Malformed);
    }
    let s = v.to_str().map_err(|_| BearerError::Malformed)?;
    let t = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))
        .ok_or(BearerError::Malformed)?
        .trim();
    if t.is_empty() {
        return Err(BearerError::Malformed);
    }
    Ok(Some(t))
}

/// A client interceptor adding `authorization: Bearer <token>` to every call.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// `None` (or an empty string) sends no token.
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| "the token holds characters a header cannot carry".to_string()),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The bootstrap admin token of a binary: `value` (from config or `PAIRDB_ADMIN_TOKEN`), else
/// the first line of `file` (a mounted Secret). `None` when neither is set.
pub fn read_bootstrap_token(
    value: &str,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    let t = if !value.is_empty() {
        value.trim().to_string()
    } else if let Some(f) = file {
        std::fs::read_to_string(f)
            .map_err(|e| format!("admin_token_file {}: {e}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    } else {
        return Ok(None);
    };
    if t.len() < MIN_BOOTSTRAP_TOKEN_BYTES || t.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "the admin token must be {MIN_BOOTSTRAP_TOKEN_BYTES}-{MAX_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        ));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token must be printable ASCII without spaces".into());
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_parse_and_match_only_their_hash() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a.token, b.token);
        assert_eq!(token_id(&a.token), Some(a.id.as_str()));
        assert!(hash_matches(&a.hash, &a.token));
        assert!(!hash_matches(&a.hash, &b.token));
        assert!(!a.hash.contains(&a.token) && a.hash.len() == 64);
        assert_eq!(token_id("pdbt_xyz_abc"), None);
        assert_eq!(token_id("bootstrap-secret"), None);
    }

    #[test]
    fn bearer_header_forms() {
        use tonic::codegen::http::HeaderValue;
        assert_eq!(bearer(None), Ok(None));
        let v = HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&v)), Ok(Some("abc")));
        let v = HeaderValue::from_static("Basic abc");
        assert_eq!(bearer(Some(&v)), Err(BearerError::Malformed));
        let long = HeaderValue::try_from(format!("Bearer {}", "x".repeat(600))).unwrap();
        assert_eq!(bearer(Some(&long)), Err(BearerError::Malformed));
    }
}
