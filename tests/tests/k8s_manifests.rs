//! The Kubernetes manifests are tested, not decorative (the process side is
//! `k8s_process.rs`):
//! - every overlay renders (`scripts/kustomize`) and every object validates offline against
//!   the Kubernetes schemas (`kubernetes-validate --strict`); the Prometheus-operator objects,
//!   which those schemas do not cover, are checked against the Services they select;
//! - what the processes need is wired (probes on a declared admin port, the drain preStop
//!   hook, a grace period that fits it, volumes where the config puts data, the join address
//!   naming the coordinator Service, PDBs and the HPA selecting their pods, the ConfigMap
//!   holding the real config files, production's TLS, tokens and anti-affinity, every command
//!   present in the image that runs it).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;

use pairdb_tests::k8s::{Rendered, containers, env_value, pod_spec, repo_root, selects, venv_bin};

/// Secrets production expects the operator to create (k8s/overlays/production).
const PRODUCTION_SECRETS: &[&str] = &[
    "pairdb-database",
    "pairdb-admin-token",
    "pairdb-tls-coordinator",
    "pairdb-tls-storage",
];

fn overlays() -> [&'static str; 2] {
    ["dev", "production"]
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    for overlay in overlays() {
        let r = Rendered::overlay(overlay).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &r.yaml).unwrap();
        let out = Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (scripts/setup.sh installs it into the venv)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{overlay}: {report}");
        assert!(!report.contains("ERROR"), "{overlay}: {report}");
        // The only kinds the schemas do not know are the Prometheus operator's.
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                line.contains("ServiceMonitor") || line.contains("PrometheusRule"),
                "{overlay}: {line}"
            );
        }
        assert!(
            r.objects.len() >= 15,
            "{overlay}: {} objects",
            r.objects.len()
        );

        // ServiceMonitor: selects both Services, on a port each of them has.
        let sm = r.get("ServiceMonitor", "pairdb").unwrap();
        let selector = &sm["spec"]["selector"]["matchLabels"];
        for svc in ["pairdb-coordinator", "pairdb-storage"] {
            let s = r.get("Service", svc).unwrap();
            assert!(selects(selector, &s["metadata"]["labels"]), "{svc}");
            for ep in sm["spec"]["endpoints"].as_array().unwrap() {
                assert!(
                    s["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == ep["port"]),
                    "{svc} has no port {}",
                    ep["port"]
                );
                assert_eq!(ep["path"], "/metrics");
            }
        }
        let pr = r.get("PrometheusRule", "pairdb-alerts").unwrap();
        assert!(
            pr["spec"]["groups"]
                .as_array()
                .is_some_and(|g| g.len() >= 2)
        );
    }
}

