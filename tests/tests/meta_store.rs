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

    // Hints: claims are disjoint until released; failures count; dead hints go.
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
    store
        .insert_hints(&[NewHint {
            target_node_id: "n1".into(),
            tenant_id: "acme".into(),
            key: b"old".to_vec(),
            payload: vec![9],
            created_at_ms: now - 10_000_000,
        }])
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
    assert_eq!(
        store.delete_dead_hints(now - 1_000_000, 3).await.unwrap(),
        1
    );
    for _ in 0..2 {
        store
            .fail_hint(again[0].hint_id, "still down", true, 0)
            .await
            .unwrap();
    }
    assert_eq!(
        store.delete_dead_hints(now - 1_000_000, 3).await.unwrap(),
        1,
        "third failure: given up"
    );
    assert_eq!(store.count_hints_for("n2").await.unwrap(), 8);

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

    changes(&*store).await;
}

fn change(id: &str, kind: ChangeKind, node_id: &str) -> ChangeRecord {
    ChangeRecord {
        change_id: id.into(),
        kind,
        node_id: node_id.into(),
        status: ChangeStatus::Pending,
        progress: r#"{"phase":"pending"}"#.into(),
        plan: "[]".into(),
        params: r#"{"adds":["n3"]}"#.into(),
        lease_owner: None,
        lease_expires_at_ms: None,
        start_time_ms: 0,
        completed_at_ms: None,
        not_before_ms: None,
        error: None,
    }
}

