"""The movers' own record: every run of an action on an agent, read from
the agent's log (``action N/M <kind> <fid> started`` / ``succeeded`` /
``ended with errno E (why)``, timestamped to the millisecond), and the
log lines worth showing beside them.

Why from the logs: the coordinators' view of an action (its agent and
attempt) is exactly what a defect can get wrong; what an agent says it
started and ended is the independent witness the "never run on two agents
at once" rule needs. First written for tests/test_partition_netns.py and
shared with the nemesis (tests/nemesis/checker.py).

What a log can hide, and how it is read:

* an agent whose earlier attempt is given the action again keeps copying
  and says ``attempt 1 of it is still running here; it continues as
  attempt 2``: the run of attempt 1 ends there and one of attempt 2 begins
  (one copy, two numbers; the pieces touch, they do not overlap);
* an agent killed with SIGKILL logs no end: its run stays open
  (``end`` None). When the agent was started again in the same log, the
  run's ``cut`` is the new process's first line: the copy stopped before
  that, at the latest. (The nemesis knows the kill's time and closes the
  run there.)
* a second ``started`` for a run still open (same action and attempt, a
  new process) is a run of its own; the open one is kept, not replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>\w+) (?P<logger>\S+): (?P<msg>.*)$")
_RUN = re.compile(
    r"^action (?P<id>\d+)/(?P<att>\d+) (?P<kind>\S+) (?P<fid>\S+) (?P<what>started|succeeded|ended with errno "
    r"(?P<errno>\d+) \((?P<why>.*)\)(, retry)?: \d+ bytes)")
_ACTION = re.compile(r"^action (\d+)/(\d+)\b")
_RENUMBER = re.compile(
    r"^action (?P<id>\d+)/(?P<att>\d+)(?: \S+ \S+)?: attempt (?P<old>\d+) of it is still running here; "
    r"it continues as attempt (?P<new>\d+)")
#: the first line of an agentd process (agentd/daemon.py): a new process in this log
_STARTUP = re.compile(r"^agentd \S+: agent \S+ on ")


def _when(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Run:
    """One mover run: an attempt of an action on an agent."""

    agent: str
    action_id: int
    attempt: int
    start: float
    end: float | None = None  # None: still running when the logs were read
    outcome: str = "running"
    kind: str = ""  # ARCHIVE, RESTORE, REMOVE (from the run line; "" when not known)
    fid: str = ""
    #: the agent's process was replaced at this time while the run was open:
    #: it ended before, at the latest (None: not known to have ended)
    cut: float | None = None

    def until(self, now: float) -> float:
        if self.end is not None:
            return self.end
        return self.cut if self.cut is not None else now


@dataclass
class Event:
    when: float
    agent: str
    text: str


def is_run_line(text: str) -> bool:
    """Whether a log message is a run's start or end (the runs say it already)."""
    return _RUN.match(text) is not None


def read_agent_log(agent: str, path: Path, ids: set[int] | None = None) -> tuple[list[Run], list[Event]]:
    """The runs of *ids* (None: of every action) in an agent's log, oldest
    first, and the lines worth a timeline: every line about those actions,
    and the agent's warnings and errors."""
    runs: list[Run] = []
    running: dict[tuple[int, int], Run] = {}
    events: list[Event] = []
    if not path.exists():
        return [], []
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        when, msg = _when(m["ts"]), m["msg"]
        if _STARTUP.match(msg):
            for left in running.values():
                left.cut = when
            running.clear()
        about = _ACTION.match(msg)
        chatter = m["logger"] != "agentd.daemon" and m["level"] == "INFO" and (": archiving " in msg
                                                                               or ": archive done" in msg)
        wanted = about is not None and (ids is None or int(about[1]) in ids)
        if wanted and not chatter or m["level"] in ("WARNING", "ERROR"):
            events.append(Event(when, agent, msg if len(msg) < 220 else msg[:217] + "..."))
        if not wanted:
            continue
        n = _RENUMBER.match(msg)
        if n:
            old = running.pop((int(n["id"]), int(n["old"])), None)
            if old is not None:
                old.end, old.outcome = when, f"continued as attempt {n['new']}"
                new = Run(agent, old.action_id, int(n["new"]), when, kind=old.kind, fid=old.fid)
                running[(new.action_id, new.attempt)] = new
                runs.append(new)
            continue
        r = _RUN.match(msg)
        if not r:
            continue
        key = (int(r["id"]), int(r["att"]))
        if r["what"] == "started":
            run = Run(agent, key[0], key[1], when, kind=r["kind"], fid=r["fid"])
            running[key] = run
            runs.append(run)
        elif key in running:
            run = running.pop(key)
            run.end = when
            run.outcome = "succeeded" if r["what"] == "succeeded" else f"errno {r['errno']} ({r['why']})"
    return runs, events


def overlaps(runs: list[Run], now: float) -> list[str]:
    """Pairs of runs of one action (any agents, any attempts) whose
    [start, end] intervals intersect; a run still going ends at *now*."""
    bad = []
    by_action: dict[int, list[Run]] = {}
    for r in runs:
        by_action.setdefault(r.action_id, []).append(r)
    for action_id, rs in sorted(by_action.items()):
        rs.sort(key=lambda r: r.start)
        for i, r1 in enumerate(rs):
            for r2 in rs[i + 1:]:
                both = min(r1.until(now), r2.until(now)) - r2.start
                if both > 0:
                    bad.append(f"action {action_id}: attempt {r1.attempt} on {r1.agent} and attempt {r2.attempt} "
                               f"on {r2.agent} ran together for {both:.1f} s")
    return bad
