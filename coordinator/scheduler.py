"""The scheduler: a pure function of shard state and an agent's offer.

Which ready action goes next is the policy's (coordinator.policy):

1. an action that has waited ``starvation_after`` seconds goes before every
   one that has waited less, oldest first (the starvation bound);
2. else the kind of the higher weight (restore 3, remove 2, archive 1 by
   default), then the higher priority (set by a rule or the request);
3. among equals, fair share: the user, group or project whose next
   dispatch starts earliest in virtual time (ShardState.share_start); then
   the oldest.

Kinds compete only for what they share: an agent has slots per kind, so
they meet under the running limits (``max_running`` for the cluster,
``max_running_per_archive``). Only actions whose archive id the agent
serves are offered (an agent serving no explicit archive ids, or id 0,
serves all). Cost per pick is O(ready queues), not O(queued actions): the
ready queues hold only actions that may start now, one queue per kind,
archive id, priority and fair-share key, and only their heads are looked
at.

A dispatcher round (:func:`plan`) offers each shard to every agent with
credits, in the order given (the caller rotates it), and spends each
agent's credits as it goes: the whole round on a shard becomes one
``AssignRound`` command, and no agent is offered more than it granted
across all the shards of the round.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

from coordinator.policy import Settings
from coordinator.state import Kind, PositionQueue, QueueKey, ReadyQueue, ShardState


def serves(agent_archive_ids: Collection[int], archive_id: int) -> bool:
    return not agent_archive_ids or 0 in agent_archive_ids or archive_id in agent_archive_ids


def _untaken(ids: Iterator[int], taken: Collection[int]) -> Iterator[int]:
    # a generator function, not a generator expression: compiled, mypyc
    # makes an expression a whole list (the whole queue, at every pick)
    for i in ids:
        if i not in taken:
            yield i


@dataclass(slots=True)
class Budget:
    """What the running limits leave for a dispatcher round: across the
    whole cluster (``total``, None: no limit) and per archive id (ids
    absent: no limit). Spent as actions are picked."""

    total: int | None = None
    per_archive: dict[int, int] = field(default_factory=dict)

    def allows(self, archive_id: int) -> bool:
        if self.total is not None and self.total <= 0:
            return False
        left = self.per_archive.get(archive_id)
        return left is None or left > 0

    def spend(self, archive_id: int) -> None:
        if self.total is not None:
            self.total -= 1
        left = self.per_archive.get(archive_id)
        if left is not None:
            self.per_archive[archive_id] = left - 1


def _weight(key: str, agent: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{agent}".encode(), digest_size=8).digest(), "big")


class Affinity:
    """Which agent an action with a tag or a tape volume goes to: the one
    the rendezvous hash of its volume (else its tag) picks among the agents
    that serve its tag (all agents when it has none) and its archive id,
    and that are not drained. When an agent leaves, only what it owned
    moves; the others keep theirs. The same agents give the same answer on
    every replica. (A tag's other agents take its work while its owner has
    no room: :func:`_offered`.)"""

    def __init__(self, agents: Sequence[tuple[str, Collection[str], Collection[int]]]) -> None:
        #: (agent id, tags it serves, archive ids it serves) of every agent that may be given work
        self.agents = agents
        self._owners: dict[tuple[str, str, int], str | None] = {}
        self._serving = {agent: (tags, archive_ids) for agent, tags, archive_ids in agents}

    def takes(self, agent: str, tag: str, archive_id: int) -> bool:
        """Whether *agent* serves *tag* and *archive_id* (may be given such actions at all)."""
        got = self._serving.get(agent)
        return got is not None and tag in got[0] and serves(got[1], archive_id)

    def owner(self, tag: str, key: str, archive_id: int) -> str | None:
        """The agent for actions of *tag* (``""``: none) whose affinity key
        is *key* (their volume, else their tag) and *archive_id*; None when
        no agent serves them (they wait for one)."""
        k = (tag, key, archive_id)
        if k in self._owners:
            return self._owners[k]
        best: str | None = None
        best_w = -1
        for agent, tags, archive_ids in self.agents:
            if (tag and tag not in tags) or not serves(archive_ids, archive_id):
                continue
            w = _weight(key, agent)
            if w > best_w:
                best, best_w = agent, w
        self._owners[k] = best
        return best


@dataclass(slots=True)
class Outlook:
    """What a dispatcher round knows of every shard (as this replica sees
    them all, not only those it leads), for what is decided across shards:
    each tag's ready archives (batching) and each volume's ready restores
    (tape), and what the replica keeps between rounds: the tags whose batch
    is open, with how many of the batch are still to hand over, and each
    agent's mounted volume and since when."""

    #: tag -> (ready archives, newest one's submit time, oldest one's)
    tags: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    #: volume -> (oldest ready restore's submit time, its tag, its archive id)
    volumes: dict[str, tuple[float, str, int]] = field(default_factory=dict)
    #: agent -> (the volume of the last tape restore assigned to it on any shard, when)
    reading: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: volumes with ready restores on a shard this replica leads
    here: set[str] = field(default_factory=set)
    open: dict[str, int] = field(default_factory=dict)
    mounts: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: (agent, volume) -> the last (position, id) of the volume's restores
    #: the agent may be given this round: the lowest positions over every
    #: shard led here, as many as its restore credits (:func:`plan_round`)
    upto: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def look(self, states: Iterable[ShardState], now: float, batching: bool = True,
             led: Collection[int] | None = None) -> None:
        """Count the ready tagged archives and volume restores of *states*
        (every shard) and open the batches that are due under the newest
        policy among them: *size* ready, none arrived for *idle*, or the
        oldest waited *max_wait*. A batch is what was ready when it opened:
        it stays open until that many are handed over (:meth:`took`) or its
        tag has nothing ready left; what arrives meanwhile gathers for the
        next one. The volume each agent reads (its last tape restore, on
        any shard) is what :meth:`mount` decides from. *batching* False
        (the policy batches nothing): the tags are not counted."""
        tags: dict[str, tuple[int, float, float]] = {}
        volumes: dict[str, tuple[float, str, int]] = {}
        reading: dict[str, tuple[str, float]] = {}
        here: set[str] = set()
        policy = None
        version = -1
        for st in states:
            if st.policy_version > version:
                policy, version = st.policy, st.policy_version
            actions = st.actions
            mine = led is None or st.config.shard in led
            for agent, read in st.tape_reads.items():
                seen_r = reading.get(agent)
                if seen_r is None or read[1] > seen_r[1]:
                    reading[agent] = read
            for key, queue in st.ready.items():
                if isinstance(queue, PositionQueue):
                    first = actions[queue.oldest()].created
                    seen = volumes.get(key[5])
                    if seen is None or first < seen[0]:
                        volumes[key[5]] = (first, key[4], key[1])
                    if mine:
                        here.add(key[5])
                elif batching and key[4] and key[0] == Kind.ARCHIVE and isinstance(queue, ReadyQueue):
                    oldest = actions[next(iter(queue))].created
                    newest = actions[_last(queue)].created
                    n, nw, od = tags.get(key[4], (0, 0.0, oldest))
                    tags[key[4]] = (n + len(queue), max(nw, newest), min(od, oldest))
        self.tags, self.volumes, self.reading, self.here = tags, volumes, reading, here
        self.open = {t: left for t, left in self.open.items() if t in tags}
        if policy is None or not policy.batch_size:
            return
        for tag, (n, newest, oldest) in tags.items():
            if tag not in self.open and (n >= policy.batch_size or now - newest >= policy.batch_idle
                                         or now - oldest >= policy.batch_max_wait):
                self.open[tag] = n

    def took(self, tag: str) -> bool:
        """One archive of *tag*'s open batch was handed over; False once the
        batch is all handed over (it closes)."""
        left = self.open.get(tag, 0) - 1
        if left > 0:
            self.open[tag] = left
            return True
        self.open.pop(tag, None)
        return False

    def held(self, batch_size: int, key: QueueKey, batched: bool = False) -> bool:
        """Whether archives of this queue wait for their batch (*batched*:
        whether they are batched at all, open or not)."""
        return bool(batch_size and key[4] and key[0] == Kind.ARCHIVE and not key[5]
                    and (batched or key[4] not in self.open))

    def mount(self, agent: str, affinity: Affinity | None, now: float, max_mount: float) -> str:
        """The volume *agent* is given restores of now ("": none).

        Every replica leads some shards and sees all of them, and every
        one must give the agent the same volume, or the agent would read
        two tapes at once. So the choice is made from the replicated state
        alone: the agent keeps the volume of the last tape restore assigned
        to it on any shard while that volume has ready restores on any
        shard, for up to *max_mount* seconds (as this replica counts them)
        while others of its volumes wait; then, or when it has none, it
        moves to the volume of its whose oldest ready restore is the oldest
        (then the first by name). Replicas that see the same state pick the
        same volume; one a moment behind catches up at its next round."""
        mine = [(first, v) for v, (first, tag, archive_id) in self.volumes.items()
                if affinity is None or affinity.owner(tag, v, archive_id) == agent]
        held = self.mounts.get(agent)
        cur = self.reading.get(agent)
        choices = mine
        if cur is not None and cur[0] in self.volumes:
            since = held[1] if held is not None and held[0] == cur[0] else now
            self.mounts[agent] = (cur[0], since)
            if now - since < max_mount or not any(v != cur[0] for _f, v in mine):
                return cur[0]
            choices = [(f, v) for f, v in mine if v != cur[0]]
        if not choices:
            return ""
        volume = min(choices)[1]
        self.mounts[agent] = (volume, now)
        return volume


