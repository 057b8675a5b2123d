"""``python -m bench compare``: the same workloads on the baseline code and
on the new code, in one run, with the ratio of every figure.

The baseline is a commit (default :data:`DEFAULT_BASELINE`, the commit of
the README's figures), extracted with ``git archive``; the new code is the
working tree, copied when the run starts (bench.code). Both sides run the
same harness (this one: same workloads, same sizes, same client processes,
same agent shim) against clusters whose every process (replicas, agentd,
clients) runs that side's product code and generated stubs; every process
records the files it imported and a cluster whose processes ran the wrong
code fails that side's workload (bench.code, bench.codeprobe).

Fairness: the sides alternate which goes first (baseline first for the
first workload, new first for the next, and so on; with ``--repeat`` the
order flips each round and every figure is the median of its rounds), each
measurement records the share of the host's CPU used by processes outside
the benchmark, and the side that runs second starts with the same host
state (every cluster is fresh).

What the baseline does not understand, it is not sent (the HSM state's
ctime in restore requests, for one: bench.code.capabilities); what differs
because of that is listed in the output (``differences``). The new code's
invariants stay fatal (exit 1); the baseline's broken invariants are
reported beside its figures (it cannot tell late duplicates: its instant
restore storm creates more than one RESTORE per FID), not fatal.

Results: ``compare-latest.json`` and ``compare-latest.md`` in the results
directory, and ``runs/<time>-compare.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import code as codemod
from bench.stats import outside_cpu_share
from bench.workloads import Settings

#: the commit of the README's Performance figures (bench/results/latest.md, full mode)
DEFAULT_BASELINE = "66e78be"
SIDES = ("baseline", "new")

#: workload -> the result sections it produces
WORKLOADS: dict[str, tuple[str, ...]] = {
    "archive_flood": ("archive_flood",),
    "restore_storm": ("restore_storm",),
    "restore_storm_instant": ("restore_storm_instant",),
    "queue_depth": ("queue_depth", "memory"),
    "replication": ("replication",),
    "mixed": ("mixed",),
}
#: what the README compares: the flood, both restore storms, queue depth and memory per waiting action
DEFAULT_WORKLOADS = ("archive_flood", "restore_storm", "restore_storm_instant", "queue_depth")
_ALIASES = {"memory": "queue_depth", "storm": "restore_storm", "flood": "archive_flood",
            "restore_storms": "restore_storm,restore_storm_instant", "all": ",".join(WORKLOADS)}

COMPARE_HELP = """\
Runs the chosen workloads twice in one run: once on the code of a baseline commit (extracted with
git archive into a temporary directory) and once on the working tree (copied when the run starts),
same harness, same sizes; writes both sets of figures and their ratios (new / old) to
RESULTS/compare-latest.json and .md and RESULTS/runs/<time>-compare.json. Every process of both
sides records which code it imported; a cluster that ran other code fails that workload.

