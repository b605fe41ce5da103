//! The storage node's error enum and its one mapping to pairdb codes / gRPC status.

use pairdb_common::Error as Common;

use crate::engine::EngineError;

/// What can go wrong on a storage node, grouped by what the caller must tell apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed (bad tenant, key, value, context…).
    #[error(transparent)]
    Invalid(Common),
    /// A stored record failed its checksum or does not decode.
    #[error("record for {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// The disk circuit breaker is engaged: writes are refused.
    #[error("disk circuit breaker engaged: {0}")]
    DiskFull(String),
    /// The disk is past the throttle threshold and the write is too large.
    #[error("disk throttled: {0}")]
    DiskThrottled(String),
    /// The node is in maintenance (drain) mode and refuses client traffic.
    #[error("node is in maintenance mode")]
    Maintenance,
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine takes no writes until the node restarts ([`crate::engine::Engine::failed`]).
    #[error("storage failed, writes refused until the node restarts: {0}")]
    StorageFailed(String),
    /// A limit on the request was exceeded.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl Error {
    /// The pairdb error this becomes on the wire (the one exhaustive match).
    pub fn to_common(&self) -> Common {
        match self {
            Error::Invalid(e) => e.clone(),
            Error::Corrupt { .. } => Common::ChecksumFailed(self.to_string()),
            Error::DiskFull(m) => Common::DiskFull(m.clone()),
            Error::DiskThrottled(m) => Common::DiskThrottled(m.clone()),
            Error::Maintenance => Common::NodeNotReady("node is in maintenance mode".into()),
            Error::Engine(EngineError::Corruption(m)) => Common::ChecksumFailed(m.clone()),
            Error::Engine(EngineError::NoSpace(m)) => Common::DiskFull(m.clone()),
            Error::Engine(EngineError::Io(m)) => Common::Internal(m.clone()),
            Error::StorageFailed(_) => Common::NodeNotReady(self.to_string()),
            Error::Overloaded(m) => Common::Overloaded(m.clone()),
        }
    }
}

impl From<Common> for Error {
    fn from(e: Common) -> Self {
        Error::Invalid(e)
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_common().to_status()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
