"""``hsm-bridge``'s shell around ``bridge.core``: it stands by until it
holds the coordinator's lease of every file system it serves
(``bridge.lease``), then sends again what its journal and the MDT's active
requests say is unfinished (``bridge.recovery``), registers as the copytool
of a Lustre mount, reads the MDT's action lists, journals each before
acting on it, and carries out what the core decides (submit and cancel
through the coordinator client, end items at the MDT, watch the actions it
forwarded, log what an admin must see). It stops, and unregisters, as soon
as it cannot be sure it still holds its leases.

Threads: one reads the MDT (``llapi_hsm_copytool_recv`` blocks) and
journals each list the moment recv returns it (fsynced), one renews the
leases, a small pool makes the coordinator calls (the client is
synchronous and thread-safe) and the MDT ends; everything the core sees
happens on the event loop, in order.
"""

from __future__ import annotations

import asyncio
import errno as E
import glob
import logging
import os
import shlex
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.core import (
    BridgeConfig,
    BridgeCore,
    Cancel,
    EndAtMdt,
    Instruction,
    Received,
    Report,
    Submit,
    Watch,
    initiator_of,
)
from bridge.journal import Journal
from bridge.lease import GiveBack, LeaseKeeper, lease_name
from bridge.recovery import Plan, plan
from hsm.client import (
    CoordinatorClient,
    CoordinatorError,
    DeadlineExceeded,
    outcome_name,
    state_name,
    submit_item,
)
from hsm.hsmflags import HP_FLAG_COMPLETED, HSM_REQUEST_FLAGS, HSMA
from hsm.lustre import active_requests
from hsm.lustre.api import Copytool, LustreApi
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb

log = logging.getLogger(__name__)

EOF_LENGTH = (1 << 64) - 1
_KINDS = {HSMA.ARCHIVE: "archive", HSMA.RESTORE: "restore", HSMA.REMOVE: "remove"}
#: the journal is rewritten when it holds this many more lists than are live
COMPACT_SLACK = 1000
#: seconds one watch of the forwarded actions lasts before it is opened
#: again with the actions forwarded since
WATCH_ROUND = 2.0
#: messages recv may refuse in a row (EPROTO) before the bridge gives up on
#: the MDT's pipe (a stream it cannot resynchronise: a restart registers again)
MAX_REFUSED = 1000
#: seconds between two warnings that the lease requests go unanswered
REPORT_UNANSWERED = 60.0
#: seconds the --active-requests-command may run
ACTIVE_REQUESTS_TIMEOUT = 60.0


class LeaseLost(Exception):
    """The bridge can no longer be sure it is the only active one."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    mount: Path
    core: BridgeConfig
    journal: Path
    archive_ids: tuple[int, ...] = (0,)  # 0: every archive id
    holder: str = ""  # this bridge's name in the leases ("" : host:pid)
    lease_ttl: float = 15.0
    #: where the MDT's hsm.active_requests are read when the bridge becomes
    #: active: files (globs), or a command printing them (argv)
    active_requests: tuple[str, ...] = ()
    active_requests_command: tuple[str, ...] = ()
    report_every: float = 60.0


def submit_item_of(rec: Received) -> cpb.SubmitItem:
    """The coordinator's item for one MDT item: the MDT is the requester
    (its cookie makes the idempotency key), the list's archive id, the
    item's extent and ``hai_data``."""
    it = rec.item
    extent = None if it.offset == 0 and it.length == EOF_LENGTH else (
        it.offset, -1 if it.length == EOF_LENGTH else it.length)
    requester = tpb.Requester(initiator=initiator_of(rec.fsname), cookie=it.cookie, gid=it.gid & 0xFFFFFFFF)
    return submit_item(rec.fsname, it.fid, _KINDS[HSMA(it.action)], rec.archive_id, requester=requester,
                       data=it.data, extent=extent, flags=rec.hal_flags & HSM_REQUEST_FLAGS)


