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

This module is pure: which keys move where (:class:`Ranges`), what an old
shard records while it hands them over (:class:`Outgoing`) and how its
export is cut into chunks (:func:`chunks`). Building the Raft groups of the
new shards and driving the steps is the node's (not built yet: see
docs/resharding.md, "What is left undone").
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hsm.fid import Fid
from hsm.ring import KeyRange, Ring, fid_key

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
