"""A simulated Lustre MDT: the HSM authority of one simfs tree, behaving
like the in-kernel coordinator (lustre/mdt/mdt_coordinator.c,
mdt_hsm_cdt_client.c, mdt_hsm_cdt_agent.c, mdt_hsm.c) and the client side
of the ioctls (lustre/llite/dir.c) as far as a copytool and ``lfs hsm_*``
can see. Run it as a process::

    python -m tests.lustre_standin.mdt --root SIMFS_ROOT [--max-requests 3]
        [--active-request-timeout 3600] [--loop-period 10] [--grace-delay 60]

It listens on ``ROOT/.simfs/mdt.sock`` (``protocol`` describes the wire),
so any process using the tree finds its MDT as a Lustre client finds its.

What it models:

- requests (``LL_IOC_HSM_REQUEST``): duplicate FIDs of one request dropped,
  FID sanity (EINVAL), permission (non-root: RESTORE only, EPERM), the
  needed/compatible rules with ``HSM_FORCE_ACTION`` (``hsmflags.check_request``),
  the archive id (request's, else file's, else ``default_archive_id``), one
  restore per FID (a second RESTORE while one is queued or running is
  skipped: the restore handle), CANCEL found by FID (the last WAITING or
  STARTED record of the FID; none: nothing to do), HUA_RELEASE done at once;
  a cookie per record from a counter started at the time of day.
- the scan: WAITING records in log order go out in action lists of one
  archive id, at most ``LDLM_MAXREQSIZE`` (5 KiB) each, while fewer than
  ``max_requests`` actions are STARTED; to the registered copytool serving
  the archive id with the fewest running actions; marked STARTED when sent.
  At send: a file gone (but for REMOVE) or incompatible fails its record;
  ARCHIVE sets EXISTS and the archive id (``SimFS.archive_begin``).
  A CANCEL goes to the copytool running its target, whose record becomes
  CANCELED at once; progress on it then gets ECANCELED. A CANCEL of a
  WAITING record (not running) is sent but cancels nothing (the kernel's
  "cancel cannot drop a waiting action").
- housekeeping every ``loop_period``: a STARTED record without progress for
  ``active_request_timeout`` is CANCELED silently (a later end: ENOENT);
  finished records are dropped after ``grace_delay``.
- COPY_START / PROGRESS / COPY_END by cookie only, from anyone (root):
  begin of an ARCHIVE returns the data version; of a RESTORE creates the
  volatile file (``SimFS.restore_begin``) with a new FID (the copytool
  learns it as ``hai_dfid``); end of an ARCHIVE compares the data version
  (changed: EBUSY, no retry), a progress with an error but not COMPLETED is
  EINVAL, a FID that is neither the item's nor its data FID is EINVAL,
  ENOENT for an unknown/finished/timed-out cookie, ENOSYS counts as
  ECANCELED, errval is positive (the library takes abs()). Completion sets
  the HSM flags through simfs (``archive_end``, ``restore_end`` which swaps
  the volatile file in, ``remove_end``). ``HP_FLAG_RETRY`` requeues only
  without the NRA policy (the default is NRA: ignored).
- copytools: REGISTER turns the connection into the KUC channel; closing it
  or UNREGISTER drops the agent but not its STARTED records (never resent:
  they time out); a new registration gets the WAITING ones.
- OPEN of a released file (what a client's open/read does): a RESTORE with
  ``HSM_REQ_BLOCKING``, answered when the restore has ended.
- STATS: every begin/progress/end per cookie, for tests.

What it does not model (the differences from the kernel known so far):

- one MDT, index 0 (the library's begin refuses a restore on another
  with ENODEV, as for an MDT that does not exist); no llog on disk: a
  restarted MDT forgets its queue (the kernel replays it and re-queues
  STARTED restores); no changelog; of the ``mdt.*.hsm.*`` files only
  ``active_requests`` (``OP_GET_PARAM``, read by ``python -m
  tests.lustre_standin.lctl``), no ``agents``/``actions``;
  ``hsm_control`` is enabled or disabled only (no purge, no shutdown);
- the scan is strict FIFO up to ``max_requests``: the kernel's "force one
  RESTORE into a nearly full scan" special case is left out; CANCEL items go
  in lists of their own (the kernel may mix them with other items of the
  same archive id, sent to the holder of the last cancelled action);
- the volatile file of a RESTORE is made by the MDT at COPY_START in
  ``.simfs/volatile/`` (the real library makes it at begin in the file's
  directory, and it goes away when its last fd closes; here the MDT drops
  a restore's volatile files when the restore ends). As in the kernel, the
  MDT takes the volatile FID of the first progress (or end) as the
  restore's data FID; a later begin's volatile file is then EINVAL;
- permissions: root or not (``SO_PEERCRED``), request masks fixed to
  RESTORE; data version flags are ignored; a volatile file's data version
  is a hash of its stat; ``fid2path`` ignores ``linkno``/``recno``;
- an OPEN whose restore failed answers EIO.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm.fid import Fid
from hsm.hsmflags import (
    ARS,
    DEFAULT_ARCHIVE_ID,
    HP_FLAG_COMPLETED,
    HP_FLAG_RETRY,
    HPS,
    HS,
    HSM_FORCE_ACTION,
    HSM_REQ_BLOCKING,
    HSMA,
    HUA,
    LUSTRE_EOF,
    check_request,
)
from hsm.lustre import hal
from hsm.simfs import SimFS
from tests.lustre_standin import protocol as P

log = logging.getLogger("lustre_standin.mdt")

#: ``LDLM_MAXREQSIZE``: the largest action list the MDT sends.
LDLM_MAXREQSIZE = 5 * 1024
#: Lowest sequence of a sane FID (``FID_SEQ_START``).
FID_SEQ_START = 0x200000000
#: ``HSM_FLAGS_MASK``, ``HSM_USER_MASK``.
HSM_FLAGS_MASK = 0x1FF
HSM_USER_MASK = int(HS.NORELEASE | HS.NOARCHIVE | HS.DIRTY)

_HUA_TO_HSMA = {HUA.ARCHIVE: HSMA.ARCHIVE, HUA.RESTORE: HSMA.RESTORE, HUA.REMOVE: HSMA.REMOVE,
                HUA.CANCEL: HSMA.CANCEL}
_HSMA_TO_HUA = {HSMA.NONE: HUA.NONE, HSMA.ARCHIVE: HUA.ARCHIVE, HSMA.RESTORE: HUA.RESTORE,
                HSMA.REMOVE: HUA.REMOVE, HSMA.CANCEL: HUA.CANCEL}

#: Settings and their defaults (mdt_hsm_cdt_init).
DEFAULTS: dict[str, Any] = {
    "max_requests": 3,
    "active_request_timeout": 3600.0,
    "loop_period": 10.0,
    "grace_delay": 60.0,
    "default_archive_id": DEFAULT_ARCHIVE_ID,
    "policy": "NRA",
    "hsm_control": "enabled",
}


def _name(enum: Any, value: int) -> str:
    try:
        return str(enum(value).name)
    except ValueError:
        return str(value)


@dataclass(eq=False)
class Record:
    """One record of the action log (``struct llog_agent_req_rec``)."""

    index: int
    cookie: int
    action: int
    fid: Fid
    offset: int
    length: int
    data: bytes
    archive_id: int
    flags: int
    created: float
    changed: float
    status: ARS = ARS.WAITING
    gid: int = 0

    def item(self) -> hal.ActionItem:
        # the kernel sets hai_dfid = hai_fid when it records a request
        return hal.ActionItem(self.action, self.fid, self.fid, self.offset, self.length,
                              self.cookie, self.gid, self.data)

    def describe(self) -> dict[str, Any]:
        return {"cookie": self.cookie, "action": _name(HSMA, self.action), "fid": str(self.fid),
                "status": self.status.name, "archive_id": self.archive_id, "flags": self.flags}


@dataclass(eq=False)
class Running:
    """A running request (``struct cdt_agent_req``), by cookie."""

    rec: Record
    agent: int
    updated: float
    dfid: Fid
    cancel: Record | None = None
    extents: list[tuple[int, int]] = field(default_factory=list)
    #: the volatile file the MDT took as the restore's data FID (at its
    #: first progress or end), and every one a begin made, by FID
    volatile: Path | None = None
    volatiles: dict[Fid, Path] = field(default_factory=dict)

    def drop_volatiles(self) -> None:
        for path in self.volatiles.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.volatiles.clear()
        self.volatile = None

    def moved(self) -> int:
        """Bytes reported moved (the union of the progress extents)."""
        total, end = 0, -1
        for a, b in sorted(self.extents):
            if b <= end:
                continue
            total += b - max(a, end)
            end = b
        return total


@dataclass(eq=False)
class Agent:
    """A registered copytool (``struct hsm_agent``)."""

    id: int
    archives: tuple[int, ...]  # empty: every archive
    writer: asyncio.StreamWriter
    pid: int

    def serves(self, archive_id: int) -> bool:
        return not self.archives or archive_id in self.archives


@dataclass(eq=False)
class CookieStats:
    action: str
    fid: str
    sent: list[int] = field(default_factory=list)
    begins: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    status: str = "WAITING"
    timed_out: bool = False
    canceled: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "fid": self.fid, "sent": self.sent, "begins": self.begins,
                "progress": self.progress, "ends": self.ends, "status": self.status,
                "timed_out": self.timed_out, "canceled": self.canceled}


@dataclass(eq=False)
class _Hal:
    """An action list being built by a scan (``struct hsm_scan_request``)."""

    archive_id: int
    cancel: bool
    records: list[Record] = field(default_factory=list)
    used: int = 0


def _errno_of(e: BaseException) -> int:
    if isinstance(e, OSError) and e.errno:
        return int(e.errno)
    if isinstance(e, ValueError):
        return errno.EINVAL
    return errno.EIO


def _cstr(buf: bytes) -> str:
    nul = buf.find(b"\0")
    return os.fsdecode(buf if nul < 0 else buf[:nul])


def _unpack_copy(buf: bytes) -> tuple[int, int, int, hal.ActionItem]:
    if len(buf) < P.HSM_COPY_SIZE:
        raise ValueError(f"struct hsm_copy is {P.HSM_COPY_SIZE} bytes, got {len(buf)}")
    dv, flags, errval, _pad = P.HSM_COPY_HEAD.unpack_from(buf, 0)
    item = hal.parse_action_item(buf[P.HSM_COPY_HEAD.size:P.HSM_COPY_SIZE] + b"")
    return dv, flags, errval, item


def _pack_copy(dv: int, flags: int, errval: int, item: hal.ActionItem) -> bytes:
    raw = hal.pack_action_item(hal.ActionItem(item.action, item.fid, item.dfid, item.offset,
                                              item.length, item.cookie, item.gid))
    return P.HSM_COPY_HEAD.pack(dv, flags & 0xFFFF, errval & 0xFFFF, 0) + raw


def _volatile_version(path: Path) -> int:
    """A data version for a volatile file (simfs keeps none for them): it
    changes when the file is written."""
    st = os.stat(path)
    return ((st.st_ino << 40) ^ (st.st_size << 20) ^ st.st_mtime_ns) & ((1 << 63) - 1) or 1


def _alloc_fid(fs: SimFS) -> Fid:
    """A new FID from the tree's allocator (for a volatile file)."""
    return fs.alloc_fid()


