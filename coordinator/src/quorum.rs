//! Quorum fan-out: one replica call per target, all at once, each under its own timeout.
//!
//! The contract, which the write and the read paths both rely on:
//! - **Targets** are `(node, counts)`: a call to a target that does not count (a pending
//!   replica of a topology change) runs like the others but never counts toward the quorum.
//!   A target whose node does not serve clients (down, drained, or in maintenance:
//!   `NodeEntry::serves_clients`) is not called; it answers a miss at once.
//! - **Per call**: each call is bounded by the per-call timeout; a timeout or an
//!   `UNAVAILABLE` is a transport failure and counts against the node's health, any answer
//!   counts for it. Each call's latency is observed under the fan-out's operation name.
//! - [`FanOut::gather`]`(required, deadline)` returns once `required` counting targets
//!   answered `Ok` (the quorum is met), every call finished, or the deadline passed,
//!   whichever is first, with every reply it consumed: the acknowledgements and the misses.
//!   Calls still running are **the rest**: they stay in the fan-out, and its owner drains them
//!   with [`FanOut::next`] (hints, read repair); dropping the fan-out cancels them.
//!
//! [`fan_out`] starts the calls, each one future in place (no box per call).
//!
//! The fan-out never retries and never decides what a reply means beyond ack or miss: the
//! caller's call closure turns a replica's answer into `Ok(T)` or a [`Miss`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::cluster::NodeEntry;
use crate::metrics::{Metrics, OpLabels};

/// Why one replica call gave no usable answer.
#[derive(Debug, Clone)]
pub struct Miss {
    /// The node did not answer (timeout, `UNAVAILABLE`): counts against its health.
    pub transport: bool,
    /// The node answered that its copy is corrupt (`DATA_LOSS`).
    pub data_loss: bool,
    pub message: String,
}

impl Miss {
    /// A miss that says nothing about the node's reachability.
    pub fn refused(message: impl Into<String>) -> Miss {
        Miss {
            transport: false,
            data_loss: false,
            message: message.into(),
        }
    }

    /// A replica's error status, classified.
    pub fn status(s: &tonic::Status) -> Miss {
        Miss {
            transport: s.code() == tonic::Code::Unavailable,
            data_loss: s.code() == tonic::Code::DataLoss,
            message: s.message().to_string(),
        }
    }

    fn timed_out() -> Miss {
        Miss {
            transport: true,
            data_loss: false,
            message: "timed out".into(),
        }
    }
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One target's reply.
pub struct Reply<T> {
    pub node: Arc<NodeEntry>,
    /// Whether this target counts toward the quorum.
    pub counts: bool,
    pub result: Result<T, Miss>,
}

impl<T> Reply<T> {
    /// Whether this reply is an acknowledgement that counts toward the quorum.
    pub fn is_ack(&self) -> bool {
        self.counts && self.result.is_ok()
    }

