"""The nemesis's cycles: run the workload, break something, heal it, let the
cluster settle, take a snapshot, check it; N times, then a final check.

One cycle::

    lead-in 2-4 s     the workload runs (actions in flight when the fault hits)
    fault 5-12 s      one fault, drawn with the seeded random.Random (a
                      kind may hold longer: pause_agent 8-15 s, to outlast
                      the agents' grace about half the time)
    heal              then wait until every shard took a probe write and
                      every replica answered (recovered_after; the bound
                      is the checker's not_recovered rule)
    settle            the workload pauses (its requests in flight are
                      retried until acknowledged); wait until no action is
                      left WAITING/STARTED/CANCELING and no mover run is
                      open, or the settle bound passes
    snapshot          every action (hsmctl actions --all --json) and each
                      replica's per-shard (applied index, digest), asked
                      with the probe paused until the indexes agree
    check             tests/nemesis/checker.py over everything so far

A replica or agent that exits without the nemesis killing it is a finding
too (kind ``crash``): it is restarted and the run goes on. What the rig
itself cannot do (namespaces, a process of its own dying) ends the run
with :class:`RigError`. Measurements that need no process (recovery and
unavailability from the probe's records) are plain functions, so they are
easy to reason about and to test.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.nemesis import report as reportmod
from tests.nemesis.checker import Violation, check_cycle, history, notes
from tests.nemesis.faults import KINDS, unavailable_kinds
from tests.nemesis.history import Event, Run
from tests.nemesis.net import NemesisNet
from tests.nemesis.rig import AGENTS, REPLICAS, SHARDS, NemesisRig, RigError
from tests.netns import unavailable

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


# ---------------------------------------------------------------------------
# measurements from the probe's records (pure)


def recovery(records: list[dict[str, Any]], t_heal: float, shards: int,
             replicas: tuple[str, ...]) -> float | None:
    """Seconds from *t_heal* until every shard acknowledged a probe write
    and every replica answered one, each with a try sent after the heal;
    None while some have not."""
    first: dict[tuple[str, Any], float] = {}
    for r in records:
        if r.get("ok") and r["t0"] >= t_heal:
            key = (r["what"], r["id"])
            first[key] = min(first.get(key, r["t1"]), r["t1"])
    want = [("shard", k) for k in range(shards)] + [("replica", rid) for rid in replicas]
    if any(w not in first for w in want):
        return None
    return max(0.0, max(first[w] for w in want) - t_heal)


def unavailability(records: list[dict[str, Any]], start: float, end: float, shards: int) -> tuple[float, int | None]:
    """The longest a client waited for one shard to acknowledge a write
    within [start, end]: from the sending of a try to its acknowledgement,
    and when tries failed (the client's own retries and fail-overs ran out
    of time), from the sending of the first that failed to the
    acknowledgement of the next that worked (or *end*). A healthy shard
    shows its commit latency (tens of milliseconds). The seconds, and the
    shard."""
    worst, worst_shard = 0.0, None
    for k in range(shards):
        tries = sorted((r for r in records if r["what"] == "shard" and r["id"] == k and start <= r["t0"] <= end),
                       key=lambda r: r["t0"])
        down_since: float | None = None
        for r in tries:
            if not r["ok"]:
                if down_since is None:
                    down_since = r["t0"]
                continue
            waited = r["t1"] - (r["t0"] if down_since is None else down_since)
            down_since = None
            if waited > worst:
                worst, worst_shard = waited, k
        if down_since is not None and end - down_since > worst:
            worst, worst_shard = end - down_since, k
    return worst, worst_shard


class SnapshotFiles:
    """``snapshots/<cycle>.json``, each with only the action rows that
    changed since the one before (``actions``) and the ids no longer
    listed (``actions_gone``): every snapshot lists every action, so full
    copies would grow with the square of the cycles (14 MB for 40)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._last: dict[int, Any] = {}

    def write(self, snap: dict[str, Any]) -> None:
        rows = {int(r["action_id"]): r for r in snap["actions"]}
        changed = [r for aid, r in rows.items() if self._last.get(aid) != r]
        gone = sorted(aid for aid in self._last if aid not in rows)
        self._last = rows
        delta = {**snap, "actions": changed, "actions_gone": gone}
        (self.dir / f"{snap['cycle']}.json").write_text(json.dumps(delta))

    @staticmethod
    def read(directory: Path) -> list[dict[str, Any]]:
        """Every snapshot in cycle order, each with its full listing again."""
        out: list[dict[str, Any]] = []
        rows: dict[int, Any] = {}
        for path in sorted(directory.glob("*.json"), key=lambda p: int(p.stem)):
            snap = json.loads(path.read_text())
            for aid in snap.pop("actions_gone", []):
                rows.pop(int(aid), None)
            rows.update((int(r["action_id"]), r) for r in snap["actions"])
            snap["actions"] = list(rows.values())
            out.append(snap)
        return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a line being written is left out)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------------
