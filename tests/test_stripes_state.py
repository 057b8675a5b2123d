"""Striped archives in the shard state (coordinator/state.py with
coordinator/stripes.py): the anchor's report parks the action, its parts
run on several agents (each Done told from the action's own by its wire
attempt), a failed part runs again alone, a lost agent's parts run
elsewhere, the seal ends the action, and a cancel or a restart stops every
part. Every step checks the state's invariants, and a snapshot taken
mid-stripe carries it."""

from __future__ import annotations

import errno as E
import pickle

from coordinator import scheduler
from coordinator.state import (
    AgentLost,
    Assign,
    AssignParts,
    Cancel,
    Complete,
    Completion,
    Item,
    Kind,
    PartAssigned,
    Requester,
    SendCancel,
    SetPolicy,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from coordinator.stripes import Phase, part_of, wire_attempt
from hsm.fid import Fid

FS = "lustre1"
GiB = 1 << 30
POLICY = "settings: {max_attempts: 2}\nstriping: {above: 1G, part_size: 1G, max_parts: 8}\n"


class Shard:
    def __init__(self, policy: str = POLICY) -> None:
        self.state = ShardState(ShardConfig(archive_ids=frozenset({1})))
        self.now = 100.0
        self.step(SetPolicy(self.now, 2, policy, "test"))

    def step(self, cmd):  # type: ignore[no-untyped-def]
        res = self.state.apply(cmd)
        self.state.check_invariants()
        return res

    def tick(self) -> float:
        self.now += 1
        return self.now

    def submit(self, n: int = 1) -> int:
        res = self.step(Submit(self.tick(), (Item(FS, Fid(0x200000400, n, 0), Kind.ARCHIVE,
                                                 requester=Requester("test", cookie=n)),)))
        return int(res.replies[0].action_id)

    def assign(self, agent: str, action_id: int) -> int:
        self.step(Assign(self.tick(), agent, (action_id,)))
        return self.state.actions[action_id].attempt

    def anchor(self, action_id: int, agent: str, size: int, dv: int = 7) -> None:
        attempt = self.assign(agent, action_id)
        copy = ("", dv, size, "", 0, 0, 0o644, "")
        res = self.step(Complete(self.tick(), (Completion(action_id, attempt, copy=copy, anchored=True),), agent))
        assert res.replies == [True]

    def parts(self, action_id: int, free: dict[str, int]) -> list[PartAssigned]:
        runs = self.state.stripes[action_id].choose(free)
        res = self.step(AssignParts(self.tick(), action_id, tuple((r.index, r.agent, r.attempt) for r in runs)))
        return [e for e in res.effects if isinstance(e, PartAssigned)]

    def part_done(self, p: PartAssigned, errno: int = 0, agent: str | None = None, handback: bool = False) -> bool:
        copy = ("", 7, p.length, f"sha256:{p.index:064x}", 0, 0, 0o644, "")
        done = Completion(p.action_id, p.attempt, errno, "boom" if errno else "", errno != 0, p.length, handback,
                          copy if not errno else None)
        res = self.step(Complete(self.tick(), (done,), p.agent if agent is None else agent))
        return bool(res.replies[0])


def test_a_striped_archive_runs_its_parts_on_every_agent_then_is_sealed_and_cataloged() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 4 * GiB)
    act = sh.state.actions[a]
    assert act.state == State.WAITING and sh.state.parked(act) and not any(a in q for q in sh.state.ready.values())
    assert act.error == "striped into 4 parts (anchored on ag1): copying them"  # what hsmctl actions shows
    assert (act.bytes_done, act.bytes_total) == (0, 4 * GiB)
    assert scheduler.pick(sh.state, (), {Kind.ARCHIVE: 10}, "ag2") == []  # parked: not dispatched as a whole
    parts = sh.parts(a, {"ag1": 4, "ag2": 4, "ag3": 4, "ag4": 4})
    assert sorted(p.agent for p in parts) == ["ag1", "ag2", "ag3", "ag4"]
    assert [(p.offset, p.length) for p in sorted(parts, key=lambda p: p.index)] == [(i * GiB, GiB) for i in range(4)]
    assert all(part_of(p.attempt) == (p.index, 1) for p in parts)
    assert sorted(sh.state.parts_held_by("ag3")) == [(a, p.attempt) for p in parts if p.agent == "ag3"]
    for p in parts[:-1]:
        assert sh.part_done(p)
        assert sh.state.parked(act)
    assert sh.part_done(parts[-1])
    assert not sh.state.parked(act) and sh.state.stripes[a].phase == Phase.SEAL
    assert act.bytes_done == 4 * GiB and act.error == "striped: its 4 parts copied, to be sealed"
    # every part done: dispatched again, as the seal, to any agent
    assert scheduler.pick(sh.state, (), {Kind.ARCHIVE: 10}, "ag2") == [a]
    seal = sh.assign("ag2", a)
    assert seal == 2
    copy = ("o/key", 7, 4 * GiB, "sha256:" + "ab" * 32, 0, 0, 0o644, "/f")
    sh.step(Complete(sh.tick(), (Completion(a, seal, copy=copy),), "ag2"))
    assert act.state == State.SUCCEEDED and a not in sh.state.stripes
    (c,) = sh.state.catalog.of(FS, act.fid)
    assert (c.key, c.size, c.data_version) == ("o/key", 4 * GiB, 7)


