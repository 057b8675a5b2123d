"""Where each shard's Raft group lives: which replicas are its members, and
which of them should lead it (issue 19, scale-out).

A cluster has N replicas and S shards. Each shard is its own Raft group of R
members placed over the N replicas (R = N is the classic layout: every
replica holds every shard). A placement is a tuple of S member tuples, one
per shard; a shard's first member is the replica that should lead it.

Pure functions only: the configuration reads and checks a placement here,
``hsm-coordinator init --replication R`` writes the one :func:`spread`
computes (written out, so that adding replicas later does not reshuffle
the shards that exist), and the node opens Raft groups for the shards its
replica holds (``ClusterSpec.hosted``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Placement = tuple[tuple[str, ...], ...]

#: the group sizes a placement may use: an even group tolerates no more
#: failures than the odd one a member smaller, and costs one more copy
GROUP_SIZES = (1, 3, 5, 7)


def spread(replicas: Sequence[str], shards: int, r: int) -> Placement:
    """A placement of *shards* groups of *r* members over *replicas*.

    Shard i's preferred leader is replica i mod N, so leaders are spread
    round-robin (no replica prefers more than ceil(S/N)). Its other members
    are the replicas with the least load (groups joined so far, and groups
    they are to lead), the nearest after the leader in the list first, so
    that the shards held per replica differ by at most one. Deterministic: the same inputs
    always give the same placement."""
    n = len(replicas)
    if n == 0:
        raise ValueError("a placement needs at least one replica")
    if len(set(replicas)) != n:
        raise ValueError("replica ids repeat")
    if not 1 <= r <= n:
        raise ValueError(f"replication {r}: must be from 1 to the {n} replica(s)")
    # a replica's load: the groups it is in so far, and those it will lead
    held = Counter(replicas[i % n] for i in range(shards))
    out = []
    for i in range(shards):
        leader = i % n
        members = [replicas[leader]]
        others = [(held[replicas[j % n]], (j - leader) % n, replicas[j % n]) for j in range(leader + 1, leader + n)]
        for _count, _dist, rid in sorted(others)[:r - 1]:
            members.append(rid)
            held[rid] += 1
        out.append(tuple(members))
    return tuple(out)


def problems(placement: Sequence[Sequence[str]], replicas: Iterable[str], shards: int) -> list[str]:
    """What is wrong with *placement* for a cluster of *replicas* and
    *shards* (empty: nothing). Every shard has a group; every group has
    distinct, known members, an odd number of them (see
    :data:`GROUP_SIZES`); every group has the same size."""
    known = list(replicas)
    out = []
    if len(placement) != shards:
        out.append(f"the placement names {len(placement)} shard(s); the cluster has {shards}")
    sizes = set()
    for i, members in enumerate(placement):
        sizes.add(len(members))
        if len(members) not in GROUP_SIZES:
            out.append(f"shard {i}: {len(members)} member(s); a group has {', '.join(map(str, GROUP_SIZES))} "
                       "(an even group survives no more failures than one a member smaller)")
        if len(set(members)) != len(members):
            out.append(f"shard {i}: a replica is named twice ({', '.join(members)})")
        unknown = [m for m in members if m not in known]
        if unknown:
            out.append(f"shard {i}: {', '.join(unknown)} is not a replica of the cluster")
    if len(sizes) > 1:
        out.append(f"every shard's group has the same size; these have {', '.join(map(str, sorted(sizes)))}")
    return out


def hosted(placement: Placement, replica: str) -> list[int]:
    """The shards whose group *replica* is a member of."""
    return [i for i, members in enumerate(placement) if replica in members]


def load(placement: Placement, replicas: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Per replica: (shards held, shards it is the preferred leader of)."""
    out = {rid: (0, 0) for rid in replicas}
    for members in placement:
        for k, rid in enumerate(members):
            held, leads = out.get(rid, (0, 0))
            out[rid] = (held + 1, leads + (k == 0))
    return out



@dataclass(frozen=True, slots=True)
class Step:
    """One step of the rebalancer: ``move`` shard *shard*'s member *source*
    to replica *target*, or ``lead``: make its member *target* the group's
    preferred leader in place of *source*."""

    kind: str
    shard: int
    source: str
    target: str


def _lead_hop(groups: Sequence[Sequence[str]], led: dict[str, list[int]], most: str, leads: Counter[str],
              live: set[str], order: dict[str, int], at_most: int) -> Step | None:
    """The last group of the shortest chain from *most* to a replica that
    leads *at_most* shards or fewer (breadth first, replicas in order),
    each group led by one replica of the chain and having the next as a
    member: a Step that makes that group prefer the chain's end. *led*:
    each replica's groups as their preferred leader."""
    frontier = [most]
    seen = {most}
    while frontier:
        nxt: list[str] = []
        for a in frontier:
            for i in led.get(a, ()):
                for b in sorted(groups[i][1:], key=order.__getitem__):
                    if b in seen or b not in live:  # (drained: never made a leader)
                        continue
                    if leads[b] <= at_most:
                        return Step("lead", i, a, b)
                    seen.add(b)
                    nxt.append(b)
        frontier = nxt
    return None


def next_step(groups: Sequence[Sequence[str]], replicas: Sequence[str],
              drained: Iterable[str] = ()) -> Step | None:
    """The rebalancer's next step, or None when there is nothing to do.
    *groups* are the shards' groups now (preferred leader first),
    *replicas* the cluster's replicas in order, *drained* the replicas that
    are to hold nothing.

    1. A drained replica's shard goes to the live replica holding the
       fewest shards that is not in that group.
    2. While the most loaded live replica holds two or more shards more than
       the least loaded one, a shard of the former that the latter is not in
       goes to it (one the former is not the preferred leader of first).
    3. Then leaders: while a live replica is the preferred leader of two or
       more shards more than another, a leadership moves towards the
       latter: along the shortest chain of groups from the former (the
       first such replica, in order) to the nearest replica that leads two
       fewer, each group led by the previous replica and having the next
       as a member; the chain's last group prefers its end first (the
       leader counts then get more even, or stay as even with the chain one
       shorter: the steps end).

    One step at a time: the caller carries it out, then asks again. A
    cluster balanced within one shard (and one leader) per replica gets no
    step, and no step names a target already in the group."""
    out = set(drained)
    live = [r for r in replicas if r not in out]
    order = {r: k for k, r in enumerate(replicas)}
    load = Counter({r: 0 for r in live})
    leads = Counter({r: 0 for r in live})
    for members in groups:
        for m in members:
            load[m] += 1
        if members:
            leads[members[0]] += 1
    for i, members in enumerate(groups):
        for m in members:
            if m in out:
                free = [r for r in live if r not in members]
                if free:
                    return Step("move", i, m, min(free, key=lambda r: (load[r], order[r])))
    pairs = sorted(((a, b) for a in live for b in live if a != b),
                   key=lambda p: (-(load[p[0]] - load[p[1]]), order[p[0]], order[p[1]]))
    for most, least in pairs:
        if load[most] - load[least] <= 1:
            break
        fits = [i for i, members in enumerate(groups) if most in members and least not in members]
        if fits:
            i = min(fits, key=lambda i: (groups[i][0] == most, i))
            return Step("move", i, most, least)
    led: dict[str, list[int]] = {}
    for i, members in enumerate(groups):
        if members:
            led.setdefault(members[0], []).append(i)
    top = max((leads[r] for r in live), default=0)
    for most in sorted((r for r in live if leads[r] == top), key=order.__getitem__):
        hop = _lead_hop(groups, led, most, leads, set(live), order, top - 2)
        if hop is not None:
            return hop
    return None
