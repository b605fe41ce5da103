//! Cluster-wide gauges for alerting, refreshed by the `cluster-gauges` worker every
//! [`GAUGE_INTERVAL`] from the metadata store and the ring, so a scrape never waits on the
//! metadata store: pending hints (count, bytes, oldest age), per tenant the ranges below its
//! write quorum and its RF (`crate::replication`), running jobs by kind and how long each kind
//! has gone without progress, and whether the metadata store answered. Every coordinator
//! exports the same cluster-wide values; alert rules take `max` over coordinators.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::data::DataPlane;
use crate::meta::{ChangeStatus, MetaResult, MetaStore};
use crate::metrics::{KindLabels, TenantLabels};

pub const GAUGE_INTERVAL: Duration = Duration::from_secs(10);

/// The `kind` label values of the job gauges.
pub const JOB_KINDS: [&str; 5] = ["bootstrap", "decommission", "replace", "cleanup", "repair"];

/// Each running job's last progress document and when it last changed.
type Seen = HashMap<String, (String, Instant)>;

/// The `cluster-gauges` worker.
pub async fn run(d: Arc<DataPlane>, meta: Arc<dyn MetaStore>, cancel: CancellationToken) {
    let seen = Arc::new(parking_lot::Mutex::new(Seen::new()));
    pairdb_common::worker::every(GAUGE_INTERVAL, &cancel, || {
        let (d, meta, seen) = (d.clone(), meta.clone(), seen.clone());
        async move {
            let r = tokio::time::timeout(GAUGE_INTERVAL, refresh(&d, meta.as_ref(), &seen)).await;
            d.metrics
                .metadata_store_up
                .set(i64::from(matches!(r, Ok(Ok(())))));
            if let Ok(Err(e)) = r {
                tracing::debug!(error = %e, "cluster gauges not refreshed");
            }
        }
    })
    .await;
}

async fn refresh(
    d: &DataPlane,
    meta: &dyn MetaStore,
    seen: &parking_lot::Mutex<Seen>,
) -> MetaResult<()> {
    let m = &d.metrics;
    // Hints are stamped by the store's clock; their age is read by it too.
    let now_ms = meta.clock_ms().await?;

    let targets = meta.hint_targets().await?;
    m.hints_pending
        .set(targets.iter().map(|t| t.pending).sum::<u64>() as i64);
    m.hints_pending_bytes
        .set(targets.iter().map(|t| t.bytes).sum::<u64>() as i64);
    let oldest = targets
        .iter()
        .filter(|t| t.pending > 0)
        .map(|t| t.oldest_created_at_ms)
        .min();
    m.hints_oldest_age_seconds
        .set(oldest.map_or(0, |o| now_ms.saturating_sub(o) / 1000) as i64);

    let tenants = meta.list_tenants().await?;
    let snap = d.cluster.snapshot();
    let live = crate::replication::live_normal(&snap);
    m.ranges_below_quorum.clear();
    m.ranges_below_replication_factor.clear();
    for t in crate::replication::tenant_coverage(&snap.ring, &tenants, &live) {
        let labels = TenantLabels {
            tenant_id: t.tenant_id,
        };
        m.ranges_below_quorum
            .get_or_create(&labels)
            .set(i64::from(t.ranges_below_quorum));
        m.ranges_below_replication_factor
            .get_or_create(&labels)
            .set(i64::from(t.ranges_below_replication_factor));
    }

    let mut running: Vec<(&'static str, String, String)> = meta
        .list_changes(false)
        .await?
        .into_iter()
        .filter(|c| c.status == ChangeStatus::Running)
        .map(|c| (c.kind.as_str(), c.change_id, c.progress))
        .collect();
    running.extend(
        meta.list_repairs(20)
            .await?
            .into_iter()
            .filter(|r| r.status == "running")
            .map(|r| ("repair", r.repair_id, r.progress)),
    );
    let stalls = stalls(&mut seen.lock(), running, Instant::now());
    // Every kind, running or not, so a dashboard shows 0 rather than nothing.
    for kind in JOB_KINDS {
        let (count, stalled) = stalls.get(kind).copied().unwrap_or_default();
        let labels = KindLabels { kind };
        m.jobs_running.get_or_create(&labels).set(count);
        m.job_seconds_since_progress
            .get_or_create(&labels)
            .set(stalled.as_secs() as i64);
    }
    Ok(())
}

/// Per kind: running jobs, and the longest any of them has gone without its progress
/// document changing. `seen` keeps only the jobs still running.
fn stalls(
    seen: &mut Seen,
    running: Vec<(&'static str, String, String)>,
    now: Instant,
) -> HashMap<&'static str, (i64, Duration)> {
    let mut out: HashMap<&'static str, (i64, Duration)> = HashMap::new();
    let mut keep = Seen::new();
    for (kind, id, progress) in running {
        let since = match seen.remove(&id) {
            Some((p, at)) if p == progress => at,
            _ => now,
        };
        let e = out.entry(kind).or_default();
        e.0 += 1;
        e.1 = e.1.max(now.duration_since(since));
        keep.insert(id, (progress, since));
    }
    *seen = keep;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_whose_progress_stands_still_stalls_and_one_that_moves_does_not() {
        let mut seen = Seen::new();
        let t0 = Instant::now();
        let job = |id: &str, p: &str| ("bootstrap", id.to_string(), p.to_string());
        stalls(&mut seen, vec![job("a", "1"), job("b", "1")], t0);
        let later = t0 + Duration::from_secs(60);
        let s = stalls(&mut seen, vec![job("a", "1"), job("b", "2")], later);
        assert_eq!(
            s["bootstrap"],
            (2, Duration::from_secs(60)),
            "a stood still"
        );
        let s = stalls(
            &mut seen,
            vec![job("b", "2")],
            later + Duration::from_secs(5),
        );
        assert_eq!(s["bootstrap"], (1, Duration::from_secs(5)));
        assert_eq!(seen.len(), 1, "finished jobs are forgotten");
    }
}
