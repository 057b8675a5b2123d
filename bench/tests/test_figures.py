"""Unit tests of the per-FID invariants and the CPU-per-action figures
(pure functions, small fabricated inputs, no cluster)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench import cli, report
from bench.cluster import BenchCluster, ClusterOptions, Run
from bench.cpu import CLASSES, classify_replicas, deltas, per_action
from bench.invariants import per_fid_breaks, per_fid_counts, spread

A, B, C = "[0x200002400:0x1:0x0]", "[0x200002400:0x2:0x0]", "[0x200002400:0x3:0x0]"


# ------------------------------------------------------------ per FID


def test_spread_counts_missing_keys_as_zero() -> None:
    s = spread(Counter({A: 1, B: 3}), [A, B, C])
    assert s["max"] == 3 and s["mean"] == round(4 / 3, 4) and s["over_1"] == 1 and s["zero"] == 1
    assert s["examples"] == {B: 3}
    assert spread(Counter(), [])["mean"] is None


def test_per_fid_one_each_holds() -> None:
    pf = per_fid_counts([A, B], [(1, A, 1), (2, B, 1)], [(1, A), (2, B)])
    assert pf["fids"] == 2
    for key in ("created", "dispatched", "assigned"):
        assert pf[key]["max"] == 1 and pf[key]["mean"] == 1.0 and pf[key]["over_1"] == 0
    assert pf["runs_fid_mismatch"] == pf["runs_unknown_action"] == 0
    assert per_fid_breaks("restore_storm", {"per_fid": pf}) == []


def test_per_fid_late_duplicate_creates_and_dispatches_again() -> None:
    # FID A: two actions (a late duplicate after the first ended), each run once;
    # FID B: one action run twice (a second attempt); FID C: never restored
    actions = [(1, A, 1), (2, B, 2), (3, A, 1)]
    runs = [(1, A), (2, B), (2, B), (3, A)]
    pf = per_fid_counts([A, B, C], actions, runs)
    assert pf["created"] == {"max": 2, "mean": 1.0, "over_1": 1, "zero": 1, "examples": {A: 2}}
    assert pf["dispatched"]["max"] == 2 and pf["dispatched"]["over_1"] == 2 and pf["dispatched"]["mean"] == round(4 / 3, 4)
    assert pf["assigned"]["max"] == 2 and pf["assigned"]["over_1"] == 2
    breaks = per_fid_breaks("restore_storm_instant", {"per_fid": pf})
    assert len(breaks) == 2
    assert "1 of 3 FIDs got more than one of RESTORE actions created (max 2" in breaks[0]
    assert "2 of 3 FIDs got more than one of dispatches" in breaks[1]


def test_per_fid_runs_checked_against_the_coordinator() -> None:
    # a run whose FID differs from the coordinator's, one of an unknown action,
    # one from an old shim record (no FID: the coordinator's FID is used)
    pf = per_fid_counts([A, B], [(1, A, 1), (2, B, 1)], [(1, B), (9, C), (2, "")])
    assert pf["runs_fid_mismatch"] == 1 and pf["runs_unknown_action"] == 1
    assert pf["dispatched"]["examples"] == {B: 2} and pf["runs_on_other_fids"] == 1


def test_runs_parse_old_and_new_shim_lines(tmp_path: Path) -> None:
    c = BenchCluster(tmp_path, ClusterOptions())
    c.runs_dir.mkdir()
    (c.runs_dir / "agent1.runs").write_text(f"2.5 7 1 21 0 {A}\n1.5 6 1 21 0\nbad line\n")
    assert c.runs() == [Run(1.5, 6, 1, 21, 0, "agent1", ""), Run(2.5, 7, 1, 21, 0, "agent1", A)]


def test_per_fid_breaks_fail_the_run() -> None:
    pf = per_fid_counts([A], [(1, A, 1), (2, A, 1)], [(1, A), (2, A)])
    bad = cli.correctness_failures({"restore_storm_instant": {"run_twice": 0, "per_fid": pf}})
    assert len(bad) == 2 and bad[0].startswith("restore_storm_instant: 1 of 1 FIDs")
    good = per_fid_counts([A], [(1, A, 1)], [(1, A)])
    assert cli.correctness_failures({"restore_storm_instant": {"run_twice": 0, "per_fid": good}}) == []
    # an action run twice is fatal in both variants
    assert cli.correctness_failures({"restore_storm_instant": {"run_twice": 1}}) == [
        "restore_storm_instant: 1 actions ran twice on the movers"]


# ------------------------------------------------------------------ CPU


def test_deltas_from_two_samples() -> None:
    before = {"r1": 10.0, "r2": 5.0, "agent1": 1.0, "gone": 3.0}
    after = {"r1": 12.5, "r2": 5.25, "agent1": 1.5, "new": 9.0}
    assert deltas(before, after) == {"r1": 2.5, "r2": 0.25, "agent1": 0.5}
    # a process killed in the phase counts up to its last sample
    assert deltas(before, after, {"gone": 4.0})["gone"] == 1.0
    # a counter never goes back; a reused or odd reading counts 0
    assert deltas({"x": 5.0}, {"x": 4.0}) == {"x": 0.0}


def test_classify_replicas_by_shards_led() -> None:
    led = {"r1": [0, 3, 6], "r2": [1, 4, 7], "r4": []}
    assert classify_replicas(["r1", "r2", "r3", "r4"], led) == {
        "r1": "leader", "r2": "leader", "r3": "follower", "r4": "follower"}


def _window(**changes: object) -> dict[str, object]:
    w: dict[str, object] = {
        "processes_s": {"r1": 2.0, "r2": 0.5, "r3": 0.5, "agent1": 0.2, "agent2": 0.2},
        "replica_class": {"r1": "leader", "r2": "follower", "r3": "follower"},
        "shards_led": {"r1": [0]}, "mean_shards_led": {"r1": 1.0}, "agents": ["agent1", "agent2"],
        "clients_s": 0.4, "clients_n": 4, "harness_s": 0.1}
    w.update(changes)
    return w


def test_cpu_per_action_by_class() -> None:
    pa = per_action(_window(), 1000, "archive action")
    c = pa["classes"]
    assert list(c) == list(CLASSES)
    assert c["leader"] == {"processes": 1, "names": ["r1"], "cpu_s": 2.0, "us_per_action": 2000.0,
                           "us_per_action_per_process": 2000.0}
    assert c["follower"]["processes"] == 2 and c["follower"]["us_per_action"] == 1000.0
    assert c["follower"]["us_per_action_per_process"] == 500.0
    assert c["agentd"]["us_per_action"] == 400.0 and c["agentd"]["names"] == ["agent1", "agent2"]
    assert c["client"] == {"processes": 4, "names": [], "cpu_s": 0.4, "us_per_action": 400.0,
                           "us_per_action_per_process": 100.0}
    assert pa["total_us_per_action"] == 3800.0 and pa["harness_us_per_action"] == 100.0
    assert pa["replicas"]["r1"] == {"class": "leader", "shards_led": [0], "mean_shards_led": 1.0, "cpu_s": 2.0,
                                    "us_per_action": 2000.0}
    assert pa["replicas"]["r3"]["shards_led"] == [] and pa["unit"] == "archive action" and pa["count"] == 1000


def test_cpu_per_action_empty_classes_and_no_actions() -> None:
    # every replica led a shard (3 x 8): no follower; no client process (queue depth)
    pa = per_action(_window(replica_class={"r1": "leader", "r2": "leader", "r3": "leader"}, clients_s=0.0,
                            clients_n=0), 1000, "x")
    assert pa["classes"]["leader"]["processes"] == 3 and pa["classes"]["leader"]["us_per_action"] == 3000.0
    assert pa["classes"]["follower"] == {"processes": 0, "names": [], "cpu_s": 0.0, "us_per_action": None,
                                         "us_per_action_per_process": None}
    assert pa["classes"]["client"]["us_per_action"] is None
    assert per_action(_window(), 0, "x")["classes"]["leader"]["us_per_action"] is None


# -------------------------------------------------------------- report


def test_markdown_shows_per_fid_and_cpu(tmp_path: Path) -> None:
    cpa = per_action(_window(), 1000, "restore action created")
    ok = per_fid_counts([A, B], [(1, A, 1), (2, B, 1)], [(1, A), (2, B)])
    bad = per_fid_counts([A, B], [(1, A, 1), (2, B, 1), (3, A, 1)], [(1, A), (2, B), (3, A)])
    base = {"fids": 2, "initiators": 4, "requests_per_s": 100.0, "drain_seconds": 1.0, "run_twice": 0,
            "mode": "quick", "cluster": {"replicas": 3, "shards": 8}, "cpu_per_action": cpa}
    storm = {**base, "dispatched": 2, "per_fid": ok, "note": "every duplicate meets a live action"}
    instant = {**base, "dispatched": 3, "per_fid": bad, "note": "the 1 s variant hides a defect"}
    _, md, _ = report.save({"restore_storm": storm, "restore_storm_instant": instant}, {"cores": 2},
                           {"mode": "quick"}, tmp_path)
    text = md.read_text()
    assert ("| restore storm (1 s restores), RESTORE actions created per FID, max / mean | 1 / 1.0 (0 of 2 FIDs "
            "above 1) | 1 / 1.00 (invariant) | **met**") in text
    assert ("| restore storm (instant restores), RESTORE actions created per FID, max / mean | 2 / 1.5 (1 of 2 "
            "FIDs above 1) | 1 / 1.00 (invariant) | **INVARIANT BROKEN**") in text
    assert "- **INVARIANT BROKEN**: restore_storm_instant: 1 of 2 FIDs got more than one of RESTORE actions" in text
    assert "the run failed (exit 1)" in text
    assert "**INVARIANT BROKEN**: restore_storm:" not in text
    assert "the 1 s variant hides a defect" in text
    row = next(line for line in text.splitlines() if line.startswith("| restore storm (instant restores), requests"
                                                                      " accepted | 100 requests/s | restore"))
    assert "| 2,000 (1) | 1,000 (2) | 400 (2) | 400 (4) | 3,800 | 100 | r1 2,000 (1 led)" in row
