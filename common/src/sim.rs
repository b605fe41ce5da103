//! The seam the deterministic simulation plugs into (`tests/tests/simulation.rs`, issue G).
//! A process that installs a [`Simulation`] (once, before any server starts) has every
//! listener bound, every connection dialled and every wall-clock reading ([`crate::now_ms`])
//! made through it, and runs blocking engine calls on the calling task instead of on
//! tokio's blocking threads ([`crate::worker::Supervisor::spawn_blocking`]), so that the
//! whole cluster runs on one thread in simulated time and a seed replays it. Production
//! processes never install one: every function here then does what tokio does.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A byte stream of the simulated network.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A listener of the simulated network.
pub trait Accept: Send + Sync + 'static {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// What a simulation provides.
pub trait Simulation: Send + Sync + 'static {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Accept>>>;
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<BoxStream>>;
    /// Unix milliseconds on the simulated clock of the host calling.
    fn now_ms(&self) -> u64;
}

static SIMULATION: OnceLock<Arc<dyn Simulation>> = OnceLock::new();

/// Installs `sim` for the rest of the process. `false` if one was installed already.
pub fn install(sim: Arc<dyn Simulation>) -> bool {
    SIMULATION.set(sim).is_ok()
}

/// The installed simulation, if any.
pub fn active() -> Option<&'static Arc<dyn Simulation>> {
    SIMULATION.get()
}

/// A bound listener: a real TCP socket, or the simulation's.
pub enum Listener {
    Tcp(TcpListener),
    Sim(Box<dyn Accept>),
}

/// An accepted connection, before any handshake.
pub enum Accepted {
    Tcp(TcpStream),
    Sim(BoxStream, SocketAddr),
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        match active() {
            Some(sim) => Ok(Listener::Sim(sim.bind(addr).await?)),
            None => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Sim(l) => l.local_addr(),
        }
    }

    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => Ok(Accepted::Tcp(l.accept().await?.0)),
            Listener::Sim(l) => {
                let (s, remote) = l.accept().await?;
                Ok(Accepted::Sim(s, remote))
            }
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}