def _last(queue: ReadyQueue) -> int:
    """The id added last to a FIFO ready queue."""
    return next(reversed(queue.back)) if queue.back else next(reversed(queue.front))


def budget_for(settings: Settings, states: Iterable[ShardState]) -> Budget | None:
    """What the running limits of *settings* leave, less what runs on
    *states* (every shard of the cluster, as this replica sees them; read
    only when there is a limit); None: no limit. Leaders of other shards
    dispatch at the same time: together they may go over by what one round
    of each assigns before its commit reaches the others."""
    if not settings.max_running and not settings.max_running_per_archive:
        return None
    running: dict[int, int] = {}
    for st in states:
        for archive_id, n in st.running.items():
            running[archive_id] = running.get(archive_id, 0) + n
    total = None
    if settings.max_running:
        total = settings.max_running - sum(running.values())
    per = {a: limit - running.get(a, 0) for a, limit in settings.max_running_per_archive}
    return Budget(total, per)


def pick(
    state: ShardState,
    agent_archive_ids: Collection[int],
    credits: Mapping[Kind, int],
    agent: str = "",
    taken: Collection[int] = (),
    now: float = 0.0,
    budget: Budget | None = None,
    vtime: dict[int, float] | None = None,
    affinity: Affinity | None = None,
    outlook: Outlook | None = None,
    room: Mapping[str, Offer] | None = None,
) -> list[int]:
    """Choose up to ``credits[kind]`` ready actions of each kind for an
    agent, in the policy's order, none of *taken* (picked for another agent
    this round), within *budget* (spent). *vtime*: fair-share starts this
    round already moved (updated). *affinity*: which agent a tagged
    action or a volume's restore goes to (None: any). *outlook*: the
    batches that are open and the agents' mounted volumes (None: no
    batching, volumes unordered). *room*: every agent's offer, by agent
    (None: a tag's actions go to its owner only; see :func:`_offered`).
    Does not change *state*: the caller commits an ``Assign``. Nothing
    while the shard's control mode is not ``enabled``, nor for an agent
    that is drained."""
    picked: list[int] = []
    if state.control != "enabled" or agent in state.drained:
        return picked
    want = {k: n for k, n in credits.items() if n > 0}
    if not want:
        return picked
    keys: list[QueueKey] = []
    iters: list[Iterator[int]] = []
    policy = state.policy
    upto = outlook.upto if outlook is not None else None
    for key, queue in _offered(state, agent, agent_archive_ids, want, affinity, outlook, now, room):
        keys.append(key)
        last = upto.get((agent, key[5])) if upto and key[5] else None
        it = iter(queue) if last is None else _upto(cast(PositionQueue, queue).order, last)
        iters.append(_untaken(it, taken) if taken else it)
    if not keys:
        return picked
    heads: list[int | None] = [next(it, None) for it in iters]
    batched = outlook is not None and outlook.held(policy.batch_size, keys[0], True)
    if len(keys) == 1 and budget is None and not batched:
        # the common case (one kind, one archive id, no fair share): FIFO
        n = want[keys[0][0]]
        it = iters[0]
        head = heads[0]
        while head is not None and n:
            picked.append(head)
            n -= 1
            if n:
                head = next(it, None)
        return picked
    starve = policy.starvation_after
    actions = state.actions
    shares = vtime if vtime is not None else {}
    # each queue's kind weight and priority: the same for every pick
    weights = [-float(policy.kind_weight(k[0])) for k in keys]
    batches = outlook is not None and policy.batch_size > 0 and any(
        outlook.held(policy.batch_size, k, True) for k in keys)
    if budget is None and not batches and all(k[3] < 0 for k in keys) and not (
            starve and any(h is not None and now - actions[h].created >= starve for h in heads)):
        # no limit, no fair share, no batch, nobody starving (a queue's later
        # actions are younger than its head): the order is fixed per queue,
        # so the queues merge through a heap, O(log queues) a pick
        return _merged(keys, iters, heads, weights, want, picked)
    while True:
        best = -1
        best_rank: tuple[int, float, float, float, int] = (0, 0.0, 0.0, 0.0, 0)
        for i, head in enumerate(heads):
            if head is None:
                continue
            key = keys[i]
            if want.get(key[0], 0) <= 0 or (budget is not None and not budget.allows(key[1])):
                continue
            created = actions[head].created
            if starve and now - created >= starve:
                rank = (0, created, 0.0, 0.0, head)
            else:
                share = key[3]
                start = 0.0
                if share >= 0:
                    start = shares[share] if share in shares else state.share_start(share)
                rank = (1, weights[i], -float(key[2]), start, head)
            if best < 0 or rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        head = heads[best]
        assert head is not None
        key = keys[best]
        picked.append(head)
        want[key[0]] -= 1
        if budget is not None:
            budget.spend(key[1])
        if key[3] >= 0:
            share = key[3]
            start = shares[share] if share in shares else state.share_start(share)
            shares[share] = start + 1.0 / policy.share_weight(share)
        heads[best] = next(iters[best], None)
        if outlook is not None and outlook.held(policy.batch_size, key, True) and not outlook.took(key[4]):
            for j, other in enumerate(keys):  # the batch is all handed over: the rest waits for the next
                if other[4] == key[4] and outlook.held(policy.batch_size, other, True):
                    heads[j] = None
    return picked


