"""The dispatcher round (``scheduler.plan`` and the ``AssignRound`` command):
one command per shard for every agent, credits spent across the shards of
a round, no action given to two agents."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import scheduler
from coordinator.state import (
    Assign,
    Assigned,
    AssignRound,
    DrainAgent,
    Item,
    Kind,
    Requester,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid

FS = "lustre1"


def shard(index: int = 0) -> ShardState:
    return ShardState(ShardConfig(shard=index, archive_ids=frozenset({1, 2})))


def submit(state: ShardState, specs: list[tuple[int, Kind, int]]) -> None:
    """specs: (file number, kind, archive id)"""
    items = tuple(Item(FS, Fid(0x200000400, n, 0), kind, archive_id=aid, requester=Requester("t", cookie=n))
                  for n, kind, aid in specs)
    state.apply(Submit(1.0, items))


def offer(agent: str, archive: int = 0, restore: int = 0, remove: int = 0,
          archive_ids: tuple[int, ...] = ()) -> scheduler.Offer:
    return scheduler.Offer(agent, archive_ids, {Kind.ARCHIVE: archive, Kind.RESTORE: restore, Kind.REMOVE: remove})


def assigned(res: object) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in res.effects:  # type: ignore[attr-defined]
        if isinstance(e, Assigned):
            out.setdefault(e.agent, []).append(e.action_id)
    return out


def test_a_round_gives_each_agent_its_share_in_one_command_and_no_action_twice() -> None:
    st0 = shard()
    submit(st0, [(n, Kind.ARCHIVE, 1) for n in range(10)])
    offers = [offer("a", archive=4), offer("b", archive=4)]
    planned = scheduler.plan(st0, offers)
    assert [agent for agent, _ in planned] == ["a", "b"]
    a, b = planned[0][1], planned[1][1]
    assert len(a) == 4 and len(b) == 4 and not set(a) & set(b)
    assert all(not o.wants() for o in offers)  # credits spent
    res = st0.apply(AssignRound(2.0, planned))
    st0.check_invariants()
    assert assigned(res) == {"a": list(a), "b": list(b)}
    assert sum(1 for x in st0.actions.values() if x.state == State.STARTED) == 8


def test_credits_are_spent_across_the_shards_of_a_round() -> None:
    s0, s1 = shard(0), shard(1)
    submit(s0, [(n, Kind.ARCHIVE, 1) for n in range(5)])
    submit(s1, [(n, Kind.ARCHIVE, 1) for n in range(100, 105)])
    offers = [offer("a", archive=3)]
    p0 = scheduler.plan(s0, offers)
    p1 = scheduler.plan(s1, offers)
    assert len(p0[0][1]) == 3 and p1 == ()  # the agent granted 3 in all, not 3 per shard


def test_a_round_follows_archive_ids_kinds_and_drains() -> None:
    st0 = shard()
    submit(st0, [(1, Kind.ARCHIVE, 1), (2, Kind.ARCHIVE, 2), (3, Kind.RESTORE, 2)])
    st0.apply(DrainAgent(1.5, "drained", True))
    offers = [offer("drained", archive=9, restore=9), offer("only2", archive=9, archive_ids=(2,)),
              offer("any", archive=9, restore=9)]
    planned = dict(scheduler.plan(st0, offers))
    assert "drained" not in planned
    kinds = {agent: sorted(st0.actions[i].kind.name for i in ids) for agent, ids in planned.items()}
    assert kinds == {"only2": ["ARCHIVE"], "any": ["ARCHIVE", "RESTORE"]}
    assert {st0.actions[i].archive_id for i in planned["only2"]} == {2}


def test_assign_round_crosses_raft_pickled_as_its_fields() -> None:
    cmd = AssignRound(3.5, (("a", (1000, 2000)), ("b", (3000,))))
    assert pickle.loads(pickle.dumps(cmd, protocol=5)) == cmd
    assert cmd.__reduce__() == (AssignRound, (3.5, (("a", (1000, 2000)), ("b", (3000,)))))


specs = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(list(Kind)), st.sampled_from([1, 2])),
                 min_size=0, max_size=40)
offer_specs = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6),
                                 st.sampled_from([(), (1,), (2,), (1, 2)])), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(specs, specs, offer_specs)
def test_a_round_equals_one_assign_per_agent_and_never_exceeds_credits(
        spec0: list[tuple[int, Kind, int]], spec1: list[tuple[int, Kind, int]],
        offs: list[tuple[int, int, int, tuple[int, ...]]]) -> None:
    """Whatever is waiting on two shards and whatever the agents offer: the
    round's command assigns exactly what was planned (nothing planned is
    skipped at apply), exactly as one Assign per agent would, no action goes
    to two agents, and no agent gets more of a kind than it offered over
    both shards."""
    states = [shard(0), shard(1)]
    twins = [shard(0), shard(1)]
    for s, spec in zip(states, (spec0, spec1), strict=True):
        submit(s, spec)
    for s, spec in zip(twins, (spec0, spec1), strict=True):
        submit(s, spec)
    offers = [offer(f"ag{i}", a, r, m, ids) for i, (a, r, m, ids) in enumerate(offs)]
    wanted = {o.agent: dict(o.credits) for o in offers}
    got: dict[str, dict[Kind, int]] = {o.agent: dict.fromkeys(Kind, 0) for o in offers}
    for s, twin in zip(states, twins, strict=True):
        planned = scheduler.plan(s, offers)
        res = s.apply(AssignRound(2.0, planned))
        s.check_invariants()
        by = assigned(res)
        assert by == {agent: list(ids) for agent, ids in planned}
        ids = [i for _, group in planned for i in group]
        assert len(ids) == len(set(ids))
        for agent, group in planned:
            for i in group:
                got[agent][s.actions[i].kind] += 1
            twin.apply(Assign(2.0, agent, group))
        twin.check_invariants()
        assert {i: (a.state, a.agent, a.attempt) for i, a in s.actions.items()} == \
               {i: (a.state, a.agent, a.attempt) for i, a in twin.actions.items()}
    for agent, per in got.items():
        assert all(per[k] <= wanted[agent][k] for k in Kind)


def test_the_backlog_an_agent_is_told_is_what_a_round_could_give_it() -> None:
    st0 = shard()
    submit(st0, [(1, Kind.ARCHIVE, 1), (2, Kind.ARCHIVE, 2), (3, Kind.RESTORE, 2), (3, Kind.ARCHIVE, 2)])
    counts = dict.fromkeys(Kind, 0)
    scheduler.count_ready(st0, "only2", (2,), counts)
    # file 3's archive waits behind its restore: not ready, not counted
    assert counts == {Kind.ARCHIVE: 1, Kind.RESTORE: 1, Kind.REMOVE: 0}
    planned = dict(scheduler.plan(st0, [offer("only2", archive=9, restore=9, archive_ids=(2,))]))
    assert len(planned["only2"]) == 2
    st0.apply(DrainAgent(2.0, "only2", True))
    counts = dict.fromkeys(Kind, 0)
    scheduler.count_ready(st0, "only2", (2,), counts)
    assert counts == dict.fromkeys(Kind, 0)
