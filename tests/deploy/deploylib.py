"""The deployment checks of ``make test``, as functions over a chart
directory or an Ansible directory, so that the tests run them both on the
real tree and on copies broken on purpose.

How each check is done, offline:

* Helm: the chart is rendered by Helm's own engine (Helm v4's Go SDK,
  ``libhelm_c`` shipped in the ``helm-python-sdk`` wheel): the same template
  functions, values merging and ``values.schema.json`` validation as
  ``helm template``. No ``helm`` binary is needed.
* Kubernetes: every rendered manifest is validated with
  ``kubernetes-validate`` (the OpenAPI schemas of each Kubernetes release,
  shipped in the wheel) in strict mode (unknown fields are errors), against
  the oldest release the chart supports and the newest the package knows.
  CRDs have no schema there: a ServiceMonitor is checked against
  ``schemas/servicemonitor-monitoring-v1.json``, a PrometheusRule against
  ``schemas/prometheusrule-monitoring-v1.json``.
* yamllint, ansible-playbook --syntax-check, ansible-lint: the PyPI tools
  in the test virtualenv.
* systemd: ``systemd-analyze verify`` and ``systemd-analyze security
  --offline=true`` (Debian's ``systemd`` package) on units rendered by
  Ansible from the roles' templates.
* hsm-bridge: the command lines the unit and the chart give it run
  through its own ``main()`` as far as it goes without Lustre
  (``hsm_bridge_from``).

``python -m tests.deploy.deploylib --write-static-units`` regenerates
``deploy/systemd/`` from the role templates.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hsm-coordinator"
ANSIBLE = REPO / "deploy" / "ansible"
STATIC_UNITS = REPO / "deploy" / "systemd"
YAMLLINT_CONFIG = ANSIBLE / ".yamllint"
RENDER_PLAYBOOK = Path(__file__).with_name("render-roles.yml")
SCHEMAS = Path(__file__).with_name("schemas")
BIN = Path(sys.executable).parent

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
#: newest kubernetes-validate has schemas for.
MIN_KUBE = "1.27.0"

#: Where the chart mounts the Raft data in the coordinator container.
DATA_DIR = "/var/lib/hsm-coordinator"


class DeployCheckError(AssertionError):
    """A check could not run at all (a tool is missing)."""


# --------------------------------------------------------------------------
# tools


def venv_tool(name: str) -> str:
    """A console script of the test virtualenv (ansible-lint, yamllint...)."""
    path = BIN / name
    if not path.exists():
        raise DeployCheckError(
            f"{name} is not installed next to {sys.executable}: the deploy checks need the test "
            "dependencies (make test installs them with pip install -e '.[test]')")
    return str(path)


def system_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DeployCheckError(f"{name} not found on PATH: install Debian's {package} package")
    return path


def tool_env(home: Path) -> dict[str, str]:
    """Environment for ansible tools: the venv first on PATH, no colours,
    Ansible's scratch files under *home*."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({
        "ANSIBLE_HOME": str(home / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(home / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    })
    env.pop("ANSIBLE_CONFIG", None)
    return env


