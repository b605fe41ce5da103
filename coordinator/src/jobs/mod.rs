//! The job driver (SPEC §5): one machine for every lease-driven, resumable job kept in the
//! metadata store: topology changes (bootstrap, decommission, replace, cleanup;
//! `crate::topology`) and repair runs (`crate::repair`). A job kind supplies what to run (its
//! plan of steps and what one step does); this module does the rest, the same way for both:
//!
//! - **Ticks** ([`JobDriver::every`]): each kind's worker looks for work every poll interval;
//!   metadata-store errors are logged and the next tick tries again.
//! - **Claim and takeover** ([`JobDriver::claim`]): a job whose lease is free, already ours or
//!   expired is claimed (`claim_job`); a coordinator that dies stops renewing and any other one
//!   claims the job once `job_lease_ms` passed, continuing from the saved plan.
//! - **Driving** ([`JobDriver::start`]): each claimed job runs in an owned task of the
//!   [`Supervisor`]; the jobs being driven here are remembered so no tick claims one twice. The
//!   lease keeper runs inside that task, joined with the work: a panic ends both, so the lease
//!   expires and another coordinator takes over (it is never renewed by a keeper left behind).
//! - **Lease keeping and progress** ([`Run::keeping_lease`]): plan (when it changed), progress
//!   document and waiting reason are saved every `job_lease_ms / 5` (100 ms to 1 s), renewing
//!   the lease; a save that finds the lease lost (aborted, taken over) cancels the work at once.
//! - **Passes** ([`Run::passes`]): the plan's unfinished steps run `parallelism` at a time, each
//!   raced against cancellation, pass after pass with 2 s between passes that had failures,
//!   until no step is left.
//! - **Percent and ETA** ([`fraction`]).
//!
//! Errors are [`JobError`]s; a job that fails saves why (as its waiting reason, while the
//! lease is still its own) and is resumed by a later tick.

mod error;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pairdb_common::now_ms;
use pairdb_common::worker::Supervisor;
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use error::{FORMAT_VERSION, JobError, decode, format_v1};

use crate::meta::{ChangeRecord, JobTable, MetaError, MetaStore, RepairRecord};

/// Pause after a pass in which some steps failed.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Percent done (one decimal) and the ETA in seconds (from the pace so far) of a job that
/// finished `done` of `total` steps since `started`.
pub fn fraction(done: usize, total: usize, started: Instant) -> (f64, Option<u64>) {
    let percent = if total == 0 {
        100.0
    } else {
        (done as f64 * 1000.0 / total as f64).round() / 10.0
    };
    let elapsed = started.elapsed().as_secs_f64();
    let eta =
        (done > 0 && done < total).then(|| (elapsed / done as f64 * (total - done) as f64) as u64);
    (percent, eta)
}

