//! Tenant RPCs and the rules a tenant's settings must keep (every key stays readable).

use super::*;

pub(super) fn tenant_pb(t: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.tenant_id.clone(),
        replication_factor: t.replication_factor,
        read_consistency: level_pb(t.read_consistency) as i32,
        write_consistency: level_pb(t.write_consistency) as i32,
        conflict_policy: convert::policy_to_pb(t.conflict_policy) as i32,
        max_value_bytes: t.max_value_bytes,
        sibling_warn: t.sibling_warn,
        sibling_max: t.sibling_max,
        rate_limit_rps: t.rate_limit_rps,
        max_state_bytes: t.max_state_bytes,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        target_replication_factor: t.target_replication_factor.unwrap_or(0),
    }
}

/// Applies the non-default fields of `p` onto `t`, validating each, then the rules between
/// them ([`check_tenant`]).
pub(super) fn apply_tenant_fields(t: &mut TenantRecord, p: &pb::Tenant) -> Result<()> {
    if p.replication_factor != 0 {
        if !(1..=7).contains(&p.replication_factor) {
            return Err(E::InvalidArgument(format!(
                "replication_factor {} must be 1-7",
                p.replication_factor
            ))
            .into());
        }
        t.replication_factor = p.replication_factor;
    }
    if let Some(l) = level(p.read_consistency) {
        if l == Level::Any {
            return Err(E::InvalidArgument("ANY is not a read consistency".into()).into());
        }
        t.read_consistency = l;
    }
    if let Some(l) = level(p.write_consistency) {
        t.write_consistency = l;
    }
    if p.conflict_policy != 0 {
        t.conflict_policy = convert::policy_from_pb(p.conflict_policy);
    }
    if p.max_value_bytes != 0 {
        if p.max_value_bytes as usize > validate::HARD_MAX_VALUE_BYTES {
            return Err(E::InvalidArgument(format!(
                "max_value_bytes {} is above the 16 MiB cap",
                p.max_value_bytes
            ))
            .into());
        }
        t.max_value_bytes = p.max_value_bytes;
    }
    if p.sibling_max != 0 {
        if p.sibling_max as usize > validate::HARD_MAX_SIBLINGS {
            return Err(E::InvalidArgument(format!(
                "sibling_max must be at most {}",
                validate::HARD_MAX_SIBLINGS
            ))
            .into());
        }
        t.sibling_max = p.sibling_max;
    }
    if p.sibling_warn != 0 {
        t.sibling_warn = p.sibling_warn;
    }
    if p.rate_limit_rps != 0 {
        t.rate_limit_rps = p.rate_limit_rps;
    }
    if p.max_state_bytes != 0 {
        t.max_state_bytes = p.max_state_bytes;
    }
    check_tenant(t)
}

/// The rules between a tenant's limits: one largest value fits its state cap, and the worst
/// merged state of a key (every replica coordinating writes apart under a partition, each up
/// to the cap) plus its read answer stays inside a message, so every key stays readable.
pub(super) fn check_tenant(t: &TenantRecord) -> Result<()> {
    let value = validate::effective_max_value_bytes(t.max_value_bytes);
    let state = t.max_state_bytes as usize;
    if state > validate::HARD_MAX_STATE_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes {state} is above the {} cap",
            validate::HARD_MAX_STATE_BYTES
        ))
        .into());
    }
    if state < value + validate::STATE_OVERHEAD_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes {state} must be at least max_value_bytes ({value}) + {} (a largest value with its context)",
            validate::STATE_OVERHEAD_BYTES
        ))
        .into());
    }
    let worst = state * t.replication_factor as usize + value;
    if worst > validate::MESSAGE_BUDGET_BYTES {
        return Err(E::InvalidArgument(format!(
            "max_state_bytes x replication_factor + max_value_bytes = {worst} is above {}: a key merged from every replica could not be read in one message; lower max_state_bytes or max_value_bytes",
            validate::MESSAGE_BUDGET_BYTES
        ))
        .into());
    }
    if t.sibling_warn as usize > validate::HARD_MAX_SIBLINGS {
        return Err(E::InvalidArgument(format!(
            "sibling_warn must be at most {}",
            validate::HARD_MAX_SIBLINGS
        ))
        .into());
    }
    Ok(())
}

