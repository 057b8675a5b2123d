"""The policy inside the shard state machine and the scheduler: admission
rules decide at the submit's log position, a SetPolicy applies everywhere at
its own, runtime settings follow it, and dispatch follows its priorities,
starvation bound, fair share and running limits."""

from __future__ import annotations

import errno as E
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import scheduler
from coordinator.state import (
    AgentLost,
    AssignRound,
    Complete,
    Completion,
    Item,
    Kind,
    Outcome,
    PolicyChanged,
    PolicyReply,
    Requester,
    SetPolicy,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid

FS = "lustre1"


def shard(**config: object) -> ShardState:
    return ShardState(ShardConfig(archive_ids=frozenset({1, 2}), **config))  # type: ignore[arg-type]


def item(n: int, kind: Kind = Kind.ARCHIVE, *, uid: int = 0, gid: int = 0, path: str = "", size: int = -1,
         archive_id: int = 0, priority: int = 0, initiator: str = "t", data: bytes = b"") -> Item:
    return Item(FS, Fid(0x200000400, n, 0), kind, archive_id=archive_id, priority=priority, data=data,
                requester=Requester(initiator, cookie=n, uid=uid, gid=gid), path=path, size=size)


def set_policy(state: ShardState, text: str, version: int | None = None, now: float = 1.0) -> PolicyReply:
    version = state.policy_version + 1 if version is None else version
    reply = state.apply(SetPolicy(now, version, text, "test")).replies[0]
    assert isinstance(reply, PolicyReply)
    return reply


def offer(agent: str = "a", archive: int = 0, restore: int = 0, remove: int = 0) -> scheduler.Offer:
    return scheduler.Offer(agent, (), {Kind.ARCHIVE: archive, Kind.RESTORE: restore, Kind.REMOVE: remove})


def dispatch(state: ShardState, off: scheduler.Offer, now: float = 2.0,
             budget: scheduler.Budget | None = None) -> list[int]:
    planned = scheduler.plan(state, [off], now, budget)
    ids = [i for _agent, part in planned for i in part]
    state.apply(AssignRound(now, planned))
    return ids


RULES = """\
rules:
  - name: no-scratch
    match: {path: "/scratch/**"}
    then: {deny: "scratch is never archived"}
  - name: big-to-tape
    match: {kind: archive, size: ">= 1G"}
    then: {archive_id: 2, tag: tape-a, priority: -5}
  - name: vip
    match: {uid: 1000}
    then: {priority: 7}
"""


def test_admission_rules_decide_at_submit() -> None:
    s = shard()
    assert not set_policy(s, RULES).error
    res = s.apply(Submit(1.0, (
        item(1, path="/scratch/a/b"),
        item(2, path="/home/x", size=2 << 30),
        item(3, uid=1000),
        item(4),
        item(5, Kind.RESTORE, path="/scratch/z"),
    ))).replies
    assert (res[0].outcome, res[0].errno) == (Outcome.REJECTED, E.EPERM)
    assert res[0].reason == "refused by policy rule 'no-scratch': scratch is never archived"
    assert res[4].outcome == Outcome.REJECTED  # the rule names no kind: restores too
    big, vip, plain = (s.get(r.action_id) for r in res[1:4])
    assert big is not None and vip is not None and plain is not None
    assert (big.archive_id, big.priority, big.data) == (2, -5, b"tag=tape-a")
    assert (vip.archive_id, vip.priority) == (1, 7)
    assert (plain.archive_id, plain.priority) == (1, 0)
    s.check_invariants()


def test_the_leaders_admission_is_used_only_at_its_version_and_archive_id() -> None:
    """A Submit's items carry the rules the leader found to hold (the mask
    of ``Policy.holding``): a replica applying the item at that policy
    version and archive id takes the leader's word for it (here a mask
    that says the scratch rule holds for a path it does not match, which
    only a carried mask can do), and evaluates the rules itself in every
    other case: another version (a policy set between the leader's
    evaluation and this entry), another archive id, a mask that cannot be
    one of this policy."""
    s = shard()
    set_policy(s, RULES)
    v = s.policy_version
    deny, vip = 0b001, 0b100
    res = s.apply(Submit(1.0, (
        item(1, path="/home/a")._replace(admitted=(v, 1, deny)),  # used: refused
        item(2, path="/home/a")._replace(admitted=(v - 1, 1, deny)),  # older version: evaluated
        item(3, path="/home/a")._replace(admitted=(v, 2, deny)),  # another archive id: evaluated
        item(4, path="/home/a")._replace(admitted=(v, 1, 0b1000)),  # past the last rule: evaluated
        item(5, path="/home/a")._replace(admitted=(v, 1, vip)),  # used: priority 7 for uid 0
    ))).replies
    assert (res[0].outcome, res[0].reason) == (Outcome.REJECTED,
                                               "refused by policy rule 'no-scratch': scratch is never archived")
    assert [r.outcome for r in res[1:]] == [Outcome.CREATED] * 4
    assert [s.get(r.action_id).priority for r in res[1:]] == [0, 0, 0, 7]  # type: ignore[union-attr]
    # a new version: the same masks are evaluated again, and the result is the new policy's
    set_policy(s, RULES.replace("priority: 7", "priority: 3"))
    res = s.apply(Submit(2.0, (item(6, uid=1000)._replace(admitted=(v, 1, 0)),))).replies
    assert s.get(res[0].action_id).priority == 3  # type: ignore[union-attr]
    s.check_invariants()


def test_items_from_the_wire_carry_the_leaders_admission() -> None:
    from coordinator.convert import Admission, items_from_pb
    from coordinator.policy import parse
    from hsm.client import submit_item
    from hsm.v1 import coordinator_pb2

    req = coordinator_pb2.SubmitRequest(items=[
        submit_item(FS, Fid(0x200000400, 1, 0), "archive", path="/scratch/x", size=5),
        submit_item(FS, Fid(0x200000400, 2, 0), "archive", 2, path="/home/y", size=2 << 30),
        submit_item(FS, Fid(0x200000400, 3, 0), "restore", hsm=(0x9, 2), path="/home/z"),
    ])
    got = items_from_pb(req, {1, 2}, Admission(parse(RULES), 4, 1))
    assert [it.admitted for it in got] == [(4, 1, 0b001), (4, 2, 0b010), (4, 2, 0)]
    assert all(it.admitted is None for it in items_from_pb(req, {1, 2}))
    assert all(it.admitted is None for it in items_from_pb(req, {1, 2}, Admission(parse(""), 4, 1)))


def test_a_rule_tag_replaces_the_requesters_and_an_unconfigured_archive_id_is_refused() -> None:
    s = shard()
    set_policy(s, "rules: [{name: r, match: {uid: 5}, then: {tag: t2}}, "
                  "{name: nowhere, match: {uid: 6}, then: {archive_id: 9}}]")
    res = s.apply(Submit(1.0, (item(1, uid=5, data=b"tag=t1,k=v"), item(2, uid=6)))).replies
    a = s.get(res[0].action_id)
    assert a is not None and a.data == b"k=v,tag=t2"
    assert (res[1].outcome, res[1].errno) == (Outcome.REJECTED, E.EINVAL)
    assert "archive id 9 is not configured (set by policy rule 'nowhere')" in res[1].reason


def test_a_rule_does_not_move_a_restore_to_another_archive() -> None:
    s = shard()
    set_policy(s, "rules: [{name: r, then: {archive_id: 2}}]")
    res = s.apply(Submit(1.0, (item(1, Kind.RESTORE, archive_id=1),))).replies
    a = s.get(res[0].action_id)
    assert a is not None and a.archive_id == 1


def test_set_policy_versions_retries_and_races() -> None:
    s = shard()
    assert s.policy_version == 0
    res = s.apply(SetPolicy(1.0, 1, "settings: {max_attempts: 5}", "alice"))
    assert res.replies == [PolicyReply(1)] and PolicyChanged(1) in res.effects
    assert s.policy.settings.max_attempts == 5 and s.policy_set == (1.0, "alice")
    # the same set again (a client's retry): nothing changes, success
    res = s.apply(SetPolicy(2.0, 1, "settings: {max_attempts: 5}", "alice"))
    assert res.replies == [PolicyReply(1)] and not res.effects and s.policy_set == (1.0, "alice")
    # another text at the same version: a race, refused, the policy stays
    reply = set_policy(s, "settings: {max_attempts: 2}", version=1)
    assert reply.version == 1 and "another text" in reply.error
    assert s.policy.settings.max_attempts == 5
    # an older version: refused
    assert "version 1 already" in set_policy(s, "{}", version=0).error
    # a newer one may skip versions (a shard a failed set did not reach)
    assert not set_policy(s, "settings: {max_attempts: 1}", version=4).error
    assert s.policy_version == 4 and s.policy.settings.max_attempts == 1


def test_a_malformed_policy_in_a_command_changes_nothing() -> None:
    s = shard()
    set_policy(s, "settings: {max_attempts: 4}")
    reply = set_policy(s, "settings: {max_attempts: 0}")
    assert reply.version == 1 and "refused" in reply.error
    assert s.policy_version == 1 and s.policy.settings.max_attempts == 4


def test_runtime_settings_follow_the_policy() -> None:
    s = shard(max_attempts=3, max_terminal=100)
    assert s.policy.settings.max_attempts == 3  # version 0: the configuration
    set_policy(s, "settings: {max_attempts: 1, max_terminal: 2, progress_timeout: 5}")
    ids = [r.action_id for r in s.apply(Submit(1.0, tuple(item(n) for n in range(1, 5)))).replies]
    assert dispatch(s, offer(archive=4)) == ids
    # one attempt only: a lost agent fails them instead of requeueing
    assert s.stale(7.5) == ids  # progress_timeout 5 s
    s.apply(AgentLost(8.0, "a", "gone"))
    assert {s.actions[i].state for i in ids[2:]} == {State.FAILED}
    assert len(s.terminal) == 2 and ids[0] not in s.actions  # max_terminal 2: the oldest forgotten
    set_policy(s, "settings: {max_terminal: 1}")
    assert len(s.terminal) == 1  # a lower max_terminal applies at once
    s.check_invariants()


def test_policy_survives_a_snapshot_and_an_old_snapshot_keeps_its_configuration() -> None:
    s = shard(max_attempts=7)
    set_policy(s, RULES + "fair_share: {by: user}\n")
    s.apply(Submit(1.0, (item(1, uid=3), item(2, uid=4))))
    head, actions = s.export_parts()
    loaded = ShardState.import_parts(pickle.loads(pickle.dumps(head)), [pickle.loads(pickle.dumps(actions))])
    assert loaded.policy == s.policy and loaded.policy.text == s.policy.text
    assert loaded.policy_version == 1 and loaded.ready.keys() == s.ready.keys()
    loaded.check_invariants()
    # a snapshot written before policies existed: its configuration's settings
    del head["policy"], head["policy_version"]
    old = ShardState.import_parts(head, [actions])
    assert old.policy_version == 0 and old.policy.settings.max_attempts == 7


def test_kinds_compete_by_weight_under_a_running_limit() -> None:
    s = shard()
    set_policy(s, "priorities: {kinds: {archive: 9, restore: 1}}")
    s.apply(Submit(1.0, (item(1), item(2, Kind.RESTORE), item(3), item(4, Kind.RESTORE))))
    picked = dispatch(s, offer(archive=5, restore=5), budget=scheduler.Budget(total=2))
    assert [s.actions[i].kind for i in picked] == [Kind.ARCHIVE, Kind.ARCHIVE]
    # by default restores go first
    d = shard()
    d.apply(Submit(1.0, (item(1), item(2, Kind.RESTORE), item(3), item(4, Kind.RESTORE))))
    picked = dispatch(d, offer(archive=5, restore=5), budget=scheduler.Budget(total=2))
    assert [d.actions[i].kind for i in picked] == [Kind.RESTORE, Kind.RESTORE]


def test_priority_orders_within_a_kind_then_arrival() -> None:
    s = shard()
    s.apply(Submit(1.0, (item(1, priority=0), item(2, priority=5), item(3, priority=-2), item(4, priority=5))))
    picked = dispatch(s, offer(archive=4))
    assert [s.actions[i].fid.oid for i in picked] == [2, 4, 1, 3]
    big = shard()
    big.apply(Submit(1.0, (item(1, priority=1 << 30),)))
    assert big.actions[next(iter(big.actions))].priority == 1000  # clipped


def test_per_archive_limit_leaves_other_archives_free() -> None:
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, archive_id=1 + n % 2) for n in range(1, 9))))
    budget = scheduler.Budget(per_archive={1: 1})
    picked = dispatch(s, offer(archive=8), budget=budget)
    assert sorted(s.actions[i].archive_id for i in picked) == [1, 2, 2, 2, 2]
    assert budget.per_archive == {1: 0}


