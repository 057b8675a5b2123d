"""The Grafana dashboard (deploy/grafana/hsm-coordinator.json, shipped by
the chart as dashboards/hsm-coordinator.json) and the chart's alert rules
(templates/prometheusrule.yaml): every metric their PromQL names is one the
exporters really export. The list comes from a real one-replica
coordinator and a real agentd, with metrics on, scraped over HTTP after
they moved files (tests/test_metrics.py's way), so it cannot drift from
coordinator/metrics.py and agentd/metrics.py.

Metric names are read from the PromQL with a regex over identifiers that
start with ``hsm_`` (quoted strings removed first) and compared with the
sample names of the scrape, which carry the exposition's suffixes: a
counter ``hsm_x`` is ``hsm_x_total``, a histogram ``hsm_x_bucket``,
``hsm_x_sum`` and ``hsm_x_count``. A counter or histogram with labels has
no sample until it is first counted, so each family the scrape declares
(``# TYPE``) also gives the sample names its type implies."""

from __future__ import annotations

import copy
import json
import re
import shutil
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import until
from tests.deploy import deploylib as dl
from tests.test_agentd import agent_config, registered, running_agent, submit, tree  # noqa: F401 - fixture
from tests.test_metrics import scrape

KiB = 1024

#: what a dashboard panel's and a template variable's datasource must be:
#: the dashboard's own datasource variable, so that one import (or the
#: Grafana sidecar, which resolves no __inputs) works with any Prometheus
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

#: labels Prometheus (or the Prometheus Operator's ServiceMonitor) puts on
#: every series it scrapes, besides the exporters' own
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})

#: the values that render the PrometheusRule: the defaults, and the CI
#: values with a selector, extra labels and another window
RULE_VALUES = {
    "defaults": {"prometheusRule": {"enabled": True}},
    "five-replicas-values.yaml": dl.read_values(dl.CHART / "ci" / "five-replicas-values.yaml"),
}


# --------------------------------------------------------------------------
# PromQL, read with regexes (there is no PromQL parser here)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![\w:])hsm_[A-Za-z0-9_:]*")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_BRACES = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def _unquoted(expr: str) -> str:
    """*expr* with every string literal emptied (a label value may contain anything)."""
    return _STRING.sub('""', expr)


def promql_metrics(expr: str) -> set[str]:
    """The hsm_* identifiers of a PromQL expression: metric names as
    sample names (``hsm_x_total``, ``hsm_x_bucket``...)."""
    return set(_METRIC.findall(_unquoted(expr)))


