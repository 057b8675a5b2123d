"""The shard state machine: pure, deterministic, no I/O, no clock reads.

One ``ShardState`` holds every action of the FIDs that hash to one shard.
Every change is a command (an immutable value carrying the leader's clock as
``now``) applied by ``ShardState.apply(cmd) -> Outcome``. The same sequence
of commands gives the same state on every replica, which is what Raft
replicates. The gRPC servicers are thin shells that build commands and carry
out the effects (send an assignment or a cancel to an agent, wake watchers).

Semantics (ARCHITECTURE.md):

* States ``WAITING -> STARTED -> SUCCEEDED | FAILED | CANCELED`` plus
  ``CANCELING`` for a started action whose cancel was sent. Every transition
  is one row of ``TRANSITIONS``; anything else raises ``IllegalTransition``.
* Per FID, actions run strictly in arrival order and at most one is STARTED
  (or CANCELING) at a time: only the oldest non-terminal action of a FID is
  ever *ready* (in a scheduler queue).
* Dedup: a request joins a non-terminal action with the same
  ``(fsname, fid, kind, archive_id)`` as another requester. RESTORE and
  REMOVE join WAITING or STARTED actions (the running copy serves the new
  requester too); ARCHIVE joins only a WAITING one, because a running
  archive may be copying older data than the new requester wants archived.
  A request that joins a WAITING action with a data version gives it its
  version (it saw the file last); the mover refuses a file whose data
  version differs (another file with the same fsname and FID, or rewritten).
* Idempotency keys: a retried item with a known key gets its first answer
  and changes nothing.
* Cancel (by action id, FID, all, or a requester's cookie): a WAITING
  action is CANCELED at once; a STARTED one becomes CANCELING and its own
  agent is told (``SendCancel``) at once; when the agent reports success
  anyway, SUCCEEDED wins.
* Request checks follow the MDT (mdt_hsm_cdt_client.c): not needed ->
  NOT_NEEDED, needed but not compatible with the file's state -> EPERM;
  ``HSM_FORCE_ACTION`` only makes an action needed. Completions follow
  hsm_cdt_request_completed: the errno's sign is ignored, ENOSYS fails the
  action without retry (or, on a CANCELING one, ends it CANCELED).
"""

from __future__ import annotations

import errno as E
import operator
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import Enum, IntEnum
from itertools import chain
from typing import Any, Final, NamedTuple

from mypy_extensions import mypyc_attr

from coordinator import moves, split
from coordinator.catalog import COPY_FIELDS, Catalog, Copy, CopyError
from coordinator.events import HE_ARCHIVE, HE_REMOVE, HE_RESTORE, ConsumerError, EventLog
from coordinator.policy import MAX_COPIES, Policy, PolicyError, parse, seeded
from coordinator.stripes import Ended as StripeEnded
from coordinator.stripes import PartState, StopPart, Stripe, part_of, wire_attempt
from coordinator.stripes import Phase as StripePhase
from coordinator.stripes import Seal as StripeSeal
from hsm.fid import Fid
from hsm.hsmflags import check_request, resolve_archive_id
from hsm.wire import SHARD_ID_MODULUS, hints

#: Action ids are ``seq * MAX_SHARDS + shard``: unique in the cluster and
#: readable ("...003" lives on shard 3).
MAX_SHARDS = SHARD_ID_MODULUS


class Kind(IntEnum):
    """Copytool action kinds; values are Lustre's HSMA_* codes."""

    ARCHIVE = 20
    RESTORE = 21
    REMOVE = 22


#: the changelog event (CLF_HSM) an action's end records
_HSM_EVENT: Final = {Kind.ARCHIVE: HE_ARCHIVE, Kind.RESTORE: HE_RESTORE, Kind.REMOVE: HE_REMOVE}


class State(IntEnum):
    """Action states; values match the proto ``ActionState``."""

    WAITING = 1
    STARTED = 2
    CANCELING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELED = 6

    @property
    def terminal(self) -> bool:
        return self >= State.SUCCEEDED


TERMINAL = frozenset(s for s in State if s.terminal)
#: Scheduling classes, most urgent first.
KIND_PRIORITY = (Kind.RESTORE, Kind.REMOVE, Kind.ARCHIVE)


class Ev(Enum):
    ASSIGN = "assign"  # handed to an agent
    CANCEL = "cancel"  # an admin or user canceled it
    SUCCEED = "succeed"  # agent reported success
    FAIL = "fail"  # agent reported an error, or attempts ran out
    AGENT_CANCELED = "agent_canceled"  # agent reported ECANCELED after our cancel
    REQUEUE = "requeue"  # agent gone, or a transient error to retry
    RECLAIM = "reclaim"  # no progress for progress_timeout: stop it, then requeue
    RECLAIMED = "reclaimed"  # the agent stopped a reclaimed action (or is gone)


TRANSITIONS: dict[tuple[State, Ev], State] = {
    (State.WAITING, Ev.ASSIGN): State.STARTED,
    (State.WAITING, Ev.CANCEL): State.CANCELED,
    (State.WAITING, Ev.FAIL): State.FAILED,  # a striped archive whose parts used their attempts
    (State.STARTED, Ev.CANCEL): State.CANCELING,
    (State.STARTED, Ev.SUCCEED): State.SUCCEEDED,
    (State.STARTED, Ev.FAIL): State.FAILED,
    (State.STARTED, Ev.REQUEUE): State.WAITING,
    (State.CANCELING, Ev.SUCCEED): State.SUCCEEDED,  # the truth wins over the cancel
    (State.CANCELING, Ev.FAIL): State.FAILED,
    (State.CANCELING, Ev.AGENT_CANCELED): State.CANCELED,
    (State.CANCELING, Ev.REQUEUE): State.CANCELED,  # lost while canceling: the cancel stands
    (State.STARTED, Ev.RECLAIM): State.CANCELING,  # stuck: its agent is told to stop first ...
    (State.CANCELING, Ev.RECLAIMED): State.WAITING,  # ... and only then may it run elsewhere
}


class IllegalTransition(Exception):
    """A state change that the transition table does not allow."""

    def __init__(self, action_id: int, state: State, event: Ev) -> None:
        super().__init__(f"action {action_id}: no transition from {state.name} on {event.value}")
        self.action_id = action_id
        self.state = state
        self.event = event


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


class Requester(NamedTuple):
    initiator: str
    cookie: int = 0
    uid: int = 0
    gid: int = 0
    projid: int = 0
    when: float = 0.0
    key: str = ""  # idempotency key of the request that brought this requester
    #: who submitted it, as the certificate of a caller of role ``user``
    #: names it (set by the servicer from the TLS peer, never from the
    #: request; at most MAX_OWNER characters); "" for every other role and
    #: without TLS. A user may cancel an action only when every requester
    #: of it is theirs (``Cancel.owner``). Added later: a requester
    #: journaled or snapshotted before it unpickles with "".
    owner: str = ""


class Item(NamedTuple):
    """One validated request (see ``coordinator.convert`` for validation)."""

    fsname: str
    fid: Fid
    kind: Kind
    archive_id: int = 0  # 0: the file's, else the default
    offset: int = 0
    length: int = -1  # -1: to EOF
    data: bytes = b""
    flags: int = 0
    priority: int = 0
    requester: Requester = Requester("")
    key: str = ""  # idempotency key; "" = not idempotent
    hsm_flags: int | None = None  # the file's HSM flags as the requester saw them
    hsm_archive_id: int = 0
    data_version: int = 0  # the file's data version as the requester saw it; 0 = unknown
    #: the file's ctime (ns) when the requester read its HSM state, after
    #: the flags: it orders the states of the file (0: unknown)
    hsm_ctime: int = 0
    #: the file's path and size as the requester knows them, for the
    #: policy's admission rules ("" and -1: unknown; a rule on path or size
    #: then does not match)
    path: str = ""
    size: int = -1
    #: (policy version, archive id, ``Policy.holding`` mask): the admission
    #: rules the leader found to hold, so that the other replicas do not
    #: evaluate them again; used only when this shard applies the item at
    #: that policy version and resolves that archive id (else evaluated
    #: here, the same way on every replica). None: evaluate at apply.
    admitted: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Submit:
    now: float
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Assign:
    """Hand WAITING actions to an agent (chosen by the scheduler on the leader)."""

    now: float
    agent: str
    action_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AssignRound:
    """One dispatcher round on a shard: WAITING actions handed to several
    agents, one Raft command for all of them. Each agent's ids are applied
    as an ``Assign`` of their own, in order."""

    now: float
    assignments: tuple[tuple[str, tuple[int, ...]], ...]


class ProgressReport(NamedTuple):
    action_id: int
    attempt: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True, slots=True)
class Progress:
    now: float
    reports: tuple[ProgressReport, ...]
    #: the agent that sent the reports: a report for an action another
    #: agent holds is ignored ("" in entries written before it existed)
    agent: str = ""


class Completion(NamedTuple):
    action_id: int
    attempt: int
    errno: int = 0
    message: str = ""
    retry: bool = False
    bytes_done: int = 0
    #: the agent gave the action back for its own reasons (it is stopping),
    #: not the action's fault: requeued without using up an attempt
    handback: bool = False
    #: a successful archive: what the mover says it wrote, for the catalog,
    #: (key, data version, size, checksum, uid, gid, mode, path, container,
    #: slot) as :data:`COPY_FACTS` (checked by the servicer; entries written
    #: before packing have the first 8); None: the action's own
    copy: tuple[Any, ...] | None = None
    #: a striped archive's anchor (coordinator.stripes): the agent began
    #: the archive, found the file large enough to stripe and let go of it
    #: without copying; *copy* holds the data version and size it saw
    anchored: bool = False


#: what a mover reports of the copy it wrote (Completion.copy), in order
COPY_FACTS: Final = ("key", "data_version", "size", "checksum", "uid", "gid", "mode", "path", "container", "slot")


@dataclass(frozen=True, slots=True)
class Complete:
    now: float
    completions: tuple[Completion, ...]
    #: the agent that sent the completions: one for an action another agent
    #: holds is refused (reply False), like a stale one ("" in entries
    #: written before it existed)
    agent: str = ""


@dataclass(frozen=True, slots=True)
class FidTarget:
    fsname: str  # "" = any file system
    fid: Fid
    kind: Kind | None = None  # None = every kind


class CookieTarget(NamedTuple):
    """A requester's own reference to its request: the action that an item
    with this initiator and cookie (and no explicit idempotency key) created
    or joined, found through its idempotency key ``"{initiator}:{cookie}"``.
    The MDT bridge cancels an HSMA_CANCEL item's action this way."""

    initiator: str
    cookie: int

    @property
    def key(self) -> str:
        return f"{self.initiator}:{self.cookie}"


@dataclass(frozen=True, slots=True)
class Cancel:
    now: float
    action_ids: tuple[int, ...] = ()
    fids: tuple[FidTarget, ...] = ()
    all: bool = False
    reason: str = ""
    #: added later (a journal written before it unpickles with the default):
    #: each gets one reply, after the others, in order; NOT_FOUND (action
    #: id 0) when no kept action has that requester cookie
    cookies: tuple[CookieTarget, ...] = ()
    #: added later ("" in entries written before it: no restriction): a
    #: cancel on behalf of this user (the ``owner`` of their requests). The
    #: whole command is refused, nothing changed, with one ``CancelRefused``
    #: reply, when one of its live targets has a requester that is not
    #: theirs (``ShardState.cancel_refusal``)
    owner: str = ""


#: longest ``Requester.owner`` / ``Cancel.owner`` (a certificate name)
MAX_OWNER = 256


@dataclass(frozen=True, slots=True)
class AgentLost:
    """An agent is gone for good (or, with ``action_ids``, no longer runs
    those actions): its STARTED actions go back to WAITING (or FAIL after
    ``max_attempts``), its CANCELING ones are CANCELED."""

    now: float
    agent: str
    reason: str = "agent lost"
    action_ids: tuple[int, ...] = ()  # empty: every action the agent holds
    #: (action id, wire attempt) of striped archives' parts the agent no
    #: longer runs (reconcile); with neither this nor action_ids: all of them
    parts: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Actions whose agent reported no progress for ``progress_timeout``
    (checked again at apply: progress may have arrived meanwhile). Each is
    stopped on its agent (CANCELING) and goes back to WAITING once the agent
    confirms, or is gone; after ``max_attempts`` it FAILS with ETIMEDOUT."""

    now: float
    action_ids: tuple[int, ...]
    #: reclaim even with recent progress: the agent said it does not run it
    force: bool = False
    reason: str = ""
    #: (action id, wire attempt) of striped archives' parts without
    #: progress: each runs again (an attempt used) and its agent is told to stop
    parts: tuple[tuple[int, int], ...] = ()


#: hsm_control modes
CONTROL_MODES = ("enabled", "disabled", "shutdown")


@dataclass(frozen=True, slots=True)
class SetControl:
    """``enabled``: dispatch; ``disabled``: accept and queue, dispatch
    nothing; ``shutdown``: running actions finish, new requests are refused,
    nothing new is dispatched."""

    now: float
    mode: str


@dataclass(frozen=True, slots=True)
class DrainAgent:
    """``drain=True``: give this agent no new work (its running actions
    finish); ``drain=False``: give it work again. Kept until undone, across
    reconnects of the agent."""

    now: float
    agent: str
    drain: bool = True


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Replace the shard's policy (coordinator.policy) with *text* as
    *version*. Applied when *version* is newer than the shard's; a retry of
    the same version and text changes nothing and succeeds; the same
    version with another text is refused (two admins raced). Every replica
    parses the same text at the same log position, so every decision after
    it is the same everywhere."""

    now: float
    version: int
    text: str
    by: str = ""  # who set it (the caller's certificate name, or peer)


#: longest lease (seconds): a holder that vanished blocks its standby at most this long
MAX_LEASE_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Lease:
    """Take, renew or give back the lease *name* for *holder* (one active
    ``hsm-bridge`` per file system). Granted when nobody holds it, when its
    holder's time ran out (``now`` at or past its expiry), or to its holder
    (a renewal); it then runs *ttl* seconds from ``now``. ``ttl`` 0 gives it
    back when *holder* holds it. A renewal never shortens it. ``now`` is the proposing leader's clock
    (wall time: replicas keep their clocks in step with NTP)."""

    now: float
    name: str
    holder: str
    ttl: float


@dataclass(frozen=True, slots=True)
class EventConsumer:
    """Register (*register*) or deregister the HSM event consumer *name*
    in this shard's event log (coordinator.events)."""

    now: float
    name: str
    register: bool = True