exit status: 0 when both sides ran every workload and the new code broke no invariant; 1 when a
workload failed on either side or the new code broke an invariant (an action run twice, more than
one RESTORE per FID, ...). The baseline's broken invariants are reported, not fatal. 2 when the
baseline cannot be extracted (no such commit) or a tree's code cannot be imported.
"""


def parse_workloads(text: str | None) -> list[str]:
    """``archive_flood,restore-storm,...`` -> workload names, in the order
    given, each once (hyphens or underscores; ``memory`` is queue_depth's;
    ``all`` is every workload); ValueError for an unknown name."""
    if not text:
        return list(DEFAULT_WORKLOADS)
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip().replace("-", "_")
        if not name:
            continue
        for n in _ALIASES.get(name, name).split(","):
            if n not in WORKLOADS:
                raise ValueError(f"unknown workload {raw.strip()!r}; known: {', '.join(WORKLOADS)}")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no workload given")
    return out


def side_order(workload_index: int, round_index: int) -> tuple[str, str]:
    """Which side runs first: alternating per workload and per round."""
    return SIDES if (workload_index + round_index) % 2 == 0 else (SIDES[1], SIDES[0])


# ------------------------------------------------------------ figures


@dataclass(frozen=True)
class Figure:
    section: str
    key: str  # a dotted path into the section, or a name in DERIVED
    label: str
    better: str  # "higher", "lower" or "" (a count: no direction)
    fmt: str = "{:,.0f}"


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _replica_us(d: Mapping[str, Any]) -> float | None:
    reps = (d.get("cpu_per_action") or {}).get("replicas") or {}
    return _mean([r["us_per_action"] for r in reps.values() if r.get("us_per_action") is not None])


def _class_us(cls: str, per_process: bool = False) -> Callable[[Mapping[str, Any]], Any]:
    def get(d: Mapping[str, Any]) -> Any:
        c = ((d.get("cpu_per_action") or {}).get("classes") or {}).get(cls) or {}
        return c.get("us_per_action_per_process" if per_process else "us_per_action")
    return get


def _peak_rss_mib(d: Mapping[str, Any]) -> float | None:
    v = [x for x in (d.get("peak_rss") or {}).values() if x]
    return round(max(v) / 2**20, 1) if v else None


def _replication_run1(key: str) -> Callable[[Mapping[str, Any]], Any]:
    def get(d: Mapping[str, Any]) -> Any:
        run = d.get("run_1")
        return DERIVED[key](run) if isinstance(run, Mapping) else None
    return get


DERIVED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "cpu_total": lambda d: (d.get("cpu_per_action") or {}).get("total_us_per_action"),
    "cpu_replica": _replica_us,
    "cpu_agentd": _class_us("agentd", per_process=True),
    "cpu_client": _class_us("client"),
    "other_share": outside_cpu_share,
    "peak_rss_mib": _peak_rss_mib,
}
DERIVED["run_1_cpu_replica"] = _replication_run1("cpu_replica")

_CPU = [("cpu_replica", "CPU µs per action, per replica (mean of the replicas)"),
        ("cpu_agentd", "CPU µs per action, per agentd"),
        ("cpu_client", "CPU µs per action, clients together"),
        ("cpu_total", "CPU µs per action, whole benchmark")]


def _storm(sec: str, name: str) -> list[Figure]:
    return [Figure(sec, "requests_per_s", f"{name}: requests accepted /s", "higher"),
            Figure(sec, "drain_seconds", f"{name}: time to drain (s)", "lower", "{:,.1f}"),
            Figure(sec, "actions", f"{name}: RESTORE actions created", "lower"),
            Figure(sec, "dispatched", f"{name}: actions dispatched", "lower"),
            Figure(sec, "per_fid.created.max", f"{name}: RESTOREs created per FID, max", "lower", "{}"),
            Figure(sec, "per_fid.created.mean", f"{name}: RESTOREs created per FID, mean", "lower", "{:.3f}"),
            Figure(sec, "cpu_us_per_request", f"{name}: CPU µs per request, whole benchmark", "lower"),
            *[Figure(sec, k, f"{name}: {t}".replace("per action", "per RESTORE created"), "lower") for k, t in _CPU]]


FIGURES: list[Figure] = [
    Figure("archive_flood", "actions_per_s", "archive flood: actions/s end to end", "higher"),
    Figure("archive_flood", "submits_per_s", "archive flood: submits acknowledged /s", "higher"),
    Figure("archive_flood", "p50_start_ms", "archive flood: submit-to-start p50 (ms)", "lower", "{:,.1f}"),
    Figure("archive_flood", "p99_start_ms", "archive flood: submit-to-start p99 (ms)", "lower", "{:,.1f}"),
    Figure("archive_flood", "p99_done_ms", "archive flood: submit-to-done p99 (ms)", "lower", "{:,.1f}"),
    Figure("archive_flood", "peak_rss_mib", "archive flood: peak RSS, worst replica (MiB)", "lower"),
    Figure("archive_flood", "run_twice", "archive flood: actions run twice", "lower", "{}"),
    *[Figure("archive_flood", k, f"archive flood: {t}", "lower") for k, t in _CPU],
    *_storm("restore_storm", "restore storm, 1 s restores"),
    *_storm("restore_storm_instant", "restore storm, instant restores"),
    Figure("queue_depth", "rate_1k", "queue depth: dispatch rate, small queue (/s)", "higher"),
    Figure("queue_depth", "rate_1m", "queue depth: dispatch rate, large queue (/s)", "higher"),
    Figure("queue_depth", "ratio", "queue depth: rate large / small", "higher", "{:.2f}"),
    Figure("queue_depth", "fill_per_s", "queue depth: large queue filled at (/s)", "higher"),
    Figure("queue_depth", "cpu_replica", "queue depth: CPU µs per dispatch, per replica", "lower"),
    Figure("memory", "bytes_per_waiting_action", "memory per waiting action, worst replica (bytes)", "lower"),
    Figure("replication", "rate_1", "replication: 1 replica, actions/s", "higher"),
    Figure("replication", "rate_3", "replication: 3 replicas, actions/s", "higher"),
    Figure("replication", "ratio", "replication: rate 3 / 1", "higher", "{:.2f}"),
    Figure("replication", "run_1_cpu_replica", "replication: 1 replica, CPU µs per action", "lower"),
    Figure("mixed", "requests_per_s_before", "mixed: requests/s before the kill", "higher"),
    Figure("mixed", "requests_per_s_after", "mixed: requests/s after the kill", "higher"),
    Figure("mixed", "longest_ack_gap_after_kill_s", "mixed: longest pause after the kill (s)", "lower", "{:.2f}"),
    Figure("mixed", "lost", "mixed: actions lost", "lower", "{}"),
    Figure("mixed", "duplicates", "mixed: actions run twice", "lower", "{}"),
]


def figure_value(data: Mapping[str, Any] | None, key: str) -> Any:
    """A figure of one section's result: a derived figure (DERIVED) or a
    dotted path; None when absent."""
    if not isinstance(data, Mapping):
        return None
    if key in DERIVED:
        return DERIVED[key](data)
    cur: Any = data
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def median(values: Sequence[Any]) -> Any:
    v = [x for x in values if x is not None]
    if not v:
        return None
    m = statistics.median(v)
    return int(m) if all(isinstance(x, int) for x in v) and m == int(m) else m


def ratio(new: Any, old: Any) -> float | None:
    """new / old, rounded; None when either is missing or old is 0."""
    if new is None or old is None or old == 0:
        return None
    return round(float(new) / float(old), 3)


#: a change smaller than this (either way) is reported as "same": run-to-run noise on a shared host
SAME_WITHIN = 0.05


def judge(r: float | None, better: str) -> str:
    """'better' / 'worse' / 'same' (within SAME_WITHIN) / '' for a ratio new/old."""
    if r is None or not better:
        return ""
    if abs(r - 1.0) < SAME_WITHIN:
        return "same"
    return "better" if (r > 1.0) == (better == "higher") else "worse"


def rows(results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per figure that either side measured: the median of each
    side's rounds, every round's value, new/old and its judgement.
    *results*: side -> section -> the section's results, one per round."""
    out = []
    for f in FIGURES:
        per = {side: [figure_value(d, f.key) for d in results.get(side, {}).get(f.section, [])] for side in SIDES}
        if not any(v is not None for vs in per.values() for v in vs):
            continue
        old, new = median(per["baseline"]), median(per["new"])
        r = ratio(new, old)
        out.append({"section": f.section, "key": f.key, "label": f.label, "better": f.better, "fmt": f.fmt,
                    "baseline": old, "new": new, "ratio": r, "judgement": judge(r, f.better),
                    "rounds": per})
    return out


