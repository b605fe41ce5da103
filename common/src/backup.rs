//! Cluster backups on disk: the layout, the manifests and the file checksums that storage
//! nodes (their part: a RocksDB checkpoint) and coordinators (the manifest and the metadata
//! store's part) share.
//!
//! Layout under a process's `backup_dir` (one shared volume in production, the same path on
//! every process; any local directory on one machine):
//!
//! ```text
//! <backup_dir>/<backup_id>/manifest.json              coordinator: the whole backup
//! <backup_dir>/<backup_id>/metadata.json              coordinator: tenants, nodes, tokens' hashes
//! <backup_dir>/<backup_id>/nodes/<node_id>/part.json  storage node: its files and checksums
//! <backup_dir>/<backup_id>/nodes/<node_id>/db/…       storage node: the checkpoint
//! ```
//!
//! Every JSON document carries `format_version`; a reader refuses a version it does not know
//! rather than guessing. Backup ids are chosen by the coordinator but checked by every process
//! that receives one (they become path components).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of every backup document this release writes (and the only one it reads).
pub const FORMAT_VERSION: u32 = 1;
/// Longest backup id.
pub const MAX_ID_BYTES: usize = 64;

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("bad backup id {0:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '.'")]
    BadId(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a backup id (it names a directory).
pub fn check_id(id: &str) -> Result<(), BackupError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::BadId(id.chars().take(80).collect()))
    }
}

/// A node id as a path component (node ids are validated on registration; checked again).
fn check_component(s: &str) -> Result<(), BackupError> {
    check_id(s).map_err(|_| BackupError::BadId(s.chars().take(80).collect()))
}

/// `<backup_dir>/<id>`.
pub fn backup_path(root: &Path, id: &str) -> Result<PathBuf, BackupError> {
    check_id(id)?;
    Ok(root.join(id))
}

/// `<backup_dir>/<id>/nodes/<node_id>`.
pub fn node_part_path(root: &Path, id: &str, node_id: &str) -> Result<PathBuf, BackupError> {
    check_component(node_id)?;
    Ok(backup_path(root, id)?.join("nodes").join(node_id))
}

/// One file of a backup, relative to its part's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

/// A storage node's part (`part.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePart {
    pub format_version: u32,
    pub backup_id: String,
    pub node_id: String,
    /// The epoch the node was writing with when the checkpoint was taken (a restored node
    /// always takes a new one).
    pub epoch: u64,
    pub created_at_ms: u64,
    /// Files were hard-linked from the checkpoint (same filesystem) rather than copied.
    pub linked: bool,
    pub files: Vec<FileEntry>,
}