@dataclass(frozen=True, slots=True)
class AckEvents:
    """Event consumer *name* processed this shard's records up to *index*."""

    now: float
    name: str
    index: int


@dataclass(frozen=True, slots=True)
class EditCatalog:
    """Record *copies* (``Copy.values()`` tuples) as copies of the file
    (fsname, fid), each replacing the file's copy of the same archive id;
    or, with *forget*, forget every copy of the file. The two halves of
    moving a deleted file's copies to the file recreated from them
    (``hsmctl catalog restore --to``), each on its FID's shard. Replies
    how many copies were recorded or forgotten."""

    now: float
    fsname: str
    fid: Fid
    copies: tuple[tuple[Any, ...], ...] = ()
    forget: bool = False


@dataclass(frozen=True, slots=True)
class RelocateCopies:
    """Packed copies moved to another container (``hsmctl catalog
    compact``): each (fsname, fid, archive id, old container, new
    container, new slot) changes the file's copy in that archive id only if
    it still lies in the old container (a file archived again meanwhile
    keeps its new copy). Replies how many moved."""

    now: float
    moves: tuple[tuple[str, Fid, int, str, str, int], ...]


@dataclass(frozen=True, slots=True)
class AssignParts:
    """Start parts of a striped archive (``ShardState.stripes``) on agents,
    as the leader chose them (``Stripe.choose``): (part index, agent,
    attempt) each; one that no longer fits is skipped."""

    now: float
    action_id: int
    runs: tuple[tuple[int, str, int], ...]


@dataclass(frozen=True, slots=True)
class MoveShard:
    """Begin moving the shard's group member *source* to replica *target*
    (coordinator.moves); *group* is the group as the leader knows it (the
    state's, else the configured placement). Replies a MoveReply."""

    now: float
    source: str
    target: str
    group: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MoveStep:
    """The move of *source* to *target* enters *phase* (a ``moves.Phase``
    value); the driver on the leader proposes each step once it is done.
    Replies a MoveReply."""

    now: float
    source: str
    target: str
    phase: int


@dataclass(frozen=True, slots=True)
class PreferLeader:
    """The group member *member* becomes the shard's preferred leader
    (first in ``ShardState.group``; the rebalancer spreads leaders this
    way). *group* as in MoveShard. Refused while a move runs. Replies a
    MoveReply."""

    now: float
    member: str
    group: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rebalance:
    """The cluster's rebalancer settings, kept on shard 0: *replica* drained
    (to hold no shard) or not (*drain*), when *replica* is given; the
    rebalancer on or off, when *enabled* is 1 or 0 (-1: unchanged)."""

    now: float
    replica: str = ""
    drain: bool = True
    enabled: int = -1


@dataclass(frozen=True, slots=True)
class Freeze:
    """A split (coordinator.split) begins on this shard: the ring of
    *shards* shards (*vnodes* each) grows by *added* to version *version*.
    On an old shard the FIDs that move are frozen (no new request, no
    start, no cancel of a waiting one; running ones run to their end); a
    new shard (index *shards* or above) takes Imports and serves nothing
    until Activate."""

    now: float
    version: int
    shards: int
    added: int
    vnodes: int


@dataclass(frozen=True, slots=True)
class Import:
    """On a new shard: chunk *chunk* of what old shard *source* hands over
    (``split.Bundle`` each, a FID whole); *last*: its export ends here. A
    FID already imported is skipped (a chunk sent again changes nothing)."""

    now: float
    version: int
    source: int
    chunk: int
    last: bool
    bundles: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Activate:
    """The split to ring version *version* takes effect on this shard: a
    new shard serves what it imported (refused until every old shard that
    hands it FIDs sent its last chunk); an old shard forgets the moved FIDs
    (refused while one of their actions still runs) and from now on refuses
    requests for them with their new shard."""

    now: float
    version: int


@dataclass(frozen=True, slots=True)
class AbortSplit:
    """Undo a split to ring version *version* that is not active on this
    shard: an old shard serves its frozen FIDs again, a new shard forgets
    what it imported."""

    now: float
    version: int


@dataclass(frozen=True, slots=True)
class ReshardBegin:
    """On shard 0: begin a split of the ring of *shards* shards at version
    ``version - 1`` by *added* shards (coordinator.split.Reshard), the new
    shards' Raft groups *groups*. Replies a ReshardReply."""

    now: float
    version: int
    shards: int
    added: int
    vnodes: int
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class ReshardStep:
    """On shard 0: the split to ring version *version* enters *phase* (a
    ``split.Phase`` value). Replies a ReshardReply."""

    now: float
    version: int
    phase: int


Command = (Submit | Assign | AssignRound | Progress | Complete | Cancel | AgentLost | Reclaim | SetControl | DrainAgent
           | Lease | EventConsumer | AckEvents | SetPolicy | EditCatalog | RelocateCopies | AssignParts | MoveShard
           | MoveStep | PreferLeader | Rebalance | Freeze | Import | Activate | AbortSplit | ReshardBegin
           | ReshardStep)


def _pickle_by_fields(cls: type) -> None:
    """Pickle a frozen dataclass as ``cls(*fields)``: several times faster
    than the generated ``__getstate__``/``__setstate__``, which call
    ``dataclasses.fields()`` per object. Every command crosses Raft pickled."""
    get = operator.attrgetter(*(f.name for f in fields(cls)))
    one = len(fields(cls)) == 1

    def reduce(self: object) -> tuple[type, tuple[Any, ...]]:
        return (cls, (get(self),) if one else get(self))

    setattr(cls, "__reduce__", reduce)  # noqa: B010


for _cls in (Submit, Assign, AssignRound, Progress, Complete, FidTarget, Cancel, AgentLost, Reclaim, SetControl, DrainAgent,
             Lease, EventConsumer, AckEvents, SetPolicy, EditCatalog, RelocateCopies, AssignParts, MoveShard, MoveStep,
             PreferLeader, Rebalance, Freeze, Import, Activate, AbortSplit, ReshardBegin, ReshardStep):
    _pickle_by_fields(_cls)


# --------------------------------------------------------------------------
# Effects and replies
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Changed:
    """The action changed (state, progress or requesters): wake its watchers."""

    action_id: int


@dataclass(frozen=True, slots=True)
class Assigned:
    """Send this action to this agent."""

    agent: str
    action_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Tell the agent holding this attempt to stop it, now."""

    agent: str
    action_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The action reached a terminal state (the shard's leader counts it:
    coordinator/metrics.py). *ran*: seconds from its last start to its end
    (-1: it never started)."""

    action_id: int
    kind: Kind
    state: State
    errno: int
    ran: float


@dataclass(frozen=True, slots=True)
class Requeued:
    """A started action went back to its queue (an error worth a retry, a
    lost agent, a reclaim); counted like :class:`Ended`."""

    action_id: int
    kind: Kind
    errno: int


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """The shard applied a new policy version (the replica updates what it
    keeps outside the shards: agent_grace, request masks, rate limits)."""

    version: int


@dataclass(frozen=True, slots=True)
class MoveChanged:
    """The shard's group or its move changed (the replica updates who is
    quiet, what it keeps on disk about the group, and drives the move)."""


@dataclass(frozen=True, slots=True)
class ReshardChanged:
    """Shard 0's record of a split changed (the replica drives it, and
    takes the new ring once it is done)."""


@dataclass(frozen=True, slots=True)
class FirstStart:
    """The action's first attempt was assigned *waited* seconds after it
    was submitted (counted like :class:`Ended`)."""

    action_id: int
    kind: Kind
    waited: float


@dataclass(frozen=True, slots=True)
class PartAssigned:
    """Tell *agent* to copy a part of a striped archive: bytes *offset* to
    *offset* + *length* of the action's file, as *attempt* (the part's
    wire attempt, ``stripes.wire_attempt``)."""

    agent: str
    action_id: int
    index: int
    attempt: int
    offset: int
    length: int


Effect = (Changed | Assigned | SendCancel | Ended | Requeued | FirstStart | PolicyChanged | PartAssigned | MoveChanged
          | ReshardChanged)


class Outcome(IntEnum):
    """Per-item submit outcomes; values match the proto ``SubmitOutcome``."""

    CREATED = 1
    JOINED = 2
    NOT_NEEDED = 3
    REJECTED = 4


@dataclass(frozen=True, slots=True)
class SubmitReply:
    outcome: Outcome
    action_id: int = 0
    errno: int = 0
    reason: str = ""


class CancelOutcome(IntEnum):
    """Values match the proto ``CancelOutcome``."""

    DONE = 1
    SENT = 2
    ALREADY_ENDED = 3
    NOT_FOUND = 4


@dataclass(frozen=True, slots=True)
class CancelRefused:
    """The only reply of a ``Cancel`` on behalf of a user that names an
    action also wanted by someone else: nothing was changed."""

    action_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseReply:
    granted: bool
    holder: str  # who holds it after the command ("" when nobody)
    remaining: float  # seconds the holder's lease still runs (0 when nobody holds it)


@dataclass(frozen=True, slots=True)
class ConsumerReply:
    """An EventConsumer or AckEvents command's answer: the consumer's
    cursor, or why the command changed nothing."""

    cursor: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class PolicyReply:
    """A SetPolicy's answer: the shard's policy version after it, and why
    it changed nothing ("" when it applied or was already applied)."""

    version: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class MoveReply:
    """A MoveShard's or MoveStep's answer: the move after it (None: none
    runs) and why it changed nothing ("" when it applied)."""

    move: moves.Move | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class SplitReply:
    """A Freeze's, Import's, Activate's or AbortSplit's answer: *count* FIDs
    it concerned (frozen, imported, handed over or made ready, served
    again or forgotten), and why it changed nothing ("" when it applied or
    was applied already)."""

    count: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReshardReply:
    """A ReshardBegin's or ReshardStep's answer: the split after it, and
    why it changed nothing ("" when it applied)."""

    record: split.Reshard | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class CancelReply:
    action_id: int
    outcome: CancelOutcome
    state: State | None
    cookie: CookieTarget | None = None  # the cookie this reply answers, if any


@dataclass(slots=True)
class Result:
    effects: list[Effect] = field(default_factory=list)
    replies: list[object] = field(default_factory=list)


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardConfig:
    shard: int = 0
    archive_ids: frozenset[int] = frozenset({1})
    default_archive_id: int = 1
    max_attempts: int = 3
    #: seconds without progress before a running action is reclaimed (0: never)
    progress_timeout: float = 600.0
    #: ended actions kept for listing and idempotent retries, per shard
    max_terminal: int = 100_000
    #: how many files' last successful archive/restore/remove are kept, and
    #: how long, to answer a late duplicate request (see ``_remembered``)
    remember_ends: int = 100_000
    remember_for: float = 3600.0

    # what dataclass(slots=True) generates, written out: compiled (mypyc),
    # the class would pickle a dict of attributes instead; both builds read
    # and write the same snapshots (tests/test_compiled.py)
    def __getstate__(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]

    def __setstate__(self, state: list[Any]) -> None:
        for f, value in zip(fields(self), state, strict=True):
            object.__setattr__(self, f.name, value)


#: the attributes of an Action (its __slots__), in pickling order: a
#: module constant, as compiled (mypyc) the class has no __slots__
ACTION_FIELDS: Final = (
    "id",
    "fsname",
    "fid",
    "kind",
    "archive_id",
    "offset",
    "length",
    "data",
    "flags",
    "priority",
    "requesters",
    "state",
    "agent",
    "attempt",
    "created",
    "started",
    "ended",
    "bytes_done",
    "bytes_total",
    "errno",
    "error",
    "last_progress",
    "reclaiming",
    "handed_back",
    # added later: keep new slots last (see _action_from_values)
    "data_version",
    "hsm_ctime",
    "tag",
    "volume",
    "position",
    "copies",
    "copies_done",
    "tried",
)


# compiled (mypyc): serializable lets _action_from_values make one without
# __init__; with it alone, Action(...) called from Python code would not run
# __init__ either (mypyc 2.4), allow_interpreted_subclasses makes it run
@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)
class Action:
    """One action. A plain slotted object: millions of these live in memory."""

    __slots__ = ACTION_FIELDS

    def __reduce__(self) -> tuple[Any, ...]:
        # snapshots pickle millions of these: one tuple of values each, not
        # the default dict of slot names per object (7x faster, smaller).
        # ACTION_FIELDS, in order, spelled out: faster than an attrgetter,
        # pure and compiled (tests/test_state.py checks the order)
        return (_action_from_values, ((
            self.id, self.fsname, self.fid, self.kind, self.archive_id, self.offset, self.length, self.data,
            self.flags, self.priority, self.requesters, self.state, self.agent, self.attempt, self.created,
            self.started, self.ended, self.bytes_done, self.bytes_total, self.errno, self.error, self.last_progress,
            self.reclaiming, self.handed_back, self.data_version, self.hsm_ctime, self.tag, self.volume,
            self.position, self.copies, self.copies_done, self.tried),))

    def __init__(self, action_id: int, item: Item, archive_id: int, now: float) -> None:
        self.id = action_id
        self.fsname = item.fsname
        self.fid = item.fid
        self.kind = item.kind
        self.archive_id = archive_id
        self.offset = item.offset
        self.length = item.length
        self.data = item.data
        self.flags = item.flags
        self.priority = item.priority
        self.requesters: list[Requester] = [item.requester]
        self.state = State.WAITING
        self.agent = ""
        self.attempt = 0
        self.created = now
        self.started = 0.0
        self.ended = 0.0
        self.bytes_done = 0
        self.bytes_total = 0
        self.errno = 0
        self.error = ""
        self.last_progress = 0.0  # leader clock of the start or the last progress
        self.reclaiming = False  # CANCELING because it was stuck, not by request
        self.handed_back = 0  # attempts an agent gave back unstarted or drained: not counted
        self.data_version = item.data_version  # the file's, as the latest requester saw it; 0 = none
        self.hsm_ctime = item.hsm_ctime  # the latest state its requesters saw (a ctime)
        #: from its data (``tag=``, ``volume=``, ``position=``; see hints()):
        #: the agents it may go to, and a restore's place on its tape
        self.tag, self.volume, self.position = hints(item.data)
        #: an archive's copies still to make after this one: their archive
        #: ids in order (``copies=N``; the action moves to each in turn)
        self.copies: tuple[int, ...] = ()
        self.copies_done = 0  # copies made so far (an archive of several)
        #: a restore's copies that failed (their archive ids): it reads the next
        self.tried: tuple[int, ...] = ()

    @property
    def fid_key(self) -> tuple[str, Fid]:
        return (self.fsname, self.fid)

    @property
    def joinable(self) -> bool:
        if self.state == State.WAITING:
            return True
        return self.state == State.STARTED and self.kind != Kind.ARCHIVE

    def __repr__(self) -> str:
        return f"Action({self.id} {self.kind.name} {self.fid} {self.state.name} agent={self.agent!r} attempt={self.attempt})"