    /// `node: why`, for error messages.
    pub fn describe_miss(&self) -> Option<String> {
        self.result
            .as_ref()
            .err()
            .map(|m| format!("{}: {m}", self.node.record.node_id))
    }
}

/// What [`FanOut::gather`] saw before it returned.
pub struct Gathered<T> {
    /// Every reply consumed, in arrival order.
    pub replies: Vec<Reply<T>>,
    /// How many of them are acknowledgements that count.
    pub acks: usize,
    /// The deadline passed before the quorum was met and before every call finished.
    pub timed_out: bool,
}

impl<T> Gathered<T> {
    /// `node: why` for each miss of a target that counts, for error messages.
    pub fn misses(&self) -> Vec<String> {
        self.replies
            .iter()
            .filter(|r| r.counts)
            .filter_map(Reply::describe_miss)
            .collect()
    }
}

/// Settings every call of one fan-out shares.
#[derive(Clone)]
pub struct CallSettings {
    /// Timeout of each replica call.
    pub per_call: Duration,
    /// Consecutive transport failures after which a node is marked down.
    pub down_after_misses: u32,
    /// Operation name of the replica-latency histogram.
    pub op: &'static str,
    pub metrics: Arc<Metrics>,
}

/// Replica calls in flight (see the module docs for the contract); `C` is the type of one
/// call (each is one future in place, not a boxed one).
pub struct FanOut<C> {
    calls: FuturesUnordered<C>,
}

/// Runs one replica call under the per-call part of the contract: bounded by the per-call
/// timeout, its latency observed and the node's health updated. Unlike a fan-out, it calls a
/// node marked down too (the write's coordinating replica tries every node in turn).
pub async fn call_one<T, Fut>(
    node: Arc<NodeEntry>,
    settings: &CallSettings,
    call: Fut,
) -> Result<T, Miss>
where
    Fut: Future<Output = Result<T, Miss>>,
{
    use tracing::Instrument;
    let span = tracing::info_span!(
        target: pairdb_common::otel::TARGET,
        "replica_call",
        node_id = %node.record.node_id,
        op = settings.op,
    );
    // tokio's clock: the simulation's in a simulation, so the latency a node is judged by
    // (`Health::observe_latency`) replays with the seed.
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(settings.per_call, call.instrument(span)).await {
        Ok(r) => r,
        Err(_) => Err(Miss::timed_out()),
    };
    let took = started.elapsed();
    settings
        .metrics
        .replica_latency
        .get_or_create(&OpLabels { op: settings.op })
        .observe(took.as_secs_f64());
    // Answers and timeouts measure the node; a refusal or a reset says nothing of its speed.
    if result.is_ok() || took >= settings.per_call {
        node.health.observe_latency(took);
    }
    match &result {
        Ok(_) => node.health.record_success(),
        Err(m) if m.transport => node.health.record_failure(settings.down_after_misses),
        Err(_) => {}
    }
    result
}

/// Starts one call per target; `call` builds a target's call.
pub fn fan_out<T, I, F, Fut>(
    targets: I,
    settings: &CallSettings,
    call: F,
) -> FanOut<impl Future<Output = Reply<T>> + Send + use<T, I, F, Fut>>
where
    I: IntoIterator<Item = (Arc<NodeEntry>, bool)>,
    F: Fn(Arc<NodeEntry>) -> Fut,
    Fut: Future<Output = Result<T, Miss>> + Send,
    T: Send,
{
    let calls = targets
        .into_iter()
        .map(|(node, counts)| {
            let fut = call(node.clone());
            let settings = settings.clone();
            async move {
                let result = if node.serves_clients() {
                    call_one(node.clone(), &settings, fut).await
                } else if node.health.is_available() {
                    Err(Miss::refused("node is drained or in maintenance"))
                } else {
                    Err(Miss::refused("node is down"))
                };
                Reply {
                    node,
                    counts,
                    result,
                }
            }
        })
        .collect();
    FanOut { calls }
}

impl<T, C: Future<Output = Reply<T>>> FanOut<C> {
    /// The next reply of the calls still running, `None` when all have finished.
    pub async fn next(&mut self) -> Option<Reply<T>> {
        self.calls.next().await
    }

    /// Calls still running.
    pub fn running(&self) -> usize {
        self.calls.len()
    }