def _offered(state: ShardState, agent: str, agent_archive_ids: Collection[int], kinds: Collection[Kind] | None,
             affinity: Affinity | None, outlook: Outlook | None, now: float,
             room: Mapping[str, Offer] | None = None) -> Iterator[tuple[QueueKey, ReadyQueue | PositionQueue]]:
    """The ready queues of *state* that *agent* may be given from now (of
    *kinds*; None: all): of an archive id it serves; not another agent's
    tag or volume; not a batch still gathering; not another volume's
    restores while this replica has some of the volume the agent reads (a
    starving one goes anyway; when this replica has none of it, what it
    has goes: an agent's credits here never wait idle). What :func:`pick`
    picks from and :func:`count_ready` counts.

    A tag's actions go to the tag's agent (its owner) while it has room;
    with *room* (each agent's offer, spent as the round goes), when the
    owner has none left for that kind, another agent that serves the tag
    may take them: movers that serve a tag never idle while its work
    waits. Not a volume's restores (one drive reads a tape), nor when the
    policy batches archives (a batch goes to one agent)."""
    policy = state.policy
    mounted: str | None = None  # the volume this agent reads ("": none); None: not asked yet
    for key, queue in state.ready.items():
        if (kinds is not None and key[0] not in kinds) or not serves(agent_archive_ids, key[1]):
            continue
        if affinity is not None and (key[4] or key[5]):
            owner = affinity.owner(key[4], key[5] or key[4], key[1])
            if owner != agent and (room is None or key[5] or policy.batch_size or owner is None
                                   or _has_room(room.get(owner), key[0])
                                   or not affinity.takes(agent, key[4], key[1])):
                continue
        if outlook is not None and outlook.held(policy.batch_size, key):
            continue
        if outlook is not None and key[5]:
            if mounted is None:
                mounted = outlook.mount(agent, affinity, now, policy.max_mount)
            if key[5] != mounted and mounted in outlook.here and not _starving(state, queue, now):
                continue
        yield key, queue


