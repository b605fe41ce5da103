//! Cluster backups (`pairdbctl backup create|list|verify|delete|restore`; the layout is in
//! `pairdb_common::backup`). A backup is every storage node's checkpoint (each node writes its
//! part under its own `backup_dir`, `CreateBackupPart`) plus the metadata store's durable state
//! (`metadata.json`: nodes, tenants, tokens' hashes, ring version) and a manifest that pins
//! every part by the SHA-256 of its file list, written last: a backup without a manifest is
//! incomplete and is never listed as one.
//!
//! *What a backup holds.* Every write acknowledged before `CreateBackup` was called: each
//! node's checkpoint is taken after it, and an acknowledged write is on a write quorum of its
//! replicas. Writes acknowledged while the checkpoints are being taken may be on some replicas
//! only; the repair after a restore spreads them. No backup is taken while a topology change
//! runs (the ring must be one ring), or with a storage node unreachable (its part would be
//! missing). Context-sealing keys are left out on purpose (they are secrets): context tokens
//! issued before a restore are refused, and clients read again.
//!
//! Restore (`restore_metadata` here, `pairdb_storage_node::backup::restore` for each node's
//! data) rebuilds a cluster in an empty metadata store, the same node ids at the same or new
//! addresses; each restored node takes a new epoch on its first start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pairdb_common::Error as E;
use pairdb_common::api::pb;
use pairdb_common::backup::{self as layout, BackupError, FORMAT_VERSION};
use pairdb_common::ring::NodeState;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::meta::{
    Level, MetaStore, NodeRecord, TenantRecord, TokenRecord, TokenRole, parse_policy, policy_str,
};

/// One storage node's part, as the manifest pins it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRef {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub admin_port: u16,
    pub epoch: u64,
    pub files: u32,
    pub bytes: u64,
    pub linked: bool,
    /// SHA-256 of the part's `part.json`.
    pub part_sha256: String,
}

/// `manifest.json`: written last, so its presence means the backup is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    pub created_at_ms: u64,
    pub completed_at_ms: u64,
    pub ring_version: u64,
    /// The coordinator that took it.
    pub coordinator_id: String,
    pub tenants: u32,
    pub nodes: Vec<PartRef>,
    /// SHA-256 of `metadata.json`.
    pub metadata_sha256: String,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes).sum()
    }
}

/// A node row in `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDoc {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub admin_port: u16,
    pub zone: String,
    pub virtual_nodes: u32,
    pub state: String,
}

/// A tenant row in `metadata.json` (every setting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDoc {
    pub tenant_id: String,
    pub replication_factor: u32,
    pub read_consistency: String,
    pub write_consistency: String,
    pub conflict_policy: String,
    pub max_value_bytes: u32,
    pub sibling_warn: u32,
    pub sibling_max: u32,
    pub rate_limit_rps: u32,
    pub max_state_bytes: u32,
}

/// A token row in `metadata.json`: its hash only, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenDoc {
    pub token_id: String,
    pub token_hash: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub write: bool,
    pub description: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

/// `metadata.json`: the metadata store's durable state a restore needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub format_version: u32,
    pub ring_version: u64,
    pub nodes: Vec<NodeDoc>,
    pub tenants: Vec<TenantDoc>,
    pub tokens: Vec<TokenDoc>,
}

fn from_layout(e: BackupError) -> Error {
    match e {
        BackupError::BadId(_) => E::InvalidArgument(e.to_string()).into(),
        e => E::Internal(format!("backup: {e}")).into(),
    }
}

fn tenant_doc(t: &TenantRecord) -> TenantDoc {
    TenantDoc {
        tenant_id: t.tenant_id.clone(),
        replication_factor: t.replication_factor,
        read_consistency: t.read_consistency.as_str().into(),
        write_consistency: t.write_consistency.as_str().into(),
        conflict_policy: policy_str(t.conflict_policy).into(),
        max_value_bytes: t.max_value_bytes,
        sibling_warn: t.sibling_warn,
        sibling_max: t.sibling_max,
        rate_limit_rps: t.rate_limit_rps,
        max_state_bytes: t.max_state_bytes,
    }
}

fn tenant_record(d: &TenantDoc) -> Result<TenantRecord> {
    let level = |s: &str| {
        Level::parse(s).ok_or_else(|| E::InvalidArgument(format!("bad consistency {s:?}")))
    };
    let mut t = TenantRecord::with_defaults(&d.tenant_id);
    t.replication_factor = d.replication_factor;
    t.read_consistency = level(&d.read_consistency)?;
    t.write_consistency = level(&d.write_consistency)?;
    t.conflict_policy = parse_policy(&d.conflict_policy);
    t.max_value_bytes = d.max_value_bytes;
    t.sibling_warn = d.sibling_warn;
    t.sibling_max = d.sibling_max;
    t.rate_limit_rps = d.rate_limit_rps;
    t.max_state_bytes = d.max_state_bytes;
    Ok(t)
}

