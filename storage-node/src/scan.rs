//! Bounded pools for range scans, apart from the write path.
//!
//! Scans (range streams, digests, key listings, tombstone purges, range drops) run on blocking
//! threads, like synced writes and the disk sampler. Without a bound, 500 callers that open
//! streams and never read would each hold a blocking thread (and a RocksDB iterator pinning
//! memtables and tables) and starve the writes and the sampler behind them. A [`ScanPool`]
//! lets at most `threads` of its jobs run at once and at most `max_queued` wait; anything more
//! is refused at once with OVERLOADED. The node keeps two pools, one for streams (long) and
//! one for the other scans (short), so a digest never waits behind a bootstrap's streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pairdb_common::worker::Supervisor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub struct ScanPool {
    name: &'static str,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
    metrics: Arc<Metrics>,
    sup: Supervisor,
}

impl ScanPool {
    pub fn new(
        name: &'static str,
        threads: usize,
        max_queued: usize,
        metrics: Arc<Metrics>,
        sup: Supervisor,
    ) -> ScanPool {
        ScanPool {
            name,
            permits: Arc::new(Semaphore::new(threads.max(1))),
            waiting: AtomicUsize::new(0),
            max_queued,
            metrics,
            sup,
        }
    }

    /// Waits for one of the pool's slots (OVERLOADED when every slot is busy and the queue is
    /// full); the job that holds the permit owns the slot until it drops it.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let _waiting = Waiting::enter(&self.waiting, self.max_queued).ok_or_else(|| {
            self.metrics.scans_refused.inc();
            Error::Overloaded(format!(
                "every {} slot is busy and {} more are waiting; retry later",
                self.name, self.max_queued
            ))
        })?;
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Overloaded(format!("{} pool closed", self.name)))
    }

    /// Runs `f` on a blocking thread once a slot is free (see [`ScanPool::admit`]). The job
    /// owns its slot until it returns, even if the caller goes away.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permit = self.admit().await?;
        self.sup
            .spawn_blocking(self.name, move || {
                let _permit = permit;
                f()
            })
            .await
            .map_err(|e| Error::Engine(crate::engine::EngineError::Io(e.to_string())))
    }
}

/// One place in a pool's queue, given back when dropped (also when the caller goes away).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Waiting<'a>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
