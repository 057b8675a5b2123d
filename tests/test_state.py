"""Pure tests of the shard state machine and the scheduler. Every step goes
through ``step()``, which checks every invariant after the command."""

from __future__ import annotations

import errno as E

import pytest

from coordinator import scheduler
from coordinator.state import (
    TRANSITIONS,
    AgentLost,
    Assign,
    Assigned,
    Cancel,
    CancelOutcome,
    Changed,
    Complete,
    Completion,
    DrainAgent,
    Ended,
    Ev,
    FidTarget,
    FirstStart,
    IllegalTransition,
    Item,
    Kind,
    Outcome,
    Progress,
    ProgressReport,
    Reclaim,
    Requester,
    Requeued,
    SendCancel,
    SetControl,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid
from hsm.hsmflags import HS, HSM_FORCE_ACTION

FS = "lustre1"


def fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def item(n: int, kind: Kind = Kind.ARCHIVE, **kw: object) -> Item:
    kw.setdefault("requester", Requester("test", cookie=n))
    return Item(FS, fid(n), kind, **kw)  # type: ignore[arg-type]


class Harness:
    def __init__(self, **cfg: object) -> None:
        self.state = ShardState(ShardConfig(**cfg))  # type: ignore[arg-type]
        self.now = 1000.0

    def step(self, cmd):  # type: ignore[no-untyped-def]
        res = self.state.apply(cmd)
        self.state.check_invariants()
        return res

    def submit(self, *items: Item):  # type: ignore[no-untyped-def]
        self.now += 1
        return self.step(Submit(self.now, tuple(items))).replies

    def schedule(self, agent: str, archive=(), archive_ids=(), restore=0, remove=0):  # type: ignore[no-untyped-def]
        credits = {Kind.ARCHIVE: archive if isinstance(archive, int) else 0, Kind.RESTORE: restore, Kind.REMOVE: remove}
        ids = scheduler.pick(self.state, archive_ids, credits, agent)
        self.now += 1
        res = self.step(Assign(self.now, agent, tuple(ids)))
        return [(e.action_id, e.attempt) for e in res.effects if isinstance(e, Assigned)]

    def done(self, action_id: int, attempt: int, errno: int = 0, retry: bool = False):  # type: ignore[no-untyped-def]
        self.now += 1
        return self.step(Complete(self.now, (Completion(action_id, attempt, errno, "msg", retry),)))

    def cancel(self, *ids: int, **kw: object):  # type: ignore[no-untyped-def]
        self.now += 1
        return self.step(Cancel(self.now, tuple(ids), **kw))  # type: ignore[arg-type]

    def st(self, action_id: int) -> State:
        a = self.state.get(action_id)
        assert a is not None
        return a.state


def test_transition_table_is_the_documented_one() -> None:
    assert TRANSITIONS[(State.WAITING, Ev.ASSIGN)] is State.STARTED
    assert TRANSITIONS[(State.CANCELING, Ev.SUCCEED)] is State.SUCCEEDED
    for s in State:
        if s.terminal:
            assert not any(k[0] == s for k in TRANSITIONS), "terminal states are final"


def test_submit_creates_and_ids_encode_shard() -> None:
    h = Harness(shard=7)
    r = h.submit(item(1), item(2))
    assert [x.outcome for x in r] == [Outcome.CREATED, Outcome.CREATED]
    assert r[0].action_id % 1000 == 7 and r[1].action_id > r[0].action_id
    assert h.st(r[0].action_id) is State.WAITING


def test_dedup_restores_from_many_initiators_make_one_action() -> None:
    h = Harness()
    reqs = [item(5, Kind.RESTORE, requester=Requester(f"oss{i}", cookie=100 + i)) for i in range(4)]
    r = h.submit(*reqs)
    assert [x.outcome for x in r] == [Outcome.CREATED] + [Outcome.JOINED] * 3
    assert len({x.action_id for x in r}) == 1
    a = h.state.get(r[0].action_id)
    assert a is not None and [q.initiator for q in a.requesters] == ["oss0", "oss1", "oss2", "oss3"]
    # a running restore still takes new requesters
    [(aid, att)] = h.schedule("a1", restore=5)
    r2 = h.submit(item(5, Kind.RESTORE, requester=Requester("late")))
    assert r2[0].outcome is Outcome.JOINED and r2[0].action_id == aid
    res = h.done(aid, att)
    assert Changed(aid) in res.effects
    assert len(h.state.get(aid).requesters) == 5  # type: ignore[union-attr]


def test_running_archive_is_not_joined() -> None:
    h = Harness()
    [a1] = h.submit(item(1))
    h.schedule("a1", archive=1)
    [a2] = h.submit(item(1))
    assert a2.outcome is Outcome.CREATED and a2.action_id != a1.action_id
    # the second archive waits behind the first: per-FID order
    assert h.schedule("a2", archive=5) == []
    h.done(a1.action_id, 1)
    assert h.schedule("a2", archive=5) == [(a2.action_id, 1)]


def test_different_archive_ids_are_not_merged() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    r = h.submit(item(1, archive_id=1), item(1, archive_id=2))
    assert [x.outcome for x in r] == [Outcome.CREATED, Outcome.CREATED]


def test_idempotency_key_never_creates_a_second_action() -> None:
    h = Harness()
    first = h.submit(item(1, key="k1"), item(2, key="k2"))
    again = h.submit(item(1, key="k1"), item(2, key="k2"))
    assert first == again
    assert len(h.state.actions) == 2
    a = h.state.get(first[0].action_id)
    assert a is not None and len(a.requesters) == 1


def test_needed_and_allowed_rules() -> None:
    h = Harness()
    archived = int(HS.EXISTS | HS.ARCHIVED)
    r = h.submit(
        item(1, Kind.ARCHIVE, hsm_flags=archived, hsm_archive_id=1),  # already archived: not needed
        item(2, Kind.RESTORE, hsm_flags=0),  # not released: not needed
        item(3, Kind.RESTORE, hsm_flags=int(HS.RELEASED)),  # released but not archived: EPERM
        item(4, Kind.ARCHIVE, hsm_flags=int(HS.NOARCHIVE)),
        # forced: "needed", then refused as not compatible (mdt_hsm_cdt_client.c:
        # hsm_action_is_needed, then mdt_hsm_is_action_compat -> EPERM)
        item(5, Kind.ARCHIVE, hsm_flags=archived, hsm_archive_id=1, flags=HSM_FORCE_ACTION),
        item(6, Kind.REMOVE, hsm_flags=int(HS.EXISTS | HS.ARCHIVED | HS.RELEASED), hsm_archive_id=1),
        item(7, Kind.ARCHIVE, hsm_flags=archived | int(HS.DIRTY), hsm_archive_id=1, flags=HSM_FORCE_ACTION),
    )
    assert [x.outcome for x in r] == [
        Outcome.NOT_NEEDED,
        Outcome.NOT_NEEDED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.CREATED,
    ]
    assert r[2].errno == E.EPERM and r[3].errno == E.EPERM and r[4].errno == E.EPERM
    assert len(h.state.actions) == 1


def test_archive_id_resolution_and_unknown_archive() -> None:
    h = Harness(archive_ids=frozenset({1, 3}), default_archive_id=1)
    r = h.submit(
        item(1),  # default
        item(2, hsm_flags=0, hsm_archive_id=3),  # the file's
        item(3, archive_id=3),
        item(4, archive_id=9),
    )
    assert [h.state.get(x.action_id).archive_id for x in r[:3]] == [1, 3, 3]  # type: ignore[union-attr]
    assert r[3].outcome is Outcome.REJECTED and r[3].errno == E.EINVAL


def test_scheduler_class_order_and_fifo() -> None:
    h = Harness()
    arch = h.submit(item(1), item(2))
    rem = h.submit(item(3, Kind.REMOVE))
    rest = h.submit(item(4, Kind.RESTORE), item(5, Kind.RESTORE))
    ids = scheduler.pick(h.state, (), {Kind.ARCHIVE: 9, Kind.RESTORE: 9, Kind.REMOVE: 9})
    assert ids == [rest[0].action_id, rest[1].action_id, rem[0].action_id, arch[0].action_id, arch[1].action_id]
    # credits per kind are honoured
    got = h.schedule("a", archive=1, restore=1)
    assert [i for i, _ in got] == [rest[0].action_id, arch[0].action_id]


def test_scheduler_archive_id_matching() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    r = h.submit(item(1, archive_id=2), item(2, archive_id=1))
    assert h.schedule("only1", archive=5, archive_ids=(1,)) == [(r[1].action_id, 1)]
    assert h.schedule("only1", archive=5, archive_ids=(1,)) == []
    assert h.schedule("any", archive=5, archive_ids=(0,)) == [(r[0].action_id, 1)]


def test_scheduler_merges_archive_ids_in_fifo_order() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    r = h.submit(item(1, archive_id=2), item(2, archive_id=1), item(3, archive_id=2))
    assert scheduler.pick(h.state, (), {Kind.ARCHIVE: 3}) == [x.action_id for x in r]


def test_one_started_action_per_fid_and_fid_order() -> None:
    h = Harness()
    a, b, c = h.submit(item(1, Kind.ARCHIVE), item(1, Kind.REMOVE), item(1, Kind.RESTORE))
    got = h.schedule("x", archive=5, restore=5, remove=5)
    assert got == [(a.action_id, 1)]  # only the head of the FID may run
    h.done(a.action_id, 1)
    assert h.schedule("x", archive=5, restore=5, remove=5) == [(b.action_id, 1)]
    h.cancel(c.action_id)
    assert h.st(c.action_id) is State.CANCELED
    h.done(b.action_id, 1)
    assert h.state.fid_queue == {}


def test_cancel_waiting_is_immediate() -> None:
    h = Harness()
    [r] = h.submit(item(1))
    res = h.cancel(r.action_id)
    assert res.replies[0].outcome is CancelOutcome.DONE
    assert h.st(r.action_id) is State.CANCELED
    assert h.state.get(r.action_id).errno == E.ECANCELED  # type: ignore[union-attr]
    assert not any(isinstance(e, SendCancel) for e in res.effects)
    assert h.schedule("a", archive=5) == []


def test_cancel_started_goes_to_its_own_agent_even_when_slots_are_full() -> None:
    h = Harness()
    r = h.submit(item(1), item(2), item(3))
    h.schedule("agentA", archive=1)
    h.schedule("agentB", archive=1)
    h.schedule("agentC", archive=1)
    res = h.cancel(r[2].action_id, r[0].action_id, r[1].action_id)
    sends = {(e.agent, e.action_id) for e in res.effects if isinstance(e, SendCancel)}
    assert sends == {
        ("agentA", r[0].action_id),
        ("agentB", r[1].action_id),
        ("agentC", r[2].action_id),
    }
    assert all(h.st(x.action_id) is State.CANCELING for x in r)
    # a second cancel changes nothing and sends nothing
    again = h.cancel(r[0].action_id)
    assert again.replies[0].outcome is CancelOutcome.ALREADY_ENDED
    assert not any(isinstance(e, SendCancel) for e in again.effects)


def test_success_racing_a_cancel_stays_a_success() -> None:
    h = Harness()
    [r] = h.submit(item(1))
    [(aid, att)] = h.schedule("a", archive=1)
    h.cancel(aid)
    h.done(aid, att, errno=0)
    assert h.st(aid) is State.SUCCEEDED


def test_canceling_then_agent_reports_ecanceled() -> None:
    h = Harness()
    h.submit(item(1))
    [(aid, att)] = h.schedule("a", archive=1)
    h.cancel(aid)
    h.done(aid, att, errno=E.ECANCELED)
    assert h.st(aid) is State.CANCELED


def test_cancel_by_fid_and_all() -> None:
    h = Harness()
    r = h.submit(item(1, Kind.ARCHIVE), item(1, Kind.REMOVE), item(2, Kind.RESTORE), item(3))
    res = h.cancel(fids=(FidTarget(FS, fid(1), Kind.REMOVE),))
    assert [x.action_id for x in res.replies] == [r[1].action_id]
    res = h.cancel(fids=(FidTarget("", fid(1)),))  # any fsname, every kind
    assert [x.action_id for x in res.replies] == [r[0].action_id]
    h.schedule("a", restore=1)
    res = h.cancel(all=True)
    outcomes = {x.action_id: x.outcome for x in res.replies}
    assert outcomes == {r[2].action_id: CancelOutcome.SENT, r[3].action_id: CancelOutcome.DONE}


def test_cancel_unknown_id() -> None:
    h = Harness()
    res = h.cancel(424242)
    assert res.replies[0].outcome is CancelOutcome.NOT_FOUND


def test_stale_completion_and_progress_are_ignored() -> None:
    h = Harness()
    h.submit(item(1))
    [(aid, att)] = h.schedule("a", archive=1)
    h.now += 1
    h.step(AgentLost(h.now, "a"))
    assert h.st(aid) is State.WAITING
    [(aid2, att2)] = h.schedule("b", archive=1)
    assert (aid2, att2) == (aid, att + 1)
    res = h.done(aid, att)  # the first attempt, late
    assert res.replies == [False] and h.st(aid) is State.STARTED
    h.now += 1
    h.step(Progress(h.now, (ProgressReport(aid, att, 10, 100), ProgressReport(aid, att2, 50, 100))))
    assert h.state.get(aid).bytes_done == 50  # type: ignore[union-attr]
    h.done(aid, att2)
    assert h.st(aid) is State.SUCCEEDED


def test_agent_lost_requeues_in_front_and_fails_after_max_attempts() -> None:
    h = Harness(max_attempts=2)
    r = h.submit(item(1), item(2))
    [(a1, _)] = h.schedule("a", archive=1)
    h.now += 1
    h.step(AgentLost(h.now, "a"))
    # the requeued action goes before the one that never started
    assert h.schedule("b", archive=1) == [(a1, 2)]
    h.now += 1
    h.step(AgentLost(h.now, "b"))
    a = h.state.get(a1)
    assert a is not None and a.state is State.FAILED and a.errno == E.ETIMEDOUT
    assert h.schedule("c", archive=5) == [(r[1].action_id, 1)]


def test_agent_lost_while_canceling_cancels() -> None:
    h = Harness()
    h.submit(item(1))
    [(aid, _)] = h.schedule("a", archive=1)
    h.cancel(aid)
    h.now += 1
    h.step(AgentLost(h.now, "a"))
    assert h.st(aid) is State.CANCELED


def test_retryable_error_requeues_and_hard_error_fails() -> None:
    h = Harness(max_attempts=3)
    r = h.submit(item(1), item(2))
    got = h.schedule("a", archive=2)
    h.done(got[0][0], 1, errno=E.ENOSPC, retry=True)
    h.done(got[1][0], 1, errno=E.ENOENT)
    assert h.st(r[0].action_id) is State.WAITING
    a = h.state.get(r[1].action_id)
    assert a is not None and a.state is State.FAILED and a.errno == E.ENOENT


def test_illegal_transition_raises_typed_error() -> None:
    h = Harness()
    [r] = h.submit(item(1))
    a = h.state.get(r.action_id)
    assert a is not None
    with pytest.raises(IllegalTransition):
        h.state._transition(a, Ev.SUCCEED)


def test_terminal_actions_are_pruned_with_their_keys() -> None:
    h = Harness(max_terminal=3)
    ids = []
    for n in range(5):
        [r] = h.submit(item(n, key=f"k{n}"))
        ids.append(r.action_id)
        h.cancel(r.action_id)
    assert len(h.state.actions) == 3
    assert "k0" not in h.state.keys and "k4" in h.state.keys


def test_counts_for_status() -> None:
    h = Harness()
    h.submit(item(1), item(2), item(3, Kind.RESTORE))
    h.schedule("a", archive=1)
    assert h.state.counts == {
        (Kind.ARCHIVE, State.WAITING): 1,
        (Kind.ARCHIVE, State.STARTED): 1,
        (Kind.RESTORE, State.WAITING): 1,
    }


def test_scheduling_cost_does_not_depend_on_queue_length() -> None:
    """The scheduler touches only what it picks: count the queue elements it
    reads with a large and a small queue."""
    touched = []

    class CountingDict(dict):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            for k in super().__iter__():
                touched.append(k)
                yield k

    for n in (10, 20_000):
        h = ShardState()
        h.apply(Submit(1.0, tuple(item(i) for i in range(n))))
        for q in h.ready.values():
            q.front, q.back = CountingDict(q.front), CountingDict(q.back)
        touched.clear()
        got = scheduler.pick(h, (), {Kind.ARCHIVE: 5})
        assert len(got) == 5
        assert len(touched) <= 5


def test_stuck_action_is_reclaimed_through_its_agent_then_requeued() -> None:
    h = Harness(progress_timeout=60.0, max_attempts=2)
    [r] = h.submit(item(1))
    [(aid, att)] = h.schedule("a", archive=1)
    a = h.state.get(aid)
    assert a is not None
    assert h.state.stale(a.started + 59) == []
    assert h.state.stale(a.started + 60) == [aid]
    res = h.step(Reclaim(a.started + 60, (aid,)))
    assert SendCancel("a", aid, att) in res.effects
    assert a.state is State.CANCELING and "no progress" in a.error
    assert h.schedule("b", archive=1) == [], "never on a second agent while the first may still run"
    h.done(aid, att, errno=E.ECANCELED)  # the agent stopped it
    assert a.state is State.WAITING and a.errno == E.ETIMEDOUT
    [(aid2, att2)] = h.schedule("b", archive=1)
    assert (aid2, att2) == (aid, 2)
    h.step(Reclaim(h.now + 1000, (aid,)))
    h.now += 1000
    h.step(AgentLost(h.now + 1, "b"))  # stuck again, and its agent is gone: attempts used up
    assert a.state is State.FAILED and a.errno == E.ETIMEDOUT


def test_progress_keeps_a_slow_transfer_alive() -> None:
    h = Harness(progress_timeout=60.0)
    h.submit(item(1))
    [(aid, att)] = h.schedule("a", archive=1)
    a = h.state.get(aid)
    assert a is not None
    for k in range(1, 6):  # 5 minutes, moving a little every 50 s
        h.step(Progress(a.started + 50 * k, (ProgressReport(aid, att, 1000 * k, 10_000),)))
    assert h.state.stale(a.started + 290) == []
    h.step(Reclaim(a.started + 290, (aid,)))  # a leader with a stale view: re-checked at apply
    assert a.state is State.STARTED
    # the same byte count again is not progress
    h.step(Progress(a.started + 300, (ProgressReport(aid, att, 5000, 10_000),)))
    assert h.state.stale(a.started + 250 + 60) == [aid]


def test_success_racing_a_reclaim_stays_a_success_and_user_cancel_wins() -> None:
    h = Harness(progress_timeout=10.0)
    r = h.submit(item(1), item(2))
    got = h.schedule("a", archive=2)
    t = h.now + 100
    h.step(Reclaim(t, tuple(i for i, _ in got)))
    h.done(got[0][0], 1, errno=0)
    assert h.st(got[0][0]) is State.SUCCEEDED
    h.cancel(got[1][0])  # an admin cancel while it is being reclaimed
    h.done(got[1][0], 1, errno=E.ECANCELED)
    assert h.st(got[1][0]) is State.CANCELED
    assert {x.action_id for x in r} == {i for i, _ in got}


def test_control_modes() -> None:
    h = Harness()
    [w] = h.submit(item(1))
    h.step(SetControl(h.now, "disabled"))
    assert h.schedule("a", archive=5) == [], "disabled: nothing is dispatched"
    [q] = h.submit(item(2))
    assert q.outcome is Outcome.CREATED, "disabled: requests are still accepted and queued"
    h.step(SetControl(h.now, "enabled"))
    got = h.schedule("a", archive=5)
    assert [i for i, _ in got] == [w.action_id, q.action_id]
    h.step(SetControl(h.now, "shutdown"))
    [r] = h.submit(item(3))
    assert r.outcome is Outcome.REJECTED and r.errno == E.ESHUTDOWN
    h.done(got[0][0], 1)  # running actions still finish
    assert h.st(got[0][0]) is State.SUCCEEDED
    # an Assign the leader picked before the mode changed is refused at apply
    h.step(SetControl(h.now, "enabled"))
    [x] = h.submit(item(4))
    ids = scheduler.pick(h.state, (), {Kind.ARCHIVE: 1})
    h.step(SetControl(h.now, "disabled"))
    h.step(Assign(h.now, "a", tuple(ids)))
    assert h.st(x.action_id) is State.WAITING
    with pytest.raises(ValueError):
        h.state.apply(SetControl(h.now, "paused"))


def test_drained_agent_gets_no_work_and_its_running_actions_finish() -> None:
    h = Harness()
    r = h.submit(item(1), item(2), item(3))
    got = h.schedule("a", archive=1)
    h.step(DrainAgent(h.now, "a"))
    assert h.schedule("a", archive=5) == [], "a drained agent is given nothing"
    # an Assign the leader picked before the drain is refused at apply
    h.step(Assign(h.now, "a", (r[1].action_id,)))
    assert h.st(r[1].action_id) is State.WAITING
    assert [i for i, _ in h.schedule("b", archive=5)] == [r[1].action_id, r[2].action_id], "others still get work"
    h.done(got[0][0], 1)
    assert h.st(got[0][0]) is State.SUCCEEDED, "what the drained agent runs finishes"
    assert "a" in h.state.drained, "the drain outlives the agent's last action"
    h.step(DrainAgent(h.now, "a", drain=False))
    [w] = h.submit(item(4))
    assert h.schedule("a", archive=5) == [(w.action_id, 1)]
    with pytest.raises(ValueError):
        h.state.apply(DrainAgent(h.now, ""))


def test_handback_does_not_use_up_attempts() -> None:
    h = Harness()  # max_attempts 3
    [r] = h.submit(item(1))
    for attempt in range(1, 6):
        [(i, att)] = h.schedule("a", archive=1)
        assert att == attempt
        h.now += 1
        h.step(Complete(h.now, (Completion(i, att, E.ECANCELED, "agent stopping", True, handback=True),)))
        assert h.st(i) is State.WAITING, "an agent that stops gives its actions back at no cost"
    a = h.state.get(r.action_id)
    assert a is not None and a.handed_back == 5
    for _ in range(3):
        [(i, att)] = h.schedule("a", archive=1)
        h.done(i, att, errno=E.EIO, retry=True)
    assert h.st(r.action_id) is State.FAILED, "real failures still count: max_attempts of them fail it"


def test_a_join_gives_a_waiting_action_the_latest_data_version() -> None:
    h = Harness()
    [r] = h.submit(item(1, data_version=5))
    a = h.state.get(r.action_id)
    assert a is not None and a.data_version == 5
    [j] = h.submit(item(1, requester=Requester("later"), data_version=7))
    assert (j.outcome, j.action_id) == (Outcome.JOINED, r.action_id)
    assert a.data_version == 7, "the latest requester saw the file most recently"
    h.submit(item(1, requester=Requester("unknown")))  # no version: keeps the one it has
    assert a.data_version == 7
    # a started action keeps the version its mover checks (restores join it)
    [rr] = h.submit(item(2, Kind.RESTORE, data_version=3))
    [(rid, _)] = h.schedule("a1", restore=1)
    assert rid == rr.action_id
    [j2] = h.submit(item(2, Kind.RESTORE, requester=Requester("late"), data_version=4))
    assert (j2.outcome, j2.action_id) == (Outcome.JOINED, rid)
    assert h.state.get(rid).data_version == 3  # type: ignore[union-attr]
    # requeued (WAITING again), a join updates it again
    h.step(AgentLost(h.now + 1, "a1"))
    assert h.st(rid) is State.WAITING
    h.submit(item(2, Kind.RESTORE, requester=Requester("later still"), data_version=9))
    assert h.state.get(rid).data_version == 9  # type: ignore[union-attr]


def test_actions_of_a_snapshot_written_before_the_last_slots_load() -> None:
    """Snapshots of older formats hold shorter value tuples: without the
    copies (copies, copies_done, tried), without the scheduling hints (tag,
    volume, position) too, without hsm_ctime as well, and without
    data_version."""
    import pickle

    from coordinator.state import ACTION_FIELDS, _action_from_values

    h = Harness(archive_ids=frozenset({1, 2}))
    [r] = h.submit(item(1, data_version=5, hsm_ctime=77, data=b"tag=t,volume=V1,position=12,copies=2"))
    a = h.state.get(r.action_id)
    assert a is not None
    fn, (values,) = a.__reduce__()
    assert fn is _action_from_values and values == tuple(getattr(a, f) for f in ACTION_FIELDS)
    assert ACTION_FIELDS[-8:] == ("data_version", "hsm_ctime", "tag", "volume", "position", "copies",
                                  "copies_done", "tried"), "new slots go last: older snapshots lack only those"
    assert (a.tag, a.volume, a.position, a.copies) == ("t", "V1", 12, (2,))
    for missing, expect in ((3, (5, 77)), (6, (5, 77)), (7, (5, 0)), (8, (0, 0))):
        old = _action_from_values(values[:-missing])  # as a snapshot of a previous format holds it
        assert (old.data_version, old.hsm_ctime) == expect
        assert (old.copies, old.copies_done, old.tried) == ((), 0, ())
        if missing >= 6:
            assert (old.tag, old.volume, old.position) == ("", "", 0)
        assert [getattr(old, s) for s in ACTION_FIELDS[:-missing]] == list(values[:-missing])
    again = pickle.loads(pickle.dumps(a))
    assert (again.data_version, again.hsm_ctime, again.id, again.volume, again.copies) == (5, 77, a.id, "V1", (2,))
    with pytest.raises(ValueError):
        _action_from_values(values[:-9])


def test_reports_from_an_agent_that_does_not_hold_the_action_are_refused() -> None:
    h = Harness()
    [r] = h.submit(item(1))
    [(action_id, attempt)] = h.schedule("good", archive=1)
    h.now += 1
    h.step(Progress(h.now, (ProgressReport(action_id, attempt, 50, 100),), "evil"))
    res = h.step(Complete(h.now, (Completion(action_id, attempt),), "evil"))
    assert res.replies == [False]
    a = h.state.get(action_id)
    assert a is not None and (a.state, a.bytes_done) == (State.STARTED, 0)
    assert h.step(Complete(h.now, (Completion(action_id, attempt),), "good")).replies == [True]
    assert h.st(action_id) is State.SUCCEEDED


def test_a_completion_journaled_before_reports_named_their_agent_still_applies() -> None:
    import pickle

    h = Harness()
    h.submit(item(1))
    [(action_id, attempt)] = h.schedule("good", archive=1)
    # an entry written by the previous version holds (Complete, (now, completions)):
    # unpickling calls Complete with those two fields
    class Old:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Complete, (h.now, (Completion(action_id, attempt),)))

    old = pickle.loads(pickle.dumps(Old(), protocol=5))
    assert isinstance(old, Complete) and old.agent == ""
    assert h.step(old).replies == [True]


