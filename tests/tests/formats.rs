//! Every persisted and wire format a release wrote stays readable by every later release.
//!
//! `tests/fixtures/formats/<release>/` holds what release `<release>` wrote from the frozen
//! samples below: a key-state record (RocksDB values and hint payloads share it), an
//! internal context, a sealed client token, `identity.json`, the topology-change and
//! repair documents, the backup documents, the protobuf descriptor, the migrations' checksums
//! and a SQLite metadata store with one row of every kind. Each directory is decoded here
//! with today's code and compared with the samples; for the current release the encoders
//! must also reproduce the committed bytes exactly, so an unintended format change fails
//! here (an intended one takes a new format version and a new fixture directory).
//!
//! Only the current release's directory may be (re)written:
//! `PAIRDB_WRITE_FIXTURES=1 cargo test -p pairdb-tests --test formats`. Older directories are
//! never edited.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pairdb_common::backup::{FileEntry, NodePart};
use pairdb_common::context::{self, ContextKey, Keyring};
use pairdb_common::framing;
use pairdb_common::ring::NodeState;
use pairdb_common::version::{Actor, ConflictPolicy, Dot, KeyState, NewVersion, VersionVector};
use pairdb_coordinator::backup::{Manifest, Metadata, NodeDoc, PartRef, TenantDoc, TokenDoc};
use pairdb_coordinator::jobs;
use pairdb_coordinator::meta::*;
use pairdb_coordinator::{repair, topology};
use pairdb_storage_node::identity::IdentityFile;
use prost::Message;
use serde::Serialize;
use serde_json::Value;

/// The release this build is (the directory it may write).
const CURRENT: &str = env!("CARGO_PKG_VERSION");
/// Secret of the context key the samples are sealed with (the fixture store holds it too).
const SECRET: [u8; 32] = [0x42; 32];
const AT: u64 = 1_800_000_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats")
}

fn write(s: &mut KeyState, node: &str, epoch: u64, counter: u64, value: &[u8], tombstone: bool) {
    let context = s.read_context();
    let concurrent = !tombstone;
    s.apply_write(NewVersion {
        dot: Dot::new(Actor::new(node, epoch), counter),
        // Two live writes without each other's context are siblings; the tombstone covers all.
        context: if concurrent {
            VersionVector::new()
        } else {
            context
        },
        value: value.to_vec(),
        tombstone,
        written_at_ms: AT + counter,
        expires_at_ms: 0,
        idempotency_key: if counter == 3 {
            "idem-1".into()
        } else {
            String::new()
        },
        policy: ConflictPolicy::Siblings,
        max_siblings: 10,
    });
}

/// Two concurrent siblings from two replicas.
fn sample_state() -> KeyState {
    let mut s = KeyState::new();
    write(&mut s, "n1", 7, 3, b"alpha", false);
    write(&mut s, "n2", 9, 5, &[0, 255, 1, 254], false);
    s
}

/// A deleted key: the tombstone covering both siblings.
fn sample_tombstone() -> KeyState {
    let mut s = sample_state();
    write(&mut s, "n3", 11, 8, b"", true);
    s
}

fn sample_vv() -> VersionVector {
    sample_tombstone().read_context()
}

fn keyring() -> Keyring {
    Keyring::new(ContextKey::new(1, &SECRET), vec![])
}

fn topology_params() -> topology::Params {
    topology::Params {
        adds: vec!["n4".into()],
        removes: vec!["n2".into()],
        force: false,
        ..Default::default()
    }
}

fn topology_plan() -> Vec<topology::Task> {
    vec![
        topology::Task {
            start: 10,
            end: 20,
            node: "n4".into(),
            sources: vec!["n1".into(), "n2".into()],
            state: topology::plan::TaskState::Streamed,
            resume: "00ff".into(),
            source: Some("n1".into()),
            keys: 12,
            bytes: 3400,
            attempts: 1,
            error: None,
        },
        topology::Task {
            start: 20,
            end: 5,
            node: "n4".into(),
            sources: vec!["n3".into()],
            state: topology::plan::TaskState::Pending,
            resume: String::new(),
            source: None,
            keys: 0,
            bytes: 0,
            attempts: 2,
            error: Some("n3 unavailable".into()),
        },
    ]
}

