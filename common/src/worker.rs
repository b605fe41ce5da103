//! Supervised background work, for both services: every long-lived loop and every task a
//! request hands work to runs under one [`Supervisor`], which knows its name and its state and
//! stops all of it within one deadline.
//!
//! - **Workers** ([`Supervisor::worker`]): named loops that live as long as the process (hint
//!   replay, the failure detector, the job drivers' ticks, the disk manager…). Each gets the
//!   shutdown token. A panic becomes an error log, `worker_panics_total{worker}` + 1, and a
//!   restart after a backoff (100 ms doubling to 30 s, back to 100 ms after a minute of healthy
//!   running); a worker that returns before shutdown is restarted the same way, since it is not
//!   meant to end.
//! - **Services** ([`Supervisor::service`]): long-lived tasks that cannot be restarted (a server
//!   that owns its listener). They are shown and stopped like workers; a panic, an error or an
//!   early end marks them `failed`, which `/health` reports.
//! - **Owned tasks** ([`Supervisor::spawn`], [`Supervisor::spawn_blocking`]): work that must
//!   finish even when the request that started it goes away (a write to N replicas, a range
//!   pull, a compaction), or a blocking engine call. A panic is logged and counted under the
//!   task's label, and its handle ([`Owned`]) yields [`TaskFailed`]; dropping the handle
//!   detaches the task, which still counts towards shutdown.
//! - **Draining** ([`Supervisor::begin_drain`], [`Supervisor::stop_serving`]), before a
//!   graceful shutdown: the process reports itself shutting down (readiness 503) while it keeps
//!   serving, then its client-facing servers stop accepting and finish what is in flight
//!   (they watch [`Supervisor::serving_token`]); workers and tasks keep running for them.
//! - **Shutdown** ([`Supervisor::shutdown`]) cancels the token every worker watches and waits
//!   for every task at once (a `TaskTracker`) until one deadline, naming what did not stop.
//!
//! **Invariant:** no module outside this one calls `tokio::spawn` or `spawn_blocking`
//! (`tests/tests/architecture.rs` greps the server crates for it).

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First delay before restarting a failed worker; it doubles per failure up to
/// [`RESTART_MAX_DELAY`].
pub const RESTART_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between restarts of a worker that keeps failing.
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
/// A worker that ran this long before failing starts its backoff again from the minimum.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Running,
    /// Failed and waiting for its backoff before the next start.
    Restarting,
    /// Ended at shutdown.
    Stopped,
    /// A service that failed or ended early; it is not restarted.
    Failed,
}

/// One worker's state, as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub name: &'static str,
    pub state: WorkerState,
    pub restarts: u64,
    pub panics: u64,
    /// The last failure, cut to [`LAST_ERROR_MAX_CHARS`]: `/health` answers without
    /// authentication (probes), so it shows what failed, not a whole panic payload; the log
    /// has the full text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Longest `last_error` `/health` shows.
pub const LAST_ERROR_MAX_CHARS: usize = 120;
/// Owned-task futures larger than this many bytes are boxed before they are wrapped and
/// spawned (see [`Supervisor::spawn`]).
const BOX_FUTURES_OVER: usize = 512;

/// `why` cut to [`LAST_ERROR_MAX_CHARS`] characters.
fn brief(why: &str) -> String {
    match why.char_indices().nth(LAST_ERROR_MAX_CHARS) {
        None => why.to_string(),
        Some((i, _)) => format!("{}… (see the log)", &why[..i]),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: &'static str,
}

/// `worker_panics_total{worker}` (workers and owned tasks, by label), `worker_restarts_total`
/// and `worker_up` (1 while running).
#[derive(Clone, Default)]
pub struct WorkerMetrics {
    pub panics: Family<WorkerLabels, Counter>,
    pub restarts: Family<WorkerLabels, Counter>,
    pub up: Family<WorkerLabels, Gauge>,
}

impl WorkerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "worker_panics",
            "Panics caught in background workers and owned tasks, by worker or task label",
            self.panics.clone(),
        );
        registry.register(
            "worker_restarts",
            "Restarts of background workers after a panic or an early end",
            self.restarts.clone(),
        );
        registry.register(
            "worker_up",
            "1 while a background worker runs, 0 while it waits to restart or has failed",
            self.up.clone(),
        );
    }
}

