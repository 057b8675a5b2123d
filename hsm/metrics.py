"""What the replica's and agentd's Prometheus exporters share
(coordinator/metrics.py, agentd/metrics.py): an HTTP exporter on its own
thread (prometheus-client's), label values, buckets, and a way to read a
daemon's state on its event loop at scrape time."""

from __future__ import annotations

import asyncio
import errno as _errno
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hsm.wire import kind_name

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds from submit to the first start: a restore waits seconds, an
#: archive in a backlog hours
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400)
#: seconds from a start to the end: a small file's copy to a tape recall
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)

#: how long a scrape waits for the event loop's view before it answers without it
VIEW_TIMEOUT = 5.0


def split_host_port(listen: str, what: str = "metrics_listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:9600``, ``0.0.0.0:9600``, ``127.0.0.1:0`` for
    any free port) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what} {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:9600")
    return host.strip("[]"), int(port)


def kind_label(kind: int) -> str:
    """archive, restore, remove (the number of an unknown kind)."""
    name = kind_name(kind)
    return name.lower() if name.isalpha() else str(kind)


def errno_label(err: int) -> str:
    """EIO, ECANCELED, ...; ``0`` for none."""
    return _errno.errorcode.get(err, str(err)) if err else "0"


class Tally:
    """A counter family kept as plain numbers on the hot path: a key (a
    tuple of ints or strings, no label text made) -> count. No lock: only
    the owner's thread adds; a scrape copies the dict (one C call under the
    GIL) and formats the labels then (*fmt*: key -> label values)."""

    __slots__ = ("name", "doc", "labels", "fmt", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str], fmt: Callable[[Any], Sequence[str]]) -> None:
        self.name, self.doc, self.labels, self.fmt = name, doc, list(labels), fmt
        self.values: dict[Any, float] = {}

    def inc(self, key: Any, n: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + n

    def family(self) -> Metric:
        f = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, n in dict(self.values).items():
            f.add_metric(list(self.fmt(key)), n)
        return f


class Spread:
    """A histogram family kept as plain numbers, like :class:`Tally`:
    per key, a count per bucket (the last one past every bound) and a sum."""

    __slots__ = ("name", "doc", "labels", "fmt", "bounds", "buckets", "sums")

    def __init__(self, name: str, doc: str, labels: Sequence[str], fmt: Callable[[Any], Sequence[str]],
                 bounds: Sequence[float], keys: Iterable[Any] = ()) -> None:
        """*keys*: the series shown, at zero, before anything is observed."""
        self.name, self.doc, self.labels, self.fmt = name, doc, list(labels), fmt
        self.bounds = tuple(float(b) for b in bounds)
        self.buckets: dict[Any, list[int]] = {k: [0] * (len(self.bounds) + 1) for k in keys}
        self.sums: dict[Any, float] = dict.fromkeys(self.buckets, 0.0)

    def observe(self, key: Any, value: float) -> None:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = [0] * (len(self.bounds) + 1)
        b[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus's "le"
        sums = self.sums
        sums[key] = sums.get(key, 0.0) + value

    def family(self) -> Metric:
        f = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        sums = dict(self.sums)
        for key, counts in dict(self.buckets).items():
            counts = list(counts)
            cumulative, running = [], 0
            for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((bound, running))
            f.add_metric(list(self.fmt(key)), cumulative, sums.get(key, 0.0))
        return f


#: how long each garbage collection held the interpreter, per generation:
#: this process's (hsm/gctune.py's hook observes them once a service tuned
#: the collector), on every exporter; a replica's Raft heartbeats wait meanwhile
GC_PAUSES = Spread("hsm_gc_pause_seconds", "Garbage collections, by generation, and how long each held the "
                   "interpreter", ["generation"], lambda g: (str(g),),
                   (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), keys=range(3))


class _Scraped(Collector):
    """Families made when scraped, by *families()* (nothing is described
    ahead: the registry's auto_describe is off)."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.families()


class Exporter:
    """A registry served over HTTP (``serve``); :meth:`tally` and
    :meth:`spread` make its hot-path families (formatted when scraped)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._families: list[Tally | Spread] = [GC_PAUSES]
        self.registry.register(_Scraped(lambda: [f.family() for f in self._families]))
        self._server: Any = None

    def scraped(self, view: Callable[[], T | None], families: Callable[[T], Iterable[Metric]]) -> None:
        """Add the families *families(view())* makes at each scrape (none
        when the view answers None: its loop did not answer in time)."""

        def collect() -> Iterable[Metric]:
            v = view()
            return () if v is None else families(v)

        self.registry.register(_Scraped(collect))

    def tally(self, name: str, doc: str, labels: Sequence[str], fmt: Callable[[Any], Sequence[str]]) -> Tally:
        t = Tally(name, doc, labels, fmt)
        self._families.append(t)
        return t

    def spread(self, name: str, doc: str, labels: Sequence[str], fmt: Callable[[Any], Sequence[str]],
               bounds: Sequence[float]) -> Spread:
        h = Spread(name, doc, labels, fmt, bounds)
        self._families.append(h)
        return h

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on *host*:*port* (0: any free port) from a thread; the port."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def view_from_loop(loop: asyncio.AbstractEventLoop, build: Callable[[], T]) -> Callable[[], T | None]:
    """A view function for the exporter's thread: runs *build* on *loop*
    (where the daemon's state may be read) and waits for it; None (the
    scrape-time figures left out, said in the log) if the loop does not
    answer within VIEW_TIMEOUT or is closed."""

    async def run() -> T:
        return build()

    def view() -> T | None:
        if loop.is_closed():
            return None
        try:
            return asyncio.run_coroutine_threadsafe(run(), loop).result(VIEW_TIMEOUT)
        except Exception as exc:  # a timeout, a loop stopping: the counters still answer
            log.warning("metrics: no view of the daemon's state for this scrape (%s: %s)",
                        type(exc).__name__, exc)
            return None

    return view
