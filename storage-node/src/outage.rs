//! How long this node has been away since its last full repair.
//!
//! The node records that it is alive every few seconds (`last_alive_ms` in the meta space). At
//! start, the time since then is added to `unrepaired_outage_ms`, which survives restarts and
//! is reset only when a cluster-wide repair that began during this start completes
//! (`MarkRepaired` names the start, as `NodeInfo` reported it when the run began, so no clocks
//! are compared). Coordinators read it from `NodeInfo` and send no client reads to a node
//! whose unrepaired outage exceeds the tombstone GC grace: it may hold values whose tombstones
//! the others have since purged, so only a repair may bring it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pairdb_common::now_ms;
use tokio_util::sync::CancellationToken;

use crate::engine::{BatchOp, Engine, EngineError, Space};

const LAST_ALIVE: &[u8] = b"last_alive_ms";
const OUTAGE: &[u8] = b"unrepaired_outage_ms";
/// The outage a node that salvaged its write-ahead log reports: longer than any GC grace
/// (a year), small enough that adding real outages to it cannot overflow.
pub const OUT_OF_DATE_MS: u64 = 365 * 24 * 3600 * 1000;
/// How often being alive is recorded (the outage is known to within this).
pub const ALIVE_EVERY: Duration = Duration::from_secs(5);

pub struct Outage {
    engine: Arc<dyn Engine>,
    started_ms: u64,
    outage_ms: AtomicU64,
}

fn read(engine: &dyn Engine, key: &[u8]) -> Result<u64, EngineError> {
    Ok(engine
        .get(Space::Meta, key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

impl Outage {
    /// Adds the time since the node was last alive to its unrepaired outage.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Outage, EngineError> {
        let now = now_ms();
        let last = read(engine.as_ref(), LAST_ALIVE)?;
        let mut outage = read(engine.as_ref(), OUTAGE)?;
        if last > 0 {
            outage = outage.saturating_add(now.saturating_sub(last));
        }
        let o = Outage {
            engine,
            started_ms: now,
            outage_ms: AtomicU64::new(outage),
        };
        o.persist(now)?;
        if outage > 0 {
            tracing::info!(
                unrepaired_outage_ms = outage,
                "time away since the last full repair"
            );
        }
        Ok(o)
    }

    fn persist(&self, alive_ms: u64) -> Result<(), EngineError> {
        self.engine.write(
            vec![
                BatchOp::Put(
                    Space::Meta,
                    LAST_ALIVE.to_vec(),
                    alive_ms.to_be_bytes().to_vec(),
                ),
                BatchOp::Put(
                    Space::Meta,
                    OUTAGE.to_vec(),
                    self.outage_ms().to_be_bytes().to_vec(),
                ),
            ],
            false,
        )
    }

    /// Milliseconds this node was away (over all restarts) since its last full repair.
    pub fn outage_ms(&self) -> u64 {
        self.outage_ms.load(Ordering::SeqCst)
    }

    /// When this start happened (this node's clock).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Counts this node as away longer than any tombstone GC grace (it opened by salvaging a
    /// damaged write-ahead log, so acknowledged writes may be missing): coordinators send it
    /// no client reads until a full repair that began during this start completes.
    pub fn mark_out_of_date(&self) -> Result<(), EngineError> {
        self.outage_ms.fetch_max(OUT_OF_DATE_MS, Ordering::SeqCst);
        self.persist(now_ms())?;
        tracing::warn!(
            unrepaired_outage_ms = self.outage_ms(),
            "out of date until a full repair: no client reads are served from this node"
        );
        Ok(())
    }

    /// A cluster-wide repair completed that began while this node was up since `started_ms`
    /// (as `NodeInfo` reported it then). If that is this start, the repair compared every range
    /// of this node after it came back, and the outage is forgiven. Returns whether it was.
    pub fn mark_repaired(&self, started_ms: u64) -> Result<bool, EngineError> {
        if started_ms != self.started_ms {
            return Ok(false);
        }
        let was = self.outage_ms.swap(0, Ordering::SeqCst);
        self.persist(now_ms())?;
        if was > 0 {
            tracing::info!(
                forgiven_outage_ms = was,
                "a full repair completed since this node came back"
            );
        }
        Ok(true)
    }

    /// Records being alive every [`ALIVE_EVERY`] until cancelled.
    pub async fn run(
        self: Arc<Self>,
        sup: pairdb_common::worker::Supervisor,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(ALIVE_EVERY) => {}
            }
            let me = self.clone();
            let r = sup
                .spawn_blocking("liveness", move || me.persist(now_ms()))
                .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "could not record being alive");
            }
        }
    }
}
