"""What a Raft replica reports about itself: ``LeaderInfo`` (delivered to
``on_leader_change``, and ``RaftShard.leader_info``), ``RaftStatus`` and
``PeerStatus`` (``await RaftShard.status()``), and the ``RaftStats``
counters (``RaftShard.stats``; the journal adds its fsyncs to them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    is_leader: bool
    leader: str | None
    term: int
    #: leader and every entry of earlier terms applied here
    ready: bool


@dataclass(frozen=True, slots=True)
class PeerStatus:
    address: str
    connected: bool
    match_index: int | None  # known on the leader only
    next_index: int | None


@dataclass(frozen=True, slots=True)
class RaftStatus:
    shard: int
    address: str
    role: str  # "leader", "candidate", "follower"
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    last_log_index: int
    log_entries: int
    peers: tuple[PeerStatus, ...]
    has_quorum: bool


@dataclass(slots=True)
class RaftStats:
    """Counters (approximate when read while threads run)."""

    entries_proposed: int = 0
    commands_proposed: int = 0
    entries_applied: int = 0
    commands_applied: int = 0
    apply_errors: int = 0
    snapshots_written: int = 0
    snapshots_installed: int = 0
    last_snapshot_seconds: float = 0.0
    last_snapshot_bytes: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    #: entries a leader sent again that this follower held already, taken
    #: back unchanged (pysyncobj drops and re-adds them on every overlap)
    entries_resent: int = 0
    #: committed entries replaced by different ones: must stay 0 (Raft never
    #: changes a committed entry); logged CRITICAL when it happens
    committed_replaced: int = 0