    /// Collects replies until `required` acknowledgements, every call finished, or
    /// `deadline` (see the module docs).
    pub async fn gather(&mut self, required: usize, deadline: tokio::time::Instant) -> Gathered<T> {
        let mut g = Gathered {
            replies: Vec::new(),
            acks: 0,
            timed_out: false,
        };
        if required == 0 {
            return g;
        }
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                reply = self.calls.next() => match reply {
                    Some(r) => {
                        g.acks += usize::from(r.is_ack());
                        g.replies.push(r);
                        if g.acks >= required {
                            return g;
                        }
                    }
                    None => return g,
                },
                () = &mut timer => {
                    g.timed_out = true;
                    return g;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairdb_common::ring::NodeState;
    use pairdb_common::worker::Supervisor;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn node(id: &str, sup: &Supervisor) -> Arc<NodeEntry> {
        let ch = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let client =
            pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient::new(ch);
        Arc::new(NodeEntry {
            record: crate::meta::NodeRecord::new(id, "127.0.0.1", 1, 2, NodeState::Normal),
            batcher: crate::batcher::Batcher::start(client.clone(), Duration::from_secs(1), sup),
            client,
            health: Arc::default(),
        })
    }

    fn settings(per_call_ms: u64) -> CallSettings {
        CallSettings {
            per_call: Duration::from_millis(per_call_ms),
            down_after_misses: 1,
            op: "test",
            metrics: Arc::new(Metrics::new()),
        }
    }

    type TestCall = Pin<Box<dyn Future<Output = Result<String, Miss>> + Send>>;

    /// Each node answers after its delay: `ok` nodes with their id, the others with a miss.
    fn call(
        delays: &[(&'static str, u64, bool)],
        calls: Arc<AtomicUsize>,
    ) -> impl Fn(Arc<NodeEntry>) -> TestCall {
        let delays: Vec<_> = delays.to_vec();
        move |n: Arc<NodeEntry>| {
            let (_, ms, ok) = *delays
                .iter()
                .find(|(id, _, _)| *id == n.record.node_id)
                .unwrap();
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ok {
                    Ok(n.record.node_id.clone())
                } else {
                    Err(Miss::refused("no"))
                }
            })
        }
    }

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn gather_returns_at_the_quorum_and_leaves_the_rest_running() {
        let sup = Supervisor::default();
        let (a, b, c) = (node("a", &sup), node("b", &sup), node("c", &sup));
        let calls = Arc::new(AtomicUsize::new(0));
        let f = call(
            &[("a", 10, true), ("b", 20, true), ("c", 400, true)],
            calls.clone(),
        );
        let targets = [(a, true), (b, true), (c, true)];
        let mut fan = fan_out(targets, &settings(5_000), f);
        let g = fan.gather(2, far()).await;
        assert_eq!((g.acks, g.timed_out, g.replies.len()), (2, false, 2));
        assert_eq!(fan.running(), 1, "the slow call is the rest");
        let rest = fan.next().await.unwrap();
        assert_eq!(rest.result.unwrap(), "c");
        assert!(fan.next().await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn targets_that_do_not_count_and_misses_never_make_the_quorum() {
        let sup = Supervisor::default();
        let (a, b, p) = (node("a", &sup), node("b", &sup), node("p", &sup));
        let calls = Arc::new(AtomicUsize::new(0));
        let f = call(&[("a", 5, true), ("b", 5, false), ("p", 1, true)], calls);
        let mut fan = fan_out([(a, true), (b, true), (p, false)], &settings(5_000), f);
        let g = fan.gather(2, far()).await;
        assert_eq!((g.acks, g.timed_out, g.replies.len()), (1, false, 3));
        assert_eq!(g.misses(), vec!["b: no".to_string()]);
        assert_eq!(fan.running(), 0);
    }

    #[tokio::test]
    async fn a_down_node_is_not_called_and_a_slow_one_times_out_and_goes_down() {
        let sup = Supervisor::default();
        let (a, b) = (node("a", &sup), node("b", &sup));
        a.health.record_failure(1);
        assert!(!a.health.is_available());
        let calls = Arc::new(AtomicUsize::new(0));
        let f = call(&[("a", 1, true), ("b", 1_000, true)], calls.clone());
        let mut fan = fan_out([(a, true), (b.clone(), true)], &settings(50), f);
        let g = fan.gather(1, far()).await;
        assert_eq!(g.acks, 0);
        let why: Vec<(String, bool)> = g
            .replies
            .iter()
            .map(|r| {
                let m = r.result.as_ref().unwrap_err();
                (m.message.clone(), m.transport)
            })
            .collect();
        assert_eq!(
            why,
            vec![("node is down".into(), false), ("timed out".into(), true)]
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the down node was not called"
        );
        assert!(!b.health.is_available(), "the timeout counted against b");
    }

    #[tokio::test]
    async fn the_deadline_ends_the_gather_but_not_the_calls() {
        let sup = Supervisor::default();
        let a = node("a", &sup);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = call(&[("a", 300, true)], calls);
        let mut fan = fan_out([(a, true)], &settings(5_000), f);
        let soon = tokio::time::Instant::now() + Duration::from_millis(30);
        let g = fan.gather(1, soon).await;
        assert!(g.timed_out && g.replies.is_empty());
        assert_eq!(fan.running(), 1);
        assert!(fan.next().await.unwrap().is_ack(), "the call ran on");
    }
}