fn topology_progress() -> topology::plan::Progress {
    topology::plan::Progress {
        phase: "streaming".into(),
        ranges_done: 1,
        ranges_total: 2,
        keys: 12,
        bytes: 3400,
        percent: 50.0,
        eta_secs: Some(30),
        waiting: Some("admission".into()),
    }
}

fn repair_params() -> repair::Params {
    repair::Params {
        tenant: Some("acme".into()),
        trigger: "replication_factor".into(),
        whole: false,
        node_starts: BTreeMap::from([("n1".to_string(), AT)]),
        replication_factor: Some(5),
        set_replication_factor: Some(5),
        ..Default::default()
    }
}

fn repair_plan() -> Vec<repair::RangeTask> {
    vec![repair::RangeTask {
        start: 1,
        end: 2,
        state: repair::RangeState::Done,
        keys_differing: 3,
        keys_transferred: 4,
        bytes_transferred: 500,
        digest_bytes: 60,
        corrupt: 1,
        recovered: 1,
        tombstones_purged: 2,
        converged: true,
        attempts: 1,
        error: None,
    }]
}

fn repair_progress() -> repair::Progress {
    repair::Progress {
        ranges_total: 1,
        ranges_done: 1,
        percent: 100.0,
        keys_differing: 3,
        keys_transferred: 4,
        bytes_transferred: 500,
        digest_bytes: 60,
        corrupt: 1,
        recovered: 1,
        tombstones_purged: 2,
        lost: vec!["acme/6b31".into()],
        lost_total: 1,
        ..Default::default()
    }
}

fn identity() -> IdentityFile {
    IdentityFile {
        format_version: 1,
        node_id: "n1".into(),
        epoch: AT,
        counter_hwm: 300_000,
    }
}

fn manifest() -> Manifest {
    Manifest {
        format_version: 1,
        backup_id: "b-20270115-000000".into(),
        created_at_ms: AT,
        completed_at_ms: AT + 5000,
        ring_version: 42,
        coordinator_id: "c1".into(),
        tenants: 1,
        nodes: vec![PartRef {
            node_id: "n1".into(),
            host: "10.0.0.1".into(),
            port: 7001,
            admin_port: 9101,
            epoch: AT,
            files: 1,
            bytes: 1234,
            linked: true,
            part_sha256: "ab".repeat(32),
        }],
        metadata_sha256: "cd".repeat(32),
    }
}

fn metadata() -> Metadata {
    Metadata {
        format_version: 1,
        ring_version: 42,
        nodes: vec![NodeDoc {
            node_id: "n1".into(),
            host: "10.0.0.1".into(),
            port: 7001,
            admin_port: 9101,
            zone: "z1".into(),
            virtual_nodes: 150,
            state: "NORMAL".into(),
        }],
        tenants: vec![TenantDoc {
            tenant_id: "acme".into(),
            replication_factor: 3,
            read_consistency: "QUORUM".into(),
            write_consistency: "QUORUM".into(),
            conflict_policy: "siblings".into(),
            max_value_bytes: 1 << 20,
            sibling_warn: 5,
            sibling_max: 10,
            rate_limit_rps: 0,
            max_state_bytes: 3 << 20,
        }],
        tokens: vec![TokenDoc {
            token_id: "tok-1".into(),
            token_hash: "ef".repeat(32),
            role: "tenant".into(),
            tenant_id: Some("acme".into()),
            write: true,
            description: "app".into(),
            created_at_ms: AT,
            expires_at_ms: Some(AT + 1),
            revoked_at_ms: None,
        }],
    }
}