def run(cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {shlex.join(proc.args)}\n(exit {proc.returncode})\n{proc.stdout}{proc.stderr}"


# --------------------------------------------------------------------------
# Helm chart


def _helm() -> Any:
    try:
        import helm_python
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DeployCheckError(
            "helm-python-sdk (Helm's engine for Python) is not installed: the chart cannot be "
            f"rendered ({e}); make test installs it with pip install -e '.[test]'") from None
    return helm_python


def ci_values_files(chart: Path = CHART) -> list[Path]:
    return sorted((chart / "ci").glob("*-values.yaml"))


def read_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data or {}


class RenderError(Exception):
    """Helm refused to render (schema violation, a template's ``fail``...)."""


def render_chart(chart: Path, values: Mapping[str, Any] | None = None, *,
                 release: str = "hsm-coordinator", namespace: str = "hsm") -> dict[str, str]:
    """``helm template``: template path -> rendered text (with NOTES.txt)."""
    helm = _helm()
    try:
        with helm.Chart.load(str(chart)) as c:
            return dict(c.render(dict(values or {}), name=release, namespace=namespace))
    except helm.HelmError as e:
        raise RenderError(str(e)) from None


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendering, in template order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                docs.append(doc)
    return docs


def merged_values(chart: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chart's defaults with *overrides* merged in, as Helm merges them."""
    helm = _helm()
    with helm.Chart.load(str(chart)) as c:
        return dict(c.merge_values(dict(overrides or {})))


def schema_problems(chart: Path, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Problems of the merged values against the chart's values.schema.json,
    found both by ``jsonschema`` (draft 7) and by Helm itself."""
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = merged_values(chart, overrides)
    problems = [
        f"values.{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]
    helm = _helm()
    with helm.Chart.load(str(chart)) as c:
        try:
            c.validate_schema(dict(overrides or {}))
        except helm.HelmError as e:
            problems.append(f"helm: {e}")
    return problems


def _kube_latest() -> str:
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


def kube_versions() -> tuple[str, str]:
    return MIN_KUBE, _kube_latest()


def _obj_name(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def kube_problems(docs: Iterable[Mapping[str, Any]], versions: Iterable[str] | None = None) -> list[str]:
    """Strict schema validation of every object for each Kubernetes version."""
    import kubernetes_validate

    versions = tuple(versions or kube_versions())
    monitoring = {kind: json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
                  for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")}
    cert_schema = json.loads((SCHEMAS / "certificate-cert-manager-v1.json").read_text())
    problems: list[str] = []
    for doc in docs:
        name = _obj_name(doc)
        if str(doc.get("apiVersion", "")).startswith("cert-manager.io/"):
            for e in jsonschema.Draft202012Validator(cert_schema).iter_errors(doc):
                problems.append(f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            schema = monitoring.get(str(doc.get("kind")))
            if schema is None:
                problems.append(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
                continue
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                problems.append(f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(dict(doc), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(map(str, e.absolute_path)) or "<top>"
                problems.append(f"{name} (Kubernetes {version}): {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name}: {e.message}")
    return problems


# -- conventions -------------------------------------------------------------


def _by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container(pod_spec: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for c in pod_spec.get("containers", []):
        if c.get("name") == name:
            return dict(c)
    return None


def _mount_path(container: Mapping[str, Any], volume: str) -> str | None:
    for m in container.get("volumeMounts", []):
        if m.get("name") == volume:
            return str(m.get("mountPath"))
    return None


#: the chart's exec probe with TLS (the kubelet's grpc probe has no TLS):
#: ``python /etc/hsm-coordinator/probe.py SERVICE``
PROBE_SCRIPT = "/etc/hsm-coordinator/probe.py"


def _grpc_service(probe: Mapping[str, Any] | None) -> str | None:
    """The grpc.health.v1 service a probe checks: a kubelet grpc probe, or
    the chart's probe script over mutual TLS."""
    if not probe:
        return None
    if "grpc" in probe:
        return str(probe["grpc"].get("service", ""))
    cmd = list(probe.get("exec", {}).get("command", []))
    if len(cmd) == 3 and cmd[1] == PROBE_SCRIPT:
        return str(cmd[2])
    return None


def _ports_in(rule_ports: Iterable[Mapping[str, Any]], lo: int, hi: int) -> bool:
    """Does a NetworkPolicy rule's port list reach any port in lo..hi? (No
    port list means every port.)"""
    ports = list(rule_ports)
    if not ports:
        return True
    for p in ports:
        port = p.get("port")
        if port is None:
            return True
        if isinstance(port, str):
            if port.startswith("raft"):
                return True
            continue
        end = int(p.get("endPort", port))
        if int(port) <= hi and end >= lo:
            return True
    return False


def convention_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], *,
                        namespace: str = "hsm") -> list[str]:
    """What the issue asks of the chart, checked on a rendering made with
    *values* (the merged values): quorum-safe PDB, Parallel pods, the peer
    list from pod ordinals, probes, headless Service, agentd wiring."""
    problems: list[str] = []
    c = values["coordinator"]
    n = int(c["replicas"])
    shards = int(values["cluster"]["shards"])
    api_port = int(c["apiPort"])
    raft_port = int(c["raftPort"])
    domain = values["cluster"]["clusterDomain"]
    image = f"{values['image']['repository']}:{values['image']['tag'] or '0.1.0'}"

    sts_list = _by_kind(docs, "StatefulSet")
    if len(sts_list) != 1:
        return [f"expected one StatefulSet of coordinators, found {len(sts_list)}"]
    sts = sts_list[0]
    spec = sts["spec"]
    name = sts["metadata"]["name"]
    pod = spec["template"]
    pod_labels = pod["metadata"].get("labels", {})
    pod_spec = pod["spec"]
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append(f"StatefulSet {name}: podManagementPolicy is {spec.get('podManagementPolicy')!r}, "
                        "not Parallel (replica 0 would wait for a quorum that needs replica 1)")
    if spec.get("replicas") != n:
        problems.append(f"StatefulSet {name}: replicas {spec.get('replicas')} != coordinator.replicas {n}")
    if not _selects(spec["selector"].get("matchLabels", {}), pod_labels):
        problems.append(f"StatefulSet {name}: selector does not match its pod labels")

    # headless Service, the DNS names of the peer list
    headless = [s for s in _by_kind(docs, "Service") if s["metadata"]["name"] == spec.get("serviceName")]
    if not headless:
        problems.append(f"StatefulSet {name}: serviceName {spec.get('serviceName')!r} is not a Service of the chart")
    else:
        h = headless[0]["spec"]
        if h.get("clusterIP") != "None":
            problems.append(f"Service {spec['serviceName']}: not headless (clusterIP {h.get('clusterIP')!r})")
        if h.get("publishNotReadyAddresses") is not True:
            problems.append(f"Service {spec['serviceName']}: publishNotReadyAddresses is not true "
                            "(not-ready replicas could not find each other to form a quorum)")
        if not _selects(h.get("selector", {}), pod_labels):
            problems.append(f"Service {spec['serviceName']}: selector does not match the coordinator pods")
        hports = {int(p["port"]) for p in h.get("ports", [])}
        missing = {api_port, *range(raft_port, raft_port + shards)} - hports
        if missing:
            problems.append(f"Service {spec['serviceName']}: ports {sorted(missing)} missing")
    headless_name = spec.get("serviceName")

    # client Service
    clients = [s for s in _by_kind(docs, "Service")
               if s["metadata"]["name"] != headless_name and _selects(s["spec"].get("selector", {}), pod_labels)]
    if len(clients) != 1:
        problems.append(f"expected one client Service for the coordinators, found {len(clients)}")
    else:
        cs = clients[0]["spec"]
        if cs.get("publishNotReadyAddresses"):
            problems.append("client Service publishes not-ready replicas")
        if [p.get("targetPort") for p in cs.get("ports", [])] not in (["api"], [api_port]):
            problems.append(f"client Service does not forward to the API port: {cs.get('ports')}")

    # the coordinator container: command, probes, security
    ctr = _container(pod_spec, "coordinator")
    if ctr is None:
        problems.append(f"StatefulSet {name}: no container named coordinator")
        return problems
    if ctr.get("image") != image:
        problems.append(f"coordinator image {ctr.get('image')!r} != {image!r}")
    cmd = list(ctr.get("command", [])) + list(ctr.get("args", []))
    if cmd[:2] != ["hsm-coordinator", "run"] or "--config" not in cmd:
        problems.append(f"coordinator command is not 'hsm-coordinator run --config ...': {cmd}")
    if "--replica-id" not in cmd or cmd[cmd.index("--replica-id") + 1] != "$(POD_NAME)":
        problems.append(f"coordinator command does not pass --replica-id $(POD_NAME): {cmd}")
    env = {e["name"]: e for e in ctr.get("env", [])}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problems.append("POD_NAME is not the pod name (env fieldRef metadata.name)")
    ports = {int(p["containerPort"]) for p in ctr.get("ports", [])}
    missing = {api_port, *range(raft_port, raft_port + shards)} - ports
    if missing:
        problems.append(f"coordinator container does not declare ports {sorted(missing)}")
    ready = _grpc_service(ctr.get("readinessProbe"))
    if ready != "hsm.v1.Coordinator":
        problems.append(f"readinessProbe is not grpc.health.v1 service hsm.v1.Coordinator "
                        f"(a leader for every shard): {ctr.get('readinessProbe')}")
    live = ctr.get("livenessProbe")
    if live is not None and _grpc_service(live) != "":
        problems.append(f"livenessProbe must not depend on quorum (grpc service '' only): {live}")
    start = ctr.get("startupProbe")
    if start is None or _grpc_service(start) != "":
        problems.append(f"no startupProbe on grpc service '' covering journal replay: {start}")
    elif int(start.get("periodSeconds", 10)) * int(start.get("failureThreshold", 3)) < 60:
        problems.append("startupProbe allows less than 60 s for journal replay")
    grace = int(pod_spec.get("terminationGracePeriodSeconds", 30))
    if grace < 30:
        problems.append(f"terminationGracePeriodSeconds {grace} leaves no time for the leader hand-over")
    psc = pod_spec.get("securityContext", {})
    csc = ctr.get("securityContext", {})
    if not psc.get("runAsNonRoot") or int(psc.get("runAsUser", 0)) == 0:
        problems.append("the coordinator pod does not run as a non-root user")
    if csc.get("allowPrivilegeEscalation") is not False or "ALL" not in csc.get("capabilities", {}).get("drop", []):
        problems.append("the coordinator container keeps privileges (allowPrivilegeEscalation/capabilities)")
    if "checksum/config" not in pod["metadata"].get("annotations", {}):
        problems.append("coordinator pods do not roll when the config changes (checksum/config annotation)")

    # Raft data on a volume per replica, the password from a Secret
    data_mount = _mount_path(ctr, "data")
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    if c["persistence"]["enabled"] and "data" not in claims:
        problems.append("no volumeClaimTemplate 'data': the Raft data would not survive the pod")
    if data_mount != DATA_DIR:
        problems.append(f"the data volume is mounted at {data_mount}, not {DATA_DIR}")
    secret_vols = [v for v in pod_spec.get("volumes", []) if "secret" in v and v["name"] != "tls"]
    secret_names = {v["secret"]["secretName"] for v in secret_vols}
    if not secret_vols:
        problems.append("the Raft password comes from no Secret")
    existing = values["cluster"]["existingSecret"]
    if existing and secret_names != {existing}:
        problems.append(f"cluster.existingSecret {existing!r} is not the mounted Secret ({secret_names})")
    if not existing:
        made = {s["metadata"]["name"] for s in _by_kind(docs, "Secret")}
        if not secret_names <= made:
            problems.append(f"the mounted Secret {secret_names} is not created by the chart")

    # the config: peer list from the pod ordinals
    problems += _config_problems(docs, ctr, pod_spec, name, headless_name, namespace, domain, values)

    # PodDisruptionBudget keeping a quorum: of the replicas, or with
    # cluster.replication R of every shard's group of R, which may be any R
    # of the pods: then no more than (R - 1) // 2 pods may be down at once
    replication = values["cluster"].get("replication")
    group = n if replication is None else int(replication)
    quorum = n // 2 + 1 if replication is None else n - (group - 1) // 2
    pdbs = [p for p in _by_kind(docs, "PodDisruptionBudget")
            if _selects(p["spec"].get("selector", {}).get("matchLabels", {}), pod_labels)]
    if group >= 3 and c["podDisruptionBudget"]["enabled"]:
        if len(pdbs) != 1:
            problems.append(f"expected one PodDisruptionBudget for {n} replicas, found {len(pdbs)}")
        else:
            pspec = pdbs[0]["spec"]
            if "minAvailable" in pspec:
                keep = int(pspec["minAvailable"])
            else:
                keep = n - int(pspec.get("maxUnavailable", n))
            if keep < quorum:
                problems.append(f"PodDisruptionBudget keeps {keep} of {n} replicas available, "
                                f"below the quorum of {quorum}"
                                + ("" if replication is None else
                                   f" (groups of {group} spread over the pods: at most {(group - 1) // 2} "
                                   "may be down at once)"))
    elif pdbs and group < 3:
        problems.append(f"a PodDisruptionBudget for {'groups of ' if replication is not None else ''}{group} "
                        "replica(s) would block every node drain")

    # NetworkPolicy: Raft ports only between replicas
    for np_ in _by_kind(docs, "NetworkPolicy"):
        if not _selects(np_["spec"]["podSelector"].get("matchLabels", {}), pod_labels):
            continue
        for rule in np_["spec"].get("ingress", []):
            if not _ports_in(rule.get("ports", []), raft_port, raft_port + shards - 1):
                continue
            peers = rule.get("from")
            only_replicas = bool(peers) and all(
                set(p) == {"podSelector"} and _selects(p["podSelector"].get("matchLabels", {}), pod_labels)
                for p in peers)
            if not only_replicas:
                problems.append(f"NetworkPolicy {np_['metadata']['name']}: Raft ports open to {peers or 'everyone'}")
        # the API must stay reachable from the release's own pods
        for component in ("coordinator", "agentd", *(["bridge"] if values["bridge"]["enabled"] else [])):
            labels = {**pod_labels, "app.kubernetes.io/component": component}
            if not any(_ports_in(rule.get("ports", []), api_port, api_port) and (
                    not rule.get("from") or any(set(p) == {"podSelector"} and _selects(
                        p["podSelector"].get("matchLabels", {}), labels) for p in rule["from"]))
                    for rule in np_["spec"].get("ingress", [])):
                problems.append(f"NetworkPolicy {np_['metadata']['name']}: the API port is closed to the {component} pods")
    if values["networkPolicy"]["enabled"] and not _by_kind(docs, "NetworkPolicy"):
        problems.append("networkPolicy.enabled but no NetworkPolicy rendered")
    if values["serviceMonitor"]["enabled"] and not _by_kind(docs, "ServiceMonitor"):
        problems.append("serviceMonitor.enabled but no ServiceMonitor rendered")
    problems += _monitoring_problems(docs, values)

    problems += _tls_problems(docs, values, name, headless_name, namespace, domain)
    problems += _agentd_problems(docs, values, name, headless_name, namespace, domain, image)
    service = f"{clients[0]['metadata']['name']}.{namespace}.svc.{domain}:{int(values['service']['port'])}" \
        if len(clients) == 1 else None
    problems += _bridge_problems(docs, values, service, image)
    problems += _test_hook_problems(docs, values, clients, namespace, domain)
    return problems


#: the dashboard the chart ships (tests/deploy/test_dashboard.py checks it
#: is the same file as DASHBOARD)
CHART_DASHBOARD = Path("dashboards") / "hsm-coordinator.json"
DASHBOARD = REPO / "deploy" / "grafana" / "hsm-coordinator.json"


def _monitoring_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], chart: Path = CHART) -> list[str]:
    """The Grafana dashboard's ConfigMap (the chart's JSON file, verbatim,
    with the sidecar's label) and the PrometheusRule: rendered exactly when
    enabled."""
    problems: list[str] = []
    g = values["grafanaDashboard"]
    dashboards = [d for d in _by_kind(docs, "ConfigMap") if any(k.endswith(".json") for k in d.get("data", {}))]
    if not g["enabled"] and dashboards:
        problems.append("grafanaDashboard.enabled false but a dashboard ConfigMap is rendered")
    if g["enabled"]:
        if len(dashboards) != 1:
            problems.append(f"grafanaDashboard.enabled: expected one dashboard ConfigMap, found {len(dashboards)}")
        else:
            cm = dashboards[0]
            labels = cm["metadata"].get("labels", {})
            if labels.get(g["label"]) != g["labelValue"]:
                problems.append(f"ConfigMap {cm['metadata']['name']}: no label {g['label']}={g['labelValue']!r} "
                                f"for the Grafana sidecar: {labels}")
            want = (chart / CHART_DASHBOARD).read_text()
            if list(cm["data"].values()) != [want]:
                problems.append(f"ConfigMap {cm['metadata']['name']}: its data is not the chart's {CHART_DASHBOARD}")
    rules = _by_kind(docs, "PrometheusRule")
    if values["prometheusRule"]["enabled"] != bool(rules):
        problems.append(f"prometheusRule.enabled is {values['prometheusRule']['enabled']} but "
                        f"{len(rules)} PrometheusRule rendered")
    return problems


