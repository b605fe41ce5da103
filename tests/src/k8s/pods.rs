//! A pod of a rendered overlay run as a local process: its container's command, arguments
//! and environment exactly as the manifests give them, with container ports, mount paths and
//! addresses substituted (each volume becomes a local directory, ConfigMap volumes filled with
//! their files), and its probes checked the way the kubelet would.
//!
//! Called only from test bodies, where a failed step is the test's failure: it panics with
//! the step that failed rather than threading errors back.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pairdb_common::tls::admin_http::AdminTarget;
use serde_json::Value;

use super::{Rendered, pod_spec};
use crate::{ChildGuard, bin_dir, binary, free_port};

/// One pod of the dev overlay run as a local process.
pub struct Pod {
    pub name: String,
    /// Container port → local port.
    pub ports: HashMap<u64, u16>,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub pre_stop: Option<Vec<String>>,
    pub grace: Duration,
    pub child: Option<ChildGuard>,
}

impl Pod {
    pub fn port(&self, container_port: u64) -> u16 {
        self.ports[&container_port]
    }

    pub fn spawn(&mut self, log: &Path) {
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
pub fn substitute(s: &str, subs: &[(String, String)]) -> String {
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
pub fn pod(
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
pub async fn probes_pass(
    r: &Rendered,
    kind: &str,
    workload: &str,
    container: &str,
    p: &Pod,
) -> bool {
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

pub async fn wait_probes(r: &Rendered, kind: &str, workload: &str, container: &str, p: &Pod) {
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