def test_starvation_bound_an_old_archive_runs_under_a_restore_storm() -> None:
    """A restore storm fills the one running slot the limit allows; the
    archive waits, but once it has waited starvation_after it goes before
    every fresher restore."""
    s = shard()
    set_policy(s, "priorities: {starvation_after: 100}")
    s.apply(Submit(0.0, (item(1),)))  # the archive, at t=0
    n = 100
    for t in range(0, 150, 10):
        s.apply(Submit(float(t), tuple(item(n + k, Kind.RESTORE) for k in range(3))))
        n += 3
        picked = dispatch(s, offer(archive=1, restore=1), now=float(t), budget=scheduler.Budget(total=1))
        kinds = [s.actions[i].kind for i in picked]
        assert kinds == ([Kind.ARCHIVE] if t == 100 else [Kind.RESTORE]), f"at {t} s"
    archive = s.actions[next(i for i, a in s.actions.items() if a.kind == Kind.ARCHIVE)]
    assert archive.state == State.STARTED and archive.started == 100.0


def test_without_the_bound_the_archive_starves() -> None:
    s = shard()
    set_policy(s, "priorities: {starvation_after: 0}")
    s.apply(Submit(0.0, (item(1),)))
    for t in range(0, 1000, 10):
        s.apply(Submit(float(t), (item(100 + t, Kind.RESTORE),)))
        dispatch(s, offer(archive=1, restore=1), now=float(t), budget=scheduler.Budget(total=1))
    assert s.actions[next(iter(s.actions))].state == State.WAITING


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def test_fair_share_two_users_at_10_to_1_get_equal_dispatch() -> None:
    s = shard()
    set_policy(s, "fair_share: {by: user}")
    n = 1
    served = {1: 0, 2: 0}
    for _round in range(50):
        s.apply(Submit(1.0, tuple(item(n + k, uid=1) for k in range(10)) + (item(n + 10, uid=2),)))
        n += 11
        for i in dispatch(s, offer(archive=2)):
            served[s.actions[i].requesters[0].uid] += 1
    # user 2 submitted 50 and got them all; user 1 got the same share
    assert served == {1: 50, 2: 50}
    assert jain([served[1], served[2]]) == 1.0
    s.check_invariants()


