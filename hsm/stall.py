"""A hung daemon says where it hangs.

Everything a replica or agentd does runs on one asyncio loop; if that loop
stops turning (a call that never returns, a lock never released) the
process still holds its ports, its Raft threads still answer, and nothing
in its log says why it ignores SIGTERM until systemd kills it. Two aids,
installed by ``hsm-coordinator run`` and ``agentd`` at start:

* ``kill -USR1 <pid>`` writes every thread's Python stack to standard
  error (the journal under systemd), any time, loop hung or not
  (``faulthandler``: it runs in the signal handler, not on the loop);
* a watchdog thread: when the loop has not run for ``HSM_STALL_DUMP_AFTER``
  seconds (default 20; ``0`` turns it off) it logs an error and writes the
  stacks once, and logs again when the loop turns again.

:class:`Watch` is the decision (beats in, time in, "dump now" out); the
thread and the loop task around it are the shell."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Final

log = logging.getLogger(__name__)

ENV: Final = "HSM_STALL_DUMP_AFTER"
DEFAULT_AFTER: Final = 20.0
DUMP_SIGNAL: Final = signal.SIGUSR1


def after_from_env(value: str | None) -> float:
    """The stall threshold *value* names (seconds, 0 = off), or the
    default when unset; ValueError when malformed."""
    if value is None or not value.strip():
        return DEFAULT_AFTER
    try:
        after = float(value)
    except ValueError:
        after = -1.0
    if not 0 <= after <= 86_400:
        raise ValueError(f"{ENV}={value!r}: seconds from 0 (off) to 86400")
    return after


class Watch:
    """Whether the loop is stalled: :meth:`beat` from the loop, :meth:`check`
    from the watchdog. One report per stall."""

    def __init__(self, after: float, now: float) -> None:
        self.after = after
        self.last = now
        self.reported = False  # the current stall was reported

    def beat(self, now: float) -> float | None:
        """The loop ran at *now*. Returns how long it had stalled when a
        stall was reported (the loop is back), else None."""
        stalled = now - self.last if self.reported else None
        self.last = now
        self.reported = False
        return stalled

    def check(self, now: float) -> float | None:
        """How long the loop has not run, when that is a stall not yet
        reported (report it now); else None."""
        if self.after <= 0 or self.reported or now - self.last < self.after:
            return None
        self.reported = True
        return now - self.last


def enable_stack_dumps() -> None:
    """``kill -USR1`` writes every thread's stack to standard error."""
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True)


class Watchdog:
    """The shell: a beat task on the loop it was started on and a daemon
    thread that reports a stall; :meth:`stop` ends both."""

    def __init__(self, name: str, after: float) -> None:
        self.name = name
        self.watch = Watch(after, time.monotonic())
        self.every = min(1.0, after / 4)
        self._done = threading.Event()
        self._task = asyncio.get_running_loop().create_task(self._beat())
        threading.Thread(target=self._guard, name="stall-watch", daemon=True).start()

    def stop(self) -> None:
        self._done.set()
        self._task.cancel()

    async def _beat(self) -> None:
        while True:
            back = self.watch.beat(time.monotonic())
            if back is not None:
                log.warning("%s: the event loop runs again after %.1f s", self.name, back)
            await asyncio.sleep(self.every)

    def _guard(self) -> None:
        while not self._done.wait(self.every):
            stalled = self.watch.check(time.monotonic())
            if stalled is not None and not self._done.is_set():
                log.error("%s: the event loop has not run for %.1f s (it serves nothing meanwhile); "
                          "the stack of every thread follows: please report it", self.name, stalled)
                for h in logging.getLogger().handlers:
                    h.flush()
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def start(name: str, after: float | None = None) -> Watchdog | None:
    """Watch the running loop (call on it). *after* defaults to the
    environment's (:data:`ENV`); None (nothing started) when it is 0."""
    if after is None:
        try:
            after = after_from_env(os.environ.get(ENV))
        except ValueError as exc:
            log.warning("%s; using %g s", exc, DEFAULT_AFTER)
            after = DEFAULT_AFTER
    return Watchdog(name, after) if after > 0 else None
