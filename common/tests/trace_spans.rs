//! Without an OTLP endpoint the trace spans (target `pairdb_trace`) are disabled, so the
//! request path does not build spans nobody exports (an `Option` layer once made them live);
//! log spans still work.
#![allow(clippy::unwrap_used)]

#[test]
fn trace_spans_cost_nothing_without_an_exporter() {
    assert!(
        pairdb_common::otel::endpoint().is_none(),
        "run without OTEL_EXPORTER_OTLP_ENDPOINT"
    );
    let t = pairdb_common::telemetry::init(false, "test");
    assert!(!t.exporting());
    let trace = tracing::info_span!(target: "pairdb_trace", "replica_call");
    assert!(
        trace.is_disabled(),
        "a trace span was built with no exporter"
    );
    let log = tracing::error_span!("some_log_context");
    assert!(!log.is_disabled(), "log spans must stay enabled");
}