def outsider_shares(results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, dict[str, list[Any]]]:
    """section -> side -> the outsiders' share of the host CPU (%) during
    each round's measurement (replication: of its 1-replica flood)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for side in SIDES:
        for sec, runs in results.get(side, {}).items():
            vals = [outside_cpu_share(d.get("run_1") if sec == "replication" and isinstance(d.get("run_1"), Mapping)
                                 else d) for d in runs]
            if any(v is not None for v in vals):
                out.setdefault(sec, {})[side] = vals
    return out


# ------------------------------------------------------------ differences


def differences(base: codemod.CodeTree, new: codemod.CodeTree, workloads: Sequence[str]) -> list[str]:
    """What the two sides are not given alike, or cannot do alike, from the
    baseline's capabilities (bench.code.capabilities)."""
    b, n = base.caps, new.caps
    out = ["Each side's configuration is written by its own coordinator.config.init_cluster with the same "
           "settings (3 replicas x 8 shards unless said, agent_grace 30 s, Raft timeouts, fsync, encryption, "
           "max_terminal); keys a side does not know are not written (both get their defaults for the rest)."]
    storms = [w for w in workloads if w.startswith("restore_storm")]
    if storms and n.get("hsm_ctime") and not b.get("hsm_ctime"):
        out.append("Restore storms: the baseline's HsmState has no ctime_ns, so its requests carry the flags and "
                   "archive id only (no ctime; the new code's carry the ctime, as hsmctl sends it). The baseline "
                   "cannot tell a late duplicate from a new request: in the instant variant it creates a new "
                   "RESTORE for a request that arrives after the FID's restore ended, so its created / dispatched "
                   "per FID is above 1 there (reported beside its figures, not fatal; the same figure is an "
                   "invariant, fatal, for the new code).")
    if n.get("remember") and not b.get("remember"):
        out.append("The baseline has no late-duplicate memory (remember_ends / remember_for): the key is not "
                   "written for either side (the new code runs with its defaults, 100,000 files for 3600 s); the "
                   "new code's memory per waiting action includes that memory where it holds ended restores.")
    if n.get("agent_lease") and not b.get("agent_lease"):
        out.append("The baseline has no agent leases: the new code's agents send a lease token on each stream "
                   "every heartbeat (or quarter lease) and replicas answer; that traffic is in the new code's CPU "
                   "figures only (nothing is cut off in these workloads, so no lease ends).")
    if n.get("cluster_id") and not b.get("cluster_id"):
        out.append("The baseline has no cluster id (cluster.id): its configuration has none, its replicas send "
                   "none and its clients and agents check none.")
    if b.get("raft_tuning") != n.get("raft_tuning"):
        only_n = sorted(set(n.get("raft_tuning", ())) - set(b.get("raft_tuning", ())))
        out.append(f"Raft tuning fields differ (new only: {', '.join(only_n) or 'none'}); both get the harness's "
                   "timeouts, the rest their own defaults.")
    out.append("The harness itself (cluster control, polling, ClusterInfo / Status / ListActions / GetAction / "
               "Control calls, the agent shim that records mover runs) is the working tree's for both sides, and "
               "talks to the baseline with the working tree's stubs (wire-compatible: fields added since, none "
               "renumbered).")
    return out


