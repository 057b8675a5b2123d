"""Several copies of a file (issue 18): an archive with ``copies=N`` makes
one copy per archive id, in turn, and is SUCCEEDED only when the last is
made; a restore reads the file's copies in turn when one fails. The pure
state machine; tests/test_copies_system.py runs it with agents."""

from __future__ import annotations

import errno as E
from typing import Any

import pytest

from coordinator.policy import MAX_COPIES
from coordinator.state import (
    Complete,
    Completion,
    Kind,
    Outcome,
    Requeued,
    State,
    copies_hint,
)
from tests.test_state import Harness, item


def facts(dv: int, key: str = "") -> tuple[object, ...]:
    return (key, dv, 4096, "sha256:" + "0" * 64, 1000, 100, 0o100644, "/a/b")


def made(h: Harness, agent: str, ids: list[tuple[int, int]], dv: int = 7, errno: int = 0, retry: bool = False,
         message: str = "msg") -> object:
    h.now += 1
    return h.step(Complete(h.now, tuple(Completion(i, att, errno, message, retry, 4096,
                                            copy=facts(dv, f"k{i}") if not errno else None) for i, att in ids),
                    agent))


def test_copies_hint_reads_the_number_and_refuses_what_is_not_one() -> None:
    assert copies_hint(b"") == 0 and copies_hint(b"tag=x") == 0
    assert copies_hint(b"copies=2") == 2 and copies_hint(b"tag=x,copies=3") == 3
    assert copies_hint(f"copies={MAX_COPIES}".encode()) == MAX_COPIES
    for bad in (b"copies=0", b"copies=", b"copies=x", b"copies=-1", b"copies=9", b"copies=100", b"copies=2.5"):
        assert copies_hint(bad) == -1, bad


def test_an_archive_of_two_copies_is_archived_only_when_both_are_made() -> None:
    h = Harness(archive_ids=frozenset({1, 2, 3}))
    [r] = h.submit(item(1, archive_id=1, data=b"copies=2", data_version=5))
    assert r.outcome == Outcome.CREATED
    a = h.state.get(r.action_id)
    assert a is not None and a.copies == (2,) and a.archive_id == 1
    # an agent of archive 2 gets nothing yet: the first copy goes to archive 1
    assert h.schedule("b", archive=8, archive_ids=[2]) == []
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    made(h, "a", [(aid, att)], dv=7)
    # copy 1 made: in the catalog, the action waits for archive 2, not ended
    assert a.state == State.WAITING and a.archive_id == 2 and a.copies == () and a.copies_done == 1
    assert a.data_version == 7  # the version copy 1 holds: copy 2 must find it
    assert "copy 1 of 2 made in archive 1" in a.error and a.errno == 0
    assert [c.archive_id for c in h.state.catalog.of(a.fsname, a.fid)] == [1]
    assert h.schedule("a", archive=8, archive_ids=[1]) == []
    [(aid2, att2)] = h.schedule("b", archive=8, archive_ids=[2])
    assert aid2 == aid and att2 == att + 1
    made(h, "b", [(aid2, att2)], dv=7)
    assert a.state == State.SUCCEEDED and a.copies_done == 1
    assert [(c.archive_id, c.key) for c in h.state.catalog.of(a.fsname, a.fid)] == [(1, f"k{aid}"), (2, f"k{aid}")]
    # neither copy used up an attempt: max_attempts 1 still allows every copy
    assert a.attempt - a.handed_back == 1


def test_copies_count_no_attempt_but_a_failed_copy_does() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    [r] = h.submit(item(1, archive_id=2, data=b"copies=2"))
    a = h.state.get(r.action_id)
    assert a is not None and a.copies == (1,)  # the request's archive id first, then the others in order
    [(aid, att)] = h.schedule("b", archive=8, archive_ids=[2])
    made(h, "b", [(aid, att)])
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    made(h, "a", [(aid, att)], errno=E.ENOSPC, retry=True)  # transient: tried again, on archive 1
    assert a.state == State.WAITING and a.archive_id == 1
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    made(h, "a", [(aid, att)], errno=E.EPERM)
    assert a.state == State.FAILED and a.errno == E.EPERM
    # the copy made stays in the catalog: it is in the archive
    assert [c.archive_id for c in h.state.catalog.of(a.fsname, a.fid)] == [2]


