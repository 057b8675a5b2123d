"""What the cost part's 50 rules cost one shard's state machine, in one
process: ``python -m bench.policy_apply [--actions N] [--repeat R]``.

The cluster flood of ``python -m bench policy`` measures the whole system,
and on a shared host its rounds swing by a quarter; this measures one
part alone, without the host's noise between processes: the same items
(``bench.clients.item_facts``) go through one ``ShardState`` as a leader
drives it (Submit in batches of 1000 with the admission mask the leader
computes, a dispatcher ``plan`` for two agents serving the bench's routing
tags, ``AssignRound``, ``Complete``), with the rules and without, the two
alternating. Each command kind's CPU time per action is reported (time
spent computing the masks, the leader's, is apart: ``admit``). The modules
are the installed ones (compiled when built; ``HSM_PURE_PYTHON=1``: pure).

Results: RESULTS/policy-apply-latest.json / .md."""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections import Counter
from pathlib import Path

from bench.machine import machine
from bench.policy import routing_tags, rules_yaml
from bench.stats import median_to

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("admit", "submit", "plan", "assign", "complete")


def run(rules: bool, n: int) -> dict[str, float]:
    """One pass over *n* archives: CPU µs per action of each phase."""
    from bench.clients import item_facts
    from coordinator import scheduler
    from coordinator.state import (
        AssignRound,
        Complete,
        Completion,
        Item,
        Kind,
        Requester,
        SetPolicy,
        ShardState,
        State,
        Submit,
    )
    from hsm.fid import Fid

    st = ShardState()
    if rules:
        st.apply(SetPolicy(0.0, 2, rules_yaml()))
    pol = st.policy
    spent: Counter[str] = Counter()
    clock = time.process_time
    for b0 in range(0, n, 1000):
        facts = [item_facts(i + 1) for i in range(b0, min(n, b0 + 1000))]
        masks: list[int] = []
        if rules:
            t = clock()
            masks = [pol.holding(Kind.ARCHIVE, 1, path, size, uid, gid, 0, "bench0") for path, size, uid, gid in facts]
            spent["admit"] += clock() - t
        items = [Item("fs", Fid(0x200000400, b0 + k + 1, 0), Kind.ARCHIVE, archive_id=1,
                      requester=Requester("bench0", 0, uid, gid), path=path, size=size,
                      admitted=(st.policy_version, 1, masks[k]) if rules else None)
                 for k, (path, size, uid, gid) in enumerate(facts)]
        t = clock()
        st.apply(Submit(1.0, tuple(items)))
        spent["submit"] += clock() - t
    tags = tuple(routing_tags()) if rules else ()
    agents = ("agent1", "agent2")
    affinity = scheduler.Affinity([(a, tags, ()) for a in agents])
    outlook = scheduler.Outlook()
    now = 2.0
    while True:
        offers = [scheduler.Offer(a, (), {Kind.ARCHIVE: 32}) for a in agents]
        t = clock()
        planned = scheduler.plan(st, offers, now, None, affinity, outlook)
        spent["plan"] += clock() - t
        if not planned:
            break
        t = clock()
        st.apply(AssignRound(now, planned))
        spent["assign"] += clock() - t
        for agent, ids in planned:
            done = tuple(Completion(i, st.actions[i].attempt) for i in ids)
            t = clock()
            st.apply(Complete(now, done, agent))
            spent["complete"] += clock() - t
        now += 0.01
    left = sum(st.counts.get((Kind.ARCHIVE, s), 0) for s in (State.WAITING, State.STARTED))  # all ended
    if left:
        raise RuntimeError(f"{left} actions did not end")
    return {p: round(spent[p] / n * 1e6, 2) for p in PHASES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.policy_apply", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=100_000, help="archives per pass (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="passes with and without the rules (default 3)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the results go")
    args = ap.parse_args(argv)
    gc.set_threshold(50_000, 50, 200)  # the services' (hsm.gctune)
    passes: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.repeat):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            got = run(mode == "on", args.actions)
            passes[mode].append(got)
            print(f"pass {r + 1} rules {mode}: " + ", ".join(f"{p} {got[p]:.2f}" for p in PHASES)
                  + " µs per action", flush=True)
    med = {m: {p: median_to((x[p] for x in passes[m]), 2) for p in PHASES} for m in passes}
    state = {m: round(sum(med[m][p] for p in PHASES if p != "admit"), 2) for m in med}
    out = {"kind": "policy_apply", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
           "actions": args.actions, "repeat": args.repeat, "passes": passes, "medians": med,
           "state_us_per_action": state}
    m = out["machine"]
    lines = ["# hsm-coordinator benchmark: the 50 rules in one shard's state machine", "",
             f"{out['when']}; {m.get('cores')} cores, Python {m.get('python')}, commit {m.get('git_commit')}"
             f"{' (dirty)' if m.get('git_dirty') else ''}. `python -m bench.policy_apply --actions "
             f"{args.actions} --repeat {args.repeat}`: {args.actions:,} archives through one ShardState, "
             "with the cost part's rules (and its routing tags served by two agents) and without; CPU µs per "
             "action, medians of the passes (see the module's docstring).", "",
             "| phase | rules | none | difference |", "|---|---|---|---|"]
    for p in PHASES:
        lines.append(f"| {p} | {med['on'][p]:.2f} | {med['off'][p]:.2f} | {med['on'][p] - med['off'][p]:+.2f} |")
    lines += [f"| **state machine** (all but admit) | {state['on']:.2f} | {state['off']:.2f} | "
              f"{state['on'] - state['off']:+.2f} |", "",
              "`admit` is the leader's alone (the mask its Raft entry carries); every replica of the shard "
              "applies the rest.", ""]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "policy-apply-latest.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (args.results / "policy-apply-latest.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
