"""Hypothesis drives random command sequences through the shard state
machine; every invariant is checked after every step, plus properties seen
from outside: terminal states are final, an idempotency key always answers
with the same action, one running action per FID, every cancel is sent to
the agent that holds that very action, and replaying the same commands on a
fresh state gives the same state (determinism, which Raft relies on)."""

from __future__ import annotations

import errno as E

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordinator import scheduler
from coordinator.raft.serializer import _decode_state, _encode_state
from coordinator.state import (
    AbortSplit,
    Action,
    Activate,
    AgentLost,
    Assign,
    AssignParts,
    Cancel,
    CancelRefused,
    Complete,
    Completion,
    CookieTarget,
    DrainAgent,
    FidTarget,
    Freeze,
    Item,
    Kind,
    Outcome,
    Progress,
    ProgressReport,
    Reclaim,
    Requester,
    SendCancel,
    SetPolicy,
    ShardConfig,
    ShardState,
    SplitReply,
    State,
    Submit,
)
from coordinator.stripes import PartState, part_of, wire_attempt
from hsm.fid import Fid

AGENTS = ("a1", "a2", "a3")
CONFIG = ShardConfig(shard=3, archive_ids=frozenset({1, 2}), max_attempts=2, max_terminal=40,
                     progress_timeout=5.0)

kinds = st.sampled_from(list(Kind))
fids = st.integers(min_value=1, max_value=6).map(lambda n: Fid(0x200000400, n, 0))
items = st.builds(
    Item,
    fsname=st.sampled_from(["fs1", "fs2"]),
    fid=fids,
    kind=kinds,
    archive_id=st.sampled_from([0, 1, 2, 5]),
    requester=st.builds(Requester, initiator=st.sampled_from(["oss1", "oss2", "cli"]), cookie=st.integers(0, 5)),
    key=st.sampled_from(["", "", "k1", "k2", "k3", "k4", "oss1:1", "cli:2"]),
    hsm_flags=st.one_of(st.none(), st.integers(0, 0x1FF)),
    flags=st.sampled_from([0, 0, 0x1, 0x4]),
    hsm_archive_id=st.sampled_from([0, 1, 2]),
    data_version=st.sampled_from([0, 0, 1, 2]),
    # a leader's admission finding, right or wrong for this shard's policy:
    # used only at its version and archive id, evaluated otherwise
    admitted=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.sampled_from([1, 2]), st.integers(-1, 3))),
)


def snapshot(state: ShardState) -> object:
    return (
        state.next_seq,
        sorted(
            (a.id, a.state, a.agent, a.attempt, a.errno, a.bytes_done, len(a.requesters), a.data_version)
            for a in state.actions.values()
        ),
        {k: list(q) for k, q in state.ready.items()},
        dict(state.keys),
        sorted((i, s.phase, s.data_version, [(p.state, p.agent, p.attempt, p.failures, p.checksum) for p in s.parts])
               for i, s in state.stripes.items()),
    )


#: the splits the machine may run (ring version: shards before, shards
#: added; 8 vnodes each): in the first, files 2 and 3 leave this shard (3)
SPLITS = {2: (4, 3), 3: (7, 1), 4: (8, 1)}
VNODES = 8

MiB = 1 << 20
#: the machine's policy: CONFIG's settings, and striping with parts of 1 MiB
POLICY = ("settings: {max_attempts: 2, progress_timeout: 5, max_terminal: 40}\n"
          "striping: {above: 1M, part_size: 1M, max_parts: 4}\n")


class ShardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ShardState(CONFIG)
        self.log: list[object] = []
        self.now = 0.0
        self.ended: dict[int, State] = {}
        self.key_answers: dict[str, int] = {}
        self.apply(SetPolicy(self.tick(), 1, POLICY, "test"))

    def apply(self, cmd):  # type: ignore[no-untyped-def]
        self.log.append(cmd)
        res = self.state.apply(cmd)
        self.state.check_invariants()
        return res

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(batch=st.lists(items, min_size=1, max_size=5))
    def submit(self, batch: list[Item]) -> None:
        res = self.apply(Submit(self.tick(), tuple(batch)))
        for it, reply in zip(batch, res.replies, strict=True):
            if it.key and reply.outcome in (Outcome.CREATED, Outcome.JOINED):
                first = self.key_answers.setdefault(it.key, reply.action_id)
                if first in self.state.actions:
                    assert reply.action_id == first, "idempotency key answered with another action"

    @rule(agent=st.sampled_from(AGENTS), a=st.integers(0, 3), r=st.integers(0, 3), m=st.integers(0, 3),
          archives=st.sampled_from([(), (1,), (2,), (0,)]))
    def schedule(self, agent: str, a: int, r: int, m: int, archives: tuple[int, ...]) -> None:
        credits = {Kind.ARCHIVE: a, Kind.RESTORE: r, Kind.REMOVE: m}
        picked = scheduler.pick(self.state, archives, credits, agent)
        if agent in self.state.drained:
            assert not picked, "a drained agent is given nothing"
        for kind, n in credits.items():
            assert sum(1 for i in picked if self.state.actions[i].kind == kind) <= n
        for i in picked:
            assert scheduler.serves(archives, self.state.actions[i].archive_id)
        res = self.apply(Assign(self.tick(), agent, tuple(picked)))
        assert sorted(res.replies) == sorted(picked), "every picked action must be assignable"

    @rule(agent=st.sampled_from(AGENTS), drain=st.booleans())
    def drain(self, agent: str, drain: bool) -> None:
        self.apply(DrainAgent(self.tick(), agent, drain))
        assert (agent in self.state.drained) is drain

    @rule(data=st.data(), errno=st.sampled_from([0, 0, E.EIO, E.ECANCELED, E.ENOSPC, E.ENOSYS, E.EALREADY, -E.EIO]),
          retry=st.booleans(),
          stale=st.booleans(), handback=st.booleans())
    def complete(self, data: st.DataObject, errno: int, retry: bool, stale: bool, handback: bool) -> None:
        running = [a for a in self.state.actions.values() if a.state in (State.STARTED, State.CANCELING)]
        if not running:
            return
        a = data.draw(st.sampled_from(running))
        before, reclaiming = a.state, a.reclaiming
        attempt = a.attempt - 1 if stale else a.attempt
        self.apply(Complete(self.tick(), (Completion(a.id, attempt, errno, "m", retry, handback=handback),)))
        if stale:
            assert a.state is before
        elif errno == 0:
            assert a.state is State.SUCCEEDED, "a reported success is always recorded"
        elif errno == E.ENOSYS and not reclaiming and (before is State.CANCELING or not handback):
            assert a.state in (State.FAILED, State.CANCELED), "ENOSYS is never retried"
        assert a.errno >= 0, "an errno is recorded positive"

    @rule(data=st.data(), done=st.integers(0, 100))
    def progress(self, data: st.DataObject, done: int) -> None:
        running = [a for a in self.state.actions.values() if a.state is State.STARTED]
        if running:
            a = data.draw(st.sampled_from(running))
            self.apply(Progress(self.tick(), (ProgressReport(a.id, a.attempt, done, 100),)))
            assert a.bytes_done == done

    @rule(data=st.data(), how=st.sampled_from(["id", "fid", "all", "unknown", "cookie"]))
    def cancel(self, data: st.DataObject, how: str) -> None:
        cookie = CookieTarget(data.draw(st.sampled_from(["oss1", "oss2", "cli"])), data.draw(st.integers(1, 5)))
        if how == "cookie":
            cmd = Cancel(self.tick(), cookies=(cookie,))
        elif how == "all":
            cmd = Cancel(self.tick(), all=True)
        elif how == "unknown":
            cmd = Cancel(self.tick(), action_ids=(999_999_003,))
        elif how == "fid":
            cmd = Cancel(self.tick(), fids=(FidTarget(data.draw(st.sampled_from(["", "fs1"])), data.draw(fids)),))
        else:
            if not self.state.actions:
                return
            cmd = Cancel(self.tick(), action_ids=(data.draw(st.sampled_from(sorted(self.state.actions))),))
        holders = {a.id: (a.agent, a.attempt) for a in self.state.actions.values() if a.state is State.STARTED}
        parts = {(i, wire_attempt(n, p.attempt)): p.agent for i, s in self.state.stripes.items()
                 for n, p in enumerate(s.parts) if p.state == PartState.RUNNING}
        before = snapshot(self.state)
        res = self.apply(cmd)
        for e in res.effects:
            if isinstance(e, SendCancel) and part_of(e.attempt) is not None:
                assert parts[(e.action_id, e.attempt)] == e.agent, "a part's stop routed to the wrong agent"
            elif isinstance(e, SendCancel):
                assert holders[e.action_id] == (e.agent, e.attempt), "cancel routed to the wrong agent"
        if res.replies and isinstance(res.replies[0], CancelRefused):
            # a waiting action of a file a split hands over: nothing changed
            assert self._frozen() and "moving to shard" in res.replies[0].reason
            assert snapshot(self.state) == before
            return
        if how == "all":
            assert all(a.state is not State.WAITING for a in self.state.actions.values())
        if how == "cookie":
            [reply] = res.replies
            assert reply.cookie == cookie
            assert reply.action_id == (self.state.keys.get(cookie.key, 0) >> 3), "cookie resolved by its key"

    @rule(wait=st.floats(0, 10))
    def reclaim_stale(self, wait: float) -> None:
        self.now += wait
        stale = self.state.stale(self.now)
        parts = self.state.stale_parts(self.now)
        holders = {i: (self.state.actions[i].agent, self.state.actions[i].attempt) for i in stale}
        part_agents = {(i, w): self.state.stripes[i].parts[part_of(w)[0]].agent for i, w in parts}  # type: ignore[index]
        # a part that uses its last attempt fails its stripe, which stops the
        # stripe's other running parts too: each stop goes to the part's agent
        running = {(i, wire_attempt(n, p.attempt)): p.agent for i, s in self.state.stripes.items()
                   for n, p in enumerate(s.parts) if p.state == PartState.RUNNING}
        res = self.apply(Reclaim(self.now, tuple(stale), parts=tuple(parts)))
        for e in res.effects:
            if isinstance(e, SendCancel) and part_of(e.attempt) is not None:
                assert running[(e.action_id, e.attempt)] == e.agent, "a part's stop routed to the wrong agent"
            elif isinstance(e, SendCancel):
                assert holders[e.action_id] == (e.agent, e.attempt)
        for i in stale:
            assert self.state.actions[i].state is State.CANCELING
        for i, w in parts:
            assert (i, w) not in self.state.parts_held_by(part_agents[(i, w)]), "a stale part runs no more"

    def _anchorable(self) -> list[Action]:
        return [a for a in self.state.actions.values()
                if a.state == State.STARTED and a.kind == Kind.ARCHIVE and a.id not in self.state.stripes]

    @precondition(lambda self: self._anchorable())
    @rule(data=st.data(), mib=st.sampled_from([1, 2, 3, 5]), stale=st.booleans())
    def anchor(self, data: st.DataObject, mib: int, stale: bool) -> None:
        """A striped archive's anchor lets go and reports the file's size."""
        a = data.draw(st.sampled_from(self._anchorable()))
        attempt = a.attempt - 1 if stale else a.attempt
        res = self.apply(Complete(self.tick(), (Completion(a.id, attempt, copy=("", 3, mib * MiB + 1, "", 0, 0, 0,
                                                                                  ""), anchored=True),), a.agent))
        if stale:
            assert res.replies == [False] and a.state == State.STARTED
        else:
            assert res.replies == [True] and self.state.parked(a) and a.id in self.state.stripes

    @precondition(lambda self: self.state.stripes)
    @rule(data=st.data(), free=st.dictionaries(st.sampled_from(AGENTS), st.integers(0, 2)))
    def assign_parts(self, data: st.DataObject, free: dict[str, int]) -> None:
        action_id = data.draw(st.sampled_from(sorted(self.state.stripes)))
        runs = self.state.stripes[action_id].choose(free)
        res = self.apply(AssignParts(self.tick(), action_id, tuple((r.index, r.agent, r.attempt) for r in runs)))
        stripe = self.state.stripes.get(action_id)
        if stripe is not None and self.state.control == "enabled":
            for r in runs:
                if r.agent not in self.state.drained:
                    assert r.index in res.replies
        parts = stripe.parts if stripe else []
        for p in parts:
            if p.state == PartState.RUNNING:
                assert sum(q.agent == p.agent and q.state == PartState.RUNNING for q in parts) == 1, \
                    "an agent runs one part of a file at a time"

    @precondition(lambda self: self.state.stripes)
    @rule(data=st.data(), errno=st.sampled_from([0, 0, E.EIO, E.ECANCELED]), handback=st.booleans(),
          stale=st.booleans(), other=st.booleans())
    def part_report(self, data: st.DataObject, errno: int, handback: bool, stale: bool, other: bool) -> None:
        """A part's Done: late, duplicate or from another agent sometimes."""
        action_id = data.draw(st.sampled_from(sorted(self.state.stripes)))
        stripe = self.state.stripes[action_id]
        index = data.draw(st.integers(0, len(stripe.parts) - 1))
        part = stripe.parts[index]
        attempt = max(1, part.attempt - (1 if stale else 0))
        agent = "a9" if other else (part.agent or "a1")
        was = (part.state, part.attempt)
        copy = ("k", 3, part.length, f"sha256:{index:064x}", 0, 0, 0, "")
        res = self.apply(Complete(self.tick(), (Completion(action_id, wire_attempt(index, attempt), errno, "m",
                                                           errno != 0, 0, handback, copy),), agent))
        counted = was == (PartState.RUNNING, attempt) and not other
        assert res.replies == [counted], "a part's report counts only from its agent, for its running attempt"

    def _frozen(self) -> bool:
        out = self.state.split_out
        return out is not None and not out.active

    @precondition(lambda self: not self._frozen() and max(self.state.ring_version, 1) + 1 in SPLITS)
    @rule()
    def freeze(self) -> None:
        """A split begins: the files that leave stop taking requests and starting."""
        version = max(self.state.ring_version, 1) + 1
        shards, added = SPLITS[version]
        reply = self.apply(Freeze(self.tick(), version, shards, added, VNODES)).replies[0]
        assert isinstance(reply, SplitReply) and reply.error == "", reply
        out = self.state.split_out
        assert out is not None
        for a in self.state.actions.values():
            if a.state == State.WAITING and out.target(a.fid) is not None:
                assert not any(a.id in q for q in self.state.ready.values()), f"frozen {a} still ready"

    @precondition(lambda self: self._frozen())
    @rule()
    def export(self) -> None:
        """What the shard would hand over: every live action of a frozen file
        once, in its file's order; nothing while one of them runs."""
        got = self.state.split_export()
        busy = self.state.split_busy()
        if busy:
            assert got is None
            return
        assert got is not None
        frozen = self.state.split_frozen
        sent = {}
        for target, bundles in got.items():
            for fsname, fid, live, _ended, _keys, _copies, _rem in bundles:
                assert frozen[(fsname, fid)] == target
                sent[(fsname, fid)] = [v[0] for v in live]
        for fkey in frozen:
            assert sent.get(fkey, []) == [a.id for a in self.state.actions_of_fid(*fkey)]

    @precondition(lambda self: self._frozen())
    @rule(how=st.sampled_from(["activate", "activate", "abort"]))
    def end_split(self, how: str) -> None:
        out = self.state.split_out
        assert out is not None
        busy = self.state.split_busy()
        frozen = dict(self.state.split_frozen)
        cmd = Activate(self.tick(), out.version) if how == "activate" else AbortSplit(self.tick(), out.version)
        reply = self.apply(cmd).replies[0]
        assert isinstance(reply, SplitReply)
        if how == "activate" and busy:
            assert "running" in reply.error and self._frozen()
            return
        assert reply.error == ""
        for a in self.state.actions.values():
            assert how == "abort" or a.fid_key not in frozen, f"{a} of a moved file kept"
        if how == "activate":
            for fsname, fid in frozen:
                r = self.state.apply(Submit(self.now, (Item(fsname, fid, Kind.RESTORE, archive_id=1),))).replies[0]
                assert r.outcome == Outcome.REJECTED and r.errno == E.ESTALE, r
                self.log.append(Submit(self.now, (Item(fsname, fid, Kind.RESTORE, archive_id=1),)))

    @rule(agent=st.sampled_from(AGENTS))
    def agent_lost(self, agent: str) -> None:
        self.apply(AgentLost(self.tick(), agent))
        assert not self.state.held_by(agent) and not self.state.parts_held_by(agent)

    @invariant()
    def terminal_states_are_final(self) -> None:
        for a in self.state.actions.values():
            if a.state.terminal:
                assert self.ended.setdefault(a.id, a.state) is a.state
            else:
                assert a.id not in self.ended, f"{a} left a terminal state"

    @invariant()
    def one_running_action_per_fid(self) -> None:
        running: set[tuple[str, Fid]] = set()
        for a in self.state.actions.values():
            if a.state in (State.STARTED, State.CANCELING):
                assert a.fid_key not in running
                running.add(a.fid_key)

    def teardown(self) -> None:
        replay = ShardState(CONFIG)
        for cmd in self.log:
            replay.apply(cmd)  # type: ignore[arg-type]
        assert snapshot(replay) == snapshot(self.state), "replaying the log gave another state"
        # a snapshot (written in slices, FID queues rebuilt on load) gives back
        # the same state, indexes and orders included
        restored = _decode_state(_encode_state(self.state))
        restored.check_invariants()
        assert snapshot(restored) == snapshot(self.state)
        assert restored.fid_queue == self.state.fid_queue
        assert restored.fsnames == self.state.fsnames
        assert {k: (list(q.front), list(q.back)) for k, q in restored.ready.items()} == \
            {k: (list(q.front), list(q.back)) for k, q in self.state.ready.items()}
        assert [(a, list(ids)) for a, ids in restored.by_agent.items()] == \
            [(a, list(ids)) for a, ids in self.state.by_agent.items()]
        assert list(restored.terminal) == list(self.state.terminal)
        assert (restored.split_out, restored.splits_done, restored.split_frozen, restored.moved_to) == \
            (self.state.split_out, self.state.splits_done, self.state.split_frozen, self.state.moved_to)


ShardMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestShardMachine = ShardMachine.TestCase
