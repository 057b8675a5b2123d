"""Restores on behalf of a mount's blocked readers: one request per file
however many readers wait for it, a watch on the coordinator feeding each
file's :class:`~hsmfs.waits.Wait`, and a verdict that wakes them all.

Several mounts (initiators) reading one file each send a request; the
coordinator merges them into one restore (one action), and each mount
watches that action. The requests are flagged blocking
(``HSM_REQ_BLOCKING``) and carry the mount's initiator id and the reader's
uid and gid.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hsm.fid import Fid
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import types_pb2 as tpb
from hsmfs.waits import DEFAULT_STALL, ENDED, Facts, Wait

log = logging.getLogger("hsmfs.restorer")

#: HSM_REQ_BLOCKING: a reader waits for this restore (an implicit restore)
REQ_BLOCKING = 0x4
#: in no-block mode, a file's restore is asked for again at most this often (s)
NOBLOCK_REPEAT = 30.0


class Submitter(Protocol):
    """What the restorer needs of the coordinator (a
    :class:`hsm.client.CoordinatorClient`): ``submit`` returns one result
    per item; ``watch`` yields the action at each change until it ended,
    raising ``hsm.client.DeadlineExceeded`` when *deadline* seconds pass
    first."""

    def submit(self, items: Iterable[cpb.SubmitItem], batch_size: int = ...) -> list[cpb.SubmitResult]: ...

    def watch(self, action_ids: Iterable[int], deadline: float | None = None) -> Iterator[tpb.Action]: ...


@dataclass(slots=True)
class _Pending:
    wait: Wait
    done: threading.Event = field(default_factory=threading.Event)
    readers: int = 0


@dataclass(frozen=True, slots=True)
class File:
    """A released file as a reader found it."""

    fsname: str
    fid: Fid
    path: str  # from the tree's root, for the policy's admission rules
    size: int
    flags: int
    archive_id: int
    data_version: int = 0
    ctime_ns: int = 0  # read after the flags: a late duplicate is answered with the restore that did it


class Restorer:
    def __init__(self, client: Submitter, initiator: str, *, stall: float = DEFAULT_STALL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.initiator = initiator
        self.stall = stall
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Fid, _Pending] = {}
        self._asked: dict[Fid, float] = {}  # no-block mode: when each file was asked for
        self._closed = ""
        #: restores asked for (one per file and wait, whatever the readers)
        self.requests = 0

    # -- what readers call -----------------------------------------------

    def restore(self, file: File, uid: int = 0, gid: int = 0) -> tuple[int, str]:
        """Block until *file* is back: (0, why) to read it, or (errno, why)."""
        with self._lock:
            if self._closed:
                return errno.EIO, self._closed
            pending = self._pending.get(file.fid)
            first = pending is None
            if pending is None:
                pending = self._pending[file.fid] = _Pending(Wait(self.clock(), self.stall))
            pending.readers += 1
        if first:
            threading.Thread(target=self._follow, args=(file, pending, uid, gid),
                             name=f"restore {file.fid}", daemon=True).start()
        wait = pending.wait
        try:
            # the watcher wakes the readers at the verdict; the readers keep
            # the stall bound themselves too (a request that hangs, say)
            while not pending.done.wait(max(0.05, wait.remaining(self.clock()))):
                with self._lock:
                    if wait.tick(self.clock()) is not None:
                        break
        finally:
            with self._lock:
                pending.readers -= 1
        verdict = wait.verdict
        return (errno.EIO if verdict is None else verdict), wait.why

    def ask(self, file: File, uid: int = 0, gid: int = 0) -> None:
        """No-block mode: ask for the restore (at most once per
        :data:`NOBLOCK_REPEAT` s per file) and return at once."""
        now = self.clock()
        with self._lock:
            if self._closed or now - self._asked.get(file.fid, -NOBLOCK_REPEAT) < NOBLOCK_REPEAT:
                return
            self._asked[file.fid] = now
        try:
            self._submit(file, uid, gid, flags=0)
        except Exception as exc:  # the reader gets ENODATA anyway; say why it may never come
            log.warning("%s %s: restore request failed: %s", file.fid, file.path, exc)

    def close(self, why: str) -> None:
        """Every blocked reader gets EIO (*why*) now, and later ones at once."""
        with self._lock:
            self._closed = why
            pending = list(self._pending.values())
            for p in pending:
                p.wait.fail(errno.EIO, why)
        for p in pending:
            p.done.set()

    def waiting(self) -> int:
        """Files readers wait for now."""
        with self._lock:
            return len(self._pending)

    # -- the watcher -----------------------------------------------------

    def _submit(self, file: File, uid: int, gid: int, flags: int) -> cpb.SubmitResult:
        from hsm.client import submit_item

        item = submit_item(file.fsname, file.fid, "restore",
                           requester=tpb.Requester(initiator=self.initiator, uid=uid, gid=gid),
                           hsm=(file.flags, file.archive_id, file.data_version, file.ctime_ns), flags=flags, path=file.path, size=file.size)
        with self._lock:
            self.requests += 1
        [result] = self.client.submit([item])
        return result

    def _follow(self, file: File, pending: _Pending, uid: int, gid: int) -> None:
        wait = pending.wait
        try:
            self._run(file, wait, uid, gid)
        except Exception as exc:
            with self._lock:
                wait.fail(errno.EIO, f"restore request failed: {exc}")
        finally:
            with self._lock:
                if self._pending.get(file.fid) is pending:
                    del self._pending[file.fid]
            pending.done.set()
            level = logging.INFO if wait.verdict == 0 else logging.WARNING
            log.log(level, "%s %s: %s", file.fid, file.path, wait.why or "gave up")

    def _run(self, file: File, wait: Wait, uid: int, gid: int) -> None:
        from hsm.client import DeadlineExceeded

        result = self._submit(file, uid, gid, flags=REQ_BLOCKING)
        outcome = cpb.SubmitOutcome.Name(result.outcome)
        if not result.action_id:
            with self._lock:
                if result.outcome == cpb.REJECTED or result.errno:
                    wait.fail(errno.EIO, f"restore refused ({outcome}): {result.reason or result.errno}")
                else:
                    wait.not_needed()
            return
        wait.action_id = result.action_id
        log.debug("%s %s: restore is action %d (%s)", file.fid, file.path, result.action_id, outcome)
        while wait.verdict is None:
            left = wait.remaining(self.clock())
            if left <= 0:
                with self._lock:
                    wait.tick(self.clock())
                break
            try:
                for action in self.client.watch([result.action_id], deadline=left):
                    facts = Facts(action.state, action.attempt, action.bytes_done, action.queue_position,
                                  action.errno, action.error)
                    with self._lock:
                        verdict = wait.observe(self.clock(), facts)
                    if verdict is not None:
                        return
                    if facts.state in ENDED:
                        return
            except DeadlineExceeded:
                pass
            with self._lock:
                wait.tick(self.clock())


def file_of(fs: object, real: Path) -> File:
    """The :class:`File` a reader of *real* (a path in simfs tree *fs*) asks for."""
    from hsm.simfs import SimFS

    assert isinstance(fs, SimFS)
    fid = fs.fid_of(real)
    version, attrs, st = fs.request_state(real)
    rel = real.relative_to(fs.root).as_posix()
    return File(fs.fsname, fid, "/" + rel, st.st_size, attrs.flags, attrs.archive_id, version, st.st_ctime_ns)