class Mdt:
    """The coordinator state and the handlers; runs on one asyncio loop."""

    def __init__(self, root: str | os.PathLike[str], **params: Any) -> None:
        self.fs = SimFS.open(os.fspath(root))
        self.root = self.fs.root
        self.socket_path = P.socket_path(self.root)
        self.params = dict(DEFAULTS)
        self.set_params(params)
        self.records: dict[int, Record] = {}
        self.running: dict[int, Running] = {}
        self.agents: dict[int, Agent] = {}
        self.restore_handles: dict[Fid, list[asyncio.Future[None]]] = {}
        self.stats: dict[int, CookieStats] = {}
        self.max_running_seen = 0
        self.hals_sent = 0
        self._index = 0
        self._last_cookie = int(time.time())
        self._compound = 0
        self._next_agent = 1
        self._kick_pending = False
        self._server: asyncio.AbstractServer | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------- settings

    def set_params(self, params: dict[str, Any]) -> None:
        new = dict(self.params)
        for k, v in params.items():
            if k not in DEFAULTS:
                raise ValueError(f"unknown setting {k!r}")
            if k in ("max_requests", "default_archive_id"):
                v = int(v)
                if v <= 0:
                    raise ValueError(f"{k} must be > 0")
            elif k in ("active_request_timeout", "loop_period", "grace_delay"):
                v = float(v)
                if v <= 0 and k != "grace_delay":
                    raise ValueError(f"{k} must be > 0")
            elif k == "policy":
                words = str(v).replace("+", " ").split()
                if any(w not in ("NRA", "NBR") for w in words):
                    raise ValueError(f"unknown policy {v!r} (NRA, NBR)")
                v = " ".join(sorted(set(words)))
            elif k == "hsm_control":
                if v not in ("enabled", "disabled"):
                    raise ValueError("hsm_control is enabled or disabled")
            new[k] = v
        self.params = new

    @property
    def nra(self) -> bool:
        return "NRA" in self.params["policy"].split()

    @property
    def nbr(self) -> bool:
        return "NBR" in self.params["policy"].split()

    # -------------------------------------------------------------- server

    async def serve(self) -> None:
        self._prepare_socket()
        self._server = await asyncio.start_unix_server(self._connection, path=os.fspath(self.socket_path))
        self._housekeeping = asyncio.create_task(self._housekeeping_loop())
        log.info("MDT for %s (%s) listening on %s (max_requests=%s active_request_timeout=%s)",
                 self.root, self.fs.fsname, self.socket_path, self.params["max_requests"],
                 self.params["active_request_timeout"])
        await self._stopped.wait()
        self._server.close()
        if self._housekeeping:
            self._housekeeping.cancel()
        # let every connection end by itself: copytools' pipes closed,
        # blocked OPENs woken (they answer EIO: the file is still released)
        for agent in list(self.agents.values()):
            agent.writer.close()
        for fid in list(self.restore_handles):
            self._restore_handle_del(fid)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def stop(self) -> None:
        self._stopped.set()

    def _prepare_socket(self) -> None:
        if len(os.fsencode(self.socket_path)) >= 108:
            raise OSError(errno.ENAMETOOLONG, "Unix socket path too long (108 bytes max)",
                          str(self.socket_path))
        if self.socket_path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(os.fspath(self.socket_path))
                except OSError:
                    self.socket_path.unlink()  # stale
                else:
                    raise OSError(errno.EADDRINUSE, "an MDT already serves this tree", str(self.socket_path))

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.params["loop_period"])
            try:
                self.scan(housekeeping=True)
            except Exception:
                log.exception("housekeeping failed")

    def kick(self) -> None:
        """Schedule a scan (``mdt_hsm_cdt_event``)."""
        if self._kick_pending:
            return
        self._kick_pending = True

        def run() -> None:
            self._kick_pending = False
            try:
                self.scan(housekeeping=False)
            except Exception:
                log.exception("scan failed")

        asyncio.get_running_loop().call_soon(run)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
        try:
            head = await reader.readexactly(P.REQUEST.size)
            magic, op, _reserved, n = P.REQUEST.unpack(head)
            if magic != P.MAGIC or n > P.MAX_PAYLOAD:
                log.warning("bad request header %s from pid %d", head.hex(), pid)
                return
            payload = await reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if op == P.OP_REGISTER:
            await self._register(payload, reader, writer, pid, uid)
            return
        try:
            rc, answer = await self._dispatch(op, payload, uid)
        except Exception as e:  # a bug here must not kill the MDT
            log.exception("%s failed", P.OP_NAMES.get(op, op))
            rc, answer = -_errno_of(e), b""
        try:
            writer.write(P.ANSWER.pack(rc, len(answer)) + answer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _dispatch(self, op: int, payload: bytes, uid: int) -> tuple[int, bytes]:
        admin = uid == 0
        if op == P.OP_PING:
            return 0, b""
        if op == P.OP_OPEN:
            return await self.open(_cstr(payload), uid), b""
        handlers = {
            P.OP_UNREGISTER: self._op_unregister,
            P.OP_REQUEST: self._op_request,
            P.OP_COPY_START: self._op_copy_start,
            P.OP_PROGRESS: self._op_progress,
            P.OP_COPY_END: self._op_copy_end,
            P.OP_STATE_GET: self._op_state_get,
            P.OP_STATE_SET: self._op_state_set,
            P.OP_CURRENT_ACTION: self._op_current_action,
            P.OP_DATA_VERSION: self._op_data_version,
            P.OP_PATH2FID: self._op_path2fid,
            P.OP_FID2PATH: self._op_fid2path,
            P.OP_STATS: self._op_stats,
            P.OP_SET_PARAM: self._op_set_param,
            P.OP_SHUTDOWN_COPYTOOLS: self._op_shutdown_copytools,
            P.OP_GET_PARAM: self._op_get_param,
            P.OP_IMPORT: self._op_import,
        }
        handler = handlers.get(op)
        if handler is None:
            return -errno.EOPNOTSUPP, b""
        try:
            return handler(payload, admin)
        except (OSError, ValueError, struct.error) as e:
            if isinstance(e, struct.error):
                return -errno.EPROTO, b""
            log.debug("%s: %s", P.OP_NAMES.get(op, op), e)
            return -_errno_of(e), b""

    # ------------------------------------------------------------ copytools

    async def _register(self, payload: bytes, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, pid: int, uid: int) -> None:
        """``LL_IOC_HSM_CT_START``: the connection becomes the copytool's pipe."""
        try:
            if uid != 0:
                raise PermissionError(errno.EPERM, "copytool registration needs CAP_SYS_ADMIN")
            (count,) = struct.unpack_from("<I", payload, 0)
            archives = struct.unpack_from(f"<{count}I", payload, 4)
        except (OSError, struct.error) as e:
            rc = -errno.EPROTO if isinstance(e, struct.error) else -_errno_of(e)
            writer.write(P.ANSWER.pack(rc, 0))
            writer.close()
            return
        agent = Agent(self._next_agent, tuple(sorted(set(archives))) if 0 not in archives else (),
                      writer, pid)
        self._next_agent += 1
        writer.write(P.ANSWER.pack(0, 8) + struct.pack("<Q", agent.id))
        self.agents[agent.id] = agent
        log.info("copytool %d (pid %d) registered for archives %s", agent.id, pid,
                 list(agent.archives) or "ALL")
        self.kick()
        try:
            while await reader.read(4096):
                pass  # a copytool never writes on its pipe
        except ConnectionError:
            pass
        finally:
            self._unregister(agent.id, "connection closed")

    def _unregister(self, agent_id: int, why: str) -> bool:
        agent = self.agents.pop(agent_id, None)
        if agent is None:
            return False
        agent.writer.close()
        left = sum(1 for car in self.running.values() if car.agent == agent_id)
        log.info("copytool %d unregistered (%s): %d STARTED actions left in place", agent_id, why, left)
        return True

    def _op_unregister(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        (agent_id,) = struct.unpack_from("<Q", payload, 0)
        self._unregister(agent_id, "unregistered")
        return 0, b""

    def _op_shutdown_copytools(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        frame = hal.kuc_frame(b"", hal.KUC_TRANSPORT_GENERIC, hal.KUC_MSG_SHUTDOWN)
        for agent in list(self.agents.values()):
            if not agent.writer.is_closing():
                agent.writer.write(frame)
            self._unregister(agent.id, "shutdown")
        return 0, b""

    def _best_agent(self, archive_id: int) -> Agent | None:
        """``mdt_hsm_find_best_agent``: the least loaded copytool serving it."""
        best, load = None, -1
        for agent in self.agents.values():
            if agent.writer.is_closing() or not agent.serves(archive_id):
                continue
            n = sum(1 for car in self.running.values() if car.agent == agent.id)
            if best is None or n < load:
                best, load = agent, n
            if n == 0:
                break
        return best

    # ---------------------------------------------------------- the scan

    def scan(self, housekeeping: bool) -> None:
        """One pass of the coordinator thread over the log."""
        now = time.monotonic()
        if housekeeping:
            self._timeouts(now)
            self._purge(now)
        if self.params["hsm_control"] != "enabled":
            return
        max_requests = self.params["max_requests"]
        hals: list[_Hal] = []
        count = 0
        header = hal.HAL_HEADER_SIZE + hal.align8(len(self.fs.fsname.encode()) + 1)
        for rec in list(self.records.values()):
            if rec.status is not ARS.WAITING:
                continue
            if len(self.running) >= max_requests or count + len(self.running) >= max_requests:
                break
            size = hal.align8(hal.HAI_SIZE + len(rec.data))
            is_cancel = rec.action == HSMA.CANCEL
            target = next((h for h in hals if h.archive_id == rec.archive_id and h.cancel == is_cancel
                           and h.used + size <= LDLM_MAXREQSIZE), None)
            if target is None:
                target = _Hal(rec.archive_id, is_cancel, used=header)
                hals.append(target)
            target.records.append(rec)
            target.used += size
            count += 1
        if not self.agents:
            return
        for h in hals:
            if len(self.running) >= max_requests:
                break
            self._send(h, now)

    def _send(self, h: _Hal, now: float) -> None:
        """``mdt_hsm_agent_send``."""
        agent = self._best_agent(h.archive_id)
        if h.cancel:
            holders = [self.running[r.cookie].agent for r in h.records if r.cookie in self.running]
            if holders and holders[-1] in self.agents:
                agent = self.agents[holders[-1]]
        if agent is None and h.archive_id == 0 and not h.cancel:
            self._remove_in_each_archive(h, now)
            return
        if agent is None:
            log.debug("no copytool for archive %d: %d actions stay WAITING", h.archive_id, len(h.records))
            return
        if agent.writer.is_closing():
            # the kernel finds the export gone: it unregisters the agent, the
            # actions stay WAITING for the next scan
            log.info("copytool %d is gone: unregistering it", agent.id)
            self._unregister(agent.id, "send failed")
            self.kick()
            return
        # is every request still valid (cf. the file's HSM flags)?
        good: list[Record] = []
        for rec in h.records:
            if rec.action == HSMA.CANCEL:
                good.append(rec)
                continue
            why = self._still_compatible(rec)
            if why is None:
                good.append(rec)
                continue
            log.info("cookie %#x %s %s: %s, FAILED", rec.cookie, _name(HSMA, rec.action), rec.fid, why)
            self._finish(rec, ARS.FAILED, now)
            if rec.action == HSMA.RESTORE:
                self._restore_handle_del(rec.fid)
        if not good:
            return
        # register the requests (mdt_hsm_add_hsr)
        for rec in good:
            if rec.action == HSMA.CANCEL:
                orig = self.running.get(rec.cookie)
                if orig is None or orig.cancel is not None:
                    continue
                orig.rec.status = ARS.CANCELED
                orig.rec.changed = now
                orig.cancel = rec
                self._stat(orig.rec).canceled = True
                self._stat(orig.rec).status = ARS.CANCELED.name
                continue
            if rec.action == HSMA.ARCHIVE:
                try:
                    self.fs.archive_begin(rec.fid, rec.archive_id)  # EXISTS + archive id
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.info("cookie %#x ARCHIVE %s: %s", rec.cookie, rec.fid, e)
            self.running[rec.cookie] = Running(rec, agent.id, now, rec.fid)
        frame = hal.kuc_frame(hal.build_hal(hal.ActionList(
            fsname=self.fs.fsname, archive_id=h.archive_id, items=tuple(r.item() for r in good),
            flags=good[0].flags, compound_id=self._next_compound())))
        agent.writer.write(frame)
        self.hals_sent += 1
        for rec in good:
            if rec.status is ARS.WAITING:
                rec.status = ARS.STARTED
                rec.changed = now
            st = self._stat(rec)
            if rec.action != HSMA.CANCEL:
                st.sent.append(agent.id)
                st.status = rec.status.name
        self.max_running_seen = max(self.max_running_seen, len(self.running))
        log.debug("sent %d actions (archive %d, %d bytes) to copytool %d: %s", len(good), h.archive_id,
                  len(frame), agent.id, ", ".join(f"{_name(HSMA, r.action)} {r.fid} {r.cookie:#x}" for r in good))

    def _remove_in_each_archive(self, h: _Hal, now: float) -> None:
        """A REMOVE without archive id (its file is gone) and no copytool
        serving every archive: one new REMOVE per archive id a copytool
        serves, the original SUCCEED (mdt_hsm_send_action_to_each_archive).
        Other actions of the list stay WAITING."""
        served = sorted({aid for agent in self.agents.values() for aid in agent.archives})
        if not served:
            return
        for rec in h.records:
            if rec.action != HSMA.REMOVE:
                continue
            for aid in served:
                self._record(HSMA.REMOVE, hal.UserItem(rec.fid, rec.offset, rec.length), aid, 0,
                             rec.data, 0, now)
            self._finish(rec, ARS.SUCCEED, now)
            log.info("cookie %#x REMOVE %s without archive id: sent to archives %s", rec.cookie,
                     rec.fid, served)
        self.kick()

    def _next_compound(self) -> int:
        self._compound += 1
        return self._compound

    def _still_compatible(self, rec: Record) -> str | None:
        try:
            path = self.fs.path_of(rec.fid)
            attrs = self.fs.hsm_state(path)
        except FileNotFoundError:
            return None if rec.action == HSMA.REMOVE else "the file is gone"
        except OSError as e:
            return str(e)
        rc = check_request(rec.action, attrs.flags, attrs.archive_id, rec.archive_id, HSM_FORCE_ACTION)
        return None if rc is None else "no longer compatible with the file's HSM state"

    def _timeouts(self, now: float) -> None:
        """``mdt_cdt_started_cb``: STARTED records without news are CANCELED,
        and nobody is told."""
        timeout = self.params["active_request_timeout"]
        for rec in list(self.records.values()):
            if rec.status is not ARS.STARTED:
                continue
            car = self.running.get(rec.cookie)
            last = car.updated if car is not None else rec.changed
            if now <= last + timeout:
                continue
            log.info("cookie %#x %s %s: no progress for %.1f s, CANCELED", rec.cookie,
                     _name(HSMA, rec.action), rec.fid, now - last)
            if car is not None:
                del self.running[rec.cookie]
                car.drop_volatiles()
            if rec.action == HSMA.RESTORE:
                self._restore_handle_del(rec.fid)
            rec.status = ARS.CANCELED
            rec.changed = now
            st = self._stat(car.rec if car is not None else rec)
            st.timed_out = True
            st.status = ARS.CANCELED.name
            self.kick()

    def _purge(self, now: float) -> None:
        grace = self.params["grace_delay"]
        for key, rec in list(self.records.items()):
            if rec.status in (ARS.WAITING, ARS.STARTED):
                continue
            if rec.changed + grace < now:
                del self.records[key]

    def _finish(self, rec: Record, status: ARS, now: float) -> None:
        rec.status = status
        rec.changed = now
        if rec.action != HSMA.CANCEL:
            self._stat(rec).status = status.name

    def _stat(self, rec: Record) -> CookieStats:
        st = self.stats.get(rec.cookie)
        if st is None:
            st = self.stats[rec.cookie] = CookieStats(_name(HSMA, rec.action), str(rec.fid))
        return st

    # ---------------------------------------------------------- requests

    def _op_request(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        try:
            req = hal.parse_user_request(payload)
        except ValueError:
            return -errno.EPROTO, b""
        return self.request(req, admin), b""

    def request(self, req: hal.UserRequest, admin: bool) -> int:
        """``mdt_hsm_request`` + ``mdt_hsm_add_actions``; returns 0 or -errno."""
        if not req.items:
            return 0
        if req.action == HUA.RELEASE:
            return self._release(req)
        action = _HUA_TO_HSMA.get(req.action)  # type: ignore[call-overload]
        if action is None:
            return -errno.EINVAL
        items: list[hal.UserItem] = []
        for it in req.items:  # get rid of duplicate FIDs
            if all(it.fid != o.fid for o in items):
                items.append(it)
        if any(not (it.fid.seq >= FID_SEQ_START and it.fid.ver == 0) for it in items):
            return -errno.EINVAL
        hal_archive_id = req.archive_id
        cookies: list[int] = [0] * len(items)
        if action == HSMA.CANCEL:  # hsm_find_compatible: by FID
            for rec in self.records.values():
                if rec.status not in (ARS.WAITING, ARS.STARTED) or rec.action == HSMA.CANCEL:
                    continue
                for k, it in enumerate(items):
                    if it.fid == rec.fid:
                        cookies[k] = rec.cookie
                        if hal_archive_id == 0:
                            hal_archive_id = rec.archive_id
        rc = 0
        is_restore = False
        now = time.monotonic()
        for k, it in enumerate(items):
            archive_id = hal_archive_id
            if action == HSMA.RESTORE:
                is_restore = True
            if action == HSMA.CANCEL and cookies[k] == 0:
                continue  # cancel of nothing
            attrs = None
            try:
                attrs = self.fs.hsm_state(self.fs.path_of(it.fid))
            except OSError as e:
                if not (admin and action in (HSMA.REMOVE, HSMA.CANCEL)):
                    return -_errno_of(e)
            if attrs is not None and not admin and action != HSMA.RESTORE:
                return -errno.EPERM  # user/group/other_request_mask: RESTORE only
            if attrs is not None and action != HSMA.CANCEL:
                verdict = check_request(action, attrs.flags, attrs.archive_id, archive_id, req.flags)
                if verdict == 0:
                    continue  # not needed
                if verdict is not None:
                    return -verdict
                if archive_id == 0:
                    archive_id = attrs.archive_id or self.params["default_archive_id"]
                if action == HSMA.RESTORE:
                    if it.offset != 0:
                        return -errno.EPROTO
                    if it.fid in self.restore_handles:
                        continue  # a restore of this FID is queued or running already
                    self.restore_handles[it.fid] = []
            self._record(action, it, archive_id, req.flags, req.data, cookies[k], now)
        if is_restore and self.nbr:
            rc = -errno.ENODATA
        self.kick()
        return rc

    def _record(self, action: int, it: hal.UserItem, archive_id: int, flags: int, data: bytes,
                cookie: int, now: float) -> Record:
        """``mdt_agent_record_add``."""
        if action != HSMA.CANCEL:
            self._last_cookie += 1
            cookie = self._last_cookie
        self._index += 1
        rec = Record(self._index, cookie, action, it.fid, it.offset, it.length, bytes(data),
                     archive_id, flags, now, now)
        self.records[rec.index] = rec
        if action != HSMA.CANCEL:
            self._stat(rec)
        log.debug("recorded %s %s cookie %#x archive %d flags %#x", _name(HSMA, action), it.fid,
                  cookie, archive_id, flags)
        return rec

    def _release(self, req: hal.UserRequest) -> int:
        """HUA_RELEASE is done by the client (ll_hsm_release), file by file."""
        for it in req.items:
            try:
                self.fs.release(self.fs.path_of(it.fid))
            except (OSError, ValueError) as e:
                return -_errno_of(e)
        return 0

    def _restore_handle_del(self, fid: Fid) -> None:
        for fut in self.restore_handles.pop(fid, []):
            if not fut.done():
                fut.set_result(None)

    async def open(self, path: str, uid: int) -> int:
        """A client opening (reading) a released file: a blocking RESTORE
        (ll_layout_restore), then the wait for the layout lock."""
        try:
            fid = self.fs.fid_of(path)
            attrs = self.fs.hsm_state(path)
        except (OSError, ValueError) as e:
            return -_errno_of(e)
        if not attrs.flags & HS.RELEASED:
            return 0
        rc = self.request(hal.UserRequest(HUA.RESTORE, 0, HSM_REQ_BLOCKING,
                                          (hal.UserItem(fid, 0, LUSTRE_EOF),)), uid == 0)
        if rc < 0:
            return rc
        waiters = self.restore_handles.get(fid)
        if waiters is not None:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters.append(fut)
            await fut
        try:
            attrs = self.fs.hsm_state(path)
        except (OSError, ValueError) as e:
            return -_errno_of(e)
        return -errno.EIO if attrs.flags & HS.RELEASED else 0

    # -------------------------------------------------- copytool progress

    def _op_copy_start(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        """``ll_ioc_copy_start`` (+ the volatile file of a RESTORE, which the
        real library creates itself)."""
        if not admin:
            return -errno.EPERM, b""
        dv, flags, errval, item = _unpack_copy(payload)
        car = self.running.get(item.cookie)
        volatile: Path | None = None
        hpk = hal.Progress(item.fid, item.cookie, item.offset, 0, 0, 0)
        rc = 0
        if item.action == HSMA.ARCHIVE:
            try:
                dv = self.fs.data_version(self.fs.path_of(item.fid))
            except (OSError, ValueError) as e:
                rc = -_errno_of(e)
                hpk = hal.Progress(item.fid, item.cookie, item.offset, 0,
                                   HP_FLAG_RETRY | HP_FLAG_COMPLETED, -rc)
        elif item.action == HSMA.RESTORE and car is not None and car.rec.action == HSMA.RESTORE:
            try:
                _start, volatile = self.fs.restore_begin(item.fid)
                dfid = _alloc_fid(self.fs)
            except (OSError, ValueError) as e:
                self._stat(car.rec).begins.append({"rc": -_errno_of(e), "error": str(e)})
                return -_errno_of(e), b""
            item = hal.ActionItem(item.action, item.fid, dfid, item.offset, item.length, item.cookie,
                                  item.gid)
        rc2 = self.progress(hpk, 0, "begin")
        rc = rc or rc2
        if volatile is not None and car is not None:
            if rc == 0:
                # the MDT learns it at the first progress or end (mdt_hsm_update_request_state)
                car.volatiles[item.dfid] = volatile
            else:
                with contextlib.suppress(FileNotFoundError):
                    volatile.unlink()
                item = hal.ActionItem(item.action, item.fid, item.fid, item.offset, item.length,
                                      item.cookie, item.gid)
                volatile = None
        if car is not None:
            entry: dict[str, Any] = {"rc": rc, "time": time.time()}
            if item.action == HSMA.ARCHIVE:
                entry["data_version"] = dv
            if volatile is not None:
                entry["dfid"] = str(item.dfid)
            self._stat(car.rec).begins.append(entry)
        if rc < 0:
            return rc, b""
        out = _pack_copy(dv, flags, errval, item)
        if volatile is not None:
            out += os.fsencode(volatile) + b"\0"
        return 0, out

    def _op_progress(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        if not admin:
            return -errno.EPERM, b""
        return self.progress(hal.unpack_progress(payload[:48]), 0, "progress"), b""

    def _op_copy_end(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        """``ll_ioc_copy_end``: the final progress, with the data version
        check of an ARCHIVE."""
        if not admin:
            return -errno.EPERM, b""
        begin_dv, flags, errval, item = _unpack_copy(payload)
        flags |= HP_FLAG_COMPLETED
        rc = 0
        dv = 0
        if item.action in (HSMA.ARCHIVE, HSMA.RESTORE) and errval == 0:
            try:
                if item.action == HSMA.ARCHIVE:
                    dv = self.fs.data_version(self.fs.path_of(item.fid))
                else:
                    car = self.running.get(item.cookie)
                    vol = car.volatiles.get(item.fid) if car is not None else None
                    if vol is None:
                        raise FileNotFoundError(errno.ENOENT, "no such volatile file", str(item.fid))
                    dv = _volatile_version(vol)
            except (OSError, ValueError) as e:
                flags |= HP_FLAG_RETRY
                errval = _errno_of(e)
                rc = -errval
            else:
                if item.action == HSMA.ARCHIVE and begin_dv != dv:
                    log.info("cookie %#x %s: data version %d at begin, %d at end: EBUSY", item.cookie,
                             item.fid, begin_dv, dv)
                    flags &= ~HP_FLAG_RETRY
                    errval = errno.EBUSY
                    rc = -errno.EBUSY
        hpk = hal.Progress(item.fid, item.cookie, item.offset, item.length, flags, errval)
        rc2 = self.progress(hpk, dv, "end")
        return (rc or rc2), b""

    def progress(self, hpk: hal.Progress, data_version: int, source: str) -> int:
        """``mdt_hsm_update_request_state``: 0 or -errno."""
        car = self.running.get(hpk.cookie)
        rc = self._progress(car, hpk, data_version)
        if car is not None:
            entry = {"offset": hpk.offset, "length": hpk.length, "flags": hpk.flags,
                     "errval": hpk.errval, "rc": rc, "time": time.time()}
            st = self._stat(car.rec)
            if source == "end":
                entry["data_version"] = data_version
                st.ends.append(entry)
            elif source == "progress":
                st.progress.append(entry)
        elif source == "end" and hpk.cookie in self.stats:
            self.stats[hpk.cookie].ends.append({"errval": hpk.errval, "flags": hpk.flags, "rc": rc,
                                                "time": time.time()})
        elif source == "progress" and hpk.cookie in self.stats:
            self.stats[hpk.cookie].progress.append({"errval": hpk.errval, "flags": hpk.flags, "rc": rc,
                                                    "time": time.time()})
        return rc

    def _progress(self, car: Running | None, hpk: hal.Progress, data_version: int) -> int:
        if car is None:
            log.info("cannot find running request for cookie %#x on %s: ENOENT", hpk.cookie, hpk.fid)
            return -errno.ENOENT
        now = time.monotonic()
        car.updated = now
        rec = car.rec
        if rec.action != HSMA.REMOVE and hpk.errval == 0 and hpk.length != 0:
            end = min(hpk.offset + hpk.length, LUSTRE_EOF)
            car.extents.append((hpk.offset, end))
        if rec.action == HSMA.RESTORE and car.dfid == rec.fid:
            # the volatile FID comes back with the first progress (or the
            # end): from then on it is the one, a later begin's is EINVAL
            car.dfid = hpk.fid
            car.volatile = car.volatiles.get(hpk.fid)
        if rec.action in (HSMA.RESTORE, HSMA.ARCHIVE) and hpk.fid not in (car.dfid, rec.fid):
            log.info("progress on %s for cookie %#x matches neither %s nor %s: EINVAL", hpk.fid,
                     hpk.cookie, rec.fid, car.dfid)
            return -errno.EINVAL
        if hpk.errval != 0 and not hpk.flags & HP_FLAG_COMPLETED:
            log.info("progress on %s for cookie %#x: error %d but not completed: EINVAL", hpk.fid,
                     hpk.cookie, hpk.errval)
            return -errno.EINVAL
        if not hpk.flags & HP_FLAG_COMPLETED:
            return -errno.ECANCELED if car.cancel is not None else 0
        rc, status = self._completed(car, hpk, data_version)
        target = car.cancel if car.cancel is not None else rec
        if target.status in (ARS.STARTED, ARS.WAITING):
            target.status = status
            target.changed = now
        if status is ARS.WAITING and car.cancel is None:
            rec.status = ARS.WAITING  # retried: sent again with the same cookie
        self._stat(rec).status = rec.status.name
        self.running.pop(hpk.cookie, None)
        log.info("cookie %#x %s %s ended: errval %d -> %s%s", hpk.cookie, _name(HSMA, rec.action),
                 rec.fid, hpk.errval, status.name, f" (rc {rc})" if rc else "")
        self.kick()
        return rc

    def _completed(self, car: Running, hpk: hal.Progress, data_version: int) -> tuple[int, ARS]:
        """``hsm_cdt_request_completed``: the HSM flags, the restore swap."""
        rec = car.rec
        errval = hpk.errval
        rc = 0
        try:
            self.fs.path_of(rec.fid)
            exists = True
        except (OSError, ValueError):
            exists = False
        if errval != 0:
            if errval == errno.ENOSYS:
                status, errval = ARS.FAILED, errno.ECANCELED
            elif errval == errno.ECANCELED:
                status = ARS.SUCCEED
            elif self.nra or not hpk.flags & HP_FLAG_RETRY or not exists:
                status = ARS.FAILED
            else:
                status = ARS.WAITING
            if rec.action == HSMA.ARCHIVE and exists:
                try:
                    self.fs.archive_end(rec.fid, 0, errval)  # DIRTY "for safety" if archived
                except (OSError, ValueError) as e:
                    log.info("cookie %#x: %s", rec.cookie, e)
        else:
            status = ARS.SUCCEED
            try:
                if not exists:
                    pass
                elif rec.action == HSMA.ARCHIVE:
                    self.fs.archive_end(rec.fid, data_version, 0)
                elif rec.action == HSMA.RESTORE:
                    if car.volatile is None:
                        raise FileNotFoundError(errno.ENOENT, "the copytool never began this restore")
                    self.fs.restore_end(rec.fid, car.volatile, 0)
                    car.volatile = None
                elif rec.action == HSMA.REMOVE:
                    self.fs.remove_end(rec.fid, 0)
            except (OSError, ValueError) as e:
                rc = -_errno_of(e)
                log.info("cookie %#x %s %s: %s", rec.cookie, _name(HSMA, rec.action), rec.fid, e)
                if rec.action == HSMA.RESTORE:
                    if self.nra:
                        status = ARS.FAILED
                else:
                    status = ARS.FAILED
        if rec.action == HSMA.RESTORE:
            if car.volatile is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.fs.restore_end(rec.fid, car.volatile, errval or errno.EIO)  # deletes it
            car.volatiles.pop(car.dfid, None)
            car.drop_volatiles()
            if status is ARS.WAITING:
                return rc, status  # retried: the restore handle (layout lock) is kept
            self._restore_handle_del(rec.fid)
        return rc, status

    # -------------------------------------------------------- file state

    def _path(self, payload: bytes) -> str:
        path = _cstr(payload)
        if not path:
            raise FileNotFoundError(errno.ENOENT, "empty path")
        return path

    def _volatile_fid(self, path: str) -> Fid | None:
        real = Path(os.path.realpath(path))
        if real.parent != self.fs.volatile_dir:
            return None
        for car in self.running.values():
            for fid, path in car.volatiles.items():
                if path == real:
                    return fid
        raise FileNotFoundError(errno.ENOENT, "not a volatile file of a running restore", path)

    def _op_state_get(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        attrs = self.fs.hsm_state(self._path(payload))
        return 0, hal.pack_user_state(hal.UserState(attrs.flags, attrs.archive_id))

    def _op_state_set(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        """``mdt_hsm_state_set``."""
        valid, archive_id, setmask, clearmask = P.HSM_STATE_SET.unpack_from(payload, 0)
        path = self._path(payload[P.HSM_STATE_SET.size:])
        setmask = setmask if valid & P.HSS_SETMASK else 0
        clearmask = clearmask if valid & P.HSS_CLEARMASK else 0
        if (setmask | clearmask) & ~HSM_FLAGS_MASK:
            return -errno.EINVAL, b""
        if (setmask | clearmask) & ~HSM_USER_MASK and not admin:
            return -errno.EPERM, b""
        if not valid & P.HSS_ARCHIVE_ID and not (setmask | clearmask) & ~HSM_USER_MASK:
            self.fs.set_flags(path, set=setmask, clear=clearmask)
            return 0, b""
        return self._state_set_admin(path, setmask, clearmask,
                                     archive_id if valid & P.HSS_ARCHIVE_ID else None), b""

    def _state_set_admin(self, path: str, setmask: int, clearmask: int, archive_id: int | None) -> int:
        """What root may do that ``SimFS.set_flags`` does not offer (status
        flags, the archive id)."""
        try:
            self.fs.set_state(path, set=setmask, clear=clearmask, archive_id=archive_id)
        except OSError as exc:
            return -(exc.errno or errno.EINVAL)
        return 0

    def _op_current_action(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        """``mdt_hsm_get_action``: the first WAITING or STARTED record of the
        FID that is not a CANCEL."""
        fid = self.fs.fid_of(self._path(payload))
        for rec in self.records.values():
            if rec.fid != fid or rec.status not in (ARS.WAITING, ARS.STARTED) or rec.action == HSMA.CANCEL:
                continue
            state = HPS.WAITING if rec.status is ARS.WAITING else HPS.RUNNING
            length = rec.length
            car = self.running.get(rec.cookie)
            if rec.status is ARS.STARTED and car is not None:
                length = car.moved()
            return 0, hal.pack_current_action(hal.CurrentAction(state, _HSMA_TO_HUA[HSMA(rec.action)],
                                                                 rec.offset, length))
        return 0, hal.pack_current_action(hal.CurrentAction(hal.HPS_NONE, HUA.NONE, 0, 0))

    def _op_data_version(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        path = self._path(payload[8:])
        if self._volatile_fid(path) is not None:
            return 0, struct.pack("<Q", _volatile_version(Path(os.path.realpath(path))))
        return 0, struct.pack("<Q", self.fs.data_version(path))

    def _op_path2fid(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        path = self._path(payload)
        fid = self._volatile_fid(path)
        if fid is None:
            fid = self.fs.fid_of(path)
        return 0, fid.pack()

    def _op_import(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        """``LL_IOC_HSM_IMPORT`` (``ll_hsm_import``: root only) on the empty
        file llapi_hsm_import just created: it becomes released, archived
        in the archive given, with the size, owner, mode and times given."""
        if not admin:
            return -errno.EPERM, b""
        size, atime, mtime, atime_ns, mtime_ns, uid, gid, mode, archive_id = P.HSM_USER_IMPORT.unpack_from(payload)
        path = self._path(payload[P.HSM_USER_IMPORT.size:])
        fid = self.fs.import_existing(path, size, archive_id, uid, gid, mode,
                                      atime * 10**9 + atime_ns, mtime * 10**9 + mtime_ns)
        return 0, fid.pack()

    def _op_fid2path(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        fid = Fid.unpack(payload[:16])
        real = self.fs.path_of(fid)
        return 0, os.fsencode(real.relative_to(self.root)) + b"\0"

    # ------------------------------------------------------------- tests

    def _op_stats(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        out = {
            "fsname": self.fs.fsname,
            "params": self.params,
            "cookies": {str(c): st.as_json() for c, st in self.stats.items()},
            "records": [r.describe() for r in self.records.values()],
            "running": [{"cookie": c, "agent": car.agent, "canceled": car.cancel is not None,
                         "moved": car.moved()} for c, car in self.running.items()],
            "agents": [{"id": a.id, "archives": list(a.archives), "pid": a.pid,
                        "running": sum(1 for car in self.running.values() if car.agent == a.id)}
                       for a in self.agents.values()],
            "max_running_seen": self.max_running_seen,
            "hals_sent": self.hals_sent,
            # FID -> how many OPENs wait for its restore
            "restore_handles": {str(f): len(w) for f, w in self.restore_handles.items()},
        }
        return 0, json.dumps(out).encode()

    def _op_get_param(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        if not admin:
            return -errno.EACCES, b""  # debugfs on the MDS: root only
        if payload != b"active_requests":
            return -errno.ENOENT, b""
        return 0, "".join(self._active_request_line(car) for car in self.running.values()).encode()

    def _active_request_line(self, car: Running) -> str:
        """One line of ``hsm.active_requests``, formatted as
        ``mdt_hsm_active_requests_proc_show`` (mdt_hsm_cdt_requests.c) does
        with C's printf: ``%#llx`` prints 0 as ``0``; DFID is
        ``[%#llx:0x%x:0x%x]``; ``hai_data`` in ``%02X`` pairs, at most 5
        bytes (``hai_dump_data_field`` into a 12-byte buffer)."""

        def x(v: int) -> str:
            return f"{v:#x}" if v else "0"

        def dfid(f: Fid) -> str:
            return f"[{x(f.seq)}:0x{f.oid:x}:0x{f.ver:x}]"

        rec = car.rec
        data = "".join(f"{b:02X}" for b in rec.data[:5])
        return (f"fid={dfid(rec.fid)} dfid={dfid(car.dfid)} compound/cookie={x(0)}/{x(rec.cookie)} "
                f"action={_name(HSMA, rec.action)} archive#={rec.archive_id} flags={x(rec.flags)} "
                f"extent={x(rec.offset)}-{x(rec.length)} gid={x(rec.gid)} data=[{data}] "
                f"canceled={int(car.cancel is not None)} uuid={self._agent_uuid(car.agent)} done={car.moved()}\n")

    @staticmethod
    def _agent_uuid(agent: int) -> str:
        return f"{agent:08x}-5374-616e-6469-6e2d4d445430"

    def _op_set_param(self, payload: bytes, admin: bool) -> tuple[int, bytes]:
        params = json.loads(payload or b"{}")
        if params:
            if not admin:
                return -errno.EPERM, b""
            self.set_params(params)
            self.kick()
        return 0, json.dumps(self.params).encode()


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, mdt: Mdt) -> Iterator[None]:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, mdt.stop)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _amain(args: argparse.Namespace) -> None:
    mdt = Mdt(args.root, max_requests=args.max_requests,
              active_request_timeout=args.active_request_timeout, loop_period=args.loop_period,
              grace_delay=args.grace_delay, default_archive_id=args.default_archive_id,
              policy=args.policy)
    with _signals(asyncio.get_running_loop(), mdt):
        await mdt.serve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lustre_standin.mdt",
                                 description="A simulated Lustre MDT (HSM coordinator) for a simfs tree.")
    ap.add_argument("--root", required=True, help="the simfs tree it is the MDT of")
    ap.add_argument("--max-requests", type=int, default=DEFAULTS["max_requests"])
    ap.add_argument("--active-request-timeout", type=float, default=DEFAULTS["active_request_timeout"])
    ap.add_argument("--loop-period", type=float, default=DEFAULTS["loop_period"])
    ap.add_argument("--grace-delay", type=float, default=DEFAULTS["grace_delay"])
    ap.add_argument("--default-archive-id", type=int, default=DEFAULTS["default_archive_id"])
    ap.add_argument("--policy", default=DEFAULTS["policy"], help='"NRA" (default), "", "NBR" or "NRA NBR"')
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s mdt %(levelname)s %(message)s")
    try:
        asyncio.run(_amain(args))
    except (OSError, ValueError) as e:
        print(f"mdt: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
