//! What a job can fail with, grouped by what its driver (and an operator) must tell apart.

use crate::meta::MetaError;
use crate::node_call::CallError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Another coordinator took the job over, or an operator aborted it: stop at once, save
    /// nothing more.
    #[error("lost the lease (the job was aborted, or taken over)")]
    LeaseLost,
    /// This coordinator is shutting down; the job resumes elsewhere (or here, after a restart).
    #[error("stopped: the coordinator is shutting down")]
    Cancelled,
    /// A storage node did not answer in time, or refused.
    #[error(transparent)]
    Node(#[from] CallError),
    /// The metadata store failed; the job is retried on the next tick.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A persisted plan, params or progress document does not decode: the job cannot be
    /// resumed safely (never treated as an empty plan).
    #[error("bad {what} document of {id}: {reason}")]
    BadDocument {
        what: &'static str,
        id: String,
        reason: String,
    },
    /// The cluster is not in a state the step can proceed in (a replica down, no live source,
    /// replicas that would not converge); retried on the next pass.
    #[error("{0}")]
    Precondition(String),
}

impl JobError {
    /// Whether the job stopped because it must (lease lost, shutdown), not because it failed.
    pub fn is_stop(&self) -> bool {
        matches!(self, JobError::LeaseLost | JobError::Cancelled)
    }
}

/// Decodes a persisted JSON document of job `id`; an undecodable one is
/// [`JobError::BadDocument`].
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &str,
    json: &str,
) -> Result<T, JobError> {
    serde_json::from_str(json).map_err(|e| JobError::BadDocument {
        what,
        id: id.to_string(),
        reason: e.to_string(),
    })
}
