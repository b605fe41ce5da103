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

/// The format of the job documents (params, plan, progress) this release writes and the newest
/// it reads. It is stored as `format_version` in each job's `params` (a document without it was
/// written before the field existed: version 1). Fields are only ever added, with defaults, so an
/// older release reads a newer document of the same version; a change an older release could
/// misread takes a new version, which that release refuses ([`JobError::BadDocument`]) instead
/// of driving the job wrongly.
pub const FORMAT_VERSION: u32 = 1;

/// serde default of `format_version`: documents from before the field are version 1.
pub fn format_v1() -> u32 {
    1
}

/// Decodes a persisted JSON document of job `id`; an undecodable one, or one whose
/// `format_version` is newer than [`FORMAT_VERSION`], is [`JobError::BadDocument`].
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &str,
    json: &str,
) -> Result<T, JobError> {
    let bad = |reason: String| JobError::BadDocument {
        what,
        id: id.to_string(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if let Some(found) = v.get("format_version") {
        match found.as_u64() {
            Some(n) if n <= u64::from(FORMAT_VERSION) => {}
            _ => {
                return Err(bad(format!(
                    "format_version {found} was written by a newer release (this one reads up to {FORMAT_VERSION}); finish or abort the job with that release"
                )));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Doc {
        #[serde(default = "format_v1")]
        format_version: u32,
        #[serde(default)]
        x: u32,
    }

    #[test]
    fn documents_without_a_version_are_version_1_and_newer_ones_are_refused() {
        let d: Doc = decode("params", "j1", r#"{"x": 3}"#).unwrap();
        assert_eq!((d.format_version, d.x), (1, 3));
        // Fields this release does not know are ignored (a newer release added them).
        let d: Doc = decode(
            "params",
            "j1",
            r#"{"format_version": 1, "x": 4, "new": true}"#,
        )
        .unwrap();
        assert_eq!(d.x, 4);
        for newer in [r#"{"format_version": 2}"#, r#"{"format_version": "1"}"#] {
            let e = decode::<Doc>("params", "j1", newer).unwrap_err();
            assert!(e.to_string().contains("newer release"), "{e}");
        }
        let plan: Vec<u32> = decode("plan", "j1", "[1, 2]").unwrap();
        assert_eq!(plan, vec![1, 2]);
        assert!(decode::<Vec<u32>>("plan", "j1", "[1,").is_err());
    }
}
