"""What a reader blocked on a released file waits for: pure, no I/O.

A read of a released file asks for a restore and blocks until the file is
back. How long may it block? A fixed total is wrong both ways: a 40 GB file
behind a tape mount legitimately takes an hour, and a restore whose mover
died makes no progress at all. So the deadline adapts (the 2008 design's
"adaptive timeouts"): the reader waits as long as its restore moves and
gives up, with EIO, only after *stall* seconds without progress.

Progress is anything that brings the file nearer: the action changes state
(WAITING -> STARTED), starts a new attempt (a requeue after a dead agent is
the coordinator working on it), moves bytes (``bytes_done`` grows), or
moves up its queue (``queue_position`` falls). A queue position that grows
(someone of higher priority came in) is not progress.

:class:`Wait` is one file's restore as the readers of one mount see it:
observations in (each with the time it was made), a verdict out. The shell
(:mod:`hsmfs.restorer`) feeds it from the coordinator's watch stream.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

#: a blocked reader gives up after this long without progress (s), unless
#: ``--stall-timeout`` says otherwise
DEFAULT_STALL = 300.0

#: the action states, as in hsm.v1 ActionState
WAITING, STARTED, CANCELING, SUCCEEDED, FAILED, CANCELED = 1, 2, 3, 4, 5, 6
ENDED = frozenset({FAILED, CANCELED, SUCCEEDED})


@dataclass(frozen=True, slots=True)
class Facts:
    """What the coordinator said of the restore at one moment."""

    state: int
    attempt: int = 0
    bytes_done: int = 0
    queue_position: int = 0  # 0: not queued (or unknown)
    errno: int = 0
    reason: str = ""


def progressed(before: Facts, after: Facts) -> bool:
    """Whether *after* brings the file nearer than *before* (see the module)."""
    if after.state != before.state or after.attempt != before.attempt:
        return True
    if after.bytes_done > before.bytes_done:
        return True
    return 0 < after.queue_position < before.queue_position or (
        before.queue_position > 0 and after.queue_position == 0)


class Wait:
    """One file's restore, from the request to a verdict.

    ``verdict`` is None while readers should keep waiting, then 0 (the file
    is back: read it) or a positive errno (EIO: the restore failed, was
    canceled, made no progress for *stall* seconds, or the mount is going
    away). A verdict is final."""

    __slots__ = ("stall", "since", "last", "verdict", "why", "action_id")

    def __init__(self, now: float, stall: float = DEFAULT_STALL) -> None:
        if not stall > 0:
            raise ValueError(f"stall timeout must be > 0 seconds, not {stall!r}")
        self.stall = float(stall)
        self.since = now  # the last progress (or the request)
        self.last: Facts | None = None
        self.verdict: int | None = None
        self.why = ""
        self.action_id = 0

    def observe(self, now: float, facts: Facts) -> int | None:
        """The coordinator said *facts* at *now*; returns the verdict."""
        if self.verdict is not None:
            return self.verdict
        if facts.state == SUCCEEDED:  # the file is back, late or not
            self.last = facts
            return self._end(0, "restored")
        if self.tick(now) is not None:  # news that comes after the deadline comes too late
            return self.verdict
        if self.last is not None and progressed(self.last, facts):
            self.since = max(self.since, now)
        self.last = facts
        if facts.state in (FAILED, CANCELED):
            what = "failed" if facts.state == FAILED else "was canceled"
            detail = f": {facts.reason}" if facts.reason else (
                f": {errno.errorcode.get(facts.errno, facts.errno)}" if facts.errno else "")
            return self._end(errno.EIO, f"the restore {what}{detail}")
        return None

    def tick(self, now: float) -> int | None:
        """Time passed with nothing heard; returns the verdict."""
        if self.verdict is None and now - self.since >= self.stall:
            where = "" if self.last is None else f" (last seen {_state_name(self.last.state)}" + (
                f", {self.last.bytes_done} bytes)" if self.last.bytes_done else ")")
            self._end(errno.EIO, f"no progress for {self.stall:g} s{where}")
        return self.verdict

    def remaining(self, now: float) -> float:
        """Seconds until :meth:`tick` gives up, if nothing moves."""
        return max(0.0, self.since + self.stall - now)

    def not_needed(self) -> int:
        """The coordinator had nothing to do (the file is not released any
        more): the readers go on at once."""
        return self._end(0, "not needed")

    def fail(self, code: int, why: str) -> int:
        """Ends the wait with *code* unless it has ended already."""
        return self._end(code, why)

    def _end(self, code: int, why: str) -> int:
        if self.verdict is None:
            self.verdict, self.why = code, why
        return self.verdict


def _state_name(state: int) -> str:
    return {WAITING: "waiting", STARTED: "started", CANCELING: "canceling", FAILED: "failed",
            CANCELED: "canceled", SUCCEEDED: "succeeded"}.get(state, f"state {state}")
