"""The ``null`` mover: completes every action without moving any data, after
an optional delay. For benchmarks of the coordinator and for system tests
that exercise scheduling, failover and cancel without file I/O. Never use it
on a real file system: the HSM state is not touched, nothing is archived."""

from __future__ import annotations

import errno

from agentd.movers.base import Job, Result, kind_name


class NullMover:
    name = "null"

    def __init__(self, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"null mover delay must be >= 0 seconds, not {delay!r}")
        self.delay = delay

    @property
    def inline(self) -> bool:
        """Without a delay it never blocks: agentd runs it on its event loop."""
        return self.delay == 0

    def run(self, job: Job) -> Result:
        if self.delay and job.cancelled.wait(self.delay):
            return Result(errno=errno.ECANCELED, message=f"{kind_name(job.kind)} of {job.fid} cancelled")
        if job.cancelled.is_set():
            return Result(errno=errno.ECANCELED, message=f"{kind_name(job.kind)} of {job.fid} cancelled")
        return Result(message="null mover: no data moved")
