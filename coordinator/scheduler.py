"""The scheduler: a pure function of shard state and an agent's offer.

Order: RESTORE before REMOVE before ARCHIVE (a user waits on a restore, an
archive can wait), FIFO within a class, only actions whose archive id the
agent serves (an agent serving no explicit archive ids, or id 0, serves all).
Cost is O(picked x archive ids served): the ready queues hold only actions
that may start now, so nothing scans the waiting queue.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from coordinator.state import KIND_PRIORITY, Kind, ShardState


def serves(agent_archive_ids: Collection[int], archive_id: int) -> bool:
    return not agent_archive_ids or 0 in agent_archive_ids or archive_id in agent_archive_ids


def pick(
    state: ShardState,
    agent_archive_ids: Collection[int],
    credits: Mapping[Kind, int],
    agent: str = "",
) -> list[int]:
    """Choose up to ``credits[kind]`` ready actions of each kind for an
    agent. Does not change *state*: the caller commits an ``Assign``.
    Nothing while the shard's control mode is not ``enabled``, nor for an
    agent that is drained."""
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
                picked.append(action_id)
                want -= 1
                if not want:
                    break
            continue
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