# -- what the leader counts (coordinator/metrics.py): Ended, Requeued, FirstStart


def _counted(res) -> list[object]:  # type: ignore[no-untyped-def]
    return [e for e in res.effects if isinstance(e, Ended | Requeued | FirstStart)]


def test_the_state_says_when_an_action_first_starts_is_requeued_and_ends() -> None:
    h2 = Harness(max_attempts=2)
    (r2,) = h2.submit(item(1))
    h2.now += 9.5  # waits 10.5 s in all
    ids = scheduler.pick(h2.state, (), {Kind.ARCHIVE: 1, Kind.RESTORE: 0, Kind.REMOVE: 0}, "a1")
    h2.now += 1
    assert _counted(h2.step(Assign(h2.now, "a1", tuple(ids)))) == [FirstStart(r2.action_id, Kind.ARCHIVE, 10.5)]
    h2.now += 4
    assert _counted(h2.done(r2.action_id, 1, E.EIO, retry=True)) == [Requeued(r2.action_id, Kind.ARCHIVE, E.EIO)]
    h2.now += 1
    res = h2.step(Assign(h2.now, "a1", (r2.action_id,)))
    assert _counted(res) == [], "a second attempt is not a first start"
    h2.now += 2
    assert _counted(h2.done(r2.action_id, 2)) == [Ended(r2.action_id, Kind.ARCHIVE, State.SUCCEEDED, 0, 3.0)]


