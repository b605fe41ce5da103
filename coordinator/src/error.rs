//! The coordinator's error enum and its one mapping to pairdb codes / gRPC status.

use pairdb_common::Error as Common;

use crate::jobs::JobError;
use crate::meta::MetaError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A pairdb error to pass to the client as is (bad input, quorum, not found…).
    #[error(transparent)]
    Pairdb(#[from] Common),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A job (topology change, repair) failed.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl Error {
    /// The pairdb error this becomes on the wire (the one exhaustive match).
    pub fn to_common(&self) -> Common {
        match self {
            Error::Pairdb(e) => e.clone(),
            Error::Meta(MetaError::Conflict(m)) => Common::TopologyConflict(m.clone()),
            Error::Meta(MetaError::NotFound(m)) => {
                Common::InvalidArgument(format!("not found: {m}"))
            }
            Error::Meta(MetaError::Db(m)) => {
                Common::NodeNotReady(format!("metadata store unavailable: {m}"))
            }
            Error::Meta(MetaError::Driver(e)) => {
                Common::NodeNotReady(format!("metadata store unavailable: {e}"))
            }
            Error::Job(JobError::Meta(m)) => Error::Meta(m.clone()).to_common(),
            Error::Job(JobError::Node(c)) => c.to_common(),
            Error::Job(e @ (JobError::LeaseLost | JobError::Precondition(_))) => {
                Common::TopologyConflict(e.to_string())
            }
            Error::Job(e @ JobError::Cancelled) => Common::NodeNotReady(e.to_string()),
            Error::Job(e @ JobError::BadDocument { .. }) => Common::Internal(e.to_string()),
            Error::Meta(MetaError::BadRow(m)) => Common::Internal(format!("metadata store: {m}")),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_common().to_status()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
