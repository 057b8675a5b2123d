"""bench scaleout: a small flood on 3 replicas x 18 shards and on 9 x 18
in groups of 3, real processes; the report's shape and the shape checks,
not the figure's value (two cores say little about it in a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scaleout as so
from bench.cli import main

pytestmark = pytest.mark.slow  # two clusters of processes, one of nine replicas


def test_both_shapes_run_in_their_shape_and_are_reported(tmp_path: Path) -> None:
    assert main(["scaleout", "--actions", "2000", "--results", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "scaleout-latest.json").read_text())
    assert out["kind"] == "scaleout" and out["actions"] == 2000 and out["cluster"]["shards"] == 18
    assert out["failures"] == {} and out["invariant_breaks"] == []
    assert [len(out["floods"][shape]) for shape in so.MODES] == [1, 1]
    assert [(e["shape"], e["position"]) for e in out["timeline"]] == [("3", 1), ("9", 2)]
    for shape, (replicas, replication, held) in {"3": (3, None, 18), "9": (9, 3, 6)}.items():
        d = out["floods"][shape][0]
        assert d["actions"] == 2000 and d["run_twice"] == 0 and d["replicas"] == replicas and d["shards"] == 18
        assert d["cluster"].get("replication") == replication
        probe = d["shape_probe"]
        assert probe["problems"] == [] and probe["config_replication"] == replication
        assert sorted(probe["held"]) == [f"r{i}" for i in range(1, replicas + 1)]
        assert all(len(v) == held for v in probe["held"].values()), probe["held"]
        assert probe["held"] == probe["hosted"]
        assert all(p["missing"] == [] and p["extra"] == [] and p["raft"] == held for p in probe["ports"].values())
        assert all(v == [] for v in probe["members_wrong"].values())
        # a replica leads only shards it holds, as it says itself
        assert all(set(v) <= set(probe["held"][rid]) for rid, v in probe["led_at_end"].items())
        if replication is not None:  # every shard in a group of 3, each replica in 6 of them
            assert len(probe["placement"]) == 18 and all(len(g) == 3 for g in probe["placement"])
        table = out["replicas"][shape]
        assert len(table) == replicas and all(r["held"] == held for r in table.values())
        assert all(r["us_per_action"] is not None and r["us_per_action"] > 0 for r in table.values())
        fig = out["flood"][shape]
        assert fig["actions_per_s"] > 0 and fig["replica_us_min"] <= fig["replica_us_per_action"] <= fig[
            "replica_us_max"]
    v = out["verdict"]
    assert v["target"] == 0.4 and v["status"] in ("met", "missed") and v["ratio"] is not None
    assert v["ratio"] == so.ratio(out["flood"]["9"]["replica_us_per_action"],
                                  out["flood"]["3"]["replica_us_per_action"])
    md = (tmp_path / "scaleout-latest.md").read_text()
    assert "CPU µs per action per replica, 9 / 3:" in md and "### 9 replicas, per replica" in md
    assert len(list((tmp_path / "runs").glob("*-scaleout.json"))) == 1