fn part() -> NodePart {
    NodePart {
        format_version: 1,
        backup_id: "b-20270115-000000".into(),
        node_id: "n1".into(),
        epoch: AT,
        created_at_ms: AT,
        linked: false,
        files: vec![FileEntry {
            name: "000009.sst".into(),
            bytes: 1234,
            sha256: "01".repeat(32),
        }],
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap();
    b.push(b'\n');
    b
}

/// Every fixture file of a release but the metadata store, as this build encodes them.
fn encoded() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("record.bin", framing::encode_state(&sample_state())),
        ("tombstone.bin", framing::encode_state(&sample_tombstone())),
        (
            "context_internal.bin",
            context::encode_internal(&sample_vv()),
        ),
        ("context_token.bin", keyring().seal(&sample_vv())),
        ("identity.json", json(&identity())),
        ("topology_params.json", json(&topology_params())),
        ("topology_plan.json", json(&topology_plan())),
        ("topology_progress.json", json(&topology_progress())),
        ("repair_params.json", json(&repair_params())),
        ("repair_plan.json", json(&repair_plan())),
        ("repair_progress.json", json(&repair_progress())),
        ("backup_manifest.json", json(&manifest())),
        ("backup_metadata.json", json(&metadata())),
        ("backup_part.json", json(&part())),
        (
            "descriptor.bin",
            pairdb_common::api::FILE_DESCRIPTOR_SET.to_vec(),
        ),
    ]
}

fn as_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Decodes one release's directory with today's decoders; returns what differs from the samples.
async fn decode_release(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let mut check = |what: &str, ok: bool| {
        if !ok {
            bad.push(what.to_string());
        }
    };
    check(
        "record.bin",
        framing::decode_state(&read("record.bin")).ok() == Some(sample_state()),
    );
    check(
        "tombstone.bin",
        framing::decode_state(&read("tombstone.bin")).ok() == Some(sample_tombstone()),
    );
    check(
        "context_internal.bin",
        context::decode_internal(&read("context_internal.bin")).ok() == Some(sample_vv()),
    );
    check(
        "context_token.bin",
        keyring().open(&read("context_token.bin")).ok() == Some(sample_vv()),
    );
    let id_path = dir.join("identity.json");
    check(
        "identity.json",
        IdentityFile::parse(&id_path, &read("identity.json")).ok() == Some(Some(identity())),
    );
    macro_rules! job_doc {
        ($file:literal, $ty:ty, $sample:expr) => {
            let body = String::from_utf8(read($file)).unwrap();
            let got: Option<$ty> = jobs::decode("doc", $file, &body).ok();
            check($file, got.map(|g| as_value(&g)) == Some(as_value(&$sample)));
        };
    }
    job_doc!("topology_params.json", topology::Params, topology_params());
    job_doc!("topology_plan.json", Vec<topology::Task>, topology_plan());
    job_doc!(
        "topology_progress.json",
        topology::plan::Progress,
        topology_progress()
    );
    job_doc!("repair_params.json", repair::Params, repair_params());
    job_doc!("repair_plan.json", Vec<repair::RangeTask>, repair_plan());
    job_doc!("repair_progress.json", repair::Progress, repair_progress());
    macro_rules! backup_doc {
        ($file:literal, $ty:ty, $sample:expr) => {
            let got: Option<$ty> =
                pairdb_common::backup::parse_json(&dir.join($file), &read($file)).ok();
            check($file, got.map(|g| as_value(&g)) == Some(as_value(&$sample)));
        };
    }
    backup_doc!("backup_manifest.json", Manifest, manifest());
    backup_doc!("backup_metadata.json", Metadata, metadata());
    backup_doc!("backup_part.json", NodePart, part());
    bad.extend(
        proto_compatible(
            &read("descriptor.bin"),
            pairdb_common::api::FILE_DESCRIPTOR_SET,
        )
        .into_iter()
        .map(|p| format!("descriptor.bin: {p}")),
    );
    bad.extend(migrations_unchanged(dir).await);
    bad.extend(
        metadata_store(dir)
            .await
            .err()
            .map(|e| format!("meta.sqlite: {e:#}")),
    );
    bad
}