impl CoordinatorApi {
    pub(super) async fn rpc_create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.audited("CreateTenant", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let p = req.into_inner().tenant.unwrap_or_default();
                validate::tenant_id(&p.tenant_id)?;
                let mut t = TenantRecord::with_defaults(&p.tenant_id);
                apply_tenant_fields(&mut t, &p)?;
                self.meta.create_tenant(&t).await.map_err(|e| match e {
                    crate::meta::MetaError::Conflict(_) => Error::from(E::InvalidArgument(
                        format!("tenant {} already exists", t.tenant_id),
                    )),
                    other => other.into(),
                })?;
                let t = self.meta.get_tenant(&t.tenant_id).await?.unwrap_or(t);
                self.data.tenants.remember(t.clone());
                Ok(tenant_pb(&t))
            }
            .await;
            self.observe("create_tenant", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    pub(super) async fn rpc_get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        Principal::of(&req)
            .check_tenant(&req.get_ref().tenant_id)
            .map_err(Error::from)?;
        let id = req.into_inner().tenant_id;
        validate::tenant_id(&id).map_err(Error::from)?;
        match self.meta.get_tenant(&id).await.map_err(Error::from)? {
            Some(t) => Ok(Response::new(tenant_pb(&t))),
            None => Err(Error::from(E::TenantNotFound(id)).into()),
        }
    }

    pub(super) async fn rpc_update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> std::result::Result<Response<pb::Tenant>, Status> {
        self.audited("UpdateTenant", req, |req| async move {
            let started = Instant::now();
            let r = async {
                let p = req.into_inner().tenant.unwrap_or_default();
                validate::tenant_id(&p.tenant_id)?;
                let mut t = self
                    .meta
                    .get_tenant(&p.tenant_id)
                    .await?
                    .ok_or_else(|| E::TenantNotFound(p.tenant_id.clone()))?;
                let current = t.replication_factor;
                apply_tenant_fields(&mut t, &p)?;
                let wanted = t.replication_factor;
                t.replication_factor = current;
                let moving = wanted != current && t.target_replication_factor != Some(wanted);
                if wanted != current {
                    // The rules must hold at the larger of the two while both are in use.
                    let mut widest = t.clone();
                    widest.replication_factor = wanted.max(current);
                    check_tenant(&widest)?;
                    if moving {
                        self.repairs.check_idle().await?;
                        self.check_no_rf_cleanup(&t.tenant_id).await?;
                    }
                    t.target_replication_factor = Some(wanted);
                } else {
                    // Asking for the current factor cancels a change in progress.
                    t.target_replication_factor = None;
                }
                self.meta.update_tenant(&t).await?;
                let t = self.meta.get_tenant(&t.tenant_id).await?.unwrap_or(t);
                self.data.tenants.remember(t.clone());
                if let Some(target) = t.target_replication_factor {
                    self.start_rf_change(&t, target).await?;
                }
                Ok(tenant_pb(&t))
            }
            .await;
            self.observe("update_tenant", started, &r);
            Ok(Response::new(r?))
        })
        .await
    }

    pub(super) async fn rpc_list_tenants(
        &self,
        _req: Request<pb::ListTenantsRequest>,
    ) -> std::result::Result<Response<pb::ListTenantsResponse>, Status> {
        let all = self.meta.list_tenants().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: all.iter().map(tenant_pb).collect(),
        }))
    }

    /// TOPOLOGY_CONFLICT while the cleanup of an earlier decrease of `tenant`'s factor is
    /// pending or running: it would drop copies a new change is about to count on.
    async fn check_no_rf_cleanup(&self, tenant: &str) -> Result<()> {
        for c in self.meta.list_changes(false).await? {
            if c.kind != crate::meta::ChangeKind::Cleanup {
                continue;
            }
            let params =
                crate::topology::parse_params(&c).map_err(|e| E::Internal(e.to_string()))?;
            if params.tenant.as_deref() == Some(tenant) {
                return Err(E::TopologyConflict(format!(
                    "cleanup {} of tenant {tenant}'s surplus copies (after its replication factor was lowered) is {}; wait for it, or abort it with `pairdbctl changes abort {}`",
                    c.change_id,
                    c.status.as_str(),
                    c.change_id
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Starts the repair that moves tenant `t` to `target` replicas: over the larger of the
    /// two factors, so the replicas gaining the tenant's ranges receive every key (a lower
    /// factor: the replicas keeping them hold everything the dropped ones had). Waits first
    /// until every coordinator has reloaded the tenant (two refresh periods), so each sends
    /// writes to the gaining replicas before the repair passes their ranges.
    async fn start_rf_change(&self, t: &TenantRecord, target: u32) -> Result<()> {
        let wait = self.data.tenants.refresh_period() * 2;
        tokio::time::sleep(wait).await;
        let params = crate::repair::Params {
            tenant: Some(t.tenant_id.clone()),
            trigger: "replication_factor".into(),
            replication_factor: Some(target.max(t.replication_factor) as usize),
            set_replication_factor: Some(target),
            ..Default::default()
        };
        let run = self.repairs.start(params, None).await?;
        tracing::info!(tenant = %t.tenant_id, from = t.replication_factor, to = target, repair_id = %run.repair_id, "replication factor change started");
        Ok(())
    }
}