def promql_labels(expr: str) -> set[str]:
    """Label names an expression groups or matches on."""
    text = _unquoted(expr)
    labels = {name.strip() for group in _GROUPING.findall(text) for name in group.split(",") if name.strip()}
    for inside in _BRACES.findall(text):
        labels.update(_MATCHER.findall(inside))
    return labels


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _unquoted(expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


@dataclass(frozen=True)
class Exported:
    """What the exporters serve: sample names (with their suffixes) and
    the label names seen on them."""

    replica: frozenset[str]
    agentd: frozenset[str]
    labels: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        return self.replica | self.agentd


def query_problems(where: str, exprs: Iterable[str], names: Iterable[str], labels: Iterable[str]) -> list[str]:
    """Metrics an expression names that are not exported (*names*: sample
    names), labels no exporter or target puts on a series, unbalanced
    brackets, expressions that name no hsm_ metric at all."""
    names, labels = set(names), set(labels) | TARGET_LABELS
    problems = []
    for expr in exprs:
        metrics = promql_metrics(expr)
        if not metrics:
            problems.append(f"{where}: names no hsm_ metric: {expr}")
        for m in sorted(metrics - names):
            hint = ""
            if f"{m}_total" in names:
                hint = f" (a counter: {m}_total)"
            problems.append(f"{where}: {m} is not exported{hint}: {expr}")
        for label in sorted(promql_labels(expr) - labels):
            problems.append(f"{where}: no exported series has a label {label!r}: {expr}")
        if not balanced(expr):
            problems.append(f"{where}: unbalanced brackets: {expr}")
    return problems


# --------------------------------------------------------------------------
# the dashboard


def load_dashboard(path: Path = dl.DASHBOARD) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' (collapsed) panels included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            yield f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("expr", "")
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            yield f"variable {v.get('name')}", q.get("query", "") if isinstance(q, dict) else str(q)


def dashboard_metric_problems(dashboard: Mapping[str, Any], exported: Exported) -> list[str]:
    problems = []
    for where, expr in dashboard_queries(dashboard):
        problems += query_problems(where, [expr], exported.names, exported.labels)
    return problems


def dashboard_structure_problems(dashboard: Mapping[str, Any]) -> list[str]:
    """Grafana 10's schema as far as this dashboard uses it: titles, unique
    ids, the templated datasource, defined variables, a grid without
    overlaps."""
    problems = []
    if not 36 <= int(dashboard.get("schemaVersion", 0)) <= 39:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} is not Grafana 10's (36-39)")
    for key in ("title", "uid"):
        if not dashboard.get(key):
            problems.append(f"the dashboard has no {key}")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"no datasource variable DS_PROMETHEUS of Prometheus data sources: {ds}")
    for name, v in variables.items():
        if v.get("type") == "query" and v.get("datasource") != DATASOURCE:
            problems.append(f"variable {name}: datasource {v.get('datasource')} is not {DATASOURCE}")
    seen: dict[Any, str] = {}
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dashboard):
        title = p.get("title")
        what = f"panel {p.get('id')} {title!r}"
        if not isinstance(title, str) or not title.strip():
            problems.append(f"{what}: no title")
        pid = p.get("id")
        if not isinstance(pid, int):
            problems.append(f"{what}: id {pid!r} is not an integer")
        elif pid in seen:
            problems.append(f"{what}: id {pid} is also panel {seen[pid]!r}'s")
        else:
            seen[pid] = str(title)
        g = p.get("gridPos", {})
        x, y, w, h = (int(g.get(k, -1)) for k in ("x", "y", "w", "h"))
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            problems.append(f"{what}: gridPos {g} is off the 24-column grid")
        for cx in range(max(x, 0), min(x + w, 24)):
            for cy in range(max(y, 0), max(y, 0) + max(h, 0)):
                if (cx, cy) in cells:
                    problems.append(f"{what}: overlaps panel {cells[(cx, cy)]!r}")
                    break
                cells[(cx, cy)] = str(title)
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("description"):
            problems.append(f"{what}: no description")
        if p.get("datasource") != DATASOURCE:
            problems.append(f"{what}: datasource {p.get('datasource')} is not {DATASOURCE}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{what}: no query")
        for t in targets:
            if t.get("datasource") != DATASOURCE:
                problems.append(f"{what} {t.get('refId')}: datasource {t.get('datasource')} is not {DATASOURCE}")
            if not str(t.get("expr", "")).strip():
                problems.append(f"{what} {t.get('refId')}: empty expr")
    for where, expr in dashboard_queries(dashboard):
        for a, b in _VARIABLE.findall(expr):
            name = a or b
            if not name.startswith("__") and name not in variables:
                problems.append(f"{where}: ${name} is not a variable of the dashboard: {expr}")
    return problems


# --------------------------------------------------------------------------
# the alert rules


def rendered_rules(values: Mapping[str, Any], chart: Path = dl.CHART) -> list[dict[str, Any]]:
    """The rules of the PrometheusRule the chart renders with *values*."""
    docs = dl.manifests(dl.render_chart(chart, values))
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, [d["kind"] for d in docs]
    return [r for g in rules[0]["spec"]["groups"] for r in g["rules"]]


def rule_problems(rules: Iterable[Mapping[str, Any]], exported: Exported) -> list[str]:
    """Every alert reads only what the replicas export (the chart scrapes
    the replicas, not agentd), says how bad it is and what happened."""
    problems = []
    for r in rules:
        name = r.get("alert") or r.get("record")
        where = f"rule {name}"
        problems += query_problems(where, [str(r.get("expr", ""))], exported.replica, exported.labels)
        if r.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{where}: severity {r.get('labels', {}).get('severity')!r}")
        notes = r.get("annotations", {})
        if not notes.get("summary") or not notes.get("description"):
            problems.append(f"{where}: no summary or description")
        for text in notes.values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in exported.labels | TARGET_LABELS:
                    problems.append(f"{where}: annotation names $labels.{label}, not a label: {text}")
    return problems


