//! The alert rules and dashboards that ship in `k8s/base/monitoring/`: `promtool check rules`
//! and `promtool test rules` pass, every alert has a unit test in which it fires (and the
//! tests bite: a rule with a changed threshold fails them), the Prometheus-operator copy
//! (`k8s/base/prometheusrule.yaml`) holds exactly the same groups, and the three dashboards
//! are well-formed Grafana JSON whose every panel has a query. That every metric they name is
//! exported by a live cluster is checked by `k8s_process.rs` on the cluster it starts from
//! the manifests.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::process::Command;

use pairdb_tests::k8s::{parse_yaml, repo_root};
use pairdb_tests::monitoring::{alert_exprs, dashboards, metric_names, panel_exprs};

fn monitoring_dir() -> std::path::PathBuf {
    repo_root().join("k8s/base/monitoring")
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let out = Command::new(repo_root().join("scripts/monitoring.sh"))
        .arg("check")
        .output()
        .expect("run scripts/monitoring.sh (promtool comes from scripts/setup.sh)");
    assert!(
        out.status.success(),
        "promtool failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn every_alert_fires_in_a_unit_test() {
    let tests = std::fs::read_to_string(monitoring_dir().join("alerts_test.yaml")).unwrap();
    let tests = &parse_yaml(&tests).unwrap()[0];
    let mut fired = HashSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fired.insert(a["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    let alerts = alert_exprs().unwrap();
    assert!(alerts.len() >= 25, "{} alerts", alerts.len());
    let missing: Vec<_> = alerts
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !fired.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts never fired by a test: {missing:?}"
    );
    // The guides' alerts are there under their names.
    for name in [
        "DiskUsageHigh",
        "DiskThrottled",
        "DiskCircuitBreakerEngaged",
        "HighChecksumFailureRate",
        "HighWriteLatency",
        "HighErrorRate",
        "ServiceDown",
        "LowCacheHitRate",
        "RangeWithoutWriteQuorum",
        "StorageNodeDown",
        "HintBacklogHigh",
        "HintsOld",
        "TopologyChangeStuck",
        "RepairStuck",
        "CertificateExpiresSoon",
    ] {
        assert!(alerts.iter().any(|(n, _)| n == name), "no alert {name}");
    }
}

#[test]
fn the_unit_tests_fail_when_a_threshold_moves() {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(monitoring_dir().join("alerts.yaml")).unwrap();
    let moved = rules.replace("disk_usage_percent > 80", "disk_usage_percent > 88");
    assert_ne!(moved, rules);
    std::fs::write(dir.path().join("alerts.yaml"), moved).unwrap();
    std::fs::copy(
        monitoring_dir().join("alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a moved threshold went unnoticed:\n{report}"
    );
    assert!(report.contains("DiskUsageHigh"), "{report}");
}

#[test]
fn the_operator_copy_holds_the_same_rules() {
    let rules = std::fs::read_to_string(monitoring_dir().join("alerts.yaml")).unwrap();
    let op = std::fs::read_to_string(repo_root().join("k8s/base/prometheusrule.yaml")).unwrap();
    let rules = &parse_yaml(&rules).unwrap()[0];
    let op = &parse_yaml(&op).unwrap()[0];
    assert_eq!(op["kind"], "PrometheusRule");
    assert_eq!(
        op["spec"]["groups"], rules["groups"],
        "k8s/base/prometheusrule.yaml drifted: run scripts/monitoring.sh prometheusrule"
    );
}

#[test]
fn three_dashboards_with_queries_on_every_panel() {
    let ds = dashboards().unwrap();
    let files: Vec<&str> = ds.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        [
            "cluster-overview.json",
            "storage-node.json",
            "topology-repair-hints.json"
        ]
    );
    let mut uids = BTreeSet::new();
    for (file, d) in &ds {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: uid reused"
        );
        assert!(d["title"].as_str().is_some_and(|t| t.starts_with("pairdb")));
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 10, "{file}: {} panels", panels.len());
        let mut ids = HashSet::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: panel id reused"
            );
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{file}: {p}");
            let targets = p["targets"].as_array().unwrap();
            assert!(
                !targets.is_empty(),
                "{file}: panel {} has no query",
                p["title"]
            );
        }
        // Every query names at least one metric.
        for (title, expr) in panel_exprs(d) {
            assert!(!metric_names(&expr).is_empty(), "{file}: {title}: {expr}");
        }
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["type"] == "datasource"), "{file}");
    }
}
