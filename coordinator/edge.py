"""What every call to a replica passes through before its servicer
(``EdgeInterceptor``, one gRPC server interceptor, health checks included):

* **Identity**: every answer starts with initial metadata naming the
  cluster and the replica. Clients, agents and ``hsm-coordinator local``
  check it: a replica of another cluster that happens to answer on an
  expected address (a second cluster on the same ports, a stale address
  list) is refused instead of trusted.
* **Undecodable requests**: bytes that are not the method's request
  message (garbage, another protocol, a truncated frame) are answered
  INVALID_ARGUMENT naming the message type, before any servicer code runs;
  nothing changes. They are logged at WARNING at most once per peer per
  ``GARBAGE_LOG_INTERVAL`` seconds, with the count since the last line and
  no traceback: a peer cannot flood the log (gRPC's default is UNKNOWN and
  an ERROR with a traceback per call).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hsm.wire import CLUSTER_METADATA_KEY, REPLICA_METADATA_KEY

log = logging.getLogger(__name__)

#: seconds between two log lines about one peer's undecodable requests
GARBAGE_LOG_INTERVAL = 60.0
#: peers remembered for that (the oldest forgotten first)
GARBAGE_PEERS = 1024

_MAKERS = (("unary_unary", grpc.unary_unary_rpc_method_handler),
           ("unary_stream", grpc.unary_stream_rpc_method_handler),
           ("stream_unary", grpc.stream_unary_rpc_method_handler),
           ("stream_stream", grpc.stream_stream_rpc_method_handler))


class Undecodable:
    """What the deserializer gives instead of a request it cannot decode."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class GarbageLog:
    """One WARNING per peer per interval about undecodable requests (pure
    apart from the clock passed in): :meth:`note` answers the line to log,
    or None when this peer was logged lately."""

    def __init__(self, interval: float = GARBAGE_LOG_INTERVAL, peers: int = GARBAGE_PEERS) -> None:
        self.interval = interval
        self.peers = peers
        self._seen: dict[str, tuple[float, int]] = {}  # peer -> (last logged, suppressed since)

    def note(self, peer: str, method: str, what: str, now: float) -> str | None:
        peer = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer  # the host: not one line per new port
        last = self._seen.get(peer)
        if last is not None and now - last[0] < self.interval:
            self._seen[peer] = (last[0], last[1] + 1)
            return None
        self._seen.pop(peer, None)
        if len(self._seen) >= self.peers:
            del self._seen[next(iter(self._seen))]
        self._seen[peer] = (now, 0)
        more = f" ({last[1]} more from this peer since the last line)" if last is not None and last[1] else ""
        return f"undecodable request from {peer} to {method}: {what}; answered INVALID_ARGUMENT{more}"


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and whatever a parser raises on garbage
            return Undecodable(str(exc) or type(exc).__name__)

    return decode


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, cluster_id: str, replica_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.metadata = ((CLUSTER_METADATA_KEY, cluster_id), (REPLICA_METADATA_KEY, replica_id))
        self.garbage = GarbageLog()
        self.clock = clock

    async def _refuse(self, context: Any, method: str, bad: Undecodable) -> None:
        line = self.garbage.note(context.peer(), method, bad.error, self.clock())
        if line is not None:
            log.warning("%s", line)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid message for {method}: {bad.error}")

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        md = self.metadata
        method = details.method
        for attr, make in _MAKERS:
            inner = getattr(handler, attr)
            if inner is None:
                continue
            streaming_in = attr.startswith("stream_")
            if inspect.isasyncgenfunction(inner):
                async def gen(request: Any, context: Any, inner: Any = inner,
                              streaming_in: bool = streaming_in) -> AsyncIterator[Any]:
                    await context.send_initial_metadata(md)
                    if streaming_in:
                        request = self._checked(request, context, method)
                    elif isinstance(request, Undecodable):
                        await self._refuse(context, method, request)
                    async for item in inner(request, context):
                        yield item
                behavior: Any = gen
            else:
                async def call(request: Any, context: Any, inner: Any = inner,
                               streaming_in: bool = streaming_in) -> Any:
                    await context.send_initial_metadata(md)
                    if streaming_in:
                        request = self._checked(request, context, method)
                    elif isinstance(request, Undecodable):
                        await self._refuse(context, method, request)
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                behavior = call
            return make(behavior, request_deserializer=_safe(handler.request_deserializer),
                        response_serializer=handler.response_serializer)
        return handler

    async def _checked(self, requests: AsyncIterator[Any], context: Any, method: str) -> AsyncIterator[Any]:
        """A request stream that ends the call at its first undecodable message."""
        async for msg in requests:
            if isinstance(msg, Undecodable):
                await self._refuse(context, method, msg)
            yield msg
