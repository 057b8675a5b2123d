"""Pure tests of a user's cancel (``Cancel.owner``): a user cancels only
actions nobody else asked for, the whole command is refused otherwise and
nothing changes; entries and snapshots written before owners existed still
apply."""

from __future__ import annotations

import pickle
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coordinator.state as S
from coordinator.state import (
    Cancel,
    CancelOutcome,
    CancelRefused,
    CancelReply,
    CookieTarget,
    FidTarget,
    Item,
    Kind,
    Outcome,
    Requester,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid

FS = "lustre1"


def fid(n: int) -> Fid:
    return Fid(0x200000400, n, 0)


def restore(n: int, owner: str, cookie: int = 0, initiator: str = "hsmctl@h") -> Item:
    key = f"{initiator}:{cookie}" if cookie else ""
    return Item(FS, fid(n), Kind.RESTORE, requester=Requester(initiator, cookie, owner=owner), key=key)


class Shard:
    def __init__(self) -> None:
        self.state = ShardState()
        self.now = 100.0

    def apply(self, cmd: Any) -> Any:
        res = self.state.apply(cmd)
        self.state.check_invariants()
        return res

    def submit(self, *items: Item) -> list[int]:
        self.now += 1
        replies = self.apply(Submit(self.now, items)).replies
        assert all(r.outcome in (Outcome.CREATED, Outcome.JOINED) for r in replies)
        return [r.action_id for r in replies]

    def cancel(self, owner: str, *ids: int, **kw: Any) -> list[Any]:
        self.now += 1
        return list(self.apply(Cancel(self.now, tuple(ids), owner=owner, **kw)).replies)

    def view(self) -> Any:
        """Everything a cancel could change."""
        return [(a.id, a.state, a.error, tuple(a.requesters)) for a in self.state.actions.values()], \
            {k: list(q) for k, q in self.state.ready.items()}, dict(self.state.keys)


def test_a_user_cancels_an_action_only_they_asked_for() -> None:
    sh = Shard()
    [a] = sh.submit(restore(1, "alice"))
    [a2] = sh.submit(restore(1, "alice", cookie=7))  # asked twice: still only hers
    assert a2 == a
    [r] = sh.cancel("alice", a)
    assert isinstance(r, CancelReply) and r.outcome == CancelOutcome.DONE
    assert sh.state.actions[a].state == State.CANCELED


@pytest.mark.parametrize("other", ["bob", ""], ids=["another user", "an operator or the MDT"])
def test_a_merged_restore_is_not_taken_away_from_another_requester(other: str) -> None:
    """Refused whole (not detached): the copy would not stop, and the other
    requester still wants the file."""
    sh = Shard()
    [a] = sh.submit(restore(1, "alice"))
    [j] = sh.submit(restore(1, other))
    assert j == a and len(sh.state.actions[a].requesters) == 2
    before = sh.view()
    for owner in ("alice",) + ((other,) if other else ()):
        [r] = sh.cancel(owner, a)
        assert isinstance(r, CancelRefused) and r.action_id == a
        assert "requested by 1 requester(s) other than" in r.reason
    assert sh.view() == before
    # an operator's cancel (no owner) still cancels it for everyone
    assert sh.cancel("", a)[0].outcome == CancelOutcome.DONE


def test_one_target_not_theirs_refuses_the_whole_cancel_by_id_file_or_cookie() -> None:
    sh = Shard()
    [mine, theirs] = sh.submit(restore(1, "alice"), restore(2, "bob", cookie=9, initiator="alice"))
    before = sh.view()
    for kw in ({"action_ids": (mine, theirs)},
               {"fids": (FidTarget(FS, fid(1)), FidTarget("", fid(2)))},
               {"action_ids": (mine,), "cookies": (CookieTarget("alice", 9),)}):
        sh.now += 1
        [r] = sh.apply(Cancel(sh.now, owner="alice", **kw)).replies
        assert isinstance(r, CancelRefused) and r.action_id == theirs, kw
        assert sh.view() == before
    # the initiator a client fills in is not who it is: bob's cookie names
    # "alice" as initiator, and still alice cannot cancel it, bob can
    assert sh.cancel("bob", cookies=(CookieTarget("alice", 9),))[0].outcome == CancelOutcome.DONE
    assert sh.state.actions[mine].state == State.WAITING


def test_ended_and_unknown_targets_are_answered_as_usual() -> None:
    sh = Shard()
    [a, b] = sh.submit(restore(1, "bob"), restore(2, "alice"))
    assert sh.cancel("", a)[0].outcome == CancelOutcome.DONE  # ended: nobody's any more
    replies = sh.cancel("alice", a, b, 999_000, cookies=(CookieTarget("x", 1),))
    assert [r.outcome for r in replies] == [CancelOutcome.ALREADY_ENDED, CancelOutcome.DONE,
                                           CancelOutcome.NOT_FOUND, CancelOutcome.NOT_FOUND]


def test_a_user_may_not_cancel_everything_even_in_a_hand_made_command() -> None:
    sh = Shard()
    [a] = sh.submit(restore(1, "alice"))
    [r] = sh.cancel("alice", all=True)
    assert isinstance(r, CancelRefused) and sh.state.actions[a].state == State.WAITING


def test_a_running_action_of_the_user_is_stopped_on_its_agent() -> None:
    sh = Shard()
    [a] = sh.submit(restore(1, "alice"))
    sh.apply(S.Assign(sh.now, "ag", (a,)))
    res = sh.apply(Cancel(sh.now + 1, (a,), owner="alice"))
    assert res.replies[0].outcome == CancelOutcome.SENT
    assert any(isinstance(e, S.SendCancel) and e.agent == "ag" for e in res.effects)


def _old_pickle(obj: Any, name: str, old: type) -> bytes:
    """*obj* pickled as the build before owners existed wrote it (the class
    *name* of coordinator.state replaced by *old* while pickling)."""
    new = getattr(S, name)
    setattr(S, name, old)
    try:
        return pickle.dumps(obj, protocol=5)
    finally:
        setattr(S, name, new)


def test_entries_and_requesters_written_before_owners_existed_still_apply() -> None:
    OldRequester = namedtuple("Requester", "initiator cookie uid gid projid when key")  # noqa: PYI024
    OldRequester.__module__ = "coordinator.state"
    OldRequester.__qualname__ = "Requester"
    old_req = pickle.loads(_old_pickle(OldRequester("mdt", 5, 0, 0, 0, 1.0, "mdt:5"), "Requester", OldRequester))
    assert old_req == Requester("mdt", 5, 0, 0, 0, 1.0, "mdt:5") and old_req.owner == ""
    # a Cancel journaled before: pickled by its fields, six of them then

    class OldCancel:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Cancel, (5.0, (7,), (), False, "r", ()))

    old_cancel = pickle.loads(pickle.dumps(OldCancel(), protocol=5))
    assert isinstance(old_cancel, Cancel) and old_cancel.owner == "" and old_cancel.action_ids == (7,)
    sh = Shard()
    [a] = sh.submit(Item(FS, fid(1), Kind.RESTORE, requester=old_req))
    [j] = sh.submit(restore(1, "alice"))
    assert j == a
    # an unrestricted (old) cancel cancels it; a user's does not
    assert isinstance(sh.cancel("alice", a)[0], CancelRefused)
    sh.now += 1
    assert sh.apply(Cancel(sh.now, (a,), (), False, "r", ())).replies[0].outcome == CancelOutcome.DONE