def test_an_action_that_ends_without_running_or_after_its_last_attempt_is_counted_once() -> None:
    h = Harness(max_attempts=1)
    (a, b) = h.submit(item(1), item(2))
    assert _counted(h.cancel(a.action_id)) == [Ended(a.action_id, Kind.ARCHIVE, State.CANCELED, E.ECANCELED, -1.0)]
    assert h.schedule("a1", archive=1) == [(b.action_id, 1)]
    h.now += 5
    # its only attempt fails with a retryable error: FAILED, not requeued
    assert _counted(h.done(b.action_id, 1, E.EIO, retry=True)) == [
        Ended(b.action_id, Kind.ARCHIVE, State.FAILED, E.EIO, 6.0)]


def test_counted_effects_do_not_leak_into_the_next_command_or_a_snapshot() -> None:
    h = Harness()
    (a,) = h.submit(item(1))
    h.cancel(a.action_id)
    assert _counted(h.step(SetControl(h.now, "enabled"))) == []
    head, _ = h.state.export_parts()
    assert "_counted" not in head and "events" in head  # the log is stored, the effects of a command are not


# -- a waiting action's place in its queue (hsmctl action), without a scan


def test_a_waiting_action_knows_its_place_in_its_queue() -> None:
    h = Harness(max_attempts=3)
    r = h.submit(*(item(n) for n in range(1, 7)))
    ids = [x.action_id for x in r]
    assert [h.state.queue_position(h.state.actions[i]) for i in ids] == [(k, 6) for k in range(6)]
    h.cancel(ids[2])  # from the middle
    assert h.state.queue_position(h.state.actions[ids[3]]) == (2, 5)
    assert h.schedule("a1", archive=1) == [(ids[0], 1)]
    assert h.state.queue_position(h.state.actions[ids[5]]) == (3, 4)
    h.done(ids[0], 1, E.EIO, retry=True)  # requeued: first in its queue
    assert h.state.queue_position(h.state.actions[ids[0]]) == (0, 5)
    assert h.state.queue_position(h.state.actions[ids[1]]) == (1, 5)
    assert h.state.dispatched == {(Kind.ARCHIVE, 1): 1}
    # behind another action on its file: not in a queue
    (later,) = h.submit(item(1, Kind.RESTORE))
    assert h.state.queue_position(h.state.actions[later.action_id]) is None
    assert h.state.queue_position(h.state.actions[ids[2]]) is None  # canceled


