"""The Raft transport (pysyncobj's ``transport``): ``_DurableTransport``, a
``TCPTransport`` subclass that

* makes the journal (``coordinator.raft.journal``) durable before a
  follower acknowledges AppendEntries, so that an entry counts towards a
  commit only once it is on this replica's disk;
* closes incoming connections that do not identify themselves: pysyncobj
  keeps an incoming connection until its first sealed message names a
  member, and times a connection out only when it has traffic, so a peer
  that connects and sends nothing held its socket for good (1,000 of them
  were held 91 s). Now an unidentified connection is closed after
  ``UNKNOWN_TIMEOUT`` seconds, one peer host may hold at most
  ``UNKNOWN_PER_HOST`` of them at once and the port at most
  ``UNKNOWN_MAX``: beyond that, the oldest is closed to make room (so a
  member reconnecting from a crowded host still gets in).

Messages are sealed by the encryptor ``RaftShard`` gives its ``SyncObj``
(``coordinator.raft.encryptor``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from pysyncobj.transport import TCPTransport

log = logging.getLogger("coordinator.raft")

#: seconds an incoming connection has to identify itself as a member
UNKNOWN_TIMEOUT = 5.0
#: unidentified incoming connections one peer host may hold at once
UNKNOWN_PER_HOST = 8
#: unidentified incoming connections the port holds at once
UNKNOWN_MAX = 256
#: seconds between two log lines about closed connections
_LOG_EVERY = 60.0


def _peer_host(conn: Any) -> str:
    try:
        return str(conn._TcpConnection__socket.getpeername()[0])
    except (AttributeError, OSError, IndexError):
        return "?"


class _DurableTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that makes the journal durable before a follower
    acknowledges AppendEntries (or a snapshot), and closes incoming
    connections that do not identify themselves in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hsm_pending: dict[Any, tuple[float, str]] = {}  # unidentified conn -> (accepted, host)
        self._hsm_closed = 0
        self._hsm_logged = 0.0

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            self._syncObj._hsm_journal.sync()
        return bool(super().send(node, message))

    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802 (pysyncobj's name)
        host = _peer_host(conn)
        self._hsm_sweep(time.monotonic())
        # over a bound, the oldest unidentified connection goes, not the new
        # one: a member reconnecting from a host whose slots are taken still
        # gets in (it identifies itself within a round trip)
        same = [c for c, (_, h) in self._hsm_pending.items() if h == host]
        if len(same) >= UNKNOWN_PER_HOST:
            self._hsm_close(same[0], host, "too many unidentified connections from one host")
        elif len(self._hsm_pending) >= UNKNOWN_MAX:
            oldest = next(iter(self._hsm_pending))
            self._hsm_close(oldest, self._hsm_pending[oldest][1], "too many unidentified connections")
        super()._onNewIncomingConnection(conn)
        self._hsm_pending[conn] = (time.monotonic(), host)

    def _onTick(self) -> None:  # noqa: N802 (pysyncobj's name)
        super()._onTick()
        if self._hsm_pending:
            self._hsm_sweep(time.monotonic())

    def _hsm_sweep(self, now: float) -> None:
        for conn, (since, host) in list(self._hsm_pending.items()):
            if conn not in self._unknownConnections:
                del self._hsm_pending[conn]  # identified, or gone
            elif now - since > UNKNOWN_TIMEOUT:
                self._hsm_close(conn, host, f"not identified within {UNKNOWN_TIMEOUT:g} s")

    def _hsm_close(self, conn: Any, host: str, why: str) -> None:
        self._hsm_pending.pop(conn, None)
        self._unknownConnections.discard(conn)
        conn.disconnect()
        self._hsm_note(host, why)

    def _hsm_note(self, host: str, why: str) -> None:
        self._hsm_closed += 1
        now = time.monotonic()
        if now - self._hsm_logged >= _LOG_EVERY:
            log.warning("Raft port %s: closed a connection from %s (%s); %d closed since the last line",
                        self._selfNode.address if self._selfNode else "?", host, why, self._hsm_closed)
            self._hsm_logged = now
            self._hsm_closed = 0
