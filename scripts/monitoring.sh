#!/usr/bin/env bash
# Alert rules and dashboards (k8s/base/monitoring/):
#   scripts/monitoring.sh check           promtool check rules + promtool test rules
#   scripts/monitoring.sh prometheusrule  regenerate k8s/base/prometheusrule.yaml from alerts.yaml
# tests/tests/monitoring.rs runs the check and fails when prometheusrule.yaml has drifted.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
dir=k8s/base/monitoring
case "${1:-check}" in
  check)
    promtool check rules "$dir/alerts.yaml"
    (cd "$dir" && promtool test rules alerts_test.yaml)
    ;;
  prometheusrule)
    "$PAIRDB_VENV/bin/python" - <<'PY'
import yaml
rules = yaml.safe_load(open("k8s/base/monitoring/alerts.yaml"))
doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
       "metadata": {"name": "pairdb-alerts"}, "spec": {"groups": rules["groups"]}}
with open("k8s/base/prometheusrule.yaml", "w") as f:
    f.write("# The alert rules of monitoring/alerts.yaml for the Prometheus operator (the same groups;\n"
            "# tests/tests/monitoring.rs fails if the two differ). Regenerate after editing alerts.yaml:\n"
            "#   scripts/monitoring.sh prometheusrule\n")
    yaml.safe_dump(doc, f, sort_keys=False, width=100, allow_unicode=True)
PY
    ;;
  *)
    echo "usage: scripts/monitoring.sh check | prometheusrule" >&2
    exit 2
    ;;
esac
