"""Synchronous Python client of the coordinator API (``hsm.v1.Coordinator``).

Used by ``hsmctl``, the MDT bridge and any script::

    from hsm.client import CoordinatorClient, submit_item

    with CoordinatorClient("10.0.0.1:7600,10.0.0.2:7600") as client:
        results = client.submit([submit_item("lustre", fid, "restore")])
        for action in client.watch([r.action_id for r in results if r.action_id]):
            print(action.action_id, state_name(action.state))

Requests and answers are the ``hsm.v1`` protobuf messages themselves
(``types_pb2.Action``, ``coordinator_pb2.SubmitResult``, ...); helpers here
convert FIDs, kinds and states.

Routing and retries:

* ``UNAVAILABLE`` from one address: the next address is tried; when every
  address answered ``UNAVAILABLE`` the client backs off and starts over, for
  at most ``retry_unavailable`` seconds (a shard without a leader answers
  ``UNAVAILABLE`` during an election).
* ``FAILED_PRECONDITION`` with the ``hsm-leader`` trailing metadata (a
  replica that does not lead the shard): the call is sent again to that
  leader, at most ``MAX_LEADER_HOPS`` times.
* ``RESOURCE_EXHAUSTED`` (backpressure): backed off and retried until the
  call's deadline.
* Every submitted item carries an idempotency key (generated with uuid4 when
  the caller gives none, and written into the caller's item), so a retried
  batch, by the client or by the caller with the same items, never creates
  a second action.

Errors are always a ``CoordinatorError`` subclass, never a raw gRPC error.
"""

from __future__ import annotations

import errno as _errno
import functools
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from hsm.fid import Fid, FidError
from hsm.hsmflags import HSM_REQUEST_FLAGS
from hsm.ring import Ring
from hsm.tls import TlsError, TlsFiles, channel_credentials
from hsm.v1 import coordinator_pb2 as cpb
from hsm.v1 import coordinator_pb2_grpc as cgrpc
from hsm.v1 import types_pb2 as tpb
from hsm.wire import (
    CLUSTER_METADATA_KEY,
    FSNAME_RULE,
    KIND_NAMES,
    KIND_VALUES,
    LEADER_METADATA_KEY,
    MAX_POLICY_BYTES,
    REPLICA_METADATA_KEY,
    RETRY_AFTER_KEY,
    SHARD_ID_MODULUS,
    fid_from_pb,
    fid_to_pb,
    kind_name,
    valid_fsname,
)

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_METADATA_KEY",
    "DEFAULT_ADDRESS",
    "LEADER_METADATA_KEY",
    "REPLICA_METADATA_KEY",
    "MAX_BATCH",
    "MAX_LEADER_HOPS",
    "TERMINAL_STATES",
    "CoordinatorClient",
    "CoordinatorError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
    "WrongCluster",
    "cancel_outcome_name",
    "check_fsname",
    "default_initiator",
    "default_requester",
    "errno_name",
    "fid_from_proto",
    "fid_to_proto",
    "group_by_leader",
    "is_terminal",
    "kind_from",
    "kind_name",
    "outcome_name",
    "parse_addresses",
    "state_from",
    "state_name",
    "submit_item",
]

#: Where ``hsmctl`` and the client look when nothing else is configured.
DEFAULT_ADDRESS = "127.0.0.1:7600"
#: Most items the coordinator accepts in one Submit.
MAX_BATCH = 10000
#: Most "not the leader, go there" redirections followed for one call.
MAX_LEADER_HOPS = 5
#: a single try of a call gets a third of its timeout, at least this long (s)
MIN_TRY_TIMEOUT = 2.0
#: Largest ``data`` of an item (bytes).
MAX_DATA = 4096
#: Largest page the coordinator serves.
MAX_PAGE = 10000
#: After a failed attempt to learn the cluster's members, wait this long (s)
#: before asking again.
MEMBERS_RETRY = 5.0

