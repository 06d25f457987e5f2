#!/usr/bin/env python3
"""Checks the Kubernetes manifests against Kubernetes, Dapr and the code, without a cluster.

scripts/check-deploy installs the pinned packages of requirements.txt, finds kustomize and the
Dapr CRDs, and runs:

  deploycheck.py check      one PASS/FAIL line per check, exit 1 if any failed
  deploycheck.py self-test  breaks copies of the manifests (and of src/config.rs) one way at a
                            time and expects the checks to catch every break

The checks:
  kustomize     every overlay (and the base) builds, with nothing printed on stderr: kustomize
                reports deprecated fields there
  core-schemas  the Kubernetes objects validate strictly against the Kubernetes schemas
  dapr-crds     the Dapr objects validate against the CRDs of the pinned Dapr release, rejecting
                fields the CRD does not define (the API server would refuse or drop them)
  monitoring-crds  the same for the Prometheus Operator's objects (PrometheusRule, PodMonitor),
                against the CRDs of the pinned Prometheus Operator release
  cross-checks  ports, names, Secrets, access control, shutdown timing, the metrics port and
                the span export agree between the manifests, Dapr and the code
  monitoring    the PrometheusRule's alerts pass `promtool check rules` and their unit tests
                (manifests/observability/tests, every alert seen firing and not firing) pass
                `promtool test rules`; the rules and the Grafana dashboard name only metrics of
                manifests/observability/metrics.txt, and the dashboard's queries parse
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

import monitoring

TARGETS = ("base", "overlays/docker-desktop", "overlays/production",
           "overlays/production-kafka")
DEV = "overlays/docker-desktop"
PROD = "overlays/production"
# Production variants: held to the same rules as production.
PRODUCTION = (PROD, "overlays/production-kafka")

# Ports daprd itself listens on in the pod (HTTP API, public health, gRPC API, internal gRPC,
# metrics): an app port among them collides with the sidecar.
RESERVED_PORTS = {3500, 3501, 50001, 50002, 9090}

# The two apps. The default ports are read from src/config.rs (port_const) when it defines them;
# the numbers here are used only when src/config.rs does not exist.
APPS = {
    "task-api": {
        "port_const": "TASK_API_DEFAULT_PORT",
        "port": 50051,
        "grpc_service": "task.v1.TaskService",
        # Settings naming the Dapr components the app uses, and the component type each must be.
        "components": {
            "STATE_STORE_NAME": "state.",
            "PUBSUB_NAME": "pubsub.",
            "OUTBOX_PUBSUB_NAME": "pubsub.",
            "SECRET_STORE_NAME": "secretstores.",
        },
    },
    "notification-service": {
        "port_const": "NOTIFICATION_DEFAULT_PORT",
        "port": 50052,
        "grpc_service": "notification.v1.NotificationService",
        "components": {"STATE_STORE_NAME": "state."},
    },
}
CALLER, CALLEE, METHOD = "task-api", "notification-service", "notify"

# Names the code uses by default, keyed by the setting that overrides them. src/config.rs is the
# source: each default is read from its `"SETTING", DEFAULT` lookup there. These values are the
# fallback for when src/config.rs does not exist.
NAME_DEFAULTS = {
    "STATE_STORE_NAME": "statestore",
    "PUBSUB_NAME": "pubsub",
    "OUTBOX_PUBSUB_NAME": "outbox",
    "TASK_EVENTS_TOPIC": "task-events",
    "OUTBOX_TOPIC": "task-events-outbox",
    "OUTBOX_RETRY_TOPIC": "task-events-outbox-retry",
    "RETRY_TOPIC": "task-events-retry",
    "SECRET_STORE_NAME": "secretstore",
    "API_KEY_SECRET_NAME": "task-api-auth",
    "API_KEY_SECRET_KEY": "api-key",
    "NOTIFICATION_APP_ID": "notification-service",
}

# Environment variables the apps read. Those read through the dapr crate (DAPR_*, APP_API_TOKEN)
# or tracing (RUST_LOG) are not spelled out in src/config.rs; the rest are, and any other
# upper-case string literal there is taken as a setting too.
KNOWN_ENV = {
    "APP_PORT", "APP_HOST", "DAPR_GRPC_ENDPOINT", "DAPR_GRPC_PORT", "DAPR_HTTP_PORT",
    "DAPR_API_TOKEN", "APP_API_TOKEN", "API_KEY_REFRESH_SECONDS", "AUTH_DISABLED",
    "NOTIFY_TIMEOUT_MS", "SIDECAR_WAIT_SECONDS", "LOG_FORMAT", "RUST_LOG",
    "TOMBSTONE_TTL_SECONDS", "REQUEST_ID_TTL_SECONDS", *NAME_DEFAULTS,
}
# The port of the apps' Prometheus endpoint. The manifests may declare it before src/config.rs
# reads it: it is then checked against the scrape annotations and the container port "metrics"
# rather than against the code (check_metrics_port).
METRICS_PORT_SETTING = "METRICS_PORT"

SIDECAR_RESOURCE_ANNOTATIONS = (
    "dapr.io/sidecar-cpu-request",
    "dapr.io/sidecar-memory-request",
    "dapr.io/sidecar-cpu-limit",
    "dapr.io/sidecar-memory-limit",
)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclasses.dataclass
class Context:
    kustomize: list[str]
    kubernetes_validate: list[str]
    kubernetes_version: str
    crds_dir: Path
    annotations_file: Path | None
    repo: Path
    monitoring_crds_dir: Path | None = None
    promtool: Path | None = None


@dataclasses.dataclass
class Result:
    name: str
    errors: list[str]
    summary: str
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------------------------------------
# What the code says


@dataclasses.dataclass
class CodeFacts:
    names: dict[str, str]
    ports: dict[str, int]
    env: set[str]
    source: str
    errors: list[str]


def code_facts(src: Path) -> CodeFacts:
    config = src / "config.rs"
    names = dict(NAME_DEFAULTS)
    ports = {app: spec["port"] for app, spec in APPS.items()}
    if not config.is_file():
        return CodeFacts(names, ports, set(KNOWN_ENV), "the table in deploycheck.py "
                         "(src/config.rs not found)", [])
    # The unit tests at the end set values of their own; they are not defaults.
    text = config.read_text().split("#[cfg(test)]", 1)[0]
    errors = []
    consts = {}
    for m in re.finditer(r'\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*[^=;]+=\s*'
                         r'("(?:[^"\\]|\\.)*"|[0-9][0-9_]*)\s*;', text):
        consts[m.group(1)] = _literal(m.group(2), {})

    found: dict[str, set] = {}
    for m in re.finditer(r'"([A-Z][A-Z0-9_]*)"\s*,\s*("(?:[^"\\]|\\.)*"|[A-Z][A-Z0-9_]*|'
                         r'[0-9][0-9_]*)', text):
        value = _literal(m.group(2), consts)
        if value is not None:
            found.setdefault(m.group(1), set()).add(value)
    for setting in NAME_DEFAULTS:
        values = found.get(setting, set())
        if len(values) == 1:
            names[setting] = values.pop()
        elif not values:
            errors.append(f"src/config.rs: no default found for {setting} (expected a lookup "
                          f'like ("{setting}", DEFAULT_...)); update deploycheck.py to read it')
        else:
            errors.append(f"src/config.rs: {setting} has several defaults {sorted(values)}")
    for app, spec in APPS.items():
        value = consts.get(spec["port_const"])
        if isinstance(value, int):
            ports[app] = value
        else:
            errors.append(f"src/config.rs: no integer constant {spec['port_const']} (the default "
                          f"port of {app}); update deploycheck.py to read it")
    env = set(KNOWN_ENV) | set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', text))
    # The OpenTelemetry settings are read where the exporter is built, not in src/config.rs.
    traces = src / "telemetry" / "traces.rs"
    if traces.is_file():
        # Without its unit tests (test-only items above them still count as code).
        code = re.split(r"#\[cfg\(test\)\]\s*mod tests", traces.read_text(), maxsplit=1)[0]
        env |= set(re.findall(r'"(OTEL_[A-Z0-9_]+)"', code))
    return CodeFacts(names, ports, env, "src/config.rs", errors)


def _literal(token: str, consts: dict):
    if token.startswith('"'):
        return json.loads(token)
    if token[0].isdigit():
        return int(token.replace("_", ""))
    return consts.get(token)


def known_dapr_annotations(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    return set(re.findall(r'=\s*"(dapr\.io/[a-z0-9-]+)"', path.read_text()))


# ---------------------------------------------------------------------------------------------
# Rendering and schemas


def render(ctx: Context, manifests: Path, target: str) -> tuple[list[dict] | None, str | None]:
    proc = subprocess.run([*ctx.kustomize, str(manifests / target)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    stderr = proc.stderr.strip()
    if proc.returncode != 0:
        return None, f"{target}: kustomize failed: {stderr or 'exit ' + str(proc.returncode)}"
    try:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    except yaml.YAMLError as e:
        return None, f"{target}: kustomize output is not YAML: {e}"
    if stderr:
        # Deprecations (commonLabels, bases, patchesStrategicMerge, vars) are reported here.
        return docs, f"{target}: kustomize printed on stderr (deprecated field?): {stderr}"
    return docs, None


def api_group(doc: dict) -> str:
    return str(doc.get("apiVersion", "")).split("/")[0]


def is_dapr(doc: dict) -> bool:
    return api_group(doc) == "dapr.io"


# Groups whose objects are validated against CRDs rather than the Kubernetes schemas.
CRD_GROUPS = ("dapr.io", "monitoring.coreos.com")


def is_custom(doc: dict) -> bool:
    return api_group(doc) in CRD_GROUPS


def check_core(ctx: Context, renders: dict[str, list[dict]]) -> Result:
    errors, count = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for target, docs in renders.items():
            core = [d for d in docs if not is_custom(d)]
            count += len(core)
            path = Path(tmp) / (target.replace("/", "_") + ".yaml")
            # JSON documents: YAML readers take them as they are, with no type guessing.
            path.write_text("".join("---\n" + json.dumps(d) + "\n" for d in core))
            proc = subprocess.run([*ctx.kubernetes_validate, "--strict", "-k",
                                   ctx.kubernetes_version, "--quiet", str(path)],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            lines = [ln.replace(str(path), target) for ln in
                     (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            # WARN: no schema for a kind (a removed API version, a typo in apiVersion).
            bad = [ln for ln in lines if not ln.startswith("INFO")]
            if proc.returncode != 0 or bad:
                errors.extend(bad or [f"{target}: kubernetes-validate exited {proc.returncode}"])
    return Result("core-schemas", errors, f"{count} objects, Kubernetes {ctx.kubernetes_version}, "
                  "strict")


# The Prometheus Operator CRDs of the kinds the manifests may use (the others are large, and one
# holds YAML that PyYAML cannot read).
MONITORING_CRD_FILES = ("monitoring.coreos.com_podmonitors.yaml",
                        "monitoring.coreos.com_servicemonitors.yaml",
                        "monitoring.coreos.com_prometheusrules.yaml")


def load_crds(crds_dir: Path, files: tuple[str, ...] = ()) -> dict[tuple[str, str], dict[str, dict]]:
    crds: dict[tuple[str, str], dict[str, dict]] = {}
    paths = [crds_dir / f for f in files] if files else sorted(crds_dir.glob("*.yaml"))
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            versions = {v["name"]: v["schema"]["openAPIV3Schema"]
                        for v in spec["versions"] if v.get("served")}
            crds[(spec["group"], spec["names"]["kind"])] = versions
    return crds


def strict_schema(schema):
    """The CRD schema with unknown fields rejected wherever the CRD does not preserve them."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) if k in ("items", "additionalProperties") else v
           for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    return out