def test_more_copies_than_archive_ids_and_a_malformed_count_are_refused() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    [r] = h.submit(item(1, archive_id=1, data=b"copies=3"))
    assert r.outcome == Outcome.REJECTED and r.errno == E.EINVAL
    assert "copies=3 needs 3 archive ids" in r.reason and "(1, 2)" in r.reason
    [r] = h.submit(item(2, archive_id=1, data=b"copies=zero"))
    assert r.outcome == Outcome.REJECTED and r.errno == E.EINVAL and "1 to 8" in r.reason
    assert not h.state.actions
    # copies=1 is an ordinary archive; a restore ignores copies=
    [r] = h.submit(item(3, archive_id=1, data=b"copies=1"))
    a = h.state.get(r.action_id)
    assert a is not None and a.copies == ()
    [r] = h.submit(item(4, Kind.RESTORE, archive_id=1, data=b"copies=5"))
    assert r.outcome == Outcome.CREATED


def test_a_later_request_for_more_copies_raises_a_waiting_archive() -> None:
    h = Harness(archive_ids=frozenset({1, 2, 3}))
    [r] = h.submit(item(1, archive_id=1))
    [j] = h.submit(item(1, archive_id=1, data=b"copies=3"))
    assert j.outcome == Outcome.JOINED and j.action_id == r.action_id
    a = h.state.get(r.action_id)
    assert a is not None and a.copies == (2, 3)


def archived_twice(h: Harness, n: int = 1) -> int:
    """An archive of file *n* with copies in archives 1 and 2; returns its id."""
    [r] = h.submit(item(n, archive_id=1, data=b"copies=2"))
    for agent, aids in (("a", [1]), ("b", [2])):
        [(aid, att)] = h.schedule(agent, archive=8, archive_ids=aids)
        made(h, agent, [(aid, att)])
    a = h.state.get(r.action_id)
    assert a is not None and a.state == State.SUCCEEDED
    return r.action_id


def restoring(h: Harness, archive_id: int) -> Any:
    """A restore of file 1 asking for *archive_id*: its action."""
    [r] = h.submit(item(1, Kind.RESTORE, archive_id=archive_id))
    a = h.state.get(r.action_id)
    assert a is not None
    return a


@pytest.mark.parametrize("err", [E.EIO, E.EBADMSG, E.ENOENT, E.ENODATA])
def test_a_restore_whose_copy_fails_reads_the_next_copy(err: int) -> None:
    h = Harness(archive_ids=frozenset({1, 2}), max_attempts=1)
    archived_twice(h)
    a = restoring(h, 1)
    [(aid, att)] = h.schedule("a", restore=4, archive_ids=[1])
    res = made(h, "a", [(aid, att)], errno=err, retry=err == E.EIO, message="checksum mismatch")
    # max_attempts 1, yet not failed: the copy in archive 2 is read next
    assert a.state == State.WAITING and a.archive_id == 2 and a.tried == (1,)
    assert a.errno == err and "the copy in archive 1 failed" in a.error and "archive 2" in a.error
    assert any(isinstance(c, Requeued) for c in res.effects)  # type: ignore[attr-defined]
    # a new restore of the file (archive 1, the file's) joins the one reading archive 2
    [j] = h.submit(item(1, Kind.RESTORE, archive_id=1))
    assert j.outcome == Outcome.JOINED and j.action_id == a.id
    assert h.schedule("a", restore=4, archive_ids=[1]) == []
    [(aid, att)] = h.schedule("b", restore=4, archive_ids=[2])
    made(h, "b", [(aid, att)])
    assert a.state == State.SUCCEEDED


