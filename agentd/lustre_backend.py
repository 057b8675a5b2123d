"""The ``lustre`` filesystem backend of agentd: the copytool calls of
liblustreapi (``llapi_hsm_action_begin/progress/end``, ``get_fd``,
``llapi_get_data_version``) on a Lustre client mount, through the one
binding ``hsm.lustre.api``.

The MDT stays the HSM authority: it marked each item STARTED when it sent it
to hsm-bridge, keeps the layout lock, and changes the file's HSM state when
the item ends. agentd begins and ends the item at the MDT *by cookie*, from
any client node, as coordinatool's movers do (reference
``liblustreapi-hsm.md`` sections 4-5).

Cookies
    An action's requesters travel in the Assignment. The ones whose
    initiator is ``lustre:<fsname>`` (the bridge's MDT items: ``hai_cookie``
    and ``hai_gid``) are this backend's cookies. An action with none
    (submitted to the coordinator directly, by hsmctl or a library client)
    fails at begin with EINVAL, not retried: the MDT knows nothing of it,
    so nothing here could begin or end it or change the file's HSM state;
    requests must go through the MDT (``lfs hsm_*``, which calls
    ``llapi_hsm_request``).

Joined requests
    The coordinator may join several MDT items into one action (the same
    file archived twice before the first was run). The first cookie is
    begun and carries the copy (a cookie the MDT no longer holds, ENOENT at
    begin, is skipped for the next one). Every other cookie is ended after
    the first, with ``begin(is_error)`` + ``end``: EALREADY when the copy
    succeeded (``hsm_cdt_request_completed`` does not mark the file DIRTY
    for EALREADY, as it does for other archive errors), else the first
    one's errno. A cookie that joins a RESTORE or REMOVE after it was
    assigned is not in the Assignment, and nothing here ends it (the
    bridge ends only actions that did not succeed).

The copytool handle
    ``llapi_hsm_action_begin`` wants a ``struct hsm_copytool_private``, and
    only ``llapi_hsm_copytool_register`` makes one, which also makes the
    node an HSM agent of the MDT. Two ways, ``copytool_handle``:

    ``fake`` (default): a handle built here, as coordinatool's mover does:
        the first fields of the library's struct (``magic``, ``mnt``,
        ``kuch``, ``mnt_fd``, ``open_by_fid_fd``, ``kuc`` at offsets 0, 8,
        16, 24, 28, 32; unchanged since 2.12) with ``mnt``, an fd of the
        mount and one of ``<mnt>/.lustre/fid``. begin/progress/end use only
        those three. The magic is *not* the library's (0xC0BE2001), so
        ``recv``, ``get_fd`` and ``unregister``, which check it, refuse the
        handle with EINVAL instead of following its NULL pointers. No
        registration: the MDT never sends this node a list, and nothing
        shows in ``mdt.*.hsm.agents``. Risk: it depends on the private
        layout of a library struct; a liblustreapi that moves those fields,
        or starts to check the magic in begin, breaks it (begin then fails
        with EINVAL and every action fails; check on each Lustre upgrade).
    ``register``: ``llapi_hsm_copytool_register`` for one archive id no
        request uses (``register_archive_id``, required). A real handle,
        no layout assumption. Risks: the node becomes an agent of the MDT:
        a request for that archive id would be sent here (agentd reads and
        ends such items with EINVAL, loudly); a node runs one agent, and
        every list the MDT sends the node is written to every copytool pipe
        on it, so on the bridge's node agentd's pipe receives the bridge's
        lists too (a thread reads and drops them, or the pipe would fill);
        registering needs CAP_SYS_ADMIN (both ways need root for the MDT's
        progress handler anyway).

Begin, progress, end
    ARCHIVE: begin opens the file by FID (``hai_dfid``); the mover reads a
    dup of that fd (``get_fd``). The data version (``LL_DV_RD_FLUSH``) is
    read at begin and again at ``end(0)``: a change fails the action with
    EBUSY, ended at the MDT with EBUSY (no retry), as lhsmtool_posix does;
    the MDT's own COPY_END check gives EBUSY too.
    RESTORE: begin creates the volatile file; the mover writes a dup of its
    fd; the fd stays open until ``end``, which swaps the layout (Lustre's
    volatile files have no name: ``volatile_path`` is
    ``/proc/<agentd pid>/fd/N``). REMOVE: begin, end.
    Progress goes to ``llapi_hsm_action_progress`` at most every
    ``progress_interval`` seconds (it restarts the MDT's
    ``active_request_timeout``); ECANCELED from it (the MDT cancelled the
    request) stops the copy, ENOENT (the MDT no longer holds it) fails it.
    ``end`` sends a positive errno; ``end(refused=True)`` is ESTALE.

Retries and cancels
    The coordinator retries a transient failure, and moves an action that
    was cancelled for its own reasons (agentd stopping, a stuck transfer
    reclaimed, a reconnect) to another agent, which begins *the same
    cookie*; an item ended at the MDT cannot be begun again (ENOENT). So
    an action that stops with ECANCELED (whoever asked) or with a
    transient error is not ended here: ``give_back`` lets go of the begun
    action (closes its fds and frees it, which needs the first fields of
    ``struct hsm_copyaction_private``: magic 0x19880429, ``source_fd``,
    ``data_fd``), and the MDT keeps the item STARTED for the next attempt.
    When the coordinator ends the action for good (CANCELED, or FAILED
    after its last attempt), the bridge ends the item at the MDT. Hence
    ``HP_FLAG_RETRY`` is not sent: with the MDT's default policy (NRA) it
    is ignored and the item fails, without NRA the MDT queues the item
    again and sends it to the bridge while the coordinator retries it too.
    Success, a permanent failure and a refusal are ended here (the
    bridge's own end of a failed action then answers ENOENT). If the
    struct is not the one expected, ``give_back`` falls back to ``end``
    with ``HP_FLAG_RETRY`` and the MDT's policy decides.
    The MDT takes a RESTORE's volatile FID as its data FID at the first
    progress; a later attempt's new volatile file would get EINVAL. So a
    restore is given back only before its first progress; after it, a
    transient failure ends it with the error (it fails, as under Lustre's
    own coordinator with its default policy).
    DNE: a RESTORE's volatile file is made on the MDT of the file
    (``llapi_get_mdt_index_by_fid``, as lhsmtool_posix does); a FID whose
    MDT cannot be found fails the restore with that error.
"""

