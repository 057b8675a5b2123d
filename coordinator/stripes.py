"""Striped transfers (issue 18, item 5): one large archive split by extent
into parts that run on several agents at once. Pure: no I/O, time passed
in; events in, instructions out, as in ``coordinator/state.py``. The shard
state is to keep one :class:`Stripe` per striped action and the node to
turn its instructions into assignments; neither does yet (see the issue's
closing notes): this module is the protocol they will follow.

The phases of one striped archive:

* **anchor**: one agent begins the file system's action (Lustre's
  ``llapi_hsm_action_begin``, simfs's ``archive_begin``). That agent's
  process holds the action's handle until the end: it alone can end the
  action, so it is also the one that seals. Its start names the data
  version every part reads.
* **parts**: each part copies its extent of the file into the one shared
  temporary object (``pwrite`` at its offset), on any agent, an agent that
  holds fewer parts of this stripe first. A part that fails runs again
  alone, up to ``max_attempts``; a part that is done never runs again.
* **seal**: once every part is done, the anchor checks the object (its
  size, the parts' checksums) and ends the action (the object renamed into
  place, the action ended with the data version it began with).

A stripe ends DONE when the seal succeeds; FAILED when a part uses its
last attempt, the anchor or the seal fails, or the anchor's agent is lost
(no other process can end the action it began: the whole archive starts
again as a new attempt of its action); CANCELED when cancelled. Whenever it
ends, the parts still running are told to stop.
"""

from __future__ import annotations

import enum
import errno as E
from collections.abc import Mapping
from dataclasses import dataclass, field

#: parts are cut at multiples of this (the last part takes the rest)
ALIGN = 1 << 20
#: at most this many parts per file
MAX_PARTS = 64


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
    """The extents (offset, length) a file of *size* bytes is cut into:
    as many as *part_size* asks for (at least one, at most *max_parts*),
    each a multiple of *align* but the last, together exactly [0, size),
    in order. ValueError for a negative size or a part size below *align*."""
    if size < 0:
        raise ValueError(f"a file size is >= 0, not {size}")
    if part_size < align or max_parts < 1 or align < 1:
        raise ValueError(f"part size {part_size} must be at least {align}, and max parts at least 1")
    units = -(-size // align)  # the aligned units the file spans
    n = max(1, min(max_parts, -(-size // part_size), units))
    per, extra = divmod(units, n)
    out: list[tuple[int, int]] = []
    offset = 0
    for i in range(n):
        length = min((per + (1 if i < extra else 0)) * align, size - offset)
        out.append((offset, length))
        offset += length
    return out


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
    """Every part is done: *agent* (the anchor) checks the object and ends the action."""

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
    log: list[tuple[float, str]] = field(default_factory=list)

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
        self.log.append((now, f"anchored on {agent}, data version {data_version}"))
        return self._maybe_seal()

    def assign(self, free: Mapping[str, int], now: float, agents: int = 0) -> list[Instruction]:
        """Start waiting parts on the agents with free slots (*free*: agent ->
        slots), one part per slot, each to the agent that holds the fewest
        parts of this stripe (then the most free slots, then by name), and
        no agent more than its share: the parts over *agents* (the agents
        that serve the archive id, busy or not; at least those named here),
        rounded up. So the parts spread over every agent, and an agent that
        is busy now gets its share when it frees a slot."""
        if self.phase != Phase.PARTS:
            return []
        slots = {a: n for a, n in free.items() if n > 0}
        held: dict[str, int] = {}
        for p in self.parts:
            if p.state == PartState.RUNNING:
                held[p.agent] = held.get(p.agent, 0) + 1
        pool = max(agents, len(set(slots) | set(held)), 1)
        share = -(-sum(1 for p in self.parts if p.state != PartState.DONE) // pool)
        slots = {a: min(n, share - held.get(a, 0)) for a, n in slots.items() if share - held.get(a, 0) > 0}
        out: list[Instruction] = []
        for i, p in enumerate(self.parts):
            if p.state != PartState.WAITING or not slots:
                continue
            agent = min(slots, key=lambda a: (held.get(a, 0), -slots[a], a))
            p.state, p.agent, p.attempt = PartState.RUNNING, agent, p.attempt + 1
            held[agent] = held.get(agent, 0) + 1
            slots[agent] -= 1
            if not slots[agent]:
                del slots[agent]
            out.append(RunPart(i, agent, p.attempt, p.offset, p.length))
        if out:
            self.log.append((now, f"{len(out)} part(s) started"))
        return out

    def part_done(self, index: int, attempt: int, checksum: str, now: float) -> list[Instruction]:
        """Attempt *attempt* of part *index* copied its extent."""
        p = self._running(index, attempt)
        if p is None:
            return []
        p.state, p.agent, p.checksum = PartState.DONE, "", checksum
        return self._maybe_seal()

    def part_failed(self, index: int, attempt: int, errno: int, reason: str, now: float) -> list[Instruction]:
        """Attempt *attempt* of part *index* failed: it waits to run again,
        alone, or the stripe fails once the part has used its attempts."""
        p = self._running(index, attempt)
        if p is None:
            return []
        p.state, p.agent = PartState.WAITING, ""
        p.failures += 1
        self.log.append((now, f"part {index} attempt {attempt} failed: {reason}"))
        if p.failures >= self.max_attempts:
            return self._end(Phase.FAILED, errno, f"part {index} (bytes {p.offset} to {p.offset + p.length}) "
                                                  f"failed {p.failures} times, the last: {reason}")
        return []

    def agent_lost(self, agent: str, now: float) -> list[Instruction]:
        """*agent* is gone (its grace period ended): its parts wait to run
        again (an attempt used, as a requeue does); the anchor's loss ends
        the stripe, since only its process could end the action it began."""
        if self.phase in ENDED:
            return []
        if agent == self.anchor:
            return self._end(Phase.FAILED, 0, f"the anchor agent {agent} was lost: the archive starts again")
        out: list[Instruction] = []
        for i, p in enumerate(self.parts):
            if p.state == PartState.RUNNING and p.agent == agent:
                out += self.part_failed(i, p.attempt, 0, f"agent {agent} lost", now)
                if self.phase in ENDED:
                    break
        return out

    def anchor_failed(self, errno: int, reason: str, now: float) -> list[Instruction]:
        """The anchor could not begin the action, or the seal failed."""
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