def test_a_restore_fails_once_every_copy_failed() -> None:
    h = Harness(archive_ids=frozenset({1, 2}), max_attempts=5)
    archived_twice(h)
    a = restoring(h, 2)
    [(aid, att)] = h.schedule("b", restore=4, archive_ids=[2])
    made(h, "b", [(aid, att)], errno=E.EBADMSG)
    assert a.state == State.WAITING and a.archive_id == 1 and a.tried == (2,)
    [(aid, att)] = h.schedule("a", restore=4, archive_ids=[1])
    made(h, "a", [(aid, att)], errno=E.EBADMSG)
    # no copy left to read: the ordinary rules (EBADMSG is not retried)
    assert a.state == State.FAILED and a.errno == E.EBADMSG


def test_a_restore_error_that_is_not_the_copy_s_does_not_change_copy() -> None:
    h = Harness(archive_ids=frozenset({1, 2}), max_attempts=1)
    archived_twice(h)
    a = restoring(h, 1)
    [(aid, att)] = h.schedule("a", restore=4, archive_ids=[1])
    made(h, "a", [(aid, att)], errno=E.ESTALE)  # the file, not the copy
    assert a.state == State.FAILED and a.tried == ()


def test_a_restore_of_a_file_with_one_copy_fails_as_before() -> None:
    h = Harness(archive_ids=frozenset({1, 2}), max_attempts=1)
    [r] = h.submit(item(1, archive_id=1))
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    made(h, "a", [(aid, att)])
    a = restoring(h, 1)
    [(aid, att)] = h.schedule("a", restore=4, archive_ids=[1])
    made(h, "a", [(aid, att)], errno=E.EIO)
    assert a.state == State.FAILED and a.errno == E.EIO


def test_copies_survive_a_snapshot() -> None:
    import pickle

    h = Harness(archive_ids=frozenset({1, 2, 3}))
    [r] = h.submit(item(1, archive_id=1, data=b"copies=3"))
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    made(h, "a", [(aid, att)])
    a = h.state.get(r.action_id)
    b = pickle.loads(pickle.dumps(a))
    assert (b.archive_id, b.copies, b.copies_done, b.tried, b.state) == (2, (3,), 1, (), State.WAITING)


def test_a_policy_rule_sets_the_least_number_of_copies() -> None:
    from coordinator.state import SetPolicy

    h = Harness(archive_ids=frozenset({1, 2, 3}))
    text = ("rules:\n- name: two-copies-of-projects\n  match: {kind: [archive], path: ['/proj/**']}\n"
            "  then: {copies: 2}\n- name: three-of-p9\n  match: {path: ['/proj/p9/**']}\n  then: {copies: 3}\n")
    assert h.step(SetPolicy(h.now, 2, text, "admin")).replies[0].version == 2
    [a1, a2, a3, a4] = h.submit(item(1, archive_id=1, path="/proj/a"), item(2, archive_id=1, path="/scratch/b"),
                                item(3, archive_id=2, path="/proj/c", data=b"copies=3"),
                                item(4, archive_id=1, path="/proj/p9/d", data=b"copies=1"))
    copies = [h.state.actions[r.action_id].copies for r in (a1, a2, a3, a4)]
    # the rule's count unless the request asks for more; a request cannot ask for fewer
    assert copies == [(2,), (), (1, 3), (2, 3)]
    h2 = Harness(archive_ids=frozenset({1}))
    assert h2.step(SetPolicy(h2.now, 2, text, "admin")).replies[0].version == 2
    [r] = h2.submit(item(1, archive_id=1, path="/proj/a"))
    assert r.outcome == Outcome.REJECTED and "copies set by policy rule 'two-copies-of-projects'" in r.reason


def test_edit_catalog_records_and_forgets_a_file_s_copies() -> None:
    from coordinator.catalog import Copy
    from coordinator.state import EditCatalog
    from tests.test_state import FS, fid

    h = Harness(archive_ids=frozenset({1, 2}))
    good = Copy(1, "0001/obj", 5, 100, "", 10.0, 0, -1, 1000, 100, 0o100600, "/a").values()
    bad = Copy(2, "x" * 5000, 5, 100).values()  # an object key over the bound: left out, on every replica
    assert h.step(EditCatalog(h.now, FS, fid(9), (good, bad))).replies == [1]
    (c,) = h.state.catalog.of(FS, fid(9))
    assert c.values() == good
    assert h.step(EditCatalog(h.now, FS, fid(9), forget=True)).replies == [1]
    assert h.state.catalog.of(FS, fid(9)) == ()
    assert h.step(EditCatalog(h.now, FS, fid(9), forget=True)).replies == [0]