/// JSON of a persisted document (these types always serialize).
pub fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// Drives the jobs of one table for this coordinator (see the module docs).
pub struct JobDriver {
    table: JobTable,
    meta: Arc<dyn MetaStore>,
    sup: Supervisor,
    owner: String,
    lease_ms: u64,
    driving: Mutex<HashSet<String>>,
    /// Jobs whose task panicked here: how many times in a row, and when this coordinator may
    /// take them again. A panic is a bug that repeats, so retries back off (doubling from
    /// twice the lease, at most [`PANIC_BACKOFF_MAX`]) instead of running every poll.
    panicked: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Longest wait before this coordinator takes a job that keeps panicking again.
pub const PANIC_BACKOFF_MAX: Duration = Duration::from_secs(600);

impl JobDriver {
    /// `owner` is this coordinator's id, written as `lease_owner`.
    pub fn new(
        table: JobTable,
        meta: Arc<dyn MetaStore>,
        sup: Supervisor,
        owner: String,
        lease_ms: u64,
    ) -> Arc<JobDriver> {
        Arc::new(JobDriver {
            table,
            meta,
            sup,
            owner,
            lease_ms,
            driving: Mutex::new(HashSet::new()),
            panicked: Mutex::new(HashMap::new()),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    pub fn is_driving(&self, id: &str) -> bool {
        self.driving.lock().contains(id)
    }

    /// Jobs of this table driven by this coordinator now.
    pub fn driving(&self) -> usize {
        self.driving.lock().len()
    }

    /// Calls `tick` every `every` until shutdown; metadata-store errors are logged, never
    /// fatal.
    pub async fn every<F, Fut>(&self, every: Duration, cancel: CancellationToken, mut tick: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), MetaError>>,
    {
        pairdb_common::worker::every(every, &cancel, || {
            let t = tick();
            async move {
                if let Err(e) = t.await {
                    tracing::warn!(job = self.table.as_str(), error = %e, "job worker: metadata store unavailable");
                }
            }
        })
        .await
    }

    /// Claims the job of `row` ([`Self::claim`]) and, when it is ours, starts driving it
    /// with `drive(row, cancel)` ([`Self::start`]). `Ok(true)`: it was started.
    pub async fn take<R, F, Fut>(
        self: &Arc<Self>,
        row: R,
        now: u64,
        drive: F,
    ) -> Result<bool, MetaError>
    where
        R: JobRow,
        F: FnOnce(R, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let held_by = row.lease();
        if !self.claim(row.job_id(), held_by, now).await? {
            return Ok(false);
        }
        let id = row.job_id().to_string();
        self.start(id, move |cancel| drive(row, cancel));
        Ok(true)
    }

    /// Claims job `id` (whose lease row names `held_by`) unless this coordinator drives it
    /// already or another holds an unexpired lease. Whether that lease has expired is the
    /// store's to judge, by its clock (PostgreSQL's own, shared by every coordinator), never by
    /// comparing this coordinator's clock with another's. `Ok(true)`: it is ours; start it
    /// with [`Self::start`].
    pub async fn claim(
        &self,
        id: &str,
        held_by: Option<&str>,
        now: u64,
    ) -> Result<bool, MetaError> {
        if self.is_driving(id) || self.backing_off(id) {
            return Ok(false);
        }
        if !self
            .meta
            .claim_job(self.table, id, &self.owner, now, self.lease_ms)
            .await?
        {
            return Ok(false);
        }
        if let Some(previous) = held_by.filter(|h| *h != self.owner) {
            tracing::warn!(
                job = self.table.as_str(),
                id,
                previous,
                "took over a job whose driver stopped renewing its lease"
            );
        }
        Ok(true)
    }

    /// Drives a claimed job: `drive` runs in an owned task with a token cancelled at shutdown;
    /// the job counts as driven here until it returns (or panics).
    pub fn start<F, Fut>(self: &Arc<Self>, id: String, drive: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.driving.lock().insert(id.clone());
        let fut = drive(self.sup.cancel_token().child_token());
        let guard = Driven {
            driver: self.clone(),
            id,
        };
        drop(self.sup.spawn("job", async move {
            let r = fut.await;
            let (job, id) = (guard.driver.table.as_str(), guard.id.as_str());
            match r {
                Ok(()) => {
                    guard.driver.panicked.lock().remove(&guard.id);
                }
                Err(JobError::Cancelled) => {
                    tracing::info!(job, id, "job stopped at shutdown; it will be resumed")
                }
                Err(e) => tracing::warn!(job, id, error = %e, "job paused; it will be resumed"),
            }
        }));
    }

    /// Saves a job's documents outside a [`Run`] (a pending change waiting for admission),
    /// renewing the lease. `false`: the lease is lost.
    pub async fn save(
        &self,
        id: &str,
        plan: Option<&str>,
        progress: &str,
        error: Option<&str>,
    ) -> Result<bool, MetaError> {
        self.meta
            .save_job(
                self.table,
                id,
                &self.owner,
                now_ms(),
                self.lease_ms,
                plan,
                progress,
                error,
            )
            .await
    }

    /// Whether job `id` panicked here recently enough that this coordinator waits.
    fn backing_off(&self, id: &str) -> bool {
        self.panicked
            .lock()
            .get(id)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// Records that job `id`'s task panicked; the wait before taking it again.
    fn record_panic(&self, id: &str) -> Duration {
        let mut p = self.panicked.lock();
        let e = p.entry(id.to_string()).or_insert((0, Instant::now()));
        e.0 = e.0.saturating_add(1);
        let wait = Duration::from_millis(self.lease_ms.max(1))
            .saturating_mul(1 << e.0.min(20))
            .min(PANIC_BACKOFF_MAX);
        e.1 = Instant::now() + wait;
        wait
    }

    fn save_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 5).clamp(100, 1000))
    }
}

/// A job's row as the driver sees it: its id, and who holds its lease.
pub trait JobRow: Send + 'static {
    fn job_id(&self) -> &str;
    fn lease(&self) -> Option<&str>;
}

impl JobRow for ChangeRecord {
    fn job_id(&self) -> &str {
        &self.change_id
    }

