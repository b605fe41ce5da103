//! Repair and hint RPCs.

use super::*;

pub(super) fn repair_status(r: &crate::meta::RepairRecord) -> pb::RepairStatus {
    pb::RepairStatus {
        repair_id: r.repair_id.clone(),
        status: r.status.clone(),
        progress_json: r.progress.clone(),
        started_at_ms: r.started_at_ms,
        completed_at_ms: r.completed_at_ms.unwrap_or(0),
        error: r.error.clone().unwrap_or_default(),
        driver: r.lease_owner.clone().unwrap_or_default(),
    }
}

impl CoordinatorApi {
    pub(super) async fn rpc_start_repair(
        &self,
        req: Request<pb::StartRepairRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        self.audited("StartRepair", req, |req| async move {
            let q = req.into_inner();
            let tenant = (!q.tenant_id.is_empty()).then_some(q.tenant_id);
            if let Some(t) = &tenant {
                validate::tenant_id(t).map_err(|e| e.to_status())?;
            }
            let params = crate::repair::Params {
                tenant,
                trigger: "manual".into(),
                ..Default::default()
            };
            let range = q.range.map(|r| convert::range_from_pb(Some(r)));
            let run = self.repairs.start(params, range).await?;
            Ok(Response::new(repair_status(&run)))
        })
        .await
    }

    pub(super) async fn rpc_get_repair_status(
        &self,
        req: Request<pb::GetRepairStatusRequest>,
    ) -> std::result::Result<Response<pb::RepairStatus>, Status> {
        let id = req.into_inner().repair_id;
        check_id("repair_id", &id)?;
        let run = self.repairs.status(&id).await?;
        Ok(Response::new(repair_status(&run)))
    }

    pub(super) async fn rpc_get_hint_stats(
        &self,
        _req: Request<pb::GetHintStatsRequest>,
    ) -> std::result::Result<Response<pb::HintStats>, Status> {
        let targets = self.meta.hint_targets().await.map_err(Error::from)?;
        let m = &self.data.metrics;
        Ok(Response::new(pb::HintStats {
            pending: targets.iter().map(|t| t.pending).sum(),
            stored_total: m.hints_stored.get(),
            replayed_total: m.hints_replayed.get(),
            failed_total: m.hints_failed.get(),
            targets: targets
                .iter()
                .map(|t| pb::HintTargetStats {
                    node_id: t.node_id.clone(),
                    pending: t.pending,
                    oldest_created_at_ms: t.oldest_created_at_ms,
                    bytes: t.bytes,
                })
                .collect(),
        }))
    }
}
