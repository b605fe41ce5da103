//! pairdb-common: everything both services share.
//!
//! - [`api`]: generated prost/tonic types of `proto/` (the only module that knows the wire).
//! - [`version`]: the dotted-version-vector algebra (dots, contexts, key states, merge).
//! - [`convert`]: domain types ⇄ wire types, in one place.
//! - [`error`]: the SPEC §5 error codes and their one mapping to `tonic::Status`.
//! - [`validate`]: input validation of tenants, keys, values and contexts.
//! - [`framing`]: the persisted record format (format byte + CRC32).
//! - [`token`]: key encoding and the stable 64-bit key token; token ranges.
//! - [`telemetry`]: logging set-up shared by the binaries.
//! - [`tls`]: TLS on every port, certificate reload, roles in certificates; [`auth`]: bearer tokens.

pub mod api;
pub mod auth;
pub mod backup;
pub mod client;
pub mod context;
pub mod convert;
pub mod error;
pub mod failpoint;
pub mod framing;
pub mod grpc;
pub mod otel;
pub mod probes;
pub mod process;
pub mod ring;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod validate;
pub mod version;
pub mod worker;

pub use error::{Error, ErrorCode};

/// Milliseconds since the Unix epoch (wall clock; used only for `written_at_ms`, TTL and LWW;
/// the simulated clock when a [`sim::Simulation`] is installed).
pub fn now_ms() -> u64 {
    if let Some(sim) = sim::active() {
        return sim.now_ms();
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
