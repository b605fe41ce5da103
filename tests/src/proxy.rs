//! A TCP proxy a test can cut: everything through it stops at once (open connections are
//! dropped, new ones refused), as if the server behind it had stopped, and it can be restored
//! on the same port. Used to take the metadata store away from coordinators mid-test.
//!
//! It can also impair the link ([`TcpProxy::impair`]), since `tc netem` is not available:
//! every chunk read from either side is delivered `delay` + up to `jitter` later, in order
//! (a chunk never overtakes the one before it, as on a TCP stream), and a share of chunks
//! is held a further [`STALL`], what a lost segment costs a TCP reader (the sender's
//! retransmission timeout; the bytes still arrive). Open connections are impaired at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Mutex;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The hold of a "lost" chunk: Linux's minimum TCP retransmission timeout.
pub const STALL: Duration = Duration::from_millis(200);

/// How a proxy degrades its link; the default is a clean link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Added to every chunk, each way.
    pub delay: Duration,
    /// Up to this much more, drawn per chunk.
    pub jitter: Duration,
    /// Chunks in a thousand held a further [`STALL`] (a lost segment's retransmission).
    pub stall_per_mille: u32,
}

impl Impairment {
    fn is_clean(&self) -> bool {
        *self == Impairment::default()
    }
}

/// The impairment in force and what it did, shared by a proxy's connections.
#[derive(Debug, Default)]
struct Link {
    impairment: Mutex<Impairment>,
    /// Chunks delivered late (any delay) and chunks stalled, since the proxy started.
    delayed: AtomicU64,
    stalled: AtomicU64,
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
    link: Arc<Link>,
}

impl TcpProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts a proxy listening on `bind` forwarding to `upstream`.
    pub async fn start_on(bind: SocketAddr, upstream: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let mut p = TcpProxy {
            addr,
            upstream,
            tasks: Arc::default(),
            accept: None,
            link: Arc::default(),
        };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (upstream, tasks, link) = (self.upstream, self.tasks.clone(), self.link.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let link = link.clone();
                let t = tokio::spawn(async move {
                    if let Ok(out) = TcpStream::connect(upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = out.set_nodelay(true);
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = out.into_split();
                        tokio::join!(pump(ir, ow, &link), pump(or, iw, &link));
                    }
                });
                let mut ts = tasks.lock().unwrap_or_else(|e| e.into_inner());
                ts.retain(|t| !t.is_finished());
                ts.push(t);
            }
        }));
    }

    /// Degrades the link from now on, open connections included (`Impairment::default()`
    /// heals it).
    pub fn impair(&self, i: Impairment) {
        *self
            .link
            .impairment
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = i;
    }

    /// Chunks delivered late and chunks stalled so far (the impairment met traffic).
    pub fn impaired_chunks(&self) -> (u64, u64) {
        (
            self.link.delayed.load(Ordering::Relaxed),
            self.link.stalled.load(Ordering::Relaxed),
        )
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&mut self) -> Result<()> {
        self.cut();
        // The aborted accept task releases the listener asynchronously: retry the bind briefly.
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("bind")))
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` chunk by chunk, each delivered when the link's impairment says: a
/// reader stamps chunks with their due time and queues them, a writer delivers them in order
/// at that time, so latency does not cut throughput. EOF is passed on as a write shutdown once
/// everything before it is delivered.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, link: &Link) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let read = async move {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut last_due = Instant::now();
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            let i = *link.impairment.lock().unwrap_or_else(|e| e.into_inner());
            let mut due = Instant::now();
            if !i.is_clean() {
                due += i.delay;
                if !i.jitter.is_zero() {
                    due += i.jitter.mul_f64(rng.random::<f64>());
                }
                if rng.random_range(0..1000) < i.stall_per_mille {
                    due += STALL;
                    link.stalled.fetch_add(1, Ordering::Relaxed);
                }
                link.delayed.fetch_add(1, Ordering::Relaxed);
            }
            // In order: never before the chunk ahead of it.
            due = due.max(last_due);
            last_due = due;
            if tx.send((due, buf)).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A TCP load balancer in front of several servers, the way a Kubernetes Service routes new
/// connections: each new connection goes to the next upstream (round robin) that accepts it;
/// one whose port is closed is skipped. Open connections stay where they are until either end
/// closes them.
pub struct TcpBalancer {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    /// Connections made to each upstream so far.
    pub connections: Arc<Mutex<Vec<usize>>>,
}

impl TcpBalancer {
    pub async fn start(upstreams: Vec<SocketAddr>) -> Result<TcpBalancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(Mutex::new(vec![0; upstreams.len()]));
        let counts = connections.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let start = next;
                next = next.wrapping_add(1);
                let (ups, counts) = (upstreams.clone(), counts.clone());
                tokio::spawn(async move {
                    for i in 0..ups.len() {
                        let at = (start + i) % ups.len();
                        if let Ok(mut out) = TcpStream::connect(ups[at]).await {
                            counts.lock().unwrap_or_else(|e| e.into_inner())[at] += 1;
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(TcpBalancer {
            addr,
            accept,
            connections,
        })
    }
}

impl Drop for TcpBalancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
