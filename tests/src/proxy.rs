//! A TCP proxy a test can cut: everything through it stops at once (open connections are
//! dropped, new ones refused), as if the server behind it had stopped, and it can be restored
//! on the same port. Used to take the metadata store away from coordinators mid-test.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
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
        };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                let mut ts = tasks.lock().unwrap_or_else(|e| e.into_inner());
                ts.retain(|t| !t.is_finished());
                ts.push(t);
            }
        }));
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