# the run


@dataclass
class Options:
    cycles: int
    seed: int
    run_dir: Path
    clients: int = 1
    #: fault kinds to draw from (None: every kind this machine can make)
    kinds: tuple[str, ...] | None = None
    hold: tuple[float, float] = (5.0, 12.0)
    lead_in: tuple[float, float] = (2.0, 4.0)
    recovery_bound: float = 20.0
    settle_bound: float = 45.0
    final_settle: float = 90.0
    drain: float = 60.0
    workload: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleResult:
    n: int
    fault: dict[str, Any]
    recovered_after: float | None
    unavailable: float
    unavailable_shard: int | None
    settle: float
    unsettled: int
    actions: int
    digests_agreed: bool
    violations: list[Violation]
    seconds: float

    def line(self, cycles: int) -> str:
        f = self.fault
        rec = f"{self.recovered_after:.1f}s" if self.recovered_after is not None else "NOT"
        hold = f["heal"] - f["start"] if f.get("heal") and f.get("start") else 0.0
        unsettled = f" UNSETTLED {self.unsettled}" if self.unsettled else ""
        shard = f" (shard {self.unavailable_shard})" if self.unavailable > 1.0 else ""
        return (f"cycle {self.n:>3}/{cycles} {f['kind']:<14} {f['target']:<9} hold {hold:4.1f}s  "
                f"recovered {rec:>6}  unavailable {self.unavailable:4.1f}s{shard:<10} settle {self.settle:4.1f}s"
                f"{unsettled}  actions {self.actions:>5}  violations {len(self.violations)}  [{self.seconds:.1f} s]")


