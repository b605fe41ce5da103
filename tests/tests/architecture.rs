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
