"""``python -m bench move`` without a cluster: the arguments, the gap and
latency figures, the move command's output, the probe's FIDs, the checks'
verdicts and the Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import cli
from bench import move as mv
from bench.cluster import Run
from hsm.fid import Fid
from hsm.ring import Ring

# ------------------------------------------------------------ arguments


def test_move_arguments_and_sizes() -> None:
    p = cli.build_parser()
    a = p.parse_args(["move"])
    assert (a.workload, a.move_shard, a.actions, a.replicas, a.shards) == ("move", 0, None, None, None)
    a = p.parse_args(["move", "--full", "--move-shard", "5", "--actions", "900"])
    assert (a.mode, a.move_shard, a.actions) == ("full", 5, 900)
    assert mv.ACTIONS == {"quick": 50_000, "full": 1_000_000}
    assert (mv.REPLICAS, mv.SHARDS, mv.REPLICATION) == (4, 8, 3)


@pytest.mark.parametrize(("flags", "message"), [
    (["--replicas", "3"], "--replicas must be more than 3"),
    (["--shards", "0"], "--shards must be at least 1"),
    (["--move-shard", "8"], "--move-shard must be one of the cluster's shards"),
    (["--move-shard", "-1"], "--move-shard must be one of the cluster's shards"),
    (["--shards", "4", "--move-shard", "4"], "--move-shard must be one of the cluster's shards"),
    (["--actions", "2"], "--actions must be at least 3")])
def test_bad_arguments_are_usage_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["move", *flags, "--no-save", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no cluster was started


def test_move_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "move           a shard moved under the flood" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["move", "--help"])
    out = capsys.readouterr().out
    assert "--move-shard N" in out and "shard move SHARD SOURCE TARGET --wait" in out


# ------------------------------------------------------------ figures


def test_gaps_inside_and_outside_the_window() -> None:
    acks = [0.0, 0.1, 0.2, 1.0, 1.1, 3.0, 3.05, 3.5]
    g = mv.gaps(acks, 1.05, 2.0)
    # 1.1 -> 3.0 overlaps the window [1.05, 2.0], and so does 1.0 -> 1.1; 0.2 -> 1.0 ends before it
    assert g["longest_inside_s"] == 1.9 and g["gaps_inside"] == 2
    assert (g["longest_inside_from_s"], g["longest_inside_to_s"]) == (0.05, 1.95)
    assert g["longest_outside_s"] == 0.8 and g["longest_outside_from_s"] == round(0.2 - 1.05, 3)
    assert g["acks"] == 8


def test_a_gap_across_the_whole_window_is_inside_and_no_acks_measure_nothing() -> None:
    g = mv.gaps([0.0, 5.0], 1.0, 2.0)
    assert g["longest_inside_s"] == 5.0 and g["gaps_inside"] == 1 and g["longest_outside_s"] is None
    empty = mv.gaps([], 1.0, 2.0)
    assert empty["longest_inside_s"] is None and empty["longest_outside_s"] is None and empty["gaps_inside"] == 0
    one = mv.gaps([1.5], 1.0, 2.0)
    assert one["gaps_inside"] == 0 and one["acks"] == 1


def test_latency_split() -> None:
    items = [(0.0, 0.01), (0.5, 0.52), (0.9, 1.3), (1.5, 1.6), (2.5, 2.51)]
    lat = mv.latency_split(items, 1.0, 2.0)
    assert (lat["inside_n"], lat["outside_n"]) == (2, 3)  # (0.9, 1.3) meets the window
    assert lat["p50_inside_ms"] == 100.0 and lat["max_inside_ms"] == 400.0
    assert lat["p50_outside_ms"] == 10.0 and lat["p99_outside_ms"] == 20.0
    none = mv.latency_split([], 0.0, 1.0)
    assert none["inside_n"] == 0 and none["p99_inside_ms"] is None and none["max_outside_ms"] is None


def test_the_move_commands_output_is_parsed() -> None:
    lines = [(1.8, "shard 0: moving r1 -> r4 (joining); group r1, r2, r3, r4 (leader r1)"),
             (2.4, "shard 0: moving r1 -> r4 (caught up)"),
             (2.9, "shard 0: moving r1 -> r4 (caught up)"),  # the command prints changes only; a repeat is harmless
             (3.4, "shard 0: moving r1 -> r4 (leaving)"),
             (4.1, "shard 0: moved; group r4, r2, r3")]
    p = mv.parse_move_output(lines)
    assert p["recorded_s"] == 1.8 and p["done_s"] == 4.1 and p["end"] == "moved"
    assert p["phases"] == {"joining": 1.8, "caught up": 2.4, "leaving": 3.4}
    assert p["group"] == ["r4", "r2", "r3"]
    assert mv.phase_at(p["phases"], 0.5, p["done_s"]) == "before"
    assert mv.phase_at(p["phases"], 2.0, p["done_s"]) == "joining"
    assert mv.phase_at(p["phases"], 3.0, p["done_s"]) == "caught up"
    assert mv.phase_at(p["phases"], 3.4, p["done_s"]) == "leaving"
    assert mv.phase_at(p["phases"], 4.5, p["done_s"]) == "done"
    # a move that ended at once (the command's first answer was the last) and one that never ended
    quick = mv.parse_move_output([(0.9, "shard 3: no move runs; group r4, r2, r3 (leader r2)"),
                                  (1.4, "shard 3: moved; group r4, r2, r3")])
    assert quick["phases"] == {} and quick["done_s"] == 1.4 and quick["recorded_s"] == 1.4
    never = mv.parse_move_output([(1.0, "shard 0: moving r1 -> r4 (joining); group r1, r2, r3, r4 (leader r1)")])
    assert never["done_s"] is None and never["end"] is None
    aborted = mv.parse_move_output([(1.0, "shard 0: aborted; group r1, r2, r3")])
    assert aborted["end"] == "aborted"


def test_watched_span() -> None:
    changes = [[0.0, "r1", 2, ""], [4.5, "r1", 2, "moving r1 -> r4 (joining)"],
               [5.37, "r4", 3, "moving r1 -> r4 (caught up)"], [6.63, "r4", 3, ""], [7.0, "r2", 4, ""]]
    assert mv.watched_span(changes) == (4.5, 6.63)
    assert mv.watched_span(changes[:3]) is None  # never seen ended
    assert mv.watched_span([[0.0, "r1", 2, ""], [1.0, "", 0, "no answer: RpcError"]]) is None


def test_probe_oids_are_on_the_shard_in_order() -> None:
    assert mv.probe_oids(lambda f: f.oid % 3, 1, 4) == [1, 4, 7, 10]
    assert mv.probe_oids(lambda f: f.oid % 3, 0, 2, oid0=5) == [6, 9]
    ring = Ring(8)
    oids = mv.probe_oids(ring.shard_of, 5, 20)
    assert len(set(oids)) == 20 and oids == sorted(oids)
    assert all(ring.shard_of(Fid(mv.SEQ_PROBE, o, 0)) == 5 for o in oids)
    nxt = mv.oid_source(ring.shard_of, 5)
    assert [nxt() for _ in range(20)] == oids


def test_moved_group_and_leader_seen() -> None:
    assert mv.moved_group(["r1", "r2", "r3"], "r1", "r4") == ["r4", "r2", "r3"]
    assert mv.moved_group(["r2", "r1", "r3"], "r1", "r4") == ["r2", "r4", "r3"]
    views: dict[str, Any] = {"r1": {0: [["r4", "r2", "r3"], "", ""]}, "r2": {0: [["r4", "r2", "r3"], "", "r4"]},
                             "r3": {0: [["r4", "r2", "r3"], "", "r4"]}, "r4": "Unavailable: down"}
    assert mv.leader_seen(views, 0, ["r4", "r2", "r3"]) == "r4"
    assert mv.leader_seen(views, 1, ["r4", "r2", "r3"]) is None


def test_group_problems() -> None:
    placement = [["r4", "r2", "r3"], ["r2", "r3", "r4"]]
    good = {rid: {0: [["r4", "r2", "r3"], "", "r4"], 1: [["r2", "r3", "r4"], "", "r2"]} for rid in ("r1", "r2")}
    assert mv.group_problems(good, placement) == []
    bad = {"r1": {0: [["r1", "r2", "r3"], "", "r1"], 1: [["r2", "r3", "r4"], "moving r2 -> r1 (joining)", "r2"]},
           "r2": "RpcError: no"}
    found = mv.group_problems(bad, placement)
    assert len(found) == 3 and "r2 did not answer" in found[2]
    assert "shard 0's group as ['r1', 'r2', 'r3'], not ['r4', 'r2', 'r3']" in found[0]
    assert "(moving r2 -> r1 (joining))" in found[1]


def test_fid_check() -> None:
    fids = [str(Fid(mv.SEQ_PROBE, k, 0)) for k in range(1, 5)]
    runs = [Run(1.0, 11, 1, 20, 0, "a1", fids[0]), Run(1.1, 12, 1, 20, 0, "a2", fids[1]),
            Run(1.2, 13, 1, 20, 0, "a1", fids[1]), Run(1.3, 14, 1, 20, 5, "a1", fids[2]),
            Run(1.4, 15, 1, 20, 0, "a1", "[0x1:0x1:0x0]")]  # not one of ours
    f = mv.fid_check(fids, runs)
    assert (f["fids"], f["missing"], f["several_actions"], f["errors"]) == (4, 1, 1, 1)
    assert f["missing_examples"] == [fids[3]] and f["several_examples"] == {fids[1]: [12, 13]}
    ok = mv.fid_check(fids[:1], runs)
    assert (ok["missing"], ok["several_actions"], ok["errors"]) == (0, 0, 0)


def test_count_check_and_outsiders_share() -> None:
    assert mv.count_check({"SUCCEEDED": 10}, 10) == []
    assert mv.count_check({"SUCCEEDED": 9, "WAITING": 1, "FAILED": 0}, 10) == [
        "9 actions SUCCEEDED, not 10", "actions in other states: WAITING 1"]
    assert mv.outsiders_share({"host_capacity_s": 20.0, "other_s": 3.0}, 1.0) == 10.0
    assert mv.outsiders_share({"host_capacity_s": 20.0, "other_s": 0.5}, 1.0) == 0.0
    assert mv.outsiders_share({}, None) is None


def test_run_counter_reads_whole_lines_and_leaves_the_probe_out(tmp_path: Path) -> None:
    probe = str(Fid(mv.SEQ_PROBE, 1, 0)).split(":")[0] + ":"
    f = tmp_path / "agent1.runs"
    f.write_text(f"1.0 11 1 20 0 [0x200001400:0x1:0x0]\n1.1 12 1 20 0 {Fid(mv.SEQ_PROBE, 3, 0)}\n1.2 13 1 2")
    counter = mv.RunCounter(tmp_path, probe)
    assert counter.count() == 1
    with open(f, "a") as fh:  # the line being written ends, another comes
        fh.write("0 0 [0x200001400:0x2:0x0]\n1.3 14 1 20 0 [0x200001401:0x1:0x0]\n")
    assert counter.count() == 3
    (tmp_path / "agent2.runs").write_text("1.4 15 1 20 0 [0x200001402:0x1:0x0]\n")
    assert counter.count() == 4


# ------------------------------------------------------------ verdicts and output


def _out(**changes: Any) -> dict[str, Any]:
    lines = [[1.8, "shard 0: moving r1 -> r4 (joining); group r1, r2, r3, r4 (leader r1)"],
             [2.4, "shard 0: moving r1 -> r4 (caught up)"], [4.1, "shard 0: moved; group r4, r2, r3"]]
    parsed = mv.parse_move_output([(t, x) for t, x in lines])
    out: dict[str, Any] = {
        "kind": "move", "mode": "quick", "when": "now", "wall_seconds": 30.0, "actions": 1000, "shard": 0,
        "move_at": 0.333, "probe_interval_s": 0.02, "machine": {"cores": 2},
        "settings": {"replicas": 4, "shards": 8, "replication": 3, "agents": 2, "clients": 4, "batch": 1000,
                     "inflight": 2},
        "move": {"shard": 0, "source": "r1", "target": "r4", "leader_before": "r1", "returncode": 0, "error": "",
                 "stdout": lines, "stderr": "", "parsed": parsed, "seconds": 4.1, "recorded_to_done_s": 2.3,
                 "expected_group": ["r4", "r2", "r3"], "watched": "r2", "command_cpu_s": 1.2,
                 "watched_span_s": [1.9, 4.0],
                 "leader_changes": [[0.1, "r1", 2, ""], [1.9, "r1", 2, "moving r1 -> r4 (joining)"],
                                    [3.2, "r2", 3, "moving r1 -> r4 (leaving)"], [4.0, "r2", 3, ""]]},
        "probe": {"submitted": 100, "acknowledged": 100, "unacknowledged": 0, "outcomes": {"CREATED": 100},
                  "not_created": 0, "duplicate_ids": 0, "items_resubmitted": 0, "error": "",
                  "gaps": mv.gaps([0.0, 1.0, 2.0, 3.5, 4.0, 5.0], 1.5, 4.1),
                  "latency": mv.latency_split([(0.0, 0.01), (2.0, 3.5)], 1.5, 4.1)},
        "flood": {"actions_per_s": 5000.0, "seconds": 0.2, "outcomes": {"CREATED": 1000}, "runs_per_s_before": 1.0,
                  "runs_per_s_during": 2.0, "runs_per_s_after": None, "submitting_during_move_share": 0.5,
                  "running_during_move_share": 1.0, "move_started_s": 1.0, "move_ended_s": 5.1},
        "checks": {"counts": {"SUCCEEDED": 1100}, "counts_problems": [],
                   "flood_fids": {"fids": 1000, "missing": 0, "several_actions": 0, "errors": 0},
                   "probe_fids": {"fids": 100, "missing": 0, "several_actions": 0, "errors": 0},
                   "actions_run": 1100, "actions_expected": 1100, "run_twice": 0, "group_problems": [],
                   "port_problems": [], "journal_problems": [], "digest_problems": [], "leader_after": "r4"},
    }
    for k, v in changes.items():
        section, _, key = k.partition("__")
        if key:
            out[section][key] = v
        else:
            out[section] = v
    return out


def test_a_clean_run_has_no_problems_and_its_markdown_says_so() -> None:
    out = _out()
    assert mv.problems(out) == []
    out["problems"], out["passed"] = [], True
    md = mv.markdown(out)
    assert "**Checks: passed.** Lost: 0; run twice: 0." in md
    assert "| the move, command to `moved` line | 4.10 s |" in md
    assert ("**longest gap between two acknowledgements of shard 0, during the move** | **1.500 s** (from 0.50 to "
            "2.00 s after the command; it began before the command's first line)") in md
    phases = out["move"]["parsed"]
    assert mv._phase_note({"longest_inside_from_s": 2.0}, phases) == "; it began in phase joining, as the command saw it"
    assert mv._phase_note({"longest_inside_from_s": None}, phases) == ""
    assert "[   4.10 s] shard 0: moved; group r4, r2, r3" in md
    assert "- 3.20 s: leader r2, term 3, moving r1 -> r4 (leaving)" in md
    assert "| the move, as r2 showed it running (polled every 0.25 s) | 2.10 s (from 1.90 to 4.00 s after" in md
    assert "Leader of shard 0 before: r1, after: r4." in md
    assert "**Failures:**" not in md


@pytest.mark.parametrize(("changes", "words"), [
    ({"move__returncode": 1, "move__stderr": "hsm-coordinator shard: the move is not done after 300 s"},
     "`shard move` exited 1: hsm-coordinator shard: the move is not done"),
    ({"move__parsed": {"end": None, "group": None, "phases": {}, "done_s": None, "recorded_s": 1.0}},
     "printed no `moved` line"),
    ({"move__expected_group": ["r4", "r3", "r2"]}, "says the group is ['r4', 'r2', 'r3']"),
    ({"flood__outcomes": {"CREATED": 999, "JOINED": 1}}, "flood: 999 of 1,000 items CREATED"),
    ({"probe__unacknowledged": 2}, "probe: 2 item(s) never acknowledged"),
    ({"probe__not_created": 1}, "probe: 1 item(s) acknowledged with an outcome other than CREATED"),
    ({"probe__duplicate_ids": 1}, "probe: 1 action id(s) acknowledged for more than one item"),
    ({"probe__gaps": mv.gaps([], 1.0, 2.0)}, "the pause was not measured"),
    ({"checks__counts_problems": ["1,099 actions SUCCEEDED, not 1,100"]}, "counts: 1,099 actions SUCCEEDED"),
    ({"checks__probe_fids": {"fids": 100, "missing": 1, "several_actions": 0, "errors": 0,
                             "missing_examples": ["[0x200007400:0x9:0x0]"]}}, "probe: 1 FID(s) never run (lost)"),
    ({"checks__flood_fids": {"fids": 1000, "missing": 0, "several_actions": 2, "errors": 0,
                             "several_examples": {}}}, "flood: 2 FID(s) run by more than one action"),
    ({"checks__run_twice": 3}, "3 action(s) ran twice on the movers"),
    ({"checks__actions_run": 1099}, "the movers ran 1,099 actions, not 1,100"),
    ({"checks__group_problems": ["r1 shows shard 0's group as ['r1', 'r2', 'r3']"]}, "r1 shows shard 0's group"),
    ({"checks__port_problems": ["r1 does not listen on exactly"]}, "r1 does not listen on exactly"),
    ({"checks__journal_problems": ["r1 (the source) still keeps a journal"]}, "still keeps a journal"),
    ({"checks__digest_problems": ["the members of shard 0 hold different states"]}, "hold different states"),
])
def test_every_failed_check_is_a_problem(changes: dict[str, Any], words: str) -> None:
    out = _out(**changes)
    found = mv.problems(out)
    assert any(words in x for x in found), found
    out["problems"], out["passed"] = found, False
    md = mv.markdown(out)
    assert "**Checks: FAILED.**" in md and "**Failures:**" in md and words in md


def test_markdown_of_a_run_that_failed_before_measuring() -> None:
    md = mv.markdown({"kind": "move", "mode": "quick", "when": "now", "wall_seconds": 3.0, "actions": 10,
                      "shard": 0, "problems": ["the run failed: RuntimeError: boom"], "passed": False})
    assert "**Checks: FAILED.** Lost: n/a" in md and "RuntimeError: boom" in md