def _has_room(offer: Offer | None, kind: Kind) -> bool:
    """Whether the agent of *offer* may still be given an action of *kind*
    (None: not offered: it has no credit)."""
    return offer is not None and offer.credits.get(kind, 0) + offer.beyond.get(kind, 0) > 0


def _merged(keys: list[QueueKey], iters: list[Iterator[int]], heads: list[int | None], weights: list[float],
            want: dict[Kind, int], picked: list[int]) -> list[int]:
    """:func:`pick` without fair share, limits or starving actions: the
    heads in (kind weight, priority, arrival) order, each queue's next
    coming up as its head goes."""
    heap = [(weights[i], -float(keys[i][2]), head, i) for i, head in enumerate(heads) if head is not None]
    heapq.heapify(heap)
    while heap:
        w, prio, head, i = heapq.heappop(heap)
        kind = keys[i][0]
        if want[kind] <= 0:
            continue  # this kind has all it may take: its queues drop out
        picked.append(head)
        want[kind] -= 1
        nxt = next(iters[i], None)
        if nxt is not None:
            heapq.heappush(heap, (w, prio, nxt, i))
    return picked


def _upto(order: list[tuple[int, int]], last: tuple[int, int]) -> Iterator[int]:
    """The ids of a volume queue's *order* up to *last* (position, id)."""
    for entry in order:
        if entry > last:
            return
        yield entry[1]


