"""Moving a shard's group member (issue 19, item 2): the pure protocol
(coordinator.moves) and the shard state's commands (MoveShard, MoveStep):
the phases, who is quiet, what the leader's driver does next from any
situation, refusals that change nothing, and a snapshot mid-move."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator import moves
from coordinator.moves import Do, Facts, Move, Phase
from coordinator.raft.serializer import _decode_state, _encode_state
from coordinator.state import (
    MoveChanged,
    MoveReply,
    MoveShard,
    MoveStep,
    PreferLeader,
    Rebalance,
    ShardState,
)

GROUP = ("a", "b", "c")


def started(source: str = "a", target: str = "d") -> Move:
    m = moves.begin(GROUP, source, target, 1.0, None)
    assert isinstance(m, Move)
    return m


def test_begin_refuses_what_makes_no_sense_and_takes_a_retry_as_the_same_move() -> None:
    assert moves.begin(GROUP, "x", "d", 1.0, None) == "x is not a member of the shard's group (a, b, c)"
    assert moves.begin(GROUP, "a", "b", 1.0, None) == "b is a member of the shard's group already (a, b, c)"
    m = started()
    assert (m.phase, m.before, m.after(), m.raft_members()) == (Phase.JOINING, GROUP, ("d", "b", "c"),
                                                                  ("a", "b", "c", "d"))
    assert moves.begin(GROUP, "a", "d", 2.0, m) is m
    assert moves.begin(GROUP, "b", "e", 2.0, m) == "another move runs on this shard: moving a -> d (joining)"


def test_phases_go_forward_one_at_a_time_and_abort_only_before_leaving() -> None:
    m = started()
    assert moves.advance(m, "a", "d", Phase.LEAVING, 2.0) == "a move joining cannot go to leaving"
    assert moves.advance(m, "a", "e", Phase.CAUGHT_UP, 2.0) == "no such move on this shard"
    c = moves.advance(m, "a", "d", Phase.CAUGHT_UP, 2.0)
    assert isinstance(c, Move) and c.phase == Phase.CAUGHT_UP and c.at == 2.0 and c.since == 1.0
    assert moves.advance(c, "a", "d", Phase.CAUGHT_UP, 3.0) is c  # a retry
    lv = moves.advance(c, "a", "d", Phase.LEAVING, 3.0)
    assert isinstance(lv, Move)
    assert moves.advance(lv, "a", "d", Phase.ABORTING, 4.0) == "a move leaving cannot go to aborting"
    assert moves.advance(lv, "a", "d", Phase.DONE, 4.0) is None
    ab = moves.advance(m, "a", "d", Phase.ABORTING, 2.0)
    assert isinstance(ab, Move) and moves.advance(ab, "a", "d", Phase.ABORTED, 3.0) is None


def test_only_a_target_not_caught_up_and_a_source_being_removed_are_quiet() -> None:
    m = started()
    phases = {p: (moves.advance(m, "a", "d", p, 2.0) if p != Phase.JOINING else m)
              for p in (Phase.JOINING, Phase.CAUGHT_UP, Phase.ABORTING)}
    assert moves.quiet(phases[Phase.JOINING], "d") and not moves.quiet(phases[Phase.JOINING], "a")
    caught = phases[Phase.CAUGHT_UP]
    assert isinstance(caught, Move)
    assert not any(moves.quiet(caught, r) for r in "abcd")
    leaving = moves.advance(caught, "a", "d", Phase.LEAVING, 3.0)
    assert isinstance(leaving, Move)
    assert [r for r in "abcd" if moves.quiet(leaving, r)] == ["a"]
    assert [r for r in "abcd" if moves.quiet(phases[Phase.ABORTING], r)] == ["d"]  # type: ignore[arg-type]
    assert not moves.quiet(None, "a")


def facts(me: str = "b", members: str = "abc", open_: bool = False, behind: int | None = None) -> Facts:
    return Facts(me, frozenset(members), open_, behind)


def test_the_driver_joins_adds_waits_and_hands_over_in_order() -> None:
    m = started()
    assert moves.decide(m, facts()) == Do.JOIN
    assert moves.decide(m, facts(open_=True)) == Do.ADD
    # added but not connected (restarting, or it closed its member): asked to open it again
    assert moves.decide(m, facts(members="abcd", open_=True, behind=None)) == Do.JOIN
    assert moves.decide(m, facts(members="abcd", open_=True, behind=10_000)) == Do.WAIT
    # a new leader does not know the target opened: it asks again (JoinShard is idempotent)
    assert moves.decide(m, facts(members="abcd", open_=False, behind=10_000)) == Do.JOIN
    assert moves.decide(m, facts(members="abcd", open_=True, behind=3)) == Do.CAUGHT_UP
    c = moves.advance(m, "a", "d", Phase.CAUGHT_UP, 2.0)
    assert isinstance(c, Move)
    assert moves.decide(c, facts(me="a", members="abcd")) == Do.HAND_OVER
    assert moves.decide(c, facts(me="b", members="abcd")) == Do.LEAVING
    lv = moves.advance(c, "a", "d", Phase.LEAVING, 3.0)
    assert isinstance(lv, Move)
    assert moves.decide(lv, facts(me="a", members="abcd")) == Do.HAND_OVER
    assert moves.decide(lv, facts(me="d", members="abcd")) == Do.REMOVE_SOURCE
    assert moves.decide(lv, facts(me="d", members="bcd")) == Do.DONE
    ab = moves.advance(m, "a", "d", Phase.ABORTING, 2.0)
    assert isinstance(ab, Move)
    assert moves.decide(ab, facts(me="d", members="abcd")) == Do.HAND_OVER
    assert moves.decide(ab, facts(me="a", members="abcd")) == Do.REMOVE_TARGET
    assert moves.decide(ab, facts(me="a", members="abc")) == Do.ABORTED


@given(st.integers(0, 6), st.sampled_from("abc"), st.integers(0, 2**16))
def test_any_run_of_the_driver_keeps_a_majority_of_the_old_group_until_the_target_caught_up(
        catch_up_at: int, leader: str, forget: int) -> None:
    """Simulate the driver against a group whose membership follows its
    steps, from any first leader, with a target that takes a while to catch
    up and leaders that forget the target opened its member (a new leader
    after a step; bits of *forget*): the source leaves only after the target
    counted as caught up, the group never holds fewer than 3 members that
    have the log, and the move ends with the source out and not leading."""
    move: Move | None = started()
    members = set(GROUP)
    caught_up = set(GROUP)
    target_open = False
    for k in range(60):
        if move is None:
            break
        if k < 16 and forget >> k & 1:
            target_open = False
        lag = 0 if "d" in members and k > catch_up_at else None
        step = moves.decide(move, Facts(leader, frozenset(members), target_open, lag))
        if step == Do.JOIN:
            target_open = True
        elif step == Do.ADD:
            members.add("d")
        elif step == Do.CAUGHT_UP:
            caught_up.add("d")
            move = moves.advance(move, "a", "d", Phase.CAUGHT_UP, k)  # type: ignore[assignment]
        elif step == Do.HAND_OVER:
            leader = next(m for m in sorted(members) if m not in (move.source, leader))
        elif step == Do.LEAVING:
            move = moves.advance(move, "a", "d", Phase.LEAVING, k)  # type: ignore[assignment]
        elif step == Do.REMOVE_SOURCE:
            assert "d" in caught_up, "the source left before the target caught up"
            members.discard("a")
        elif step == Do.DONE:
            move = moves.advance(move, "a", "d", Phase.DONE, k)  # type: ignore[assignment]
        assert len(members & caught_up) >= 3
    assert move is None and members == {"b", "c", "d"} and leader != "a"


def state_with_move() -> tuple[ShardState, Move]:
    s = ShardState()
    res = s.apply(MoveShard(1.0, "a", "d", GROUP))
    reply = res.replies[0]
    assert isinstance(reply, MoveReply) and reply.error == "" and isinstance(reply.move, Move)
    assert res.effects == [MoveChanged()]
    return s, reply.move


def test_the_shard_state_records_the_group_and_the_move_and_refuses_what_does_not_fit() -> None:
    s, m = state_with_move()
    assert s.group == GROUP and s.move == m
    # the same request again: the same move, no change
    again = s.apply(MoveShard(2.0, "a", "d", GROUP))
    assert again.effects == [] and again.replies[0] == MoveReply(m)
    # another move, a step out of order, an unknown phase: refused, nothing changes
    for cmd, err in ((MoveShard(2.0, "b", "e", GROUP), "another move runs"),
                     (MoveStep(2.0, "a", "d", int(Phase.DONE)), "cannot go to done"),
                     (MoveStep(2.0, "a", "d", 99), "no move phase 99"),
                     (MoveStep(2.0, "b", "d", int(Phase.CAUGHT_UP)), "no such move")):
        r = s.apply(cmd)
        assert err in r.replies[0].error and r.effects == [] and s.move == m  # type: ignore[attr-defined]
    for phase in (Phase.CAUGHT_UP, Phase.LEAVING, Phase.DONE):
        r = s.apply(MoveStep(3.0, "a", "d", int(phase)))
        assert r.effects == [MoveChanged()]
    assert s.move is None and s.group == ("d", "b", "c")
    # the next move starts from the recorded group, whatever the leader thought
    r = s.apply(MoveShard(4.0, "b", "a", ("x", "y", "z")))
    assert r.replies[0].move.before == ("d", "b", "c")  # type: ignore[attr-defined]


def test_an_aborted_move_leaves_the_group_as_it_was() -> None:
    s, _m = state_with_move()
    s.apply(MoveStep(2.0, "a", "d", int(Phase.ABORTING)))
    s.apply(MoveStep(3.0, "a", "d", int(Phase.ABORTED)))
    assert s.move is None and s.group == GROUP


def test_a_snapshot_mid_move_carries_the_group_and_the_move() -> None:
    s, _m = state_with_move()
    s.apply(MoveStep(2.0, "a", "d", int(Phase.CAUGHT_UP)))
    back = _decode_state(_encode_state(s))
    assert back.group == GROUP and back.move == s.move and back.move is not None
    assert back.move.phase == Phase.CAUGHT_UP


def test_a_preferred_leader_is_a_member_put_first_and_not_changed_while_a_move_runs() -> None:
    s = ShardState()
    r = s.apply(PreferLeader(1.0, "b", GROUP))
    assert r.effects == [MoveChanged()] and s.group == ("b", "a", "c")
    assert s.apply(PreferLeader(2.0, "b", GROUP)).effects == []  # already first: nothing changes
    bad = s.apply(PreferLeader(2.0, "x", GROUP))
    assert "x is not a member" in bad.replies[0].error and s.group == ("b", "a", "c")  # type: ignore[attr-defined]
    s.apply(MoveShard(3.0, "a", "d", GROUP))
    busy = s.apply(PreferLeader(4.0, "c", GROUP))
    assert "a move runs" in busy.replies[0].error and s.group == ("b", "a", "c")  # type: ignore[attr-defined]


def test_the_rebalancer_settings_drain_and_undrain_replicas_and_switch_it() -> None:
    s = ShardState()
    assert s.rebalance and s.replicas_drained == {}
    s.apply(Rebalance(1.0, "r4", True))
    s.apply(Rebalance(2.0, "r4", True))  # again: still drained since the first time
    assert s.replicas_drained == {"r4": 1.0}
    s.apply(Rebalance(3.0, enabled=0))
    assert not s.rebalance and s.replicas_drained == {"r4": 1.0}
    s.apply(Rebalance(4.0, "r4", False))
    s.apply(Rebalance(5.0, enabled=1))
    assert s.rebalance and s.replicas_drained == {}
    back = _decode_state(_encode_state(s))
    assert back.rebalance and back.replicas_drained == {}
