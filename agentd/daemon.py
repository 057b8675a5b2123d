"""The agentd daemon: Work streams to the coordinator replicas, the slot and
credit budget, and the movers running in worker threads.

Shape
-----
One :class:`Agent` owns the pool of running jobs, the slot budget and the
thread pool. It opens one :class:`_Session` (one ``AgentService.Work`` bidi
stream, reconnected as needed) per coordinator address. Every session shares
the agent's pool and budget; a job belongs to the session whose replica
assigned it and reports its progress and completion there.

Credits (the pull model)
------------------------
An agent has ``slots[kind]`` slots per action kind. A slot is either *free*,
*granted* (a credit sent to some stream, not yet used by an assignment) or
*running*. Invariant, per kind::

    running + sum(credits granted on every stream) <= slots

so the agent never grants more than it can run, whatever the number of
streams. Each replica tells the agent how much work it has ready for it (a
``backlog`` hint, capped at the slots). Free slots are granted one at a time
to a stream whose backlog exceeds its credits, else to the stream holding
the fewest (ties: the stream that most recently sent work). Unused credits
move to where work waits (:meth:`Agent.level`): credits beyond a stream's
backlog first; when every stream with credits has work they are split
evenly, a single credit going round every ``ROTATE_AFTER`` seconds. The
agent takes credits back with an absolute ``Ready``; credits on a lost
stream are forgotten by both sides and regranted elsewhere.

Cancels use no slot: a ``CancelOrder`` sets the running job's ``cancelled``
event and the mover ends it with ECANCELED, reported in the ``Done``.

Reconnects
----------
A lost stream is reopened with jittered exponential backoff
(``reconnect_min_delay`` .. ``reconnect_max_delay``). Jobs keep running;
their completions wait in the session and are sent after the next Welcome.
``Hello.running`` lists the session's running jobs and those whose ``Done``
is still undelivered (from the coordinator's view the agent still holds
them until it hears the ``Done``).

Stopping
--------
:meth:`Agent.stop` (SIGTERM/SIGINT in the CLI): stop granting credits and
take back the unused ones (an absolute ``Ready`` of 0 on every stream); an
assignment the coordinator sent before it saw that is refused with a
``handback`` Done (queued again for another agent, no attempt used). Then
wait up to ``drain_timeout`` for running jobs, cancel the rest and hand
them back the same way (the action is not CANCELED), deliver every ``Done``
still queued, half-close the streams, and return.
"""

from __future__ import annotations

import asyncio
import collections
import errno as _errno
import functools
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import grpc.aio

from agentd.backend import Backend
from agentd.config import (
    AgentConfig,
    CommandMoverConfig,
    ConfigError,
    NullMoverConfig,
    PosixMoverConfig,
)
from agentd.lease import Leases
from agentd.movers.base import Job, Mover, Requester, Result
from hsm import __version__
from hsm.client import metadata_value
from hsm.fid import Fid, FidError
from hsm.hsmflags import HSMA
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2
from hsm.wire import CLUSTER_METADATA_KEY, KIND_NAMES, REPLICA_METADATA_KEY

log = logging.getLogger(__name__)

KINDS: tuple[int, ...] = (int(HSMA.ARCHIVE), int(HSMA.RESTORE), int(HSMA.REMOVE))

#: How long to wait for the coordinator's Welcome after Hello.
WELCOME_TIMEOUT = 10.0
#: On stop, how long cancelled jobs get to return after the drain.
CANCEL_WAIT = 10.0
#: On stop, how long to try to deliver the last completions.
FLUSH_TIMEOUT = 5.0
#: Completions arriving within this window share one message.
BATCH_WINDOW = 0.002
#: seconds a stream may hold its only unused credit of a kind while another live
#: stream holds none, before the credit moves there (see Agent.level)
ROTATE_AFTER = 5.0
#: credits move only from a stream that received no assignment for this long
LEVEL_IDLE = 1.0
#: finished runs and refused actions agentd remembers, for late cancels and
#: assignments (a new shard leader asks about what its predecessor assigned):
#: at least REMEMBERED of them, and every one younger than REMEMBER_FOR
#: seconds (a leader change under a flood of quick actions), at most
#: REMEMBERED_MAX
REMEMBERED = 10_000
REMEMBER_FOR = 120.0
REMEMBERED_MAX = 1_000_000
#: a completion sent to a replica that acknowledges completions and not
#: acknowledged within this many seconds is sent again (any replica takes it
#: and hands it to the shard's leader; applying one twice changes nothing)
RESEND_AFTER = 30.0

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # notice a dead replica (host down, network cut) within ~15 s; the
    # coordinator accepts pings every 5 s or more
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, f"kind {kind}")


