"""The Raft term and vote store (coordinator.raft.journal._VoteStore): two
slots written in turn in place, the newest valid one wins, a slot torn by a
crash leaves the previous vote, and the JSON file of earlier versions is
taken over once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coordinator.raft import RaftStats
from coordinator.raft.errors import RaftStorageError
from coordinator.raft.journal import _VOTE_SLOT, _SegmentJournal, _VoteStore


def test_votes_survive_a_restart_and_alternate_slots(tmp_path: Path) -> None:
    v = _VoteStore(tmp_path, 0, True)
    assert (v.term, v.voted_for) == (0, None)
    v.write(3, "127.0.0.1:5000")
    v.write(4, None)
    v.close()
    raw = (tmp_path / "raft-vote.slots").read_bytes()
    assert len(raw) == 2 * _VOTE_SLOT  # never grows: written in place
    v = _VoteStore(tmp_path, 0, True)
    assert (v.term, v.voted_for) == (4, None)
    v.write(5, "127.0.0.1:5001")
    v.close()
    assert (_VoteStore(tmp_path, 0, True).term) == 5


def test_a_torn_slot_leaves_the_previous_vote(tmp_path: Path) -> None:
    v = _VoteStore(tmp_path, 0, True)
    v.write(7, "a:1")  # slot 1
    v.write(8, "b:2")  # slot 0
    v.close()
    path = tmp_path / "raft-vote.slots"
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF  # the newest record, torn by a crash mid-write
    path.write_bytes(bytes(raw))
    v = _VoteStore(tmp_path, 0, True)
    assert (v.term, v.voted_for) == (7, "a:1")
    v.write(9, None)  # goes over the torn slot, and wins
    v.close()
    assert _VoteStore(tmp_path, 0, True).term == 9


def test_the_vote_file_of_earlier_versions_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "raft-vote").write_text(json.dumps({"term": 12, "voted_for": "127.0.0.1:7000"}))
    j = _SegmentJournal(tmp_path, 0, True, 1 << 20, RaftStats())
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (12, "127.0.0.1:7000")
    j._destroy()
    assert not (tmp_path / "raft-vote").exists()
    j = _SegmentJournal(tmp_path, 0, True, 1 << 20, RaftStats())
    assert j.getCurrentTerm() == 12
    j.setCurrentTerm(13, None)
    j._destroy()
    assert _SegmentJournal(tmp_path, 0, True, 1 << 20, RaftStats()).getCurrentTerm() == 13


def test_a_damaged_vote_file_of_earlier_versions_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "raft-vote").write_text("{not json")
    with pytest.raises(RaftStorageError, match="raft-vote is damaged"):
        _SegmentJournal(tmp_path, 0, True, 1 << 20, RaftStats())
    assert os.path.exists(tmp_path / "raft-vote")  # left for the admin to look at
