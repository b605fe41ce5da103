//! Who is calling, and what they may do (SPEC §8): bearer tokens on `CoordinatorService`.
//!
//! - [`Auth`] caches the `tokens` table (reloaded every `token_refresh_ms`, and at once, at
//!   most once per second, when a pairdb token with an unknown id arrives: one created on
//!   another coordinator a moment ago). A token revoked on this coordinator stops working at
//!   once; on the others within `token_refresh_ms`.
//! - A bootstrap admin token from config (`admin_token` / `admin_token_file`) administers a
//!   fresh cluster; only its hash is kept in memory.
//! - [`AuthLayer`] runs before every handler: health and reflection are open; every other
//!   method needs a valid token (mode `required`), or a valid token or none (mode
//!   `permissive`, while tokens are being rolled out). Admin methods (everything but the data
//!   methods and `GetTenant`) need an admin token. The [`Principal`] is left in the request's
//!   extensions, where data handlers check its tenant scope ([`Principal::check_tenant`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::Error as E;
use pairdb_common::auth::{self, BearerError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::meta::{MetaResult, MetaStore, TokenRecord, TokenRole};

/// How the coordinator treats bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No tokens checked (loopback dev clusters, or `--insecure`).
    #[default]
    Off,
    /// Tokens are checked when sent; requests without one are still served (and counted).
    /// Only while tokens are rolled out to clients.
    Permissive,
    /// Every request needs a valid token.
    Required,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication off, or no token in permissive mode: may do anything.
    Anonymous,
    Admin {
        token_id: String,
    },
    Tenant {
        token_id: String,
        tenant_id: String,
        write: bool,
    },
    /// A storage node's certificate (role storage-node, its node id), without a token: may
    /// only register itself (`AddStorageNode` for that node id, `--join`).
    Node {
        node_id: String,
    },
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Admin,
}

