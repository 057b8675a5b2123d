"""The Helm chart: values against values.schema.json, every rendering
(default values and each ci/*-values.yaml) against the Kubernetes schemas,
the conventions a Raft StatefulSet needs, and copies of the chart broken on
purpose to show each check fails. Rendering is done by Helm's own engine
(helm-python-sdk); see deploylib."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator import certs
from hsm.ring import MAX_POINTS
from tests.deploy import deploylib as dl

VALUES_FILES = [None, *dl.ci_values_files()]
IDS = ["default", *(p.name for p in dl.ci_values_files())]


def _overrides(path: Path | None) -> dict[str, Any]:
    return dl.read_values(path) if path else {}


def test_chart_has_ci_values_files() -> None:
    names = {p.name for p in dl.ci_values_files()}
    assert len(names) >= 3, names


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=IDS)
def test_values_match_schema(values_file: Path | None) -> None:
    assert dl.schema_problems(dl.CHART, _overrides(values_file)) == []


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=IDS)
def test_rendered_manifests_are_valid_kubernetes(values_file: Path | None, tmp_path: Path) -> None:
    rendered = dl.render_chart(dl.CHART, _overrides(values_file))
    docs = dl.manifests(rendered)
    assert dl.kube_problems(docs) == []
    # and the rendered YAML is clean YAML (templates themselves are Go templates)
    out = tmp_path / "rendered.yaml"
    out.write_text("\n".join("---\n" + text for path, text in sorted(rendered.items())
                             if not path.endswith("NOTES.txt") and text.strip()))
    proc = dl.yamllint([out], home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=IDS)
def test_rendered_manifests_follow_the_conventions(values_file: Path | None) -> None:
    overrides = _overrides(values_file)
    docs = dl.manifests(dl.render_chart(dl.CHART, overrides))
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, overrides)) == []


def test_default_rendering_in_numbers() -> None:
    """What an admin gets from a plain install: 3 replicas, quorum 2, the
    peer list of pod ordinals, 8 Raft ports, agentd on labelled nodes."""
    docs = dl.manifests(dl.render_chart(dl.CHART, {}, release="hsm-coordinator", namespace="storage"))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "DaemonSet", "PodDisruptionBudget", "Pod", "Secret",
                            "Service", "Service", "ServiceAccount", "StatefulSet"])
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert sts["metadata"]["name"] == "hsm-coordinator"
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "coordinator.yaml" in d["data"])
    cfg = yaml.safe_load(cm["data"]["coordinator.yaml"])
    assert cfg["cluster"]["replicas"][2] == {
        "id": "hsm-coordinator-2",
        "api": "hsm-coordinator-2.hsm-coordinator-headless.storage.svc.cluster.local:7600",
        "raft": "hsm-coordinator-2.hsm-coordinator-headless.storage.svc.cluster.local:7700",
    }
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in ctr["ports"]] == [7600, *range(7700, 7708)]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"hsm-coordinator/mover": "true"}


def test_helm_lint_finds_no_error() -> None:
    helm = dl._helm()
    result = helm.lint(str(dl.CHART))
    assert result["errors"] == [], result
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result


# --------------------------------------------------------------------------
# values.yaml documentation


_KEY = re.compile(r"^(\s*)(?:- )?([A-Za-z0-9_.\"/-]+):(\s|$)")


def uncommented_keys(text: str) -> list[str]:
    """Keys of a values file with no comment line right above them (at the
    same indentation) and no comment at the end of their line."""
    missing = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        if "#" in line.split(":", 1)[1]:
            continue
        prev = lines[i - 1] if i else ""
        if not (prev.strip().startswith("#") and len(prev) - len(prev.lstrip()) == len(m.group(1))):
            missing.append(f"line {i + 1}: {m.group(2)}")
    return missing


def test_every_values_key_is_commented() -> None:
    assert uncommented_keys((dl.CHART / "values.yaml").read_text()) == []


def test_uncommented_key_is_found() -> None:
    text = "# the image\nimage:\n  # name\n  repository: x\n  tag: y\n"
    assert uncommented_keys(text) == ["line 5: tag"]


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        assert sub.get("description"), f"values.schema.json: {path} has no description"
        if sub.get("type") == "object" and "properties" in sub:
            out |= _schema_paths(sub, path + ".")
    return out


def _value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            out |= _value_paths(value, sub, path + ".")
    return out


def test_schema_describes_exactly_the_values() -> None:
    schema = json.loads((dl.CHART / "values.schema.json").read_text())
    values = dl.read_values(dl.CHART / "values.yaml")
    assert _value_paths(values, schema) == _schema_paths(schema) - {"global"}


# --------------------------------------------------------------------------
# bad values are refused, by the schema or by the chart's own checks


@pytest.mark.parametrize("overrides, message", [
    ({"coordinator": {"replicas": 2}}, "coordinator.replicas"),
    ({"coordinator": {"replicas": 4}}, "coordinator.replicas"),
    ({"coordinatr": {"replicas": 3}}, "coordinatr"),
    ({"coordinator": {"apiPort": "7600"}}, "coordinator.apiPort"),
    ({"cluster": {"shards": 0}}, "cluster.shards"),
    ({"agentd": {"kind": "StatefulSet"}}, "agentd.kind"),
    ({"agentd": {"slots": {"archive": 0, "restore": 0, "remove": 0}}}, "agentd.slots"),
    ({"coordinator": {"persistence": {"size": "lots"}}}, "coordinator.persistence.size"),
    ({"bridge": {"filesystems": [{"mount": "/mnt/lustre"}]}}, "bridge.filesystems.0"),
    ({"bridge": {"filesystems": [{"fsname": "toolongname", "mount": "/mnt/lustre"}]}}, "bridge.filesystems.0.fsname"),
    ({"bridge": {"filesystems": [{"fsname": "lustre", "mount": "mnt/lustre"}]}}, "bridge.filesystems.0.mount"),
    ({"bridge": {"filesystems": [{"fsname": "lustre", "mount": "/mnt/lustre", "activeRequestsCommand": "lctl",
                                  "activeRequests": ["/run/ar"]}]}}, "bridge.filesystems.0"),
    ({"bridge": {"leaseTtl": 1}}, "bridge.leaseTtl"),
    ({"bridge": {"replicas": 0}}, "bridge.replicas"),
    ({"grafanaDashboard": {"enabled": "yes"}}, "grafanaDashboard.enabled"),
    ({"prometheusRule": {"noLeaderFor": "2 minutes"}}, "prometheusRule.noLeaderFor"),
    ({"prometheusRule": {"selector": '{namespace="hsm"}'}}, "prometheusRule.selector"),
    ({"cluster": {"replication": 2, "placementReplicas": 3}}, "cluster.replication"),
    ({"cluster": {"replication": 3, "placementReplicas": 0}}, "cluster.placementReplicas"),
    ({"cluster": {"replication": 3, "placementReplicas": 3}, "coordinator": {"replicas": 0}}, "coordinator.replicas"),
    ({"cluster": {"replication": None}, "coordinator": {"replicas": 6}}, "coordinator.replicas"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_schema_refuses_bad_values(overrides: dict[str, Any], message: str) -> None:
    problems = dl.schema_problems(dl.CHART, overrides)
    assert any(message in p for p in problems), problems
    assert any(p.startswith("helm:") for p in problems), "Helm itself must refuse it too"
    with pytest.raises(dl.RenderError):
        dl.render_chart(dl.CHART, overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"coordinator": {"archiveIds": [1, 2], "defaultArchiveId": 3}},
     "coordinator.defaultArchiveId 3 is not one of coordinator.archiveIds [1 2]"),
    ({"coordinator": {"apiPort": 7703}}, "coordinator.apiPort 7703 lies in the Raft port range 7700-7707"),
    ({"coordinator": {"raftPort": 65530}}, "coordinator.raftPort 65530 + cluster.shards 8 goes past port 65535"),
    ({"cluster": {"shards": 300}},  # the coordinator's loader refuses it too (hsm.ring.MAX_POINTS)
     f"cluster.shards 300 x cluster.vnodes 4096 is more than the hash ring's {MAX_POINTS} points; use at most "
     f"{MAX_POINTS // 300}"),
    ({"bridge": {"enabled": True}}, "bridge.enabled is true but bridge.filesystems is empty"),
    ({"tls": {"enabled": False}}, "tls.enabled is false: plain text needs the explicit insecure: true"),
    ({"insecure": True}, "insecure: true and tls.enabled: true both given"),
    ({"agentd": {"kind": "Deployment"}}, "agentd.kind Deployment gives agents random pod names"),
    ({"tls": {"certManager": {"enabled": True}}}, "name the Issuer or ClusterIssuer"),
    ({"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
     "list the mover nodes in tls.certManager.agentNodes"),
    ({"bridge": {"enabled": True, "filesystems": [{"fsname": "fs_a", "mount": "/a"}, {"fsname": "fs-a", "mount": "/b"}]}},
     "bridge.filesystems: fs_a and fs-a would both be served by the Deployment hsm-coordinator-bridge-fs-a"),
    ({"cluster": {"replication": 3}}, "cluster.replication 3 needs cluster.placementReplicas"),
    ({"cluster": {"placementReplicas": 3}}, "cluster.placementReplicas 3 is set without cluster.replication"),
    ({"cluster": {"replication": 5, "placementReplicas": 5}},
     "coordinator.replicas 3 is fewer than cluster.replication 5"),
    ({"cluster": {"replication": 3, "placementReplicas": 2}, "coordinator": {"replicas": 4}},
     "cluster.placementReplicas 2 is fewer than cluster.replication 3"),
    # scaled down below the pods the placement names
    ({"cluster": {"replication": 3, "placementReplicas": 5}, "coordinator": {"replicas": 4}},
     "cluster.placementReplicas 5 is more than coordinator.replicas 4: the placement would name pods that do not exist"),
])
def test_chart_refuses_inconsistent_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(dl.RenderError, match=re.escape(message)):
        dl.render_chart(dl.CHART, overrides)


def test_existing_secret_is_used_and_none_created() -> None:
    docs = dl.manifests(dl.render_chart(dl.CHART, {"cluster": {"existingSecret": "site-raft"}}))
    assert not [d for d in docs if d["kind"] == "Secret"]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    vols = sts["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in vols if "secret" in v and v["name"] != "tls"] == ["site-raft"]


# --------------------------------------------------------------------------
# the MDT bridges


BRIDGES = {"bridge": {"enabled": True, "filesystems": [
    {"fsname": "lustre", "mount": "/mnt/lustre", "archiveIds": [1, 3],
     "activeRequestsCommand": "ssh -o BatchMode=yes mds1 lctl get_param 'mdt.lustre-MDT*.hsm.active_requests'"},
    {"fsname": "scratch", "mount": "/lustre/scratch"},
]}}


def test_bridge_renders_nothing_by_default() -> None:
    listed = {"bridge": {"filesystems": BRIDGES["bridge"]["filesystems"]}}  # listed, not enabled
    for overrides in ({}, listed):
        rendered = dl.render_chart(dl.CHART, overrides)
        assert dl.bridge_workloads(dl.manifests(rendered)) == []
        assert not [d for d in dl.manifests(rendered) if "bridge" in d["metadata"]["name"]]
        assert "hsm-bridge" not in rendered["hsm-coordinator/templates/NOTES.txt"]


def test_bridge_rendering() -> None:
    """bridge.enabled with two file systems: a Deployment each, two pods
    (active and standby), root with exactly the copytool's two
    capabilities, the node's Lustre mount read-only at the same path, the
    release's Service as coordinators, the pod name as lease holder."""
    docs = dl.manifests(dl.render_chart(dl.CHART, BRIDGES, namespace="storage"))
    assert dl.kube_problems(docs) == []
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, BRIDGES), namespace="storage") == []
    deployments = {d["metadata"]["name"]: d for d in dl.bridge_workloads(docs)}
    assert sorted(deployments) == ["hsm-coordinator-bridge-lustre", "hsm-coordinator-bridge-scratch"]
    for fs in BRIDGES["bridge"]["filesystems"]:
        d = deployments[f"hsm-coordinator-bridge-{fs['fsname']}"]
        assert d["kind"] == "Deployment" and d["spec"]["replicas"] == 2
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a standby starts before one stops"
        pod = d["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"hsm-coordinator/bridge": "true"}
        (ctr,) = pod["containers"]
        sc = ctr["securityContext"]
        assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "SYS_ADMIN"]}
        assert "privileged" not in sc
        volumes = {v["name"]: v for v in pod["volumes"]}
        lustre = next(m for m in ctr["volumeMounts"] if m["mountPath"] == fs["mount"])
        assert volumes[lustre["name"]]["hostPath"] == {"path": fs["mount"], "type": "Directory"}
        assert lustre["readOnly"] is True
        cmd = ctr["command"]
        assert cmd[0] == "hsm-bridge"
        assert dl.option_values(cmd, "--coordinators") == ["hsm-coordinator.storage.svc.cluster.local:7600"]
        assert dl.option_values(cmd, "--holder") == ["$(POD_NAME)"]
        assert dl.option_values(cmd, "--archive-id") == [str(i) for i in fs.get("archiveIds", [])]
        assert dl.option_values(cmd, "--journal") == [f"/var/lib/hsm-bridge/{fs['fsname']}.journal"]
        journal = next(m for m in ctr["volumeMounts"] if m["mountPath"] == "/var/lib/hsm-bridge")
        assert "emptyDir" in volumes[journal["name"]]


