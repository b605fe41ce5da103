//! Backup RPCs onto `crate::backup` (admin only, audited).

use super::*;
use crate::backup::{Found, Manifest, Taking};

fn info(m: &Manifest) -> pb::BackupInfo {
    pb::BackupInfo {
        backup_id: m.backup_id.clone(),
        created_at_ms: m.created_at_ms,
        completed_at_ms: m.completed_at_ms,
        ring_version: m.ring_version,
        tenants: m.tenants,
        nodes: m
            .nodes
            .iter()
            .map(|n| pb::BackupNodePart {
                node_id: n.node_id.clone(),
                address: format!("{}:{}", n.host, n.port),
                epoch: n.epoch,
                files: n.files,
                bytes: n.bytes,
                linked: n.linked,
            })
            .collect(),
        bytes: m.bytes(),
        coordinator_id: m.coordinator_id.clone(),
        status: "completed".into(),
        error: String::new(),
    }
}

fn check_backup_id(id: &str) -> Result<()> {
    pairdb_common::backup::check_id(id).map_err(|e| E::InvalidArgument(e.to_string()))?;
    Ok(())
}

impl CoordinatorApi {
    pub(super) async fn rpc_create_backup(
        &self,
        req: Request<pb::CreateBackupRequest>,
    ) -> std::result::Result<Response<pb::BackupInfo>, Status> {
        self.audited("CreateBackup", req, |_req| async move {
            let (id, created_at_ms) = self.backups.start().await?;
            Ok(Response::new(pb::BackupInfo {
                backup_id: id,
                created_at_ms,
                status: "running".into(),
                coordinator_id: self.backups.coordinator_id.clone(),
                ..Default::default()
            }))
        })
        .await
    }

    pub(super) async fn rpc_get_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::BackupInfo>, Status> {
        let id = req.into_inner().backup_id;
        check_backup_id(&id)?;
        let b = match self.backups.get(&id).await? {
            Found::Completed(m) => info(&m),
            Found::Taking(t) => {
                let (created_at_ms, status, error) = match t {
                    Taking::Running { created_at_ms } => (created_at_ms, "running", String::new()),
                    Taking::Failed {
                        created_at_ms,
                        error,
                    } => (created_at_ms, "failed", error),
                };
                pb::BackupInfo {
                    backup_id: id,
                    created_at_ms,
                    status: status.into(),
                    error,
                    coordinator_id: self.backups.coordinator_id.clone(),
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(b))
    }

    pub(super) async fn rpc_list_backups(
        &self,
        _req: Request<pb::ListBackupsRequest>,
    ) -> std::result::Result<Response<pb::ListBackupsResponse>, Status> {
        let all = self.backups.list().await?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: all.iter().map(info).collect(),
        }))
    }

    pub(super) async fn rpc_verify_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::VerifyBackupResponse>, Status> {
        self.audited("VerifyBackup", req, |req| async move {
            let id = req.into_inner().backup_id;
            check_backup_id(&id)?;
            let (m, problems) = self.backups.verify(&id).await?;
            Ok(Response::new(pb::VerifyBackupResponse {
                backup: Some(info(&m)),
                problems,
            }))
        })
        .await
    }

    pub(super) async fn rpc_delete_backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<pb::DeleteBackupResponse>, Status> {
        self.audited("DeleteBackup", req, |req| async move {
            let id = req.into_inner().backup_id;
            check_backup_id(&id)?;
            let (m, left) = self.backups.delete(&id).await?;
            Ok(Response::new(pb::DeleteBackupResponse {
                backup: Some(info(&m)),
                left,
            }))
        })
        .await
    }
}
