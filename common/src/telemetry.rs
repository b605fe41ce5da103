//! Logging set-up shared by the binaries: `tracing` to stderr, text or JSON, filtered by
//! `RUST_LOG` (default `info`), and the audit trail.

use tracing_subscriber::EnvFilter;

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
