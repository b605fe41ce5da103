//! TLS for every pairdb port (rustls, ring provider), with certificates reloaded from disk
//! without a restart.
//!
//! - [`TlsSettings`]: the file paths in each binary's config (`[tls]`, `PAIRDB_TLS_*`).
//! - [`Tls`]: the loaded material (certificate chain, key, cluster CA) behind a lock; a
//!   reload swaps it whole, so every new connection (server or client) uses the newest files
//!   and live connections keep theirs. [`Tls::run_reload`] polls the files' modification times
//!   and reloads at once on SIGHUP; a reload that fails (a half-written file) keeps the old
//!   material and logs why.
//! - [`listen`]: the accept side (TLS, or TLS and plaintext during a rolling enablement) for
//!   tonic and axum; [`connect`]: the dialing side, verifying the server's role and node id.
//! - [`peer`]: roles and node ids in certificates; [`certs`]: issuing them (`pairdbctl certs`).

pub mod admin_http;
pub mod certs;
pub mod connect;
pub mod listen;
pub mod metrics;
pub mod peer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use peer::{Expect, Peer, Role};

/// TLS file paths and mode of one binary. TLS is on when `cert` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain this process presents, as a server and as a client (leaf first;
    /// it needs both the serverAuth and the clientAuth extended key usage).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM bundle of the cluster CA(s): verifies peers' certificates (several CAs during a
    /// CA rotation).
    pub ca: Option<PathBuf>,
    /// Also accept plaintext connections on the TLS ports (only while TLS is being enabled on
    /// a running cluster, one process at a time; see runbooks/security.md).
    pub accept_plaintext: bool,
    /// How often the files are checked for changes, in milliseconds (SIGHUP reloads at once).
    pub reload_interval_ms: u64,
}

/// Default `reload_interval_ms`.
pub const DEFAULT_RELOAD_MS: u64 = 5_000;
/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes one listener runs at once (more wait in the kernel's accept backlog), so a flood
/// of slow handshakes cannot exhaust memory or tasks.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Checks that the settings make sense together (at start, before anything is read).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert, &self.key, &self.ca) {
            (None, None, None) => {
                if self.accept_plaintext {
                    return Err("tls.accept_plaintext needs tls.cert".into());
                }
                Ok(())
            }
            (Some(_), Some(_), Some(_)) => {
                if self.reload_interval_ms != 0 && self.reload_interval_ms < 100 {
                    return Err("tls.reload_interval_ms must be 0 (default) or at least 100".into());
                }
                Ok(())
            }
            _ => Err(
                "tls.cert, tls.key and tls.ca must be set together (PAIRDB_TLS_CERT, PAIRDB_TLS_KEY, PAIRDB_TLS_CA)"
                    .into(),
            ),
        }
    }

    fn reload_interval(&self) -> Duration {
        Duration::from_millis(if self.reload_interval_ms == 0 {
            DEFAULT_RELOAD_MS
        } else {
            self.reload_interval_ms
        })
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

/// Loaded certificate chain, key and CA roots.
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    /// This process's own identity, read from the leaf certificate.
    pub own: Peer,
    /// Expiry of each loaded certificate: (`cert` | `ca`, subject, seconds since the epoch).
    pub expiry: Vec<(&'static str, String, i64)>,
    stamp: Vec<Option<SystemTime>>,
}

fn read_err(what: &str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{what} {}: {e}", path.display()))
}

fn stamps(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Material {
    /// Reads and checks the three files: the key must match the certificate and the CA
    /// bundle must hold at least one certificate.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Material, TlsError> {
        let stamp = stamps(&[cert, key, ca]);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| read_err("read certificate", cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read_err("parse certificate", cert, e))?;
        let Some(leaf) = chain.first() else {
            return Err(read_err("certificate", cert, "no CERTIFICATE block"));
        };
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| read_err("read key", key, e))?;
        let mut roots = RootCertStore::empty();
        let mut expiry = Vec::new();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| read_err("read CA", ca, e))? {
            let c = c.map_err(|e| read_err("parse CA", ca, e))?;
            let p = Peer::from_der(&c).map_err(|e| read_err("CA", ca, e))?;
            expiry.push(("ca", p.subject, p.not_after));
            roots
                .add(c)
                .map_err(|e| read_err("CA certificate", ca, e))?;
        }
        if roots.is_empty() {
            return Err(read_err("CA bundle", ca, "no CERTIFICATE block"));
        }
        let own = Peer::from_der(leaf).map_err(|e| read_err("certificate", cert, e))?;
        expiry.insert(0, ("cert", own.subject.clone(), own.not_after));
        let m = Material {
            chain,
            key: key_der,
            roots: Arc::new(roots),
            own,
            expiry,
            stamp,
        };
        // A key that does not match the certificate fails here, not at the first handshake.
        m.certified_key()?;
        Ok(m)
    }

    fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let signer = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError(format!("private key: {e}")))?;
        let ck = rustls::sign::CertifiedKey::new(self.chain.clone(), signer);
        ck.keys_match()
            .map_err(|e| TlsError(format!("key and certificate do not match: {e}")))?;
        Ok(Arc::new(ck))
    }
}

/// The one crypto provider pairdb uses (ring: small, no C toolchain beyond what RocksDB needs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients must present a certificate signed by the cluster CA (storage nodes).
    Required,
    /// A client certificate is asked for but not required; one that is shown must verify
    /// (coordinators: clients use bearer tokens; a storage node's certificate lets it
    /// register itself with `--join`).
    Optional,
    /// No client certificate is asked for (admin HTTP ports).
    None,
}

