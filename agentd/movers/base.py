"""The mover plugin contract.

agentd calls ``mover.run(job)`` in a worker thread, one thread per running
action. The mover reports progress through ``job.report()`` (thread-safe,
cheap: call it as often as you like, agentd rate-limits what it sends), and
must stop promptly once ``job.cancelled`` is set, returning
``Result(errno=ECANCELED)`` after it has cleaned up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agentd.backend import Backend
from hsm.fid import Fid


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

    def log_prefix(self) -> str:
        return f"action {self.action_id}/{self.attempt} {self.fid}"


@dataclass(frozen=True, slots=True)
class Result:
    errno: int = 0  # 0 = success, positive errno otherwise (ECANCELED after a cancel)
    message: str = ""
    bytes_done: int = 0
    retry: bool = False  # transient failure: the coordinator may queue it again


class Mover(Protocol):
    name: str

    def run(self, job: Job) -> Result: ...
