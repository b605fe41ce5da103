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
