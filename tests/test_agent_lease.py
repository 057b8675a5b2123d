"""The agent's lease on its actions (agentd/lease.py, pure) and the
coordinator's choice of its length (coordinator.agents.agent_lease).

The promise: an agent cut off from the leaders stops an action before any
replica may give it to another agent. The property test below plays a
network that delays and drops tokens and grants at random, and a
coordinator that gives the action away ``agent_grace`` after it last heard
from the agent: the agent never counts its lease as valid at or after that
moment, less the margin it keeps to stop the mover."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.lease import KEEP_TOKENS, Leases
from coordinator.agents import AGENT_LEASE_MIN_HEARTBEATS, agent_lease

A = 8 * 1000 + 3  # an action of shard 3 (action ids carry their shard modulo 1000)
B = 8 * 1000 + 5  # shard 5


def welcomed(duration: float = 10.0, heartbeat: float = 1.0, now: float = 0.0) -> Leases:
    le = Leases()
    le.welcomed("r1", duration, heartbeat, now)
    return le


def test_an_action_nobody_renews_expires_once_and_may_no_longer_publish() -> None:
    le = welcomed(10.0)
    le.assigned(A, 0.0)
    assert le.valid(A, 9.9) and le.expired(9.9) == []
    assert le.expired(10.0) == [(A, 3, 10.0)]
    assert le.expired(11.0) == []  # named once
    assert not le.valid(A, 10.0) and not le.valid(A, 5.0)  # expired stays expired, whatever the clock says


def test_a_grant_renews_from_when_the_token_was_sent_not_when_the_answer_came() -> None:
    le = welcomed(10.0)
    le.assigned(A, 0.0)
    t = le.token("r1", 4.0)
    assert t and le.granted("r1", t, [3]) == 1  # the answer arrives at 9.5: the lease counts from 4.0
    assert le.valid(A, 13.9) and not le.valid(A, 14.0)


def test_only_the_shards_a_replica_leads_are_renewed() -> None:
    le = welcomed(10.0)
    le.assigned(A, 0.0)
    le.assigned(B, 0.0)
    t = le.token("r1", 5.0)
    le.granted("r1", t, [5])
    assert [x[0] for x in le.expired(10.0)] == [A]
    assert le.valid(B, 14.0)


def test_unknown_old_and_lost_stream_tokens_renew_nothing() -> None:
    le = welcomed(10.0)
    le.assigned(A, 0.0)
    assert le.granted("r1", 12345, [3]) == 0  # never sent
    first = le.token("r1", 1.0)
    for k in range(KEEP_TOKENS):
        le.token("r1", 2.0 + k * le.token_every)
    assert le.granted("r1", first, [3]) == 0  # forgotten: too old
    t = le.token("r1", 40.0)
    le.lost("r1")
    assert le.granted("r1", t, [3]) == 0  # the stream went down with it
    assert le.granted("r1", t, [3]) == 0  # and a token is used once


def test_tokens_are_due_every_heartbeat_or_quarter_lease() -> None:
    le = welcomed(8.0, heartbeat=5.0)
    assert le.token_every == 2.0
    assert le.token("r1", 0.0) and not le.token("r1", 1.9) and le.token("r1", 2.0)
    assert le.due("r9", 0.0) == math.inf  # a stream never welcomed sends none


def test_no_lease_from_the_coordinator_means_nothing_expires() -> None:
    le = Leases()
    le.welcomed("r1", 0.0, 1.0, 0.0)
    le.assigned(A, 0.0)
    assert le.token("r1", 0.0) == 0 and le.expired(1e9) == [] and le.valid(A, 1e9)


def test_the_shortest_lease_any_replica_gives_wins() -> None:
    le = welcomed(10.0)
    le.welcomed("r2", 6.0, 1.0, 0.0)
    le.welcomed("r3", 20.0, 1.0, 0.0)
    assert le.duration == 6.0


def test_a_new_assignment_renews_an_expired_action_and_an_ended_one_is_forgotten() -> None:
    le = welcomed(10.0)
    le.assigned(A, 0.0)
    assert le.expired(10.0)
    le.assigned(A, 30.0)  # a newer attempt, assigned by its leader just now
    assert le.valid(A, 39.0)
    le.ended(A)
    assert not le.valid(A, 31.0) and le.holding() == 0


def test_the_lease_ends_well_inside_the_grace_period() -> None:
    assert agent_lease(60.0, 5.0, 3.0) == (28.5, True)
    # too short a grace: the minimum (3 heartbeats) is used and said to be unsafe
    assert agent_lease(3.0, 1.0, 1.5) == (AGENT_LEASE_MIN_HEARTBEATS * 1.0, False)


@settings(max_examples=300, deadline=None)
@given(
    grace=st.floats(8.0, 120.0),
    fallback=st.floats(0.5, 3.0),
    events=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 3.0), st.booleans(), st.booleans()),
                    min_size=1, max_size=60),
    cut_after=st.integers(0, 60),
)
def test_a_cut_off_agent_stops_before_its_action_may_be_given_away(
        grace: float, fallback: float, events: list[tuple[float, float, bool, bool]], cut_after: int) -> None:
    """Tokens go out every token_every; each is lost or arrives after a
    delay; the leader answers (or the answer is lost) after another delay.
    After *cut_after* tokens the network is cut. The coordinator may give
    the action away at (the last time it heard the agent) + grace - fallback
    (a new leader elected while the old, cut-off one still answered). The
    agent must consider its lease ended at least half the remaining time
    before that (its margin to stop the mover)."""
    heartbeat = 1.0
    duration, safe = agent_lease(grace, heartbeat, fallback)
    if not safe:
        return
    le = welcomed(duration, heartbeat)
    le.assigned(A, 0.0)
    heard = 0.0  # the coordinator last heard the agent then (the assignment's ack, at worst)
    now = 0.0
    answers: list[tuple[float, int]] = []
    for k, (gap, delay, lost_there, lost_back) in enumerate(events):
        now += le.token_every + gap
        token = le.token("r1", now)
        assert token
        if k >= cut_after or lost_there:
            continue
        arrived = now + delay
        heard = max(heard, arrived)
        if not lost_back:
            answers.append((arrived + delay, token))
    for _when, token in sorted(answers):
        le.granted("r1", token, [3])
    give_away = heard + grace - fallback
    margin = (grace - fallback) / 2
    t = give_away - margin + 1e-9  # (floating point: the boundary itself is already outside)
    assert not le.valid(A, t), f"lease still valid {margin:.1f} s before the action may run elsewhere"