def test_fair_share_weights() -> None:
    s = shard()
    set_policy(s, "fair_share: {by: group, weights: {7: 3}}")
    s.apply(Submit(1.0, tuple(item(n, gid=7 if n % 2 else 8) for n in range(1, 201))))
    picked = dispatch(s, offer(archive=80))
    seven = sum(1 for i in picked if s.actions[i].requesters[0].gid == 7)
    assert seven == 60  # 3:1


def test_an_idle_user_earns_no_credit() -> None:
    """A user who submitted nothing for a while starts level with the
    others, not ahead by all the dispatches it missed."""
    s = shard()
    set_policy(s, "fair_share: {by: user}")
    s.apply(Submit(1.0, tuple(item(n, uid=1) for n in range(1, 101))))
    dispatch(s, offer(archive=50))
    s.apply(Submit(2.0, tuple(item(n, uid=2) for n in range(101, 151))))
    picked = dispatch(s, offer(archive=20))
    assert sum(1 for i in picked if s.actions[i].requesters[0].uid == 2) == 10


def test_changing_what_is_shared_requeues_the_ready_in_order() -> None:
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, uid=n % 3) for n in range(1, 31))))
    set_policy(s, "fair_share: {by: user}")
    assert len(s.ready) == 3
    s.check_invariants()
    set_policy(s, "{}")
    assert len(s.ready) == 1
    s.check_invariants()
    picked = dispatch(s, offer(archive=30))
    assert [s.actions[i].fid.oid for i in picked] == list(range(1, 31))