#: values of the slots added last (data_version, hsm_ctime, tag, volume,
#: position, copies, copies_done, tried), for actions of a snapshot written
#: before they existed: such a tuple is that many values shorter
_ACTION_ADDED_DEFAULTS: tuple[Any, ...] = (0, 0, "", "", 0, (), 0, ())


def _action_from_values(values: tuple[Any, ...]) -> Action:
    missing = len(ACTION_FIELDS) - len(values)
    if 0 < missing <= len(_ACTION_ADDED_DEFAULTS):
        values = (*values, *_ACTION_ADDED_DEFAULTS[len(_ACTION_ADDED_DEFAULTS) - missing:])
    a = Action.__new__(Action)
    # ACTION_FIELDS, in order (ValueError when the count is wrong): 3-5x
    # faster than setting each slot through its descriptor, pure or compiled
    (a.id, a.fsname, a.fid, a.kind, a.archive_id, a.offset, a.length, a.data, a.flags, a.priority, a.requesters,
     a.state, a.agent, a.attempt, a.created, a.started, a.ended, a.bytes_done, a.bytes_total, a.errno, a.error,
     a.last_progress, a.reclaiming, a.handed_back, a.data_version, a.hsm_ctime, a.tag, a.volume,
     a.position, a.copies, a.copies_done, a.tried) = values
    return a


#: errnos after which a restore reads the file's next copy, when it has
#: one: the copy is unreadable (EIO, a checksum mismatch included), corrupt
#: (EBADMSG) or missing (ENOENT, ENODATA)
COPY_ERRNOS: Final = frozenset({E.EIO, E.EBADMSG, E.ENOENT, E.ENODATA})


def copies_hint(data: bytes) -> int:
    """``copies=N`` from request data: N (1..MAX_COPIES), 0 when the data
    says nothing, -1 when it says something else (the request is refused)."""
    if b"copies=" not in data:
        return 0
    n = 0
    for part in data.split(b","):
        key, eq, value = part.partition(b"=")
        if key == b"copies" and eq:
            if not value.isdigit() or len(value) > 2 or not 1 <= int(value) <= MAX_COPIES:
                return -1
            n = int(value)
    return n


#: ShardState attributes a snapshot does not store (import_parts rebuilds them)
_DERIVED = frozenset({"actions", "fid_queue", "fsnames", "running"})

#: a ready queue's key: (kind, archive id, priority, fair-share key, tag,
#: volume); the fair-share key is the uid, gid or projid the policy shares
#: by, or -1; tag and volume come from the request's data ("" for none). A
#: queue with a volume is ordered by position (a PositionQueue)
QueueKey = tuple[Kind, int, int, int, str, str]
QUEUE_KEY_FIELDS = ("kind", "archive_id", "priority", "share", "tag", "volume")

#: an action's scheduling priority is clipped to this range
MAX_PRIORITY = 1000
#: attributes that live between two commands only (never in a snapshot)
_TRANSIENT = frozenset({"_counted"})


def _stored_attributes() -> tuple[str, ...]:
    """The ShardState attributes a snapshot stores: all but ``_DERIVED``.
    Compiled (mypyc), the class lists them in ``__mypyc_attrs__`` (it has
    no ``__dict__``); pure, a new state's ``__dict__`` has them."""
    names = getattr(ShardState, "__mypyc_attrs__", None) or tuple(vars(ShardState()))
    return tuple(n for n in names if n not in _DERIVED and n not in _TRANSIENT and not n.startswith("__"))


#: a half of a ReadyQueue is renumbered (O(its length)) once it has more
#: tickets removed from its middle than this and than 1/16 of its length,
#: which bounds both the gap list a removal sorts into and the renumbering
#: per removal (amortized)
GAPS_RENUMBER = 4096


class ReadyQueue:
    """Action ids that may start now, in order: requeued ones (``front``)
    before new ones (``back``). Two plain dicts: half the memory of an
    OrderedDict per entry, O(1) add, remove and membership.

    Each id maps to its ticket, its arrival number in its half, so that
    :meth:`position` is a rank found without a scan (``hsmctl action``
    shows it): every ticket of a half below its ``low`` is gone (removed
    from the head: dispatched), and its ``gaps`` hold, sorted, the gone
    ones above (removed from the middle: a cancel). Rank = ticket - low -
    gaps below the ticket. Tickets differ between a replica that loaded a
    snapshot (renumbered) and one that did not; ranks do not."""

    __slots__ = ("front", "back", "_next", "_low", "_gaps")

    def __init__(self) -> None:
        self.front: dict[int, int] = {}
        self.back: dict[int, int] = {}
        self._next = [0, 0]  # per half (0 front, 1 back): the next ticket
        self._low = [0, 0]
        self._gaps: list[list[int]] = [[], []]

    def add(self, action_id: int, front: bool = False) -> None:
        h = 0 if front else 1
        t = self._next[h]
        self._next[h] = t + 1
        (self.front if front else self.back)[action_id] = t

    def __contains__(self, action_id: object) -> bool:
        return action_id in self.back or action_id in self.front

    def __delitem__(self, action_id: int) -> None:
        if action_id in self.back:
            h, d = 1, self.back
        else:
            h, d = 0, self.front
        t = d.pop(action_id)
        if not d:  # empty: start the half again
            self._next[h] = self._low[h] = 0
            self._gaps[h] = []
            return
        low = self._low[h]
        gaps = self._gaps[h]
        if t == low:  # the head: the usual case (dispatched in order)
            low += 1
            if gaps and gaps[0] == low:
                i = 0
                while i < len(gaps) and gaps[i] == low:
                    i += 1
                    low += 1
                del gaps[:i]
            self._low[h] = low
            return
        insort(gaps, t)
        if len(gaps) > GAPS_RENUMBER and len(gaps) * 16 > len(d):
            self._renumber(h)

    def _renumber(self, h: int) -> None:
        d = self.front if h == 0 else self.back
        for i, action_id in enumerate(d):
            d[action_id] = i
        self._next[h] = len(d)
        self._low[h] = 0
        self._gaps[h] = []

    def position(self, action_id: int) -> int | None:
        """How many actions of this queue start before *action_id* (0: it
        is next), or None if it is not in the queue. O(log gaps)."""
        t = self.front.get(action_id)
        if t is not None:
            return t - self._low[0] - bisect_left(self._gaps[0], t)
        t = self.back.get(action_id)
        if t is None:
            return None
        return len(self.front) + t - self._low[1] - bisect_left(self._gaps[1], t)

    def __iter__(self) -> Iterator[int]:
        return chain(self.front, self.back) if self.front else iter(self.back)

    def __len__(self) -> int:
        return len(self.front) + len(self.back)

    # the pickle state of a slotted object, written out: compiled (mypyc),
    # the class would pickle a dict instead. The tickets are renumbered on
    # load (a snapshot written before them has None values)
    def __getstate__(self) -> tuple[None, dict[str, dict[int, int]]]:
        return (None, {"front": self.front, "back": self.back})

    def __setstate__(self, state: tuple[None, dict[str, dict[int, int]]]) -> None:
        self.front = state[1]["front"]
        self.back = state[1]["back"]
        self._next = [0, 0]
        self._low = [0, 0]
        self._gaps = [[], []]
        self._renumber(0)
        self._renumber(1)


class PositionQueue:
    """The restores of one tape volume that may start now, in the order of
    their position on the tape (then of arrival): a sorted list of
    (position, id) and each id's position. Adding or removing one is a
    binary search and a move of the list's tail (memmove: fast for the
    thousands of files a volume holds)."""

    __slots__ = ("order", "where", "_oldest")

    def __init__(self) -> None:
        self.order: list[tuple[int, int]] = []
        self.where: dict[int, int] = {}
        self._oldest = -1  # the smallest id (the first to arrive), -1: to find again

    def add(self, action_id: int, position: int) -> None:
        insort(self.order, (position, action_id))
        self.where[action_id] = position
        if self._oldest >= 0 and action_id < self._oldest:
            self._oldest = action_id

    def oldest(self) -> int:
        """The id of the restore that arrived first (ids grow with arrival
        in a shard). Found again only after that one leaves, which in
        position order is rare."""
        if self._oldest < 0 or self._oldest not in self.where:
            self._oldest = min(self.where)
        return self._oldest

    def __contains__(self, action_id: object) -> bool:
        return action_id in self.where

    def __delitem__(self, action_id: int) -> None:
        position = self.where.pop(action_id)
        del self.order[bisect_left(self.order, (position, action_id))]

    def position(self, action_id: int) -> int | None:
        """How many of this volume's ready restores start before it."""
        position = self.where.get(action_id)
        return None if position is None else bisect_left(self.order, (position, action_id))

    def __iter__(self) -> Iterator[int]:
        return _ids_of(self.order)

    def __len__(self) -> int:
        return len(self.order)

    # written out, like ReadyQueue's (compiled, the class would pickle a dict)
    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        return (None, {"order": self.order, "where": self.where})

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        self.order = state[1]["order"]
        self.where = state[1]["where"]
        self._oldest = -1


def _ids_of(order: list[tuple[int, int]]) -> Iterator[int]:
    for _position, action_id in order:
        yield action_id


