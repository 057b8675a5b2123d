"""hsm-coordinator configuration and command line: `init` writes a cluster
that `run` loads; bad values are clear errors naming the setting, never
tracebacks."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.config import ConfigError, init_cluster, load, parse_replica


def make_cluster(tmp_path: Path, **extra: object) -> Path:
    reps = [parse_replica(f"c{i}=127.0.0.1:{7600 + i}:{7700 + 10 * i}") for i in range(3)]
    cfg, _ = init_cluster(tmp_path / "etc", "t", 4, reps, data_dir=str(tmp_path / "data"), extra=dict(extra))
    return cfg


def test_init_then_load(tmp_path: Path) -> None:
    path = make_cluster(tmp_path)
    pw = tmp_path / "etc" / "raft-password"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    cfg, level = load(path, {"replica_id": "c1", "listen": "0.0.0.0:7601"})
    assert cfg.cluster.shards == 4 and [r.id for r in cfg.cluster.replicas] == ["c0", "c1", "c2"]
    assert cfg.me.raft_addr(3) == "127.0.0.1:7713"
    assert cfg.cluster.password == pw.read_text().strip()
    assert (cfg.listen, level, cfg.data_dir) == ("0.0.0.0:7601", ("info", "text"), tmp_path / "data")


def test_every_cluster_gets_its_own_id(tmp_path: Path) -> None:
    """init writes a random id; a configuration without one (older files,
    the chart, the Ansible role) gets one derived from its random password:
    stable across loads, different between clusters; a bad id is refused."""
    a, b = make_cluster(tmp_path / "a"), make_cluster(tmp_path / "b")
    ida = load(a, {"replica_id": "c0"})[0].cluster.cluster_id
    assert ida == yaml.safe_load(a.read_text())["cluster"]["id"]
    assert ida != load(b, {"replica_id": "c0"})[0].cluster.cluster_id
    doc = yaml.safe_load(a.read_text())
    del doc["cluster"]["id"]
    a.write_text(yaml.safe_dump(doc))
    derived = load(a, {"replica_id": "c0"})[0].cluster.cluster_id
    assert derived == load(a, {"replica_id": "c1"})[0].cluster.cluster_id != ida
    doc["cluster"]["id"] = "no spaces allowed"
    a.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="invalid cluster id"):
        load(a, {"replica_id": "c0"})


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    make_cluster(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        make_cluster(tmp_path)


def test_late_duplicate_memory_settings_reach_every_shard(tmp_path: Path) -> None:
    from coordinator.node import CoordinatorNode

    cfg, _ = load(make_cluster(tmp_path, remember_ends=10, remember_for=60), {"replica_id": "c0"})
    shard = CoordinatorNode(cfg).shard_config(3)
    assert (shard.remember_ends, shard.remember_for, shard.shard) == (10, 60.0, 3)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"bogus": 1}, "unknown setting(s): bogus"),
        ({"archive_ids": 3}, "archive_ids: expected a list of integers"),
        ({"default_archive_id": 2}, "default_archive_id 2 is not in archive_ids"),
        ({"agent_grace": "soon"}, "agent_grace: expected float"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"remember_for": -1}, "remember_ends and remember_for: must be >= 0"),
        ({"replica_id": "zz"}, "replica_id: replica 'zz' is not in the cluster"),
        ({"raft": {"election_min": 5.0}}, "raft:"),
        ({"raft": {"nope": 1}}, "raft: unknown setting(s): nope"),
        ({"log_level": "loud"}, "log_level"),
        ({"cluster": None}, "cluster: required"),
        ({"data_dir": None}, "data_dir: required"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, change: dict[str, object], words: str) -> None:
    path = make_cluster(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["replica_id"] = "c0"
    for k, v in change.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert words in str(exc.value)


def test_bad_cluster_sections(tmp_path: Path) -> None:
    path = make_cluster(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["replica_id"] = "c0"
    doc["cluster"]["replicas"][1]["raft"] = "127.0.0.1:7700"  # overlaps c0's Raft ports
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="overlap"):
        load(path)
    doc["cluster"]["replicas"][1] = {"id": "c1", "api": "nohost"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"replicas\[1\]"):
        load(path)


def test_password_file_must_be_private(tmp_path: Path) -> None:
    path = make_cluster(tmp_path)
    (tmp_path / "etc" / "raft-password").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load(path, {"replica_id": "c0"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["c0", "c0=host", "c0=host:1:x", "=h:1:2"])
def test_bad_replica_spec(text: str) -> None:
    with pytest.raises(ConfigError, match="ID=HOST:API_PORT:RAFT_PORT"):
        parse_replica(text)


def test_cli_init_and_config_errors(tmp_path: Path) -> None:
    out = tmp_path / "etc"
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "init", "--shards", "2", "--replica",
                        "a=127.0.0.1:7600:7700", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    cluster_id = yaml.safe_load((out / "coordinator.yaml").read_text())["cluster"]["id"]
    assert f"cluster id {cluster_id}" in r.stdout
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "run", "--config", str(out / "coordinator.yaml"),
                        "--replica-id", "b"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "configuration error: replica_id" in r.stderr and "Traceback" not in r.stderr


def test_cli_help_lists_commands() -> None:
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(w in r.stdout for w in ("init", "run", "local", "exit codes"))


def test_init_makes_the_cluster_ca_and_every_replica_loads_its_own_certificate(tmp_path: Path) -> None:
    reps = [parse_replica(f"c{i}=127.0.0.{i + 1}:7600:7700") for i in range(3)]
    path, _ = init_cluster(tmp_path / "etc", "t", 2, reps, data_dir=str(tmp_path / "data"), tls=True)
    tls = tmp_path / "etc" / "tls"
    assert {p.name for p in tls.iterdir()} == {"ca.pem", "ca.key", "admin.pem", "admin.key",
                                              *(f"c{i}.{x}" for i in range(3) for x in ("pem", "key"))}
    for i in range(3):
        cfg, _ = load(path, {"replica_id": f"c{i}"})
        assert cfg.tls is not None and cfg.tls.cert == tls / f"c{i}.pem" and cfg.tls.key == tls / f"c{i}.key"
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "certs", "show", str(tls / "c2.pem")],
                       capture_output=True, text=True, timeout=60)
    assert "c2, role replica" in r.stdout and "hosts: 127.0.0.3" in r.stdout
    # insecure is said, not implied
    plain, _ = init_cluster(tmp_path / "plain", "t", 2, reps, data_dir=str(tmp_path / "d2"))
    assert yaml.safe_load(plain.read_text())["insecure"] is True
    assert load(plain, {"replica_id": "c0"})[0].tls is None


@pytest.mark.parametrize("change, words", [
    ({"tls": {"ca": "/nonexistent/ca.pem", "cert": "/x.pem", "key": "/x.key"}}, "tls ca: cannot read /nonexistent/ca.pem"),
    ({"tls": {"ca": "a", "cert": "b"}}, "expected exactly the keys ca, cert, key"),
    ({"tls": {"ca": "a", "cert": "b", "key": "c"}, "insecure": True}, "both given"),
    ({"insecure": "yes"}, "insecure: expected true or false"),
    ({"user_request_mask": ["restore", "delete"]}, "user_request_mask: expected a list of archive, restore, remove"),
])
def test_tls_settings_are_checked_at_load(tmp_path: Path, change: dict[str, object], words: str) -> None:
    path = make_cluster(tmp_path)
    doc = yaml.safe_load(path.read_text())
    if "tls" in change:
        doc.pop("insecure", None)
    doc.update(change)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load(path, {"replica_id": "c0"})


@pytest.mark.parametrize("insecure", [None, False])
def test_plain_text_needs_an_explicit_insecure(tmp_path: Path, insecure: bool | None) -> None:
    """Neither tls: nor insecure: true (or insecure: false alone) is refused
    at load, the message saying what to add; insecure: true alone loads."""
    path = make_cluster(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc.pop("insecure")
    if insecure is not None:
        doc["insecure"] = insecure
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load(path, {"replica_id": "c0"})
    message = str(err.value)
    assert "neither tls nor insecure: true is set" in message
    assert "tls: {ca: ..., cert: ..., key: ...}" in message and "hsm-coordinator certs" in message
    assert "insecure: true to run plain text" in message
    # the CLI says the same and exits 2 (a configuration error: systemd does not restart it)
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "run", "--config", str(path), "--replica-id", "c0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "neither tls nor insecure: true is set" in r.stderr, r.stderr
    # the explicit opt-out loads, without TLS
    doc["insecure"] = True
    path.write_text(yaml.safe_dump(doc))
    assert load(path, {"replica_id": "c0"})[0].tls is None
