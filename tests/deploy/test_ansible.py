"""The Ansible roles: yamllint, ansible-playbook --syntax-check, ansible-lint
(production profile, offline), the roles' variables and argument specs, the
files the roles write for a 3-coordinator + 2-mover + 2-bridge inventory
(the bridges' command lines run through hsm-bridge's own checks), and a
copy broken on purpose to show each check fails."""

from __future__ import annotations

import shlex
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from agentd.config import load_config
from tests.deploy import deploylib as dl
from tests.deploy.conftest import FSNAME, SHARDS, RenderedCluster, bridge_vars

ROLES = ["hsm_coordinator", "hsm_agentd", "hsm_bridge"]


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


def test_rendered_bridges_are_understood_by_hsm_bridge(rendered_cluster: RenderedCluster) -> None:
    """Each bridge's ExecStart, with the environment file the unit loads,
    goes through hsm-bridge's own main() (parser, settings, lease, client)
    and means what the inventory asked for."""
    cl = rendered_cluster
    coordinators = [h.api for h in cl.coordinators]
    for b in cl.bridges:
        text = b.unit.read_text()
        assert dl.unit_values(text, "Service", "EnvironmentFile") == [str(b.env_file)]
        env = dl.env_file(b.env_file.read_text())
        argv = dl.exec_start(text)
        assert argv[0] == f"{dl.BIN.parent}/bin/hsm-bridge"
        bridge = dl.hsm_bridge_from(argv[1:], env)
        cfg, v = bridge.config, b.vars
        assert bridge.client.addresses == coordinators, "every replica of the hsm_coordinators group"
        assert cfg.mount == cl.fs_root and cfg.core.fsnames == {FSNAME}
        assert cfg.archive_ids == tuple(v.get("hsm_bridge_archive_ids") or (0,)), "0: every archive id"
        assert cfg.holder == v.get("hsm_bridge_holder", "")
        assert cfg.lease_ttl == v.get("hsm_bridge_lease_ttl", 15)
        assert cfg.active_requests == tuple(v.get("hsm_bridge_active_requests", ()))
        assert cfg.active_requests_command == tuple(shlex.split(v.get("hsm_bridge_active_requests_command", "")))
        assert str(cfg.journal) == v.get("hsm_bridge_journal", f"/var/lib/hsm-bridge/{FSNAME}.journal")
        assert cfg.report_every == v.get("hsm_bridge_report_every", 60)
        assert cfg.core.batch_size == v.get("hsm_bridge_batch_size", 1000)
        assert cfg.core.max_backlog == v.get("hsm_bridge_max_backlog", 100_000)
        assert cfg.core.mdt_max_requests == v.get("hsm_bridge_mdt_max_requests", 3)
        assert cfg.core.mdt_active_request_timeout == v.get("hsm_bridge_mdt_active_request_timeout", 3600)
        assert cfg.core.stall_after == v.get("hsm_bridge_mdt_stall_after", 30)
        assert str(bridge.api.path) == v.get("hsm_bridge_library", str(bridge.api.path))
        assert env.get("HSM_CLUSTER") == v.get("hsm_bridge_cluster_id")
        assert bridge.client.cluster_id == v.get("hsm_bridge_cluster_id")
    first = dl.exec_start(cl.bridges[0].unit.read_text())
    assert "--log-level" in first and first[first.index("--log-level") + 1] == "debug"


@pytest.mark.parametrize("old, new, message", [
    ("--lease-ttl 10", "--lease-tll 10", "unrecognized arguments: --lease-tll"),
    ("--lease-ttl 10", "--lease-ttl 2", "the lease ttl must be 3-3600 s"),
    ("--library", "--active-requests /run/ar --library", "not allowed with argument"),
    ("--batch-size 500", "--batch-size 50000", "batch_size must be 1..10000"),
])
def test_bridge_command_check_catches_a_bad_unit(old: str, new: str, message: str,
                                                 rendered_cluster: RenderedCluster) -> None:
    b = rendered_cluster.bridges[0]
    text = b.unit.read_text()
    assert old in text
    argv = dl.exec_start(text.replace(old, new, 1))
    with pytest.raises(AssertionError, match=message):
        dl.hsm_bridge_from(argv[1:], dl.env_file(b.env_file.read_text()))


