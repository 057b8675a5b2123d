"""What the replica's and agentd's Prometheus exporters share
(coordinator/metrics.py, agentd/metrics.py): an HTTP exporter on its own
thread (prometheus-client's), label values, buckets, and a way to read a
daemon's state on its event loop at scrape time."""

from __future__ import annotations

import asyncio
import errno as _errno
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server

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


class Exporter:
    """A registry served over HTTP (``serve``) with cached label children."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._server: Any = None

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: ``labels()`` takes a lock and builds a key each time."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

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