def test_a_failed_part_runs_again_alone_and_a_done_part_never_again() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 3 * GiB)
    parts = {p.index: p for p in sh.parts(a, {"ag1": 1, "ag2": 1, "ag3": 1})}
    assert sh.part_done(parts[0])
    assert sh.part_done(parts[1], errno=E.EIO)
    again = sh.parts(a, {"ag1": 3, "ag2": 3, "ag3": 3})
    assert [(p.index, part_of(p.attempt)) for p in again] == [(1, (1, 2))]
    assert not sh.part_done(parts[1])  # the failed attempt's late report: stale
    assert not sh.part_done(again[0], agent="ag9")  # another agent's report for it: refused
    assert sh.part_done(again[0]) and sh.part_done(parts[2])
    assert sh.state.stripes[a].phase == Phase.SEAL


def test_a_part_that_uses_its_attempts_restarts_the_archive_and_stops_the_other_parts() -> None:
    sh = Shard()  # max_attempts 2
    a = sh.submit()
    sh.anchor(a, "ag1", 2 * GiB)
    p0, p1 = sorted(sh.parts(a, {"ag1": 1, "ag2": 1}), key=lambda p: p.index)
    assert sh.part_done(p0, errno=E.EIO)
    (p0b,) = sh.parts(a, {"ag3": 1})
    copy = ("", 7, 0, "", 0, 0, 0o644, "")
    res = sh.step(Complete(sh.tick(), (Completion(a, p0b.attempt, E.EIO, "disk", True),), "ag3"))
    assert res.replies == [True]
    stops = [e for e in res.effects if isinstance(e, SendCancel)]
    assert stops == [SendCancel("ag2", a, p1.attempt)]  # the part still running is stopped
    act = sh.state.actions[a]
    assert a not in sh.state.stripes and act.state == State.WAITING and not sh.state.parked(act)
    assert "failed 2 times" in act.error
    # the anchor's attempt counted: its next failure is its last
    sh.anchor(a, "ag1", 2 * GiB)
    q0, _q1 = sorted(sh.parts(a, {"ag1": 1, "ag2": 1}), key=lambda p: p.index)
    sh.part_done(q0, errno=E.EIO)
    (q0b,) = sh.parts(a, {"ag1": 1})
    del copy
    sh.part_done(q0b, errno=E.EIO)
    assert act.state == State.FAILED and act.errno == E.EIO


def test_a_lost_agent_s_parts_run_elsewhere_and_a_given_back_part_uses_no_attempt() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 4 * GiB)
    parts = sh.parts(a, {"ag1": 2, "ag2": 2, "ag4": 1})
    sh.step(AgentLost(sh.tick(), "ag2", "gone"))
    assert sh.state.parts_held_by("ag2") == []
    again = sh.parts(a, {"ag1": 4, "ag3": 4, "ag5": 4})  # ag1 runs one already
    assert [p.agent for p in again] == ["ag3", "ag5"]
    assert again[0].index == next(p.index for p in parts if p.agent == "ag2")
    back = again[0]
    assert sh.part_done(back, errno=E.ECANCELED, handback=True)
    stripe = sh.state.stripes[a]
    assert stripe.parts[back.index].failures == 1  # the loss counted, the hand-back did not
    # reconcile: the agent says it no longer runs one part
    keep = next(p for p in parts if p.agent == "ag1")
    sh.step(AgentLost(sh.tick(), "ag1", "not running", parts=((a, keep.attempt),)))
    assert (a, keep.attempt) not in sh.state.parts_held_by("ag1")
    assert sh.state.parts_held_by("ag1") == [] and len(sh.state.parts_held_by("ag4")) == 1