def _config_problems(docs: list[dict[str, Any]], ctr: Mapping[str, Any], pod_spec: Mapping[str, Any],
                     sts: str, headless: str | None, namespace: str, domain: str,
                     values: Mapping[str, Any]) -> list[str]:
    c = values["coordinator"]
    cmd = list(ctr.get("command", [])) + list(ctr.get("args", []))
    config_path = cmd[cmd.index("--config") + 1] if "--config" in cmd else None
    mount = next((m for m in ctr.get("volumeMounts", [])
                  if config_path and (m["mountPath"] == config_path
                                      or config_path.startswith(m["mountPath"].rstrip("/") + "/"))), None)
    if mount is None:
        return [f"the config file {config_path} is not mounted in the coordinator container"]
    vol = next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), None)
    if vol is None or "configMap" not in vol:
        return [f"the config file {config_path} does not come from a ConfigMap"]
    key = mount.get("subPath") or Path(config_path or "").name
    cms = [m for m in _by_kind(docs, "ConfigMap") if m["metadata"]["name"] == vol["configMap"]["name"]]
    if not cms or key not in cms[0].get("data", {}):
        return [f"ConfigMap {vol['configMap']['name']} has no key {key}"]
    cfg = yaml.safe_load(cms[0]["data"][key])
    problems: list[str] = []
    n = int(c["replicas"])
    want = [
        {"id": f"{sts}-{i}",
         "api": f"{sts}-{i}.{headless}.{namespace}.svc.{domain}:{int(c['apiPort'])}",
         "raft": f"{sts}-{i}.{headless}.{namespace}.svc.{domain}:{int(c['raftPort'])}"}
        for i in range(n)
    ]
    cluster = cfg.get("cluster", {})
    if cluster.get("replicas") != want:
        problems.append(f"coordinator.yaml cluster.replicas is not the pod ordinals 0..{n - 1} on the "
                        f"headless Service: {cluster.get('replicas')}")
    if cluster.get("shards") != int(values["cluster"]["shards"]):
        problems.append(f"coordinator.yaml cluster.shards {cluster.get('shards')} != {values['cluster']['shards']}")
    problems += _placement_problems(cluster, values, [r["id"] for r in want])
    problems += _password_problems(str(cluster.get("password_file", "")), ctr, pod_spec)
    if cfg.get("data_dir") != DATA_DIR:
        problems.append(f"coordinator.yaml data_dir {cfg.get('data_dir')} is not the data volume {DATA_DIR}")
    if not str(cfg.get("listen", "")).endswith(f":{int(c['apiPort'])}"):
        problems.append(f"coordinator.yaml listen {cfg.get('listen')} is not on the API port {c['apiPort']}")
    if cfg.get("default_archive_id") not in cfg.get("archive_ids", []):
        problems.append("coordinator.yaml default_archive_id is not one of archive_ids")
    if "replica_id" in cfg:
        problems.append("coordinator.yaml sets replica_id: every pod would claim the same one")
    sm = values["serviceMonitor"]
    metrics = str(cfg.get("metrics_listen", ""))
    if sm["enabled"] and not metrics.endswith(f":{int(sm['port'])}"):
        problems.append(f"serviceMonitor.enabled: coordinator.yaml metrics_listen {metrics!r} does not serve "
                        f"the port the ServiceMonitor scrapes ({sm['port']})")
    if not sm["enabled"] and metrics:
        problems.append(f"coordinator.yaml serves metrics ({metrics}) with serviceMonitor.enabled false")
    problems += _coordinator_accepts(cfg, [r["id"] for r in want])
    return problems