def test_rendered_bridge_unit(rendered_cluster: RenderedCluster) -> None:
    cl = rendered_cluster
    for b in cl.bridges:
        text = b.unit.read_text()
        service = {k: v for s, k, v in dl.unit_directives(text) if s == "Service"}
        assert dl.unit_values(text, "Unit", "RequiresMountsFor") == [str(cl.fs_root)]
        assert service["User"] == "root"
        assert set(service["CapabilityBoundingSet"].split()) == {"CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"}
        assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
        assert service["StateDirectory"] == "hsm-bridge", "the default journal directory /var/lib/hsm-bridge"
        assert "AF_NETLINK" in service["RestrictAddressFamilies"].split()
        assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
        assert dl.unit_values(text, "Unit", "StartLimitIntervalSec") == ["0"], "systemd never gives up on it"
        journal = b.vars.get("hsm_bridge_journal")
        # the Lustre mount is never writable; a journal elsewhere is
        assert service.get("ReadWritePaths") == (str(Path(journal).parent) if journal else None)
    journal_dir = Path(cl.bridges[1].vars["hsm_bridge_journal"]).parent
    assert journal_dir.is_dir() and stat.S_IMODE(journal_dir.stat().st_mode) == 0o700


def test_bridge_role_refuses_bad_settings(tmp_path: Path) -> None:
    """One play, a host per bad setting: each stops at the check, on the
    assertion its setting breaks, and writes nothing; a good host beside
    them gets its files."""
    good = bridge_vars(tmp_path)["bridge1"]
    bad = {  # host: (its variables, the assertion it must fail)
        "both-recoveries": ({**good, "hsm_bridge_active_requests": ["/var/lib/hsm-bridge/ar"]},
                            "hsm_bridge_active_requests | length == 0 or"),
        "no-fsname": ({**good, "hsm_bridge_fsnames": []}, "hsm_bridge_fsnames | length > 0"),
        "long-fsname": ({**good, "hsm_bridge_fsnames": ["ninechars"]}, "hsm_bridge_fsnames | reject('match'"),
        "short-lease": ({**good, "hsm_bridge_lease_ttl": 2}, "hsm_bridge_lease_ttl | float >= 3"),
        "no-coordinators": ({**good, "hsm_bridge_coordinator_group": "nowhere"}, "hsm_bridge_coordinators | length > 0"),
    }
    hosts = [dl.BridgeHost(name, tmp_path / name, hostvars) for name, (hostvars, _) in bad.items()]
    hosts.append(dl.BridgeHost("good", tmp_path / "good", good))
    coordinator = dl.CoordinatorHost("c0", 7600, 7700, tmp_path / "c0")
    proc = dl.render_roles(tmp_path, [coordinator], [], fs_root=tmp_path / "fs", archive_root=tmp_path / "archive",
                           bridges=hosts)
    out = dl.output(proc)
    assert proc.returncode != 0
    for h in hosts[:-1]:
        fatal = [line for line in out.splitlines() if line.startswith(f"fatal: [{h.name}]: FAILED!")]
        assert len(fatal) == 1 and f'"assertion": "{bad[h.name][1]}' in fatal[0], f"{h.name}:\n{out}"
        assert f"hsm_bridge on {h.name}: list the coordinators" in fatal[0]
        assert not h.unit.exists() and not h.env_file.exists(), f"{h.name}: nothing is written"
    assert dl.env_file(hosts[-1].env_file.read_text())["HSM_COORDINATORS"] == coordinator.api
    assert hosts[-1].unit.exists()


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


# --------------------------------------------------------------------------
# hsm_coordinator_replication: each shard's group on some of the hosts