def backoff_delay(attempt: int, lo: float, hi: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before reconnection attempt *attempt* (0-based): exponential from
    *lo*, capped at *hi*, with jitter over the upper half, never below *lo*."""
    ceiling = min(hi, lo * (2 ** min(attempt, 30)))
    return float(max(lo, ceiling * (0.5 + 0.5 * rand())))


# --------------------------------------------------------------------------
# building the backend and the mover from the config


def make_backend(config: AgentConfig) -> Backend:
    """The filesystem backend named by ``config.backend``."""
    bc = config.backend
    if bc is None:
        raise ConfigError("backend: not configured (set backend.root, flag --fs-root)")
    if bc.type == "lustre":
        from agentd.lustre_backend import LustreBackend, LustreBackendError

        if isinstance(config.mover, NullMoverConfig):
            raise ConfigError("mover.type: the null mover never ends an action at the MDT: with backend "
                              "lustre the MDT's requests would stay STARTED (use posix or command)")
        try:
            return LustreBackend(bc.mount, bc.fsname, bc.library or None, copytool_handle=bc.copytool_handle,
                                 register_archive_id=bc.register_archive_id)
        except LustreBackendError as exc:
            raise ConfigError(f"backend (lustre): {exc}") from None
    if bc.type != "simfs":
        raise ConfigError(f"backend.type: unknown backend {bc.type!r} (known: simfs, lustre)")
    if not os.path.isdir(bc.root):
        raise ConfigError(f"backend.root: {bc.root} is not an existing directory")
    from agentd.simfs_backend import SimfsBackend

    try:
        return SimfsBackend(bc.root)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backend.root: cannot open simfs tree {bc.root}: {exc}") from None


def make_mover(config: AgentConfig) -> Mover:
    """The mover named by ``config.mover``."""
    mc = config.mover
    if isinstance(mc, PosixMoverConfig):
        if not os.path.isdir(mc.archive_root):
            raise ConfigError(
                f"mover.archive_root: {mc.archive_root} is not an existing directory "
                "(create it, or check the path)"
            )
        from agentd.movers.posix import PosixMover

        interval = mc.progress_interval if mc.progress_interval is not None else config.progress_interval
        try:
            return PosixMover(
                mc.archive_root,
                chunk_size=mc.chunk_size,
                progress_interval=interval,
                progress_bytes=mc.progress_bytes,
                bandwidth_limit=mc.bandwidth_limit,
                checksum=mc.checksum,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mover: cannot set up the posix mover: {exc}") from None
    if isinstance(mc, NullMoverConfig):
        from agentd.movers.null import NullMover

        return NullMover(mc.delay)
    if isinstance(mc, CommandMoverConfig):
        from agentd.movers.command import CommandMover

        try:
            return CommandMover(
                mc.archive_cmd,
                mc.restore_cmd,
                mc.remove_cmd,
                timeout=mc.timeout,
                kill_grace=mc.kill_grace,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mover: cannot set up the command mover: {exc}") from None
    raise ConfigError("mover: not configured (set mover.type and its keys, e.g. --archive-root)")


# --------------------------------------------------------------------------
# running jobs


class _ProgressCell:
    """``job.report`` for one job: thread-safe and cheap. Keeps only the
    latest value and schedules at most one hop to the event loop at a time."""

    __slots__ = ("_lock", "_value", "_scheduled", "_loop", "_deliver")

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[int, int], None]) -> None:
        self._lock = threading.Lock()
        self._value = (0, 0)
        self._scheduled = False
        self._loop = loop
        self._deliver = deliver

    def report(self, bytes_done: int, bytes_total: int) -> None:
        with self._lock:
            self._value = (int(bytes_done), int(bytes_total))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # loop closed: the agent is gone
            pass

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            done, total = self._value
        self._deliver(done, total)


@dataclass(slots=True, eq=False)
class _Running:
    job: Job
    kind: int
    attempt: int
    session: _Session
    started: float  # time.monotonic()
    bytes_done: int = 0
    bytes_total: int = 0
    progress_dirty: bool = False
    progress_sent_at: float = -math.inf
    ended: bool = False
    stopped_by_agent: bool = False  # cancelled by the agent's own shutdown, not by a coordinator
    lease_lost: bool = False  # stopped because no leader of its shard renewed the agent's lease

    @property
    def action_id(self) -> int:
        return self.job.action_id


# --------------------------------------------------------------------------
# one Work stream


class _StreamEnded(Exception):
    """The coordinator ended or broke the protocol on a stream."""


class _WrongCluster(_StreamEnded):
    """The replica at this address belongs to another cluster."""


@dataclass(slots=True, eq=False)
class _Session:
    agent: Agent
    address: str
    granted: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pending_credits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    backlog: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # work its replica has for us
    seen: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # assignments received
    pending_done: list[agent_pb2.Done] = field(default_factory=list)
    #: completions written to this stream, not yet acknowledged: (action id, attempt) -> (Done, when sent)
    unacked: dict[tuple[int, int], tuple[agent_pb2.Done, float]] = field(default_factory=dict)
    acks_done: bool = False  # the replica acknowledges completions (Welcome.acks_done)
    report_running: int = 0  # token of a RunningReport a replica asked for
    send_absolute: bool = False  # credits were taken back: send the whole grant, absolute
    welcomed_at: float = 0.0
    last_credit: float = 0.0  # when this stream last got a credit (rotation goes round)
    welcomed: bool = False
    replica: str = ""
    heartbeat_interval: float = 5.0
    last_assign: float = 0.0
    closing: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _batch: bool = False
    _closing_evt: asyncio.Event = field(default_factory=asyncio.Event)
    _flushed: asyncio.Event = field(default_factory=asyncio.Event)
    _last_sent: float = 0.0
    _call: grpc.aio.StreamStreamCall | None = None
    _task: asyncio.Task[None] | None = None

    # -- called by the agent (event loop thread) --------------------------

    def wake(self, *, batch: bool = False) -> None:
        self._batch = self._batch or batch
        self._wake.set()

    def queue_done(self, done: agent_pb2.Done) -> None:
        """Queue a completion on this stream, or on another live one when
        this one is down: any replica takes it and hands it to the shard's
        leader, so a completion never waits for one replica to come back."""
        target = self if self.welcomed else self.agent.live_session(prefer=self)
        target.pending_done.append(done)
        target._flushed.clear()
        target.wake(batch=True)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"session {self.address}")

    async def flush(self) -> None:
        """Return once every queued completion has been written."""
        while self.pending_done:
            self._flushed.clear()
            await self._flushed.wait()

    async def close(self) -> None:
        """Half-close the stream (the writer sends end-of-stream), wait briefly
        for the coordinator to end it, and stop reconnecting."""
        self.closing = True
        self._closing_evt.set()
        self.wake()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- the connection loop ----------------------------------------------

    async def _run(self) -> None:
        cfg = self.agent.config
        failures = 0
        last_warning = -math.inf
        while not self.closing:
            welcomed_before = False
            wrong_cluster = False
            self._closing_evt.clear()
            try:
                welcomed_before = await self._connect_once()
                reason = "the coordinator closed the stream"
            except _StreamEnded as exc:
                reason = str(exc)
                wrong_cluster = isinstance(exc, _WrongCluster)
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except TimeoutError:
                reason = f"no Welcome within {WELCOME_TIMEOUT:g} s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad message kill the agent
                log.exception("stream to %s failed unexpectedly", self.address)
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._lost()
            if self.closing:
                break
            if welcomed_before:
                failures = 0
            delay = backoff_delay(failures, cfg.reconnect_min_delay, cfg.reconnect_max_delay)
            now = time.monotonic()
            if wrong_cluster and (failures == 0 or now - last_warning >= 60.0):
                log.error("refusing coordinator %s: %s; trying again in %.1f s", self.address, reason, delay)
                last_warning = now
            elif welcomed_before or failures == 0 or now - last_warning >= 60.0:
                log.warning(
                    "stream to coordinator %s lost (%s); %d running action(s) continue; "
                    "reconnecting in %.1f s",
                    self.address, reason, len(self.agent._running), delay,
                )
                last_warning = now
            else:
                log.debug("coordinator %s still unreachable (%s); retry in %.1f s", self.address, reason, delay)
            failures += 1
            try:
                await asyncio.wait_for(self._closing_evt.wait(), delay)
            except TimeoutError:
                pass

    async def _connect_once(self) -> bool:
        """One stream's life. Returns True if it got as far as a Welcome."""
        agent = self.agent
        async with grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Work()
            self._call = call
            try:
                hello = agent.make_hello(self)
                await call.write(agent_pb2.AgentMessage(hello=hello))
                end = time.monotonic() + WELCOME_TIMEOUT
                # who answers, before anything it says is acted on
                metadata = await asyncio.wait_for(call.initial_metadata(), WELCOME_TIMEOUT)
                agent.check_cluster(self.address, metadata_value(metadata or (), CLUSTER_METADATA_KEY),
                                    metadata_value(metadata or (), REPLICA_METADATA_KEY))
                while True:
                    first = await asyncio.wait_for(call.read(), max(0.0, end - time.monotonic()))
                    if first is grpc.aio.EOF:
                        await self._raise_status(call, "the coordinator closed the stream before Welcome")
                    assert isinstance(first, agent_pb2.CoordinatorMessage)
                    if first.HasField("welcome"):
                        break
                    # Tolerated: cancels for jobs the Hello announced may come first.
                    log.debug("message from %s before its Welcome: %d cancel(s), %d assignment(s)",
                              self.address, len(first.cancel), len(first.assign))
                    agent.on_message(self, first)
                agent.check_cluster(self.address, first.welcome.cluster_id, first.welcome.replica, pin=True)
                self.welcomed = True
                self.welcomed_at = time.monotonic()
                self.replica = first.welcome.replica
                hb = first.welcome.heartbeat_interval
                self.heartbeat_interval = hb if hb > 0 else agent.config.heartbeat_interval
                self.acks_done = first.welcome.acks_done
                self._last_sent = time.monotonic()
                agent.leases.welcomed(self.address, first.welcome.lease_seconds, self.heartbeat_interval,
                                      self._last_sent)
                log.info(
                    "connected to coordinator %s (replica %s, heartbeat %.1f s) as agent %s; "
                    "%d running, %d completion(s) to deliver",
                    self.address, self.replica or "?", self.heartbeat_interval, agent.config.agent_id,
                    len(agent.runs_of(self)), len(self.pending_done),
                )
                # the slot budget may now be granted here; Done queued while we were away goes out
                self.wake(batch=True)
                agent.on_message(self, first)
                agent.rebalance()
                if self.closing:
                    return True
                writer = asyncio.get_running_loop().create_task(self._write_loop(call))
                reader = asyncio.get_running_loop().create_task(self._read_loop(call))
                try:
                    done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if self.closing and reader not in done:
                        # we half-closed: give the coordinator a moment to end the stream
                        await asyncio.wait({reader}, timeout=1.0)
                finally:
                    for t in (writer, reader):
                        t.cancel()
                    results = await asyncio.gather(writer, reader, return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                        raise r
                return True
            finally:
                self._call = None
                if not call.done():
                    call.cancel()

    async def _raise_status(self, call: grpc.aio.StreamStreamCall, what: str) -> NoReturn:
        try:
            code = await asyncio.wait_for(call.code(), 1.0)
            details = await call.details()
        except (TimeoutError, grpc.aio.AioRpcError):
            raise _StreamEnded(what) from None
        if code == grpc.StatusCode.OK:
            raise _StreamEnded(what)
        raise _StreamEnded(f"{what}: {code.name}: {details}")

    async def _read_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                if self.closing:
                    return
                await self._raise_status(call, "the coordinator ended the stream")
            assert isinstance(msg, agent_pb2.CoordinatorMessage)
            self.agent.on_message(self, msg)
            self.agent.rebalance()

    async def _write_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        progress_interval = self.agent.config.progress_interval
        while True:
            now = time.monotonic()
            deadline = min(self._last_sent + self.heartbeat_interval, self.agent.leases.due(self.address, now))
            for run in self.agent.runs_of(self):
                if run.progress_dirty:
                    deadline = min(deadline, run.progress_sent_at + progress_interval)
            if not self._wake.is_set() and deadline > now:
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - now)
                except TimeoutError:
                    pass
            if self._batch:
                await asyncio.sleep(BATCH_WINDOW)  # let completions finishing together share a message
            self._wake.clear()
            self._batch = False
            if self.closing:
                if self.pending_done:
                    msg, dones = self._collect(time.monotonic(), progress_interval)
                    if msg is not None:
                        try:
                            await call.write(msg)
                        except BaseException:
                            self.pending_done[:0] = dones
                            raise
                        self._sent(dones)
                await call.done_writing()
                return
            msg, dones = self._collect(time.monotonic(), progress_interval)
            if msg is None:
                continue
            try:
                await call.write(msg)
            except BaseException:
                self.pending_done[:0] = dones  # deliver them on the next stream
                raise
            self._last_sent = time.monotonic()
            self._sent(dones)
            if not self.pending_done:
                self._flushed.set()

    def _sent(self, dones: list[agent_pb2.Done]) -> None:
        """Completions written: kept until the replica acknowledges them."""
        if self.acks_done and dones:
            now = time.monotonic()
            for d in dones:
                self.unacked[(d.action_id, d.attempt)] = (d, now)

    def resend(self, now: float, after: float = RESEND_AFTER) -> int:
        """Send again the completions not acknowledged within *after*
        seconds (through any live stream). Returns how many."""
        old = [k for k, (_d, sent) in self.unacked.items() if now - sent >= after]
        for k in old:
            done, _sent = self.unacked.pop(k)
            self.queue_done(done)
        if old:
            log.info("%d completion(s) sent to %s not acknowledged within %g s: sent again", len(old),
                     self.address, after)
        return len(old)

    def _collect(
        self, now: float, progress_interval: float
    ) -> tuple[agent_pb2.AgentMessage | None, list[agent_pb2.Done]]:
        msg = agent_pb2.AgentMessage()
        dones, self.pending_done = self.pending_done, []
        something = False
        if dones:
            msg.done.extend(dones)
            something = True
        if self.send_absolute:
            self.send_absolute = False
            g = self.granted
            _fill_slots(msg.ready.credits, g)
            msg.ready.absolute = True
            _fill_slots(msg.ready.seen, self.seen)
            self.pending_credits = dict.fromkeys(KINDS, 0)
            something = True
        elif any(self.pending_credits.values()):
            c = self.pending_credits
            _fill_slots(msg.ready.credits, c)
            self.pending_credits = dict.fromkeys(KINDS, 0)
            something = True
        token = self.agent.leases.token(self.address, now)
        if token:
            msg.lease_token = token
            something = True
        if self.report_running:
            msg.running.token, self.report_running = self.report_running, 0
            for action_id, attempt in self.agent.running_list():
                msg.running.actions.add(action_id=action_id, attempt=attempt)
            something = True
        for run in self.agent._running.values():
            if self.agent.live_session(prefer=run.session) is not self:
                continue  # progress rides on the run's own stream, or any live one when that is down
            if run.progress_dirty and now - run.progress_sent_at >= progress_interval:
                msg.progress.append(
                    agent_pb2.Progress(
                        action_id=run.action_id,
                        attempt=run.attempt,
                        bytes_done=max(run.bytes_done, 0),
                        bytes_total=max(run.bytes_total, 0),
                    )
                )
                run.progress_dirty = False
                run.progress_sent_at = now
                something = True
        if not something:
            if now - self._last_sent < self.heartbeat_interval:
                return None, []
            msg.heartbeat = True
        return msg, dones

    def _lost(self) -> None:
        """The stream is gone: its unused credits are void on both sides."""
        was = self.welcomed
        self.welcomed = False
        self.agent.leases.lost(self.address)
        if self.unacked:
            # the replica may have died with them: deliver them again
            self.pending_done[:0] = [d for d, _t in self.unacked.values()]
            self.unacked.clear()
        self.granted = dict.fromkeys(KINDS, 0)
        self.pending_credits = dict.fromkeys(KINDS, 0)
        self.backlog = dict.fromkeys(KINDS, 0)
        self.seen = dict.fromkeys(KINDS, 0)
        for run in self.agent.runs_of(self):
            if run.bytes_done or run.bytes_total:
                run.progress_dirty = True  # resend the latest state after reconnect
        other = self.agent.live_session(prefer=self)
        if self.pending_done and other is not self:
            log.info("stream to %s lost: %d completion(s) go through %s instead", self.address,
                     len(self.pending_done), other.address)
            moved, self.pending_done = self.pending_done, []
            for done in moved:
                other.queue_done(done)
            self._flushed.set()
        if was:
            self.agent.rebalance()


# --------------------------------------------------------------------------
# the agent


class Agent:
    """The mover daemon. Run it with ``await agent.run()`` on an event loop;
    :meth:`stop` may be called from any thread (or a signal handler)."""

    def live_session(self, prefer: _Session) -> _Session:
        """*prefer* if its stream is up, else another welcomed one, else *prefer*."""
        if prefer.welcomed:
            return prefer
        for s in self._sessions:
            if s.welcomed and not s.closing:
                return s
        return prefer

    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        mover: Mover,
        *,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.mover = mover
        #: the mover never blocks (``inline = True``, the null mover without
        #: a delay): it runs on the event loop, without a worker thread
        self._inline = bool(getattr(mover, "inline", False))
        self.host = host or socket.gethostname()
        #: the cluster we work for: configured, or named by the first replica that welcomed us
        self.cluster_id = config.cluster_id
        self._slots = {k: config.slots.for_kind(k) for k in KINDS}
        self._running: dict[int, _Running] = {}
        self._running_count = dict.fromkeys(KINDS, 0)
        # newer attempts waiting for their older attempt to stop: action id -> (session, job)
        self._deferred: dict[int, tuple[_Session, Job]] = {}
        #: (action id, attempt) of runs that ended here lately, and of actions
        #: the coordinator canceled before their assignment arrived (a late
        #: assignment for those is refused: the action may run elsewhere now)
        self._finished: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()
        self._tombstones: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()
        self._peak = dict.fromkeys(KINDS, 0)
        #: the lease on the actions held here, renewed by their shards' leaders (agentd/lease.py)
        self.leases = Leases(heartbeat=config.heartbeat_interval)
        self._sessions: list[_Session] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._stop_requested = 0
        self._stop_evt: asyncio.Event | None = None
        self._now_evt: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._lock = threading.Lock()  # guards _stop_requested/_loop across threads
        self.stuck: list[int] = []  # action ids whose mover ignored a cancel at stop

    # -- public -------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Begin a graceful stop (thread-safe). A second call, or ``now=True``,
        skips waiting for the running actions: they are cancelled at once."""
        with self._lock:
            self._stop_requested += 2 if now else 1
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._apply_stop)
            except RuntimeError:
                pass

    @property
    def stopping(self) -> bool:
        """Whether a stop has been requested."""
        with self._lock:
            return self._stop_requested > 0

    def running_actions(self) -> list[tuple[int, int]]:
        """(action_id, attempt) of the actions whose mover is running."""
        return sorted((r.action_id, r.attempt) for r in list(self._running.values()))

    def peak_running(self) -> dict[str, int]:
        """Most actions of each kind that ever ran at once."""
        return {KIND_NAMES[k]: v for k, v in self._peak.items()}

    def connected(self) -> list[str]:
        """Addresses of the streams that are up (welcomed)."""
        return [s.address for s in self._sessions if s.welcomed]

    async def run(self) -> int:
        """Run until :meth:`stop`; returns 0, or 1 if a mover ignored its cancel."""
        loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        self._now_evt = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        with self._lock:
            self._loop = loop
            pending_stop = self._stop_requested
        if pending_stop:
            self._apply_stop()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.config.slots.total), thread_name_prefix="agentd-mover"
        )
        cfg = self.config
        log.info(
            "agentd %s: agent %s on %s, coordinators %s, archive ids %s, slots archive=%d "
            "restore=%d remove=%d, mover %s, file system %s",
            __version__, cfg.agent_id, self.host, ",".join(cfg.coordinators),
            ",".join(map(str, cfg.archive_ids)) or "all",
            cfg.slots.archive, cfg.slots.restore, cfg.slots.remove,
            getattr(self.mover, "name", type(self.mover).__name__),
            getattr(self.backend, "fsname", "?"),
        )
        self._sessions = [_Session(self, addr, heartbeat_interval=cfg.heartbeat_interval) for addr in cfg.coordinators]
        for s in self._sessions:
            s.start()
        leveler = asyncio.get_running_loop().create_task(self._leveler(), name="credit leveler")
        watch = asyncio.get_running_loop().create_task(self._lease_watch(), name="lease watch")
        try:
            await self._stop_evt.wait()
            leveler.cancel()
            return await self._shutdown()
        finally:
            leveler.cancel()
            watch.cancel()
            for s in self._sessions:
                if s._task is not None and not s._task.done():
                    s._task.cancel()
            await asyncio.gather(*(s._task for s in self._sessions if s._task), return_exceptions=True)
            self._executor.shutdown(wait=not self.stuck, cancel_futures=True)
            with self._lock:
                self._loop = None

    # -- stopping -------------------------------------------------------------

    def _apply_stop(self) -> None:
        assert self._stop_evt is not None and self._now_evt is not None
        with self._lock:
            requested = self._stop_requested
        if requested and not self._stop_evt.is_set():
            self._stop_evt.set()
        if requested >= 2 and not self._now_evt.is_set():
            if self._running:
                log.info("second stop request: cancelling %d running action(s) now", len(self._running))
            self._now_evt.set()

    async def _shutdown(self) -> int:
        assert self._idle is not None and self._now_evt is not None
        self._stopping = True
        # take back unused credits (an absolute Ready of 0) so that no more
        # work comes, and so that actions given back below go to other agents
        for s in self._sessions:
            if s.welcomed and any(s.granted.values()):
                log.info("taking back the %d unused credit(s) of the stream to %s", sum(s.granted.values()),
                         s.address)
                s.granted = dict.fromkeys(KINDS, 0)
                s.send_absolute = True
                s.wake()
        drain = self.config.drain_timeout
        if self._running:
            log.info(
                "stopping: taking no new work; waiting up to %g s for %d running action(s): %s",
                drain, len(self._running), self._ids(),
            )
            await _wait_any((self._idle, self._now_evt), drain)
        if self._running:
            log.warning("stopping: cancelling %d action(s) still running: %s", len(self._running), self._ids())
            for run in self._running.values():
                if not run.job.cancelled.is_set():
                    run.stopped_by_agent = True
                    run.job.cancelled.set()
            await _wait_any((self._idle,), CANCEL_WAIT)
        if self._running:
            self.stuck = sorted(self._running)
            log.error(
                "stopping: the mover did not stop action(s) %s within %g s of the cancel",
                self._ids(), CANCEL_WAIT,
            )
        unsent = [s for s in self._sessions if s.pending_done]
        if unsent:
            flushes = [asyncio.ensure_future(s.flush()) for s in unsent]
            _, pending = await asyncio.wait(flushes, timeout=FLUSH_TIMEOUT)
            for f in pending:
                f.cancel()
            for s in self._sessions:
                for d in s.pending_done:
                    log.error(
                        "action %d/%d: could not deliver its completion (errno %d) to %s before exit",
                        d.action_id, d.attempt, d.errno, s.address,
                    )
        await asyncio.gather(*(s.close() for s in self._sessions))
        log.info("agentd stopped")
        return 1 if self.stuck else 0

    def _ids(self) -> str:
        return ", ".join(f"{r.action_id}/{r.attempt}" for r in self._running.values())

    # -- the credit budget (event loop thread) -------------------------------

    def free_slots(self, kind: int) -> int:
        granted = sum(s.granted[kind] for s in self._sessions)
        deferred = sum(1 for _, job in self._deferred.values() if job.kind == kind)
        return self._slots[kind] - self._running_count[kind] - deferred - granted

    def rebalance(self) -> None:
        """Grant every free slot to a welcomed stream (see the module doc):
        first to streams whose replica has work waiting for this agent."""
        if self._stopping:
            return
        live = [s for s in self._sessions if s.welcomed and not s.closing]
        if not live:
            return
        touched: set[int] = set()
        for kind in KINDS:
            free = self.free_slots(kind)
            while free > 0:
                s = min(live, key=lambda x: (x.backlog[kind] <= x.granted[kind], x.granted[kind], -x.last_assign))
                s.granted[kind] += 1
                s.pending_credits[kind] += 1
                s.last_credit = time.monotonic()
                touched.add(id(s))
                free -= 1
        for s in live:
            if id(s) in touched:
                s.wake()

    def level(self, now: float | None = None) -> None:
        """Move unused credits to the streams whose replica has work for this
        agent (its ``backlog``): each replica hands out work only from the
        shards it leads, so credits parked on one replica would starve the
        others. Credits beyond a stream's backlog go first; when every
        stream with credits has work, they are split evenly, and a single
        credit goes round every ROTATE_AFTER seconds."""
        if self._stopping:
            return
        now = time.monotonic() if now is None else now
        live = [s for s in self._sessions if s.welcomed and not s.closing]
        if len(live) < 2:
            return
        for kind in KINDS:
            for _ in range(sum(s.granted[kind] for s in live)):
                needy = [s for s in live if s.backlog[kind] > s.granted[kind]]
                if not needy:
                    break
                dst = min(needy, key=lambda x: (x.granted[kind], x.last_credit))
                # only from streams idle a moment: a busy one's coordinator may
                # have spent the credit already (its assignment on the way)
                idle = [s for s in live if now - s.last_assign >= LEVEL_IDLE]
                spare = [s for s in idle if s.granted[kind] > s.backlog[kind]]
                rotation = False
                if spare:
                    src = max(spare, key=lambda x: (x.granted[kind] - x.backlog[kind], -x.last_assign))
                else:
                    if not idle:
                        break  # freed slots go to the needy stream (rebalance)
                    src = max(idle, key=lambda x: (x.granted[kind], -x.last_assign))
                    gap = src.granted[kind] - dst.granted[kind]
                    waited = now - max(dst.last_credit, dst.welcomed_at)
                    rotation = gap == 1 and dst.granted[kind] == 0 and waited >= ROTATE_AFTER
                    if gap < 2 and not rotation:
                        break
                src.granted[kind] -= 1
                src.send_absolute = True
                dst.granted[kind] += 1
                dst.pending_credits[kind] += 1
                dst.last_credit = now
                src.wake()
                dst.wake()
                if rotation:
                    break  # one rotation per round

    async def _leveler(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.level()
            now = time.monotonic()
            for s in self._sessions:
                if s.welcomed and s.unacked:
                    s.resend(now)

    async def _lease_watch(self) -> None:
        """Stop what no leader renewed for the lease's length, before a
        replica may give it to another agent."""
        while True:
            await asyncio.sleep(min(0.5, max(0.05, self.leases.duration / 8)))
            self.check_leases(time.monotonic())

    def check_leases(self, now: float) -> None:
        for action_id, shard, age in self.leases.expired(now):
            deferred = self._deferred.pop(action_id, None)
            if deferred is not None:
                dsession, djob = deferred
                log.warning("action %d/%d: not started: no leader of shard %d renewed this agent's lease for "
                            "%.1f s", djob.action_id, djob.attempt, shard, age)
                dsession.queue_done(agent_pb2.Done(
                    action_id=djob.action_id, attempt=djob.attempt, errno=_errno.ECANCELED, retry=True,
                    handback=True, message=f"agent {self.config.agent_id} lost its lease before it started"))
            run = self._running.get(action_id)
            if run is None:
                if deferred is not None:
                    self.leases.ended(action_id)
                continue
            if run.ended or run.job.cancelled.is_set():
                continue
            log.warning("action %d/%d %s %s: no leader of shard %d renewed this agent's lease for %.1f s "
                        "(lease %.1f s): stopping it, so that it never runs beside the attempt another agent "
                        "may be given", run.action_id, run.attempt, kind_name(run.kind), run.job.fid, shard, age,
                        self.leases.duration)
            run.lease_lost = True
            run.job.cancelled.set()

    def runs_of(self, session: _Session) -> list[_Running]:
        return [r for r in self._running.values() if r.session is session]

    def check_cluster(self, address: str, cluster_id: str, replica: str, pin: bool = False) -> None:
        """Refuse a replica of another cluster than ours. *pin*: a Welcome;
        the first one names our cluster when the configuration did not."""
        if not cluster_id:
            if pin and self.cluster_id:
                raise _WrongCluster(f"replica {replica or '?'} at {address} does not say which cluster "
                                    f"it belongs to; this agent works for cluster {self.cluster_id}")
            return
        if not self.cluster_id:
            if pin:
                self.cluster_id = cluster_id
                log.info("working for cluster %s (named by replica %s at %s)", cluster_id, replica or "?", address)
            return
        if cluster_id != self.cluster_id:
            raise _WrongCluster(
                f"replica {replica or '?'} at {address} belongs to cluster {cluster_id}, not to cluster "
                f"{self.cluster_id} this agent works for; check --coordinators and --cluster-id")

    def make_hello(self, session: _Session) -> agent_pb2.Hello:
        cfg = self.config
        hello = agent_pb2.Hello(
            agent_id=cfg.agent_id,
            host=self.host,
            archive_ids=list(cfg.archive_ids),
            slots=coordinator_pb2.Slots(
                archive=cfg.slots.archive, restore=cfg.slots.restore, remove=cfg.slots.remove
            ),
            version=__version__,
            cluster_id=self.cluster_id,
        )
        for action_id, attempt in self.running_list():
            hello.running.add(action_id=action_id, attempt=attempt)
        return hello

    def running_list(self) -> list[tuple[int, int]]:
        """(action id, attempt) of everything running here, whichever stream
        it came from, plus finished actions whose Done is not delivered."""
        held = {(r.action_id, r.attempt) for r in self._running.values()}
        for s in self._sessions:
            held.update((d.action_id, d.attempt) for d in s.pending_done)
            held.update(s.unacked)
        held.update((j.action_id, j.attempt) for _s, j in self._deferred.values())
        return sorted(held)

    # -- messages from a coordinator (event loop thread) ----------------------

    def on_message(self, session: _Session, msg: agent_pb2.CoordinatorMessage) -> None:
        for a in msg.assign:
            try:
                self._on_assignment(session, a)
            except Exception:
                log.exception("action %d/%d: could not start it", a.action_id, a.attempt)
                session.queue_done(
                    agent_pb2.Done(
                        action_id=a.action_id, attempt=a.attempt, errno=_errno.EIO,
                        message="agentd could not start the action (see its log)", retry=True,
                    )
                )
        for c in msg.cancel:
            self._on_cancel(session, c)
        if msg.request_running:
            session.report_running = msg.request_running
            session.wake()
        if msg.HasField("lease"):
            self.leases.granted(session.address, msg.lease.token, tuple(msg.lease.shards))
        for ack in msg.applied:
            key = (ack.action_id, ack.attempt)
            for s in self._sessions:
                s.unacked.pop(key, None)
        if msg.HasField("backlog"):
            b = msg.backlog
            session.backlog = dict(zip(KINDS, (b.archive, b.restore, b.remove), strict=True))
            # work waits there, we hold credits there, yet nothing came for a
            # while: the two counts disagree; send the whole grant again
            if time.monotonic() - session.last_assign >= LEVEL_IDLE and any(
                    session.backlog[k] and session.granted[k] for k in KINDS):
                session.send_absolute = True
                session.wake()
            self.level()

    def _refuse(self, session: _Session, a: agent_pb2.Assignment, err: int, why: str, retry: bool,
                handback: bool = False) -> None:
        log.warning("action %d/%d %s %s refused: %s", a.action_id, a.attempt, kind_name(a.kind), _fid_text(a), why)
        session.queue_done(agent_pb2.Done(action_id=a.action_id, attempt=a.attempt, errno=err, message=why,
                                          retry=retry, handback=handback))

    def _on_assignment(self, session: _Session, a: agent_pb2.Assignment) -> None:
        kind = int(a.kind)
        if kind in session.seen:
            session.seen[kind] += 1
        if kind not in KINDS:
            self._refuse(session, a, _errno.EINVAL, f"unknown action kind {kind}", False)
            return
        if (a.action_id, a.attempt) in self._tombstones:
            if session.granted[kind] > 0:
                session.granted[kind] -= 1
            self._refuse(session, a, _errno.ECANCELED, "canceled before its assignment arrived", False)
            self.rebalance()
            return
        session.last_assign = time.monotonic()
        if session.granted[kind] > 0:
            session.granted[kind] -= 1
        else:
            log.warning(
                "action %d/%d: %s assignment from %s beyond the credits granted to it",
                a.action_id, a.attempt, kind_name(kind), session.address,
            )
        cur = self._running.get(a.action_id)
        if cur is not None:
            if a.attempt == cur.attempt:
                log.info("action %d/%d: already running here; duplicate assignment ignored", a.action_id, a.attempt)
            elif a.attempt < cur.attempt:
                log.info(
                    "action %d/%d: stale assignment ignored (attempt %d is running here)",
                    a.action_id, a.attempt, cur.attempt,
                )
            elif cur.job.cancelled.is_set():
                self._defer(session, a, cur)
            else:
                log.info(
                    "action %d/%d: attempt %d of it is still running here; it continues as attempt %d",
                    a.action_id, a.attempt, cur.attempt, a.attempt,
                )
                cur.attempt = a.attempt
                cur.job.attempt = a.attempt
                cur.session = session
                self.leases.assigned(a.action_id, time.monotonic())
                cur.progress_dirty = True
                cur.progress_sent_at = -math.inf
                session.wake()
            return
        if self._stopping:
            # Our credits were taken back (Ready absolute 0) before this
            # arrives at the coordinator's side, so the action it requeues
            # goes to another agent; a handback costs it no attempt.
            self._refuse(session, a, _errno.ECANCELED, f"agent {self.config.agent_id} is stopping; not started",
                         True, handback=True)
            return
        if self.free_slots(kind) < 1:
            # credits moved to another stream while this was on its way
            self._refuse(session, a, _errno.EAGAIN, f"no free {kind_name(kind).lower()} slot on this agent", True,
                         handback=True)
            return
        job = self._job_of(session, a)
        if job is None:
            return
        self.leases.assigned(a.action_id, time.monotonic())
        self._start(session, job)

    def _job_of(self, session: _Session, a: agent_pb2.Assignment) -> Job | None:
        """The Job of an assignment, or None after refusing it (bad FID, other fs)."""
        fsname = getattr(self.backend, "fsname", "")
        if fsname and a.fsname != fsname:
            self._refuse(
                session, a, _errno.ENODEV,
                f"this agent serves file system {fsname!r}, not {a.fsname!r}", True,
            )
            return None
        try:
            fid = Fid(a.fid.seq, a.fid.oid, a.fid.ver)
        except FidError as exc:
            self._refuse(session, a, _errno.EINVAL, f"invalid FID: {exc}", False)
            return None
        if a.HasField("extent"):
            offset, length = a.extent.offset, a.extent.length
            if length == 0:
                length = -1
        else:
            offset, length = 0, -1
        return Job(
            action_id=a.action_id,
            attempt=a.attempt,
            kind=int(a.kind),
            fsname=a.fsname,
            fid=fid,
            archive_id=a.archive_id,
            offset=offset,
            length=length,
            data=bytes(a.data),
            flags=a.flags,
            backend=self.backend,
            data_version=a.data_version,
            may_publish=functools.partial(self._may_publish, a.action_id),
            requesters=tuple(Requester(r.initiator, r.cookie, r.gid) for r in a.requesters),
        )

    def _defer(self, session: _Session, a: agent_pb2.Assignment, cur: _Running) -> None:
        """A newer attempt of an action whose older attempt is being cancelled
        here: start it once the old one has stopped (never two at once)."""
        old = self._deferred.get(a.action_id)
        if old is not None and old[1].attempt >= a.attempt:
            log.info("action %d/%d: stale assignment ignored (attempt %d is queued here)",
                     a.action_id, a.attempt, old[1].attempt)
            return
        if self._stopping:
            log.info("action %d/%d: not started, the agent is stopping", a.action_id, a.attempt)
            return
        if self.free_slots(int(a.kind)) < 1 and old is None:
            # beyond the credits: given back, no attempt used
            self._refuse(session, a, _errno.EAGAIN, f"no free {kind_name(a.kind).lower()} slot on this agent", True,
                         handback=True)
            return
        job = self._job_of(session, a)
        if job is None:
            return
        self._deferred[a.action_id] = (session, job)
        self.leases.assigned(a.action_id, time.monotonic())
        log.info(
            "action %d/%d %s %s: starts once attempt %d, being cancelled here, has stopped",
            a.action_id, a.attempt, kind_name(job.kind), job.fid, cur.attempt,
        )

    def _may_publish(self, action_id: int) -> bool:
        """Mover thread: whether the action's lease still holds (a result
        published after it ended could overwrite the next attempt's)."""
        return self.leases.valid(action_id, time.monotonic())

    def _start(self, session: _Session, job: Job) -> None:
        loop = asyncio.get_running_loop()
        assert self._executor is not None and self._idle is not None
        run = _Running(job=job, kind=job.kind, attempt=job.attempt, session=session, started=time.monotonic())
        self._running[job.action_id] = run
        self._running_count[job.kind] += 1
        self._peak[job.kind] = max(self._peak[job.kind], self._running_count[job.kind])
        self._idle.clear()
        if log.isEnabledFor(logging.INFO):
            extent = "whole file" if job.length < 0 and job.offset == 0 else f"extent {job.offset}+{job.length}"
            log.info(
                "action %d/%d %s %s started: archive %d, %s, from %s",
                job.action_id, job.attempt, kind_name(job.kind), job.fid, job.archive_id, extent,
                session.replica or session.address,
            )
        if self._inline:
            # a mover that never blocks (the null mover): run it here, no
            # thread hop; the caller rebalances credits once per message
            self._job_end(run, self._run_mover(job), rebalance=False)
            return
        job.report = _ProgressCell(loop, functools.partial(self._on_progress, run)).report
        fut = loop.run_in_executor(self._executor, self._run_mover, job)
        fut.add_done_callback(functools.partial(self._on_job_end, run))

    def _run_mover(self, job: Job) -> Result:
        """Worker thread: run the mover; never raises."""
        try:
            res = self.mover.run(job)
        except OSError as exc:
            err = exc.errno or _errno.EIO
            if job.cancelled.is_set():
                err = _errno.ECANCELED
            return Result(errno=err, message=str(exc))
        except Exception as exc:
            log.exception("%s: the mover failed", job.log_prefix())
            if job.cancelled.is_set():
                return Result(errno=_errno.ECANCELED, message="cancelled")
            return Result(errno=_errno.EIO, message=f"mover error: {type(exc).__name__}: {exc}")
        if not isinstance(res, Result):
            return Result(errno=_errno.EIO, message=f"mover returned {type(res).__name__}, not a Result")
        return res

    def _on_progress(self, run: _Running, bytes_done: int, bytes_total: int) -> None:
        if run.ended:
            return
        run.bytes_done = bytes_done
        run.bytes_total = bytes_total
        if not run.progress_dirty:
            run.progress_dirty = True
            run.session.wake()

    def _on_job_end(self, run: _Running, fut: asyncio.Future[Result]) -> None:
        try:
            res = fut.result()
        except BaseException as exc:  # the executor refused it (shutdown) or was cancelled
            res = Result(errno=_errno.EIO, message=f"not run: {exc!r}", retry=True)
        self._job_end(run, res)

    def _job_end(self, run: _Running, res: Result, rebalance: bool = True) -> None:
        assert self._idle is not None
        run.ended = True
        if self._running.get(run.action_id) is run:
            del self._running[run.action_id]
        self._running_count[run.kind] -= 1
        deferred = self._deferred.pop(run.action_id, None)
        if deferred is None:
            self.leases.ended(run.action_id)
        if not self._running and deferred is None:
            self._idle.set()
        err = int(res.errno)
        if err < 0:
            err = -err
        message = res.message or (os.strerror(err) if err else "")
        retry = bool(res.retry)
        handback = False
        if err and run.lease_lost:
            # stopped (or refused to publish) because the lease ended: not the
            # action's fault; by now it may run elsewhere
            retry = handback = True
            message = (f"agent {self.config.agent_id} lost its lease (no leader confirmed it for "
                       f"{self.leases.duration:.1f} s) and stopped the action")
        elif err == _errno.ECANCELED and run.stopped_by_agent:
            # not the user's cancel: give the action back to be run elsewhere
            retry = handback = True
            message = f"agent {self.config.agent_id} stopped before the action ended"
        bytes_done = res.bytes_done or run.bytes_done
        secs = time.monotonic() - run.started
        job = run.job
        if err == 0:
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "action %d/%d %s %s succeeded: %d bytes in %.2f s",
                    run.action_id, run.attempt, kind_name(run.kind), job.fid, bytes_done, secs,
                )
        else:
            log.info(
                "action %d/%d %s %s ended with errno %d (%s)%s: %d bytes in %.2f s",
                run.action_id, run.attempt, kind_name(run.kind), job.fid, err, message,
                ", retry" if retry else "", bytes_done, secs,
            )
        done = agent_pb2.Done(
            action_id=run.action_id,
            attempt=run.attempt,
            errno=err,
            message=message,
            retry=retry,
            bytes_done=max(bytes_done, 0),
            handback=handback,
        )
        self._remember(self._finished, (run.action_id, run.attempt), done)
        run.session.queue_done(done)
        if deferred is not None:
            dsession, djob = deferred
            if self._stopping:
                log.info("action %d/%d: not started, the agent is stopping", djob.action_id, djob.attempt)
                dsession.queue_done(agent_pb2.Done(
                    action_id=djob.action_id, attempt=djob.attempt, errno=_errno.ECANCELED,
                    message=f"agent {self.config.agent_id} stopped before the action started", retry=True,
                    handback=True,
                ))
                if not self._running:
                    self._idle.set()
            else:
                self._start(dsession, djob)
        if rebalance:
            self.rebalance()

    @staticmethod
    def _remember(book: collections.OrderedDict[tuple[int, int], Any], key: tuple[int, int],
                  value: Any = None) -> None:
        now = time.monotonic()
        book[key] = (now, value)
        while len(book) > REMEMBERED:
            _, (when, _) = next(iter(book.items()))
            if now - when < REMEMBER_FOR and len(book) <= REMEMBERED_MAX:
                break
            book.popitem(last=False)

    def _on_cancel(self, session: _Session, c: agent_pb2.CancelOrder) -> None:
        deferred = self._deferred.get(c.action_id)
        if deferred is not None and (not c.attempt or c.attempt == deferred[1].attempt):
            dsession, djob = self._deferred.pop(c.action_id)
            if c.action_id not in self._running:
                self.leases.ended(c.action_id)
            log.info("action %d/%d %s %s: cancelled before it started%s", djob.action_id, djob.attempt,
                     kind_name(djob.kind), djob.fid, f" ({c.reason})" if c.reason else "")
            dsession.queue_done(agent_pb2.Done(
                action_id=djob.action_id, attempt=djob.attempt, errno=_errno.ECANCELED,
                message="cancelled before it started",
            ))
            self.rebalance()
            return
        run = self._running.get(c.action_id)
        if run is None:
            key = (c.action_id, c.attempt)
            if key in self._finished:
                # it ended here: the cancel means the coordinator never got our
                # completion (its replica died with it); say it again, the truth wins
                log.info("action %d/%d: cancel after it ended here; its completion is sent again", *key)
                self.live_session(prefer=session).queue_done(self._finished[key][1])
                return
            # Never got it (or not yet: an assignment may still be on its way
            # over another replica's stream). Say so, and refuse it if it comes.
            self._remember(self._tombstones, key)
            log.info("action %d/%d: cancel for an action not running here: confirmed, and refused "
                     "should its assignment still arrive", *key)
            self.live_session(prefer=session).queue_done(agent_pb2.Done(
                action_id=c.action_id, attempt=c.attempt, errno=_errno.ECANCELED,
                message=f"not running on agent {self.config.agent_id}"))
            return
        if c.attempt and c.attempt != run.attempt:
            log.info(
                "action %d/%d: cancel ignored: attempt %d is the one running here",
                c.action_id, c.attempt, run.attempt,
            )
            return
        log.info(
            "action %d/%d %s %s: cancel received%s",
            run.action_id, run.attempt, kind_name(run.kind), run.job.fid,
            f" ({c.reason})" if c.reason else "",
        )
        run.job.cancelled.set()


def _fill_slots(pb: coordinator_pb2.Slots, per_kind: dict[int, int]) -> None:
    pb.archive = per_kind[HSMA.ARCHIVE]
    pb.restore = per_kind[HSMA.RESTORE]
    pb.remove = per_kind[HSMA.REMOVE]


def _fid_text(a: agent_pb2.Assignment) -> str:
    try:
        return str(Fid(a.fid.seq, a.fid.oid, a.fid.ver))
    except FidError:
        return "[invalid fid]"


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
