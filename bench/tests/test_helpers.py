"""Unit tests of the harness's pure helpers (no cluster):
``.venv/bin/python -m pytest -q bench/tests``."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.cli import build_parser, correctness_failures, settings_from
from bench.profile import _short, _thread_name, parse_raw, summarize
from bench.stats import percentile, window_rate


def test_percentile_nearest_rank() -> None:
    assert percentile([], 99) is None
    assert percentile([3.0], 50) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


def test_window_rate() -> None:
    assert window_rate([0.0, 0.5, 1.0, 1.5, 2.0], 0.0, 2.0) == 2.0
    assert window_rate([1.0], 2.0, 1.0) == 0.0


def test_settings_quick_full_and_flags() -> None:
    p = build_parser()
    quick = settings_from(p.parse_args(["archive-flood"]))
    assert quick.mode == "quick" and quick.flood_actions == 20_000
    full = settings_from(p.parse_args(["all", "--full"]))
    assert full.flood_actions == 1_000_000 and full.restore_fids == 100_000 and full.queue_large == 1_000_000
    own = settings_from(p.parse_args(["archive-flood", "--actions", "1234", "--replicas", "1", "--no-fsync"]))
    assert own.flood_actions == 1234 and own.replicas == 1 and own.fsync is False


def test_markdown_marks_met_missed_and_not_run(tmp_path: Path) -> None:
    flood = {"actions": 1000, "clients": 2, "actions_per_s": 25_000.0, "p50_start_ms": 1.0, "p99_start_ms": 2.0,
             "p50_done_ms": 3.0, "p99_done_ms": 4.0, "peak_rss": {"r1": 2**20}, "mode": "quick",
             "cluster": {"replicas": 3, "shards": 8}}
    storm = {"fids": 10, "initiators": 4, "dispatched": 12, "run_twice": 0, "requests_per_s": 1.0,
             "drain_seconds": 1.0, "mode": "quick", "cluster": {"replicas": 3, "shards": 8}}
    latest_path, md, runs = report.save({"archive_flood": flood, "restore_storm": storm}, {"cores": 2}, {"mode": "quick"},
                                        tmp_path)
    text = md.read_text()
    assert "| archive flood, end to end | 25,000 actions/s | ≥ 20,000 actions/s | **met**" in text
    assert "12 for 10 FIDs" in text and "**missed**" in text
    assert "| mixed + replica killed, actions lost | not run |" in text
    assert "LU-18556" in text and "LU-14793" in text
    latest = json.loads(latest_path.read_text())
    assert latest["machine"] == {"cores": 2} and set(latest) >= {"archive_flood", "restore_storm", "updated"}
    assert len(runs) == 2 and all(p.exists() for p in runs)
    # a later run of one workload keeps the others
    report.save({"mixed": {"lost": 0, "duplicates": 0, "acknowledged_actions": 5}}, {"cores": 2}, {}, tmp_path)
    latest = json.loads(latest_path.read_text())
    assert {"archive_flood", "restore_storm", "mixed"} <= set(latest)


def test_profile_parsing(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "thread (11): raft-tick-3;Thread.run (/usr/lib/python3.11/threading.py:982);"
        "SyncObj.doTick (/x/site-packages/pysyncobj/syncobj.py:609) 3\n"
        "thread (12): MainThread;main (/work/main/coordinator/cli.py:10);"
        "ShardState.apply (/work/main/coordinator/state.py:460) 1\n")
    stacks = parse_raw(raw)
    assert [n for _, n in stacks] == [3, 1]
    s = summarize(stacks)
    assert s["samples"] == 4
    assert s["self"][0] == ("pysyncobj/syncobj.py:SyncObj.doTick", 75.0)
    assert dict(s["threads"]) == {"raft-tick": 75.0, "MainThread": 25.0}
    assert _short("ShardState.apply (/work/main/coordinator/state.py:460)") == "coordinator/state.py:ShardState.apply"
    assert _thread_name("thread (1): Thread-1 (_poll_wrapper)") == "_poll_wrapper"


def test_correctness_failures() -> None:
    assert correctness_failures({}) == []
    assert correctness_failures({"archive_flood": {"run_twice": 0}, "mixed": {"lost": 0, "duplicates": 0,
                                                                             "replicas_consistent": True}}) == []
    bad = correctness_failures({"archive_flood": {"run_twice": 3}, "mixed": {"lost": 1, "duplicates": 2,
                                                                             "replicas_consistent": False}})
    assert len(bad) == 4 and "3 actions ran twice" in bad[0]
