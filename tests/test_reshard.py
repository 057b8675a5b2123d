"""The split's driver (coordinator.split: Reshard, begin, advance, decide)
and its record on shard 0 (ReshardBegin, ReshardStep), on real
ShardStates, commands pickled as Raft pickles them. What must hold: a FID
never has two shards that take requests for it, and once the split is done
(or aborted) exactly one; nothing is lost or doubled; no shard activates
before every new shard has every chunk; an abort is refused once a shard
may have activated."""

from __future__ import annotations

import errno as E
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import scheduler, split
from coordinator.split import Do, Phase, Reshard, ShardFacts, Step
from coordinator.state import (
    AbortSplit,
    Activate,
    AssignRound,
    Complete,
    Completion,
    Freeze,
    Import,
    Item,
    Kind,
    Outcome,
    Requester,
    ReshardBegin,
    ReshardReply,
    ReshardStep,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid
from hsm.ring import Ring
from tests.test_split_state import apply, fid

FS = "lustre1"
VNODES = 32
GROUPS = (("r1", "r2", "r3"),)


def test_begin_takes_a_retry_as_the_same_split_and_refuses_what_does_not_fit() -> None:
    r = split.begin(None, (0, 1), 2, 2, 1, VNODES, GROUPS, 5.0)
    assert isinstance(r, Reshard) and r.phase == Phase.OPENING and r.new == range(2, 3) and r.group(2) == GROUPS[0]
    assert split.begin(r, (0, 1), 2, 2, 1, VNODES, GROUPS, 9.0) is r
    assert "a split runs" in str(split.begin(r, (0, 1), 2, 2, 2, VNODES, GROUPS * 2, 9.0))
    assert "read the shard map again" in str(split.begin(None, (0, 1), 2, 3, 1, VNODES, GROUPS, 5.0))
    assert "read the shard map again" in str(split.begin(None, (3, 2), 2, 3, 1, VNODES, GROUPS, 5.0))
    assert "needs as many groups" in str(split.begin(None, (0, 1), 2, 2, 2, VNODES, GROUPS, 5.0))
    assert "needs as many groups" in str(split.begin(None, (0, 1), 2, 2, 1, VNODES, (("r1", "r1"),), 5.0))
    assert "adds 1 to" in str(split.begin(None, (0, 1), 2, 2, 0, VNODES, (), 5.0))
    done = split.advance(split.advance(split.advance(r, 2, Phase.MOVING, 6), 2, Phase.ACTIVATING, 7),  # type: ignore
                         2, Phase.DONE, 8)
    assert isinstance(done, Reshard) and not done.running
    # the next split starts from the ring the last one left
    assert isinstance(split.begin(done, (3, 2), 3, 3, 1, VNODES, GROUPS, 9.0), Reshard)


def test_phases_go_forward_and_an_abort_is_refused_once_a_shard_may_have_activated() -> None:
    r = split.begin(None, (0, 1), 2, 2, 1, VNODES, GROUPS, 5.0)
    assert isinstance(r, Reshard)
    assert "cannot go to activating" in str(split.advance(r, 2, Phase.ACTIVATING, 6))
    assert "no split to ring version 3" in str(split.advance(r, 3, Phase.MOVING, 6))
    moving = split.advance(r, 2, Phase.MOVING, 6)
    assert isinstance(moving, Reshard) and split.advance(moving, 2, Phase.MOVING, 7) is moving
    assert isinstance(split.advance(moving, 2, Phase.ABORTING, 7), Reshard)
    activating = split.advance(moving, 2, Phase.ACTIVATING, 7)
    assert isinstance(activating, Reshard)
    assert "cannot go to aborting" in str(split.advance(activating, 2, Phase.ABORTING, 8))


def test_shard_zero_records_the_split_and_the_ring_it_leaves_and_a_snapshot_keeps_both() -> None:
    from coordinator.raft.serializer import _decode_state, _encode_state

    zero, one = ShardState(ShardConfig(shard=0)), ShardState(ShardConfig(shard=1))
    reply = apply(one, ReshardBegin(1.0, 2, 2, 1, VNODES, GROUPS))[0]
    assert isinstance(reply, ReshardReply) and "on shard 0, not 1" in reply.error and one.reshard is None
    reply = apply(zero, ReshardBegin(1.0, 2, 2, 1, VNODES, GROUPS))[0]
    assert isinstance(reply, ReshardReply) and reply.error == "" and zero.reshard is not None
    assert "no split phase 9" in apply(zero, ReshardStep(2.0, 2, 9))[0].error  # type: ignore[attr-defined]
    for phase in (Phase.MOVING, Phase.ACTIVATING):
        assert apply(zero, ReshardStep(2.0, 2, int(phase)))[0].error == ""  # type: ignore[attr-defined]
    assert zero.cluster_ring == (0, 1)
    copy = _decode_state(_encode_state(zero))
    assert copy.reshard == zero.reshard and copy.reshard.phase == Phase.ACTIVATING  # type: ignore[union-attr]
    apply(zero, ReshardStep(3.0, 2, int(Phase.DONE)))
    assert zero.cluster_ring == (3, 2) and _decode_state(_encode_state(zero)).cluster_ring == (3, 2)
    # a begin from a stale ring is refused and changes nothing
    reply = apply(zero, ReshardBegin(4.0, 2, 2, 1, VNODES, GROUPS))[0]
    assert "read the shard map again" in reply.error and zero.reshard.version == 2  # type: ignore


def facts(r: Reshard, **by_shard: ShardFacts | None) -> dict[int, ShardFacts | None]:
    out: dict[int, ShardFacts | None] = {s: ShardFacts() for s in range(r.total)}
    out.update({int(k[1:]): v for k, v in by_shard.items()})
    return out


def test_the_driver_opens_freezes_exports_after_the_drain_and_activates_old_shards_first() -> None:
    r = split.begin(None, (0, 1), 2, 2, 1, VNODES, GROUPS, 5.0)
    assert isinstance(r, Reshard)
    assert split.decide(r, facts(r, s2=None), 6) == Step(Do.OPEN, 2)
    assert split.decide(r, facts(r), 6) == Step(Do.MOVING)
    m = split.advance(r, 2, Phase.MOVING, 6)
    assert isinstance(m, Reshard)
    assert split.decide(m, facts(m), 7) == Step(Do.FREEZE, 0)
    frozen = dict(s0=ShardFacts(out_version=2, busy=3), s1=ShardFacts(out_version=2),
                  s2=ShardFacts(in_version=2, pending=(0, 1)))
    assert split.decide(m, facts(m, **frozen), 7) == Step(Do.EXPORT, 1)
    frozen["s2"] = ShardFacts(in_version=2, pending=(0,))
    step = split.decide(m, facts(m, **frozen), 7)
    assert step.do == Do.WAIT and "shard 0: 3 moving file(s) running" in step.why
    frozen["s0"] = ShardFacts(out_version=2)
    assert split.decide(m, facts(m, **frozen), 7) == Step(Do.EXPORT, 0)
    frozen["s2"] = ShardFacts(in_version=2)
    assert split.decide(m, facts(m, **frozen), 7) == Step(Do.ACTIVATING)
    a = split.advance(m, 2, Phase.ACTIVATING, 8)
    assert isinstance(a, Reshard)
    # the old shards first: their tombstones are in before a new shard starts what it imported
    assert split.decide(a, facts(a, **frozen), 8) == Step(Do.ACTIVATE, 0)
    frozen["s0"] = frozen["s1"] = ShardFacts(ring_version=2, out_version=2, out_active=True)
    assert split.decide(a, facts(a, **frozen), 8) == Step(Do.ACTIVATE, 2)
    frozen["s2"] = ShardFacts(ring_version=2)
    assert split.decide(a, facts(a, **frozen), 8) == Step(Do.DONE)
    # a shard another split froze is waited for, not frozen again
    other = dict(s0=ShardFacts(out_version=7))
    assert split.decide(m, facts(m, **other), 7).do == Do.WAIT


def test_an_abort_undoes_every_frozen_shard_and_settles_before_it_closes_the_new_groups() -> None:
    r = split.begin(None, (0, 1), 2, 2, 1, VNODES, GROUPS, 5.0)
    ab = split.advance(split.advance(r, 2, Phase.MOVING, 6), 2, Phase.ABORTING, 7)  # type: ignore[arg-type]
    assert isinstance(ab, Reshard)
    f = facts(ab, s1=ShardFacts(out_version=2), s2=ShardFacts(in_version=2, pending=(0, 1)))
    assert split.decide(ab, f, 8) == Step(Do.ABORT, 1)
    f[1] = ShardFacts()
    assert split.decide(ab, f, 8) == Step(Do.ABORT, 2)
    f[2] = None  # the new shard's group may be gone already
    assert split.decide(ab, f, 8).do == Do.WAIT
    assert split.decide(ab, f, 7 + split.ABORT_GRACE) == Step(Do.ABORTED)


# ---------------------------------------------------------------------------
# The driver run on real shard states, with a flood and leader changes


OLD_SHARDS, ADDED = 2, 2
OLD_RING = Ring(OLD_SHARDS, VNODES, 1)
NEW_RING = OLD_RING.with_shard_added(ADDED)
FILES = 40


class World:
    """Every shard of the split as one replica holds it, shard 0's record,
    and a driver that looks at the shards the way the node does."""

    def __init__(self) -> None:
        self.shards = [ShardState(ShardConfig(shard=k, archive_ids=frozenset({1}))) for k in range(OLD_SHARDS)]
        self.now = 1.0
        self.submitted: dict[str, int] = {}  # idempotency key -> action id
        self.ring = OLD_RING  # what the replicas route by

    @property
    def zero(self) -> ShardState:
        return self.shards[0]

    def facts(self) -> dict[int, ShardFacts | None]:
        return {k: s.split_facts() for k, s in enumerate(self.shards)}

    def serving(self, n: int) -> list[int]:
        """The shards that would take a Submit for file *n* now."""
        out = []
        for k, s in enumerate(self.shards):
            if k >= OLD_SHARDS and s.ring_version < 2:
                continue  # a new shard: nothing routes to it before it is active
            owner = (NEW_RING if s.ring_version >= 2 else OLD_RING).shard_of(fid(n))
            if owner == k and s._split_refusal(fid(n)) is None:
                out.append(k)
        return out

    def submit(self, n: int, kind: Kind) -> None:
        self.now += 0.1
        key = f"{n}-{kind.name}-{self.now}"
        ring = self.ring
        for _ in range(2):  # a client: a refusal that says where to go is followed once
            s = self.shards[ring.shard_of(fid(n))]
            reply = apply(s, Submit(self.now, (Item(FS, fid(n), kind, archive_id=1,
                                                    requester=Requester("t", 0), key=key),)))[0]
            if reply.outcome != Outcome.REJECTED:  # type: ignore[attr-defined]
                self.submitted[key] = reply.action_id  # type: ignore[attr-defined]
                return
            assert reply.errno in (E.EBUSY, E.ESTALE), reply  # type: ignore[attr-defined]
            if reply.errno == E.EBUSY:  # type: ignore[attr-defined]
                return  # refused, nothing made: the client retries later
            ring = NEW_RING  # ESTALE: the client reads the shard map again

    def work(self, k: int, finish: bool) -> None:
        s = self.shards[k % len(self.shards)]
        if s.split_in:
            return
        self.now += 0.1
        if finish:
            # the agent's completions are routed as the replicas route them: to the shard the id
            # names, or the one its tombstone there names; each must end its action
            for i in [i for i, a in s.actions.items() if a.state == State.STARTED][:3]:
                named = self.shards[i % 1000]
                to = self.shards[named.moved_to.get(i, i % 1000)]
                apply(to, Complete(self.now, (Completion(i, s.actions[i].attempt),), "a"))
                assert s.actions[i].state != State.STARTED, f"the completion of {i} went to shard {to.config.shard}"
        else:
            planned = scheduler.plan(s, [scheduler.Offer("a", (), {Kind.ARCHIVE: 2, Kind.RESTORE: 2})], self.now)
            apply(s, AssignRound(self.now, planned))

    def step(self, leader_lost: bool) -> Do:
        """One step of the driver (NOTHING: nothing left to do)."""
        r = self.zero.reshard
        assert r is not None
        self.now += 0.1
        step = split.decide(r, self.facts(), self.now)
        if step.do == Do.NOTHING:
            return step.do
        if step.do == Do.WAIT:
            self.now += 1.0
            return step.do
        if step.do == Do.OPEN:
            while len(self.shards) < r.total:
                self.shards.append(ShardState(ShardConfig(shard=len(self.shards), archive_ids=frozenset({1}))))
        elif step.do in (Do.MOVING, Do.ACTIVATING, Do.DONE):
            phase = {Do.MOVING: Phase.MOVING, Do.ACTIVATING: Phase.ACTIVATING, Do.DONE: Phase.DONE}[step.do]
            assert apply(self.zero, ReshardStep(self.now, r.version, int(phase)))[0].error == ""  # type: ignore
            if step.do == Do.DONE:
                self.ring = NEW_RING
        elif step.do == Do.FREEZE:
            reply = apply(self.shards[step.shard], Freeze(self.now, r.version, r.shards, r.added, r.vnodes))[0]
            assert reply.error == "", reply  # type: ignore[attr-defined]
        elif step.do == Do.EXPORT:
            exported = self.shards[step.shard].split_export()
            assert exported is not None
            for target in r.new:
                chunks = list(split.chunks(exported.get(target, []), 5)) or [()]
                # a leader lost mid-export: the next one starts again from chunk 0
                sent = chunks[:1] if leader_lost and len(chunks) > 1 else chunks
                for c, bundles in enumerate(sent):
                    apply(self.shards[target], Import(self.now, r.version, step.shard, c, c == len(chunks) - 1,
                                                      bundles))
        elif step.do == Do.ACTIVATE:
            assert apply(self.shards[step.shard], Activate(self.now, r.version))[0].error == ""  # type: ignore
        elif step.do == Do.ABORT:
            assert apply(self.shards[step.shard], AbortSplit(self.now, r.version))[0].error == ""  # type: ignore
        elif step.do == Do.ABORTED:
            del self.shards[OLD_SHARDS:]
            assert apply(self.zero, ReshardStep(self.now, r.version, int(Phase.ABORTED)))[0].error == ""  # type: ignore
        return step.do

    def live(self) -> dict[int, tuple[str, Fid]]:
        out: dict[int, tuple[str, Fid]] = {}
        for s in self.shards:
            for i, a in s.actions.items():
                if not a.state.terminal:
                    assert i not in out, f"action {i} is live on two shards"
                    out[i] = a.fid_key
        return out


ops = st.lists(st.tuples(st.sampled_from(["submit", "submit", "dispatch", "finish", "drive", "drive", "lost"]),
                         st.integers(1, FILES), st.sampled_from([Kind.ARCHIVE, Kind.RESTORE])), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops, st.one_of(st.just(()), st.lists(st.integers(0, 14), min_size=1, max_size=2)))
def test_any_run_of_the_driver_under_a_flood_keeps_one_owner_per_fid_and_loses_nothing(
        history: list[tuple[str, int, Kind]], aborts: list[int]) -> None:
    w = World()
    reply = apply(w.zero, ReshardBegin(w.now, 2, OLD_SHARDS, ADDED, VNODES, (("r1",), ("r2",))))[0]
    assert reply.error == ""  # type: ignore[attr-defined]
    actions: dict[int, None] = {}

    def check() -> None:
        for n in range(1, FILES + 1):
            owners = w.serving(n)
            assert len(owners) <= 1, f"file {n} served by shards {owners} ({w.zero.reshard})"
        for s in w.shards:
            s.check_invariants()

    def op_abort() -> None:
        r = w.zero.reshard
        assert r is not None
        got = apply(w.zero, ReshardStep(w.now, 2, int(Phase.ABORTING)))[0]
        assert isinstance(got, ReshardReply)
        # refused exactly once a shard may have activated
        assert (got.error == "") == (r.phase in (Phase.OPENING, Phase.MOVING, Phase.ABORTING)), (r, got)

    run: dict[str, Callable[[int, Kind], None]] = {
        "submit": w.submit,
        "dispatch": lambda n, _k: w.work(n, False),
        "finish": lambda n, _k: w.work(n, True),
    }
    steps = 0

    def drive(lost: bool) -> Do:
        nonlocal steps
        did = w.step(lost)
        if did not in (Do.WAIT, Do.NOTHING):
            steps += 1
            for _ in range(aborts.count(steps)):  # an admin's abort, after that many steps of the driver
                op_abort()
        return did

    for op, n, kind in history:
        if op in ("drive", "lost"):
            drive(op == "lost")
        else:
            run[op](n, kind)
        actions.update(dict.fromkeys(w.submitted.values()))
        check()
    # the drain: agents finish what runs, and the driver goes to the end
    for _ in range(200):
        for k in range(len(w.shards)):
            w.work(k, False)
            w.work(k, True)
        if drive(False) == Do.NOTHING:
            break
        check()
    r = w.zero.reshard
    assert r is not None and r.phase in (Phase.DONE, Phase.ABORTED)
    check()
    ring = NEW_RING if r.phase == Phase.DONE else OLD_RING
    for n in range(1, FILES + 1):
        assert w.serving(n) == [ring.shard_of(fid(n))], f"file {n} after the split ({r.phase.name})"
    # every action ever created is still known exactly once, on its file's owner
    known = {i: k for k, s in enumerate(w.shards) for i in s.actions}
    for i in actions:
        a_shard = known.get(i)
        if a_shard is None:
            continue  # an ended action pruned (max_terminal) is the only way to be forgotten
        a = w.shards[a_shard].actions[i]
        assert ring.shard_of(a.fid) == a_shard
    for i, (_fs, f) in w.live().items():
        assert ring.shard_of(f) == known[i]
