"""The HSM event log with consumer cursors (coordinator/events.py, pure)
and its place in the shard state: what is recorded, when a record is
released, what a lagging consumer is told, and a property test of the
promise: a consumer that reads and acknowledges sees every record made
after it registered exactly once, or is told how many it missed."""

from __future__ import annotations

import errno as E

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import scheduler
from coordinator.events import (
    CL_HSM,
    HE_ARCHIVE,
    HE_REMOVE,
    HE_RESTORE,
    ConsumerError,
    EventLog,
    clf_flags,
)
from coordinator.state import (
    AckEvents,
    Assign,
    Cancel,
    Complete,
    Completion,
    ConsumerReply,
    EventConsumer,
    Item,
    Kind,
    Requester,
    ShardState,
    Submit,
)
from hsm.fid import Fid

FID = (0x200000400, 1, 0)


def add(log: EventLog, n: int = 1, t: float = 1.0) -> None:
    for _ in range(n):
        log.append(t, HE_ARCHIVE, 0, "fs1", FID, 1, 1000 + log.next_index)


def test_flags_are_packed_as_the_mdt_packs_them() -> None:
    assert CL_HSM == 16
    assert clf_flags(HE_ARCHIVE, 0) == 0x0
    assert clf_flags(HE_RESTORE, 0) == 0x80
    assert clf_flags(HE_REMOVE, 0) == 0x200
    assert clf_flags(HE_ARCHIVE, E.ECANCELED) == 0x7D
    assert clf_flags(HE_RESTORE, 300) == 0x80 | 0x7F  # too large to pack
    assert clf_flags(HE_ARCHIVE, 0, dirty=True) == 0x400


def test_nothing_is_kept_without_a_consumer_and_a_new_one_starts_after_the_newest() -> None:
    log = EventLog()
    add(log, 3)
    assert not log.records and log.next_index == 1
    log.register("robinhood", 5.0)
    add(log, 2)
    assert [r.recno for r in log.read("robinhood", 10)[0]] == [1, 2]
    log.register("acct", 6.0)
    assert log.read("acct", 10)[0] == [] and log.lag("acct") == 0
    add(log)
    assert [r.recno for r in log.read("acct", 10)[0]] == [3]
    log.check_invariants()


def test_a_record_is_released_only_when_every_consumer_acknowledged_it() -> None:
    log = EventLog()
    log.register("fast", 0.0)
    log.register("slow", 0.0)
    add(log, 5)
    assert log.ack("fast", 5) == 5
    assert [r.recno for r in log.records] == [1, 2, 3, 4, 5], "slow has acknowledged nothing"
    assert log.ack("slow", 2) == 2
    assert [r.recno for r in log.records] == [3, 4, 5]
    assert log.ack("slow", 1) == 2, "a cursor never goes back"
    assert log.ack("slow", 99) == 5, "nor past the newest record"
    assert not log.records
    assert [r.recno for r in log.read("fast", 10)[0]] == []
    log.check_invariants()


def test_a_deregistered_consumer_holds_nothing_back() -> None:
    log = EventLog()
    log.register("a", 0.0)
    log.register("b", 0.0)
    add(log, 3)
    log.ack("a", 3)
    assert log.deregister("b") and not log.records
    assert not log.deregister("b")
    with pytest.raises(ConsumerError, match="no event consumer 'b'"):
        log.read("b", 1)
    with pytest.raises(ConsumerError, match="no event consumer 'b'"):
        log.ack("b", 1)
    log.check_invariants()


def test_retention_drops_the_oldest_and_tells_the_lagging_consumer_how_many_it_missed() -> None:
    log = EventLog(max_events=4)
    log.register("fast", 0.0)
    log.register("lagging", 0.0)
    for _ in range(10):
        add(log)
        log.ack("fast", log.next_index - 1)
    records, cursor = log.read("lagging", 100)
    assert [r.recno for r in records] == [7, 8, 9, 10]
    assert (cursor.missed, cursor.acked, log.dropped) == (6, 6, 6)
    assert log.consumers["fast"].missed == 0
    assert log.lag("lagging") == 4 and log.lag("fast") == 0
    log.check_invariants()


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "naïve\n"])
def test_a_bad_consumer_name_is_refused(name: str) -> None:
    with pytest.raises(ConsumerError, match="event consumer name"):
        EventLog().register(name, 0.0)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["append", "read_ack", "read_only", "register", "deregister"]),
                              st.sampled_from(["a", "b", "c"]), st.integers(1, 6)), max_size=120),
       keep=st.integers(1, 12))
