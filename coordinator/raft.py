"""The Raft adapter: one pysyncobj ``SyncObj`` per shard per replica, behind a
typed asyncio API. This is the only module of the project that imports
pysyncobj.

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

Threads
=======

Each RaftShard runs two threads. The **tick thread** drives pysyncobj
(``autoTick=False``; we call ``doTick`` ourselves): network, elections,
heartbeats, the journal. The **applier thread** applies committed entries to
the ``ShardState`` and writes snapshots. pysyncobj calls our replicated
method on the tick thread; it only hands the entry to the applier. So a slow
apply or a long snapshot does not block heartbeats (they still share the
GIL: see below), and the asyncio loop is never blocked by either (it only
takes the state lock for short reads). ``propose`` and the other coroutines
must run on ``loop``; callbacks are delivered there with
``call_soon_threadsafe``.

Durability: what "acknowledged" means
=====================================

A proposal resolves only after its entry is committed, i.e. **on stable
storage on a majority**:

* Our journal (``_SegmentJournal``, hooked into pysyncobj in place of its
  mmap journal, which is never fsynced) appends records with a CRC to
  segment files under ``data_dir/shard-<n>/``. It is fdatasync'ed before the
  leader counts itself towards a commit (at the end of every tick and before
  the next one starts) and before a follower answers a successful
  AppendEntries (the transport syncs before it sends the ack). One fsync
  covers every entry written since the last one (group commit), so the cost
  is per batch of entries, not per entry. Term and vote are written to
  ``raft-vote`` with fsync + rename + directory fsync before any vote or
  request is sent.
* pysyncobj truncates a follower's log whenever a re-sent AppendEntries
  overlaps it, even with identical entries (it then logs CRITICAL "may have
  diverged"; a leader re-sends after a late acknowledgement). Our journal
  keeps such entries on disk until a *different* entry replaces them, so an
  acknowledged entry is never even briefly missing from the disk.
* Snapshots (``snapshot``) are written to a temporary file, fsynced, renamed
  and the directory fsynced **before** pysyncobj drops the journal entries
  they cover. An installed snapshot (from the leader) is fsynced before the
  follower acknowledges it.

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

Snapshots and log compaction
============================

pysyncobj compacts the log after ``compaction_min_entries`` entries or
``compaction_min_time`` seconds, and we force it when the log in memory passes
``max_log_bytes``. A snapshot pickles the whole ``ShardState`` on the applier
thread (no fork: ``useFork`` is off because gRPC runs in the same process),
compresses it (zlib level 1, ~5x) and writes it. Cost, measured on this
2-core machine: 1.2-1.7 s of CPU per 100k actions on an idle core (~250
bytes per action before zlib, ~32 after), 5.4 s for 150k actions on a busy
machine. The garbage collector is paused while it pickles (a full
collection over a big heap holds the GIL for ~0.25 s per 100k actions and
starved heartbeats into an election in a test; with the pause, no
election). While a snapshot runs, entries keep being committed and
acknowledged by the followers (heartbeats and the journal live on the tick
thread), but applying them waits: on the leader, clients see that pause as
extra latency once per compaction. Installing or restoring a snapshot costs
about twice its pickling. Memory: the log since the last compaction
(bounded by the three limits above) plus one serialized copy of the state
while a snapshot is written. (Giving ``Action`` a compact ``__reduce__``
of plain tuples makes pickling ~7x and unpickling ~20x faster.)

How it hooks into pysyncobj 0.3.17 (re-check on any upgrade)
=============================================================

* ``pysyncobj.syncobj.createJournal`` is replaced (once, at import) by a
  function that returns the journal we registered for a ``journalFile`` key.
* ``pysyncobj.pickle``'s protocol is raised from 2 to 5 (see ``_PICKLE``).
* A custom ``serializer``/``deserializer``/``serializeChecker``: the
  serializer queues the snapshot for the applier and raises
  ``_SnapshotStarted``, which pysyncobj's ``Serializer`` records as "not
  finished" until the checker reports the end.
* ``SyncObj.encryptor`` is overridden (HMAC sealer or Fernet), and the
  transport class is a ``TCPTransport`` subclass that syncs before acks.
* Calls used besides the public API: ``_isLeader``, ``_getLeader``,
  ``_poller`` (to wake the tick), ``raftLastApplied``/``raftCommitIndex``,
  ``transferLeadership``, ``getStatus``. pysyncobj is not thread-safe: every
  call that touches its state runs on the tick thread (``_in_tick``), except
  reads of single attributes and ``_applyCommand`` (its queue is locked).

Security
========

``password`` is mandatory: peers exchange pickled messages, so an open Raft
port would let anyone on the network run code in the coordinator. By
default (``tuning.encrypt``) every message is encrypted and authenticated
with Fernet (AES-128-CBC + HMAC-SHA256, the ``cryptography`` package) under
a key derived from the password and the shard index; a message that fails
is dropped before it is unpickled. With ``encrypt=False`` messages are only
authenticated (HMAC-SHA256 under a PBKDF2 key, checked before unpickling)
and readable on the wire. pysyncobj's per-connection random keys reject
replays. Raft binds only to ``bind_addr`` (default ``self_addr``), never to
every interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import gc
import hashlib
import hmac
import itertools
import json
import logging
import os
import pickle
import queue
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysyncobj.pickle as _ps_pickle
import pysyncobj.syncobj as _ps_syncobj
from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.journal import Journal
from pysyncobj.transport import TCPTransport

from coordinator.state import Command, Result, ShardState

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------


class RaftError(Exception):
    """Base class of the errors this module raises to callers."""


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


@dataclass(frozen=True, slots=True)
class RaftTuning:
    """Timeouts and limits. The defaults suit 3-5 replicas on a LAN."""

    #: leader heartbeat (AppendEntries) period, seconds
    heartbeat: float = 0.1
    #: election timeout range: a follower that hears no leader for a random
    #: time in [election_min, election_max] starts an election
    election_min: float = 1.0
    election_max: float = 2.0
    #: a leader without answers from a majority for this long steps down
    leader_fallback: float = 3.0
    #: a connection silent for this long is considered dead (>= election_max)
    connection_timeout: float = 3.5
    #: reconnect to an unreachable peer this often
    connection_retry: float = 1.0
    #: longest wait of the tick thread for network events
    tick: float = 0.05
    #: log compaction: after this many entries ...
    compaction_min_entries: int = 10_000
    #: ... or this many seconds since the last snapshot ...
    compaction_min_time: float = 300.0
    #: ... or when the entries kept in memory exceed this many bytes
    max_log_bytes: int = 256 << 20
    #: journal segment size before starting a new file
    segment_bytes: int = 64 << 20
    #: group commit: Raft entries in flight at once from this leader
    max_inflight: int = 2
    #: group commit: stop adding proposals to an entry past this size ...
    max_entry_bytes: int = 512 << 10
    #: ... or this many commands
    max_entry_commands: int = 20_000
    #: a single proposal larger than this (encoded) is refused
    max_command_bytes: int = 3 << 20
    #: fdatasync the journal before acknowledging (False: tests/benchmarks only)
    fsync: bool = True
    #: encrypt Raft traffic (Fernet, from the `cryptography` package);
    #: False: messages are authenticated (HMAC-SHA256) but readable
    encrypt: bool = True
    #: how often a leader checks whether to hand leadership to preferred_leader
    rebalance_interval: float = 5.0

    def validate(self) -> None:
        if not 0 < self.heartbeat * 3 < self.election_min < self.election_max:
            raise ValueError(
                "Raft timeouts must satisfy 0 < 3 x heartbeat < election_min < election_max "
                f"(got heartbeat={self.heartbeat}, election_min={self.election_min}, "
                f"election_max={self.election_max})"
            )
        if self.leader_fallback <= self.heartbeat:
            raise ValueError("leader_fallback must be longer than heartbeat")
        if self.connection_timeout < self.election_max:
            raise ValueError("connection_timeout must be >= election_max")
        for name in ("tick", "compaction_min_time", "connection_retry", "rebalance_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("compaction_min_entries", "max_log_bytes", "segment_bytes", "max_inflight",
                     "max_entry_bytes", "max_entry_commands", "max_command_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.compaction_min_entries < 2:
            raise ValueError("compaction_min_entries must be at least 2")
        if self.max_command_bytes > _BATCH_BYTES - (64 << 10):
            raise ValueError(f"max_command_bytes must be below {_BATCH_BYTES - (64 << 10)}")


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


# --------------------------------------------------------------------------
# pysyncobj integration points (installed once, at import)
# --------------------------------------------------------------------------

#: the pickle protocol of our entries, snapshots and (below) pysyncobj's messages
_PICKLE = 5

#: pysyncobj pickles messages and commands with protocol 2, which turns every
#: bytes object into a latin-1 string (1.5x larger, ~7 ms/MiB each way).
#: Protocol 5 is read by any Python >= 3.8, so replicas with and without
#: this setting still understand each other.
setattr(_ps_pickle, "__protocol", _PICKLE)

#: journals we built, keyed by the ``journalFile`` string given to SyncObj
_JOURNALS: dict[str, Journal] = {}
_JOURNALS_LOCK = threading.Lock()
_ORIG_CREATE_JOURNAL = _ps_syncobj.createJournal


def _create_journal(journal_file: str | None = None) -> Journal:
    """SyncObj builds its journal through this module-level function; ours
    hands it the durable journal registered for that key."""
    if journal_file is not None:
        with _JOURNALS_LOCK:
            journal = _JOURNALS.pop(journal_file, None)
        if journal is not None:
            return journal
    return _ORIG_CREATE_JOURNAL(journal_file)


_ps_syncobj.createJournal = _create_journal

#: pysyncobj splits a single entry larger than this into a "transmission",
#: whose chunking is buggy near the boundary: we keep every entry below it.
_BATCH_BYTES = 4 << 20
#: longest delay between two failed hand-overs to a connected preferred leader
_REBALANCE_BACKOFF_MAX = 60.0
_ADDR_RE = re.compile(r"(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})")
_KEY_ITERATIONS = 50_000


def _check_addr(addr: str, what: str) -> str:
    if not isinstance(addr, str):
        raise ValueError(f"{what} must be 'host:port', not {type(addr).__name__}")
    m = _ADDR_RE.fullmatch(addr)
    if m is None or not 0 < int(m.group("port")) < 65536:
        raise ValueError(f"{what} {addr!r} is not 'host:port' with a port in 1..65535")
    if m.group("host") in ("0.0.0.0", "[::]", "::"):
        raise ValueError(f"{what} {addr!r}: Raft must bind to one address, not every interface")
    return addr


# --------------------------------------------------------------------------
# Message authentication
# --------------------------------------------------------------------------


class _HmacSealer:
    """Stands in for pysyncobj's Fernet encryptor (same three methods, as
    used by ``TcpConnection``): authenticates every message with
    HMAC-SHA256 and refuses it before it is unpickled when the tag is
    wrong. The payload is readable on the wire (no confidentiality)."""

    _HEAD = struct.Struct(">BQ")
    _TAG = 32
    _VERSION = 1

    def __init__(self, key: bytes, shard: int) -> None:
        self._key = key
        self._shard = shard
        self._last_warning = 0.0

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        body = self._HEAD.pack(self._VERSION, max(0, int(current_time))) + data
        return body + hmac.new(self._key, body, hashlib.sha256).digest()

    def _body(self, token: bytes) -> bytes:
        if len(token) < self._HEAD.size + self._TAG or token[0] != self._VERSION:
            self._refused()
        body, tag = token[: -self._TAG], token[-self._TAG:]
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest(), tag):
            self._refused()
        return body

    def extract_timestamp(self, token: bytes) -> int:
        return int(self._HEAD.unpack_from(self._body(token))[1])

    def decrypt(self, token: bytes) -> bytes:
        return self._body(token)[self._HEAD.size:]

    def _refused(self) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning("shard %d: refused a Raft message that failed authentication (a peer with "
                        "another password, or something that is not a Raft peer of this shard); "
                        "connection dropped", self._shard)
        raise ValueError("Raft message authentication failed")


def _derive_key(password: str, shard: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"hsm-coordinator/raft/v1/shard-%d" % shard,
                               _KEY_ITERATIONS)


# --------------------------------------------------------------------------
# Durable journal
# --------------------------------------------------------------------------

#: Wiping a replica's Raft data and restarting it in place is unsafe (it would
#: forget votes and entries it acknowledged): it must rejoin as a new member.
_REPLACE = ("Replace this replica: remove it from the shard's Raft group (remove_peer on the "
            "leader), empty its shard directory, then add it back (add_peer).")

_SEG_MAGIC = b"HSMRJRN1"
_SEG_RE = re.compile(r"journal-(\d{10})\.log")
_REC = struct.Struct("<IIQQ")  # payload length, crc32(idx, term, payload), idx, term
_IDX_TERM = struct.Struct("<QQ")

Entry = tuple[bytes, int, int]  # (command, raft index, term), pysyncobj's layout


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write(path: Path, data: bytes, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


class _SegmentJournal(Journal):  # type: ignore[misc]
    """pysyncobj's journal interface over append-only segment files with
    CRC'd records, fdatasync'ed on demand (``sync``).

    Entries are also kept in memory (pysyncobj reads them by position).
    Crash safety: truncating the tail unlinks later segments from the last
    one backwards and dropping the head unlinks from the first one forwards,
    so every crash leaves a contiguous run of entries; a torn last record is
    detected by its CRC and cut at load time."""

    def __init__(self, directory: Path, shard: int, fsync: bool, segment_bytes: int,
                 stats: RaftStats) -> None:
        self._dir = directory
        self._shard = shard
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._stats = stats
        self._entries: list[Entry] = []
        self._locs: list[tuple[int, int]] = []  # (segment number, offset) of each entry
        self._shadow: deque[Entry] = deque()  # see deleteEntriesFrom
        self._shadow_locs: deque[tuple[int, int]] = deque()
        self._segments: list[int] = []
        self._fd = -1
        self._offset = 0
        self._dirty = False
        self._broken = ""
        self._bytes = 0
        self._lock = threading.Lock()  # sync() may be called from another thread
        self._vote_path = directory / "raft-vote"
        self._commit_path = directory / "raft-commit"
        self._term, self._voted_for = self._load_vote()
        self._commit = self._load_commit()
        self._saved_commit = self._commit
        self._load()

    # ------------------------------------------------------------ loading

    def _load_vote(self) -> tuple[int, str | None]:
        try:
            data = json.loads(self._vote_path.read_text())
            return int(data["term"]), data["voted_for"]
        except FileNotFoundError:
            return 0, None
        except (ValueError, KeyError, TypeError) as e:
            raise RaftStorageError(
                f"shard {self._shard}: {self._vote_path} is damaged ({e}); this replica's Raft "
                f"vote is unknown. {_REPLACE}") from e

    def _load_commit(self) -> int:
        try:
            return max(1, int(json.loads(self._commit_path.read_text())["commit"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 1  # volatile Raft state; relearned from the leader

    def _seg_path(self, seq: int) -> Path:
        return self._dir / f"journal-{seq:010d}.log"

    def _load(self) -> None:
        for leftover in self._dir.glob("journal-*.log.tmp"):
            leftover.unlink()  # a rewrite cut short by a crash; the original is intact
        seqs = sorted(int(m.group(1)) for name in os.listdir(self._dir)
                      if (m := _SEG_RE.fullmatch(name)))
        for pos, seq in enumerate(seqs):
            last = pos == len(seqs) - 1
            path = self._seg_path(seq)
            data = path.read_bytes()
            if data[: len(_SEG_MAGIC)] != _SEG_MAGIC:
                if last and len(data) < len(_SEG_MAGIC):
                    path.unlink()  # created but never written: a crash during rotation
                    continue
                raise RaftStorageError(f"shard {self._shard}: {path} is not a journal segment")
            off = len(_SEG_MAGIC)
            while off + _REC.size <= len(data):
                size, crc, idx, term = _REC.unpack_from(data, off)
                end = off + _REC.size + size
                if end > len(data):
                    break
                payload = data[off + _REC.size: end]
                if zlib.crc32(payload, zlib.crc32(data[off + 8: off + _REC.size])) != crc:
                    break
                if self._entries and idx != self._entries[-1][1] + 1:
                    raise RaftStorageError(
                        f"shard {self._shard}: journal {path} jumps from Raft index "
                        f"{self._entries[-1][1]} to {idx}. {_REPLACE}")
                self._entries.append((payload, idx, term))
                self._locs.append((seq, off))
                self._bytes += size
                off = end
            if off < len(data):
                if not last:
                    raise RaftStorageError(
                        f"shard {self._shard}: journal segment {path} is damaged at offset {off} "
                        f"(not the last segment, so this is not a torn write). {_REPLACE}")
                log.warning("shard %d: journal %s ends with %d bytes of an incomplete record "
                            "(a crash before it was acknowledged); dropping them",
                            self._shard, path, len(data) - off)
                os.truncate(path, off)
            self._segments.append(seq)
        if self._segments:
            seq = self._segments[-1]
            self._fd = os.open(self._seg_path(seq), os.O_WRONLY)
            self._offset = os.lseek(self._fd, 0, os.SEEK_END)
        else:
            self._new_segment(1)

    def _new_segment(self, seq: int) -> None:
        path = self._seg_path(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        _write_all(fd, _SEG_MAGIC)
        if self._fsync:
            os.fdatasync(fd)
            _fsync_dir(self._dir)
        self._segments.append(seq)
        self._fd = fd
        self._offset = len(_SEG_MAGIC)

    # --------------------------------------------------- pysyncobj interface

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        if not isinstance(command, bytes):
            command = bytes(command, "utf-8") if isinstance(command, str) else bytes(command)
        with self._lock:
            if self._shadow:
                if self._shadow[0] == (command, idx, term):
                    # re-sent entry we still hold on disk, at this very place: keep it
                    self._entries.append(self._shadow.popleft())
                    self._locs.append(self._shadow_locs.popleft())
                    self._bytes += len(command)
                    return
                self._truncate_shadow_locked()  # a real conflict
            self._check_usable()
            head = _IDX_TERM.pack(idx, term)
            rec = _REC.pack(len(command), zlib.crc32(command, zlib.crc32(head)), idx, term) + command
            try:
                _write_all(self._fd, rec)
            except OSError as e:
                self._write_failed(e)
                raise
            self._entries.append((command, idx, term))
            self._locs.append((self._segments[-1], self._offset))
            self._offset += len(rec)
            self._bytes += len(command)
            self._dirty = True
            if self._offset >= self._segment_bytes:
                self._rotate_locked()

    def clear(self) -> None:
        with self._lock:
            self._close_fd()
            for seq in self._segments:
                self._seg_path(seq).unlink(missing_ok=True)
            nxt = (self._segments[-1] + 1) if self._segments else 1
            self._segments = []
            self._entries = []
            self._locs = []
            self._shadow.clear()
            self._shadow_locs.clear()
            self._bytes = 0
            if self._fsync:
                _fsync_dir(self._dir)
            self._new_segment(nxt)
            self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        """Drop entries from position ``entryFrom`` on.

        pysyncobj truncates a follower's log whenever an AppendEntries
        overlaps it, even when the overlapping entries are identical (a
        leader re-sending after a late acknowledgement). Standard Raft only
        deletes on a conflict. So the dropped entries stay on disk (the
        "shadow", right after the log) until a *different* entry is added
        at their place: identical re-sends then cost nothing and an entry
        this replica acknowledged is never even briefly missing from disk.
        On restart the shadow is part of the log again: entries this
        replica once held in that order, which is a state it really had."""
        with self._lock:
            if entryFrom >= len(self._entries):
                return
            dropped = self._entries[entryFrom:]
            self._shadow.extendleft(reversed(dropped))
            self._shadow_locs.extendleft(reversed(self._locs[entryFrom:]))
            self._bytes -= sum(len(e[0]) for e in dropped)
            del self._entries[entryFrom:]
            del self._locs[entryFrom:]

    def _truncate_shadow_locked(self) -> None:
        if not self._shadow:
            return
        seq, off = self._shadow_locs[0]
        self._shadow.clear()
        self._shadow_locs.clear()
        self._close_fd()
        while self._segments[-1] != seq:  # newest first: a crash leaves a prefix
            self._seg_path(self._segments.pop()).unlink(missing_ok=True)
        os.truncate(self._seg_path(seq), off)
        self._fd = os.open(self._seg_path(seq), os.O_WRONLY)
        self._offset = os.lseek(self._fd, 0, os.SEEK_END)
        if self._fsync:
            # gone for good (file size and unlinks) before anything written
            # after this point can be acknowledged
            os.fdatasync(self._fd)
            _fsync_dir(self._dir)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 (pysyncobj's name)
        """Drop the first ``entryTo`` entries (covered by a durable snapshot)."""
        with self._lock:
            self._drop_head_locked(entryTo)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.sync()
        self._save_commit()
        with self._lock:
            self._close_fd()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        self._commit = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        # Raft: term and vote must be durable before any message reflecting them is sent.
        _atomic_write(self._vote_path, json.dumps({"term": term, "voted_for": votedForNodeId}).encode(),
                      self._fsync)
        self._term, self._voted_for = term, votedForNodeId

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._term

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._save_commit()

    # ---------------------------------------------------------------- ours

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def sync(self) -> None:
        """Make every entry written so far durable (one fdatasync)."""
        if not self._dirty:
            return
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        self._check_usable()
        if not self._dirty:
            return
        if self._fsync:
            t0 = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                # After a failed fsync the kernel may have dropped the dirty
                # pages: a retry could "succeed" without the data. Never
                # acknowledge anything again from this journal.
                self._broken = (f"fdatasync of the journal failed ({e}); the replica stopped "
                                "acknowledging Raft entries. Fix the disk and restart it")
                log.critical("shard %d: %s", self._shard, self._broken)
                raise
            self._stats.fsyncs += 1
            self._stats.fsync_seconds += time.perf_counter() - t0
        self._dirty = False

    @property
    def broken(self) -> str:
        return self._broken

    def _check_usable(self) -> None:
        if self._broken:
            raise RaftStorageError(f"shard {self._shard}: {self._broken}")

    def _write_failed(self, e: OSError) -> None:
        # undo a partial record so that the next one is not written after garbage
        try:
            os.ftruncate(self._fd, self._offset)
            os.lseek(self._fd, self._offset, os.SEEK_SET)
            log.error("shard %d: cannot write the Raft journal in %s: %s", self._shard, self._dir, e)
        except OSError:
            self._broken = f"cannot write or repair the journal in {self._dir} ({e}); restart the replica"
            log.critical("shard %d: %s", self._shard, self._broken)

    def rotate(self) -> None:
        """Start a new segment (at each snapshot, so that compaction can drop
        whole files)."""
        with self._lock:
            self._rotate_locked()

    def trim_to(self, entry: Entry) -> bool:
        """Drop the entries before ``entry`` if the journal holds it (restart
        after a crash between a snapshot and the compaction of the journal)."""
        with self._lock:
            if not self._entries:
                return False
            pos = entry[1] - self._entries[0][1]
            if 0 <= pos < len(self._entries) and self._entries[pos] == entry:
                if pos:
                    self._drop_head_locked(pos)
                return True
            return False

    def _save_commit(self) -> None:
        if self._commit != self._saved_commit:
            self._saved_commit = self._commit
            with contextlib.suppress(OSError):
                _atomic_write(self._commit_path, json.dumps({"commit": self._commit}).encode(), False)

    def _rotate_locked(self) -> None:
        # (a shadow stays where it is: any later add either takes it back or
        # truncates it, and that drops the newer segments)
        if self._offset <= len(_SEG_MAGIC):
            return  # current segment is empty
        self._sync_locked()
        self._close_fd()
        self._new_segment(self._segments[-1] + 1)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _drop_head_locked(self, count: int) -> None:
        if count <= 0:
            return
        count = min(count, len(self._entries))
        self._bytes -= sum(len(e[0]) for e in self._entries[:count])
        del self._entries[:count]
        del self._locs[:count]
        first_seq = (self._locs[0][0] if self._locs
                     else self._shadow_locs[0][0] if self._shadow_locs else self._segments[-1])
        removed = False
        while self._segments[0] < first_seq:  # oldest first: a crash leaves a suffix
            self._seg_path(self._segments.pop(0)).unlink(missing_ok=True)
            removed = True
        # The first kept segment may start with dead entries: rewrite it with
        # only the live ones when it is not the one being appended to.
        if (self._locs and not self._shadow and first_seq != self._segments[-1]
                and self._locs[0][1] > len(_SEG_MAGIC)):
            self._rewrite_segment(first_seq)
            removed = True
        if removed and self._fsync:
            _fsync_dir(self._dir)

    def _rewrite_segment(self, seq: int) -> None:
        path = self._seg_path(seq)
        out = bytearray(_SEG_MAGIC)
        new_locs: list[tuple[int, int]] = []
        n = 0
        for (cmd, idx, term), (s, _) in zip(self._entries, self._locs, strict=True):
            if s != seq:
                break
            head = _IDX_TERM.pack(idx, term)
            new_locs.append((seq, len(out)))
            out += _REC.pack(len(cmd), zlib.crc32(cmd, zlib.crc32(head)), idx, term) + cmd
            n += 1
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(out)
            f.flush()
            if self._fsync:
                os.fdatasync(f.fileno())
        os.replace(tmp, path)
        self._locs[:n] = new_locs


# --------------------------------------------------------------------------
# Snapshot files
# --------------------------------------------------------------------------

_SNAP_MAGIC = b"HSMRSNP1"
_SNAP_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class _SnapshotHeader:
    last: Entry
    prev: Entry
    cluster: Any  # set of pysyncobj Nodes
    size: int
    crc: int


def _read_snapshot(path: Path, shard: int) -> tuple[_SnapshotHeader, bytes, tuple[int, int, int]]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    bad = f"shard {shard}: snapshot {path} is damaged"
    if data[: len(_SNAP_MAGIC)] != _SNAP_MAGIC or len(data) < len(_SNAP_MAGIC) + _SNAP_LEN.size:
        raise RaftStorageError(f"{bad} (not a snapshot file). {_REPLACE}")
    (hlen,) = _SNAP_LEN.unpack_from(data, len(_SNAP_MAGIC))
    start = len(_SNAP_MAGIC) + _SNAP_LEN.size
    try:
        last, prev, cluster, size, crc = pickle.loads(data[start: start + hlen])
    except Exception as e:
        raise RaftStorageError(f"{bad} (header: {e}). {_REPLACE}") from e
    body = data[start + hlen:]
    if len(body) != size or zlib.crc32(body) != crc:
        raise RaftStorageError(f"{bad} (checksum mismatch). {_REPLACE}")
    return _SnapshotHeader(tuple(last), tuple(prev), cluster, size, crc), body, ident


_STATE_FORMAT = "hsm-shard-state/2"
#: actions per pickle call in a snapshot: pickle holds the GIL for a whole
#: call, and one call over a million actions takes seconds (missed Raft
#: heartbeats, elections, lapsed agent leases); between two slices the
#: tick and event-loop threads run
_SNAP_CHUNK = 10_000


def _encode_state(state: ShardState) -> bytes:
    """A shard state as snapshot bytes, pickled in slices (see _SNAP_CHUNK).
    Called on the apply thread, the state's only writer: nothing changes
    while the slices are taken; readers on the loop only read."""
    head, actions = state.export_parts()
    parts = [pickle.dumps(head, protocol=_PICKLE)]
    for i in range(0, len(actions), _SNAP_CHUNK):
        parts.append(pickle.dumps(actions[i:i + _SNAP_CHUNK], protocol=_PICKLE))
        time.sleep(0)  # let the other threads have the GIL
    return pickle.dumps((_STATE_FORMAT, parts), protocol=_PICKLE)


def _decode_state(blob: bytes) -> ShardState:
    obj = pickle.loads(blob)
    if isinstance(obj, ShardState):
        return obj  # a snapshot written before the sliced format
    if not (isinstance(obj, tuple) and len(obj) == 2 and obj[0] == _STATE_FORMAT):
        raise RaftStorageError(f"unknown snapshot format {type(obj).__name__}")
    parts: list[bytes] = obj[1]

    def chunks() -> Iterator[list[Any]]:
        for part in parts[1:]:
            yield pickle.loads(part)
            time.sleep(0)

    return ShardState.import_parts(pickle.loads(parts[0]), chunks())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pickling or unpickling a large state allocates millions of objects,
    which triggers full garbage collections: each one holds the GIL for
    hundreds of ms over a big heap (measured: 0.25 s per pass with 100k
    actions), starving the Raft tick thread into missed heartbeats. Reference
    counting still frees garbage meanwhile."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _SnapshotStarted(Exception):
    """Raised by our serializer hook to tell pysyncobj's Serializer that the
    snapshot continues asynchronously (its serializeChecker reports the end)."""


# --------------------------------------------------------------------------
# pysyncobj subclasses
# --------------------------------------------------------------------------


class _DurableTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that makes the journal durable before a follower
    acknowledges AppendEntries (or a snapshot)."""

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            self._syncObj._hsm_journal.sync()
        return bool(super().send(node, message))


