//! pairdb's simulation seam (`pairdb_common::sim`) implemented with turmoil: listeners and
//! connections of turmoil's simulated TCP, and the wall clock of the simulated host calling.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::sim::{Accept, BoxFuture, BoxStream, Simulation};

/// Unix milliseconds at which every simulation starts (2026-01-01T00:00:00Z), so that
/// timestamps, and what depends on them, are the same in every run of a seed.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

pub fn epoch() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(EPOCH_MS)
}

struct Turmoil;

struct Listen(turmoil::net::TcpListener);

impl Accept for Listen {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, remote) = self.0.accept().await?;
            Ok((Box::new(s) as BoxStream, remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Simulation for Turmoil {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Accept>>> {
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(Listen(l)) as Box<dyn Accept>)
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect((host, port)).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn now_ms(&self) -> u64 {
        // Outside a host (the test setting a simulation up): the simulation's start.
        turmoil::since_epoch().map_or(EPOCH_MS, |d| d.as_millis() as u64)
    }
}

/// Installs the turmoil seam for this process (idempotent). Only simulation tests may call
/// it: afterwards no real socket is bound or dialled by pairdb code in this process.
pub fn install() {
    let _ = pairdb_common::sim::install(Arc::new(Turmoil));
}