/// An owned task panicked (or was cancelled by the runtime shutting down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} task failed: {message}")]
pub struct TaskFailed {
    pub what: &'static str,
    pub message: String,
}

struct Inner {
    cancel: CancellationToken,
    /// Cancelled when client-facing servers must stop accepting (drain, or shutdown).
    serving: CancellationToken,
    draining: std::sync::atomic::AtomicBool,
    tracker: TaskTracker,
    workers: Mutex<BTreeMap<&'static str, WorkerStatus>>,
    metrics: WorkerMetrics,
}

/// The one owner of a process's background work (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Supervisor(Arc<Inner>);

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new(WorkerMetrics::default())
    }
}

impl Supervisor {
    pub fn new(metrics: WorkerMetrics) -> Supervisor {
        Supervisor(Arc::new(Inner {
            cancel: CancellationToken::new(),
            serving: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            tracker: TaskTracker::new(),
            workers: Mutex::new(BTreeMap::new()),
            metrics,
        }))
    }

    /// The token cancelled at shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.0.cancel.clone()
    }

    /// Shutting down, or draining before it (readiness reports it).
    pub fn is_shutting_down(&self) -> bool {
        self.0.cancel.is_cancelled() || self.0.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The token a client-facing server stops accepting on: cancelled by
    /// [`Self::stop_serving`] and by shutdown.
    pub fn serving_token(&self) -> CancellationToken {
        self.0.serving.clone()
    }

    /// First step of a graceful stop: report shutting down (readiness fails) while serving on.
    pub fn begin_drain(&self) {
        self.0
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Second step: client-facing servers stop accepting and finish their requests in flight.
    pub fn stop_serving(&self) {
        self.begin_drain();
        self.0.serving.cancel();
    }

    /// Every worker and service, by name.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.0.workers.lock().values().cloned().collect()
    }

    /// Tasks (workers, services and owned tasks) still running.
    pub fn tasks(&self) -> usize {
        self.0.tracker.len()
    }

    fn set(&self, name: &'static str, f: impl FnOnce(&mut WorkerStatus)) {
        let mut w = self.0.workers.lock();
        let s = w.entry(name).or_insert(WorkerStatus {
            name,
            state: WorkerState::Running,
            restarts: 0,
            panics: 0,
            last_error: None,
        });
        f(s);
        let up = i64::from(s.state == WorkerState::Running);
        self.0
            .metrics
            .up
            .get_or_create(&WorkerLabels { worker: name })
            .set(up);
    }

    fn panicked(&self, label: &'static str, payload: &(dyn std::any::Any + Send)) -> String {
        self.0
            .metrics
            .panics
            .get_or_create(&WorkerLabels { worker: label })
            .inc();
        panic_message(payload)
    }

    /// Starts a long-lived worker: `run` is called with the shutdown token, and called again
    /// (after a backoff) whenever it panics or returns before shutdown.
    pub fn worker<F, Fut>(&self, name: &'static str, mut run: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set(name, |s| s.state = WorkerState::Running);
        let me = self.clone();
        self.0.tracker.spawn(async move {
            let cancel = me.0.cancel.clone();
            let mut delays = restart_delays();
            loop {
                let started = Instant::now();
                let r = AssertUnwindSafe(run(cancel.clone())).catch_unwind().await;
                let why = match r {
                    Ok(()) if cancel.is_cancelled() => None,
                    Ok(()) => Some("returned before shutdown".to_string()),
                    Err(p) => {
                        let m = me.panicked(name, p.as_ref());
                        me.set(name, |s| s.panics += 1);
                        Some(format!("panicked: {m}"))
                    }
                };
                let Some(why) = why.filter(|_| !cancel.is_cancelled()) else {
                    me.set(name, |s| s.state = WorkerState::Stopped);
                    return;
                };
                if started.elapsed() >= HEALTHY_RUN {
                    delays = restart_delays();
                }
                let delay = delays.next().unwrap_or(RESTART_MAX_DELAY);
                tracing::error!(worker = name, error = %why, restart_in_ms = delay.as_millis() as u64, "background worker failed; restarting it");
                me.0.metrics
                    .restarts
                    .get_or_create(&WorkerLabels { worker: name })
                    .inc();
                me.set(name, |s| {
                    s.state = WorkerState::Restarting;
                    s.restarts += 1;
                    s.last_error = Some(brief(&why));
                });
                tokio::select! {
                    _ = cancel.cancelled() => {
                        me.set(name, |s| s.state = WorkerState::Stopped);
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                me.set(name, |s| s.state = WorkerState::Running);
            }
        });
    }

    /// Starts a long-lived task that cannot be restarted (a server owning its listener); it must
    /// end when the shutdown token is cancelled.
    pub fn service<Fut, E>(&self, name: &'static str, fut: Fut)
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.set(name, |s| s.state = WorkerState::Running);
        let me = self.clone();
        self.0.tracker.spawn(async move {
            let why = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) if me.is_shutting_down() => None,
                Ok(Ok(())) => Some("ended before shutdown".to_string()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(p) => {
                    let m = me.panicked(name, p.as_ref());
                    me.set(name, |s| s.panics += 1);
                    Some(format!("panicked: {m}"))
                }
            };
            match why {
                None => me.set(name, |s| s.state = WorkerState::Stopped),
                Some(why) => {
                    tracing::error!(worker = name, error = %why, "service stopped");
                    me.set(name, |s| {
                        s.state = WorkerState::Failed;
                        s.last_error = Some(brief(&why));
                    });
                }
            }
        });
    }

    /// Runs owned work to completion in its own task (see the module docs). `what` labels its
    /// panics.
    pub fn spawn<T, Fut>(&self, what: &'static str, fut: Fut) -> Owned<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        // A large future is boxed once here: each wrapper below moves its future by value,
        // and a multi-kilobyte state machine copied five times per spawn showed up as ~10% of
        // a coordinator's CPU in memmove (issue P); a box moves as one pointer.
        if std::mem::size_of::<Fut>() > BOX_FUTURES_OVER {
            return self.spawn_sized(what, Box::pin(fut));
        }
        self.spawn_sized(what, fut)
    }

    fn spawn_sized<T, Fut>(&self, what: &'static str, fut: Fut) -> Owned<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let me = self.clone();
        // An owned task continues the span (the trace) of whoever spawned it.
        let fut = tracing::Instrument::in_current_span(fut);
        Owned {
            what,
            handle: self.0.tracker.spawn(async move {
                AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| {
                    let message = me.panicked(what, p.as_ref());
                    tracing::error!(task = what, error = %message, "owned task panicked");
                    TaskFailed { what, message }
                })
            }),
        }
    }

    /// Runs a blocking call (an engine operation) on the blocking pool, tracked like an owned
    /// task.
    pub fn spawn_blocking<T, F>(&self, what: &'static str, f: F) -> Owned<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let me = self.clone();
        let run = move || {
            std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
                let message = me.panicked(what, p.as_ref());
                tracing::error!(task = what, error = %message, "blocking task panicked");
                TaskFailed { what, message }
            })
        };
        // In a simulation the call runs on this host's thread when first polled (the
        // in-memory engine never blocks), so the schedule stays a function of the seed.
        let handle = if crate::sim::active().is_some() {
            self.0.tracker.spawn(async move { run() })
        } else {
            self.0.tracker.spawn_blocking(run)
        };
        Owned { what, handle }
    }

    /// Cancels every worker and waits for every task, all at once, until `deadline`. `false`
    /// (after a warning naming what still runs) when the deadline passed first.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.0.serving.cancel();
        self.0.cancel.cancel();
        self.0.tracker.close();
        if tokio::time::timeout(deadline, self.0.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let running: Vec<&'static str> = self
            .statuses()
            .into_iter()
            .filter(|s| s.state == WorkerState::Running)
            .map(|s| s.name)
            .collect();
        tracing::warn!(
            workers = ?running,
            tasks = self.tasks(),
            deadline_ms = deadline.as_millis() as u64,
            "background work did not stop within the shutdown deadline"
        );
        false
    }
}