/// Why `new` would break a reader or writer of `old`: a message, field, enum value, service or
/// method gone (a removed field is fine only when its number is reserved), or one whose number,
/// type, label or streaming changed. Adding is always fine.
fn proto_compatible(old: &[u8], new: &[u8]) -> Vec<String> {
    use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
    type Index = (
        BTreeMap<String, DescriptorProto>,
        BTreeMap<String, EnumDescriptorProto>,
    );
    fn walk(prefix: &str, ms: &[DescriptorProto], es: &[EnumDescriptorProto], out: &mut Index) {
        for e in es {
            out.1.insert(format!("{prefix}.{}", e.name()), e.clone());
        }
        for m in ms {
            let name = format!("{prefix}.{}", m.name());
            walk(&name, &m.nested_type, &m.enum_type, out);
            out.0.insert(name, m.clone());
        }
    }
    let index = |bytes: &[u8]| {
        let set = FileDescriptorSet::decode(bytes).unwrap();
        let mut types: Index = Default::default();
        let mut methods = BTreeMap::new();
        for f in &set.file {
            let pkg = format!(".{}", f.package());
            walk(&pkg, &f.message_type, &f.enum_type, &mut types);
            for s in &f.service {
                for m in &s.method {
                    let sig = format!(
                        "{}{} -> {}{}",
                        if m.client_streaming() { "stream " } else { "" },
                        m.input_type(),
                        if m.server_streaming() { "stream " } else { "" },
                        m.output_type()
                    );
                    methods.insert(format!("{pkg}.{}/{}", s.name(), m.name()), sig);
                }
            }
        }
        (types.0, types.1, methods)
    };
    let (old_m, old_e, old_s) = index(old);
    let (new_m, new_e, new_s) = index(new);
    let mut bad = Vec::new();
    for (name, om) in &old_m {
        let Some(nm) = new_m.get(name) else {
            bad.push(format!("message {name} removed"));
            continue;
        };
        for of in &om.field {
            let reserved = nm
                .reserved_range
                .iter()
                .any(|r| (r.start()..r.end()).contains(&of.number()));
            match nm.field.iter().find(|f| f.number() == of.number()) {
                None if reserved => {}
                None => bad.push(format!(
                    "{name}.{} (#{}) removed without reserving its number",
                    of.name(),
                    of.number()
                )),
                Some(nf) => {
                    let shape = |f: &prost_types::FieldDescriptorProto| {
                        (
                            f.name().to_string(),
                            f.r#type(),
                            f.label(),
                            f.type_name().to_string(),
                        )
                    };
                    if shape(nf) != shape(of) {
                        bad.push(format!(
                            "{name} field #{} changed: {:?} -> {:?}",
                            of.number(),
                            shape(of),
                            shape(nf)
                        ));
                    }
                }
            }
        }
    }
    for (name, oe) in &old_e {
        let Some(ne) = new_e.get(name) else {
            bad.push(format!("enum {name} removed"));
            continue;
        };
        let values = |e: &prost_types::EnumDescriptorProto| -> BTreeSet<(String, i32)> {
            e.value
                .iter()
                .map(|v| (v.name().to_string(), v.number()))
                .collect()
        };
        for v in values(oe).difference(&values(ne)) {
            bad.push(format!("enum {name} value {v:?} removed or renumbered"));
        }
    }
    for (name, sig) in &old_s {
        match new_s.get(name) {
            None => bad.push(format!("method {name} removed")),
            Some(n) if n != sig => bad.push(format!("method {name} changed: {sig} -> {n}")),
            Some(_) => {}
        }
    }
    bad
}

fn migrations_dir(dialect: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(dialect)
}

/// `<dialect> <version> <sha384 hex>` of every migration this build applies.
async fn migration_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for dialect in ["postgres", "sqlite"] {
        let m = sqlx::migrate::Migrator::new(migrations_dir(dialect))
            .await
            .unwrap();
        for mig in m.iter() {
            let hex: String = mig.checksum.iter().map(|b| format!("{b:02x}")).collect();
            lines.push(format!("{dialect} {} {hex}", mig.version));
        }
    }
    lines
}

/// Every migration a release applied is still here, unedited (sqlx refuses to start over a
/// changed checksum, so an edit would strand every existing database).
async fn migrations_unchanged(dir: &Path) -> Vec<String> {
    let now: BTreeSet<String> = migration_lines().await.into_iter().collect();
    std::fs::read_to_string(dir.join("migrations.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !now.contains(*l))
        .map(|l| format!("migrations.txt: {l} is gone or was edited"))
        .collect()
}

fn fixture_node(id: &str, port: u16) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        host: "10.0.0.1".into(),
        port,
        admin_port: port + 100,
        zone: "z1".into(),
        virtual_nodes: 150,
        state: NodeState::Normal,
        status: NodeStatus::Unknown,
        last_seen_ms: None,
        created_at_ms: AT,
        updated_at_ms: AT,
        drained_at_ms: None,
    }
}

