//! The dialing side: tonic channels over plaintext or TLS. With TLS, each new connection asks
//! for a fresh client configuration (so reloaded certificates are used at once) and verifies
//! the server against the cluster CA, its host name, and the role and node id expected.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Expect, Tls, TlsError};

/// Where a channel's TLS client configuration comes from, per connection.
#[derive(Clone)]
pub enum ClientTls {
    /// Plaintext.
    Off,
    /// This process's reloading material, expecting `Expect` on the other end.
    Cluster(Arc<Tls>, Expect),
    /// A fixed configuration (the CLI: a CA bundle, maybe a client certificate).
    Fixed(Arc<rustls::ClientConfig>),
}

impl ClientTls {
    /// `Cluster` when `tls` is on, else `Off`.
    pub fn cluster(tls: &Option<Arc<Tls>>, expect: Expect) -> ClientTls {
        match tls {
            Some(t) => ClientTls::Cluster(t.clone(), expect),
            None => ClientTls::Off,
        }
    }

    fn config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        match self {
            ClientTls::Off => Ok(None),
            ClientTls::Cluster(tls, expect) => tls.client_config(expect).map(Some),
            ClientTls::Fixed(c) => Ok(Some(c.clone())),
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, ClientTls::Off)
    }
}

type ClientIo = Either<
    Either<TcpStream, crate::sim::BoxStream>,
    Box<tokio_rustls::client::TlsStream<TcpStream>>,
>;

async fn dial(uri: Uri, tls: ClientTls) -> Result<TokioIo<ClientIo>, std::io::Error> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let host = uri
        .host()
        .ok_or_else(|| bad(format!("no host in {uri}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .ok_or_else(|| bad(format!("no port in {uri}")))?;
    let config = tls
        .config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(sim) = crate::sim::active() {
        if config.is_some() {
            return Err(bad("TLS is not simulated".into()));
        }
        let s = sim.connect(host, port).await?;
        return Ok(TokioIo::new(Either::Left(Either::Right(s))));
    }
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    // Closing this connection discards what the kernel has not yet delivered (an RST, not a
    // FIN queued behind it): a request this process gave up on — its connection closed by the
    // keep-alive after a partition — is not delivered later by the orphaned socket's
    // retransmissions once the partition heals, to be applied after its caller moved on
    // (TESTING.md "Found": a late coordinating write minting a duplicate sibling).
    tcp.set_zero_linger()?;
    let Some(config) = config else {
        return Ok(TokioIo::new(Either::Left(Either::Left(tcp))));
    };
    let name =
        ServerName::try_from(host.clone()).map_err(|e| bad(format!("server name {host}: {e}")))?;
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(Either::Right(Box::new(s))))
}

/// `http://host:port` (the scheme stays `http`: TLS is done here, not by tonic).
pub fn endpoint(address: &str) -> Result<Endpoint, String> {
    let a = address
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    Endpoint::from_shared(format!("http://{a}")).map_err(|e| format!("address {address}: {e}"))
}

/// A channel that connects on first use (and reconnects after failures).
pub fn lazy_channel(ep: Endpoint, tls: ClientTls) -> Channel {
    ep.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| dial(uri, tls.clone())))
}

/// A channel connected now.
pub async fn channel(ep: Endpoint, tls: ClientTls) -> Result<Channel, tonic::transport::Error> {
    ep.connect_with_connector(tower::service_fn(move |uri: Uri| dial(uri, tls.clone())))
        .await
}

/// A fixed client configuration for tools: trusts the CA bundle at `ca` and, when given,
/// presents `cert`/`key` (a client certificate).
pub fn tool_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    expect: &Expect,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .map_err(|e| TlsError(format!("read CA {}: {e}", ca.display())))?
    {
        let c = c.map_err(|e| TlsError(format!("parse CA {}: {e}", ca.display())))?;
        roots
            .add(c)
            .map_err(|e| TlsError(format!("CA {}: {e}", ca.display())))?;
    }
    let loaded = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| TlsError(format!("read {}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError(format!("parse {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| TlsError(format!("read {}: {e}", key.display())))?;
            Some((chain, key))
        }
        None => None,
    };
    super::client_config(
        Arc::new(roots),
        loaded.as_ref().map(|(c, k)| (c, k)),
        expect,
    )
}