def _starving(state: ShardState, queue: ReadyQueue | PositionQueue, now: float) -> bool:
    """Whether some restore of this volume queue has waited the starvation
    bound (it then goes whatever volume its agent reads)."""
    starve = state.policy.starvation_after
    if not starve:
        return False
    oldest = queue.oldest() if isinstance(queue, PositionQueue) else next(iter(queue))
    return now - state.actions[oldest].created >= starve


def count_ready(state: ShardState, agent: str, agent_archive_ids: Collection[int], into: dict[Kind, int],
                affinity: Affinity | None = None, outlook: Outlook | None = None, now: float = 0.0,
                room: Mapping[str, Offer] | None = None) -> None:
    """Add to *into* how many actions of each kind *state* could give this
    agent now (what its backlog hint tells it), as :func:`pick` would: not
    another agent's tag or volume, nor a batch still gathering, nor another
    volume's restores while this replica has some of the agent's mounted
    one (the agent's credits then go where that one waits). Nothing while
    the shard is not enabled or the agent is drained."""
    if state.control != "enabled" or agent in state.drained:
        return
    for key, queue in _offered(state, agent, agent_archive_ids, None, affinity, outlook, now, room):
        into[key[0]] += len(queue)


@dataclass(slots=True)
class Offer:
    """What one agent may still be given in a dispatcher round: its credits
    per kind, spent as :func:`plan` picks for it."""

    agent: str
    archive_ids: Collection[int]
    credits: dict[Kind, int]
    #: credits the agent has beyond this round's (a round offers at most
    #: ``per_round`` of a kind): counted as its room (:func:`_offered`)
    beyond: dict[Kind, int] = field(default_factory=dict)

    def wants(self) -> bool:
        return any(v > 0 for v in self.credits.values())