class _ShardSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, shard: RaftShard, self_addr: str, peers: list[str], conf: SyncObjConf,
                 journal: _SegmentJournal, encryptor: Any) -> None:
        self._hsm_shard = shard
        self._hsm_journal = journal
        self._hsm_encryptor = encryptor
        super().__init__(self_addr, peers, conf, transportClass=_DurableTransport)

    @property
    def encryptor(self) -> Any:
        return self._hsm_encryptor

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, payload: bytes) -> None:
        # Runs on the tick thread while pysyncobj applies entry raftLastApplied + 1.
        self._hsm_shard._entry_committed(self.raftLastApplied + 1, payload)


# --------------------------------------------------------------------------
# The shard
# --------------------------------------------------------------------------

_APPLY, _MARK, _SNAPSHOT, _LOAD, _STOP = range(5)


@dataclass(eq=False, slots=True)
class _Proposal:
    part: bytes
    count: int
    fut: asyncio.Future[list[Result]]
    timeout: float


@dataclass(eq=False, slots=True)
class _Batch:
    proposals: list[_Proposal]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Delivery:
    results: list[Result] = field(default_factory=list)
    error: BaseException | None = None


class RaftShard:
    """One replica of one shard's Raft group. See the module docstring."""

    def __init__(
        self,
        index: int,
        self_addr: str,
        peers: Sequence[str],
        data_dir: Path,
        password: str,
        state_factory: Callable[[], ShardState],
        on_applied: Callable[[int, Result, bool], None],
        loop: asyncio.AbstractEventLoop,
        tuning: RaftTuning | None = None,
        *,
        bind_addr: str | None = None,
        on_leader_change: Callable[[int, LeaderInfo], None] | None = None,
        on_reset: Callable[[int], None] | None = None,
        preferred_leader: str | None = None,
        wants_effects: Callable[[], bool] | None = None,
    ) -> None:
        if not isinstance(password, str) or len(password) < 8:
            raise ValueError(
                f"shard {index}: a Raft password of at least 8 characters is required: replicas "
                "exchange pickled messages, so an open Raft port would let anyone on the network "
                "run code in the coordinator")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"shard index must be a non-negative integer, not {index!r}")
        self.tuning = tuning or RaftTuning()
        self.tuning.validate()
        if self.tuning.encrypt:
            from pysyncobj.encryptor import HAS_CRYPTO
            if not HAS_CRYPTO:
                raise RuntimeError("Raft encryption (encrypt=True) needs the 'cryptography' package")
        self.index = index
        self.self_addr = _check_addr(self_addr, "Raft address")
        self.bind_addr = _check_addr(bind_addr or self_addr, "Raft bind address")
        peer_list = [_check_addr(p, "Raft peer address") for p in peers if p != self_addr]
        if len(set(peer_list)) != len(peer_list):
            raise ValueError(f"shard {index}: duplicate Raft peer addresses in {list(peers)}")
        if preferred_leader is not None:
            _check_addr(preferred_leader, "preferred leader address")
        self._loop = loop
        self._on_applied = on_applied
        self._on_leader_change = on_leader_change
        self._on_reset = on_reset
        #: on a follower, whether anyone on the loop cares about applied
        #: results (watchers); when not, entries are applied without a hop
        #: to the event loop (None: always hop)
        self._wants_effects = wants_effects
        self.preferred_leader = preferred_leader
        self.stats = RaftStats()
        self._origin = os.urandom(8)  # tags entries proposed by this instance
        self._closed = False

        self.dir = Path(data_dir) / f"shard-{index}"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RaftStorageError(f"shard {index}: {self.dir} is in use by another process") from None

        try:
            self._init_storage(state_factory)
            self._init_raft(peer_list, password)
        except BaseException:
            os.close(self._lock_fd)
            raise

        # loop side (touched only on the loop thread)
        self._pending: deque[_Proposal] = deque()
        self._inflight: dict[int, _Batch] = {}
        self._batch_ids = itertools.count(1)
        self._transferring = 0
        self._info = LeaderInfo(False, None, 0, False)
        self._rebalance_task: asyncio.Task[None] | None = None

        self._applier = threading.Thread(target=self._apply_loop, name=f"raft-apply-{index}", daemon=True)
        self._ticker = threading.Thread(target=self._tick_loop, name=f"raft-tick-{index}", daemon=True)
        self._applier.start()
        self._ticker.start()
        self._post(self._start_loop_side)
        log.info("shard %d: Raft replica %s started (peers %s, data %s)", index, self.self_addr,
                 ",".join(peer_list) or "none", self.dir)

    # ------------------------------------------------------------ startup

    def _init_storage(self, state_factory: Callable[[], ShardState]) -> None:
        for leftover in ("snapshot.tmp", "snapshot.writing", "snapshot.1.tmp"):
            (self.dir / leftover).unlink(missing_ok=True)
        self._snapshot_path = self.dir / "snapshot"
        self._state_lock = threading.Lock()
        self._snap_file_lock = threading.Lock()
        self._snap_generation = 0
        self._snap_status = SERIALIZER_STATE.NOT_SERIALIZING
        self._loaded_ident: tuple[int, int, int] | None = None
        self._applied_index = 0
        state = None
        header: _SnapshotHeader | None = None
        if self._snapshot_path.exists():
            header, body, ident = _read_snapshot(self._snapshot_path, self.index)
            try:
                with _gc_paused():
                    state = _decode_state(zlib.decompress(body))
            except Exception as e:
                raise RaftStorageError(f"shard {self.index}: snapshot {self._snapshot_path} cannot "
                                       f"be loaded: {e}") from e
            self._loaded_ident = ident
            self._applied_index = header.last[1]
            log.info("shard %d: restored snapshot at Raft index %d", self.index, header.last[1])
        self._state: ShardState = state if state is not None else state_factory()
        if not isinstance(self._state, ShardState):
            raise TypeError(f"shard {self.index}: state_factory returned {type(self._state).__name__}")
        self._journal = _SegmentJournal(self.dir, self.index, self.tuning.fsync,
                                        self.tuning.segment_bytes, self.stats)
        if header is not None:
            # a crash between a snapshot and the compaction of the journal
            # leaves older entries first: pysyncobj wants the log to start
            # with the snapshot's last two entries, or it would drop it all
            self._journal.trim_to(header.prev)

    def _init_raft(self, peers: list[str], password: str) -> None:
        t = self.tuning
        encryptor: Any
        if t.encrypt:
            from pysyncobj.encryptor import getEncryptor
            encryptor = getEncryptor(f"{password}\0hsm-coordinator shard {self.index}")
        else:
            encryptor = _HmacSealer(_derive_key(password, self.index), self.index)
        self._journal_key = f"hsm-raft:{self.dir.resolve()}:{id(self)}"
        conf = SyncObjConf(
            autoTick=False,
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            appendEntriesPeriod=t.heartbeat,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry,
            leaderFallbackTimeout=t.leader_fallback,
            appendEntriesUseBatch=False,  # send at once: our group commit does the batching
            appendEntriesBatchSizeBytes=_BATCH_BYTES,
            bindAddress=self.bind_addr,
            sendBufferSize=1 << 20,
            recvBufferSize=1 << 20,
            logCompactionMinEntries=t.compaction_min_entries,
            logCompactionMinTime=t.compaction_min_time,
            logCompactionBatchSize=1 << 20,
            commandsWaitLeader=False,
            fullDumpFile=str(self._snapshot_path),
            journalFile=self._journal_key,
            dynamicMembershipChange=True,
            useFork=False,
            serializer=self._serialize_hook,
            deserializer=self._deserialize_hook,
            serializeChecker=self._serialize_checker,
            bindRetryTime=0.2,
            maxBindRetries=3,
        )
        with _JOURNALS_LOCK:
            _JOURNALS[self._journal_key] = self._journal
        try:
            self._so = _ShardSyncObj(self, self.self_addr, peers, conf, self._journal, encryptor)
        except Exception as e:
            with _JOURNALS_LOCK:
                _JOURNALS.pop(self._journal_key, None)
            self._journal._destroy()
            if isinstance(e, SyncObjException):
                raise OSError(f"shard {self.index}: cannot listen for Raft on {self.bind_addr} "
                              "(address in use or not local)") from e
            raise
        # a pipe that wakes the tick thread out of its poll (tasks, close)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()
        self._so._poller.subscribe(self._wake_r, self._drain_wake, 1)  # 1: POLL_EVENT_TYPE.READ
        self._so.addOnTickCallback(self._journal.sync)
        self._failed = ""
        self._tick_tasks: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue())
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._leader_since = 0
        self._last_mark = 0
        self._last_seen: tuple[bool, str | None, int, bool] = (False, None, 0, False)
        self._last_force = 0.0

    # --------------------------------------------------------- properties

    @property
    def is_leader(self) -> bool:
        return not self._failed and bool(self._so._isLeader())

    @property
    def leader(self) -> str | None:
        node = None if self._failed else self._so._getLeader()
        return None if node is None else str(node.id)

    @property
    def leader_info(self) -> LeaderInfo:
        """The last leadership state delivered to the loop (what
        ``on_leader_change`` last received)."""
        return self._info

    @property
    def failed(self) -> str:
        """Why this replica stopped working on its own (a disk error), or ""."""
        return self._failed

    @property
    def leader_ready(self) -> bool:
        """Leader, and every entry committed before this term is applied
        here: the state is current (safe to schedule from)."""
        return self.is_leader and self._applied_index >= self._leader_since > 0

    @property
    def term(self) -> int:
        return int(self._so.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self._so.raftCommitIndex)

    @property
    def applied_index(self) -> int:
        """Raft index of the last entry applied to ``state`` on this replica."""
        return self._applied_index

    @property
    def state(self) -> ShardState:
        """The current state object. Hold ``reading()`` while using it: the
        applier thread changes it, and replaces it on snapshot install."""
        return self._state

    @contextlib.contextmanager
    def reading(self) -> Iterator[ShardState]:
        """``with shard.reading() as state:`` - a consistent view between
        two applied proposals (the applier takes this lock for each one).
        Keep it short: applies wait for it. Call it on the loop thread (or
        any thread but the applier)."""
        with self._state_lock:
            yield self._state

    @property
    def peers(self) -> list[str]:
        return sorted(str(n.id) for n in self._so.otherNodes)

    # ------------------------------------------------------------ propose

    async def propose(self, cmds: Command | Sequence[Command], timeout: float) -> list[Result]:
        """Replicate commands; return their Results once committed and
        applied here. See the module docstring for the errors."""
        cmd_list: list[Command] = list(cmds) if isinstance(cmds, (list, tuple)) else [cmds]  # type: ignore[list-item]
        if not cmd_list:
            return []
        if not timeout > 0:
            raise ValueError(f"proposal timeout must be positive, not {timeout!r}")
        if self._failed:
            raise RaftError(f"shard {self.index}: this replica stopped working: {self._failed}")
        if self._closed or not self.is_leader:
            raise NotLeader(self.index, None if self._closed else self.leader)
        part = pickle.dumps(tuple(cmd_list), protocol=_PICKLE)
        if len(part) > self.tuning.max_command_bytes:
            raise ValueError(
                f"shard {self.index}: {len(cmd_list)} command(s) encode to {len(part)} bytes, more "
                f"than one Raft entry may carry ({self.tuning.max_command_bytes}); send fewer items "
                "per request")
        fut: asyncio.Future[list[Result]] = self._loop.create_future()
        self._pending.append(_Proposal(part, len(cmd_list), fut, timeout))
        self._pump()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ProposalTimeout(
                f"shard {self.index}: {len(cmd_list)} command(s) not confirmed within {timeout:g}s; "
                "they may or may not be applied: retry with the same idempotency keys") from None

    def _pump(self) -> None:
        """Send queued proposals as Raft entries, up to max_inflight at once."""
        if not self._pending:
            return
        if self._closed or not self.is_leader:
            self._fail_pending(NotLeader(self.index, None if self._closed else self.leader))
            return
        t = self.tuning
        while self._pending and len(self._inflight) < t.max_inflight and not self._transferring:
            props: list[_Proposal] = []
            size = count = 0
            while self._pending:
                p = self._pending[0]
                if p.fut.done():  # timed out or cancelled before it was sent: never proposed
                    self._pending.popleft()
                    continue
                if props and (size + len(p.part) > t.max_entry_bytes or count + p.count > t.max_entry_commands):
                    break
                self._pending.popleft()
                props.append(p)
                size += len(p.part)
                count += p.count
            if not props:
                return
            batch_id = next(self._batch_ids)
            payload = pickle.dumps((self._origin, batch_id, tuple(p.part for p in props)),
                                   protocol=_PICKLE)
            batch = _Batch(props)
            batch.timer = self._loop.call_later(max(p.timeout for p in props), self._expire_batch, batch_id)
            self._inflight[batch_id] = batch
            self.stats.entries_proposed += 1
            self.stats.commands_proposed += count
            self._so.apply_batch(payload, callback=functools.partial(self._raft_callback, batch_id))

    def _raft_callback(self, batch_id: int, _res: Any, err: int) -> None:
        # tick thread; success is reported by the applier, with the results
        if err != FAIL_REASON.SUCCESS:
            self._post(self._batch_failed, batch_id, err)

    def _batch_failed(self, batch_id: int, err: int) -> None:
        batch = self._inflight.pop(batch_id, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        if err == FAIL_REASON.UNKNOWN_OUTCOME:
            exc: RaftError = ProposalTimeout(
                f"shard {self.index}: Raft lost track of the entry; it may or may not be applied: "
                "retry with the same idempotency keys")
        else:
            reason = {FAIL_REASON.QUEUE_FULL: "queue full", FAIL_REASON.MISSING_LEADER: "no leader",
                      FAIL_REASON.DISCARDED: "entry discarded by a new leader",
                      FAIL_REASON.NOT_LEADER: "leadership lost",
                      FAIL_REASON.LEADER_CHANGED: "leadership changed",
                      FAIL_REASON.REQUEST_DENIED: "denied"}.get(err, f"error {err}")
            exc = (NotLeader(self.index, self.leader, f" ({reason})") if not self.is_leader
                   else RaftError(f"shard {self.index}: proposal refused by Raft ({reason})"))
        for p in batch.proposals:
            if not p.fut.done():
                p.fut.set_exception(exc)
        self._pump()

    def _expire_batch(self, batch_id: int) -> None:
        batch = self._inflight.pop(batch_id, None)
        if batch is None:
            return
        log.warning("shard %d: Raft entry of %d proposal(s) not confirmed in time; freeing its slot",
                    self.index, len(batch.proposals))
        for p in batch.proposals:
            if not p.fut.done():
                p.fut.set_exception(ProposalTimeout(f"shard {self.index}: not confirmed in time"))
        self._pump()

    def _fail_pending(self, exc: BaseException) -> None:
        while self._pending:
            p = self._pending.popleft()
            if not p.fut.done():
                p.fut.set_exception(exc)

    # --------------------------------------------------- leadership, admin

    async def transfer_leadership(self, to: str | None = None, timeout: float = 5.0) -> str:
        """Hand leadership to ``to`` (or to the most caught-up follower) and
        return the new leader's address. New proposals wait meanwhile.

        TimeoutNow goes only to a *connected* follower that has the whole
        log, and is sent again every few heartbeats until an election starts
        (a follower that does not know this leader yet, such as one that just
        restarted, ignores it)."""
        if to is not None:
            _check_addr(to, "transfer target")
            if to == self.self_addr and self.is_leader:
                return to
            if to not in self.peers:
                raise ValueError(f"shard {self.index}: {to} is not a member of this Raft group "
                                 f"(members: {', '.join([self.self_addr, *self.peers])})")
        if not self.is_leader:
            raise NotLeader(self.index, self.leader)
        deadline = self._loop.time() + timeout
        resend = max(3 * self.tuning.heartbeat, 2 * self.tuning.tick)
        sent: float | None = None  # when TimeoutNow was last sent
        self._transferring += 1
        try:
            while self.is_leader:
                now = self._loop.time()
                if now > deadline:
                    if sent is None:
                        target = "connected, caught-up follower" if to is None else f"{to} (not connected or not caught up)"
                        raise TransferFailed(f"shard {self.index}: no {target} to hand leadership to within {timeout:g}s")
                    raise TransferFailed(f"shard {self.index}: the election after the hand-over did not "
                                         f"finish within {timeout:g}s")
                if sent is None or now - sent >= resend:
                    reason = await self._in_tick(functools.partial(self._tick_transfer, to))
                    if reason == FAIL_REASON.SUCCESS:
                        sent = self._loop.time()
                await asyncio.sleep(0.01)
            while self._loop.time() < deadline:
                leader = self.leader
                if not self.is_leader and leader is not None and leader != self.self_addr:
                    log.info("shard %d: leadership handed from %s to %s", self.index, self.self_addr, leader)
                    return leader
                await asyncio.sleep(0.01)
            raise TransferFailed(f"shard {self.index}: the election after the hand-over did not "
                                 f"finish within {timeout:g}s")
        finally:
            self._transferring -= 1
            self._pump()

    def _tick_transfer(self, to: str | None) -> int:
        node = None
        if to is not None:
            # pysyncobj sends TimeoutNow to a named node whatever its state:
            # to a dead one whose last known match index is the log's end, it
            # "succeeds" and the shard then waits for an election that never
            # comes
            node = next((n for n in self._so.otherNodes if str(n.id) == to), None)
            if node is None or not self._so.isNodeConnected(node):
                return int(FAIL_REASON.REQUEST_DENIED)
        box: list[int] = []
        self._so.transferLeadership(node, callback=lambda _res, err: box.append(err))
        return box[0] if box else FAIL_REASON.SUCCESS

    def _tick_peer(self, addr: str) -> tuple[bool, int]:
        """On the leader: whether peer *addr* is connected, and how many
        entries of this leader's log it has not acknowledged yet."""
        so = self._so
        node = next((n for n in so.otherNodes if str(n.id) == addr), None)
        if node is None or not so.isNodeConnected(node):
            return False, 0
        match = so.getStatus().get(f"match_idx_server_{addr}") or 0
        return True, max(0, self._journal.last_index - int(match))

    async def add_peer(self, addr: str, timeout: float = 10.0) -> None:
        """Add one replica to this shard's group (start it first, with
        ``peers`` = the current members). Wait for it before the next change."""
        _check_addr(addr, "new peer address")
        if addr == self.self_addr or addr in self.peers:
            raise ValueError(f"shard {self.index}: {addr} is already a member")
        await self._membership(addr, timeout, add=True)

    async def remove_peer(self, addr: str, timeout: float = 10.0) -> None:
        """Remove one replica from this shard's group. To remove the leader,
        transfer its leadership first."""
        _check_addr(addr, "peer address")
        if addr == self.self_addr:
            raise ValueError(f"shard {self.index}: a leader cannot remove itself; transfer "
                             "leadership to another replica first and ask the new leader")
        if addr not in self.peers:
            raise ValueError(f"shard {self.index}: {addr} is not a member")
        await self._membership(addr, timeout, add=False)

    async def _membership(self, addr: str, timeout: float, add: bool) -> None:
        if not self.is_leader:
            raise NotLeader(self.index, self.leader)
        fut: asyncio.Future[int] = self._loop.create_future()

        def settle(err: int) -> None:
            if not fut.done():
                fut.set_result(err)

        def done(_res: Any, err: int) -> None:
            self._post(settle, err)

        if add:
            self._so.addNodeToCluster(addr, callback=done)
        else:
            self._so.removeNodeFromCluster(addr, callback=done)
        what = "add" if add else "remove"
        try:
            err = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ProposalTimeout(f"shard {self.index}: {what} {addr}: not confirmed within "
                                  f"{timeout:g}s; check the membership before retrying") from None
        if err == FAIL_REASON.REQUEST_DENIED:
            raise RaftError(f"shard {self.index}: {what} {addr} refused: another membership change "
                            "is still in progress, or the new leader has not committed its first entry")
        if err != FAIL_REASON.SUCCESS:
            raise NotLeader(self.index, self.leader, f" ({what} {addr} failed: error {err})")
        log.info("shard %d: %s %s %s the Raft group", self.index, "added" if add else "removed",
                 addr, "to" if add else "from")

    async def status(self) -> RaftStatus:
        return await self._in_tick(self._tick_status)  # type: ignore[no-any-return]

    def _tick_status(self) -> RaftStatus:
        st = self._so.getStatus()
        peers = []
        for node in sorted(self._so.otherNodes, key=lambda n: str(n.id)):
            nid = str(node.id)
            peers.append(PeerStatus(nid, bool(self._so.isNodeConnected(node)),
                                    st.get(f"match_idx_server_{nid}"), st.get(f"next_node_idx_server_{nid}")))
        leader = st["leader"]
        return RaftStatus(
            shard=self.index, address=self.self_addr,
            role={0: "follower", 1: "candidate", 2: "leader"}.get(st["state"], "?"),
            leader=None if leader is None else str(leader.id), term=st["raft_term"],
            commit_index=st["commit_idx"], applied_index=self._applied_index,
            last_log_index=self._journal.last_index, log_entries=st["log_len"],
            peers=tuple(peers), has_quorum=bool(st["has_quorum"]))

    async def _in_tick(self, fn: Callable[[], Any]) -> Any:
        if self._closed:
            raise RaftError(f"shard {self.index}: closed")
        cf: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._tick_tasks.put((fn, cf))
        self._wake()
        return await asyncio.wrap_future(cf, loop=self._loop)

    # ---------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop this replica (threads joined, port closed, journal synced).
        Pending proposals fail with NotLeader. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        if threading.current_thread() is not self._ticker:
            self._ticker.join(10)
        self._jobs.put((_STOP,))
        if threading.current_thread() is not self._applier:
            self._applier.join(30)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._post(self._stop_loop_side, force=True)
        log.info("shard %d: Raft replica %s stopped", self.index, self.self_addr)

    async def aclose(self) -> None:
        self._stop_loop_side()
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def _start_loop_side(self) -> None:
        if not self._closed:
            self._rebalance_task = self._loop.create_task(self._rebalancer(), name=f"raft-rebalance-{self.index}")

    def _stop_loop_side(self) -> None:
        if self._rebalance_task is not None:
            self._rebalance_task.cancel()
            self._rebalance_task = None
        self._fail_pending(NotLeader(self.index, None, " (replica stopped)"))
        for batch_id in list(self._inflight):
            batch = self._inflight.pop(batch_id)
            if batch.timer is not None:
                batch.timer.cancel()
            for p in batch.proposals:
                if not p.fut.done():
                    p.fut.set_exception(ProposalTimeout(f"shard {self.index}: replica stopped before "
                                                        "the outcome was known"))

    def _post(self, fn: Callable[..., Any], *args: Any, force: bool = False) -> None:
        if self._closed and not force:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    async def _rebalancer(self) -> None:
        """On the leader, every ``rebalance_interval``: hand leadership to
        ``preferred_leader`` once that replica is connected and has (nearly)
        the whole log. While it is down, restarting or cut off nothing is
        tried (a hand-over pauses this shard's writes; one to a replica that
        cannot take it would only stall them), so it gets its shards back
        within an interval of coming back, however long it was away. A
        hand-over that fails although the replica is connected is retried
        with a doubling delay (at most ``_REBALANCE_BACKOFF_MAX``), reset when
        the replica reconnects or this one stops leading."""
        interval = self.tuning.rebalance_interval
        backoff = interval  # delay after the next failed hand-over
        retry_at = 0.0  # no hand-over before (loop time)
        away = False  # told the log that the preferred replica is not connected
        while True:
            await asyncio.sleep(interval)
            target = self.preferred_leader
            if not (target and target != self.self_addr and self.leader_ready and target in self.peers):
                backoff, retry_at, away = interval, 0.0, False
                continue
            try:
                connected, lag = await self._in_tick(functools.partial(self._tick_peer, target))
            except RaftError:
                return  # closed
            if not connected:
                if not away:
                    log.info("shard %d: preferred leader %s is not connected; this replica leads the shard "
                             "until it is back", self.index, target)
                    away = True
                backoff, retry_at = interval, 0.0
                continue
            away = False
            if lag > self.tuning.max_inflight + 1 or self._loop.time() < retry_at:
                continue  # still catching up (the leader keeps sending), or backing off
            try:
                await self.transfer_leadership(target, timeout=max(2.0, 2 * self.tuning.election_max))
                backoff, retry_at = interval, 0.0
            except (RaftError, ValueError) as e:
                retry_at = self._loop.time() + backoff
                log.info("shard %d: could not hand leadership to preferred replica %s: %s; next try in %.0f s",
                         self.index, target, e, backoff)
                backoff = min(backoff * 2, max(interval, _REBALANCE_BACKOFF_MAX))

    # -------------------------------------------------------- tick thread

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):  # full pipe: a wake-up is pending
            if self._wake_w >= 0:
                os.write(self._wake_w, b"w")

    def _drain_wake(self, _fd: int, _event: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _tick_loop(self) -> None:
        so = self._so
        tick = self.tuning.tick
        errors = 0
        last_error = 0.0
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        fn, cf = self._tick_tasks.get_nowait()
                    except queue.Empty:
                        break
                    if cf.set_running_or_notify_cancel():
                        try:
                            cf.set_result(fn())
                        except BaseException as e:  # noqa: BLE001 - handed to the waiter
                            cf.set_exception(e)
                try:
                    # Entries this replica appended (its own commands, the no-op
                    # of a new term) are durable before the tick counts it
                    # towards a commit: here, and in the tick callback that
                    # runs after new commands are appended and before the tick
                    # waits for the followers' answers.
                    self._journal.sync()
                    so.doTick(tick)
                except Exception as e:
                    if self._journal.broken:
                        raise
                    errors += 1
                    if time.monotonic() - last_error > 30.0:
                        last_error = time.monotonic()
                        log.error("shard %d: Raft tick failed (%d time(s) since the last report)",
                                  self.index, errors, exc_info=e)
                        errors = 0
                    time.sleep(tick)
                self._after_tick()
        except BaseException as e:
            self._failed = str(e) or type(e).__name__
            log.critical("shard %d: Raft replica %s stopped working: %s", self.index, self.self_addr,
                         self._failed, exc_info=e)
        finally:
            with contextlib.suppress(Exception):
                so.destroy()  # autoTick=False: destroys now, on this thread
            so._poller.unsubscribe(self._wake_r)
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1
            while True:
                try:
                    _fn, cf = self._tick_tasks.get_nowait()
                except queue.Empty:
                    break
                if cf.set_running_or_notify_cancel():
                    cf.set_exception(RaftError(f"shard {self.index}: closed"))

    def _after_tick(self) -> None:
        so = self._so
        lead = bool(so._isLeader())
        node = so._getLeader()
        leader = None if node is None else str(node.id)
        term = int(so.raftCurrentTerm)
        prev = self._last_seen
        if lead and not prev[0]:
            # the no-op of the new term is in the journal: once it is applied
            # here, so is everything committed in earlier terms
            self._leader_since = self._journal.last_index
        ready = lead and self._applied_index >= self._leader_since > 0
        seen = (lead, leader, term, ready)
        if seen != prev:
            self._last_seen = seen
            if lead != prev[0] or leader != prev[1]:
                log.info("shard %d: %s (term %d, leader %s)", self.index,
                         "this replica is now the leader" if lead else "follower", term, leader or "unknown")
            self._post(self._leader_changed, LeaderInfo(lead, leader, term, ready))
        applied = int(so.raftLastApplied)
        if applied != self._last_mark:
            self._last_mark = applied
            self._jobs.put((_MARK, applied))
        if (self._journal.memory_bytes > self.tuning.max_log_bytes
                and self._snap_status == SERIALIZER_STATE.NOT_SERIALIZING
                and time.monotonic() - self._last_force > 10.0):
            self._last_force = time.monotonic()
            so.forceLogCompaction()

    def _leader_changed(self, info: LeaderInfo) -> None:
        self._info = info
        if not info.is_leader:
            self._fail_pending(NotLeader(self.index, info.leader))
        if self._on_leader_change is not None:
            try:
                self._on_leader_change(self.index, info)
            except Exception:
                log.exception("shard %d: on_leader_change hook failed", self.index)
        self._pump()

    def _entry_committed(self, idx: int, payload: bytes) -> None:
        self._jobs.put((_APPLY, idx, payload))

    # serializer hooks (tick thread)

    def _serialize_hook(self, _tmp_file: str, data: tuple[Entry, Entry, Any]) -> None:
        last, prev, cluster = data
        self._journal.rotate()
        try:
            ino: int | None = os.stat(self._snapshot_path).st_ino
        except FileNotFoundError:
            ino = None
        self._snap_status = SERIALIZER_STATE.SERIALIZING
        self._jobs.put((_SNAPSHOT, last, prev, cluster, self._snap_generation, ino))
        raise _SnapshotStarted

    def _serialize_checker(self) -> int:
        status = self._snap_status
        if status in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snap_status = SERIALIZER_STATE.NOT_SERIALIZING
        return int(status)

    def _deserialize_hook(self, file_name: str) -> tuple[Entry, Entry, Any]:
        path = Path(file_name)
        with self._snap_file_lock:
            self._snap_generation += 1  # a snapshot being written now must not replace this one
            header, body, ident = _read_snapshot(path, self.index)
            fresh = ident != self._loaded_ident
            self._loaded_ident = ident
        if fresh:
            # a snapshot from the leader: durable before we acknowledge it
            if self.tuning.fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _fsync_dir(self.dir)
            self._jobs.put((_LOAD, header.last[1], body))
            log.info("shard %d: installing a snapshot from the leader at Raft index %d (%d bytes)",
                     self.index, header.last[1], len(body))
        self._journal.trim_to(header.prev)
        return header.last, header.prev, header.cluster

    # ------------------------------------------------------ applier thread

    def _apply_loop(self) -> None:
        while True:
            job = self._jobs.get()
            kind = job[0]
            try:
                if kind == _APPLY:
                    self._apply(job[1], job[2])
                elif kind == _MARK:
                    if job[1] > self._applied_index:
                        self._applied_index = job[1]
                elif kind == _SNAPSHOT:
                    self._write_snapshot(*job[1:])
                elif kind == _LOAD:
                    self._load_snapshot(job[1], job[2])
                elif kind == _STOP:
                    return
            except Exception:
                log.exception("shard %d: applier failed on a %s job", self.index,
                              {_APPLY: "apply", _SNAPSHOT: "snapshot", _LOAD: "snapshot load"}.get(kind, "?"))
                if kind == _SNAPSHOT:
                    self._snap_status = SERIALIZER_STATE.FAILED

    def _apply(self, idx: int, payload: bytes) -> None:
        origin, batch_id, parts = pickle.loads(payload)
        mine = origin == self._origin
        proposals = [pickle.loads(part) for part in parts]
        out: list[_Delivery] = []
        ncmds = 0
        for cmds in proposals:
            d = _Delivery()
            # the lock is taken per proposal, so that readers on the loop never
            # wait for a whole entry; they see the state between two proposals
            with self._state_lock:
                state = self._state
                for cmd in cmds:
                    try:
                        d.results.append(state.apply(cmd))
                    except Exception as e:  # a bug in apply: same on every replica
                        log.exception("shard %d: command %s at Raft index %d failed to apply",
                                      self.index, type(cmd).__name__, idx)
                        self.stats.apply_errors += 1
                        d.error = e
            out.append(d)
            ncmds += len(cmds)
        self._applied_index = idx
        self.stats.entries_applied += 1
        self.stats.commands_applied += ncmds
        if mine or self._wants_effects is None or self._wants_effects() or self.is_leader:
            self._post(self._deliver, batch_id if mine else None, mine, out)

    def _deliver(self, batch_id: int | None, mine: bool, out: list[_Delivery]) -> None:
        for d in out:
            for res in d.results:
                try:
                    self._on_applied(self.index, res, mine)
                except Exception:
                    log.exception("shard %d: on_applied hook failed", self.index)
        if batch_id is None:
            return
        batch = self._inflight.pop(batch_id, None)
        if batch is None:
            return  # expired: the callers were told the outcome is unknown
        if batch.timer is not None:
            batch.timer.cancel()
        for p, d in zip(batch.proposals, out, strict=False):
            if p.fut.done():
                continue
            if d.error is not None:
                p.fut.set_exception(RaftError(f"shard {self.index}: a command failed to apply "
                                              f"(same on every replica): {d.error!r}"))
            else:
                p.fut.set_result(d.results)
        self._pump()

    def _write_snapshot(self, last: Entry, prev: Entry, cluster: Any, generation: int, ino: int | None) -> None:
        t0 = time.monotonic()
        with _gc_paused():
            blob = _encode_state(self._state)  # this thread is the only writer
        body = zlib.compress(blob, 1)
        del blob
        header = pickle.dumps((last, prev, cluster, len(body), zlib.crc32(body)), protocol=_PICKLE)
        tmp = self.dir / "snapshot.writing"
        with open(tmp, "wb") as f:
            f.write(_SNAP_MAGIC + _SNAP_LEN.pack(len(header)) + header)
            f.write(body)
            f.flush()
            if self.tuning.fsync:
                os.fsync(f.fileno())
        with self._snap_file_lock:
            try:
                cur: int | None = os.stat(self._snapshot_path).st_ino
            except FileNotFoundError:
                cur = None
            if generation != self._snap_generation or cur != ino:
                tmp.unlink(missing_ok=True)  # a newer snapshot was installed meanwhile
                self._snap_status = SERIALIZER_STATE.FAILED
                return
            os.replace(tmp, self._snapshot_path)
            st = os.stat(self._snapshot_path)
            self._loaded_ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self.tuning.fsync:
            _fsync_dir(self.dir)
        took = time.monotonic() - t0
        self.stats.snapshots_written += 1
        self.stats.last_snapshot_seconds = took
        self.stats.last_snapshot_bytes = len(body)
        log.info("shard %d: snapshot at Raft index %d written in %.2fs (%d bytes)",
                 self.index, last[1], took, len(body))
        self._snap_status = SERIALIZER_STATE.SUCCESS

    def _load_snapshot(self, idx: int, body: bytes) -> None:
        with _gc_paused():
            state = _decode_state(zlib.decompress(body))
        if not isinstance(state, ShardState):
            raise RaftStorageError(f"shard {self.index}: snapshot holds a {type(state).__name__}")
        with self._state_lock:
            self._state = state
            self._applied_index = idx
        self.stats.snapshots_installed += 1
        if self._on_reset is not None:
            self._post(self._call_reset)

    def _call_reset(self) -> None:
        if self._on_reset is not None:
            try:
                self._on_reset(self.index)
            except Exception:
                log.exception("shard %d: on_reset hook failed", self.index)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on loopback, below the ephemeral range (for
    tests and local setups that restart a replica on the same port)."""
    from coordinator.cluster import free_ports

    return free_ports(1)
