//! Per-tenant request rates (`rate_limit_rps`): a token bucket per tenant on each coordinator,
//! refilled at the tenant's rate and holding at most one second of it, so a tenant driven
//! above its rate gets RESOURCE_EXHAUSTED / OVERLOADED for the excess while every other tenant
//! is untouched. The limit is per coordinator (N coordinators admit up to N × the rate); no
//! shared state is consulted on the data path. (The server-wide concurrency limit is
//! `pairdb_common::grpc::AdmissionLayer`; owned tasks are bounded in `data.rs`.)

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::meta::TenantRecord;
use crate::metrics::{Metrics, TenantLabels};

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one request's token from the tenant's bucket, or refuses with OVERLOADED.
    /// Tenants without a rate (0) pass without touching any lock.
    pub fn admit(
        &self,
        tenant: &TenantRecord,
        metrics: &Metrics,
    ) -> Result<(), pairdb_common::Error> {
        self.admit_at(tenant, metrics, Instant::now())
    }

    fn admit_at(
        &self,
        tenant: &TenantRecord,
        metrics: &Metrics,
        now: Instant,
    ) -> Result<(), pairdb_common::Error> {
        let rate = f64::from(tenant.rate_limit_rps);
        if rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(tenant.tenant_id.clone()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        drop(buckets);
        metrics
            .rate_limited
            .get_or_create(&TenantLabels {
                tenant_id: tenant.tenant_id.clone(),
            })
            .inc();
        Err(pairdb_common::Error::Overloaded(format!(
            "tenant {} is over its rate limit of {} requests per second on this coordinator",
            tenant.tenant_id, tenant.rate_limit_rps
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tenant_gets_its_rate_and_no_more_and_others_are_untouched() {
        let limiter = RateLimiter::default();
        let m = Metrics::new();
        let mut limited = TenantRecord::with_defaults("slow");
        limited.rate_limit_rps = 50;
        let free = TenantRecord::with_defaults("free");
        let t0 = Instant::now();
        // 500 requests spread over one second: the bucket starts full (50) and refills 50/s.
        let mut ok = 0;
        for i in 0..500u64 {
            let at = t0 + Duration::from_millis(i * 2);
            if limiter.admit_at(&limited, &m, at).is_ok() {
                ok += 1;
            }
            assert!(limiter.admit_at(&free, &m, at).is_ok());
        }
        assert!((95..=101).contains(&ok), "admitted {ok} of 500");
        let e = limiter
            .admit_at(&limited, &m, t0 + Duration::from_millis(999))
            .unwrap_err();
        assert_eq!(e.code(), pairdb_common::ErrorCode::Overloaded);
    }
}