@pytest.mark.parametrize("values_file", [None, *(p for p in dl.ci_values_files()
                                                 if dl.read_values(p).get("bridge", {}).get("enabled"))],
                         ids=lambda p: p.name if p else "two-filesystems")
def test_chart_bridge_commands_are_understood_by_hsm_bridge(values_file: Path | None, tmp_path: Path) -> None:
    """Each bridge container's command goes through hsm-bridge's own main()
    (parser, settings, lease, client) and means what the values say."""
    overrides = dl.read_values(values_file) if values_file else BRIDGES
    values = dl.merged_values(dl.CHART, overrides)
    b = values["bridge"]
    workloads = {w["spec"]["template"]["metadata"]["labels"][dl.FSNAME_LABEL]: w
                 for w in dl.bridge_workloads(dl.manifests(dl.render_chart(dl.CHART, overrides)))}
    assert sorted(workloads) == sorted(fs["fsname"] for fs in b["filesystems"])
    # the mounted certificate files, made here (role bridge)
    tls = tmp_path / "tls"
    certs.init_ca(tls)
    certs.issue(tls, "hsm-coordinator-bridge", "bridge")
    (tls / "hsm-coordinator-bridge.pem").rename(tls / "bridge.pem")
    (tls / "hsm-coordinator-bridge.key").rename(tls / "bridge.key")
    for fs in b["filesystems"]:
        argv = dl.bridge_command(workloads[fs["fsname"]])[1:]
        assert [dl.option_values(argv, f"--tls-{x}") for x in ("ca", "cert", "key")] == [
            ["/etc/hsm-bridge/tls/ca.pem"], ["/etc/hsm-bridge/tls/bridge.pem"], ["/etc/hsm-bridge/tls/bridge.key"]]
        bridge = dl.hsm_bridge_from([a.replace("/etc/hsm-bridge/tls", str(tls)) for a in argv])
        cfg = bridge.config
        assert str(cfg.mount) == fs["mount"] and cfg.core.fsnames == {fs["fsname"]}
        assert cfg.archive_ids == tuple(fs.get("archiveIds") or (0,))
        assert cfg.holder == "$(POD_NAME)", "Kubernetes puts the pod name there"
        assert bridge.client.addresses == ["hsm-coordinator.hsm.svc.cluster.local:7600"]
        assert bridge.client.cluster_id == (b["clusterId"] or None)
        assert cfg.lease_ttl == b["leaseTtl"] and cfg.report_every == b["reportEvery"]
        assert cfg.active_requests_command == tuple(shlex.split(fs.get("activeRequestsCommand", "")))
        assert cfg.active_requests == tuple(fs.get("activeRequests", ()))
        assert cfg.core.mdt_max_requests == b["mdt"]["maxRequests"]
        assert cfg.core.mdt_active_request_timeout == b["mdt"]["activeRequestTimeout"]
        assert cfg.core.stall_after == b["mdt"]["stallAfter"]
        assert cfg.core.batch_size == b["batchSize"] and cfg.core.max_backlog == b["maxBacklog"]