#[test]
fn the_manifests_wire_what_the_processes_need() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for overlay in overlays() {
        let r = Rendered::overlay(overlay).unwrap();
        let sts = r.get("StatefulSet", "pairdb-storage").unwrap();
        let dep = r.get("Deployment", "pairdb-coordinator").unwrap();

        // Probes on a declared admin port, with the paths that mean what they say.
        for (w, name) in [(sts, "storage-node"), (dep, "coordinator")] {
            let c = r
                .container(
                    w["kind"].as_str().unwrap(),
                    w["metadata"]["name"].as_str().unwrap(),
                    name,
                )
                .unwrap();
            assert!(
                c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "admin")
            );
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/health/ready",
                "{overlay} {name}"
            );
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live");
            assert_eq!(c["startupProbe"]["httpGet"]["path"], "/health/live");
            for p in ["readinessProbe", "livenessProbe", "startupProbe"] {
                assert_eq!(c[p]["httpGet"]["port"], "admin", "{overlay} {name} {p}");
                let scheme = c[p]["httpGet"]["scheme"].as_str().unwrap_or("HTTP");
                assert_eq!(
                    scheme,
                    if overlay == "production" {
                        "HTTPS"
                    } else {
                        "HTTP"
                    }
                );
            }
        }

        // Storage: stable identity and DNS, the drain hook, a grace period that fits it.
        let svc = r.get("Service", "pairdb-storage").unwrap();
        assert_eq!(sts["spec"]["serviceName"], "pairdb-storage");
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        let node = r
            .container("StatefulSet", "pairdb-storage", "storage-node")
            .unwrap();
        assert_eq!(env_value(node, "PAIRDB_NODE_ID"), Some("$(POD_NAME)"));
        let join = env_value(node, "PAIRDB_JOIN").unwrap();
        let coord_svc = r.get("Service", "pairdb-coordinator").unwrap();
        let grpc_port = coord_svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .unwrap()["port"]
            .clone();
        assert_eq!(join, format!("pairdb-coordinator:{grpc_port}"));
        assert!(selects(
            &coord_svc["spec"]["selector"],
            &dep["spec"]["template"]["metadata"]["labels"]
        ));
        let pre = node["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .unwrap();
        let pre: Vec<&str> = pre.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(&pre[..4], ["pairdbctl", "node", "maintenance", "on"]);
        let settle: u64 = pre
            .iter()
            .position(|a| *a == "--settle-secs")
            .map(|i| pre[i + 1].parse().unwrap())
            .unwrap_or(0);
        // preStop: the maintenance request's timeout and the settle time; then SIGTERM: the
        // node's 10 s shutdown deadline and its flush.
        let needed = pairdb_common::tls::admin_http::REQUEST_TIMEOUT.as_secs() + settle + 10 + 10;
        let grace = pod_spec(sts)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert!(grace >= needed, "{overlay}: grace {grace}s < {needed}s");
        let vct = &sts["spec"]["volumeClaimTemplates"][0];
        assert_eq!(vct["metadata"]["name"], "data");
        let data_mount = node["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "data")
            .unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string();
        let node_cfg = r
            .data("ConfigMap", "pairdb-config", "storage-node.toml")
            .unwrap();
        assert!(
            node_cfg.contains(&format!("data_dir = \"{data_mount}\"")),
            "the data volume is where the config keeps data"
        );

        // The ConfigMap is the real config files.
        for f in ["coordinator.toml", "storage-node.toml"] {
            let real =
                std::fs::read_to_string(repo_root().join("k8s/base/config").join(f)).unwrap();
            assert_eq!(
                r.data("ConfigMap", "pairdb-config", f).unwrap(),
                real,
                "{f}"
            );
        }

        // Disruption budgets, autoscaler, migration.
        for (pdb, w) in [("pairdb-storage", sts), ("pairdb-coordinator", dep)] {
            let p = r.get("PodDisruptionBudget", pdb).unwrap();
            assert!(selects(
                &p["spec"]["selector"]["matchLabels"],
                &w["spec"]["template"]["metadata"]["labels"]
            ));
        }
        let hpa = r
            .get("HorizontalPodAutoscaler", "pairdb-coordinator")
            .unwrap();
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "pairdb-coordinator");
        let job = r.container("Job", "pairdb-migrate", "migrate").unwrap();
        assert_eq!(
            job["command"],
            serde_json::json!(["pairdb-coordinator", "migrate"])
        );

        // Every ConfigMap and Secret a pod uses exists, or is one production documents.
        for w in [sts, dep, r.get("Job", "pairdb-migrate").unwrap()] {
            let mut refs = BTreeSet::new();
            for v in pod_spec(w)["volumes"].as_array().into_iter().flatten() {
                if let Some(n) = v["configMap"]["name"].as_str() {
                    refs.insert(("ConfigMap", n.to_string()));
                }
                if let Some(n) = v["secret"]["secretName"].as_str() {
                    refs.insert(("Secret", n.to_string()));
                }
            }
            for c in containers(w) {
                for e in c["env"].as_array().into_iter().flatten() {
                    if let Some(n) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                        refs.insert(("Secret", n.to_string()));
                    }
                }
            }
            for (kind, name) in refs {
                let ok = r.get(kind, &name).is_ok()
                    || (overlay == "production"
                        && kind == "Secret"
                        && PRODUCTION_SECRETS.iter().any(|s| name.starts_with(s)));
                assert!(ok, "{overlay}: {kind} {name} is used but not defined");
            }
        }

        // Every command runs in an image that has it.
        for (w, stage) in [(sts, "storage-node"), (dep, "coordinator")] {
            let stage_text = dockerfile
                .split(&format!("AS {stage}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("Dockerfile has no stage {stage}"))
                .split("\nFROM ")
                .next()
                .unwrap();
            for c in containers(w) {
                let mut cmds = vec![c["command"][0].as_str().unwrap().to_string()];
                if let Some(p) = c["lifecycle"]["preStop"]["exec"]["command"][0].as_str() {
                    cmds.push(p.to_string());
                }
                for cmd in cmds {
                    assert!(
                        stage_text.contains(&format!("/out/{cmd}")),
                        "{overlay}: {cmd} is not in the {stage} image"
                    );
                }
            }
        }

        if overlay == "production" {
            let spec = pod_spec(sts);
            assert_eq!(
                spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    [0]["topologyKey"],
                "kubernetes.io/hostname"
            );
            assert_eq!(
                spec["topologySpreadConstraints"][0]["topologyKey"],
                "topology.kubernetes.io/zone"
            );
            let c = r
                .container("Deployment", "pairdb-coordinator", "coordinator")
                .unwrap();
            assert_eq!(env_value(c, "PAIRDB_AUTH"), Some("required"));
            for c in [c, node] {
                for v in [
                    "PAIRDB_TLS_CERT",
                    "PAIRDB_TLS_KEY",
                    "PAIRDB_TLS_CA",
                    "PAIRDB_ADMIN_TOKEN_FILE",
                ] {
                    assert!(
                        env_value(c, v).is_some(),
                        "production {}: no {v}",
                        c["name"]
                    );
                }
                assert!(env_value(c, "PAIRDB_INSECURE").is_none());
            }
            assert_eq!(
                env_value(node, "PAIRDB_TLS_CERT"),
                Some("/etc/pairdb/tls/$(POD_NAME).crt")
            );
            // Backups: every storage pod and coordinator writes under one shared
            // ReadWriteMany volume, mounted where PAIRDB_BACKUP_DIR points.
            let pvc = r.get("PersistentVolumeClaim", "pairdb-backups").unwrap();
            assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany");
            for (w, c) in [(sts, node), (dep, c)] {
                let dir = env_value(c, "PAIRDB_BACKUP_DIR")
                    .unwrap_or_else(|| panic!("production {}: no PAIRDB_BACKUP_DIR", c["name"]));
                let mount = c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["mountPath"] == dir)
                    .unwrap_or_else(|| {
                        panic!("production {}: nothing mounted at {dir}", c["name"])
                    });
                let volume = pod_spec(w)["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                assert_eq!(
                    volume["persistentVolumeClaim"]["claimName"], "pairdb-backups",
                    "production {}: the backup dir is not the shared volume",
                    c["name"]
                );
                assert!(!dir.starts_with("/var/lib/pairdb/"), "outside the data dir");
            }
        } else {
            assert_eq!(env_value(node, "PAIRDB_INSECURE"), Some("true"));
            r.get("StatefulSet", "pairdb-postgres").unwrap();
        }
    }
}
