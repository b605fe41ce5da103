//! One way for background work (jobs, repair, identity checks) to call a storage node: a
//! deadline per call and a failure that names the call, the node and what went wrong, typed by
//! what the caller must tell apart. The data path does not use this: its replica calls go
//! through the batcher with the request's own deadline.

use std::future::Future;
use std::time::Duration;

use pairdb_common::Error as E;
use pairdb_common::api::pb;
use tokio_util::sync::CancellationToken;

use crate::cluster::NodeEntry;

/// Deadline of one call from background work.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence from a range pull before it is abandoned (and resumed).
pub const PULL_IDLE: Duration = Duration::from_secs(120);

/// Why a call to a storage node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{what} on {node} timed out after {secs} s")]
    Timeout {
        what: &'static str,
        node: String,
        secs: u64,
    },
    /// The node answered with an error.
    #[error("{what} on {node}: {error}")]
    Refused {
        what: &'static str,
        node: String,
        error: E,
    },
    /// The node's answer does not fit the request (a stream that ended early, counts that do
    /// not match).
    #[error("{what} on {node}: {detail}")]
    BadAnswer {
        what: &'static str,
        node: String,
        detail: String,
    },
    /// The caller was cancelled mid-call.
    #[error("{what} on {node} cancelled")]
    Cancelled { what: &'static str, node: String },
}

impl CallError {
    pub fn bad_answer(what: &'static str, node: &NodeEntry, detail: impl Into<String>) -> Self {
        CallError::BadAnswer {
            what,
            node: node.record.node_id.clone(),
            detail: detail.into(),
        }
    }

    /// The pairdb error this is, for the one mapping to codes (`crate::error`).
    pub fn to_common(&self) -> E {
        match self {
            CallError::Timeout { .. } => E::Timeout(self.to_string()),
            CallError::Refused { error, .. } => error.clone(),
            CallError::BadAnswer { .. } => E::Internal(self.to_string()),
            CallError::Cancelled { .. } => E::NodeNotReady(self.to_string()),
        }
    }
}

/// Runs one unary call to `node` (`what` names it in errors) within `timeout`.
pub async fn call<T>(
    node: &NodeEntry,
    what: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(CallError::Timeout {
            what,
            node: node.record.node_id.clone(),
            secs: timeout.as_secs(),
        }),
        Ok(Err(s)) => Err(CallError::Refused {
            what,
            node: node.record.node_id.clone(),
            error: E::from_status(&s),
        }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Has `dst` pull what `req` names (the source is in the request) and waits for its last
/// batch, reporting each progress message to `on`; gives up after [`PULL_IDLE`] of silence or
/// when `cancel` fires.
pub async fn pull(
    dst: &NodeEntry,
    req: pb::PullRangeRequest,
    cancel: &CancellationToken,
    mut on: impl FnMut(&pb::PullProgress),
) -> Result<pb::PullProgress, CallError> {
    const WHAT: &str = "range pull";
    let node = || dst.record.node_id.clone();
    let mut client = dst.client.clone();
    let mut stream = tokio::select! {
        _ = cancel.cancelled() => return Err(CallError::Cancelled { what: WHAT, node: node() }),
        r = call(dst, WHAT, RPC_TIMEOUT, client.pull_range(req)) => r?,
    };
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Err(CallError::Cancelled { what: WHAT, node: node() }),
            m = tokio::time::timeout(PULL_IDLE, stream.message()) => m,
        };
        match msg {
            Err(_) => {
                return Err(CallError::Timeout {
                    what: WHAT,
                    node: node(),
                    secs: PULL_IDLE.as_secs(),
                });
            }
            Ok(Err(s)) => {
                return Err(CallError::Refused {
                    what: WHAT,
                    node: node(),
                    error: E::from_status(&s),
                });
            }
            Ok(Ok(None)) => {
                return Err(CallError::bad_answer(
                    WHAT,
                    dst,
                    "the stream ended before its last batch",
                ));
            }
            Ok(Ok(Some(p))) => {
                on(&p);
                if p.done {
                    return Ok(p);
                }
            }
        }
    }
}

/// The `PullRangeRequest` fields naming `src` as the source.
pub fn source_of(src: &NodeEntry) -> (String, String) {
    (
        format!("{}:{}", src.record.host, src.record.port),
        src.record.node_id.clone(),
    )
}