# --------------------------------------------------------------------------
# copies of the chart broken on purpose: each check must catch its breakage


def _edit(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(chart: Path) -> None:
        path = chart / rel
        text = path.read_text()
        assert old in text, f"{rel}: {old!r} not found (the test needs updating)"
        path.write_text(text.replace(old, new, 1))
    return apply


BREAKAGES = {
    "OrderedReady pods": (
        _edit("templates/statefulset.yaml", "podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady"),
        "conventions", "podManagementPolicy"),
    "PDB below quorum": (
        _edit("templates/pdb.yaml", 'minAvailable: {{ include "hsm.quorum" . }}', "minAvailable: 1"),
        "conventions", "below the quorum"),
    "PDB as maxUnavailable 3 of 5": (
        _edit("templates/pdb.yaml", 'minAvailable: {{ include "hsm.quorum" . }}', "maxUnavailable: 3"),
        "conventions", "below the quorum"),
    "headless Service hides not-ready replicas": (
        _edit("templates/service-headless.yaml", "publishNotReadyAddresses: true", "publishNotReadyAddresses: false"),
        "conventions", "publishNotReadyAddresses"),
    "peer list one short": (
        _edit("templates/configmap.yaml", "until (int $c.replicas)", "until (sub (int $c.replicas) 1 | int)"),
        "conventions", "cluster.replicas is not the pod ordinals"),
    "readiness without quorum meaning": (
        _edit("templates/statefulset.yaml", "                - hsm.v1.Coordinator", '                - ""'),
        "conventions", "readinessProbe"),
    "liveness depends on quorum": (
        _edit("templates/statefulset.yaml",
              '          livenessProbe:\n            {{- if .Values.tls.enabled }}\n            exec:\n              command:\n'
              '                - python\n                - /etc/hsm-coordinator/probe.py\n                - ""',
              "          livenessProbe:\n            {{- if .Values.tls.enabled }}\n            exec:\n              command:\n"
              "                - python\n                - /etc/hsm-coordinator/probe.py\n                - hsm.v1.Coordinator"),
        "conventions", "livenessProbe must not depend on quorum"),
    "replica id not the pod name": (
        _edit("templates/statefulset.yaml", "- $(POD_NAME)", "- coordinator"),
        "conventions", "--replica-id $(POD_NAME)"),
    "Raft ports open to all": (
        _edit("templates/networkpolicy.yaml",
              "      from:\n        - podSelector:\n            matchLabels:\n"
              '              {{- include "hsm.coordinatorSelector" . | nindent 14 }}\n', ""),
        "conventions", "Raft ports open to everyone"),
    "API closed to agentd": (
        _edit("templates/networkpolicy.yaml", "              app.kubernetes.io/instance: {{ $.Release.Name }}\n",
              "              app.kubernetes.io/instance: {{ $.Release.Name }}\n"
              "              app.kubernetes.io/component: coordinator\n"),
        "conventions", "the API port is closed to the agentd pods"),
    "misspelt Kubernetes field": (
        _edit("templates/statefulset.yaml", "containerPort: {{ int $c.apiPort }}", "containerport: {{ int $c.apiPort }}"),
        "kubernetes", "'containerPort' is a required property"),
    "wrong Kubernetes type": (
        _edit("templates/statefulset.yaml", "replicas: {{ int $c.replicas }}", "replicas: {{ int $c.replicas | quote }}"),
        "kubernetes", "spec.replicas"),
    "template syntax error": (
        _edit("templates/service.yaml", "{{ include \"hsm.fullname\" . }}", "{{ include \"hsm.fullname\" . }"),
        "render", "service.yaml"),
    "schema lets unknown keys through": (
        _edit("values.schema.json", '"title": "hsm-coordinator chart values",\n  "type": "object",\n  "additionalProperties": false,',
              '"title": "hsm-coordinator chart values",\n  "type": "object",\n  "additionalProperties": true,'),
        "schema", "coordinatr"),
    "config key the coordinator does not know": (
        _edit("templates/configmap.yaml", "    heartbeat_interval:", "    heartbeat_intervall:"),
        "conventions", "refuses the chart's coordinator.yaml"),
    "password copy readable by the group": (
        _edit("templates/statefulset.yaml", '- "0600"', '- "0640"'),
        "conventions", "without mode 0600"),
    "agentd without the archive": (
        _edit("templates/agentd.yaml", "path: {{ $a.archive.hostPath }}", "path: /srv/elsewhere"),
        "conventions", "does not mount host /archive"),
    "bridge without SYS_ADMIN": (
        _edit("templates/bridge.yaml", "                - DAC_READ_SEARCH\n                - SYS_ADMIN\n",
              "                - DAC_READ_SEARCH\n"),
        "conventions", "capabilities are not exactly"),
    "bridge with every capability": (
        _edit("templates/bridge.yaml", "allowPrivilegeEscalation: false", "privileged: true"),
        "conventions", "capabilities are not exactly"),
    "bridge writes the Lustre mount": (
        _edit("templates/bridge.yaml", "              readOnly: true\n              # A Lustre remount",
              "              # A Lustre remount"),
        "conventions", "the Lustre mount is writable"),
    "bridge mounts the wrong host path": (
        _edit("templates/bridge.yaml", "path: {{ $fs.mount | quote }}", "path: /mnt"),
        "conventions", "host /mnt/lustre is not mounted at /mnt/lustre"),
    "bridge asks a single replica": (
        _edit("templates/bridge.yaml", '{{ include "hsm.serviceAddress" $ | quote }}',
              '{{ printf "%s-0.%s:7600" (include "hsm.fullname" $) (include "hsm.headless" $) | quote }}'),
        "conventions", "--coordinators"),
    "bridge lease holder not the pod": (
        _edit("templates/bridge.yaml", "- $(POD_NAME)", "- bridge"),
        "conventions", "--holder"),
    "one Deployment runs every file system's bridges": (
        _edit("templates/bridge.yaml", '      {{- include "hsm.bridgeSelector" $ | nindent 6 }}\n'
              '      hsm-coordinator/fsname: {{ $fs.fsname | quote }}\n',
              '      {{- include "hsm.bridgeSelector" $ | nindent 6 }}\n'),
        "conventions", "does not pick exactly the bridges of lustre"),
    "bridge journal in the image": (
        _edit("templates/bridge.yaml", "            - name: journal\n              mountPath: /var/lib/hsm-bridge\n", ""),
        "conventions", "the journal directory /var/lib/hsm-bridge is not an emptyDir volume"),
    # with cluster.replication (ci/replication-values.yaml: 4 pods, placement over 3)
    "placement recomputed over every pod": (
        _edit("templates/_helpers.tpl", "{{- $p := int .Values.cluster.placementReplicas -}}\n{{- $held",
              "{{- $p := int .Values.coordinator.replicas -}}\n{{- $held"),
        "conventions", "cluster.placement is not the spread of 8 groups of 3 over the first 3 pods",
        "replication-values.yaml"),
    "placement not written out": (
        _edit("templates/configmap.yaml", "      replication: {{ int .Values.cluster.replication }}\n", ""),
        "conventions", "cluster.replication None != 3", "replication-values.yaml"),
    "PDB lets a group of 3 lose two members": (
        _edit("templates/pdb.yaml", "maxUnavailable: {{ div (sub (int $r) 1) 2 }}", "maxUnavailable: {{ sub (int $r) 1 }}"),
        "conventions", "at most 1 may be down at once", "replication-values.yaml"),
    "PDB of a quorum of the pods with groups": (
        _edit("templates/pdb.yaml", "maxUnavailable: {{ div (sub (int $r) 1) 2 }}", 'minAvailable: {{ include "hsm.quorum" . }}'),
        "conventions", "keeps 4 of 6 replicas available, below the quorum of 5",
        {"cluster": {"replication": 3, "placementReplicas": 3}, "coordinator": {"replicas": 6}}),
}


def _find(problems: list[str], needle: str) -> bool:
    return any(needle in p for p in problems)


@pytest.mark.parametrize("breakage", list(BREAKAGES), ids=list(BREAKAGES))
def test_broken_chart_copy_fails_its_check(breakage: str, tmp_path: Path) -> None:
    apply, check, needle, *values = BREAKAGES[breakage]
    chart = tmp_path / "hsm-coordinator"
    shutil.copytree(dl.CHART, chart)
    apply(chart)
    # five-replicas has every optional object; else a ci file or the values given
    given = values[0] if values else "five-replicas-values.yaml"
    overrides = given if isinstance(given, dict) else dl.read_values(dl.CHART / "ci" / given)
    if check == "render":
        with pytest.raises(dl.RenderError, match=needle):
            dl.render_chart(chart, overrides)
        return
    if check == "schema":
        bad = {"coordinatr": {"replicas": 3}}
        assert not _find(dl.schema_problems(chart, bad), needle), "the broken schema still refuses it"
        assert _find(dl.schema_problems(dl.CHART, bad), needle)
        return
    docs = dl.manifests(dl.render_chart(chart, overrides))
    values = dl.merged_values(chart, overrides)
    problems = dl.kube_problems(docs) if check == "kubernetes" else dl.convention_problems(docs, values)
    assert _find(problems, needle), problems
    # the unbroken chart passes the same check
    good = dl.manifests(dl.render_chart(dl.CHART, overrides))
    assert (dl.kube_problems(good) if check == "kubernetes" else dl.convention_problems(good, values)) == []


def test_broken_values_yaml_fails_yamllint(tmp_path: Path) -> None:
    chart = tmp_path / "hsm-coordinator"
    shutil.copytree(dl.CHART, chart)
    text = (chart / "values.yaml").read_text()
    (chart / "values.yaml").write_text(text.replace("  tag: \"\"\n", "  tag: \"\"\n  tag: latest   \n", 1))
    proc = dl.yamllint(dl.chart_yaml_files(chart), home=tmp_path)
    assert proc.returncode != 0
    assert "duplication of key" in proc.stdout and "trailing-spaces" in proc.stdout, dl.output(proc)
    proc = dl.yamllint(dl.chart_yaml_files(), home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)


# --------------------------------------------------------------------------
# mutual TLS


def test_tls_is_on_by_default_from_a_secret() -> None:
    """A plain install serves mutual TLS: coordinator.yaml names the files of
    the Secret <fullname>-tls mounted in every replica (and the test pod),
    agentd uses its node's certificate from <fullname>-agentd-tls, and the
    probes check health over TLS with the replica's own certificate."""
    rendered = dl.render_chart(dl.CHART, {}, namespace="storage")
    docs = dl.manifests(rendered)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "coordinator.yaml" in d["data"])
    cfg = yaml.safe_load(cm["data"]["coordinator.yaml"])
    assert cfg["tls"] == {"ca": "/etc/hsm-coordinator/tls/ca.pem", "cert": "/etc/hsm-coordinator/tls/{replica_id}.pem",
                          "key": "/etc/hsm-coordinator/tls/{replica_id}.key"}
    assert "insecure" not in cfg and "probe.py" in cm["data"]
    compile(cm["data"]["probe.py"], "probe.py", "exec")
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "hsm-coordinator-tls", "defaultMode": 0o440}} in pod["volumes"]
    ctr = pod["containers"][0]
    assert ctr["readinessProbe"]["exec"]["command"] == ["python", dl.PROBE_SCRIPT, "hsm.v1.Coordinator"]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["HSM_PROBE_HOST"] == "$(POD_NAME).hsm-coordinator-headless.storage.svc.cluster.local"
    ds = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert dl.option_values(ds["containers"][0]["command"], "--tls-cert") == ["/etc/hsm-agentd/tls/$(NODE_NAME).pem"]
    assert next(v for v in ds["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "hsm-coordinator-agentd-tls"
    test_pod = next(d for d in docs if d["kind"] == "Pod")["spec"]
    assert next(v for v in test_pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "hsm-coordinator-tls"
    assert not [d for d in docs if d["kind"] == "Certificate"]
    assert "WARNING" not in next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART), namespace="storage") == []


def test_tls_from_cert_manager() -> None:
    values = {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "site-ca", "kind": "ClusterIssuer"},
                                      "agentNodes": ["mover01", "mover02"]}}, **BRIDGES}
    docs = dl.manifests(dl.render_chart(dl.CHART, values))
    certs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    assert sorted(certs) == sorted([*(f"hsm-coordinator-tls-hsm-coordinator-{i}" for i in range(3)),
                                    "hsm-coordinator-tls-agent-mover01", "hsm-coordinator-tls-agent-mover02",
                                    "hsm-coordinator-tls-bridge"])
    r1 = certs["hsm-coordinator-tls-hsm-coordinator-1"]
    assert r1["commonName"] == "hsm-coordinator-1" and r1["subject"] == {"organizationalUnits": ["replica"]}
    assert r1["dnsNames"] == ["hsm-coordinator-1.hsm-coordinator-headless.hsm.svc.cluster.local", "hsm-coordinator",
                              "hsm-coordinator.hsm", "hsm-coordinator.hsm.svc", "hsm-coordinator.hsm.svc.cluster.local"]
    assert r1["issuerRef"] == {"name": "site-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    a1 = certs["hsm-coordinator-tls-agent-mover01"]
    assert a1["commonName"] == "mover01" and a1["subject"]["organizationalUnits"] == ["agent"]
    assert "server auth" not in a1["usages"] and "dnsNames" not in a1
    assert certs["hsm-coordinator-tls-bridge"]["subject"]["organizationalUnits"] == ["bridge"]
    assert dl.kube_problems(docs, [dl.MIN_KUBE]) == []
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values)) == []


