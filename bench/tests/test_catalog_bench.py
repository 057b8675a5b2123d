"""bench catalog: its figures come from a real catalog filled by the shard
state machine, and they move when the copies do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import catalog as cb
from bench.cli import main


def test_it_writes_its_figures_and_they_grow_with_what_a_copy_holds(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["catalog", "--copies", "3000", "--results", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "catalog-latest.json").read_text())
    assert out["copies"] == 3000 and out["ls_all"]["copies_listed"] == 3000
    assert out["ls_path"]["copies_listed"] == 60  # /project/p07: one file in 50
    assert 300 < out["bytes_per_copy_memory"] < 2000 and 100 < out["bytes_per_copy_snapshot"] < 1000
    assert "memory per copy per replica" in (tmp_path / "catalog-latest.md").read_text()

    # a path 1000 bytes longer costs about 1000 bytes more per copy, in memory and in a snapshot
    base = cb.facts

    def longer(n: int) -> tuple[object, ...]:
        f = base(n)
        return (*f[:7], f[7] + "x" * 1000)

    monkeypatch.setattr(cb, "facts", longer)
    assert main(["catalog", "--copies", "3000", "--results", str(tmp_path / "long")]) == 0
    long = json.loads((tmp_path / "long" / "catalog-latest.json").read_text())
    assert 900 < long["bytes_per_copy_memory"] - out["bytes_per_copy_memory"] < 1200
    assert 900 < long["bytes_per_copy_snapshot"] - out["bytes_per_copy_snapshot"] < 1200