def test_cancel_stops_every_part_and_the_action_ends_canceled() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 2 * GiB)
    parts = sh.parts(a, {"ag1": 1, "ag2": 1})
    res = sh.step(Cancel(sh.tick(), (a,), reason="operator"))
    assert sorted((e.agent, e.attempt) for e in res.effects if isinstance(e, SendCancel)) == sorted(
        (p.agent, p.attempt) for p in parts)
    assert sh.state.actions[a].state == State.CANCELED and a not in sh.state.stripes
    assert not sh.part_done(parts[0])  # a late report: stale, changes nothing


def test_a_failed_seal_starts_the_archive_over_and_the_next_attempt_may_stripe_again() -> None:
    sh = Shard("settings: {max_attempts: 3}\nstriping: {above: 1G}\n")
    a = sh.submit()
    sh.anchor(a, "ag1", 2 * GiB)
    for p in sh.parts(a, {"ag1": 1, "ag2": 1}):
        sh.part_done(p)
    seal = sh.assign("ag2", a)
    sh.step(Complete(sh.tick(), (Completion(a, seal, E.EBUSY, "the file changed", True),), "ag2"))
    act = sh.state.actions[a]
    assert act.state == State.WAITING and a not in sh.state.stripes and not sh.state.parked(act)
    sh.anchor(a, "ag1", 2 * GiB, dv=8)
    assert sh.state.stripes[a].data_version == 8


def test_parts_are_assigned_only_while_they_fit() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 2 * GiB)
    runs = sh.state.stripes[a].choose({"ag1": 1, "ag2": 1})
    cmd = AssignParts(sh.tick(), a, tuple((r.index, r.agent, r.attempt) for r in runs))
    assert len(sh.step(cmd).replies) == 2
    assert sh.step(cmd).replies == []  # the same again (a retried proposal): nothing
    b = sh.submit(2)
    sh.anchor(b, "ag1", 2 * GiB)
    from coordinator.state import DrainAgent
    sh.step(DrainAgent(sh.tick(), "ag2", True))
    assert sh.step(AssignParts(sh.tick(), b, ((0, "ag2", 1),))).replies == []  # drained
    assert sh.step(AssignParts(sh.tick(), b, ((0, "ag3", 2),))).replies == []  # not its next attempt
    assert sh.step(AssignParts(sh.tick(), b, ((9, "ag3", 1),))).replies == []  # no such part
    assert sh.step(AssignParts(sh.tick(), b, ((0, "ag3", 1), (1, "ag3", 1)))).replies == [0]  # one per agent


def test_a_snapshot_taken_mid_stripe_carries_it() -> None:
    sh = Shard()
    a = sh.submit()
    sh.anchor(a, "ag1", 4 * GiB)
    parts = sorted(sh.parts(a, {"ag1": 2, "ag2": 2, "ag3": 1, "ag4": 1}), key=lambda p: p.index)
    sh.part_done(parts[0])
    head, actions = sh.state.export_parts()
    copy = ShardState.import_parts(pickle.loads(pickle.dumps(head)), [pickle.loads(pickle.dumps(actions))])
    copy.check_invariants()
    assert copy.stripes[a].phase == Phase.PARTS and copy.parked(copy.actions[a])
    assert sorted(x for ag in ("ag1", "ag2", "ag3", "ag4") for x in copy.parts_held_by(ag)) == sorted(
        (a, p.attempt) for p in parts[1:])
    sh.state = copy
    for p in parts[1:]:
        assert sh.part_done(p)
    assert sh.state.stripes[a].phase == Phase.SEAL


