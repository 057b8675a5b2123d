"""The errors the Raft adapter raises to its callers: ``RaftError`` and its
subclasses (``NotLeader``, ``ProposalTimeout``, ``TransferFailed``,
``RaftStorageError``; what each one means for a caller is in the package
docstring), and the advice that goes with a damaged data directory
(``_REPLACE``, used by the journal and the snapshot files)."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of the errors the Raft adapter raises to callers."""


class NotLeader(RaftError):
    """This replica is not the shard's leader (or lost leadership before the
    entry could commit, and it was definitely not applied). ``leader`` is
    the current leader's Raft address when known."""

    def __init__(self, shard: int, leader: str | None, detail: str = "") -> None:
        where = f"the leader is {leader}" if leader else "no leader is known yet (election in progress?)"
        super().__init__(f"shard {shard}: this replica is not the leader; {where}{detail}")
        self.shard = shard
        self.leader = leader


class ProposalTimeout(RaftError):
    """The outcome of a proposal is unknown: it may or may not be applied.
    Retry with the same idempotency keys."""


class TransferFailed(RaftError):
    """Leadership could not be handed over in time; this replica may still
    be the leader."""


class RaftStorageError(RaftError):
    """The shard's data directory is unusable (damaged journal or snapshot,
    or locked by another process)."""


#: Wiping a replica's Raft data and restarting it in place is unsafe (it would
#: forget votes and entries it acknowledged): it must rejoin as a new member.
_REPLACE = ("Replace this replica: remove it from the shard's Raft group (remove_peer on the "
            "leader), empty its shard directory, then add it back (add_peer).")