/// A backup this coordinator is taking or took since it started.
#[derive(Debug, Clone)]
pub enum Taking {
    Running { created_at_ms: u64 },
    Failed { created_at_ms: u64, error: String },
}

/// Most failed backups remembered (the newest).
const FAILED_KEPT: usize = 16;

/// Takes, lists, verifies and deletes cluster backups.
pub struct Backups {
    pub meta: Arc<dyn MetaStore>,
    pub cluster: Arc<Cluster>,
    pub dir: Option<PathBuf>,
    pub retention: u32,
    pub part_timeout: Duration,
    pub coordinator_id: String,
    /// Owns the backup tasks.
    pub sup: pairdb_common::worker::Supervisor,
    /// Backups running or failed here (a completed one is its manifest on disk).
    pub taking: parking_lot::Mutex<Vec<(String, Taking)>>,
}

/// What `GetBackup` finds.
#[derive(Debug, Clone)]
pub enum Found {
    Completed(Manifest),
    Taking(Taking),
}

impl Backups {
    /// File work on the blocking pool, owned by this coordinator's supervisor.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, BackupError> + Send + 'static,
    ) -> Result<T> {
        self.sup
            .spawn_blocking("backup-files", f)
            .await
            .map_err(|e| E::Internal(format!("backup task: {e}")))?
            .map_err(from_layout)
    }

    fn root(&self) -> Result<&Path> {
        self.dir.as_deref().ok_or_else(|| {
            E::InvalidArgument("this coordinator has no backup_dir (set PAIRDB_BACKUP_DIR)".into())
                .into()
        })
    }

    /// Starts a backup of the whole cluster in a task of its own; its id. One at a time per
    /// coordinator.
    pub async fn start(self: &Arc<Self>) -> Result<(String, u64)> {
        let root = self.root()?.to_path_buf();
        if let Some(c) = self.meta.list_changes(false).await?.first() {
            return Err(E::TopologyConflict(format!(
                "topology change {} is active: back up once it finished",
                c.change_id
            ))
            .into());
        }
        let created_at_ms = pairdb_common::now_ms();
        let id = format!("{created_at_ms}-{:04x}", rand_u16());
        {
            let mut t = self.taking.lock();
            if let Some((other, _)) = t.iter().find(|(_, x)| matches!(x, Taking::Running { .. })) {
                return Err(E::TopologyConflict(format!("backup {other} is running")).into());
            }
            t.push((id.clone(), Taking::Running { created_at_ms }));
        }
        let me = self.clone();
        let task_id = id.clone();
        let work = {
            let me = self.clone();
            let id = id.clone();
            self.sup.spawn("backup", async move {
                me.create(&root, &id, created_at_ms).await
            })
        };
        // A second task records the outcome, a panic of the first included.
        drop(self.sup.spawn("backup-outcome", async move {
            let r = match work.await {
                Ok(r) => r,
                Err(p) => Err(E::Internal(format!("backup task: {p}")).into()),
            };
            let mut t = me.taking.lock();
            t.retain(|(i, _)| i != &task_id);
            if let Err(e) = r {
                t.push((
                    task_id,
                    Taking::Failed {
                        created_at_ms,
                        error: e.to_string(),
                    },
                ));
                let failed = t.len().saturating_sub(FAILED_KEPT);
                t.drain(..failed);
            }
        }));
        Ok((id, created_at_ms))
    }

    /// Backup `id`: complete on disk, or running or failed here.
    pub async fn get(&self, id: &str) -> Result<Found> {
        let root = self.root()?.to_path_buf();
        if let Some((_, t)) = self.taking.lock().iter().find(|(i, _)| i == id) {
            return Ok(Found::Taking(t.clone()));
        }
        Ok(Found::Completed(read_manifest(&root, id).await?))
    }

    async fn create(&self, root: &Path, id: &str, created_at_ms: u64) -> Result<Manifest> {
        let dir = layout::backup_path(root, id).map_err(from_layout)?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| E::Internal(format!("create {}: {e}", dir.display())))?;
        let r = self.take(root, id, created_at_ms).await;
        if let Err(e) = &r {
            tracing::error!(backup_id = id, error = %e, "backup failed; its parts are removed");
            // Nothing half-made stays behind: parts written so far are deleted.
            self.delete_parts(id, None).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        let manifest = r?;
        tracing::info!(backup_id = %id, nodes = manifest.nodes.len(), bytes = manifest.bytes(), "backup completed");
        self.apply_retention().await;
        Ok(manifest)
    }

    async fn take(&self, root: &Path, id: &str, created_at_ms: u64) -> Result<Manifest> {
        let ring_version = self.meta.ring_version().await?;
        let nodes: Vec<NodeRecord> = self
            .meta
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| n.state != NodeState::Removed)
            .collect();
        let tenants = self.meta.list_tenants().await?;
        let tokens = self.meta.list_tokens().await?;
        let metadata = Metadata {
            format_version: FORMAT_VERSION,
            ring_version,
            nodes: nodes
                .iter()
                .map(|n| NodeDoc {
                    node_id: n.node_id.clone(),
                    host: n.host.clone(),
                    port: n.port,
                    admin_port: n.admin_port,
                    zone: n.zone.clone(),
                    virtual_nodes: n.virtual_nodes,
                    state: n.state.as_str().into(),
                })
                .collect(),
            tenants: tenants.iter().map(tenant_doc).collect(),
            tokens: tokens
                .iter()
                .map(|t| TokenDoc {
                    token_id: t.token_id.clone(),
                    token_hash: t.token_hash.clone(),
                    role: t.role.as_str().into(),
                    tenant_id: t.tenant_id.clone(),
                    write: t.write,
                    description: t.description.clone(),
                    created_at_ms: t.created_at_ms,
                    expires_at_ms: t.expires_at_ms,
                    revoked_at_ms: t.revoked_at_ms,
                })
                .collect(),
        };
        let meta_path = layout::backup_path(root, id)
            .map_err(from_layout)?
            .join("metadata.json");
        let meta_bytes = serde_json::to_vec_pretty(&metadata)
            .map_err(|e| E::Internal(format!("encode metadata: {e}")))?;
        let metadata_sha256 = layout::sha256_bytes(&meta_bytes);
        self.blocking(move || layout::write_file(&meta_path, &meta_bytes))
            .await?;

        let snap = self.cluster.snapshot();
        let calls = nodes.iter().map(|n| {
            let entry = snap.nodes.get(&n.node_id).cloned();
            let id = id.to_string();
            let timeout = self.part_timeout;
            async move {
                let Some(e) = entry else {
                    return Err(format!("{}: not in this coordinator's view", n.node_id));
                };
                let mut c = e.client.clone();
                match tokio::time::timeout(
                    timeout,
                    c.create_backup_part(pb::BackupPartRequest { backup_id: id }),
                )
                .await
                {
                    Ok(Ok(r)) => Ok((n.clone(), r.into_inner())),
                    Ok(Err(s)) => Err(format!("{}: {}", n.node_id, s.message())),
                    Err(_) => Err(format!("{}: no answer within {timeout:?}", n.node_id)),
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|a| a.as_ref().err().cloned())
            .collect();
        if !failed.is_empty() {
            return Err(E::NodeNotReady(format!(
                "backup {id} incomplete, removed: {}",
                failed.join("; ")
            ))
            .into());
        }
        let parts = answers
            .into_iter()
            .flatten()
            .map(|(n, p)| PartRef {
                node_id: n.node_id,
                host: n.host,
                port: n.port,
                admin_port: n.admin_port,
                epoch: p.epoch,
                files: p.files,
                bytes: p.bytes,
                linked: p.linked,
                part_sha256: p.part_sha256,
            })
            .collect();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            backup_id: id.to_string(),
            created_at_ms,
            completed_at_ms: pairdb_common::now_ms(),
            ring_version,
            coordinator_id: self.coordinator_id.clone(),
            tenants: tenants.len() as u32,
            nodes: parts,
            metadata_sha256,
        };
        let path = layout::backup_path(root, id)
            .map_err(from_layout)?
            .join("manifest.json");
        let doc = manifest.clone();
        self.blocking(move || layout::write_json(&path, &doc))
            .await?;
        Ok(manifest)
    }

    /// Complete backups under this coordinator's `backup_dir`, oldest first.
    pub async fn list(&self) -> Result<Vec<Manifest>> {
        let root = self.root()?.to_path_buf();
        self.blocking(move || list_manifests(&root)).await
    }

    /// Re-reads the metadata part here and asks every node to re-read its part: the
    /// manifest and every problem found (none: the backup is intact).
    pub async fn verify(&self, id: &str) -> Result<(Manifest, Vec<String>)> {
        let root = self.root()?.to_path_buf();
        let manifest = read_manifest(&root, id).await?;
        let mut problems = Vec::new();
        let meta_path = layout::backup_path(&root, id)
            .map_err(from_layout)?
            .join("metadata.json");
        match read_doc(&meta_path).await {
            Ok(Some(b)) if layout::sha256_bytes(&b) == manifest.metadata_sha256 => {}
            Ok(Some(_)) => problems.push("metadata.json: checksum mismatch".to_string()),
            Ok(None) => problems.push("metadata.json: missing".to_string()),
            Err(e) => problems.push(format!("metadata.json: {e}")),
        }
        let snap = self.cluster.snapshot();
        for p in &manifest.nodes {
            let Some(e) = snap.nodes.get(&p.node_id) else {
                problems.push(format!("{}: not in the cluster now", p.node_id));
                continue;
            };
            let mut c = e.client.clone();
            let r = tokio::time::timeout(
                self.part_timeout,
                c.verify_backup_part(pb::BackupPartRequest {
                    backup_id: id.to_string(),
                }),
            )
            .await;
            match r {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.part_sha256 != p.part_sha256 {
                        problems.push(format!(
                            "{}: part.json differs from the manifest",
                            p.node_id
                        ));
                    }
                    problems.extend(r.problems.iter().map(|x| format!("{}: {x}", p.node_id)));
                }
                Ok(Err(s)) => problems.push(format!("{}: {}", p.node_id, s.message())),
                Err(_) => problems.push(format!("{}: no answer", p.node_id)),
            }
        }
        Ok((manifest, problems))
    }

    /// Deletes backup `id` everywhere: every node's part (nodes that cannot be reached keep
    /// theirs, listed in the answer), then the manifest and metadata here.
    pub async fn delete(&self, id: &str) -> Result<(Manifest, Vec<String>)> {
        let root = self.root()?.to_path_buf();
        let manifest = read_manifest(&root, id).await?;
        let left = self.delete_parts(id, Some(&manifest)).await;
        let dir = layout::backup_path(&root, id).map_err(from_layout)?;
        // The manifest goes first: from then on the backup is no longer listed as complete.
        let _ = tokio::fs::remove_file(dir.join("manifest.json")).await;
        let _ = tokio::fs::remove_file(dir.join("metadata.json")).await;
        let r = root.clone();
        let i = id.to_string();
        let _ = self
            .blocking(move || {
                layout::remove_if_empty(&r, &i);
                Ok(())
            })
            .await;
        tracing::info!(backup_id = id, parts_left = left.len(), "backup deleted");
        Ok((manifest, left))
    }

    /// Asks every node in `manifest` (or in the current view) to delete its part; the nodes
    /// that did not.
    async fn delete_parts(&self, id: &str, manifest: Option<&Manifest>) -> Vec<String> {
        let snap = self.cluster.snapshot();
        let ids: Vec<String> = match manifest {
            Some(m) => m.nodes.iter().map(|n| n.node_id.clone()).collect(),
            None => snap.nodes.keys().cloned().collect(),
        };
        let mut left = Vec::new();
        for node_id in ids {
            let Some(e) = snap.nodes.get(&node_id) else {
                left.push(format!("{node_id}: not in the cluster"));
                continue;
            };
            let mut c = e.client.clone();
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                c.delete_backup_part(pb::BackupPartRequest {
                    backup_id: id.to_string(),
                }),
            )
            .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(s)) => left.push(format!("{node_id}: {}", s.message())),
                Err(_) => left.push(format!("{node_id}: no answer")),
            }
        }
        left
    }

    /// Deletes the oldest complete backups beyond `backup_retention`.
    async fn apply_retention(&self) {
        if self.retention == 0 {
            return;
        }
        let Ok(all) = self.list().await else {
            return;
        };
        let excess = all.len().saturating_sub(self.retention as usize);
        for m in all.iter().take(excess) {
            match self.delete(&m.backup_id).await {
                Ok(_) => tracing::info!(backup_id = %m.backup_id, "old backup deleted (retention)"),
                Err(e) => {
                    tracing::warn!(backup_id = %m.backup_id, error = %e, "retention: delete failed")
                }
            }
        }
    }
}

