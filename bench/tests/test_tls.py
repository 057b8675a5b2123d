"""``python -m bench tls`` and the bench's TLS clusters, without a cluster:
the arguments, the ratio and its status, the figures and the Markdown, the
configuration and certificates a TLS cluster is given, and the harness's
channel and the plain-text probe against a one-service gRPC server."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench import cli
from bench import code as codemod
from bench import tls as tlsmod
from bench.cluster import CLIENT_CERT, BenchCluster, ClusterOptions
from coordinator import config as cfgmod
from hsm.tls import identity_of, server_credentials

# ------------------------------------------------------------ arguments


def test_tls_arguments_and_sizes() -> None:
    p = cli.build_parser()
    a = p.parse_args(["tls"])
    assert (a.workload, a.repeat, a.no_save) == ("tls", 1, False)
    s = cli.settings_from(a)
    assert s.mode == "quick" and s.flood_actions == 20_000 and s.tls is False
    a = p.parse_args(["tls", "--full", "--repeat", "3"])
    assert a.repeat == 3 and cli.settings_from(a).flood_actions == 1_000_000
    a = p.parse_args(["tls", "--quick", "--actions", "500", "--no-save", "--clients", "2"])
    s = cli.settings_from(a)
    assert s.flood_actions == 500 and s.clients == 2 and a.no_save


def test_tls_repeat_below_one_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["tls", "--repeat", "0", "--no-save", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and "--repeat must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no cluster was started


def test_tls_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "tls            what mutual TLS costs" in out and "0.85" in out
    with pytest.raises(SystemExit):
        cli.main(["tls", "--help"])
    assert "--repeat N" in capsys.readouterr().out


def test_the_order_alternates() -> None:
    assert tlsmod.order(0) == ("off", "on")
    assert tlsmod.order(1) == ("on", "off")
    assert tlsmod.order(2) == ("off", "on")


# ------------------------------------------------------------ figures


def _flood(rate: float, replica_us: list[float], agentd: float = 30.0, client: float = 20.0, other: float = 2.0,
           run_twice: int = 0) -> dict[str, Any]:
    reps = {f"r{i + 1}": {"us_per_action": v} for i, v in enumerate(replica_us)}
    return {"actions": 1000, "actions_per_s": rate, "seconds": 1000 / rate, "p99_start_ms": 50.0,
            "run_twice": run_twice, "cpu": {"other_s": other, "host_capacity_s": 10.0},
            "cpu_per_action": {"total_us_per_action": sum(replica_us) + agentd + client,
                               "harness_us_per_action": 4.0,
                               "classes": {"leader": {"us_per_action": sum(replica_us)},
                                           "follower": {"us_per_action": None},
                                           "agentd": {"us_per_action": agentd, "us_per_action_per_process": agentd / 2},
                                           "client": {"us_per_action": client}},
                               "replicas": reps}}


def test_ratio_and_status() -> None:
    assert tlsmod.ratio(900.0, 1000.0) == 0.9 and tlsmod.ratio(1.0, 0) is None and tlsmod.ratio(None, 1.0) is None
    assert tlsmod.status(0.85) == "met" and tlsmod.status(0.9) == "met"
    assert tlsmod.status(0.849) == "missed" and tlsmod.status(None) == "not measured"
    assert tlsmod.TARGET == 0.85


def test_flood_figures_and_medians() -> None:
    f = tlsmod.flood_figures(_flood(5000.0, [40.0, 50.0, 60.0]))
    assert f["actions_per_s"] == 5000.0 and f["replica_us_per_action"] == 50.0
    assert f["leader_us_per_action"] == 150.0 and f["follower_us_per_action"] is None
    assert f["agentd_us_per_action"] == 30.0 and f["agentd_us_per_action_per_process"] == 15.0
    assert f["client_us_per_action"] == 20.0 and f["total_us_per_action"] == 200.0
    assert f["outsiders_cpu_share_pct"] == 20.0 and f["harness_us_per_action"] == 4.0
    assert set(f) == set(tlsmod.FIGURES)
    assert tlsmod.flood_figures({})["actions_per_s"] is None
    m = tlsmod.medians([_flood(4000.0, [50.0] * 3), _flood(6000.0, [70.0] * 3), _flood(5000.0, [60.0] * 3)])
    assert m["actions_per_s"] == 5000.0 and m["replica_us_per_action"] == 60.0
    assert tlsmod.medians([])["actions_per_s"] is None


def test_verdict_met_and_missed() -> None:
    off = tlsmod.medians([_flood(5000.0, [50.0] * 3)])
    v = tlsmod.verdict(tlsmod.medians([_flood(4500.0, [55.0] * 3)]), off, [0.9, 0.88])
    assert (v["ratio"], v["status"], v["target"]) == (0.9, "met", 0.85)
    assert (v["round_ratio_min"], v["round_ratio_max"]) == (0.88, 0.9)
    assert v["replica_us_on_minus_off"] == 5.0 and v["total_us_on_minus_off"] == 15.0
    assert (v["cpu_bound_ratio"], v["cpu_bound_status"]) == (round(200 / 215, 3), "met")
    v = tlsmod.verdict(tlsmod.medians([_flood(3000.0, [90.0] * 3)]), off, [0.6])
    assert (v["ratio"], v["status"]) == (0.6, "missed")
    assert (v["cpu_bound_ratio"], v["cpu_bound_status"]) == (round(200 / 320, 3), "missed")
    v = tlsmod.verdict(tlsmod.medians([]), off, [None])
    assert (v["ratio"], v["status"], v["round_ratio_min"]) == (None, "not measured", None)
    assert (v["cpu_bound_ratio"], v["cpu_bound_status"]) == (None, "not measured")


def test_markdown() -> None:
    on, off = tlsmod.medians([_flood(4000.0, [60.0] * 3)]), tlsmod.medians([_flood(5000.0, [50.0] * 3)])
    out = {"mode": "quick", "when": "now", "wall_seconds": 40.0, "actions": 20_000, "rounds": 2,
           "machine": {"cores": 2, "versions": {"grpcio": "1.2.3"}},
           "cluster": {"replicas": 3, "shards": 8, "agents": 2, "clients": 4, "batch": 1000, "inflight": 2},
           "flood": {"on": on, "off": off}, "verdict": tlsmod.verdict(on, off, [0.8, 0.79]),
           "timeline": [{"round": 1, "tls": "off", "position": 1, "actions_per_s": 5000.0, "seconds": 4.0,
                         "outsiders_cpu_share_pct": 20.0, "wall_seconds": 12.0},
                        {"round": 1, "tls": "on", "position": 2, "wall_seconds": 3.0}],
           "failures": {"TLS on (round 2)": "RuntimeError: boom"}, "invariant_breaks": []}
    md = tlsmod.markdown(out)
    assert "**TLS on / off: 0.800** (target ≥ 0.85: **missed**); per round 0.800, 0.790." in md
    assert "| actions/s end to end | 4,000.0 | 5,000.0 | 0.800 |" in md
    assert "200.0 / 230.0 µs = **0.870** (met against the same target" in md
    assert "| CPU µs per action, agentd (class) | 30.0 | 30.0 | 1.000 |" in md
    assert "| outsiders' share of the host CPU (%) | 20.0 | 20.0 | 1.000 |" in md
    assert "| 1 | off | first | 5,000.0 | 4.0 |" in md and "| 1 | on | second | n/a |" in md
    assert "**Failures:** TLS on (round 2): RuntimeError: boom" in md


# ------------------------------------------------------------ the cluster


def _role(pem: Path) -> tuple[str, str]:
    who = identity_of(x509.load_pem_x509_certificate(pem.read_bytes()))
    return who.name, who.role


def test_a_tls_cluster_gets_its_config_and_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(tls=True, replicas=3, shards=2))
    c._write_config()
    text = c.config_path.read_text()
    assert "tls:" in text and "insecure" not in text and "{replica_id}.pem" in text
    for rid in ("r1", "r3"):  # the replica's own certificate, from the config the replica reads
        cfg, _ = cfgmod.load(c.config_path, {"replica_id": rid})
        assert cfg.tls is not None and cfg.tls.cert == c.tls_dir / f"{rid}.pem" and cfg.tls.ca == c.tls_dir / "ca.pem"
        assert _role(cfg.tls.cert) == (rid, "replica")
    assert _role(c.tls_dir / "admin.pem") == ("admin", "admin")
    assert _role(c.tls_dir / f"{CLIENT_CERT}.pem") == (CLIENT_CERT, "operator")
    assert c.harness_tls is not None and c.harness_tls.cert == c.tls_dir / "admin.pem"
    assert c.client_params() == {"tls": [str(c.tls_dir / "ca.pem"), str(c.tls_dir / f"{CLIENT_CERT}.pem"),
                                         str(c.tls_dir / f"{CLIENT_CERT}.key")]}
    assert c.opt.describe()["tls"] is True
    spawned: dict[str, list[str]] = {}
    monkeypatch.setattr(c, "_spawn", lambda name, cmd: spawned.setdefault(name, cmd))
    c.start_agent("agent1")
    c.start_agent("agent1")  # again (a restart): its certificate is kept, not reissued
    cmd = spawned["agent1"]
    files = c.tls_files("agent1")
    assert files is not None
    assert cmd[cmd.index("--tls-ca") + 1] == str(files.ca) and cmd[cmd.index("--tls-cert") + 1] == str(files.cert)
    assert cmd[cmd.index("--tls-key") + 1] == str(files.key) and cmd[cmd.index("--agent-id") + 1] == "agent1"
    assert _role(files.cert) == ("agent1", "agent")
    assert (files.key.stat().st_mode & 0o777) == 0o600


def test_a_plain_cluster_stays_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(shards=2))
    c._write_config()
    assert "insecure: true" in c.config_path.read_text() and not c.tls_dir.exists()
    assert c.harness_tls is None and c.tls_files("agent1") is None and c.client_params() == {}
    assert c.opt.describe()["tls"] is False
    spawned: dict[str, list[str]] = {}
    monkeypatch.setattr(c, "_spawn", lambda name, cmd: spawned.setdefault(name, cmd))
    c.start_agent("agent1")
    assert not any(a.startswith("--tls") for a in spawned["agent1"])


def test_a_code_tree_cluster_refuses_tls(tmp_path: Path) -> None:
    tree = codemod.CodeTree("baseline", "x", "f" * 40, tmp_path / "tree")
    c = BenchCluster(tmp_path / "c", ClusterOptions(code=tree, tls=True))
    with pytest.raises(ValueError, match="plain text"):
        c._write_config()


def test_settings_carry_tls_to_the_cluster_options() -> None:
    s = cli.settings_from(cli.build_parser().parse_args(["tls"]))
    assert s.cluster_options().tls is False
    s.tls = True
    assert s.cluster_options(replicas=1).tls is True


# ------------------------------------------------------------ channel and probe


def _health_server(creds: Any = None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    h = health.HealthServicer()
    h.set("hsm.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    port = (server.add_secure_port("127.0.0.1:0", creds) if creds is not None
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, port


def _check(ch: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator"),
                                                timeout=5).status


def test_the_harness_channel_and_the_probe(tmp_path: Path) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(tls=True, shards=1))
    c._write_config()
    r1 = c.tls_files("r1")
    assert r1 is not None
    server, port = _health_server(server_credentials(r1))
    try:
        api = f"127.0.0.1:{port}"
        with c.channel(api) as ch:  # mutual TLS with the admin certificate
            assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
        assert tlsmod.plain_text_answered(api, timeout=3) is False
    finally:
        server.stop(0)
    plain = BenchCluster(tmp_path / "p", ClusterOptions(shards=1))
    server, port = _health_server()
    try:
        with plain.channel(f"127.0.0.1:{port}") as ch:
            assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
        assert tlsmod.plain_text_answered(f"127.0.0.1:{port}") is True
    finally:
        server.stop(0)


def test_probe_problems() -> None:
    def probe(tls: bool, config_tls: bool | None, answered: bool | None) -> tlsmod.Probe:
        p = tlsmod.Probe.__new__(tlsmod.Probe)
        p.tls, p.config_tls, p.plain_text_answered = tls, config_tls, answered
        return p

    assert probe(True, True, False).problem() is None
    assert probe(False, False, True).problem() is None
    assert probe(True, True, True).problem() == "the TLS cluster answered plain text"
    assert probe(True, False, False).problem() == "no tls: in its config"
    assert probe(False, False, False).problem() == "the plain-text cluster refused a plain-text health check"
    assert probe(True, None, None).problem() == "the mode probe did not run"
    assert probe(True, True, False).record() == {"tls": True, "config_has_tls": True, "plain_text_answered": False}
