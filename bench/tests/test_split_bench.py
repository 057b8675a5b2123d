"""bench split: a small flood on 3 replicas x 8 shards grown to 12 while a
restore storm asks for the same files, real processes; the report's shape
and that every check passed, not the figures' values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.split import parse_split_output

pytestmark = pytest.mark.slow  # a cluster of processes and a split


def test_the_phases_are_read_from_the_commands_output() -> None:
    got = parse_split_output([(0.1, "ring: 8 shards, version 1; split 8 -> 12 shards (ring version 2): opening"),
                              (1.2, "ring: 8 shards, version 1; split 8 -> 12 shards (ring version 2): moving; "
                                    "waiting: draining: shard 3: 1 moving file(s) running"),
                              (2.5, "ring: 12 shards, version 2; split 8 -> 12 shards (ring version 2): done")])
    assert got == {"phases": {"opening": 0.1, "moving": 1.2, "done": 2.5}, "done_s": 2.5}


def test_a_split_under_a_small_flood_and_a_storm_passes_its_checks_and_is_reported(tmp_path: Path) -> None:
    assert main(["split", "--actions", "6000", "--results", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "split-latest.json").read_text())
    assert out["kind"] == "split" and out["actions"] == 6000 and out["passed"] is True and out["problems"] == []
    assert out["settings"]["shards"] == 8 and out["settings"]["added"] == 4
    sp = out["split"]
    assert sp["returncode"] == 0 and sp["done_s"] > 0 and "opening" in sp["phases"]
    st = out["storm"]
    assert st["answers"] >= st["files"] * st["clients"] and set(st["outcomes"]) <= {"CREATED", "JOINED"}
    assert st["outcomes"]["CREATED"] == st["files"]  # one restore per file, every other answer joined it
    assert 0 < out["storm_files_moved"] < st["files"]
    assert out["runs"]["run_twice"] == 0 and out["flood"]["outcomes"] == {"CREATED": 6000}
    md = (tmp_path / "split-latest.md").read_text()
    assert md.startswith("# split (quick): 8 -> 12 shards under a flood") and "PASSED" in md
