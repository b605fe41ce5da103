//! The token RPCs (`CreateToken`, `ListTokens`, `RevokeToken`; admin only, audited by the
//! API layer): checks the request, generates the token, stores only its hash, and tells this
//! coordinator's [`Auth`] cache at once.

use std::sync::Arc;

use pairdb_common::api::pb;
use pairdb_common::{Error as E, auth, validate};

use crate::auth::Auth;
use crate::error::Result;
use crate::meta::{MetaStore, TokenRecord, TokenRole};

/// Longest token description.
pub const MAX_DESCRIPTION_BYTES: usize = 256;
/// Longest token lifetime that can be asked for (ten years).
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

fn info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.token_id.clone(),
        role: t.role.as_str().to_string(),
        tenant_id: t.tenant_id.clone().unwrap_or_default(),
        access: t.access_str().to_string(),
        description: t.description.clone(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms.unwrap_or(0),
        revoked_at_ms: t.revoked_at_ms.unwrap_or(0),
    }
}

pub async fn create(
    meta: &Arc<dyn MetaStore>,
    auth_cache: &Auth,
    q: pb::CreateTokenRequest,
) -> Result<pb::CreateTokenResponse> {
    let role = TokenRole::parse(&q.role).ok_or_else(|| {
        E::InvalidArgument(format!(
            "role {} must be \"admin\" or \"tenant\"",
            validate::excerpt(&q.role)
        ))
    })?;
    let tenant_id = match role {
        TokenRole::Admin => {
            if !q.tenant_id.is_empty() || q.read_only {
                return Err(E::InvalidArgument(
                    "an admin token has no tenant and cannot be read-only".into(),
                )
                .into());
            }
            None
        }
        TokenRole::Tenant => {
            validate::tenant_id(&q.tenant_id)?;
            if meta.get_tenant(&q.tenant_id).await?.is_none() {
                return Err(E::TenantNotFound(q.tenant_id.clone()).into());
            }
            Some(q.tenant_id.clone())
        }
    };
    if q.description.len() > MAX_DESCRIPTION_BYTES || q.description.chars().any(char::is_control) {
        return Err(E::InvalidArgument(format!(
            "description must be at most {MAX_DESCRIPTION_BYTES} bytes of printable text"
        ))
        .into());
    }
    if q.expires_in_secs > MAX_EXPIRES_IN_SECS {
        return Err(E::InvalidArgument(format!(
            "expires_in_secs must be at most {MAX_EXPIRES_IN_SECS} (0 = never)"
        ))
        .into());
    }
    let now = pairdb_common::now_ms();
    let new = auth::new_token();
    let rec = TokenRecord {
        token_id: new.id,
        token_hash: new.hash,
        role,
        tenant_id,
        write: role == TokenRole::Admin || !q.read_only,
        description: q.description,
        created_at_ms: now,
        expires_at_ms: (q.expires_in_secs > 0)
            .then(|| now.saturating_add(q.expires_in_secs.saturating_mul(1000))),
        revoked_at_ms: None,
    };
    meta.create_token(&rec).await?;
    auth_cache.remember(rec.clone());
    Ok(pb::CreateTokenResponse {
        info: Some(info(&rec)),
        token: new.token,
    })
}

pub async fn list(meta: &Arc<dyn MetaStore>) -> Result<pb::ListTokensResponse> {
    Ok(pb::ListTokensResponse {
        tokens: meta.list_tokens().await?.iter().map(info).collect(),
    })
}

pub async fn revoke(
    meta: &Arc<dyn MetaStore>,
    auth_cache: &Auth,
    token_id: &str,
) -> Result<pb::TokenInfo> {
    if token_id.len() != 16 || !token_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(E::InvalidArgument(format!(
            "token_id {} must be the 16 hex digits `pairdbctl token list` shows",
            validate::excerpt(token_id)
        ))
        .into());
    }
    let rec = meta.revoke_token(token_id).await.map_err(|e| match e {
        crate::meta::MetaError::NotFound(m) => crate::error::Error::from(E::InvalidArgument(m)),
        other => other.into(),
    })?;
    auth_cache.remember(rec.clone());
    Ok(info(&rec))
}
