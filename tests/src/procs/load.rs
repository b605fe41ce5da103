//! Load that records what clients saw: a bounded writer of unique keys, and a preload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pairdb_common::api::pb;
use pairdb_common::client::{Coordinator, Dial};

use super::*;

/// Acknowledged writes: (key, value).
pub type Acked = Vec<(String, Vec<u8>)>;

/// A bounded writer: unique keys at QUORUM, round-robin over coordinators, recording every
/// acknowledged write (key, value). Stops when told, after `max` writes, or after `max_time`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
    handle: tokio::task::JoinHandle<(Acked, u64)>,
}

impl Writer {
    pub fn start(coords: Vec<Dial>, prefix: &str, max: usize, max_time: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = acked_count.clone();
        let prefix = prefix.to_string();
        let handle = tokio::spawn(async move {
            let deadline = Instant::now() + max_time;
            let mut clients = Vec::new();
            for d in &coords {
                if let Ok(c) = d.connect().await {
                    clients.push(c);
                }
            }
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            for i in 0..max {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline || clients.is_empty() {
                    break;
                }
                let k = format!("{prefix}-{i}");
                let v = format!("value-of-{k}").into_bytes();
                let n = clients.len();
                let c = &mut clients[i % n];
                let req =
                    crate::cluster::write_req(k.as_bytes(), &v, vec![], pb::Consistency::Quorum);
                match tokio::time::timeout(Duration::from_secs(10), c.write(req)).await {
                    Ok(Ok(_)) => {
                        acked.push((k, v));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failed)
        });
        Writer {
            stop,
            acked: acked_count,
            handle,
        }
    }

    /// Writes acknowledged so far (to show that a fault overlapped the traffic).
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> Result<(Acked, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.handle.await?)
    }
}

/// Loads `count` keys of about `value_bytes` each through BatchWrite at QUORUM.
pub async fn preload(
    c: &mut Coordinator,
    prefix: &str,
    count: usize,
    value_bytes: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let items: Vec<pb::WriteRequest> = chunk
            .iter()
            .map(|i| {
                let k = format!("{prefix}-{i}");
                let mut v = format!("value-of-{k}-").into_bytes();
                v.resize(value_bytes.max(v.len()), b'x');
                crate::cluster::write_req(k.as_bytes(), &v, vec![], pb::Consistency::Quorum)
            })
            .collect();
        let r = c
            .batch_write(pb::BatchWriteItemsRequest {
                items: items.clone(),
            })
            .await?
            .into_inner();
        for (item, res) in items.into_iter().zip(r.results) {
            anyhow::ensure!(res.error.is_none(), "preload write failed: {:?}", res.error);
            out.push((String::from_utf8_lossy(&item.key).into_owned(), item.value));
        }
    }
    Ok(out)
}