def test_queue_position_counts_higher_priorities_first() -> None:
    s = shard()
    s.apply(Submit(1.0, (item(1), item(2), item(3, priority=5), item(4, priority=5))))
    a1 = s.actions[next(i for i, a in s.actions.items() if a.fid.oid == 1)]
    assert s.queue_position(a1) == (2, 4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(-2, 2), st.booleans()), min_size=1,
                max_size=60),
       st.sampled_from(["{}", "fair_share: {by: user}", "fair_share: {by: group, weights: {1: 4}}",
                        "priorities: {kinds: {archive: 5}, starvation_after: 3}"]),
       st.integers(1, 5))
def test_invariants_hold_under_policy_changes(ops: list[tuple[int, int, int, bool]], text: str, credits: int) -> None:
    """Submits, dispatches, ends and policy changes in any order keep every
    index consistent, and a dispatched action is one that was ready."""
    s = shard()
    t = 0.0
    for n, (uid, gid, prio, change) in enumerate(ops, start=1):
        t += 1.0
        s.apply(Submit(t, (item(n % 17 + 1, Kind(20 + n % 3), uid=uid, gid=gid, priority=prio),)))
        if change:
            set_policy(s, text if s.policy.text != text else "{}", now=t)
        ready = {i for q in s.ready.values() for i in q}
        picked = dispatch(s, offer(archive=credits, restore=credits, remove=credits), now=t,
                          budget=scheduler.Budget(total=credits))
        assert set(picked) <= ready and len(picked) <= credits
        if picked and n % 2:
            a = s.actions[picked[0]]
            s.apply(Complete(t, (Completion(a.id, a.attempt, 0),), "a"))
        s.check_invariants()


def test_budget_counts_running_on_every_shard() -> None:
    a, b = shard(), ShardState(ShardConfig(shard=1, archive_ids=frozenset({1, 2})))
    for s in (a, b):
        set_policy(s, "settings: {max_running: 5, max_running_per_archive: {2: 1}}")
        s.apply(Submit(1.0, (item(1), item(2, archive_id=2))))
        dispatch(s, offer(archive=2))
    budget = scheduler.budget_for(a.policy.settings, [a, b])
    assert budget is not None
    assert (budget.total, budget.per_archive) == (1, {2: -1})
    assert not budget.allows(2) and budget.allows(1)


@pytest.mark.parametrize("text", ["settings: {max_attempts: 5}", RULES])
def test_replicas_applying_the_same_commands_agree(text: str) -> None:
    """Two replicas, the same log (a policy change in the middle): the
    same decisions, the same state."""
    log = [Submit(1.0, (item(1, uid=1000), item(2, path="/scratch/x"), item(3, size=3 << 30))),
           SetPolicy(2.0, 1, text, "x"),
           Submit(3.0, (item(4, uid=1000), item(5, path="/scratch/x"), item(6, size=3 << 30)))]
    one, two = shard(), shard()
    out1 = [one.apply(c).replies for c in log]
    out2 = [two.apply(pickle.loads(pickle.dumps(c))).replies for c in log]
    assert out1 == out2
    assert {i: (a.priority, a.archive_id, a.data, a.state) for i, a in one.actions.items()} == \
        {i: (a.priority, a.archive_id, a.data, a.state) for i, a in two.actions.items()}


# ---------------------------------------------------------------- tags, batching, tape


def agents(*specs: tuple[str, tuple[str, ...]]) -> scheduler.Affinity:
    return scheduler.Affinity([(a, frozenset(tags), ()) for a, tags in specs])


