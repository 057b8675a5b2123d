"""The blocked reader's adaptive deadline (hsmfs.waits): it waits while its
restore moves, however long that takes, and gives up only after the stall
timeout without progress; and the restorer's one request per file."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm.fid import Fid
from hsm.hsmflags import HS
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from hsmfs.restorer import REQ_BLOCKING, File, Restorer
from hsmfs.waits import CANCELED, FAILED, STARTED, SUCCEEDED, WAITING, Facts, Wait, progressed


def test_a_restore_that_keeps_moving_is_waited_for_past_the_stall_timeout() -> None:
    w = Wait(0.0, stall=10.0)
    assert w.observe(1.0, Facts(WAITING, queue_position=50)) is None
    for t in range(2, 200):  # 200 s in all, 20 stall timeouts, moving every second
        assert w.observe(float(t), Facts(STARTED, 1, bytes_done=t * 1000)) is None
    assert w.tick(205.0) is None
    assert w.tick(209.0) == errno.EIO  # then nothing for 10 s
    assert "no progress for 10 s" in w.why and "started" in w.why


def test_moving_up_the_queue_is_progress_and_falling_back_is_not() -> None:
    base = Facts(WAITING, queue_position=10)
    assert progressed(base, Facts(WAITING, queue_position=9))
    assert progressed(base, Facts(WAITING, queue_position=0))  # dispatched, or waits behind its file only
    assert not progressed(base, Facts(WAITING, queue_position=11))
    assert not progressed(base, base)
    assert progressed(Facts(STARTED, 1, 100), Facts(STARTED, 2, 0))  # a requeue: a new attempt
    assert not progressed(Facts(STARTED, 1, 100), Facts(STARTED, 1, 100))

    w = Wait(0.0, stall=5.0)
    w.observe(0.0, Facts(WAITING, queue_position=10))
    w.observe(4.0, Facts(WAITING, queue_position=12))  # someone went ahead: no credit
    assert w.tick(5.0) == errno.EIO


def test_the_first_sight_is_not_progress() -> None:
    """A reader who joins a restore stuck for an hour does not reset its clock
    by merely looking at it."""
    w = Wait(0.0, stall=5.0)
    w.observe(4.9, Facts(STARTED, 1, 10))
    assert w.tick(5.0) == errno.EIO


@pytest.mark.parametrize("state,word", [(FAILED, "failed"), (CANCELED, "was canceled")])
def test_a_failed_or_canceled_restore_is_eio_with_the_reason(state: int, word: str) -> None:
    w = Wait(0.0)
    assert w.observe(1.0, Facts(state, 1, errno=errno.ENOENT, reason="no such object in the archive")) == errno.EIO
    assert w.why == f"the restore {word}: no such object in the archive"


def test_a_verdict_is_final() -> None:
    w = Wait(0.0, stall=1.0)
    assert w.observe(0.5, Facts(SUCCEEDED)) == 0
    assert w.tick(100.0) == 0
    assert w.fail(errno.EIO, "late") == 0 and w.why == "restored"


def test_a_stall_timeout_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="stall timeout"):
            Wait(0.0, stall=bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.sampled_from([WAITING, STARTED]), st.integers(0, 3),
                          st.integers(0, 10**6), st.integers(0, 50)), max_size=40),
       st.floats(0.5, 20.0))
def test_it_gives_up_exactly_when_stall_seconds_passed_since_the_last_progress(
        steps: list[tuple[float, int, int, int, int]], stall: float) -> None:
    w = Wait(0.0, stall=stall)
    now = 0.0
    last_progress = 0.0
    prev: Facts | None = None
    for dt, state, attempt, done, pos in steps:
        now += dt
        facts = Facts(state, attempt, done, pos)
        expired = now - last_progress >= stall
        verdict = w.observe(now, facts)
        if prev is not None and progressed(prev, facts) and not expired:
            last_progress = now
        if expired:
            assert verdict == errno.EIO
            return
        assert verdict is None
        prev = facts


# -- the restorer, with a coordinator stand-in that records what it is asked


class FakeCoordinator:
    """Answers submits with one action per FID (as the coordinator merges
    duplicates), and streams each action's states from a script."""

    def __init__(self, script: list[Facts], gate: threading.Event | None = None) -> None:
        self.items: list[cpb.SubmitItem] = []
        self.script = script
        self.gate = gate
        self.lock = threading.Lock()

    def submit(self, items: Iterable[cpb.SubmitItem], batch_size: int = 1000) -> list[cpb.SubmitResult]:
        items = list(items)
        with self.lock:
            self.items += items
        return [cpb.SubmitResult(outcome=cpb.CREATED, action_id=1000 + i.fid.oid) for i in items]

    def watch(self, action_ids: Iterable[int], deadline: float | None = None) -> Iterator[tpb.Action]:
        if self.gate is not None:
            self.gate.wait(10.0)
        for f in self.script:
            yield tpb.Action(action_id=next(iter(action_ids)), state=f.state, attempt=f.attempt,  # type: ignore[arg-type]
                             bytes_done=f.bytes_done, errno=f.errno, error=f.reason)


def _file(n: int) -> File:
    return File("fs1", Fid(0x200000400, n, 0), f"/f{n}", 100, HS.EXISTS | HS.ARCHIVED | HS.RELEASED, 1, 3, 77)


def test_many_readers_of_one_file_make_one_blocking_request() -> None:
    gate = threading.Event()
    coord = FakeCoordinator([Facts(WAITING), Facts(STARTED, 1), Facts(SUCCEEDED, 1)], gate)
    r = Restorer(coord, "ost3", stall=30.0)
    results: list[tuple[int, str]] = []

    def reader() -> None:
        results.append(r.restore(_file(7), uid=1000, gid=100))

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10.0)
    assert results == [(0, "restored")] * 20
    [item] = coord.items
    assert item.flags == REQ_BLOCKING and item.kind == tpb.RESTORE
    assert (item.requester.initiator, item.requester.uid, item.requester.gid) == ("ost3", 1000, 100)
    assert (item.hsm.data_version, item.hsm.ctime_ns, item.path) == (3, 77, "/f7")
    assert r.waiting() == 0


def test_close_wakes_every_blocked_reader_with_eio() -> None:
    gate = threading.Event()  # never set: the restore never moves
    r = Restorer(FakeCoordinator([], gate), "ost0", stall=600.0)
    results: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: results.append(r.restore(_file(1)))) for _ in range(5)]
    for t in threads:
        t.start()
    while r.waiting() == 0:
        threading.Event().wait(0.01)
    r.close("/mnt is being unmounted")
    for t in threads:
        t.join(5.0)
    assert results == [(errno.EIO, "/mnt is being unmounted")] * 5
    assert r.restore(_file(2)) == (errno.EIO, "/mnt is being unmounted")  # later readers too


def test_no_block_asks_once_and_returns() -> None:
    coord = FakeCoordinator([])
    r = Restorer(coord, "ost0")
    for _ in range(5):
        r.ask(_file(4))
    [item] = coord.items
    assert item.flags == 0 and item.kind == tpb.RESTORE
