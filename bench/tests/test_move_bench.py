"""bench move: a small flood on 4 replicas x 8 shards in groups of 3 while
shard 0's preferred leader moves to the fourth replica, real processes; the
report's shape and that every check passed, not the figures' values (a
small flood on two cores may end before the move does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.slow  # a cluster of processes and a move


def test_a_move_under_a_small_flood_passes_its_checks_and_is_reported(tmp_path: Path) -> None:
    assert main(["move", "--actions", "6000", "--results", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "move-latest.json").read_text())
    assert out["kind"] == "move" and out["actions"] == 6000 and out["shard"] == 0
    assert out["passed"] is True and out["problems"] == []
    assert out["settings"]["replicas"] == 4 and out["settings"]["shards"] == 8
    assert out["settings"]["replication"] == 3 and out["cluster"]["replication"] == 3
    assert out["rebalancer"]["enabled"] is False
    # the move: shard 0's preferred leader to the replica outside its group, in its place
    before = out["placement_before"][0]
    m = out["move"]
    outside = ({"r1", "r2", "r3", "r4"} - set(before)).pop()
    assert (m["source"], m["target"]) == (before[0], outside) and m["leader_before"] == before[0]
    assert m["expected_group"] == [outside, *before[1:]] and m["parsed"]["group"] == m["expected_group"]
    assert m["returncode"] == 0 and m["parsed"]["end"] == "moved"
    assert m["stdout"][0][1].startswith(f"shard 0: moving {before[0]} -> {outside} (joining)")
    assert m["seconds"] > 0 and m["recorded_to_done_s"] > 0 and m["leader_changes"]
    # the probe, its gaps and latencies inside and outside the move
    p = out["probe"]
    assert p["acknowledged"] == p["submitted"] > 0 and p["unacknowledged"] == 0 and p["duplicate_ids"] == 0
    assert p["gaps"]["gaps_inside"] > 0 and p["gaps"]["longest_inside_s"] > 0
    assert p["latency"]["inside_n"] > 0 and p["latency"]["p99_inside_ms"] is not None
    # the checks
    c = out["checks"]
    assert c["counts"] == {"SUCCEEDED": 6000 + p["acknowledged"]}
    assert c["flood_fids"]["fids"] == 6000 and c["probe_fids"]["fids"] == p["acknowledged"]
    for f in (c["flood_fids"], c["probe_fids"]):
        assert (f["missing"], f["several_actions"], f["errors"]) == (0, 0, 0)
    assert c["run_twice"] == 0 and c["actions_run"] == c["actions_expected"] == 6000 + p["acknowledged"]
    assert c["group_problems"] == c["port_problems"] == c["journal_problems"] == c["digest_problems"] == []
    assert all(v["0"][0] == m["expected_group"] for v in c["groups"].values())
    assert not any(f.startswith("journal") for f in c["journals"][before[0]])
    assert any(f.startswith("journal") for f in c["journals"][outside])
    assert len(set(c["digests"].values())) == 1 and sorted(c["digests"]) == sorted(m["expected_group"])
    assert out["flood"]["actions_per_s"] > 0 and out["flood"]["outcomes"] == {"CREATED": 6000}
    md = (tmp_path / "move-latest.md").read_text()
    assert "**Checks: passed.** Lost: 0; run twice: 0." in md and "## The move command's output" in md
    assert len(list((tmp_path / "runs").glob("*-move.json"))) == 1