def test_placement_template_is_what_init_writes() -> None:
    """templates/placement.j2 (plain Jinja) is coordinator.placement.spread,
    the placement ``hsm-coordinator init --replication R`` writes, for every
    small cluster: 1 to 9 hosts, every group size that fits, 1 to 29 shards."""
    import jinja2

    from coordinator.placement import spread

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(dl.ANSIBLE / "roles" / "hsm_coordinator" / "templates"),
                             trim_blocks=True, undefined=jinja2.StrictUndefined)
    macro = env.get_template("placement.j2").module.placement
    cases = 0
    for n in range(1, 10):
        ids = [f"hsm-{i}.example" for i in range(n)]
        for r in (1, 3, 5, 7):
            for shards in range(1, 30) if r <= n else ():
                text = str(macro(ids, shards, r, "    "))
                got = yaml.safe_load("placement:\n" + text)["placement"]
                assert got == {i: list(g) for i, g in enumerate(spread(ids, shards, r))}, (n, r, shards, text)
                cases += 1
    assert cases > 500


def _hosts(tmp_path: Path, count: int, shards: int) -> list[dl.CoordinatorHost]:
    return [dl.CoordinatorHost(f"hsm-{i}", 7600 + i, 7700 + shards * i, tmp_path / f"hsm-{i}") for i in range(count)]


def _cluster_of(host: dl.CoordinatorHost, tmp_path: Path) -> tuple[dict[str, object], object]:
    """The cluster part of the host's coordinator.yaml, and the ClusterSpec
    ``hsm-coordinator run`` builds from the whole file."""
    from coordinator.config import load

    path = host.config_dir / "coordinator.yaml"
    node, _log = load(str(path))
    return yaml.safe_load(path.read_text())["cluster"], node.cluster


def test_role_replication_over_the_first_hosts_then_a_host_added(tmp_path: Path) -> None:
    """Groups of 3 spread over the first 3 of 5 hosts: every replica's
    coordinator.yaml writes the same placement out (spread over those 3),
    the coordinator's loader takes it, hosts 4 and 5 hold nothing. A sixth
    host added to the group (an even count) changes the peer list only:
    the placement stays as it was, and the new host is in no group."""
    from coordinator.placement import spread

    shards = 8
    extra = {"hsm_coordinator_replication": 3, "hsm_coordinator_placement_hosts": ["hsm-0", "hsm-1", "hsm-2"],
             "hsm_coordinator_insecure": True}
    placements = []
    for count in (5, 6):
        base = tmp_path / f"hosts-{count}"
        hosts = _hosts(base, count, shards)
        proc = dl.render_roles(base, hosts, [], fs_root=base / "fs", archive_root=base / "archive", shards=shards,
                               extra_vars=extra)
        assert proc.returncode == 0, dl.output(proc)
        texts = set()
        for h in hosts:
            cluster, spec = _cluster_of(h, tmp_path)
            assert [r["id"] for r in cluster["replicas"]] == [x.name for x in hosts]
            assert cluster["replication"] == 3
            assert cluster["placement"] == {i: list(g) for i, g in enumerate(spread(["hsm-0", "hsm-1", "hsm-2"],
                                                                                      shards, 3))}
            assert [spec.hosted(x.name) for x in hosts[3:]] == [[]] * (count - 3), "added hosts hold nothing"
            text = (h.config_dir / "coordinator.yaml").read_text()
            texts.add(text[text.index("  placement:"):text.index("replica_id:")])
        assert len(texts) == 1, "every replica writes the same placement"
        placements.append(texts.pop())
        lint = dl.yamllint([h.config_dir / "coordinator.yaml" for h in hosts], home=base)
        assert lint.returncode == 0, dl.output(lint)
    assert placements[0] == placements[1], "adding a host leaves the placement as it was"