def plan_for(s: ShardState, names: list[str], affinity: scheduler.Affinity, outlook: scheduler.Outlook | None,
             now: float = 2.0, archive: int = 100, restore: int = 100) -> dict[str, list[int]]:
    offers = [offer(n, archive=archive, restore=restore) for n in names]
    if outlook is not None:
        outlook.look([s], now)
    planned = scheduler.plan(s, offers, now, None, affinity, outlook)
    s.apply(AssignRound(now, planned))
    return {a: list(ids) for a, ids in planned}


def test_a_tag_goes_to_one_agent_that_serves_it_and_only_its_tags_move() -> None:
    s = shard()
    tags = [f"t{k}" for k in range(40)]
    s.apply(Submit(1.0, tuple(item(n, data=f"tag={tags[n % 40]}".encode()) for n in range(1, 201))
                   + tuple(item(n) for n in range(201, 221))))
    aff = agents(("a", ()), ("b", tuple(tags)), ("c", tuple(tags)), ("d", tuple(tags)))
    got = plan_for(s, ["a", "b", "c", "d"], aff, None)
    owner = {}
    for agent, ids in got.items():
        for i in ids:
            t = s.actions[i].tag
            if t:
                assert agent != "a", "an agent that serves no tag got a tagged action"
                assert owner.setdefault(t, agent) == agent, f"tag {t} went to two agents"
    assert len(owner) == 40 and set(owner.values()) == {"b", "c", "d"}
    # untagged work goes to anyone
    assert sum(1 for ids in got.values() for i in ids if not s.actions[i].tag) == 20
    # d leaves: only d's tags move, each to one of b and c
    after = agents(("a", ()), ("b", tuple(tags)), ("c", tuple(tags)))
    for t, was in owner.items():
        now_owner = after.owner(t, t, 1)
        assert now_owner == was if was != "d" else now_owner in ("b", "c")


def test_a_full_owner_lets_the_tags_other_agents_take_its_work() -> None:
    """A tag's owner takes its work while it has room; when it has none left
    (its credits spent, or none offered), another agent that serves the tag
    takes the rest in the same round, whether it was offered before or after
    the owner: a mover that may do waiting work never idles. Never an agent
    that does not serve the tag."""
    tags = ("disk",)
    aff = agents(("a", ()), ("b", tags), ("c", tags))
    owner = aff.owner("disk", "disk", 1)
    other = "c" if owner == "b" else "b"
    for order in ([owner, other, "a"], [other, owner, "a"], ["a", other, owner]):
        s = shard()
        s.apply(Submit(1.0, tuple(item(n, data=b"tag=disk") for n in range(1, 9))))
        offers = [offer(n, archive=2 if n == owner else 10) for n in order]
        planned = dict(scheduler.plan(s, offers, 2.0, None, aff, None))
        assert "a" not in planned
        assert len(planned[owner]) == 2, order  # the owner first, whatever the order
        assert len(planned[other]) == 6, order  # the rest, once the owner is full
        assert len(set(planned[owner]) | set(planned[other])) == 8  # nothing given twice
        s.apply(AssignRound(2.0, tuple(planned.items())))
    # the owner not offered at all (no credit): the other takes the work
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, data=b"tag=disk") for n in range(1, 9))))
    planned = dict(scheduler.plan(s, [offer(other, archive=5)], 2.0, None, aff, None))
    assert len(planned[other]) == 5
    # credits beyond the round's cap are room: the owner is not full
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, data=b"tag=disk") for n in range(1, 9))))
    capped = scheduler.Offer(owner, (), {Kind.ARCHIVE: 2, Kind.RESTORE: 0, Kind.REMOVE: 0}, {Kind.ARCHIVE: 100})
    planned = dict(scheduler.plan(s, [capped, offer(other, archive=10)], 2.0, None, aff, None))
    assert list(planned) == [owner] and len(planned[owner]) == 2


def test_a_batched_tag_and_a_volume_never_leave_their_agent() -> None:
    aff = agents(("b", ("t",)), ("c", ("t",)))
    owner = aff.owner("t", "t", 1)
    other = "c" if owner == "b" else "b"
    s = shard()
    set_policy(s, "batching: {size: 2, idle: 30}")
    s.apply(Submit(1.0, tuple(item(n, data=b"tag=t") for n in range(1, 9))))
    out = scheduler.Outlook()
    out.look([s], 2.0)
    planned = dict(scheduler.plan(s, [offer(owner, archive=2), offer(other, archive=10)], 2.0, None, aff, out))
    assert list(planned) == [owner]  # a batch goes to one agent
    s = shard()
    s.apply(Submit(1.0, tuple(tape_item(n, "V1", n) for n in range(1, 9))))
    vol_owner = aff.owner("", "V1", 1)
    vol_other = "c" if vol_owner == "b" else "b"
    planned = dict(scheduler.plan(s, [offer(vol_owner, restore=2), offer(vol_other, restore=10)], 2.0, None, aff,
                                  None))
    assert list(planned) == [vol_owner]  # one drive reads a tape


