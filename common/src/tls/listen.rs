//! The accept side of every pairdb port. One accept loop per listener hands each connection
//! to its own handshake task (at most [`MAX_CONCURRENT_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others; finished
//! connections reach the server through a channel. With TLS on, the first byte tells a TLS
//! ClientHello (0x16) from plaintext, which is refused unless `accept_plaintext` is set.
//!
//! Each connection carries a [`PeerInfo`] (remote address, verified client certificate),
//! which tonic puts in every request's extensions and axum hands out as connect info.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::worker::Supervisor;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::sim::{Accepted, BoxStream, Listener};
use tokio::sync::mpsc;

use super::{
    ClientAuth, HANDSHAKE_TIMEOUT, MAX_CONCURRENT_HANDSHAKES, Material, Peer, Tls, TlsError,
};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate's identity (verified against the cluster CA), if one was shown.
    pub peer: Option<Arc<Peer>>,
}

impl PeerInfo {
    /// How the audit log names the caller's connection.
    pub fn describe(&self) -> String {
        let addr = self
            .remote
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match &self.peer {
            Some(p) => format!("{} from {addr}", p.describe()),
            None if self.tls => format!("tls from {addr}"),
            None => format!("plaintext from {addr}"),
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A connection of the simulated network (`crate::sim`; plaintext only).
    Sim(BoxStream),
}

/// An accepted connection, TLS or plaintext.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    /// Counts this connection in its listener's `connections_open` gauge until dropped.
    _open: Option<OpenGuard>,
}

/// One open connection in a gauge: +1 when made, -1 when the connection is dropped.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl OpenGuard {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> OpenGuard {
        g.inc();
        OpenGuard(g.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Conn {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Sim(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Sim(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Sim(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Sim(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Sim(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Sim(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// How one listener accepts connections.
#[derive(Clone)]
pub struct ListenConfig {
    /// `None`: plaintext only (loopback dev clusters, or `--insecure`).
    pub tls: Option<Arc<Tls>>,
    pub client_auth: ClientAuth,
    /// ALPN protocols offered: `h2` for gRPC, `http/1.1` for admin HTTP.
    pub alpn: &'static [&'static [u8]],
    /// Counts a refused connection: `plaintext`, `handshake`, `timeout`.
    pub on_refused: Arc<dyn Fn(&'static str) + Send + Sync>,
    /// The gauge of connections this listener holds (`connections_open{listener}`).
    pub open: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// The server configuration for the current material, rebuilt only after a reload.
struct ConfigCache {
    material: Option<Arc<Material>>,
    config: Option<Arc<rustls::ServerConfig>>,
}

fn server_config(
    cfg: &ListenConfig,
    tls: &Tls,
    cache: &Mutex<ConfigCache>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let m = tls.material();
    let mut c = cache.lock();
    if let (Some(have), Some(config)) = (&c.material, &c.config)
        && Arc::ptr_eq(have, &m)
    {
        return Ok(config.clone());
    }
    let config = tls.server_config(cfg.client_auth, cfg.alpn)?;
    c.material = Some(m);
    c.config = Some(config.clone());
    Ok(config)
}

async fn handshake(
    accepted: Accepted,
    cfg: &ListenConfig,
    cache: &Mutex<ConfigCache>,
) -> Result<Conn, &'static str> {
    let stream = match accepted {
        Accepted::Tcp(s) => s,
        Accepted::Sim(_, _) if cfg.tls.is_some() => return Err("handshake"),
        Accepted::Sim(s, remote) => {
            return Ok(Conn {
                io: Io::Sim(s),
                info: PeerInfo {
                    remote: Some(remote),
                    ..PeerInfo::default()
                },
                _open: None,
            });
        }
    };
    let remote = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let Some(tls) = &cfg.tls else {
        return Ok(Conn {
            io: Io::Plain(stream),
            info: PeerInfo {
                remote,
                ..PeerInfo::default()
            },
            _open: None,
        });
    };
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => {}
        _ => return Err("handshake"),
    }
    if first[0] != TLS_HANDSHAKE_BYTE {
        if tls.settings().accept_plaintext {
            return Ok(Conn {
                io: Io::Plain(stream),
                info: PeerInfo {
                    remote,
                    ..PeerInfo::default()
                },
                _open: None,
            });
        }
        tracing::debug!(?remote, "plaintext connection to a TLS port refused");
        return Err("plaintext");
    }
    let config = server_config(cfg, tls, cache).map_err(|e| {
        tracing::error!(error = %e, "TLS server configuration");
        "handshake"
    })?;
    let s = tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(|e| {
            tracing::debug!(?remote, error = %e, "TLS handshake failed");
            "handshake"
        })?;
    let peer = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(Peer::from_der)
        .transpose()
        .map_err(|_| "handshake")?
        .map(Arc::new);
    Ok(Conn {
        io: Io::Tls(Box::new(s)),
        info: PeerInfo {
            remote,
            tls: true,
            peer,
        },
        _open: None,
    })
}

/// Accepts on `listener` until shutdown, handing finished connections to the receiver. The
/// accept loop is the supervisor's service `name`; each handshake is an owned task.
pub fn incoming(
    listener: Listener,
    cfg: ListenConfig,
    sup: &Supervisor,
    name: &'static str,
) -> mpsc::Receiver<Conn> {
    incoming_until(listener, cfg, sup, name, sup.cancel_token())
}

/// [`incoming`] until `stop` (a client-facing port closes when the process starts draining,
/// [`Supervisor::serving_token`], so new connections are refused and go elsewhere); the
/// listener is dropped then.
pub fn incoming_until(
    listener: Listener,
    cfg: ListenConfig,
    sup: &Supervisor,
    name: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> mpsc::Receiver<Conn> {
    let cancel = stop;
    let handshakes = sup.clone();
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let cache = Arc::new(Mutex::new(ConfigCache {
        material: None,
        config: None,
    }));
    sup.service(name, async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return Ok::<(), io::Error>(()),
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Ok(());
            };
            let (tx, cfg, cache) = (tx.clone(), cfg.clone(), cache.clone());
            drop(handshakes.spawn("tls-handshake", async move {
                let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &cfg, &cache))
                    .await
                    .unwrap_or(Err("timeout"));
                drop(permit);
                match r {
                    Ok(mut conn) => {
                        conn._open = cfg.open.as_ref().map(OpenGuard::new);
                        let _ = tx.send(conn).await;
                    }
                    Err(why) => (cfg.on_refused)(why),
                }
            }));
        }
    });
    rx
}

/// The connections of [`incoming`] as tonic's `serve_with_incoming` wants them.
pub fn tonic_incoming(
    rx: mpsc::Receiver<Conn>,
) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

/// The connections of [`incoming`] as an axum listener (connect info: [`PeerInfo`]).
pub struct AxumListener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl AxumListener {
    pub fn new(rx: mpsc::Receiver<Conn>, local: SocketAddr) -> AxumListener {
        AxumListener { rx, local }
    }
}

impl axum::serve::Listener for AxumListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.rx.recv().await {
            Some(c) => {
                let info = c.info.clone();
                (c, info)
            }
            // The accept loop stopped (shutdown): wait for axum's graceful shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: Some(self.local),
            ..PeerInfo::default()
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AxumListener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AxumListener>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}

/// ALPN of gRPC ports.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN of admin HTTP ports (axum serves HTTP/1.1 there).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
