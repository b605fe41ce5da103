//! Logging set-up shared by the binaries: `tracing` to stderr, text or JSON, filtered by
//! `RUST_LOG` (default `info`), the audit trail, and (with an OTLP endpoint) spans exported
//! as OpenTelemetry traces (`crate::otel`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The `tracing` target of audit lines. It is always enabled at INFO, whatever `RUST_LOG`
/// says, so quieting the logs never silences the audit trail.
pub const AUDIT_TARGET: &str = "pairdb_audit";

/// Installs the global subscriber once; later calls are no-ops (tests start many servers).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = match format!("{AUDIT_TARGET}=info").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// What `init` set up; `shutdown` flushes the spans not yet exported.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (at process exit).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "OpenTelemetry shutdown");
        }
    }
}

/// Log lines to stderr, text or JSON, for any subscriber stack.
fn fmt_layer<S>(json: bool, ansi: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    }
}

/// The binaries' set-up: logs as [`init_logging`], plus OpenTelemetry export of the trace
/// spans (target [`crate::otel::TARGET`], whatever `RUST_LOG` says) as `service` when an
/// OTLP endpoint is configured. Call inside the Tokio runtime.
pub fn init(json: bool, service: &'static str) -> Telemetry {
    let filter = || {
        let mut f = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        for d in [
            format!("{AUDIT_TARGET}=info"),
            format!("{}=off", crate::otel::TARGET),
        ] {
            if let Ok(d) = d.parse() {
                f = f.add_directive(d);
            }
        }
        f
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (provider, failed) = match crate::otel::endpoint() {
        None => (None, None),
        Some(ep) => match crate::otel::provider(&ep, service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
    };
    // Without an exporter the log filter is global, so the trace spans (off for logs) are
    // never built; with one, each layer has its own filter (an `Option` layer would count as
    // interested in every span and build them all).
    let _ = match &provider {
        Some(p) => {
            let targets = tracing_subscriber::filter::Targets::new()
                .with_target(crate::otel::TARGET, tracing::Level::INFO);
            let otel = crate::otel::layer(p, service).with_filter(targets);
            tracing_subscriber::registry()
                .with(fmt_layer(json, ansi).with_filter(filter()))
                .with(otel)
                .try_init()
        }
        None => tracing_subscriber::registry()
            .with(filter())
            .with(fmt_layer(json, ansi))
            .try_init(),
    };
    if let Some(e) = failed {
        tracing::error!(error = %e, "OpenTelemetry export not started");
    } else if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// One audit line: who (token id or certificate subject), from where, what (the method and
/// the request, never a secret), and how it ended (`ok` or the error code and message).
pub fn audit(caller: &str, peer: &str, action: &str, request: &str, outcome: &str) {
    tracing::info!(
        target: AUDIT_TARGET,
        caller,
        peer,
        action,
        request,
        outcome,
        "audit"
    );
}

/// At most one log line per `interval` from one call site, for errors that repeat once per
/// request while a condition lasts (a full disk refuses every write batch; a hostile peer can
/// send the same forged input all day): the first occurrence is logged at once, the next ones
/// are counted and the count is carried by the next line that passes. Metrics count every
/// occurrence; the log only has to say the condition is there.
///
/// ```
/// static COMMIT_FAILED: pairdb_common::telemetry::LogEvery =
///     pairdb_common::telemetry::LogEvery::new(std::time::Duration::from_secs(10));
/// if let Some(suppressed) = COMMIT_FAILED.allow() {
///     tracing::error!(suppressed, "commit failed");
/// }
/// ```
pub struct LogEvery {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] at the last line logged, plus one (0 = never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

/// The process's monotonic epoch for [`LogEvery`].
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl LogEvery {
    pub const fn new(interval: std::time::Duration) -> LogEvery {
        LogEvery {
            interval_ms: interval.as_millis() as u64,
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many were not since the
    /// last line; `None` when it is only counted.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.interval_ms) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One thread wins the interval; the others count themselves suppressed.
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::LogEvery;
    use std::time::Duration;

    #[test]
    fn log_every_passes_the_first_then_counts_until_the_interval_ends() {
        let l = LogEvery::new(Duration::from_millis(200));
        assert_eq!(l.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            l.allow(),
            Some(5),
            "the next line carries the suppressed count"
        );
        assert_eq!(l.allow(), None);
    }

    #[test]
    fn log_every_lets_one_thread_through_per_interval() {
        let l = LogEvery::new(Duration::from_secs(60));
        let passed: usize = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| l.allow().is_some()).count()))
                .collect();
            racers.into_iter().map(|t| t.join().unwrap_or(0)).sum()
        });
        assert_eq!(passed, 1);
    }
}
