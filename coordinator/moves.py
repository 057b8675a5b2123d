"""Moving a shard's Raft group from one replica to another (issue 19, item 2).

A move changes the group one member at a time and never drops below a
majority of caught-up members: the new member joins first, catches up from
the leader (a snapshot and the log), the leadership leaves the old member if
it has it, and only then is the old member removed.

The move is part of the shard's replicated state (``ShardState.move``,
changed by the ``MoveShard`` and ``MoveStep`` commands), so every member
knows where it stands, a new leader carries on where the old one was, and a
restart resumes it. This module is pure: the record (:class:`Move`), the
rules of its phases (:func:`begin`, :func:`advance`), which member must not
start elections (:func:`quiet`), and the driver's decision (:func:`decide`:
facts in, one step out). The node carries the steps out (opening the group on
the new replica, pysyncobj's membership changes, the leadership hand-over).

Phases::

    JOINING    the target opens the group (quiet: it starts no election), is
               added to the Raft group and catches up
    CAUGHT_UP  the target is a full member; the leadership leaves the source
    LEAVING    the source is quiet, then removed from the Raft group
    (done)     the group is recorded without the source, with the target
    ABORTING   (from JOINING or CAUGHT_UP, asked by an admin) the target is
               removed again; then the move is forgotten, the group unchanged
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: a target this many entries or fewer behind the leader's log has caught up
CAUGHT_UP_ENTRIES = 64


class Phase(enum.IntEnum):
    JOINING = 1
    CAUGHT_UP = 2
    LEAVING = 3
    DONE = 4
    ABORTING = 5
    ABORTED = 6


#: the phases a move may go to from each phase (MoveStep)
NEXT: dict[Phase, tuple[Phase, ...]] = {
    Phase.JOINING: (Phase.CAUGHT_UP, Phase.ABORTING),
    Phase.CAUGHT_UP: (Phase.LEAVING, Phase.ABORTING),
    Phase.LEAVING: (Phase.DONE,),
    Phase.ABORTING: (Phase.ABORTED,),
}


@dataclass(frozen=True, slots=True)
class Move:
    """A shard's move of its group member *source* to replica *target*."""

    source: str
    target: str
    phase: Phase
    #: when it began, and when it entered its phase (the leader's clock)
    since: float
    at: float
    #: the group before the move, its preferred leader first
    before: tuple[str, ...]

    def after(self) -> tuple[str, ...]:
        """The group once the move is done: the target in the source's place."""
        return tuple(self.target if m == self.source else m for m in self.before)

    def raft_members(self) -> tuple[str, ...]:
        """Who may be a member of the Raft group while the move runs (both,
        between the target's joining and the source's removal)."""
        return self.before + (self.target,)

    def text(self) -> str:
        return f"moving {self.source} -> {self.target} ({self.phase.name.lower().replace('_', ' ')})"


def begin(group: tuple[str, ...], source: str, target: str, now: float, move: Move | None) -> Move | str:
    """The move of *source* to *target* in *group*, or why not. The same
    move asked again while it runs is that move (a retried request)."""
    if move is not None:
        if (move.source, move.target) == (source, target) and move.phase not in (Phase.ABORTING, Phase.ABORTED):
            return move
        return f"another move runs on this shard: {move.text()}"
    if not source or not target:
        return "a move needs a source and a target replica"
    if source not in group:
        return f"{source} is not a member of the shard's group ({', '.join(group)})"
    if target in group:
        return f"{target} is a member of the shard's group already ({', '.join(group)})"
    return Move(source, target, Phase.JOINING, now, now, group)


def advance(move: Move | None, source: str, target: str, phase: Phase, now: float) -> Move | None | str:
    """*move* in *phase* (None: done or aborted, forgotten), or why not: a
    step of another move, or one the phase does not allow, changes nothing.
    A step to the phase the move is in already is that move (a retry)."""
    if move is None or (move.source, move.target) != (source, target):
        return "no such move on this shard"
    if phase == move.phase:
        return move
    if phase not in NEXT.get(move.phase, ()):
        return f"a move {move.phase.name.lower()} cannot go to {phase.name.lower()}"
    if phase in (Phase.DONE, Phase.ABORTED):
        return None
    return Move(move.source, move.target, phase, move.since, now, move.before)


def quiet(move: Move | None, me: str) -> bool:
    """Whether replica *me* must start no election for the shard: a target
    that has not caught up (it could not win, and its higher term would
    unseat the leader), a source being removed (it is about to stop
    receiving the log, and would disrupt the group it left)."""
    if move is None:
        return False
    if me == move.target:
        return move.phase in (Phase.JOINING, Phase.ABORTING)
    if me == move.source:
        return move.phase == Phase.LEAVING
    return False


class Do(enum.Enum):
    JOIN = "ask the target to open the group"
    ADD = "add the target to the Raft group"
    WAIT = "wait for the target to catch up"
    CAUGHT_UP = "record the target caught up"
    HAND_OVER = "hand the leadership over"
    LEAVING = "record the source leaving"
    REMOVE_SOURCE = "remove the source from the Raft group"
    DONE = "record the move done"
    REMOVE_TARGET = "remove the target from the Raft group"
    ABORTED = "record the move aborted"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the shard's leader sees when it drives a move."""

    #: this replica: the leader
    me: str
    #: the members of the Raft group now (the leader's view, itself included)
    members: frozenset[str]
    #: the target said it opened the group (JoinShard answered)
    target_open: bool
    #: entries of the leader's log the target has not acknowledged (None: not connected)
    behind: int | None


def decide(move: Move, facts: Facts, caught_up: int = CAUGHT_UP_ENTRIES) -> Do:
    """The next step of *move* on its shard's leader. Every step is safe to
    repeat: a leader that takes over redoes the one its predecessor may not
    have finished."""
    in_group = move.target in facts.members
    if move.phase == Phase.JOINING:
        if not in_group:
            return Do.ADD if facts.target_open else Do.JOIN
        if facts.behind is None:
            return Do.JOIN  # not connected: it may have restarted, or closed its member; asked again
        if facts.behind > caught_up:
            return Do.WAIT if facts.target_open else Do.JOIN
        return Do.CAUGHT_UP
    if move.phase == Phase.CAUGHT_UP:
        return Do.HAND_OVER if facts.me == move.source else Do.LEAVING
    if move.phase == Phase.LEAVING:
        if facts.me == move.source:
            return Do.HAND_OVER
        return Do.REMOVE_SOURCE if move.source in facts.members else Do.DONE
    if move.phase == Phase.ABORTING:
        if facts.me == move.target:
            return Do.HAND_OVER
        return Do.REMOVE_TARGET if in_group else Do.ABORTED
    raise ValueError(f"a move {move.phase.name.lower()} has no next step")

