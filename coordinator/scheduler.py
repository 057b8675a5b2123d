"""The scheduler: a pure function of shard state and an agent's offer.

Order: RESTORE before REMOVE before ARCHIVE (a user waits on a restore, an
archive can wait), FIFO within a class, only actions whose archive id the
agent serves (an agent serving no explicit archive ids, or id 0, serves all).
Cost is O(picked x archive ids served): the ready queues hold only actions
that may start now, so nothing scans the waiting queue.

A dispatcher round (:func:`plan`) offers each shard to every agent with
credits, in the order given (the caller rotates it), and spends each
agent's credits as it goes: the whole round on a shard becomes one
``AssignRound`` command, and no agent is offered more than it granted
across all the shards of the round.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from coordinator.state import KIND_PRIORITY, Kind, ShardState


def serves(agent_archive_ids: Collection[int], archive_id: int) -> bool:
    return not agent_archive_ids or 0 in agent_archive_ids or archive_id in agent_archive_ids


def _untaken(ids: Iterator[int], taken: Collection[int]) -> Iterator[int]:
    # a generator function, not a generator expression: compiled, mypyc
    # makes an expression a whole list (the whole queue, at every pick)
    for i in ids:
        if i not in taken:
            yield i


def pick(
    state: ShardState,
    agent_archive_ids: Collection[int],
    credits: Mapping[Kind, int],
    agent: str = "",
    taken: Collection[int] = (),
) -> list[int]:
    """Choose up to ``credits[kind]`` ready actions of each kind for an
    agent, none of *taken* (picked for another agent this round). Does not
    change *state*: the caller commits an ``Assign``. Nothing while the
    shard's control mode is not ``enabled``, nor for an agent that is
    drained."""
    picked: list[int] = []
    if state.control != "enabled" or agent in state.drained:
        return picked
    for kind in KIND_PRIORITY:
        want = credits.get(kind, 0)
        if want <= 0:
            continue
        iters: list[Iterator[int]] = [
            iter(queue)
            for (k, archive_id), queue in state.ready.items()
            if k == kind and serves(agent_archive_ids, archive_id)
        ]
        if len(iters) == 1:
            it = iters[0]
            for action_id in it:
                if action_id in taken:
                    continue
                picked.append(action_id)
                want -= 1
                if not want:
                    break
            continue
        if taken:
            iters = [_untaken(it, taken) for it in iters]
        heads: list[int | None] = [next(it, None) for it in iters]
        while want:
            best = -1
            for i, head in enumerate(heads):
                if head is not None and (best < 0 or head < heads[best]):  # type: ignore[operator]
                    best = i
            if best < 0:
                break
            picked.append(heads[best])  # type: ignore[arg-type]
            heads[best] = next(iters[best], None)
            want -= 1
    return picked


def count_ready(state: ShardState, agent: str, agent_archive_ids: Collection[int], into: dict[Kind, int]) -> None:
    """Add to *into* how many actions of each kind *state* could give this
    agent now (what its backlog hint tells it); nothing while the shard is
    not enabled or the agent is drained."""
    if state.control != "enabled" or agent in state.drained:
        return
    for (kind, archive_id), queue in state.ready.items():
        if serves(agent_archive_ids, archive_id):
            into[kind] += len(queue)


@dataclass(slots=True)
class Offer:
    """What one agent may still be given in a dispatcher round: its credits
    per kind, spent as :func:`plan` picks for it."""

    agent: str
    archive_ids: Collection[int]
    credits: dict[Kind, int]

    def wants(self) -> bool:
        return any(v > 0 for v in self.credits.values())


def plan(state: ShardState, offers: Sequence[Offer]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """One shard's part of a dispatcher round: for each offer in turn, what
    :func:`pick` gives it among what is still ready, its credits spent.
    The result is the ``assignments`` of an ``AssignRound``; empty when
    there is nothing to give."""
    taken: set[int] = set()
    out: list[tuple[str, tuple[int, ...]]] = []
    actions = state.actions
    for offer in offers:
        if not offer.wants():
            continue
        ids = pick(state, offer.archive_ids, offer.credits, offer.agent, taken)
        if not ids:
            continue
        taken.update(ids)
        for i in ids:
            offer.credits[actions[i].kind] -= 1
        out.append((offer.agent, tuple(ids)))
    return tuple(out)


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


def plan_round(turn: int, sessions: Sequence[S], shards: Sequence[T],
               read: Callable[[T], AbstractContextManager[ShardState]],
               per_round: int = 256) -> tuple[list[S], list[tuple[T, Planned]]]:
    """A dispatcher round: the sessions with credits and the shards led
    here, each list started *turn* places further on (every agent and every
    shard goes first in turn), each agent offered at most *per_round* of a
    kind, its credits spent across the shards (:func:`plan`, with each
    shard's state read through *read*). Returns the sessions in the order
    offered and, per shard with something to give, the ``assignments`` of
    its ``AssignRound``."""
    if not sessions or not shards:
        return [], []
    k = turn % len(sessions)
    ordered = [*sessions[k:], *sessions[:k]]
    k = turn % len(shards)
    offers = [Offer(s.agent_id, s.archive_ids, {kind: min(v, per_round) for kind, v in s.usable().items()})
              for s in ordered]
    rounds: list[tuple[T, Planned]] = []
    for shard in [*shards[k:], *shards[:k]]:
        if not any(o.wants() for o in offers):
            break
        with read(shard) as st:
            planned = plan(st, offers)
        if planned:
            rounds.append((shard, planned))
    return ordered, rounds