fn fixture_token() -> TokenRecord {
    TokenRecord {
        token_id: "tok-1".into(),
        token_hash: "ef".repeat(32),
        role: TokenRole::Tenant,
        tenant_id: Some("acme".into()),
        write: true,
        description: "app".into(),
        created_at_ms: AT,
        expires_at_ms: None,
        revoked_at_ms: None,
    }
}

/// Writes `meta.sqlite`: a store migrated by this build with one row of every kind.
async fn write_metadata_store(dir: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let url = format!("sqlite://{}", tmp.path().join("meta.db").display());
    let store = connect(&url).await?;
    store.migrate().await?;
    for (id, port) in [("n1", 7001), ("n2", 7002), ("n3", 7003)] {
        store.add_node(&fixture_node(id, port)).await?;
    }
    store.set_drained("n3", Some(AT)).await?;
    let mut acme = TenantRecord::with_defaults("acme");
    store.create_tenant(&acme).await?;
    acme.target_replication_factor = Some(5);
    store.update_tenant(&acme).await?;
    store.create_token(&fixture_token()).await?;
    store
        .insert_hints(&[NewHint {
            target_node_id: "n2".into(),
            tenant_id: "acme".into(),
            key: b"k1".to_vec(),
            payload: framing::encode_state(&sample_state()),
            created_at_ms: AT,
        }])
        .await?;
    let mut change = topology::new_change(
        ChangeKind::Decommission,
        "n2",
        &topology_params(),
        &topology_plan(),
        None,
    );
    change.change_id = "decommission-n2-1".into();
    change.progress = jobs::to_json(&topology_progress());
    store.create_change(&change, &[], &|_| Ok(())).await?;
    store
        .create_repair(&RepairRecord {
            repair_id: "repair-1".into(),
            tenant_id: Some("acme".into()),
            status: "running".into(),
            progress: jobs::to_json(&repair_progress()),
            plan: jobs::to_json(&repair_plan()),
            params: jobs::to_json(&repair_params()),
            lease_owner: None,
            lease_expires_at_ms: None,
            started_at_ms: AT,
            completed_at_ms: None,
            error: None,
        })
        .await?;
    store.context_keys(&SECRET).await?;
    drop(store);
    // One self-contained file (no WAL beside it).
    let out = dir.join("meta.sqlite");
    let _ = std::fs::remove_file(&out);
    let pool = sqlx::SqlitePool::connect(&url).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(out.display().to_string())
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// Opens a copy of a release's `meta.sqlite` with this build (which migrates it forward) and
/// reads every row back through the store's own methods.
async fn metadata_store(dir: &Path) -> anyhow::Result<()> {
    use anyhow::ensure;
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("meta.db");
    std::fs::copy(dir.join("meta.sqlite"), &file)?;
    let store = connect(&format!("sqlite://{}", file.display())).await?;
    store.migrate().await?;
    let nodes = store.list_nodes().await?;
    let ids: Vec<(&str, u16, bool)> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.port, n.drained()))
        .collect();
    ensure!(
        ids == [("n1", 7001, false), ("n2", 7002, false), ("n3", 7003, true)],
        "nodes: {ids:?}"
    );
    let acme = store.get_tenant("acme").await?.unwrap();
    ensure!(
        (acme.replication_factor, acme.target_replication_factor) == (3, Some(5)),
        "tenant: {acme:?}"
    );
    let tokens = store.list_tokens().await?;
    ensure!(tokens.len() == 1 && tokens[0].token_hash == fixture_token().token_hash);
    let hints = store.claim_hints("n2", "upgrade-test", 60_000, 10).await?;
    ensure!(hints.len() == 1, "hints: {}", hints.len());
    ensure!(framing::decode_state(&hints[0].payload)? == sample_state());
    let changes = store.list_changes(true).await?;
    ensure!(changes.len() == 1, "changes: {}", changes.len());
    let c = &changes[0];
    ensure!(as_value(&topology::plan::parse_params(c)?) == as_value(&topology_params()));
    ensure!(as_value(&topology::plan::parse_plan(c)?) == as_value(&topology_plan()));
    let r = store.get_repair("repair-1").await?.unwrap();
    let params: repair::Params = jobs::decode("params", &r.repair_id, &r.params)?;
    ensure!(as_value(&params) == as_value(&repair_params()));
    // The cluster key survives, so tokens clients hold keep opening.
    let keys = store.context_keys(&[0; 32]).await?;
    ensure!(keys.len() == 1 && keys[0].key_id == 1 && keys[0].secret == SECRET);
    let ring = Keyring::new(ContextKey::new(keys[0].key_id, &keys[0].secret), vec![]);
    ensure!(
        ring.open(&std::fs::read(dir.join("context_token.bin"))?)
            .ok()
            == Some(sample_vv())
    );
    Ok(())
}

