"""The monitoring check of deploycheck.py: manifests/observability's alerts, their unit tests and
the Grafana dashboard.

The PrometheusRule is the only copy of the rules: its spec is written to a temporary rules.yaml,
next to copies of tests/*.yaml (which name rules.yaml), and promtool checks and tests that.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

# Prefixes of the apps' own metric names; any name with one must be in metrics.txt.
APP_METRIC = re.compile(r"\b((?:rpc_server|task_api|notification_service)_[a-z0-9_]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Grafana's variables, replaced by values promtool can parse.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}


def check(observability: Path, promtool: Path | None) -> tuple[list[str], str]:
    """(problems, summary) for the directory manifests/observability."""
    if promtool is None:
        return ["promtool was not given (--promtool); run tools/observability/install.sh"], ""
    errors: list[str] = []
    catalogue = read_catalogue(observability / "metrics.txt", errors)
    spec = rule_spec(observability / "prometheusrule.yaml", errors)
    if spec is None:
        return errors, ""
    alerts = [r["alert"] for g in spec.get("groups") or [] for r in g.get("rules") or []
              if "alert" in r]
    for group in spec.get("groups") or []:
        for rule in group.get("rules") or []:
            errors += unknown_metrics(f"rule {rule.get('alert') or rule.get('record')}",
                                      str(rule.get("expr", "")), catalogue)
    tests = sorted((observability / "tests").glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="monitoring-check-") as tmp:
        work = Path(tmp)
        (work / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        errors += run(promtool, ["check", "rules", "rules.yaml"], work, "promtool check rules")
        for test in tests:
            shutil.copy(test, work / test.name)
        if tests:
            errors += run(promtool, ["test", "rules", *[t.name for t in tests]], work,
                          "promtool test rules")
        errors += coverage(alerts, tests)
        panels = dashboard_queries(observability / "dashboards" / "task-api.json", errors)
        for title, expr in panels:
            errors += unknown_metrics(f"dashboard panel {title!r}", expr, catalogue)
        errors += parse_queries(promtool, panels, work)
    version = subprocess.run([str(promtool), "--version"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL).stdout.split("\n")[0]
    return errors, (f"{len(alerts)} alerts, {len(tests)} test files, {len(panels)} dashboard "
                    f"queries; {version.strip()}")


def read_catalogue(path: Path, errors: list[str]) -> dict[str, str]:
    """metric name -> type, from metrics.txt."""
    catalogue = {}
    if not path.is_file():
        errors.append(f"{path.name} is missing")
        return catalogue
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            if len(fields) < 2 or fields[1] not in ("counter", "gauge", "histogram"):
                errors.append(f"{path.name}: {line.strip()!r} needs a name and a type "
                              "(counter, gauge or histogram)")
                continue
            catalogue[fields[0]] = fields[1]
    return catalogue


def rule_spec(path: Path, errors: list[str]) -> dict | None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d] if path.is_file() else []
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        errors.append(f"{path.name} must hold exactly one PrometheusRule, found {len(rules)}")
        return None
    return rules[0].get("spec") or {}


def unknown_metrics(where: str, expr: str, catalogue: dict[str, str]) -> list[str]:
    errors = []
    for name in sorted(set(APP_METRIC.findall(expr))):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and catalogue.get(name[: -len(suffix)]) == "histogram":
                base = name[: -len(suffix)]
        if base not in catalogue:
            errors.append(f"{where} uses {name}, which metrics.txt does not list")
    return errors


def run(promtool: Path, args: list[str], cwd: Path, what: str) -> list[str]:
    proc = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return []
    output = (proc.stdout + proc.stderr).strip().replace(str(cwd) + "/", "")
    return [f"{what} failed:\n" + "\n".join("      " + ln for ln in output.splitlines())]


def coverage(alerts: list[str], tests: list[Path]) -> list[str]:
    """Every alert has a unit test where it fires and one where it does not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for test in (yaml.safe_load(path.read_text()) or {}).get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                (firing if case.get("exp_alerts") else quiet).add(case.get("alertname"))
    errors = []
    for alert in alerts:
        if alert not in firing:
            errors.append(f"alert {alert} has no unit test in which it fires")
        if alert not in quiet:
            errors.append(f"alert {alert} has no unit test in which it stays quiet")
    for name in sorted((firing | quiet) - set(alerts)):
        errors.append(f"the unit tests name alert {name}, which the PrometheusRule does not "
                      "define")
    return errors


def dashboard_queries(path: Path, errors: list[str]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        errors.append(f"{path.name}: {e}")
        return []
    queries = []
    for panel in dashboard.get("panels") or []:
        for target in panel.get("targets") or []:
            if target.get("expr"):
                queries.append((panel.get("title", "?"), target["expr"]))
    if not queries:
        errors.append(f"{path.name} has no panel with a query")
    return queries


def parse_queries(promtool: Path, queries: list[tuple[str, str]], work: Path) -> list[str]:
    """promtool parses each dashboard query, written as a recording rule."""
    rules = []
    for i, (_, expr) in enumerate(queries):
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (work / "dashboard-queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    return run(promtool, ["check", "rules", "dashboard-queries.yaml"], work,
               "the dashboard's queries do not parse; promtool check rules")
