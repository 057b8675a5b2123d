"""The nemesis's report: what a person reads after ``make nemesis``.

``RUN/report.json`` holds the numbers (stable keys, for comparing runs);
``RUN/report.md`` says the same in words: the seed (to replay the run),
how many faults of each kind were made and which kinds could not be, the
longest unavailability and the recovery times per fault kind, one line per
cycle, and the violations with the history of the first one.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.nemesis.checker import Violation
    from tests.nemesis.runner import CycleResult


def build(*, seed: int, cycles: int, run_dir: Path, started: float, setup_seconds: float,
          results: list[CycleResult], violations: list[tuple[int, Violation]], skipped: dict[str, str],
          recovery_bound: float, acks: list[dict[str, Any]], notes: dict[str, int],
          first_history: str | None, repeats: dict[tuple[str, str], int] | None = None) -> dict[str, Any]:
    """*violations*: each (kind, subject) once, in the cycle that found it
    first; *repeats*: how many later cycles found it again."""
    repeats = repeats or {}
    faults = [r for r in results if r.fault["kind"] != "final"]
    kinds = Counter(r.fault["kind"] for r in faults)
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted(kinds):
        rs = [r for r in faults if r.fault["kind"] == kind]
        rec = [r.recovered_after for r in rs if r.recovered_after is not None]
        per_kind[kind] = {
            "count": len(rs),
            "longest_unavailable": round(max(r.unavailable for r in rs), 2),
            "recovery_max": round(max(rec), 2) if rec else None,
            "recovery_mean": round(sum(rec) / len(rec), 2) if rec else None,
            "not_recovered": len(rs) - len(rec),
            "longest_settle": round(max(r.settle for r in rs), 2),
        }
    final = results[-1] if results and results[-1].fault["kind"] == "final" else None
    outcomes = Counter(a.get("outcome", "gave_up" if a.get("gave_up") else "?") for a in acks)
    ops = Counter(a.get("op", "?") for a in acks if not a.get("gave_up"))
    cycle_seconds = [r.seconds for r in faults]
    return {
        "seed": seed,
        "cycles": cycles,
        "cycles_done": len(faults),
        "ok": not violations,
        "run_dir": str(run_dir),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "setup_s": round(setup_seconds, 1),
        "cycle_s_mean": round(sum(cycle_seconds) / len(cycle_seconds), 1) if cycle_seconds else None,
        "cycle_s_max": round(max(cycle_seconds), 1) if cycle_seconds else None,
        "recovery_bound_s": recovery_bound,
        "faults": dict(kinds),
        "skipped": skipped,
        "per_kind": per_kind,
        "acks": {"total": sum(1 for a in acks if not a.get("gave_up")), "gave_up": sum(1 for a in acks
                                                                                      if a.get("gave_up")),
                 "by_op": dict(ops), "by_outcome": dict(outcomes)},
        "final": None if final is None else {"actions": final.actions, "unsettled": final.unsettled,
                                             "digests_agreed": final.digests_agreed, "seconds": round(final.seconds, 1)},
        "cycle_rows": [{"cycle": r.n, "kind": r.fault["kind"], "target": r.fault["target"],
                        "hold_s": round(r.fault["heal"] - r.fault["start"], 2),
                        "recovered_after": None if r.recovered_after is None else round(r.recovered_after, 2),
                        "unavailable_s": round(r.unavailable, 2), "unavailable_shard": r.unavailable_shard,
                        "settle_s": round(r.settle, 2), "unsettled": r.unsettled, "actions": r.actions,
                        "digests_agreed": r.digests_agreed, "violations": len(r.violations),
                        "seconds": round(r.seconds, 1)} for r in results],
        "violations": [{"cycle": n, "kind": v.kind, "subject": v.subject, "detail": v.detail,
                        "found_again": repeats.get((v.kind, v.subject), 0)} for n, v in violations],
        "first_violation_history": first_history,
        "notes": [{"cycle": n, "note": text} for text, n in notes.items()],
    }


def markdown(rep: dict[str, Any]) -> str:
    verdict = "no violation" if rep["ok"] else f"{len(rep['violations'])} violation(s)"
    lines = [
        "# Nemesis report",
        "",
        f"- seed **{rep['seed']}** (replay: `make nemesis CYCLES={rep['cycles']} SEED={rep['seed']}`)",
        f"- {rep['cycles_done']} of {rep['cycles']} cycles, {verdict}",
        f"- started {rep['started']}, {rep['duration_s']} s in all: set-up {rep['setup_s']} s, "
        f"cycles {rep['cycle_s_mean']} s on average ({rep['cycle_s_max']} s at most), final check "
        f"{rep['final']['seconds'] if rep['final'] else '-'} s",
        f"- run directory `{rep['run_dir']}`",
        f"- acknowledged requests: {rep['acks']['total']} ({_counts(rep['acks']['by_op'])}); outcomes "
        f"{_counts(rep['acks']['by_outcome'])}",
        "",
        "## Faults",
        "",
        f"Recovery: seconds from the heal until every shard took a probe write and every replica answered "
        f"(bound {rep['recovery_bound_s']} s). Unavailable: the longest a client waited in the cycle for one "
        "shard to acknowledge a write (probe writes every 0.5 s per shard; a healthy shard shows its commit "
        "latency).",
        "",
        "| kind | count | longest unavailable (s) | recovery max (s) | recovery mean (s) | not recovered "
        "| longest settle (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, k in rep["per_kind"].items():
        lines.append(f"| {kind} | {k['count']} | {k['longest_unavailable']} | {_n(k['recovery_max'])} | "
                     f"{_n(k['recovery_mean'])} | {k['not_recovered']} | {k['longest_settle']} |")
    if rep["skipped"]:
        lines += ["", "Not made here:", ""]
        lines += [f"- **{kind}**: {why}" for kind, why in rep["skipped"].items()]
    lines += ["", "## Cycles", "", "| cycle | fault | target | hold | recovered | unavailable | settle "
              "| actions | violations | seconds |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rep["cycle_rows"]:
        unavailable = f"{r['unavailable_s']}" + (f" (shard {r['unavailable_shard']})"
                                                 if r["unavailable_s"] > 1.0 else "")
        settle = f"{r['settle_s']}" + (f" ({r['unsettled']} unfinished)" if r["unsettled"] else "")
        lines.append(f"| {r['cycle']} | {r['kind']} | {r['target']} | {r['hold_s']} | {_n(r['recovered_after'])} | "
                     f"{unavailable} | {settle} | {r['actions']} | {r['violations']} | {r['seconds']} |")
    lines += ["", "## Violations", ""]
    if not rep["violations"]:
        lines.append("None.")
    for v in rep["violations"][:50]:
        again = v.get("found_again", 0)
        later = f" (found again in {again} later cycle{'s' if again > 1 else ''})" if again else ""
        lines.append(f"- cycle {v['cycle']}: **{v['kind']}** {v['subject']}: {v['detail']}{later}")
    if len(rep["violations"]) > 50:
        lines.append(f"- ... and {len(rep['violations']) - 50} more (report.json)")
    if rep["notes"]:
        lines += ["", "## Notes (not violations)", ""]
        lines += [f"- cycle {x['cycle']}: {x['note']}" for x in rep["notes"][:30]]
        if len(rep["notes"]) > 30:
            lines.append(f"- ... and {len(rep['notes']) - 30} more (report.json)")
    if rep["first_violation_history"]:
        lines += ["", "### History of the first violation", "", "```", rep["first_violation_history"], "```"]
    return "\n".join(lines) + "\n"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x}"


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"
