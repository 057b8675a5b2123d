"""bench striping: one large file archived by 1 agent whole, 1 agent striped
and 4 agents striped, on real clusters with the posix mover; each object is
checked against the file, and the parts' spread comes from the agents' logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.slow  # six clusters of processes, a GiB file each


def test_it_archives_the_file_every_way_and_spreads_the_parts(tmp_path: Path) -> None:
    assert main(["striping", "--size-mib", "1024", "--part-mib", "256", "--link", "200",
                 "--results", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "striping-latest.json").read_text())
    assert out["verdict"]["all_ok"] and len(out["runs"]) == 6
    for r in out["runs"]:
        assert r["ok"] and r["state"] == "SUCCEEDED", r
        if r["run"] == "whole":
            assert r["parts"] == 0 and r["attempts"] == 1 and not r["checksum"].startswith("sha256/")
        else:
            assert r["parts"] == 4 and r["attempts"] == 2 and r["checksum"].startswith(f"sha256/{256 << 20}:")
        if r["run"] == "striped-4":
            assert sorted(r["parts_per_agent"]) == ["agent1", "agent2", "agent3", "agent4"], r
    md = (tmp_path / "striping-latest.md").read_text()
    assert "4 agents striped / 1 agent whole" in md
