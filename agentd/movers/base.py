"""The mover plugin contract.

agentd calls ``mover.run(job)`` in a worker thread, one thread per running
action. The mover reports progress through ``job.report()`` (thread-safe,
cheap: call it as often as you like, agentd rate-limits what it sends), and
must stop promptly once ``job.cancelled`` is set, returning
``Result(errno=ECANCELED)`` after it has cleaned up.

``run_action`` is the one lifecycle every mover uses (begin, op, end). Two
optional handle capabilities, used when the backend's handle has them (the
``lustre`` backend's does, simfs's does not):

* ``handle.progress(bytes_done, bytes_total)``: each ``job.report`` is also
  passed on (``llapi_hsm_action_progress``; the handle rate-limits it). An
  ``OSError`` from it stops the copy: ECANCELED (cancelled at the MDT) ends
  the action ECANCELED, ENOENT/EINVAL (the MDT no longer holds the request)
  fail it with that errno; other errors are logged and the copy goes on.
* ``handle.give_back(errno)``: an action that ends ECANCELED or with a
  transient error (``Result.retry``: the coordinator runs it again) is given
  back instead of ended: the backend lets go of it without telling the file
  system, whose request stays open for the next attempt. Success, a
  permanent failure and a refusal still call ``end``.

A backend whose ``begin_job(job)`` exists is begun with the whole job (the
lustre backend needs the requesters' MDT cookies), else with
``begin(fid, kind, archive_id)``.
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
from hsm.wire import KIND_NAMES

log = logging.getLogger(__name__)

#: errnos worth a retry: the same action may well succeed later.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EAGAIN, errno.ETIMEDOUT})


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for the action: an MDT (initiator ``lustre:<fsname>``, its
    ``hai_cookie`` and ``hai_gid``), ``hsmctl@host`` (cookie 0), ..."""

    initiator: str
    cookie: int = 0
    gid: int = 0


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
    #: the action's requesters, oldest first (the lustre backend begins and
    #: ends the action at the MDT with the cookies of its own fsname's MDT)
    requesters: tuple[Requester, ...] = ()
    #: whether the result may still be published (an object renamed into
    #: place, the action ended at the file system): False once the agent's
    #: lease on the action ended, when another agent may run it already
    may_publish: Callable[[], bool] = lambda: True
    #: RESTORE: the key of the copy to read, as the catalog has it from the
    #: archive that wrote it ("": the mover's default layout for the FID)
    object_key: str = ""
    #: ARCHIVE: False while other copies of the file are still to be made
    #: (in other archive ids): a success lets go of the action at the file
    #: system instead of ending it, so the file is not archived yet
    final: bool = True
    #: RESTORE/REMOVE of a packed file: the slice of the container
    #: ``object_key`` at *object_offset*, *object_length* bytes, checksum
    #: *object_checksum* ("ALGO:HEX")
    packed: bool = False
    object_offset: int = 0
    object_length: int = 0
    object_checksum: str = ""
    #: ARCHIVE striped over several agents (agent.proto StripeOrder,
    #: docs/striping.md): *stripe_above* > 0: the anchor (let go of a file
    #: that long, without copying); *stripe_part* > 0: part number
    #: *stripe_part* - 1 of *stripe_parts* (the extent is the job's);
    #: *stripe_seal*: seal the parts' object. *stripe_version* and
    #: *stripe_size*: the anchor's data version and size
    stripe_above: int = 0
    stripe_part: int = 0
    stripe_parts: int = 0
    stripe_version: int = 0
    stripe_size: int = 0
    stripe_seal: bool = False
    #: the seal: the parts' length (the last one shorter) and each part's checksum, in order
    stripe_part_length: int = 0
    stripe_checksums: tuple[str, ...] = ()

    def log_prefix(self) -> str:
        """``action ID/ATTEMPT KIND FID``: the prefix of every line about the action (hsm.logsetup)."""
        return f"action {self.action_id}/{self.attempt} {KIND_NAMES.get(self.kind, self.kind)} {self.fid}"


@dataclass(frozen=True, slots=True)
class Result:
    errno: int = 0  # 0 = success, positive errno otherwise (ECANCELED after a cancel); run_action makes it positive
    message: str = ""
    bytes_done: int = 0
    retry: bool = False  # transient failure: the coordinator may queue it again
    #: a successful archive: the copy written, for the coordinator's catalog
    copy: CopyMade | None = None
    #: the anchor of a striped archive let go of it without copying (its
    #: copy: the data version and size it began with)
    anchored: bool = False