def _placement_problems(cluster: Mapping[str, Any], values: Mapping[str, Any], pods: list[str]) -> list[str]:
    """Without cluster.replication, coordinator.yaml has neither replication
    nor placement (every replica holds every shard). With it, the placement
    is written out and is ``coordinator.placement.spread`` (what
    ``hsm-coordinator init --replication R`` writes) over the first
    cluster.placementReplicas pods, whatever coordinator.replicas is: pods
    added later are in no group."""
    from coordinator.placement import spread

    r = values["cluster"].get("replication")
    if r is None:
        extra = sorted({"replication", "placement"} & set(cluster))
        return [f"coordinator.yaml sets cluster.{', cluster.'.join(extra)} without cluster.replication"] if extra else []
    p = values["cluster"].get("placementReplicas")
    if p is None:
        return ["cluster.replication without cluster.placementReplicas was rendered"]
    problems = []
    if cluster.get("replication") != int(r):
        problems.append(f"coordinator.yaml cluster.replication {cluster.get('replication')} != {r}")
    want = {i: list(g) for i, g in enumerate(spread(pods[:int(p)], int(values["cluster"]["shards"]), int(r)))}
    if cluster.get("placement") != want:
        problems.append(f"coordinator.yaml cluster.placement is not the spread of {values['cluster']['shards']} "
                        f"groups of {r} over the first {p} pods (cluster.placementReplicas): "
                        f"{cluster.get('placement')} != {want}")
    return problems