def test_insecure_renders_plain_text_and_warns() -> None:
    values = {"insecure": True, "tls": {"enabled": False}}
    rendered = dl.render_chart(dl.CHART, values)
    docs = dl.manifests(rendered)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "coordinator.yaml" in d["data"])
    cfg = yaml.safe_load(cm["data"]["coordinator.yaml"])
    assert cfg["insecure"] is True and "tls" not in cfg and "probe.py" not in cm["data"]
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    assert pod["containers"][0]["readinessProbe"]["grpc"]["service"] == "hsm.v1.Coordinator"
    assert "PLAIN TEXT" in next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values)) == []


def test_tls_convention_check_catches_a_wrong_certificate() -> None:
    values = {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}, "agentNodes": ["m1"]}}}
    docs = dl.manifests(dl.render_chart(dl.CHART, values))
    cert = next(d for d in docs if d["kind"] == "Certificate" and d["spec"]["commonName"] == "m1")
    cert["spec"]["subject"]["organizationalUnits"] = ["admin"]
    problems = dl.convention_problems(docs, dl.merged_values(dl.CHART, values))
    assert any("CN m1 (the agent id) and OU agent" in p for p in problems), problems


# --------------------------------------------------------------------------
# cluster.replication: each shard's group on some of the pods, and scaling up


