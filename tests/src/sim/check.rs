//! The end of a simulated run, every fault healed: wait for the hints to drain, read every
//! key's final set at QUORUM, run the history checkers, then wait for each key's replicas
//! (read from the nodes themselves) to hold the same versions — reading the keys that still
//! differ at ALL, so read repair brings them together, as an operator's repair would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use pairdb_common::api::pb;
use pairdb_common::api::pb::storage_node_service_client::StorageNodeServiceClient;
use pairdb_common::client::Dial;
use pairdb_common::tls::connect::{self, ClientTls};
use pairdb_coordinator::meta::{MemMeta, MetaStore};
use pairdb_storage_node::engine::memory::MemEngine;
use tokio::time::Instant;
use tonic::Code;

use super::{COORD_PORT, NODE_PORT, SimConfig, coord_name, node_name};
use crate::cluster::read_req;
use crate::nemesis::check::{self as nc, Verdict, Versions};
use crate::nemesis::history::History;
use crate::nemesis::setadd::union;

/// A replica's versions of `key` (over a fresh connection: a crash drops old ones).
async fn replica(node: &str, key: &str) -> Result<Versions> {
    let ep = connect::endpoint(&format!("{node}:{NODE_PORT}")).map_err(anyhow::Error::msg)?;
    let ch = connect::channel(ep, ClientTls::Off).await?;
    let r = StorageNodeServiceClient::new(ch)
        .read(pb::KeyRef {
            tenant_id: "t1".into(),
            key: key.as_bytes().to_vec(),
        })
        .await?
        .into_inner();
    Ok(nc::versions(r))
}

/// Keys whose replicas differ (or could not be read).
async fn differing(keys: &BTreeSet<String>, nodes: usize) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        let mut states = Vec::new();
        for i in 0..nodes {
            match replica(&node_name(i), k).await {
                Ok(v) => states.push(v),
                Err(_) => {
                    states.clear();
                    break;
                }
            }
        }
        if states.len() != nodes || states.windows(2).any(|w| w[0] != w[1]) {
            out.push(k.clone());
        }
    }
    out
}

async fn read_all(
    dial: &Dial,
    keys: &BTreeSet<String>,
    level: pb::Consistency,
    deadline: Duration,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let until = Instant::now() + deadline;
    let mut out = BTreeMap::new();
    for k in keys {
        loop {
            let r = match dial.connect().await {
                Ok(mut c) => c
                    .read(read_req(k.as_bytes(), level))
                    .await
                    .map(|r| union(&r.get_ref().siblings)),
                Err(e) => Err(tonic::Status::unavailable(e)),
            };
            match r {
                Ok(set) => {
                    out.insert(k.clone(), set);
                    break;
                }
                Err(e) if e.code() == Code::NotFound => {
                    out.insert(k.clone(), BTreeSet::new());
                    break;
                }
                Err(e) if Instant::now() > until => bail!("final read of {k}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(out)
}

pub async fn after_heal(
    h: &History,
    meta: Arc<MemMeta>,
    cfg: &SimConfig,
    wipe: Option<Vec<Arc<MemEngine>>>,
) -> Result<(Verdict, usize)> {
    let healed = Instant::now();
    loop {
        if meta.hint_targets().await?.is_empty() {
            break;
        }
        if healed.elapsed() > Duration::from_secs(120) {
            bail!(
                "hints not drained 120 s after the heal: {:?}",
                meta.hint_targets().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for e in wipe.iter().flatten() {
        e.wipe();
    }
    let dial = Dial::plaintext(format!("{}:{COORD_PORT}", coord_name(0)));
    let keys = nc::keys(h);
    let finals = read_all(
        &dial,
        &keys,
        pb::Consistency::Quorum,
        Duration::from_secs(60),
    )
    .await?;
    let mut verdict = nc::check(h, &finals);
    let mut repaired = BTreeSet::new();
    loop {
        let differ: BTreeSet<String> = differing(&keys, cfg.nodes).await.into_iter().collect();
        if differ.is_empty() {
            break;
        }
        if healed.elapsed() > Duration::from_secs(180) {
            bail!("replicas of {differ:?} did not converge 180 s after the heal");
        }
        if healed.elapsed() > Duration::from_secs(5) {
            // Read repair: a read at ALL writes the merged state to every replica.
            // (It fails while a coordinator still counts a replica down; the loop retries.)
            let _ = read_all(&dial, &differ, pb::Consistency::All, Duration::ZERO).await;
            repaired.extend(differ);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    verdict.converged_ms = Some(healed.elapsed().as_millis() as u64);
    verdict.read_repaired = repaired.len();
    Ok((verdict, repaired.len()))
}