/// The handle of an owned task: awaits its result. Dropping it detaches the task.
#[must_use = "an owned task's result says whether it panicked; drop the handle to detach it"]
pub struct Owned<T> {
    what: &'static str,
    handle: tokio::task::JoinHandle<Result<T, TaskFailed>>,
}

impl<T> Future for Owned<T> {
    type Output = Result<T, TaskFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        Pin::new(&mut self.handle).poll(cx).map(|r| match r {
            Ok(r) => r,
            Err(e) => Err(TaskFailed {
                what,
                message: e.to_string(),
            }),
        })
    }
}

/// The loop of a periodic worker: calls `tick` at once and then every `period` (a late tick is
/// delayed, never bunched) until `cancel`. `tick` handles (logs) its own errors.
pub async fn every<F, Fut>(period: Duration, cancel: &CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        tick().await;
    }
}

fn restart_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RESTART_MIN_DELAY)
        .with_max_delay(RESTART_MAX_DELAY)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn health_shows_a_brief_last_error() {
        assert_eq!(brief("bind lost"), "bind lost");
        let long = "é".repeat(500);
        let b = brief(&long);
        assert!(b.starts_with(&"é".repeat(LAST_ERROR_MAX_CHARS)) && b.ends_with("(see the log)"));
        assert!(b.chars().count() < LAST_ERROR_MAX_CHARS + 20);
    }

    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn wait_for(mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "condition not met within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_worker_is_counted_and_restarted_and_stops_at_shutdown() {
        let metrics = WorkerMetrics::default();
        let sup = Supervisor::new(metrics.clone());
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        sup.worker("flaky", move |cancel| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                cancel.cancelled().await;
            }
        });
        wait_for(|| starts.load(Ordering::SeqCst) >= 3).await;
        wait_for(|| sup.statuses()[0].state == WorkerState::Running).await;
        let st = &sup.statuses()[0];
        assert_eq!((st.name, st.restarts, st.panics), ("flaky", 2, 2));
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("boom 1"))
        );
        let l = WorkerLabels { worker: "flaky" };
        assert_eq!(metrics.panics.get_or_create(&l).get(), 2);
        assert_eq!(metrics.restarts.get_or_create(&l).get(), 2);
        assert_eq!(metrics.up.get_or_create(&l).get(), 1);
        assert!(sup.shutdown(Duration::from_secs(2)).await);
        assert_eq!(sup.statuses()[0].state, WorkerState::Stopped);
        assert_eq!(sup.tasks(), 0);
    }

    #[tokio::test]
    async fn a_worker_that_returns_early_is_restarted() {
        let sup = Supervisor::default();
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        sup.worker("quitter", move |cancel| {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n > 0 {
                    cancel.cancelled().await;
                }
            }
        });
        wait_for(|| starts.load(Ordering::SeqCst) >= 2).await;
        assert_eq!(sup.statuses()[0].restarts, 1);
        assert!(sup.shutdown(Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn owned_tasks_report_panics_and_shutdown_waits_for_them_in_parallel() {
        let metrics = WorkerMetrics::default();
        let sup = Supervisor::new(metrics.clone());
        let bad = sup.spawn("write", async { panic!("replica exploded") });
        let err = bad.await.unwrap_err();
        assert_eq!(err.what, "write");
        assert!(err.message.contains("replica exploded"));
        let blocking = sup.spawn_blocking("engine", || 40 + 2);
        assert_eq!(blocking.await.ok(), Some(42));
        let failed = sup.spawn_blocking("engine", || -> u8 { panic!("disk") });
        assert!(failed.await.is_err());
        assert_eq!(
            metrics
                .panics
                .get_or_create(&WorkerLabels { worker: "engine" })
                .get(),
            1
        );
        // Shutdown waits for detached owned tasks too: all three finish before it returns.
        let finished = Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            let f = finished.clone();
            drop(sup.spawn("slow", async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert!(sup.shutdown(Duration::from_secs(5)).await);
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn shutdown_gives_up_at_its_deadline_and_a_failed_service_shows_failed() {
        let sup = Supervisor::default();
        sup.service("server", async { Err::<(), _>("bind lost") });
        wait_for(|| sup.statuses()[0].state == WorkerState::Failed).await;
        assert_eq!(sup.statuses()[0].last_error.as_deref(), Some("bind lost"));
        drop(sup.spawn("stuck", std::future::pending::<()>()));
        assert!(!sup.shutdown(Duration::from_millis(100)).await);
    }
}
