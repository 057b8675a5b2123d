"""The Raft adapter: one pysyncobj ``SyncObj`` per shard per replica, behind a
typed asyncio API. This package is the only place in the project that
imports pysyncobj.

Modules
=======

Laid out as pysyncobj's own modules, each named after the pysyncobj module
it replaces or extends; each module's docstring tells its part:

* ``shard``: ``RaftShard`` (the API below), its tick and applier threads,
  and ``_ShardSyncObj``, the ``SyncObj`` subclass (pysyncobj's ``syncobj``).
* ``config``: ``RaftTuning``, Raft address checks, ``free_port``
  (pysyncobj's ``config``).
* ``errors``: ``RaftError`` and its subclasses.
* ``status``: ``LeaderInfo``, ``RaftStatus``, ``PeerStatus``, ``RaftStats``.
* ``journal``: the durable segment journal (pysyncobj's ``journal``).
* ``serializer``: snapshots (format, state encoding, log compaction) and the
  pickle protocol (pysyncobj's ``serializer``).
* ``transport``: the TCP transport that syncs the journal before it
  acknowledges (pysyncobj's ``transport``).
* ``encryptor``: message sealing (a keyring of Fernet or HMAC sealers, one
  per password: the password rotation), and the security notes
  (pysyncobj's ``encryptor``).

The shard-facing API below is re-exported here (``from coordinator.raft
import RaftShard, NotLeader, ...``).

What a caller sees
==================

``RaftShard(index, self_addr, peers, data_dir, password, state_factory,
on_applied, loop, tuning)`` runs one replica of one shard's Raft group:

* ``await shard.propose(cmds, timeout) -> list[Result]`` on the leader.
  Concurrent proposals are **group-committed**: while ``tuning.max_inflight``
  Raft entries are in flight, new proposals queue and ride together in the
  next entry (one entry carries many commands). Every call has its own
  timeout (pysyncobj callbacks can silently never fire under load, upstream
  issue #75).

  - ``NotLeader(leader)``: this replica is not the leader, or the entry was
    definitely not applied (discarded by a new leader). Retry at ``leader``.
  - ``ProposalTimeout``: the outcome is **unknown**: the commands may or may
    not have been applied (now or later). The caller must retry with the
    **same idempotency keys**; the state machine dedups them (``Item.key``),
    so a retry never creates a second action. Commands without a key
    (Assign, Progress, Complete, Cancel, AgentLost) are safe to repeat:
    the state machine ignores stale or repeated ones.

* ``on_applied(shard_index, result, proposed_here)`` runs on the asyncio loop
  for every command applied on this replica (leader and followers), in log
  order. ``proposed_here`` is True for commands this RaftShard instance
  proposed (their futures resolve right after the callbacks of their entry).
  When a follower installs a snapshot instead of replaying entries, the
  commands it skipped are not delivered one by one: ``on_reset(shard_index)``
  runs instead, after the new state is in place.
* ``with shard.reading() as state:`` reads the ``ShardState`` safely from the
  loop (a lock the applier holds while it applies one proposal).
* Leadership: ``is_leader``, ``leader_ready`` (leader *and* every entry of
  earlier terms applied here: the state is current, safe to schedule from),
  ``leader``, ``term``, ``commit_index``, ``applied_index``,
  ``on_leader_change(shard_index, LeaderInfo)``, ``await
  transfer_leadership(to)`` (Raft TimeoutNow, which pysyncobj 0.3.17 offers:
  the adapter pauses new entries until the target has the whole log, then
  asks it to start an election at once) and ``preferred_leader``: a leader
  that is not the preferred replica hands leadership to it when it is
  connected and caught up, which is how leaders of different shards spread
  over the replicas, at creation and after any restart. Nothing is tried
  while the preferred replica is away (a hand-over pauses writes), so it
  gets its shards back within ``rebalance_interval`` of its return.
* Membership: ``await add_peer(addr)`` / ``await remove_peer(addr)``, one node
  at a time (pysyncobj ``dynamicMembershipChange``). A new replica is started
  with ``peers`` = the current members; remove a leader by transferring its
  leadership first.

Threads (the tick thread drives pysyncobj, the applier thread applies
entries and writes snapshots): see ``shard``.

Durability: what "acknowledged" means
=====================================

A proposal resolves only after its entry is committed, i.e. **on stable
storage on a majority**: the journal is fdatasync'ed before the leader
counts itself towards a commit and before a follower acknowledges an entry,
term and vote are durable before any message reflecting them is sent
(``journal``, ``transport``), and a snapshot is durable before pysyncobj
drops the journal entries it covers (``serializer``).

What an **OS crash or power loss** of a replica can lose: entries it received
but had not acknowledged yet (a torn tail record is detected by its CRC and
truncated at restart); the commit index (saved lazily, it is volatile Raft
state and is relearned from the leader); nothing else. Acknowledged client
writes are on a majority's disks, so even a crash of every replica at once
loses none. It cannot protect against disks that lie about flushes (write
caches without power-loss protection, ``nobarrier`` mounts), or against
losing a majority of the disks. A process crash (SIGKILL) loses nothing
written, fsync or not. With ``tuning.fsync=False`` (tests, benchmarks only)
an OS crash can lose acknowledged writes.

Snapshots and log compaction (triggers, cost, memory, the garbage collector
paused while pickling): see ``serializer``.

How it hooks into pysyncobj 0.3.17 (re-check on any upgrade)
=============================================================

Details in each module's docstring.

* ``pysyncobj.syncobj.createJournal`` is replaced (once, at import) by a
  function that returns the journal we registered for a ``journalFile`` key
  (``journal``).
* ``pysyncobj.pickle``'s protocol is raised from 2 to 5 (see ``_PICKLE``
  in ``serializer``).
* A custom ``serializer``/``deserializer``/``serializeChecker``: the
  serializer queues the snapshot for the applier and raises
  ``_SnapshotStarted``, which pysyncobj's ``Serializer`` records as "not
  finished" until the checker reports the end (``serializer``, ``shard``).
* ``SyncObj.encryptor`` is overridden (HMAC sealer or Fernet:
  ``encryptor``), and the transport class is a ``TCPTransport`` subclass
  that syncs before acks (``transport``).
* Calls used besides the public API: ``_isLeader``, ``_getLeader``,
  ``_poller`` (to wake the tick), ``raftLastApplied``/``raftCommitIndex``,
  ``transferLeadership``, ``getStatus``. pysyncobj is not thread-safe: every
  call that touches its state runs on the tick thread (``_in_tick``), except
  reads of single attributes and ``_applyCommand`` (its queue is locked)
  (``shard``).

Security
========

``password`` is mandatory (peers exchange pickled messages); every message
is encrypted and authenticated (Fernet) or, with ``encrypt=False``,
authenticated (HMAC-SHA256) and dropped before it is unpickled when it
fails; Raft binds to one address, never to every interface. ``password``
may hold several passwords, one per line: sealed with the first, any
accepted (a rolling rotation). See ``encryptor``.
"""

from __future__ import annotations

from coordinator.raft.config import RaftTuning, check_addr
from coordinator.raft.errors import (
    NotLeader,
    ProposalTimeout,
    RaftError,
    RaftStorageError,
    TransferFailed,
)
from coordinator.raft.shard import RaftShard
from coordinator.raft.status import LeaderInfo, PeerStatus, RaftStats, RaftStatus

__all__ = [
    "check_addr",
    "LeaderInfo",
    "NotLeader",
    "PeerStatus",
    "ProposalTimeout",
    "RaftError",
    "RaftShard",
    "RaftStats",
    "RaftStatus",
    "RaftStorageError",
    "RaftTuning",
    "TransferFailed",
]
