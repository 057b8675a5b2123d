"""The Ansible roles: yamllint, ansible-playbook --syntax-check, ansible-lint
(production profile, offline), the roles' variables and argument specs, the
files the roles write for a 3-coordinator + 2-mover inventory, and a copy
broken on purpose to show each check fails."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml

from agentd.config import load_config
from tests.deploy import deploylib as dl
from tests.deploy.conftest import SHARDS, RenderedCluster

ROLES = ["hsm_coordinator", "hsm_agentd"]


def test_yamllint_chart_and_ansible(tmp_path: Path) -> None:
    files = dl.chart_yaml_files() + dl.ansible_yaml_files() + [dl.RENDER_PLAYBOOK]
    assert len(files) > 15
    proc = dl.yamllint(files, home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)


def test_playbook_syntax_check(tmp_path: Path) -> None:
    proc = dl.syntax_check(dl.ANSIBLE, home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)
    assert "playbook: site.yml" in proc.stdout


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = dl.ansible_lint(dl.ANSIBLE, home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr, dl.output(proc)


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_are_prefixed_and_specified(role: str) -> None:
    base = dl.ANSIBLE / "roles" / role
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert sorted(specs) == ["config", "main"]
    options = specs["main"]["options"]
    assert [k for k in defaults if not k.startswith(role + "_")] == []
    assert sorted(defaults) == sorted(options), "every default has an argument spec and vice versa"
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{role}: {name} default differs from defaults/main.yml"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_default_is_commented(role: str) -> None:
    lines = (dl.ANSIBLE / "roles" / role / "defaults" / "main.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(role + "_"):
            assert lines[i - 1].startswith("#"), f"{role} defaults line {i + 1}: {line} has no comment"


# --------------------------------------------------------------------------
# what the roles write


def test_coordinator_configs_list_every_replica(rendered_cluster: RenderedCluster) -> None:
    cl = rendered_cluster
    want = [{"id": h.name, "api": f"127.0.0.1:{h.api_port}", "raft": f"127.0.0.1:{h.raft_port}"}
            for h in cl.coordinators]
    for h in cl.coordinators:
        cfg = yaml.safe_load((h.config_dir / "coordinator.yaml").read_text())
        assert cfg["cluster"]["replicas"] == want
        assert cfg["cluster"]["shards"] == SHARDS
        assert cfg["replica_id"] == h.name
        assert cfg["data_dir"] == str(h.data_dir)
        assert cfg["listen"] == h.api
        password = Path(cfg["cluster"]["password_file"])
        assert password == h.config_dir / "raft-password"
        assert password.read_text() == "deploy-test-raft-password\n"
        assert stat.S_IMODE(password.stat().st_mode) == 0o600, "hsm-coordinator run refuses a password others may read"
        assert stat.S_IMODE((h.config_dir / "coordinator.yaml").stat().st_mode) == 0o640
        assert h.data_dir.is_dir() and stat.S_IMODE(h.data_dir.stat().st_mode) == 0o700


def test_agentd_configs_are_accepted_by_agentd(rendered_cluster: RenderedCluster) -> None:
    cl = rendered_cluster
    for m in cl.movers:
        cfg = load_config(str(m.config_dir / "agentd.yaml"), environ={})
        assert cfg.agent_id == m.name
        assert list(cfg.coordinators) == [h.api for h in cl.coordinators]
        assert str(cfg.backend.root) == str(cl.fs_root)


def test_rendered_coordinator_unit(rendered_cluster: RenderedCluster) -> None:
    h = rendered_cluster.coordinators[0]
    text = h.unit.read_text()
    assert dl.exec_start(text) == [f"{dl.BIN.parent}/bin/hsm-coordinator", "run", "--config",
                                   str(h.config_dir / "coordinator.yaml")]
    service = {k: v for s, k, v in dl.unit_directives(text) if s == "Service"}
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "hsm-coordinator"
    assert service["ReadWritePaths"] == str(h.data_dir), "a data dir outside /var/lib must be writable"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict"


def test_rendered_agentd_unit(rendered_cluster: RenderedCluster) -> None:
    cl = rendered_cluster
    m = cl.movers[0]
    text = m.unit.read_text()
    assert dl.exec_start(text) == [f"{dl.BIN.parent}/bin/agentd", "--config", str(m.config_dir / "agentd.yaml")]
    service = {k: v for s, k, v in dl.unit_directives(text) if s == "Service"}
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_SYS_ADMIN"}
    assert service["ReadWritePaths"].split() == [str(cl.fs_root), str(cl.archive_root)]
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert int(service["TimeoutStopSec"]) > 5, "longer than drain_timeout"


# --------------------------------------------------------------------------
# a copy of deploy/ansible broken on purpose


def _break(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text, f"{rel}: {old!r} not found (the test needs updating)"
    path.write_text(text.replace(old, new, 1))


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "ansible"
    shutil.copytree(dl.ANSIBLE, root, ignore=shutil.ignore_patterns("credentials"))
    return root


def test_broken_role_fails_syntax_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _break(root, "roles/hsm_coordinator/tasks/config.yml", "ansible.builtin.template:", "ansible.builtin.templat:")
    proc = dl.syntax_check(root, home=tmp_path)
    assert proc.returncode != 0
    assert "ansible.builtin.templat" in proc.stdout + proc.stderr, dl.output(proc)


def test_broken_roles_fail_ansible_lint_and_yamllint(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    # a default without the role prefix
    _break(root, "roles/hsm_agentd/defaults/main.yml", "hsm_agentd_install: true\n",
           "hsm_agentd_install: true\n# The API port.\napi_port: 7600\n")
    # a command that always reports a change, without a name
    _break(root, "roles/hsm_coordinator/tasks/main.yml", "- name: Create the service group\n",
           "- ansible.builtin.command: /bin/true\n\n- name: Create the service group\n")
    # an argument spec of an unknown type
    _break(root, "roles/hsm_coordinator/meta/argument_specs.yml",
           "      hsm_coordinator_shards:\n        type: int", "      hsm_coordinator_shards:\n        type: integer")
    # bad indentation and trailing spaces
    _break(root, "site.yml", "  become: true\n", "  become: true   \n")
    proc = dl.ansible_lint(root, home=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, dl.output(proc)
    for rule in ("var-naming[no-role-prefix]", "no-changed-when", "name[missing]", "yaml[trailing-spaces]"):
        assert rule in out, f"ansible-lint did not report {rule}:\n{dl.output(proc)}"
    # the schema rule's id changed across ansible-lint releases (schema[arg_specs], schema[role-arg-spec])
    assert any("argument_specs.yml" in line and "schema[" in line and "integer" in line for line in out.splitlines()), \
        f"ansible-lint did not refuse the argument spec type:\n{dl.output(proc)}"
    proc = dl.yamllint([root / "site.yml"], home=tmp_path)
    assert proc.returncode != 0 and "trailing-spaces" in proc.stdout, dl.output(proc)


def test_role_refuses_an_even_number_of_replicas(tmp_path: Path) -> None:
    hosts = [dl.CoordinatorHost(f"c{i}", 7600 + i, 7700 + 10 * i, tmp_path / f"c{i}") for i in range(2)]
    proc = dl.render_roles(tmp_path, hosts, [], fs_root=tmp_path / "fs", archive_root=tmp_path / "archive")
    assert proc.returncode != 0
    assert "odd number of replicas (now 2)" in proc.stdout, dl.output(proc)
    assert not (hosts[0].config_dir / "coordinator.yaml").exists(), "nothing is written"


def test_rendered_configs_pass_yamllint(rendered_cluster: RenderedCluster, tmp_path: Path) -> None:
    files = [h.config_dir / "coordinator.yaml" for h in rendered_cluster.coordinators]
    files += [m.config_dir / "agentd.yaml" for m in rendered_cluster.movers]
    proc = dl.yamllint(files, home=tmp_path)
    assert proc.returncode == 0, dl.output(proc)
