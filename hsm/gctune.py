"""Garbage collector settings of the long-running processes (replicas, agentd).

A replica holds every action, requester and catalog copy of its shards: a
heap of millions of long-lived objects. With CPython's default thresholds
(700, 10, 10) the cyclic collector runs a full collection each time that
heap grows by a quarter; measured with gc.callbacks on the archive flood
of 100,000 (3 replicas x 8 shards, 2 cores): 12 full collections per
replica, the longest holding the GIL for 0.66 s (longer than a Raft
heartbeat). With the settings below none ran during the flood, and
``bench compare`` (both sides pure Python, bench/results/gc-tuning) gave
8 % less replica CPU per action. Reference counting frees almost
everything these processes drop:
the collector is only for reference cycles, which are few and young (a
failed call's traceback, a finished task). So:

* young collections wait for 50,000 new objects (not 700): each is still
  short (milliseconds), and there are 70 times fewer;
* a full collection is considered after 50 x 200 young ones (a few minutes
  of a busy replica, then only if the old objects grew by a quarter, as
  before), instead of after 100;
* what the imports left is frozen: never scanned again.

``HSM_GC_THRESHOLDS=A,B,C`` in the environment sets other thresholds
(``700,10,10``: CPython's); ``0`` as A turns automatic collection off, as
``gc.set_threshold`` does."""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any, Final

from hsm.metrics import GC_PAUSES

log = logging.getLogger(__name__)

SERVICE_THRESHOLDS: Final = (50_000, 50, 200)
ENV: Final = "HSM_GC_THRESHOLDS"


def thresholds(env: str | None) -> tuple[int, int, int]:
    """The thresholds *env* names (``A,B,C``, each 0 to 10**9), or
    :data:`SERVICE_THRESHOLDS` when unset; ValueError when malformed."""
    if env is None or not env.strip():
        return SERVICE_THRESHOLDS
    parts = env.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 10**9 for v in values):
        raise ValueError(f"{ENV}={env!r}: three whole numbers from 0 to 10**9, separated by commas "
                         f"(CPython's defaults: 700,10,10)")
    return values[0], values[1], values[2]


class _PauseClock:
    """The ``gc.callbacks`` hook that times each collection into
    ``hsm.metrics.GC_PAUSES`` (two clock reads per collection; collections
    run under the GIL, one at a time)."""

    def __init__(self) -> None:
        self._start = 0.0

    def hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        GC_PAUSES.observe(int(info.get("generation", 2)), time.perf_counter() - self._start)


PAUSE_CLOCK = _PauseClock()


def watch_pauses() -> None:
    """Time the collector's pauses into ``hsm.metrics.GC_PAUSES`` (once per process)."""
    if PAUSE_CLOCK.hook not in gc.callbacks:
        gc.callbacks.append(PAUSE_CLOCK.hook)


def tune_for_service() -> tuple[int, int, int]:
    """Set the collector up for a long-running process, once its modules
    are imported; returns the thresholds set. A malformed ``HSM_GC_THRESHOLDS``
    is reported and the service thresholds apply."""
    try:
        chosen = thresholds(os.environ.get(ENV))
    except ValueError as exc:
        log.warning("%s; using %s", exc, ",".join(map(str, SERVICE_THRESHOLDS)))
        chosen = SERVICE_THRESHOLDS
    watch_pauses()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*chosen)
    return chosen