@dataclass(frozen=True, slots=True)
class CopyMade:
    """What an archive wrote, as the catalog keeps it (agent.proto Copy)."""

    key: str = ""  # the object's key in the archive ("": the default layout's, from the FID)
    data_version: int = 0
    size: int = 0
    checksum: str = ""  # "ALGO:HEX"
    uid: int = 0
    gid: int = 0
    mode: int = 0
    path: str = ""  # the file's path when archived ("": unknown)
    container: str = ""  # a packed file: the container's key ("": an object of its own)
    slot: int = 0  # a packed file: its slice's offset in the container


class Mover(Protocol):
    """``run`` is called in a worker thread; a mover whose ``inline``
    attribute is true promises never to block and is called on the event
    loop instead (no thread hop: the null mover)."""

    name: str

    def run(self, job: Job) -> Result: ...


def kind_name(kind: int) -> str:
    """``archive``, ``restore``, ``remove`` (for messages and ``{kind}``)."""
    name = KIND_NAMES.get(kind)
    return name.lower() if name is not None else f"action kind {kind}"


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
        begin_job = getattr(job.backend, "begin_job", None)
        if begin_job is not None:
            handle: ActionHandle = begin_job(job)
            return handle
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

    give_back: Callable[[int], None] | None = getattr(handle, "give_back", None)
    stopped: list[OSError] = []  # what the handle's progress said to stop the copy
    report = job.report
    progress: Callable[[int, int], None] | None = getattr(handle, "progress", None)
    if progress is not None:
        job.report = _reporter(job, report, progress, stopped)

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
    finally:
        job.report = report
    # the agent's lease on the action ended (the mover was stopped for it, or
    # finished meanwhile): the action may run elsewhere now, and only that
    # attempt may end it at the file system
    lapsed = not job.may_publish()
    if lapsed:
        err, msg, retry = errno.ECANCELED, f"{kind_name(job.kind)} of {job.fid}: the agent's lease ended", True
    if stopped and err == errno.ECANCELED and not lapsed:
        # the file system stopped it (its progress answered an error); a copy
        # that finished anyway still ends, and the MDT has the last word
        stop = stopped[0]
        err, retry = stop.errno or errno.EIO, False
        msg = (f"{kind_name(job.kind)} of {job.fid} cancelled at the MDT" if err == errno.ECANCELED else
               f"{kind_name(job.kind)} of {job.fid} stopped: the MDT answered the progress with "
               f"{stop.strerror or stop}")

    err = abs(err)  # an errno's sign means nothing (llapi_hsm_action_end: abs(errval))
    try:
        if err and give_back is not None and (retry or err == errno.ECANCELED):
            give_back(err)  # the file system's request stays open for the next attempt
        elif err == 0 and not job.final and job.kind == HSMA.ARCHIVE:
            # a copy of several, not the last: the file is archived when the
            # last is made; its request stays open for the next copy
            if give_back is not None:
                give_back(0)
            else:
                handle.end(errno.EAGAIN, refused=True)  # as if never begun: the file is left as it was
        elif lapsed:
            handle.end(err, refused=True)  # as if this attempt never began: the file is left as it was
        else:
            handle.end(err, done)
    except OSError as exc:
        if err == 0:
            err = exc.errno or errno.EIO
            msg = f"{kind_name(job.kind)} of {job.fid} could not be completed: {exc.strerror or exc}"
            # a handle that gives back has ended the request at the file
            # system even when the end failed: no attempt can begin it again
            retry = is_transient(err) and give_back is None
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


#: errnos from ``handle.progress`` that stop the copy (the MDT cancelled the
#: request, or no longer holds it)
_PROGRESS_STOPS = frozenset({errno.ECANCELED, errno.ENOENT, errno.EINVAL})


def _reporter(job: Job, report: Callable[[int, int], None], progress: Callable[[int, int], None],
              stopped: list[OSError]) -> Callable[[int, int], None]:
    """``job.report`` that also passes the progress to the handle; an error
    that means the request is gone stops the copy (``job.cancelled``)."""

    def both(done: int, total: int) -> None:
        report(done, total)
        if stopped:
            return
        try:
            progress(done, total)
        except OSError as exc:
            if exc.errno in _PROGRESS_STOPS:
                log.info("%s: progress refused (%s): stopping the copy", job.log_prefix(), exc.strerror or exc)
                stopped.append(exc)
                job.cancelled.set()
            else:
                log.warning("%s: progress not delivered: %s", job.log_prefix(), exc)

    return both
