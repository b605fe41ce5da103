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

/// The `identity.json` format this release writes and the newest it reads. Fields are only
/// added (with defaults); a change an older release would misread takes a new version, which
/// that release refuses to start with instead of choosing a new epoch over it.
pub const IDENTITY_FORMAT_VERSION: u32 = 1;

fn format_v1() -> u32 {
    1
}

/// `identity.json` (a file written before `format_version` existed is version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFile {
    #[serde(default = "format_v1")]
    pub format_version: u32,
    pub node_id: String,
    pub epoch: u64,
    pub counter_hwm: u64,
}

impl IdentityFile {
    /// Decodes `identity.json`. `Ok(None)`: unreadable (treated as missing: the node takes a
    /// new epoch). A file of a newer format is an error: starting over it would discard an
    /// identity this release cannot read.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Option<IdentityFile>, IdentityError> {
        let Ok(f) = serde_json::from_slice::<IdentityFile>(bytes) else {
            return Ok(None);
        };
        if f.format_version > IDENTITY_FORMAT_VERSION {
            return Err(IdentityError::Corrupt(format!(
                "{} has format_version {}, written by a newer release (this one reads up to {IDENTITY_FORMAT_VERSION}): run that release",
                path.display(),
                f.format_version
            )));
        }
        Ok(Some(f))
    }
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
    /// A counter for this node's own actor above anything it reserved.
    #[error(
        "counter {counter} for this replica ({actor}) is beyond any it has reserved ({hwm}): forged, or from a data directory restored whole (restart that node with a new epoch)"
    )]
    BeyondReservation {
        actor: String,
        counter: u64,
        hwm: u64,
    },
    /// The counter space of this epoch is used up (only reachable by adopting a forged counter).
    #[error("the dot counter of this epoch is exhausted: restart the node with a new epoch")]
    Exhausted,
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
    /// `new_epoch` forces a fresh epoch: the restore path for a directory restored whole
    /// (a volume snapshot carries identity.json too, so nothing would look restored).
    pub fn establish(
        engine: &dyn Engine,
        dir: &Path,
        node_id: &str,
        new_epoch: bool,
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
            Ok(bytes) => IdentityFile::parse(&file, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(IdentityError::File { path: file, source }),
        };

        let reason = match (&db_epoch, &on_file) {
            _ if new_epoch => Some("a new epoch was requested (restored data directory)".into()),
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
                let above = |e: u64| e.saturating_add(1);
                let floor = on_file.as_ref().map(|f| above(f.epoch)).unwrap_or(0);
                let floor = floor.max(db_epoch.map(above).unwrap_or(0));
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
        let from = c.next.max(c.hwm);
        self.reserve_locked(&mut c, from, engine)
    }

    /// Reserves `[from, from + BLOCK]` and syncs it. Nothing in here can panic: the lock is
    /// held, and a poisoned counter lock would stop every write of the node.
    fn reserve_locked(
        &self,
        c: &mut Counter,
        from: u64,
        engine: &dyn Engine,
    ) -> Result<(), IdentityError> {
        let hwm = from.checked_add(BLOCK).ok_or(IdentityError::Exhausted)?;
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
                format_version: IDENTITY_FORMAT_VERSION,
                node_id: self.actor.node_id.clone(),
                epoch: self.actor.epoch,
                counter_hwm: hwm,
            },
        )?;
        c.hwm = hwm;
        Ok(())
    }

    /// Whether `counter` for this node's own actor is one it could have minted: at most the
    /// end of its reserved block. Anything above is forged, or comes from a data directory
    /// restored whole (identity.json included; start it with `new_epoch` instead) — adopting
    /// it would let one request push the counter to its end.
    pub fn check_own(&self, counter: u64) -> Result<(), IdentityError> {
        let hwm = self
            .counter
            .lock()
            .map_err(|_| IdentityError::Corrupt("counter lock poisoned".into()))?
            .hwm;
        if counter > hwm {
            return Err(IdentityError::BeyondReservation {
                actor: self.actor.to_string(),
                counter,
                hwm,
            });
        }
        Ok(())
    }

    /// Mints the next counter, above `seen` (the highest counter for this actor in the key's
    /// state and the client's context, which must not be beyond the reservation).
    pub fn next_counter(&self, seen: u64, engine: &dyn Engine) -> Result<u64, IdentityError> {
        let mut c = self
            .counter
            .lock()
            .map_err(|_| IdentityError::Corrupt("counter lock poisoned".into()))?;
        if seen > c.hwm {
            return Err(IdentityError::BeyondReservation {
                actor: self.actor.to_string(),
                counter: seen,
                hwm: c.hwm,
            });
        }
        let next = c
            .next
            .max(seen)
            .checked_add(1)
            .ok_or(IdentityError::Exhausted)?;
        if next > c.hwm {
            self.reserve_locked(&mut c, next, engine)?;
        }
        c.next = next;
        Ok(next)
    }

    /// Notes a counter for this actor seen in incoming data (a node learns how far it had
    /// already counted). Only counters within the reservation are adopted; callers refuse the
    /// others first with [`Identity::check_own`].
    pub fn observe(&self, seen: u64) {
        if let Ok(mut c) = self.counter.lock()
            && seen > c.next
            && seen <= c.hwm
        {
            c.next = seen;
        }
    }

    /// The last counter minted or observed.
    pub fn current(&self) -> u64 {
        self.counter.lock().map(|c| c.next).unwrap_or(0)
    }

    /// The end of the reserved counter block.
    pub fn reserved(&self) -> u64 {
        self.counter.lock().map(|c| c.hwm).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rocks::{RocksEngine, RocksOptions};

    fn open(dir: &Path) -> RocksEngine {
        let o = RocksOptions {
            block_cache_bytes: 8 << 20,
            memtable_bytes: 1 << 20,
            max_memtables: 2,
            background_jobs: 1,
            salvage_wal: false,
        };
        RocksEngine::open(&dir.join("db"), &o).expect("open engine")
    }

    #[test]
    fn hostile_counters_are_refused_and_never_poison_the_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        let id = Identity::establish(&engine, dir.path(), "n1", false).expect("identity");
        let first = id.next_counter(0, &engine).expect("mint");
        for hostile in [u64::MAX, u64::MAX - 1, id.reserved() + 1] {
            assert!(matches!(
                id.next_counter(hostile, &engine),
                Err(IdentityError::BeyondReservation { .. })
            ));
            assert!(id.check_own(hostile).is_err());
            id.observe(hostile);
        }
        // Nothing was adopted, nothing is poisoned: the next dot follows the first.
        assert_eq!(id.next_counter(0, &engine).expect("mint"), first + 1);
        // A counter within the reservation is adopted (the node learns how far it counted).
        let within = id.reserved() - 10;
        id.observe(within);
        assert_eq!(id.next_counter(0, &engine).expect("mint"), within + 1);
        // Crossing the block reserves the next one.
        let hwm = id.reserved();
        assert_eq!(id.next_counter(hwm, &engine).expect("mint"), hwm + 1);
        assert_eq!(id.reserved(), hwm + 1 + BLOCK);
    }

    #[test]
    fn new_epoch_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let epoch = {
            let engine = open(dir.path());
            Identity::establish(&engine, dir.path(), "n1", false)
                .expect("identity")
                .actor()
                .epoch
        };
        let engine = open(dir.path());
        let same = Identity::establish(&engine, dir.path(), "n1", false).expect("identity");
        assert_eq!(same.actor().epoch, epoch);
        drop(same);
        let fresh = Identity::establish(&engine, dir.path(), "n1", true).expect("identity");
        assert!(fresh.actor().epoch > epoch);
        assert!(fresh.new_epoch_reason.is_some());
    }
}
