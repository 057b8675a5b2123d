"""Splitting shards: the FID ranges an old shard hands to new ones (issue 19,
item 3; the protocol is docs/resharding.md).

Growing the ring from S to S+n shards moves about n/(S+n) of the FIDs, each
from its old shard to one of the new ones (``hsm.ring``). The shard state
machine carries a split out in four replicated commands, each applied in
the log of the shard it concerns (``coordinator.state``):

``Freeze``      on an old shard: the FIDs that move (:class:`Ranges`) take
                no new request (refused, "retry"), none of their waiting
                actions starts, a cancel of one is refused ("retry"); their
                running actions run to their end (the drain).
``Import``      on a new shard: one chunk of the moving FIDs of one old
                shard, each FID whole (its live actions in arrival order, its
                ended ones kept for listings, the idempotency keys that name
                them, its catalog copies, its remembered ends). A FID already
                imported is skipped, so a chunk sent twice, or a whole export
                sent again after the old shard's leader changed, changes
                nothing twice. The new shard serves none of it yet.
``Activate``    on every shard of the split, once every old shard's last
                chunk is in on every new shard: the new shards start serving
                what they imported; the old shards forget the moved FIDs,
                keep where each moved action went (a tombstone) and refuse
                requests for moved FIDs with the shard that owns them now.
``AbortSplit``  before Activate: the old shards serve their FIDs again,
                the new shards forget what they imported.

The whole split is driven from shard 0's leader, and recorded in shard 0's
log (:class:`Reshard`, changed by the ``ReshardBegin`` and ``ReshardStep``
commands), so that a new leader carries on where the old one was and a
restart resumes it. Phases::

    OPENING     the new shards' Raft groups are opened on their replicas
    MOVING      every shard of the split is frozen; each old shard drains,
                then its leader exports its moving files to the new shards
    ACTIVATING  every new shard has every chunk: the old shards activate
                (they forget what they handed over and keep a tombstone of
                each moved action), then the new ones (they serve it)
    DONE        the cluster's ring is the new one; replicas route by it
    ABORTING    (from OPENING or MOVING, asked by an admin) every shard
                serves as before, the new shards' groups are closed
    ABORTED

This module is pure: which keys move where (:class:`Ranges`), what an old
shard records while it hands them over (:class:`Outgoing`), how its export
is cut into chunks (:func:`chunks`), the record of the split in shard 0 and
its rules (:class:`Reshard`, :func:`begin`, :func:`advance`), and the
driver's decision (:func:`decide`: the facts of every shard in, one step
out). The node carries the steps out (coordinator.node ``_reshard``).
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hsm.fid import Fid
from hsm.ring import MAX_SHARDS, KeyRange, Ring, fid_key

#: actions in one Import chunk at most (one Raft entry; a FID is never cut,
#: so a FID with more live actions than this makes a chunk of its own)
CHUNK_ACTIONS = 1000


@dataclass(frozen=True)
class Ranges:
    """The key ranges one old shard hands over, sorted, with their new
    owners: ``firsts[i]..lasts[i]`` goes to ``targets[i]``."""

    firsts: tuple[int, ...]
    lasts: tuple[int, ...]
    targets: tuple[int, ...]

    def target(self, fid: Fid) -> int | None:
        """The new shard of *fid*, or None when it stays."""
        key = fid_key(fid)
        i = bisect_right(self.firsts, key) - 1
        if i >= 0 and key <= self.lasts[i]:
            return self.targets[i]
        return None

    def __len__(self) -> int:
        return len(self.firsts)


@lru_cache(maxsize=4)
def moved(shards: int, added: int, vnodes: int, version: int) -> tuple[KeyRange, ...]:
    """Every key range that changes owner when a ring of *shards* shards
    (*vnodes* each, version ``version - 1``) grows by *added* to version
    *version*: a pure function of these numbers, the same on every replica."""
    old = Ring(shards, vnodes, version - 1)
    return old.moved_ranges(old.with_shard_added(added))


@lru_cache(maxsize=64)
def ranges_of(shard: int, shards: int, added: int, vnodes: int, version: int) -> Ranges:
    """What old shard *shard* hands over in that split (:func:`moved`)."""
    mine = [r for r in moved(shards, added, vnodes, version) if r.old_shard == shard]
    return Ranges(tuple(r.first for r in mine), tuple(r.last for r in mine), tuple(r.new_shard for r in mine))


def sources_of(shard: int, shards: int, added: int, vnodes: int, version: int) -> tuple[int, ...]:
    """The old shards that hand new shard *shard* some FIDs in that split."""
    return tuple(sorted({r.old_shard for r in moved(shards, added, vnodes, version) if r.new_shard == shard}))


@dataclass(frozen=True)
class Outgoing:
    """What an old shard records of a split it takes part in: the ring
    before (*shards*, *vnodes*) and the shards *added*, as version
    *version*; *active* once the new shards serve (the moved FIDs are
    someone else's: requests for them are refused with their owner)."""

    version: int
    shards: int
    added: int
    vnodes: int
    shard: int
    active: bool = False

    @property
    def ranges(self) -> Ranges:
        return ranges_of(self.shard, self.shards, self.added, self.vnodes, self.version)

    def target(self, fid: Fid) -> int | None:
        return self.ranges.target(fid)

    def text(self) -> str:
        state = "handed over" if self.active else "frozen"
        return (f"split to ring version {self.version} ({self.shards} -> {self.shards + self.added} shards): "
                f"{len(self.ranges)} key range(s) {state}")


#: one FID's whole state as an Import carries it: (fsname, fid, live actions
#: in arrival order, ended actions kept, idempotency keys (key, packed
#: answer) naming them, catalog copies, remembered ends ((kind, archive id),
#: (ctime, action id, ended at)))
Bundle = tuple[str, Fid, tuple[Any, ...], tuple[Any, ...], tuple[tuple[str, int], ...], tuple[Any, ...],
               tuple[tuple[tuple[int, int], tuple[int, int, float]], ...]]


def bundle_size(bundle: Bundle) -> int:
    return len(bundle[2]) + len(bundle[3])


def chunks(bundles: Iterable[Bundle], most: int = CHUNK_ACTIONS) -> Iterator[tuple[Bundle, ...]]:
    """*bundles* cut into chunks of at most *most* actions (a FID never cut;
    a FID without actions, only copies or keys, counts one)."""
    out: list[Bundle] = []
    n = 0
    for b in bundles:
        size = max(1, bundle_size(b))
        if out and n + size > most:
            yield tuple(out)
            out, n = [], 0
        out.append(b)
        n += size
    if out:
        yield tuple(out)


def fid_order(keys: Sequence[tuple[str, Fid]]) -> list[tuple[str, Fid]]:
    """File keys in a fixed order (fsname, then FID): an export is the same
    on every replica and after a leader change."""
    return sorted(keys, key=lambda k: (k[0], k[1].seq, k[1].oid, k[1].ver))


# ---------------------------------------------------------------------------
# The split as a whole: its record on shard 0, and the driver's decision


class Phase(enum.IntEnum):
    OPENING = 1
    MOVING = 2
    ACTIVATING = 3
    DONE = 4
    ABORTING = 5
    ABORTED = 6


#: the phases a split may go to from each phase (ReshardStep); no way back
#: once a shard may have activated (ACTIVATING): undoing it is a shrink
NEXT: dict[Phase, tuple[Phase, ...]] = {
    Phase.OPENING: (Phase.MOVING, Phase.ABORTING),
    Phase.MOVING: (Phase.ACTIVATING, Phase.ABORTING),
    Phase.ACTIVATING: (Phase.DONE,),
    Phase.ABORTING: (Phase.ABORTED,),
}

#: seconds an abort waits, once every shard serves again, before it is
#: recorded done: a step the previous leader of shard 0 still had in flight
#: (a Freeze) lands meanwhile and is undone too
ABORT_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Reshard:
    """A split of the ring of *shards* shards (*vnodes* each) by *added*
    shards, to ring version *version*; *groups*: the new shards' Raft
    groups (replica ids, the preferred leader first), shard ``shards``
    first."""

    version: int
    shards: int
    added: int
    vnodes: int
    groups: tuple[tuple[str, ...], ...]
    phase: Phase
    #: when it began, and when it entered its phase (the leader's clock)
    since: float
    at: float

    @property
    def total(self) -> int:
        return self.shards + self.added

    @property
    def new(self) -> range:
        return range(self.shards, self.total)

    def group(self, shard: int) -> tuple[str, ...]:
        return self.groups[shard - self.shards]

    @property
    def running(self) -> bool:
        return self.phase not in (Phase.DONE, Phase.ABORTED)

    def text(self) -> str:
        what = f"split {self.shards} -> {self.total} shards (ring version {self.version})"
        return f"{what}: {self.phase.name.lower()}"


def begin(record: Reshard | None, ring: tuple[int, int], shards: int, version: int, added: int, vnodes: int,
          groups: tuple[tuple[str, ...], ...], now: float) -> Reshard | str:
    """The split asked (of the ring *shards* shards at *version*, by
    *added*), or why not. *ring* is the cluster's ring as shard 0 knows it
    (shards, version; 0 shards: the configured count). The same split asked
    again while it runs is that split (a retried request)."""
    if record is not None and record.running:
        if (record.shards, record.added, record.version) == (shards, added, version):
            return record
        return f"a split runs: {record.text()}"
    known, current = ring
    if known and known != shards or version != current + 1:
        return (f"the cluster's ring is {known or shards} shards at version {current}, not {shards} at "
                f"{version - 1}: read the shard map again")
    if added < 1 or shards + added > MAX_SHARDS:
        return f"a split adds 1 to {MAX_SHARDS - shards} shard(s), not {added}"
    if vnodes < 1:
        return f"not a ring: {vnodes} vnodes"
    if len(groups) != added or not all(groups) or any(len(set(g)) != len(g) for g in groups):
        return f"a split of {added} shard(s) needs as many groups of distinct replicas"
    return Reshard(version, shards, added, vnodes, groups, Phase.OPENING, now, now)


def advance(record: Reshard | None, version: int, phase: Phase, now: float) -> Reshard | str:
    """*record* in *phase*, or why not. A step to the phase it is in already
    is that record (a retry)."""
    if record is None or record.version != version:
        return f"no split to ring version {version} runs"
    if phase == record.phase:
        return record
    if phase not in NEXT.get(record.phase, ()):
        return f"a split {record.phase.name.lower()} cannot go to {phase.name.lower()}"
    return Reshard(record.version, record.shards, record.added, record.vnodes, record.groups, phase,
                   record.since, now)


@dataclass(frozen=True, slots=True)
class ShardFacts:
    """What a shard's leader says of its part in splits (its applied state)."""

    #: the highest ring version it activated (0: none)
    ring_version: int = 0
    #: an old shard: the ring version it is frozen for or handed over in
    #: (0: none), whether that is active, and its frozen files still running
    out_version: int = 0
    out_active: bool = False
    busy: int = 0
    #: a new shard: the ring version filling it (0: none), and the old
    #: shards whose last chunk it has not had yet
    in_version: int = 0
    pending: tuple[int, ...] = ()


class Do(enum.Enum):
    OPEN = "open the new shard's Raft group"
    MOVING = "record the groups open"
    FREEZE = "freeze the shard"
    EXPORT = "export the shard's moving files"
    ACTIVATING = "record every chunk in"
    ACTIVATE = "activate the shard"
    DONE = "record the split done"
    ABORT = "undo the split on the shard"
    ABORTED = "close the new shards' groups and record the split aborted"
    WAIT = "wait"
    NOTHING = "nothing to do"


@dataclass(frozen=True, slots=True)
class Step:
    do: Do
    shard: int = -1
    why: str = ""


def _frozen(r: Reshard, shard: int, f: ShardFacts) -> bool:
    if f.ring_version >= r.version:
        return True
    return (f.out_version if shard < r.shards else f.in_version) == r.version


def decide(r: Reshard, facts: Mapping[int, ShardFacts | None], now: float, grace: float = ABORT_GRACE) -> Step:
    """The next step of split *r* on shard 0's leader; *facts* per shard of
    the split (None: no leader answered). Every step is safe to repeat: a
    leader that takes over redoes the one its predecessor may not have
    finished. The one rule that keeps a FID from having two owners or none:
    no shard activates before every new shard has every chunk (ACTIVATING
    is recorded only then, and only from ACTIVATING is a shard activated),
    the old shards before the new ones (a FID has no owner for a moment:
    its submits are refused, "retry", and nothing starts it)."""
    v = r.version
    if r.phase == Phase.OPENING:
        for k in r.new:
            if facts.get(k) is None:
                return Step(Do.OPEN, k)
        return Step(Do.MOVING)
    if r.phase == Phase.MOVING:
        for s in range(r.total):
            f = facts.get(s)
            if f is None:
                return Step(Do.OPEN, s) if s >= r.shards else Step(Do.WAIT, s, f"shard {s} has no leader")
            if not _frozen(r, s, f):
                if s < r.shards and f.out_version and not f.out_active:
                    return Step(Do.WAIT, s, f"shard {s} is frozen for ring version {f.out_version}")
                return Step(Do.FREEZE, s)
        waiting: list[str] = []
        for j in range(r.shards):
            if not any(j in facts[k].pending for k in r.new):  # type: ignore[union-attr]
                continue
            busy = facts[j].busy  # type: ignore[union-attr]
            if not busy:
                return Step(Do.EXPORT, j)
            waiting.append(f"shard {j}: {busy} moving file(s) running")
        if waiting:
            return Step(Do.WAIT, -1, "draining: " + "; ".join(waiting))
        return Step(Do.ACTIVATING)
    if r.phase == Phase.ACTIVATING:
        # the old shards first: once a new shard serves, it starts the actions it imported, and their
        # agents' reports, routed by the ids' old shards, must find the old shard's tombstones there
        for s in (*range(r.shards), *r.new):
            f = facts.get(s)
            if f is None:
                return Step(Do.WAIT, s, f"shard {s} has no leader")
            if f.ring_version < v:
                return Step(Do.ACTIVATE, s)
        return Step(Do.DONE)
    if r.phase == Phase.ABORTING:
        for j in range(r.shards):
            f = facts.get(j)
            if f is None:
                return Step(Do.WAIT, j, f"shard {j} has no leader")
            if f.out_version == v and not f.out_active:
                return Step(Do.ABORT, j)
        for k in r.new:
            f = facts.get(k)
            if f is not None and f.in_version == v:
                return Step(Do.ABORT, k)
        if now - r.at < grace:
            return Step(Do.WAIT, -1, "every shard serves as before; the abort settles")
        return Step(Do.ABORTED)
    return Step(Do.NOTHING)