fn rand_u16() -> u16 {
    (pairdb_common::now_ms() as u16) ^ (std::process::id() as u16).rotate_left(7)
}

/// A backup document's bytes, at most `MAX_DOCUMENT_BYTES` (`None`: no such file).
async fn read_doc(path: &Path) -> Result<Option<Vec<u8>>> {
    let len = match tokio::fs::metadata(path).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(E::Internal(format!("{}: {e}", path.display())).into()),
    };
    if len > layout::MAX_DOCUMENT_BYTES {
        return Err(E::Internal(format!("{}: {len} bytes is too large", path.display())).into());
    }
    tokio::fs::read(path)
        .await
        .map(Some)
        .map_err(|e| E::Internal(format!("{}: {e}", path.display())).into())
}

fn list_manifests(root: &Path) -> std::result::Result<Vec<Manifest>, BackupError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(BackupError::Io {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    for e in rd.flatten() {
        let path = e.path().join("manifest.json");
        if !path.exists() {
            continue;
        }
        match layout::read_json::<Manifest>(&path) {
            Ok(m) => out.push(m),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "unreadable backup manifest skipped")
            }
        }
    }
    out.sort_by(|a, b| (a.created_at_ms, &a.backup_id).cmp(&(b.created_at_ms, &b.backup_id)));
    Ok(out)
}

