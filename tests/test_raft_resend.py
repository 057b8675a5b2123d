"""pysyncobj's "state machine may have diverged" alarm (issue 14): it fires
on every AppendEntries that overlaps entries a follower applied, which a
leader sends whenever an acknowledgement comes late, although the entries
are the same. The journal checks each re-sent entry against the one it held
at that place; these tests drive pysyncobj's real truncation path on a live
follower, once with the leader's own entries (harmless: nothing logged, the
same log, the same state) and once with a forged different entry at a
committed index (the replaced entry is named in a CRITICAL line and
counted)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from coordinator.raft import RaftShard, RaftStats
from coordinator.raft.journal import _RESEND_FILTER, _SegmentJournal
from tests.raft_proc import submit
from tests.test_raft import Cluster, run


def _resend(rs: RaftShard, first: int, forge_at: int | None = None) -> Any:
    """On *rs*'s tick thread: hand its SyncObj an AppendEntries from its
    leader re-sending the entries from index *first* on (optionally with the
    entry at *forge_at* replaced by a different command), as pysyncobj's
    transport would deliver it."""
    so = rs._so

    def deliver() -> tuple[list[Any], list[Any]]:
        log = rs._journal
        before = list(log[:])
        base = before[0][1]
        entries = [e for e in before if e[1] >= first]
        if forge_at is not None:
            entries = [(b"forged" + e[0], e[1], e[2]) if e[1] == forge_at else e for e in entries]
        prev = before[first - 1 - base]
        msg = {"type": "append_entries", "term": so._SyncObj__raftCurrentTerm,
               "commit_index": so._SyncObj__raftCommitIndex, "entries": entries,
               "prevLogIdx": prev[1], "prevLogTerm": prev[2]}
        so._SyncObj__onMessageReceived(so._SyncObj__raftLeader, msg)
        return before, list(log[:])

    return rs._in_tick(deliver)


def test_a_resend_over_applied_entries_is_checked_and_harmless(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        cl = Cluster(tmp_path, 3)
        cl.start_all()
        try:
            leader = await cl.leader()
            for i in range(20):
                await leader.propose(submit(f"k{i}", 100 + i), timeout=5)
            digest = await cl.converged()
            follower = next(rs for rs in cl.replicas() if rs is not leader)
            applied = follower.applied_index
            dropped0, resent0 = _RESEND_FILTER.dropped, follower.stats.entries_resent
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                before, after = await _resend(follower, applied - 5)
            # pysyncobj did truncate applied entries (its alarm fired and was
            # filtered), the journal took each one back as the same entry
            assert _RESEND_FILTER.dropped == dropped0 + 1
            assert follower.stats.entries_resent - resent0 >= 6
            assert follower.stats.committed_replaced == 0
            assert after == before
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
            assert "diverged" not in caplog.text
            # and the shard goes on, every replica with the same state
            for i in range(20, 30):
                await leader.propose(submit(f"k{i}", 100 + i), timeout=5)
            assert await cl.converged() != digest
        finally:
            await cl.close()
    run(body)


def test_a_committed_entry_replaced_by_another_is_named_and_counted(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        cl = Cluster(tmp_path, 3)
        cl.start_all()
        try:
            leader = await cl.leader()
            for i in range(10):
                await leader.propose(submit(f"k{i}", 100 + i), timeout=5)
            await cl.converged()
            follower = next(rs for rs in cl.replicas() if rs is not leader)
            at = follower.applied_index - 3
            caplog.clear()
            with caplog.at_level(logging.INFO):
                await _resend(follower, at - 1, forge_at=at)
            assert follower.stats.committed_replaced == 1
            crit = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
            assert len(crit) == 1 and f"replaced committed entry {at} " in crit[0], caplog.text
            assert "status --digest" in crit[0]
        finally:
            await cl.close()
    run(body)


def test_journal_tells_a_resend_from_a_conflict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stats = RaftStats()
    j = _SegmentJournal(tmp_path, 0, False, 1 << 20, stats)
    entries = [(b"cmd-%d" % i, i, 1) for i in range(1, 9)]
    for e in entries:
        j.add(*e)
    j.setRaftCommitIndex(6)
    caplog.set_level(logging.INFO, "coordinator.raft")

    j.deleteEntriesFrom(3)  # entries 4..8 re-sent unchanged
    for e in entries[3:]:
        j.add(*e)
    assert (stats.entries_resent, stats.committed_replaced) == (5, 0)
    assert list(j[:]) == entries and not caplog.records

    j.deleteEntriesFrom(6)  # 7, 8: never committed; a new leader's entry wins
    j.add(b"new", 7, 2)
    assert stats.committed_replaced == 0
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "2 uncommitted entries from index 7 (term 1) replaced" in caplog.records[0].getMessage()

    # pysyncobj lowers its commit index to the log's end after dropping
    # entries: what was committed stays committed all the same
    caplog.clear()
    j.setRaftCommitIndex(3)
    j.deleteEntriesFrom(4)  # 5 was committed
    j.add(b"other", 5, 2)
    assert stats.committed_replaced == 1
    assert [r.levelno for r in caplog.records] == [logging.CRITICAL]
    assert "replaced committed entry 5 (term 1)" in caplog.records[0].getMessage()
    j._destroy()


def test_only_the_resend_alarm_is_filtered(caplog: pytest.LogCaptureFixture) -> None:
    ps = logging.getLogger("pysyncobj.syncobj")
    with caplog.at_level(logging.DEBUG):
        ps.critical("truncating already-applied log entries from index %d (last applied: %d) - state machine "
                    "may have diverged from other cluster members", 5, 9)
        ps.critical("failed to perform initialization")
    assert [r.getMessage() for r in caplog.records] == ["failed to perform initialization"]