from __future__ import annotations

import ctypes
import errno as E
import logging
import os
import select
import stat
import threading
import time
from ctypes import POINTER, Structure, c_char_p, c_int, c_int32, c_uint32, c_void_p
from typing import BinaryIO

from agentd.backend import FileInfo
from agentd.movers.base import Job, Requester
from hsm.fid import Fid
from hsm.hsmflags import HP_FLAG_COMPLETED, HP_FLAG_RETRY, HSMA, LUSTRE_EOF
from hsm.lustre import hal
from hsm.lustre.api import (
    LL_DV_RD_FLUSH,
    CopyAction,
    Copytool,
    HsmCopytoolPrivate,
    LustreApi,
    LustreApiUnavailable,
)

log = logging.getLogger(__name__)

#: The magic of a handle faked here: not the library's ``CT_PRIV_MAGIC``
#: (0xC0BE2001), so the calls that check it refuse the handle.
FAKE_CT_MAGIC = 0x48534D46  # "HSMF"
#: ``CP_PRIV_MAGIC`` of ``struct hsm_copyaction_private`` (liblustreapi_hsm.c).
CP_PRIV_MAGIC = 0x19880429
#: ``copytool_handle`` values.
HANDLES = ("fake", "register")
#: Functions every action needs; resolved at start so that a library that
#: lacks one is a configuration error, not a failure of every action.
NEEDED = ("llapi_hsm_action_begin", "llapi_hsm_action_end", "llapi_hsm_action_progress",
          "llapi_hsm_action_get_fd", "llapi_get_data_version", "llapi_get_mdt_index_by_fid")