def _volume_secrets(volume: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Secret name -> {key: path} of a secret or projected volume ({} keys:
    the whole Secret)."""
    out: dict[str, dict[str, str]] = {}
    if "secret" in volume:
        out[volume["secret"]["secretName"]] = {i["key"]: i["path"] for i in volume["secret"].get("items", [])}
    for src in volume.get("projected", {}).get("sources", []):
        if "secret" in src:
            out[src["secret"]["name"]] = {i["key"]: i["path"] for i in src["secret"].get("items", [])}
    return out


def _tls_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], sts: str, headless: str | None,
                  namespace: str, domain: str) -> list[str]:
    """Mutual TLS by default: coordinator.yaml names the files of a mounted
    volume that holds the CA and every replica's certificate; agentd and
    the bridges get theirs; cert-manager Certificates name each identity
    (CN) and role (OU). Plain text only with insecure: true."""
    t = values["tls"]
    cms = [m for m in _by_kind(docs, "ConfigMap") if "coordinator.yaml" in m.get("data", {})]
    if len(cms) != 1:
        return ["no ConfigMap with coordinator.yaml"]
    cfg = yaml.safe_load(cms[0]["data"]["coordinator.yaml"])
    certs = [d for d in docs if d.get("kind") == "Certificate"]
    if not t["enabled"]:
        problems = []
        if cfg.get("insecure") is not True or "tls" in cfg:
            problems.append(f"tls.enabled false: coordinator.yaml must say insecure: true, no tls: {cfg}")
        if certs:
            problems.append("tls.enabled false but Certificates are rendered")
        return problems
    problems = []
    if "insecure" in cfg or not isinstance(cfg.get("tls"), dict):
        return [f"TLS on: coordinator.yaml must have tls: and no insecure: {cfg}"]
    n = int(values["coordinator"]["replicas"])
    ids = [f"{sts}-{i}" for i in range(n)]
    sts_doc = next(d for d in _by_kind(docs, "StatefulSet"))
    pod_spec = sts_doc["spec"]["template"]["spec"]
    ctr = _container(pod_spec, "coordinator") or {}
    mount = _mount_path(ctr, "tls")
    if mount is None:
        return ["TLS on: no volume tls mounted in the coordinator container"]
    for key in ("ca", "cert", "key"):
        if Path(cfg["tls"][key]).parent != Path(mount):
            problems.append(f"coordinator.yaml tls.{key} {cfg['tls'][key]} is not in the mounted {mount}")
    vol = next((v for v in pod_spec.get("volumes", []) if v["name"] == "tls"), {})
    sources = _volume_secrets(vol)
    cm = t["certManager"]
    if cm["enabled"]:
        # every replica's Secret, its cert and key under the names the config gives
        want = {f"{sts}-tls-{rid}" for rid in ids}
        if set(sources) != want:
            problems.append(f"the coordinators' tls volume projects {sorted(sources)}, not {sorted(want)}")
        paths = {p for items in sources.values() for p in items.values()}
        expected = {"ca.pem", *(f"{rid}.{x}" for rid in ids for x in ("pem", "key"))}
        if paths != expected:
            problems.append(f"the coordinators' tls volume has files {sorted(paths)}, not {sorted(expected)}")
        by_secret = {c["spec"]["secretName"]: c["spec"] for c in certs}
        for rid in ids:
            spec = by_secret.get(f"{sts}-tls-{rid}")
            if spec is None:
                problems.append(f"no Certificate for replica {rid}")
                continue
            host = f"{rid}.{headless}.{namespace}.svc.{domain}"
            service = f"{sts}.{namespace}.svc.{domain}"
            if spec.get("commonName") != rid or spec.get("subject", {}).get("organizationalUnits") != ["replica"]:
                problems.append(f"Certificate of {rid}: CN {spec.get('commonName')} / OU {spec.get('subject')} "
                                "is not the replica id / replica")
            if host not in spec.get("dnsNames", []) or service not in spec.get("dnsNames", []):
                problems.append(f"Certificate of {rid}: dnsNames {spec.get('dnsNames')} lack {host} or {service}")
        if values["agentd"]["enabled"]:
            for node in cm["agentNodes"]:
                spec = by_secret.get(f"{sts}-tls-agent-{node}", {})
                if spec.get("commonName") != node or spec.get("subject", {}).get("organizationalUnits") != ["agent"]:
                    problems.append(f"no Certificate with CN {node} (the agent id) and OU agent: {spec}")
        if values["bridge"]["enabled"]:
            spec = by_secret.get(f"{sts}-tls-bridge", {})
            if spec.get("subject", {}).get("organizationalUnits") != ["bridge"]:
                problems.append(f"no Certificate with OU bridge for the bridges: {spec}")
        for c in certs:
            ref = c["spec"]["issuerRef"]
            if ref.get("name") != cm["issuerRef"]["name"] or ref.get("kind") != cm["issuerRef"]["kind"]:
                problems.append(f"{_obj_name(c)}: issuerRef {ref} is not tls.certManager.issuerRef")
    else:
        want = t["existingSecret"] or f"{sts}-tls"
        if set(sources) != {want} or sources[want]:
            problems.append(f"the coordinators' tls volume is {sources}, not the whole Secret {want}")
        if certs:
            problems.append("Certificates rendered without tls.certManager.enabled")
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    if env.get("HSM_TLS_CERT") != f"{mount}/$(POD_NAME).pem" or env.get("HSM_TLS_KEY") != f"{mount}/$(POD_NAME).key":
        problems.append(f"the coordinator container's HSM_TLS_* do not name its own certificate: {env}")
    # agentd: its node's certificate; the bridges: theirs
    for w in docs:
        comp = w.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        if w.get("kind") not in ("DaemonSet", "Deployment") or comp not in ("agentd", "bridge"):
            continue
        wspec = w["spec"]["template"]["spec"]
        c = _container(wspec, comp) or {}
        cmd = list(c.get("command", [])) + list(c.get("args", []))
        mnt = _mount_path(c, "tls")
        flags = {f: option_values(cmd, f) for f in ("--tls-ca", "--tls-cert", "--tls-key")}
        if mnt is None or any(len(v) != 1 or not v[0].startswith(mnt + "/") for v in flags.values()):
            problems.append(f"{_obj_name(w)}: --tls-ca/--tls-cert/--tls-key {flags} are not files of a mounted tls volume")
        elif comp == "agentd" and flags["--tls-cert"] != [f"{mnt}/$(NODE_NAME).pem"]:
            problems.append(f"{_obj_name(w)}: agentd's certificate is not its node's (the agent id): {flags}")
    return problems


def _coordinator_accepts(cfg: Mapping[str, Any], replica_ids: list[str]) -> list[str]:
    """Load *cfg* with the coordinator's own config loader as each replica
    would (``--replica-id``), the password file swapped for a local one."""
    from coordinator.config import ConfigError, load

    with tempfile.TemporaryDirectory() as tmp:
        password = Path(tmp) / "raft-password"
        password.write_text("deploy-check-raft-password\n")
        password.chmod(0o600)
        local = {**cfg, "cluster": {**cfg.get("cluster", {}), "password_file": str(password)}}
        if isinstance(cfg.get("tls"), dict):
            # the mounted files, made here: a CA and each replica's certificate,
            # at the config's paths moved under tmp
            from coordinator import certs

            tls_dir = Path(tmp) / "tls"
            certs.init_ca(tls_dir)
            for rid in replica_ids:
                certs.issue(tls_dir, rid, "replica")
            local["tls"] = {k: str(tls_dir / Path(str(v)).name) for k, v in cfg["tls"].items()}
        path = Path(tmp) / "coordinator.yaml"
        path.write_text(yaml.safe_dump(local))
        for rid in replica_ids:
            try:
                load(str(path), {"replica_id": rid})
            except ConfigError as e:
                return [f"hsm-coordinator run --replica-id {rid} refuses the chart's coordinator.yaml: {e}"]
    return []


def _password_problems(password_file: str, ctr: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> list[str]:
    """``hsm-coordinator run`` reads the Raft password from a file only its
    user may read (0600). A Secret volume's files belong to root, so an init
    container copies the Secret's key there with that mode."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    secret_vols = [n for n, v in volumes.items() if "secret" in v]
    directory = str(Path(password_file).parent)
    run_vol = next((m["name"] for m in ctr.get("volumeMounts", []) if m["mountPath"] == directory), None)
    if run_vol is None:
        return [f"coordinator.yaml password_file {password_file}: its directory is not a volume of the container"]
    if "emptyDir" not in volumes.get(run_vol, {}):
        return [f"password_file {password_file} is on volume {run_vol}, not a private emptyDir"]
    for init in pod_spec.get("initContainers", []):
        cmd = list(init.get("command", [])) + list(init.get("args", []))
        reads_secret = any(_mount_path(init, v) and any(a.startswith(_mount_path(init, v) or "") for a in cmd)
                           for v in secret_vols)
        if reads_secret and _mount_path(init, run_vol) == directory and cmd and cmd[-1] == password_file:
            if not any(m in cmd for m in ("0600", "600", "0400", "400")):
                return [f"init container {init['name']} copies the password without mode 0600: {cmd}"]
            return []
    return [f"no init container copies the Secret's password to {password_file}"]


def _agentd_metrics_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], w: Mapping[str, Any],
                             ctr: Mapping[str, Any], cmd: list[str]) -> list[str]:
    """With serviceMonitor.enabled every agentd serves its metrics on
    agentd.metricsPort (a container port named metrics) and a PodMonitor
    scrapes that port of exactly the agentd pods; without, neither."""
    port = int(values["agentd"]["metricsPort"])
    monitors = _by_kind(docs, "PodMonitor")
    flag = cmd[cmd.index("--metrics-listen") + 1] if "--metrics-listen" in cmd else None
    if not values["serviceMonitor"]["enabled"]:
        return ([f"agentd serves metrics ({flag}) with serviceMonitor.enabled false"] if flag else []) + \
            ([f"{_obj_name(m)} rendered with serviceMonitor.enabled false" for m in monitors])
    problems = []
    if flag != f"0.0.0.0:{port}":
        problems.append(f"agentd's --metrics-listen is {flag!r}, not 0.0.0.0:{port} (agentd.metricsPort)")
    named = {p.get("name"): p.get("containerPort") for p in ctr.get("ports", [])}
    if named.get("metrics") != port:
        problems.append(f"agentd has no container port named metrics on {port}: {ctr.get('ports')}")
    pod_labels = w["spec"]["template"]["metadata"].get("labels", {})
    ok = [m for m in monitors if _selects(m["spec"]["selector"].get("matchLabels", {}), pod_labels)
          and any(e.get("port") == "metrics" for e in m["spec"].get("podMetricsEndpoints", []))]
    if len(ok) != 1:
        problems.append(f"expected one PodMonitor scraping port metrics of the agentd pods, found "
                        f"{[_obj_name(m) for m in monitors]}")
    return problems


