//! A set-add client of the simulation (the workload of `crate::nemesis::setadd`, on the
//! simulated clock): read at QUORUM, union the siblings' sets, add a unique element, write
//! back with the context. A client starts on its own coordinator and moves to the next one
//! after a failure, as a client behind a load balancer would.

use std::collections::BTreeSet;
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::client::{Coordinator, Dial};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::cluster::{read_req, write_req};
use crate::nemesis::history::{History, Kind};
use crate::nemesis::setadd::{definitely_not_applied, encode, union};

/// Each request's client-side deadline (beyond the coordinator's own 5 s).
const OP_TIMEOUT: Duration = Duration::from_secs(8);
const BACKOFF: Duration = Duration::from_millis(100);

async fn connect(coords: &[String], at: usize) -> Option<Coordinator> {
    let addr = format!("{}:{}", coords[at % coords.len()], super::COORD_PORT);
    tokio::time::timeout(Duration::from_secs(2), Dial::plaintext(addr).connect())
        .await
        .ok()?
        .ok()
}

/// How much one client does: adds over `keys` keys, at most `max_ops`, none begun after
/// `until` (simulated time since the start).
pub struct Load {
    pub keys: usize,
    pub max_ops: usize,
    pub until: Duration,
}

pub async fn set_add(h: History, w: usize, coords: Vec<String>, load: Load, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (mut at, keys) = (w, load.keys);
    let mut client = None;
    let started = tokio::time::Instant::now();
    // The servers start in the first simulated milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..load.max_ops {
        if started.elapsed() > load.until {
            break;
        }
        let op = i as u64;
        let key = format!("set-{}", rng.random_range(0..keys));
        let element = format!("w{w}e{i}");
        h.record(w, op, Kind::Invoke, "add", &key, &element, 0, "");
        if client.is_none() {
            client = connect(&coords, at).await;
        }
        let Some(c) = client.as_mut() else {
            h.record(
                w,
                op,
                Kind::Fail,
                "add",
                &key,
                &element,
                0,
                "connect failed",
            );
            at += 1;
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let read = tokio::time::timeout(
            OP_TIMEOUT,
            c.read(read_req(key.as_bytes(), pb::Consistency::Quorum)),
        )
        .await;
        let (mut set, context, siblings) = match read {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                (union(&r.siblings), r.context, r.siblings.len())
            }
            Ok(Err(e)) if e.code() == Code::NotFound => (BTreeSet::new(), Vec::new(), 0),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => format!("read: {:?}", e.code()),
                    _ => "read timed out".into(),
                };
                h.record(w, op, Kind::Fail, "add", &key, &element, 0, &why);
                (client, at) = (None, at + 1);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        h.read(w, op, &key, set.iter().cloned().collect());
        set.insert(element.clone());
        let req = write_req(
            key.as_bytes(),
            &encode(&set),
            context,
            pb::Consistency::Quorum,
        );
        let wrote = tokio::time::timeout(OP_TIMEOUT, c.write(req)).await;
        let (kind, error) = match wrote {
            Ok(Ok(_)) => (Kind::Ok, String::new()),
            Ok(Err(e)) if definitely_not_applied(e.code()) => {
                (Kind::Fail, format!("{:?}", e.code()))
            }
            Ok(Err(e)) => (Kind::Info, format!("{:?}", e.code())),
            Err(_) => (Kind::Info, "write timed out".to_string()),
        };
        h.record(w, op, kind, "add", &key, &element, siblings, &error);
        if kind != Kind::Ok {
            (client, at) = (None, at + 1);
            tokio::time::sleep(BACKOFF).await;
        }
        // Paced so that three clients keep a few adds in every fault window without the run
        // growing past what 50 seeds in the test command can afford.
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
    }
}
