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
* **Who calls** (with TLS): the peer's certificate names it and its role
  (``hsm.tls.peer_of``); ``coordinator.roles.check`` decides, before the
  servicer runs: UNAUTHENTICATED without a certificate, PERMISSION_DENIED
  naming the missing role otherwise.
* **Audit**: every call that changes something (submit, cancel, control,
  drain, membership, lease) is written to the ``hsm.audit`` log as one JSON
  line: when, who (certificate name and role, or the address without TLS),
  the method and what it named. Refused calls too, with the refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from coordinator import roles
from hsm.tls import peer_of
from hsm.wire import CLUSTER_METADATA_KEY, REPLICA_METADATA_KEY, kind_name

#: a status code as grpc's C core reports it (an int) -> its name
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}

log = logging.getLogger(__name__)
audit_log = logging.getLogger("hsm.audit")
#: at most this many items (FIDs, action ids) named per audit line; the count is always there
AUDIT_ITEMS = 100

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


def _fid(f: Any) -> str:
    return f"[{f.seq:#x}:{f.oid:#x}:{f.ver:#x}]"


#: characters kept of each string a request names, in its audit line
AUDIT_TEXT = 256


def _t(text: str, most: int = AUDIT_TEXT) -> str:
    return text if len(text) <= most else text[:most] + f"...({len(text)} characters)"


def _ids(values: Any) -> list[Any]:
    return list(values[:AUDIT_ITEMS])


def audit_items(method: str, request: Any) -> dict[str, Any]:
    """What an audited call names, for its audit line: every string cut at
    AUDIT_TEXT characters and every list at AUDIT_ITEMS entries (with its
    count), so that a request cannot make a huge line."""
    name = method.rsplit("/", 1)[1]
    if name == "Submit":
        items = request.items
        return {"items": len(items), "kinds": sorted({kind_name(i.kind) for i in items[:AUDIT_ITEMS]}),
                "fids": [f"{_t(i.fsname, 16)}:{_fid(i.fid)}" for i in items[:AUDIT_ITEMS]]}
    if name == "Cancel":
        return {"all": request.all, "action_ids": _ids(request.action_ids), "ids": len(request.action_ids),
                "fids": [f"{_t(f.fsname, 16)}:{_fid(f.fid)}" for f in request.fids[:AUDIT_ITEMS]],
                "files": len(request.fids), "cookies": len(request.cookies), "reason": _t(request.reason),
                "shards": _ids(request.shards)}
    if name == "Control":
        return {"mode": _t(request.mode), "shards": _ids(request.shards)}
    if name == "DrainAgent":
        return {"agent_id": _t(request.agent_id), "drain": request.drain, "force": request.force,
                "shards": _ids(request.shards)}
    if name == "ChangeMembership":
        return {"add": request.add, "raft": _t(request.raft), "force": request.force, "shards": _ids(request.shards)}
    if name == "Lease":
        return {"name": _t(request.name), "holder": _t(request.holder), "ttl_ms": request.ttl_ms}
    if name == "EventConsumer":
        return {"name": _t(request.name), "deregister": request.deregister, "shards": _ids(request.shards)}
    if name == "MoveCopies":
        return {"from": f"{_t(getattr(request, 'from').fsname, 16)}:{_fid(getattr(request, 'from').fid)}",
                "to": f"{_t(request.to.fsname, 16)}:{_fid(request.to.fid)}"}
    if name == "RelocateCopies":
        return {"moves": len(request.moves),
                "fids": [f"{_t(m.file.fsname, 16)}:{_fid(m.file.fid)}" for m in request.moves[:AUDIT_ITEMS]]}
    if name == "EditCatalog":
        return {"file": f"{_t(request.file.fsname, 16)}:{_fid(request.file.fid)}", "copies": len(request.copies),
                "forget": request.forget}
    if name == "MoveShard":
        return {"shard": request.shard, "source": _t(request.source), "target": _t(request.target),
                "abort": request.abort, "lead": request.lead}
    if name == "Rebalance":
        return {"drain": _t(request.drain), "undrain": _t(request.undrain), "enabled": request.enabled}
    if name in ("JoinShard", "LeaveShard"):
        return {"shard": request.shard, "members": [_t(m) for m in list(getattr(request, "members", ()))[:8]]}
    if name == "SetPolicy":
        return {"bytes": len(request.text), "sha256": hashlib.sha256(request.text.encode()).hexdigest()[:16],
                "dry_run": request.dry_run, "version": request.version, "shards": _ids(request.shards)}
    return {}


