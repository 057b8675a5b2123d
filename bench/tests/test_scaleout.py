"""``python -m bench scaleout`` and the bench's clusters with replication,
without a cluster: the arguments, the order, the figure 9 / 3 and its
status against 0.4, the per-replica table, the Markdown, the configuration
and ports a cluster with replication gets, and the shape probe's verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import cli
from bench import code as codemod
from bench import scaleout as so
from bench.cluster import BenchCluster, ClusterOptions
from coordinator import config as cfgmod

# ------------------------------------------------------------ arguments


def test_scaleout_arguments_and_sizes() -> None:
    p = cli.build_parser()
    a = p.parse_args(["scaleout"])
    assert (a.workload, a.repeat, a.shards, a.actions, a.no_save) == ("scaleout", 1, None, None, False)
    a = p.parse_args(["scaleout", "--full", "--repeat", "3", "--actions", "500", "--shards", "9"])
    assert (a.repeat, a.actions, a.shards, a.mode) == (3, 500, 9, "full")
    assert so.ACTIONS == {"quick": 50_000, "full": 1_000_000} and so.SHARDS == 18 and so.TARGET == 0.4


@pytest.mark.parametrize(("flags", "message"), [(["--repeat", "0"], "--repeat must be at least 1"),
                                                (["--replicas", "5"], "the shapes are fixed"),
                                                (["--shards", "0"], "--shards must be at least 1")])
def test_bad_arguments_are_usage_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["scaleout", *flags, "--no-save", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no cluster was started


def test_scaleout_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "scaleout       what a replica spends per action" in out and "0.4" in out
    with pytest.raises(SystemExit):
        cli.main(["scaleout", "--help"])
    out = capsys.readouterr().out
    assert "--repeat N" in out and "CPU" in out and "replication 3" in out


def test_the_order_alternates() -> None:
    assert so.order(0) == ("3", "9")
    assert so.order(1) == ("9", "3")
    assert so.order(2) == ("3", "9")
    assert so.SHAPES == {"3": (3, None), "9": (9, 3)}


# ------------------------------------------------------------ figures


def _flood(rate: float, replica_us: list[float], held: int = 18, agentd: float = 30.0, client: float = 20.0,
           other: float = 1.0, n: int = 1000) -> dict[str, Any]:
    rids = [f"r{i + 1}" for i in range(len(replica_us))]
    reps = {rid: {"us_per_action": us, "cpu_s": us * n / 1e6, "mean_shards_led": 2.0}
            for rid, us in zip(rids, replica_us, strict=True)}
    return {"actions": n, "actions_per_s": rate, "seconds": n / rate, "p99_start_ms": 50.0, "run_twice": 0,
            "cpu": {"other_s": other, "host_capacity_s": 10.0},
            "cpu_per_action": {"count": n, "total_us_per_action": sum(replica_us) + agentd + client,
                               "harness_us_per_action": 4.0,
                               "classes": {"leader": {"us_per_action": sum(replica_us)},
                                           "agentd": {"us_per_action": agentd},
                                           "client": {"us_per_action": client}},
                               "replicas": reps},
            "shape_probe": {"held": {rid: list(range(held)) for rid in rids},
                            "led_at_end": {rid: [0, 1] for rid in rids}}}


def test_flood_figures_and_medians() -> None:
    f = so.flood_figures(_flood(5000.0, [40.0, 50.0, 60.0]))
    assert f["actions_per_s"] == 5000.0 and f["replica_us_per_action"] == 50.0
    assert (f["replica_us_min"], f["replica_us_max"], f["replicas_us_per_action"]) == (40.0, 60.0, 150.0)
    assert f["agentd_us_per_action"] == 30.0 and f["client_us_per_action"] == 20.0
    assert f["total_us_per_action"] == 200.0 and f["outsiders_cpu_share_pct"] == 10.0
    assert set(f) == set(so.FIGURES)
    assert so.flood_figures({})["replica_us_per_action"] is None
    m = so.medians([_flood(4000.0, [50.0] * 3), _flood(6000.0, [70.0] * 3), _flood(5000.0, [60.0] * 3)])
    assert m["actions_per_s"] == 5000.0 and m["replica_us_per_action"] == 60.0
    assert so.medians([])["actions_per_s"] is None


def test_replicas_table() -> None:
    t = so.replicas_table([_flood(3000.0, [30.0] * 9, held=6), _flood(3000.0, [40.0] * 8 + [60.0], held=6)])
    assert list(t) == [f"r{i}" for i in range(1, 10)]  # r10 would sort after r9
    assert t["r9"] == {"us_per_action": 45.0, "held": 6, "led_at_end": 2, "mean_shards_led": 2.0}
    assert t["r1"]["us_per_action"] == 35.0


def test_ratio_status_and_verdict() -> None:
    assert so.ratio(30.0, 100.0) == 0.3 and so.ratio(1.0, 0) is None and so.ratio(None, 1.0) is None
    assert so.status(0.4) == "met" and so.status(0.33) == "met"
    assert so.status(0.41) == "missed" and so.status(None) == "not measured"
    three, nine = so.medians([_flood(6000.0, [100.0] * 3)]), so.medians([_flood(3000.0, [35.0] * 8 + [44.0])])
    v = so.verdict(nine, three, [0.36, 0.37])
    assert (v["ratio"], v["status"], v["target"]) == (0.36, "met", 0.4)
    assert (v["round_ratio_min"], v["round_ratio_max"]) == (0.36, 0.37)
    assert v["max_replica_ratio"] == 0.44 and v["all_replicas_ratio"] == 1.08 and v["rate_ratio"] == 0.5
    v = so.verdict(so.medians([_flood(3000.0, [60.0] * 9)]), three, [0.6])
    assert (v["ratio"], v["status"]) == (0.6, "missed")
    v = so.verdict(so.medians([]), three, [None])
    assert (v["ratio"], v["status"], v["round_ratio_min"]) == (None, "not measured", None)


def test_markdown() -> None:
    three_f, nine_f = _flood(6000.0, [100.0] * 3), _flood(3000.0, [40.0] * 9, held=6)
    three, nine = so.medians([three_f]), so.medians([nine_f])
    out = {"mode": "quick", "when": "now", "wall_seconds": 60.0, "actions": 50_000, "rounds": 2,
           "machine": {"cores": 2, "versions": {"grpcio": "1.2.3"}}, "quiet_until": 0.9,
           "cluster": {"shards": 18, "agents": 2, "clients": 4, "batch": 1000, "inflight": 2},
           "flood": {"3": three, "9": nine}, "verdict": so.verdict(nine, three, [0.4, 0.42]),
           "replicas": {"3": so.replicas_table([three_f]), "9": so.replicas_table([nine_f])},
           "timeline": [{"round": 1, "shape": "3", "position": 1, "actions_per_s": 6000.0, "seconds": 8.3,
                         "replica_us_per_action": 100.0, "replica_us_min": 100.0, "replica_us_max": 100.0,
                         "held": {18: 3}, "outsiders_cpu_share_pct": 10.0, "wall_seconds": 30.0},
                        {"round": 1, "shape": "9", "position": 2, "wall_seconds": 3.0}],
           "failures": {"9 replicas (round 2)": "RuntimeError: boom"}, "invariant_breaks": []}
    md = so.markdown(out)
    assert "**CPU µs per action per replica, 9 / 3: 0.400** (target ≤ 0.4: **met**); per round 0.400, 0.420." in md
    assert "| actions/s end to end | 6,000.0 | 3,000.0 | 0.500 |" in md
    assert "| **CPU µs per action per replica (mean)** | 100.0 | 40.0 | 0.400 |" in md
    assert "| CPU µs per action, all replicas together | 300.0 | 360.0 | 1.200 |" in md
    assert "| r9 | 40.0 | 6 | 2 | 2.00 |" in md and "| r3 | 100.0 | 18 | 2 | 2.00 |" in md
    assert "| 1 | 3 | first | 6,000.0 | 8.3 | 100.0 (100.0, 100.0) | n/a | 18 x 3 | 10.0 | 30.0 |" in md
    assert "| 1 | 9 | second | n/a |" in md and "90%" in md
    assert "**Failures:** 9 replicas (round 2): RuntimeError: boom" in md


# ------------------------------------------------------------ the cluster


def test_a_cluster_with_replication_places_its_shards(tmp_path: Path) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(replicas=9, shards=18, replication=3))
    c._write_config()
    raw = yaml.safe_load(c.config_path.read_text())
    assert raw["cluster"]["replication"] == 3 and len(raw["cluster"]["placement"]) == 18
    assert len(c.placement) == 18 and all(len(g) == 3 for g in c.placement)
    assert c.placement == cfgmod.load(c.config_path, {"replica_id": "r5"})[0].cluster.placement
    for spec in c.specs:
        held = c.hosted(spec.id)
        assert len(held) == 6 and held == [k for k in range(18) if spec.id in c.placement[k]]
        assert c.raft_ports(spec.id) == {int(spec.raft_addr(k).rsplit(":", 1)[1]) for k in held}
    c.replicas["r2"] = None  # type: ignore[assignment]  # own_ports asks only whether it is a replica
    api = int(c.spec("r2").api.rsplit(":", 1)[1])
    assert c.own_ports("r2") == {api} | c.raft_ports("r2") and len(c.own_ports("r2")) == 7
    assert c.opt.describe()["replication"] == 3


def test_a_cluster_without_replication_holds_every_shard_everywhere(tmp_path: Path) -> None:
    c = BenchCluster(tmp_path / "c", ClusterOptions(replicas=3, shards=4))
    c._write_config()
    raw = yaml.safe_load(c.config_path.read_text())
    assert "replication" not in raw["cluster"] and "placement" not in raw["cluster"]
    assert c.placement == () and c.hosted("r2") == [0, 1, 2, 3] and len(c.raft_ports("r3")) == 4
    assert "replication" not in c.opt.describe()
    assert ClusterOptions().start_timeout == 60.0 and ClusterOptions().replication is None


def test_settings_carry_replication_to_the_cluster_options() -> None:
    s = cli.settings_from(cli.build_parser().parse_args(["scaleout"]))
    assert s.cluster_options().replication is None and s.cluster_options().start_timeout == 60.0
    s.replication, s.start_timeout = 3, 180.0
    assert s.cluster_options(replicas=9).replication == 3 and s.cluster_options().start_timeout == 180.0


def test_a_code_tree_cluster_refuses_replication(tmp_path: Path) -> None:
    tree = codemod.CodeTree("baseline", "x", "f" * 40, tmp_path / "tree")
    c = BenchCluster(tmp_path / "c", ClusterOptions(code=tree, replicas=9, replication=3))
    with pytest.raises(ValueError, match="every shard on every replica"):
        c._write_config()


# ------------------------------------------------------------ the probe


def _probe(replication: int | None, **kw: Any) -> so.Probe:
    p = so.Probe.__new__(so.Probe)
    hosted = kw.pop("hosted", {"r1": [0, 1], "r2": [1, 2], "r3": [0, 2]} if replication else
                    {r: [0, 1, 2] for r in ("r1", "r2", "r3")})
    defaults: dict[str, Any] = {
        "replication": replication, "replicas": sorted(hosted), "shards": 3, "ran": True,
        "config_replication": replication,
        "placement": [["r1", "r3"], ["r2", "r1"], ["r3", "r2"]] if replication else [],
        "hosted": hosted, "held": {r: list(v) for r, v in hosted.items()}, "led": {r: v[:1] for r, v in hosted.items()},
        "members_wrong": {r: [] for r in hosted}, "unanswered": {},
        "ports": {r: {"missing": [], "extra": [], "raft": len(v)} for r, v in hosted.items()}}
    defaults.update(kw)
    for k, v in defaults.items():
        setattr(p, k, v)
    return p


def test_probe_problems() -> None:
    assert _probe(None).problems() == []
    assert _probe(2).problems() == []
    assert _probe(2, ran=False).problems() == ["the shape probe did not run"]
    assert _probe(None, config_replication=3).problems() == [
        "the configuration places the shards (replication 3); every replica should hold every shard"]
    assert _probe(2, config_replication=None).problems() == ["the configuration says replication None, not 2"]
    assert "in groups of 1, not 3 in groups of 2" in _probe(2, placement=[["r1"], ["r2"], ["r3"]]).problems()[0]
    assert _probe(2, members_wrong={"r1": [], "r2": [0, 2], "r3": []}).problems() == [
        "r2's ClusterInfo shows other members than configured for shard(s) 0,2"]
    assert _probe(2, held={"r1": [0, 1], "r2": [0, 1, 2], "r3": [0, 2]}).problems() == [
        "r2 answers for shard(s) 0,1,2, it holds 1,2"]
    ports = {"r1": {"missing": [], "extra": []}, "r2": {"missing": [7001], "extra": [7005]},
             "r3": {"missing": [], "extra": []}}
    assert _probe(2, ports=ports).problems() == [
        "r2 does not listen on exactly its API and its shards' Raft ports (missing 7001, extra 7005)"]
    assert _probe(2, unanswered={"r3": "RpcError: gone"}).problems() == ["r3 did not answer ClusterInfo: RpcError: gone"]
    lopsided = {"r1": [0, 1, 2], "r2": [1], "r3": [0, 2]}
    assert "not balanced: replicas hold 1 to 3 shards" in _probe(2, hosted=lopsided).problems()[0]
    rec = _probe(2).record()
    assert rec["held"] == {"r1": [0, 1], "r2": [1, 2], "r3": [0, 2]} and rec["problems"] == []