def test_role_writes_a_given_placement(tmp_path: Path) -> None:
    """hsm_coordinator_placement (the groups as they are after moves, to
    retire a host the placement was spread over) is written as given, shard
    by shard (keys as numbers or strings, members by replica id, here one
    set per host); the retired host is no longer named and the loader
    takes it."""
    hosts = _hosts(tmp_path, 4, 2)[1:]  # hsm-0 retired: hsm-3 (replica id r3) took its shards
    given = {0: ["r3", "hsm-1", "hsm-2"], "1": ["hsm-1", "hsm-2", "r3"]}
    extra = {"hsm_coordinator_replication": 3, "hsm_coordinator_placement_hosts": [],
             "hsm_coordinator_placement": given, "hsm_coordinator_insecure": True}
    proc = dl.render_roles(tmp_path, hosts, [], fs_root=tmp_path / "fs", archive_root=tmp_path / "archive",
                           shards=2, extra_vars=extra, coordinator_vars={"hsm-3": {"hsm_coordinator_replica_id": "r3"}})
    assert proc.returncode == 0, dl.output(proc)
    cluster, spec = _cluster_of(hosts[0], tmp_path)
    assert cluster["placement"] == {0: ["r3", "hsm-1", "hsm-2"], 1: ["hsm-1", "hsm-2", "r3"]}
    assert spec.placement == (("r3", "hsm-1", "hsm-2"), ("hsm-1", "hsm-2", "r3"))


def test_role_refuses_bad_placement_settings(tmp_path: Path) -> None:
    """One play, a host per bad setting: each stops at its check and writes
    nothing; the good hosts beside them get their files. Without
    replication the replica count must still be odd (10 hosts here)."""
    good = {"hsm_coordinator_replication": 3, "hsm_coordinator_placement_hosts": ["no-hosts", "unknown-host", "two"],
            "hsm_coordinator_insecure": True}
    per_host = {
        "no-hosts": ({**good, "hsm_coordinator_placement_hosts": []},
                     "hsm_coordinator_replication 3 must be 1, 3, 5 or 7 and needs hsm_coordinator_placement_hosts"),
        "unknown-host": ({**good, "hsm_coordinator_placement_hosts": ["no-hosts", "two", "hsm-9"]},
                         'not in the group: [\\"hsm-9\\"]'),
        "two": ({**good, "hsm_coordinator_replication": 2}, "hsm_coordinator_replication 2 must be 1, 3, 5 or 7"),
        "odd-rule": ({"hsm_coordinator_insecure": True}, "odd number of replicas (now 10) unless"),
        # a given placement: a shard missing, a group of the wrong size, an unknown replica
        "given-short": ({**good, "hsm_coordinator_placement": {0: ["good", "two", "no-hosts"]}},
                        "hsm_coordinator_placement must name every shard 0..1 once, each with 3"),
        "given-unknown": ({**good, "hsm_coordinator_placement": {0: ["good", "two", "no-hosts"],
                                                                  1: ["good", "two", "hsm-9"]}},
                          'unknown: [\\"hsm-9\\"]'),
        "given-size": ({**good, "hsm_coordinator_placement": {0: ["good", "two"], 1: ["two", "good"]}},
                       "each with 3 distinct replica ids"),
        "good": (good, None),
        "also-good": (good, None),
        "third-good": (good, None),
    }
    hosts = [dl.CoordinatorHost(n, 7600 + i, 7700 + 10 * i, tmp_path / n) for i, n in enumerate(per_host)]
    proc = dl.render_roles(tmp_path, hosts, [], fs_root=tmp_path / "fs", archive_root=tmp_path / "archive",
                           coordinator_vars={n: v for n, (v, _) in per_host.items()})
    out = dl.output(proc)
    assert proc.returncode != 0
    for h in hosts:
        fatal = [line for line in out.splitlines() if line.startswith(f"fatal: [{h.name}]: FAILED!")]
        message = per_host[h.name][1]
        if message is None:
            assert fatal == [] and "placement:" in (h.config_dir / "coordinator.yaml").read_text(), f"{h.name}:\n{out}"
            continue
        assert len(fatal) == 1 and message in fatal[0], f"{h.name}:\n{out}"
        assert not (h.config_dir / "coordinator.yaml").exists(), f"{h.name}: nothing is written"
