//! The pairdb error codes of SPEC §5 and their single mapping to gRPC.
//!
//! Every error that crosses a gRPC boundary becomes a `tonic::Status` whose details carry a
//! `google.rpc.ErrorInfo` with `reason` = the code name, `domain` = [`ERROR_DOMAIN`] and
//! `metadata["code"]` = the numeric code. [`Error::to_status`] is the one exhaustive match that
//! does it; [`Error::from_status`] reverses it on the client side.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::pb;

/// `ErrorInfo.domain` of every pairdb error.
pub const ERROR_DOMAIN: &str = "pairdb.io";

/// Numeric pairdb error codes (SPEC §5). 1xxx: the request is wrong; 2xxx: the system could not serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    InvalidArgument = 1000,
    KeyNotFound = 1001,
    KeyTooLarge = 1002,
    ValueTooLarge = 1003,
    InvalidTenant = 1004,
    InvalidKey = 1005,
    ChecksumFailed = 1006,
    TenantNotFound = 1007,
    InvalidContext = 1008,
    Unauthenticated = 1009,
    PermissionDenied = 1010,
    Internal = 2000,
    QuorumNotMet = 2001,
    DiskFull = 2002,
    DiskThrottled = 2003,
    NodeNotReady = 2004,
    TopologyConflict = 2005,
    Overloaded = 2006,
    Timeout = 2007,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidArgument,
        ErrorCode::KeyNotFound,
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::InvalidTenant,
        ErrorCode::InvalidKey,
        ErrorCode::ChecksumFailed,
        ErrorCode::TenantNotFound,
        ErrorCode::InvalidContext,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::Internal,
        ErrorCode::QuorumNotMet,
        ErrorCode::DiskFull,
        ErrorCode::DiskThrottled,
        ErrorCode::NodeNotReady,
        ErrorCode::TopologyConflict,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
    ];

    /// The numeric code (`metadata["code"]`).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The code name (`ErrorInfo.reason`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::KeyNotFound => "KEY_NOT_FOUND",
            ErrorCode::KeyTooLarge => "KEY_TOO_LARGE",
            ErrorCode::ValueTooLarge => "VALUE_TOO_LARGE",
            ErrorCode::InvalidTenant => "INVALID_TENANT",
            ErrorCode::InvalidKey => "INVALID_KEY",
            ErrorCode::ChecksumFailed => "CHECKSUM_FAILED",
            ErrorCode::TenantNotFound => "TENANT_NOT_FOUND",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::QuorumNotMet => "QUORUM_NOT_MET",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::DiskThrottled => "DISK_THROTTLED",
            ErrorCode::NodeNotReady => "NODE_NOT_READY",
            ErrorCode::TopologyConflict => "TOPOLOGY_CONFLICT",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::Timeout => "TIMEOUT",
        }
    }

    /// The gRPC status code this pairdb code travels as.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::KeyTooLarge
            | ErrorCode::ValueTooLarge
            | ErrorCode::InvalidTenant
            | ErrorCode::InvalidKey
            | ErrorCode::InvalidContext => Code::InvalidArgument,
            ErrorCode::KeyNotFound | ErrorCode::TenantNotFound => Code::NotFound,
            ErrorCode::ChecksumFailed => Code::DataLoss,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::Internal => Code::Internal,
            ErrorCode::QuorumNotMet | ErrorCode::DiskThrottled | ErrorCode::NodeNotReady => {
                Code::Unavailable
            }
            ErrorCode::DiskFull | ErrorCode::Overloaded => Code::ResourceExhausted,
            ErrorCode::TopologyConflict => Code::FailedPrecondition,
            ErrorCode::Timeout => Code::DeadlineExceeded,
        }
    }

    /// Looks a code up by its name.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Looks a code up by its number.
    pub fn from_number(n: u32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.number() == n)
    }
}

/// A pairdb error: what went wrong, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("key not found")]
    KeyNotFound,
    #[error("key too large: {0}")]
    KeyTooLarge(String),
    #[error("value too large: {0}")]
    ValueTooLarge(String),
    #[error("invalid tenant id: {0}")]
    InvalidTenant(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("checksum failed: {0}")]
    ChecksumFailed(String),
    #[error("tenant not found: {0}")]
    TenantNotFound(String),
    #[error("invalid context: {0}")]
    InvalidContext(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("quorum not met: {0}")]
    QuorumNotMet(String),
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("disk throttled: {0}")]
    DiskThrottled(String),
    #[error("node not ready: {0}")]
    NodeNotReady(String),
    #[error("topology conflict: {0}")]
    TopologyConflict(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("timeout: {0}")]
    Timeout(String),
}