class Nemesis:
    """One run; :meth:`run` returns the report (a dict, also written to
    RUN/report.json and RUN/report.md)."""

    def __init__(self, opts: Options, out: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.out = out
        self.rng = random.Random(opts.seed)
        self.run_dir = opts.run_dir
        self.seen_terminal: dict[int, str] = {}
        self.results: list[CycleResult] = []
        self.violations: list[tuple[int, Violation]] = []  # each (kind, subject) once, with its first cycle
        #: (kind, subject) -> later cycles that found it again (a violation that lasts is listed once)
        self.repeats: dict[tuple[str, str], int] = {}
        self.skipped: dict[str, str] = {}
        #: what the checker noted (no violation), with the first cycle it was seen in
        self.notes: dict[str, int] = {}
        self.rig: NemesisRig | None = None
        self.snapshots = SnapshotFiles(self.run_dir / "snapshots")
        self.unfinished: list[dict[str, Any]] = []  # what the last settle left unfinished
        self.t_start = time.time()
        self.setup_seconds = 0.0

    # -- helpers ------------------------------------------------------------------

    @property
    def r(self) -> NemesisRig:
        assert self.rig is not None
        return self.rig

    def crashes(self, n: int) -> list[Violation]:
        """Replicas and agents that exited on their own: a violation each,
        and started again. A workload or the probe exiting ends the run."""
        found = []
        for name, rc, tail in self.r.exited():
            if name not in REPLICAS and name not in AGENTS:
                raise RigError(f"{name} exited with {rc}:\n{tail}")
            last = [ln for ln in tail.splitlines() if ln.strip()][-3:]
            v = Violation("crash", name, f"{name} exited with status {rc} on its own: " + " | ".join(last)[:400])
            self.r.event(f"{name} exited with status {rc} on its own; restarted")
            self.out(f"  CRASH: {v.detail}")
            found.append(v)
            self.r.start(name)
        return found

    def wait(self, seconds: float, n: int, found: list[Violation]) -> None:
        end = time.monotonic() + seconds
        while True:
            found += self.crashes(n)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def wait_recovered(self, t_heal: float, n: int, found: list[Violation]) -> float | None:
        deadline = time.monotonic() + self.opts.recovery_bound + 2.0
        while time.monotonic() < deadline:
            found += self.crashes(n)
            got = recovery(self.r.probe_records(), t_heal, SHARDS, REPLICAS)
            if got is not None:
                return got
            time.sleep(0.25)
        return None

    def open_runs(self, ids: set[int]) -> list[Run]:
        runs, _ = self.r.runs_and_events(ids)
        return [r for r in runs if r.end is None]

    def settle(self, bound: float, n: int, found: list[Violation]) -> int:
        """Pause the workload, wait (at most *bound*) until it has nothing
        in flight, no action is left unfinished and no mover run is open.
        The number of actions still unfinished (-1: none could be listed)."""
        self.r.pause_workload()
        deadline = time.monotonic() + bound
        idle = False
        left = -1
        self.unfinished = []
        while True:
            found += self.crashes(n)
            idle = idle or self.r.workload_idle()
            if idle:
                rows = self.r.actions(include_terminal=False, tries=1)
                left = -1 if rows is None else len(rows)
                self.unfinished = rows or []
                if rows == []:
                    ids = {a["action_id"] for a in read_jsonl(self.run_dir / "acks.jsonl") if a.get("action_id")}
                    if not self.open_runs(ids):
                        return 0
            if time.monotonic() > deadline:
                return left if left else 0
            time.sleep(0.5)

    def snapshot(self, n: int, fault: dict[str, Any], recovered: float | None, unavailable: float,
                 settle: float, unsettled: int) -> dict[str, Any]:
        self.r.pause_probe()
        try:
            actions = self.r.actions(include_terminal=True)
            digests = self.r.digests()
        finally:
            self.r.resume_probe()
        snap = {"cycle": n, "t": round(time.time(), 3), "fault": fault, "actions": actions or [],
                "digests": digests["replicas"], "digests_agreed": digests["agreed"],
                "recovered_after": None if recovered is None else round(recovered, 3),
                "unavailable": round(unavailable, 3), "settle": round(settle, 3), "unsettled": unsettled,
                "actions_listed": actions is not None, "disk_used": self.r.disk_used()}
        self.snapshots.write(snap)
        return snap

    def check(self, snap: dict[str, Any], final: bool) -> tuple[list[Violation], list[Run], list[Event]]:
        acks = read_jsonl(self.run_dir / "acks.jsonl")
        files = read_jsonl(self.run_dir / "files.jsonl")
        ids = {int(a["action_id"]) for a in acks if a.get("action_id")}
        ids |= {int(a["target"]) for a in acks if a.get("target")}
        ids |= {int(x["action_id"]) for x in snap["actions"]}
        runs, events = self.r.runs_and_events(ids)
        if not snap["actions_listed"]:
            return [Violation("not_recovered", "cluster",
                              "hsmctl actions --all failed 5 times after the settle: no snapshot of the actions")], \
                runs, events
        found = check_cycle(snap, acks, files, runs, self.r.archive, self.seen_terminal, self.opts.recovery_bound,
                            final=final)
        for note in notes(snap, files, runs, self.r.archive):
            self.notes.setdefault(note, snap["cycle"])
        return found, runs, events

    # -- cycles ----------------------------------------------------------------------

    def cycle(self, n: int, kinds: list[str]) -> CycleResult:
        t0 = time.time()
        found: list[Violation] = []
        rig, rng = self.r, self.rng
        rig.resume_workload()
        self.wait(rng.uniform(*self.opts.lead_in), n, found)
        fault = KINDS[rng.choice(kinds)](rig, rng)
        fault.apply()
        t_apply = rig.event(f"cycle {n}: fault {fault.kind} on {fault.target}: {fault.detail}")
        self.wait(rng.uniform(*(fault.hold or self.opts.hold)), n, found)
        fault.heal()
        t_heal = rig.event(f"cycle {n}: healed {fault.kind} on {fault.target}")
        record = {"kind": fault.kind, "target": fault.target, "start": round(t_apply, 3), "heal": round(t_heal, 3),
                  "detail": fault.detail}
        recovered = self.wait_recovered(t_heal, n, found)
        t_settle = time.time()
        unsettled = self.settle(self.opts.settle_bound, n, found)
        t_settled = time.time()
        if unsettled > 0:
            states = Counter(str(r.get("state", "?")) for r in self.unfinished)
            found.append(Violation(
                "not_settled", "cluster",
                f"{unsettled} action(s) unfinished {self.opts.settle_bound:g} s after the heal with the workload "
                f"paused ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))}): "
                f"{', '.join(str(r.get('action_id')) for r in self.unfinished[:10])}"))
        unavailable, shard = unavailability(rig.probe_records(), t0, t_settled, SHARDS)
        snap = self.snapshot(n, record, recovered, unavailable, t_settled - t_settle, unsettled)
        checked, _, _ = self.check(snap, final=False)
        found += checked
        return CycleResult(n, record, recovered, unavailable, shard, t_settled - t_settle, unsettled,
                           len(snap["actions"]), bool(snap["digests_agreed"]), found, time.time() - t0)

    def final(self, n: int) -> CycleResult:
        """Stop the workload (it retries what is unacknowledged), settle
        long, snapshot and check with ``final``: every acknowledged action
        must have ended."""
        t0 = time.time()
        found: list[Violation] = []
        rig = self.r
        rig.event("final: workload stopped")
        rig.stop_workload(self.opts.drain + 30)
        found += self.crashes(n)
        recovered = self.wait_recovered(t0, n, found)
        t_settle = time.time()
        unsettled = self.settle(self.opts.final_settle, n, found)
        t_settled = time.time()
        unavailable, shard = unavailability(rig.probe_records(), t0, t_settled, SHARDS)
        record = {"kind": "final", "target": "", "start": round(t0, 3), "heal": round(t0, 3),
                  "detail": "workload stopped; final settle"}
        snap = self.snapshot(n, record, recovered, unavailable, t_settled - t_settle, unsettled)
        checked, _, _ = self.check(snap, final=True)
        found += checked
        return CycleResult(n, record, recovered, unavailable, shard, t_settled - t_settle, unsettled,
                           len(snap["actions"]), bool(snap["digests_agreed"]), found, time.time() - t0)

    def run(self) -> dict[str, Any]:
        reason = unavailable()
        if reason:
            raise RigError(f"needs Linux network namespaces: {reason}")
        opts = self.opts
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        self.out(f"nemesis: seed {opts.seed}, {opts.cycles} cycles, run dir {opts.run_dir}")
        net = NemesisNet()
        try:
            self.rig = NemesisRig(net, opts.run_dir, opts.seed, opts.clients)
            done = False
            try:
                rep = self._run()
                done = True
                return rep
            finally:
                # the replicas' journals are evidence when something went wrong
                self.rig.close(keep_data=bool(self.violations) or not done)
        finally:
            net.close()

    def _run(self) -> dict[str, Any]:
        opts, rig = self.opts, self.r
        self.skipped = unavailable_kinds(rig)
        kinds = [k for k in KINDS if opts.kinds is None or k in opts.kinds]
        unknown = set(opts.kinds or ()) - set(KINDS) - set(self.skipped)
        if unknown or not kinds:
            raise RigError(f"unknown fault kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        for kind, why in self.skipped.items():
            self.out(f"  fault kind {kind}: skipped: {why}")
        rig.start_cluster(**opts.workload)
        rig.resume_workload()
        # the workload's first acknowledgements: the cluster takes requests
        deadline = time.monotonic() + 60
        while not read_jsonl(self.run_dir / "acks.jsonl"):
            rig.check_running()
            if time.monotonic() > deadline:
                raise RigError("the workload got no acknowledgement within 60 s of the start")
            time.sleep(0.25)
        self.setup_seconds = time.time() - self.t_start
        self.out(f"  cluster up and taking requests after {self.setup_seconds:.1f} s")
        for n in range(1, opts.cycles + 1):
            res = self.cycle(n, kinds)
            self._record(res, opts.cycles)
        res = self.final(opts.cycles + 1)
        self._record(res, opts.cycles)
        return self.report()

    def _record(self, res: CycleResult, cycles: int) -> None:
        self.results.append(res)
        new = []
        for v in res.violations:
            key = (v.kind, v.subject)
            if key in self.repeats:
                self.repeats[key] += 1
            else:
                self.repeats[key] = 0
                new.append(v)
        self.violations += [(res.n, v) for v in new]
        self.out(res.line(cycles))
        for v in new[:5]:
            self.out(f"    {v.kind}: {v.subject}: {v.detail}")
        if len(new) > 5:
            self.out(f"    ... and {len(new) - 5} more")
        if len(new) < len(res.violations):
            self.out(f"    and {len(res.violations) - len(new)} found in an earlier cycle already")

    def first_history(self) -> str | None:
        if not self.violations:
            return None
        _, v = self.violations[0]
        acks = read_jsonl(self.run_dir / "acks.jsonl")
        files = read_jsonl(self.run_dir / "files.jsonl")
        snaps = SnapshotFiles.read(self.run_dir / "snapshots")
        ids = {int(x["action_id"]) for s in snaps for x in s["actions"]}
        ids |= {int(a["action_id"]) for a in acks if a.get("action_id")}
        runs, events = self.r.runs_and_events(ids)
        return history(v, acks, files, runs, snaps, sorted(self.r.events + events, key=lambda e: e.when))

    def report(self) -> dict[str, Any]:
        acks = read_jsonl(self.run_dir / "acks.jsonl")
        rep = reportmod.build(
            seed=self.opts.seed, cycles=self.opts.cycles, run_dir=self.run_dir, started=self.t_start,
            setup_seconds=self.setup_seconds, results=self.results, violations=self.violations,
            skipped=self.skipped, recovery_bound=self.opts.recovery_bound, acks=acks, notes=self.notes,
            repeats=self.repeats,
            first_history=self.first_history())
        (self.run_dir / "report.json").write_text(json.dumps(rep, indent=1))
        (self.run_dir / "report.md").write_text(reportmod.markdown(rep))
        return rep


def cleanup_success(run_dir: Path) -> None:
    """After a run without violation: drop the bulky data (the simfs tree
    and the archive), keep the records, logs and report."""
    for sub in ("fs", "archive"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
