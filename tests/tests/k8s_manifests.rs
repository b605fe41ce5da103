//! The Kubernetes manifests are tested, not decorative:
//! - every overlay renders (`scripts/kustomize`) and every object validates offline against
//!   the Kubernetes schemas (`kubernetes-validate --strict`); the Prometheus-operator objects,
//!   which those schemas do not cover, are checked against the Services they select;
//! - what the processes need is wired (probes on a declared admin port, the drain preStop
//!   hook, a grace period that fits it, volumes where the config puts data, the join address
//!   naming the coordinator Service, PDBs and the HPA selecting their pods, the ConfigMap
//!   holding the real config files, production's TLS, tokens and anti-affinity, every command
//!   present in the image that runs it);
//! - a cluster started from the dev overlay with exactly the command, arguments and
//!   environment its objects give each container (pod names, ports, addresses and mount paths
//!   substituted) migrates, serves, joins, answers every probe path the manifests name, drains
//!   with the preStop command and stops within its grace period, and exports every metric the
//!   alert rules and dashboards use.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pairdb_common::api::pb;
use pairdb_common::tls::admin_http::AdminTarget;
use pairdb_tests::cluster::PgDb;
use pairdb_tests::k8s::{Rendered, repo_root, venv_bin};
use pairdb_tests::monitoring::{SYNTHETIC, exported_names, referenced_metrics};
use pairdb_tests::*;
use serde_json::Value;

/// Metrics the dev overlay cannot export, and where they are checked instead.
const NOT_IN_DEV: &[(&str, &str)] = &[(
    "tls_certificate_expiry_timestamp_seconds",
    "exported only with TLS on; tests/tests/security/tls.rs checks it",
)];

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

fn pod_spec(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]
}

fn containers(w: &Value) -> Vec<&Value> {
    let s = pod_spec(w);
    s["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["initContainers"].as_array().into_iter().flatten())
        .collect()
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
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
        } else {
            assert_eq!(env_value(node, "PAIRDB_INSECURE"), Some("true"));
            r.get("StatefulSet", "pairdb-postgres").unwrap();
        }
    }
}

/// One pod of the dev overlay run as a local process.
struct Pod {
    name: String,
    /// Container port → local port.
    ports: HashMap<u64, u16>,
    env: Vec<(String, String)>,
    command: Vec<String>,
    pre_stop: Option<Vec<String>>,
    grace: Duration,
    child: Option<ChildGuard>,
}

impl Pod {
    fn port(&self, container_port: u64) -> u16 {
        self.ports[&container_port]
    }

    fn spawn(&mut self, log: &Path) {
        let bin = binary(&self.command[0]).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(&self.command[1..])
            .env_clear()
            .envs(self.env.iter().cloned())
            .env("PATH", bin_dir().unwrap())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        self.child = Some(ChildGuard::spawn(&self.name, &mut cmd).unwrap());
    }
}

/// Replaces, longest first, every `from` with its `to`.
fn substitute(s: &str, subs: &[(String, String)]) -> String {
    let mut subs: Vec<&(String, String)> = subs.iter().collect();
    subs.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    let mut out = String::new();
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for (f, t) in &subs {
            if !f.is_empty() && rest.starts_with(f.as_str()) {
                out.push_str(t);
                rest = &rest[f.len()..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Builds pod `name` of a workload: local ports for its container ports, a directory per
/// volume (ConfigMap volumes filled with their files, addresses and paths in them localized),
/// and the container's environment resolved and localized.
#[allow(clippy::too_many_arguments)]
fn pod(
    r: &Rendered,
    kind: &str,
    workload: &str,
    container: &str,
    name: &str,
    root: &Path,
    global: &[(String, String)],
    extra_fields: &[(&str, String)],
) -> Pod {
    let w = r.get(kind, workload).unwrap();
    let c = r.container(kind, workload, container).unwrap();
    let dir = root.join(name);
    let mut ports = HashMap::new();
    let mut subs: Vec<(String, String)> = global.to_vec();
    for p in c["ports"].as_array().into_iter().flatten() {
        let cp = p["containerPort"].as_u64().unwrap();
        let local = free_port().unwrap();
        ports.insert(cp, local);
        subs.push((format!("0.0.0.0:{cp}"), format!("127.0.0.1:{local}")));
        subs.push((format!("127.0.0.1:{cp}"), format!("127.0.0.1:{local}")));
    }
    // Volumes: a local directory at each mount path.
    let volumes: HashMap<String, &Value> = pod_spec(w)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (vol, path) in &mounts {
        let local = dir.join(vol);
        std::fs::create_dir_all(&local).unwrap();
        subs.push((path.clone(), local.display().to_string()));
    }
    for (vol, _) in &mounts {
        if let Some(cm) = volumes
            .get(vol)
            .and_then(|v| v["configMap"]["name"].as_str())
        {
            let data = r.get("ConfigMap", cm).unwrap()["data"].as_object().unwrap();
            for (file, text) in data {
                std::fs::write(
                    dir.join(vol).join(file),
                    substitute(text.as_str().unwrap(), &subs),
                )
                .unwrap();
            }
        }
    }
    let mut fields: HashMap<&str, String> = HashMap::from([
        ("metadata.name", name.to_string()),
        ("metadata.namespace", "pairdb".to_string()),
        ("status.podIP", "127.0.0.1".to_string()),
        ("spec.nodeName", "k8s-node-1".to_string()),
    ]);
    fields.extend(extra_fields.iter().cloned());
    let env: Vec<(String, String)> = r
        .env(c, &fields)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, substitute(&v, &subs)))
        .collect();
    let localize_args = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|a| substitute(a.as_str().unwrap(), &subs))
            .collect()
    };
    let mut command = localize_args(&c["command"]);
    command.extend(localize_args(&c["args"]));
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .map(|_| localize_args(&c["lifecycle"]["preStop"]["exec"]["command"]));
    let grace = Duration::from_secs(
        pod_spec(w)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    Pod {
        name: name.to_string(),
        ports,
        env,
        command,
        pre_stop,
        grace,
        child: None,
    }
}

/// GETs every probe path of `container` on the pod's local admin port; all must answer 200.
async fn probes_pass(r: &Rendered, kind: &str, workload: &str, container: &str, p: &Pod) -> bool {
    let c = r.container(kind, workload, container).unwrap();
    let admin = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "admin")
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        let t = AdminTarget::parse(&format!("127.0.0.1:{}", p.port(admin)), None, None);
        match t.get(path).await {
            Ok((200, _)) => {}
            _ => return false,
        }
    }
    true
}

