//! Bearer tokens: scopes, read-only, revocation, hashed storage.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_scoped_read_only_revocable_and_stored_hashed() {
    let _s = serial_async().await;
    let c = start().await;
    let (_, ta) = c.create_token("tenant", "a", false).await;
    let (ro_id, ro) = c.create_token("tenant", "a", true).await;
    let (admin_id, admin) = c.create_token("admin", "", false).await;
    let on = |t: &str, tenant: &str| {
        let mut w = write_req(b"k", b"v", vec![], pb::Consistency::Quorum);
        w.tenant_id = tenant.into();
        let mut r = read_req(b"k", pb::Consistency::Quorum);
        r.tenant_id = tenant.into();
        (t.to_string(), w, r)
    };

    // No token, a malformed one, an unknown one: UNAUTHENTICATED.
    let mut none = c.dial(0, None).connect().await.unwrap();
    let (_, w, r) = on("", "a");
    assert_eq!(
        code(none.write(w.clone()).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(none.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    let mut forged = c
        .dial(0, Some(&format!("{}x", &ta[..ta.len() - 1])))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        code(forged.write(w.clone()).await),
        tonic::Code::Unauthenticated
    );

    // Tenant token for a: reads and writes a, nothing of b, no admin method.
    let mut a = c.dial(0, Some(&ta)).connect().await.unwrap();
    a.write(w.clone()).await.unwrap();
    a.read(r.clone()).await.unwrap();
    let (_, wb, rb) = on("", "b");
    assert_eq!(
        code(a.write(wb.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(a.read(rb.clone()).await),
        tonic::Code::PermissionDenied
    );
    let batch = pb::BatchWriteItemsRequest {
        items: vec![w.clone(), wb.clone()],
    };
    assert_eq!(
        code(a.batch_write(batch).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            a.get_tenant(pb::GetTenantRequest {
                tenant_id: "b".into()
            })
            .await
        ),
        tonic::Code::PermissionDenied
    );
    assert!(
        a.get_tenant(pb::GetTenantRequest {
            tenant_id: "a".into()
        })
        .await
        .is_ok()
    );
    let remove = pb::RemoveStorageNodeRequest {
        node_id: "n1".into(),
        force: true,
        acknowledge_data_loss: true,
    };
    assert_eq!(
        code(a.remove_storage_node(remove.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(a.list_tokens(pb::ListTokensRequest {}).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            a.update_tenant(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    tenant_id: "a".into(),
                    replication_factor: 1,
                    ..Default::default()
                })
            })
            .await
        ),
        tonic::Code::PermissionDenied
    );
    // Read-only: reads, never writes or deletes.
    let mut r_only = c.dial(0, Some(&ro)).connect().await.unwrap();
    r_only.read(r.clone()).await.unwrap();
    assert_eq!(
        code(r_only.write(w.clone()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            r_only
                .delete(pb::DeleteRequest {
                    tenant_id: "a".into(),
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .await
        ),
        tonic::Code::PermissionDenied
    );
    // An admin token reaches everything (a token made on coordinator 0 works on 1 at once).
    let mut adm = c.dial(1, Some(&admin)).connect().await.unwrap();
    adm.write(wb.clone()).await.unwrap();
    adm.list_tokens(pb::ListTokensRequest {}).await.unwrap();

    // Revoked on coordinator 0: refused there at once, on coordinator 1 within the refresh
    // (token_refresh_ms = 500).
    let mut ro1 = c.dial(1, Some(&ro)).connect().await.unwrap();
    ro1.read(r.clone()).await.unwrap();
    let mut admin0 = c.dial(0, Some(&admin)).connect().await.unwrap();
    admin0
        .revoke_token(pb::RevokeTokenRequest {
            token_id: ro_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        code(r_only.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    let revoked_at = std::time::Instant::now();
    wait_async(
        "coordinator 1 refuses the revoked token",
        Duration::from_secs(5),
        || {
            let mut ro1 = ro1.clone();
            let r = r.clone();
            async move { ro1.read(r).await.is_err() }
        },
    )
    .await
    .unwrap();
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        code(ro1.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );

    // The tokens table holds hashes only, and list shows the revocation.
    let rows = c.meta.list_tokens().await.unwrap();
    assert_eq!(rows.len(), 3);
    for t in [&ta, &ro, &admin] {
        assert!(
            rows.iter()
                .all(|row| !row.token_hash.contains(&t[5..]) && row.token_hash != *t)
        );
        assert!(
            rows.iter()
                .any(|row| pairdb_common::auth::hash_matches(&row.token_hash, t))
        );
    }
    let listed = admin0
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let ro_row = listed.iter().find(|t| t.token_id == ro_id).unwrap();
    assert!(ro_row.revoked_at_ms > 0 && ro_row.access == "read");
    assert!(
        listed
            .iter()
            .any(|t| t.token_id == admin_id && t.role == "admin")
    );
    // Bad token requests are refused with a clear code.
    for bad in [
        pb::CreateTokenRequest {
            role: "root".into(),
            ..Default::default()
        },
        pb::CreateTokenRequest {
            role: "tenant".into(),
            tenant_id: "nope".into(),
            ..Default::default()
        },
        pb::CreateTokenRequest {
            role: "admin".into(),
            tenant_id: "a".into(),
            ..Default::default()
        },
    ] {
        let s = admin0.create_token(bad).await.unwrap_err();
        assert!(
            matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{s:?}"
        );
    }
    // An expired token is refused.
    let r2 = admin0
        .create_token(pb::CreateTokenRequest {
            role: "tenant".into(),
            tenant_id: "a".into(),
            expires_in_secs: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut soon = c.dial(0, Some(&r2.token)).connect().await.unwrap();
    soon.read(r.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(soon.read(r.clone()).await),
        tonic::Code::Unauthenticated
    );
    c.shutdown().await;
}