class Bridge:
    def __init__(self, config: DaemonConfig, api: LustreApi, client: CoordinatorClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.api = api
        self.client = client
        self.clock = clock
        self.core = BridgeCore(config.core)
        self.journal = Journal(config.journal)
        # the reader journals each list as soon as recv returns it (a list out
        # of the kernel's pipe and not on disk would be lost by a crash); the
        # lists journaled and not yet seen by the core are kept by compaction
        self._journal_lock = threading.Lock()
        self._unseen: deque[bytes] = deque()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bridge")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._may_read = threading.Event()
        self._stopping = threading.Event()
        self._ct: Copytool | None = None
        self._fatal: BaseException | None = None
        self._watched: set[int] = set()
        self._watch_lock = threading.Lock()
        self._watch_more = threading.Event()
        self.holder = config.holder or f"{socket.gethostname()}:{os.getpid()}"
        self.keeper = LeaseKeeper(tuple(lease_name(f) for f in sorted(config.core.fsnames)), config.lease_ttl)
        self._lease_lock = threading.Lock()
        self._unregistered = False
        self._unanswered_said = -REPORT_UNANSWERED

    # -- life ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Until *stop* is set (or reading the MDT fails for good, or the
        leases are lost): 0 when stopped, 1 on a failure."""
        self._loop = asyncio.get_running_loop()
        try:
            if not await self._stand_by(stop):
                return 0
            lease_keeper = threading.Thread(target=self._keep_leases, name="bridge-lease", daemon=True)
            lease_keeper.start()
            try:
                await self._active(stop)
            finally:
                self._stopping.set()
                lease_keeper.join(self.keeper.renew_every + 5)
                if not isinstance(self._fatal, LeaseLost):
                    self._give_back()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._journal_lock:
                self.journal.close()
        log.info("stopped; %s", self.core.summary())
        if isinstance(self._fatal, LeaseLost):
            log.error("stopped: %s; unregistered from the MDT so that the bridge that takes the lease is "
                      "the only one (restarted, this one stands by)", self._fatal)
            return 1
        if self._fatal is not None:
            log.error("reading the MDT failed: %s", self._fatal)
            return 1
        return 0

    async def _active(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        recovery = await loop.run_in_executor(None, self._recovery_plan)
        self.journal.compact(recovery.lists)
        for raw in recovery.lists:
            self._do(self.core.on_list(self.clock(), raw))
        self.core.counters["recovered"] += recovery.recovered
        self.core.counters["journal_dropped"] += recovery.journal_dropped
        if recovery.lists:
            log.info("sent again %d action list(s): %s", len(recovery.lists), _recovery_text(recovery))
        with self._lease_lock:
            if self._fatal is not None:
                return
            self._ct = self.api.copytool_register(str(self.config.mount), list(self.config.archive_ids))
        log.info("registered as the copytool of %s (archive ids %s); forwarding to the coordinators",
                 self.config.mount, ",".join(map(str, self.config.archive_ids)))
        now = self.clock()
        for end in recovery.ends:
            req = end.request
            self._do([EndAtMdt(Received(req.fsname, req.archive_id, req.flags, req.item, now), end.errval,
                               f"recovered from the MDT's active requests, {end.why}")])
        reader = threading.Thread(target=self._read_mdt, name="bridge-mdt", daemon=True)
        watcher = threading.Thread(target=self._watcher, name="bridge-watch", daemon=True)
        self._may_read.set()
        reader.start()
        watcher.start()
        next_report = self.clock() + self.config.report_every
        try:
            while not stop.is_set() and self._fatal is None:
                self._wake.clear()
                self._do(self.core.on_tick(self.clock()))
                self._backpressure()
                self._maybe_compact()
                if self.clock() >= next_report:
                    log.info("%s", self.core.summary())
                    next_report = self.clock() + self.config.report_every
                due = self.core.next_timer(self.clock())
                delay = 1.0 if due is None else max(0.0, min(1.0, due - self.clock()))
                waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
                done, pending = await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
        finally:
            self._stopping.set()
            self._may_read.set()
            self._unregister()  # the reader's recv ends
            self._watch_more.set()
            reader.join(5)
            watcher.join(WATCH_ROUND + 5)

    def _unregister(self) -> None:
        with self._lease_lock:
            if self._ct is not None and not self._unregistered:
                self._unregistered = True
                self._ct.unregister()

    # -- leases ---------------------------------------------------------------

    async def _stand_by(self, stop: asyncio.Event) -> bool:
        """Until this bridge holds every lease (True) or *stop* is set."""
        loop = asyncio.get_running_loop()
        said: tuple[str, ...] = ()
        while not stop.is_set():
            for ask in self.keeper.due(self.clock()):
                await loop.run_in_executor(None, self._ask, ask.name, self.keeper.renew_every)
            if self.keeper.active:
                log.info("holding the lease(s) %s as %s: active", ", ".join(self.keeper.names), self.holder)
                return True
            holders = tuple(sorted({f"{name} held by {holder}" for name, (holder, _until)
                                    in self.keeper.waiting_for.items()}))
            if holders and holders != said:
                log.info("standing by as %s: %s", self.holder, "; ".join(holders))
                said = holders
            delay = max(0.05, self.keeper.next_time(self.clock()) - self.clock())
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        return False

    def _ask(self, name: str, timeout: float) -> None:
        asked_at = self.clock()
        try:
            reply = self.client.lease(name, self.holder, self.keeper.ttl, timeout=max(0.5, timeout))
        except CoordinatorError as exc:
            with self._lease_lock:
                self.keeper.on_error(self.clock(), name)
            now = self.clock()
            if now - self._unanswered_said >= REPORT_UNANSWERED:
                self._unanswered_said = now
                log.warning("lease %s: the coordinators did not answer (%s)%s", name, exc,
                            "" if self.keeper.active else "; standing by, asking again")
            return
        self._unanswered_said = -REPORT_UNANSWERED
        with self._lease_lock:
            backs = self.keeper.on_answer(self.clock(), name, asked_at, reply.granted, reply.holder,
                                          reply.remaining_ms / 1000)
        for back in backs:
            self._give_back_one(back)

    def _keep_leases(self) -> None:
        """Renew the leases while active; on losing one, stop reading the MDT at once."""
        while not self._stopping.is_set():
            with self._lease_lock:
                asks = self.keeper.due(self.clock())
                left = min(self.keeper.valid_until.values(), default=self.clock()) - self.clock()
            for ask in asks:
                self._ask(ask.name, min(self.keeper.renew_every, left))
            with self._lease_lock:
                why = self.keeper.lost(self.clock())
            if why is not None:
                self._fatal = LeaseLost(why)
                self._stopping.set()  # the reader's recv error that follows is not the cause
                self._unregister()
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._wake.set)
                return
            self._stopping.wait(0.1)

    def _give_back(self) -> None:
        """On a clean stop: the standby takes over at once."""
        with self._lease_lock:
            names = [n for n in self.keeper.names if n in self.keeper.valid_until]
            self.keeper.valid_until.clear()
            self.keeper.active = False
        for name in names:
            self._give_back_one(GiveBack(name))

    def _give_back_one(self, back: GiveBack) -> None:
        try:
            self.client.lease(back.name, self.holder, 0, timeout=2.0)
        except CoordinatorError as exc:
            log.warning("lease %s not given back (%s): it lapses in %.0f s", back.name, exc, self.keeper.ttl)

    # -- recovery -------------------------------------------------------------

    def _recovery_plan(self) -> Plan:
        journal = list(self.journal.replay())
        text = self._read_active_requests()
        fsnames = self.config.core.fsnames
        parsed = None
        if text is not None:
            parsed = active_requests.parse(text, fsname=next(iter(fsnames)) if len(fsnames) == 1 else "")
        out = plan(journal, parsed, fsnames, self.config.archive_ids)
        for report in out.reports:
            log.error("%s", report)
        return out

    def _read_active_requests(self) -> str | None:
        cfg = self.config
        if cfg.active_requests_command:
            try:
                done = subprocess.run(cfg.active_requests_command, capture_output=True, text=True,
                                      timeout=ACTIVE_REQUESTS_TIMEOUT, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("--active-requests-command %s failed: %s; %s", shlex.join(cfg.active_requests_command),
                          exc, _NO_RECOVERY)
                return None
            if done.returncode != 0:
                log.error("--active-requests-command %s exited %d (%s); %s",
                          shlex.join(cfg.active_requests_command), done.returncode,
                          done.stderr.strip()[-300:], _NO_RECOVERY)
                return None
            return done.stdout
        if cfg.active_requests:
            paths = sorted({p for pattern in cfg.active_requests for p in glob.glob(pattern)})
            if not paths:
                log.error("--active-requests %s: no such file; %s", " ".join(cfg.active_requests), _NO_RECOVERY)
                return None
            parts = []
            for path in paths:
                try:
                    parts.append(_with_header(path, Path(path).read_text(encoding="utf-8", errors="replace")))
                except OSError as exc:
                    log.error("--active-requests %s: %s; %s", path, exc, _NO_RECOVERY)
                    return None
            return "".join(parts)
        log.warning("no --active-requests: items the MDT sent to a bridge that died before reading them "
                    "stay STARTED at the MDT until its active_request_timeout, then fail")
        return None

    def _read_mdt(self) -> None:
        assert self._ct is not None and self._loop is not None
        refused = 0  # messages recv refused in a row
        while not self._stopping.is_set():
            self._may_read.wait()
            if self._stopping.is_set():
                return
            try:
                raw = self._ct.recv()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in (E.EINTR, E.EAGAIN):
                    continue
                if exc.errno in (E.EPROTO, E.EMSGSIZE) and refused < MAX_REFUSED:
                    # one bad message (read whole and dropped by the library):
                    # the lists behind it in the pipe are still good
                    refused += 1
                    self._back(self.core.on_unreadable, exc.strerror or str(exc))
                    continue
                if self._fatal is None:
                    self._fatal = exc
                self._loop.call_soon_threadsafe(self._wake.set)
                return
            refused = 0
            with self._journal_lock:
                try:
                    self.journal.append(raw)
                except (OSError, ValueError) as exc:  # still forwarded, but a crash would lose it
                    log.error("cannot journal an action list (%s); forwarding it unjournaled", exc)
                else:
                    self._unseen.append(raw)
            self._loop.call_soon_threadsafe(self._on_list, raw)

    def _on_list(self, raw: bytes) -> None:
        # on disk already (the reader journaled it): from now on the core's
        # live lists stand for it in a compaction
        with self._journal_lock:
            if self._unseen and self._unseen[0] is raw:
                self._unseen.popleft()
        self._do(self.core.on_list(self.clock(), raw))
        self._backpressure()

    def _backpressure(self) -> None:
        if self.core.reading_allowed():
            if not self._may_read.is_set():
                log.info("backlog down to %d item(s): reading the MDT again", self.core.backlog)
                self._may_read.set()
        elif self._may_read.is_set():
            log.warning("%d item(s) wait for the coordinators: no more reading from the MDT until they "
                        "answer (its lists wait in the kernel)", self.core.backlog)
            self._may_read.clear()

    def _maybe_compact(self) -> None:
        with self._journal_lock:
            live = self.core.live_lists() + list(self._unseen)
            if self.journal.records > len(live) + COMPACT_SLACK or (self.journal.records and not live):
                self.journal.compact(live)

    # -- instructions -------------------------------------------------------

    def _do(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Submit):
                self._call(self._submit, ins)
            elif isinstance(ins, Cancel):
                self._call(self._cancel, ins)
            elif isinstance(ins, EndAtMdt):
                self._call(self._end_at_mdt, ins)
            elif isinstance(ins, Watch):
                with self._watch_lock:
                    self._watched.update(ins.action_ids)
                self._watch_more.set()
            elif isinstance(ins, Report):
                log.log(logging.getLevelName(ins.level.upper()), "%s", ins.message)
        self._wake.set()

    def _call(self, fn: Callable[[Any], None], ins: Instruction) -> None:
        self._pool.submit(self._guarded, fn, ins)

    def _guarded(self, fn: Callable[[Any], None], ins: Instruction) -> None:
        try:
            fn(ins)
        except Exception:  # a bug: say it, keep the bridge running
            log.exception("carrying out %s failed", type(ins).__name__)

    def _back(self, method: Callable[..., list[Instruction]], *args: Any) -> None:
        """Run a core event on the loop (from another thread)."""
        assert self._loop is not None

        def deliver() -> None:
            self._do(method(self.clock(), *args))
            self._backpressure()

        self._loop.call_soon_threadsafe(deliver)

    def _submit(self, ins: Submit) -> None:
        try:
            results = self.client.submit([submit_item_of(r) for r in ins.items])
        except CoordinatorError as exc:
            self._back(self.core.on_failed, ins.batch, str(exc))
            return
        self._back(self.core.on_submitted, ins.batch, [_Result(r) for r in results])

    def _cancel(self, ins: Cancel) -> None:
        try:
            self.client.cancel(cookies=[(initiator_of(r.fsname), r.item.cookie) for r in ins.items],
                               reason="canceled at the MDT")
        except CoordinatorError as exc:
            self._back(self.core.on_failed, ins.batch, str(exc))
            return
        self._back(self.core.on_cancelled, ins.batch)

    def _end_at_mdt(self, ins: EndAtMdt) -> None:
        it = ins.item.item
        try:
            action = self.api.action_begin(self._ct, it, is_error=True)
            action.end(it.offset, it.length, HP_FLAG_COMPLETED, ins.errval)
            log.info("%s %s (cookie %#x) ended at the MDT with errno %d: %s", HSMA(it.action).name, it.fid,
                     it.cookie, ins.errval, ins.why)
        except OSError as exc:
            if exc.errno == E.ENOENT:
                log.debug("cookie %#x: the MDT no longer holds it (ended by its agent)", it.cookie)
            else:
                log.warning("cookie %#x: could not end it at the MDT: %s", it.cookie, exc)

    def _watcher(self) -> None:
        """One thread follows every forwarded action: a watch of all of them
        for up to ``WATCH_ROUND`` seconds, then again with those added since."""
        while not self._stopping.is_set():
            with self._watch_lock:
                ids = sorted(self._watched)
            if not ids:
                self._watch_more.wait(1.0)
                self._watch_more.clear()
                continue
            try:
                for action in self.client.watch(ids, deadline=WATCH_ROUND):
                    if action.state in (tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED):
                        with self._watch_lock:
                            self._watched.discard(action.action_id)
                        self._back(self.core.on_action_ended, action.action_id, state_name(action.state),
                                   action.errno)
            except DeadlineExceeded:
                pass  # the round is over: watch again, with the new ones
            except CoordinatorError as exc:
                log.warning("watching %d action(s) failed (%s); watching again", len(ids), exc)
                self._stopping.wait(1.0)


_NO_RECOVERY = ("the journal is sent again whole, and items the MDT sent to a bridge that died before "
                "reading them are not recovered")


def _with_header(path: str, text: str) -> str:
    """A file ``.../mdt/<fsname>-MDT0000/hsm/active_requests`` (debugfs or
    /proc on the MDS) read as ``lctl get_param`` prints it, header first."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-1] == "active_requests" and parts[-2] == "hsm" and "-MDT" in parts[-3]:
        return f"mdt.{parts[-3]}.hsm.active_requests=\n{text}"
    return text


def _recovery_text(p: Plan) -> str:
    if not p.journal_checked:
        return f"the journal, whole ({len(p.lists)} list(s))"
    return (f"{p.journal_kept} journaled item(s) the MDT still holds ({p.journal_dropped} it no longer holds "
            f"dropped), {p.recovered} item(s) recovered from its active requests, {len(p.ends)} ended there")


class _Result:
    """A SubmitResult as the core reads it (outcome by name)."""

    __slots__ = ("outcome", "action_id", "errno", "reason")

    def __init__(self, pb: cpb.SubmitResult) -> None:
        self.outcome = outcome_name(pb.outcome)
        self.action_id = pb.action_id
        self.errno = pb.errno
        self.reason = pb.reason
