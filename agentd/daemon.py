"""The agentd daemon: Work streams to the coordinator replicas, the slot and
credit budget, and the movers running in worker threads.

Shape
-----
Everything the agent decides lives in :class:`agentd.core.AgentCore` (pure:
events in with the time passed in, instructions out): the slots and the
credits, leveling, tombstones, finished runs, deferred attempts, the
lease, what each stream sends next. This module is its shell: one
:class:`Agent` owns the core, the thread pool running the movers, and one
:class:`_Session` (one ``AgentService.Work`` bidi stream, reconnected as
needed) per coordinator address; it feeds the core what happens and
carries out what the core answers (start a mover, set a job's cancel
event, wake a stream's writer, log). Every session shares the agent's pool
and budget; a job belongs to the session whose replica assigned it and
reports its progress and completion there.

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
move to where work waits (:meth:`AgentCore.level`): credits beyond a
stream's backlog first; when every stream with credits has work they are
split evenly, a single credit going round every ``ROTATE_AFTER`` seconds.
The agent takes credits back with an absolute ``Ready``; credits on a lost
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
from typing import NoReturn

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
from agentd.core import (
    KINDS,
    LEVEL_IDLE,
    REMEMBER_FOR,
    REMEMBERED,
    REMEMBERED_MAX,
    RESEND_AFTER,
    ROTATE_AFTER,
    AgentCore,
    CancelJob,
    CoreConfig,
    Instruction,
    Log,
    Renumber,
    Start,
    Wake,
    kind_name,
)
from agentd.lease import Leases
from agentd.metrics import AgentdMetrics, AgentdView
from agentd.movers.base import Job, Mover, Result
from hsm import __version__
from hsm.client import metadata_value
from hsm.metrics import split_host_port, view_from_loop
from hsm.tls import channel_credentials
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2
from hsm.wire import CLUSTER_METADATA_KEY, KIND_NAMES, REPLICA_METADATA_KEY

log = logging.getLogger(__name__)

__all__ = [
    "KINDS", "LEVEL_IDLE", "REMEMBERED", "REMEMBERED_MAX", "REMEMBER_FOR", "RESEND_AFTER", "ROTATE_AFTER",
    "Agent", "backoff_delay", "kind_name", "make_backend", "make_mover",
]

#: How long to wait for the coordinator's Welcome after Hello.
WELCOME_TIMEOUT = 10.0
#: On stop, how long cancelled jobs get to return after the drain.
CANCEL_WAIT = 10.0
#: On stop, how long to try to deliver the last completions.
FLUSH_TIMEOUT = 5.0
#: Completions arriving within this window share one message.
BATCH_WINDOW = 0.002

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
        if mc.pack_below and mc.pack_files > config.slots.archive:
            log.warning("mover.pack_files is %d but slots.archive %d: a container gathers the archives running "
                        "at once, so containers will hold %d files at most (written when pack_idle passes); "
                        "give slots.archive at least pack_files", mc.pack_files, config.slots.archive,
                        config.slots.archive)
        try:
            return PosixMover(
                mc.archive_root,
                chunk_size=mc.chunk_size,
                progress_interval=interval,
                progress_bytes=mc.progress_bytes,
                bandwidth_limit=mc.bandwidth_limit,
                checksum=mc.checksum,
                pack_below=mc.pack_below,
                pack_files=mc.pack_files,
                pack_bytes=mc.pack_bytes,
                pack_idle=mc.pack_idle,
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


# --------------------------------------------------------------------------
# one Work stream


class _StreamEnded(Exception):
    """The coordinator ended or broke the protocol on a stream."""


class _WrongCluster(_StreamEnded):
    """The replica at this address belongs to another cluster."""


class _Session:
    """One coordinator address: its ``Work`` stream, reconnected as needed.
    What the stream holds (credits, completions, ...) is the core's
    ``StreamState``; the attributes below are views of it."""

    def __init__(self, agent: Agent, address: str) -> None:
        self.agent = agent
        self.core = agent.core
        self.address = address
        self.closing = False
        self._state = agent.core.streams[address]
        self._wake = asyncio.Event()
        self._batch = False
        self._closing_evt = asyncio.Event()
        self._flushed = asyncio.Event()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the core's state of this stream ------------------------------------

    @property
    def welcomed(self) -> bool:
        return self._state.welcomed

    @property
    def replica(self) -> str:
        return self._state.replica

    @property
    def heartbeat_interval(self) -> float:
        return self._state.heartbeat_interval

    @property
    def pending_done(self) -> list[agent_pb2.Done]:
        """Completions waiting to be written to this stream."""
        return self._state.pending_done

    @property
    def unacked(self) -> dict[tuple[int, int], tuple[agent_pb2.Done, float]]:
        """Completions written, not acknowledged: (action id, attempt) -> (Done, when sent)."""
        return self._state.unacked

    @property
    def acks_done(self) -> bool:
        """The replica acknowledges completions (Welcome.acks_done)."""
        return self._state.acks_done

    @acks_done.setter
    def acks_done(self, value: bool) -> None:
        self._state.acks_done = value

    @property
    def granted(self) -> dict[int, int]:
        return self._state.granted

    @property
    def backlog(self) -> dict[int, int]:
        return self._state.backlog

    # -- called by the agent (event loop thread) --------------------------

    def wake(self, *, batch: bool = False) -> None:
        self._batch = self._batch or batch
        self._wake.set()

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
        self.agent._do(self.core.closing(self.address))
        self._closing_evt.set()
        self.wake()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _sent(self, dones: list[agent_pb2.Done]) -> None:
        """Completions written: kept until the replica acknowledges them."""
        self.core.completions_written(self.address, dones, time.monotonic())

    def resend(self, now: float, after: float = RESEND_AFTER) -> int:
        """Send again the completions not acknowledged within *after*
        seconds (through any live stream). Returns how many."""
        before = len(self._state.unacked)
        self.agent._do(self.core.resend(self.address, now, after))
        return before - len(self._state.unacked)

    def _lost(self) -> None:
        """The stream is gone: its unused credits are void on both sides."""
        self.agent._do(self.core.stream_lost(self.address, time.monotonic()))
        self._flushed.set()  # its completions may have moved to another stream

    # -- the connection loop ----------------------------------------------

    async def _run(self) -> None:
        cfg = self.agent.config
        failures = 0
        last_warning = -math.inf
        last_kind = ""  # the kind of failure last logged: a new kind is logged at once
        while not self.closing:
            welcomed_before = False
            wrong_cluster = False
            kind = "closed"
            self._closing_evt.clear()
            try:
                welcomed_before = await self._connect_once()
                reason = "the coordinator closed the stream"
            except _StreamEnded as exc:
                reason = str(exc)
                wrong_cluster = isinstance(exc, _WrongCluster)
                kind = "wrong cluster" if wrong_cluster else "ended"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                kind = exc.code().name
            except TimeoutError:
                reason = f"no Welcome within {WELCOME_TIMEOUT:g} s"
                kind = "timeout"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad message kill the agent
                log.exception("stream to %s failed unexpectedly", self.address)
                reason = f"{type(exc).__name__}: {exc}"
                kind = type(exc).__name__
            finally:
                self._lost()
            if self.closing:
                break
            if welcomed_before:
                failures = 0
            delay = backoff_delay(failures, cfg.reconnect_min_delay, cfg.reconnect_max_delay)
            now = time.monotonic()
            # a repeated failure is logged once a minute; a new kind of one
            # at once (a refusal after a first "connection refused" too)
            news = failures == 0 or kind != last_kind or now - last_warning >= 60.0
            if wrong_cluster and news:
                log.error("refusing coordinator %s: %s; trying again in %.1f s", self.address, reason, delay)
                last_warning, last_kind = now, kind
            elif welcomed_before or news:
                log.warning(
                    "stream to coordinator %s lost (%s); %d running action(s) continue; "
                    "reconnecting in %.1f s",
                    self.address, reason, len(self.core.runs), delay,
                )
                last_warning, last_kind = now, kind
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
        tls = agent.config.tls
        channel_ctx = (grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS) if tls is None else
                       grpc.aio.secure_channel(self.address, channel_credentials(tls), options=_CHANNEL_OPTIONS))
        async with channel_ctx as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Work()
            self._call = call
            try:
                hello = agent.make_hello(self)
                hello_sent = time.monotonic()  # the Welcome confirms the replica heard us then or later
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
                w = first.welcome
                agent.check_cluster(self.address, w.cluster_id, w.replica, pin=True)
                agent._do(self.core.welcomed(self.address, w.replica, w.heartbeat_interval, w.lease_seconds,
                                             w.acks_done, time.monotonic(), hello_sent))
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
        core, address = self.core, self.address
        while True:
            now = time.monotonic()
            deadline = core.next_send(address, now)
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
                if core.has_pending(address):
                    msg = core.collect(address, time.monotonic())
                    if msg is not None:
                        await self._write(call, msg)
                await call.done_writing()
                return
            msg = core.collect(address, time.monotonic())
            if msg is None:
                continue
            await self._write(call, msg)
            if not core.has_pending(address):
                self._flushed.set()

    async def _write(self, call: grpc.aio.StreamStreamCall, msg: agent_pb2.AgentMessage) -> None:
        try:
            await call.write(msg)
        except asyncio.InvalidStateError:
            # the coordinator ended the call before this write (a frozen
            # agent wakes to a stream its replica closed): say why, no traceback
            self.core.write_failed(self.address)
            await self._raise_status(call, "the coordinator ended the stream")
        except BaseException:
            self.core.write_failed(self.address)  # its completions go out on the next stream
            raise
        self.core.written(self.address, time.monotonic())


# --------------------------------------------------------------------------
# the agent


class Agent:
    """The mover daemon. Run it with ``await agent.run()`` on an event loop;
    :meth:`stop` may be called from any thread (or a signal handler)."""

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
        #: every decision: credits, runs, completions, the lease (agentd/core.py)
        self.core = AgentCore(
            CoreConfig(
                agent_id=config.agent_id,
                slots={k: config.slots.for_kind(k) for k in KINDS},
                fsname=getattr(backend, "fsname", "") or "",
                heartbeat_interval=config.heartbeat_interval,
                progress_interval=config.progress_interval,
            ),
            list(dict.fromkeys(config.coordinators)),
        )
        self._jobs: dict[int, Job] = {}  # the core's run number -> the mover's job
        self._sessions: list[_Session] = []
        self._by_address: dict[str, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stop_requested = 0
        self._stop_evt: asyncio.Event | None = None
        self._now_evt: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._lock = threading.Lock()  # guards _stop_requested/_loop across threads
        self.stuck: list[int] = []  # action ids whose mover ignored a cancel at stop
        #: the Prometheus exporter (None: no metrics_listen, nothing counted)
        self.metrics: AgentdMetrics | None = None
        self.metrics_port = 0

    @property
    def leases(self) -> Leases:
        """The lease on the actions held here, renewed by their shards' leaders (agentd/lease.py)."""
        return self.core.leases

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
        return self.core.running_actions()

    def peak_running(self) -> dict[str, int]:
        """Most actions of each kind that ever ran at once."""
        return {KIND_NAMES[k]: v for k, v in self.core.peak.items()}

    def metrics_view(self) -> AgentdView:
        """What a Prometheus scrape reads (agentd/metrics.py), on the loop."""
        core = self.core
        return AgentdView(
            self.config.agent_id, dict(core.slots), dict(core.running_count),
            {(addr, int(k)): n for addr, st in core.streams.items() for k, n in st.granted.items()},
            {addr: st.welcomed for addr, st in core.streams.items()}, core.leases.holding())

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
        cfg = self.config
        if cfg.metrics_listen:
            self.metrics = AgentdMetrics(cfg.agent_id, view_from_loop(loop, self.metrics_view))
            try:
                self.metrics_port = self.metrics.serve(*split_host_port(cfg.metrics_listen))
            except OSError as exc:
                raise ConfigError(f"metrics_listen {cfg.metrics_listen}: cannot serve metrics there: "
                                  f"{exc.strerror or exc}") from None
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.config.slots.total), thread_name_prefix="agentd-mover"
        )
        log.info(
            "agentd %s: agent %s on %s, coordinators %s, archive ids %s, tags %s, slots archive=%d "
            "restore=%d remove=%d, mover %s, file system %s, %s",
            __version__, cfg.agent_id, self.host, ",".join(cfg.coordinators),
            ",".join(map(str, cfg.archive_ids)) or "all", ",".join(cfg.tags) or "none",
            cfg.slots.archive, cfg.slots.restore, cfg.slots.remove,
            getattr(self.mover, "name", type(self.mover).__name__),
            getattr(self.backend, "fsname", "?"), "mutual TLS" if cfg.tls else "plain text",
        )
        self._sessions = [_Session(self, addr) for addr in self.core.streams]
        self._by_address = {s.address: s for s in self._sessions}
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
            if self.metrics is not None:
                self.metrics.stop()
            with self._lock:
                self._loop = None

    # -- carrying out the core's instructions (event loop thread) -------------

    def _do(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Wake):
                session = self._by_address.get(ins.stream)
                if session is not None:
                    session.wake(batch=ins.batch)
            elif isinstance(ins, Log):
                log.log(ins.level, ins.msg, *ins.args)
            elif isinstance(ins, Start):
                self._start(ins)
            elif isinstance(ins, CancelJob):
                job = self._jobs.get(ins.run)
                if job is not None:
                    job.cancelled.set()
            elif isinstance(ins, Renumber):
                job = self._jobs.get(ins.run)
                if job is not None:
                    job.attempt = ins.attempt
        if self._idle is not None:
            if self.core.runs:
                self._idle.clear()
            else:
                self._idle.set()

    def _start(self, ins: Start) -> None:
        loop = asyncio.get_running_loop()
        assert self._executor is not None
        spec = ins.job
        t0 = time.monotonic()
        job = Job(
            action_id=spec.action_id,
            attempt=spec.attempt,
            kind=spec.kind,
            fsname=spec.fsname,
            fid=spec.fid,
            archive_id=spec.archive_id,
            offset=spec.offset,
            length=spec.length,
            data=spec.data,
            flags=spec.flags,
            backend=self.backend,
            data_version=spec.data_version,
            may_publish=functools.partial(self._may_publish, spec.action_id),
            requesters=spec.requesters,
            object_key=spec.object_key,
            final=spec.final,
            packed=spec.packed,
            object_offset=spec.object_offset,
            object_length=spec.object_length,
            object_checksum=spec.object_checksum,
            stripe_above=spec.stripe_above,
            stripe_part=spec.stripe_part,
            stripe_parts=spec.stripe_parts,
            stripe_version=spec.stripe_version,
            stripe_size=spec.stripe_size,
            stripe_seal=spec.stripe_seal,
            stripe_part_length=spec.stripe_part_length,
            stripe_checksums=spec.stripe_checksums,
        )
        if self._inline:
            # a mover that never blocks (the null mover): run it here, no
            # thread hop; the caller rebalances credits once per message
            res = self._run_mover(job)
            now = time.monotonic()
            if self.metrics is not None:
                self.metrics.inline(spec.kind, res.errno, res.bytes_done, now - t0)
            self._do(self.core.job_ended(ins.run, res, now, rebalance=False))
            return
        if self.metrics is not None:
            self.metrics.started(ins.run, spec.kind, t0)
        self._jobs[ins.run] = job
        job.report = _ProgressCell(loop, functools.partial(self._on_progress, ins.run)).report
        fut = loop.run_in_executor(self._executor, self._run_mover, job)
        fut.add_done_callback(functools.partial(self._on_job_end, ins.run))

    def _may_publish(self, action_id: int) -> bool:
        """Mover thread: whether the action's lease still holds (a result
        published after it ended could overwrite the next attempt's)."""
        return self.core.leases.valid(action_id, time.monotonic())

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

    def _on_progress(self, run: int, bytes_done: int, bytes_total: int) -> None:
        if self.metrics is not None:
            self.metrics.progress(run, bytes_done)
        self._do(self.core.progress(run, bytes_done, bytes_total))

    def _on_job_end(self, run: int, fut: asyncio.Future[Result]) -> None:
        try:
            res = fut.result()
        except BaseException as exc:  # the executor refused it (shutdown) or was cancelled
            res = Result(errno=_errno.EIO, message=f"not run: {exc!r}", retry=True)
        self._jobs.pop(run, None)
        if self.metrics is not None:
            self.metrics.ended(run, res.errno, res.bytes_done, time.monotonic())
        self._do(self.core.job_ended(run, res, time.monotonic()))

    # -- stopping -------------------------------------------------------------

    def _apply_stop(self) -> None:
        assert self._stop_evt is not None and self._now_evt is not None
        with self._lock:
            requested = self._stop_requested
        if requested and not self._stop_evt.is_set():
            self._stop_evt.set()
        if requested >= 2 and not self._now_evt.is_set():
            if self.core.runs:
                log.info("second stop request: cancelling %d running action(s) now", len(self.core.runs))
            self._now_evt.set()

    async def _shutdown(self) -> int:
        assert self._idle is not None and self._now_evt is not None
        # take back unused credits (an absolute Ready of 0) so that no more
        # work comes, and so that actions given back below go to other agents
        self._do(self.core.stop(time.monotonic()))
        drain = self.config.drain_timeout
        if self.core.runs:
            log.info(
                "stopping: taking no new work; waiting up to %g s for %d running action(s): %s",
                drain, len(self.core.runs), self.core.running_ids(),
            )
            await _wait_any((self._idle, self._now_evt), drain)
        if self.core.runs:
            log.warning("stopping: cancelling %d action(s) still running: %s", len(self.core.runs),
                        self.core.running_ids())
            self._do(self.core.stop_running(time.monotonic()))
            await _wait_any((self._idle,), CANCEL_WAIT)
        if self.core.runs:
            self.stuck = sorted(self.core.runs)
            log.error(
                "stopping: the mover did not stop action(s) %s within %g s of the cancel",
                self.core.running_ids(), CANCEL_WAIT,
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

    # -- the credit budget (event loop thread) -------------------------------

    def free_slots(self, kind: int) -> int:
        return self.core.free_slots(kind)

    def rebalance(self) -> None:
        """Grant every free slot to a welcomed stream (see AgentCore.rebalance)."""
        self._do(self.core.rebalance(time.monotonic()))

    def level(self, now: float | None = None) -> None:
        """Move unused credits to where work waits (see AgentCore.level)."""
        self._do(self.core.level(time.monotonic() if now is None else now))

    async def _leveler(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._do(self.core.tick(time.monotonic()))

    async def _lease_watch(self) -> None:
        """Stop what no leader renewed for the lease's length, before a
        replica may give it to another agent."""
        while True:
            await asyncio.sleep(min(0.5, max(0.05, self.leases.duration / 8)))
            self.check_leases(time.monotonic())

    def check_leases(self, now: float) -> None:
        self._do(self.core.check_leases(now))

    def live_session(self, prefer: _Session) -> _Session:
        """*prefer* if its stream is up, else another welcomed one, else *prefer*."""
        return self._by_address.get(self.core.live_stream(prefer.address), prefer)

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
            tags=list(cfg.tags),
            slots=coordinator_pb2.Slots(
                archive=cfg.slots.archive, restore=cfg.slots.restore, remove=cfg.slots.remove
            ),
            version=__version__,
            cluster_id=self.cluster_id,
            stripes=bool(getattr(self.mover, "stripes", False)),
        )
        for action_id, attempt in self.running_list():
            hello.running.add(action_id=action_id, attempt=attempt)
        return hello

    def running_list(self) -> list[tuple[int, int]]:
        """(action id, attempt) of everything running here, whichever stream
        it came from, plus finished actions whose Done is not delivered."""
        return self.core.running_list()

    # -- messages from a coordinator (event loop thread) ----------------------

    def on_message(self, session: _Session, msg: agent_pb2.CoordinatorMessage) -> None:
        core, address, do = self.core, session.address, self._do
        for a in msg.assign:
            try:
                do(core.assignment(address, a, time.monotonic()))
            except Exception:
                log.exception("action %d/%d: could not start it", a.action_id, a.attempt)
                do(core.assignment_failed(address, a))
        for c in msg.cancel:
            do(core.cancel(address, c, time.monotonic()))
        if msg.request_running:
            do(core.request_running(address, msg.request_running))
        if msg.HasField("lease"):
            do(core.lease_granted(address, msg.lease.token, msg.lease.shards))
        if msg.applied:
            do(core.applied([(ack.action_id, ack.attempt) for ack in msg.applied]))
        if msg.HasField("backlog"):
            b = msg.backlog
            do(core.backlog(address, (b.archive, b.restore, b.remove), time.monotonic()))


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
