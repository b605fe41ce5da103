//! The dependency order is the architecture: the storage node never depends on the coordinator
//! or on sqlx, and `common` depends on neither service.

use std::process::Command;

use anyhow::{Context, Result, bail};

fn deps_of(package: &str) -> Result<Vec<String>> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
            "--manifest-path",
            manifest,
        ])
        .output()
        .context("run cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

#[test]
fn storage_node_never_depends_on_coordinator_or_sqlx() -> Result<()> {
    let deps = deps_of("pairdb-storage-node")?;
    assert!(
        deps.iter().any(|d| d == "rocksdb"),
        "sanity: the tree lists rocksdb"
    );
    for banned in ["pairdb-coordinator", "sqlx", "sqlx-core", "pairdbctl"] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "pairdb-storage-node depends on {banned}"
        );
    }
    Ok(())
}

#[test]
fn common_depends_on_no_service_and_no_engine() -> Result<()> {
    let deps = deps_of("pairdb-common")?;
    assert!(
        deps.iter().any(|d| d == "prost"),
        "sanity: the tree lists prost"
    );
    for banned in [
        "pairdb-coordinator",
        "pairdb-storage-node",
        "sqlx",
        "rocksdb",
        "librocksdb-sys",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "pairdb-common depends on {banned}"
        );
    }
    Ok(())
}

/// Every `.rs` file under `dir`, recursively, with its path relative to the workspace.
fn sources(dir: &str) -> Result<Vec<(String, String)>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    let mut todo = vec![root.join(dir)];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lines of `code` (outside `//` comments) that start a task or thread by hand.
fn bare_spawns(code: &str) -> Vec<String> {
    const SPAWNS: [&str; 5] = [
        "tokio::spawn",
        "tokio::task::spawn",
        "task::spawn_blocking",
        "thread::spawn",
        "spawn_local",
    ];
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .filter(|l| SPAWNS.iter().any(|s| l.contains(s)))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn background_work_is_started_only_by_the_supervisor() -> Result<()> {
    // The detector itself can fail.
    assert_eq!(bare_spawns("let h = tokio::spawn(async {});").len(), 1);
    assert!(bare_spawns("// tokio::spawn is not used").is_empty());
    let mut found = Vec::new();
    let mut scanned = 0;
    for dir in ["common/src", "coordinator/src", "storage-node/src"] {
        for (path, code) in sources(dir)? {
            scanned += 1;
            if path.ends_with("common/src/worker.rs") {
                assert!(code.contains("TaskTracker"), "the supervisor tracks tasks");
                continue;
            }
            for l in bare_spawns(&code) {
                found.push(format!("{path}: {l}"));
            }
        }
    }
    assert!(scanned > 50, "sanity: scanned {scanned} files");
    assert!(
        found.is_empty(),
        "start tasks through pairdb_common::worker::Supervisor, not by hand:\n{}",
        found.join("\n")
    );
    Ok(())
}

#[test]
fn only_the_engine_module_names_rocksdb() -> Result<()> {
    let mut found = Vec::new();
    let mut engine_seen = false;
    for dir in [
        "common/src",
        "coordinator/src",
        "storage-node/src",
        "cli/src",
    ] {
        for (path, code) in sources(dir)? {
            if path.ends_with("storage-node/src/engine/rocks.rs") {
                engine_seen = code.contains("rocksdb::");
                continue;
            }
            if code.contains("rocksdb::") || code.contains("use rocksdb") {
                found.push(path);
            }
        }
    }
    assert!(engine_seen, "sanity: the engine module imports rocksdb");
    assert!(
        found.is_empty(),
        "rocksdb named outside storage-node/src/engine/rocks.rs: {found:?}"
    );
    Ok(())
}

/// Whether ARCHITECTURE.md names a source file: by its file name (`store.rs`), its path in
/// its folder (`api/data.rs`), its whole path, or, for a folder's `mod.rs`, the folder (`store/`).
fn mapped(doc: &str, path: &str) -> bool {
    let p = std::path::Path::new(path);
    let file = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let dir = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .unwrap_or("");
    if file == "mod.rs" {
        return doc.contains(&format!("`{dir}/`"));
    }
    doc.contains(&format!("`{file}`"))
        || doc.contains(&format!("`{dir}/{file}`"))
        || doc.contains(&format!("`{path}`"))
}

#[test]
fn every_source_file_is_in_the_code_map() -> Result<()> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ARCHITECTURE.md"))?;
    // The check itself can fail.
    assert!(!mapped("`a.rs`", "coordinator/src/b.rs"));
    assert!(mapped("`jobs/`", "coordinator/src/jobs/mod.rs"));
    let mut missing = Vec::new();
    for dir in [
        "common/src",
        "coordinator/src",
        "storage-node/src",
        "cli/src",
    ] {
        for (path, _) in sources(dir)? {
            if path.ends_with("/main.rs") || path.ends_with("/lib.rs") {
                continue;
            }
            if !mapped(&doc, &path) {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files missing from ARCHITECTURE.md's code map: {missing:?}"
    );
    Ok(())
}