def audit(context: Any, method: str, who: str | None, role: str, request: Any, refused: str | None = None) -> None:
    """Write the audit line of a call (``hsm.audit``, one JSON object):
    the edge does for every audited call, a servicer again for a call it
    refuses after looking at the state (a user's cancel of an action that
    is not only theirs). A part forwarded by a replica for a user names
    that user (``for``)."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"ts": round(time.time(), 3), "who": who, "role": role, "peer": context.peer(),
                            "method": method.rsplit("/", 1)[1]}
    if role == roles.REPLICA:
        behalf = dict(context.invocation_metadata() or ()).get(roles.ON_BEHALF_KEY)
        if behalf:
            line["for"] = _t(str(behalf))
    if request is not None:
        line.update(audit_items(method, request))
    if refused is not None:
        line["refused"] = refused
    audit_log.info("%s", json.dumps(line, separators=(",", ":")))


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """*secure*: calls come over mutual TLS and every one is checked
    against ``coordinator.roles`` (with the masks, *user_mask* at first); otherwise nobody is
    (``insecure: true``)."""

    def __init__(self, cluster_id: str, replica_id: str, clock: Callable[[], float] = time.monotonic,
                 secure: bool = False, user_mask: frozenset[str] = roles.DEFAULT_USER_MASK,
                 on_call: Callable[[str, str], None] | None = None) -> None:
        self.metadata = ((CLUSTER_METADATA_KEY, cluster_id), (REPLICA_METADATA_KEY, replica_id))
        self.garbage = GarbageLog()
        self.clock = clock
        self.secure = secure
        #: the request mask of each role (coordinator.roles.check); the
        #: replica replaces it when a policy changes the masks
        self.masks: dict[str, frozenset[str]] = {roles.USER: user_mask}
        #: every call's end: (method, status code name), for the metrics
        self.on_call = on_call

    def _ended(self, method: str, context: Any, exc: BaseException | None) -> None:
        if self.on_call is None:
            return
        code = context.code()  # set by an abort or set_code; None: the servicer returned
        if code is None:
            code = grpc.StatusCode.OK if exc is None else (
                grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN)
        name = code.name if isinstance(code, grpc.StatusCode) else _CODE_NAMES.get(code, str(code))
        self.on_call(method, name)

    async def _admit(self, context: Any, method: str, request: Any) -> None:
        """Check the caller (with TLS) and write the audit line of a call
        that changes something; abort a refused call."""
        name: str | None = None
        role = ""
        refusal = None
        if self.secure:
            peer = peer_of(context.auth_context())
            if peer is not None:
                name, role = peer.name, peer.role
            refusal = roles.check(name, role, method, request, masks=self.masks)
        if method in roles.AUDITED:
            audit(context, method, name if self.secure else "", role, request,
                  refusal.message if refusal is not None else None)
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED if refusal.unauthenticated
                                else grpc.StatusCode.PERMISSION_DENIED, refusal.message)

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
        method = details.method
        for attr, make in _MAKERS:
            inner = getattr(handler, attr)
            if inner is None:
                continue
            streaming_in = attr.startswith("stream_")
            if inspect.isasyncgenfunction(inner):
                async def gen(request: Any, context: Any, inner: Any = inner,
                              streaming_in: bool = streaming_in) -> AsyncIterator[Any]:
                    exc: BaseException | None = None
                    try:
                        request = await self._enter(context, method, request, streaming_in)
                        async for item in inner(request, context):
                            yield item
                    except BaseException as e:
                        exc = e
                        raise
                    finally:
                        self._ended(method, context, exc)
                behavior: Any = gen
            else:
                async def call(request: Any, context: Any, inner: Any = inner,
                               streaming_in: bool = streaming_in) -> Any:
                    exc: BaseException | None = None
                    try:
                        request = await self._enter(context, method, request, streaming_in)
                        result = inner(request, context)
                        return await result if inspect.isawaitable(result) else result
                    except BaseException as e:
                        exc = e
                        raise
                    finally:
                        self._ended(method, context, exc)
                behavior = call
            return make(behavior, request_deserializer=_safe(handler.request_deserializer),
                        response_serializer=handler.response_serializer)
        return handler

    async def _enter(self, context: Any, method: str, request: Any, streaming_in: bool) -> Any:
        """What every call does before its servicer: the identity metadata,
        then the request checked (undecodable: refused) and the caller
        admitted. Returns the request the servicer gets (a stream checked
        message by message)."""
        await context.send_initial_metadata(self.metadata)
        if streaming_in:
            await self._admit(context, method, None)
            return self._checked(request, context, method)
        if isinstance(request, Undecodable):
            await self._refuse(context, method, request)
        await self._admit(context, method, request)
        return request

    async def _checked(self, requests: AsyncIterator[Any], context: Any, method: str) -> AsyncIterator[Any]:
        """A request stream that ends the call at its first undecodable message."""
        async for msg in requests:
            if isinstance(msg, Undecodable):
                await self._refuse(context, method, msg)
            yield msg