def test_backlog_hints_count_a_full_owners_work_for_the_tags_other_agents() -> None:
    aff = agents(("b", ("disk",)), ("c", ("disk",)))
    owner = aff.owner("disk", "disk", 1)
    other = "c" if owner == "b" else "b"
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, data=b"tag=disk") for n in range(1, 5))))
    counted: dict[Kind, int] = {k: 0 for k in Kind}
    room = {owner: offer(owner, archive=3), other: offer(other, archive=3)}
    scheduler.count_ready(s, other, (), counted, aff, None, 2.0, room)
    assert counted[Kind.ARCHIVE] == 0
    room[owner] = offer(owner, archive=0)
    scheduler.count_ready(s, other, (), counted, aff, None, 2.0, room)
    assert counted[Kind.ARCHIVE] == 4


def test_a_tag_nobody_serves_waits() -> None:
    s = shard()
    s.apply(Submit(1.0, (item(1, data=b"tag=lonely"), item(2))))
    got = plan_for(s, ["a"], agents(("a", ("other",))), None)
    assert [s.actions[i].fid.oid for i in got["a"]] == [2]
    assert s.actions[next(i for i, a in s.actions.items() if a.tag == "lonely")].state == State.WAITING


def test_archives_of_a_tag_are_held_until_their_batch_is_full() -> None:
    s = shard()
    set_policy(s, "batching: {size: 10, idle: 30, max_wait: 600}")
    out = scheduler.Outlook()
    aff = agents(("a", ("t",)), ("b", ("t",)))
    s.apply(Submit(1.0, tuple(item(n, data=b"tag=t") for n in range(1, 10))))
    assert plan_for(s, ["a", "b"], aff, out, now=2.0) == {}  # 9 of 10: held
    s.apply(Submit(2.0, (item(10, data=b"tag=t"),)))
    got = plan_for(s, ["a", "b"], aff, out, now=3.0, archive=4)
    [(agent, ids)] = got.items()  # one agent gets the batch
    assert len(ids) == 4  # as many as its credits allow
    # the batch stays open until its tag has nothing ready left
    got = plan_for(s, ["a", "b"], aff, out, now=4.0)
    assert list(got) == [agent] and len(got[agent]) == 6
    # the next batch gathers again
    s.apply(Submit(5.0, (item(11, data=b"tag=t"),)))
    assert plan_for(s, ["a", "b"], aff, out, now=6.0) == {}


def test_a_batch_also_goes_when_idle_or_too_old() -> None:
    s = shard()
    set_policy(s, "batching: {size: 100, idle: 5, max_wait: 20}")
    out = scheduler.Outlook()
    aff = agents(("a", ("t",)))
    s.apply(Submit(1.0, (item(1, data=b"tag=t"),)))
    assert plan_for(s, ["a"], aff, out, now=5.9) == {}
    assert len(plan_for(s, ["a"], aff, out, now=6.0)["a"]) == 1  # idle 5 s
    # a steady trickle never idles: the oldest's max_wait ends the wait
    for t in range(10, 31, 2):
        s.apply(Submit(float(t), (item(100 + t, data=b"tag=t"),)))
        got = plan_for(s, ["a"], aff, out, now=float(t) + 1)
        if t + 1 < 30:
            assert got == {}, t
    assert got and len(got["a"]) == 11


def test_untagged_archives_are_never_held() -> None:
    s = shard()
    set_policy(s, "batching: {size: 100}")
    s.apply(Submit(1.0, (item(1),)))
    assert len(plan_for(s, ["a"], agents(("a", ())), scheduler.Outlook())["a"]) == 1


def tape_item(n: int, volume: str, position: int) -> Item:
    return item(n, Kind.RESTORE, data=f"volume={volume},position={position}".encode())


def test_restores_of_a_volume_go_in_position_order_to_one_agent() -> None:
    s = shard()
    s.apply(Submit(1.0, tuple(tape_item(n, "V1", (n * 7919) % 1000) for n in range(1, 51))))
    got = plan_for(s, ["a", "b"], agents(("a", ()), ("b", ())), scheduler.Outlook(), restore=100)
    [(agent, ids)] = got.items()
    positions = [s.actions[i].position for i in ids]
    assert positions == sorted(positions) and len(ids) == 50


def test_an_agent_reads_one_volume_at_a_time() -> None:
    """Four volumes, one agent: FIFO would switch volume at almost every
    restore; here it reads each volume to its end before the next, oldest
    volume first."""
    s = shard()
    vols = ["V1", "V2", "V3", "V4"]
    for n in range(1, 81):
        s.apply(Submit(1.0 + n / 1000, (tape_item(n, vols[n % 4], n),)))
    out = scheduler.Outlook()
    aff = agents(("a", ()))
    seq: list[str] = []
    now = 2.0
    while True:
        got = plan_for(s, ["a"], aff, out, now=now, restore=3)
        if not got:
            break
        seq += [s.actions[i].volume for i in got["a"]]
        for i in got["a"]:  # they end: room for the next
            a = s.actions[i]
            s.apply(Complete(now, (Completion(a.id, a.attempt, 0),), "a"))
        now += 1.0
    switches = sum(1 for x, y in zip(seq, seq[1:], strict=False) if x != y)
    assert len(seq) == 80 and switches == 3, seq
    assert seq[0] == "V2"  # its oldest restore (action 1) is the oldest of all