#[tokio::test]
async fn every_release_s_formats_decode_with_this_build() {
    let current = root().join(CURRENT);
    if std::env::var("PAIRDB_WRITE_FIXTURES").as_deref() == Ok("1") {
        std::fs::create_dir_all(&current).unwrap();
        for (name, bytes) in encoded() {
            std::fs::write(current.join(name), bytes).unwrap();
        }
        let mut lines = migration_lines().await.join("\n");
        lines.push('\n');
        std::fs::write(current.join("migrations.txt"), lines).unwrap();
        write_metadata_store(&current).await.unwrap();
    }
    let mut releases: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    releases.sort();
    assert!(
        releases.contains(&current),
        "no fixtures for this release ({CURRENT}): write them (see the module note)"
    );
    let mut bad = Vec::new();
    for dir in &releases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        bad.extend(
            decode_release(dir)
                .await
                .into_iter()
                .map(|b| format!("{name}: {b}")),
        );
    }
    // This release must still write what it committed: a difference is a format change.
    for (file, bytes) in encoded() {
        if std::fs::read(current.join(file)).unwrap() != bytes {
            bad.push(format!(
                "{CURRENT}: this build encodes {file} differently from the committed fixture"
            ));
        }
    }
    assert!(bad.is_empty(), "format compatibility:\n{}", bad.join("\n"));
}

#[tokio::test]
async fn the_checks_catch_what_they_are_for() {
    // A newer record format, a flipped byte, a removed proto field, an edited migration and a
    // newer job document are all refused: the decode test above could not pass by accident.
    let mut r = framing::encode_state(&sample_state());
    r[0] = 2;
    assert!(framing::decode_state(&r).is_err());
    let mut t = keyring().seal(&sample_vv());
    let last = t.len() - 1;
    t[last] ^= 1;
    assert!(keyring().open(&t).is_err());

    let mut set =
        prost_types::FileDescriptorSet::decode(pairdb_common::api::FILE_DESCRIPTOR_SET).unwrap();
    let msg = set
        .file
        .iter_mut()
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "WriteRequest")
        .unwrap();
    let removed = msg.field.remove(0);
    let smaller = set.encode_to_vec();
    let problems = proto_compatible(pairdb_common::api::FILE_DESCRIPTOR_SET, &smaller);
    assert!(
        problems.iter().any(|p| p.contains(removed.name())),
        "{problems:?}"
    );
    assert!(proto_compatible(&smaller, pairdb_common::api::FILE_DESCRIPTOR_SET).is_empty());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("migrations.txt"), "sqlite 1 00ff\n").unwrap();
    assert_eq!(migrations_unchanged(dir.path()).await.len(), 1);

    let newer = r#"{"format_version": 2, "adds": [], "removes": []}"#;
    assert!(jobs::decode::<topology::Params>("params", "c", newer).is_err());
    let id = br#"{"format_version": 2, "node_id": "n1", "epoch": 1, "counter_hwm": 0}"#;
    assert!(IdentityFile::parse(Path::new("identity.json"), id).is_err());
    let old_id = br#"{"node_id": "n1", "epoch": 1, "counter_hwm": 0}"#;
    assert_eq!(
        IdentityFile::parse(Path::new("identity.json"), old_id)
            .unwrap()
            .unwrap()
            .format_version,
        1
    );
}