    fn lease(&self) -> Option<&str> {
        self.lease_owner.as_deref()
    }
}

impl JobRow for RepairRecord {
    fn job_id(&self) -> &str {
        &self.repair_id
    }

    fn lease(&self) -> Option<&str> {
        self.lease_owner.as_deref()
    }
}

/// Forgets a driven job when its task ends, panics included.
struct Driven {
    driver: Arc<JobDriver>,
    id: String,
}

impl Drop for Driven {
    fn drop(&mut self) {
        // Dropped while unwinding: the job's task panicked.
        if std::thread::panicking() {
            let wait = self.driver.record_panic(&self.id);
            tracing::error!(
                job = self.driver.table.as_str(),
                id = %self.id,
                retry_in_ms = wait.as_millis() as u64,
                "job panicked; this coordinator takes it again after a backoff"
            );
        }
        self.driver.driving.lock().remove(&self.id);
    }
}

/// What a driven job holds in memory and saves: its plan of steps, a phase, why it is not
/// moving (if it is not), and a kind's own extra state.
pub struct Work<T, X = ()> {
    pub plan: Vec<T>,
    pub phase: String,
    pub waiting: Option<String>,
    pub started: Instant,
    pub extra: X,
}

impl<T, X> Work<T, X> {
    pub fn new(plan: Vec<T>, phase: &str, extra: X) -> Work<T, X> {
        Work {
            plan,
            phase: phase.to_string(),
            waiting: None,
            started: Instant::now(),
            extra,
        }
    }
}

/// The work of a [`Run`], locked; a mutable access marks it for the next save.
pub struct WorkGuard<'a, T, X> {
    guard: MutexGuard<'a, Work<T, X>>,
    touched: &'a AtomicBool,
}

impl<T, X> std::ops::Deref for WorkGuard<'_, T, X> {
    type Target = Work<T, X>;

    fn deref(&self) -> &Work<T, X> {
        &self.guard
    }
}

impl<T, X> std::ops::DerefMut for WorkGuard<'_, T, X> {
    fn deref_mut(&mut self) -> &mut Work<T, X> {
        self.touched.store(true, Ordering::Relaxed);
        &mut self.guard
    }
}

type Render<T, X> = Box<dyn Fn(&Work<T, X>) -> String + Send + Sync>;

/// One job being driven: its [`Work`] behind a lock, saved with each lease renewal.
pub struct Run<T, X = ()> {
    driver: Arc<JobDriver>,
    id: String,
    work: Mutex<Work<T, X>>,
    /// The plan as last saved (written again only when it changed).
    saved_plan: Mutex<String>,
    /// Set by every mutable access to the work ([`WorkGuard`]): only then is the plan
    /// serialized again to see whether it changed.
    touched: AtomicBool,
    progress: Render<T, X>,
    cancel: CancellationToken,
    lost: AtomicBool,
}

impl<T: Serialize, X> Run<T, X> {
    /// A run of job `id` whose stored plan is `saved_plan`; `progress` renders the progress
    /// document; `cancel` stops the work (shutdown; the lease keeper adds lease loss).
    pub fn new(
        driver: Arc<JobDriver>,
        id: &str,
        saved_plan: &str,
        work: Work<T, X>,
        cancel: CancellationToken,
        progress: impl Fn(&Work<T, X>) -> String + Send + Sync + 'static,
    ) -> Run<T, X> {
        Run {
            driver,
            id: id.to_string(),
            work: Mutex::new(work),
            saved_plan: Mutex::new(saved_plan.to_string()),
            touched: AtomicBool::new(true),
            progress: Box::new(progress),
            cancel,
            lost: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn lock(&self) -> WorkGuard<'_, T, X> {
        WorkGuard {
            guard: self.work.lock(),
            touched: &self.touched,
        }
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the work was cancelled: the lease was lost, or the coordinator is shutting down.
    pub fn stopped(&self) -> JobError {
        if self.lost.load(Ordering::SeqCst) {
            JobError::LeaseLost
        } else {
            JobError::Cancelled
        }
    }

    /// `Err` once the work is cancelled.
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(self.stopped())
        } else {
            Ok(())
        }
    }

