"""``python -m bench move``: a shard moved under a flood (issue 19): 0 lost,
0 run twice, and the longest pause in that shard's acknowledgements.

One cluster of 4 replicas x 8 shards in groups of 3 (``ClusterOptions.
replication``; bench.cluster), agentd with the null mover, the usual flood
clients. Before the flood starts the harness switches the rebalancer off
(the Rebalance RPC, ``enabled=2``: what ``hsm-coordinator rebalance off``
sends), so that the measured move is the only one. Then:

* the archive flood at the mode's size (``--actions``; :data:`ACTIONS`)
  runs, from client processes, as in the other floods;
* a **probe** thread in the harness (:class:`AckProbe`) submits, for the
  whole flood, one archive every :data:`PROBE_INTERVAL` s (on schedule; a
  late one goes at once), each with its own idempotency key, whose FIDs the
  cluster's ring (hsm.ring.Ring from ClusterInfo's shard count and vnodes)
  maps to the moved shard, through ``hsm.client.CoordinatorClient`` (which
  follows redirects and retries UNAVAILABLE), resubmitting the same item
  on an error until :data:`PROBE_DEADLINE`; it records each item's send
  and acknowledgement times. It has one item in flight, so a gap between
  two acknowledgements is one item's latency plus at most the interval;
* when the agents' run records show :data:`MOVE_AT` of the flood's actions
  run (the probe's own excluded; nothing asks the cluster for it), a
  **mover** thread (:class:`Mover`) moves the shard's preferred leader (its
  group's first member, which leads it) to the replica that is not in its
  group: ``hsm-coordinator shard move SHARD SOURCE TARGET --wait``, its
  output kept line by line with the time each line came. The move window
  runs from the command to its ``moved`` line. Meanwhile it polls the
  ClusterInfo of a member that stays every :data:`WATCH_INTERVAL` s and
  keeps each change of the shard's leader, term and move (to tell what a
  pause lines up with).

The probe stops once the flood's clients are done and the move has ended;
then the harness waits for the drain and checks, with the cluster up:

* nothing lost, nothing created twice: every flood and probe item
  acknowledged CREATED, with distinct action ids; the cluster's counts
  (Status) are exactly flood + probe SUCCEEDED and nothing else; the agents'
  run records show every flood and probe FID run by exactly one action,
  without an error;
* nothing run twice (the agents' run records, as the other floods check);
* the move: the command exited 0 with its ``moved`` line; every replica's
  ClusterInfo shows the moved shard's group with the target in the
  source's place and no move running, and every other shard's group as
  placed (nothing else moved); every replica listens on exactly its API
  port and the Raft ports of the shards it now holds (/proc): the source no
  longer on the moved shard's, the target on it; the source's journal of
  the shard is gone and the target has one; the new group's members hold
  identical states of the shard (Status digests).

Figures: the move's duration (command to ``moved`` line; and from the
move being recorded, the command's first line, to it) and when each phase
was first seen (the command polls twice a second); the longest gap between
two consecutive acknowledgements of the probe during the move window (a
gap overlapping it) and, for comparison, outside it; the probe's p50 / p99
acknowledgement latency inside and outside the window; the flood's
actions/s (its actions over the time from the start signal to the last
flood action's run in the agents' records: the probe keeps the cluster
busy past the flood's end when the move outlasts it, so the drain is not
its end), its mover runs/s before, during and after the move window, how
much of the window the flood was still submitting and running, and the
share of the host's CPU used by processes outside the benchmark (the move
command's own CPU apart). A failed check is a failure (exit 1); the issue sets no
target for the pause, so it is reported, not judged. Results:
``move-latest.json`` / ``.md`` and ``runs/<time>-move.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import clients as cl
from bench.cluster import (
    ENV,
    REPO,
    BenchCluster,
    CpuWindow,
    Run,
    listening_ports,
    max_terminal_for,
)
from bench.stats import ms, percentile, rate, window_rate
from bench.workloads import Settings
from hsm.fid import Fid

#: the cluster: replicas, shards, members of each shard's group
REPLICAS, SHARDS, REPLICATION = 4, 8, 3
#: the flood's archives (--actions): more than the other floods' quick 20,000 (as bench scaleout), so that the
#: quick flood outlasts the move that starts a third of the way in (20,000 end here about when the move does)
ACTIONS = {"quick": 50_000, "full": 1_000_000}
#: the share of the flood's actions run (agents' records) when the move starts
MOVE_AT = 1 / 3
#: seconds between two probe submissions (one item each)
PROBE_INTERVAL = 0.02
#: seconds the probe resubmits one item before it gives up on it (a failure)
PROBE_DEADLINE = 120.0
#: the probe's FIDs: [SEQ_PROBE:oid:0], oids whose FIDs the ring maps to the moved shard
SEQ_PROBE = cl.SEQ_BASE + 0x7000
PROBE_INITIATOR = "move-probe"
#: ended actions kept on the moved shard beyond the flood's share: the probe's (50 a second)
PROBE_ROOM = 100_000
#: seconds the move command waits for the move (its --timeout), by mode
MOVE_TIMEOUT = {"quick": 300.0, "full": 1800.0}
#: seconds between two polls of the shard's leader (a member that stays's ClusterInfo) while the move runs
WATCH_INTERVAL = 0.25
#: seconds the checks wait for every replica to show the new group, ports and journals as expected
SETTLE = 30.0

MOVE_HELP = f"""\
A shard moved under a flood (issue 19): 0 lost, 0 run twice, and the longest pause in that shard's
acknowledgements. One cluster of {REPLICAS} replicas x {SHARDS} shards in groups of {REPLICATION}, agentd with the null mover,
the usual clients; the rebalancer is switched off before the flood. The archive flood at the mode's size
(--actions; {ACTIONS['quick']:,} quick, {ACTIONS['full']:,} full) runs; a probe thread in the harness submits one archive
every {PROBE_INTERVAL * 1000:.0f} ms whose FID the ring maps to the moved shard (--move-shard, default 0), each with its own
idempotency key, and records each acknowledgement. When the agents have run {MOVE_AT:.0%} of the flood, the
harness moves the shard's preferred leader (its group's first member) to the replica outside its group:
hsm-coordinator shard move SHARD SOURCE TARGET --wait (its output is kept). Reports the move's duration
and phases, the longest gap between two acknowledgements of the probe during the move (and outside it),
the probe's p50 / p99 acknowledgement latency inside and outside the move, the flood's actions/s and its
mover runs/s before, during and after the move. Checks: every flood and probe action created once and
SUCCEEDED, none run twice (the agents' run records), the shard's new group on every replica
(ClusterInfo) and nothing else moved, each replica listening on exactly its shards' Raft ports (the
source no longer on the shard's, the target on it), the source's journal gone, the new members' states
identical. Exit 1 if a check failed; the pause has no target (reported, not judged). Results:
RESULTS/move-latest.json / .md and RESULTS/runs/<time>-move.json.
"""


# ------------------------------------------------------------ pure helpers


def oid_source(shard_of: Callable[[Fid], int], shard: int, seq: int = SEQ_PROBE, oid0: int = 1) -> Callable[[], int]:
    """A function that returns, one per call and in order, the oids from
    *oid0* on whose FIDs ``[seq:oid:0]`` *shard_of* (a ring's) maps to *shard*."""
    def gen() -> Iterator[int]:
        oid = oid0
        while True:
            if shard_of(Fid(seq, oid, 0)) == shard:
                yield oid
            oid += 1

    it = gen()
    return lambda: next(it)


def probe_oids(shard_of: Callable[[Fid], int], shard: int, count: int, seq: int = SEQ_PROBE,
               oid0: int = 1) -> list[int]:
    """The first *count* oids of :func:`oid_source`."""
    nxt = oid_source(shard_of, shard, seq, oid0)
    return [nxt() for _ in range(count)]


def moved_group(members: Sequence[str], source: str, target: str) -> list[str]:
    """The group after moving *source* to *target*: the target in the
    source's place (as ``shard move`` records it)."""
    return [target if m == source else m for m in members]


def overlaps(a: float, b: float, w0: float, w1: float) -> bool:
    """Whether the interval [a, b] meets the window [w0, w1]."""
    return b >= w0 and a <= w1


def gaps(acks: Sequence[float], w0: float, w1: float) -> dict[str, Any]:
    """The longest gap between two consecutive acknowledgement times
    (*acks*, sorted) that overlaps the window [w0, w1] (``inside``) and the
    longest that does not (``outside``), each with its start and end
    relative to *w0*; ``gaps_inside`` counts the gaps that overlap it."""
    best: dict[str, tuple[float, float, float] | None] = {"inside": None, "outside": None}
    inside = 0
    for a, b in zip(acks, acks[1:], strict=False):
        where = "inside" if overlaps(a, b, w0, w1) else "outside"
        inside += where == "inside"
        cur = best[where]
        if cur is None or b - a > cur[0]:
            best[where] = (b - a, a, b)
    out: dict[str, Any] = {"gaps_inside": inside, "acks": len(acks)}
    for where, g in best.items():
        out[f"longest_{where}_s"] = round(g[0], 3) if g else None
        out[f"longest_{where}_from_s"] = round(g[1] - w0, 3) if g else None
        out[f"longest_{where}_to_s"] = round(g[2] - w0, 3) if g else None
    return out


def latency_split(items: Iterable[tuple[float, float]], w0: float, w1: float) -> dict[str, Any]:
    """p50 / p99 (ms) of acknowledgement latency (ack - send) of *items*
    ((send, ack) times), for those whose [send, ack] meets the window
    [w0, w1] (``inside``) and the others (``outside``), with their counts."""
    lat: dict[str, list[float]] = {"inside": [], "outside": []}
    for t_send, t_ack in items:
        lat["inside" if overlaps(t_send, t_ack, w0, w1) else "outside"].append(t_ack - t_send)
    out: dict[str, Any] = {}
    for where, v in lat.items():
        out[f"{where}_n"] = len(v)
        out[f"p50_{where}_ms"] = ms(percentile(v, 50))
        out[f"p99_{where}_ms"] = ms(percentile(v, 99))
        out[f"max_{where}_ms"] = ms(max(v)) if v else None
    return out


_PHASE = re.compile(r"^shard (\d+): (?:moving (\S+) -> (\S+) \(([a-z ]+)\)|(moved|aborted); group (.*))")


def parse_move_output(lines: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """What ``hsm-coordinator shard move --wait`` printed, each line with
    its time (s after the command): when the move was recorded (its first
    line), when each phase was first seen, and when it was done (``moved``
    or ``aborted`` line) with the group it names."""
    phases: dict[str, float] = {}
    out: dict[str, Any] = {"recorded_s": None, "phases": phases, "done_s": None, "end": None, "group": None}
    for t, line in lines:
        m = _PHASE.match(line.strip())
        if not m:
            continue
        if out["recorded_s"] is None:
            out["recorded_s"] = t
        if m.group(4):
            phases.setdefault(m.group(4), t)
        elif out["done_s"] is None:
            out["done_s"], out["end"] = t, m.group(5)
            out["group"] = [x.strip() for x in m.group(6).split(",") if x.strip()]
    return out


def watched_span(changes: Sequence[Sequence[Any]]) -> tuple[float, float] | None:
    """When a member that stays first showed the move running and first
    showed it ended after that (s after the command), from the changes
    :class:`Mover` kept ([t, leader, term, move]); None if it saw no move
    begin and end."""
    start = next((float(c[0]) for c in changes if str(c[3]).startswith("moving")), None)
    if start is None:
        return None
    end = next((float(c[0]) for c in changes if float(c[0]) > start and not c[3]), None)
    return (start, end) if end is not None else None


def phase_at(phases: Mapping[str, float], t: float, done: float | None = None) -> str:
    """The phase the command had last printed at *t* s after it started
    (``before`` the first one; ``done`` from *done* on)."""
    if done is not None and t >= done:
        return "done"
    seen = [(at, name) for name, at in phases.items() if at <= t]
    return max(seen)[1] if seen else "before"


def fid_check(expected: Iterable[str], runs: Iterable[Run]) -> dict[str, Any]:
    """The FIDs of *expected* against the agents' runs: how many were never
    run (``missing``), run by more than one action (``several_actions``:
    created twice) or ended with an error (``errors``), with examples."""
    want = set(expected)
    actions: dict[str, set[int]] = {}
    failed: set[str] = set()
    for r in runs:
        if r.fid in want:
            actions.setdefault(r.fid, set()).add(r.action_id)
            if r.errno:
                failed.add(r.fid)
    missing = sorted(want - set(actions))
    several = sorted(f for f, ids in actions.items() if len(ids) > 1)
    return {"fids": len(want), "missing": len(missing), "several_actions": len(several), "errors": len(failed),
            "missing_examples": missing[:5], "several_examples": {f: sorted(actions[f]) for f in several[:5]},
            "error_examples": sorted(failed)[:5]}


def outsiders_share(cpu: Mapping[str, Any], command_s: float | None) -> float | None:
    """The share (%) of the host's CPU used by processes outside the
    benchmark during the flood's CPU window (bench.stats.outside_cpu_share),
    less the move command's own CPU (*command_s*: a process of the benchmark
    that the window does not know)."""
    if not cpu.get("host_capacity_s"):
        return None
    other = max(0.0, float(cpu.get("other_s", 0.0)) - (command_s or 0.0))
    return round(100.0 * other / float(cpu["host_capacity_s"]), 1)


def count_check(counts: Mapping[str, int], expected: int) -> list[str]:
    """Problems with the cluster's action counts by state once drained:
    exactly *expected* SUCCEEDED and nothing in any other state."""
    out = []
    if counts.get("SUCCEEDED", 0) != expected:
        out.append(f"{counts.get('SUCCEEDED', 0):,} actions SUCCEEDED, not {expected:,}")
    other = {k: v for k, v in counts.items() if k != "SUCCEEDED" and v}
    if other:
        out.append("actions in other states: " + ", ".join(f"{k} {v:,}" for k, v in sorted(other.items())))
    return out


def problems(out: Mapping[str, Any]) -> list[str]:
    """Every failed check of a run's results (empty: all passed)."""
    p: list[str] = []
    mv = out.get("move") or {}
    if mv.get("error"):
        p.append(f"the move: {mv['error']}")
    if mv.get("returncode") != 0:
        p.append(f"`shard move` exited {mv.get('returncode')}: {(mv.get('stderr') or '').strip()[-300:]}")
    if (mv.get("parsed") or {}).get("end") != "moved":
        p.append("`shard move` printed no `moved` line")
    elif (mv.get("parsed") or {}).get("group") != mv.get("expected_group"):
        p.append(f"`shard move` says the group is {mv['parsed']['group']}, not {mv.get('expected_group')}")
    fl = out.get("flood") or {}
    n = int(out.get("actions") or 0)
    created = (fl.get("outcomes") or {}).get("CREATED", 0)
    if created != n:
        p.append(f"flood: {created:,} of {n:,} items CREATED ({fl.get('outcomes')})")
    pr = out.get("probe") or {}
    if pr.get("error"):
        p.append(f"probe: {pr['error']}")
    if pr.get("unacknowledged"):
        p.append(f"probe: {pr['unacknowledged']} item(s) never acknowledged in {PROBE_DEADLINE:g} s")
    if pr.get("not_created"):
        p.append(f"probe: {pr['not_created']} item(s) acknowledged with an outcome other than CREATED "
                 f"({pr.get('outcomes')})")
    if pr.get("duplicate_ids"):
        p.append(f"probe: {pr['duplicate_ids']} action id(s) acknowledged for more than one item")
    if pr and not (pr.get("gaps") or {}).get("gaps_inside"):
        p.append("probe: no two acknowledgements around the move: the pause was not measured")
    ch = out.get("checks") or {}
    p += [f"counts: {x}" for x in ch.get("counts_problems", [])]
    for name in ("flood_fids", "probe_fids"):
        f = ch.get(name) or {}
        what = name.split("_")[0]
        if f.get("missing"):
            p.append(f"{what}: {f['missing']:,} FID(s) never run (lost), e.g. {f['missing_examples']}")
        if f.get("several_actions"):
            p.append(f"{what}: {f['several_actions']:,} FID(s) run by more than one action (created twice), "
                     f"e.g. {f['several_examples']}")
        if f.get("errors"):
            p.append(f"{what}: {f['errors']:,} FID(s) whose run failed, e.g. {f['error_examples']}")
    rt = ch.get("run_twice", 0)
    if rt:
        p.append(f"{rt} action(s) ran twice on the movers: {ch.get('run_twice_examples')}")
    if ch.get("actions_run") is not None and ch["actions_run"] != ch.get("actions_expected"):
        p.append(f"the movers ran {ch['actions_run']:,} actions, not {ch.get('actions_expected'):,}")
    p += ch.get("group_problems", [])
    p += ch.get("port_problems", [])
    p += ch.get("journal_problems", [])
    p += ch.get("digest_problems", [])
    return p


# ------------------------------------------------------------ the probe and the mover


class AckProbe:
    """A thread that submits one archive on the moved shard every
    *interval* s, and records each item's send and acknowledgement time."""

    def __init__(self, c: BenchCluster, oids: Callable[[], int], interval: float = PROBE_INTERVAL) -> None:
        from hsm.client import CoordinatorClient

        self.c = c
        self.next_oid = oids
        self.interval = interval
        self.client = CoordinatorClient(c.addresses, timeout=30, initiator=PROBE_INITIATOR, retry_unavailable=60.0,
                                        tls=c.harness_tls)
        self.client.cluster_info()  # connected (and the shard map read) before the clock starts
        #: one per item: (oid, t_send, t_ack or None, action id, outcome name, resubmissions)
        self.items: list[tuple[int, float, float | None, int, str, int]] = []
        self.error = ""
        self.max_lag = 0.0
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-move-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, abort: bool = False) -> None:
        """No new item; the one under way is resubmitted to its end (with
        *abort*: given up at its next error, the run failed anyway)."""
        self._stop.set()
        if abort:
            self._abort.set()
        self._thread.join(PROBE_DEADLINE + 30)
        self.client.close()

    def _submit(self, item: Any) -> tuple[Any, int]:
        """The one item, resubmitted (same key: never applied twice) after
        an error until :data:`PROBE_DEADLINE`; its result and resubmissions."""
        from hsm.client import CoordinatorError

        deadline = time.monotonic() + PROBE_DEADLINE
        retries = 0
        while True:
            try:
                return self.client.submit([item], batch_size=1)[0], retries
            except CoordinatorError:
                if time.monotonic() > deadline or self._abort.is_set():
                    raise
                retries += 1
                time.sleep(0.05)

    def _loop(self) -> None:
        from hsm.client import CoordinatorError, outcome_name, submit_item

        due = time.time()
        try:
            while not self._stop.is_set():
                oid = self.next_oid()
                item = submit_item("simfs", Fid(SEQ_PROBE, oid, 0), "archive", initiator=PROBE_INITIATOR,
                                   idempotency_key=f"{PROBE_INITIATOR}:{oid}")
                t_send = time.time()
                try:
                    res, retries = self._submit(item)
                except CoordinatorError as exc:
                    self.items.append((oid, t_send, None, 0, f"{type(exc).__name__}: {exc}", -1))
                else:
                    self.items.append((oid, t_send, time.time(), res.action_id, outcome_name(res.outcome), retries))
                due += self.interval
                wait = due - time.time()
                if wait > 0:
                    self._stop.wait(wait)
                else:  # late: the next one goes at once, and the schedule starts from now
                    self.max_lag = max(self.max_lag, -wait)
                    due = time.time()
        except Exception as exc:  # noqa: BLE001 - reported as a failure
            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    def record(self, w0: float, w1: float) -> dict[str, Any]:
        acked = [x for x in self.items if x[2] is not None]
        acks = sorted(x[2] for x in acked if x[2] is not None)
        ids = [x[3] for x in acked]
        outcomes = Counter(x[4] for x in acked)
        return {"interval_s": self.interval, "submitted": len(self.items), "acknowledged": len(acked),
                "unacknowledged": len(self.items) - len(acked),
                "unacknowledged_examples": [x[4] for x in self.items if x[2] is None][:3],
                "outcomes": dict(outcomes), "not_created": len(acked) - outcomes.get("CREATED", 0),
                "duplicate_ids": len(ids) - len(set(ids)),
                "resubmissions": sum(x[5] for x in acked), "items_resubmitted": sum(1 for x in acked if x[5]),
                "max_lag_s": round(self.max_lag, 3), "error": self.error,
                "first_s": round(self.items[0][1] - w0, 3) if self.items else None,
                "last_s": round(acks[-1] - w0, 3) if acks else None,
                "gaps": gaps(acks, w0, w1),
                # each item sent or acknowledged from 2 s before the move to 2 s after: [send, ack] s after the
                # command, resubmissions
                "items_near_move": [[round(x[1] - w0, 3), round(x[2] - w0, 3), x[5]] for x in acked
                                    if x[2] is not None and overlaps(x[1], x[2], w0 - 2.0, w1 + 2.0)],
                "latency": latency_split(((x[1], x[2]) for x in acked if x[2] is not None), w0, w1)}

    def fids(self) -> list[str]:
        return [str(Fid(SEQ_PROBE, x[0], 0)) for x in self.items if x[2] is not None]

    def ids(self) -> list[int]:
        return [x[3] for x in self.items if x[2] is not None]


class RunCounter:
    """Counts the mover runs in the agents' records as they grow (read from
    where it stopped), leaving out the lines that contain *exclude*."""

    def __init__(self, runs_dir: Path, exclude: str) -> None:
        self.dir = runs_dir
        self.exclude = exclude.encode()
        self.seen: dict[Path, tuple[int, int]] = {}

    def count(self) -> int:
        for f in self.dir.glob("*.runs"):
            read, runs = self.seen.get(f, (0, 0))
            with open(f, "rb") as fh:
                fh.seek(read)
                chunk = fh.read()
            whole = chunk[:chunk.rfind(b"\n") + 1]  # a line being written is counted next time
            lines = whole.splitlines()
            self.seen[f] = (read + len(whole), runs + sum(1 for x in lines if self.exclude not in x))
        return sum(r for _, r in self.seen.values())


class Mover:
    """A thread that waits for *at_runs* flood runs in the agents' records,
    then runs ``hsm-coordinator shard move SHARD SOURCE TARGET --wait`` and
    keeps its output, each line with its time (s after the command)."""

    def __init__(self, c: BenchCluster, shard: int, members: Sequence[str], target: str, at_runs: int,
                 timeout: float, wait_timeout: float) -> None:
        self.c, self.shard, self.members, self.target = c, shard, list(members), target
        self.source = self.members[0]
        self.at_runs, self.timeout, self.wait_timeout = at_runs, timeout, wait_timeout
        self.counter = RunCounter(c.runs_dir, str(Fid(SEQ_PROBE, 1, 0)).split(":")[0] + ":")
        self.lines: list[tuple[float, str]] = []
        self.t_cmd: float | None = None
        self.t_exit: float | None = None
        self.returncode: int | None = None
        self.stderr = ""
        self.error = ""
        self.runs_at_start = 0
        self.leader_before = ""
        self.command: list[str] = []
        self.cpu_s: float | None = None
        self.proc: subprocess.Popen[str] | None = None
        #: [s after the command, leader, term, move] at each change, as :attr:`watched` answered ClusterInfo
        self.leaders: list[list[Any]] = []
        self.watched = ""
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-move-mover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self) -> None:
        """Stop waiting, end the command if it runs (the run failed anyway)."""
        self._abort.set()
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
        self.join(30)

    def _wait_runs(self) -> int:
        deadline = time.monotonic() + self.wait_timeout
        while not self._abort.is_set():
            k = self.counter.count()
            if k >= self.at_runs:
                return k
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.at_runs:,} flood runs not in the agents' records after "
                                   f"{self.wait_timeout:.0f} s")
            time.sleep(0.05)
        raise RuntimeError("aborted")

    def _watch(self, rid: str, done: threading.Event) -> None:
        """Poll *rid*'s ClusterInfo (a member that stays) every
        :data:`WATCH_INTERVAL` s while the command runs; keep each change of
        the shard's leader, term or move, with its time (s after the command)."""
        from hsm.v1 import coordinator_pb2 as C
        from hsm.v1 import coordinator_pb2_grpc

        last: tuple[str, int, str] | None = None
        with self.c.channel(self.c.spec(rid).api) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)  # type: ignore[no-untyped-call]
            while not done.is_set():
                t = time.time()
                try:
                    info = stub.ClusterInfo(C.ClusterInfoRequest(), timeout=2)
                    row = next(r for r in info.shards if r.shard == self.shard)
                    now: tuple[str, int, str] = (row.leader, int(row.term), row.move)
                except Exception as exc:  # noqa: BLE001 - a missed poll is a line too
                    now = ("", 0, f"no answer: {type(exc).__name__}")
                if now != last:
                    self.leaders.append([round(t - (self.t_cmd or t), 3), *now])
                    last = now
                done.wait(WATCH_INTERVAL)

    def _run(self) -> None:
        try:
            self.runs_at_start = self._wait_runs()
            self.leader_before = shard_row(self.c, self.c.live_replicas()[0], self.shard).leader
            self.command = [sys.executable, "-m", "coordinator.cli", "shard", "move", str(self.shard), self.source,
                            self.target, "--wait", "--timeout", f"{self.timeout:g}", "--coordinators",
                            self.c.addresses]
            err = self.c.dir / "move-command.err"
            done = threading.Event()
            stays = next(m for m in self.members if m != self.source)
            watch = threading.Thread(target=self._watch, args=(stays, done), name="bench-move-watch", daemon=True)
            self.watched = stays
            with open(err, "w") as ef:
                self.t_cmd = time.time()
                p = self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                 stderr=ef, text=True, env=ENV, cwd=str(REPO))
                watch.start()
                try:
                    assert p.stdout is not None
                    for line in p.stdout:
                        self.lines.append((time.time() - self.t_cmd, line.rstrip("\n")))
                    # wait4, not wait: the command's own CPU (a Python process on the cluster's cores,
                    # counted apart from the outsiders')
                    _pid, status, ru = os.wait4(p.pid, 0)
                    self.t_exit = time.time()
                    self.returncode = p.returncode = os.waitstatus_to_exitcode(status)
                    self.cpu_s = ru.ru_utime + ru.ru_stime
                finally:
                    done.set()
                    watch.join(10)
            self.stderr = err.read_text()
        except Exception as exc:  # noqa: BLE001 - reported as a failure
            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    def record(self) -> dict[str, Any]:
        parsed = parse_move_output(self.lines)
        end = parsed["done_s"]
        return {"shard": self.shard, "source": self.source, "target": self.target,
                "leader_before": self.leader_before, "at_runs": self.at_runs, "runs_at_start": self.runs_at_start,
                "command": " ".join(self.command[1:]), "returncode": self.returncode, "error": self.error,
                "stdout": [[round(t, 3), x] for t, x in self.lines], "stderr": self.stderr, "parsed": parsed,
                "seconds": round(end, 3) if end is not None else None,
                "recorded_to_done_s": round(end - parsed["recorded_s"], 3)
                if end is not None and parsed["recorded_s"] is not None else None,
                "command_exit_s": round(self.t_exit - self.t_cmd, 3) if self.t_exit and self.t_cmd else None,
                "command_cpu_s": round(self.cpu_s, 3) if self.cpu_s is not None else None,
                "watched": self.watched, "leader_changes": self.leaders,
                "watched_span_s": [round(x, 3) for x in span] if (span := watched_span(self.leaders)) else None}