# ------------------------------------------------------------ running


def run_workload(name: str, s: Settings, done: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One workload on the code of *s*; the sections it produced. *done*:
    this side's sections of this round so far (replication reuses the
    flood of the same side and size)."""
    from bench import workloads as w

    if name == "archive_flood":
        return {"archive_flood": w.archive_flood(s)}
    if name == "restore_storm":
        return {"restore_storm": w.restore_storm(s, w.RESTORE_SECONDS, "restore_storm")}
    if name == "restore_storm_instant":
        return {"restore_storm_instant": w.restore_storm(s, 0.0, "restore_storm_instant")}
    if name == "queue_depth":
        qd, mem = w.queue_depth(s)
        return {"queue_depth": qd, "memory": mem}
    if name == "replication":
        flood = done.get("archive_flood")
        reuse = flood if isinstance(flood, dict) and flood.get("replicas") == 3 \
            and flood.get("actions") == s.replication_actions else None
        return {"replication": w.replication(s, reuse)}
    if name == "mixed":
        return {"mixed": w.mixed(s)}
    raise ValueError(f"unknown workload {name!r}")


def invariant_breaks(sections: Mapping[str, Any]) -> list[str]:
    from bench.cli import correctness_failures

    return correctness_failures(dict(sections))


def compare(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.machine import machine

    workloads = parse_workloads(args.workloads)
    repeat = max(1, int(args.repeat or 1))
    mach = machine()
    t0 = time.monotonic()
    root = s.workdir or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hsm-compare-", dir=root))
    try:
        try:
            base = codemod.with_capabilities(codemod.extract(args.baseline, tmp / "baseline"))
            new = codemod.with_capabilities(codemod.snapshot(tmp / "new"))
        except (RuntimeError, OSError) as exc:
            say(f"!! cannot prepare the code to compare: {exc}")
            return 2
        say(f"== compare ({s.mode}): {', '.join(workloads)}; {repeat} round(s); "
            f"baseline {args.baseline} = {base.commit[:12]} in {base.root}, new = {new.commit[:12]} "
            f"(working tree copied) in {new.root}")
        diffs = differences(base, new, workloads)
        for d in diffs:
            say(f"   note: {d}")
        trees = {"baseline": base, "new": new}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {side: {} for side in SIDES}
        failures: dict[str, dict[str, str]] = {side: {} for side in SIDES}
        code_log: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        timeline: list[dict[str, Any]] = []
        for rnd in range(repeat):
            done: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
            for i, name in enumerate(workloads):
                for side in side_order(i, rnd):
                    tree = trees[side]
                    ss = dataclasses.replace(s, code=tree, code_log=[])
                    say(f"== {name} on the {side} code ({tree.commit[:12]})"
                        + (f", round {rnd + 1} of {repeat}" if repeat > 1 else ""))
                    t1 = time.monotonic()
                    ok = True
                    try:
                        got = run_workload(name, ss, done[side])
                    except KeyboardInterrupt:
                        say("!! interrupted")
                        return 130
                    except Exception as exc:  # noqa: BLE001 - reported; the other side and workloads go on
                        ok = False
                        failures[side][name if repeat == 1 else f"{name} (round {rnd + 1})"] = \
                            f"{type(exc).__name__}: {exc}"
                        say(f"!! {name} failed on the {side} code: {exc}")
                        traceback.print_exc()
                        got = {}
                    for sec, data in got.items():
                        done[side][sec] = data
                        results[side].setdefault(sec, []).append(data)
                    code_log[side] += [{"workload": name, "round": rnd + 1, **c} for c in ss.code_log]
                    timeline.append({"workload": name, "side": side, "round": rnd + 1, "ok": ok,
                                     "seconds": round(time.monotonic() - t1, 1)})
        new_breaks = sorted({b for data in _last_rounds(results["new"]) for b in invariant_breaks(data)})
        base_breaks = sorted({b for data in _last_rounds(results["baseline"]) for b in invariant_breaks(data)})
        table = rows(results)
        out = {
            "kind": "compare", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": round(time.monotonic() - t0, 1), "machine": mach,
            "settings": settings_dict(s), "workloads": workloads, "rounds": repeat,
            "baseline": base.describe(), "new": new.describe(), "differences": diffs,
            "rows": table, "outsiders_cpu_share_pct": outsider_shares(results),
            "timeline": timeline, "failures": failures,
            "new_invariant_breaks": new_breaks, "baseline_invariant_breaks": base_breaks,
            "code_checks": code_log, "sections": results,
        }
        md = markdown(out)
        if not args.no_save:
            paths = save(out, md, args.results)
            say(f"   results: {', '.join(str(p) for p in paths)}")
        say(md)
        for b in new_breaks:
            say(f"!! new code: {b}")
        failed = [f"{side}: {name}" for side in SIDES for name in failures[side]]
        say(f"== compare done in {out['wall_seconds']:.0f} s" + (f"; FAILED: {'; '.join(failed)}" if failed else ""))
        return 1 if failed or new_breaks else 0
    finally:
        if args.keep:
            say(f"   code trees kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _last_rounds(side: Mapping[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each round's sections of one side, as {section: data} (for the invariants)."""
    n = max((len(v) for v in side.values()), default=0)
    return [{sec: runs[k] for sec, runs in side.items() if k < len(runs)} for k in range(n)]