# --------------------------------------------------------------------------
# the real exporters


def _families(port: int) -> dict[str, str]:
    """GET /metrics: {family name: type}, families without samples too."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def _sample_names(port: int) -> tuple[set[str], set[str]]:
    """Sample names (those served, and those each declared family's type
    implies) and label names of an exporter's hsm_ series."""
    samples = scrape(port)
    names = {name for name, _ in samples}
    for family, kind in _families(port).items():
        names |= {family + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    labels = {label for name, lbls in samples if name.startswith("hsm_") for label, _ in lbls}
    return {n for n in names if n.startswith("hsm_")}, labels


def _merge(*scrapes: tuple[set[str], set[str]]) -> tuple[set[str], set[str]]:
    return set().union(*(n for n, _ in scrapes)), set().union(*(lbl for _, lbl in scrapes))


_EXPORTED: list[Exported] = []


@pytest.fixture
def exported(request: pytest.FixtureRequest) -> Exported:
    """The exporters' names, from a real replica (two shards, metrics on)
    and a real agentd, scraped over HTTP: the replica while four archives
    wait for an agent (the queues have series then), both after the agent
    archived three and failed the fourth. Made once per session (the first
    test that asks starts them)."""
    if not _EXPORTED:
        factory = request.getfixturevalue("coordinator_factory")
        files = request.getfixturevalue("tree")
        c = factory(shards=2, metrics_listen="127.0.0.1:0")
        port = c.node.metrics_port
        ok = [files.add(f"f{i}", n) for i, n in enumerate((1, 64 * KiB, 1024 * KiB + 7))]
        gone, gone_fid, _ = files.add("gone", 10)
        gone.unlink()  # its archive fails in the mover
        with c.client(timeout=10) as client:
            client.register_event_consumer("rbh")  # the event log's series (consumer lag, missed)
            ids = [submit(client, fid, "archive") for _, fid, _ in ok]
            bad = submit(client, gone_fid, "archive")
            waiting = _sample_names(port)
            with running_agent(agent_config(c, files, metrics_listen="127.0.0.1:0")) as agent:
                until(lambda: registered(client, "a1"), 10, "agent a1 to register")
                client.wait([*ids, bad], deadline=30)
                replica, replica_labels = _merge(waiting, _sample_names(port))
                agentd, agentd_labels = _sample_names(agent.metrics_port)
        # the exercise produced what the panels read
        for name in ("hsm_queue_depth", "hsm_agent_connected", "hsm_actions_finished_total",
                     "hsm_action_run_seconds_bucket", "hsm_grpc_calls_total", "hsm_raft_has_leader"):
            assert name in replica, sorted(replica)
        for name in ("hsm_agentd_bytes_total", "hsm_agentd_mover_errors_total", "hsm_agentd_transfer_seconds_bucket"):
            assert name in agentd, sorted(agentd)
        _EXPORTED.append(Exported(frozenset(replica), frozenset(agentd), frozenset(replica_labels | agentd_labels)))
    return _EXPORTED[0]


# --------------------------------------------------------------------------
# tests


def test_the_chart_ships_the_same_dashboard() -> None:
    """One source of truth: deploy/grafana/hsm-coordinator.json (to import)
    and the chart's dashboards/hsm-coordinator.json (Helm cannot read files
    outside the chart) are the same bytes."""
    chart_copy = dl.CHART / dl.CHART_DASHBOARD
    assert chart_copy.read_bytes() == dl.DASHBOARD.read_bytes(), (
        f"{chart_copy} differs from {dl.DASHBOARD}: edit the latter and copy it over the former")
    assert not chart_copy.is_symlink() and not dl.DASHBOARD.is_symlink()


def test_dashboard_is_grafana_10_json_with_the_templated_datasource() -> None:
    dashboard = load_dashboard()
    assert dashboard_structure_problems(dashboard) == []
    panels = [p for p in all_panels(dashboard) if p.get("type") != "row"]
    assert len(panels) >= 20
    titles = " ".join(p["title"].lower() for p in all_panels(dashboard))
    for topic in ("queue depth", "ended per second", "failures by errno", "requeues", "submit to start",
                  "start to end", "without a leader", "applied", "journal bytes", "unwritable", "agents connected",
                  "slots", "running", "credits", "transfer rate", "mover errors", "calls per second"):
        assert topic in titles, f"no panel about {topic}"


def test_dashboard_structure_check_finds_its_faults() -> None:
    dashboard = load_dashboard()
    broken = copy.deepcopy(dashboard)
    panels = [p for p in all_panels(broken) if p.get("type") != "row"]
    panels[1]["id"] = panels[0]["id"]
    panels[2]["title"] = ""
    panels[3]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    panels[4]["targets"][0]["expr"] = panels[4]["targets"][0]["expr"].replace("$job", "$cluster")
    problems = dashboard_structure_problems(broken)
    assert any(f"id {panels[0]['id']} is also panel" in p for p in problems), problems
    assert any("no title" in p for p in problems), problems
    assert any("datasource {'type': 'prometheus', 'uid': 'prometheus'}" in p for p in problems), problems
    assert any("$cluster is not a variable" in p for p in problems), problems


def test_every_dashboard_query_names_exported_metrics(exported: Exported) -> None:
    dashboard = load_dashboard()
    assert dashboard_metric_problems(dashboard, exported) == []
    used = {m for _, expr in dashboard_queries(dashboard) for m in promql_metrics(expr)}
    assert {n for n in used if n.startswith("hsm_agentd_")} and used & exported.replica


def test_a_misspelt_metric_in_the_dashboard_fails_the_check(exported: Exported) -> None:
    dashboard = load_dashboard()
    targets = [t for p in all_panels(dashboard) for t in p.get("targets", [])]
    depth = next(t for t in targets if "hsm_queue_depth" in t["expr"])
    depth["expr"] = depth["expr"].replace("hsm_queue_depth", "hsm_queue_dept")
    ended = next(t for t in targets if "hsm_actions_finished_total" in t["expr"])
    ended["expr"] = ended["expr"].replace("hsm_actions_finished_total", "hsm_actions_finished")
    byte_rate = next(t for t in targets if "hsm_agentd_bytes_total" in t["expr"])
    byte_rate["expr"] = byte_rate["expr"].replace("by (agent, kind)", "by (agent, knid)")
    problems = dashboard_metric_problems(dashboard, exported)
    assert any("hsm_queue_dept is not exported" in p for p in problems), problems
    assert any("hsm_actions_finished is not exported (a counter: hsm_actions_finished_total)" in p
               for p in problems), problems
    assert any("label 'knid'" in p for p in problems), problems
    assert len(problems) == 3, problems
    # a string that merely contains a metric-like word is not a metric
    assert promql_metrics('sum(hsm_queue_depth{job="hsm_x"})') == {"hsm_queue_depth"}


@pytest.mark.parametrize("values", list(RULE_VALUES), ids=list(RULE_VALUES))
def test_every_alert_names_exported_metrics(values: str, exported: Exported) -> None:
    rules = rendered_rules(RULE_VALUES[values])
    assert rule_problems(rules, exported) == []
    assert sorted(r["alert"] for r in rules) == ["HsmAgentGone", "HsmEventConsumerLagging", "HsmEventConsumerMissed",
                                                 "HsmJournalUnwritable", "HsmLongGcPauses", "HsmQueueNotDraining",
                                                 "HsmReplicaSeesNoLeader", "HsmShardWithoutLeader"]


def test_a_misspelt_metric_in_the_alert_rules_fails_the_check(exported: Exported, tmp_path: Path) -> None:
    chart = tmp_path / "hsm-coordinator"
    shutil.copytree(dl.CHART, chart)
    template = chart / "templates" / "prometheusrule.yaml"
    text = template.read_text()
    assert "hsm_raft_journal_unwritable{{ $s }} == 1" in text
    template.write_text(text.replace("hsm_raft_journal_unwritable{{ $s }} == 1", "hsm_raft_journal_unwriteable{{ $s }} == 1"))
    problems = rule_problems(rendered_rules(RULE_VALUES["defaults"], chart), exported)
    assert problems == ["rule HsmJournalUnwritable: hsm_raft_journal_unwriteable is not exported: "
                        "hsm_raft_journal_unwriteable == 1"], problems
    # agentd's metrics are not the replicas': the chart does not scrape agentd
    assert rule_problems([{"alert": "X", "expr": "rate(hsm_agentd_bytes_total[5m]) == 0",
                           "labels": {"severity": "warning"},
                           "annotations": {"summary": "s", "description": "d"}}], exported) \
        == ["rule X: hsm_agentd_bytes_total is not exported: rate(hsm_agentd_bytes_total[5m]) == 0"]


def test_dashboard_configmap_and_rules_follow_the_values() -> None:
    values = {"grafanaDashboard": {"enabled": True, "label": "dashboards", "labelValue": "hsm",
                                   "labels": {"team": "storage"}},
              "prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "alertLabels": {"team": "storage"},
                                 "selector": 'namespace="hsm", job="hsm-coordinator-headless"',
                                 "agentGoneWindow": "3h", "queueStalledFor": "2h", "gcPauseSeconds": 0.25,
                                 "gcPauseFor": "10m"}}
    docs = dl.manifests(dl.render_chart(dl.CHART, values, namespace="storage"))
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "hsm-coordinator.json" in d.get("data", {}))
    assert cm["metadata"]["namespace"] == "storage"
    assert cm["metadata"]["labels"]["dashboards"] == "hsm" and cm["metadata"]["labels"]["team"] == "storage"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["data"]["hsm-coordinator.json"] == dl.DASHBOARD.read_text()
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert all(r["labels"]["team"] == "storage" for r in rules.values())
    for r in rules.values():
        for selector in re.findall(r"hsm_\w+(\{[^}]*\})?", r["expr"]):
            # the selector's matchers on every series; the pause alert reads full collections only
            extra = ',generation="2"' if r["alert"] == "HsmLongGcPauses" else ""
            assert selector == '{namespace="hsm", job="hsm-coordinator-headless"' + extra + "}", r["expr"]
    assert "[3h]" in rules["HsmAgentGone"]["expr"]
    assert "[2h]" in rules["HsmQueueNotDraining"]["expr"] and rules["HsmQueueNotDraining"]["for"] == "2h"
    gc_rule = rules["HsmLongGcPauses"]
    assert gc_rule["expr"].endswith("> 0.25") and gc_rule["for"] == "10m"
    assert dl.kube_problems(docs, [dl.MIN_KUBE]) == []
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values), namespace="storage") == []
    # neither by default
    default = dl.manifests(dl.render_chart(dl.CHART, {}))
    assert not [d for d in default if d["kind"] == "PrometheusRule"]
    assert not [d for d in default if d["kind"] == "ConfigMap" and "hsm-coordinator.json" in d.get("data", {})]


def test_prometheusrule_schema_refuses_a_bad_rule() -> None:
    rule = next(d for d in dl.manifests(dl.render_chart(dl.CHART, RULE_VALUES["defaults"]))
                if d["kind"] == "PrometheusRule")
    bad = copy.deepcopy(rule)
    first = bad["spec"]["groups"][0]["rules"][0]
    first["for"] = "2 minutes"
    first["record"] = "hsm:x"
    first["expresion"] = first.pop("expr")
    problems = dl.kube_problems([bad], [dl.MIN_KUBE])
    assert any("rules.0.for" in p for p in problems), problems
    assert any("'expr' is a required property" in p for p in problems), problems
    assert any("expresion" in p for p in problems), problems
    assert dl.kube_problems([rule], [dl.MIN_KUBE]) == []
