//! This node's part of a cluster backup (`pairdb_common::backup` has the layout): a RocksDB
//! checkpoint taken on the data disk, exported to `backup_dir/<id>/nodes/<node_id>/db/` (hard
//! links on one filesystem, else copies, each checksummed), then removed from the data disk
//! so it does not pin SST files there. Also the offline restore of a part into an empty data
//! directory (`pairdb-storage-node restore`, `pairdbctl backup restore`).
//!
//! Everything here is blocking file I/O: callers run it on the blocking pool.

use std::path::{Path, PathBuf};

use pairdb_common::Error as Common;
use pairdb_common::backup::{self as layout, BackupError, NodePart};

use crate::engine::Engine;
use crate::node::Node;

fn internal(e: impl std::fmt::Display) -> Common {
    Common::Internal(format!("backup: {e}"))
}

fn from_layout(e: BackupError) -> Common {
    match e {
        BackupError::BadId(_) => Common::InvalidArgument(e.to_string()),
        e => internal(e),
    }
}

fn root(node: &Node) -> Result<&Path, Common> {
    node.backup_dir.as_deref().ok_or_else(|| {
        Common::InvalidArgument(format!(
            "storage node {} has no backup_dir (set PAIRDB_BACKUP_DIR)",
            node.node_id
        ))
    })
}

/// Takes the checkpoint and exports it as part `id`.
pub fn create(node: &Node, id: &str) -> Result<NodePart, Common> {
    let root = root(node)?;
    let part = layout::node_part_path(root, id, &node.node_id).map_err(from_layout)?;
    if part.exists() {
        return Err(Common::TopologyConflict(format!(
            "backup {id} already has a part for {}",
            node.node_id
        )));
    }
    let checkpoint = node
        .data_dir
        .join("snapshots")
        .join(format!("backup-{id}-{}", pairdb_common::now_ms()));
    let r = export(node, id, &checkpoint, &part);
    // The checkpoint never stays on the data disk; a failed part is not left half-written.
    let _ = std::fs::remove_dir_all(&checkpoint);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&part);
        layout::remove_if_empty(root, id);
    }
    r
}

fn export(node: &Node, id: &str, checkpoint: &Path, part: &Path) -> Result<NodePart, Common> {
    std::fs::create_dir_all(checkpoint.parent().unwrap_or(&node.data_dir)).map_err(internal)?;
    let engine: &dyn Engine = node.store.engine().as_ref();
    let epoch = node.store.identity().actor().epoch;
    engine.checkpoint(checkpoint).map_err(internal)?;
    // A restore of this checkpoint must be recognised (its counter behind the live one).
    node.store
        .identity()
        .reserve_block(engine)
        .map_err(internal)?;
    let (files, linked) = layout::export_dir(checkpoint, &part.join("db")).map_err(from_layout)?;
    let doc = NodePart {
        format_version: layout::FORMAT_VERSION,
        backup_id: id.to_string(),
        node_id: node.node_id.clone(),
        epoch,
        created_at_ms: pairdb_common::now_ms(),
        linked,
        files,
    };
    layout::write_json(&part.join("part.json"), &doc).map_err(from_layout)?;
    tracing::info!(backup_id = id, files = doc.files.len(), bytes = doc.total_bytes(), linked, path = %part.display(), "backup part written");
    Ok(doc)
}

/// Reads part `id` of node `node_id` under `root`.
pub fn read_part(root: &Path, id: &str, node_id: &str) -> Result<(PathBuf, NodePart), Common> {
    let part = layout::node_part_path(root, id, node_id).map_err(from_layout)?;
    let doc: NodePart = layout::read_json(&part.join("part.json")).map_err(|e| match e {
        BackupError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Common::InvalidArgument(format!("backup {id} has no part for {node_id}"))
        }
        e => from_layout(e),
    })?;
    if doc.backup_id != id || doc.node_id != node_id {
        return Err(internal(format!(
            "{} names backup {} of {}",
            part.display(),
            doc.backup_id,
            doc.node_id
        )));
    }
    Ok((part, doc))
}

/// Re-reads every file of this node's part `id`: the problems found (empty: intact).
pub fn verify(node: &Node, id: &str) -> Result<(NodePart, Vec<String>), Common> {
    let (part, doc) = read_part(root(node)?, id, &node.node_id)?;
    let problems = layout::verify_dir(&part.join("db"), &doc.files);
    Ok((doc, problems))
}

/// Deletes this node's part `id`; whether there was one.
pub fn delete(node: &Node, id: &str) -> Result<bool, Common> {
    let root = root(node)?;
    let part = layout::node_part_path(root, id, &node.node_id).map_err(from_layout)?;
    let existed = part.exists();
    if existed {
        std::fs::remove_dir_all(&part).map_err(internal)?;
    }
    layout::remove_if_empty(root, id);
    Ok(existed)
}

/// Restores part `id` of `node_id` (from `root`) into `data_dir`, which must hold no
/// database: verifies every file first, then copies them into `data_dir/db`. No
/// `identity.json` is written, so the node's first start takes a new epoch (a new actor): dots
/// minted after the backup by the old incarnation are never minted again.
pub fn restore(root: &Path, id: &str, node_id: &str, data_dir: &Path) -> Result<NodePart, Common> {
    let (part, doc) = read_part(root, id, node_id)?;
    let db = data_dir.join("db");
    if db.exists() || data_dir.join("identity.json").exists() {
        return Err(Common::InvalidArgument(format!(
            "{} already holds a database: restore only into an empty data directory",
            data_dir.display()
        )));
    }
    let problems = layout::verify_dir(&part.join("db"), &doc.files);
    if !problems.is_empty() {
        return Err(Common::ChecksumFailed(format!(
            "backup {id} part {node_id} is damaged: {}",
            problems.join("; ")
        )));
    }
    let staging = data_dir.join(format!("db.restore-{}", pairdb_common::now_ms()));
    std::fs::create_dir_all(data_dir).map_err(internal)?;
    let _ = std::fs::remove_dir_all(&staging);
    // Copy (never link): the restored database will be written to and compacted, and the
    // backup must stay as it was.
    std::fs::create_dir_all(&staging).map_err(internal)?;
    for f in &doc.files {
        layout::check_file_name(&f.name).map_err(from_layout)?;
        let to = staging.join(&f.name);
        std::fs::copy(part.join("db").join(&f.name), &to).map_err(internal)?;
        std::fs::File::open(&to)
            .and_then(|x| x.sync_all())
            .map_err(internal)?;
    }
    let copied = layout::verify_dir(&staging, &doc.files);
    if !copied.is_empty() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(internal(format!(
            "copy did not verify: {}",
            copied.join("; ")
        )));
    }
    std::fs::rename(&staging, &db).map_err(internal)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(internal)?;
    tracing::info!(backup_id = id, node_id, files = doc.files.len(), bytes = doc.total_bytes(), data_dir = %data_dir.display(), "backup part restored");
    Ok(doc)
}
