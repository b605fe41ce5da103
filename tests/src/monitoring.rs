//! What the alert rules and dashboards in `k8s/base/monitoring/` refer to: every PromQL
//! expression they hold, and the metric names in each, to be checked against what live
//! pairdb processes export.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::k8s::{parse_yaml, repo_root};

/// Metrics Prometheus makes itself rather than scraping them.
pub const SYNTHETIC: &[&str] = &["up"];

/// Operators and aggregations (an aggregation may be followed by `by (…)` before its
/// parenthesis, so it is not always a call).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects (functions, keywords, label names, label values,
/// durations and numbers left out).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop label matchers, range/subquery selectors and strings.
    let mut plain = String::new();
    let mut depth_brace = 0usize;
    let mut depth_bracket = 0usize;
    let mut in_str: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = in_str {
            if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' if depth_brace == 0 => in_str = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace = depth_brace.saturating_sub(1),
            '[' => depth_bracket += 1,
            ']' => depth_bracket = depth_bracket.saturating_sub(1),
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => plain.push(c),
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if call && GROUPING.contains(&word.as_str()) {
                // `by (a, b)`: label names, not metrics.
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            let lower = word.to_ascii_lowercase();
            let keyword = KEYWORDS.contains(&lower.as_str()) || GROUPING.contains(&lower.as_str());
            if !call && !keyword {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers, including 1e3 and 0x1f.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every alert expression (`alert` name, `expr`) of `alerts.yaml`.
pub fn alert_exprs() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo_root().join("k8s/base/monitoring/alerts.yaml"))?;
    let docs = parse_yaml(&text)?;
    let doc = docs.first().context("alerts.yaml is empty")?;
    let mut out = Vec::new();
    for g in doc["groups"].as_array().context("no groups")? {
        for r in g["rules"].as_array().context("group without rules")? {
            let name = r["alert"]
                .as_str()
                .or_else(|| r["record"].as_str())
                .context("rule without a name")?;
            let expr = r["expr"].as_str().context("rule without expr")?;
            out.push((name.to_string(), expr.to_string()));
        }
    }
    Ok(out)
}

/// Every dashboard: (file name, parsed JSON).
pub fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = repo_root().join("k8s/base/monitoring/dashboards");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("parse {}", p.display()))?;
            out.push((
                p.file_name().unwrap_or_default().to_string_lossy().into(),
                v,
            ));
        }
    }
    out.sort_by(|a: &(String, Value), b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every panel expression of a dashboard: (panel title, expr).
pub fn panel_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    out
}

/// Every metric any rule or panel selects, with where it is used.
pub fn referenced_metrics() -> Result<Vec<(String, String)>> {
    let mut uses = Vec::new();
    for (alert, expr) in alert_exprs()? {
        for m in metric_names(&expr) {
            uses.push((m, format!("alert {alert}")));
        }
    }
    for (file, d) in dashboards()? {
        for (title, expr) in panel_exprs(&d) {
            for m in metric_names(&expr) {
                uses.push((m, format!("{file}: {title}")));
            }
        }
    }
    Ok(uses)
}

/// The sample names of a Prometheus text exposition (`name{...} value` → `name`).
pub fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &str) -> Vec<String> {
        metric_names(e).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_and_durations() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, op) (rate(coordinator_request_duration_seconds_bucket{op=~"write|delete"}[5m]))) > 0.1"#
            ),
            vec!["coordinator_request_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "sum(rate(cache_hits_total[5m])) by (node) / sum(rate(cache_requests_total{node=~\"$node\"}[5m])) by (node)"
            ),
            vec!["cache_hits_total", "cache_requests_total"]
        );
        assert_eq!(
            names(
                "predict_linear(disk_usage_percent[6h], 7 * 24 * 3600) > 90 and disk_usage_percent > 50"
            ),
            vec!["disk_usage_percent"]
        );
        assert_eq!(
            names(
                "min by (kind, subject) (tls_certificate_expiry_timestamp_seconds) - time() < 14 * 86400"
            ),
            vec!["tls_certificate_expiry_timestamp_seconds"]
        );
        assert_eq!(names("wal_bytes > 10 * 1024 * 1e3"), vec!["wal_bytes"]);
        assert_eq!(
            names("max by (tenant_id) (tenant_ranges_below_quorum) > 0"),
            vec!["tenant_ranges_below_quorum"]
        );
    }

    #[test]
    fn exposition_lines_give_sample_names() {
        let t = "# HELP a x\n# TYPE a counter\na_total{node=\"n1\"} 3\nb 1\n# EOF\n";
        assert_eq!(
            exported_names(t).into_iter().collect::<Vec<_>>(),
            vec!["a_total", "b"]
        );
    }
}