def test_relocate_moves_a_packed_copy_only_if_it_still_lies_in_the_old_container() -> None:
    from coordinator.catalog import Copy
    from coordinator.state import EditCatalog, RelocateCopies
    from tests.test_state import FS, fid

    h = Harness(archive_ids=frozenset({1, 2}))
    packed = Copy(1, "containers/1--/d/a.pack", 5, 100, "sha256:" + "0" * 64, 1.0, container="containers/1--/d/a.pack",
                  slot=10).values()
    other = Copy(2, "0001/obj", 5, 100).values()
    h.step(EditCatalog(h.now, FS, fid(1), (packed, other)))
    h.step(EditCatalog(h.now, FS, fid(2), (Copy(1, "0001/x", 5, 100).values(),)))  # archived again: no longer packed
    moves = ((FS, fid(1), 1, "containers/1--/d/a.pack", "containers/1--/d/b.pack", 4096),
             (FS, fid(2), 1, "containers/1--/d/a.pack", "containers/1--/d/b.pack", 8192),
             (FS, fid(3), 1, "containers/1--/d/a.pack", "containers/1--/d/b.pack", 0))  # no copy at all
    assert h.step(RelocateCopies(h.now, moves)).replies == [1]
    c1, c2 = h.state.catalog.of(FS, fid(1))
    assert (c1.container, c1.key, c1.slot, c1.size, c1.checksum) == (
        "containers/1--/d/b.pack", "containers/1--/d/b.pack", 4096, 100, "sha256:" + "0" * 64)
    assert c2.values() == other  # the copy in archive 2 is not touched
    assert h.state.catalog.of(FS, fid(2))[0].key == "0001/x"


def test_an_archive_of_copies_canceled_while_a_copy_is_made_stops_there() -> None:
    h = Harness(archive_ids=frozenset({1, 2}))
    [r] = h.submit(item(1, archive_id=1, data=b"copies=2"))
    [(aid, att)] = h.schedule("a", archive=8, archive_ids=[1])
    h.cancel(aid)
    a = h.state.get(aid)
    assert a is not None and a.state == State.CANCELING
    made(h, "a", [(aid, att)])  # the copy finished anyway
    assert a.state == State.CANCELED and "canceled after copy 1 of 2" in a.error
    assert [c.archive_id for c in h.state.catalog.of(a.fsname, a.fid)] == [1]  # it is in archive 1
    assert h.schedule("b", archive=8, archive_ids=[2]) == []


def test_hsmctl_shows_which_copy_an_archive_of_several_is_at() -> None:
    from hsm.v1 import types_pb2 as tpb
    from hsmctl.output import action_to_dict, format_progress

    waiting = tpb.Action(action_id=1, state=tpb.WAITING, copies=2, copies_done=1, queue_position=1, queue_length=1)
    assert format_progress(waiting) == "copy 2/2 queue 1/1"
    running = tpb.Action(action_id=1, state=tpb.STARTED, copies=3, copies_done=0, bytes_done=1024, bytes_total=4096)
    assert format_progress(running) == "copy 1/3 1.0KiB/4.0KiB 25%"
    one = tpb.Action(action_id=1, state=tpb.STARTED)
    assert format_progress(one) == "-"
    done = tpb.Action(action_id=1, state=tpb.SUCCEEDED, copies=2, copies_done=1)
    assert format_progress(done) == "-"
    d = action_to_dict(tpb.Action(action_id=1, state=tpb.WAITING, copies=2, copies_done=1, copies_failed=[]))
    assert (d["copies"], d["copies_done"], d["copies_failed"]) == (2, 1, [])
    assert action_to_dict(tpb.Action(action_id=2, state=tpb.FAILED, copies_failed=[1]))["copies_failed"] == [1]
