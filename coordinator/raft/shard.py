"""The shard adapter (pysyncobj's ``syncobj``): ``RaftShard``, one replica of
one shard's Raft group behind a typed asyncio API (what a caller sees is in
the package docstring, ``coordinator.raft``), and ``_ShardSyncObj``, the
``SyncObj`` subclass it drives.

Threads
=======

Each RaftShard runs two threads. The **tick thread** drives pysyncobj
(``autoTick=False``; we call ``doTick`` ourselves): network, elections,
heartbeats, the journal. The **applier thread** applies committed entries to
the ``ShardState`` and writes snapshots. pysyncobj calls our replicated
method on the tick thread; it only hands the entry to the applier. So a slow
apply or a long snapshot does not block heartbeats (they still share the
GIL: see ``coordinator.raft.serializer``), and the asyncio loop is never
blocked by either (it only takes the state lock for short reads).
``propose`` and the other coroutines must run on ``loop``; callbacks are
delivered there with ``call_soon_threadsafe``.

How it hooks into pysyncobj 0.3.17 (re-check on any upgrade)
============================================================

* ``SyncObj.encryptor`` is overridden (a keyring of HMAC sealers or
  Fernets: ``coordinator.raft.encryptor``), and the transport class is a
  ``TCPTransport`` subclass that syncs before acks
  (``coordinator.raft.transport``).
* The journal (``coordinator.raft.journal``) and the snapshot serializer
  hooks (``coordinator.raft.serializer``) are handed over in the
  ``SyncObjConf`` built by ``_init_raft``.
* Calls used besides the public API: ``_isLeader``, ``_getLeader``,
  ``_poller`` (to wake the tick), ``raftLastApplied``/``raftCommitIndex``,
  ``transferLeadership``, ``getStatus``. pysyncobj is not thread-safe: every
  call that touches its state runs on the tick thread (``_in_tick``), except
  reads of single attributes and ``_applyCommand`` (its queue is locked)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import pickle
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.monotonic import monotonic as _ps_monotonic

from coordinator.raft.config import _BATCH_BYTES, RaftTuning, _check_addr
from coordinator.raft.encryptor import make_sealer, split_passwords
from coordinator.raft.errors import (
    NotLeader,
    ProposalTimeout,
    RaftError,
    RaftStorageError,
    TransferFailed,
)
from coordinator.raft.journal import _JOURNALS, _JOURNALS_LOCK, Entry, _fsync_dir, _SegmentJournal
from coordinator.raft.serializer import (
    _PICKLE,
    _SNAP_LEN,
    _SNAP_MAGIC,
    _decode_state,
    _encode_state,
    _gc_paused,
    _read_snapshot,
    _SnapshotHeader,
    _SnapshotStarted,
)
from coordinator.raft.status import LeaderInfo, PeerStatus, RaftStats, RaftStatus
from coordinator.raft.transport import _DurableTransport
from coordinator.state import Command, MoveShard, MoveStep, PreferLeader, Result, ShardState

#: the package's logger name, as before it was split into modules (log lines
#: and log settings name "coordinator.raft")
log = logging.getLogger("coordinator.raft")


#: longest delay between two failed hand-overs to a connected preferred leader
_REBALANCE_BACKOFF_MAX = 60.0

_APPLY, _MARK, _SNAPSHOT, _LOAD, _STOP = range(5)


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
    """One replica of one shard's Raft group. See the package docstring (coordinator.raft)."""

    #: a member of the group here (coordinator.node.RemoteShard: not)
    hosted = True

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
        quiet: bool = False,
    ) -> None:
        passwords = split_passwords(password) if isinstance(password, str) else []
        if not passwords or min(map(len, passwords)) < 8:
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
        #: start no election and hand the leadership away (a member joining
        #: that has not caught up, or one being removed: coordinator.moves);
        #: set on the loop, read by the tick thread
        self.quiet = quiet
        self._next_quiet_yield = 0.0
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
        # one password per line: sealed with the first, any accepted (rotation)
        encryptor = make_sealer(password, self.index, t.encrypt)
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
        self._next_probe = 0.0  # the journal's next write probe, while it cannot write (monotonic)
        self._next_yield = 0.0  # the next hand-over attempt, while it cannot write (monotonic)

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
    def problem(self) -> str:
        """Why this replica cannot take its part in the shard now, or "":
        its Raft thread stopped, or its journal cannot be written (a full
        disk: it does not lead meanwhile)."""
        if self._failed:
            return f"Raft stopped on this replica: {self._failed}"
        if self._journal.broken:
            return self._journal.broken
        if self._journal.unwritable:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._journal.unwritable_since))
            return f"{self._journal.unwritable} (since {since}); not leading until it can write"
        return ""

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

    def journal_bytes(self) -> int:
        """The size of this shard's Raft journal on disk."""
        return self._journal.disk_bytes()

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

    async def connected_peers(self) -> set[str]:
        """The members this replica is connected to now (itself not included)."""
        so = self._so
        return await self._in_tick(  # type: ignore[no-any-return]
            lambda: {str(n.id) for n in so.otherNodes if so.isNodeConnected(n)})

    # ------------------------------------------------------------ propose

    async def propose(self, cmds: Command | Sequence[Command], timeout: float) -> list[Result]:
        """Replicate commands; return their Results once committed and
        applied here. See the package docstring for the errors."""
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

    async def peer_lag(self, addr: str) -> tuple[bool, int]:
        """On the leader: whether member *addr* is connected, and how many
        entries of the log it has not acknowledged."""
        return await self._in_tick(functools.partial(self._tick_peer, addr))  # type: ignore[no-any-return]

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
                    # a write refused for a full disk: the journal said so
                    # once and counts them (no traceback per tick)
                    refused = isinstance(e, OSError) and bool(self._journal.unwritable)
                    errors += not refused
                    if errors and time.monotonic() - last_error > 30.0:
                        last_error = time.monotonic()
                        log.error("shard %d: Raft tick failed (%d time(s) since the last report)",
                                  self.index, errors, exc_info=e)
                        errors = 0
                    time.sleep(tick)
                if self._journal.unwritable:
                    self._refuse_to_lead(so)
                elif self.quiet:
                    self._stay_quiet(so)
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

    def _refuse_to_lead(self, so: SyncObj) -> None:
        """Tick thread, while the journal cannot be written (a full disk): a
        replica that cannot make entries durable must not lead, or every
        proposal to the shard waits for a commit that never comes (a full
        disk once kept a shard's leadership 135 s). It hands its leadership
        to a caught-up follower, starts no election (nor answers a
        hand-over to it), and checks every second whether it can write
        again."""
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + 1.0
            if self._journal.probe():
                return
        # pysyncobj's own election timer, pushed on at every tick
        so._SyncObj__raftElectionDeadline = _ps_monotonic() + so._SyncObj__generateRaftTimeout()
        if so._isLeader() and now >= self._next_yield:
            self._next_yield = now + max(3 * self.tuning.heartbeat, 2 * self.tuning.tick)
            box: list[int] = []
            so.transferLeadership(None, callback=lambda _res, err: box.append(err))
            if not box or box[0] == FAIL_REASON.SUCCESS:
                log.warning("shard %d: handing leadership to a caught-up follower: %s", self.index,
                            self._journal.unwritable)

    def _stay_quiet(self, so: SyncObj) -> None:
        """Tick thread, while ``quiet``: no election of our own (pysyncobj's
        timer pushed on at every tick), and a leadership we hold goes to a
        caught-up follower."""
        so._SyncObj__raftElectionDeadline = _ps_monotonic() + so._SyncObj__generateRaftTimeout()
        now = time.monotonic()
        if so._isLeader() and now >= self._next_quiet_yield:
            self._next_quiet_yield = now + max(3 * self.tuning.heartbeat, 2 * self.tuning.tick)
            so.transferLeadership(None, callback=lambda _res, _err: None)

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
        if (mine or self._wants_effects is None or self._wants_effects() or self.is_leader
                or any(isinstance(c, MoveShard | MoveStep | PreferLeader) for cmds in proposals for c in cmds)):
            # (every member follows its shard's moves: coordinator.moves.quiet)
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