def test_every_record_reaches_each_consumer_once_or_is_counted_missed(
        ops: list[tuple[str, str, int]], keep: int) -> None:
    log = EventLog(max_events=keep)
    made: list[int] = []  # every record index made
    seen: dict[str, list[int]] = {}  # what each consumer processed (acknowledged)
    start: dict[str, int] = {}  # the newest index when it registered
    for op, name, n in ops:
        if op == "append":
            for _ in range(n):
                rec = log.append(1.0, HE_RESTORE, 0, "fs1", FID, 1, 7)
                if rec is not None:
                    made.append(rec.recno)
        elif op == "register":
            if name not in log.consumers:
                start[name] = log.register(name, 1.0)
                seen[name] = []
        elif op == "deregister":
            if log.deregister(name):
                del seen[name], start[name]
        elif name in log.consumers:
            records, _ = log.read(name, n)
            got = [r.recno for r in records]
            assert not set(got) & set(seen[name]), f"{name}: {got} delivered again after its acknowledgement"
            if op == "read_ack" and got:
                seen[name] += got
                log.ack(name, got[-1])
        log.check_invariants()
    for name, got in seen.items():
        # drain: what is left, then check nothing was lost without being counted
        while True:
            records, cursor = log.read(name, 1000)
            if not records:
                break
            got += [r.recno for r in records]
            log.ack(name, records[-1].recno)
        after = [i for i in made if i > start[name]]
        assert got == sorted(got), f"{name}: out of order"
        assert set(got) <= set(after)
        assert len(after) - len(got) == log.consumers[name].missed, f"{name}: lost without being counted"


# -- in the shard state -------------------------------------------------------------


def test_an_ended_action_is_recorded_for_the_registered_consumers_and_survives_a_snapshot() -> None:
    s = ShardState()
    assert s.apply(EventConsumer(1.0, "robinhood")).replies == [ConsumerReply(0)]
    assert s.apply(EventConsumer(1.0, "bad name")).replies[0].error.startswith("event consumer name")
    fid = Fid(*FID)
    (r,) = s.apply(Submit(2.0, (Item("fs1", fid, Kind.ARCHIVE, requester=Requester("t")),))).replies
    ids = scheduler.pick(s, (), {Kind.ARCHIVE: 1})
    s.apply(Assign(3.0, "a1", tuple(ids)))
    s.apply(Complete(9.0, (Completion(r.action_id, 1, 0, ""),)))
    (r2,) = s.apply(Submit(10.0, (Item("fs1", fid, Kind.RESTORE, requester=Requester("t")),))).replies
    s.apply(Cancel(11.0, (r2.action_id,)))
    records, _ = s.events.read("robinhood", 10)
    assert [(x.recno, x.event, x.errno, x.flags, x.action_id, x.time) for x in records] == [
        (1, HE_ARCHIVE, 0, 0x0, r.action_id, 9.0), (2, HE_RESTORE, E.ECANCELED, 0x80 | E.ECANCELED, r2.action_id, 11.0)]
    assert (records[0].fsname, (records[0].fid_seq, records[0].fid_oid, records[0].fid_ver)) == ("fs1", FID)
    assert s.apply(AckEvents(12.0, "robinhood", 1)).replies == [ConsumerReply(1)]
    assert s.apply(AckEvents(12.0, "nobody", 1)).replies[0].error.startswith("no event consumer")
    s.check_invariants()
    head, actions = s.export_parts()
    restored = ShardState.import_parts(head, [actions])
    assert [x.recno for x in restored.events.read("robinhood", 10)[0]] == [2]
    assert restored.events.consumers["robinhood"].acked == 1
    assert s.apply(EventConsumer(13.0, "robinhood", register=False)).replies == [ConsumerReply(0)]
    assert not s.events.records