def test_a_mounted_volume_gives_way_after_max_mount_when_others_wait() -> None:
    s = shard()
    set_policy(s, "tape: {max_mount: 10}\npriorities: {starvation_after: 0}")
    s.apply(Submit(1.0, (tape_item(1, "V1", 1), tape_item(2, "V2", 1))))
    out = scheduler.Outlook()
    aff = agents(("a", ()))
    assert [s.actions[i].volume for i in plan_for(s, ["a"], aff, out, now=2.0, restore=1)["a"]] == ["V1"]
    for t in range(3, 12):  # V1 keeps getting work
        s.apply(Submit(float(t), (tape_item(100 + t, "V1", t),)))
        got = plan_for(s, ["a"], aff, out, now=float(t), restore=1)
        assert [s.actions[i].volume for i in got["a"]] == ["V1"], t
    got = plan_for(s, ["a"], aff, out, now=12.5, restore=1)
    assert [s.actions[i].volume for i in got["a"]] == ["V2"]


def test_volume_restores_keep_the_invariants_and_snapshots() -> None:
    s = shard()
    s.apply(Submit(1.0, tuple(tape_item(n, f"V{n % 3}", 100 - n) for n in range(1, 31))))
    s.check_invariants()
    victim = next(iter(s.actions))
    from coordinator.state import Cancel
    s.apply(Cancel(1.5, (victim,)))
    s.check_invariants()
    head, actions = s.export_parts()
    loaded = ShardState.import_parts(pickle.loads(pickle.dumps(head)), [actions])
    loaded.check_invariants()
    a = next(x for x in loaded.actions.values() if x.state == State.WAITING)
    assert loaded.queue_position(a) is not None


def test_the_backlog_hint_counts_only_what_the_agent_may_be_given() -> None:
    """An agent is told of work only when it could get it: not another
    agent's tag, not a batch still gathering (its credits would wait here
    for nothing)."""
    s = shard()
    set_policy(s, "batching: {size: 100}")
    s.apply(Submit(1.0, (item(1, data=b"tag=mine"), item(2, data=b"tag=theirs"), item(3),
                         item(4, Kind.RESTORE, data=b"tag=mine"))))
    aff = agents(("a", ("mine",)), ("b", ("theirs",)))
    out = scheduler.Outlook()
    out.look([s], 2.0)
    counts = {k: 0 for k in Kind}
    scheduler.count_ready(s, "a", (), counts, aff, out)
    assert counts == {Kind.ARCHIVE: 1, Kind.RESTORE: 1, Kind.REMOVE: 0}  # item 3; item 1's batch gathers


def test_two_leaders_agree_on_the_volume_an_agent_reads() -> None:
    """Shard 0 (led by replica 1) holds volume V's restores, shard 1 (led
    by replica 2) volume W's. Whatever each replica gave the agent last
    (its own memory), both decide from the replicated state: the agent
    gets V (the oldest), replica 2 gives it nothing of W until no V is
    left waiting, then W. The agent never reads two tapes at once, and
    nothing stalls."""
    s0 = shard()
    s1 = ShardState(ShardConfig(shard=1, archive_ids=frozenset({1, 2})))
    s0.apply(Submit(1.0, tuple(tape_item(n, "V", n) for n in range(1, 8))))
    s1.apply(Submit(1.5, tuple(tape_item(n, "W", n) for n in range(1, 7))))
    aff = agents(("a", ()))
    r1, r2 = scheduler.Outlook(mounts={"a": ("W", 0.0)}), scheduler.Outlook(mounts={"a": ("V", 0.0)})

    def round_(now: float) -> tuple[list[str], list[str]]:
        got = []
        for out, state in ((r1, s0), (r2, s1)):
            out.look([s0, s1], now)
            planned = scheduler.plan(state, [offer("a", restore=2)], now, None, aff, out)
            state.apply(AssignRound(now, planned))
            got.append([state.actions[i].volume for _a, ids in planned for i in ids])
        return got[0], got[1]

    def finish(now: float) -> None:
        for state in (s0, s1):
            for a in state.held_by("a"):
                state.apply(Complete(now, (Completion(a.id, a.attempt, 0),), "a"))

    assert round_(2.0) == (["V", "V"], [])  # idle: replica 1 gives what it has; replica 2 holds W back
    assert round_(3.0) == (["V", "V"], [])  # reading V (it runs V): W waits
    finish(3.5)
    assert round_(4.0) == (["V", "V"], [])
    finish(4.5)
    # the last of V goes; nothing of V is left waiting: the next volume
    assert round_(5.0) == (["V"], ["W", "W"])
    finish(5.5)
    assert round_(6.0) == ([], ["W", "W"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Kind.ARCHIVE, Kind.RESTORE, Kind.REMOVE]), st.integers(-3, 3),
                          st.integers(1, 2), st.sampled_from(["", "t1"])), min_size=1, max_size=40),
       st.integers(1, 6), st.integers(0, 6))