async fn wait_probes(r: &Rendered, kind: &str, workload: &str, container: &str, p: &Pod) {
    let start = Instant::now();
    while !probes_pass(r, kind, workload, container, p).await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}: probes not passing after 60 s",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ctl(coord: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("pairdbctl").unwrap())
        .args(["--coordinator", coord])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_started_from_the_dev_manifests_serves_drains_and_exports_every_metric_used() {
    let _s = serial_async().await;
    let r = Rendered::overlay("dev").unwrap();
    let root = tempfile::tempdir().unwrap();
    let logs: PathBuf = root.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pg = PgDb::create().await.unwrap();
    let dev_url = r.data("Secret", "pairdb-database", "url").unwrap();
    let coord_grpc_port = 50051;
    let mut global = vec![(dev_url.clone(), pg.url.clone())];

    // The migration Job, then the coordinator Deployment's replicas.
    let mut migrate = pod(
        &r,
        "Job",
        "pairdb-migrate",
        "migrate",
        "pairdb-migrate-x1",
        root.path(),
        &global,
        &[],
    );
    migrate.spawn(&logs.join("migrate.log"));
    let status = migrate
        .child
        .as_mut()
        .unwrap()
        .child
        .as_mut()
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(logs.join("migrate.log")).unwrap()
    );

    let replicas = r.get("Deployment", "pairdb-coordinator").unwrap()["spec"]["replicas"]
        .as_u64()
        .unwrap();
    let mut coords = Vec::new();
    for i in 0..replicas {
        let name = format!("pairdb-coordinator-7d9f8-{i}");
        let mut p = pod(
            &r,
            "Deployment",
            "pairdb-coordinator",
            "coordinator",
            &name,
            root.path(),
            &global,
            &[],
        );
        p.spawn(&logs.join(format!("{name}.log")));
        coords.push(p);
    }
    for p in &coords {
        wait_probes(&r, "Deployment", "pairdb-coordinator", "coordinator", p).await;
    }
    let coord = format!("127.0.0.1:{}", coords[0].port(coord_grpc_port));
    // The Service address the storage pods join through is the first coordinator here.
    global.push((
        format!("pairdb-coordinator:{coord_grpc_port}"),
        coord.clone(),
    ));

    // Storage pods in order (OrderedReady): each joins, and is ready once registered.
    let sts = r.get("StatefulSet", "pairdb-storage").unwrap();
    let n = sts["spec"]["replicas"].as_u64().unwrap();
    let zones = ["zone-a", "zone-b", "zone-c"];
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("pairdb-storage-{i}");
        let mut subs = global.clone();
        subs.push((
            format!("{name}.pairdb-storage.pairdb.svc.cluster.local"),
            "127.0.0.1".into(),
        ));
        let mut p = pod(
            &r,
            "StatefulSet",
            "pairdb-storage",
            "storage-node",
            &name,
            root.path(),
            &subs,
            &[],
        );
        // What the `zone` init container writes (it needs a Kubernetes API to ask).
        let zone_file = p
            .env
            .iter()
            .find(|(k, _)| k == "PAIRDB_ZONE_FILE")
            .unwrap()
            .1
            .clone();
        std::fs::write(&zone_file, zones[i as usize % 3]).unwrap();
        p.spawn(&logs.join(format!("{name}.log")));
        wait_probes(&r, "StatefulSet", "pairdb-storage", "storage-node", &p).await;
        nodes.push(p);
    }

    // Every node joined and finished bootstrapping.
    let start = Instant::now();
    loop {
        let (ok, out) = ctl(&coord, &["--json", "cluster", "health"]);
        if ok && out.contains("\"status\":\"healthy\"") && out.contains("\"nodes_up\":3") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "cluster never healthy: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, list) = ctl(&coord, &["--json", "node", "list"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let mut seen_zones: Vec<String> = list
        .as_array()
        .or_else(|| list["nodes"].as_array())
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap().to_string())
        .collect();
    seen_zones.sort();
    assert_eq!(seen_zones, zones, "zones from the zone files: {list}");

    // Traffic: a tenant, writes and reads, an error, a repair.
    let (ok, out) = ctl(
        &coord,
        &["tenant", "create", "k8s", "--replication-factor", "3"],
    );
    assert!(ok, "{out}");
    let mut c = pairdb_common::client::Dial {
        address: coord.clone(),
        ..Default::default()
    }
    .connect()
    .await
    .unwrap();
    let start = Instant::now();
    let mut written = 0;
    while written < 200 {
        let w = c
            .write(pb::WriteRequest {
                tenant_id: "k8s".into(),
                key: format!("key-{written}").into_bytes(),
                value: b"value".to_vec(),
                ..Default::default()
            })
            .await;
        match w {
            Ok(_) => written += 1,
            // The tenant reaches every coordinator within its refresh.
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    for i in 0..200 {
        let got = c
            .read(pb::ReadRequest {
                tenant_id: "k8s".into(),
                key: format!("key-{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (got.value.as_slice(), got.siblings.len()),
            (&b"value"[..], 1),
            "key-{i}"
        );
    }
    assert!(
        c.read(pb::ReadRequest {
            tenant_id: "no-such-tenant".into(),
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .is_err()
    );
    let (ok, out) = ctl(
        &coord,
        &[
            "repair",
            "start",
            "--tenant",
            "k8s",
            "--wait",
            "--timeout-secs",
            "60",
        ],
    );
    assert!(ok, "{out}");

    // The preStop drain of the last pod: readiness turns 503; client reads routed to it fail
    // there (counted by code), and the data stays readable at QUORUM.
    let last_i = nodes.len() - 1;
    let last = &nodes[last_i];
    let pre = last.pre_stop.clone().unwrap();
    let out = Command::new(binary(&pre[0]).unwrap())
        .args(&pre[1..])
        .env_clear()
        .envs(last.env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preStop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = AdminTarget::parse(&format!("127.0.0.1:{}", last.port(9101)), None, None);
    assert_eq!(admin.get("/health/ready").await.unwrap().0, 503);
    assert_eq!(admin.get("/health/live").await.unwrap().0, 200);
    for i in 0..50 {
        let got = c
            .read(pb::ReadRequest {
                tenant_id: "k8s".into(),
                key: format!("key-{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, b"value");
    }

    // Every metric a rule or a dashboard uses is exported by some process.
    tokio::time::sleep(pairdb_coordinator::gauges::GAUGE_INTERVAL + Duration::from_secs(1)).await;
    let mut exported = BTreeSet::new();
    for p in coords
        .iter()
        .map(|p| p.port(9100))
        .chain(nodes.iter().map(|p| p.port(9101)))
    {
        let (code, text) = AdminTarget::parse(&format!("127.0.0.1:{p}"), None, None)
            .get("/metrics")
            .await
            .unwrap();
        assert_eq!(code, 200);
        exported.extend(exported_names(&text));
    }
    let mut missing = Vec::new();
    for (metric, used_by) in referenced_metrics().unwrap() {
        let excused =
            SYNTHETIC.contains(&metric.as_str()) || NOT_IN_DEV.iter().any(|(m, _)| *m == metric);
        if !excused && !exported.contains(&metric) {
            missing.push(format!("{metric} ({used_by})"));
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported:\n{}",
        missing.join("\n")
    );

    // SIGTERM after the preStop: the node stops within its grace period, cleanly.
    let last = &mut nodes[last_i];
    let grace = last.grace;
    let status = last
        .child
        .as_mut()
        .unwrap()
        .signal_and_wait(rustix::process::Signal::TERM, grace)
        .unwrap();
    assert!(status.success(), "storage node exit: {status:?}");
    for p in &mut coords {
        let status = p
            .child
            .as_mut()
            .unwrap()
            .signal_and_wait(rustix::process::Signal::TERM, p.grace)
            .unwrap();
        assert!(status.success(), "coordinator exit: {status:?}");
    }
}
