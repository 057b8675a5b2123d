"""The coordinator's side of the agent protocol (coordinator/agents.py):
sessions, credits, running reports, leases and grace, reconcile and the
backlog hint, with the time passed in: no event loop, no network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.agents import (
    IN_FLIGHT_GRACE,
    AgentBook,
    AgentIdInUse,
    Held,
    InvalidHello,
    backlog_hint,
    reconcile,
    zero,
)
from coordinator.state import Kind, State

A, R, M = Kind.ARCHIVE, Kind.RESTORE, Kind.REMOVE
SLOTS = {A: 4, R: 2, M: 1}


def book(grace: float = 60.0, heartbeat: float = 5.0) -> AgentBook:
    return AgentBook(agent_grace=grace, heartbeat=heartbeat)


def test_one_live_session_per_agent_id_and_a_stale_one_is_replaced() -> None:
    b = book()
    s1, old = b.hello("a1", "h", (1,), SLOTS, "v", "peer1", 0.0)
    assert old is None and b.known("a1")
    with pytest.raises(AgentIdInUse, match="already has a live session from peer1"):
        b.hello("a1", "h", (1,), SLOTS, "v", "peer2", 14.0)  # heard within the lease (3 x 5 s)
    s2, old = b.hello("a1", "h", (1,), SLOTS, "v", "peer2", 15.0)
    assert old is s1 and not s1.alive and s2.alive and b.sessions["a1"] is s2
    assert b.gone(s1, 16.0) is None, "the replaced session's end starts no grace period"
    assert b.grace == {}
    for bad in ("", "x" * 129):
        with pytest.raises(InvalidHello):
            b.hello(bad, "h", (), SLOTS, "v", "p", 0.0)


def test_credits_add_up_and_an_absolute_grant_counts_out_what_is_on_its_way() -> None:
    b = book()
    s, _ = b.hello("a1", "h", (), SLOTS, "v", "p", 0.0)
    b.ready(s, {A: 3, R: 1, M: 0})
    b.ready(s, {A: 1, R: 0, M: 0})
    assert s.credits == {A: 4, R: 1, M: 0}
    for _ in range(3):
        b.assigned(s, A)
    assert s.credits[A] == 1 and s.sent[A] == 3
    # the agent has seen 1 of the 3 assignments and says it holds 2 credits here:
    # the 2 still on their way will use 2 of them
    b.ready(s, {A: 2, R: 1, M: 0}, absolute=True, seen={A: 1, R: 0, M: 0})
    assert s.credits[A] == 0
    b.ready(s, {A: 0, R: 1, M: 0}, absolute=True, seen={A: 0, R: 0, M: 0})
    assert s.credits == {A: -3, R: 1, M: 0}, "3 on their way, none granted: the next 3 credits pay them"
    assert s.usable() == {A: 0, R: 1, M: 0}
    assert b.dispatchable() == [s]  # a restore credit
    b.ready(s, {A: 2, R: 0, M: 0})
    assert s.usable()[A] == 0
    b.ready(s, {A: 0, R: 0, M: 0}, absolute=True, seen={A: 3, R: 0, M: 0})
    assert b.dispatchable() == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["assign", "deliver_to_agent", "agent_ends_job", "agent_takes_back",
                                 "agent_resends_its_grant", "deliver_to_coordinator"]), max_size=80))
def test_credits_converge_whatever_the_interleaving(steps: list[str]) -> None:
    """An agent (modelled as agentd keeps it: granted, seen, running) and
    this book exchange messages over one ordered stream each way. Whatever
    the interleaving, once every message is delivered both sides agree on
    the credits (an assignment sent before the agent took credits back
    arrives beyond them: the agent then sends its whole grant again).
    Counting an absolute grant smaller
    than the assignments on their way as 0 instead of a debt broke this
    (hypothesis found it: the agent took back credits while two
    assignments were on their way, then freed a slot; the replica then
    held one credit more than the agent had granted, and its next
    assignment went beyond them)."""
    b = book()
    s, _ = b.hello("a1", "h", (), {A: 3, R: 0, M: 0}, "v", "p", 0.0)
    slots, granted, seen, running = 3, 0, 0, 0
    to_agent: list[str] = []  # assignments on their way
    to_coord: list[tuple[bool, int, int]] = []  # (absolute, credits, seen)

    def agent_grants() -> None:
        nonlocal granted
        free = slots - running - granted
        if free > 0:
            granted += free
            to_coord.append((False, free, 0))

    refused = 0

    def deliver_assignment() -> None:
        nonlocal granted, seen, running, refused
        to_agent.pop(0)
        seen += 1
        if granted > 0:
            granted -= 1
            running += 1
            return
        # beyond the credits (it took them back meanwhile): runs on a free
        # slot, or is given back (no attempt used); either way the agent
        # sends its whole grant again, so that the replica counts right
        if running + granted < slots:
            running += 1
        else:
            refused += 1
        to_coord.append((True, granted, seen))

    agent_grants()
    for step in steps:
        if step == "assign" and s.usable()[A] > 0:
            b.assigned(s, A)
            to_agent.append("assignment")
        elif step == "deliver_to_agent" and to_agent:
            deliver_assignment()
        elif step == "agent_ends_job" and running:
            running -= 1
            agent_grants()
        elif step == "agent_takes_back" and granted:
            granted //= 2  # (to give them to another stream)
            to_coord.append((True, granted, seen))
        elif step == "agent_resends_its_grant":
            to_coord.append((True, granted, seen))  # what agentd does when the backlog and its grant disagree
        elif step == "deliver_to_coordinator" and to_coord:
            absolute, n, sn = to_coord.pop(0)
            b.ready(s, {A: n}, absolute, {A: sn})
        assert running <= slots
    def flush() -> None:
        while to_agent or to_coord:
            if to_coord:
                absolute, n, sn = to_coord.pop(0)
                b.ready(s, {A: n}, absolute, {A: sn})
            if to_agent:
                deliver_assignment()

    flush()
    assert s.credits[A] == granted, "both sides agree once nothing is on its way"


def test_a_silent_session_lapses_its_grace_runs_and_the_agent_is_lost() -> None:
    b = book(grace=60.0, heartbeat=5.0)
    s, _ = b.hello("a1", "h", (), SLOTS, "v", "p", 0.0)
    b.ready(s, {A: 2})
    b.heard(s, 10.0)
    assert b.lapsed(25.0) == [] and b.lapsed(25.1) == [s]
    end = b.gone(s, 26.0)
    assert end == 86.0 and not s.alive and s.credits == zero()
    assert not b.expire("a1", 85.0), "not before the end of its grace period"
    assert b.expire("a1", 86.0) and not b.known("a1")
    assert not b.expire("a1", 100.0), "lost once"


def test_an_agent_back_within_its_grace_is_not_lost() -> None:
    b = book(grace=60.0)
    s, _ = b.hello("a1", "h", (), SLOTS, "v", "p", 0.0)
    end = b.gone(s, 1.0)
    b.hello("a1", "h", (), SLOTS, "v", "p", 30.0)
    assert end is not None and not b.expire("a1", end) and b.known("a1")


def test_a_new_leader_resends_cancels_starts_grace_for_absent_holders_and_asks_everyone() -> None:
    b = book(grace=60.0)
    s, _ = b.hello("a1", "h", (), SLOTS, "v", "p", 0.0)
    plan = b.leader_ready({"a1": [(7, 1, State.STARTED), (8, 2, State.CANCELING)],
                           "a2": [(9, 1, State.STARTED)]}, 5.0)
    assert plan.cancels == (("a1", 8, 2),) and plan.grace == ("a2",) and plan.ask == (s,)
    assert b.grace == {"a2": 65.0}
    again = b.leader_ready({"a2": [(9, 1, State.STARTED)]}, 20.0)
    assert again.grace == ("a2",) and b.grace == {"a2": 80.0}, (
        "counted again from the new leadership: the shard's previous leader may have renewed a2's lease until now")
    t1 = b.ask_running(s, 5.0)
    t2 = b.ask_running(s, 6.0)
    assert t1 != t2 and b.answered(s, t1) == 5.0 and b.answered(s, t1) is None


def test_reconcile_keeps_matches_stops_strangers_and_reclaims_what_the_agent_lost() -> None:
    held = [Held(1003, 1, State.STARTED, started=0.0),        # runs: kept
            Held(2003, 1, State.CANCELING, "user", 0.0),      # runs, being canceled: cancel again
            Held(3003, 2, State.STARTED, started=0.0),        # the agent runs attempt 1: lost
            Held(4003, 1, State.STARTED, started=0.0),        # not running: lost
            Held(5003, 1, State.STARTED, started=98.0),       # assigned 2 s before the question: maybe on its way
            Held(6003, 1, State.STARTED, started=101.0)]      # assigned after the question: ask again too
    running = [(1003, 1), (2003, 1), (3003, 1), (7003, 1), (8004, 1)]  # 8004: another shard's business
    plan = reconcile(3, running, held, before=100.0)
    assert plan.cancels == ((2003, 1, "user"),)
    assert plan.lost == (3003, 4003)
    assert plan.strangers == ((3003, 1), (7003, 1))
    assert plan.recent == 2
    # asked on a hello (no question time): everything counts, nothing is "recent"
    plan = reconcile(3, [], held)
    assert plan.lost == (1003, 3003, 4003, 5003, 6003) and plan.recent == 0
    assert plan.cancels == ((2003, 1, "user"),), "CANCELING, not running: its cancel again, not a Reclaim"
    assert IN_FLIGHT_GRACE == 5.0


def test_the_backlog_hint_is_capped_sent_on_change_and_again_to_a_stalled_agent() -> None:
    b = book()
    s, _ = b.hello("a1", "h", (), SLOTS, "v", "p", 0.0)
    assert backlog_hint(s, {A: 100}) == {A: 4, R: 0, M: 0}  # capped at the slots
    assert backlog_hint(s, {A: 50}) is None  # unchanged once capped
    assert backlog_hint(s, {A: 50}, stalled_only=True) == {A: 4, R: 0, M: 0}  # work here, no credit here
    b.ready(s, {A: 1})
    assert backlog_hint(s, {A: 50}, stalled_only=True) is None
    assert backlog_hint(s, {}) == zero()
