//! An in-memory [`Engine`]: two ordered maps behind one lock, so every write batch is atomic
//! and every read sees every completed write. For the deterministic simulation
//! (`tests/tests/simulation.rs`): its calls are short and never block, so they can run on the
//! simulated host's own thread. What it keeps lives as long as the value does — a simulated
//! crash that keeps the engine models a process kill (acknowledged writes survive, as they do
//! in RocksDB's WAL), [`MemEngine::wipe`] a lost disk. Sorted tables for
//! [`Engine::ingest`] are real files in the staging directory, as with RocksDB, so the callers'
//! clean-up paths are the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{BatchOp, Engine, EngineError, EngineStats, Ingested, Scan, Space, WalFile};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
/// Records in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Default)]
struct Spaces {
    data: Map,
    meta: Map,
}

impl Spaces {
    fn of(&mut self, s: Space) -> &mut Map {
        match s {
            Space::Data => &mut self.data,
            Space::Meta => &mut self.meta,
        }
    }
}

pub struct MemEngine {
    spaces: Mutex<Spaces>,
    staging: PathBuf,
    tables: AtomicU64,
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::Io(e.to_string())
}

impl MemEngine {
    /// An empty engine whose sorted tables are staged in `staging` (created).
    pub fn open(staging: &Path) -> Result<MemEngine, EngineError> {
        std::fs::create_dir_all(staging).map_err(io)?;
        Ok(MemEngine {
            spaces: Mutex::new(Spaces::default()),
            staging: staging.to_path_buf(),
            tables: AtomicU64::new(0),
        })
    }

    /// Forgets every record of both spaces (a replaced disk).
    pub fn wipe(&self) {
        *self.spaces.lock() = Spaces::default();
    }

    /// Every record of a space, in key order (tests compare replicas with it).
    pub fn dump(&self, space: Space) -> Rows {
        let mut s = self.spaces.lock();
        s.of(space)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn read_table(path: &Path) -> Result<Rows, EngineError> {
    let bytes = std::fs::read(path).map_err(io)?;
    let bad = || EngineError::Corruption(format!("table {} is truncated", path.display()));
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    let take = |n: usize, rest: &mut &[u8]| -> Result<Vec<u8>, EngineError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Ok(a.to_vec())
    };
    while !rest.is_empty() {
        let len = |b: Vec<u8>| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let k = len(take(4, &mut rest)?);
        let v = len(take(4, &mut rest)?);
        let key = take(k, &mut rest)?;
        let value = take(v, &mut rest)?;
        out.push((key, value));
    }
    Ok(out)
}

impl Engine for MemEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.spaces.lock().of(space).get(key).cloned())
    }

    fn write(&self, ops: Vec<BatchOp>, _sync: bool) -> Result<(), EngineError> {
        let mut s = self.spaces.lock();
        for op in ops {
            match op {
                BatchOp::Put(space, k, v) => {
                    s.of(space).insert(k, v);
                }
                BatchOp::Delete(space, k) => {
                    s.of(space).remove(&k);
                }
                BatchOp::DeleteRange(space, from, to) => {
                    let m = s.of(space);
                    let doomed: Vec<Vec<u8>> = m
                        .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        m.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Scan,
    ) -> Result<(), EngineError> {
        // A snapshot, so `visit` may call back into the engine.
        let end = to.map_or(Bound::Unbounded, Bound::Excluded);
        let rows: Rows = self
            .spaces
            .lock()
            .of(space)
            .range::<[u8], _>((Bound::Included(from), end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in rows {
            if visit(&k, &v) == Scan::Stop {
                break;
            }
        }
        Ok(())
    }

    fn existing(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<bool>, EngineError> {
        let mut s = self.spaces.lock();
        let m = s.of(space);
        Ok(keys.iter().map(|k| m.contains_key(*k)).collect())
    }

    fn write_table(&self, entries: &[(&[u8], &[u8])]) -> Result<PathBuf, EngineError> {
        let n = self.tables.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!("table-{n}.mem"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        for (k, v) in entries {
            f.write_all(&(k.len() as u32).to_le_bytes()).map_err(io)?;
            f.write_all(&(v.len() as u32).to_le_bytes()).map_err(io)?;
            f.write_all(k).map_err(io)?;
            f.write_all(v).map_err(io)?;
        }
        f.flush().map_err(io)?;
        Ok(path)
    }

    fn ingest(&self, table: &Path, _allow_flush: bool) -> Result<Ingested, EngineError> {
        let rows = read_table(table)?;
        {
            let mut s = self.spaces.lock();
            for (k, v) in rows {
                s.data.insert(k, v);
            }
        }
        std::fs::remove_file(table).map_err(io)?;
        Ok(Ingested::Done)
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn compact(&self, _all_levels: bool) -> Result<(), EngineError> {
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), EngineError> {
        std::fs::create_dir(dir).map_err(io)?;
        let data = self.dump(Space::Data);
        let pairs: Vec<(&[u8], &[u8])> = data
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let t = self.write_table(&pairs)?;
        std::fs::rename(&t, dir.join("data.mem")).map_err(io)
    }

    fn write_stalled(&self) -> bool {
        false
    }

    fn stats(&self) -> EngineStats {
        let s = self.spaces.lock();
        EngineStats {
            estimated_keys: s.data.len() as u64,
            memtable_entries: s.data.len() as u64,
            ..EngineStats::default()
        }
    }

    fn set_block_cache_capacity(&self, _bytes: u64) {}

    fn wal_files(&self) -> Result<Vec<WalFile>, EngineError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_scans_and_tables_behave_like_the_engine_contract() {
        let dir = tempfile::tempdir().unwrap();
        let e = MemEngine::open(dir.path()).unwrap();
        let put = |k: &str, v: &str| BatchOp::Put(Space::Data, k.into(), v.into());
        e.write(vec![put("a", "1"), put("b", "2"), put("c", "3")], false)
            .unwrap();
        e.write(
            vec![BatchOp::DeleteRange(
                Space::Data,
                b"b".to_vec(),
                b"c".to_vec(),
            )],
            true,
        )
        .unwrap();
        assert_eq!(e.get(Space::Data, b"b").unwrap(), None);
        assert_eq!(e.get(Space::Meta, b"a").unwrap(), None);
        let mut seen = Vec::new();
        e.scan(Space::Data, b"", None, &mut |k, _| {
            seen.push(k.to_vec());
            Scan::Continue
        })
        .unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"c".to_vec()]);
        let t = e.write_table(&[(b"d", b"4"), (b"e", b"5")]).unwrap();
        assert_eq!(e.ingest(&t, false).unwrap(), Ingested::Done);
        assert!(!t.exists(), "an ingested table is consumed");
        assert_eq!(
            e.existing(Space::Data, &[b"a", b"b", b"e"]).unwrap(),
            vec![true, false, true]
        );
        std::fs::write(&t, [1, 0, 0]).unwrap();
        assert!(matches!(
            e.ingest(&t, false),
            Err(EngineError::Corruption(_))
        ));
        e.wipe();
        assert_eq!(e.stats().estimated_keys, 0);
    }
}