class ShardState:
    """All actions of one shard, and the indexes that make every command
    O(items) regardless of queue length."""

    def __init__(self, config: ShardConfig | None = None) -> None:
        self.config = config or ShardConfig()
        if not 0 <= self.config.shard < MAX_SHARDS:
            raise ValueError(f"shard {self.config.shard} out of range 0..{MAX_SHARDS - 1}")
        self.next_seq = 1
        self.actions: dict[int, Action] = {}
        #: per (fsname, fid): non-terminal action ids in arrival order (a bare
        #: id when there is one, the common case: saves a list per action);
        #: the first one is the only one that may be ready or running
        self.fid_queue: dict[tuple[str, Fid], int | list[int]] = {}
        #: per QueueKey: WAITING actions that may start now, FIFO (in
        #: position order for a volume's restores)
        self.ready: dict[QueueKey, ReadyQueue | PositionQueue] = {}
        #: idempotency key -> action id << 3 | outcome (one int, not a tuple)
        self.keys: dict[str, int] = {}
        #: agent -> ids of STARTED/CANCELING actions it holds
        self.by_agent: dict[str, dict[int, None]] = {}
        #: ended actions, oldest first (pruned beyond config.max_terminal)
        self.terminal: deque[int] = deque()
        #: (kind, state) -> number of kept actions
        self.counts: dict[tuple[Kind, State], int] = {}
        self.fsnames: dict[str, int] = {}  # fsname -> number of FIDs with live actions
        self.control = "enabled"  # hsm_control mode, see SetControl
        self.drained: dict[str, float] = {}  # agent -> since when it gets no new work
        self.leases: dict[str, tuple[str, float]] = {}  # name -> (holder, expires at)
        #: (fsname, fid, kind, archive id) -> (ctime, action id, ended at)
        #: of the last SUCCEEDED action of that file and kind whose
        #: requesters named the state they saw; oldest first (``_remembered``)
        self.ended_states: dict[tuple[str, Fid, Kind, int], tuple[int, int, float]] = {}
        self.applied = 0  # commands applied
        #: (kind, archive id) -> assignments ever made from that queue (a
        #: reader's dispatch rate, for a waiting action's start estimate)
        self.dispatched: dict[tuple[Kind, int], int] = {}
        #: HSM events (an action's end) and their consumers' cursors (coordinator.events)
        self.events = EventLog()
        #: the policy (coordinator.policy) and its version: 0 until a first
        #: SetPolicy, seeded from this replica's configuration meanwhile
        self.policy: Policy = _seed(self.config)
        self.policy_version = 0
        self.policy_set: tuple[float, str] = (0.0, "")  # when and by whom
        #: fair share: per share key, the virtual time its next dispatch
        #: starts at (start-time fair queuing); the virtual clock is the
        #: start of the last dispatch. Keys at or below the clock are dropped
        #: (they mean the same as a missing key)
        self.share_vtime: dict[int, float] = {}
        self.vclock = 0.0
        #: archive id -> STARTED or CANCELING actions (derived)
        self.running: dict[int, int] = {}
        #: agent -> (volume, when) of the last restore with a tape volume
        #: assigned to it here: which tape it reads, as every replica sees
        #: it (the scheduler's Outlook takes the latest over the shards)
        self.tape_reads: dict[str, tuple[str, float]] = {}
        #: every archived copy of the shard's files (coordinator.catalog):
        #: written by the Complete that ends an archive, dropped by the one
        #: that ends a remove
        self.catalog = Catalog()
        #: striped archives (coordinator.stripes): action id -> its stripe,
        #: from the anchor's report until the action is sealed, ends or
        #: starts over. While its parts run the action waits out of the
        #: ready queues (at the head of its FID); once they are all done it
        #: is ready again, to be sealed
        self.stripes: dict[int, Stripe] = {}
        #: the shard's Raft group, its preferred leader first, as recorded when
        #: a move first began (empty: the configured placement), and the move
        #: that runs (coordinator.moves)
        self.group: tuple[str, ...] = ()
        self.move: moves.Move | None = None
        #: on shard 0: the replicas drained (to hold no shard), since when,
        #: and whether the rebalancer runs (Rebalance)
        self.replicas_drained: dict[str, float] = {}
        self.rebalance = True
        #: a split this shard hands FIDs over in (coordinator.split): frozen,
        #: then active (the moved FIDs are another shard's); and earlier
        #: splits', active, oldest first: requests for their FIDs are refused
        self.split_out: split.Outgoing | None = None
        self.splits_done: tuple[split.Outgoing, ...] = ()
        #: the files the split frozen here hands over, with their new shards
        self.split_frozen: dict[tuple[str, Fid], int] = {}
        #: a new shard being filled by a split: its ring version (0: none),
        #: the old shards whose last chunk is in (True) or not yet (False),
        #: and the files imported (True: with live actions)
        self.split_in = 0
        self.split_shape = (0, 0, 0)  # the split's (shards before, shards added, vnodes)
        self.split_from: dict[int, bool] = {}
        self.split_files: dict[tuple[str, Fid], bool] = {}
        #: the highest ring version a split made active here (0: none)
        self.ring_version = 0
        #: action id -> the shard it moved to, for the last split's moved actions
        self.moved_to: dict[int, int] = {}
        #: on shard 0: the split that runs, or the last one (coordinator.split
        #: Reshard), and the cluster's ring (shards, version) as the last split
        #: done left it ((0, 1): the configured shard count, never split)
        self.reshard: split.Reshard | None = None
        self.cluster_ring: tuple[int, int] = (0, 1)
        #: Ended/Requeued/FirstStart effects of the command being applied
        #: (made deep inside _end and _requeue; apply adds them to its Result)
        self._counted: list[Effect] = []

    # ---------------------------------------------------------------- apply

    def apply(self, cmd: Command) -> Result:
        """Apply one command. Deterministic; raises only on a programming
        error (``IllegalTransition``), never on bad luck such as a stale
        completion, which is ignored."""
        try:
            res = self._apply(cmd)
        finally:
            counted, self._counted = self._counted, []
        if counted:
            res.effects.extend(counted)
        return res

    def _apply(self, cmd: Command) -> Result:
        self.applied += 1
        if isinstance(cmd, Submit):
            return self._submit(cmd)
        if isinstance(cmd, Assign):
            res = Result()
            self._assign(cmd.now, cmd.agent, cmd.action_ids, res)
            return res
        if isinstance(cmd, AssignRound):
            res = Result()
            for agent, action_ids in cmd.assignments:
                self._assign(cmd.now, agent, action_ids, res)
            return res
        if isinstance(cmd, Progress):
            return self._progress(cmd)
        if isinstance(cmd, Complete):
            return self._complete(cmd)
        if isinstance(cmd, Cancel):
            return self._cancel(cmd)
        if isinstance(cmd, AgentLost):
            return self._agent_lost(cmd)
        if isinstance(cmd, Reclaim):
            return self._reclaim(cmd)
        if isinstance(cmd, SetControl):
            if cmd.mode not in CONTROL_MODES:
                raise ValueError(f"unknown control mode {cmd.mode!r}")
            self.control = cmd.mode
            return Result()
        if isinstance(cmd, DrainAgent):
            if not cmd.agent:
                raise ValueError("drain: empty agent id")
            if cmd.drain:
                self.drained.setdefault(cmd.agent, cmd.now)
            else:
                self.drained.pop(cmd.agent, None)
            return Result()
        if isinstance(cmd, Lease):
            return Result(replies=[self._lease(cmd)])
        if isinstance(cmd, EventConsumer | AckEvents):
            return Result(replies=[self._consumer(cmd)])
        if isinstance(cmd, SetPolicy):
            before = self.policy_version
            res = Result(replies=[self._set_policy(cmd)])
            if self.policy_version != before:
                res.effects.append(PolicyChanged(self.policy_version))
            return res
        if isinstance(cmd, EditCatalog):
            return Result(replies=[self._edit_catalog(cmd)])
        if isinstance(cmd, RelocateCopies):
            return Result(replies=[self._relocate(cmd)])
        if isinstance(cmd, AssignParts):
            return self._assign_parts(cmd)
        if isinstance(cmd, MoveShard | MoveStep):
            return self._move(cmd)
        if isinstance(cmd, PreferLeader):
            return self._prefer(cmd)
        if isinstance(cmd, Freeze):
            return Result(replies=[self._freeze(cmd)])
        if isinstance(cmd, Import):
            return Result(replies=[self._import(cmd)])
        if isinstance(cmd, Activate):
            return Result(replies=[self._activate(cmd)])
        if isinstance(cmd, AbortSplit):
            return Result(replies=[self._abort_split(cmd)])
        if isinstance(cmd, ReshardBegin | ReshardStep):
            return Result(replies=[self._reshard(cmd)], effects=[ReshardChanged()])
        if isinstance(cmd, Rebalance):
            if cmd.replica:
                if cmd.drain:
                    self.replicas_drained.setdefault(cmd.replica, cmd.now)
                else:
                    self.replicas_drained.pop(cmd.replica, None)
            if cmd.enabled in (0, 1):
                self.rebalance = bool(cmd.enabled)
            return Result()
        raise TypeError(f"unknown command {type(cmd).__name__}")

    def _prefer(self, cmd: PreferLeader) -> Result:
        group = self.group or cmd.group
        if self.move is not None:
            return Result(replies=[MoveReply(self.move, f"a move runs on this shard: {self.move.text()}")])
        if cmd.member not in group:
            return Result(replies=[MoveReply(None, f"{cmd.member} is not a member of the shard's group "
                                                   f"({', '.join(group)})")])
        ordered = (cmd.member, *(m for m in group if m != cmd.member))
        if ordered == self.group:
            return Result(replies=[MoveReply(None)])
        self.group = ordered
        return Result(replies=[MoveReply(None)], effects=[MoveChanged()])

    def _move(self, cmd: MoveShard | MoveStep) -> Result:
        """A move of the shard's group (coordinator.moves): begun, or a step."""
        got: moves.Move | str | None
        if isinstance(cmd, MoveShard):
            got = moves.begin(self.group or cmd.group, cmd.source, cmd.target, cmd.now, self.move)
        else:
            try:
                phase = moves.Phase(cmd.phase)
            except ValueError:
                return Result(replies=[MoveReply(self.move, f"no move phase {cmd.phase}")])
            got = moves.advance(self.move, cmd.source, cmd.target, phase, cmd.now)
            if got is None and phase == moves.Phase.DONE and self.move is not None:
                self.group = self.move.after()
        if isinstance(got, str):
            return Result(replies=[MoveReply(self.move, got)])
        changed = got != self.move
        if isinstance(cmd, MoveShard) and not self.group:
            self.group = cmd.group  # from now on the state says who the group is
        self.move = got
        return Result(replies=[MoveReply(got)], effects=[MoveChanged()] if changed else [])

    def _relocate(self, cmd: RelocateCopies) -> int:
        moved = 0
        for fsname, fid, archive_id, old, new, slot in cmd.moves:
            if (self.split_out is not None or self.splits_done) and self._split_refusal(fid):
                continue  # moving or moved: its copies are (being) handed to its new shard
            c = next((c for c in self.catalog.of(fsname, fid) if c.archive_id == archive_id), None)
            if c is None or c.container != old or not new:
                continue
            values = list(c.values())
            values[COPY_FIELDS.index("key")] = new
            values[COPY_FIELDS.index("container")] = new
            values[COPY_FIELDS.index("slot")] = slot
            try:
                self.catalog.record(fsname, fid, Copy(*values))
            except CopyError:
                continue
            moved += 1
        return moved

    def _edit_catalog(self, cmd: EditCatalog) -> int:
        if (self.split_in or self.split_out is not None or self.splits_done) and self._split_refusal(cmd.fid):
            return 0  # moving or moved: the catalog of the file is its new shard's
        if cmd.forget:
            return self.catalog.drop(cmd.fsname, cmd.fid)
        done = 0
        for values in cmd.copies:
            try:
                self.catalog.record(cmd.fsname, cmd.fid, Copy(*values))
            except (CopyError, TypeError, ValueError):
                continue  # the servicer checked them: a copy that breaks the bounds is left out everywhere
            done += 1
        return done

    def _consumer(self, cmd: EventConsumer | AckEvents) -> ConsumerReply:
        log = self.events
        try:
            if isinstance(cmd, AckEvents):
                return ConsumerReply(log.ack(cmd.name, cmd.index))
            if cmd.register:
                return ConsumerReply(log.register(cmd.name, cmd.now))
            return ConsumerReply(0, "" if log.deregister(cmd.name) else f"no event consumer {cmd.name!r}")
        except ConsumerError as exc:
            return ConsumerReply(0, str(exc))

    def _set_policy(self, cmd: SetPolicy) -> PolicyReply:
        have = self.policy_version
        if cmd.version <= have:
            if cmd.version == have and cmd.text == self.policy.text:
                return PolicyReply(have)  # a retry: already applied
            return PolicyReply(have, f"this shard has policy version {have} already"
                               + ("" if cmd.version < have else " with another text (another set raced this one)"))
        try:
            new = parse(cmd.text)
        except PolicyError as exc:
            # checked before it was proposed: only a replica of another
            # version of the code could see this, and all of them do
            return PolicyReply(have, f"policy version {cmd.version} refused: {exc}")
        old_by = self.policy.share_by
        self.policy = new
        self.policy_version = cmd.version
        self.policy_set = (cmd.now, cmd.by)
        if new.share_by != old_by:
            self._rekey()
        while len(self.terminal) > new.settings.max_terminal:
            self._forget(self.terminal.popleft())
        return PolicyReply(cmd.version)

    def _rekey(self) -> None:
        """Put every ready action in the queue the policy now says (the
        fair-share key changed): requeued ones first, then in arrival order
        (ids grow with arrival). O(ready) once per such policy change."""
        queues = list(self.ready.values())
        self.share_vtime = {}
        self.vclock = 0.0
        self._ready_again(queues)

    def _ready_again(self, queues: Iterable[ReadyQueue | PositionQueue]) -> None:
        """Fill ``ready`` anew with the actions of *queues*: requeued ones
        first, then in arrival order (ids grow with arrival)."""
        front: list[int] = []
        back: list[int] = []
        for q in queues:
            if isinstance(q, ReadyQueue):
                front.extend(q.front)
                back.extend(q.back)
            else:
                back.extend(q.where)
        self.ready = {}
        for ids, is_front in ((sorted(front), True), (sorted(back), False)):
            for i in ids:
                self._make_ready(self.actions[i], is_front)

    def queue_key(self, action: Action) -> QueueKey:
        """The ready queue *action* goes in under the current policy."""
        p = self.policy
        volume = action.volume if action.kind == Kind.RESTORE else ""
        if p.share_by == "none":
            return (action.kind, action.archive_id, action.priority, -1, action.tag, volume)
        r = action.requesters[0]
        return (action.kind, action.archive_id, action.priority, p.share_key(r.uid, r.gid, r.projid), action.tag,
                volume)

    def _lease(self, cmd: Lease) -> LeaseReply:
        if not cmd.name or not cmd.holder or not 0 <= cmd.ttl <= MAX_LEASE_TTL:
            raise ValueError(f"lease: bad name, holder or ttl {cmd!r}")
        held = self.leases.get(cmd.name)
        if held is not None and held[0] != cmd.holder and cmd.now < held[1]:
            return LeaseReply(False, held[0], held[1] - cmd.now)
        if cmd.ttl == 0:
            if held is not None:  # its own, or lapsed: nobody holds it now
                del self.leases[cmd.name]
            return LeaseReply(False, "", 0.0)
        # a renewal never shortens it: the holder may not have seen this
        # answer and still count on the time an earlier one gave it
        until = cmd.now + cmd.ttl if held is None or held[0] != cmd.holder else max(held[1], cmd.now + cmd.ttl)
        self.leases[cmd.name] = (cmd.holder, until)
        return LeaseReply(True, cmd.holder, until - cmd.now)

    def _submit(self, cmd: Submit) -> Result:
        res = Result()
        for item in cmd.items:
            res.replies.append(self._submit_one(cmd.now, item, res.effects))
        return res

    def _submit_one(self, now: float, item: Item, effects: list[Effect]) -> SubmitReply:
        if item.key:
            known = self.keys.get(item.key)
            if known is not None:
                return SubmitReply(Outcome(known & 7), known >> 3)
        if self.split_in or self.split_out is not None or self.splits_done:
            refused = self._split_refusal(item.fid)
            if refused:
                return SubmitReply(Outcome.REJECTED, errno=refused[0], reason=refused[1])
        if self.control == "shutdown":
            return SubmitReply(Outcome.REJECTED, errno=E.ESHUTDOWN,
                               reason="the coordinator is shut down (hsmctl control enabled resumes it)")
        if item.hsm_flags is not None:
            # HSM_FORCE_ACTION makes the action needed, not allowed: forcing
            # what would not be needed is refused (EPERM), as the MDT does
            rc = check_request(item.kind, item.hsm_flags, item.hsm_archive_id, item.archive_id, item.flags)
            if rc is not None:
                if rc == 0:
                    return SubmitReply(Outcome.NOT_NEEDED)
                return SubmitReply(
                    Outcome.REJECTED,
                    errno=rc,
                    reason=f"{item.kind.name} not allowed in HSM state 0x{item.hsm_flags:08x}",
                )
        archive_id = resolve_archive_id(
            item.archive_id, item.hsm_archive_id, self.config.default_archive_id
        )
        req = item.requester
        decision = None
        adm = item.admitted
        if adm is not None and adm[0] == self.policy_version and adm[1] == archive_id:
            decision = self.policy.decided(adm[2])
        if decision is None:
            decision = self.policy.admit(item.kind, archive_id, item.path, item.size if item.size >= 0 else None,
                                         req.uid, req.gid, req.projid, req.initiator)
        if decision.deny:
            return SubmitReply(Outcome.REJECTED, errno=E.EPERM,
                               reason=f"refused by policy rule {decision.rule!r}: {decision.deny}")
        if decision.archive_id and item.kind == Kind.ARCHIVE and decision.archive_id != archive_id:
            # a rule routes this archive: the file's state must allow that
            # archive id as it would the one asked for
            archive_id = decision.archive_id
            if item.hsm_flags is not None:
                rc = check_request(item.kind, item.hsm_flags, item.hsm_archive_id, archive_id, item.flags)
                if rc is not None:
                    if rc == 0:
                        return SubmitReply(Outcome.NOT_NEEDED)
                    return SubmitReply(Outcome.REJECTED, errno=rc,
                                       reason=f"policy rule {decision.rule!r} sets archive id {archive_id}, which "
                                              f"the file's HSM state 0x{item.hsm_flags:08x} does not allow")
        if archive_id not in self.config.archive_ids:
            return SubmitReply(
                Outcome.REJECTED,
                errno=E.EINVAL,
                reason=f"archive id {archive_id} is not configured"
                + (f" (set by policy rule {decision.rule!r})" if archive_id == decision.archive_id else ""),
            )
        copies: tuple[int, ...] = ()
        if item.kind == Kind.ARCHIVE and (decision.copies or b"copies=" in item.data):
            n = copies_hint(item.data)
            if n < 0:
                return SubmitReply(Outcome.REJECTED, errno=E.EINVAL,
                                   reason=f"copies= in the request data must be a number of copies from 1 to "
                                          f"{MAX_COPIES}")
            n = max(n, decision.copies)  # a rule's copies is the least a file gets
            others = tuple(a for a in sorted(self.config.archive_ids) if a != archive_id)
            if n - 1 > len(others):
                return SubmitReply(Outcome.REJECTED, errno=E.EINVAL,
                                   reason=f"copies={n} needs {n} archive ids, one per copy; this cluster has "
                                          f"{len(others) + 1} ({', '.join(map(str, sorted(self.config.archive_ids)))})"
                                          + (f" (copies set by policy rule {decision.rule!r})"
                                             if n == decision.copies else ""))
            copies = others[:n - 1] if n > 1 else ()
        requester = _with(item.requester, when=now, key=item.key)
        done = self._remembered(item, archive_id, now)
        if done is not None:
            # a late duplicate: it saw the state an action already finished
            # with (restored, archived or removed since): answered by that
            # action, nothing new to run
            done.requesters.append(requester)
            if item.key:
                self.keys[item.key] = done.id << 3 | Outcome.JOINED
            effects.append(Changed(done.id))
            return SubmitReply(Outcome.JOINED, done.id)
        fkey = (item.fsname, item.fid)
        existing = self._joinable(fkey, item.kind, archive_id)
        if existing is not None:
            action = self.actions[existing]
            action.requesters.append(requester)
            if item.data_version and action.state == State.WAITING:
                # the latest requester saw the file most recently; a started
                # action keeps the version its mover checks
                action.data_version = item.data_version
                action.hsm_ctime = max(action.hsm_ctime, item.hsm_ctime)
            if len(copies) > len(action.copies) and not action.copies_done and action.state == State.WAITING:
                action.copies = copies  # the most copies any requester asked for, before the first is made
            if item.key:
                self.keys[item.key] = existing << 3 | Outcome.JOINED
            effects.append(Changed(existing))
            return SubmitReply(Outcome.JOINED, existing)

        action_id = self.next_seq * MAX_SHARDS + self.config.shard
        self.next_seq += 1
        action = Action(action_id, item, archive_id, now)
        action.requesters[0] = requester
        prio = decision.priority if decision.priority is not None else item.priority
        action.priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, prio))
        if decision.tag:
            action.data = _with_tag(action.data, decision.tag)
            action.tag = decision.tag
        if copies:
            action.copies = copies
        self.actions[action_id] = action
        self._count(action.kind, State.WAITING, +1)
        if self._enqueue(fkey, action_id):
            self._make_ready(action)
        if item.key:
            self.keys[item.key] = action_id << 3 | Outcome.CREATED
        effects.append(Changed(action_id))
        return SubmitReply(Outcome.CREATED, action_id)

    def _assign(self, now: float, agent: str, action_ids: tuple[int, ...], res: Result) -> None:
        if self.control != "enabled" or agent in self.drained:
            return  # disabled, shut down or agent drained since the scheduler looked
        for action_id in action_ids:
            action = self.actions.get(action_id)
            if action is None or action.state != State.WAITING:
                continue  # canceled or assigned since the scheduler looked
            qkey = self.queue_key(action)
            queue = self.ready.get(qkey)
            if queue is None or action_id not in queue:
                continue  # not at the head of its FID
            del queue[action_id]
            if not queue:
                del self.ready[qkey]
            key = (action.kind, action.archive_id)
            self.dispatched[key] = self.dispatched.get(key, 0) + 1
            if qkey[3] >= 0:
                self._served(qkey[3])
            self.running[action.archive_id] = self.running.get(action.archive_id, 0) + 1
            if action.volume and action.kind == Kind.RESTORE:
                self.tape_reads[agent] = (action.volume, now)
            self._transition(action, Ev.ASSIGN)
            action.agent = agent
            action.attempt += 1
            if action.attempt == 1:
                self._counted.append(FirstStart(action_id, action.kind, now - action.created))
            action.started = now
            action.last_progress = now
            action.bytes_done = 0
            action.bytes_total = 0
            self.by_agent.setdefault(agent, {})[action_id] = None
            res.effects.append(Assigned(agent, action_id, action.attempt))
            res.effects.append(Changed(action_id))
            res.replies.append(action_id)

    def _served(self, share: int) -> None:
        """Fair share: *share* got a dispatch (start-time fair queuing with
        a unit cost: its next start is 1/weight later; a share that was
        idle starts at the virtual clock, so idleness earns no credit)."""
        start = self.share_vtime.get(share, 0.0)
        if start < self.vclock:
            start = self.vclock
        self.vclock = start
        self.share_vtime[share] = start + 1.0 / self.policy.share_weight(share)
        if len(self.share_vtime) > 4096:
            clock = self.vclock
            self.share_vtime = {k: v for k, v in self.share_vtime.items() if v > clock}

    def share_start(self, share: int) -> float:
        """The virtual time *share*'s next dispatch starts at."""
        v = self.share_vtime.get(share, 0.0)
        return v if v > self.vclock else self.vclock

    def _held(self, action_id: int, attempt: int) -> Action | None:
        """The action if this attempt of it is still running, else None."""
        action = self.actions.get(action_id)
        if action is None or action.attempt != attempt:
            return None
        if action.state not in (State.STARTED, State.CANCELING):
            return None
        return action

    def _progress(self, cmd: Progress) -> Result:
        res = Result()
        for rep in cmd.reports:
            part = part_of(rep.attempt)
            if part is not None:
                stripe = self.stripes.get(rep.action_id)
                if stripe is not None and 0 <= part[0] < len(stripe.parts) and (
                        not cmd.agent or stripe.parts[part[0]].agent == cmd.agent):
                    stripe.progressed(part[0], part[1], cmd.now)
                continue
            action = self._held(rep.action_id, rep.attempt)
            if action is None or (cmd.agent and action.agent != cmd.agent):
                continue
            if rep.bytes_done > action.bytes_done or (rep.bytes_total and rep.bytes_total != action.bytes_total):
                action.last_progress = cmd.now  # moving: a slow transfer is never reclaimed
            action.bytes_done = rep.bytes_done
            if rep.bytes_total:
                action.bytes_total = rep.bytes_total
            res.effects.append(Changed(action.id))
        return res

    def _complete(self, cmd: Complete) -> Result:
        res = Result()
        for done in cmd.completions:
            part = part_of(done.attempt)
            if part is not None:
                res.replies.append(self._part_ended(cmd, done, part[0], part[1], res.effects))
                continue
            action = self._held(done.action_id, done.attempt)
            if action is None or (cmd.agent and action.agent != cmd.agent):
                res.replies.append(False)
                continue  # stale (an older attempt, or already ended), or not the holder's
            action.bytes_done = done.bytes_done or action.bytes_done
            # the sign of an errno is ignored (llapi_hsm_action_end: abs(errval))
            err = abs(done.errno)
            if done.anchored and err == 0:
                # the agent let go of the action without copying: never a success
                if action.kind == Kind.ARCHIVE and action.state == State.STARTED and action.id not in self.stripes:
                    self._anchored(action, done.copy, cmd.now)
                elif action.state == State.CANCELING and action.reclaiming:
                    self._reclaimed(action, cmd.now)
                elif action.state == State.CANCELING:
                    self._end(action, Ev.AGENT_CANCELED, cmd.now, E.ECANCELED, action.error)
                else:  # not an archive to stripe (its seal, say): it runs again
                    self._requeue(action, cmd.now, E.EPROTO, "the agent let go of it as the anchor of a striped "
                                                             "archive, which it is not: it runs again")
                res.effects.append(Changed(action.id))
                res.replies.append(True)
                continue
            if action.id in self.stripes:
                # the seal's end, whatever it is: the stripe is over (the
                # archive is made, or it starts over from a new anchor)
                self._drop_stripe(action, cmd.now)
            if err == 0 and action.kind == Kind.ARCHIVE and action.copies:
                self._catalog_archived(action, done.copy, cmd.now)  # the copy is in its archive
                if action.state == State.CANCELING:
                    # canceled while this copy was made: no next copy (the
                    # agent let go of it: the file is not archived)
                    self._end(action, Ev.AGENT_CANCELED, cmd.now, E.ECANCELED,
                              f"canceled after copy {action.copies_done + 1} of "
                              f"{action.copies_done + 1 + len(action.copies)} (archive {action.archive_id})")
                else:
                    self._next_copy(action, done.copy)
            elif err == 0:
                action.bytes_total = action.bytes_total or action.bytes_done
                self._end(action, Ev.SUCCEED, cmd.now, 0, done.message)
                self._remember(action, cmd.now)
                if action.kind == Kind.ARCHIVE:
                    self._catalog_archived(action, done.copy, cmd.now)
                elif action.kind == Kind.REMOVE:
                    self.catalog.drop(action.fsname, action.fid, action.archive_id)
            elif action.state == State.CANCELING and action.reclaiming:
                self._reclaimed(action, cmd.now)
            elif action.state == State.CANCELING:
                # ENOSYS: the copytool cannot cancel; the MDT fails the cancel
                # request, its target stays CANCELED (hsm_cdt_request_completed)
                if err in (E.ECANCELED, E.ENOSYS) or done.retry:
                    self._end(action, Ev.AGENT_CANCELED, cmd.now, E.ECANCELED, action.error)
                else:
                    self._end(action, Ev.FAIL, cmd.now, err, done.message)
            elif done.handback:
                # the agent gave it back because it is stopping: no attempt used
                action.handed_back += 1
                self._requeue(action, cmd.now, err, done.message)
            elif action.kind == Kind.RESTORE and err in COPY_ERRNOS and self._next_source(action):
                self._fall_back(action, err, done.message)
            elif err == E.ENOSYS:
                # the copytool does not do this: FAILED, never retried, even
                # when it asks (hsm_cdt_request_completed)
                self._end(action, Ev.FAIL, cmd.now, err,
                          done.message or "the copytool does not support this action (ENOSYS)")
            elif err == E.ECANCELED or done.retry:
                # the agent gave it back (transient error)
                self._requeue(action, cmd.now, err, done.message)
            else:
                self._end(action, Ev.FAIL, cmd.now, err, done.message)
            res.effects.append(Changed(action.id))
            res.replies.append(True)
        return res

    # ---------------------------------------------------------- striping

    def _anchored(self, action: Action, facts: tuple[Any, ...] | None, now: float) -> None:
        """The anchor let go of a striped archive: plan its parts from the
        data version and size it saw, and park the action (WAITING, out of
        the ready queues) while they run. The anchor's attempt is not
        counted (it copied nothing); a stripe that fails counts it back."""
        size = int(facts[2]) if facts is not None and len(facts) > 2 else 0
        dv = int(facts[1]) if facts is not None and len(facts) > 1 else 0
        if size <= 0:  # nothing to cut: the attempt counts, as a failure does
            self._requeue(action, now, E.EPROTO, "the anchor of a striped archive reported no size")
            return
        agent = action.agent
        self._transition(action, Ev.REQUEUE)
        self._release_agent(action)
        action.handed_back += 1
        action.bytes_done = 0
        action.bytes_total = size
        p = self.policy
        stripe = Stripe.plan(size, p.stripe_part, p.stripe_max_parts, p.settings.max_attempts)
        stripe.anchored(agent, dv, now)
        self.stripes[action.id] = stripe
        action.error = f"striped into {len(stripe.parts)} parts (anchored on {agent}): copying them"

    def _assign_parts(self, cmd: AssignParts) -> Result:
        res = Result()
        action = self.actions.get(cmd.action_id)
        stripe = self.stripes.get(cmd.action_id)
        if self.control != "enabled" or action is None or stripe is None or action.state != State.WAITING:
            return res  # disabled, or the stripe is over since the leader looked
        for index, agent, attempt in cmd.runs:
            if agent in self.drained or not stripe.start(index, agent, attempt, cmd.now):
                continue
            p = stripe.parts[index]
            res.effects.append(PartAssigned(agent, action.id, index, wire_attempt(index, attempt), p.offset, p.length))
            res.replies.append(index)
        if res.replies:
            res.effects.append(Changed(action.id))
        return res

    def _part_ended(self, cmd: Complete, done: Completion, index: int, attempt: int, effects: list[Effect]) -> bool:
        """A part's Done: True if it was the part's running attempt (on
        the agent that reports it), else stale."""
        stripe = self.stripes.get(done.action_id)
        action = self.actions.get(done.action_id)
        if stripe is None or action is None or not 0 <= index < len(stripe.parts):
            return False
        p = stripe.parts[index]
        if p.attempt != attempt or (cmd.agent and p.agent != cmd.agent) or stripe.phase != StripePhase.PARTS:
            return False
        err = abs(done.errno)
        if err == 0:
            facts = done.copy
            checksum = str(facts[3]) if facts is not None and len(facts) > 3 else ""
            out = stripe.part_done(index, attempt, checksum, cmd.now)
            action.bytes_done = stripe.done_bytes()
        else:
            why = done.message or f"errno {err}"
            out = stripe.part_failed(index, attempt, err, why, cmd.now, counted=not done.handback)
        self._stripe_said(action, out, cmd.now, effects)
        effects.append(Changed(action.id))
        return True

    def _stripe_said(self, action: Action, out: list[Any], now: float, effects: list[Effect]) -> None:
        """Carry out a stripe's instructions (coordinator.stripes)."""
        for ins in out:
            if isinstance(ins, StopPart):
                effects.append(SendCancel(ins.agent, action.id, wire_attempt(ins.index, ins.attempt)))
            elif isinstance(ins, StripeSeal):
                if action.state == State.WAITING:
                    action.error = f"striped: its {len(self.stripes[action.id].parts)} parts copied, to be sealed"
                    self._make_ready(action)  # every part is done: dispatched again, to be sealed
            elif isinstance(ins, StripeEnded) and ins.phase == StripePhase.FAILED:
                self.stripes.pop(action.id, None)
                if action.state == State.WAITING:
                    action.handed_back -= 1  # the anchor's attempt counts: the archive failed
                    self._requeue_parked(action, now, ins.errno or E.EIO, ins.reason)

    def _requeue_parked(self, action: Action, now: float, errno: int, message: str) -> None:
        """A parked striped archive starts over (ready for a new anchor), or
        FAILS when it has used all its attempts."""
        self.stripes.pop(action.id, None)
        action.errno = errno
        action.error = message
        if action.attempt - action.handed_back >= self.policy.settings.max_attempts:
            self._end(action, Ev.FAIL, now, errno, message or "too many attempts")
            return
        self._make_ready(action, front=True)
        self._counted.append(Requeued(action.id, action.kind, errno))

    def _drop_stripe(self, action: Action, now: float) -> None:
        """The action's stripe is over (the action ends or starts over): the
        parts still running are told to stop."""
        stripe = self.stripes.pop(action.id, None)
        if stripe is None:
            return
        for ins in stripe.cancel(now):
            if isinstance(ins, StopPart):
                self._counted.append(SendCancel(ins.agent, action.id, wire_attempt(ins.index, ins.attempt)))

    def parts_held_by(self, agent: str, assigned_before: float | None = None) -> list[tuple[int, int]]:
        """(action id, wire attempt) of every part *agent* runs (for
        reconcile); with *assigned_before*, those assigned before that time."""
        return [(action_id, wire_attempt(i, p.attempt)) for action_id, s in self.stripes.items()
                for i, p in enumerate(s.parts) if p.state == PartState.RUNNING and p.agent == agent
                and (assigned_before is None or p.started < assigned_before)]

    def parked(self, action: Action) -> bool:
        """Whether *action* waits for its stripe's parts (out of the ready queues)."""
        stripe = self.stripes.get(action.id)
        return stripe is not None and stripe.phase == StripePhase.PARTS and action.state == State.WAITING

    def _next_copy(self, action: Action, facts: tuple[Any, ...] | None) -> None:
        """An archive of several copies made one (recorded): it waits
        again, for the next copy's archive id, at the head of its queue;
        the file's data version is now the one the copy holds, which the
        next copies must find (the file written since: ESTALE). The file
        is not archived before the last copy is made (its agent ends the
        action at the file system; the others let go of it)."""
        made_in = action.archive_id
        self._transition(action, Ev.REQUEUE)
        self._release_agent(action)
        action.handed_back += 1  # a copy made is no failed attempt
        action.copies_done += 1
        action.archive_id, action.copies = action.copies[0], action.copies[1:]
        if facts is not None and len(facts) >= 2 and isinstance(facts[1], int) and facts[1] > 0:
            action.data_version = facts[1]
        total = action.copies_done + 1 + len(action.copies)
        action.errno = 0
        action.error = (f"copy {action.copies_done} of {total} made in archive {made_in}; "
                        f"the next goes to archive {action.archive_id}")
        action.bytes_done = 0
        self._make_ready(action, front=True)

    def _next_source(self, action: Action) -> int:
        """The archive id of the copy a restore reads after the one that
        failed (in archive id order, among the configured ones), or 0."""
        tried = action.tried
        for c in self.catalog.of(action.fsname, action.fid):
            if c.archive_id != action.archive_id and c.archive_id not in tried \
                    and c.archive_id in self.config.archive_ids:
                return c.archive_id
        return 0

    def _fall_back(self, action: Action, err: int, message: str) -> None:
        """A restore whose copy failed (COPY_ERRNOS) reads the next copy:
        it waits again at the head of that archive id's queue, the attempt
        not counted (each copy is tried once before the action fails)."""
        failed_in = action.archive_id
        self._transition(action, Ev.REQUEUE)
        self._release_agent(action)
        action.handed_back += 1
        action.tried = (*action.tried, failed_in)
        action.archive_id = self._next_source(action)
        action.errno = err
        action.error = (f"the copy in archive {failed_in} failed ({E.errorcode.get(err, err)}: {message}); "
                        f"reading the copy in archive {action.archive_id}")
        action.bytes_done = 0
        self._make_ready(action, front=True)
        self._counted.append(Requeued(action.id, action.kind, err))

    def _catalog_archived(self, action: Action, facts: tuple[Any, ...] | None, now: float) -> None:
        """Record the copy a successful archive made: what its mover said
        (*facts*, :data:`COPY_FACTS`), else what the action knows (its data
        version, the bytes it moved, its first requester's ids). Facts that
        break the catalog's bounds (the servicer checks them first) are
        left out, the same way on every replica."""
        r = action.requesters[0]
        container: Any = ""
        slot: Any = 0
        if facts is not None and len(facts) == len(COPY_FACTS):
            key, dv, size, checksum, uid, gid, mode, path, container, slot = facts
        elif facts is not None and len(facts) == len(COPY_FACTS) - 2:  # written before packing
            key, dv, size, checksum, uid, gid, mode, path = facts
        else:
            key, dv, size, checksum, uid, gid, mode, path = ("", action.data_version, action.bytes_total, "",
                                                             r.uid, r.gid, 0, "")
        try:
            copy = Copy(action.archive_id, key, dv, size, checksum, now, action.offset, action.length, uid, gid,
                        mode, path, container, slot)
            self.catalog.record(action.fsname, action.fid, copy)
        except (CopyError, TypeError, ValueError):
            try:
                self.catalog.record(action.fsname, action.fid, Copy(
                    action.archive_id, "", max(0, action.data_version), max(0, action.bytes_total), "", now,
                    max(0, action.offset), action.length, r.uid, r.gid))
            except CopyError:
                pass  # an archive id out of range (convert refuses it): nothing to keep

    def _cancel(self, cmd: Cancel) -> Result:
        res = Result()
        if self.split_out is not None and not self.split_out.active:
            frozen = self._frozen_target(cmd)
            if frozen is not None:
                res.replies.append(frozen)
                return res
        if cmd.owner:
            refused = self.cancel_refusal(cmd)
            if refused is not None:
                res.replies.append(refused)
                return res
        reason = cmd.reason or "canceled"
        seen: set[int] = set()
        for action_id in self._cancel_targets(cmd):
            if action_id in seen:
                continue
            seen.add(action_id)
            res.replies.append(self._cancel_one(action_id, cmd.now, reason, res.effects))
        for target in cmd.cookies:
            packed = self.keys.get(target.key)
            if packed is None:
                res.replies.append(CancelReply(0, CancelOutcome.NOT_FOUND, None, target))
                continue
            reply = self._cancel_one(packed >> 3, cmd.now, reason, res.effects)
            res.replies.append(CancelReply(reply.action_id, reply.outcome, reply.state, target))
        return res

    def cancel_refusal(self, cmd: Cancel) -> CancelRefused | None:
        """Why this cancel on behalf of the user ``cmd.owner`` may not be
        applied, or None. Reads only (the servicer asks it before proposing;
        apply asks again, as the state may have changed meanwhile).

        A user may cancel an action only when every one of its requesters is
        theirs. A RESTORE (or REMOVE) merged from several requests is
        refused as a whole rather than the caller's requester detached from
        it: the caller asked for the copy to stop, and it would not stop;
        answering "done" while the file is still restored would be untrue,
        and leaving the action without the caller's requester would change
        who is answered when it ends (an idempotent retry of their submit
        would then find an action that no longer lists them). The refusal
        says why; an operator may still cancel it for everyone. Actions
        that ended or are unknown are no one's: the cancel answers them as
        usual (ALREADY_ENDED, NOT_FOUND) and changes nothing there."""
        if cmd.all:
            return CancelRefused(0, "cancelling every action needs role admin")
        for action_id in self._cancel_ids(cmd):
            action = self.actions.get(action_id)
            if action is None or action.state.terminal:
                continue
            others = sum(1 for r in action.requesters if r.owner != cmd.owner)
            if others:
                return CancelRefused(action_id, f"action {action_id} ({action.kind.name} {action.fid}) was also "
                                                f"requested by {others} requester(s) other than {cmd.owner}; a user "
                                                "may cancel only actions nobody else asked for (an operator may)")
        return None

    def _cancel_ids(self, cmd: Cancel) -> list[int]:
        """Every action *cmd* names: its targets, then its cookies' (known keys)."""
        ids = list(self._cancel_targets(cmd))
        for target in cmd.cookies:
            packed = self.keys.get(target.key)
            if packed is not None:
                ids.append(packed >> 3)
        return ids

    def _cancel_one(self, action_id: int, now: float, reason: str, effects: list[Effect]) -> CancelReply:
        action = self.actions.get(action_id)
        if action is None:
            return CancelReply(action_id, CancelOutcome.NOT_FOUND, None)
        if action.state == State.WAITING:
            self._end(action, Ev.CANCEL, now, E.ECANCELED, reason)
            effects.append(Changed(action_id))
            return CancelReply(action_id, CancelOutcome.DONE, action.state)
        if action.state == State.STARTED:
            self._transition(action, Ev.CANCEL)
            action.error = reason
            effects.append(SendCancel(action.agent, action_id, action.attempt))
            effects.append(Changed(action_id))
            return CancelReply(action_id, CancelOutcome.SENT, action.state)
        if action.state == State.CANCELING and action.reclaiming:
            action.reclaiming = False  # being stopped already; now it ends CANCELED
            action.error = reason
            effects.append(Changed(action_id))
            return CancelReply(action_id, CancelOutcome.SENT, action.state)
        return CancelReply(action_id, CancelOutcome.ALREADY_ENDED, action.state)

    def _cancel_targets(self, cmd: Cancel) -> Iterator[int]:
        yield from cmd.action_ids
        for target in cmd.fids:
            fsnames = [target.fsname] if target.fsname else sorted(self.fsnames)
            for fsname in fsnames:
                for action_id in self._fid_ids((fsname, target.fid)):
                    if target.kind is None or self.actions[action_id].kind == target.kind:
                        yield action_id
        if cmd.all:
            # in id order, which a snapshot keeps (the order of the FID
            # queues' keys it does not: they are rebuilt)
            yield from [i for i, a in self.actions.items() if not a.state.terminal]

    def _agent_lost(self, cmd: AgentLost) -> Result:
        res = Result()
        held = self.by_agent.get(cmd.agent, {})
        targets = [i for i in cmd.action_ids if i in held] if cmd.action_ids else list(held)
        for action_id in targets:
            action = self.actions[action_id]
            if action.state == State.CANCELING and action.reclaiming:
                self._reclaimed(action, cmd.now)
            elif action.state == State.CANCELING:
                self._end(action, Ev.REQUEUE, cmd.now, E.ECANCELED, action.error)
            else:
                self._requeue(action, cmd.now, E.ETIMEDOUT, cmd.reason)
            res.effects.append(Changed(action_id))
        parts = set(cmd.parts) if cmd.parts else None
        if not cmd.action_ids or parts:
            for action_id, stripe in list(self.stripes.items()):
                if parts is not None and not any(p[0] == action_id for p in parts):
                    continue
                out: list[Any] = []
                for i, a, n in stripe.running():
                    if a == cmd.agent and (parts is None or (action_id, wire_attempt(i, n)) in parts):
                        out += stripe.part_failed(i, n, E.ETIMEDOUT, cmd.reason or f"agent {a} lost", cmd.now)
                self._stripe_said(self.actions[action_id], out, cmd.now, res.effects)
                res.effects.append(Changed(action_id))
        return res

    def _reclaim(self, cmd: Reclaim) -> Result:
        res = Result()
        timeout = self.policy.settings.progress_timeout
        for action_id in cmd.action_ids:
            action = self.actions.get(action_id)
            if action is None or action.state != State.STARTED:
                continue
            if not cmd.force and (not timeout or cmd.now - action.last_progress < timeout):
                continue  # progress arrived since the leader looked
            self._transition(action, Ev.RECLAIM)
            action.reclaiming = True
            action.error = cmd.reason or f"no progress for {cmd.now - action.last_progress:.0f} s: reclaimed"
            res.effects.append(SendCancel(action.agent, action_id, action.attempt))
            res.effects.append(Changed(action_id))
            res.replies.append(action_id)
        for action_id, wire in cmd.parts:
            part = part_of(wire)
            stripe = self.stripes.get(action_id)
            if part is None or stripe is None or not 0 <= part[0] < len(stripe.parts):
                continue
            p = stripe.parts[part[0]]
            if p.state != PartState.RUNNING or p.attempt != part[1] or (
                    not cmd.force and (not timeout or cmd.now - p.last < timeout)):
                continue  # ended, or progress arrived since the leader looked
            agent = p.agent
            why = cmd.reason or f"part {part[0]} made no progress for {cmd.now - p.last:.0f} s: run again"
            out = stripe.part_failed(part[0], part[1], E.ETIMEDOUT, why, cmd.now)
            res.effects.append(SendCancel(agent, action_id, wire))
            self._stripe_said(self.actions[action_id], out, cmd.now, res.effects)
            res.effects.append(Changed(action_id))
            res.replies.append(action_id)
        return res

    def _reclaimed(self, action: Action, now: float) -> None:
        """A reclaimed action stopped on its agent: queue it again, or fail
        it when it used all its attempts."""
        action.reclaiming = False
        self._requeue(action, now, E.ETIMEDOUT, action.error, Ev.RECLAIMED)

    def stale(self, now: float) -> list[int]:
        """Running actions without progress for ``progress_timeout`` (for the
        leader's timer; O(running actions))."""
        timeout = self.policy.settings.progress_timeout
        if not timeout:
            return []
        return [i for held in self.by_agent.values() for i in held
                if self.actions[i].state == State.STARTED and now - self.actions[i].last_progress >= timeout]

    def stale_parts(self, now: float) -> list[tuple[int, int]]:
        """(action id, wire attempt) of running parts without progress for
        ``progress_timeout`` (for the leader's timer; O(stripes))."""
        timeout = self.policy.settings.progress_timeout
        if not timeout:
            return []
        return [(action_id, wire_attempt(i, p.attempt)) for action_id, s in self.stripes.items()
                for i, p in enumerate(s.parts) if p.state == PartState.RUNNING and now - p.last >= timeout]

    # ------------------------------------------------------------- helpers

    def _transition(self, action: Action, event: Ev) -> None:
        new = TRANSITIONS.get((action.state, event))
        if new is None:
            raise IllegalTransition(action.id, action.state, event)
        self._count(action.kind, action.state, -1)
        self._count(action.kind, new, +1)
        action.state = new

    def _count(self, kind: Kind, state: State, delta: int) -> None:
        key = (kind, state)
        n = self.counts.get(key, 0) + delta
        if n:
            self.counts[key] = n
        else:
            del self.counts[key]

    def _make_ready(self, action: Action, front: bool = False) -> None:
        if self.split_frozen and action.fid_key in self.split_frozen:
            return  # frozen: it waits for its new shard (or the split's abort)
        key = self.queue_key(action)
        queue = self.ready.get(key)
        if queue is None:
            queue = self.ready[key] = PositionQueue() if key[5] else ReadyQueue()
        if isinstance(queue, PositionQueue):
            queue.add(action.id, action.position)
        else:
            queue.add(action.id, front)

    def _release_agent(self, action: Action) -> None:
        n = self.running.get(action.archive_id, 0) - 1
        if n > 0:
            self.running[action.archive_id] = n
        else:
            self.running.pop(action.archive_id, None)
        held = self.by_agent.get(action.agent)
        if held is not None:
            held.pop(action.id, None)
            if not held:
                del self.by_agent[action.agent]

    def _requeue(self, action: Action, now: float, errno: int, message: str, event: Ev = Ev.REQUEUE) -> None:
        """A running action goes back to WAITING at the head of its class,
        or FAILS when it has used all its attempts."""
        self._drop_stripe(action, now)
        if action.attempt - action.handed_back >= self.policy.settings.max_attempts:
            self._end(action, Ev.FAIL, now, errno or E.EIO, message or "too many attempts")
            return
        self._transition(action, event)
        self._release_agent(action)
        action.errno = errno
        action.error = message
        action.bytes_done = 0
        self._make_ready(action, front=True)
        self._counted.append(Requeued(action.id, action.kind, errno))

    def _end(self, action: Action, event: Ev, now: float, errno: int, message: str) -> None:
        self._drop_stripe(action, now)
        was = action.state
        self._transition(action, event)
        action.ended = now
        action.errno = errno
        action.error = message
        ran = now - action.started if was != State.WAITING else -1.0
        self._counted.append(Ended(action.id, action.kind, action.state, errno, ran))
        if self.events.consumers:
            fid = action.fid
            self.events.append(now, _HSM_EVENT[action.kind], errno, action.fsname, (fid.seq, fid.oid, fid.ver),
                               action.archive_id, action.id)
        if was == State.WAITING:
            self._unready(action)
        else:
            self._release_agent(action)
        fkey = action.fid_key
        fq = self.fid_queue[fkey]
        if isinstance(fq, int):
            self._drop_fid_queue(fkey)
        else:
            was_head = fq[0] == action.id
            fq.remove(action.id)
            if len(fq) == 1:
                self.fid_queue[fkey] = fq[0]
            if was_head:
                self._make_ready(self.actions[fq[0]])
        self.terminal.append(action.id)
        while len(self.terminal) > self.policy.settings.max_terminal:
            self._forget(self.terminal.popleft())

    def _remember(self, action: Action, now: float) -> None:
        """Keep what a successful action ended: the latest state of the file
        its requesters saw (the ctime), for ``_remembered``."""
        if not action.hsm_ctime:
            return
        key = (action.fsname, action.fid, action.kind, action.archive_id)
        self.ended_states.pop(key, None)  # to the end: the newest
        self.ended_states[key] = (action.hsm_ctime, action.id, now)
        self._expire_remembered(now)

    def _expire_remembered(self, now: float) -> None:
        limit, oldest = self.config.remember_ends, now - self.config.remember_for
        while self.ended_states:
            key, (_ctime, _id, ended) = next(iter(self.ended_states.items()))
            if len(self.ended_states) <= limit and ended >= oldest:
                break
            del self.ended_states[key]

    def _remembered(self, item: Item, archive_id: int, now: float) -> Action | None:
        """The ended action that answers *item*, if any: the last successful
        one of the same file, kind and archive id, when the state *item* saw
        is not newer than the one that action finished with. The token is
        the file's ctime read after its HSM flags: every change (a write, a
        release, a restore's rename, a new HSM state) moves it forward, and
        one file's ctimes come from one clock (its file system's). So a
        request that saw a later state never matches; one that saw that
        state or an older one, and arrives after the action ended, does:
        what it asked for happened after it looked."""
        if not item.hsm_ctime:
            return None
        seen = self.ended_states.get((item.fsname, item.fid, item.kind, archive_id))
        if seen is None or item.hsm_ctime > seen[0] or now - seen[2] > self.config.remember_for:
            return None
        return self.actions.get(seen[1])  # None once the action itself is forgotten

    def _forget(self, action_id: int) -> None:
        action = self.actions.pop(action_id)
        self._count(action.kind, action.state, -1)
        for req in action.requesters:
            if req.key and self.keys.get(req.key, 0) >> 3 == action_id:
                del self.keys[req.key]

    # --------------------------------------------------------------- splits

    def _split_refusal(self, fid: Fid) -> tuple[int, str] | None:
        """Why a request for *fid* is refused here because of a split
        (errno, reason; coordinator.split), or None."""
        if self.split_in:
            return (E.EBUSY, f"shard {self.config.shard} is being filled by a split to ring version "
                              f"{self.split_in} and serves no file yet; retry in a moment")
        out = self.split_out
        if out is not None:
            target = out.target(fid)
            if target is not None:
                if out.active:
                    return (E.ESTALE, f"FID {fid} belongs to shard {target} since ring version {out.version}; "
                                      "read the shard map again")
                return (E.EBUSY, f"FID {fid} is moving to shard {target} (ring version {out.version}); "
                                  "retry in a moment")
        for done in self.splits_done:
            target = done.target(fid)
            if target is not None:
                return (E.ESTALE, f"FID {fid} belongs to shard {target} since ring version {done.version}; "
                                  "read the shard map again")
        return None

    def _frozen_target(self, cmd: Cancel) -> CancelRefused | None:
        """A cancel that names a waiting action of a frozen file is refused
        whole (the action is being handed to its new shard as it is)."""
        frozen = self.split_frozen
        for action_id in self._cancel_ids(cmd):
            a = self.actions.get(action_id)
            if a is not None and a.state == State.WAITING and a.fid_key in frozen:
                version = self.split_out.version if self.split_out is not None else 0
                return CancelRefused(action_id, f"action {action_id} ({a.kind.name} {a.fid}) is moving to shard "
                                                f"{frozen[a.fid_key]} with its file (ring version {version}); "
                                                "retry in a moment")
        return None

    def _moving_files(self, out: split.Outgoing) -> dict[tuple[str, Fid], int]:
        """Every file this shard holds something of (actions, ended ones,
        copies, remembered ends) that *out* hands over, with its new shard."""
        found: dict[tuple[str, Fid], int] = {}
        seen: set[tuple[str, Fid]] = set()
        keys: list[tuple[str, Fid]] = list(self.fid_queue)
        keys.extend(self.actions[i].fid_key for i in self.terminal)
        keys.extend(self.catalog.files)
        keys.extend((k[0], k[1]) for k in self.ended_states)
        for fkey in keys:
            if fkey in seen:
                continue
            seen.add(fkey)
            target = out.target(fkey[1])
            if target is not None:
                found[fkey] = target
        return found

    def _freeze(self, cmd: Freeze) -> SplitReply:
        shard = self.config.shard
        if cmd.version < 2 or cmd.shards < 1 or cmd.added < 1 or cmd.vnodes < 1:
            return SplitReply(0, f"not a split: ring version {cmd.version}, {cmd.shards} shards + {cmd.added}, "
                                 f"{cmd.vnodes} vnodes")
        if shard >= cmd.shards + cmd.added:
            return SplitReply(0, f"shard {shard} is not one of the {cmd.shards + cmd.added} shards of ring version "
                                 f"{cmd.version}")
        if shard >= cmd.shards:  # a new shard: filled, then serving
            if self.split_in == cmd.version or (not self.split_in and self.ring_version >= cmd.version):
                return SplitReply(0)  # a retry
            if self.split_in:
                return SplitReply(0, f"a split to ring version {self.split_in} fills this shard")
            if self.actions or self.catalog.files or self.ended_states:
                return SplitReply(0, f"shard {shard} holds files already: a new shard of a split starts empty")
            self.split_in = cmd.version
            self.split_shape = (cmd.shards, cmd.added, cmd.vnodes)
            self.split_from = {s: False for s in split.sources_of(shard, cmd.shards, cmd.added, cmd.vnodes,
                                                                  cmd.version)}
            self.split_files = {}
            return SplitReply(0)
        out = self.split_out
        if out is not None:
            if out.version == cmd.version:
                return SplitReply(len(self.split_frozen))  # a retry
            if not out.active:
                return SplitReply(0, f"a split to ring version {out.version} runs on this shard")
            if cmd.version <= out.version:
                return SplitReply(0, f"ring version {cmd.version} is not newer than this shard's {out.version}")
            self.splits_done = (*self.splits_done, out)
        new = split.Outgoing(cmd.version, cmd.shards, cmd.added, cmd.vnodes, shard)
        frozen = self._moving_files(new)
        self.split_out = new
        self.split_frozen = frozen
        self.moved_to = {}
        for fkey in frozen:
            head = self._head(fkey)
            if head is not None and head.state == State.WAITING:
                self._unready(head)
        return SplitReply(len(frozen))

    def _unready(self, action: Action) -> None:
        """*action* out of its ready queue, if it is in it."""
        qkey = self.queue_key(action)
        queue = self.ready.get(qkey)
        if queue is not None and action.id in queue:
            del queue[action.id]
            if not queue:
                del self.ready[qkey]

    def _enqueue(self, fkey: tuple[str, Fid], action_id: int) -> bool:
        """*action_id* at the back of its file's queue; True when it is the
        head (the file had no live action)."""
        queue = self.fid_queue.get(fkey)
        if queue is None:
            self.fid_queue[fkey] = action_id
            self.fsnames[fkey[0]] = self.fsnames.get(fkey[0], 0) + 1
            return True
        if isinstance(queue, int):
            self.fid_queue[fkey] = [queue, action_id]
        else:
            queue.append(action_id)
        return False

    def _drop_fid_queue(self, fkey: tuple[str, Fid]) -> None:
        """The file's queue forgotten (it has no live action left here)."""
        del self.fid_queue[fkey]
        left = self.fsnames[fkey[0]] - 1
        if left:
            self.fsnames[fkey[0]] = left
        else:
            del self.fsnames[fkey[0]]

    def _head(self, fkey: tuple[str, Fid]) -> Action | None:
        """The first live action of a file (None: it has none)."""
        q = self.fid_queue.get(fkey)
        if q is None:
            return None
        return self.actions[q if isinstance(q, int) else q[0]]

    def split_busy(self) -> int:
        """How many frozen files still have a running action (or parts of a
        striped archive running): the split's drain waits for none."""
        n = 0
        for fkey in self.split_frozen:
            head = self._head(fkey)
            if head is not None and (head.state != State.WAITING or self.parked(head)):
                n += 1
        return n

    def split_facts(self) -> split.ShardFacts:
        """What this shard says of its part in splits (the driver's facts)."""
        out = self.split_out
        frozen = out is not None and not out.active
        return split.ShardFacts(self.ring_version, out.version if out is not None else 0,
                                out is not None and out.active, self.split_busy() if frozen else 0, self.split_in,
                                tuple(sorted(s for s, done in self.split_from.items() if not done)))

    def split_export(self) -> dict[int, list[Any]] | None:
        """What a frozen, drained shard hands over, per new shard: a
        ``split.Bundle`` per file in a fixed order (the same on every replica
        and after a leader change). None when no split is frozen here or a
        frozen file still has a running action. Reads only."""
        out = self.split_out
        if out is None or out.active or self.split_busy():
            return None
        frozen = self.split_frozen
        ended: dict[tuple[str, Fid], list[Action]] = {}
        for i in self.terminal:
            a = self.actions[i]
            if a.fid_key in frozen:
                ended.setdefault(a.fid_key, []).append(a)
        remembered: dict[tuple[str, Fid], list[Any]] = {}
        for k, v in self.ended_states.items():
            fkey = (k[0], k[1])
            if fkey in frozen:
                remembered.setdefault(fkey, []).append(((int(k[2]), k[3]), v))
        per_target: dict[int, list[Any]] = {}
        for fkey in split.fid_order(list(frozen)):
            live = [self.actions[i] for i in self._fid_ids(fkey)]
            done = ended.get(fkey, [])
            keys: dict[str, int] = {}
            for a in chain(live, done):
                for r in a.requesters:
                    packed = self.keys.get(r.key, 0) if r.key else 0
                    if packed >> 3 == a.id and packed:
                        keys[r.key] = packed
            copies = tuple(c.values() for c in self.catalog.of(fkey[0], fkey[1]))
            rem = tuple(remembered.get(fkey, ()))
            if not live and not done and not copies and not rem:
                continue  # forgotten since the freeze (ended actions pruned, remembered ends expired)
            per_target.setdefault(frozen[fkey], []).append(
                (fkey[0], fkey[1], tuple(_action_values(a) for a in live), tuple(_action_values(a) for a in done),
                 tuple(keys.items()), copies, rem))
        return per_target

    def _import(self, cmd: Import) -> SplitReply:
        shard = self.config.shard
        if not self.split_in or cmd.version != self.split_in:
            if not self.split_in and cmd.version <= self.ring_version:
                return SplitReply(0, f"the split to ring version {cmd.version} is active on shard {shard} already")
            return SplitReply(0, f"shard {shard} is not being filled by a split to ring version {cmd.version}")
        if cmd.source not in self.split_from:
            return SplitReply(0, f"shard {cmd.source} hands nothing to shard {shard} in this split")
        n = 0
        wrong = 0
        for bundle in cmd.bundles:
            fsname, fid, live, ended, keys, copies, remembered = bundle
            fkey = (fsname, fid)
            if fkey in self.split_files:
                continue  # sent again: imported already
            shards, added, vnodes = self.split_shape
            if split.ranges_of(cmd.source, shards, added, vnodes, cmd.version).target(fid) != shard:
                wrong += 1
                continue
            self._import_file(fkey, live, ended, keys, copies, remembered)
            self.split_files[fkey] = bool(live)
            n += 1
        if cmd.last:
            self.split_from[cmd.source] = True
        return SplitReply(n, f"{wrong} file(s) of the chunk are not this shard's under ring version {cmd.version}: "
                             "left out" if wrong else "")

    def _import_file(self, fkey: tuple[str, Fid], live: tuple[Any, ...], ended: tuple[Any, ...],
                     keys: tuple[tuple[str, int], ...], copies: tuple[Any, ...], remembered: tuple[Any, ...]) -> None:
        top = 0
        for values in live:
            a = _action_from_values(values)
            if a.id in self.actions or a.state not in (State.WAITING,):
                raise ValueError(f"import of {fkey}: action {a.id} is known here or runs ({a.state.name})")
            self.actions[a.id] = a
            self._count(a.kind, a.state, +1)
            self._enqueue(fkey, a.id)
            top = max(top, a.id)
        for values in ended:
            a = _action_from_values(values)
            if a.id in self.actions or not a.state.terminal:
                continue
            self.actions[a.id] = a
            self._count(a.kind, a.state, +1)
            self.terminal.append(a.id)
            top = max(top, a.id)
        for key, packed in keys:
            if packed >> 3 in self.actions and key not in self.keys:
                self.keys[key] = packed
        for values in copies:
            self.catalog.record(fkey[0], fkey[1], Copy(*values))
        for (kind, archive_id), entry in remembered:
            rkey = (fkey[0], fkey[1], Kind(kind), archive_id)
            if rkey not in self.ended_states:
                self.ended_states[rkey] = entry
        while len(self.terminal) > self.policy.settings.max_terminal:
            self._forget(self.terminal.popleft())
        # the shard's own ids come after every imported one: a file's queue
        # is in id order when a snapshot rebuilds it
        self.next_seq = max(self.next_seq, top // MAX_SHARDS + 1)

    def _activate(self, cmd: Activate) -> SplitReply:
        if self.split_in:
            if cmd.version != self.split_in:
                return SplitReply(0, f"this shard is being filled by a split to ring version {self.split_in}")
            missing = sorted(s for s, done in self.split_from.items() if not done)
            if missing:
                return SplitReply(0, f"shard(s) {', '.join(map(str, missing))} have not handed over their last "
                                     "chunk yet")
            files = self.split_files
            self.split_in = 0
            self.split_from = {}
            self.split_files = {}
            self.ring_version = cmd.version
            self._ready_heads([fkey for fkey, live in files.items() if live])
            return SplitReply(len(files))
        out = self.split_out
        if out is None or out.version != cmd.version:
            if cmd.version <= self.ring_version:
                return SplitReply(0)  # applied already
            return SplitReply(0, f"no split to ring version {cmd.version} on this shard")
        if out.active:
            return SplitReply(0)  # a retry
        busy = self.split_busy()
        if busy:
            return SplitReply(0, f"{busy} moving file(s) still have a running action: wait for them to end")
        n = self._drop_files(self.split_frozen, True)
        self.split_out = split.Outgoing(out.version, out.shards, out.added, out.vnodes, out.shard, True)
        self.split_frozen = {}
        self.ring_version = cmd.version
        return SplitReply(n)

    def _abort_split(self, cmd: AbortSplit) -> SplitReply:
        if self.split_in:
            if cmd.version != self.split_in:
                return SplitReply(0, f"this shard is being filled by a split to ring version {self.split_in}")
            n = self._drop_files({k: -1 for k in self.split_files}, False)
            self.split_in = 0
            self.split_from = {}
            self.split_files = {}
            return SplitReply(n)
        out = self.split_out
        if out is None or out.version != cmd.version:
            return SplitReply(0)  # never frozen here, or undone already
        if out.active:
            return SplitReply(0, f"the split to ring version {out.version} is active on this shard: it cannot be "
                                 "undone")
        frozen = self.split_frozen
        self.split_out = None
        self.split_frozen = {}
        self._ready_heads(list(frozen))
        return SplitReply(len(frozen))

    def _reshard(self, cmd: ReshardBegin | ReshardStep) -> ReshardReply:
        """Shard 0's record of a split (coordinator.split): begun, or a step."""
        got: split.Reshard | str
        if self.config.shard != 0:
            return ReshardReply(None, f"a split is recorded on shard 0, not {self.config.shard}")
        if isinstance(cmd, ReshardBegin):
            got = split.begin(self.reshard, self.cluster_ring, cmd.shards, cmd.version, cmd.added, cmd.vnodes,
                              cmd.groups, cmd.now)
        else:
            try:
                phase = split.Phase(cmd.phase)
            except ValueError:
                return ReshardReply(self.reshard, f"no split phase {cmd.phase}")
            got = split.advance(self.reshard, cmd.version, phase, cmd.now)
        if isinstance(got, str):
            return ReshardReply(self.reshard, got)
        self.reshard = got
        if got.phase == split.Phase.DONE:
            self.cluster_ring = (got.total, got.version)
        return ReshardReply(got)

    def _ready_heads(self, files: list[tuple[str, Fid]]) -> None:
        """The waiting heads of *files* made ready, in arrival order (a
        split's files as they start or go on being served here)."""
        heads: list[Action] = []
        for fkey in files:
            head = self._head(fkey)
            if head is not None and head.state == State.WAITING and not self.parked(head):
                heads.append(head)
        heads.sort(key=_arrival)
        for head in heads:
            self._make_ready(head)

    def _drop_files(self, files: dict[tuple[str, Fid], int], tombstones: bool) -> int:
        """Forget everything of *files* (a split's moved files, with their
        new shards; or a new shard's imports when its split is undone)."""
        for fkey, target in files.items():
            for i in self._fid_ids(fkey):
                a = self.actions[i]
                if a.state != State.WAITING:
                    raise ValueError(f"split: {a} of a moving file runs")
                self._unready(a)
                self.stripes.pop(i, None)
                self._drop_action(a, target if tombstones else -1)
            if fkey in self.fid_queue:
                self._drop_fid_queue(fkey)
            self.catalog.drop(fkey[0], fkey[1])
        kept: deque[int] = deque()
        for i in self.terminal:
            a = self.actions[i]
            to = files.get(a.fid_key)
            if to is None:
                kept.append(i)
            else:
                self._drop_action(a, to if tombstones else -1)
        self.terminal = kept
        self.ended_states = {k: v for k, v in self.ended_states.items() if (k[0], k[1]) not in files}
        return len(files)

    def _drop_action(self, a: Action, moved_to: int) -> None:
        self._forget(a.id)
        if moved_to >= 0:
            self.moved_to[a.id] = moved_to

    # ------------------------------------------------------------ snapshots

    def export_parts(self) -> tuple[dict[str, Any], list[Action]]:
        """The state without its actions and the indexes derived from them,
        and the actions in order: a snapshot pickles the actions in slices,
        so that no single call holds the GIL for seconds (coordinator.raft).
        Nothing is copied; the caller must not apply commands meanwhile."""
        head = {k: getattr(self, k) for k in _stored_attributes()}
        return head, list(self.actions.values())

    @classmethod
    def import_parts(cls, head: dict[str, Any], chunks: Iterable[list[Action]]) -> ShardState:
        """The inverse of ``export_parts``: the FID queues are rebuilt from
        the actions (ids grow in arrival order, the order the queues keep)."""
        st = cls()  # attributes newer than the snapshot keep their defaults
        stored = _stored_attributes()
        old_ready: Any = None
        for k, v in head.items():
            if k == "ready" and any(len(key) != len(QUEUE_KEY_FIELDS) for key in v):
                old_ready = v  # keyed (kind, archive id): written before the policy's queues
                continue
            if k in stored:  # one of an attribute since removed: ignored
                setattr(st, k, v)
        if "policy" not in head:  # a snapshot older than policies: its configuration
            st.policy = _seed(st.config)
        for chunk in chunks:
            for a in chunk:
                st.actions[a.id] = a
        for a in st.actions.values():
            if a.state.terminal:
                continue
            if a.state in (State.STARTED, State.CANCELING):
                st.running[a.archive_id] = st.running.get(a.archive_id, 0) + 1
            st._enqueue(a.fid_key, a.id)
        if old_ready is not None:
            st._ready_again(old_ready.values())
        return st

    # --------------------------------------------------------------- reads

    def get(self, action_id: int) -> Action | None:
        return self.actions.get(action_id)

    def queue_position(self, action: Action) -> tuple[int, int] | None:
        """(how many of its queue start before it, the queue's length) for
        a WAITING action that may start now; None for one waiting behind
        another action on its file, or not waiting."""
        if action.state != State.WAITING:
            return None
        key = self.queue_key(action)
        queue = self.ready.get(key)
        if queue is None:
            return None
        pos = queue.position(action.id)
        if pos is None:
            return None
        # the queues of its kind and archive id: those of a higher priority
        # go first; those of its own priority (other fair shares) are
        # served in turn, each up to the same rank (an estimate)
        ahead, length = pos, len(queue)
        for other, q in self.ready.items():
            kind, archive_id, prio = other[0], other[1], other[2]
            if kind != key[0] or archive_id != key[1] or other == key:
                continue
            length += len(q)
            if prio > key[2]:
                ahead += len(q)
            elif prio == key[2]:
                ahead += min(pos, len(q))
        return (ahead, length)

    def actions_of_fid(self, fsname: str, fid: Fid) -> list[Action]:
        """Non-terminal actions of a file, in the order they will run."""
        return [self.actions[i] for i in self._fid_ids((fsname, fid))]

    def _joinable(self, fkey: tuple[str, Fid], kind: Kind, archive_id: int) -> int | None:
        """The action a new request of this kind joins: the oldest joinable
        one of the file (a FID has a handful of live actions at most, so
        this scan replaces a dedup index and its memory)."""
        q = self.fid_queue.get(fkey)
        if q is None:
            return None
        for action_id in (q,) if isinstance(q, int) else q:
            a = self.actions[action_id]
            if a.kind == kind and (a.archive_id == archive_id or archive_id in a.tried) and a.joinable:
                return action_id
        return None

    def _fid_ids(self, fkey: tuple[str, Fid]) -> list[int]:
        """The non-terminal action ids of a file (a copy)."""
        q = self.fid_queue.get(fkey)
        if q is None:
            return []
        return [q] if isinstance(q, int) else list(q)

    def held_by(self, agent: str) -> list[Action]:
        return [self.actions[i] for i in self.by_agent.get(agent, ())]

    def iter_actions(
        self,
        states: Iterable[State] = (),
        kinds: Iterable[Kind] = (),
        agent: str = "",
        after: int = 0,
    ) -> Iterator[Action]:
        """Kept actions in id order, filtered. Reads only; used by listings."""
        want_states = frozenset(states)
        want_kinds = frozenset(kinds)
        for action in self.actions.values():
            if action.id <= after:
                continue
            if want_states and action.state not in want_states:
                continue
            if want_kinds and action.kind not in want_kinds:
                continue
            if agent and action.agent != agent:
                continue
            yield action

    # ------------------------------------------------------------ checking

    def check_invariants(self) -> None:
        """Recompute every index from the actions and compare. For tests:
        raises AssertionError describing the first inconsistency."""
        self.events.check_invariants()
        counts: dict[tuple[Kind, State], int] = {}
        for a in self.actions.values():
            counts[(a.kind, a.state)] = counts.get((a.kind, a.state), 0) + 1
        assert counts == self.counts, f"counts {self.counts} != recount {counts}"

        live = {i for i, a in self.actions.items() if not a.state.terminal}
        in_queues = [i for fkey in self.fid_queue for i in self._fid_ids(fkey)]
        assert len(in_queues) == len(set(in_queues)), "action in two FID queues"
        assert set(in_queues) == live, "FID queues != non-terminal actions"
        assert set(self.terminal) == set(self.actions) - live, "terminal list mismatch"
        assert len(self.terminal) <= self.policy.settings.max_terminal

        ready_ids: set[int] = set()
        for qkey, rq in self.ready.items():
            assert rq, f"empty ready queue {qkey} kept"
            for rank, i in enumerate(rq):
                ra = self.actions[i]
                assert self.queue_key(ra) == qkey, f"{ra} in wrong ready queue {qkey}"
                assert rq.position(i) == rank, f"{ra}: position {rq.position(i)}, but {rank} start before it"
                ready_ids.add(i)
        expect_ready = set()
        for fkey, stored in self.fid_queue.items():
            assert isinstance(stored, int) or len(stored) > 1, f"FID queue {fkey} kept as {stored!r}"
            q = self._fid_ids(fkey)
            for pos, i in enumerate(q):
                a = self.actions[i]
                assert a.fid_key == fkey, f"{a} in FID queue of {fkey}"
                if pos > 0:
                    assert a.state == State.WAITING, f"{a} running behind another action of its FID"
            head = self.actions[q[0]]
            if head.state == State.WAITING and not self.parked(head) and not self.split_files.get(fkey, False) and \
                    fkey not in self.split_frozen:
                expect_ready.add(head.id)
        assert ready_ids == expect_ready, f"ready {sorted(ready_ids)} != heads {sorted(expect_ready)}"

        held: dict[str, set[int]] = {}
        running: dict[int, int] = {}
        for a in self.actions.values():
            if a.state in (State.STARTED, State.CANCELING):
                assert a.agent, f"{a} running without an agent"
                held.setdefault(a.agent, set()).add(a.id)
                running[a.archive_id] = running.get(a.archive_id, 0) + 1
        assert {k: set(v) for k, v in self.by_agent.items()} == held, "by_agent mismatch"
        assert running == self.running, f"running {self.running} != recount {running}"

        for key, packed in self.keys.items():
            assert packed >> 3 in self.actions, f"key {key!r} points to forgotten action {packed >> 3}"
            assert Outcome(packed & 7) in (Outcome.CREATED, Outcome.JOINED)
        fs: dict[str, int] = {}
        for fsname, _fid in self.fid_queue:
            fs[fsname] = fs.get(fsname, 0) + 1
        assert fs == self.fsnames, "fsnames mismatch"
        if self.split_out is not None and not self.split_out.active:
            missing = set(self._moving_files(self.split_out)) - set(self.split_frozen)
            assert not missing, f"moving files not frozen: {sorted(missing)[:5]}"
        if self.split_in:
            alien = {a.fid_key for a in self.actions.values()} - set(self.split_files)
            assert not alien, f"files on a shard being filled that no import brought: {sorted(alien)[:5]}"
        assert not set(self.moved_to) & set(self.actions), "a moved action is still kept here"
        for action_id, stripe in self.stripes.items():
            sa = self.actions.get(action_id)
            assert sa is not None and not sa.state.terminal, f"stripe of ended or forgotten action {action_id}"
            assert sa.kind == Kind.ARCHIVE, f"{sa} striped"
            assert stripe.phase in (StripePhase.PARTS, StripePhase.SEAL), f"{sa}: stripe kept in {stripe.phase.name}"
            if stripe.phase == StripePhase.PARTS:
                assert sa.state == State.WAITING, f"{sa} runs while its parts do"
            stripe.check()


def _action_values(a: Action) -> tuple[Any, ...]:
    """An action's values (``Action.__reduce__``) with a list of requesters
    of its own: what a split hands over (never shared between states)."""
    values = a.__reduce__()[1][0]
    return (*values[:10], list(values[10]), *values[11:])


def _arrival(a: Action) -> tuple[float, int]:
    return (a.created, a.id)


def _with_tag(data: bytes, tag: str) -> bytes:
    """Request data (``key=value,...``, like hai_data) with ``tag=`` set to
    *tag*: any tag the requester gave is replaced."""
    if not data:  # the usual case: no other data
        return b"tag=" + tag.encode()
    parts = [p for p in data.split(b",") if p and not p.startswith(b"tag=")]
    parts.append(b"tag=" + tag.encode())
    return b",".join(parts)


def _seed(config: ShardConfig) -> Policy:
    """Version 0: this replica's configuration, until the cluster's first
    SetPolicy (the leader proposes it at once, from its configuration)."""
    return seeded(config.max_attempts, config.progress_timeout, 60.0, config.max_terminal,
                  frozenset({"restore"}))


def _with(req: Requester, *, when: float, key: str) -> Requester:
    return Requester(req.initiator, req.cookie, req.uid, req.gid, req.projid, when, key, req.owner)
