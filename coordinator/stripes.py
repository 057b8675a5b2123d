"""Striped transfers (issue 18, item 5): one large archive split by extent
into parts that run on several agents at once. Pure: no I/O, time passed
in; events in, instructions out, as in ``coordinator/state.py``, which
keeps one :class:`Stripe` per striped action (``ShardState.stripes``);
the node turns its instructions into assignments (docs/striping.md).

The phases of one striped archive:

* **anchor**: the archive is dispatched as usual. Its agent begins it at
  the file system, finds the file at least ``striping.above`` bytes long,
  and lets go of it without copying, reporting the data version and size it
  saw (``Done.anchored``): the stripe is planned from them.
* **parts**: each part copies its extent of the file into the one shared
  temporary object (``pwrite`` at its offset), on any agent, an agent that
  holds fewer parts of this stripe first. A part reads the file by FID,
  without beginning an action at the file system. A part that fails runs
  again alone, up to ``max_attempts``; a part that is done never runs
  again. A part is told apart from its action on the wire by its attempt
  number (:func:`wire_attempt`), so the agents' bookkeeping (credits,
  leases, reconcile, acknowledgements) needs nothing new.
* **seal**: once every part is done, the action is dispatched again, as a
  seal: its agent begins the action at the file system, checks that the
  data version is still the anchor's (else the file changed: EBUSY, and
  the archive starts over), checks and checksums the object, renames it
  into place and ends the action.

A stripe ends DONE when the seal succeeds; FAILED when a part uses its last
attempt or the seal fails (the archive then starts again from the anchor,
as a new attempt of its action); CANCELED when cancelled. Whenever it
ends, the parts still running are told to stop.
"""

from __future__ import annotations

import enum
import errno as E
from collections.abc import Mapping
from dataclasses import dataclass

#: parts are cut at multiples of this (the last part takes the rest)
ALIGN = 1 << 20
#: at most this many parts per file
MAX_PARTS = 64
#: a part's attempt on the wire (Assignment.attempt, Progress, Done,
#: RunningAction, CancelOrder): this bit, the part's index << 16 and the
#: part's own attempt; an action's attempts never come near it
PART_BIT = 1 << 31


def wire_attempt(index: int, attempt: int) -> int:
    """The attempt number part *index*'s attempt *attempt* goes by on the wire."""
    if not 0 <= index < MAX_PARTS or not 0 < attempt < 1 << 16:
        raise ValueError(f"part {index} attempt {attempt} out of range")
    return PART_BIT | index << 16 | attempt


def part_of(wire: int) -> tuple[int, int] | None:
    """(part index, attempt) of a wire attempt number, or None for an action's own attempt."""
    if not wire & PART_BIT:
        return None
    return (wire >> 16) & 0x7FFF, wire & 0xFFFF


class Phase(enum.IntEnum):
    ANCHOR = 0  # waiting for the anchor to begin the action
    PARTS = 1  # parts running
    SEAL = 2  # every part done; the anchor seals
    DONE = 3
    FAILED = 4
    CANCELED = 5


ENDED = (Phase.DONE, Phase.FAILED, Phase.CANCELED)