    /// Saves plan (if changed), progress and waiting reason, renewing the lease.
    /// [`JobError::LeaseLost`] when the lease is gone (or the job is no longer active).
    pub async fn save(&self) -> Result<(), JobError> {
        let touched = self.touched.swap(false, Ordering::SeqCst);
        let (plan, progress, waiting) = {
            let w = self.work.lock();
            let plan = touched.then(|| to_json(&w.plan));
            (plan, (self.progress)(&w), w.waiting.clone())
        };
        let plan = plan.filter(|p| *self.saved_plan.lock() != *p);
        let changed = plan.is_some();
        let saved = self
            .driver
            .save(&self.id, plan.as_deref(), &progress, waiting.as_deref())
            .await
            .inspect_err(|_| self.touched.store(true, Ordering::SeqCst))?;
        if !saved {
            return Err(JobError::LeaseLost);
        }
        if let Some(plan) = plan.filter(|_| changed) {
            *self.saved_plan.lock() = plan;
        }
        Ok(())
    }

    /// Runs `work` while keeping the lease (see the module docs); on failure saves the error
    /// as the job's waiting reason while the lease is still its own.
    pub async fn keeping_lease<R>(
        &self,
        work: impl Future<Output = Result<R, JobError>>,
    ) -> Result<R, JobError> {
        let stop = CancellationToken::new();
        let keeper = async {
            loop {
                match self.save().await {
                    Ok(()) => {}
                    Err(JobError::LeaseLost) => {
                        if !stop.is_cancelled() {
                            tracing::warn!(job = self.driver.table.as_str(), id = %self.id, "lost the lease (aborted, or taken over); stopping");
                            self.lost.store(true, Ordering::SeqCst);
                            self.cancel.cancel();
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job = self.driver.table.as_str(), id = %self.id, error = %e, "saving job progress failed")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(self.driver.save_every()) => {}
                }
            }
        };
        let work = async {
            let r = work.await;
            stop.cancel();
            r
        };
        let (r, ()) = tokio::join!(work, keeper);
        if let Err(e) = &r
            && !e.is_stop()
        {
            self.work.lock().waiting = Some(e.to_string());
            let _ = self.save().await;
        }
        r
    }

    /// Runs `step(i, ctx)` for every step `todo` selects, `parallelism` at a time, pass after
    /// pass until none is selected; `pass()` runs before each pass and makes its context (a
    /// fresh view of the cluster). A failed step stays selected for the next pass, unless the
    /// step itself records that it gave up.
    pub async fn passes<C, P, PF, S, SF>(
        &self,
        parallelism: usize,
        todo: impl Fn(&T) -> bool,
        mut pass: P,
        step: S,
    ) -> Result<(), JobError>
    where
        P: FnMut() -> PF,
        PF: Future<Output = Result<C, JobError>>,
        S: Fn(usize, Arc<C>) -> SF,
        SF: Future<Output = Result<(), JobError>>,
    {
        loop {
            self.check()?;
            let steps: Vec<usize> = {
                let w = self.work.lock();
                (0..w.plan.len()).filter(|i| todo(&w.plan[*i])).collect()
            };
            if steps.is_empty() {
                return Ok(());
            }
            let ctx = Arc::new(pass().await?);
            let step = &step;
            let failures: Vec<JobError> = futures::stream::iter(steps)
                .map(|i| {
                    let ctx = ctx.clone();
                    async move {
                        tokio::select! {
                            _ = self.cancel.cancelled() => Err(self.stopped()),
                            r = step(i, ctx) => r,
                        }
                    }
                })
                .buffer_unordered(parallelism.max(1))
                .filter_map(|r| async move { r.err() })
                .collect()
                .await;
            self.check()?;
            match failures.first() {
                Some(first) => {
                    let msg = format!("{} step(s) failed, retrying: {first}", failures.len());
                    tracing::warn!(job = self.driver.table.as_str(), id = %self.id, "{msg}");
                    self.work.lock().waiting = Some(msg);
                    tokio::select! {
                        _ = self.cancel.cancelled() => {}
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
                None => self.work.lock().waiting = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_rounds_to_one_decimal_and_has_no_eta_before_the_first_step_or_after_the_last() {
        let t = Instant::now();
        assert_eq!(fraction(0, 0, t), (100.0, None));
        assert_eq!(fraction(0, 3, t), (0.0, None));
        assert_eq!(fraction(1, 3, t).0, 33.3);
        assert!(fraction(1, 3, t).1.is_some());
        assert_eq!(fraction(3, 3, t), (100.0, None));
    }
}