/// The manifest of backup `id` under `root` (`InvalidArgument` when there is none).
pub async fn read_manifest(root: &Path, id: &str) -> Result<Manifest> {
    let path = layout::backup_path(root, id)
        .map_err(from_layout)?
        .join("manifest.json");
    let body = read_doc(&path)
        .await?
        .ok_or_else(|| E::InvalidArgument(format!("no complete backup {id}")))?;
    layout::parse_json(&path, &body).map_err(from_layout)
}

/// Where a restored node listens (a node keeps its id; its address may change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
    pub admin_port: u16,
}

/// Restores backup `id`'s metadata part into `meta`, which must hold no storage node: every
/// tenant, token (hash) and node (NORMAL, at `addresses[node_id]` or where it was). Checks
/// the metadata part against the manifest first. Returns the manifest.
pub async fn restore_metadata(
    meta: &dyn MetaStore,
    root: &Path,
    id: &str,
    addresses: &HashMap<String, NodeAddress>,
) -> Result<Manifest> {
    let manifest = read_manifest(root, id).await?;
    let path = layout::backup_path(root, id)
        .map_err(from_layout)?
        .join("metadata.json");
    let body = read_doc(&path)
        .await?
        .ok_or_else(|| E::InvalidArgument(format!("backup {id} has no metadata.json")))?;
    let doc: Metadata = layout::parse_json(&path, &body).map_err(from_layout)?;
    if layout::sha256_bytes(&body) != manifest.metadata_sha256 {
        return Err(E::ChecksumFailed(format!(
            "backup {id}: metadata.json does not match its manifest"
        ))
        .into());
    }
    for a in addresses.keys() {
        if !doc.nodes.iter().any(|n| &n.node_id == a) {
            return Err(E::InvalidArgument(format!("backup {id} has no node {a}")).into());
        }
    }
    if !meta.list_nodes().await?.is_empty() {
        return Err(E::TopologyConflict(
            "the metadata store already has storage nodes: restore into an empty one".into(),
        )
        .into());
    }
    for t in &doc.tenants {
        match meta.create_tenant(&tenant_record(t)?).await {
            Ok(()) | Err(crate::meta::MetaError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for t in &doc.tokens {
        let role = TokenRole::parse(&t.role)
            .ok_or_else(|| E::InvalidArgument(format!("bad token role {:?}", t.role)))?;
        let r = meta
            .create_token(&TokenRecord {
                token_id: t.token_id.clone(),
                token_hash: t.token_hash.clone(),
                role,
                tenant_id: t.tenant_id.clone(),
                write: t.write,
                description: t.description.clone(),
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                revoked_at_ms: t.revoked_at_ms,
            })
            .await;
        match r {
            Ok(()) | Err(crate::meta::MetaError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for n in &doc.nodes {
        let at = addresses.get(&n.node_id).cloned().unwrap_or(NodeAddress {
            host: n.host.clone(),
            port: n.port,
            admin_port: n.admin_port,
        });
        let mut rec = NodeRecord::new(
            &n.node_id,
            &at.host,
            at.port,
            at.admin_port,
            NodeState::Normal,
        );
        rec.zone = n.zone.clone();
        rec.virtual_nodes = n.virtual_nodes;
        meta.add_node(&rec).await?;
    }
    tracing::info!(
        backup_id = id,
        nodes = doc.nodes.len(),
        tenants = doc.tenants.len(),
        tokens = doc.tokens.len(),
        "backup metadata restored"
    );
    Ok(manifest)
}
