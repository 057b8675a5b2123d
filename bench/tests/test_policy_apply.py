"""``python -m bench.policy_apply`` on a small pass: it runs both modes to
the end (a pass raises when an action did not end), writes its results,
and only the rules' pass computes admission masks. No timed assertion."""

from __future__ import annotations

import json
from pathlib import Path

from bench import policy_apply


def test_small_pass_writes_both_modes(tmp_path: Path) -> None:
    assert policy_apply.main(["--actions", "1500", "--repeat", "2", "--results", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "policy-apply-latest.json").read_text())
    assert len(out["passes"]["on"]) == len(out["passes"]["off"]) == 2
    assert all(p["admit"] == 0 for p in out["passes"]["off"])  # no rules, no masks
    assert all(p["admit"] > 0 for p in out["passes"]["on"])
    assert all(p[k] > 0 for mode in ("on", "off") for p in out["passes"][mode]
               for k in ("submit", "plan", "assign", "complete"))
    md = (tmp_path / "policy-apply-latest.md").read_text()
    assert "| **state machine** (all but admit) |" in md and "--actions 1500 --repeat 2" in md