NEEDED_REGISTER = ("llapi_hsm_copytool_register", "llapi_hsm_copytool_unregister",
                   "llapi_hsm_copytool_get_fd", "llapi_hsm_copytool_recv")


class LustreBackendError(Exception):
    """The backend cannot start (bad mount, library, settings): worded for
    the admin."""


class FakeCopytoolPrivate(Structure):
    """The first fields of ``struct hsm_copytool_private`` (LP64 offsets 0,
    8, 16, 24, 28, 32), the only ones begin/progress/end use."""

    _fields_ = [("magic", c_int), ("mnt", c_char_p), ("kuch", c_void_p), ("mnt_fd", c_int),
                ("open_by_fid_fd", c_int), ("kuc", c_void_p)]


class _CopyactionHead(Structure):
    """The first fields of ``struct hsm_copyaction_private``."""

    _fields_ = [("magic", c_uint32), ("source_fd", c_int32), ("data_fd", c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.free.argtypes = [c_void_p]
_libc.free.restype = None


def release(action: CopyAction) -> bool:
    """Free a begun action without ending it at the MDT: close the fds the
    library opened (``source_fd``, ``data_fd``) and free the struct. False,
    touching nothing, when the struct does not start with the magic of
    ``struct hsm_copyaction_private`` (another library version)."""
    if action.ended or not action.handle:
        return False
    head = ctypes.cast(action.handle, POINTER(_CopyactionHead))
    if head.contents.magic != CP_PRIV_MAGIC:
        return False
    for fd in (head.contents.source_fd, head.contents.data_fd):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    head.contents.magic = 0
    _libc.free(ctypes.cast(action.handle, c_void_p))
    action.handle = None
    action.ended = True
    return True


def _mask(kind: int) -> str:
    try:
        return HSMA(kind).name
    except ValueError:
        return str(kind)


class LustreAction:
    """One action begun at the MDT (an ``ActionHandle``)."""

    def __init__(self, backend: LustreBackend, job: Job, action: CopyAction, item: hal.ActionItem,
                 joined: list[hal.ActionItem]) -> None:
        self.fid = job.fid
        self.kind: int = job.kind
        self.archive_id = job.archive_id
        self._backend = backend
        self._api = backend.api
        self._job_prefix = job.log_prefix()
        self._action = action
        self._item = item
        self._joined = joined
        self._lock = threading.Lock()
        self._ended = False
        self._fd = -1  # ours: a dup of the source (ARCHIVE) or the volatile file (RESTORE)
        self._info: FileInfo | None = None
        self._dv_begin = 0
        self._last_progress = time.monotonic()
        self._want_dv = job.data_version != 0
        #: a RESTORE's progress reached the MDT: it holds this attempt's
        #: volatile file as the data FID, no other attempt can end the item
        self._volatile_taken = False
        try:
            if self.kind == HSMA.ARCHIVE:
                self._fd = action.fd()
                self._dv_begin = self._api.data_version(self._fd, LL_DV_RD_FLUSH)
                self._info = self._file_info(os.fstat(self._fd), self._dv_begin)
            elif self.kind == HSMA.RESTORE:
                self._fd = action.fd()
        except BaseException:
            self._close_fd()
            raise

    def __repr__(self) -> str:
        return f"LustreAction({_mask(self.kind)} {self.fid} cookie {self._item.cookie:#x})"

    @property
    def cookie(self) -> int:
        return self._item.cookie

    @property
    def joined_cookies(self) -> tuple[int, ...]:
        return tuple(i.cookie for i in self._joined)

    # -- what movers read ----------------------------------------------------

    @staticmethod
    def _file_info(st: os.stat_result, data_version: int) -> FileInfo:
        return FileInfo(size=st.st_size, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
                        atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, data_version=data_version)

    def info(self) -> FileInfo:
        """ARCHIVE: the source at begin (its data version read then). RESTORE
        and REMOVE: the file by FID, read on first use (a REMOVE's file may
        be gone: zeros); its data version only when the request named one
        (else 0: one MDT call less per restore)."""
        if self._info is not None:
            return self._info
        path = self._backend.path_of(self.fid)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.kind != HSMA.REMOVE:
                raise
            self._info = FileInfo(0, 0, 0, 0, 0, 0, 0)
            return self._info
        dv = 0
        if self._want_dv and stat.S_ISREG(st.st_mode):
            fd = self._api.open_by_fid(self._backend.mount, self.fid,
                                       os.O_RDONLY | os.O_NOATIME | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                dv = self._api.data_version(fd)
            finally:
                os.close(fd)
        self._info = self._file_info(st, dv)
        return self._info

    def _need(self, kind: HSMA, what: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{what}() is for {kind.name} actions, not {_mask(self.kind)} ({self.fid})")
        if self._ended:
            raise ValueError(f"{_mask(self.kind)} of {self.fid} has already ended")

    def source_path(self) -> str:
        """ARCHIVE: ``<mnt>/.lustre/fid/<fid>`` (opens the file's data)."""
        self._need(HSMA.ARCHIVE, "source_path")
        return self._backend.path_of(self.fid)

    def open_source(self) -> BinaryIO:
        """ARCHIVE: the file begun, opened by FID (a dup of ``get_fd``'s fd)."""
        self._need(HSMA.ARCHIVE, "open_source")
        fd = os.dup(self._fd)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def volatile_path(self) -> str:
        """RESTORE: ``/proc/<agentd pid>/fd/N``, the volatile file begin
        created (it has no name on Lustre); open until ``end``."""
        self._need(HSMA.RESTORE, "volatile_path")
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def open_volatile(self) -> BinaryIO:
        """RESTORE: the volatile file, emptied, opened for writing."""
        self._need(HSMA.RESTORE, "open_volatile")
        fd = os.dup(self._fd)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            return os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    # -- what movers tell ----------------------------------------------------

    def progress(self, bytes_done: int, bytes_total: int) -> None:
        """``llapi_hsm_action_progress`` of the extent copied so far, at most
        every ``progress_interval`` seconds. Raises ``OSError`` (ECANCELED:
        cancelled at the MDT)."""
        now = time.monotonic()
        with self._lock:
            if self._ended or now - self._last_progress < self._backend.progress_interval:
                return
            self._last_progress = now
            self._action.progress(self._item.offset, max(bytes_done, 0), max(bytes_total, 0))
            self._volatile_taken = self.kind == HSMA.RESTORE

    def end(self, errno: int, bytes_done: int = 0, *, refused: bool = False, retry: bool = False) -> None:
        """``llapi_hsm_action_end`` with a positive errno (*refused*: ESTALE;
        *retry*: ``HP_FLAG_RETRY``), then the joined cookies. ARCHIVE
        success re-reads the data version: changed, the action ends EBUSY
        and ``OSError(EBUSY)`` is raised. An end the MDT refuses raises its
        ``OSError`` (ENOENT: it no longer holds the request)."""
        if isinstance(errno, bool) or not isinstance(errno, int):
            raise ValueError(f"end() takes 0 or an errno, not {errno!r}")
        errno = abs(errno)
        if refused:
            if not errno:
                raise ValueError("a refused action ends with an errno, not 0")
            errno = E.ESTALE
        with self._lock:
            if self._ended:
                raise ValueError(f"{_mask(self.kind)} of {self.fid} has already ended")
            self._ended = True
        failure: OSError | None = None
        try:
            if errno == 0 and self.kind == HSMA.ARCHIVE:
                try:
                    after = self._api.data_version(self._fd, LL_DV_RD_FLUSH)
                except OSError as exc:
                    errno, failure = exc.errno or E.EIO, exc
                else:
                    if after != self._dv_begin:
                        errno = E.EBUSY
                        failure = OSError(E.EBUSY, f"{self.fid} changed while it was archived (data version "
                                                   f"{self._dv_begin} at begin, {after} at end)")
            flags = HP_FLAG_RETRY if retry and errno else 0
            log.debug("%s: %s %s ends at the MDT: cookie %#x errno %d", self._job_prefix, _mask(self.kind),
                      self.fid, self._item.cookie, errno)
            try:
                self._action.end(self._item.offset, self._item.length, flags, errno)
            except OSError as exc:
                if failure is None:
                    failure = exc
                    errno = errno or exc.errno or E.EIO
        finally:
            self._close_fd()
        self._end_joined(E.EALREADY if errno == 0 else errno)
        if failure is not None:
            raise failure

    def give_back(self, errno: int) -> None:
        """Let go of the begun action without ending it at the MDT (the
        coordinator runs it again, or the bridge ends it): its fds are
        closed and it is freed; the MDT keeps the request STARTED. Falls
        back to an end with ``HP_FLAG_RETRY`` when the library's
        ``struct hsm_copyaction_private`` is not the one expected.
        A RESTORE whose progress reached the MDT cannot be given back: the
        MDT took this attempt's volatile file as its data FID, and another
        attempt's would be EINVAL; it is ended with *errno* (the restore
        fails, as it would under Lustre's own coordinator)."""
        if self._volatile_taken:
            log.warning("%s: restore of %s cannot be tried again on cookie %#x (the MDT holds this attempt's "
                        "volatile file): ended at the MDT with errno %d", self._job_prefix, self.fid,
                        self.cookie, errno or E.EIO)
            try:
                self.end(errno or E.EIO)
            except OSError as exc:
                log.warning("%s: cookie %#x: %s", self._job_prefix, self.cookie, exc)
            return
        with self._lock:
            if self._ended:
                raise ValueError(f"{_mask(self.kind)} of {self.fid} has already ended")
            released = release(self._action)
            if released:
                self._ended = True
        if not released:
            log.warning("%s: cannot give cookie %#x back (unknown struct hsm_copyaction_private): ending "
                        "it at the MDT with errno %d and HP_FLAG_RETRY", self._job_prefix, self.cookie, errno)
            self.end(errno or E.EAGAIN, retry=True)
            return
        self._close_fd()
        log.debug("%s: cookie %#x given back (errno %d): it stays STARTED at the MDT", self._job_prefix,
                  self.cookie, errno)

    # -- internals -----------------------------------------------------------

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _end_joined(self, errval: int) -> None:
        for item in self._joined:
            try:
                self._backend.end_item(item, errval)
            except OSError as exc:
                level = logging.DEBUG if exc.errno == E.ENOENT else logging.WARNING
                log.log(level, "%s: joined cookie %#x: end with errno %d: %s", self._job_prefix, item.cookie,
                        errval, exc)


class LustreBackend:
    """A Lustre client mount, seen as a copytool sees it (a ``Backend``)."""

    def __init__(self, mount: str | os.PathLike[str], fsname: str, library: str | None = None, *,
                 copytool_handle: str = "fake", register_archive_id: int | None = None,
                 progress_interval: float = 5.0, api: LustreApi | None = None) -> None:
        self.mount = os.path.abspath(os.fspath(mount))
        self.fsname = fsname
        self.initiator = f"lustre:{fsname}"
        self.progress_interval = progress_interval
        self.copytool_handle = copytool_handle
        self._closed = False
        self._fds: list[int] = []
        self._fake: FakeCopytoolPrivate | None = None
        self._mnt_bytes = os.fsencode(self.mount)
        self._drain: threading.Thread | None = None
        self._stop = threading.Event()
        if copytool_handle not in HANDLES:
            raise LustreBackendError(f"copytool_handle must be one of {', '.join(HANDLES)}, "
                                     f"not {copytool_handle!r}")
        if not os.path.isdir(self.mount):
            raise LustreBackendError(f"mount {self.mount} is not an existing directory")
        if not os.path.isdir(os.path.join(self.mount, ".lustre", "fid")):
            raise LustreBackendError(f"{self.mount} is not the root of a Lustre client mount "
                                     "(it has no .lustre/fid directory)")
        self.api = api if api is not None else LustreApi(library)
        try:
            self.api.load()
            for name in NEEDED + (NEEDED_REGISTER if copytool_handle == "register" else ()):
                self.api.function(name)
        except LustreApiUnavailable as exc:
            raise LustreBackendError(str(exc)) from None
        try:  # the mount's root, for the ioctls that ask the mount (and the fake handle)
            self._mnt_fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LustreBackendError(f"cannot open {self.mount}: {exc.strerror or exc}") from None
        self._fds.append(self._mnt_fd)
        if copytool_handle == "register":
            if register_archive_id is None or not 1 <= register_archive_id <= 0x7FFFFFFF:
                raise LustreBackendError(
                    "copytool_handle register needs register_archive_id: an archive id (1..2147483647) "
                    "that no request uses (the MDT would send those requests to agentd)")
            self.copytool = self._register(register_archive_id)
        else:
            self.copytool = self._fake_handle()

    def __repr__(self) -> str:
        return f"LustreBackend({self.mount!r}, fsname={self.fsname!r}, handle={self.copytool_handle})"

    # -- the handle ------------------------------------------------------------

    def _fake_handle(self) -> Copytool:
        try:
            mnt_fd = self._mnt_fd
            fid_fd = os.open(".lustre/fid", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mnt_fd)
            self._fds.append(fid_fd)
        except OSError as exc:
            self._close_fds()
            raise LustreBackendError(f"cannot open {self.mount} and its .lustre/fid: {exc.strerror or exc}") from None
        self._fake = FakeCopytoolPrivate(FAKE_CT_MAGIC, self._mnt_bytes, None, mnt_fd, fid_fd, None)
        handle = ctypes.cast(ctypes.pointer(self._fake), POINTER(HsmCopytoolPrivate))
        return Copytool(self.api, handle, self.mount, ())

    def _register(self, archive_id: int) -> Copytool:
        try:
            ct = self.api.copytool_register(self.mount, [archive_id], os.O_NONBLOCK)
        except OSError as exc:
            raise LustreBackendError(f"llapi_hsm_copytool_register on {self.mount} (archive id {archive_id}) "
                                     f"failed: {exc.strerror or exc} (it needs root)") from None
        log.info("registered with the MDT of %s as the copytool of archive id %d (no request may use it)",
                 self.mount, archive_id)
        self._drain = threading.Thread(target=self._drain_lists, args=(ct,), name="lustre-drain", daemon=True)
        self._drain.start()
        return ct

    def _drain_lists(self, ct: Copytool) -> None:
        """Register mode: read what the MDT writes to our pipe. Lists for
        other archive ids are dropped by the library; an item for ours is
        ended with EINVAL (agentd takes work from the coordinator only)."""
        while not self._stop.is_set():
            try:
                fd = ct.fd()
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    continue
                raw = ct.recv()
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno in (E.EAGAIN, E.EINTR):
                    continue
                if not self._stop.is_set():
                    log.warning("reading the copytool pipe of %s stopped: %s", self.mount, exc)
                return
            parsed = hal.parse_hal(raw)
            for item in parsed.items:
                log.error("the MDT sent agentd's registration %s %s (cookie %#x, archive id %d): agentd "
                          "takes work from the coordinator only; ended with EINVAL. No request may use "
                          "register_archive_id", _mask(item.action), item.fid, item.cookie, parsed.archive_id)
                if item.action != HSMA.CANCEL:
                    try:
                        self.end_item(item, E.EINVAL)
                    except OSError as exc:
                        log.warning("cookie %#x: %s", item.cookie, exc)

    def close(self) -> None:
        """Unregister (register mode) and close the mount's fds. Actions
        still begun must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.copytool_handle == "register":
            try:
                self.copytool.unregister()
            except OSError as exc:
                log.warning("unregistering from %s: %s", self.mount, exc)
            if self._drain is not None:
                self._drain.join(2.0)
        else:
            self.copytool.closed = True
        self._close_fds()

    def _close_fds(self) -> None:
        while self._fds:
            try:
                os.close(self._fds.pop())
            except OSError:
                pass

    # -- Backend ---------------------------------------------------------------

    def path_of(self, fid: Fid) -> str:
        """``<mnt>/.lustre/fid/<fid>`` (opens the file by FID)."""
        return os.path.join(self.mount, ".lustre", "fid", fid.bare)

    def name_of(self, fid: Fid) -> str:
        """The file's path from the file system's root (``llapi_fid2path``), with a leading ``/``."""
        return "/" + self.api.fid2path(self.mount, fid).lstrip("/")

    def cookies(self, job: Job) -> list[Requester]:
        """The job's requesters that are this file system's MDT items, oldest
        first, each cookie once."""
        out: list[Requester] = []
        seen: set[int] = set()
        for r in job.requesters:
            if r.initiator == self.initiator and r.cookie and r.cookie not in seen:
                seen.add(r.cookie)
                out.append(r)
        return out

    def item_of(self, job: Job, requester: Requester) -> hal.ActionItem:
        """The ``struct hsm_action_item`` of the job for one MDT cookie (as
        the MDT sent it: ``hai_dfid`` = ``hai_fid``)."""
        length = LUSTRE_EOF if job.length < 0 else job.length
        return hal.ActionItem(job.kind, job.fid, job.fid, job.offset, length, requester.cookie,
                              requester.gid, job.data)

    def begin(self, fid: Fid, kind: int, archive_id: int) -> LustreAction:
        """Without the job there is no MDT cookie: EINVAL (see ``begin_job``)."""
        raise OSError(E.EINVAL, f"the lustre backend begins actions with the MDT's cookie; "
                                f"{_mask(kind)} of {fid} came without one")

    def begin_job(self, job: Job) -> LustreAction:
        """``llapi_hsm_action_begin`` with the job's first MDT cookie (one the
        MDT still holds). ``OSError``: EINVAL when the job has no cookie of
        this file system's MDT, else what begin answered (ENOENT: the MDT no
        longer holds any of them, or the file is gone)."""
        if self._closed:
            raise OSError(E.ESHUTDOWN, f"the lustre backend of {self.mount} is closed")
        if job.kind not in (HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE):
            raise OSError(E.EINVAL, f"{_mask(job.kind)} is not an action a copytool begins")
        reqs = self.cookies(job)
        if not reqs:
            raise OSError(E.EINVAL, f"{_mask(job.kind)} of {job.fid} has no request of the MDT of {self.fsname} "
                                    f"(no {self.initiator} cookie): the lustre backend needs the MDT's cookie; "
                                    "requests must go through the MDT (lfs hsm_*, or hsmctl on the Lustre mount)")
        items = [self.item_of(job, r) for r in reqs]
        # DNE: the volatile file of a restore goes on the file's MDT
        mdt_index = self.api.mdt_index_by_fid(self._mnt_fd, job.fid) if job.kind == HSMA.RESTORE else -1
        last: OSError | None = None
        for k, item in enumerate(items):
            try:
                action = self.api.action_begin(self.copytool, item, mdt_index, 0)
            except OSError as exc:
                if exc.errno == E.ENOENT and k + 1 < len(items):
                    log.info("%s: cookie %#x: begin answered ENOENT; trying the next cookie", job.log_prefix(),
                             item.cookie)
                    last = exc
                    continue
                raise
            try:
                handle = LustreAction(self, job, action, item, items[k + 1:])
            except BaseException:
                # begun, but not usable: let go of it; the coordinator runs it
                # again or fails it, and the bridge then ends the cookies
                if not release(action):
                    try:
                        action.end(item.offset, item.length, HP_FLAG_RETRY, E.EIO)
                    except OSError as exc:
                        log.warning("%s: cookie %#x: %s", job.log_prefix(), item.cookie, exc)
                raise
            if k:
                log.info("%s: began with cookie %#x (the MDT no longer holds %s)", job.log_prefix(), item.cookie,
                         ", ".join(f"{i.cookie:#x}" for i in items[:k]))
            return handle
        assert last is not None
        raise last

    def end_item(self, item: hal.ActionItem, errval: int) -> None:
        """End one MDT item without a copy: ``begin(is_error)`` + ``end``."""
        action = self.api.action_begin(self.copytool, item, -1, 0, is_error=True)
        action.end(item.offset, item.length, HP_FLAG_COMPLETED, errval)
