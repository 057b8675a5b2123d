"""The ``command`` mover: runs a site command per action, like lhsmtool_cmd.

Each configured command is a string split with :func:`shlex.split` (no shell:
write ``sh -c '...'`` to get one), then each argument has its placeholders
replaced, so a substituted path with spaces stays one argument:

=============== ==========================================================
``{fid}``        the FID, bracketed: ``[0x200000400:0x1:0x0]``
``{fid_bare}``   the FID without brackets: ``0x200000400:0x1:0x0``
``{path}``       archive: a path reading the file's data; restore/remove:
                 the open-by-FID path of the file
``{dest}``       restore only: the volatile file to write the data into
``{fsname}``     the filesystem name
``{archive_id}`` the archive id
``{action_id}``  the action id
``{attempt}``    the attempt number
``{kind}``       ``archive``, ``restore`` or ``remove``
``{offset}``     extent offset (bytes)
``{length}``     extent length (bytes, -1 = to end of file)
``{data}``       the request's ``hai_data`` hints as text
=============== ==========================================================

``{{`` and ``}}`` give literal braces; a format spec is allowed
(``{offset:x}``). An unknown placeholder, or ``{dest}`` in a command other
than restore, is a configuration error raised by the constructor.

The command runs in its own session (process group), stdin from
``/dev/null``. A stdout line ``progress <bytes_done> [<bytes_total>]`` is
reported as progress; any other output line is logged with the action id
(stderr at warning level; its last lines are quoted in the failure message).

Outcome: exit 0 is success; exit 75 (``EX_TEMPFAIL``) fails with EAGAIN and
``retry``; another exit code 1..133 is taken as the errno (ENOSPC, EIO,
EAGAIN, ETIMEDOUT are retried); anything else (a higher code, a signal) is
EIO, not retried. On cancel the process group gets SIGTERM at once and SIGKILL after
``kill_grace`` seconds, and the action ends ECANCELED; a ``timeout`` (seconds,
0 = none) does the same and ends ETIMEDOUT (retried). When the command
exits, anything it left running in its process group is killed. A restore
whose volatile file does not end up with the file's size fails with EIO (the
file stays released). A kind with
no command configured fails with ENOTSUP without touching the file.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import shlex
import signal
import string
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from agentd.backend import ActionHandle
from agentd.movers.base import (
    Cancelled,
    Job,
    MoverError,
    Result,
    is_transient,
    kind_name,
    run_action,
)
from hsm.hsmflags import HSMA

log = logging.getLogger(__name__)

#: Placeholders a command may use, with a sample value of the right type.
PLACEHOLDERS: Mapping[str, object] = {
    "fid": "[0x200000400:0x1:0x0]",
    "fid_bare": "0x200000400:0x1:0x0",
    "path": "/mnt/lustre/.lustre/fid/0x200000400:0x1:0x0",
    "dest": "/mnt/lustre/.lustre/fid/0x200000400:0x2:0x0",
    "fsname": "lustre",
    "archive_id": 1,
    "action_id": 1,
    "attempt": 1,
    "kind": "archive",
    "offset": 0,
    "length": -1,
    "data": "",
}
_RESTORE_ONLY = frozenset({"dest"})
_PROGRESS_RE = re.compile(r"progress\s+(\d+)(?:\s+(\d+))?\s*")
EX_TEMPFAIL = 75
_MAX_ERRNO = 133
_POLL = 0.05  # seconds between checks of exit / cancel / timeout
_STDERR_TAIL = 3


@dataclass(frozen=True, slots=True)
class CommandTemplate:
    """One configured command: its text and the split, checked arguments."""

    kind: int
    text: str
    argv: tuple[str, ...]

    @classmethod
    def parse(cls, kind: int, text: str) -> CommandTemplate:
        what = f"{kind_name(kind)} command {text!r}"
        if not isinstance(text, str):
            raise ValueError(
                f"{kind_name(kind)} command must be a string, not {type(text).__name__}"
            )
        try:
            argv = tuple(shlex.split(text))
        except ValueError as exc:
            raise ValueError(f"{what}: cannot split it into arguments: {exc}") from None
        if not argv:
            raise ValueError(f"{kind_name(kind)} command is empty")
        formatter = string.Formatter()
        for arg in argv:
            try:
                fields = [f for _, f, _, _ in formatter.parse(arg) if f is not None]
            except ValueError as exc:
                raise ValueError(
                    f"{what}: bad braces in argument {arg!r} ({exc}); write {{{{ and }}}} "
                    "for literal braces"
                ) from None
            for name in fields:
                if name not in PLACEHOLDERS:
                    raise ValueError(
                        f"{what}: unknown placeholder {{{name}}}; known placeholders: "
                        + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                    )
                if name in _RESTORE_ONLY and kind != HSMA.RESTORE:
                    raise ValueError(
                        f"{what}: {{{name}}} is only meaningful in the restore command"
                    )
            try:
                arg.format_map(PLACEHOLDERS)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise ValueError(f"{what}: bad placeholder in argument {arg!r}: {exc}") from None
        return cls(kind, text, argv)

    def render(self, values: Mapping[str, object]) -> list[str]:
        return [arg.format_map(values) for arg in self.argv]


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (the zombie keeps
    its process group id reserved until we kill the rest of the group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class CommandMover:
    """Runs a configured command per action (see the module doc)."""

    name = "command"

    def __init__(
        self,
        archive_cmd: str | None,
        restore_cmd: str | None,
        remove_cmd: str | None,
        *,
        timeout: float = 0,
        kill_grace: float = 5.0,
    ) -> None:
        if timeout < 0:
            raise ValueError(f"command mover: timeout must be >= 0 s (0 = none), got {timeout}")
        if kill_grace < 0:
            raise ValueError(f"command mover: kill_grace must be >= 0 s, got {kill_grace}")
        self.commands: dict[int, CommandTemplate] = {}
        for kind, text in (
            (HSMA.ARCHIVE, archive_cmd),
            (HSMA.RESTORE, restore_cmd),
            (HSMA.REMOVE, remove_cmd),
        ):
            if text is not None:
                self.commands[kind] = CommandTemplate.parse(kind, text)
        self.timeout = timeout
        self.kill_grace = kill_grace

    def run(self, job: Job) -> Result:
        prefix = job.log_prefix()
        if job.kind not in (HSMA.ARCHIVE, HSMA.RESTORE, HSMA.REMOVE):
            msg = f"command mover cannot run {kind_name(job.kind)} on {job.fid}"
            log.error("%s: %s", prefix, msg)
            return Result(errno=errno.ENOTSUP, message=msg)
        template = self.commands.get(job.kind)
        if template is None:
            msg = f"no {kind_name(job.kind)} command is configured for the command mover"
            log.error("%s: %s", prefix, msg)
            return Result(errno=errno.ENOTSUP, message=msg)

        return run_action(job, "command", lambda j, h: self._run_command(j, h, template))

    # -- internals ---------------------------------------------------------

    def _values(self, job: Job, handle: ActionHandle) -> tuple[dict[str, object], int]:
        """Placeholder values, and the byte count the action covers."""
        total = 0
        dest = ""
        if job.kind == HSMA.ARCHIVE:
            path = handle.source_path()
            size = handle.info().size
            total = max(0, size - job.offset)
            if 0 <= job.length < total:
                total = job.length
        else:
            path = job.backend.path_of(job.fid)
            if job.kind == HSMA.RESTORE:
                dest = handle.volatile_path()
                total = handle.info().size
        values: dict[str, object] = {
            "fid": str(job.fid),
            "fid_bare": job.fid.bare,
            "path": path,
            "dest": dest,
            "fsname": job.fsname,
            "archive_id": job.archive_id,
            "action_id": job.action_id,
            "attempt": job.attempt,
            "kind": kind_name(job.kind),
            "offset": job.offset,
            "length": job.length,
            "data": job.data.rstrip(b"\0").decode("utf-8", errors="replace"),
        }
        return values, total

    def _run_command(self, job: Job, handle: ActionHandle, template: CommandTemplate) -> int:
        prefix = job.log_prefix()
        kind = kind_name(job.kind)
        values, total = self._values(job, handle)
        argv = template.render(values)
        if job.cancelled.is_set():
            raise Cancelled
        log.info("%s: running %s command: %s", prefix, kind, shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise MoverError(
                exc.errno or errno.EIO,
                f"cannot run the {kind} command {argv[0]!r}: {exc.strerror or exc}",
            ) from exc

        state = _Output(job, total)
        readers = [
            threading.Thread(
                target=state.read_stdout,
                args=(proc.stdout,),
                daemon=True,
                name=f"cmd-out-{job.action_id}",
            ),
            threading.Thread(
                target=state.read_stderr,
                args=(proc.stderr,),
                daemon=True,
                name=f"cmd-err-{job.action_id}",
            ),
        ]
        for t in readers:
            t.start()

        reason = self._wait(job, proc.pid)
        if reason is not None:
            log.warning(
                "%s: %s: stopping the %s command (pid %d)",
                prefix,
                "cancelled" if reason == "cancel" else "timed out",
                kind,
                proc.pid,
            )
            _killpg(proc.pid, signal.SIGTERM)
            grace_end = time.monotonic() + self.kill_grace
            while not _exited(proc.pid) and time.monotonic() < grace_end:
                time.sleep(min(_POLL, max(0.0, grace_end - time.monotonic())))
        # Whatever the outcome, nothing of the command outlives the action.
        _killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        for t in readers:
            t.join(timeout=2.0)
            if t.is_alive():
                log.warning(
                    "%s: output of the %s command is still open (a process outside its "
                    "process group holds it); no longer reading it",
                    prefix,
                    kind,
                )
        for f in (proc.stdout, proc.stderr):
            if f is not None and not any(t.is_alive() for t in readers):
                f.close()

        if reason == "cancel":
            raise Cancelled
        if reason == "timeout":
            raise MoverError(
                errno.ETIMEDOUT,
                f"{kind} command {argv[0]!r} for {job.fid} ran longer than the "
                f"{self.timeout:g} s timeout and was killed",
                retry=True,
            )
        if rc != 0:
            raise self._failure(job, argv[0], rc, state.stderr_tail())

        done = state.done
        if job.kind == HSMA.RESTORE:
            dest = str(values["dest"])
            try:
                fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                    done = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            except OSError as exc:
                raise MoverError(
                    exc.errno or errno.EIO,
                    f"restore command succeeded but the volatile file {dest} cannot be "
                    f"flushed: {exc.strerror or exc}",
                ) from exc
            if done != total:
                # A released file keeps its size: anything else is not its data.
                raise MoverError(
                    errno.EIO,
                    f"restore command {argv[0]!r} exited 0 but wrote {done} bytes into "
                    f"{dest}; {job.fid} has {total} bytes: refusing the restored data",
                )
        elif job.kind == HSMA.ARCHIVE:
            done = max(done, total)
        return done

    def _wait(self, job: Job, pid: int) -> str | None:
        """Wait for the command to exit; "cancel" or "timeout" if it must be
        stopped first."""
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        while not _exited(pid):
            if job.cancelled.is_set():
                return "cancel"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
            wait = _POLL if deadline is None else min(_POLL, max(0.0, deadline - time.monotonic()))
            job.cancelled.wait(wait)
        return None

    @staticmethod
    def _failure(job: Job, argv0: str, rc: int, tail: str) -> MoverError:
        kind = kind_name(job.kind)
        detail = f": {tail}" if tail else ""
        if rc < 0:
            try:
                signame = signal.Signals(-rc).name
            except ValueError:
                signame = f"signal {-rc}"
            return MoverError(
                errno.EIO, f"{kind} command {argv0!r} for {job.fid} was killed by {signame}{detail}"
            )
        if rc == EX_TEMPFAIL:
            return MoverError(
                errno.EAGAIN,
                f"{kind} command {argv0!r} for {job.fid} reported a temporary failure "
                f"(exit {EX_TEMPFAIL}){detail}",
                retry=True,
            )
        if rc > _MAX_ERRNO:
            return MoverError(
                errno.EIO,
                f"{kind} command {argv0!r} for {job.fid} exited with status {rc} "
                f"(not an errno, taken as EIO){detail}",
            )
        return MoverError(
            rc,
            f"{kind} command {argv0!r} for {job.fid} exited with status {rc} "
            f"({os.strerror(rc)}){detail}",
            retry=is_transient(rc, archive_side=True),
        )


class _Output:
    """Reads the command's stdout (progress lines) and stderr."""

    def __init__(self, job: Job, total: int) -> None:
        self._job = job
        self._prefix = job.log_prefix()
        self._total = total
        self._lock = threading.Lock()
        self._tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self.done = 0

    def read_stdout(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            m = _PROGRESS_RE.fullmatch(line)
            if m is None:
                if line:
                    log.info("%s: command: %s", self._prefix, line)
                continue
            done = int(m.group(1))
            if m.group(2) is not None:
                self._total = int(m.group(2))
            self.done = done
            self._job.report(done, self._total)

    def read_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line:
                log.warning("%s: command stderr: %s", self._prefix, line)
                with self._lock:
                    self._tail.append(line)

    def stderr_tail(self) -> str:
        with self._lock:
            return " | ".join(self._tail)
