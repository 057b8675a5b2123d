"""The striped-transfer protocol (coordinator/stripes.py): pure, so every
order of events is tried here (tests/test_stripes_state.py: in the shard
state)."""

from __future__ import annotations

import errno as E

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordinator.stripes import (
    ALIGN,
    MAX_PARTS,
    PART_BIT,
    Ended,
    Instruction,
    PartState,
    Phase,
    RunPart,
    Seal,
    StopPart,
    Stripe,
    part_of,
    plan_parts,
    wire_attempt,
)

GiB = 1 << 30


def spread(instructions: list[Instruction]) -> dict[str, int]:
    """How many parts each agent is told to run."""
    out: dict[str, int] = {}
    for ins in instructions:
        if isinstance(ins, RunPart):
            out[ins.agent] = out.get(ins.agent, 0) + 1
    return out


@given(st.integers(0, 1 << 44), st.integers(1, 1 << 12).map(lambda n: n * ALIGN), st.integers(1, 128))
def test_parts_cover_the_file_exactly_in_aligned_order(size: int, part_size: int, most: int) -> None:
    parts = plan_parts(size, part_size, most)
    assert 1 <= len(parts) <= most
    offset = 0
    for off, length in parts:
        assert off == offset and off % ALIGN == 0
        offset += length
    assert offset == size
    assert all(n > 0 for _o, n in parts) or size == 0
    # one length for all but the last, which is no longer (the object's checksum is built from them)
    assert len({n for _o, n in parts[:-1]}) <= 1 and parts[-1][1] <= parts[0][1]
    if size:
        assert len(parts) == -(-size // parts[0][1])


def test_plan_refuses_what_cannot_be_cut() -> None:
    with pytest.raises(ValueError, match="size is >= 0"):
        plan_parts(-1, ALIGN)
    with pytest.raises(ValueError, match="at least"):
        plan_parts(10, ALIGN - 1)
    assert plan_parts(4 * GiB, GiB) == [(i * GiB, GiB) for i in range(4)]
    assert plan_parts(10, 64 * ALIGN) == [(0, 10)]  # small: one part


def test_a_4_gib_file_runs_on_four_agents_at_once_and_seals_on_the_anchor() -> None:
    s = Stripe.plan(4 * GiB, GiB)
    assert s.assign({"a": 4}, 0.0) == []  # nothing before the anchor began the action
    assert s.anchored("a", 77, 1.0) == []
    runs = s.assign({"a": 4, "b": 4, "c": 4, "d": 4}, 1.0)
    assert spread(runs) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert [(r.offset, r.length) for r in runs if isinstance(r, RunPart)] == [(i * GiB, GiB) for i in range(4)]
    out = []
    for r in runs:
        assert isinstance(r, RunPart)
        out += s.part_done(r.index, r.attempt, f"sum{r.index}", 2.0)
        s.check()
    assert out == [Seal("a")] and s.phase == Phase.SEAL and s.done_bytes() == 4 * GiB
    assert s.sealed(3.0) == [Ended(Phase.DONE)]
    s.check()


def test_parts_spread_over_every_agent_one_at_a_time_each() -> None:
    """6 parts over agents with free slots: one part per agent at a time
    (agentd runs one attempt per action), the agents with the most free
    slots first; an agent takes its next part once its last one ended."""
    s = Stripe.plan(6 * GiB, GiB)
    s.anchored("a", 1, 0.0)
    first = s.assign({"a": 1, "b": 3}, 0.0)
    assert [(r.index, r.agent) for r in first if isinstance(r, RunPart)] == [(0, "b"), (1, "a")]
    assert spread(s.assign({"c": 2, "b": 5}, 0.0)) == {"c": 1}  # b runs one already
    s.part_done(0, 1, "x", 1.0)
    assert [(r.index, r.agent) for r in s.assign({"b": 5, "d": 1}, 1.0) if isinstance(r, RunPart)] == [
        (3, "b"), (4, "d")]
    # alone, an agent runs the parts one after the other
    solo = Stripe.plan(3 * GiB, GiB)
    solo.anchored("a", 1, 0.0)
    assert spread(solo.assign({"a": 8}, 0.0)) == {"a": 1}


def test_a_failed_part_runs_again_alone_and_done_parts_never_again() -> None:
    s = Stripe.plan(3 * GiB, GiB)
    s.anchored("a", 1, 0.0)
    r0, r1, r2 = s.assign({"a": 1, "b": 1, "c": 1}, 0.0)
    assert isinstance(r0, RunPart) and isinstance(r1, RunPart) and isinstance(r2, RunPart)
    s.part_done(r0.index, r0.attempt, "x", 1.0)
    assert s.part_failed(r1.index, r1.attempt, E.EIO, "read error", 1.0) == []
    again = s.assign({"a": 1, "b": 1, "c": 1}, 2.0)
    assert [(r.index, r.attempt) for r in again if isinstance(r, RunPart)] == [(1, 2)]  # that part only
    # a late report of the failed attempt changes nothing
    assert s.part_done(r1.index, r1.attempt, "late", 2.0) == []
    assert s.parts[1].state == PartState.RUNNING and s.parts[1].attempt == 2
    s.check()


def test_a_part_that_uses_its_attempts_fails_the_stripe_and_stops_the_others() -> None:
    s = Stripe.plan(2 * GiB, GiB, max_attempts=2)
    s.anchored("a", 1, 0.0)
    for _ in range(2):
        runs = s.assign({"a": 1, "b": 1}, 0.0)
        bad = next(r for r in runs if isinstance(r, RunPart) and r.index == 0)
        out = s.part_failed(0, bad.attempt, E.EIO, "bad sector", 1.0)
    assert s.phase == Phase.FAILED
    assert out[:-1] == [StopPart(1, "b", 1)]  # the other part, still running its first attempt
    assert isinstance(out[-1], Ended) and out[-1].errno == E.EIO and "failed 2 times" in out[-1].reason
    assert s.running() == []
    s.check()


def test_a_lost_agent_s_parts_run_again_elsewhere_and_the_anchor_is_no_different() -> None:
    # the anchor let go of the action at the file system: it holds nothing
    s = Stripe.plan(4 * GiB, GiB)
    s.anchored("a", 1, 0.0)
    s.assign({"a": 1, "b": 2, "c": 1}, 0.0)
    assert {a for _i, a, _n in s.running()} == {"a", "b", "c"}
    lost = sorted(i for i, a, _n in s.running() if a in ("a", "b"))
    assert s.agent_lost("b", 1.0) == []
    assert "b" not in {a for _i, a, _n in s.running()} and s.phase == Phase.PARTS
    assert s.agent_lost("a", 2.0) == [] and s.phase == Phase.PARTS
    assert {a for _i, a, _n in s.running()} == {"c"}
    again = s.assign({"c": 4, "d": 4, "e": 4}, 3.0)  # c runs one already
    assert sorted(r.index for r in again if isinstance(r, RunPart)) == lost
    assert all(r.attempt == 2 for r in again if isinstance(r, RunPart))  # each lost part's second attempt
    s.check()


def test_choose_changes_nothing_and_start_refuses_what_no_longer_fits() -> None:
    s = Stripe.plan(2 * GiB, GiB)
    assert s.choose({"a": 2}) == []  # not anchored
    s.anchored("a", 1, 0.0)
    runs = s.choose({"a": 1, "b": 1})
    assert [(r.index, r.agent, r.attempt) for r in runs] == [(0, "a", 1), (1, "b", 1)]
    assert s.running() == [] and s.choose({"a": 1, "b": 1}) == runs  # nothing changed
    assert s.start(0, "a", 1) and not s.start(0, "a", 1)  # twice: the second does not fit
    assert not s.start(1, "b", 2) and not s.start(5, "b", 1) and not s.start(1, "", 1)
    assert s.start(1, "b", 1) and s.running() == [(0, "a", 1), (1, "b", 1)]
    s.check()


def test_wire_attempts_tell_parts_from_actions() -> None:
    assert part_of(3) is None
    w = wire_attempt(5, 2)
    assert w & PART_BIT and part_of(w) == (5, 2) and w < 1 << 32
    assert part_of(wire_attempt(MAX_PARTS - 1, 0xFFFF)) == (MAX_PARTS - 1, 0xFFFF)
    for bad in ((-1, 1), (MAX_PARTS, 1), (0, 0), (0, 1 << 16)):
        with pytest.raises(ValueError):
            wire_attempt(*bad)


def test_cancel_stops_every_running_part() -> None:
    s = Stripe.plan(2 * GiB, GiB)
    s.anchored("a", 1, 0.0)
    s.assign({"a": 1, "b": 1}, 0.0)
    out = s.cancel(1.0)
    assert out == [StopPart(0, "a", 1), StopPart(1, "b", 1), Ended(Phase.CANCELED, E.ECANCELED, "canceled")]
    assert s.cancel(2.0) == [] and s.sealed(2.0) == []


AGENTS = ["a", "b", "c"]


class StripeMachine(RuleBasedStateMachine):
    """Any order of anchor, assignments, reports (late and duplicate ones
    too), lost agents, seal and cancel: the stripe stays consistent, a
    done part never runs again, no part runs twice at once, and it ends
    DONE only through a seal after every part was done."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Stripe.plan(5 * ALIGN + 17, ALIGN, max_parts=4, max_attempts=3)
        self.done: set[int] = set()
        self.sent: list[RunPart] = []
        self.sealed_asked = False

    def _take(self, out: list) -> None:  # type: ignore[type-arg]
        for ins in out:
            if isinstance(ins, RunPart):
                assert ins.index not in self.done, "a done part runs again"
                self.sent.append(ins)
            if isinstance(ins, Seal):
                self.sealed_asked = True

    @rule(agent=st.sampled_from(AGENTS))
    def anchor(self, agent: str) -> None:
        self._take(self.s.anchored(agent, 9, 0.0))

    @rule(free=st.dictionaries(st.sampled_from(AGENTS), st.integers(0, 3)))
    def assign(self, free: dict[str, int]) -> None:
        self._take(self.s.assign(free, 0.0))

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), ok=st.booleans())
    def report(self, data: st.DataObject, ok: bool) -> None:
        r = data.draw(st.sampled_from(self.sent))  # any run ever sent: late and duplicate reports too
        was_running = self.s.parts[r.index].state == PartState.RUNNING and self.s.parts[r.index].attempt == r.attempt
        if ok:
            self._take(self.s.part_done(r.index, r.attempt, "c", 0.0))
            if was_running and self.s.phase in (Phase.PARTS, Phase.SEAL):
                self.done.add(r.index)
        else:
            self._take(self.s.part_failed(r.index, r.attempt, E.EIO, "x", 0.0))

    @rule(agent=st.sampled_from(AGENTS))
    def lose(self, agent: str) -> None:
        self._take(self.s.agent_lost(agent, 0.0))

    @rule()
    def seal(self) -> None:
        before = self.s.phase
        self.s.sealed(0.0)
        if self.s.phase == Phase.DONE and before != Phase.DONE:
            assert before == Phase.SEAL and self.sealed_asked and len(self.done) == len(self.s.parts)

    @rule()
    def cancel(self) -> None:
        self.s.cancel(0.0)

    @invariant()
    def consistent(self) -> None:
        self.s.check()
        if self.s.phase in (Phase.DONE, Phase.FAILED, Phase.CANCELED):
            assert self.s.running() == []


TestStripeMachine = StripeMachine.TestCase
TestStripeMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
