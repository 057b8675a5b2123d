"""Between the wire (hsm.v1 protobuf) and the pure state machine.

Validation lives here, at the edge: a request with any malformed item is
refused whole with ``InvalidRequest`` (INVALID_ARGUMENT) before anything is
proposed, so bad input changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from coordinator.catalog import MAX_PATH, Copy, CopyError  # MAX_PATH: a path's bound (PATH_MAX)
from coordinator.policy import Policy
from coordinator.state import (
    MAX_SHARDS,
    Action,
    CookieTarget,
    FidTarget,
    Item,
    Kind,
    Requester,
    State,
)
from hsm.hsmflags import HS_ALL, HSM_REQUEST_FLAGS, resolve_archive_id
from hsm.v1 import agent_pb2, coordinator_pb2, types_pb2
from hsm.wire import FSNAME_RULE, MAX_NAME, fid_from_pb, fid_to_pb, name_problem, valid_fsname

MAX_ITEMS = 10_000
MAX_DATA = 4096
MAX_TEXT = MAX_NAME
_KINDS = {k.value for k in Kind}


class InvalidRequest(ValueError):
    """A malformed request: answered INVALID_ARGUMENT, nothing changes."""


def quoted(value: str, most: int = 40) -> str:
    """*value* as an error message shows it: at most *most* characters (a
    status message echoing a client's 300,000-character string is more
    metadata than a gRPC client reads: it would see RESOURCE_EXHAUSTED)."""
    return repr(value[:most]) + (f"... ({len(value)} characters)" if len(value) > most else "")


def check_name(value: str, what: str, max_len: int = MAX_NAME, empty_ok: bool = False) -> None:
    """An id or name a client sent (``hsm.wire.name_problem``), or InvalidRequest."""
    problem = name_problem(value, what, max_len, empty_ok)
    if problem:
        raise InvalidRequest(problem)


def check_fsname(fsname: str, where: str) -> None:
    if not valid_fsname(fsname):
        raise InvalidRequest(f"{where}: fsname {quoted(fsname)} must be {FSNAME_RULE}")


def item_from_pb(pb: coordinator_pb2.SubmitItem, index: int, archive_ids: Collection[int],
                 admission: Admission | None = None) -> Item:
    """The checked Item of *pb*, or InvalidRequest. With *admission* (the
    leader's policy, its version and the default archive id), the item
    carries the admission rules that hold for it (``Item.admitted``)."""
    where = f"item {index}"
    check_fsname(pb.fsname, where)
    if not pb.HasField("fid") or pb.fid.seq == 0:
        raise InvalidRequest(f"{where}: a FID with a non-zero sequence is required")
    if pb.kind not in _KINDS:
        raise InvalidRequest(f"{where}: unknown action kind {pb.kind} (ARCHIVE=20, RESTORE=21, REMOVE=22)")
    kind = Kind(pb.kind)
    if pb.archive_id and pb.archive_id not in archive_ids:
        known = ", ".join(str(a) for a in sorted(archive_ids))
        raise InvalidRequest(f"{where}: unknown archive id {pb.archive_id} (configured: {known})")
    offset, length = 0, -1
    if pb.HasField("extent"):
        offset, length = pb.extent.offset, pb.extent.length
        if offset < 0:
            raise InvalidRequest(f"{where}: negative extent offset {offset}")
        if length == 0 or length < -1:
            raise InvalidRequest(f"{where}: extent length {length} must be > 0, or -1 for to-EOF")
        if kind == Kind.RESTORE and (offset, length) != (0, -1):
            raise InvalidRequest(f"{where}: RESTORE is whole-file only (extent 0 to EOF)")
    if len(pb.data) > MAX_DATA:
        raise InvalidRequest(f"{where}: data is {len(pb.data)} bytes, at most {MAX_DATA} allowed")
    if pb.flags & ~HSM_REQUEST_FLAGS:
        raise InvalidRequest(f"{where}: unknown request flags 0x{pb.flags & ~HSM_REQUEST_FLAGS:x}")
    for value, what in ((pb.idempotency_key, "idempotency key"), (pb.requester.initiator, "initiator")):
        problem = name_problem(value, what, MAX_TEXT, empty_ok=True)
        if problem:
            raise InvalidRequest(f"{where}: {problem}")
    hsm_flags: int | None = None
    hsm_archive_id = data_version = hsm_ctime = 0
    if pb.HasField("hsm"):
        if pb.hsm.flags & ~int(HS_ALL):
            raise InvalidRequest(f"{where}: unknown HSM state flags 0x{pb.hsm.flags & ~int(HS_ALL):x}")
        hsm_flags = pb.hsm.flags
        hsm_archive_id = pb.hsm.archive_id
        data_version = pb.hsm.data_version
        hsm_ctime = pb.hsm.ctime_ns
    if len(pb.path.encode()) > MAX_PATH or "\0" in pb.path:
        raise InvalidRequest(f"{where}: path must be at most {MAX_PATH} bytes without NUL")
    size = -1
    if pb.HasField("size"):
        if pb.size >= 1 << 63:
            raise InvalidRequest(f"{where}: size {pb.size} is not a file size")
        size = pb.size
    r = pb.requester
    key = pb.idempotency_key or (f"{r.initiator}:{r.cookie}" if r.cookie else "")
    admitted = None
    if admission is not None and admission.policy.rules:
        archive_id = resolve_archive_id(pb.archive_id, hsm_archive_id, admission.default_archive_id)
        admitted = (admission.version, archive_id,
                    admission.policy.holding(kind, archive_id, pb.path, size if size >= 0 else None,
                                             r.uid, r.gid, r.projid, r.initiator))
    return Item(
        fsname=pb.fsname,
        fid=fid_from_pb(pb.fid),
        kind=kind,
        archive_id=pb.archive_id,
        offset=offset,
        length=length,
        data=bytes(pb.data),
        flags=pb.flags,
        priority=pb.priority,
        requester=Requester(r.initiator, r.cookie, r.uid, r.gid, r.projid),
        key=key,
        hsm_flags=hsm_flags,
        hsm_archive_id=hsm_archive_id,
        data_version=data_version,
        hsm_ctime=hsm_ctime,
        path=pb.path,
        size=size,
        admitted=admitted,
    )


class Admission(NamedTuple):
    """What a leader decides admission with, once for every replica."""

    policy: Policy
    version: int
    default_archive_id: int


def items_from_pb(req: coordinator_pb2.SubmitRequest, archive_ids: Collection[int],
                  admission: Admission | None = None) -> list[Item]:
    n = len(req.items)
    if n == 0:
        raise InvalidRequest("a submit needs at least one item")
    if n > MAX_ITEMS:
        raise InvalidRequest(f"{n} items in one submit, at most {MAX_ITEMS}: split the batch")
    return [item_from_pb(pb, i, archive_ids, admission) for i, pb in enumerate(req.items)]


def fid_target_from_pb(pb: coordinator_pb2.FidSelector, where: str) -> FidTarget:
    if pb.fsname:
        check_fsname(pb.fsname, where)
    if not pb.HasField("fid") or pb.fid.seq == 0:
        raise InvalidRequest(f"{where}: a FID with a non-zero sequence is required")
    kind: Kind | None = None
    if pb.kind:
        if pb.kind not in _KINDS:
            raise InvalidRequest(f"{where}: unknown action kind {pb.kind}")
        kind = Kind(pb.kind)
    return FidTarget(pb.fsname, fid_from_pb(pb.fid), kind)


def cookie_target_from_pb(pb: types_pb2.Requester, where: str) -> CookieTarget:
    """A CancelRequest cookie: the initiator and the non-zero cookie of the
    requester whose action to cancel (see ``CookieTarget``)."""
    if not pb.initiator:
        raise InvalidRequest(f"{where}: an initiator is required")
    if len(pb.initiator) > MAX_TEXT:
        raise InvalidRequest(f"{where}: initiator is limited to {MAX_TEXT} characters")
    if pb.cookie == 0:
        raise InvalidRequest(f"{where}: a non-zero cookie is required")
    return CookieTarget(pb.initiator, pb.cookie)


def extent_to_pb(offset: int, length: int) -> types_pb2.Extent:
    return types_pb2.Extent(offset=offset, length=length)


def action_to_pb(a: Action, shard: int, place: tuple[int, int] | None = None,
                 start_estimate: float = 0.0) -> types_pb2.Action:
    """*place*: (actions before it, queue length) of a WAITING action that
    may start now (ShardState.queue_position); *start_estimate*: seconds."""
    pb = types_pb2.Action(
        action_id=a.id,
        fsname=a.fsname,
        fid=fid_to_pb(a.fid),
        kind=int(a.kind),  # type: ignore[arg-type]
        archive_id=a.archive_id,
        extent=extent_to_pb(a.offset, a.length),
        data=a.data,
        flags=a.flags,
        priority=a.priority,
        requesters=[
            types_pb2.Requester(
                initiator=r.initiator, cookie=r.cookie, uid=r.uid, gid=r.gid, projid=r.projid, when=r.when
            )
            for r in a.requesters
        ],
        state=int(a.state),  # type: ignore[arg-type]
        agent=a.agent,
        attempt=a.attempt,
        created=a.created,
        started=a.started,
        ended=a.ended,
        bytes_done=a.bytes_done,
        bytes_total=a.bytes_total,
        errno=a.errno,
        error=a.error,
        shard=shard,
        data_version=a.data_version,
    )
    if a.copies or a.copies_done:
        pb.copies = a.copies_done + 1 + len(a.copies)
        pb.copies_done = a.copies_done
    if a.tried:
        pb.copies_failed.extend(a.tried)
    if place is not None:
        pb.queue_position = place[0] + 1
        pb.queue_length = place[1]
        pb.start_estimate = start_estimate
    return pb


def assignment_to_pb(a: Action, copy: Copy | None = None, shard: int | None = None) -> agent_pb2.Assignment:
    """*copy*: the catalog's copy a restore reads or a remove deletes (its
    object key; a packed file's container slice). *shard*: the shard that
    holds the action, said only when the id names another (a split moved it)."""
    pb = agent_pb2.Assignment(
        action_id=a.id,
        attempt=a.attempt,
        fsname=a.fsname,
        fid=fid_to_pb(a.fid),
        dfid=fid_to_pb(a.fid),
        kind=int(a.kind),  # type: ignore[arg-type]
        archive_id=a.archive_id,
        extent=extent_to_pb(a.offset, a.length),
        data=a.data,
        flags=a.flags,
        data_version=a.data_version,
        # the MDT cookies the lustre backend begins and ends the action with
        requesters=[
            types_pb2.Requester(
                initiator=r.initiator, cookie=r.cookie, uid=r.uid, gid=r.gid, projid=r.projid, when=r.when
            )
            for r in a.requesters
        ],
        copies_left=len(a.copies),
    )
    if shard is not None and shard != a.id % MAX_SHARDS:
        pb.shard = shard
    if copy is not None:
        pb.object_key = copy.key
        if copy.container:
            pb.object_key = copy.container
            pb.packed = True
            pb.object_offset = copy.slot
            pb.object_length = copy.size
            pb.object_checksum = copy.checksum
    return pb


def states_from_pb(values: Collection[int]) -> list[State]:
    out = []
    for v in values:
        try:
            out.append(State(v))
        except ValueError:
            raise InvalidRequest(f"unknown action state {v}") from None
    return out


def kinds_from_pb(values: Collection[int]) -> list[Kind]:
    out = []
    for v in values:
        if v not in _KINDS:
            raise InvalidRequest(f"unknown action kind {v}")
        out.append(Kind(v))
    return out


def copy_facts_from_pb(pb: agent_pb2.Done) -> tuple[Any, ...] | None:
    """What an agent's Done says of the copy its archive wrote
    (``Completion.copy``, in ``COPY_FACTS`` order), or None when it says
    nothing or breaks the catalog's bounds (the catalog then records what
    the action itself knows): an agent's text cannot grow the catalog."""
    if not pb.HasField("copy"):
        return None
    c = pb.copy
    facts = (c.key, c.data_version, c.size, c.checksum, c.uid, c.gid, c.mode, c.path, c.container, c.slot)
    try:
        Copy(1, c.key, c.data_version, c.size, c.checksum, path=c.path, container=c.container, slot=c.slot).check()
    except CopyError:
        return None
    if c.size >= 1 << 63 or c.data_version >= 1 << 63 or c.slot >= 1 << 63:
        return None
    return facts


def copy_from_pb(pb: types_pb2.Copy) -> Copy:
    """A copy as a request gives it (checked: InvalidRequest names the bound it breaks)."""
    try:
        return Copy(pb.archive_id, pb.key, pb.data_version, pb.size, pb.checksum, pb.archived, pb.offset,
                    pb.length, pb.uid, pb.gid, pb.mode, pb.path, pb.container, pb.slot).check()
    except CopyError as exc:
        raise InvalidRequest(f"copy in archive id {pb.archive_id}: {exc}") from None


def copy_to_pb(c: Copy) -> types_pb2.Copy:
    return types_pb2.Copy(archive_id=c.archive_id, key=c.key, data_version=c.data_version, size=c.size,
                          checksum=c.checksum, archived=c.archived, offset=c.offset, length=c.length, uid=c.uid,
                          gid=c.gid, mode=c.mode, path=c.path, container=c.container, slot=c.slot)