def _coordinator_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "coordinator.yaml" in d["data"])
    return dict(yaml.safe_load(cm["data"]["coordinator.yaml"]))


def _loaded(cfg: dict[str, Any], replica_id: str, tmp_path: Path) -> Any:
    """The ClusterSpec ``hsm-coordinator run --replica-id ID`` builds from
    the chart's coordinator.yaml (plain text, a local password file)."""
    from coordinator.config import load

    password = tmp_path / "raft-password"
    password.write_text("deploy-check-raft-password\n")
    password.chmod(0o600)
    local = {**cfg, "cluster": {**cfg["cluster"], "password_file": str(password)}, "insecure": True}
    local.pop("tls", None)
    path = tmp_path / "coordinator.yaml"
    path.write_text(yaml.safe_dump(local))
    node, _log = load(str(path), {"replica_id": replica_id})
    return node.cluster


INSTALL = {"cluster": {"replication": 3, "placementReplicas": 3}, "coordinator": {"replicas": 3}}
SCALED = {"cluster": {"replication": 3, "placementReplicas": 3}, "coordinator": {"replicas": 6}}


def test_replication_install_then_scale_up(tmp_path: Path) -> None:
    """Installed with 3 pods in groups of 3, then scaled to 6 (helm upgrade
    --set coordinator.replicas=6): the placement is written out, spread
    over the 3 install pods, and the same byte for byte after the scale-up;
    the 3 new pods are in cluster.replicas but in no group (the rebalancer
    fills them); the ConfigMap's checksum changes, so the StatefulSet rolls
    the pods one at a time; the budget lets one pod go at a time."""
    from coordinator.placement import spread

    before, after = (dl.manifests(dl.render_chart(dl.CHART, v)) for v in (INSTALL, SCALED))
    for docs, values in ((before, INSTALL), (after, SCALED)):
        assert dl.kube_problems(docs, [dl.MIN_KUBE]) == []
        assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values)) == []
    old, new = _coordinator_yaml(before), _coordinator_yaml(after)
    pods = [f"hsm-coordinator-{i}" for i in range(6)]
    assert [r["id"] for r in old["cluster"]["replicas"]] == pods[:3]
    assert [r["id"] for r in new["cluster"]["replicas"]] == pods
    assert old["cluster"]["replication"] == new["cluster"]["replication"] == 3
    assert old["cluster"]["placement"] == new["cluster"]["placement"] == {
        i: list(g) for i, g in enumerate(spread(pods[:3], 8, 3))}
    cm_text = [next(d for d in docs if d["kind"] == "ConfigMap" and "coordinator.yaml" in d["data"])["data"]
               ["coordinator.yaml"] for docs in (before, after)]
    placement_lines = [[line for line in text.splitlines() if re.match(r"\s+\d+: \[", line)] for text in cm_text]
    assert placement_lines[0] == placement_lines[1] and len(placement_lines[0]) == 8
    # every replica, old and new, starts from it; the new ones hold nothing
    spec = _loaded(new, "hsm-coordinator-4", tmp_path)
    assert [spec.hosted(p) for p in pods[3:]] == [[], [], []]
    assert all(len(spec.hosted(p)) == 8 for p in pods[:3])
    sts = [next(d for d in docs if d["kind"] == "StatefulSet") for docs in (before, after)]
    assert [s["spec"]["replicas"] for s in sts] == [3, 6]
    assert sts[0]["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    sums = [s["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for s in sts]
    assert sums[0] != sums[1], "the peer list changed: the pods must roll to learn the new replicas"
    assert [next(d for d in docs if d["kind"] == "PodDisruptionBudget")["spec"].get("maxUnavailable")
            for docs in (before, after)] == [1, 1]
    # agentd talks to every pod, the new ones too
    agentd = next(d for d in after if d["kind"] == "ConfigMap" and "agentd.yaml" in d["data"])
    assert len(yaml.safe_load(agentd["data"]["agentd.yaml"])["coordinators"]) == 6


