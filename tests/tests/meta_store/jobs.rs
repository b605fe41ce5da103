//! Bearer tokens (stored by hash, scoped, revocable) and repair runs (one active at a time,
//! leases, finish by the owner only).

use super::*;

fn token(id: &str, role: TokenRole, tenant: Option<&str>, write: bool) -> TokenRecord {
    TokenRecord {
        token_id: id.into(),
        token_hash: format!("sha256-of-{id}"),
        role,
        tenant_id: tenant.map(str::to_string),
        write,
        description: format!("token {id}"),
        created_at_ms: 1_800_000_000_000,
        expires_at_ms: None,
        revoked_at_ms: None,
    }
}

pub async fn tokens(store: Arc<dyn MetaStore>) {
    let admin = token("tok-admin", TokenRole::Admin, None, true);
    let mut reader = token("tok-reader", TokenRole::Tenant, Some("acme"), false);
    reader.expires_at_ms = Some(1_900_000_000_000);
    store.create_token(&admin).await.unwrap();
    store.create_token(&reader).await.unwrap();
    assert!(matches!(
        store.create_token(&admin).await,
        Err(MetaError::Conflict(_))
    ));
    // A tenant token must name its tenant (a CHECK in both schemas).
    assert!(
        store
            .create_token(&token("tok-bad", TokenRole::Tenant, None, true))
            .await
            .is_err()
    );
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(
        listed,
        vec![admin.clone(), reader.clone()],
        "ordered by creation"
    );

    let revoked = store.revoke_token("tok-reader").await.unwrap();
    let at = revoked.revoked_at_ms.expect("revoked_at recorded");
    assert!(at >= pairdb_common::now_ms() - 60_000, "{at}");
    assert_eq!(
        (
            revoked.token_hash.as_str(),
            revoked.write,
            revoked.expires_at_ms
        ),
        ("sha256-of-tok-reader", false, Some(1_900_000_000_000))
    );
    let again = store.revoke_token("tok-reader").await.unwrap();
    assert_eq!(
        again.revoked_at_ms,
        Some(at),
        "a second revoke keeps the first time"
    );
    assert!(matches!(
        store.revoke_token("tok-ghost").await,
        Err(MetaError::NotFound(_))
    ));
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed[0].revoked_at_ms, None);
    assert_eq!(listed[1].revoked_at_ms, Some(at));
}

fn repair(id: &str, started_at_ms: u64) -> RepairRecord {
    RepairRecord {
        repair_id: id.into(),
        tenant_id: Some("acme".into()),
        status: "running".into(),
        progress: r#"{"percent":0}"#.into(),
        plan: "[]".into(),
        params: r#"{"scope":"all"}"#.into(),
        lease_owner: None,
        lease_expires_at_ms: None,
        started_at_ms,
        completed_at_ms: None,
        error: None,
    }
}

pub async fn repairs(store: Arc<dyn MetaStore>) {
    let now = pairdb_common::now_ms();
    store.create_repair(&repair("r1", now)).await.unwrap();
    // One active run at a time; the refusal names the running one.
    match store.create_repair(&repair("r2", now + 1)).await {
        Err(MetaError::Conflict(m)) => assert!(m.contains("r1"), "{m}"),
        other => panic!("a second active repair: {other:?}"),
    }
    let r1 = store.get_repair("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r1.tenant_id.as_deref(),
            r1.status.as_str(),
            r1.started_at_ms
        ),
        (Some("acme"), "running", now)
    );
    let params: serde_json::Value = serde_json::from_str(&r1.params).unwrap();
    assert_eq!(params["scope"], "all");
    assert!(store.get_repair("nope").await.unwrap().is_none());

    // Leases and saves, the same statements as topology changes.
    assert!(
        store
            .claim_job(JobTable::Repair, "r1", "a", now, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_job(JobTable::Repair, "r1", "b", now + 10, 1_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .save_job(
                JobTable::Repair,
                "r1",
                "a",
                now + 20,
                1_000,
                Some(r#"[{"range":1}]"#),
                r#"{"percent":40}"#,
                None
            )
            .await
            .unwrap()
    );
    let r1 = store.get_repair("r1").await.unwrap().unwrap();
    assert_eq!(r1.lease_owner.as_deref(), Some("a"));
    // Renewed for 1 s from the save (by the store's clock: PostgreSQL's own).
    let expires = r1.lease_expires_at_ms.unwrap();
    assert!(
        (now + 1_000..now + 6_000).contains(&expires),
        "{expires} vs {now}"
    );
    let p: serde_json::Value = serde_json::from_str(&r1.progress).unwrap();
    assert_eq!(p["percent"], 40);
    let plan: serde_json::Value = serde_json::from_str(&r1.plan).unwrap();
    assert_eq!(plan[0]["range"], 1);

    // Only the lease holder finishes it; then the slot is free for the next run.
    assert!(
        !store
            .finish_repair("r1", "b", "completed", "[]", "{}", None)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_repair("r1", "a", "completed", "[]", r#"{"percent":100}"#, None)
            .await
            .unwrap()
    );
    let r1 = store.get_repair("r1").await.unwrap().unwrap();
    assert_eq!(r1.status, "completed");
    assert!(r1.completed_at_ms.is_some() && r1.lease_owner.is_none());
    assert!(
        !store
            .claim_job(JobTable::Repair, "r1", "a", now + 30, 1_000)
            .await
            .unwrap(),
        "a finished run is not claimable"
    );
    store.create_repair(&repair("r2", now + 1)).await.unwrap();
    store
        .create_repair(&repair("r3", now + 2))
        .await
        .unwrap_err();
    assert_eq!(
        store
            .list_repairs(10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.repair_id.as_str())
            .collect::<Vec<_>>(),
        vec!["r2", "r1"],
        "newest first"
    );
    assert_eq!(store.list_repairs(1).await.unwrap().len(), 1);
}