/// A binary's TLS state: the current material, swapped whole on reload.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<Material>>,
    on_loaded: Box<dyn Fn(&Material) + Send + Sync>,
}

impl Tls {
    /// Loads the files named by `settings` (which must have TLS on). `on_loaded` runs after
    /// every successful load (the expiry gauges).
    pub fn load(
        settings: &TlsSettings,
        on_loaded: impl Fn(&Material) + Send + Sync + 'static,
    ) -> Result<Arc<Tls>, TlsError> {
        settings.validate().map_err(TlsError)?;
        let (Some(cert), Some(key), Some(ca)) = (&settings.cert, &settings.key, &settings.ca)
        else {
            return Err(TlsError("TLS is not configured".into()));
        };
        let m = Material::load(cert, key, ca)?;
        on_loaded(&m);
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(m)),
            on_loaded: Box::new(on_loaded),
        }))
    }

    /// `Some(Tls)` when `settings` turns TLS on.
    pub fn load_optional(
        settings: &TlsSettings,
        on_loaded: impl Fn(&Material) + Send + Sync + 'static,
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        if settings.enabled() {
            Tls::load(settings, on_loaded).map(Some)
        } else {
            settings.validate().map_err(TlsError)?;
            Ok(None)
        }
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    pub fn material(&self) -> Arc<Material> {
        self.current.read().clone()
    }

    /// Rereads the files if any changed (or always, with `force`). Returns whether new
    /// material is in use.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let (Some(cert), Some(key), Some(ca)) =
            (&self.settings.cert, &self.settings.key, &self.settings.ca)
        else {
            return Ok(false);
        };
        if !force && stamps(&[cert, key, ca]) == self.material().stamp {
            return Ok(false);
        }
        let m = Material::load(cert, key, ca)?;
        (self.on_loaded)(&m);
        tracing::info!(
            subject = %m.own.subject,
            not_after = m.own.not_after,
            "TLS certificate, key and CA reloaded"
        );
        *self.current.write() = Arc::new(m);
        Ok(true)
    }

    /// Watches the files until `cancel`: every `reload_interval_ms`, and at once on SIGHUP.
    pub async fn run_reload(self: Arc<Self>, cancel: CancellationToken) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(self.settings.reload_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            if let Err(e) = self.reload(force) {
                tracing::error!(error = %e, "TLS reload failed; keeping the certificate in use");
            }
        }
    }

    /// A server configuration from the current material; `alpn` is the protocols offered
    /// (`h2` for gRPC, `http/1.1` for admin HTTP).
    pub fn server_config(
        &self,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let m = self.material();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required | ClientAuth::Optional => {
                let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    m.roots.clone(),
                    provider(),
                );
                let b = if client_auth == ClientAuth::Optional {
                    b.allow_unauthenticated()
                } else {
                    b
                };
                let v = b
                    .build()
                    .map_err(|e| TlsError(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(m.chain.clone(), m.key.clone_key())
            .map_err(|e| TlsError(format!("server certificate: {e}")))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client configuration that presents this process's certificate and accepts only a
    /// server certificate from the cluster CA that matches `expect`.
    pub fn client_config(&self, expect: &Expect) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let m = self.material();
        client_config(m.roots.clone(), Some((&m.chain, &m.key)), expect)
    }
}

/// A client configuration trusting `roots`, presenting `identity` when given.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(&Vec<CertificateDer<'static>>, &PrivateKeyDer<'static>)>,
    expect: &Expect,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError(format!("server verifier: {e}")))?;
    let verifier = Arc::new(ExpectVerifier {
        inner,
        expect: expect.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The standard WebPKI verification (chain to the cluster CA, validity, host name), then the
/// pairdb role and node id the caller expects. `dangerous()` above only installs this
/// verifier; nothing is skipped.
#[derive(Debug)]
struct ExpectVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: Expect,
}

impl ServerCertVerifier for ExpectVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let peer = Peer::from_der(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        peer::check_expected(&peer, &self.expect).map_err(rustls::Error::General)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether a listen address only reaches this machine (loopback), where plaintext and no
/// authentication are allowed without `--insecure`.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Secure by default (SPEC §8): a process listening on any non-loopback address needs TLS
/// (with plaintext refused) and authentication, unless the operator passed `--insecure`.
/// `auth_missing` names what authentication lacks (`None`: configured). With `insecure`, the
/// refusal becomes a loud warning, logged by the caller at every start.
pub fn check_exposure(
    binds: &[(&str, std::net::SocketAddr)],
    tls: &TlsSettings,
    auth_missing: Option<&str>,
    insecure: bool,
) -> Result<Option<String>, String> {
    let exposed: Vec<String> = binds
        .iter()
        .filter(|(_, a)| !is_loopback(a))
        .map(|(what, a)| format!("{what} {a}"))
        .collect();
    if exposed.is_empty() {
        return Ok(None);
    }
    let mut missing = Vec::new();
    if !tls.enabled() {
        missing.push("TLS (tls.cert, tls.key, tls.ca)".to_string());
    } else if tls.accept_plaintext {
        missing.push("TLS without plaintext (tls.accept_plaintext is on)".to_string());
    }
    if let Some(a) = auth_missing {
        missing.push(a.to_string());
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let msg = format!(
        "listening on {} (not loopback) without {}",
        exposed.join(", "),
        missing.join(" and ")
    );
    if insecure {
        Ok(Some(msg))
    } else {
        Err(format!(
            "{msg}: refusing to start. Configure them, or pass --insecure (PAIRDB_INSECURE=true) to run exposed and unauthenticated on purpose"
        ))
    }
}
