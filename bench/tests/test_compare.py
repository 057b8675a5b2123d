"""Tests of ``python -m bench compare`` and ``python -m bench sealing``
without a cluster: argument handling, which code a process imports (a
real baseline extracted with git archive, real subprocesses), the ratios,
the results files, the seal timings' arithmetic. Seconds in all; no timed
assertion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import cli, compare, sealing
from bench import code as codemod
from bench.cluster import BenchCluster, ClusterOptions
from bench.workloads import Settings

REPO = codemod.REPO


def _has_commit(rev: str) -> bool:
    try:
        codemod.resolve(rev)
    except (RuntimeError, OSError):
        return False
    return True


needs_baseline = pytest.mark.skipif(not _has_commit(compare.DEFAULT_BASELINE),
                                    reason="the baseline commit is not in this clone")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> codemod.CodeTree:
    return codemod.extract(compare.DEFAULT_BASELINE, tmp_path_factory.mktemp("code") / "baseline")


# ------------------------------------------------------------ arguments


def test_parse_workloads() -> None:
    assert compare.parse_workloads(None) == list(compare.DEFAULT_WORKLOADS)
    assert compare.parse_workloads("archive-flood, memory,flood") == ["archive_flood", "queue_depth"]
    assert compare.parse_workloads("restore_storms") == ["restore_storm", "restore_storm_instant"]
    assert compare.parse_workloads("all") == list(compare.WORKLOADS)
    with pytest.raises(ValueError, match="unknown workload 'florp'"):
        compare.parse_workloads("archive_flood,florp")
    with pytest.raises(ValueError):
        compare.parse_workloads(",")


def test_compare_and_sealing_arguments() -> None:
    p = cli.build_parser()
    a = p.parse_args(["compare", "--full", "--baseline", "abc123", "--workloads", "queue-depth", "--repeat", "2",
                      "--large", "5000"])
    assert (a.workload, a.baseline, a.workloads, a.repeat) == ("compare", "abc123", "queue-depth", 2)
    s = cli.settings_from(a)
    assert s.mode == "full" and s.queue_large == 5000 and s.flood_actions == 1_000_000 and s.code is None
    a = p.parse_args(["compare"])
    assert a.baseline == compare.DEFAULT_BASELINE == "66e78be" and a.repeat == 1 and a.workloads is None
    a = p.parse_args(["sealing", "--actions", "3000", "--repeat", "2", "--no-save"])
    assert (a.workload, a.actions, a.repeat, a.no_save) == ("sealing", 3000, 2, True)


def test_unknown_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--workloads", "nope", "--no-save"])
    assert e.value.code == 2 and "unknown workload 'nope'" in capsys.readouterr().err


def test_a_baseline_that_is_no_commit_stops_before_any_cluster(tmp_path: Path) -> None:
    said: list[str] = []
    args = cli.build_parser().parse_args(["compare", "--baseline", "no-such-rev-0000", "--workdir", str(tmp_path),
                                          "--results", str(tmp_path / "results")])
    assert compare.compare(args, cli.settings_from(args), said.append) == 2
    assert "cannot prepare the code to compare" in said[-1] and "no-such-rev-0000" in said[-1]
    assert list(tmp_path.iterdir()) == []  # the temporary trees are gone, no results written


def test_sides_alternate() -> None:
    assert compare.side_order(0, 0) == ("baseline", "new")
    assert compare.side_order(1, 0) == ("new", "baseline")
    assert compare.side_order(0, 1) == ("new", "baseline")
    assert compare.side_order(3, 1) == ("baseline", "new")


# ------------------------------------------------------------ which code runs


@needs_baseline
def test_extract_writes_the_baseline_packages_and_marker(baseline: codemod.CodeTree) -> None:
    assert baseline.commit.startswith("66e78be") and len(baseline.commit) == 40
    assert {"coordinator", "agentd", "hsm"} <= set(baseline.packages)
    assert (baseline.root / "coordinator" / "raft.py").is_file()  # one module then, a package now
    assert not (baseline.root / "bench").exists()  # the harness comes from the repository
    assert (baseline.root / "hsm" / "v1" / "coordinator_pb2.py").is_file()  # its own stubs
    assert json.loads((baseline.root / codemod.MARKER).read_text())["commit"] == baseline.commit


@needs_baseline
def test_capabilities_come_from_the_tree_itself(baseline: codemod.CodeTree) -> None:
    caps = codemod.capabilities(baseline)
    assert caps["hsm_ctime"] is False and caps["remember"] is False and caps["agent_lease"] is False
    assert caps["cluster_id"] is False and caps["null_delay"] is True and "encrypt" in caps["raft_tuning"]
    s = Settings(code=codemod.with_capabilities(baseline))
    assert not s.understands("hsm_ctime") and s.cluster_options().code is s.code
    assert Settings().understands("hsm_ctime")


@needs_baseline
def test_a_process_started_like_a_replica_imports_the_baseline(baseline: codemod.CodeTree, tmp_path: Path) -> None:
    # what BenchCluster runs: python -P -m bench.codeprobe RECORD coordinator.cli ..., cwd elsewhere,
    # PYTHONPATH=<tree>:<repo>, the editable install of the working tree still in the venv
    c = BenchCluster(tmp_path / "c", ClusterOptions(code=baseline))
    c.code_dir.mkdir(parents=True)
    cmd = [*c._python_m("r1", "coordinator.cli"), "--help"]
    assert cmd[1:4] == ["-P", "-m", "bench.codeprobe"]
    r = subprocess.run(cmd, env=baseline.env(), cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"runs coordinator.cli from {baseline.root}" in r.stderr and baseline.commit in r.stderr
    records = c.code_records()
    rec = records["r1"]
    assert rec["stage"] == "exit" and rec["commit"] == baseline.commit
    assert rec["modules"]["coordinator"] == str(baseline.root / "coordinator" / "__init__.py")
    assert rec["modules"]["hsm.v1.coordinator_pb2"] == str(baseline.root / "hsm" / "v1" / "coordinator_pb2.py")
    assert codemod.check_records(records, baseline, ["r1"]) == []
    assert codemod.check_records(records, baseline, ["r1", "agent1"]) == ["agent1: no code record"]


@needs_baseline
def test_a_client_process_imports_the_baseline_client(baseline: codemod.CodeTree, tmp_path: Path) -> None:
    # a spawned client gets the harness's sys.path (the working tree first); use_code puts the tree first
    params = {"code_root": str(baseline.root), "code_dir": str(tmp_path)}
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom bench.clients import use_code\n"
              f"use_code({params!r})\nimport hsm.client; print(hsm.client.__file__)")
    r = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(baseline.root / "hsm" / "client.py")
    records = codemod.read_records(tmp_path)
    (name, rec), = records.items()
    assert name.startswith("client-") and rec["commit"] == baseline.commit
    assert codemod.check_records(records, baseline) == []


def test_records_from_the_wrong_tree_are_problems(tmp_path: Path) -> None:
    tree = codemod.CodeTree("baseline", "x", "f" * 40, tmp_path / "tree")
    good = {"modules": {"hsm": str(tmp_path / "tree" / "hsm" / "__init__.py"), "grpc": "/elsewhere/grpc.py"}}
    bad = {"modules": {"hsm": str(tmp_path / "tree" / "hsm" / "__init__.py"),
                       "coordinator.state": str(REPO / "coordinator" / "state.py")}}
    problems = codemod.check_records({"r1": good, "r2": bad, "r3": {"modules": {}}}, tree)
    assert len(problems) == 2
    assert problems[0].startswith("r2: 1 product module(s) not from") and "coordinator.state" in problems[0]
    assert problems[1] == "r3: recorded no product module"
    assert codemod.outside({"hsm.fid": "/x/hsm/fid.cpython-311-x86_64-linux-gnu.so"}, Path("/x")) == {}
    summary = codemod.summarize_records({"r1": {"pid": 1, "modules": {
        "hsm.fid": "/x/hsm/fid.cpython-311-x86_64-linux-gnu.so", "hsm": "/x/hsm/__init__.py"}}})
    assert summary["r1"]["compiled_modules"] == ["hsm.fid"] and summary["r1"]["hsm"] == "/x/hsm/__init__.py"


def test_snapshot_copies_the_working_tree(tmp_path: Path) -> None:
    tree = codemod.snapshot(tmp_path / "new")
    assert tree.label == "new" and tree.commit.startswith(codemod.git("rev-parse", "HEAD"))
    assert (tree.root / "coordinator" / "node.py").read_bytes() == (REPO / "coordinator" / "node.py").read_bytes()
    assert not list(tree.root.rglob("__pycache__"))
    assert json.loads((tree.root / codemod.MARKER).read_text())["commit"] == tree.commit
    env = tree.env({"PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tree.root), str(REPO)]
    assert env["HSM_BENCH_CODE_ROOT"] == str(tree.root)


def test_cluster_processes_with_and_without_a_tree(tmp_path: Path) -> None:
    plain = BenchCluster(tmp_path / "a", ClusterOptions())
    assert plain._python_m("r1", "coordinator.cli") == [sys.executable, "-m", "coordinator.cli"]
    assert plain.client_code() == {} and plain.check_code() == ([], {})
    tree = codemod.CodeTree("baseline", "x", "f" * 40, tmp_path / "tree")
    c = BenchCluster(tmp_path / "b", ClusterOptions(code=tree))
    assert c._python_m("agent1", "bench.agent_shim", also="agentd") == [
        sys.executable, "-P", "-m", "bench.codeprobe", "--also", "agentd", str(c.code_dir / "agent1.json"),
        "bench.agent_shim"]
    assert c.client_code() == {"code_root": str(tree.root), "code_dir": str(c.code_dir)}
    assert c.opt.describe()["code"] == {"label": "baseline", "commit": "f" * 40, "root": str(tree.root)}


# ------------------------------------------------------------ figures and files


def _flood(rate: float, replica_us: list[float], other: float = 1.0, run_twice: int = 0) -> dict[str, Any]:
    return {"actions": 1000, "actions_per_s": rate, "p99_start_ms": 100.0, "run_twice": run_twice,
            "peak_rss": {"r1": 100 * 2**20, "r2": 120 * 2**20},
            "cpu": {"other_s": other, "host_capacity_s": 10.0},
            "cpu_per_action": {"total_us_per_action": 300.0,
                               "classes": {"agentd": {"us_per_action_per_process": 15.0}, "client": {"us_per_action": 20.0}},
                               "replicas": {f"r{i + 1}": {"us_per_action": v} for i, v in enumerate(replica_us)}}}


def test_ratio_judgement_and_median() -> None:
    assert compare.ratio(150.0, 100.0) == 1.5 and compare.ratio(1, 0) is None and compare.ratio(None, 1) is None
    assert compare.judge(1.5, "higher") == "better" and compare.judge(1.5, "lower") == "worse"
    assert compare.judge(0.8, "lower") == "better" and compare.judge(1.04, "higher") == "same"
    assert compare.judge(None, "higher") == "" and compare.judge(2.0, "") == ""
    assert compare.median([3, 1, 2]) == 2 and compare.median([1.0, None, 2.0]) == 1.5 and compare.median([]) is None


def test_figure_values() -> None:
    d = _flood(5000.0, [50.0, 60.0, 70.0], other=2.5)
    assert compare.figure_value(d, "actions_per_s") == 5000.0
    assert compare.figure_value(d, "cpu_replica") == 60.0
    assert compare.figure_value(d, "cpu_agentd") == 15.0 and compare.figure_value(d, "cpu_client") == 20.0
    assert compare.figure_value(d, "other_share") == 25.0 and compare.figure_value(d, "peak_rss_mib") == 120.0
    assert compare.figure_value({"per_fid": {"created": {"max": 2}}}, "per_fid.created.max") == 2
    assert compare.figure_value(d, "no.such.path") is None and compare.figure_value(None, "x") is None
    assert compare.figure_value({"replicas_consistent": True}, "replicas_consistent") is None  # not a number


def test_rows_take_medians_of_rounds_and_ratios() -> None:
    results = {"baseline": {"archive_flood": [_flood(4000.0, [80.0] * 3), _flood(6000.0, [60.0] * 3)],
                            "memory": [{"bytes_per_waiting_action": 1200.0}]},
               "new": {"archive_flood": [_flood(10000.0, [40.0] * 3)], "memory": [{"bytes_per_waiting_action": 900.0}]}}
    by = {(r["section"], r["key"]): r for r in compare.rows(results)}
    rate = by[("archive_flood", "actions_per_s")]
    assert (rate["baseline"], rate["new"], rate["ratio"], rate["judgement"]) == (5000.0, 10000.0, 2.0, "better")
    assert rate["rounds"] == {"baseline": [4000.0, 6000.0], "new": [10000.0]}
    cpu = by[("archive_flood", "cpu_replica")]
    assert (cpu["baseline"], cpu["new"], cpu["ratio"], cpu["judgement"]) == (70.0, 40.0, 0.571, "better")
    mem = by[("memory", "bytes_per_waiting_action")]
    assert mem["ratio"] == 0.75 and mem["judgement"] == "better"
    assert ("restore_storm", "requests_per_s") not in by  # neither side ran it: no row
    shares = compare.outsider_shares(results)
    assert shares["archive_flood"] == {"baseline": [10.0, 10.0], "new": [10.0]}


def _tree(label: str, commit: str, **caps: Any) -> codemod.CodeTree:
    return codemod.CodeTree(label, "66e78be" if label == "baseline" else "working tree", commit,
                            Path(f"/tmp/{label}"), caps=caps)


def test_differences_follow_the_baseline_capabilities() -> None:
    old = _tree("baseline", "a" * 40, hsm_ctime=False, remember=False, agent_lease=False, cluster_id=False,
                raft_tuning=["encrypt"])
    new = _tree("new", "b" * 40, hsm_ctime=True, remember=True, agent_lease=True, cluster_id=True,
                raft_tuning=["encrypt"])
    d = compare.differences(old, new, ["archive_flood", "restore_storm_instant"])
    text = "\n".join(d)
    assert "no ctime_ns" in text and "cannot tell a late duplicate" in text and "no agent leases" in text
    assert "no cluster id" in text and "remember_ends" in text and "Raft tuning" not in text
    same = compare.differences(new, new, ["archive_flood"])
    assert not any("ctime" in x or "leases" in x for x in same)


def test_results_files_and_markdown(tmp_path: Path) -> None:
    base, new = _tree("baseline", "a" * 40), _tree("new", "b" * 40 + "+dirty", tree_digest="0123")
    storm_old = {"fids": 2, "initiators": 4, "requests_per_s": 100.0, "run_twice": 0,
                 "per_fid": {"fids": 2, "created": {"max": 2, "mean": 1.5, "over_1": 1},
                             "dispatched": {"max": 1, "mean": 1.0, "over_1": 0}}}
    storm_new = {**storm_old, "requests_per_s": 80.0,
                 "per_fid": {"fids": 2, "created": {"max": 1, "mean": 1.0, "over_1": 0},
                             "dispatched": {"max": 1, "mean": 1.0, "over_1": 0}}}
    results = {"baseline": {"archive_flood": [_flood(4000.0, [80.0] * 3)], "restore_storm_instant": [storm_old]},
               "new": {"archive_flood": [_flood(6000.0, [60.0] * 3)], "restore_storm_instant": [storm_new]}}
    out = {"kind": "compare", "mode": "quick", "when": "2026-01-01T00:00:00+0000", "wall_seconds": 12.0,
           "machine": {"cores": 2}, "rounds": 1, "baseline": base.describe(), "new": new.describe(),
           "differences": ["the baseline cannot tell late duplicates"], "rows": compare.rows(results),
           "outsiders_cpu_share_pct": compare.outsider_shares(results),
           "timeline": [{"workload": "archive_flood", "side": "baseline", "round": 1, "ok": True, "seconds": 3.0}],
           "failures": {"baseline": {}, "new": {"mixed": "RuntimeError: boom"}},
           "new_invariant_breaks": [], "baseline_invariant_breaks": compare.invariant_breaks(
               {"restore_storm_instant": storm_old}),
           "code_checks": {"baseline": [{"problems": [], "processes": {"r1": {"coordinator": "/tmp/baseline/c.py"}}}],
                           "new": []},
           "sections": results}
    assert compare.invariant_breaks({"restore_storm_instant": storm_new}) == []
    md = compare.markdown(out)
    paths = compare.save(out, md, tmp_path)
    assert [p.name for p in paths[:2]] == ["compare-latest.json", "compare-latest.md"]
    assert paths[2].parent == tmp_path / "runs" and paths[2].name.endswith("-compare.json")
    assert json.loads(paths[0].read_text())["rows"] == json.loads(paths[2].read_text())["rows"]
    text = paths[1].read_text()
    assert "| figure | baseline 66e78be (aaaaaaaaaaaa) | new bbbbbbbbbbbb + uncommitted changes |" in text
    assert "| archive flood: actions/s end to end | 4,000 | 6,000 | 1.500 | +50% (better) | 1,000 archives |" in text
    assert ("| restore storm, instant restores: RESTOREs created per FID, max | 2 | 1 | 0.500 | -50% (better) "
            "| 2 FIDs x 4 |") in text
    assert "archive_flood: baseline 10%, new 10%" in text
    assert "- the baseline cannot tell late duplicates" in text
    assert "- baseline: restore_storm_instant: 1 of 2 FIDs got more than one of RESTORE actions created" in text
    assert "- new: mixed: RuntimeError: boom" in text
    assert "- baseline: 1 clusters, 1 processes, no problem" in text


# ------------------------------------------------------------ sealing


def test_read_journal_as_the_product_writes_it(tmp_path: Path) -> None:
    from coordinator.raft.journal import _SegmentJournal
    from coordinator.raft.status import RaftStats

    for shard, n in ((0, 3), (1, 2)):
        d = tmp_path / "r1" / f"shard-{shard}"
        d.mkdir(parents=True)
        j = _SegmentJournal(d, shard, False, 1 << 20, RaftStats())
        for i in range(1, n + 1):
            j.add(b"command %d" % i, i, 1)
        j._close_fd()
    got = sealing.read_journal(tmp_path / "r1")
    assert got == {0: [(b"command 1", 1, 1), (b"command 2", 2, 1), (b"command 3", 3, 1)],
                   1: [(b"command 1", 1, 1), (b"command 2", 2, 1)]}
    s = sealing.journal_summary(got)
    assert s == {"shards": 2, "entries_kept": 5, "entries_written": 5, "entry_bytes_kept": 45,
                 "mean_entry_bytes": 9.0, "compacted": False}
    assert sealing.journal_summary({0: [(b"x", 500, 3), (b"y", 501, 3)]})["compacted"] is True


def test_seal_and_unseal_figures() -> None:
    journal = {0: [(b"submit " * 50 + bytes([i]), i, 2) for i in range(1, 41)], 1: [(b"complete " * 20, 7, 2)]}
    m = sealing.micro(journal, actions=400, replicas=3, shards=2, repeats=1)
    assert m["entries_timed"] == 41 and m["followers_per_entry"] == 2 and m["journal"]["compacted"] is True
    # entry 7 of shard 1 is alone: 6 earlier entries compacted, counted at the mean cost
    assert m["journal"]["entries_written"] == 47
    f, h = m["sealers"]["fernet"], m["sealers"]["hmac"]
    assert set(m["sealers"]) == {"fernet", "hmac", "aesgcm (reference)"}
    for x in (f, h):
        assert x["us_per_action_per_replica"] == pytest.approx(x["us_per_action_cluster"] / 3, abs=0.02)
        assert x["us_per_entry_cluster"] > 0 and x["idle_us_per_s_per_replica"] > 0
    # Fernet adds an IV, padding, a tag and base64; HMAC a header and a tag
    assert f["sealed_bytes_per_action"] > h["sealed_bytes_per_action"] > m["plain_bytes_per_action"] > 0
    assert m["framing"]["us_per_entry_cluster"] > 0 and m["framing"]["us_per_action_per_replica"] > 0


def test_the_sealers_round_trip() -> None:
    msg = sealing.entry_messages((b"payload", 5, 2))[0]
    for name, s in sealing.sealers().items():
        tok = s.encrypt_at_time(msg, 1234)
        assert s.extract_timestamp(tok) == 1234 and s.decrypt(tok) == msg, name


def test_verdict_and_markdown() -> None:
    micro_fig = {"sealers": {"fernet": {"us_per_action_per_replica": 6.0}, "hmac": {"us_per_action_per_replica": 2.0}}}
    on = {"actions_per_s": 900.0, "replica_us_per_action": 80.0}
    off = {"actions_per_s": 1000.0, "replica_us_per_action": 75.0}
    v = sealing.verdict(micro_fig, on, off)
    assert v["fernet_minus_hmac_us_per_action_per_replica"] == 4.0 and v["share_of_replica_cpu_pct"] == 5.0
    assert v["matters"] is True and v["flood_rate_on_over_off"] == 0.9 and v["flood_replica_us_on_minus_off"] == 5.0
    assert sealing.verdict(micro_fig, {**on, "replica_us_per_action": 100.0}, off)["matters"] is False
    assert sealing.verdict({}, on, off)["matters"] is None
    out = {"machine": {"cores": 2}, "when": "now", "mode": "quick", "wall_seconds": 5.0, "actions": 1000,
           "rounds": 1, "cluster": {"replicas": 3, "shards": 8}, "flood": {"on": on, "off": off}, "micro": {},
           "verdict": v, "failures": {}, "invariant_breaks": []}
    text = sealing.markdown(out)
    assert "| actions/s end to end | 900.0 | 1,000.0 | 0.900 |" in text
    assert "**it matters**" in text and "saves 4.00 µs per action per replica, 5.0 %" in text