class PartState(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    DONE = 2


def plan_parts(size: int, part_size: int, max_parts: int = MAX_PARTS, align: int = ALIGN) -> list[tuple[int, int]]:
    """The extents (offset, length) a file of *size* bytes is cut into: as
    many as *part_size* asks for (at least one, at most *max_parts*), all of
    one length, a multiple of *align*, but the last (shorter), together
    exactly [0, size), in order (one length: the object's checksum is built
    from the parts' digests, posix.PartsHasher). ValueError for a negative
    size or a part size below *align*."""
    if size < 0:
        raise ValueError(f"a file size is >= 0, not {size}")
    if part_size < align or max_parts < 1 or align < 1:
        raise ValueError(f"part size {part_size} must be at least {align}, and max parts at least 1")
    units = -(-size // align)  # the aligned units the file spans
    n = max(1, min(max_parts, -(-size // part_size), units))
    length = max(1, -(-units // n)) * align
    return [(o, min(length, size - o)) for o in range(0, size, length)] or [(0, 0)]


@dataclass(frozen=True, slots=True)
class RunPart:
    """Run part *index* (its extent) on *agent*, as attempt *attempt* of it."""

    index: int
    agent: str
    attempt: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StopPart:
    """Tell *agent* to stop attempt *attempt* of part *index*."""

    index: int
    agent: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Seal:
    """Every part is done: the action is to be sealed (*agent*: the anchor,
    which began it first; any agent may seal)."""

    agent: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The stripe ended (DONE, FAILED or CANCELED), with an errno and why."""

    phase: Phase
    errno: int = 0
    reason: str = ""


Instruction = RunPart | StopPart | Seal | Ended


@dataclass(slots=True)
class Part:
    offset: int
    length: int
    state: PartState = PartState.WAITING
    agent: str = ""
    attempt: int = 0  # of the run now or last
    failures: int = 0
    checksum: str = ""
    started: float = 0.0  # when its running attempt was assigned (leader clock)
    last: float = 0.0  # its running attempt's start or last progress (leader clock)


@dataclass(slots=True)
class Stripe:
    """One striped archive: its parts and where each runs."""

    size: int
    parts: list[Part]
    max_attempts: int = 3
    phase: Phase = Phase.ANCHOR
    anchor: str = ""
    data_version: int = 0
    errno: int = 0
    reason: str = ""

    @classmethod
    def plan(cls, size: int, part_size: int, max_parts: int = MAX_PARTS, max_attempts: int = 3,
             align: int = ALIGN) -> Stripe:
        return cls(size, [Part(o, n) for o, n in plan_parts(size, part_size, max_parts, align)], max_attempts)

    # -- events -------------------------------------------------------------------------------------

    def anchored(self, agent: str, data_version: int, now: float) -> list[Instruction]:
        """The anchor began the action on *agent*: the parts may run."""
        if self.phase != Phase.ANCHOR or not agent:
            return []
        self.phase, self.anchor, self.data_version = Phase.PARTS, agent, data_version
        return self._maybe_seal()

    def assign(self, free: Mapping[str, int], now: float) -> list[Instruction]:
        """:meth:`choose`, and start what it chose."""
        runs = self.choose(free)
        for r in runs:
            self.start(r.index, r.agent, r.attempt, now)
        return list(runs)

    def choose(self, free: Mapping[str, int]) -> list[RunPart]:
        """Which waiting parts to start on the agents with a free slot
        (*free*: agent -> slots), in part order: on each agent at most one
        part of this stripe at a time (an agent keeps one run per action:
        agentd), the agents with the most free slots first, then by name.
        So the parts spread over every agent, and an agent that is busy now
        takes the next part when it frees a slot. Changes nothing
        (:meth:`start` does, on every replica)."""
        if self.phase != Phase.PARTS:
            return []
        busy = {p.agent for p in self.parts if p.state == PartState.RUNNING}
        agents = sorted((a for a, n in free.items() if n > 0 and a not in busy), key=lambda a: (-free[a], a))
        out: list[RunPart] = []
        for i, p in enumerate(self.parts):
            if not agents:
                break
            if p.state == PartState.WAITING:
                out.append(RunPart(i, agents.pop(0), p.attempt + 1, p.offset, p.length))
        return out

    def start(self, index: int, agent: str, attempt: int, now: float = 0.0) -> bool:
        """Part *index* runs on *agent* as attempt *attempt* (its next one);
        False, changing nothing, when that no longer fits (not waiting, not
        its next attempt, not in the parts phase)."""
        if self.phase != Phase.PARTS or not agent or not 0 <= index < len(self.parts):
            return False
        p = self.parts[index]
        if p.state != PartState.WAITING or attempt != p.attempt + 1 or any(
                q.state == PartState.RUNNING and q.agent == agent for q in self.parts):
            return False
        p.state, p.agent, p.attempt, p.started, p.last = PartState.RUNNING, agent, attempt, now, now
        return True

    def progressed(self, index: int, attempt: int, now: float) -> bool:
        """Attempt *attempt* of part *index* reported progress (False: not
        the running attempt, ignored)."""
        p = self._running(index, attempt)
        if p is None:
            return False
        p.last = max(p.last, now)
        return True

    def part_done(self, index: int, attempt: int, checksum: str, now: float) -> list[Instruction]:
        """Attempt *attempt* of part *index* copied its extent."""
        p = self._running(index, attempt)
        if p is None:
            return []
        p.state, p.agent, p.checksum = PartState.DONE, "", checksum
        return self._maybe_seal()

    def part_failed(self, index: int, attempt: int, errno: int, reason: str, now: float,
                    counted: bool = True) -> list[Instruction]:
        """Attempt *attempt* of part *index* failed: it waits to run again,
        alone, or the stripe fails once the part has used its attempts
        (*counted* False: the agent gave it back, stopping; no attempt used)."""
        p = self._running(index, attempt)
        if p is None:
            return []
        p.state, p.agent = PartState.WAITING, ""
        if not counted:
            return []
        p.failures += 1
        if p.failures >= self.max_attempts:
            return self._end(Phase.FAILED, errno, f"part {index} (bytes {p.offset} to {p.offset + p.length}) "
                                                  f"failed {p.failures} times, the last: {reason}")
        return []

    def agent_lost(self, agent: str, now: float) -> list[Instruction]:
        """*agent* is gone (its grace period ended): its parts wait to run
        again (an attempt used, as a requeue does). The anchor holds nothing
        once it let go of the action: its loss changes nothing here."""
        if self.phase in ENDED:
            return []
        out: list[Instruction] = []
        for i, p in enumerate(self.parts):
            if p.state == PartState.RUNNING and p.agent == agent:
                out += self.part_failed(i, p.attempt, 0, f"agent {agent} lost", now)
                if self.phase in ENDED:
                    break
        return out

    def anchor_failed(self, errno: int, reason: str, now: float) -> list[Instruction]:
        """The seal failed (or the action could not be begun again)."""
        if self.phase not in (Phase.ANCHOR, Phase.PARTS, Phase.SEAL):
            return []
        return self._end(Phase.FAILED, errno, reason)

    def sealed(self, now: float) -> list[Instruction]:
        """The anchor checked the object and ended the action."""
        if self.phase != Phase.SEAL:
            return []
        return self._end(Phase.DONE, 0, "")

    def cancel(self, now: float) -> list[Instruction]:
        if self.phase in ENDED:
            return []
        return self._end(Phase.CANCELED, E.ECANCELED, "canceled")

    # -- queries ------------------------------------------------------------------------------------

    def running(self) -> list[tuple[int, str, int]]:
        """(part, agent, attempt) of every running part."""
        return [(i, p.agent, p.attempt) for i, p in enumerate(self.parts) if p.state == PartState.RUNNING]

    def done_bytes(self) -> int:
        return sum(p.length for p in self.parts if p.state == PartState.DONE)

    def check(self) -> None:
        """AssertionError unless the stripe is consistent."""
        offset = 0
        for p in self.parts:
            assert p.offset == offset and p.length >= 0, "the parts cover the file in order, without gaps"
            offset += p.length
            assert (p.state == PartState.RUNNING) == bool(p.agent), "a part runs on exactly one agent"
            assert p.failures < self.max_attempts or self.phase in ENDED
            assert p.state != PartState.RUNNING or self.phase == Phase.PARTS, "parts run in the parts phase only"
        assert offset == self.size, "the parts cover exactly the file"
        assert (self.phase == Phase.ANCHOR) == (not self.anchor) or self.phase in ENDED
        if self.phase in (Phase.SEAL, Phase.DONE):
            assert all(p.state == PartState.DONE for p in self.parts), "sealed with every part done"

    # -- internals ----------------------------------------------------------------------------------

    def _running(self, index: int, attempt: int) -> Part | None:
        """The part if *attempt* is the one running now (else a late or
        duplicate report: ignored)."""
        if self.phase != Phase.PARTS or not 0 <= index < len(self.parts):
            return None
        p = self.parts[index]
        return p if p.state == PartState.RUNNING and p.attempt == attempt else None

    def _maybe_seal(self) -> list[Instruction]:
        if self.phase == Phase.PARTS and all(p.state == PartState.DONE for p in self.parts):
            self.phase = Phase.SEAL
            return [Seal(self.anchor)]
        return []

    def _end(self, phase: Phase, errno: int, reason: str) -> list[Instruction]:
        out: list[Instruction] = [StopPart(i, a, n) for i, a, n in self.running()]
        for p in self.parts:
            if p.state == PartState.RUNNING:
                p.state, p.agent = PartState.WAITING, ""
        self.phase, self.errno, self.reason = phase, errno, reason
        out.append(Ended(phase, errno, reason))
        return out