@pytest.mark.parametrize("shards, r, p, n", [
    (8, 3, 3, 3), (8, 3, 5, 5), (8, 3, 5, 9), (18, 3, 9, 9), (7, 5, 6, 10), (1, 1, 1, 2), (3, 7, 7, 8), (20, 3, 4, 4),
])
def test_replication_placement_is_what_init_writes(shards: int, r: int, p: int, n: int, tmp_path: Path) -> None:
    """The template's placement is coordinator.placement.spread (what
    ``hsm-coordinator init --replication R`` writes) over the first p pods,
    for any n >= p: every one of them holds shards x r / p groups and leads
    shards / p, each within one, and the coordinator's loader takes it."""
    from coordinator.placement import load, spread

    values = {"cluster": {"shards": shards, "replication": r, "placementReplicas": p},
              "coordinator": {"replicas": n}, "insecure": True, "tls": {"enabled": False}}
    cluster = _coordinator_yaml(dl.manifests(dl.render_chart(dl.CHART, values)))["cluster"]
    pods = [f"hsm-coordinator-{i}" for i in range(n)]
    want = spread(pods[:p], shards, r)
    assert cluster["placement"] == {i: list(g) for i, g in enumerate(want)}
    spec = _loaded({"cluster": cluster, "data_dir": "/tmp"}, pods[-1], tmp_path)
    assert spec.placement == want and spec.replication == r
    held = load(spec.placement, pods[:p])
    assert max(h for h, _ in held.values()) - min(h for h, _ in held.values()) <= 1
    assert max(lead for _, lead in held.values()) - min(lead for _, lead in held.values()) <= 1
    assert all(spec.hosted(pod) == [] for pod in pods[p:])