def test_the_merged_pick_orders_like_the_general_one(specs: list[tuple[Kind, int, int, str]], archive: int,
                                                     restore: int) -> None:
    """Without limits, fair share, batches or starving actions, pick merges
    the queues through a heap; an empty Budget forces the general loop on
    the same state: the same actions in the same order."""
    s = shard()
    s.apply(Submit(1.0, tuple(item(n, kind, priority=prio, archive_id=aid, data=f"tag={tag}".encode() if tag else b"")
                              for n, (kind, prio, aid, tag) in enumerate(specs, start=1))))
    credits = {Kind.ARCHIVE: archive, Kind.RESTORE: restore, Kind.REMOVE: 2}
    merged = scheduler.pick(s, (), dict(credits), "a", (), 5.0)
    general = scheduler.pick(s, (), dict(credits), "a", (), 5.0, scheduler.Budget())
    assert merged == general


def test_a_replica_with_credits_but_none_of_the_mounted_volume_gives_its_own() -> None:
    """The agent reads V, whose restores wait on shard 0 (led by replica
    1); replica 2 leads shard 1, which holds only W. The agent's credits
    at replica 2 never wait idle: replica 2 gives W (one switch) rather
    than nothing, and says so in its backlog hint; replica 1 keeps giving
    V only."""
    s0 = shard()
    s1 = ShardState(ShardConfig(shard=1, archive_ids=frozenset({1, 2})))
    s0.apply(Submit(1.0, tuple(tape_item(n, "V", n) for n in range(1, 5))))
    s1.apply(Submit(1.5, tuple(tape_item(n, "W", n) for n in range(1, 3))))
    aff = agents(("a", ()))
    r1, r2 = scheduler.Outlook(), scheduler.Outlook()
    r1.look([s0, s1], 2.0, led={0})
    planned = scheduler.plan(s0, [offer("a", restore=1)], 2.0, None, aff, r1)
    s0.apply(AssignRound(2.0, planned))
    assert [s0.actions[i].volume for _a, ids in planned for i in ids] == ["V"]
    r2.look([s0, s1], 2.5, led={1})
    counts = {k: 0 for k in Kind}
    scheduler.count_ready(s1, "a", (), counts, aff, r2, 2.5)
    assert counts[Kind.RESTORE] == 2
    planned = scheduler.plan(s1, [offer("a", restore=2)], 2.5, None, aff, r2)
    assert [s1.actions[i].volume for _a, ids in planned for i in ids] == ["W", "W"]
    # the agent now reads W (its last tape restore): replica 1, which has
    # a W restore too, follows it: its hint and its pick are W only
    s1.apply(AssignRound(2.5, planned))
    s0.apply(Submit(2.6, (tape_item(50, "W", 9),)))
    r1.look([s0, s1], 3.0, led={0})
    counts = {k: 0 for k in Kind}
    scheduler.count_ready(s0, "a", (), counts, aff, r1, 3.0)
    assert counts[Kind.RESTORE] == 1
    planned = scheduler.plan(s0, [offer("a", restore=5)], 3.0, None, aff, r1)
    assert [s0.actions[i].volume for _a, ids in planned for i in ids] == ["W"]


class _Session:
    def __init__(self, agent: str, restore: int) -> None:
        self.agent_id, self.archive_ids, self._restore = agent, (), restore

    def usable(self) -> dict[Kind, int]:
        return {Kind.ARCHIVE: 0, Kind.RESTORE: self._restore, Kind.REMOVE: 0}


def test_a_replica_gives_a_volume_in_position_order_across_the_shards_it_leads() -> None:
    """One volume's files spread over three shards (by FID) that one
    replica leads; the agent has 4 slots. Each round gives it the 4 lowest
    positions over the three shards together, not the first shard's 4:
    the tape only moves forward, whichever shard goes first in turn."""
    from contextlib import nullcontext
    states = [ShardState(ShardConfig(shard=k, archive_ids=frozenset({1, 2}))) for k in range(3)]
    positions = list(range(0, 600, 10))
    for n, position in enumerate(positions, start=1):
        states[(n * 7) % 3].apply(Submit(1.0, (tape_item(n, "V", position),)))
    aff = agents(("a", ()))
    out = scheduler.Outlook()
    order: list[int] = []
    for turn in range(100):
        now = 2.0 + turn
        out.look(states, now)
        _sessions, planned = scheduler.plan_round(turn, [_Session("a", 4)], states, nullcontext, 256, now, None,
                                                  aff, out)
        if not planned:
            break
        got = []
        for state, assignments in planned:
            state.apply(AssignRound(now, assignments))
            got += [(state, state.actions[i]) for _a, ids in assignments for i in ids]
        assert len(got) == 4 or len(order) + len(got) == len(positions)
        order += sorted(a.position for _s, a in got)
        for state, a in got:  # they end: room for the next 4
            state.apply(Complete(now, (Completion(a.id, a.attempt, 0),), "a"))
    assert order == positions