/// Topology changes: atomic node writes with preconditions, one lease holder at a time,
/// serialized admission, progress saves that fail once the lease is lost, finish and abort.
async fn changes(store: &dyn MetaStore) {
    let v0 = store.ring_version().await.unwrap();
    let boot = change("c1", ChangeKind::Bootstrap, "n3");
    let v1 = store
        .create_change(
            &boot,
            &[NodeWrite::Insert(node("n3", NodeState::Bootstrapping))],
            &|_| Ok(()),
        )
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1, "a change with node writes bumps ring_version");
    // A failed precondition leaves nothing behind (one transaction).
    let bad = change("c2", ChangeKind::Decommission, "n1");
    let r = store
        .create_change(
            &bad,
            &[NodeWrite::SetState {
                node_id: "n1".into(),
                from: vec![NodeState::Leaving],
                to: NodeState::Removed,
            }],
            &|_| Ok(()),
        )
        .await;
    assert!(matches!(r, Err(MetaError::Conflict(_))), "{r:?}");
    assert!(store.get_change("c2").await.unwrap().is_none());
    assert_eq!(store.ring_version().await.unwrap(), v1);
    assert!(matches!(
        store
            .create_change(
                &change("c3", ChangeKind::Bootstrap, "n3"),
                &[NodeWrite::Insert(node("n3", NodeState::Bootstrapping))],
                &|_| Ok(()),
            )
            .await,
        Err(MetaError::Conflict(_))
    ));

    // Leases: one owner; another gets it only after expiry.
    let now = pairdb_common::now_ms();
    assert!(
        store
            .claim_job(JobTable::Change, "c1", "a", now, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_job(JobTable::Change, "c1", "b", now + 10, 1_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_job(JobTable::Change, "c1", "a", now + 10, 1_000)
            .await
            .unwrap(),
        "renewal"
    );
    assert!(
        store
            .claim_job(JobTable::Change, "c1", "b", now + 5_000, 1_000)
            .await
            .unwrap(),
        "after expiry"
    );
    // a lost the lease: its saves fail.
    assert!(
        !store
            .save_job(
                JobTable::Change,
                "c1",
                "a",
                now + 5_001,
                1_000,
                None,
                "{}",
                None
            )
            .await
            .unwrap()
    );

    // Admission: the check sees running changes; refusal leaves the change pending.
    let refuse = |_: &[ChangeRecord]| -> Result<(), String> { Err("busy".into()) };
    let r = store
        .admit_change("c1", "b", v1, r#"[{"x":1}]"#, "{}", &refuse)
        .await
        .unwrap();
    assert_eq!(r, Err("busy".to_string()));
    let r = store
        .admit_change("c1", "b", v1 - 1, "[]", "{}", &|_: &[ChangeRecord]| Ok(()))
        .await
        .unwrap();
    assert!(r.is_err(), "a stale ring version is refused");
    store
        .admit_change(
            "c1",
            "b",
            v1,
            r#"[{"x":1}]"#,
            r#"{"phase":"streaming"}"#,
            &|running: &[ChangeRecord]| {
                assert!(running.is_empty());
                Ok(())
            },
        )
        .await
        .unwrap()
        .unwrap();
    let c1 = store.get_change("c1").await.unwrap().unwrap();
    assert_eq!(c1.status, ChangeStatus::Running);
    assert_eq!(c1.lease_owner.as_deref(), Some("b"));
    let plan: serde_json::Value = serde_json::from_str(&c1.plan).unwrap();
    assert_eq!(plan[0]["x"], 1);
    assert!(
        store
            .save_job(
                JobTable::Change,
                "c1",
                "b",
                now + 5_100,
                1_000,
                Some(r#"[{"x":2}]"#),
                r#"{"percent":50}"#,
                Some("slow")
            )
            .await
            .unwrap()
    );
    let c1 = store.get_change("c1").await.unwrap().unwrap();
    assert_eq!(c1.error.as_deref(), Some("slow"));
    let p: serde_json::Value = serde_json::from_str(&c1.progress).unwrap();
    assert_eq!(p["percent"], 50);

    // Finish: node states, ring_version and the follow-up cleanup in one step; only the owner.
    let mut cleanup = change("c1-cleanup", ChangeKind::Cleanup, "n3");
    cleanup.not_before_ms = Some(now + 60_000);
    let fin = [NodeWrite::SetState {
        node_id: "n3".into(),
        from: vec![NodeState::Bootstrapping],
        to: NodeState::Normal,
    }];
    assert!(matches!(
        store
            .finish_change(
                "c1",
                Some("a"),
                ChangeStatus::Completed,
                None,
                &fin,
                Some(&cleanup)
            )
            .await,
        Err(MetaError::Conflict(_))
    ));
    let v2 = store
        .finish_change(
            "c1",
            Some("b"),
            ChangeStatus::Completed,
            None,
            &fin,
            Some(&cleanup),
        )
        .await
        .unwrap();
    assert_eq!(v2, v1 + 1);
    assert_eq!(
        store.get_node("n3").await.unwrap().unwrap().state,
        NodeState::Normal
    );
    let c1 = store.get_change("c1").await.unwrap().unwrap();
    assert_eq!(c1.status, ChangeStatus::Completed);
    assert!(c1.completed_at_ms.is_some() && c1.lease_owner.is_none());
    let active = store.list_changes(false).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].kind, ChangeKind::Cleanup);
    assert!(active[0].not_before_ms.unwrap() >= now + 59_000);
    assert_eq!(store.list_changes(true).await.unwrap().len(), 2);

    // Abort (no owner needed) restores states; a finished change cannot be aborted again.
    let dec = change("c4", ChangeKind::Decommission, "n3");
    let to_leaving = [NodeWrite::SetState {
        node_id: "n3".into(),
        from: vec![NodeState::Normal],
        to: NodeState::Leaving,
    }];
    store
        .create_change(&dec, &to_leaving, &|_| Ok(()))
        .await
        .unwrap();
    let back = [NodeWrite::SetState {
        node_id: "n3".into(),
        from: vec![NodeState::Leaving],
        to: NodeState::Normal,
    }];
    store
        .finish_change(
            "c4",
            None,
            ChangeStatus::Aborted,
            Some("aborted"),
            &back,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_node("n3").await.unwrap().unwrap().state,
        NodeState::Normal
    );
    assert!(matches!(
        store
            .finish_change("c4", None, ChangeStatus::Aborted, None, &back, None)
            .await,
        Err(MetaError::Conflict(_))
    ));
    // A REMOVED node can be added again; an address can move.
    store
        .write_nodes(&[NodeWrite::SetState {
            node_id: "n3".into(),
            from: vec![NodeState::Normal],
            to: NodeState::Removed,
        }])
        .await
        .unwrap();
    store
        .write_nodes(&[NodeWrite::Insert(node("n3", NodeState::Bootstrapping))])
        .await
        .unwrap();
    store
        .write_nodes(&[NodeWrite::SetAddress {
            node_id: "n3".into(),
            host: "10.0.0.3".into(),
            port: 7003,
            admin_port: 9103,
        }])
        .await
        .unwrap();
    let n3 = store.get_node("n3").await.unwrap().unwrap();
    assert_eq!(
        (n3.host.as_str(), n3.port, n3.state),
        ("10.0.0.3", 7003, NodeState::Bootstrapping)
    );
    racing_decommissions(store).await;
}

/// Two decommissions racing, each allowed only while it leaves `need` NORMAL nodes: the
/// admission rule runs inside the transaction that records the change, so only one passes.
async fn racing_decommissions(store: &dyn MetaStore) {
    for id in ["r1", "r2"] {
        store.add_node(&node(id, NodeState::Normal)).await.unwrap();
    }
    let normal = |m: &[NodeRecord]| m.iter().filter(|n| n.state == NodeState::Normal).count();
    let need = normal(&store.list_nodes().await.unwrap()) - 1;
    let admit = move |m: &Membership| {
        let left = normal(&m.nodes) - 1;
        if left >= need {
            Ok(())
        } else {
            Err(format!(
                "would leave {left} NORMAL nodes, fewer than {need}"
            ))
        }
    };
    let leave = |id: &str| {
        [NodeWrite::SetState {
            node_id: id.into(),
            from: vec![NodeState::Normal],
            to: NodeState::Leaving,
        }]
    };
    let (w1, w2) = (leave("r1"), leave("r2"));
    let (c1, c2) = (
        change("d1", ChangeKind::Decommission, "r1"),
        change("d2", ChangeKind::Decommission, "r2"),
    );
    let (a, b) = tokio::join!(
        store.create_change(&c1, &w1, &admit),
        store.create_change(&c2, &w2, &admit)
    );
    let refused: Vec<&MetaResult<u64>> = [&a, &b].into_iter().filter(|r| r.is_err()).collect();
    assert_eq!(
        refused.len(),
        1,
        "exactly one decommission passes: {a:?} {b:?}"
    );
    assert!(
        matches!(refused[0], Err(MetaError::Conflict(m)) if m.contains("would leave")),
        "{refused:?}"
    );
    assert_eq!(normal(&store.list_nodes().await.unwrap()), need);
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

/// A job whose work panics stops renewing its lease with it (the keeper runs in the same
/// task), is no longer counted as driven, and another coordinator takes it over once the
/// lease expires.
#[tokio::test]
async fn a_panicking_job_leaves_its_lease_to_expire_and_another_driver_takes_over() {
    use pairdb_coordinator::jobs::{JobDriver, Run, Work};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let store = connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let c = change("p1", ChangeKind::Bootstrap, "n9");
    store.create_change(&c, &[], &|_| Ok(())).await.unwrap();
    let sup = pairdb_common::worker::Supervisor::default();
    let a = JobDriver::new(
        JobTable::Change,
        store.clone(),
        sup.clone(),
        "a".into(),
        1_000,
    );
    let now = pairdb_common::now_ms();
    let d = a.clone();
    let started = a
        .take(c.clone(), now, move |_, cancel| async move {
            let run: Run<u32> = Run::new(
                d,
                "p1",
                "[]",
                Work::new(vec![1], "test", ()),
                cancel,
                |_| "{}".into(),
            );
            run.keeping_lease(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                panic!("a bug in a step");
            })
            .await
        })
        .await
        .unwrap();
    assert!(started && a.is_driving("p1"));
    let lease = || async {
        store
            .get_change("p1")
            .await
            .unwrap()
            .unwrap()
            .lease_expires_at_ms
            .unwrap()
    };
    let first = lease().await;
    pairdb_tests::cluster::wait_async(
        "the panicked job to be forgotten",
        Duration::from_secs(5),
        || async { !a.is_driving("p1") },
    )
    .await
    .unwrap();
    assert!(
        lease().await > first,
        "the keeper renewed while the work ran"
    );
    let last = lease().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        lease().await,
        last,
        "nothing renews the lease after the panic"
    );
    let b = JobDriver::new(
        JobTable::Change,
        store.clone(),
        sup.clone(),
        "b".into(),
        1_000,
    );
    let later = last + 1;
    assert!(
        b.claim("p1", Some("a"), Some(last), later).await.unwrap(),
        "another driver takes over after expiry"
    );
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}
