//! Topology changes: membership writes with preconditions, leases, admission, finish and
//! abort; and two decommissions racing on the admission rule.

use super::*;

/// Topology changes: atomic node writes with preconditions, one lease holder at a time,
/// serialized admission, progress saves that fail once the lease is lost, finish and abort.
pub async fn changes(store: Arc<dyn MetaStore>) {
    let store = &*store;
    store
        .add_node(&node("n1", NodeState::Normal))
        .await
        .unwrap();
    store
        .add_node(&node("n2", NodeState::Bootstrapping))
        .await
        .unwrap();
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
    // Expiry is judged by the store's clock (PostgreSQL's own, shared by every coordinator),
    // so the test waits the lease out instead of passing a later time.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let now = pairdb_common::now_ms();
    assert!(
        store
            .claim_job(JobTable::Change, "c1", "b", now, 1_000)
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
                now + 1,
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
                now + 100,
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
}

/// Two decommissions racing, each allowed only while it leaves `need` NORMAL nodes: the
/// admission rule runs inside the transaction that records the change, so only one passes.
pub async fn racing_decommissions(store: Arc<dyn MetaStore>) {
    let store = &*store;
    store
        .add_node(&node("n1", NodeState::Normal))
        .await
        .unwrap();
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