def test_owners_survive_a_snapshot() -> None:
    from coordinator.raft.serializer import _decode_state, _encode_state

    sh = Shard()
    [a] = sh.submit(restore(1, "alice"))
    st = _decode_state(_encode_state(sh.state))
    assert st.actions[a].requesters[0].owner == "alice"
    assert isinstance(st.apply(Cancel(200.0, (a,), owner="bob")).replies[0], CancelRefused)
    assert st.apply(Cancel(201.0, (a,), owner="alice")).replies[0].outcome == CancelOutcome.DONE


OWNERS = ("alice", "bob", "")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["submit", "cancel", "assign"]), st.sampled_from(OWNERS),
                          st.lists(st.integers(1, 4), min_size=1, max_size=3)), max_size=40))
def test_no_sequence_lets_a_user_cancel_what_someone_else_asked_for(steps: list[tuple[str, str, list[int]]]) -> None:
    """Whatever was submitted by whom, a user's cancel either changes only
    actions all of whose requesters are theirs, or is refused and changes
    nothing."""
    sh = Shard()
    for op, owner, files in steps:
        sh.now += 1
        if op == "submit":
            sh.apply(Submit(sh.now, tuple(restore(n, owner) for n in files)))
        elif op == "assign":
            sh.apply(S.Assign(sh.now, "ag", tuple(sh.state.actions)))
        elif owner:  # a user's cancel, by file
            before = {a.id: (a.state, tuple(a.requesters)) for a in sh.state.actions.values()}
            snapshot = sh.view()
            res = sh.apply(Cancel(sh.now, fids=tuple(FidTarget(FS, fid(n)) for n in files), owner=owner))
            if len(res.replies) == 1 and isinstance(res.replies[0], CancelRefused):
                assert sh.view() == snapshot and not res.effects
                continue
            for a in sh.state.actions.values():
                if a.id in before and before[a.id][0] != a.state:
                    assert {r.owner for r in a.requesters} == {owner}, (a, owner)
