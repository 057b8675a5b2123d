"""The mover plugin contract.

agentd calls ``mover.run(job)`` in a worker thread, one thread per running
action. The mover reports progress through ``job.report()`` (thread-safe,
cheap: call it as often as you like, agentd rate-limits what it sends), and
must stop promptly once ``job.cancelled`` is set, returning
``Result(errno=ECANCELED)`` after it has cleaned up.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agentd.backend import ActionHandle, Backend, NotNeeded
from hsm.fid import Fid
from hsm.hsmflags import HSMA

log = logging.getLogger(__name__)

#: errnos worth a retry: the same action may well succeed later.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EAGAIN, errno.ETIMEDOUT})
_KIND_NAMES: dict[HSMA, str] = {
    HSMA.ARCHIVE: "archive",
    HSMA.RESTORE: "restore",
    HSMA.REMOVE: "remove",
}


@dataclass(slots=True)
class Job:
    action_id: int
    attempt: int
    kind: int  # HSMA.ARCHIVE / RESTORE / REMOVE
    fsname: str
    fid: Fid
    archive_id: int
    offset: int  # extent
    length: int  # -1: to end of file
    data: bytes  # hai_data hints, "key=value,..."
    flags: int
    backend: Backend
    report: Callable[[int, int], None] = lambda done, total: None  # (bytes_done, bytes_total)
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: the file's data version the request named (0: none): the file begun
    #: must have it, else the action ends ESTALE without moving data
    data_version: int = 0

    def log_prefix(self) -> str:
        return f"action {self.action_id}/{self.attempt} {self.fid}"


@dataclass(frozen=True, slots=True)
class Result:
    errno: int = 0  # 0 = success, positive errno otherwise (ECANCELED after a cancel); run_action makes it positive
    message: str = ""
    bytes_done: int = 0
    retry: bool = False  # transient failure: the coordinator may queue it again


class Mover(Protocol):
    """``run`` is called in a worker thread; a mover whose ``inline``
    attribute is true promises never to block and is called on the event
    loop instead (no thread hop: the null mover)."""

    name: str

    def run(self, job: Job) -> Result: ...


def kind_name(kind: int) -> str:
    """``archive``, ``restore``, ``remove`` (for messages and ``{kind}``)."""
    try:
        return _KIND_NAMES[HSMA(kind)]
    except (ValueError, KeyError):
        return f"action kind {kind}"


def is_transient(err: int, *, archive_side: bool = False) -> bool:
    """Whether a failure with ``err`` may succeed if the action is retried.

    EIO counts only on the archive side (a flaky archive mount); an EIO
    from the Lustre side, or a checksum mismatch, is not retried."""
    return err in TRANSIENT_ERRNOS or (archive_side and err == errno.EIO)


class MoverError(Exception):
    """A failed action: errno, a message for the admin, whether to retry."""

    def __init__(self, err: int, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message
        self.retry = retry


class Cancelled(Exception):
    """``job.cancelled`` was seen; the mover is unwinding."""


def begin_action(job: Job) -> ActionHandle | Result:
    """``backend.begin`` for a mover: the handle, or the Result that ends
    the action right away (not needed any more: success without moving
    data; an error: that errno)."""
    try:
        return job.backend.begin(job.fid, job.kind, job.archive_id)
    except NotNeeded as exc:
        log.info("%s: %s not needed: %s", job.log_prefix(), kind_name(job.kind), exc)
        return Result(message=f"not needed: {exc}")
    except OSError as exc:
        err = abs(exc.errno or errno.EIO)
        msg = f"cannot start {kind_name(job.kind)} of {job.fid}: {exc.strerror or exc}"
        log.error("%s: %s", job.log_prefix(), msg)
        return Result(errno=err, message=msg, retry=is_transient(err))


def stale_file(job: Job, handle: ActionHandle) -> str:
    """Why the file begun is not the one the request named, or "": the
    request named a data version (``job.data_version``) and the file has
    another. A FID alone does not tell a file from one of another file
    system with the same fsname."""
    if not job.data_version:
        return ""
    here = handle.info().data_version
    if here == job.data_version:
        return ""
    return (f"not the file the request named: data version {here} here, {job.data_version} in the "
            "request (a file of another file system with the same fsname and FID, or the file was "
            "written since the request); nothing copied")


def run_action(job: Job, mover: str, op: Callable[[Job, ActionHandle], int]) -> Result:
    """The life of one action for a mover: begin (or end at once when not
    needed), check that the file is the one the request named (else end
    ESTALE, not retried, without calling *op*), ``op(job, handle) -> bytes
    moved``, then ``handle.end`` exactly once whatever happened, and the
    Result. *op* signals failure by raising ``Cancelled``, ``MoverError`` or
    ``OSError``; any other exception is a bug, logged, and still ends the
    action (EIO)."""
    prefix = job.log_prefix()
    handle = begin_action(job)
    if isinstance(handle, Result):
        return handle

    stale = stale_file(job, handle)
    if stale:
        log.error("%s: %s of %s refused: %s", prefix, kind_name(job.kind), job.fid, stale)
        try:
            handle.end(errno.ESTALE, refused=True)  # the file is left as it was before begin
        except OSError as exc:
            log.warning("%s: ending the refused action also failed: %s", prefix, exc)
        except Exception:
            log.exception("%s: unexpected error ending the refused action", prefix)
        return Result(errno=errno.ESTALE, message=stale)

    err, msg, done, retry = 0, "", 0, False
    try:
        done = op(job, handle)
    except Cancelled:
        err, msg = errno.ECANCELED, f"{kind_name(job.kind)} of {job.fid} cancelled"
    except MoverError as exc:
        err, msg, retry = exc.errno, exc.message, exc.retry
    except OSError as exc:
        err = exc.errno or errno.EIO
        msg = f"{kind_name(job.kind)} of {job.fid} failed: {exc.strerror or exc}"
        retry = is_transient(err)
    except Exception as exc:  # a bug: still end the action
        log.exception("%s: unexpected error", prefix)
        err, msg = errno.EIO, f"internal error in {mover} mover: {exc!r}"

    err = abs(err)  # an errno's sign means nothing (llapi_hsm_action_end: abs(errval))
    try:
        handle.end(err, done)
    except OSError as exc:
        if err == 0:
            err = exc.errno or errno.EIO
            msg = f"{kind_name(job.kind)} of {job.fid} could not be completed: {exc.strerror or exc}"
            retry = is_transient(err)
        else:
            log.warning("%s: ending the failed action also failed: %s", prefix, exc)
    except Exception:
        log.exception("%s: unexpected error ending the action", prefix)
        if err == 0:
            err, msg = errno.EIO, "internal error ending the action"

    if err == 0:
        log.info("%s: %s done, %d bytes", prefix, kind_name(job.kind), done)
    elif err == errno.ECANCELED:
        log.info("%s: %s", prefix, msg)
    else:
        log.error("%s: %s (errno %d%s)", prefix, msg, err, ", will retry" if retry else "")
    return Result(errno=err, message=msg, bytes_done=done, retry=retry)
