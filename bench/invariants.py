"""Per-FID invariants of the restore storm (pure functions, no cluster).

A storm asks for F released files, each by several initiators. Dedup
promises one RESTORE per FID and one dispatch of it: a second action for
the same FID, or a second dispatch, moves the data twice, exactly like an
action run twice. The figures are computed from two independent records:

* the coordinator's: every RESTORE action it kept (``list_actions`` with
  the ended ones), each with its FID and ``attempt`` (how many times it was
  assigned to an agent);
* the agents' shims': every mover run, with its action id and FID.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

#: the sections that carry per-FID figures (both variants of the restore storm)
STORM_SECTIONS = ("restore_storm", "restore_storm_instant")


def spread(counts: Counter[str], keys: Iterable[str]) -> dict[str, Any]:
    """max, mean and how many keys have a count above 1, over *keys* (a key
    missing from *counts* counts 0), with up to 5 example keys above 1."""
    keys = list(keys)
    values = [counts.get(k, 0) for k in keys]
    over = [k for k in keys if counts.get(k, 0) > 1]
    return {"max": max(values, default=0), "mean": round(sum(values) / len(values), 4) if values else None,
            "over_1": len(over), "zero": sum(1 for v in values if v == 0),
            "examples": {k: counts[k] for k in over[:5]}}


def per_fid_counts(fids: Iterable[str], actions: Iterable[tuple[int, str, int]],
                   runs: Iterable[tuple[int, str]]) -> dict[str, Any]:
    """Per-FID figures over the FIDs a storm requested.

    *actions*: the coordinator's RESTORE actions as (action id, FID, attempt);
    *runs*: the shims' RESTORE mover runs as (action id, FID).

    ``created``: actions per FID (coordinator); ``dispatched``: mover runs
    per FID (shims); ``assigned``: the sum of the FID's actions' attempts
    (the coordinator's own count of dispatches). ``runs_fid_mismatch``
    counts runs whose FID differs from the coordinator's FID for that action
    id, ``runs_unknown_action`` runs of an action the coordinator does not
    list (both 0 unless a record is wrong)."""
    fids = list(dict.fromkeys(fids))
    created: Counter[str] = Counter()
    assigned: Counter[str] = Counter()
    fid_of: dict[int, str] = {}
    for action_id, fid, attempt in actions:
        created[fid] += 1
        assigned[fid] += attempt
        fid_of[action_id] = fid
    dispatched: Counter[str] = Counter()
    mismatch = unknown = 0
    for action_id, fid in runs:
        known = fid_of.get(action_id)
        if known is None:
            unknown += 1
        elif fid and fid != known:
            mismatch += 1
        dispatched[fid or known or f"action {action_id}"] += 1
    wanted = set(fids)
    return {"fids": len(fids), "created": spread(created, fids), "dispatched": spread(dispatched, fids),
            "assigned": spread(assigned, fids),
            "actions_on_other_fids": sum(n for f, n in created.items() if f not in wanted),
            "runs_on_other_fids": sum(n for f, n in dispatched.items() if f not in wanted),
            "runs_fid_mismatch": mismatch, "runs_unknown_action": unknown}


def per_fid_breaks(section: str, data: dict[str, Any]) -> list[str]:
    """The per-FID invariants one storm result breaks (empty: none)."""
    pf = data.get("per_fid")
    if not isinstance(pf, dict):
        return []
    out = []
    # "assigned" (the coordinator's attempts) is a cross-check, not an
    # invariant: an attempt given back unstarted is assigned but never run
    for key, what in (("created", "RESTORE actions created"), ("dispatched", "dispatches (mover runs)")):
        s = pf.get(key) or {}
        if (s.get("max") or 0) > 1:
            out.append(f"{section}: {s['over_1']:,} of {pf['fids']:,} FIDs got more than one of {what} "
                       f"(max {s['max']} per FID, mean {s['mean']})")
    return out


def all_per_fid_breaks(done: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name in STORM_SECTIONS:
        d = done.get(name)
        if isinstance(d, dict):
            out += per_fid_breaks(name, d)
    return out