def test_positions_stay_ranks_through_many_removals_from_the_middle_and_a_snapshot() -> None:
    import pickle
    import random

    from coordinator.state import ReadyQueue
    rng = random.Random(5)
    q = ReadyQueue()
    model: list[int] = []
    for i in range(20_000):
        q.add(i)
        model.append(i)
    for _ in range(9_000):  # more than GAPS_RENUMBER from the middle: renumbered on the way
        victim = model.pop(rng.randrange(1, len(model)))
        del q[victim]
    for _ in range(100):
        victim = model.pop(0)
        del q[victim]
    for i in (100_000, 100_001):
        q.add(i, front=True)
        model.insert(i - 100_000, i)
    assert list(q) == model
    assert all(q.position(x) == k for k, x in enumerate(model))
    assert q.position(-1) is None
    loaded = pickle.loads(pickle.dumps(q))
    assert list(loaded) == model and all(loaded.position(x) == k for k, x in enumerate(model) if k % 97 == 0)


def test_a_snapshot_written_before_tickets_loads_with_positions() -> None:
    from coordinator.state import ReadyQueue
    q = ReadyQueue.__new__(ReadyQueue)
    q.__setstate__((None, {"front": {9: None}, "back": {4: None, 7: None}}))
    assert [q.position(i) for i in (9, 4, 7)] == [0, 1, 2]
    q.add(8)
    assert q.position(8) == 3


def test_a_position_is_found_without_walking_the_queue() -> None:
    """hsmctl action asks for positions: never a scan of a long queue."""
    from coordinator.state import ReadyQueue

    walked = []

    class CountingDict(dict):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            for k in super().__iter__():
                walked.append(k)
                yield k

    q = ReadyQueue()
    for i in range(50_000):
        q.add(i)
    for i in range(0, 50_000, 7):
        del q[i]  # from the middle and the head
    q.front, q.back = CountingDict(q.front), CountingDict(q.back)
    assert q.position(49_999) == len(q) - 1 and q.position(1) == 0
    assert walked == []