def prune(value, schema):
    """value without the fields schema does not define, as the API server stores it."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        if "properties" in schema:
            props = schema["properties"]
            return {k: prune(v, props[k]) for k, v in value.items() if k in props}
        if isinstance(schema.get("additionalProperties"), dict):
            return {k: prune(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


def check_dapr(ctx: Context, renders: dict[str, list[dict]], crds,
               only_group: str = "dapr.io") -> Result:
    errors, count = [], 0
    for target, docs in renders.items():
        for doc in docs:
            if api_group(doc) != only_group:
                continue
            count += 1
            group, _, version = doc["apiVersion"].partition("/")
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            where = f"{target}: {kind}/{name}"
            if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name):
                errors.append(f"{where}: metadata.name must be a DNS subdomain")
            versions = crds.get((group, kind))
            if versions is None:
                errors.append(f"{where}: no {group} CRD defines kind {kind}")
                continue
            if version not in versions:
                errors.append(f"{where}: {doc['apiVersion']} is not served (served: "
                              f"{', '.join(sorted(versions))})")
                continue
            validator = jsonschema.Draft202012Validator(strict_schema(versions[version]))
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in err.path) or "(top level)"
                errors.append(f"{where}: {path}: {err.message}")
    if only_group != "dapr.io":
        return Result("monitoring-crds", errors, f"{count} objects against the Prometheus "
                      "Operator CRDs of the pinned release")
    return Result("dapr-crds", errors, f"{count} objects against the Dapr CRDs in the pinned "
                  "release")


# ---------------------------------------------------------------------------------------------
# Cross-checks


def _ns(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("namespace") or "default"


def _name(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("name", "")


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def _pod_template(doc: dict) -> dict | None:
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    return (doc.get("spec") or {}).get("template")


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or [] if "name" in e}


def _component_metadata(comp: dict) -> dict[str, dict]:
    return {m.get("name"): m for m in (comp.get("spec") or {}).get("metadata") or []}


@dataclasses.dataclass
class App:
    app_id: str
    workload: dict
    annotations: dict
    pod: dict
    container: dict | None
    port: int | None
    names: dict[str, str]  # effective NAME_DEFAULTS settings: env value or the code's default

    @property
    def where(self) -> str:
        return f"{self.workload['kind']}/{_name(self.workload)}"


def dapr_apps(docs: list[dict], facts: CodeFacts, errors: list[str], target: str) -> list[App]:
    apps = []
    for doc in docs:
        template = _pod_template(doc)
        if not template:
            continue
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get("dapr.io/enabled", "")).lower() != "true":
            continue
        pod = template.get("spec") or {}
        app_id = annotations.get("dapr.io/app-id", "")
        containers = pod.get("containers") or []
        container = next((c for c in containers if c.get("name") == app_id), None)
        if container is None and len(containers) == 1:
            container = containers[0]
        port = None
        if container is not None:
            ports = container.get("ports") or []
            chosen = next((p for p in ports if p.get("name") == "grpc"), None)
            if chosen is None and len(ports) == 1:
                chosen = ports[0]
            if chosen is not None:
                port = chosen.get("containerPort")
        names = dict(facts.names)
        if container is not None:
            for setting, entry in _env(container).items():
                if setting in names and "value" in entry:
                    names[setting] = entry["value"]
        app = App(app_id, doc, annotations, pod, container, port, names)
        if container is None:
            errors.append(f"{target}: {app.where}: no container named {app_id!r} (the app "
                          "container must carry the app id as its name)")
        elif port is None:
            errors.append(f"{target}: {app.where}: the app container declares no port named grpc")
        apps.append(app)
    return apps


def check_injection_intent(target: str, docs: list[dict], known: set[str]) -> list[str]:
    """Pod templates that mean to run with a sidecar but would get none.

    Dapr's injector adds daprd only where dapr.io/enabled is "true" (in any case); a misspelt key or
    value is accepted by the API server and leaves the pod without its sidecar (seen against
    the real injector by crates/devstack/tests/kubernetes).
    """
    errors = []
    for doc in docs:
        template = _pod_template(doc)
        if not template:
            continue
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        dapr_keys = sorted(k for k in annotations if k.startswith("dapr.io/"))
        if not dapr_keys:
            continue
        where = f"{target}: {doc['kind']}/{_name(doc)}"
        enabled = annotations.get("dapr.io/enabled")
        # The injector compares the value with "true" ignoring case.
        if str(enabled).lower() != "true":
            unknown = [k for k in dapr_keys if known and k not in known]
            hint = f" (unknown: {', '.join(unknown)})" if unknown else ""
            errors.append(f"{where}: has Dapr annotations but dapr.io/enabled is {enabled!r}, "
                          f"not \"true\": the sidecar injector would add no daprd{hint}")
    return errors


def check_app(target: str, app: App, facts: CodeFacts, known_annotations: set[str],
              configurations: dict[str, dict]) -> list[str]:
    errors = []
    where = f"{target}: {app.where}"
    ann = app.annotations
    if app.app_id not in APPS:
        errors.append(f"{where}: dapr.io/app-id {app.app_id!r} is not one of the app ids "
                      f"({', '.join(APPS)})")
        return errors
    if known_annotations:
        for key in sorted(ann):
            if key.startswith("dapr.io/") and key not in known_annotations:
                errors.append(f"{where}: unknown Dapr annotation {key} (the pinned Dapr's "
                              "sidecar injector does not read it)")

    default_port = facts.ports[app.app_id]
    raw = str(ann.get("dapr.io/app-port", ""))
    if not raw.isdigit():
        errors.append(f"{where}: dapr.io/app-port must be a port number, not {raw!r}")
        app_port = None
    else:
        app_port = int(raw)
        if app.port is not None and app_port != app.port:
            errors.append(f"{where}: dapr.io/app-port is {app_port} but the container port is "
                          f"{app.port}")
        if app_port != default_port:
            errors.append(f"{where}: dapr.io/app-port is {app_port} but {app.app_id} listens on "
                          f"{default_port} by default ({facts.source})")
    if app.port is not None and app.port != default_port:
        errors.append(f"{where}: container port {app.port} is not {app.app_id}'s default port "
                      f"{default_port} ({facts.source})")
    ports = {app_port, app.port}
    for c in app.pod.get("containers") or []:
        ports |= {p.get("containerPort") for p in c.get("ports") or []}
    for port in sorted(p for p in ports if p in RESERVED_PORTS):
        errors.append(f"{where}: port {port} is reserved by the Dapr sidecar "
                      f"({', '.join(map(str, sorted(RESERVED_PORTS)))})")
    if ann.get("dapr.io/app-protocol") != "grpc":
        errors.append(f"{where}: dapr.io/app-protocol is {ann.get('dapr.io/app-protocol')!r}, "
                      "but the apps speak gRPC: it must be \"grpc\"")

    container = app.container or {}
    env = _env(container)
    if "APP_PORT" in env and str(env["APP_PORT"].get("value")) != str(app.port):
        errors.append(f"{where}: env APP_PORT={env['APP_PORT'].get('value')} differs from the "
                      f"container port {app.port}")
    for setting in sorted(env):
        if setting not in facts.env and setting != METRICS_PORT_SETTING:
            errors.append(f"{where}: env {setting} is not a setting the apps read")
    if env.get("LOG_FORMAT", {}).get("value") != "json":
        errors.append(f"{where}: env LOG_FORMAT must be json (one log line per JSON object)")

    for probe_name, service in (("readinessProbe", None), ("livenessProbe", "liveness")):
        probe = container.get(probe_name)
        if not probe:
            errors.append(f"{where}: no {probe_name}")
            continue
        grpc = probe.get("grpc")
        if not grpc:
            errors.append(f"{where}: {probe_name} must be a gRPC probe (grpc.health.v1)")
            continue
        port = grpc.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            errors.append(f"{where}: {probe_name} port must be numeric, not {port!r}")
        elif port != app.port:
            errors.append(f"{where}: {probe_name} probes port {port}, not the app port {app.port}")
        got = grpc.get("service", "")
        if service is not None and got != service:
            errors.append(f"{where}: {probe_name} must ask health service {service!r}, not "
                          f"{got!r}")
        allowed = ("", APPS[app.app_id]["grpc_service"])
        if service is None and got not in allowed:
            errors.append(f"{where}: {probe_name} asks health service {got!r}; readiness is "
                          f"served as {allowed[0]!r} or {allowed[1]!r}")

    raw = str(ann.get("dapr.io/graceful-shutdown-seconds", ""))
    grace = app.pod.get("terminationGracePeriodSeconds")
    if not raw.isdigit():
        errors.append(f"{where}: dapr.io/graceful-shutdown-seconds must be set to a number")
    elif not isinstance(grace, int):
        errors.append(f"{where}: terminationGracePeriodSeconds must be set")
    elif int(raw) >= grace:
        errors.append(f"{where}: dapr.io/graceful-shutdown-seconds ({raw}) must be below "
                      f"terminationGracePeriodSeconds ({grace}), or the sidecar is killed "
                      "mid-drain")

    config_name = ann.get("dapr.io/config")
    if not config_name:
        errors.append(f"{where}: no dapr.io/config annotation")
    elif config_name not in configurations:
        errors.append(f"{where}: dapr.io/config names Configuration {config_name!r}, which is "
                      "not in the output")

    for annotation, setting in (("dapr.io/api-token-secret", "DAPR_API_TOKEN"),
                                ("dapr.io/app-token-secret", "APP_API_TOKEN")):
        secret = ann.get(annotation)
        ref = ((env.get(setting) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if not secret:
            errors.append(f"{where}: {annotation} is not set")
        elif ref.get("name") != secret or ref.get("key") != "token":
            errors.append(f"{where}: env {setting} must come from Secret {secret!r} key "
                          f"'token' like the sidecar's {annotation}, not from "
                          f"{ref.get('name')!r} key {ref.get('key')!r}")

    pod_sc = app.pod.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        errors.append(f"{where}: runAsNonRoot is not set")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{where}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}: allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        errors.append(f"{where}: capabilities do not drop ALL")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        errors.append(f"{where}: seccompProfile is not RuntimeDefault")
    resources = container.get("resources") or {}
    if not resources.get("requests") or not resources.get("limits"):
        errors.append(f"{where}: resources need requests and limits")
    return errors


def check_metrics_port(target: str, app: App, facts: CodeFacts, notes: list[str]) -> list[str]:
    """METRICS_PORT, the container port "metrics" and the prometheus.io/* annotations agree."""
    errors = []
    where = f"{target}: {app.where}"
    container = app.container or {}
    entry = _env(container).get(METRICS_PORT_SETTING)
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    ann = app.annotations
    if entry is None:
        if "metrics" in named or "prometheus.io/port" in ann:
            errors.append(f"{where}: declares a metrics port but sets no env "
                          f"{METRICS_PORT_SETTING}, so the app serves no metrics there")
        return errors
    raw = str(entry.get("value", ""))
    if not raw.isdigit():
        return [f"{where}: env {METRICS_PORT_SETTING} must be a port number, not {raw!r}"]
    if named.get("metrics") != int(raw):
        errors.append(f"{where}: env {METRICS_PORT_SETTING}={raw} but the container port named "
                      f"metrics is {named.get('metrics')}")
    if int(raw) == app.port:
        errors.append(f"{where}: env {METRICS_PORT_SETTING}={raw} is the app's gRPC port")
    if str(ann.get("prometheus.io/port")) != raw:
        errors.append(f"{where}: annotation prometheus.io/port is "
                      f"{ann.get('prometheus.io/port')!r}, not METRICS_PORT {raw}")
    if str(ann.get("prometheus.io/scrape", "")).lower() != "true":
        errors.append(f"{where}: annotation prometheus.io/scrape is not \"true\"")
    if ann.get("prometheus.io/path", "/metrics") != "/metrics":
        errors.append(f"{where}: annotation prometheus.io/path is {ann['prometheus.io/path']!r}; "
                      "the apps serve /metrics")
    note = (f"src/config.rs does not read {METRICS_PORT_SETTING} yet: its port is checked "
            "against the manifests only")
    if METRICS_PORT_SETTING not in facts.env and note not in notes:
        notes.append(note)
    return errors


def check_tracing(target: str, docs: list[dict], apps: list[App]) -> list[str]:
    """Both sidecars export their spans to one collector, in the form daprd's exporter takes."""
    configurations = {_name(c): c for c in _by_kind(docs, "Configuration")}
    exports = {}
    for app in apps:
        conf = configurations.get(app.annotations.get("dapr.io/config", "")) or {}
        otel = ((conf.get("spec") or {}).get("tracing") or {}).get("otel")
        exports[app.app_id] = otel
        where = f"{target}: Configuration/{_name(conf)} of {app.app_id}"
        if not otel:
            continue
        if otel.get("protocol") not in ("grpc", "http"):
            return [f"{where}: tracing.otel.protocol must be grpc or http"]
        if "://" in str(otel.get("endpointAddress", "")):
            return [f"{where}: tracing.otel.endpointAddress must be host:port, without a scheme "
                    f"(daprd adds none), not {otel.get('endpointAddress')!r}"]
    if len({json.dumps(v, sort_keys=True) for v in exports.values()}) > 1:
        return [f"{target}: the apps' sidecars export spans differently ({exports}); one trace "
                "needs both in one collector"]
    return []


def check_components(target, docs, apps: list[App], facts: CodeFacts) -> list[str]:
    errors = []
    components = {_name(c): c for c in _by_kind(docs, "Component")}
    used = set()
    for app in apps:
        if app.app_id not in APPS:
            continue
        for setting, type_prefix in APPS[app.app_id]["components"].items():
            name = app.names[setting]
            used.add(name)
            comp = components.get(name)
            if comp is None:
                errors.append(f"{target}: {app.app_id} uses Dapr component {name!r} "
                              f"({setting}, default from {facts.source}) but no Component of "
                              "that name is in the output")
                continue
            ctype = (comp.get("spec") or {}).get("type", "")
            if not ctype.startswith(type_prefix):
                errors.append(f"{target}: Component {name!r} is of type {ctype!r}; {app.app_id} "
                              f"uses it as {type_prefix}*")
            scopes = comp.get("scopes")
            if scopes is not None and app.app_id not in scopes:
                errors.append(f"{target}: Component {name!r} is scoped to {scopes}, which leaves "
                              f"out {app.app_id}, its user")
    app_ids = {a.app_id for a in apps} | set(APPS)
    for name, comp in components.items():
        if name not in used:
            errors.append(f"{target}: Component {name!r} is used by no app (the apps use "
                          f"{', '.join(sorted(used)) or 'none'})")
        for scope in comp.get("scopes") or []:
            if scope not in app_ids:
                errors.append(f"{target}: Component {name!r} is scoped to unknown app id "
                              f"{scope!r}")
        meta = _component_metadata(comp)
        if any("secretKeyRef" in m for m in meta.values()):
            store = (comp.get("auth") or {}).get("secretStore")
            if store != "kubernetes":
                errors.append(f"{target}: Component {name!r} uses secretKeyRef but "
                              f"auth.secretStore is {store!r}, not the built-in \"kubernetes\"")

    caller = next((a for a in apps if a.app_id == CALLER), None)
    if caller is not None:
        pubsub = components.get(caller.names["PUBSUB_NAME"])
        topics = {caller.names["TASK_EVENTS_TOPIC"], caller.names["RETRY_TOPIC"]}
        outbox_topics = {caller.names["OUTBOX_TOPIC"], caller.names["OUTBOX_RETRY_TOPIC"]}
        for component, expected, settings in (
            (pubsub, topics, "TASK_EVENTS_TOPIC, RETRY_TOPIC"),
            (components.get(caller.names["OUTBOX_PUBSUB_NAME"]), outbox_topics,
             "OUTBOX_TOPIC, OUTBOX_RETRY_TOPIC"),
        ):
            if component is None:
                continue
            allowed = (_component_metadata(component).get("allowedTopics") or {}).get("value")
            if allowed is None:
                errors.append(f"{target}: Component {_name(component)!r} sets no allowedTopics "
                              f"(expected {','.join(sorted(expected))})")
            elif {t.strip() for t in str(allowed).split(",")} != expected:
                errors.append(f"{target}: Component {_name(component)!r} allows topics "
                              f"{allowed!r}, but the code uses {', '.join(sorted(expected))} "
                              f"({settings}; {facts.source})")
        for sub in _by_kind(docs, "Subscription"):
            spec = sub.get("spec") or {}
            where = f"{target}: Subscription/{_name(sub)}"
            if spec.get("topic") not in topics:
                errors.append(f"{where}: topic {spec.get('topic')!r} is not one the code uses")
            if spec.get("pubsubname") != caller.names["PUBSUB_NAME"]:
                errors.append(f"{where}: pubsubname {spec.get('pubsubname')!r} is not "
                              f"{caller.names['PUBSUB_NAME']!r}")
            dead = spec.get("deadLetterTopic")
            if dead is not None and dead != caller.names["RETRY_TOPIC"]:
                errors.append(f"{where}: deadLetterTopic {dead!r} is not "
                              f"{caller.names['RETRY_TOPIC']!r}")
        callee = caller.names["NOTIFICATION_APP_ID"]
        if callee not in {a.app_id for a in apps}:
            errors.append(f"{target}: task-api invokes app id {callee!r} (NOTIFICATION_APP_ID), "
                          "which no Deployment runs")
    return errors


def _operation_allowed(policy: dict, operation: str) -> bool:
    op = "/" + operation.lstrip("/")
    for entry in policy.get("operations") or []:
        name = "/" + str(entry.get("name", "")).lstrip("/")
        if name == op or (name.endswith("/*") and op.startswith(name[:-1])):
            return str(entry.get("action", "")).lower() == "allow"
    return str(policy.get("defaultAction", "")).lower() == "allow"


def check_access_control(target, docs, apps: list[App]) -> list[str]:
    errors = []
    namespaces = {a.app_id: _ns(a.workload) for a in apps}
    configurations = {_name(c): c for c in _by_kind(docs, "Configuration")}
    for name, conf in configurations.items():
        acl = (conf.get("spec") or {}).get("accessControl")
        if not acl:
            continue
        where = f"{target}: Configuration/{name}"
        if not acl.get("trustDomain"):
            errors.append(f"{where}: accessControl.trustDomain is not set")
        if str(acl.get("defaultAction", "")).lower() not in ("allow", "deny"):
            errors.append(f"{where}: accessControl.defaultAction must be allow or deny")
        for policy in acl.get("policies") or []:
            app_id = policy.get("appId")
            if app_id not in APPS:
                errors.append(f"{where}: access-control policy names app id {app_id!r}, which is "
                              f"not one of {', '.join(APPS)}")
                continue
            for field in ("trustDomain", "namespace"):
                if not policy.get(field):
                    errors.append(f"{where}: the policy for {app_id} has no {field} (Dapr "
                                  "rejects the whole Configuration)")
            if app_id in namespaces and policy.get("namespace") and \
                    policy["namespace"] != namespaces[app_id]:
                errors.append(f"{where}: the policy for {app_id} names namespace "
                              f"{policy['namespace']!r} but {app_id} runs in "
                              f"{namespaces[app_id]!r}")
            for op in policy.get("operations") or []:
                if str(op.get("action", "")).lower() not in ("allow", "deny"):
                    errors.append(f"{where}: operation {op.get('name')!r} of {app_id} needs "
                                  "action allow or deny")
    callee = next((a for a in apps if a.app_id == CALLEE), None)
    if callee is not None:
        conf = configurations.get(callee.annotations.get("dapr.io/config", ""))
        acl = ((conf or {}).get("spec") or {}).get("accessControl") or {}
        where = f"{target}: {CALLEE}'s Configuration"
        if str(acl.get("defaultAction", "")).lower() != "deny":
            errors.append(f"{where} must deny by default (accessControl.defaultAction: deny)")
        policy = next((p for p in acl.get("policies") or [] if p.get("appId") == CALLER), None)
        if policy is None or not _operation_allowed(policy, METHOD):
            errors.append(f"{where} does not let {CALLER} invoke {METHOD}")
    return errors


def check_resiliency(target, docs, apps, crds, repo: Path, notes: list[str]) -> list[str]:
    errors = []
    components = {_name(c) for c in _by_kind(docs, "Component")}
    resiliencies = _by_kind(docs, "Resiliency")
    if not resiliencies:
        errors.append(f"{target}: no Resiliency")
    for res in resiliencies:
        where = f"{target}: Resiliency/{_name(res)}"
        spec = res.get("spec") or {}
        for scope in res.get("scopes") or []:
            if scope not in APPS:
                errors.append(f"{where}: scoped to unknown app id {scope!r}")
        policies = spec.get("policies") or {}
        kinds = {"timeout": "timeouts", "retry": "retries", "circuitBreaker": "circuitBreakers"}
        targets = spec.get("targets") or {}
        refs = []
        for app_id, t in (targets.get("apps") or {}).items():
            if app_id not in APPS:
                errors.append(f"{where}: target app {app_id!r} is not an app id")
            refs.append((f"apps.{app_id}", t))
        for comp, t in (targets.get("components") or {}).items():
            if comp not in components:
                errors.append(f"{where}: target component {comp!r} is not a Component in the "
                              "output")
            for direction in ("inbound", "outbound"):
                if direction in (t or {}):
                    refs.append((f"components.{comp}.{direction}", t[direction]))
        for path, t in refs:
            for key, section in kinds.items():
                ref = (t or {}).get(key)
                if ref is not None and ref not in (policies.get(section) or {}):
                    errors.append(f"{where}: targets.{path}.{key} names {ref!r}, not a policy "
                                  f"in policies.{section}")
    versions = crds.get(("dapr.io", "Resiliency"))
    try:
        local = selfhosted_resiliency(repo)
        ours = _merged([r.get("spec") or {} for r in resiliencies])
    except ValueError as e:
        errors.append(f"{target}: {e}")
        local = None
    if local is not None and versions and "v1alpha1" in versions and resiliencies:
        wanted = prune(local, versions["v1alpha1"]["properties"]["spec"])
        if wanted != ours:
            errors.append(f"{target}: the Resiliency policies differ from the self-hosted ones "
                          f"in {', '.join(SELFHOSTED_RESILIENCY)} (on the fields the Resiliency "
                          f"schema has): {'; '.join(_differences(wanted, ours))}")
        for path in _dropped(local, wanted):
            notes.append(f"the self-hosted Resiliency sets spec.{path}, which Dapr ignores: the "
                         "Resiliency schema has no such field")
    return errors


# The self-hosted Resiliency files that apply when the apps use the Redis broker, as they do here.
SELFHOSTED_RESILIENCY = ("components/common", "components/pubsub/redis")


def selfhosted_resiliency(repo: Path) -> dict | None:
    specs = []
    for folder in SELFHOSTED_RESILIENCY:
        for path in sorted((repo / folder).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "Resiliency":
                    specs.append(doc.get("spec") or {})
    return _merged(specs) if specs else None


def _merged(specs: list[dict]) -> dict:
    """One spec holding every policy and target of specs, as the sidecar combines them."""
    def merge(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for key, value in b.items():
                out[key] = merge(a[key], value, f"{path}.{key}") if key in a else value
            return out
        if a != b:
            raise ValueError(f"two Resiliency objects set {path} differently ({a!r}, {b!r})")
        return a
    result: dict = {}
    for spec in specs:
        result = merge(result, spec, "spec")
    return result


def _differences(a, b, path="spec"):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                yield from _differences(a.get(key), b.get(key), f"{path}.{key}")
    else:
        yield f"{path}: self-hosted {a!r}, Kubernetes {b!r}"


def _dropped(full, pruned, path=""):
    if isinstance(full, dict):
        for key, value in full.items():
            sub = f"{path}.{key}" if path else key
            if not isinstance(pruned, dict) or key not in pruned:
                yield sub
            else:
                yield from _dropped(value, pruned[key], sub)


def check_services_and_rbac(target, docs, apps: list[App]) -> list[str]:
    errors = []
    app_ids = {a.app_id for a in apps} | set(APPS)
    for svc in _by_kind(docs, "Service"):
        if _name(svc) in {f"{a}-dapr" for a in app_ids}:
            errors.append(f"{target}: Service {_name(svc)!r} takes the name the Dapr operator "
                          "gives the sidecar's Service")
    for app in apps:
        labels = ((app.workload["spec"].get("template") or {}).get("metadata") or {}) \
            .get("labels") or {}
        for svc in _by_kind(docs, "Service"):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            named = {p.get("name"): p.get("containerPort")
                     for p in (app.container or {}).get("ports") or []}
            for port in (svc.get("spec") or {}).get("ports") or []:
                tp = port.get("targetPort", port.get("port"))
                resolved = named.get(tp) if isinstance(tp, str) else tp
                if resolved != app.port:
                    errors.append(f"{target}: Service {_name(svc)!r} port {port.get('port')} "
                                  f"targets {tp!r}, not {app.app_id}'s port {app.port}")

    roles = {_name(r): r for r in _by_kind(docs, "Role")}
    for role in roles.values():
        for rule in role.get("rules") or []:
            if "secrets" in (rule.get("resources") or []) and not rule.get("resourceNames"):
                errors.append(f"{target}: Role {_name(role)!r} grants every Secret of the "
                              "namespace; name them in resourceNames")
    components = {_name(c): c for c in _by_kind(docs, "Component")}
    for app in apps:
        store = components.get(app.names.get("SECRET_STORE_NAME", ""))
        if app.app_id != CALLER or store is None or \
                (store.get("spec") or {}).get("type") != "secretstores.kubernetes":
            continue
        secret = app.names["API_KEY_SECRET_NAME"]
        account = app.pod.get("serviceAccountName") or "default"
        granted = False
        for binding in _by_kind(docs, "RoleBinding"):
            subjects = binding.get("subjects") or []
            if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                       for s in subjects):
                continue
            ref = binding.get("roleRef") or {}
            role = roles.get(ref.get("name")) if ref.get("kind") == "Role" else None
            for rule in (role or {}).get("rules") or []:
                if "secrets" in (rule.get("resources") or []) and \
                        "get" in (rule.get("verbs") or []) and \
                        secret in (rule.get("resourceNames") or []):
                    granted = True
        if not granted:
            errors.append(f"{target}: ServiceAccount {account!r} of {app.app_id} may not get "
                          f"Secret {secret!r}, which its sidecar reads for the API key")
        conf = {_name(c): c for c in _by_kind(docs, "Configuration")}.get(
            app.annotations.get("dapr.io/config", ""))
        for scope in (((conf or {}).get("spec") or {}).get("secrets") or {}).get("scopes") or []:
            if scope.get("storeName") == _name(store) and \
                    str(scope.get("defaultAccess", "allow")).lower() == "deny" and \
                    secret not in (scope.get("allowedSecrets") or []):
                errors.append(f"{target}: the secrets scope of {_name(store)!r} in "
                              f"{_name(conf)!r} hides {secret!r} from {app.app_id}")
    return errors


def secret_references(docs, apps: list[App]) -> list[tuple[str, str, str]]:
    """(secret, key, referenced by) for every Secret the output relies on."""
    refs = []
    for doc in docs:
        template = _pod_template(doc)
        if not template:
            continue
        pod = template.get("spec") or {}
        where = f"{doc['kind']}/{_name(doc)}"
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append((ref.get("name"), ref.get("key"), f"{where} env {e.get('name')}"))
            for src in c.get("envFrom") or []:
                if src.get("secretRef"):
                    refs.append((src["secretRef"].get("name"), None, f"{where} envFrom"))
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        for key in ("dapr.io/api-token-secret", "dapr.io/app-token-secret"):
            if annotations.get(key):
                refs.append((annotations[key], "token", f"{where} annotation {key}"))
    for comp in _by_kind(docs, "Component"):
        if (comp.get("auth") or {}).get("secretStore", "kubernetes") != "kubernetes":
            continue
        for m in (comp.get("spec") or {}).get("metadata") or []:
            ref = m.get("secretKeyRef")
            if ref:
                refs.append((ref.get("name"), ref.get("key") or ref.get("name"),
                             f"Component/{_name(comp)} {m.get('name')}"))
    components = {_name(c): c for c in _by_kind(docs, "Component")}
    for app in apps:
        if app.app_id != CALLER:
            continue
        store = components.get(app.names["SECRET_STORE_NAME"])
        if store is not None and (store.get("spec") or {}).get("type") == "secretstores.kubernetes":
            refs.append((app.names["API_KEY_SECRET_NAME"], app.names["API_KEY_SECRET_KEY"],
                         f"{app.app_id} API key (read through {_name(store)})"))
    return refs


def check_dev(docs, apps) -> list[str]:
    errors = []
    secrets = {}
    for s in _by_kind(docs, "Secret"):
        secrets[_name(s)] = set((s.get("data") or {})) | set((s.get("stringData") or {}))
    for name, key, by in secret_references(docs, apps):
        if name not in secrets:
            errors.append(f"{DEV}: Secret {name!r}, referenced by {by}, is not in the output")
        elif key is not None and key not in secrets[name]:
            errors.append(f"{DEV}: Secret {name!r} has no key {key!r}, referenced by {by}")
    services = {_name(s): s for s in _by_kind(docs, "Service")}
    for comp in _by_kind(docs, "Component"):
        host = (_component_metadata(comp).get("redisHost") or {}).get("value")
        if host is None:
            continue
        name, _, port = str(host).partition(":")
        svc = services.get(name.split(".")[0])
        if svc is None or int(port or 6379) not in [p.get("port") for p in
                                                     svc["spec"].get("ports") or []]:
            errors.append(f"{DEV}: Component {_name(comp)!r} connects to {host}, which no "
                          "Service in the output serves")
    for app in apps:
        policy = (app.container or {}).get("imagePullPolicy")
        if policy not in ("IfNotPresent", "Never"):
            errors.append(f"{DEV}: {app.where} pulls its locally built image (imagePullPolicy "
                          f"{policy!r}); use IfNotPresent")
    return errors


def check_prod(docs, apps, notes: list[str]) -> list[str]:
    errors = []
    if _by_kind(docs, "Secret"):
        errors.append(f"{PROD}: Secrets {[_name(s) for s in _by_kind(docs, 'Secret')]} are "
                      "generated; production Secrets are created beforehand")
    needed = sorted({n for n, _, _ in secret_references(docs, apps)})
    notes.append(f"{PROD} expects these Secrets in the namespace: {', '.join(needed)}")
    for app in apps:
        image = (app.container or {}).get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            errors.append(f"{PROD}: {app.where} image {image!r} has no pinned tag")
        missing = [a for a in SIDECAR_RESOURCE_ANNOTATIONS if a not in app.annotations]
        if missing:
            errors.append(f"{PROD}: {app.where} lacks {', '.join(missing)}")
    deployments = {_name(d): d for d in _by_kind(docs, "Deployment")}
    hpas = _by_kind(docs, "HorizontalPodAutoscaler")
    scaled = set()
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            errors.append(f"{PROD}: HorizontalPodAutoscaler/{_name(hpa)} scales "
                          f"{ref.get('kind')}/{ref.get('name')}, which is not in the output")
            continue
        scaled.add(ref["name"])
        if "replicas" in deployments[ref["name"]]["spec"]:
            errors.append(f"{PROD}: Deployment/{ref['name']} sets replicas although "
                          "an autoscaler owns them")
    if CALLER not in scaled:
        errors.append(f"{PROD}: no HorizontalPodAutoscaler for {CALLER}")
    covered = False
    for pdb in _by_kind(docs, "PodDisruptionBudget"):
        selector = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for app in apps:
            labels = (app.workload["spec"]["template"].get("metadata") or {}).get("labels") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                covered |= app.app_id == CALLER
    if not covered:
        errors.append(f"{PROD}: no PodDisruptionBudget selects {CALLER}'s pods")
    return errors


def check_cross(ctx: Context, renders: dict[str, list[dict]], crds, src: Path) -> Result:
    facts = code_facts(src)
    errors = list(facts.errors)
    notes = []
    known = known_dapr_annotations(ctx.annotations_file)
    if not known:
        notes.append("the Dapr injector's annotation list was not found: annotation names are "
                     "not checked")
    for target, docs in renders.items():
        errors += check_injection_intent(target, docs, known)
        apps = dapr_apps(docs, facts, errors, target)
        ids = [a.app_id for a in apps]
        for app_id in APPS:
            if ids.count(app_id) != 1:
                errors.append(f"{target}: expected one workload with dapr.io/app-id {app_id}, "
                              f"found {ids.count(app_id)}")
        configurations = {_name(c): c for c in _by_kind(docs, "Configuration")}
        for app in apps:
            errors += check_app(target, app, facts, known, configurations)
            errors += check_metrics_port(target, app, facts, notes)
        errors += check_components(target, docs, apps, facts)
        errors += check_tracing(target, docs, apps)
        errors += check_access_control(target, docs, apps)
        errors += check_resiliency(target, docs, apps, crds, ctx.repo,
                                   notes if target == "base" else [])
        errors += check_services_and_rbac(target, docs, apps)
        if target == DEV:
            errors += check_dev(docs, apps)
        if target in PRODUCTION:
            errors += check_prod(docs, apps, notes if target == PROD else [])
    return Result("cross-checks", errors, f"names from {facts.source}", notes)


# ---------------------------------------------------------------------------------------------
# Driver


def run_checks(ctx: Context, manifests: Path, src: Path) -> list[Result]:
    renders, render_errors = {}, []
    for target in TARGETS:
        docs, error = render(ctx, manifests, target)
        if error:
            render_errors.append(error)
        if docs is not None:
            renders[target] = docs
    missing = [t for t in TARGETS if t not in renders]
    results = [Result("kustomize", render_errors, ", ".join(TARGETS))]
    crds = load_crds(ctx.crds_dir)
    if not crds:
        return results + [Result("dapr-crds", [f"no CRDs found in {ctx.crds_dir}"], "")]
    if ctx.monitoring_crds_dir is not None:
        crds.update(load_crds(ctx.monitoring_crds_dir, MONITORING_CRD_FILES))
    results.append(check_core(ctx, renders))
    results.append(check_dapr(ctx, renders, crds))
    results.append(check_dapr(ctx, renders, crds, only_group="monitoring.coreos.com"))
    results.append(check_cross(ctx, renders, crds, src))
    errors, summary = monitoring.check(manifests / "observability", ctx.promtool)
    results.append(Result("monitoring", errors, summary))
    if missing:
        for r in results[1:]:
            r.errors.append(f"not checked: {', '.join(missing)} did not render")
    return results


def print_results(results: list[Result]) -> None:
    for r in results:
        if r.ok:
            print(f"PASS {r.name} ({r.summary})")
        else:
            print(f"FAIL {r.name}: {len(r.errors)} problem(s)")
        for e in r.errors:
            print(f"    - {e}")
        for n in r.notes:
            print(f"    note: {n}")
    sys.stdout.flush()


# Each break: (what it breaks, file under manifests/ or "src/config.rs", text, replacement,
# words the failure must contain).
BREAKS = [
    ("app-port annotation differs from the container port", "base/task-api.yaml",
     'dapr.io/app-port: "50051"', 'dapr.io/app-port: "50061"', "dapr.io/app-port is 50061"),
    ("container port and probes moved off the default port", "base/task-api.yaml",
     "50051", "50055", "not task-api's default port"),
    ("app protocol http", "base/notification-service.yaml",
     "dapr.io/app-protocol: grpc", "dapr.io/app-protocol: http", "app-protocol"),
    ("readiness probe on another port", "base/task-api.yaml",
     "readinessProbe:\n            grpc:\n              port: 50051",
     "readinessProbe:\n            grpc:\n              port: 50052", "readinessProbe probes port"),
    ("liveness probe with a named port", "base/notification-service.yaml",
     "grpc:\n              port: 50052\n              service: liveness",
     "grpc:\n              port: grpc\n              service: liveness", "port must be numeric"),
    ("liveness probe on the readiness service", "base/task-api.yaml",
     "service: liveness", 'service: ""', "must ask health service 'liveness'"),
    ("app port reserved by daprd", "base/notification-service.yaml",
     "50052", "50001", "reserved by the Dapr sidecar"),
    ("state store renamed", "base/dapr/statestore.yaml",
     "name: statestore", "name: state-store", "uses Dapr component 'statestore'"),
    ("secret store of the wrong type", "base/dapr/secretstore.yaml",
     "type: secretstores.kubernetes", "type: state.redis", "is of type 'state.redis'"),
    ("component scoped away from its user", "base/dapr/pubsub.yaml",
     "scopes:\n  - task-api", "scopes:\n  - notification-service", "leaves out task-api"),
    ("topic name drifts", "base/dapr/pubsub.yaml",
     "value: task-events,task-events-retry", "value: task-events,task-events-dlq",
     "allows topics"),
    ("outbox topic name drifts", "base/dapr/outbox.yaml",
     "value: task-events-outbox,task-events-outbox-retry", "value: task-events-outbox",
     "allows topics"),
    ("app token annotation and env disagree", "base/task-api.yaml",
     "dapr.io/app-token-secret: task-api-app-token", "dapr.io/app-token-secret: task-api-token",
     "env APP_API_TOKEN must come from Secret 'task-api-token'"),
    ("app token Secret missing from the development overlay",
     "overlays/docker-desktop/kustomization.yaml", "- name: task-api-app-token",
     "- name: task-api-app-tokens", "annotation dapr.io/app-token-secret"),
    ("Redis password Secret misnamed in a Component", "base/dapr/statestore.yaml",
     "name: redis\n", "name: redis-auth\n", "Secret 'redis-auth'"),
    ("API key Secret missing from the development overlay", "overlays/docker-desktop/"
     "kustomization.yaml", "api-key=dev-api-key", "apikey=dev-api-key", "has no key 'api-key'"),
    ("DAPR_API_TOKEN from another Secret than the sidecar's", "base/notification-service.yaml",
     "name: dapr-api-token\n                  key: token",
     "name: notification-service-app-token\n                  key: token",
     "env DAPR_API_TOKEN must come from Secret 'dapr-api-token'"),
    ("access-control policy for an unknown app", "base/dapr/notification-service-config.yaml",
     "- appId: task-api", "- appId: task-apí", "app id 'task-apí'"),
    ("access-control policy without namespace", "base/dapr/notification-service-config.yaml",
     "        namespace: default\n", "", "has no namespace"),
    ("notify no longer allowed", "base/dapr/notification-service-config.yaml",
     "- name: notify", "- name: notify-all", "does not let task-api invoke notify"),
    ("graceful shutdown longer than the grace period", "base/task-api.yaml",
     'dapr.io/graceful-shutdown-seconds: "20"', 'dapr.io/graceful-shutdown-seconds: "30"',
     "must be below terminationGracePeriodSeconds"),
    ("Service named like the sidecar's", "base/task-api.yaml",
     "kind: Service\nmetadata:\n  name: task-api\n",
     "kind: Service\nmetadata:\n  name: task-api-dapr\n", "Service 'task-api-dapr'"),
    ("misspelt Dapr annotation", "base/task-api.yaml",
     "dapr.io/app-health-threshold", "dapr.io/app-health-probe-threshold",
     "unknown Dapr annotation dapr.io/app-health-probe-threshold"),
    ("misspelt dapr.io/enabled: no sidecar would be injected", "base/task-api.yaml",
     'dapr.io/enabled: "true"', 'dapr.io/enable: "true"',
     "dapr.io/enabled is None, not \"true\": the sidecar injector would add no daprd"),
    ("misspelt setting", "base/task-api.yaml", "name: LOG_FORMAT", "name: LOG_FROMAT",
     "env LOG_FROMAT is not a setting"),
    ("Role without resourceNames", "base/rbac.yaml",
     '    resourceNames: ["task-api-auth"]\n', "", "grants every Secret"),
    ("Resiliency drifts from the self-hosted one", "base/dapr/resiliency.yaml",
     "gRPCStatusCodes: 2,4,8,13,14", "gRPCStatusCodes: 14", "differ from the self-hosted ones"),
    ("Resiliency targets a missing component", "base/dapr/resiliency.yaml",
     "    components:\n      pubsub:", "    components:\n      pub-sub:",
     "target component 'pub-sub'"),
    ("deprecated kustomize field", "base/kustomization.yaml",
     "resources:\n", "commonLabels:\n  team: tasks\nresources:\n", "stderr"),
    ("Component field outside the CRD schema", "base/dapr/secretstore.yaml",
     "  metadata: []\nscopes:", "  metadata: []\n  scopes:", "Additional properties"),
    ("Component without spec.version", "base/dapr/statestore.yaml",
     "  version: v1\n", "", "'version' is a required property"),
    ("unknown field in a Deployment", "base/notification-service.yaml",
     "          command:",
     "          imagePullPolicyy: Always\n          command:", "imagePullPolicyy"),
    ("production Deployment keeps replicas under the autoscaler", "overlays/production/"
     "kustomization.yaml", "      - op: remove\n        path: /spec/replicas",
     "      - op: replace\n        path: /spec/replicas\n        value: 2",
     "sets replicas although"),
    ("production image unpinned", "overlays/production/kustomization.yaml",
     "newTag: 0.1.0", "newTag: latest", "has no pinned tag"),
    ("the code's default state store changes", "src/config.rs",
     'DEFAULT_STATE_STORE: &str = "statestore"', 'DEFAULT_STATE_STORE: &str = "tasks"',
     "uses Dapr component 'tasks'"),
    ("the code's default topic changes", "src/config.rs",
     'DEFAULT_TASK_EVENTS_TOPIC: &str = "task-events"',
     'DEFAULT_TASK_EVENTS_TOPIC: &str = "tasks"',
     "the code uses task-events-retry, tasks"),
    ("scrape annotation on another port than METRICS_PORT", "base/task-api.yaml",
     'prometheus.io/port: "9464"', 'prometheus.io/port: "9465"', "not METRICS_PORT 9464"),
    ("metrics container port differs from METRICS_PORT", "base/notification-service.yaml",
     "name: metrics\n              containerPort: 9464",
     "name: metrics\n              containerPort: 9463", "the container port named metrics is 9463"),
    ("sidecars export spans to different collectors", "base/dapr/notification-service-config.yaml",
     "endpointAddress: otel-collector.observability", "endpointAddress: jaeger.observability",
     "export spans differently"),
    ("collector address with a scheme", "base/dapr/task-api-config.yaml",
     "endpointAddress: otel-collector", "endpointAddress: http://otel-collector",
     "without a scheme"),
    ("PodMonitor field outside the CRD schema", "observability/podmonitor.yaml",
     "podMetricsEndpoints:", "podMetricEndpoints:", "Additional properties"),
    ("alert threshold its unit tests disagree with", "observability/prometheusrule.yaml",
     "task_api_outbox_oldest_pending_age_seconds) > 60",
     "task_api_outbox_oldest_pending_age_seconds) > 600", "promtool test rules failed"),
    ("alert expression that does not parse", "observability/prometheusrule.yaml",
     "changes(task_api_ready[15m]) > 4", "changes(task_api_ready[15m] > 4",
     "promtool check rules failed"),
    ("alert on a metric the apps do not serve", "observability/prometheusrule.yaml",
     "rate(task_api_relay_lag_seconds_bucket[10m])", "rate(task_api_relay_lag_bucket[10m])",
     "metrics.txt does not list"),
    ("alert whose unit tests are gone", "observability/tests/service.yaml",
     "alertname: TaskApiReadinessFlapping", "alertname: TaskApiReadinessFlaps",
     "TaskApiReadinessFlapping has no unit test in which it fires"),
    ("dashboard query that does not parse", "observability/dashboards/task-api.json",
     "sum(task_api_outbox_pending_events{", "sum(task_api_outbox_pending_events({",
     "the dashboard's queries do not parse"),
    ("the code's default port changes", "src/config.rs",
     "TASK_API_DEFAULT_PORT: u16 = 50051", "TASK_API_DEFAULT_PORT: u16 = 8080",
     "listens on 8080 by default"),
]


def self_test(ctx: Context, manifests: Path, src: Path) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        def fresh() -> tuple[Path, Path]:
            work = Path(tempfile.mkdtemp(dir=tmp))
            shutil.copytree(manifests, work / "manifests")
            if src.is_dir():
                shutil.copytree(src, work / "src")
            else:
                (work / "src").mkdir()
            return work / "manifests", work / "src"

        m, s = fresh()
        baseline = run_checks(ctx, m, s)
        if all(r.ok for r in baseline):
            print("PASS self-test: the unchanged copy passes every check")
        else:
            failures += 1
            print("FAIL self-test: the unchanged copy does not pass:")
            print_results([r for r in baseline if not r.ok])
        for what, rel, old, new, expect in BREAKS:
            m, s = fresh()
            path = s / "config.rs" if rel == "src/config.rs" else m / rel
            if not path.is_file():
                print(f"SKIP self-test: {what} ({rel} does not exist)")
                continue
            text = path.read_text()
            if old not in text:
                failures += 1
                print(f"FAIL self-test: {what}: {rel} no longer contains {old!r}; update BREAKS")
                continue
            path.write_text(text.replace(old, new))
            results = run_checks(ctx, m, s)
            problems = [f"{r.name}: {e}" for r in results for e in r.errors]
            hit = next((p for p in problems if expect.lower() in p.lower()), None)
            if hit:
                print(f"PASS self-test: {what} -> {hit}")
            else:
                failures += 1
                print(f"FAIL self-test: {what}: expected a failure mentioning {expect!r}, got "
                      f"{problems or 'no failure'}")
            sys.stdout.flush()
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "self-test"))
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--kustomize", required=True, help="command that builds a kustomization, "
                        "given its directory (e.g. 'kubectl kustomize')")
    parser.add_argument("--kubernetes-validate", required=True)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--crds", type=Path, required=True)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--monitoring-crds", type=Path, help="the Prometheus Operator's CRDs")
    parser.add_argument("--promtool", type=Path)
    args = parser.parse_args()
    ctx = Context(kustomize=shlex.split(args.kustomize),
                  kubernetes_validate=[args.kubernetes_validate],
                  kubernetes_version=args.kubernetes_version, crds_dir=args.crds,
                  annotations_file=args.annotations, repo=args.repo,
                  monitoring_crds_dir=args.monitoring_crds, promtool=args.promtool)
    manifests, src = args.repo / "manifests", args.repo / "src"
    if args.command == "self-test":
        return self_test(ctx, manifests, src)
    results = run_checks(ctx, manifests, src)
    print_results(results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