impl Principal {
    /// How the audit log names the caller.
    pub fn describe(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::Admin { token_id } => format!("admin token {token_id}"),
            Principal::Tenant {
                token_id,
                tenant_id,
                write,
            } => format!(
                "tenant token {token_id} ({tenant_id}, {})",
                if *write { "read-write" } else { "read" }
            ),
            Principal::Node { node_id } => format!("storage node certificate {node_id}"),
        }
    }

    fn allows(&self, need: Need) -> Result<(), E> {
        match (self, need) {
            (Principal::Anonymous | Principal::Admin { .. }, _) => Ok(()),
            (Principal::Tenant { .. }, Need::Admin) => Err(E::PermissionDenied(
                "this method needs an admin token; a tenant token only reaches its tenant's keys"
                    .into(),
            )),
            (Principal::Tenant { write: false, .. }, Need::Write) => {
                Err(E::PermissionDenied("this token is read-only".into()))
            }
            (Principal::Tenant { .. }, _) => Ok(()),
            (Principal::Node { .. }, _) => Err(E::PermissionDenied(
                "a storage node certificate may only register its own node".into(),
            )),
        }
    }

    /// Refuses a node certificate registering another node.
    pub fn check_node(&self, node_id: &str) -> Result<(), E> {
        match self {
            Principal::Node { node_id: n } if n != node_id => Err(E::PermissionDenied(format!(
                "the certificate of node {n:?} cannot register node {node_id:?}"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a tenant token for another tenant's keys.
    pub fn check_tenant(&self, tenant_id: &str) -> Result<(), E> {
        match self {
            Principal::Tenant { tenant_id: t, .. } if t != tenant_id => Err(E::PermissionDenied(
                format!("this token is scoped to tenant {t:?}, not {tenant_id:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// The principal of a request (left by [`AuthLayer`]; `Anonymous` where none ran, e.g.
    /// handlers called directly in tests).
    pub fn of<T>(req: &tonic::Request<T>) -> Principal {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous)
    }
}

/// What each `CoordinatorService` method needs. Anything not listed is an admin method, so a
/// new RPC is closed until someone decides otherwise.
pub fn need(method: &str) -> Need {
    match method {
        "Write" | "Delete" | "BatchWrite" => Need::Write,
        "Read" | "BatchRead" | "GetTenant" => Need::Read,
        _ => Need::Admin,
    }
}

/// The token cache and the bootstrap token.
pub struct Auth {
    mode: AuthMode,
    bootstrap_hash: Option<String>,
    meta: Arc<dyn MetaStore>,
    tokens: RwLock<Arc<HashMap<String, TokenRecord>>>,
    gate: crate::contexts::ReloadGate,
    refresh: Duration,
    on_anonymous: Box<dyn Fn() + Send + Sync>,
}

fn unauthenticated(msg: &str) -> E {
    E::Unauthenticated(msg.to_string())
}

impl Auth {
    /// Loads the tokens table. `bootstrap` is the configured admin token, if any.
    pub async fn load(
        mode: AuthMode,
        bootstrap: Option<&str>,
        meta: Arc<dyn MetaStore>,
        refresh: Duration,
        on_anonymous: impl Fn() + Send + Sync + 'static,
    ) -> MetaResult<Arc<Auth>> {
        let a = Arc::new(Auth {
            mode,
            bootstrap_hash: bootstrap.map(auth::hash),
            meta,
            tokens: RwLock::new(Arc::new(HashMap::new())),
            gate: Default::default(),
            refresh,
            on_anonymous: Box::new(on_anonymous),
        });
        if mode != AuthMode::Off {
            a.reload().await?;
        }
        Ok(a)
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    async fn reload(&self) -> MetaResult<()> {
        let rows = self.meta.list_tokens().await?;
        let map = rows
            .into_iter()
            .map(|t| (t.token_id.clone(), t))
            .collect::<HashMap<_, _>>();
        *self.tokens.write() = Arc::new(map);
        Ok(())
    }

    fn may_reload(&self) -> bool {
        self.gate.pass()
    }

    /// Makes a revocation (or a new token) on this coordinator take effect at once.
    pub fn remember(&self, t: TokenRecord) {
        let mut map = (**self.tokens.read()).clone();
        map.insert(t.token_id.clone(), t);
        *self.tokens.write() = Arc::new(map);
    }

    fn check_record(t: &TokenRecord, token: &str) -> Result<Principal, E> {
        if !auth::hash_matches(&t.token_hash, token) {
            return Err(unauthenticated("unknown token"));
        }
        if t.revoked_at_ms.is_some() {
            return Err(unauthenticated("this token was revoked"));
        }
        if t.expires_at_ms
            .is_some_and(|e| e <= pairdb_common::now_ms())
        {
            return Err(unauthenticated("this token has expired"));
        }
        Ok(match (t.role, &t.tenant_id) {
            (TokenRole::Tenant, Some(tenant)) => Principal::Tenant {
                token_id: t.token_id.clone(),
                tenant_id: tenant.clone(),
                write: t.write,
            },
            (TokenRole::Admin, _) => Principal::Admin {
                token_id: t.token_id.clone(),
            },
            (TokenRole::Tenant, None) => return Err(unauthenticated("unknown token")),
        })
    }

    /// The caller named by an `authorization` header value.
    pub async fn authenticate(
        &self,
        header: Option<&tonic::codegen::http::HeaderValue>,
    ) -> Result<Principal, E> {
        if self.mode == AuthMode::Off {
            return Ok(Principal::Anonymous);
        }
        let token = match auth::bearer(header) {
            Err(BearerError::Malformed) => {
                return Err(unauthenticated(
                    "the authorization header must be `Bearer <token>` (at most 512 bytes)",
                ));
            }
            Ok(None) if self.mode == AuthMode::Permissive => {
                (self.on_anonymous)();
                return Ok(Principal::Anonymous);
            }
            Ok(None) => {
                return Err(unauthenticated(
                    "this cluster requires a bearer token: pass --token or PAIRDB_TOKEN to pairdbctl, or an `authorization: Bearer <token>` header",
                ));
            }
            Ok(Some(t)) => t,
        };
        if let Some(h) = &self.bootstrap_hash
            && auth::hash_matches(h, token)
        {
            return Ok(Principal::Admin {
                token_id: "bootstrap".into(),
            });
        }
        let Some(id) = auth::token_id(token) else {
            return Err(unauthenticated("unknown token"));
        };
        let found = self.tokens.read().get(id).cloned();
        let found = match found {
            Some(t) => Some(t),
            None if self.may_reload() => {
                if let Err(e) = self.reload().await {
                    tracing::warn!(error = %e, "reload tokens failed");
                }
                self.tokens.read().get(id).cloned()
            }
            None => None,
        };
        match found {
            Some(t) => Auth::check_record(&t, token),
            None => Err(unauthenticated("unknown token")),
        }
    }

    /// Reloads the tokens every `refresh` until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.mode == AuthMode::Off {
            // Nothing to refresh; a worker that returned early would be restarted.
            return cancel.cancelled().await;
        }
        pairdb_common::worker::every(self.refresh, &cancel, || async {
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "token refresh failed; keeping the cached tokens");
            }
        })
        .await
    }
}

/// A tower layer authenticating and authorizing every `CoordinatorService` call.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<Auth>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The storage node a request's client certificate names, when it carries the storage-node
/// role.
fn node_certificate<B>(req: &HttpRequest<B>) -> Option<String> {
    let info = req
        .extensions()
        .get::<pairdb_common::tls::listen::PeerInfo>()?;
    let p = info.peer.as_ref()?;
    if p.has_role(pairdb_common::tls::Role::StorageNode) {
        p.node_id.clone()
    } else {
        None
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
type HttpRequest<B> = tonic::codegen::http::Request<B>;
type HttpResponse<B> = tonic::codegen::http::Response<B>;

const SERVICE_PREFIX: &str = "/pairdb.CoordinatorService/";

impl<S, ReqB, ResB> tower::Service<HttpRequest<ReqB>> for AuthService<S>
where
    S: tower::Service<HttpRequest<ReqB>, Response = HttpResponse<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = HttpResponse<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest<ReqB>) -> Self::Future {
        let Some(method) = req.uri().path().strip_prefix(SERVICE_PREFIX) else {
            // Health and reflection.
            return Box::pin(self.inner.call(req));
        };
        let need = need(method);
        let node_self_registration = method == "AddStorageNode"
            && self.layer.auth.mode != AuthMode::Off
            && !req.headers().contains_key("authorization");
        let layer = self.layer.clone();
        // The clone that was polled ready serves this call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let p = match node_certificate(&req).filter(|_| node_self_registration) {
                Some(node_id) => Ok(Principal::Node { node_id }),
                None => {
                    layer
                        .auth
                        .authenticate(req.headers().get("authorization"))
                        .await
                }
            };
            let mut caller = "unauthenticated".to_string();
            let p = p.and_then(|p| {
                caller = p.describe();
                match p {
                    // Only made for AddStorageNode; the handler checks the node id.
                    Principal::Node { .. } => Ok(p),
                    _ => p.allows(need).map(|()| p),
                }
            });
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    let reason = match &e {
                        E::Unauthenticated(_) => "unauthenticated",
                        _ => "permission",
                    };
                    layer.metrics.security.denied(reason);
                    if need == Need::Admin {
                        let peer = req
                            .extensions()
                            .get::<pairdb_common::tls::listen::PeerInfo>()
                            .map(|i| i.describe())
                            .unwrap_or_default();
                        pairdb_common::telemetry::audit(
                            &caller,
                            &peer,
                            req.uri().path(),
                            "",
                            &format!("{}: {}", e.code().name(), e),
                        );
                    }
                    return Ok(e.to_status().into_http());
                }
            };
            req.extensions_mut().insert(p);
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_admin_unless_listed() {
        assert_eq!(need("Write"), Need::Write);
        assert_eq!(need("GetTenant"), Need::Read);
        assert_eq!(need("RemoveStorageNode"), Need::Admin);
        assert_eq!(need("CreateToken"), Need::Admin);
        assert_eq!(need("SomethingNew"), Need::Admin);
        let ro = Principal::Tenant {
            token_id: "x".into(),
            tenant_id: "a".into(),
            write: false,
        };
        assert!(ro.allows(Need::Read).is_ok());
        assert!(ro.allows(Need::Write).is_err());
        assert!(ro.allows(Need::Admin).is_err());
        assert!(ro.check_tenant("a").is_ok());
        assert!(ro.check_tenant("b").is_err());
    }
}