@pytest.mark.parametrize("n", [3, 5])
def test_replication_of_every_pod_is_the_classic_layout(n: int, tmp_path: Path) -> None:
    """replication = placementReplicas = replicas renders the groups a
    release without replication has (every pod in every group, shard i
    preferring pod i mod n): how a release installed without replication
    takes it on before it grows."""
    classic = _coordinator_yaml(dl.manifests(dl.render_chart(dl.CHART, {"coordinator": {"replicas": n}})))
    values = {"cluster": {"replication": n, "placementReplicas": n}, "coordinator": {"replicas": n}}
    placed = _coordinator_yaml(dl.manifests(dl.render_chart(dl.CHART, values)))
    assert "placement" not in classic["cluster"] and len(placed["cluster"]["placement"]) == 8
    assert {k: v for k, v in placed["cluster"].items() if k not in ("replication", "placement")} == classic["cluster"]
    a, b = _loaded(classic, "hsm-coordinator-0", tmp_path), _loaded(placed, "hsm-coordinator-0", tmp_path)
    for shard in range(8):
        assert {m.id for m in a.members(shard)} == {m.id for m in b.members(shard)}
        assert a.preferred_leader(shard) == b.preferred_leader(shard)


@pytest.mark.parametrize("r, n, want", [(3, 4, 1), (3, 9, 1), (5, 5, 2), (5, 12, 2), (7, 7, 3), (1, 4, None)])
def test_replication_budget_keeps_every_group_majority(r: int, n: int, want: int | None) -> None:
    """With groups of r over n pods any (r - 1)/2 + 1 pods may be members of
    one group: the budget lets (r - 1)/2 go at a time whatever n is; groups
    of 1 get none (it would block every node drain)."""
    values = {"cluster": {"replication": r, "placementReplicas": r}, "coordinator": {"replicas": n}}
    docs = dl.manifests(dl.render_chart(dl.CHART, values))
    pdbs = [d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdbs == ([] if want is None else [{"maxUnavailable": want, "selector": pdbs[0]["selector"]}])
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values)) == []


def test_replication_with_cert_manager_issues_every_pod() -> None:
    """cert-manager makes a Certificate for each pod, the added ones too."""
    values = {**SCALED, "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}, "agentNodes": ["m1"]}}}
    docs = dl.manifests(dl.render_chart(dl.CHART, values))
    names = {d["spec"]["commonName"] for d in docs if d["kind"] == "Certificate"}
    assert {f"hsm-coordinator-{i}" for i in range(6)} <= names
    assert dl.convention_problems(docs, dl.merged_values(dl.CHART, values)) == []