def _agentd_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], sts: str, headless: str | None,
                     namespace: str, domain: str, image: str) -> list[str]:
    a = values["agentd"]
    workloads = [d for d in docs if d.get("kind") in ("DaemonSet", "Deployment")
                 and d["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "agentd"]
    if not a["enabled"]:
        return [f"agentd.enabled is false but {_obj_name(w)} is rendered" for w in workloads]
    if len(workloads) != 1 or workloads[0]["kind"] != a["kind"]:
        return [f"expected one agentd {a['kind']}, found {[_obj_name(w) for w in workloads]}"]
    w = workloads[0]
    problems: list[str] = []
    pod_spec = w["spec"]["template"]["spec"]
    ctr = _container(pod_spec, "agentd")
    if ctr is None:
        return [f"{_obj_name(w)}: no container named agentd"]
    if ctr.get("image") != image:
        problems.append(f"agentd image {ctr.get('image')!r} != {image!r}")
    if a["kind"] == "DaemonSet" and pod_spec.get("nodeSelector") != a["nodeSelector"]:
        problems.append(f"agentd DaemonSet nodeSelector {pod_spec.get('nodeSelector')} != {a['nodeSelector']}")
    cmd = list(ctr.get("command", [])) + list(ctr.get("args", []))
    problems += _agentd_metrics_problems(docs, values, w, ctr, cmd)
    want_id = "$(NODE_NAME)" if a["kind"] == "DaemonSet" else "$(POD_NAME)"
    if "--agent-id" not in cmd or cmd[cmd.index("--agent-id") + 1] != want_id:
        problems.append(f"agentd command does not pass --agent-id {want_id}: {cmd}")
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in pod_spec.get("volumes", []) if "hostPath" in v}
    for what in ("filesystem", "archive"):
        want = a[what]
        vol = next((k for k, p in hostpaths.items() if p == want["hostPath"]), None)
        if vol is None or _mount_path(ctr, vol) != want["mountPath"]:
            problems.append(f"agentd does not mount host {want['hostPath']} at {want['mountPath']}")
    grace = int(pod_spec.get("terminationGracePeriodSeconds", 30))
    if grace <= int(a["drainTimeout"]):
        problems.append(f"agentd grace period {grace} s does not cover drainTimeout {a['drainTimeout']} s")
    csc = ctr.get("securityContext", {})
    if csc.get("privileged") or "ALL" not in csc.get("capabilities", {}).get("drop", []):
        problems.append("agentd keeps every capability (privileged, or ALL not dropped)")
    # its config: every replica, and agentd itself accepts it
    cfg_vol = next((v for v in pod_spec.get("volumes", []) if "configMap" in v), None)
    cms = [m for m in _by_kind(docs, "ConfigMap") if cfg_vol and m["metadata"]["name"] == cfg_vol["configMap"]["name"]]
    if not cms or "agentd.yaml" not in cms[0].get("data", {}):
        return problems + ["agentd's ConfigMap with agentd.yaml is missing"]
    text = cms[0]["data"]["agentd.yaml"]
    cfg = yaml.safe_load(text)
    n = int(values["coordinator"]["replicas"])
    port = int(values["coordinator"]["apiPort"])
    want = [f"{sts}-{i}.{headless}.{namespace}.svc.{domain}:{port}" for i in range(n)]
    if cfg.get("coordinators") != want:
        problems.append(f"agentd.yaml coordinators {cfg.get('coordinators')} != every replica {want}")
    from agentd.config import ConfigError, load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agentd.yaml"
        path.write_text(text)
        try:
            loaded = load_config(str(path), environ={})
        except ConfigError as e:
            problems.append(f"agentd refuses the chart's agentd.yaml: {e}")
        else:
            if list(loaded.coordinators) != want:
                problems.append(f"agentd reads coordinators {loaded.coordinators} from the chart's config")
    return problems


#: The pod label naming the file system a bridge Deployment serves.
FSNAME_LABEL = "hsm-coordinator/fsname"
#: What a bridge keeps: the copytool ioctls and opening <mount>/.lustre/fid.
BRIDGE_CAPABILITIES = {"SYS_ADMIN", "DAC_READ_SEARCH"}


def option_values(cmd: Sequence[str], option: str) -> list[str]:
    """Every value given to *option* (``--opt V`` or ``--opt=V``) in *cmd*."""
    out = []
    for i, word in enumerate(cmd):
        if word == option and i + 1 < len(cmd):
            out.append(cmd[i + 1])
        elif word.startswith(option + "="):
            out.append(word.split("=", 1)[1])
    return out


def bridge_workloads(docs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rendered workloads whose pods are bridges."""
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")
            and d["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "bridge"]


def bridge_command(workload: Mapping[str, Any]) -> list[str]:
    ctr = _container(workload["spec"]["template"]["spec"], "bridge")
    if ctr is None:
        raise AssertionError(f"{_obj_name(workload)}: no container named bridge")
    return list(ctr.get("command", [])) + list(ctr.get("args", []))


def _bridge_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], service: str | None,
                     image: str) -> list[str]:
    b = values["bridge"]
    workloads = bridge_workloads(docs)
    if not b["enabled"]:
        return [f"bridge.enabled is false but {_obj_name(w)} is rendered" for w in workloads]
    problems: list[str] = []
    wanted = {fs["fsname"] for fs in b["filesystems"]}
    by_fs: dict[str, list[Mapping[str, Any]]] = {}
    for w in workloads:
        fsname = w["spec"]["template"]["metadata"]["labels"].get(FSNAME_LABEL)
        by_fs.setdefault(str(fsname), []).append(w)
    if extra := set(by_fs) - wanted:
        problems.append(f"bridge workloads for file systems not in bridge.filesystems: {sorted(extra)}")
    for fs in b["filesystems"]:
        found = by_fs.get(fs["fsname"], [])
        if len(found) != 1 or found[0]["kind"] != "Deployment":
            problems.append(f"expected one bridge Deployment for {fs['fsname']}, found {[_obj_name(w) for w in found]}")
            continue
        w = found[0]
        name = _obj_name(w)
        spec = w["spec"]
        pod = spec["template"]
        pod_spec = pod["spec"]
        if spec.get("replicas") != int(b["replicas"]):
            problems.append(f"{name}: replicas {spec.get('replicas')} != bridge.replicas {b['replicas']}")
        selector = spec["selector"].get("matchLabels", {})
        if not _selects(selector, pod["metadata"].get("labels", {})) or selector.get(FSNAME_LABEL) != fs["fsname"]:
            problems.append(f"{name}: its selector does not pick exactly the bridges of {fs['fsname']}: {selector}")
        ctr = _container(pod_spec, "bridge")
        if ctr is None:
            problems.append(f"{name}: no container named bridge")
            continue
        if ctr.get("image") != image:
            problems.append(f"{name}: image {ctr.get('image')!r} != {image!r}")
        cmd = bridge_command(w)
        if cmd[:1] != ["hsm-bridge"]:
            problems.append(f"{name}: the command is not hsm-bridge: {cmd}")
        want = {
            "--mount": [fs["mount"]],
            "--fsname": [fs["fsname"]],
            "--archive-id": [str(i) for i in fs.get("archiveIds", [])],
            "--coordinators": [service],
            "--holder": ["$(POD_NAME)"],
            "--active-requests-command": [fs["activeRequestsCommand"]] if fs.get("activeRequestsCommand") else [],
            "--active-requests": list(fs.get("activeRequests", [])),
        }
        for option, expected in want.items():
            if option_values(cmd, option) != expected:
                problems.append(f"{name}: {option} {option_values(cmd, option)} != {expected}: {cmd}")
        env = {e["name"]: e for e in ctr.get("env", [])}
        if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            problems.append(f"{name}: POD_NAME (the lease holder) is not the pod name")
        # the Lustre mount from the host, read-only, at the same path
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts = [m for m in ctr.get("volumeMounts", []) if m["mountPath"] == fs["mount"]]
        host = volumes.get(mounts[0]["name"], {}).get("hostPath", {}).get("path") if mounts else None
        if host != fs["mount"]:
            problems.append(f"{name}: host {fs['mount']} is not mounted at {fs['mount']} (hostPath {host})")
        elif not mounts[0].get("readOnly"):
            problems.append(f"{name}: the Lustre mount is writable; the bridge writes no file")
        # the journal on a volume of its own
        journal = option_values(cmd, "--journal")
        jdir = str(Path(journal[0]).parent) if journal else "/var/lib/hsm-bridge"
        jmount = next((m for m in ctr.get("volumeMounts", []) if m["mountPath"] == jdir), None)
        if jmount is None or "emptyDir" not in volumes.get(jmount["name"], {}):
            problems.append(f"{name}: the journal directory {jdir} is not an emptyDir volume")
        csc = ctr.get("securityContext", {})
        caps = csc.get("capabilities", {})
        if csc.get("privileged") or caps.get("drop") != ["ALL"] or set(caps.get("add", [])) != BRIDGE_CAPABILITIES:
            problems.append(f"{name}: capabilities are not exactly {sorted(BRIDGE_CAPABILITIES)}: {csc}")
        if not csc.get("readOnlyRootFilesystem"):
            problems.append(f"{name}: the root file system is writable")
        if pod_spec.get("nodeSelector", {}) != b["nodeSelector"]:
            problems.append(f"{name}: nodeSelector {pod_spec.get('nodeSelector')} != bridge.nodeSelector")
        if pod_spec.get("tolerations", []) != b["tolerations"]:
            problems.append(f"{name}: tolerations {pod_spec.get('tolerations')} != bridge.tolerations")
    return problems


def hsm_bridge_from(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Any:
    """``hsm-bridge``'s own ``main()`` on *argv* (the words after the
    program name), with *environ* as the environment it reads defaults from
    (HSM_COORDINATORS, HSM_CLUSTER), carried as far as it goes without
    Lustre: the parser and every check ``main`` and the ``Bridge`` make
    (core settings, coordinator addresses and cluster id, lease ttl, the
    active-requests command), the journal not opened and ``run`` returning
    at once. Returns the ``bridge.daemon.Bridge`` built (``.config``,
    ``.client``); raises AssertionError with hsm-bridge's message when it
    would refuse the command line (exit status 2)."""
    import asyncio
    import contextlib
    import io
    from unittest import mock

    import bridge.daemon as daemon
    from bridge import cli

    class NoJournal:
        def __init__(self, path: Path) -> None:
            self.path = path

    built: list[Any] = []
    real_init = daemon.Bridge.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        built.append(self)

    async def run(self: Any, stop: asyncio.Event) -> int:
        return 0

    env = {k: v for k, v in os.environ.items() if k not in ("HSM_COORDINATORS", "HSM_CLUSTER")}
    env.update(environ or {})
    err = io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stderr(err), \
            mock.patch.object(daemon, "Journal", NoJournal), mock.patch.object(daemon.Bridge, "__init__", init), \
            mock.patch.object(daemon.Bridge, "run", run):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:
            raise AssertionError(f"hsm-bridge refuses {shlex.join(argv)} (exit {e.code}):\n{err.getvalue()}") from None
    if rc != 0 or len(built) != 1:
        raise AssertionError(f"hsm-bridge {shlex.join(argv)}: exit {rc}, {len(built)} bridge(s) built\n{err.getvalue()}")
    return built[0]


def env_file(text: str) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile= (KEY=VALUE lines; no
    quoting is used in ours)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, sep, value = line.partition("=")
            if not sep:
                raise AssertionError(f"not KEY=VALUE: {line!r}")
            out[key.strip()] = value.strip()
    return out


def _test_hook_problems(docs: list[dict[str, Any]], values: Mapping[str, Any], clients: list[Mapping[str, Any]],
                        namespace: str, domain: str) -> list[str]:
    hooks = [d for d in _by_kind(docs, "Pod")
             if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    if not values["tests"]["enabled"]:
        return [f"tests.enabled is false but {_obj_name(h)} is rendered" for h in hooks]
    if len(hooks) != 1:
        return [f"expected one helm test hook pod, found {len(hooks)}"]
    ctr = hooks[0]["spec"]["containers"][0]
    cmd = list(ctr.get("command", [])) + list(ctr.get("args", []))
    problems = []
    if not cmd or cmd[0] != "hsmctl" or "status" not in cmd:
        problems.append(f"the helm test pod does not run hsmctl status: {cmd}")
    if clients:
        svc = clients[0]["metadata"]["name"]
        want = f"{svc}.{namespace}.svc.{domain}:{int(values['service']['port'])}"
        if "--coordinators" not in cmd or cmd[cmd.index("--coordinators") + 1] != want:
            problems.append(f"the helm test pod does not ask the release's Service {want}: {cmd}")
    return problems


# --------------------------------------------------------------------------
# YAML lint


def yamllint(paths: Iterable[Path], *, home: Path) -> subprocess.CompletedProcess[str]:
    return run([venv_tool("yamllint"), "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
               env=tool_env(home))


def chart_yaml_files(chart: Path = CHART) -> list[Path]:
    """The chart's plain YAML files (templates are Go templates, linted after rendering)."""
    return [chart / "Chart.yaml", chart / "values.yaml", *ci_values_files(chart)]


def ansible_yaml_files(ansible: Path = ANSIBLE) -> list[Path]:
    return sorted(p for p in ansible.rglob("*.yml") if "credentials" not in p.parts)


# --------------------------------------------------------------------------
# Ansible


def syntax_check(ansible: Path, *, home: Path) -> subprocess.CompletedProcess[str]:
    return run([venv_tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml", "site.yml"],
               cwd=ansible, env=tool_env(home))


def ansible_lint(ansible: Path, *, home: Path) -> subprocess.CompletedProcess[str]:
    env = tool_env(home)
    return run([venv_tool("ansible-lint"), "--offline", "--nocolor", "--format=pep8", "--project-dir", str(ansible)],
               cwd=ansible, env=env, timeout=180)


@dataclass(frozen=True, slots=True)
class CoordinatorHost:
    name: str
    api_port: int
    raft_port: int
    dir: Path

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def unit(self) -> Path:
        return self.dir / "units" / "hsm-coordinator.service"

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"


@dataclass(frozen=True, slots=True)
class MoverHost:
    name: str
    dir: Path

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def unit(self) -> Path:
        return self.dir / "units" / "agentd.service"


@dataclass(frozen=True, slots=True)
class BridgeHost:
    """A Lustre client running hsm-bridge; *vars* are its host variables
    (hsm_bridge_* settings) in the inventory."""

    name: str
    dir: Path
    vars: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def env_file(self) -> Path:
        return self.config_dir / "hsm-bridge.env"

    @property
    def unit(self) -> Path:
        return self.dir / "units" / "hsm-bridge.service"


def _current_user_group() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def render_roles(tmp: Path, coordinators: list[CoordinatorHost], movers: list[MoverHost], *,
                 ansible: Path = ANSIBLE, fs_root: Path, archive_root: Path,
                 shards: int = 2, extra_vars: Mapping[str, Any] | None = None,
                 static_out: Path | None = None,
                 bridges: Sequence[BridgeHost] = (),
                 coordinator_vars: Mapping[str, Mapping[str, Any]] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the roles' ``config`` entry point with Ansible against local
    hosts: each coordinator on 127.0.0.1 with its own ports and directories
    under *tmp*, each mover and each bridge likewise (*coordinator_vars*:
    more host variables of the coordinators, by name). Returns the
    ansible-playbook process."""
    user, group = _current_user_group()
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "hsm_coordinator_prefix": sys.prefix,
        "hsm_coordinator_manage_service": False,
        "hsm_agentd_manage_service": False,
        "hsm_coordinator_config_owner": user,
        "hsm_coordinator_system_user": user,
        "hsm_coordinator_system_group": group,
        "hsm_coordinator_raft_password": "deploy-test-raft-password",
        "hsm_coordinator_shards": shards,
        "hsm_coordinator_heartbeat_interval": 1,
        "hsm_coordinator_agent_grace": 5,
        "hsm_agentd_prefix": sys.prefix,
        "hsm_agentd_config_owner": user,
        "hsm_agentd_fs_root": str(fs_root),
        "hsm_agentd_archive_root": str(archive_root),
        "hsm_agentd_drain_timeout": 5,
        "hsm_bridge_prefix": sys.prefix,
        "hsm_bridge_config_owner": user,
        "hsm_bridge_manage_service": False,
        "hsm_bridge_mount": str(fs_root),
        # mutual TLS: the roles make the CA and the certificates with this
        # checkout's hsm-coordinator, in the test's own directory
        "hsm_coordinator_certs_command": str(BIN / "hsm-coordinator"),
        "hsm_agentd_certs_command": str(BIN / "hsm-coordinator"),
        "hsm_bridge_certs_command": str(BIN / "hsm-coordinator"),
        "hsm_coordinator_tls_ca_dir": str(tmp / "ca"),
        "hsm_agentd_tls_ca_dir": str(tmp / "ca"),
        "hsm_bridge_tls_ca_dir": str(tmp / "ca"),
        "hsm_deploy_roles": str(ansible / "roles"),
        "hsm_deploy_static_out": str(static_out or tmp / "static-units"),
        **(extra_vars or {}),
    }
    inventory = {"all": {"vars": common, "children": {
        "hsm_coordinators": {"hosts": {
            h.name: {
                "hsm_coordinator_address": "127.0.0.1",
                "hsm_coordinator_api_port": h.api_port,
                "hsm_coordinator_raft_port": h.raft_port,
                "hsm_coordinator_listen": h.api,
                "hsm_coordinator_raft_bind": "127.0.0.1",
                "hsm_coordinator_config_dir": str(h.config_dir),
                "hsm_coordinator_data_dir": str(h.data_dir),
                "hsm_coordinator_unit_dir": str(h.unit.parent),
                **(coordinator_vars or {}).get(h.name, {}),
            } for h in coordinators}},
        "hsm_movers": {"hosts": {
            m.name: {
                "hsm_agentd_config_dir": str(m.config_dir),
                "hsm_agentd_unit_dir": str(m.unit.parent),
            } for m in movers}},
        "hsm_bridges": {"hosts": {
            b.name: {
                "hsm_bridge_config_dir": str(b.config_dir),
                "hsm_bridge_unit_dir": str(b.unit.parent),
                **b.vars,
            } for b in bridges}},
        "static_units": {"hosts": {"static": {}} if static_out is not None else {}},
    }}}
    hosts: list[CoordinatorHost | MoverHost | BridgeHost] = [*coordinators, *movers, *bridges]
    for h in hosts:
        h.unit.parent.mkdir(parents=True, exist_ok=True)
    if static_out is not None:
        static_out.mkdir(parents=True, exist_ok=True)
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory))
    env = tool_env(tmp)
    env["ANSIBLE_ROLES_PATH"] = str(ansible / "roles")
    return run([venv_tool("ansible-playbook"), "-i", str(inv), str(RENDER_PLAYBOOK)], env=env, timeout=180)


def write_static_units() -> None:
    """Regenerate deploy/systemd/ from the role templates and defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        proc = render_roles(Path(tmp), [], [], fs_root=Path(tmp), archive_root=Path(tmp), static_out=out)
        if proc.returncode != 0:
            raise SystemExit(output(proc))
        STATIC_UNITS.mkdir(exist_ok=True)
        for unit in sorted(out.iterdir()):
            shutil.copyfile(unit, STATIC_UNITS / unit.name)
            print(f"wrote {STATIC_UNITS / unit.name}")


# --------------------------------------------------------------------------
# systemd


def unit_directives(text: str) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of each directive of a unit file."""
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        yield section, key.strip(), value.strip()


def unit_values(text: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_directives(text) if s == section and k == key]


def exec_start(text: str) -> list[str]:
    """The ExecStart command line as systemd splits it (no specifiers or
    $VARIABLES are used by our units, and none may appear; ``%%`` and ``$$``
    are a literal ``%`` and ``$``)."""
    lines = unit_values(text, "Service", "ExecStart")
    if len(lines) != 1:
        raise AssertionError(f"expected one ExecStart=, found {lines}")
    line = lines[0].lstrip("@-:+!")
    percent, dollar = "\x00percent\x00", "\x00dollar\x00"
    line = line.replace("%%", percent).replace("$$", dollar)
    if re.search(r"%[a-zA-Z]|\$", line):
        raise AssertionError(f"ExecStart uses specifiers or variables this test cannot expand: {line}")
    return [word.replace(percent, "%").replace(dollar, "$") for word in shlex.split(line)]


def systemd_verify(units: Iterable[Path], *, home: Path) -> list[str]:
    """``systemd-analyze verify``: its complaints about *units*. It exits 0
    for a misspelt key or a bad value ("..., ignoring"), so every line it
    prints about one of our units counts, not only the exit status."""
    units = list(units)
    tool = system_tool("systemd-analyze", "systemd")
    proc = run([tool, "verify", "--man=no", *map(str, units)], env=tool_env(home))
    names = {u.name for u in units} | {str(u) for u in units}
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if any(name in line for name in names)]
    if proc.returncode != 0 and not problems:
        problems.append(output(proc))
    return problems


_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def systemd_exposure(unit: Path, *, home: Path) -> tuple[float, str]:
    """``systemd-analyze security --offline=true``: the overall exposure
    (0 best .. 10 worst) and the report."""
    tool = system_tool("systemd-analyze", "systemd")
    proc = run([tool, "security", "--offline=true", "--no-pager", str(unit)], env=tool_env(home))
    m = _EXPOSURE.search(proc.stdout)
    if m is None:
        raise AssertionError(f"no exposure level in the report:\n{output(proc)}")
    return float(m.group(1)), proc.stdout


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-static-units"]:
        write_static_units()
    else:
        print("usage: python -m tests.deploy.deploylib --write-static-units", file=sys.stderr)
        sys.exit(2)