def plan(state: ShardState, offers: Sequence[Offer], now: float = 0.0, budget: Budget | None = None,
         affinity: Affinity | None = None,
         outlook: Outlook | None = None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """One shard's part of a dispatcher round: for each offer in turn, what
    :func:`pick` gives it among what is still ready, its credits spent
    (and *budget*). The result is the ``assignments`` of an
    ``AssignRound``; empty when there is nothing to give."""
    taken: set[int] = set()
    out: dict[str, list[int]] = {}
    actions = state.actions
    vtime: dict[int, float] = {}
    room = {o.agent: o for o in offers} if affinity is not None else None
    # with tags, a second pass: an agent offered before a tag's owner spent
    # its room skipped the tag's work; what the owner left it may take now
    # (else it idles until a round that offers the owner first)
    for _pass in range(2 if room is not None else 1):
        for offer in offers:
            if not offer.wants():
                continue
            ids = pick(state, offer.archive_ids, offer.credits, offer.agent, taken, now, budget, vtime, affinity,
                       outlook, room)
            if not ids:
                continue
            taken.update(ids)
            for i in ids:
                offer.credits[actions[i].kind] -= 1
            got = out.get(offer.agent)
            if got is None:
                out[offer.agent] = ids
            else:
                got.extend(ids)
    return tuple((agent, tuple(ids)) for agent, ids in out.items())


class Offering(Protocol):
    """What a dispatcher round needs of an agent's session."""

    @property
    def agent_id(self) -> str: ...

    @property
    def archive_ids(self) -> Sequence[int]: ...

    def usable(self) -> dict[Kind, int]: ...


S = TypeVar("S", bound=Offering)
T = TypeVar("T")
Planned = tuple[tuple[str, tuple[int, ...]], ...]


def windows(shards: Iterable[T], read: Callable[[T], AbstractContextManager[ShardState]],
            offers: Sequence[Offer], outlook: Outlook) -> None:
    """Set ``outlook.upto``: for each agent with restore credits and each
    volume with ready restores on *shards* (those led here, each read
    through *read*), the last (position, id) it may be given of that
    volume this round: the lowest positions over all those shards
    together, as many as its credits. Each shard keeps its own restores of
    a volume in position order; without this, a round would give an agent
    the first shard's restores of the volume before lower positions on the
    next shard. Positions tie across shards (ids are per shard): then a
    few more may go, never more than the agent's credits."""
    outlook.upto = {}
    if not outlook.here:
        return
    wants = [(o.agent, o.credits.get(Kind.RESTORE, 0)) for o in offers]
    most = max((n for _a, n in wants), default=0)
    if most <= 0:
        return
    heads: dict[str, list[list[tuple[int, int]]]] = {}
    for shard in shards:
        with read(shard) as st:
            for key, queue in st.ready.items():
                if key[5] and isinstance(queue, PositionQueue) and queue.order:
                    heads.setdefault(key[5], []).append(queue.order[:most])
    for volume, lists in heads.items():
        if len(lists) < 2:
            continue  # one queue: its own order is the order
        first = list(itertools.islice(heapq.merge(*lists), most))
        for agent, n in wants:
            if n > 0:
                outlook.upto[(agent, volume)] = first[min(n, len(first)) - 1]


def plan_round(turn: int, sessions: Sequence[S], shards: Sequence[T],
               read: Callable[[T], AbstractContextManager[ShardState]],
               per_round: int = 256, now: float = 0.0, budget: Budget | None = None,
               affinity: Affinity | None = None,
               outlook: Outlook | None = None) -> tuple[list[S], list[tuple[T, Planned]]]:
    """A dispatcher round: the sessions with credits and the shards led
    here, each list started *turn* places further on (every agent and every
    shard goes first in turn), each agent offered at most *per_round* of a
    kind, its credits spent across the shards (:func:`plan`, with each
    shard's state read through *read*) and *budget* (the running limits'
    room, :func:`budget_for`). Returns the sessions in the order
    offered and, per shard with something to give, the ``assignments`` of
    its ``AssignRound``."""
    if not sessions or not shards:
        return [], []
    k = turn % len(sessions)
    ordered = [*sessions[k:], *sessions[:k]]
    k = turn % len(shards)
    offers = []
    for s in ordered:
        usable = s.usable()
        offers.append(Offer(s.agent_id, s.archive_ids, {kind: min(v, per_round) for kind, v in usable.items()},
                            {kind: v - per_round for kind, v in usable.items() if v > per_round}))
    if outlook is not None:
        windows(shards, read, offers, outlook)
    rounds: list[tuple[T, Planned]] = []
    for shard in [*shards[k:], *shards[:k]]:
        if not any(o.wants() for o in offers):
            break
        with read(shard) as st:
            planned = plan(st, offers, now, budget, affinity, outlook)
        if planned:
            rounds.append((shard, planned))
    return ordered, rounds