def test_an_anchor_report_for_a_stale_attempt_or_twice_changes_nothing() -> None:
    sh = Shard()
    a = sh.submit()
    att = sh.assign("ag1", a)
    copy = ("", 7, 2 * GiB, "", 0, 0, 0o644, "")
    assert sh.step(Complete(sh.tick(), (Completion(a, att + 1, copy=copy, anchored=True),), "ag1")).replies == [False]
    assert sh.step(Complete(sh.tick(), (Completion(a, att, copy=copy, anchored=True),), "ag2")).replies == [False]
    assert sh.step(Complete(sh.tick(), (Completion(a, att, copy=copy, anchored=True),), "ag1")).replies == [True]
    assert sh.step(Complete(sh.tick(), (Completion(a, att, copy=copy, anchored=True),), "ag1")).replies == [False]
    # a part's report for an action without a stripe: stale
    assert sh.step(Complete(sh.tick(), (Completion(sh.submit(3), wire_attempt(0, 1)),), "ag1")).replies == [False]


def test_an_anchor_report_is_never_taken_for_a_success() -> None:
    """An agent that let go of an action (anchored) copied nothing: canceled
    meanwhile, the action ends CANCELED; a seal that reports it runs again."""
    sh = Shard()
    a = sh.submit()
    att = sh.assign("ag1", a)
    sh.step(Cancel(sh.tick(), (a,), reason="operator"))
    copy = ("", 7, 2 * GiB, "", 0, 0, 0o644, "")
    sh.step(Complete(sh.tick(), (Completion(a, att, copy=copy, anchored=True),), "ag1"))
    act = sh.state.actions[a]
    assert act.state == State.CANCELED and a not in sh.state.stripes
    assert sh.state.catalog.of(FS, act.fid) == ()
    b = sh.submit(2)
    sh.anchor(b, "ag1", 2 * GiB)
    for p in sh.parts(b, {"ag1": 1, "ag2": 1}):
        sh.part_done(p)
    seal = sh.assign("ag3", b)
    sh.step(Complete(sh.tick(), (Completion(b, seal, copy=copy, anchored=True),), "ag3"))
    bct = sh.state.actions[b]
    assert bct.state == State.WAITING and bct.errno == E.EPROTO and b not in sh.state.stripes
    assert sh.state.catalog.of(FS, bct.fid) == ()


def test_an_anchor_without_a_size_uses_an_attempt() -> None:
    sh = Shard()  # max_attempts 2
    a = sh.submit()
    for _ in range(2):
        att = sh.assign("ag1", a)
        sh.step(Complete(sh.tick(), (Completion(a, att, copy=("", 7, 0, "", 0, 0, 0, ""), anchored=True),), "ag1"))
    act = sh.state.actions[a]
    assert act.state == State.FAILED and act.errno == E.EPROTO and a not in sh.state.stripes


def test_a_part_without_progress_is_reclaimed_and_runs_again_and_progress_keeps_it() -> None:
    from coordinator.state import Progress, ProgressReport, Reclaim

    sh = Shard()  # progress_timeout 600 s (the policy's default)
    a = sh.submit()
    sh.anchor(a, "ag1", 2 * GiB)
    quiet, busy = sorted(sh.parts(a, {"ag1": 1, "ag2": 1}), key=lambda p: p.index)
    assert sh.state.stale_parts(sh.now + 599) == []
    sh.now += 400
    sh.step(Progress(sh.tick(), (ProgressReport(a, busy.attempt, 1 << 20, busy.length),), busy.agent))
    sh.now += 250  # quiet: 651 s without progress; busy: 251 s
    assert sh.state.stale_parts(sh.now) == [(a, quiet.attempt)]
    # the leader looked, then progress arrived before the reclaim applied: nothing happens
    sh.step(Progress(sh.tick(), (ProgressReport(a, quiet.attempt, 1, quiet.length),), quiet.agent))
    assert sh.step(Reclaim(sh.tick(), (), parts=((a, quiet.attempt),))).replies == []
    sh.now += 700
    res = sh.step(Reclaim(sh.tick(), (), parts=tuple(sh.state.stale_parts(sh.now))))
    assert sorted((e.agent, e.attempt) for e in res.effects if isinstance(e, SendCancel)) == sorted(
        [(quiet.agent, quiet.attempt), (busy.agent, busy.attempt)])
    stripe = sh.state.stripes[a]
    assert [p.failures for p in stripe.parts] == [1, 1] and stripe.running() == []
    assert not sh.part_done(quiet)  # its late report: stale
    again = sh.parts(a, {"ag3": 1, "ag4": 1})
    assert sorted(part_of(p.attempt) for p in again) == [(0, 2), (1, 2)]