impl NodePart {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BackupError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((crate::auth::hex(ctx.finish().as_ref()), total))
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_bytes(b: &[u8]) -> String {
    crate::auth::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Exports the files of `src` (a flat checkpoint directory) into `dst` (created; must not
/// exist): a hard link where both are on one filesystem, else a copy, each synced, each
/// checksummed from what landed in `dst`. Returns the entries and whether it linked.
pub fn export_dir(src: &Path, dst: &Path) -> Result<(Vec<FileEntry>, bool), BackupError> {
    if dst.exists() {
        return Err(BackupError::Bad {
            path: dst.to_path_buf(),
            message: "already exists".into(),
        });
    }
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let meta = e.metadata().map_err(io(&e.path()))?;
        if !meta.is_file() {
            return Err(BackupError::Bad {
                path: e.path(),
                message: "a checkpoint holds only files".into(),
            });
        }
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut linked = true;
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let from = src.join(&name);
        let to = dst.join(&name);
        // SST files are immutable: a link is a copy. The few mutable ones (MANIFEST, OPTIONS,
        // CURRENT, WAL) were written fresh for the checkpoint and are not touched again.
        if std::fs::hard_link(&from, &to).is_err() {
            linked = false;
            let mut r = std::fs::File::open(&from).map_err(io(&from))?;
            let mut w = std::fs::File::create(&to).map_err(io(&to))?;
            std::io::copy(&mut r, &mut w).map_err(io(&to))?;
            w.flush().map_err(io(&to))?;
            w.sync_all().map_err(io(&to))?;
        }
        let (sha256, bytes) = sha256_file(&to)?;
        files.push(FileEntry {
            name,
            bytes,
            sha256,
        });
    }
    fsync_dir(dst)?;
    Ok((files, linked))
}

/// Checks every file of `entries` under `dir` (size and SHA-256) and that `dir` holds no
/// other file. Returns one line per problem (empty: intact).
pub fn verify_dir(dir: &Path, entries: &[FileEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in entries {
        if check_file_name(&f.name).is_err() {
            problems.push(format!("{}: not a plain file name", f.name));
            continue;
        }
        match sha256_file(&dir.join(&f.name)) {
            Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => {}
            Ok((_, bytes)) if bytes != f.bytes => {
                problems.push(format!("{}: {bytes} bytes, expected {}", f.name, f.bytes))
            }
            Ok(_) => problems.push(format!("{}: checksum mismatch", f.name)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !entries.iter().any(|f| f.name == name) {
                problems.push(format!("{name}: not in the manifest"));
            }
        }
    }
    problems
}

/// A file name from a manifest must be one plain path component (a manifest is input too).
pub fn check_file_name(name: &str) -> Result<(), BackupError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(BackupError::Bad {
            path: PathBuf::from(name),
            message: "not a plain file name".into(),
        })
    }
}

/// Writes a JSON document atomically (temp file, sync, rename, sync the directory), readable
/// only by its owner (a backup holds every tenant's data and the tokens' hashes).
pub fn write_json<T: Serialize>(path: &Path, doc: &T) -> Result<(), BackupError> {
    let body = serde_json::to_vec_pretty(doc).map_err(|e| BackupError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_file(path, &body)
}

/// [`write_json`] for bytes.
pub fn write_file(path: &Path, body: &[u8]) -> Result<(), BackupError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
        }
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Most bytes of a backup JSON document read back (a node's part lists a few thousand files).
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// Reads a JSON document written by [`write_json`], refusing other format versions.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, BackupError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut body = Vec::new();
    f.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(io(path))?;
    if body.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(BackupError::Bad {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    parse_json(path, &body)
}

/// A backup JSON document's bytes (read from `path`), refusing other format versions.
pub fn parse_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    body: &[u8],
) -> Result<T, BackupError> {
    if body.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(BackupError::Bad {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| BackupError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match v.get("format_version").and_then(|x| x.as_u64()) {
        Some(n) if n == u64::from(FORMAT_VERSION) => {}
        other => {
            return Err(BackupError::Bad {
                path: path.to_path_buf(),
                message: format!(
                    "format_version {other:?}: this release reads version {FORMAT_VERSION}"
                ),
            });
        }
    }
    serde_json::from_value(v).map_err(|e| BackupError::Bad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Removes `<backup_dir>/<id>` when nothing is left in it but empty directories.
pub fn remove_if_empty(root: &Path, id: &str) {
    if let Ok(dir) = backup_path(root, id) {
        let _ = std::fs::remove_dir(dir.join("nodes"));
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_path_components() {
        for ok in ["20261203T130000Z-ab12", "a", "x.y_z-1"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            &"x".repeat(65),
            "é",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name("../etc/passwd").is_err());
        assert!(check_file_name("000012.sst").is_ok());
    }

    #[test]
    fn export_then_verify_finds_a_flipped_byte_and_a_stray_file() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("cp");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("000001.sst"), vec![7u8; 3000]).unwrap();
        std::fs::write(src.join("CURRENT"), b"MANIFEST-000002\n").unwrap();
        let dst = t.path().join("out");
        let (files, linked) = export_dir(&src, &dst).unwrap();
        assert!(linked, "same filesystem: hard links");
        assert_eq!(files.len(), 2);
        assert!(verify_dir(&dst, &files).is_empty());
        assert!(
            export_dir(&src, &dst).is_err(),
            "never into an existing part"
        );
        // A link shares the inode: corrupt the exported copy by replacing it.
        std::fs::remove_file(dst.join("000001.sst")).unwrap();
        let mut bad = vec![7u8; 3000];
        bad[1234] ^= 1;
        std::fs::write(dst.join("000001.sst"), bad).unwrap();
        std::fs::write(dst.join("extra"), b"x").unwrap();
        let problems = verify_dir(&dst, &files);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("checksum mismatch"), "{problems:?}");
        assert!(problems[1].contains("extra"), "{problems:?}");
    }

    #[test]
    fn documents_of_another_format_version_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("part.json");
        write_json(&p, &serde_json::json!({"format_version": 2, "x": 1})).unwrap();
        let r: Result<serde_json::Value, _> = read_json(&p);
        assert!(r.unwrap_err().to_string().contains("format_version"));
        write_json(&p, &serde_json::json!({"format_version": 1, "x": 1})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["x"], 1);
    }
}
