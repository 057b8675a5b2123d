"""``python -m bench compiled``: what the compiled build (mypyc, issue 12)
gains on the hot pure modules. The same workloads run in two processes in
one run, one on the pure sources (``HSM_PURE_PYTHON=1``) and one on the
installed build (which must be the compiled one), each workload repeated
and its best time kept; CPU time of the process (``time.process_time``),
so a busy host hurts less. No cluster, no I/O: only the modules that are
compiled, and what calls them as the replica and agentd do.

Workloads (sizes: ``--quick`` default / ``--full``):

* ``state``: a ShardState applies Submit (batches of 500), Assign (64),
  Progress (64) and Complete (64) for N actions; then the snapshot of the
  N actions is encoded and decoded (``coordinator.raft.serializer``, the
  garbage collector paused as the shard pauses it).
  µs per action for each phase.
* ``scheduler``: dispatcher rounds (``scheduler.plan`` for 4 agents with
  credits, and ``count_ready`` for their backlog hints) over a queue of
  DEPTH waiting actions (two archive ids and restores): µs per action
  picked.
* ``agent_book``: the replica's agent sessions (``coordinator.agents``):
  grants, assignments, heartbeats, backlog hints, dispatchable sessions, a
  reconcile of each agent's held actions every round: µs per assignment.
* ``agent_core``: agentd's core (``agentd.core``) with two streams: grants
  collected and written, assignments, progress, job ends, completions
  written and acknowledged: µs per action.

Results: bench/results/compiled-latest.json and compiled-latest.md (and
runs/<time>-compiled.json): µs per unit pure and compiled, and their ratio
(compiled / pure: 0.5 means twice as fast). Exit 1 when the compiled build
is not the one installed (no C compiler at install, or HSM_NO_MYPYC=1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {"actions": 20_000, "depth": 100_000, "picks": 20_000, "book_actions": 100_000, "core_actions": 20_000,
         "repeat": 3}
FULL = {"actions": 200_000, "depth": 1_000_000, "picks": 100_000, "book_actions": 1_000_000,
        "core_actions": 200_000, "repeat": 5}

#: (workload, phase) rows of the table, in order, with what they count
PHASES: list[tuple[str, str, str]] = [
    ("state", "submit", "action"),
    ("state", "assign", "action"),
    ("state", "progress", "action"),
    ("state", "complete", "action"),
    ("state", "apply_total", "action"),
    ("state", "snapshot_encode", "action"),
    ("state", "snapshot_decode", "action"),
    ("scheduler", "plan", "action picked"),
    ("agent_book", "round", "assignment"),
    ("agent_core", "cycle", "action"),
]


# --------------------------------------------------------------------------
# workloads (in the worker process)


def _cpu(fn: Callable[[], None]) -> float:
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _state(n: int) -> dict[str, float]:
    from coordinator.raft.serializer import _decode_state, _encode_state, _gc_paused
    from coordinator.state import (
        Assign,
        Complete,
        Completion,
        Item,
        Kind,
        Progress,
        ProgressReport,
        Requester,
        ShardConfig,
        ShardState,
        Submit,
    )
    from hsm.fid import Fid

    st = ShardState(ShardConfig(shard=1, max_terminal=n))
    items = [Item("lustre1", Fid(0x200000400 + i // 65536, i % 65536 + 1, 0),
                  Kind.RESTORE if i % 10 == 0 else Kind.ARCHIVE,
                  requester=Requester("mdt0", cookie=i, when=1.0), key=f"mdt0:{i}") for i in range(n)]
    ids: list[int] = []
    out: dict[str, float] = {}

    def submit() -> None:
        for i in range(0, n, 500):
            ids.extend(r.action_id for r in st.apply(Submit(1000.0, tuple(items[i:i + 500]))).replies)

    def assign() -> None:
        for i in range(0, n, 64):
            st.apply(Assign(1001.0, "agent-1", tuple(ids[i:i + 64])))

    def progress() -> None:
        for i in range(0, n, 64):
            st.apply(Progress(1002.0, tuple(ProgressReport(a, 1, 50, 100) for a in ids[i:i + 64]), "agent-1"))

    def complete() -> None:
        for i in range(0, n, 64):
            st.apply(Complete(1003.0, tuple(Completion(a, 1) for a in ids[i:i + 64]), "agent-1"))

    for name, fn in (("submit", submit), ("assign", assign), ("progress", progress), ("complete", complete)):
        out[name] = _cpu(fn)
    out["apply_total"] = sum(out.values())
    blob = b""

    def encode() -> None:
        nonlocal blob
        with _gc_paused():  # as the shard does (coordinator.raft.shard)
            blob = _encode_state(st)

    def decode() -> None:
        with _gc_paused():
            _decode_state(blob)

    out["snapshot_encode"] = _cpu(encode)
    out["snapshot_decode"] = _cpu(decode)
    return {k: v / n * 1e6 for k, v in out.items()}


def _scheduler(depth: int, picks: int) -> dict[str, float]:
    from coordinator import scheduler
    from coordinator.state import (
        AssignRound,
        Item,
        Kind,
        Requester,
        ShardConfig,
        ShardState,
        Submit,
    )
    from hsm.fid import Fid

    st = ShardState(ShardConfig(shard=2, archive_ids=frozenset({1, 2})))
    for i in range(0, depth, 1000):
        st.apply(Submit(1000.0, tuple(
            Item("lustre1", Fid(0x200000400, j + 1, 0), Kind.RESTORE if j % 8 == 0 else Kind.ARCHIVE,
                 archive_id=1 + j % 2, requester=Requester("mdt0", cookie=j))
            for j in range(i, min(depth, i + 1000)))))
    agents = [("agent-1", ()), ("agent-2", (1,)), ("agent-3", (2,)), ("agent-4", (1, 2))]
    picked = 0
    untimed = 0.0  # committing a round is the state's work, not the scheduler's

    def rounds() -> None:
        nonlocal picked, untimed
        now = 1001.0
        while picked < picks:
            for agent, archive_ids in agents:  # the backlog hints of the round
                scheduler.count_ready(st, agent, archive_ids, dict.fromkeys(Kind, 0))
            offers = [scheduler.Offer(a, ids, {Kind.RESTORE: 8, Kind.REMOVE: 0, Kind.ARCHIVE: 32})
                      for a, ids in agents]
            assignments = scheduler.plan(st, offers)
            if not assignments:
                break
            picked += sum(len(ids) for _a, ids in assignments)
            t = time.process_time()
            st.apply(AssignRound(now, assignments))
            untimed += time.process_time() - t
            now += 0.01

    total = _cpu(rounds)
    return {"plan": (total - untimed) / max(picked, 1) * 1e6}


def _agent_book(n: int) -> dict[str, float]:
    from coordinator.agents import AgentBook, Held, backlog_hint, reconcile
    from coordinator.state import Kind, State

    book = AgentBook(agent_grace=60.0, heartbeat=5.0)
    slots = {Kind.ARCHIVE: 16, Kind.RESTORE: 4, Kind.REMOVE: 4}
    sessions = [book.hello(f"agent-{i}", f"host-{i}", (1,), slots, "0.1.0", f"ipv4:10.0.0.{i}:5000", 0.0)[0]
                for i in range(8)]
    held = {s.agent_id: [Held(i * 1000 + 3, 1, State.STARTED, started=0.0) for i in range(1, 25)]
            for s in sessions}
    running = {s.agent_id: [(h.action_id, h.attempt) for h in hs] for s, hs in zip(sessions, held.values(),
                                                                                   strict=True)}
    ready = {Kind.ARCHIVE: 1000, Kind.RESTORE: 10, Kind.REMOVE: 0}
    done = 0

    def rounds() -> None:
        nonlocal done
        now = 1.0
        while done < n:
            for s in sessions:
                book.heard(s, now)
                book.ready(s, {Kind.ARCHIVE: 16, Kind.RESTORE: 4, Kind.REMOVE: 0}, absolute=True,
                           seen=dict(s.sent))
            for s in book.dispatchable():
                for kind, credit in s.usable().items():
                    for _ in range(credit):
                        book.assigned(s, kind)
                        done += 1
                backlog_hint(s, ready)
                backlog_hint(s, ready, stalled_only=True)
                reconcile(3, running[s.agent_id], held[s.agent_id], before=now - 1.0)
            book.lapsed(now)
            now += 0.1

    return {"round": _cpu(rounds) / done * 1e6}


def _agent_core(n: int) -> dict[str, float]:
    from agentd.core import KINDS, AgentCore, CoreConfig, Start
    from agentd.movers.base import Result
    from hsm.hsmflags import HSMA
    from hsm.v1 import agent_pb2
    from hsm.v1 import types_pb2 as tpb

    archive, restore = int(HSMA.ARCHIVE), int(HSMA.RESTORE)
    core = AgentCore(CoreConfig(agent_id="agent-1", slots={archive: 16, restore: 4, int(HSMA.REMOVE): 4},
                                fsname="lustre1"), ("r1", "r2"))
    streams = ("r1", "r2")
    for s in streams:
        core.welcomed(s, f"rep-{s}", 5.0, 0.0, True, 0.0)
    core.rebalance(0.0)
    todo = [agent_pb2.Assignment(action_id=i * 1000 + 1, attempt=1, fsname="lustre1",
                                 kind=restore if i % 10 == 0 else archive, archive_id=1,
                                 fid=tpb.Fid(seq=0x200000400, oid=i + 1, ver=0)) for i in range(n)]
    ok = Result(message="done")
    queues = {kind: deque(a for a in todo if a.kind == kind) for kind in (archive, restore)}
    credits = {s: dict.fromkeys(KINDS, 0) for s in streams}

    def cycle() -> None:
        now = 1.0
        while any(queues.values()):
            for s in streams:  # what each stream's writer sends: grants and completions
                msg = core.collect(s, now)
                if msg is None:
                    continue
                core.written(s, now)
                c = msg.ready.credits
                for kind, v in ((archive, c.archive), (restore, c.restore)):
                    credits[s][kind] = v if msg.ready.absolute else credits[s][kind] + v
                if msg.done:  # the replica applied them
                    core.applied([(d.action_id, d.attempt) for d in msg.done])
            started: list[int] = []
            for s in streams:  # the replicas send an assignment per credit
                for kind, q in queues.items():
                    while credits[s][kind] > 0 and q:
                        credits[s][kind] -= 1
                        started += [i.run for i in core.assignment(s, q.popleft(), now) if isinstance(i, Start)]
            for run in started:
                core.progress(run, 50, 100)
            for run in started:
                core.job_ended(run, ok, now)
            core.tick(now)
            now += 0.05

    return {"cycle": _cpu(cycle) / n * 1e6}


def worker(sizes: dict[str, int]) -> dict[str, Any]:
    """Run every workload ``repeat`` times: best and median µs per unit."""
    from hsm import compiled

    runs: dict[str, list[dict[str, float]]] = {"state": [], "scheduler": [], "agent_book": [], "agent_core": []}
    for _ in range(sizes["repeat"]):
        runs["state"].append(_state(sizes["actions"]))
        runs["scheduler"].append(_scheduler(sizes["depth"], sizes["picks"]))
        runs["agent_book"].append(_agent_book(sizes["book_actions"]))
        runs["agent_core"].append(_agent_core(sizes["core_actions"]))
    out: dict[str, Any] = {"build": compiled.build(), "python": sys.version.split()[0]}
    for w, rs in runs.items():
        out[w] = {p: {"best_us": round(min(r[p] for r in rs), 3), "median_us": round(statistics.median(r[p] for r in rs), 3)}
                  for p in rs[0]}
    return out


# --------------------------------------------------------------------------
# the run: two workers, the figures


def _run_worker(sizes: dict[str, int], pure: bool) -> dict[str, Any]:
    from hsm import compiled

    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "bench.compiled", "--worker", json.dumps(sizes)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"the {'pure' if pure else 'compiled'} worker failed:\n{r.stderr}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def figures(pure: dict[str, Any], comp: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for w, p, unit in PHASES:
        a, b = pure[w][p]["best_us"], comp[w][p]["best_us"]
        rows[f"{w}.{p}"] = {"unit": unit, "pure_us": a, "compiled_us": b, "ratio": round(b / a, 3) if a else None,
                            "pure_median_us": pure[w][p]["median_us"], "compiled_median_us": comp[w][p]["median_us"]}
    return rows


def markdown(out: dict[str, Any]) -> str:
    """``compiled-latest.md``."""
    m = out.get("machine", {})
    s = out["sizes"]
    lines = ["# hsm-coordinator benchmark: the compiled build (mypyc) against pure Python", "",
             f"{out['when']}, {out['mode']} mode, {out['seconds']} s; {m.get('cores')} cores ({m.get('cpu', '?')}), "
             f"Python {m.get('python', '?')}, mypy {out.get('mypy', '?')}; commit {out['commit']}. "
             f"Load average at the start: {', '.join(f'{x:.1f}' for x in m.get('load_avg_at_start', ()))}.", "",
             "The same workloads in two processes, one on the pure sources (`HSM_PURE_PYTHON=1`) and one on the "
             "compiled build; CPU µs per unit (the process's own CPU time), best of "
             f"{s['repeat']} runs each (median in brackets). Ratio: compiled / pure, below 1 is faster. Sizes: "
             f"{s['actions']:,} actions applied (Submit in batches of 500, Assign, Progress and Complete of 64), "
             f"a queue {s['depth']:,} deep ({s['picks']:,} picked by rounds of 4 agents), "
             f"{s['book_actions']:,} agent-book assignments (8 agents), {s['core_actions']:,} agentd-core actions "
             "(2 streams). See `python -m bench compiled --help`.", "",
             "| workload | per | pure µs | compiled µs | compiled / pure |", "|---|---|---|---|---|"]
    for key, row in out["rows"].items():
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {key} | {row['unit']} | {row['pure_us']:,.2f} ({row['pure_median_us']:,.2f}) | "
                     f"{row['compiled_us']:,.2f} ({row['compiled_median_us']:,.2f}) | {ratio} |")
    lines += ["", "Every figure is in `compiled-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)


def save(out: dict[str, Any], md: str, results: Path) -> list[Path]:
    """``compiled-latest.json``, ``compiled-latest.md`` and ``runs/<time>-compiled.json``
    (like the other benchmarks' own files)."""
    (results / "runs").mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=1, default=str) + "\n"
    paths = [results / "compiled-latest.json", results / "compiled-latest.md",
             results / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-compiled.json"]
    paths[0].write_text(text)
    paths[1].write_text(md)
    paths[2].write_text(text)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench compiled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="small sizes (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="large sizes")
    for k in QUICK:
        p.add_argument(f"--{k.replace('_', '-')}", type=int, dest=k, help=f"(quick {QUICK[k]:,}, full {FULL[k]:,})")
    p.add_argument("--results", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--no-save", action="store_true", help="print the figures, write no result files")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    from bench.machine import machine
    from hsm import compiled

    mode = args.mode or "quick"
    sizes = dict(FULL if mode == "full" else QUICK)
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    print(f"== hsm-coordinator bench compiled ({mode}): {sizes}", flush=True)
    mach = machine()
    t0 = time.monotonic()
    pure = _run_worker(sizes, pure=True)
    comp = _run_worker(sizes, pure=False)
    if not pure["build"].startswith(compiled.PURE) or comp["build"] != compiled.COMPILED:
        print(f"!! the builds are {pure['build']!r} (pure) and {comp['build']!r} (installed): the compiled build "
              "is needed (a C compiler at install, HSM_NO_MYPYC unset: make venv)", file=sys.stderr)
        return 1
    out = {"mode": mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - t0, 1),
           "commit": mach.get("git_commit", "") + ("+dirty" if mach.get("git_dirty") else ""),
           "mypy": compiled.manifest().get("mypy"), "machine": mach, "sizes": sizes,
           "builds": {"pure": pure["build"], "compiled": comp["build"]}, "rows": figures(pure, comp),
           "raw": {"pure": pure, "compiled": comp}}
    md = markdown(out)
    print(md)
    if not args.no_save:
        paths = save(out, md, args.results or RESULTS)
        print(f"   results: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
