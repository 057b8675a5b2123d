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
    le.assigned(A, "r1", 0.0)
    assert le.valid(A, 9.9) and le.expired(9.9) == []
    assert le.expired(10.0) == [(A, 3, 10.0)]
    assert le.expired(11.0) == []  # named once
    assert not le.valid(A, 10.0) and not le.valid(A, 5.0)  # expired stays expired, whatever the clock says


def test_a_grant_renews_from_when_the_token_was_sent_not_when_the_answer_came() -> None:
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0)
    t = le.token("r1", 4.0)
    assert t and le.granted("r1", t, [3]) == 1  # the answer arrives at 9.5: the lease counts from 4.0
    assert le.valid(A, 13.9) and not le.valid(A, 14.0)


def test_only_the_shards_a_replica_leads_are_renewed() -> None:
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0)
    le.assigned(B, "r1", 0.0)
    t = le.token("r1", 5.0)
    le.granted("r1", t, [5])
    assert [x[0] for x in le.expired(10.0)] == [A]
    assert le.valid(B, 14.0)


def test_an_action_a_split_moved_is_renewed_by_the_leader_of_the_shard_that_holds_it_not_the_one_its_id_names() -> None:
    # A's id names shard 3, but a split moved it to shard 9: the replica leading shard 3 may still
    # answer while the one leading shard 9 (which would give the action to another agent after its
    # grace) no longer hears us
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0, shard=9)
    t = le.token("r1", 5.0)
    le.granted("r1", t, [3])
    assert le.expired(10.0) == [(A, 9, 10.0)] and not le.valid(A, 12.0)
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0, shard=9)
    t = le.token("r1", 5.0)
    le.granted("r1", t, [9])
    assert le.valid(A, 14.0) and le.expired(14.0) == []


def test_unknown_old_and_lost_stream_tokens_renew_nothing() -> None:
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0)
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
    le.assigned(A, "r1", 0.0)
    assert le.token("r1", 0.0) == 0 and le.expired(1e9) == [] and le.valid(A, 1e9)


def test_the_shortest_lease_any_replica_gives_wins() -> None:
    le = welcomed(10.0)
    le.welcomed("r2", 6.0, 1.0, 0.0)
    le.welcomed("r3", 20.0, 1.0, 0.0)
    assert le.duration == 6.0


def test_a_new_assignment_renews_an_expired_action_and_an_ended_one_is_forgotten() -> None:
    le = welcomed(10.0)
    le.assigned(A, "r1", 0.0)
    assert le.expired(10.0)
    t = le.token("r1", 29.0)
    le.granted("r1", t, [])  # the replica heard us at 29 (it leads none of our shards)
    assert le.assigned(A, "r1", 30.0)  # a newer attempt: renewed from 29
    assert le.valid(A, 38.9) and not le.valid(A, 39.0)
    le.ended(A)
    assert not le.valid(A, 31.0) and le.holding() == 0


def test_an_assignment_is_renewed_from_when_the_replica_last_heard_us_not_from_its_arrival() -> None:
    """The nemesis case: the agent is frozen (SIGSTOP) just after its last
    token was answered; an assignment waits in its socket while the
    replica gives the action to another agent after its grace. On SIGCONT
    the assignment arrives with its lease long over: not valid, not to be
    started."""
    le = welcomed(10.0, now=0.0)  # the Hello went out at 0
    assert le.assigned(A, "r1", 2.0) and le.valid(A, 9.9) and not le.valid(A, 10.0)
    t = le.token("r1", 5.0)
    le.granted("r1", t, [3])
    # frozen from 5.5 to 40: the assignment of B, committed at 6, arrives at 40
    assert not le.assigned(B, "r1", 40.0)
    assert le.expired(40.0) == [(A, 3, 35.0), (B, 5, 35.0)]


def test_an_assignment_on_a_stream_not_welcomed_or_lost_is_never_valid() -> None:
    le = welcomed(10.0)
    assert not le.assigned(A, "r2", 0.0)
    le.lost("r1")
    assert not le.assigned(B, "r1", 0.0)


def test_the_hello_counts_from_when_it_was_sent() -> None:
    le = Leases()
    le.welcomed("r1", 10.0, 1.0, 7.0, hello_sent=1.0)  # the Welcome took 6 s to come back
    assert le.assigned(A, "r1", 7.0) and not le.valid(A, 11.0)


def test_an_unanswered_token_or_an_older_answer_does_not_move_the_basis() -> None:
    le = welcomed(10.0)
    t1 = le.token("r1", 4.0)
    t2 = le.token("r1", 8.0)
    le.granted("r1", t2, [])
    le.granted("r1", t1, [])  # answered late: the basis stays at 8
    assert le.assigned(A, "r1", 17.9) and not le.valid(A, 18.0)
    le.token("r1", 12.0)  # never answered
    assert not le.assigned(B, "r1", 18.0)


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
    le.assigned(A, "r1", 0.0)
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


@settings(max_examples=300, deadline=None)
@given(
    grace=st.floats(8.0, 120.0),
    fallback=st.floats(0.5, 3.0),
    tokens=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 3.0), st.booleans(), st.booleans()),
                    min_size=0, max_size=40),
    sent=st.floats(0.0, 60.0),
    transit=st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 200.0)),  # a frozen agent reads it late
)
def test_an_assignment_however_late_never_holds_a_lease_past_its_give_away(
        grace: float, fallback: float, tokens: list[tuple[float, float, bool, bool]], sent: float,
        transit: float) -> None:
    """The replica sends the assignment of B at *sent*; it reaches the
    agent *transit* later (a frozen agent, a slow socket), in time order
    with the token answers. Whatever the order, B's lease is never valid
    at or after the moment a replica may give B away, less the margin."""
    duration, safe = agent_lease(grace, 1.0, fallback)
    if not safe:
        return
    le = welcomed(duration, 1.0)  # the Hello went out at 0
    heard = 0.0
    now = 0.0
    arrivals: list[tuple[float, int, int]] = [(sent + transit, 1, 0)]  # (when, 0 answer / 1 assignment, token)
    for gap, delay, lost_there, lost_back in tokens:
        now += le.token_every + gap
        token = le.token("r1", now)
        if lost_there:
            continue
        heard = max(heard, now + delay)
        if not lost_back:
            arrivals.append((now + 2 * delay, 0, token))
    valid_on_arrival = None
    for when, what, token in sorted(arrivals):
        if what == 0:
            le.granted("r1", token, [5])
        else:
            valid_on_arrival = le.assigned(B, "r1", when)
    give_away = heard + grace - fallback
    margin = (grace - fallback) / 2
    assert not le.valid(B, give_away - margin + 1e-9)
    if valid_on_arrival:
        assert sent + transit < give_away - margin + 1e-9, "started after it may run elsewhere"