# ------------------------------------------------------------ asking the cluster


def _info(c: BenchCluster, rid: str, timeout: float = 10.0) -> Any:
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    with c.channel(c.spec(rid).api) as ch:
        return coordinator_pb2_grpc.CoordinatorStub(ch).ClusterInfo(  # type: ignore[no-untyped-call]
            C.ClusterInfoRequest(), timeout=timeout)


def shard_row(c: BenchCluster, rid: str, shard: int) -> Any:
    return next(r for r in _info(c, rid).shards if r.shard == shard)


def rebalancer_off(c: BenchCluster) -> dict[str, Any]:
    """Switch the rebalancer off (Rebalance, enabled=2: as ``hsm-coordinator
    rebalance off``); its answer: on or off, each replica's load, its next step."""
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    errors = []
    for rid in c.live_replicas():
        try:
            with c.channel(c.spec(rid).api) as ch:
                r = coordinator_pb2_grpc.CoordinatorStub(ch).Rebalance(  # type: ignore[no-untyped-call]
                    C.RebalanceRequest(enabled=2), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the next replica
            errors.append(f"{rid}: {exc}")
            continue
        if r.enabled:
            raise RuntimeError(f"the rebalancer is still on after `rebalance off` through {rid}")
        return {"enabled": r.enabled, "drained": list(r.drained), "next": r.next,
                "replicas": {x.id: {"shards": x.shards, "leads": x.leads} for x in r.replicas}}
    raise RuntimeError(f"no replica switched the rebalancer off: {errors}")


def _groups_now(c: BenchCluster) -> dict[str, Any]:
    """Replica -> {shard: [members, move, leader]} as its ClusterInfo says (or the error)."""
    out: dict[str, Any] = {}
    for rid in c.live_replicas():
        try:
            out[rid] = {r.shard: [list(r.members), r.move, r.leader] for r in _info(c, rid).shards}
        except Exception as exc:  # noqa: BLE001 - reported
            out[rid] = f"{type(exc).__name__}: {exc}"
    return out


def leader_seen(views: Mapping[str, Any], shard: int, members: Sequence[str]) -> str | None:
    """The shard's leader as most of its members see it (:func:`_groups_now`)."""
    seen = Counter(v[shard][2] for rid, v in views.items()
                   if rid in members and isinstance(v, dict) and shard in v and v[shard][2])
    return seen.most_common(1)[0][0] if seen else None


def group_problems(views: Mapping[str, Any], placement: Sequence[Sequence[str]]) -> list[str]:
    """Every replica's view (:func:`_groups_now`) against *placement* (each
    shard's expected members, in order), with no move running."""
    out = []
    for rid, v in views.items():
        if isinstance(v, str):
            out.append(f"{rid} did not answer ClusterInfo: {v}")
            continue
        for k, want in enumerate(placement):
            got = v.get(k)
            if got is None or got[0] != list(want) or got[1]:
                out.append(f"{rid} shows shard {k}'s group as {got[0] if got else None}"
                           f"{f' ({got[1]})' if got and got[1] else ''}, not {list(want)}")
    return out


def port_problems(c: BenchCluster, placement: Sequence[Sequence[str]]) -> tuple[list[str], dict[str, Any]]:
    """Each replica listens on exactly its API port and the Raft ports of
    the shards *placement* gives it (/proc)."""
    out: list[str] = []
    rec: dict[str, Any] = {}
    pids = c.pids()
    for rid in c.live_replicas():
        spec = c.spec(rid)
        own = {int(spec.api.rsplit(":", 1)[1])} | {int(spec.raft_addr(k).rsplit(":", 1)[1])
                                                  for k, g in enumerate(placement) if rid in g}
        got = listening_ports(pids[rid]) if rid in pids else set()
        missing, extra = sorted(own - got), sorted(got - own)
        rec[rid] = {"missing": missing, "extra": extra}
        if missing or extra:
            out.append(f"{rid} does not listen on exactly its API and its shards' Raft ports (missing "
                       f"{missing or 'none'}, extra {extra or 'none'})")
    return out, rec


def journal_problems(c: BenchCluster, shard: int, source: str, target: str) -> tuple[list[str], dict[str, Any]]:
    """The source's directory of the shard keeps no journal; the target's has one."""
    def files(rid: str) -> list[str]:
        d = c.dir / "data" / rid / f"shard-{shard}"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    src, dst = files(source), files(target)
    out = []
    if any(n.startswith("journal") for n in src):
        out.append(f"{source} (the source) still keeps a journal of shard {shard}: {src}")
    if not any(n.startswith("journal") for n in dst):
        out.append(f"{target} (the target) keeps no journal of shard {shard}: {dst}")
    return out, {source: src, target: dst}


def digest_problems(c: BenchCluster, shard: int, members: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The shard's digest as each member applied it (its own row of Status)."""
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    got: dict[str, str] = {}
    for rid in members:
        try:
            with c.channel(c.spec(rid).api) as ch:
                st = coordinator_pb2_grpc.CoordinatorStub(ch).Status(  # type: ignore[no-untyped-call]
                    C.StatusRequest(digest=True), timeout=60)
            row = next((r for r in st.shards if r.shard == shard and r.replica == rid), None)
            got[rid] = row.digest if row is not None else "(no row of its own)"
        except Exception as exc:  # noqa: BLE001 - reported
            got[rid] = f"{type(exc).__name__}: {exc}"
    if len(set(got.values())) != 1:
        return [f"the members of shard {shard} hold different states: {got}"], got
    return [], got


def _until_ok(check: Callable[[], tuple[list[str], Any]], timeout: float) -> tuple[list[str], Any]:
    """*check* until it finds no problem or *timeout* s passed; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        found, rec = check()
        if not found or time.monotonic() > deadline:
            return found, rec
        time.sleep(0.5)


# ------------------------------------------------------------ the run


def run_move(s: Settings, n: int, shard: int, say: Callable[[str], None]) -> dict[str, Any]:
    from bench import workloads as w
    from bench.cpu import per_action
    from hsm.ring import Ring

    opt = s.cluster_options(max_terminal=max_terminal_for(n, s.shards) + PROBE_ROOM)
    move_timeout = MOVE_TIMEOUT.get(s.mode, MOVE_TIMEOUT["quick"])
    with w.fresh_cluster(s, "move", opt) as c:
        info = _info(c, c.live_replicas()[0])
        ring = Ring(info.shard_count, info.vnodes)
        before = [list(r.members) for r in sorted(info.shards, key=lambda r: r.shard)]
        if not 0 <= shard < len(before):
            raise ValueError(f"no shard {shard}: the cluster has {len(before)}")
        members = before[shard]
        source = members[0]
        target = next((rid for rid in c.live_replicas() if rid not in members), "")
        if not target:
            raise RuntimeError(f"every replica is in shard {shard}'s group {members}: no replica to move to")
        after = [moved_group(g, source, target) if k == shard else g for k, g in enumerate(before)]
        rebalancer = rebalancer_off(c)
        say(f"   rebalancer off (next step was: {rebalancer['next'] or 'nothing'}); shard {shard}'s group "
            f"{', '.join(members)}: {source} (its preferred leader) moves to {target}")
        params = w._flood_clients(s, c, n, cl.SEQ_FLOOD)
        probe = AckProbe(c, oid_source(ring.shard_of, shard))
        at = math.ceil(MOVE_AT * n)
        mover = Mover(c, shard, members, target, at, move_timeout, wait_timeout=max(300.0, n / 50))
        with cl.ClientGroup(cl.submit_worker, params) as g:
            g.start()
            say(f"   {len(params)} clients ready; submitting {n:,} archives (batches of {s.batch}, {s.inflight} in "
                f"flight per client); a probe submits 1 archive on shard {shard} every "
                f"{PROBE_INTERVAL * 1000:.0f} ms; the move starts once {at:,} flood actions have run")
            cpu = CpuWindow(c)
            t0 = g.release()
            probe.start()
            mover.start()
            ok = False
            try:
                res = g.results(timeout=max(600, n / 50))
                t_sub = max(r["t_end"] for r in res)
                say(f"   the flood's clients are done after {t_sub - t0:.1f} s; waiting for the move")
                if not mover.join(move_timeout + max(300.0, n / 50) + 120):
                    mover.error = mover.error or "the move command did not end"
                    mover.abort()
                ok = True
            finally:
                probe.stop(abort=not ok)
                if not ok:
                    mover.abort()
        t_end = w.wait_drained(c, timeout=max(300, n / 100))
        cpu_used = cpu.stop(sum(r["cpu_s"] for r in res), len(res))
        mv = mover.record()
        for t, line in mv["stdout"]:
            say(f"   [{t:6.2f} s] {line}")
        w0 = mover.t_cmd or t_end
        done = mv["parsed"]["done_s"]
        w1 = w0 + done if done is not None else (mover.t_exit or t_end)
        pr = probe.record(w0, w1)
        # the checks, with the cluster up
        say("   checking: groups, ports, journals, states, counts, run records")
        gp, views = _until_ok(lambda: (group_problems(g2 := _groups_now(c), after), g2), SETTLE)
        pp, ports = _until_ok(lambda: port_problems(c, after), SETTLE)
        jp, journals = _until_ok(lambda: journal_problems(c, shard, source, target), SETTLE)
        dp, digests = _until_ok(lambda: digest_problems(c, shard, after[shard]), SETTLE)
        counts = c.counts()
        samples = [x for r in res for x in r["samples"]]
        lat = w._latencies(c, samples)
        runs = w._settle_runs(c)
        rc = w._run_counts(runs, w.KIND_ARCHIVE)
        flood_fids = [str(Fid(p["seq"], oid, 0)) for p in params for oid in range(p["oid0"], p["oid0"] + p["count"])]
        probe_fids = probe.fids()
        flood_set = set(flood_fids)
        flood_runs = [r.time for r in runs if r.fid in flood_set]
        t_last = max(flood_runs) if flood_runs else t_end
        checks = {"counts": counts, "counts_problems": count_check(counts, n + len(probe_fids)),
                  "flood_fids": fid_check(flood_fids, runs), "probe_fids": fid_check(probe_fids, runs),
                  "actions_run": rc["actions_run"], "actions_expected": n + len(probe_fids),
                  "run_twice": rc["run_twice"], "run_twice_examples": rc["run_twice_examples"],
                  "groups": views, "group_problems": gp, "ports": ports, "port_problems": pp,
                  "journals": journals, "journal_problems": jp, "digests": digests, "digest_problems": dp,
                  "leader_after": leader_seen(views, shard, after[shard])}
        outcomes: Counter[str] = Counter()
        for r in res:
            outcomes.update(r["outcomes"])
        seconds = t_last - t0
        flood_runs.sort()
        flood = {"seconds": round(seconds, 2), "actions_per_s": rate(n, seconds),
                 "drained_seconds": round(t_end - t0, 2), "submit_seconds": round(t_sub - t0, 2),
                 "submits_per_s": rate(n, t_sub - t0), "outcomes": dict(outcomes),
                 "client_retries": sum(r["retries"] for r in res),
                 "runs_per_s_before": window_rate(flood_runs, t0, w0),
                 "runs_per_s_during": window_rate(flood_runs, w0, w1),
                 "runs_per_s_after": window_rate(flood_runs, w1, t_last) if t_last > w1 else None,
                 "flood_runs_during_move": sum(1 for t in flood_runs if w0 <= t < w1),
                 "submitting_during_move_share": round(max(0.0, min(t_sub, w1) - w0) / (w1 - w0), 3)
                 if w1 > w0 else None,
                 "running_during_move_share": round(max(0.0, min(t_last, w1) - w0) / (w1 - w0), 3)
                 if w1 > w0 else None,
                 "move_started_s": round(w0 - t0, 2), "move_ended_s": round(w1 - t0, 2),
                 **lat, "cpu": cpu_used, "cpu_per_action": per_action(cpu_used, n, "archive action"),
                 "outsiders_cpu_share_pct": outsiders_share(cpu_used, mv.get("command_cpu_s"))}
        out = {"move": {**mv, "expected_group": after[shard], "group_before": members}, "probe": pr,
               "flood": flood, "checks": checks, "placement_before": before, "rebalancer": rebalancer,
               "cluster": opt.describe(), "actions": n}
        found = problems(out)
        if found:
            out["evidence"] = w._keep_evidence(s, c, "move", f"{len(found)} check(s) failed")
    return out


def move(args: argparse.Namespace, s: Settings, say: Callable[[str], None]) -> int:
    from bench.compare import save
    from bench.machine import machine

    n = args.actions if getattr(args, "actions", None) is not None else ACTIONS.get(s.mode, ACTIONS["quick"])
    s.flood_actions = n
    s.replicas = args.replicas or REPLICAS
    s.shards = args.shards or SHARDS
    s.replication = REPLICATION
    shard = int(getattr(args, "move_shard", 0) or 0)
    mach = machine()
    t0 = time.monotonic()
    say(f"== move ({s.mode}): shard {shard} moved under an archive flood of {n:,} on {s.replicas} replicas x "
        f"{s.shards} shards in groups of {REPLICATION}; {mach['cores']} cores")
    base = {"kind": "move", "mode": s.mode, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach,
            "actions": n, "shard": shard, "move_at": round(MOVE_AT, 3), "probe_interval_s": PROBE_INTERVAL,
            "settings": {"replicas": s.replicas, "shards": s.shards, "replication": REPLICATION,
                         "agents": s.agents, "clients": s.clients, "batch": s.batch, "inflight": s.inflight,
                         "fsync": s.fsync, "encrypt": s.encrypt}}
    try:
        got = run_move(s, n, shard, say)
        failure = ""
    except KeyboardInterrupt:
        say("!! interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - reported
        traceback.print_exc()
        got, failure = {}, f"{type(exc).__name__}: {exc}"
    out = {**base, **got, "wall_seconds": round(time.monotonic() - t0, 1)}
    found = ([f"the run failed: {failure}"] if failure else []) + (problems(out) if got else [])
    out["problems"] = found
    out["passed"] = not found
    md = markdown(out)
    if not args.no_save:
        paths = save(out, md, args.results, name="move")
        say(f"   results: {', '.join(str(p) for p in paths)}")
    say(md)
    return 1 if found else 0


# ------------------------------------------------------------ output


def _f(v: Any, fmt: str = "{:,.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(out: Mapping[str, Any]) -> str:
    m = out.get("machine", {})
    st = out.get("settings", {})
    mv = out.get("move") or {}
    pr = out.get("probe") or {}
    fl = out.get("flood") or {}
    ch = out.get("checks") or {}
    g = pr.get("gaps") or {}
    lat = pr.get("latency") or {}
    parsed = mv.get("parsed") or {}
    shard = out.get("shard", mv.get("shard"))
    lines = [
        "# hsm-coordinator benchmark: a shard moved under a flood",
        "",
        f"{out.get('when')}, {out.get('mode')} mode, {_f(out.get('wall_seconds'), '{:,.0f}')} s; {m.get('cores')} "
        f"cores ({m.get('cpu', '?')}), Python {m.get('python', '?')}, grpcio "
        f"{m.get('versions', {}).get('grpcio', '?')}, commit {m.get('git_commit', '?')}"
        f"{' (dirty)' if m.get('git_dirty') else ''}. {st.get('replicas')} replicas x {st.get('shards')} shards in "
        f"groups of {st.get('replication')}, {st.get('agents')} agentd (null mover), {st.get('clients')} client "
        f"processes (batches of {st.get('batch')}, {st.get('inflight')} in flight), the rebalancer off; an archive "
        f"flood of {out.get('actions', 0):,}. When the agents had run {out.get('move_at', MOVE_AT):.0%} of it, "
        f"`hsm-coordinator shard move {shard} {mv.get('source', '?')} {mv.get('target', '?')} --wait` moved the "
        f"shard's preferred leader (leading it: {mv.get('leader_before') or '?'}) to the replica outside its group. "
        f"A probe in the harness submitted one archive on shard {shard} every "
        f"{_f(out.get('probe_interval_s', PROBE_INTERVAL) * 1000, '{:.0f}')} ms, each with its own idempotency key.",
        "",
        f"**Checks: {'passed' if out.get('passed') else 'FAILED'}.** Lost: "
        f"{_lost(ch)}; run twice: {_f(ch.get('run_twice'), '{:,}')}. The issue sets no target for the pause: "
        "it is reported, not judged.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| the move, command to `moved` line | {_f(mv.get('seconds'), '{:.2f}')} s |",
        f"| the move, recorded (first line) to `moved` line | {_f(mv.get('recorded_to_done_s'), '{:.2f}')} s |",
        f"| the move, as {mv.get('watched') or 'a member that stays'} showed it running (polled every "
        f"{WATCH_INTERVAL:g} s) | {_span(mv.get('watched_span_s'))} |",
        f"| **longest gap between two acknowledgements of shard {shard}, during the move** | "
        f"**{_f(g.get('longest_inside_s'), '{:.3f}')} s** (from {_f(g.get('longest_inside_from_s'), '{:.2f}')} to "
        f"{_f(g.get('longest_inside_to_s'), '{:.2f}')} s after the command{_phase_note(g, parsed)}) |",
        f"| longest gap outside the move | {_f(g.get('longest_outside_s'), '{:.3f}')} s |",
        f"| probe acknowledgement p50 / p99 / max, during the move | {_f(lat.get('p50_inside_ms'))} / "
        f"{_f(lat.get('p99_inside_ms'))} / {_f(lat.get('max_inside_ms'))} ms ({_f(lat.get('inside_n'), '{:,}')} items) |",
        f"| probe acknowledgement p50 / p99 / max, outside the move | {_f(lat.get('p50_outside_ms'))} / "
        f"{_f(lat.get('p99_outside_ms'))} / {_f(lat.get('max_outside_ms'))} ms ({_f(lat.get('outside_n'), '{:,}')} "
        "items) |",
        f"| probe items resubmitted (an error, then the same item again) | {_f(pr.get('items_resubmitted'), '{:,}')} |",
        f"| flood, actions/s end to end | {_f(fl.get('actions_per_s'))} ({_f(fl.get('seconds'), '{:.1f}')} s) |",
        f"| flood, mover runs/s before / during / after the move | {_f(fl.get('runs_per_s_before'))} / "
        f"{_f(fl.get('runs_per_s_during'))} / {_f(fl.get('runs_per_s_after'))} |",
        f"| flood still submitting / running during the move (share of the window) | "
        f"{_pct(fl.get('submitting_during_move_share'))} / {_pct(fl.get('running_during_move_share'))} |",
        f"| flood submit-to-start p50 / p99 | {_f(fl.get('p50_start_ms'))} / {_f(fl.get('p99_start_ms'))} ms |",
        f"| outsiders' share of the host CPU (the move command's own {_f(mv.get('command_cpu_s'), '{:.2f}')} s "
        f"apart) | {_f(fl.get('outsiders_cpu_share_pct'))} % |",
        "",
        f"The move window runs from the command ({_f(fl.get('move_started_s'), '{:.1f}')} s into the flood) to its "
        f"`moved` line ({_f(fl.get('move_ended_s'), '{:.1f}')} s). A gap is during the move when it overlaps the "
        "window; an item's latency (send to acknowledgement, resubmissions included) is during the move when its "
        "send-to-acknowledgement interval overlaps it. The command polls the shard's state twice a second and "
        "starts with a Python interpreter's start-up, so phase times are within about 0.5 s. The flood's "
        "actions/s is its actions over the time from the start signal to its last action's run in the agents' "
        "records.",
        "",
        "## The move command's output",
        "",
        "```",
        *[f"[{t:7.2f} s] {x}" for t, x in mv.get("stdout", [])],
        *(["(stderr) " + x for x in (mv.get("stderr") or "").strip().splitlines()]),
        "```",
        "",
        f"Shard {shard}'s leader, term and move as {mv.get('watched') or '?'} (a member that stays) answered "
        f"ClusterInfo every {WATCH_INTERVAL:g} s while the command ran, at each change (s after the command):",
        "",
        *[f"- {t:.2f} s: leader {ldr or '(none)'}, term {term}{f', {what}' if what else ''}"
          for t, ldr, term, what in mv.get("leader_changes", [])],
        "",
        "Phases first seen (s after the command): " + (", ".join(
            f"{k} {v:.2f}" for k, v in (parsed.get("phases") or {}).items()) or "none") +
        f"; done {_f(parsed.get('done_s'), '{:.2f}')}. Leader of shard {shard} before: "
        f"{mv.get('leader_before') or '?'}, after: {ch.get('leader_after') or '?'}.",
        "",
        "## Checks",
        "",
        "| check | result |",
        "|---|---|",
        f"| flood items CREATED | {_f((fl.get('outcomes') or {}).get('CREATED'), '{:,}')} of "
        f"{out.get('actions', 0):,} |",
        f"| probe items acknowledged CREATED (never acknowledged) | {_f((pr.get('outcomes') or {}).get('CREATED'), '{:,}')} "
        f"of {_f(pr.get('submitted'), '{:,}')} ({_f(pr.get('unacknowledged'), '{:,}')}) |",
        f"| cluster counts once drained | {_counts(ch.get('counts'))} (expected {_f(ch.get('actions_expected'), '{:,}')} "
        "SUCCEEDED) |",
        f"| flood FIDs never run / run by 2+ actions / failed | {_fids(ch.get('flood_fids'))} |",
        f"| probe FIDs never run / run by 2+ actions / failed | {_fids(ch.get('probe_fids'))} |",
        f"| actions run twice on the movers | {_f(ch.get('run_twice'), '{:,}')} |",
        f"| shard {shard}'s group on every replica; every other shard's as placed | "
        f"{_ok(ch.get('group_problems'))} ({', '.join(mv.get('expected_group') or [])}) |",
        f"| every replica listens on exactly its shards' Raft ports (source off shard {shard}'s, target on it) | "
        f"{_ok(ch.get('port_problems'))} |",
        f"| the source's journal of shard {shard} gone, the target's there | {_ok(ch.get('journal_problems'))} |",
        f"| shard {shard}'s new members hold identical states (digests) | {_ok(ch.get('digest_problems'))} |",
        "",
    ]
    if out.get("problems"):
        lines += ["**Failures:** " + "; ".join(out["problems"]), ""]
        if out.get("evidence"):
            lines += [f"Logs and run records kept in `{out['evidence']}`.", ""]
    lines += ["Everything measured (each probe figure, the command's output with times, every replica's view of "
              "the groups and ports, the CPU) is in `move-latest.json`; one file per run under `runs/`.", ""]
    return "\n".join(lines)


def _phase_note(g: Mapping[str, Any], parsed: Mapping[str, Any]) -> str:
    t = g.get("longest_inside_from_s")
    if t is None:
        return ""
    phase = phase_at(parsed.get("phases") or {}, t, parsed.get("done_s"))
    if phase == "before":
        return "; it began before the command's first line"
    return f"; it began in phase {phase}, as the command saw it"


def _span(span: Any) -> str:
    if not span:
        return "n/a"
    return f"{span[1] - span[0]:.2f} s (from {span[0]:.2f} to {span[1]:.2f} s after the command)"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def _ok(found: Any) -> str:
    if found is None:
        return "not checked"
    return "yes" if not found else "**no**: " + "; ".join(found[:3])


def _counts(counts: Any) -> str:
    if not counts:
        return "n/a"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def _fids(f: Any) -> str:
    if not f:
        return "n/a"
    return f"{f['missing']:,} / {f['several_actions']:,} / {f['errors']:,} of {f['fids']:,}"


def _lost(ch: Mapping[str, Any]) -> str:
    if not ch:
        return "n/a"
    return f"{sum((ch.get(k) or {}).get('missing', 0) for k in ('flood_fids', 'probe_fids')):,}"