def settings_dict(s: Settings) -> dict[str, Any]:
    return {f.name: (str(v) if isinstance(v, Path) else v) for f in dataclasses.fields(s)
            if f.name not in ("say", "code", "code_log") for v in [getattr(s, f.name)]}


# ------------------------------------------------------------ output


def save(out: Mapping[str, Any], md: str, results_dir: Path, name: str = "compare") -> list[Path]:
    """``<name>-latest.json``, ``<name>-latest.md`` and ``runs/<time>-<name>.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "runs").mkdir(exist_ok=True)
    text = json.dumps(out, indent=1, default=str) + "\n"
    paths = [results_dir / f"{name}-latest.json", results_dir / f"{name}-latest.md",
             results_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.json"]
    paths[0].write_text(text)
    paths[1].write_text(md)
    paths[2].write_text(text)
    return paths


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "n/a"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _change(r: float | None, judgement: str) -> str:
    if r is None:
        return ""
    pct = (r - 1.0) * 100
    return f"{pct:+.0f}%" + (f" ({judgement})" if judgement else "")


def _size(section: str, runs: Sequence[Mapping[str, Any]]) -> str:
    d = runs[0] if runs else {}
    if section == "archive_flood":
        return f"{d.get('actions', 0):,} archives"
    if section.startswith("restore_storm"):
        return f"{d.get('fids', 0):,} FIDs x {d.get('initiators', 0)}"
    if section == "queue_depth":
        return f"{d.get('small', 0):,} vs {d.get('large', 0):,} waiting"
    if section == "memory":
        return f"{d.get('waiting', 0):,} waiting"
    if section == "replication":
        return f"{d.get('actions', 0):,} archives"
    if section == "mixed":
        return f"{d.get('requests', 0):,} requests"
    return ""


def markdown(out: Mapping[str, Any]) -> str:
    base, new = out["baseline"], out["new"]
    m = out.get("machine", {})
    bl = f"baseline {base['rev']} ({base['commit'][:12]})"
    nl = f"new {new['commit'][:12].rstrip('+')}{' + uncommitted changes' if 'dirty' in new['commit'] else ''}"
    lines = [
        "# hsm-coordinator benchmark: baseline and new code, measured in one run",
        "",
        f"{out['when']}, {out['mode']} mode, {out.get('rounds', 1)} round(s), {out['wall_seconds']:,.0f} s in all; "
        f"{m.get('cores')} cores ({m.get('cpu', '?')}), Python {m.get('python', '?')}. "
        f"Baseline: commit {base['commit']} (`git archive`); new: the working tree at {new['commit']} "
        f"(copied at the start{', digest ' + str(new['capabilities'].get('tree_digest')) if new.get('capabilities') else ''}). "
        "Same harness, workloads and sizes for both; every process of each side ran its side's code "
        "(checked: see below). Ratio = new / old; 'better' / 'worse' when the change is 5 % or more in the "
        "figure's good / bad direction, 'same' within 5 %. With several rounds each figure is the median.",
        "",
        f"| figure | {bl} | {nl} | new / old | change | size |",
        "|---|---|---|---|---|---|",
    ]
    sections = out.get("sections", {})
    for r in out["rows"]:
        runs = sections.get("new", {}).get(r["section"]) or sections.get("baseline", {}).get(r["section"]) or []
        rt = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(f"| {r['label']} | {_fmt(r['baseline'], r['fmt'])} | {_fmt(r['new'], r['fmt'])} | {rt} | "
                     f"{_change(r['ratio'], r['judgement'])} | {_size(r['section'], runs)} |")
    lines.append("")
    shares = out.get("outsiders_cpu_share_pct", {})
    if shares:
        parts = []
        for sec, per in shares.items():
            txt = ", ".join(f"{side} {' / '.join('?' if v is None else f'{v:.0f}%' for v in per.get(side, []))}"
                            for side in SIDES if side in per)
            parts.append(f"{sec}: {txt}")
        lines += ["Share of the host's CPU used by processes outside the benchmark during each measurement (a busy "
                  "host lowers the figures of the side it hits): " + "; ".join(parts) + ".", ""]
    order = [f"{t['workload']} {t['side']} ({t['seconds']:,.0f} s{'' if t['ok'] else ', FAILED'})"
             for t in out.get("timeline", [])]
    if order:
        lines += ["Order of the measurements: " + ", ".join(order) + ".", ""]
    lines += ["What differs between the sides (what the baseline is not sent, or cannot do):", ""]
    lines += [f"- {d}" for d in out.get("differences", [])]
    lines.append("")
    if out.get("baseline_invariant_breaks"):
        lines += ["Invariants the baseline broke (reported, not fatal: see above):", ""]
        lines += [f"- baseline: {b}" for b in out["baseline_invariant_breaks"]]
        lines.append("")
    if out.get("new_invariant_breaks"):
        lines += ["**Invariants the new code broke (the run failed, exit 1):**", ""]
        lines += [f"- **new: {b}**" for b in out["new_invariant_breaks"]]
        lines.append("")
    fails = out.get("failures", {})
    if any(fails.get(side) for side in SIDES):
        lines += ["**Workloads that failed (the run failed, exit 1):**", ""]
        lines += [f"- {side}: {name}: {msg}" for side in SIDES for name, msg in fails.get(side, {}).items()]
        lines.append("")
    lines += ["Code the processes ran (each replica, agentd and client recorded the files of the product modules "
              "it imported; every one came from its side's tree):", ""]
    for side in SIDES:
        checks = out.get("code_checks", {}).get(side, [])
        procs = sum(len(c.get("processes", {})) for c in checks)
        problems = [p for c in checks for p in c.get("problems", [])]
        sample: Mapping[str, Any] = next((p for c in checks for p in c.get("processes", {}).values() if "coordinator" in p), {})
        tree = out[side]
        compiled = sorted({m for c in checks for p in c.get("processes", {}).values()
                           for m in p.get("compiled_modules", [])})
        lines.append(f"- {side}: {len(checks)} clusters, {procs} processes, "
                     f"{'no problem' if not problems else f'{len(problems)} problem(s): ' + '; '.join(problems[:3])}; "
                     f"from {tree['root']} (commit {tree['commit'][:12]}), e.g. "
                     f"{sample.get('coordinator', '?')}, stubs {sample.get('hsm.v1.coordinator_pb2', '?')}; "
                     f"extension (compiled) modules: {', '.join(compiled) if compiled else 'none, pure Python'}")
    lines += ["", "Every figure of every round, each side's full results (CPU per process, timings, outcomes) and "
              "the code records are in `compare-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)
