//! Migrations, nodes, tenants, hints and context keys.

use super::*;

pub async fn migrations_are_idempotent_and_the_ring_starts_at_one(store: Arc<dyn MetaStore>) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.ring_version().await.unwrap(), 1);
}

/// Drain: set and cleared with a ring-version bump each; a second drain keeps the first
/// time; an unknown node is `NotFound` and bumps nothing.
pub async fn drain(store: Arc<dyn MetaStore>) {
    store
        .add_node(&node("n1", NodeState::Normal))
        .await
        .unwrap();
    let v0 = store.ring_version().await.unwrap();
    assert_eq!(
        store.get_node("n1").await.unwrap().unwrap().drained_at_ms,
        None
    );
    let v1 = store
        .set_drained("n1", Some(1_800_000_000_500))
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1);
    let n1 = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(n1.drained_at_ms, Some(1_800_000_000_500));
    assert!(n1.drained());
    let v2 = store
        .set_drained("n1", Some(1_800_000_999_000))
        .await
        .unwrap();
    assert_eq!(v2, v1 + 1);
    assert_eq!(
        store.get_node("n1").await.unwrap().unwrap().drained_at_ms,
        Some(1_800_000_000_500),
        "a second drain keeps the first time"
    );
    assert_eq!(store.set_drained("n1", None).await.unwrap(), v2 + 1);
    assert!(!store.get_node("n1").await.unwrap().unwrap().drained());
    assert!(matches!(
        store.set_drained("nope", Some(1)).await,
        Err(MetaError::NotFound(_))
    ));
    assert_eq!(store.ring_version().await.unwrap(), v2 + 1);
}

pub async fn nodes(store: Arc<dyn MetaStore>) {
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
}