TERMINAL_STATES = frozenset({tpb.SUCCEEDED, tpb.FAILED, tpb.CANCELED})

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_ADDRESS_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_STATE_NAMES: dict[int, str] = {
    v: k for k, v in tpb.ActionState.items() if v != tpb.ACTION_STATE_UNSPECIFIED
}
_STATE_VALUES = {k: v for v, k in _STATE_NAMES.items()}

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Reconnect quickly after a replica comes back (gRPC's default backoff
    # grows to two minutes, far longer than a coordinator failover).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


# ---------------------------------------------------------------------------
# Errors


class CoordinatorError(Exception):
    """Any failure talking to the coordinator.

    ``code`` is the gRPC status code (``grpc.StatusCode``) or ``None`` for
    errors found on the client side; ``address`` the replica that answered,
    if any; ``details`` the server's own text.
    """

    code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        address: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.address = address
        self.details = details

    @property
    def code_name(self) -> str:
        return self.code.name if self.code is not None else "CLIENT"

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(CoordinatorError, ValueError):
    """A malformed request; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoordinatorError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CoordinatorError):
    """Includes "not the shard leader" when the redirections ran out."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CoordinatorError):
    """No replica could be reached, or the shard has no leader."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CoordinatorError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(CoordinatorError):
    """The coordinator pushed back (queue full) until the deadline."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(CoordinatorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(CoordinatorError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(CoordinatorError):
    code = grpc.StatusCode.CANCELLED


class Aborted(CoordinatorError):
    """Refused because the state moved on (e.g. the policy is not at the
    version the caller expected); look again and retry."""

    code = grpc.StatusCode.ABORTED


class InternalError(CoordinatorError):
    code = grpc.StatusCode.INTERNAL


class WrongCluster(CoordinatorError):
    """A replica answered as a member of another cluster than the one this
    client was told to use (``cluster_id``) or first talked to. Nothing was
    sent to it after its first answer; never retried."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def _retry_after(err: grpc.RpcError) -> float | None:
    """The seconds a rate limit asks to wait before a retry, if it says."""
    try:
        trailers = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not every RpcError carries metadata
        return None
    for key, value in trailers:
        if key == RETRY_AFTER_KEY:
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return None
            return min(max(ms, 0), 60_000) / 1000.0
    return None


_ERROR_CLASSES: dict[grpc.StatusCode, type[CoordinatorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.ABORTED: Aborted,
}


def _clean_details(details: str | None) -> str:
    text = (details or "").strip()
    # gRPC's connection failures are long and repetitive; keep the cause.
    if "failed to connect to all addresses" in text:
        for cause in ("Connection refused", "No route to host", "Network is unreachable",
                      "Name or service not known", "Connection reset", "Timeout occurred"):
            if cause.lower() in text.lower():
                return cause.lower()
        return "cannot connect"
    if text.startswith("DNS resolution failed"):
        return "cannot resolve host name"
    return text


def _error_from_rpc(err: grpc.RpcError, address: str, what: str) -> CoordinatorError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = _clean_details(err.details() if hasattr(err, "details") else str(err))
    cls = _ERROR_CLASSES.get(code, InternalError)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"coordinator {address} unavailable for {what}: {details or 'no answer'}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"coordinator {address} did not answer {what} in time"
    else:
        message = f"coordinator {address} refused {what}: {details or code.name}"
    return cls(message, code=code, address=address, details=details)


# ---------------------------------------------------------------------------
# Conversions


def fid_to_proto(fid: Fid | str | tpb.Fid) -> tpb.Fid:
    """A proto ``Fid`` from a ``hsm.fid.Fid``, a FID string or a proto Fid."""
    if isinstance(fid, tpb.Fid):
        return fid
    if isinstance(fid, str):
        try:
            fid = Fid.parse(fid)
        except FidError as e:
            raise InvalidArgument(str(e)) from None
    if not isinstance(fid, Fid):
        raise InvalidArgument(f"not a FID: {fid!r}")
    return fid_to_pb(fid)


fid_from_proto = fid_from_pb


def kind_from(kind: int | str) -> int:
    """An ``ActionKind`` value from ``"archive"``, ``"ARCHIVE"``, 20 or ``HSMA.ARCHIVE``."""
    if isinstance(kind, str):
        value = KIND_VALUES.get(kind.strip().upper())
        if value is None:
            raise InvalidArgument(
                f"unknown action kind {kind!r}: expected archive, restore or remove"
            )
        return value
    if isinstance(kind, int) and not isinstance(kind, bool) and int(kind) in KIND_NAMES:
        return int(kind)
    raise InvalidArgument(f"unknown action kind {kind!r}: expected archive, restore or remove")


def state_from(state: int | str) -> int:
    """An ``ActionState`` value from ``"waiting"``, ``"WAITING"`` or 1."""
    if isinstance(state, str):
        value = _STATE_VALUES.get(state.strip().upper())
        if value is None:
            raise InvalidArgument(
                f"unknown action state {state!r}: expected one of "
                + ", ".join(s.lower() for s in _STATE_VALUES)
            )
        return value
    if isinstance(state, int) and not isinstance(state, bool) and state in _STATE_NAMES:
        return int(state)
    raise InvalidArgument(f"unknown action state {state!r}")


def state_name(state: int) -> str:
    return _STATE_NAMES.get(state, "UNSPECIFIED" if state == 0 else f"STATE_{state}")


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


def outcome_name(outcome: int) -> str:
    """``CREATED``, ``JOINED``, ``NOT_NEEDED`` or ``REJECTED``."""
    try:
        return str(cpb.SubmitOutcome.Name(outcome))
    except ValueError:
        return f"OUTCOME_{outcome}"


def cancel_outcome_name(outcome: int) -> str:
    try:
        return str(cpb.CancelOutcome.Name(outcome))
    except ValueError:
        return f"OUTCOME_{outcome}"


def parse_addresses(coordinators: str | Sequence[str]) -> list[str]:
    """``"h1:7600,h2:7600"`` or a list of ``host:port`` -> list, checked, in order."""
    parts: list[str] = []
    items = [coordinators] if isinstance(coordinators, str) else list(coordinators)
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgument(f"coordinator address must be a string, not {item!r}")
        parts.extend(p.strip() for p in item.split(","))
    addresses: list[str] = []
    for part in parts:
        if not part:
            continue
        m = _ADDRESS_RE.fullmatch(part)
        if m is None or not (0 < int(m.group(2)) < 65536):
            raise InvalidArgument(
                f"bad coordinator address {part!r}: expected HOST:PORT, e.g. 127.0.0.1:7600"
            )
        if part not in addresses:
            addresses.append(part)
    if not addresses:
        raise InvalidArgument("no coordinator address given (expected HOST:PORT[,HOST:PORT...])")
    return addresses


# ---------------------------------------------------------------------------
# Building requests


def default_initiator(program: str = "pyclient") -> str:
    """``"<program>@<host>"``, the initiator recorded in each requester."""
    return f"{program}@{socket.gethostname()}"


def default_requester(initiator: str | None = None, *, cookie: int = 0) -> tpb.Requester:
    """A requester for the calling process (its uid and gid)."""
    return tpb.Requester(
        initiator=initiator or default_initiator(),
        cookie=cookie,
        uid=os.getuid(),
        gid=os.getgid(),
    )


def _data_bytes(data: bytes | str | Mapping[str, Any] | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, Mapping):
        parts = []
        for key, value in data.items():
            key, value = str(key), str(value)
            if not key or any(c in key for c in ",="):
                raise InvalidArgument(f"bad data key {key!r}: must be non-empty without ',' or '='")
            if "," in value:
                raise InvalidArgument(f"bad data value {value!r} for {key!r}: must not contain ','")
            parts.append(f"{key}={value}")
        data = ",".join(parts)
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes | bytearray):
        raise InvalidArgument(f"data must be bytes, str or a mapping, not {type(data).__name__}")
    if len(data) > MAX_DATA:
        raise InvalidArgument(f"data is {len(data)} bytes; at most {MAX_DATA} are allowed")
    return bytes(data)


def _check_u32(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
        raise InvalidArgument(f"{name} must be an integer from 0 to {_U32}, not {value!r}")
    return value


def check_fsname(fsname: str) -> str:
    if not valid_fsname(fsname):
        raise InvalidArgument(f"bad file system name {fsname!r}: {FSNAME_RULE}")
    return fsname


def _extent(extent: tpb.Extent | tuple[int, int] | None) -> tpb.Extent | None:
    if extent is None:
        return None
    if isinstance(extent, tpb.Extent):
        offset, length = extent.offset, extent.length
    else:
        try:
            offset, length = extent
        except (TypeError, ValueError):
            raise InvalidArgument(f"extent must be (offset, length), not {extent!r}") from None
    if not isinstance(offset, int) or not isinstance(length, int):
        raise InvalidArgument(f"extent must be two integers, not {extent!r}")
    if offset < 0 or offset > (1 << 63) - 1:
        raise InvalidArgument(f"extent offset must be >= 0, not {offset}")
    if length == 0 or length < -1 or length > (1 << 63) - 1:
        raise InvalidArgument(f"extent length must be > 0 or -1 (to end of file), not {length}")
    return tpb.Extent(offset=offset, length=length)


def submit_item(
    fsname: str,
    fid: Fid | str | tpb.Fid,
    kind: int | str,
    archive_id: int = 0,
    *,
    requester: tpb.Requester | None = None,
    initiator: str | None = None,
    idempotency_key: str | None = None,
    hsm: tuple[int, int] | tuple[int, int, int] | tuple[int, int, int, int] | tpb.HsmState | None = None,
    data: bytes | str | Mapping[str, Any] = b"",
    extent: tpb.Extent | tuple[int, int] | None = None,
    flags: int = 0,
    priority: int = 0,
    path: str = "",
    size: int | None = None,
) -> cpb.SubmitItem:
    """One checked ``SubmitItem``; raises ``InvalidArgument`` for bad input.

    *kind* is ``"archive"``/``"restore"``/``"remove"`` or an ``ActionKind``
    value; *hsm* the file's ``(flags, archive_id)`` as read from the file,
    which makes the coordinator apply Lustre's needed/allowed rules, or
    ``(flags, archive_id, data_version)`` (or an ``HsmState``) with the
    file's data version too, which the mover checks (0: not checked), or
    ``(flags, archive_id, data_version, ctime_ns)`` with the file's ctime
    read after the flags too, which lets the coordinator answer a late
    duplicate with the action that already did it;
    *requester* defaults to the calling process (``initiator`` or
    ``pyclient@<host>``); *idempotency_key* defaults to a fresh uuid4-based
    key, unless the requester carries a cookie (then the coordinator uses
    ``"<initiator>:<cookie>"``). *path* (from the file system's root) and
    *size*: what the policy's admission rules match on (unknown: rules on
    them do not match).
    """
    check_fsname(fsname)
    pfid = fid_to_proto(fid)
    if pfid.seq == 0:
        raise InvalidArgument(f"FID {fid_from_proto(pfid)} has sequence 0; not a file's FID")
    kind_value = kind_from(kind)
    _check_u32("archive id", archive_id)
    if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~HSM_REQUEST_FLAGS or flags < 0:
        raise InvalidArgument(
            f"request flags {flags!r} not allowed: only 0x1 (force) and 0x4 (blocking)"
        )
    if isinstance(priority, bool) or not isinstance(priority, int) or not _I32_MIN <= priority <= _I32_MAX:
        raise InvalidArgument(f"priority must be a 32-bit integer, not {priority!r}")
    ext = _extent(extent)
    if ext is not None and kind_value == tpb.RESTORE and (ext.offset != 0 or ext.length != -1):
        raise InvalidArgument("RESTORE is always of the whole file; no extent allowed")
    if requester is None:
        requester = default_requester(initiator)
    elif not isinstance(requester, tpb.Requester):
        raise InvalidArgument(f"requester must be a hsm.v1.Requester, not {requester!r}")
    if not requester.initiator:
        raise InvalidArgument("the requester needs an initiator")
    if not isinstance(path, str) or len(path.encode(errors="surrogateescape")) > 4096 or "\0" in path:
        raise InvalidArgument(f"path must be a string of at most 4096 bytes without NUL, not {path!r:.80}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 63):
        raise InvalidArgument(f"size must be a file size (0 to 2**63-1), not {size!r}")
    item = cpb.SubmitItem(
        fsname=fsname,
        fid=pfid,
        kind=kind_value,  # type: ignore[arg-type]
        archive_id=archive_id,
        data=_data_bytes(data),
        flags=flags,
        priority=priority,
        requester=requester,
        path=path.encode(errors="surrogateescape").decode(errors="replace"),
    )
    if size is not None:
        item.size = size
    if ext is not None:
        item.extent.CopyFrom(ext)
    if hsm is not None:
        hversion: Any = 0
        hctime: Any = 0
        if isinstance(hsm, tpb.HsmState):
            hflags, harchive, hversion, hctime = hsm.flags, hsm.archive_id, hsm.data_version, hsm.ctime_ns
        else:
            try:
                hflags, harchive, *more = hsm
                if len(more) > 2:
                    raise ValueError
            except (TypeError, ValueError):
                raise InvalidArgument(
                    f"hsm must be (flags, archive_id[, data_version[, ctime_ns]]), not {hsm!r}"
                ) from None
            hversion = more[0] if more else 0
            hctime = more[1] if len(more) > 1 else 0
        for what, value in (("data version", hversion), ("ctime", hctime)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise InvalidArgument(f"{what} must be an unsigned 64-bit integer, not {value!r}")
        item.hsm.SetInParent()
        item.hsm.flags = _check_u32("HSM flags", hflags)
        item.hsm.archive_id = _check_u32("HSM archive id", harchive)
        item.hsm.data_version = hversion
        item.hsm.ctime_ns = hctime
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or len(idempotency_key) > 256:
            raise InvalidArgument("idempotency key must be a string of at most 256 characters")
        item.idempotency_key = idempotency_key
    _ensure_key(item)
    return item


def _ensure_key(item: cpb.SubmitItem) -> None:
    """Give an item that has neither key nor cookie a uuid4-based key."""
    if not item.idempotency_key and not item.requester.cookie:
        item.idempotency_key = f"{item.requester.initiator or 'client'}:{uuid.uuid4().hex}"


def _fid_selector(
    spec: cpb.FidSelector | Fid | str | tpb.Fid | tuple[Any, ...], fsname: str = ""
) -> cpb.FidSelector:
    if isinstance(spec, cpb.FidSelector):
        return spec
    kind = 0
    if isinstance(spec, tuple):
        if len(spec) == 2:
            fsname, fid = spec
        elif len(spec) == 3:
            fsname, fid, kind_spec = spec
            kind = kind_from(kind_spec) if kind_spec else 0
        else:
            raise InvalidArgument(f"FID selector must be (fsname, fid[, kind]), not {spec!r}")
    else:
        fid = spec
    if fsname:
        check_fsname(fsname)
    return cpb.FidSelector(fsname=fsname, fid=fid_to_proto(fid), kind=kind)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The client

#: Seconds a shard map (leader per shard) is trusted before asking again.
SHARD_MAP_TTL = 30.0


@functools.lru_cache(maxsize=4)
def _ring(shards: int, vnodes: int) -> Ring:
    """Rings are immutable and costly to build (shards x vnodes hashes):
    one per shape, not one per shard-map refresh (leaders change, rings
    do not)."""
    return Ring(shards, vnodes)


class _Regroup(Exception):
    """A multi-shard call met a redirect: the shard leaders moved."""


@dataclass(frozen=True, slots=True)
class _ShardMap:
    ring: Any  # hsm.ring.Ring: FID -> shard
    leaders: dict[int, str]  # shard -> leader's address ("" if unknown)


def group_by_leader(
    items: Sequence[cpb.SubmitItem], ring: Any, leaders: Mapping[int, str]
) -> dict[str, list[int]]:
    """Indexes of *items* per leader address (``""``: leader unknown), each
    list in the items' order; *ring* maps a FID to its shard."""
    shards = ring.shard_of_many(Fid(i.fid.seq, i.fid.oid, i.fid.ver) for i in items)
    groups: dict[str, list[int]] = {}
    for index, shard in enumerate(shards):
        groups.setdefault(leaders.get(shard, ""), []).append(index)
    return groups


class _Route:
    """Where one call goes next: address rotation, leader hops, backoff."""

    def __init__(self, client: CoordinatorClient, deadline: float | None, what: str,
                 start: str | None = None) -> None:
        self.client = client
        self.deadline = deadline
        self.what = what
        self.order = client._ordered_addresses()
        self.target = start or self.order[0]
        self.tried: set[str] = set()
        self.hops = 0
        self.unavailable_since: float | None = None
        self.backoff = 0.05
        self.last_error: CoordinatorError | None = None
        total = None if deadline is None else deadline - time.monotonic()
        #: one try's limit: a hung replica must not use up the whole deadline
        self.try_timeout = None if total is None else max(MIN_TRY_TIMEOUT, total / 3)

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._deadline_error()
        return left

    def _unavailable(self) -> Unavailable:
        details = self.last_error.details if self.last_error is not None else ""
        return Unavailable(
            f"no coordinator available for {self.what} at {', '.join(self.order)}: "
            f"{details or 'no answer'}",
            address=self.target,
            details=details,
        )

    def _deadline_error(self) -> CoordinatorError:
        if isinstance(self.last_error, Unavailable):
            # Nobody answered until the deadline: that is unavailability.
            return self._unavailable()
        return DeadlineExceeded(
            f"coordinator {self.target} did not answer {self.what} in time", address=self.target
        )

    def succeeded(self) -> None:
        self.unavailable_since = None
        self.backoff = 0.05
        self.tried.clear()
        self.client._prefer(self.target)
        self.client._learn_members(self.target)

    def _sleep(self) -> None:
        left = self.remaining()
        pause = self.backoff if left is None else min(self.backoff, left)
        time.sleep(pause)
        self.backoff = min(self.backoff * 2, 1.0)

    def failed(self, err: grpc.RpcError) -> None:
        """Decide what to do after *err*: move ``target`` (and return) or raise."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        error = _error_from_rpc(err, self.target, self.what)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            hint = _leader_hint(err)
            if hint:
                leader = self.client._resolve_leader(hint, self.target)
                if leader and leader in self.tried:
                    # The named leader did not answer a moment ago (a failover
                    # in progress): wait for the election like for UNAVAILABLE.
                    self._on_unavailable(Unavailable(
                        f"coordinator {self.target} names {leader} as the leader for "
                        f"{self.what}, which is unavailable",
                        address=self.target, details=f"leader {leader} unavailable",
                    ))
                    return
                if leader and leader != self.target and self.hops < MAX_LEADER_HOPS:
                    log.debug("%s: %s is not the leader, retrying at %s", self.what, self.target, leader)
                    self.client._forget_shard_map()
                    self.hops += 1
                    self.target = leader
                    return
                if leader and leader != self.target and self.client.retry_unavailable > 0:
                    # The replicas keep naming each other: their views of an
                    # election differ for a moment. Wait for it as for
                    # UNAVAILABLE (back off, start over), up to retry_unavailable.
                    self._on_unavailable(Unavailable(
                        f"coordinator {self.target} names {leader} as the leader for {self.what} after "
                        f"{self.hops} redirections: an election is under way",
                        address=self.target, details=f"no agreed leader after {self.hops} redirections",
                    ))
                    return
                raise FailedPrecondition(
                    f"coordinator {self.target} does not lead the shard for {self.what} "
                    f"and the leader ({hint}) could not be reached after {self.hops} redirections",
                    code=code, address=self.target, details=error.details,
                )
            raise error
        if code == grpc.StatusCode.UNAVAILABLE:
            self._on_unavailable(error)
            return
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.last_error = error
            log.debug("%s: %s pushed back (%s), retrying", self.what, self.target, error.details)
            if self.deadline is None:
                raise error
            hint = _retry_after(err)  # a rate limit says when the request can pass
            wait = max(self.backoff, hint) if hint is not None else self.backoff
            if self.deadline - time.monotonic() <= wait:
                raise error
            if hint is not None and hint > self.backoff:
                time.sleep(hint)
            else:
                self._sleep()
            return
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if self.deadline is not None and self.deadline - time.monotonic() > 0.05:
                # only this try timed out: a hung replica; ask another (every
                # request is idempotent: submits carry keys)
                self._on_unavailable(Unavailable(
                    f"coordinator {self.target} did not answer {self.what} within {self.try_timeout:g} s",
                    code=code, address=self.target, details="no answer (hung?)"))
                return
            raise DeadlineExceeded(
                f"coordinator {self.target} did not answer {self.what} in time",
                code=code, address=self.target, details=error.details,
            )
        raise error


    def _on_unavailable(self, error: CoordinatorError) -> None:
        """Try the next address; after a full round, back off and start over
        until ``retry_unavailable`` has passed (then raise)."""
        self.last_error = error
        self.tried.add(self.target)
        now = time.monotonic()
        if self.unavailable_since is None:
            self.unavailable_since = now
        # the members learned since the call began count too
        self.order = self.client._ordered_addresses()
        for address in self.order:
            if address not in self.tried:
                log.debug("%s: %s unavailable (%s), trying %s",
                          self.what, self.target, error.details, address)
                self.target = address
                return
        if now - self.unavailable_since >= self.client.retry_unavailable:
            raise self._unavailable()
        self._sleep()
        self.tried.clear()
        self.hops = 0
        self.order = self.client._ordered_addresses()
        self.target = self.order[0]


def _metadata(call: Any, which: str) -> tuple[tuple[str, Any], ...]:
    """A call's (or an RpcError's) ``initial_metadata`` or
    ``trailing_metadata``; empty when it has none."""
    try:
        return tuple(getattr(call, which)() or ())
    except Exception:  # noqa: BLE001 - some RpcErrors carry no call
        return ()


def metadata_value(metadata: Iterable[tuple[str, Any]], key: str) -> str:
    for k, value in metadata:
        if k == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def _leader_hint(err: grpc.RpcError) -> str:
    return metadata_value(_metadata(err, "trailing_metadata"), LEADER_METADATA_KEY)


class CoordinatorClient:
    """A synchronous client of a coordinator cluster.

    *coordinators*: ``"host:port,host:port"`` or a sequence of addresses;
    any replica will do, the client follows leader hints. *timeout*: seconds
    each call may take in all (retries included). *initiator*: recorded in
    requesters the client builds (default ``pyclient@<host>``).
    *retry_unavailable*: how long to keep retrying when no address answers.
    *cluster_id*: the cluster to talk to; a replica that answers for
    another one raises ``WrongCluster``. Without it, the first replica that
    answers names the cluster for the client's lifetime. *tls*: the CA
    certificate, certificate and key for mutual TLS (``hsm.tls``); None:
    plain text.

    The first replica that answers also tells the client every member's
    address: calls fail over to them even when the client was given one
    address only. Thread-safe; ``close()`` (or a ``with`` block) releases
    the channels.
    """

    def __init__(
        self,
        coordinators: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float = 30.0,
        initiator: str | None = None,
        retry_unavailable: float = 10.0,
        cluster_id: str | None = None,
        tls: TlsFiles | None = None,
        retry_moving: float = 120.0,
    ) -> None:
        self.addresses = parse_addresses(coordinators)
        try:
            self._credentials = channel_credentials(tls) if tls is not None else None
        except TlsError as exc:
            raise InvalidArgument(str(exc)) from None
        if not timeout or timeout <= 0:
            raise InvalidArgument(f"timeout must be > 0 seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.retry_unavailable = max(0.0, float(retry_unavailable))
        #: seconds a submit keeps resending items refused because their file
        #: is moving to another shard (a split): EBUSY, or ESTALE (the shard
        #: map changed: read again)
        self.retry_moving = max(0.0, float(retry_moving))
        self.initiator = initiator or default_initiator()
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, cgrpc.CoordinatorStub]] = {}
        self._preferred: str | None = None
        self._replica_addresses: dict[str, str] = {}
        self._shard_map_cache: tuple[float, _ShardMap | None] | None = None
        self._closed = False
        #: member addresses learned from the cluster, beyond ``addresses``
        self._members: list[str] = []
        self._members_asked = -MEMBERS_RETRY
        self.cluster_id: str | None = None
        self._cluster_source = ""
        if cluster_id:
            self.expect_cluster(cluster_id, "the cluster id given")

    # -- plumbing --------------------------------------------------------

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CoordinatorClient({','.join(self.addresses)!r})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
        for channel, _stub in channels:
            channel.close()

    def _stub(self, address: str) -> cgrpc.CoordinatorStub:
        with self._lock:
            if self._closed:
                raise CoordinatorError("the client is closed")
            entry = self._channels.get(address)
            if entry is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
                entry = (channel, cgrpc.CoordinatorStub(channel))
                self._channels[address] = entry
            return entry[1]

    def expect_cluster(self, cluster_id: str, source: str) -> None:
        """Talk only to replicas of *cluster_id* (*source* says who named
        it, for error messages). Naming a different one than already
        expected raises ``WrongCluster``."""
        if not cluster_id:
            return
        with self._lock:
            if self.cluster_id is not None and self.cluster_id != cluster_id:
                raise WrongCluster(
                    f"{source} names cluster {cluster_id}, but {self._cluster_source} "
                    f"names cluster {self.cluster_id}")
            if self.cluster_id is None:
                self.cluster_id, self._cluster_source = cluster_id, source

    def _check_identity(self, address: str, metadata: Iterable[tuple[str, Any]], answered: bool = True) -> None:
        """Refuse an answer from a replica of another cluster. Without an
        expected id, the first *answered* call names the cluster."""
        got = metadata_value(metadata, CLUSTER_METADATA_KEY)
        with self._lock:
            expected, source = self.cluster_id, self._cluster_source
            if expected is None:
                if got and answered:
                    self.cluster_id = got
                    self._cluster_source = f"{address}, the first replica that answered,"
                return
        if got == expected:
            return
        if not got and not answered:
            return  # no answer at all (connection refused): not a claim of identity
        replica = metadata_value(metadata, REPLICA_METADATA_KEY)
        who = f"replica {replica} at {address}" if replica else f"the coordinator at {address}"
        if not got:
            raise WrongCluster(f"{who} does not say which cluster it belongs to; {source} "
                               f"names cluster {expected}", address=address)
        raise WrongCluster(
            f"{who} belongs to cluster {got}, not to cluster {expected} named by {source}: "
            "the coordinator addresses (--coordinators, $HSM_COORDINATORS) point at another cluster",
            address=address)

    def _ordered_addresses(self) -> list[str]:
        """The preferred address first, then the configured ones, then the
        members learned from the cluster."""
        with self._lock:
            preferred = self._preferred
            learned = [a for a in self._members if a not in self.addresses]
        order = list(self.addresses) + learned
        if preferred is None or preferred not in order:
            return order
        return [preferred] + [a for a in order if a != preferred]

    def _prefer(self, address: str) -> None:
        with self._lock:
            if address in self.addresses or address in self._members:
                self._preferred = address

    def _remember_members(self, info: cpb.ClusterInfoResponse) -> None:
        with self._lock:
            self._replica_addresses = {r.id: r.address for r in info.replicas}
            self._members = [r.address for r in info.replicas if _ADDRESS_RE.fullmatch(r.address)]
            self._members_asked = time.monotonic()

    def _learn_members(self, address: str) -> None:
        """Once, from the first replica that answers: every member's
        address, so that any call can fail over to them."""
        with self._lock:
            if self._members or time.monotonic() - self._members_asked < MEMBERS_RETRY:
                return
            self._members_asked = time.monotonic()
        try:
            info, call = self._stub(address).ClusterInfo.with_call(
                cpb.ClusterInfoRequest(), timeout=min(self.timeout, 5.0))
        except grpc.RpcError as err:
            log.debug("cannot learn the cluster's members from %s: %s", address, err)
            return
        self._check_identity(address, _metadata(call, "initial_metadata"))
        self._remember_members(info)

    def _resolve_leader(self, hint: str, asked: str) -> str:
        """The address of the leader named by *hint* (an address or a replica id)."""
        if _ADDRESS_RE.fullmatch(hint):
            return hint
        with self._lock:
            known = self._replica_addresses.get(hint)
        if known:
            return known
        try:
            info, call = self._stub(asked).ClusterInfo.with_call(
                cpb.ClusterInfoRequest(), timeout=min(self.timeout, 5.0)
            )
        except grpc.RpcError:
            return ""
        self._check_identity(asked, _metadata(call, "initial_metadata"))
        self._remember_members(info)
        with self._lock:
            return self._replica_addresses.get(hint, "")

    def _call(self, method: str, request: Any, what: str, timeout: float | None = None,
              start: str | None = None, multi_shard: bool = False) -> Any:
        """One RPC with retries and leader redirects. With *multi_shard*, a
        redirect raises ``_Regroup`` instead: no single replica may lead
        every shard the request touches, so the caller splits it anew."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        route = _Route(self, deadline, what, start)
        while True:
            remaining = route.remaining()
            if remaining is not None and route.try_timeout is not None:
                remaining = min(remaining, route.try_timeout)
            stub = self._stub(route.target)
            try:
                response, call = getattr(stub, method).with_call(request, timeout=remaining)
            except grpc.RpcError as err:
                self._check_identity(route.target, _metadata(err, "initial_metadata"), answered=False)
                if multi_shard and err.code() == grpc.StatusCode.FAILED_PRECONDITION and _leader_hint(err):
                    raise _Regroup() from None
                route.failed(err)
                continue
            self._check_identity(route.target, _metadata(call, "initial_metadata"))
            route.succeeded()
            return response

    # -- API ---------------------------------------------------------------

    def submit_item(self, fsname: str, fid: Fid | str | tpb.Fid, kind: int | str,
                    archive_id: int = 0, **kwargs: Any) -> cpb.SubmitItem:
        """``submit_item`` with this client's initiator as the default requester."""
        kwargs.setdefault("initiator", self.initiator)
        return submit_item(fsname, fid, kind, archive_id, **kwargs)

    def submit(self, items: Iterable[cpb.SubmitItem], batch_size: int = 1000) -> list[cpb.SubmitResult]:
        """Submit *items* in batches of *batch_size*; one result per item, in order.

        Items without an idempotency key (and without a requester cookie) get
        one, written into the item, so submitting the same items again
        returns the first results instead of creating new actions. A batch
        that fails raises; the results of earlier batches are then lost to
        the caller but resubmitting the same items is safe.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
            raise InvalidArgument(f"batch size must be from 1 to {MAX_BATCH}, not {batch_size!r}")
        results: list[cpb.SubmitResult] = []
        batch: list[cpb.SubmitItem] = []
        for item in items:
            if not isinstance(item, cpb.SubmitItem):
                raise InvalidArgument(f"submit() takes hsm.v1.SubmitItem messages, not {item!r}")
            _ensure_key(item)
            batch.append(item)
            if len(batch) >= batch_size:
                results.extend(self._submit_batch(batch))
                batch = []
        if batch:
            results.extend(self._submit_batch(batch))
        return results

    def _submit_batch(self, batch: list[cpb.SubmitItem]) -> list[cpb.SubmitResult]:
        """Send each shard leader its part of *batch*. When leaders moved
        since the shard map was read, the part is split again and resent:
        every item carries its idempotency key, so nothing is applied twice."""
        results: list[cpb.SubmitResult | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        deadline = time.monotonic() + self.timeout
        moving_until = time.monotonic() + self.retry_moving
        pause = 0.1
        while todo:
            shard_map = self._shard_map()
            if shard_map is None:
                groups = {"": todo}
            else:
                sub = group_by_leader([batch[i] for i in todo], shard_map.ring, shard_map.leaders)
                groups = {leader: [todo[j] for j in idx] for leader, idx in sub.items()}
            todo = []
            for leader, indexes in groups.items():
                part = [batch[i] for i in indexes]
                # a redirect regroups the part by a fresh map whenever there is a map: the part may
                # span several shards, or the map may be stale (a split moved some of its files to
                # a shard the replica it was sent to does not lead: following the hint would go
                # back and forth between two leaders, neither of which leads the whole part)
                multi = shard_map is not None
                try:
                    response = self._call("Submit", cpb.SubmitRequest(items=part),
                                          f"submit of {len(part)} items", start=leader or None,
                                          multi_shard=multi)
                except _Regroup:
                    if time.monotonic() > deadline:
                        raise FailedPrecondition(
                            f"submit of {len(part)} items: shard leaders kept moving for "
                            f"{self.timeout:.0f} s", address=leader) from None
                    self._forget_shard_map()
                    todo.extend(indexes)
                    continue
                if len(response.results) != len(part):
                    raise InternalError(
                        f"coordinator answered {len(response.results)} results for {len(part)} items"
                    )
                for i, result in zip(indexes, response.results, strict=True):
                    results[i] = result
                    if (result.outcome == cpb.REJECTED and result.errno in (_errno.EBUSY, _errno.ESTALE)
                            and time.monotonic() < moving_until):
                        # its file moves to another shard (a split): nothing was made; the
                        # same item (same key) goes again, to the owner the map says then
                        todo.append(i)
                        if result.errno == _errno.ESTALE:
                            self._forget_shard_map()
            if todo:
                if any(results[i] is not None for i in todo):
                    log.debug("submit: %d item(s) wait for their files to move between shards", len(todo))
                    time.sleep(pause + random.uniform(0, pause / 2))
                    pause = min(pause * 2, 2.0)
                else:
                    time.sleep(0.05)
        return [r for r in results if r is not None]

    def _shard_map(self) -> _ShardMap | None:
        """Where each shard's leader is: a batch goes to each leader in parts,
        and a part whose FIDs span several shards regroups on a redirect.

        Kept when one replica leads every shard too: that is often a
        passing state (start-up, a failover), and without the ring a batch
        over several shards would follow redirects between replicas that
        each lead only some of them, until it gave up. None when the
        cluster has one shard or does not publish its ring: then any
        replica takes the whole batch (and redirects if need be). Cached
        for ``SHARD_MAP_TTL`` seconds and dropped whenever a replica
        redirects us.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._shard_map_cache
        if cached is not None and now - cached[0] < SHARD_MAP_TTL:
            return cached[1]
        shard_map: _ShardMap | None = None
        try:
            info = self.cluster_info()
        except (Unimplemented, FailedPrecondition, InternalError) as e:
            log.debug("no shard map (%s): sending batches to any replica", e)
            info = None
        if info is not None and info.shard_count > 1 and info.vnodes > 0:
            addresses = {r.id: r.address for r in info.replicas}
            leaders = {s.shard: addresses.get(s.leader, "") for s in info.shards}
            try:
                shard_map = _ShardMap(_ring(info.shard_count, info.vnodes), leaders)
            except ValueError as e:
                log.debug("cannot build the ring (%s): sending batches to any replica", e)
        with self._lock:
            self._shard_map_cache = (now, shard_map)
        return shard_map

    def _forget_shard_map(self) -> None:
        with self._lock:
            self._shard_map_cache = None

    def cancel(
        self,
        action_ids: Iterable[int] = (),
        fids: Iterable[cpb.FidSelector | Fid | str | tpb.Fid | tuple[Any, ...]] = (),
        all: bool = False,  # noqa: A002 - mirrors the proto field
        reason: str = "",
        fsname: str = "",
        cookies: Iterable[tuple[str, int]] = (),
    ) -> list[cpb.CancelResult]:
        """Cancel by action id, by FID (``Fid``, ``(fsname, fid)``,
        ``(fsname, fid, kind)`` or ``FidSelector``), by requester cookie
        (``(initiator, cookie)``: the action a submit with that requester
        and no explicit idempotency key created or joined, e.g. the MDT's
        ``hai_cookie`` of an HSMA_CANCEL item), or everything (*all*).
        *fsname* applies to FIDs given without one. Each cookie gets one
        result, after the others, in order (NOT_FOUND with action id 0 when
        unknown)."""
        ids = []
        for action_id in action_ids:
            if isinstance(action_id, bool) or not isinstance(action_id, int) or not 0 < action_id <= _U64:
                raise InvalidArgument(f"bad action id {action_id!r}: a positive integer")
            ids.append(action_id)
        selectors = [_fid_selector(f, fsname) for f in fids]
        by_cookie = []
        for pair in cookies:
            try:
                initiator, cookie = pair
            except (TypeError, ValueError):
                raise InvalidArgument(f"bad cookie {pair!r}: an (initiator, cookie) pair") from None
            if not isinstance(initiator, str) or not initiator:
                raise InvalidArgument(f"bad cookie {pair!r}: the initiator must be a non-empty string")
            if isinstance(cookie, bool) or not isinstance(cookie, int) or not 0 < cookie <= _U64:
                raise InvalidArgument(f"bad cookie {pair!r}: the cookie must be an integer from 1 to 2^64-1")
            by_cookie.append(tpb.Requester(initiator=initiator, cookie=cookie))
        if not ids and not selectors and not by_cookie and not all:
            raise InvalidArgument("nothing to cancel: give action ids, FIDs, cookies or all=True")
        request = cpb.CancelRequest(action_ids=ids, fids=selectors, all=bool(all), reason=reason,
                                    cookies=by_cookie)
        return list(self._call("Cancel", request, "cancel").results)

    def get_action(self, action_id: int) -> tpb.Action:
        if isinstance(action_id, bool) or not isinstance(action_id, int) or not 0 < action_id <= _U64:
            raise InvalidArgument(f"bad action id {action_id!r}: a positive integer")
        return self._call("GetAction", cpb.GetActionRequest(action_id=action_id),
                          f"get action {action_id}")

    def list_actions(
        self,
        states: Iterable[int | str] = (),
        kinds: Iterable[int | str] = (),
        fid: cpb.FidSelector | Fid | str | tpb.Fid | None = None,
        fsname: str = "",
        agent: str = "",
        include_terminal: bool = False,
        page_size: int = 1000,
    ) -> Iterator[tpb.Action]:
        """Actions matching the filter, oldest first, following page tokens.

        No states: the non-terminal actions (or every kept one with
        *include_terminal*). *fsname* narrows *fid* to one file system.
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument(f"page size must be from 1 to {MAX_PAGE}, not {page_size!r}")
        request = cpb.ListActionsRequest(
            states=[state_from(s) for s in states],  # type: ignore[misc]
            kinds=[kind_from(k) for k in kinds],  # type: ignore[misc]
            agent=agent,
            include_terminal=include_terminal,
            page_size=page_size,
        )
        if fid is not None:
            request.fid.CopyFrom(_fid_selector(fid, fsname))
        elif fsname:
            raise InvalidArgument("fsname filters a FID; give fid too")
        return self._pages(request)

    def _pages(self, request: cpb.ListActionsRequest) -> Iterator[tpb.Action]:
        while True:
            page = self._call("ListActions", request, "list actions")
            yield from page.actions
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def watch(self, action_ids: Iterable[int], deadline: float | None = None) -> Iterator[tpb.Action]:
        """Every change of the given actions, until all of them have ended.

        The first event per action is its current state. *deadline* is the
        number of seconds to wait at most (None: no limit); when it passes
        with actions still running, ``DeadlineExceeded`` is raised. A lost
        stream (replica down) is reopened elsewhere for the actions that
        have not ended. Unknown ids raise ``NotFound``.
        """
        pending: dict[int, None] = {}
        for action_id in action_ids:
            if isinstance(action_id, bool) or not isinstance(action_id, int) or not 0 < action_id <= _U64:
                raise InvalidArgument(f"bad action id {action_id!r}: a positive integer")
            pending[action_id] = None
        if deadline is not None and deadline < 0:
            raise InvalidArgument(f"deadline must be >= 0 seconds, not {deadline!r}")
        end = None if deadline is None else time.monotonic() + deadline
        return self._watch_routed(pending, end)

    def _watch_routed(self, pending: dict[int, None], end: float | None) -> Iterator[tpb.Action]:
        """Watch on the leader of each action's shard; when leadership
        moved (a redirect for a multi-shard stream), look the leaders up
        again and split anew. *pending* shrinks as actions end."""
        while pending:
            groups = self._group_by_shard_leader(pending)
            try:
                if len(groups) == 1:
                    [(start, _)] = groups.items()
                    yield from self._watch(pending, end, start=start or None, regroup=True)
                else:
                    yield from self._watch_many(groups, end, pending)
                return
            except _Regroup:
                log.debug("watch: shard leaders moved; regrouping %d actions", len(pending))
                self._forget_shard_map()
                self._watch_remaining(end, pending)
                time.sleep(0.05)

    def _group_by_shard_leader(self, action_ids: Iterable[int]) -> dict[str, list[int]]:
        """Action ids per leader address of their shard (an action id ends
        in its shard number); one group when routing does not matter."""
        ids = list(action_ids)
        shard_map = self._shard_map() if len({i % SHARD_ID_MODULUS for i in ids}) > 1 else None
        if shard_map is None:
            return {"": ids}
        groups: dict[str, list[int]] = {}
        for action_id in ids:
            groups.setdefault(shard_map.leaders.get(action_id % SHARD_ID_MODULUS, ""), []).append(action_id)
        return groups

    def _watch_many(self, groups: dict[str, list[int]], end: float | None,
                    pending: dict[int, None]) -> Iterator[tpb.Action]:
        """One stream per shard leader, merged into this thread."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        calls: list[Any] = []

        def pump(start: str, ids: list[int]) -> None:
            try:
                for action in self._watch(dict.fromkeys(ids), end, start=start or None, regroup=True,
                                          calls=calls):
                    if stop.is_set():
                        return
                    events.put(("action", action))
            except BaseException as exc:  # handed to the caller's thread
                events.put(("error", exc))
            finally:
                events.put(("done", None))

        threads = [threading.Thread(target=pump, args=(addr, ids), daemon=True, name="hsm-watch")
                   for addr, ids in groups.items()]
        for t in threads:
            t.start()
        left = len(threads)
        try:
            while left:
                kind, value = events.get()
                if kind == "action":
                    if value.state in TERMINAL_STATES:
                        pending.pop(value.action_id, None)
                    yield value
                elif kind == "error":
                    raise value
                else:
                    left -= 1
        finally:
            stop.set()
            for call in list(calls):
                call.cancel()

    def _watch(self, pending: dict[int, None], end: float | None, start: str | None = None,
               regroup: bool = False, calls: list[Any] | None = None) -> Iterator[tpb.Action]:
        what = f"watch of {len(pending)} actions"
        route = _Route(self, end, what, start=start)
        while pending:
            remaining = self._watch_remaining(end, pending)
            stub = self._stub(route.target)
            call = stub.Watch(cpb.WatchRequest(action_ids=list(pending)), timeout=remaining)
            if calls is not None:
                calls.append(call)
            got_event = False
            try:
                for event in call:
                    if not got_event:
                        got_event = True
                        self._check_identity(route.target, _metadata(call, "initial_metadata"))
                        route.succeeded()
                    action = event.action
                    if action.state in TERMINAL_STATES:
                        pending.pop(action.action_id, None)
                    yield action
                    if not pending:
                        return
                # The stream closed with actions still running (replica shut
                # down its streams): reopen, elsewhere if need be.
                log.debug("%s: stream from %s ended early, %d actions left",
                          what, route.target, len(pending))
                self._watch_remaining(end, pending)
                time.sleep(0.05)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                self._check_identity(route.target, _metadata(err, "initial_metadata"), answered=False)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and end is not None:
                    continue  # the loop raises our own DeadlineExceeded at the top
                if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and got_event:
                    # A stream that worked and broke: treat like an outage.
                    log.debug("%s: stream from %s broke (%s)", what, route.target, code)
                    time.sleep(0.05)
                    continue
                if (regroup and code == grpc.StatusCode.FAILED_PRECONDITION
                        and len({i % SHARD_ID_MODULUS for i in pending}) > 1):
                    raise _Regroup() from None
                route.failed(err)
            finally:
                call.cancel()

    @staticmethod
    def _watch_remaining(end: float | None, pending: dict[int, None]) -> float | None:
        if end is None:
            return None
        left = end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"timed out waiting for {len(pending)} action(s) to end: "
                + ", ".join(str(a) for a in list(pending)[:10])
                + (" ..." if len(pending) > 10 else "")
            )
        return left

    def wait(self, action_ids: Iterable[int], deadline: float | None = None) -> dict[int, tpb.Action]:
        """Block until every action ended; the final state of each, by id."""
        final: dict[int, tpb.Action] = {}
        for action in self.watch(action_ids, deadline):
            if action.state in TERMINAL_STATES:
                final[action.action_id] = action
        return final

    def status(self) -> cpb.StatusResponse:
        return self._call("Status", cpb.StatusRequest(), "status")

    def control(self, mode: str) -> str:
        """Set the cluster's hsm_control mode: enabled, disabled or shutdown."""
        if mode not in ("enabled", "disabled", "shutdown"):
            raise InvalidArgument(f"control mode must be enabled, disabled or shutdown, not {mode!r}")
        return str(self._call("Control", cpb.ControlRequest(mode=mode), f"control {mode}").mode)

    def drain_agent(self, agent_id: str, drain: bool = True, *, force: bool = False) -> cpb.DrainAgentResponse:
        """Give an agent no new work (``drain=False``: work again). The reply
        counts the actions it still holds, per kind; once they are all 0 the
        agent can be stopped safely. Repeating the call is harmless."""
        if not agent_id or len(agent_id) > 128:
            raise InvalidArgument(f"agent id must be 1-128 characters, not {agent_id!r}")
        what = f"{'drain' if drain else 'resume'} agent {agent_id}"
        return self._call("DrainAgent", cpb.DrainAgentRequest(agent_id=agent_id, drain=drain, force=force), what)

    def get_policy(self) -> cpb.PolicyResponse:
        """The cluster's policy: its document, version, when and by whom it
        was set, and each shard's version (docs/policy.md)."""
        return self._call("GetPolicy", cpb.GetPolicyRequest(), "get policy")

    def set_policy(self, text: str, *, dry_run: bool = False, expect_version: int = 0) -> cpb.PolicyResponse:
        """Replace the policy with *text* on every shard, as the next
        version; the reply's ``changes`` say what changed. *dry_run*: only
        check it (InvalidArgument lists every error, ``line N: ...``) and
        say what would change. *expect_version*: refused (Aborted) unless
        the policy is at that version now (or, for the retry of a set that
        failed half-way, was before it). Retrying a set that failed half-way
        completes its version on the shards that lack it and says the same
        changes."""
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise InvalidArgument(f"the policy is {len(text.encode())} bytes, at most {MAX_POLICY_BYTES}")
        what = "check policy" if dry_run else "set policy"
        return self._call("SetPolicy", cpb.SetPolicyRequest(text=text, dry_run=dry_run,
                                                            expect_version=expect_version), what)

    def lease(self, name: str, holder: str, ttl: float, *, timeout: float | None = None) -> cpb.LeaseResponse:
        """Take or renew the lease *name* for *holder* for *ttl* seconds from
        when shard 0's leader applies it (``ttl`` 0: give it back). The reply
        says whether *holder* holds it, and who does and for how long. The
        lease runs on the leader's clock: a holder must count its *ttl* from
        before it asked, and stop acting on it before that runs out."""
        if not 1 <= len(name) <= 256 or not 1 <= len(holder) <= 256:
            raise InvalidArgument("a lease's name and holder must be 1-256 characters")
        if ttl and not 1.0 <= ttl <= 3600.0:
            raise InvalidArgument(f"a lease's ttl must be 1-3600 s (0 gives it back), not {ttl}")
        return self._call("Lease", cpb.LeaseRequest(name=name, holder=holder, ttl_ms=round(ttl * 1000)),
                          f"lease {name}", timeout=timeout)

    # -- HSM events (changelog records of ended actions) for named consumers --

    def register_event_consumer(self, name: str) -> list[cpb.EventCursor]:
        """Register *name* on every shard (again: harmless); it reads the
        records made from now on. Its cursor per shard."""
        return list(self._call("EventConsumer", cpb.EventConsumerRequest(name=name),
                               f"register event consumer {name}").cursors)

    def deregister_event_consumer(self, name: str) -> None:
        """Forget *name*; records only it held are released."""
        self._call("EventConsumer", cpb.EventConsumerRequest(name=name, deregister=True),
                   f"deregister event consumer {name}")

    def read_events(self, consumer: str, max_events: int = 1000, wait: float = 0.0) -> cpb.ReadEventsResponse:
        """Records after *consumer*'s cursors (up to *max_events* per shard),
        the same again until acknowledged (:meth:`ack_events`). *wait*: when
        there is none, wait up to this many seconds (at most 60) for one."""
        if not 1 <= max_events <= 10_000:
            raise InvalidArgument(f"max_events must be 1-10000, not {max_events}")
        if not 0 <= wait <= 60:
            raise InvalidArgument(f"wait must be 0-60 seconds, not {wait}")
        return self._call("ReadEvents", cpb.ReadEventsRequest(consumer=consumer, max_events=max_events,
                                                               wait_seconds=wait),
                          f"read events of {consumer}", timeout=self.timeout + wait)

    def ack_events(self, consumer: str, events: Iterable[cpb.HsmEvent]) -> list[cpb.EventCursor]:
        """*consumer* processed *events*: its cursor in each of their shards
        moves to the newest of them (idempotent; never backwards)."""
        upto: dict[int, int] = {}
        for e in events:
            upto[e.shard] = max(upto.get(e.shard, 0), e.recno)
        if not upto:
            return []
        request = cpb.AckEventsRequest(consumer=consumer, upto=[cpb.EventCursor(shard=s, acked=n)
                                                                 for s, n in sorted(upto.items())])
        return list(self._call("AckEvents", request, f"acknowledge events of {consumer}").cursors)

    def follow_events(self, consumer: str, wait: float = 30.0, max_events: int = 1000) -> Iterator[cpb.HsmEvent]:
        """Every record for *consumer*, forever: each batch is acknowledged
        once the caller asked for the record after its last one (so a
        record is acknowledged only after the caller had it). Stop by
        breaking out of the loop (the last batch is then not acknowledged:
        the next reader gets it again)."""
        while True:
            batch = list(self.read_events(consumer, max_events, wait).events)
            yield from batch
            if batch:
                self.ack_events(consumer, batch)

    # -- the catalog (issue 18): every archived copy of every file ----------------

    def copies_of(self, fid: Fid | str | tpb.Fid, fsname: str = "") -> list[cpb.CatalogEntry]:
        """The archived copies of one file (every file system with the FID
        when *fsname* is ""), in archive id order."""
        request = cpb.ListCopiesRequest(fid=_fid_selector(fid, fsname))
        return list(self._call("ListCopies", request, f"list the copies of {fid}").copies)

    def move_copies(self, from_fsname: str, from_fid: Fid | str | tpb.Fid, to_fsname: str,
                    to_fid: Fid | str | tpb.Fid) -> list[cpb.CatalogEntry]:
        """Give the copies of a deleted file to the file recreated from them
        (``hsmctl catalog restore --to``); the new file's copies."""
        request = cpb.MoveCopiesRequest(to=_fid_selector(to_fid, to_fsname))
        getattr(request, "from").CopyFrom(_fid_selector(from_fid, from_fsname))
        return list(self._call("MoveCopies", request, f"move the copies of {from_fid} to {to_fid}").copies)

    def relocate_copies(self, moves: Iterable[tuple[str, Fid, int, str, str, int]]) -> int:
        """Packed copies moved to another container (``hsmctl catalog
        compact``): (fsname, fid, archive id, from container, to container,
        to slot) each; how many moved (a copy no longer in the old
        container is left as it is)."""
        items = [cpb.Relocation(file=_fid_selector(fid, fsname), archive_id=a, from_container=old,
                                to_container=new, to_slot=slot) for fsname, fid, a, old, new, slot in moves]
        moved = 0
        for i in range(0, len(items), 10_000):
            reply = self._call("RelocateCopies", cpb.RelocateCopiesRequest(moves=items[i:i + 10_000]),
                               "relocate packed copies")
            moved += reply.changed
        return moved

    def list_copies(self, *, archive_id: int = 0, archived_before: float = 0.0, archived_after: float = 0.0,
                    min_size: int | None = None, max_size: int | None = None, uid: int | None = None,
                    path_prefix: str = "", page_size: int = 1000,
                    shards: Iterable[int] | None = None) -> Iterator[cpb.CatalogEntry]:
        """Every copy the filters keep, shard after shard, each in (fsname,
        FID) order, page by page (each page read on the shard's leader
        under a bounded look, so a listing never holds dispatch up)."""
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument(f"page size must be from 1 to {MAX_PAGE}, not {page_size!r}")
        wanted = list(range(self.cluster_info().shard_count)) if shards is None else list(shards)
        for shard in wanted:
            request = cpb.ListCopiesRequest(shard=shard, page_size=page_size, archive_id=archive_id,
                                            archived_before=archived_before, archived_after=archived_after,
                                            path_prefix=path_prefix)
            if min_size is not None:
                request.min_size = min_size
            if max_size is not None:
                request.max_size = max_size
            if uid is not None:
                request.uid = uid
            while True:
                page = self._call("ListCopies", request, f"list the copies of shard {shard}")
                yield from page.copies
                if not page.HasField("next"):
                    break
                request.after.CopyFrom(page.next)

    def cluster_info(self) -> cpb.ClusterInfoResponse:
        info = self._call("ClusterInfo", cpb.ClusterInfoRequest(), "cluster info")
        self._remember_members(info)
        return info


def errno_name(value: int) -> str:
    """``"EPERM"`` for 1; the number as text for unknown values."""
    return _errno.errorcode.get(value, str(value))
