"""One restore per file, however late the duplicate: a request that saw the
state an action already finished with is answered by that action (pure
shard state; the system test with hsmctl is in test_e2e)."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.state import Item, Kind, Outcome, Requester, ShardState, State
from hsm.hsmflags import HS
from tests.test_state import FS, Harness, fid

RELEASED = HS.EXISTS | HS.ARCHIVED | HS.RELEASED


def restore(n: int, who: str, dv: int = 7, ctime: int = 1_000, cookie: int = 0) -> Item:
    """A restore as hsmctl sends it: the flags, data version and ctime it read."""
    return Item(FS, fid(n), Kind.RESTORE, requester=Requester(who, cookie=cookie), hsm_flags=int(RELEASED),
                hsm_archive_id=1, data_version=dv, hsm_ctime=ctime,
                key=f"{who}:{cookie}" if cookie else "")


def run_to_end(h: Harness, errno: int = 0) -> None:
    for action_id, attempt in h.schedule("a1", restore=100):
        h.done(action_id, attempt, errno)


def test_a_duplicate_that_arrives_after_the_restore_ended_is_answered_by_it() -> None:
    h = Harness()
    (first,) = h.submit(restore(1, "c1"))
    (joined,) = h.submit(restore(1, "c2"))  # while it waits: joins, as before
    assert (first.outcome, joined.outcome, joined.action_id) == (Outcome.CREATED, Outcome.JOINED, first.action_id)
    run_to_end(h)
    assert h.st(first.action_id) is State.SUCCEEDED
    (late,) = h.submit(restore(1, "c3"))  # read RELEASED before the end, arrives after it
    assert (late.outcome, late.action_id) == (Outcome.JOINED, first.action_id)
    assert [a.id for a in h.state.actions.values()] == [first.action_id], "no new action"
    assert h.schedule("a1", restore=100) == [], "nothing to dispatch"
    done = h.state.get(first.action_id)
    assert done is not None and [r.initiator for r in done.requesters] == ["c1", "c2", "c3"]


def test_a_request_that_saw_an_older_state_is_answered_too() -> None:
    h = Harness()
    (first,) = h.submit(restore(1, "c1", ctime=2_000))
    run_to_end(h)
    (older,) = h.submit(restore(1, "c2", ctime=1_500))
    assert (older.outcome, older.action_id) == (Outcome.JOINED, first.action_id)


def test_a_request_that_saw_a_later_state_gets_a_new_action() -> None:
    """Released again after the restore (a new ctime), or never named its
    state: a real request, a new action."""
    h = Harness()
    (first,) = h.submit(restore(1, "c1"))
    run_to_end(h)
    (again,) = h.submit(restore(1, "c2", ctime=2_000))
    (blind,) = h.submit(Item(FS, fid(1), Kind.RESTORE, requester=Requester("c3")))
    other_file = h.submit(restore(2, "c4"))[0]
    assert again.outcome is Outcome.CREATED and again.action_id != first.action_id
    assert blind.outcome is Outcome.JOINED and blind.action_id == again.action_id
    assert other_file.outcome is Outcome.CREATED


def test_only_a_success_is_remembered() -> None:
    h = Harness(max_attempts=1)
    (first,) = h.submit(restore(1, "c1"))
    run_to_end(h, errno=5)
    assert h.st(first.action_id) is State.FAILED
    (late,) = h.submit(restore(1, "c2"))
    assert late.outcome is Outcome.CREATED, "a failed restore answers nobody: the file is still released"


def test_archive_and_remove_are_remembered_per_archive_id() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    seen = dict(hsm_flags=0, data_version=3, hsm_ctime=500)  # never archived
    (a1,) = h.submit(Item(FS, fid(1), Kind.ARCHIVE, archive_id=1, requester=Requester("c1"), **seen))  # type: ignore[arg-type]
    for action_id, attempt in h.schedule("a1", archive=10, archive_ids=(1, 2)):
        h.done(action_id, attempt)
    (late,) = h.submit(Item(FS, fid(1), Kind.ARCHIVE, archive_id=1, requester=Requester("c2"), **seen))  # type: ignore[arg-type]
    (other,) = h.submit(Item(FS, fid(1), Kind.ARCHIVE, archive_id=2, requester=Requester("c3"), **seen))  # type: ignore[arg-type]
    assert (late.outcome, late.action_id) == (Outcome.JOINED, a1.action_id)
    assert other.outcome is Outcome.CREATED, "archive id 2 has no copy yet"


def test_the_memory_is_bounded_in_count_and_time() -> None:
    h = Harness(remember_ends=2, remember_for=100.0)
    ids = []
    for n in (1, 2, 3):
        ids.append(h.submit(restore(n, "c1"))[0].action_id)
    run_to_end(h)
    assert len(h.state.ended_states) == 2, "the oldest of three was dropped"
    assert h.submit(restore(1, "late"))[0].outcome is Outcome.CREATED
    assert h.submit(restore(3, "late"))[0].action_id == ids[2]
    h.now += 101
    assert h.submit(restore(2, "late"))[0].outcome is Outcome.CREATED, "too old to answer"


def test_a_late_duplicate_is_idempotent_and_the_answer_survives_forgetting_only_with_its_action() -> None:
    h = Harness(max_terminal=1)
    (first,) = h.submit(restore(1, "c1"))
    run_to_end(h)
    (late,) = h.submit(restore(1, "c2", cookie=9))
    (retry,) = h.submit(restore(1, "c2", cookie=9))
    assert late == retry and late.action_id == first.action_id
    h.submit(restore(2, "c1"))
    run_to_end(h)  # the first action is forgotten (max_terminal 1)
    assert h.state.get(first.action_id) is None
    assert h.submit(restore(1, "c3"))[0].outcome is Outcome.CREATED, "no answer without its action"


def test_the_memory_is_replicated_state_kept_by_snapshots() -> None:
    h = Harness()
    (first,) = h.submit(restore(1, "c1"))
    run_to_end(h)
    head, actions = h.state.export_parts()
    back = ShardState.import_parts(pickle.loads(pickle.dumps(head)), [pickle.loads(pickle.dumps(actions))])
    h.state = back
    assert h.submit(restore(1, "c2"))[0].action_id == first.action_id
    old = dict(head)
    del old["ended_states"]
    assert ShardState.import_parts(old, [actions]).ended_states == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 5), st.booleans()), max_size=40))
def test_no_restore_is_created_for_a_state_already_restored(steps: list[tuple[int, int, bool]]) -> None:
    """Whatever the order of requests (each naming the ctime it saw) and of
    ends: a request never creates an action when a restore of its file
    already SUCCEEDED for that state or a later one."""
    h = Harness()
    for n, ctime, finish in steps:
        (reply,) = h.submit(restore(n, "c", ctime=ctime * 1000))
        if reply.outcome is Outcome.CREATED:
            done = [a for a in h.state.actions.values()
                    if a.fid == fid(n) and a.state is State.SUCCEEDED and a.hsm_ctime >= ctime * 1000]
            assert done == [], (n, ctime, done)
        if finish:
            run_to_end(h)