pub async fn tenants(store: Arc<dyn MetaStore>) {
    // Tenants.
    let mut t = TenantRecord::with_defaults("acme");
    store.create_tenant(&t).await.unwrap();
    assert_eq!(
        store
            .get_tenant("acme")
            .await
            .unwrap()
            .unwrap()
            .max_state_bytes,
        3 << 20
    );
    assert!(matches!(
        store.create_tenant(&t).await,
        Err(MetaError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_tenant("acme")
            .await
            .unwrap()
            .unwrap()
            .target_replication_factor,
        None
    );
    // A replication-factor change in progress is stored and cleared.
    t.target_replication_factor = Some(5);
    store.update_tenant(&t).await.unwrap();
    let got = store.get_tenant("acme").await.unwrap().unwrap();
    assert_eq!(
        (got.replication_factor, got.target_replication_factor),
        (3, Some(5))
    );
    assert_eq!(got.write_fanout(), 5);
    t.target_replication_factor = None;
    t.replication_factor = 5;
    t.conflict_policy = pairdb_common::version::ConflictPolicy::Lww;
    t.read_consistency = Level::One;
    t.max_state_bytes = 2 << 20;
    t.rate_limit_rps = 50;
    store.update_tenant(&t).await.unwrap();
    let got = store.get_tenant("acme").await.unwrap().unwrap();
    assert_eq!(
        (
            got.replication_factor,
            got.conflict_policy,
            got.read_consistency,
            got.max_state_bytes,
            got.rate_limit_rps
        ),
        (5, t.conflict_policy, Level::One, 2 << 20, 50)
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
}

pub async fn hints(store: Arc<dyn MetaStore>) {
    // Hints: claims are disjoint until released; failures count; dead hints go. The store
    // stamps `created_at` by its own clock (PostgreSQL's) where it has one, so the old hint is
    // old by being stored before the TTL cutoff, not by what its coordinator said.
    store
        .insert_hints(&[NewHint {
            target_node_id: "n1".into(),
            tenant_id: "acme".into(),
            key: b"old".to_vec(),
            payload: vec![9],
            created_at_ms: pairdb_common::now_ms() - 10_000_000,
        }])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let cutoff = store.clock_ms().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let now = pairdb_common::now_ms();
    let batch: Vec<NewHint> = (0..10u8)
        .map(|i| NewHint {
            target_node_id: "n2".into(),
            tenant_id: "acme".into(),
            key: vec![i, 0, 255],
            payload: vec![1, 2, 3, i],
            created_at_ms: now,
        })
        .collect();
    store.insert_hints(&batch).await.unwrap();
    store.insert_hints(&[]).await.unwrap();
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
    // A failed delivery backs off: not claimable until its retry delay passed.
    store
        .fail_hint(a[1].hint_id, "connection refused", true, 60_000)
        .await
        .unwrap();
    assert!(
        store
            .claim_hints("n2", "coord-c", 60_000, 6)
            .await
            .unwrap()
            .is_empty(),
        "a failed hint waits for its retry delay"
    );
    store
        .fail_hint(a[2].hint_id, "connection refused", true, 0)
        .await
        .unwrap();
    let again = store.claim_hints("n2", "coord-c", 60_000, 6).await.unwrap();
    assert_eq!(again.len(), 1, "a failed hint is released for another try");
    assert_eq!(
        (again[0].replay_count, again[0].last_error.as_deref()),
        (1, Some("connection refused"))
    );
    // A refusal that does not spend an attempt (a full disk, maintenance).
    store
        .fail_hint(again[0].hint_id, "disk full", false, 0)
        .await
        .unwrap();
    let again = store.claim_hints("n2", "coord-c", 60_000, 6).await.unwrap();
    assert_eq!(
        (
            again.len(),
            again[0].replay_count,
            again[0].last_error.as_deref()
        ),
        (1, 1, Some("disk full"))
    );
    let targets = store.hint_targets().await.unwrap();
    assert_eq!(
        targets
            .iter()
            .map(|t| (t.node_id.as_str(), t.pending, t.bytes))
            .collect::<Vec<_>>(),
        vec![("n1", 1, 1), ("n2", 9, 36)]
    );
    // TTL: the old hint; attempts: none has 3 yet.
    assert_eq!(store.delete_dead_hints(cutoff, 3).await.unwrap(), 1);
    for _ in 0..2 {
        store
            .fail_hint(again[0].hint_id, "still down", true, 0)
            .await
            .unwrap();
    }
    assert_eq!(
        store.delete_dead_hints(cutoff, 3).await.unwrap(),
        1,
        "third failure: given up"
    );
    assert_eq!(store.count_hints_for("n2").await.unwrap(), 8);
    // A removed target's hints go at once, and only its.
    store
        .insert_hints(&[NewHint {
            target_node_id: "n1".into(),
            tenant_id: "acme".into(),
            key: b"gone".to_vec(),
            payload: vec![7],
            created_at_ms: pairdb_common::now_ms(),
        }])
        .await
        .unwrap();
    assert_eq!(store.delete_hints_for("n1").await.unwrap(), 1);
    assert_eq!(store.count_hints_for("n1").await.unwrap(), 0);
    assert_eq!(store.count_hints_for("n2").await.unwrap(), 8);
}

pub async fn context_keys(store: Arc<dyn MetaStore>) {
    // Context keys: the first is created once; a rotation makes a new current key and keeps the
    // previous one within its grace; keys past it are gone.
    let first = store.context_keys(b"secret-1").await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].key_id, first[0].secret.as_slice()),
        (1, &b"secret-1"[..])
    );
    assert_eq!(first[0].retires_at_ms, None);
    let again = store.context_keys(b"another").await.unwrap();
    assert_eq!(again, first, "the first key is created only once");
    assert_eq!(
        store.rotate_context_key(b"secret-2", 60_000).await.unwrap(),
        2
    );
    let keys = store.context_keys(b"unused").await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key_id).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(keys[0].retires_at_ms, None);
    assert!(keys[1].retires_at_ms.unwrap() > pairdb_common::now_ms());
    assert_eq!(store.rotate_context_key(b"secret-3", 0).await.unwrap(), 3);
    let keys = store.context_keys(b"unused").await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.key_id).collect::<Vec<_>>(),
        vec![3, 1],
        "key 2 retired with no grace; key 1 still within its own"
    );
    assert_eq!(keys[0].secret, b"secret-3");
}
