//! Replica identity and the dot counter.
//!
//! A node's actor is `(node_id, epoch)`. The epoch is a fresh value (Unix milliseconds, and
//! always above the last epoch this directory knew) whenever the node starts on an empty data
//! directory or on a database restored from a snapshot, so a dot is never minted twice.
//!
//! Counters are node-global (one sequence for all keys) and reserved in blocks: before any
//! counter in a block is used, the block's end (`counter_hwm`) is synced both into the database's
//! `meta` space and into `identity.json` beside it. A restart resumes above the reserved block,
//! so unsynced writes lost to a power cut cannot lead to reuse. A restored database is
//! recognised because its `counter_hwm` (or epoch) is behind `identity.json`'s; taking a
//! snapshot reserves a new block first, so a snapshot is always behind the live identity.
//! A counter for this actor seen in incoming data also raises the sequence.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pairdb_common::version::Actor;
use serde::{Deserialize, Serialize};

use crate::engine::{BatchOp, Engine, EngineError, Space};

const META_NODE_ID: &[u8] = b"node_id";
const META_EPOCH: &[u8] = b"epoch";
const META_HWM: &[u8] = b"counter_hwm";
/// Counters reserved per synced reservation.
const BLOCK: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdentityFile {
    node_id: String,
    epoch: u64,
    counter_hwm: u64,
}

/// Why the identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data directory belongs to node {found:?}, not {expected:?}")]
    WrongNode { found: String, expected: String },
    #[error("read or write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("corrupt identity metadata: {0}")]
    Corrupt(String),
}

struct Counter {
    next: u64,
    hwm: u64,
}

/// The node's actor and its dot counter.
pub struct Identity {
    actor: Actor,
    file: PathBuf,
    counter: Mutex<Counter>,
    /// Why a new epoch was chosen at start (None: resumed the existing one).
    pub new_epoch_reason: Option<String>,
}

fn read_u64(engine: &dyn Engine, key: &[u8]) -> Result<Option<u64>, IdentityError> {
    match engine.get(Space::Meta, key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                IdentityError::Corrupt(format!(
                    "{} has {} bytes",
                    String::from_utf8_lossy(key),
                    v.len()
                ))
            })?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

fn write_file(path: &Path, f: &IdentityFile) -> Result<(), IdentityError> {
    let err = |source| IdentityError::File {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(f).map_err(|e| err(std::io::Error::other(e)))?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&body).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Identity {
    /// Loads or establishes the identity of `node_id` for the database in `engine`, with
    /// `identity.json` in `dir`.
    pub fn establish(
        engine: &dyn Engine,
        dir: &Path,
        node_id: &str,
    ) -> Result<Identity, IdentityError> {
        let file = dir.join("identity.json");
        let db_node = engine
            .get(Space::Meta, META_NODE_ID)?
            .map(|v| String::from_utf8_lossy(&v).to_string());
        if let Some(found) = &db_node
            && found != node_id
        {
            return Err(IdentityError::WrongNode {
                found: found.clone(),
                expected: node_id.to_string(),
            });
        }
        let db_epoch = read_u64(engine, META_EPOCH)?;
        let db_hwm = read_u64(engine, META_HWM)?.unwrap_or(0);
        let on_file: Option<IdentityFile> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(IdentityError::File { path: file, source }),
        };

        let reason = match (&db_epoch, &on_file) {
            (None, _) => Some("empty data directory".to_string()),
            (Some(_), None) => Some("identity.json missing (restored or copied database)".into()),
            (Some(e), Some(f)) if *e != f.epoch || f.node_id != node_id => Some(format!(
                "database epoch {e} does not match identity.json epoch {}",
                f.epoch
            )),
            (Some(_), Some(f)) if f.counter_hwm > db_hwm => Some(format!(
                "database counter {db_hwm} is behind identity.json {} (restored from a snapshot)",
                f.counter_hwm
            )),
            _ => None,
        };

        let (epoch, next) = match (&reason, db_epoch) {
            (None, Some(e)) => (e, db_hwm),
            _ => {
                let floor = on_file.as_ref().map(|f| f.epoch + 1).unwrap_or(0);
                let floor = floor.max(db_epoch.map(|e| e + 1).unwrap_or(0));
                (pairdb_common::now_ms().max(floor), 0)
            }
        };
        let id = Identity {
            actor: Actor::new(node_id, epoch),
            file,
            counter: Mutex::new(Counter { next, hwm: next }),
            new_epoch_reason: reason,
        };
        // Persist the (possibly new) identity and reserve the first block before serving.
        engine.write(
            vec![
                BatchOp::Put(
                    Space::Meta,
                    META_NODE_ID.to_vec(),
                    node_id.as_bytes().to_vec(),
                ),
                BatchOp::Put(
                    Space::Meta,
                    META_EPOCH.to_vec(),
                    epoch.to_be_bytes().to_vec(),
                ),
            ],
            true,
        )?;
        id.reserve_block(engine)?;
        Ok(id)
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Moves the reservation past the current counter and syncs it (db first, then file).
    pub fn reserve_block(&self, engine: &dyn Engine) -> Result<(), IdentityError> {
        let mut c = self
            .counter
            .lock()
            .map_err(|_| IdentityError::Corrupt("counter lock poisoned".into()))?;
        self.reserve_locked(&mut c, engine)
    }

    fn reserve_locked(&self, c: &mut Counter, engine: &dyn Engine) -> Result<(), IdentityError> {
        let hwm = c.next.max(c.hwm) + BLOCK;
        engine.write(
            vec![BatchOp::Put(
                Space::Meta,
                META_HWM.to_vec(),
                hwm.to_be_bytes().to_vec(),
            )],
            true,
        )?;
        write_file(
            &self.file,
            &IdentityFile {
                node_id: self.actor.node_id.clone(),
                epoch: self.actor.epoch,
                counter_hwm: hwm,
            },
        )?;
        c.hwm = hwm;
        Ok(())
    }

    /// Mints the next counter, above `seen` (the highest counter for this actor in the key's
    /// state and the client's context).
    pub fn next_counter(&self, seen: u64, engine: &dyn Engine) -> Result<u64, IdentityError> {
        let mut c = self
            .counter
            .lock()
            .map_err(|_| IdentityError::Corrupt("counter lock poisoned".into()))?;
        c.next = c.next.max(seen) + 1;
        if c.next > c.hwm {
            self.reserve_locked(&mut c, engine)?;
        }
        Ok(c.next)
    }

    /// Notes a counter for this actor seen in incoming data (a restored node learns how far it
    /// had already counted).
    pub fn observe(&self, seen: u64) {
        if let Ok(mut c) = self.counter.lock()
            && seen > c.next
        {
            c.next = seen;
        }
    }

    /// The last counter minted or observed.
    pub fn current(&self) -> u64 {
        self.counter.lock().map(|c| c.next).unwrap_or(0)
    }
}
