//! The loops every lease-driven worker (topology changes, repairs) shares: a periodic tick,
//! and keeping the lease of the job being driven.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::meta::MetaError;

/// Calls `tick` every `every` until `cancel`; metadata-store errors are logged, never fatal.
pub async fn every<F, Fut>(every: Duration, cancel: CancellationToken, worker: &str, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), MetaError>>,
{
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = tick().await {
            tracing::warn!(error = %e, "{worker} worker: metadata store unavailable");
        }
    }
}

/// Saves progress (renewing the lease) every `every` until `stop` or `cancel`. A save that
/// finds the lease lost (`Ok(false)`) cancels the work through `cancel` (unless stopping).
pub async fn keep<F, Fut>(
    mut save: F,
    every: Duration,
    cancel: CancellationToken,
    stop: CancellationToken,
    job: &str,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, MetaError>>,
{
    loop {
        match save().await {
            Ok(true) => {}
            Ok(false) => {
                if !stop.is_cancelled() {
                    tracing::warn!(job, "lost the lease (aborted, or taken over); stopping");
                    cancel.cancel();
                }
                return;
            }
            Err(e) => tracing::warn!(job, error = %e, "saving progress failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
