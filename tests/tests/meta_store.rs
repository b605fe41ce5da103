//! The same behaviour suite against both metadata stores: SQLite (a temp file) and PostgreSQL
//! (a database created for this test run on the local server and dropped afterwards).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use pairdb_common::ring::NodeState;
use pairdb_coordinator::meta::*;
use pairdb_tests::cluster::PgDb;

fn node(id: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        host: "127.0.0.1".into(),
        port: 7001,
        admin_port: 9101,
        zone: "z1".into(),
        virtual_nodes: 150,
        state,
        status: NodeStatus::Unknown,
        last_seen_ms: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

async fn behaviour(store: Arc<dyn MetaStore>) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.ring_version().await.unwrap(), 1);

    // Nodes: add bumps the ring version; duplicates conflict.
    assert_eq!(
        store
            .add_node(&node("n1", NodeState::Normal))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .add_node(&node("n2", NodeState::Bootstrapping))
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        store.add_node(&node("n1", NodeState::Normal)).await,
        Err(MetaError::Conflict(_))
    ));
    assert_eq!(store.ring_version().await.unwrap(), 3);
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(),
        vec!["n1", "n2"]
    );
    assert_eq!(nodes[1].state, NodeState::Bootstrapping);
    assert!(
        nodes[0].created_at_ms > 1_700_000_000_000,
        "created_at recorded: {}",
        nodes[0].created_at_ms
    );
    store
        .record_status("n1", NodeStatus::Up, Some(1_800_000_000_123))
        .await
        .unwrap();
    let n1 = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (n1.status, n1.last_seen_ms),
        (NodeStatus::Up, Some(1_800_000_000_123))
    );
    store
        .record_status("n1", NodeStatus::Down, None)
        .await
        .unwrap();
    let n1 = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (n1.status, n1.last_seen_ms),
        (NodeStatus::Down, Some(1_800_000_000_123)),
        "last_seen kept"
    );
    assert!(store.get_node("nope").await.unwrap().is_none());

    // Tenants.
    let mut t = TenantRecord::with_defaults("acme");
    store.create_tenant(&t).await.unwrap();
    assert!(matches!(
        store.create_tenant(&t).await,
        Err(MetaError::Conflict(_))
    ));
    t.replication_factor = 5;
    t.conflict_policy = pairdb_common::version::ConflictPolicy::Lww;
    t.read_consistency = Level::One;
    store.update_tenant(&t).await.unwrap();
    let got = store.get_tenant("acme").await.unwrap().unwrap();
    assert_eq!(
        (
            got.replication_factor,
            got.conflict_policy,
            got.read_consistency
        ),
        (5, t.conflict_policy, Level::One)
    );
    assert!(matches!(
        store
            .update_tenant(&TenantRecord::with_defaults("ghost"))
            .await,
        Err(MetaError::NotFound(_))
    ));
    assert!(store.get_tenant("ghost").await.unwrap().is_none());
    store
        .create_tenant(&TenantRecord::with_defaults("beta"))
        .await
        .unwrap();
    assert_eq!(store.list_tenants().await.unwrap().len(), 2);

    // Hints: claims are disjoint until released; failures count; dead hints go.
    let now = pairdb_common::now_ms();
    for i in 0..10u8 {
        store
            .insert_hint(&NewHint {
                target_node_id: "n2".into(),
                tenant_id: "acme".into(),
                key: vec![i, 0, 255],
                payload: vec![1, 2, 3, i],
                created_at_ms: now,
            })
            .await
            .unwrap();
    }
    store
        .insert_hint(&NewHint {
            target_node_id: "n1".into(),
            tenant_id: "acme".into(),
            key: b"old".to_vec(),
            payload: vec![9],
            created_at_ms: now - 10_000_000,
        })
        .await
        .unwrap();
    assert_eq!(store.count_hints_for("n2").await.unwrap(), 10);
    let a = store.claim_hints("n2", "coord-a", 60_000, 6).await.unwrap();
    let b = store.claim_hints("n2", "coord-b", 60_000, 6).await.unwrap();
    assert_eq!((a.len(), b.len()), (6, 4));
    assert!(
        a.iter().all(|h| !b.iter().any(|x| x.hint_id == h.hint_id)),
        "claims are disjoint"
    );
    assert_eq!(a[0].key, vec![0, 0, 255]);
    assert_eq!(a[0].payload, vec![1, 2, 3, 0]);
    assert!(
        store
            .claim_hints("n2", "coord-c", 60_000, 6)
            .await
            .unwrap()
            .is_empty()
    );
    store.delete_hint(a[0].hint_id).await.unwrap();
    store
        .fail_hint(a[1].hint_id, "connection refused")
        .await
        .unwrap();
    let again = store.claim_hints("n2", "coord-c", 60_000, 6).await.unwrap();
    assert_eq!(again.len(), 1, "a failed hint is released for another try");
    assert_eq!(
        (again[0].replay_count, again[0].last_error.as_deref()),
        (1, Some("connection refused"))
    );
    let targets = store.hint_targets().await.unwrap();
    assert_eq!(
        targets
            .iter()
            .map(|t| (t.node_id.as_str(), t.pending))
            .collect::<Vec<_>>(),
        vec![("n1", 1), ("n2", 9)]
    );
    // TTL: the old hint; attempts: none has 3 yet.
    assert_eq!(
        store.delete_dead_hints(now - 1_000_000, 3).await.unwrap(),
        1
    );
    for _ in 0..2 {
        store
            .fail_hint(again[0].hint_id, "still down")
            .await
            .unwrap();
    }
    assert_eq!(
        store.delete_dead_hints(now - 1_000_000, 3).await.unwrap(),
        1,
        "third failure: given up"
    );
    assert_eq!(store.count_hints_for("n2").await.unwrap(), 8);
}

#[tokio::test]
async fn sqlite_store_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    behaviour(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_store_behaviour() {
    let db = PgDb::create().await.unwrap();
    behaviour(connect(&db.url).await.unwrap()).await;
}