impl Error {
    /// The pairdb code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::KeyNotFound => ErrorCode::KeyNotFound,
            Error::KeyTooLarge(_) => ErrorCode::KeyTooLarge,
            Error::ValueTooLarge(_) => ErrorCode::ValueTooLarge,
            Error::InvalidTenant(_) => ErrorCode::InvalidTenant,
            Error::InvalidKey(_) => ErrorCode::InvalidKey,
            Error::ChecksumFailed(_) => ErrorCode::ChecksumFailed,
            Error::TenantNotFound(_) => ErrorCode::TenantNotFound,
            Error::InvalidContext(_) => ErrorCode::InvalidContext,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::Internal(_) => ErrorCode::Internal,
            Error::QuorumNotMet(_) => ErrorCode::QuorumNotMet,
            Error::DiskFull(_) => ErrorCode::DiskFull,
            Error::DiskThrottled(_) => ErrorCode::DiskThrottled,
            Error::NodeNotReady(_) => ErrorCode::NodeNotReady,
            Error::TopologyConflict(_) => ErrorCode::TopologyConflict,
            Error::Overloaded(_) => ErrorCode::Overloaded,
            Error::Timeout(_) => ErrorCode::Timeout,
        }
    }

    /// Builds the error for `code` with `message` (the inverse of [`Error::code`]).
    pub fn from_code(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::InvalidArgument => Error::InvalidArgument(message),
            ErrorCode::KeyNotFound => Error::KeyNotFound,
            ErrorCode::KeyTooLarge => Error::KeyTooLarge(message),
            ErrorCode::ValueTooLarge => Error::ValueTooLarge(message),
            ErrorCode::InvalidTenant => Error::InvalidTenant(message),
            ErrorCode::InvalidKey => Error::InvalidKey(message),
            ErrorCode::ChecksumFailed => Error::ChecksumFailed(message),
            ErrorCode::TenantNotFound => Error::TenantNotFound(message),
            ErrorCode::InvalidContext => Error::InvalidContext(message),
            ErrorCode::Unauthenticated => Error::Unauthenticated(message),
            ErrorCode::PermissionDenied => Error::PermissionDenied(message),
            ErrorCode::Internal => Error::Internal(message),
            ErrorCode::QuorumNotMet => Error::QuorumNotMet(message),
            ErrorCode::DiskFull => Error::DiskFull(message),
            ErrorCode::DiskThrottled => Error::DiskThrottled(message),
            ErrorCode::NodeNotReady => Error::NodeNotReady(message),
            ErrorCode::TopologyConflict => Error::TopologyConflict(message),
            ErrorCode::Overloaded => Error::Overloaded(message),
            ErrorCode::Timeout => Error::Timeout(message),
        }
    }

    /// The gRPC status for this error, with the `ErrorInfo` detail.
    pub fn to_status(&self) -> Status {
        self.to_status_with(HashMap::new())
    }

    /// Like [`Error::to_status`], adding `extra` entries to the `ErrorInfo` metadata
    /// (for example the causal context of a NOT_FOUND read).
    pub fn to_status_with(&self, mut extra: HashMap<String, String>) -> Status {
        let code = self.code();
        extra.insert("code".to_string(), code.number().to_string());
        Status::with_error_details(
            code.grpc_code(),
            self.to_string(),
            ErrorDetails::with_error_info(code.name(), ERROR_DOMAIN, extra),
        )
    }

    /// Recovers a pairdb error from a status, using its `ErrorInfo` when present and the
    /// gRPC code otherwise (a status from a proxy or a transport failure has no details).
    pub fn from_status(status: &Status) -> Error {
        if let Some(info) = status.get_details_error_info()
            && info.domain == ERROR_DOMAIN
            && let Some(code) = ErrorCode::from_name(&info.reason)
        {
            return Error::from_code(code, status.message().to_string());
        }
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(message),
            Code::NotFound => Error::KeyNotFound,
            Code::DataLoss => Error::ChecksumFailed(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::DeadlineExceeded | Code::Cancelled => Error::Timeout(message),
            Code::ResourceExhausted => Error::Overloaded(message),
            Code::Unavailable => Error::NodeNotReady(message),
            Code::FailedPrecondition | Code::Aborted => Error::TopologyConflict(message),
            Code::Ok
            | Code::Unknown
            | Code::AlreadyExists
            | Code::Unimplemented
            | Code::Internal => Error::Internal(format!("{}: {message}", status.code())),
        }
    }

    /// The per-item form used inside batch responses.
    pub fn to_item(&self) -> pb::ItemError {
        let code = self.code();
        pb::ItemError {
            code: code.number(),
            reason: code.name().to_string(),
            message: self.to_string(),
        }
    }

    /// Reverses [`Error::to_item`]; an unknown code becomes INTERNAL.
    pub fn from_item(item: &pb::ItemError) -> Error {
        match ErrorCode::from_number(item.code) {
            Some(code) => Error::from_code(code, item.message.clone()),
            None => Error::Internal(format!(
                "unknown error code {}: {}",
                item.code, item.message
            )),
        }
    }
}

/// Result alias for pairdb-common.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_status() {
        for code in ErrorCode::ALL {
            let err = Error::from_code(code, "m".into());
            assert_eq!(err.code(), code);
            let status = err.to_status();
            assert_eq!(status.code(), code.grpc_code());
            let info = status.get_details_error_info().expect("error info detail");
            assert_eq!(info.reason, code.name());
            assert_eq!(info.metadata["code"], code.number().to_string());
            assert_eq!(Error::from_status(&status).code(), code);
            assert_eq!(Error::from_item(&err.to_item()).code(), code);
        }
    }

    #[test]
    fn documented_grpc_codes() {
        assert_eq!(ErrorCode::KeyNotFound.grpc_code(), Code::NotFound);
        assert_eq!(ErrorCode::ChecksumFailed.grpc_code(), Code::DataLoss);
        assert_eq!(ErrorCode::QuorumNotMet.grpc_code(), Code::Unavailable);
        assert_eq!(ErrorCode::DiskFull.grpc_code(), Code::ResourceExhausted);
        assert_eq!(ErrorCode::DiskThrottled.grpc_code(), Code::Unavailable);
        assert_eq!(ErrorCode::KeyNotFound.number(), 1001);
        assert_eq!(ErrorCode::Timeout.number(), 2007);
    }

    #[test]
    fn status_without_details_maps_by_grpc_code() {
        let s = Status::unavailable("connection refused");
        assert_eq!(Error::from_status(&s).code(), ErrorCode::NodeNotReady);
        let s = Status::internal("boom");
        assert_eq!(Error::from_status(&s).code(), ErrorCode::Internal);
    }
}
