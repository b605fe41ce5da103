//! Cluster backup and restore, end to end on real nodes and coordinators: write A, back up,
//! write B and delete some of A, restore into a fresh cluster (new data directories, new
//! addresses, a new metadata store) and find exactly A — every key, value and sibling — while
//! the live cluster keeps B. Also: a damaged part fails `VerifyBackup` and the restore.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pairdb_common::api::pb;
use pairdb_common::api::pb::Consistency::Quorum;
use pairdb_coordinator::backup::NodeAddress;
use pairdb_coordinator::meta::NodeStatus;
use pairdb_tests::cluster::*;
use pairdb_tests::serial_async;

type Client = pairdb_common::client::Coordinator;

/// Every sibling value of `key` (sorted), or `None` when the key reads as absent.
async fn values(c: &mut Client, key: &str) -> Option<Vec<Vec<u8>>> {
    match c.read(read_req(key.as_bytes(), Quorum)).await {
        Ok(r) => {
            let mut v: Vec<Vec<u8>> = r
                .into_inner()
                .siblings
                .into_iter()
                .map(|s| s.value)
                .collect();
            v.sort();
            Some(v)
        }
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("read {key}: {s:?}"),
    }
}

async fn backup_until_done(c: &mut Client) -> pb::BackupInfo {
    let b = c
        .create_backup(pb::CreateBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.status, "running");
    for _ in 0..600 {
        let got = c
            .get_backup(pb::BackupRequest {
                backup_id: b.backup_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if got.status != "running" {
            assert_eq!(got.status, "completed", "{got:?}");
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("backup {} did not finish", b.backup_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_holds_exactly_what_was_backed_up() {
    let _s = serial_async().await;
    let live = TestCluster::start(ClusterOptions::three_by_two(Backend::Sqlite, true))
        .await
        .unwrap();
    let mut a = live.client(0).await.unwrap();
    let mut b = live.client(1).await.unwrap();
    live.wait_all_up().await.unwrap();

    // A: plain keys, keys with two siblings (concurrent writes through both coordinators),
    // and deleted keys.
    let keys_a: Vec<String> = (0..60).map(|i| format!("a-{i}")).collect();
    for (i, k) in keys_a.iter().enumerate() {
        a.write(write_req(
            k.as_bytes(),
            format!("A{i}").as_bytes(),
            vec![],
            Quorum,
        ))
        .await
        .unwrap();
        if i % 10 == 0 {
            b.write(write_req(
                k.as_bytes(),
                format!("A{i}-sib").as_bytes(),
                vec![],
                Quorum,
            ))
            .await
            .unwrap();
        }
    }
    for k in keys_a.iter().skip(5).step_by(15) {
        let ctx = a
            .read(read_req(k.as_bytes(), Quorum))
            .await
            .unwrap()
            .into_inner()
            .context;
        a.delete(pb::DeleteRequest {
            tenant_id: "t1".into(),
            key: k.as_bytes().to_vec(),
            context: ctx,
            consistency: Quorum as i32,
            timeout_ms: 0,
        })
        .await
        .unwrap();
    }
    let mut expected: BTreeMap<String, Option<Vec<Vec<u8>>>> = BTreeMap::new();
    for k in &keys_a {
        expected.insert(k.clone(), values(&mut a, k).await);
    }
    assert!(expected.values().filter(|v| v.is_none()).count() >= 3);
    assert!(
        expected.values().flatten().any(|v| v.len() == 2),
        "siblings are part of A"
    );

    let info = backup_until_done(&mut a).await;
    assert_eq!(info.nodes.len(), 3);
    assert!(
        info.nodes.iter().all(|n| n.files > 0 && n.bytes > 0),
        "{info:?}"
    );
    assert!(info.tenants >= 1);
    let verified = b
        .verify_backup(pb::BackupRequest {
            backup_id: info.backup_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    // The checkpoints are off the data disks once exported.
    for cfg in &live.node_cfgs {
        let snaps = cfg.data_dir.join("snapshots");
        let left = std::fs::read_dir(&snaps).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{} keeps no checkpoint", cfg.node_id);
    }

    // B: new keys, an overwrite and deletes of A.
    for i in 0..20 {
        a.write(write_req(format!("b-{i}").as_bytes(), b"B", vec![], Quorum))
            .await
            .unwrap();
    }
    let changed: Vec<String> = keys_a.iter().skip(1).step_by(7).cloned().collect();
    for (n, k) in changed.iter().enumerate() {
        let Ok(r) = a.read(read_req(k.as_bytes(), Quorum)).await else {
            continue;
        };
        let ctx = r.into_inner().context;
        if n % 2 == 0 {
            a.write(write_req(k.as_bytes(), b"overwritten", ctx, Quorum))
                .await
                .unwrap();
        } else {
            a.delete(pb::DeleteRequest {
                tenant_id: "t1".into(),
                key: k.as_bytes().to_vec(),
                context: ctx,
                consistency: Quorum as i32,
                timeout_ms: 0,
            })
            .await
            .unwrap();
        }
    }

    // Restore into a fresh cluster: new directories, new ports, a new metadata store.
    let fresh = tempfile::tempdir().unwrap();
    let backup_dir = live.dir.path().join("backups");
    let db_url = format!("sqlite://{}", fresh.path().join("meta.db").display());
    let mut addresses = HashMap::new();
    let mut cfgs = Vec::new();
    for cfg in &live.node_cfgs {
        let id = cfg.node_id.clone();
        let new_cfg = pairdb_kit::node_config(
            &id,
            fresh.path(),
            free_addr().unwrap(),
            free_addr().unwrap(),
        );
        let part = pairdb_storage_node::backup::restore(
            &backup_dir,
            &info.backup_id,
            &id,
            &new_cfg.data_dir,
        )
        .unwrap();
        assert!(!part.files.is_empty());
        addresses.insert(
            id,
            NodeAddress {
                host: "127.0.0.1".into(),
                port: new_cfg.grpc_addr.port(),
                admin_port: new_cfg.admin_addr.port(),
            },
        );
        cfgs.push(new_cfg);
    }
    let meta = pairdb_coordinator::meta::connect(&db_url).await.unwrap();
    meta.migrate().await.unwrap();
    pairdb_coordinator::backup::restore_metadata(
        meta.as_ref(),
        &backup_dir,
        &info.backup_id,
        &addresses,
    )
    .await
    .unwrap();
    // A second restore into the same store is refused.
    assert!(
        pairdb_coordinator::backup::restore_metadata(
            meta.as_ref(),
            &backup_dir,
            &info.backup_id,
            &addresses
        )
        .await
        .is_err()
    );
    let mut nodes = Vec::new();
    for cfg in &cfgs {
        nodes.push(
            pairdb_kit::start_node(cfg.clone(), Some(10.0))
                .await
                .unwrap(),
        );
    }
    for (n, part) in nodes.iter().zip(&info.nodes) {
        assert_eq!(n.node.node_id, part.node_id);
        assert!(
            n.node.store.identity().actor().epoch > part.epoch,
            "{} took a new epoch",
            part.node_id
        );
    }
    let ccfg = coordinator_config(&db_url, "restored", true).unwrap();
    let coord = pairdb_coordinator::server::start(ccfg).await.unwrap();
    let mut r = pairdb_common::client::Dial::plaintext(coord.grpc_addr.to_string())
        .connect()
        .await
        .unwrap();
    wait_async("restored nodes up", Duration::from_secs(15), || async {
        coord
            .data
            .cluster
            .snapshot()
            .nodes
            .values()
            .filter(|e| e.health.status() == NodeStatus::Up)
            .count()
            == 3
    })
    .await
    .unwrap();
    // A repair first, as the runbook says; then exactly A.
    let run = r
        .start_repair(pb::StartRepairRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = wait_repair(&mut r, &run.repair_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.status, "completed", "{done:?}");
    for (k, want) in &expected {
        assert_eq!(&values(&mut r, k).await, want, "restored {k}");
    }
    for i in 0..20 {
        assert_eq!(
            values(&mut r, &format!("b-{i}")).await,
            None,
            "b-{i} is after the backup"
        );
    }
    // The live cluster is untouched: B is there, A's later changes too.
    for i in 0..20 {
        assert_eq!(
            values(&mut a, &format!("b-{i}")).await,
            Some(vec![b"B".to_vec()])
        );
    }
    let mut differ = 0;
    for k in &changed {
        if values(&mut a, k).await != expected[k] {
            differ += 1;
        }
    }
    assert!(
        differ >= changed.len() - 1,
        "the live cluster kept B's changes"
    );
    // A tenant's settings came back too.
    let t = r
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.replication_factor, 3);

    // A damaged part: verification names it, and a restore from it is refused.
    let db = pairdb_common::backup::node_part_path(&backup_dir, &info.backup_id, "n2")
        .unwrap()
        .join("db");
    let sst = std::fs::read_dir(&db)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("an SST in the part");
    let mut bytes = std::fs::read(&sst).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    // A new file, not a write through the hard link (that would damage the live node's SST).
    std::fs::remove_file(&sst).unwrap();
    std::fs::write(&sst, &bytes).unwrap();
    let verified = a
        .verify_backup(pb::BackupRequest {
            backup_id: info.backup_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.problems.len(), 1, "{:?}", verified.problems);
    assert!(
        verified.problems[0].starts_with("n2: "),
        "{:?}",
        verified.problems
    );
    let again = tempfile::tempdir().unwrap();
    let err = pairdb_storage_node::backup::restore(
        &backup_dir,
        &info.backup_id,
        "n2",
        &again.path().join("n2"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(!again.path().join("n2").join("db").exists());

    // Listed, then deleted everywhere.
    let listed = a
        .list_backups(pb::ListBackupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    let del = a
        .delete_backup(pb::BackupRequest {
            backup_id: info.backup_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.left.is_empty(), "{:?}", del.left);
    assert!(!backup_dir.join(&info.backup_id).exists());

    coord.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    live.shutdown().await;
}

/// Ids are path components on every process that receives one: a hostile id is refused by
/// the coordinator and, sent straight to a node, by the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_backup_ids_are_refused_by_coordinator_and_node() {
    let _s = serial_async().await;
    let c = TestCluster::start(ClusterOptions {
        coordinators: 1,
        ..ClusterOptions::three_by_two(Backend::Sqlite, false)
    })
    .await
    .unwrap();
    let mut a = c.client(0).await.unwrap();
    let mut s = c.storage(0).await.unwrap();
    for id in ["../../etc", "a/b", ".hidden", "", &"x".repeat(65)] {
        let e = a
            .verify_backup(pb::BackupRequest {
                backup_id: id.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e).0, "INVALID_ARGUMENT", "{id:?}: {e:?}");
        let e = s
            .create_backup_part(pb::BackupPartRequest {
                backup_id: id.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e).0, "INVALID_ARGUMENT", "{id:?}: {e:?}");
    }
    assert!(!c.dir.path().join("etc").exists());
    c.shutdown().await;
}
