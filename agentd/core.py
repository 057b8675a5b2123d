"""agentd's side of the agent protocol, pure: events in (with the time
passed in), instructions out. No asyncio, no gRPC, no threads, no clock:
``agentd.daemon`` (the shell) owns the streams, the worker threads and the
mover, feeds what happens to :class:`AgentCore` and carries out what it
answers.

What it holds
-------------
* Slots per action kind, and the runs using them (one run per action at a
  time, ever).
* Per stream (one per coordinator address): the credits granted and not yet
  sent, the replica's backlog hint, the assignments seen, the completions to
  send and those sent but not acknowledged, the token of a running report
  asked for.
* The newer attempts waiting for an older attempt being cancelled here
  (deferred), the runs that finished lately (a late cancel gets their
  completion again), the tombstones of actions cancelled before their
  assignment arrived (a late assignment is refused).
* The lease on the actions held here (:class:`agentd.lease.Leases`).

The credit invariant, per kind, whatever the events::

    running + deferred + sum(credits granted on every stream) <= slots

Events are methods (``welcomed``, ``stream_lost``, ``assignment``,
``cancel``, ``backlog``, ``request_running``, ``lease_granted``,
``applied``, ``job_ended``, ``progress``, ``rebalance``, ``tick``,
``check_leases``, ``stop``, ``stop_running``); each returns the list of
:data:`Instruction` for the shell, in order. What a stream's writer sends
next is asked with :meth:`AgentCore.collect` (then :meth:`~AgentCore.written`
or :meth:`~AgentCore.write_failed`).

Protobuf messages of ``hsm.v1.agent_pb2`` are used as plain data: the
assignments and cancels come in as they were received, completions are
kept as ``Done`` messages, :meth:`AgentCore.collect` answers an
``AgentMessage``.
"""

from __future__ import annotations

import collections
import errno as _errno
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentd.lease import Leases
from agentd.movers.base import Requester, Result
from hsm.fid import Fid, FidError
from hsm.hsmflags import HSMA
from hsm.v1 import agent_pb2, coordinator_pb2, types_pb2
from hsm.wire import KIND_NAMES

KINDS: tuple[int, ...] = (int(HSMA.ARCHIVE), int(HSMA.RESTORE), int(HSMA.REMOVE))

#: seconds a stream may hold its only unused credit of a kind while another live
#: stream holds none, before the credit moves there (see AgentCore.level)
ROTATE_AFTER = 5.0
#: credits move only from a stream that received no assignment for this long
LEVEL_IDLE = 1.0
#: finished runs and refused actions agentd remembers, for late cancels and
#: assignments (a new shard leader asks about what its predecessor assigned):
#: at least REMEMBERED of them, and every one younger than REMEMBER_FOR
#: seconds (a leader change under a flood of quick actions), at most
#: REMEMBERED_MAX
REMEMBERED = 10_000
REMEMBER_FOR = 120.0
REMEMBERED_MAX = 1_000_000
#: a completion sent to a replica that acknowledges completions and not
#: acknowledged within this many seconds is sent again (any replica takes it
#: and hands it to the shard's leader; applying one twice changes nothing)
RESEND_AFTER = 30.0


def kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, f"kind {kind}")


# -- instructions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the mover needs of an assignment (the shell adds the backend,
    the cancel event, the progress callback and ``may_publish``)."""

    action_id: int
    attempt: int
    kind: int
    fsname: str
    fid: Fid
    archive_id: int
    offset: int
    length: int  # -1: to the end of the file
    data: bytes
    flags: int
    data_version: int = 0
    requesters: tuple[Requester, ...] = ()
    object_key: str = ""  # RESTORE: the copy's key in the archive ("": the default layout's)
    final: bool = True  # ARCHIVE: False while other copies are to be made (let go, do not end)
    #: RESTORE/REMOVE of a packed file: its slice of the container object_key
    packed: bool = False
    object_offset: int = 0
    object_length: int = 0
    object_checksum: str = ""
    #: ARCHIVE striped over several agents (agent.proto StripeOrder,
    #: docs/striping.md): *stripe_above* > 0: the anchor (let go of a file
    #: that long, without copying); *stripe_part* > 0: part number
    #: *stripe_part* - 1 of *stripe_parts* (the extent is the job's);
    #: *stripe_seal*: seal the parts' object. *stripe_version* and
    #: *stripe_size*: the anchor's data version and size
    stripe_above: int = 0
    stripe_part: int = 0
    stripe_parts: int = 0
    stripe_version: int = 0
    stripe_size: int = 0
    stripe_seal: bool = False
    #: the seal: the parts' length (the last one shorter) and each part's checksum, in order
    stripe_part_length: int = 0
    stripe_checksums: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Start:
    """Run the mover on *job*. *run* names this run in :meth:`AgentCore.progress`,
    :meth:`AgentCore.job_ended` and the instructions about it."""

    run: int
    stream: str
    job: JobSpec


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Set the run's ``cancelled`` event: its mover stops (ECANCELED)."""

    run: int


@dataclass(frozen=True, slots=True)
class Renumber:
    """The run goes on as a newer attempt of its action (the job's ``attempt``)."""

    run: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Wake:
    """The stream's writer has something to send (*batch*: wait a moment,
    completions ending together share a message)."""

    stream: str
    batch: bool = False


@dataclass(frozen=True, slots=True)
class Log:
    """A log line: ``logging`` *level*, ``%``-format *msg* and its *args*."""

    level: int
    msg: str
    args: tuple[Any, ...] = ()

    @property
    def text(self) -> str:
        return self.msg % self.args if self.args else self.msg


Instruction = Start | CancelJob | Renumber | Wake | Log


# -- state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreConfig:
    agent_id: str
    slots: Mapping[int, int]  # per kind
    #: the file system the backend serves ("" any)
    fsname: str = ""
    heartbeat_interval: float = 5.0  # until a Welcome says otherwise
    progress_interval: float = 1.0  # at most one Progress per run this often


def _zeros() -> dict[int, int]:
    return dict.fromkeys(KINDS, 0)


@dataclass(slots=True, eq=False)
class StreamState:
    """One Work stream (one coordinator address), across its reconnects."""

    address: str
    heartbeat_interval: float = 5.0
    granted: dict[int, int] = field(default_factory=_zeros)  # credits the replica holds
    pending_credits: dict[int, int] = field(default_factory=_zeros)  # granted, not sent yet
    backlog: dict[int, int] = field(default_factory=_zeros)  # work its replica has for us
    seen: dict[int, int] = field(default_factory=_zeros)  # assignments received
    pending_done: list[agent_pb2.Done] = field(default_factory=list)
    #: completions in the message being written (back to pending_done if it fails)
    in_flight: list[agent_pb2.Done] = field(default_factory=list)
    #: completions written to this stream, not yet acknowledged: (action id, attempt) -> (Done, when sent)
    unacked: dict[tuple[int, int], tuple[agent_pb2.Done, float]] = field(default_factory=dict)
    acks_done: bool = False  # the replica acknowledges completions (Welcome.acks_done)
    report_running: int = 0  # token of a RunningReport a replica asked for
    send_absolute: bool = False  # credits were taken back: send the whole grant, absolute
    welcomed_at: float = 0.0
    last_credit: float = 0.0  # when this stream last got a credit (rotation goes round)
    welcomed: bool = False
    replica: str = ""
    last_assign: float = 0.0
    closing: bool = False
    last_sent: float = 0.0


@dataclass(slots=True, eq=False)
class RunState:
    run: int
    job: JobSpec
    stream: str
    started: float
    attempt: int
    bytes_done: int = 0
    bytes_total: int = 0
    progress_dirty: bool = False
    progress_sent_at: float = -math.inf
    cancelled: bool = False
    stopped_by_agent: bool = False  # cancelled by the agent's own shutdown, not by a coordinator
    lease_lost: bool = False  # stopped because no leader of its shard renewed the agent's lease

    @property
    def action_id(self) -> int:
        return self.job.action_id

    @property
    def kind(self) -> int:
        return self.job.kind


Book = collections.OrderedDict[tuple[int, int], tuple[float, Any]]


class AgentCore:
    """The agent's protocol state; see the module doc. *streams*: the
    coordinator addresses, in the configured order (the first live one
    carries what has no stream of its own)."""

    def __init__(self, config: CoreConfig, streams: Sequence[str]) -> None:
        self.config = config
        self.slots = {k: int(config.slots.get(k, 0)) for k in KINDS}
        self.streams: dict[str, StreamState] = {}
        for address in streams:
            if address in self.streams:
                raise ValueError(f"stream {address} given twice")
            self.streams[address] = StreamState(address, config.heartbeat_interval)
        self._order = list(self.streams.values())
        #: action id -> its run (one at a time)
        self.runs: dict[int, RunState] = {}
        self._by_run: dict[int, RunState] = {}
        self.running_count = _zeros()
        self.peak = _zeros()
        #: newer attempts waiting for their older attempt to stop: action id -> (stream, job)
        self.deferred: dict[int, tuple[str, JobSpec]] = {}
        #: (action id, attempt) of runs that ended here lately (-> their Done),
        #: and of actions the coordinator canceled before their assignment
        #: arrived (a late assignment for those is refused: the action may
        #: run elsewhere now)
        self.finished: Book = collections.OrderedDict()
        self.tombstones: Book = collections.OrderedDict()
        #: the lease on the actions held here, renewed by their shards' leaders
        self.leases = Leases(heartbeat=config.heartbeat_interval)
        self.stopping = False
        self._next_run = 0
        self._out: list[Instruction] = []

    # -- queries -------------------------------------------------------------------

    def free_slots(self, kind: int) -> int:
        granted = sum(s.granted[kind] for s in self._order)
        deferred = sum(1 for _, job in self.deferred.values() if job.kind == kind)
        return self.slots[kind] - self.running_count[kind] - deferred - granted

    def live_stream(self, prefer: str) -> str:
        """*prefer* if its stream is up, else another welcomed one, else *prefer*."""
        if self.streams[prefer].welcomed:
            return prefer
        for s in self._order:
            if s.welcomed and not s.closing:
                return s.address
        return prefer

    def running_actions(self) -> list[tuple[int, int]]:
        """(action id, attempt) of the actions whose mover is running."""
        return sorted((r.action_id, r.attempt) for r in self.runs.values())

    def running_list(self) -> list[tuple[int, int]]:
        """(action id, attempt) of everything running here, whichever stream
        it came from, plus finished actions whose Done is not delivered."""
        held = {(r.action_id, r.attempt) for r in self.runs.values()}
        for s in self._order:
            held.update((d.action_id, d.attempt) for d in s.pending_done)
            held.update(s.unacked)
        held.update((j.action_id, j.attempt) for _s, j in self.deferred.values())
        return sorted(held)

    def runs_of(self, stream: str) -> list[RunState]:
        return [r for r in self.runs.values() if r.stream == stream]

    def running_ids(self) -> str:
        return ", ".join(f"{r.action_id}/{r.attempt}" for r in self.runs.values())

    def has_pending(self, stream: str) -> bool:
        return bool(self.streams[stream].pending_done)

    def next_send(self, stream: str, now: float) -> float:
        """When the stream's writer must look again at the latest
        (heartbeat, lease token, a progress report held back)."""
        s = self.streams[stream]
        deadline = min(s.last_sent + s.heartbeat_interval, self.leases.due(stream, now))
        interval = self.config.progress_interval
        for run in self.runs.values():
            if run.stream == stream and run.progress_dirty:
                deadline = min(deadline, run.progress_sent_at + interval)
        return deadline

    # -- events: streams -------------------------------------------------------------

    def welcomed(self, stream: str, replica: str, heartbeat_interval: float, lease_seconds: float,
                 acks_done: bool, now: float, hello_sent: float | None = None) -> list[Instruction]:
        """The replica on *stream* welcomed us (*hello_sent*: when our Hello
        went out, default *now*). The shell then hands the Welcome's message
        to the message events and calls :meth:`rebalance`."""
        s = self.streams[stream]
        s.welcomed = True
        s.welcomed_at = now
        s.replica = replica
        s.heartbeat_interval = heartbeat_interval if heartbeat_interval > 0 else self.config.heartbeat_interval
        s.acks_done = acks_done
        s.last_sent = now
        self.leases.welcomed(stream, lease_seconds, s.heartbeat_interval, now, hello_sent)
        self._log(
            logging.INFO,
            "connected to coordinator %s (replica %s, heartbeat %.1f s) as agent %s; "
            "%d running, %d completion(s) to deliver",
            stream, replica or "?", s.heartbeat_interval, self.config.agent_id,
            len(self.runs_of(stream)), len(s.pending_done),
        )
        # the slot budget may now be granted here; Done queued while we were away goes out
        self._wake(stream, batch=True)
        return self._take()

    def stream_lost(self, stream: str, now: float) -> list[Instruction]:
        """The stream is gone: its unused credits are void on both sides."""
        s = self.streams[stream]
        was = s.welcomed
        s.welcomed = False
        self.leases.lost(stream)
        if s.in_flight:
            s.pending_done[:0] = s.in_flight
            s.in_flight = []
        if s.unacked:
            # the replica may have died with them: deliver them again
            s.pending_done[:0] = [d for d, _t in s.unacked.values()]
            s.unacked.clear()
        s.granted = _zeros()
        s.pending_credits = _zeros()
        s.backlog = _zeros()
        s.seen = _zeros()
        for run in self.runs_of(stream):
            if run.bytes_done or run.bytes_total:
                run.progress_dirty = True  # resend the latest state after reconnect
        other = self.live_stream(stream)
        if s.pending_done and other != stream:
            self._log(logging.INFO, "stream to %s lost: %d completion(s) go through %s instead", stream,
                      len(s.pending_done), other)
            moved, s.pending_done = s.pending_done, []
            for done in moved:
                self._queue_done(other, done)
        if was:
            self._rebalance(now)
        return self._take()

    def closing(self, stream: str) -> list[Instruction]:
        """The shell is closing *stream* for good (the agent stops)."""
        self.streams[stream].closing = True
        return self._take()

    # -- events: the writer ------------------------------------------------------

    def collect(self, stream: str, now: float) -> agent_pb2.AgentMessage | None:
        """The next message to write on *stream*, or None (nothing to say,
        no heartbeat due). Its completions are in flight until
        :meth:`written` or :meth:`write_failed`."""
        s = self.streams[stream]
        if s.in_flight:  # the last message was never confirmed written: its completions go again
            self.write_failed(stream)
        msg = agent_pb2.AgentMessage()
        dones, s.pending_done = s.pending_done, []
        something = False
        if dones:
            msg.done.extend(dones)
            something = True
        if s.send_absolute:
            s.send_absolute = False
            _fill_slots(msg.ready.credits, s.granted)
            msg.ready.absolute = True
            _fill_slots(msg.ready.seen, s.seen)
            s.pending_credits = _zeros()
            something = True
        elif any(s.pending_credits.values()):
            _fill_slots(msg.ready.credits, s.pending_credits)
            s.pending_credits = _zeros()
            something = True
        token = self.leases.token(stream, now)
        if token:
            msg.lease_token = token
            something = True
        if s.report_running:
            msg.running.token, s.report_running = s.report_running, 0
            for action_id, attempt in self.running_list():
                msg.running.actions.add(action_id=action_id, attempt=attempt)
            something = True
        interval = self.config.progress_interval
        for run in self.runs.values():
            if self.live_stream(run.stream) != stream:
                continue  # progress rides on the run's own stream, or any live one when that is down
            if run.progress_dirty and now - run.progress_sent_at >= interval:
                msg.progress.append(
                    agent_pb2.Progress(
                        action_id=run.action_id,
                        attempt=run.attempt,
                        bytes_done=max(run.bytes_done, 0),
                        bytes_total=max(run.bytes_total, 0),
                    )
                )
                run.progress_dirty = False
                run.progress_sent_at = now
                something = True
        if not something:
            if now - s.last_sent < s.heartbeat_interval:
                return None
            msg.heartbeat = True
        s.in_flight = dones
        return msg

    def written(self, stream: str, now: float) -> None:
        """The message :meth:`collect` gave was written."""
        s = self.streams[stream]
        dones, s.in_flight = s.in_flight, []
        s.last_sent = now
        self.completions_written(stream, dones, now)

    def write_failed(self, stream: str) -> None:
        """The message :meth:`collect` gave was not written: its completions
        go out again, first."""
        s = self.streams[stream]
        s.pending_done[:0] = s.in_flight
        s.in_flight = []

    def completions_written(self, stream: str, dones: Iterable[agent_pb2.Done], now: float) -> None:
        """Completions written: kept until the replica acknowledges them."""
        s = self.streams[stream]
        if s.acks_done:
            for d in dones:
                s.unacked[(d.action_id, d.attempt)] = (d, now)

    # -- events: a coordinator's message ---------------------------------------------

    def assignment(self, stream: str, a: agent_pb2.Assignment, now: float) -> list[Instruction]:
        self._assignment(stream, a, now)
        return self._take()

    def assignment_failed(self, stream: str, a: agent_pb2.Assignment) -> list[Instruction]:
        """The shell could not start *a* (an exception, logged there)."""
        self._queue_done(stream, agent_pb2.Done(
            action_id=a.action_id, attempt=a.attempt, errno=_errno.EIO,
            message="agentd could not start the action (see its log)", retry=True,
        ))
        return self._take()

    def cancel(self, stream: str, c: agent_pb2.CancelOrder, now: float) -> list[Instruction]:
        self._cancel(stream, c, now)
        return self._take()

    def request_running(self, stream: str, token: int) -> list[Instruction]:
        """A replica asks for a RunningReport (sent with the next message)."""
        self.streams[stream].report_running = token
        self._wake(stream)
        return self._take()

    def lease_granted(self, stream: str, token: int, shards: Sequence[int]) -> list[Instruction]:
        self.leases.granted(stream, token, tuple(shards))
        return self._take()

    def applied(self, acks: Iterable[tuple[int, int]]) -> list[Instruction]:
        """The shards' leaders applied these completions (action id, attempt): forget them."""
        for key in acks:
            for s in self._order:
                s.unacked.pop(key, None)
        return self._take()

    def backlog(self, stream: str, per_kind: Sequence[int], now: float) -> list[Instruction]:
        """The work the stream's replica has ready for us, per kind (KINDS order)."""
        s = self.streams[stream]
        s.backlog = dict(zip(KINDS, per_kind, strict=True))
        # work waits there, we hold credits there, yet nothing came for a
        # while: the two counts disagree; send the whole grant again
        if now - s.last_assign >= LEVEL_IDLE and any(s.backlog[k] and s.granted[k] for k in KINDS):
            s.send_absolute = True
            self._wake(stream)
        self._level(now)
        return self._take()

    # -- events: runs ------------------------------------------------------------------

    def progress(self, run: int, bytes_done: int, bytes_total: int) -> list[Instruction]:
        r = self._by_run.get(run)
        if r is None:
            return self._take()  # it ended meanwhile
        r.bytes_done = bytes_done
        r.bytes_total = bytes_total
        if not r.progress_dirty:
            r.progress_dirty = True
            self._wake(r.stream)
        return self._take()

    def job_ended(self, run: int, res: Result, now: float, *, rebalance: bool = True) -> list[Instruction]:
        """The mover of *run* returned *res*. *rebalance*: grant the freed
        slot at once (an inline run leaves that to the message's end)."""
        self._job_ended(run, res, now)
        if rebalance:
            self._rebalance(now)
        return self._take()

    # -- events: time and stopping --------------------------------------------------

    def rebalance(self, now: float) -> list[Instruction]:
        """Grant every free slot to a welcomed stream (after every message)."""
        self._rebalance(now)
        return self._take()

    def level(self, now: float) -> list[Instruction]:
        self._level(now)
        return self._take()

    def resend(self, stream: str, now: float, after: float = RESEND_AFTER) -> list[Instruction]:
        self._resend(stream, now, after)
        return self._take()

    def tick(self, now: float) -> list[Instruction]:
        """Once a second: move credits to where work waits, send again the
        completions not acknowledged in time."""
        self._level(now)
        for s in self._order:
            if s.welcomed and s.unacked:
                self._resend(s.address, now, RESEND_AFTER)
        return self._take()

    def check_leases(self, now: float) -> list[Instruction]:
        """Stop what no leader renewed for the lease's length, before a
        replica may give it to another agent."""
        for action_id, shard, age in self.leases.expired(now):
            deferred = self.deferred.pop(action_id, None)
            if deferred is not None:
                dstream, djob = deferred
                self._log(logging.WARNING, "action %d/%d %s %s: not started: no leader of shard %d renewed this "
                          "agent's lease for %.1f s", djob.action_id, djob.attempt, kind_name(djob.kind), djob.fid,
                          shard, age)
                self._hand_back(dstream, djob, f"agent {self.config.agent_id} lost its lease before it started")
            r = self.runs.get(action_id)
            if r is None:
                if deferred is not None:
                    self.leases.ended(action_id)
                continue
            if r.cancelled:
                continue
            self._log(logging.WARNING, "action %d/%d %s %s: no leader of shard %d renewed this agent's lease "
                      "for %.1f s (lease %.1f s): stopping it, so that it never runs beside the attempt "
                      "another agent may be given", r.action_id, r.attempt, kind_name(r.kind), r.job.fid,
                      shard, age, self.leases.duration)
            r.lease_lost = True
            r.cancelled = True
            self._out.append(CancelJob(r.run))
        return self._take()

    def stop(self, now: float) -> list[Instruction]:
        """The agent stops: grant nothing more, take back the unused credits
        (an absolute Ready of 0) so that no more work comes here and what is
        given back goes to other agents; refuse what still comes."""
        self.stopping = True
        for s in self._order:
            if s.welcomed and any(s.granted.values()):
                self._log(logging.INFO, "taking back the %d unused credit(s) of the stream to %s",
                          sum(s.granted.values()), s.address)
                s.granted = _zeros()
                s.send_absolute = True
                self._wake(s.address)
        return self._take()

    def stop_running(self, now: float) -> list[Instruction]:
        """The drain is over: cancel what still runs, to give it back."""
        for r in self.runs.values():
            if not r.cancelled:
                r.stopped_by_agent = True
                r.cancelled = True
                self._out.append(CancelJob(r.run))
        return self._take()

    # -- internals ----------------------------------------------------------------------

    def _take(self) -> list[Instruction]:
        out, self._out = self._out, []
        return out

    def _log(self, level: int, msg: str, *args: Any) -> None:
        self._out.append(Log(level, msg, args))

    def _wake(self, stream: str, *, batch: bool = False) -> None:
        self._out.append(Wake(stream, batch))

    def _queue_done(self, stream: str, done: agent_pb2.Done) -> None:
        """Queue a completion on *stream*, or on another live one when that
        one is down: any replica takes it and hands it to the shard's
        leader, so a completion never waits for one replica to come back."""
        target = self.live_stream(stream)
        self.streams[target].pending_done.append(done)
        self._wake(target, batch=True)

    def _refuse(self, stream: str, a: agent_pb2.Assignment, err: int, why: str, retry: bool,
                handback: bool = False) -> None:
        self._log(logging.WARNING, "action %d/%d %s %s refused: %s", a.action_id, a.attempt, kind_name(a.kind),
                  _fid_text(a), why)
        self._queue_done(stream, agent_pb2.Done(action_id=a.action_id, attempt=a.attempt, errno=err, message=why,
                                                retry=retry, handback=handback))

    def _remember(self, book: Book, key: tuple[int, int], now: float, value: Any = None) -> None:
        book[key] = (now, value)
        while len(book) > REMEMBERED:
            _, (when, _) = next(iter(book.items()))
            if now - when < REMEMBER_FOR and len(book) <= REMEMBERED_MAX:
                break
            book.popitem(last=False)

    def _assignment(self, stream: str, a: agent_pb2.Assignment, now: float) -> None:
        s = self.streams[stream]
        kind = int(a.kind)
        if kind in s.seen:
            s.seen[kind] += 1
        if kind not in KINDS:
            self._refuse(stream, a, _errno.EINVAL, f"unknown action kind {kind}", False)
            return
        if (a.action_id, a.attempt) in self.tombstones:
            if s.granted[kind] > 0:
                s.granted[kind] -= 1
            else:
                s.send_absolute = True  # beyond the credits: the replica's debt is settled as below
            self._refuse(stream, a, _errno.ECANCELED, "canceled before its assignment arrived", False)
            self._rebalance(now)
            return
        s.last_assign = now
        if s.granted[kind] > 0:
            s.granted[kind] -= 1
        else:
            self._log(logging.WARNING, "action %d/%d %s %s: assignment from %s beyond the credits granted to it",
                      a.action_id, a.attempt, kind_name(kind), _fid_text(a), stream)
            # sent before the replica saw credits taken back: it counts a debt;
            # the whole grant again (with what was seen) settles it either way
            s.send_absolute = True
        cur = self.runs.get(a.action_id)
        if cur is not None:
            if a.attempt == cur.attempt:
                self._log(logging.INFO, "action %d/%d %s %s: already running here; duplicate assignment ignored",
                          a.action_id, a.attempt, kind_name(kind), _fid_text(a))
            elif a.attempt < cur.attempt:
                self._log(logging.INFO, "action %d/%d %s %s: stale assignment ignored (attempt %d is running here)",
                          a.action_id, a.attempt, kind_name(kind), _fid_text(a), cur.attempt)
            elif cur.cancelled:
                self._defer(stream, a, cur, now)
            else:
                self._log(logging.INFO,
                          "action %d/%d %s %s: attempt %d of it is still running here; it continues as attempt %d",
                          a.action_id, a.attempt, kind_name(kind), _fid_text(a), cur.attempt, a.attempt)
                cur.attempt = a.attempt
                cur.stream = stream
                self._out.append(Renumber(cur.run, a.attempt))
                self.leases.assigned(a.action_id, stream, now, _shard_of(a))  # expired: check_leases stops it
                cur.progress_dirty = True
                cur.progress_sent_at = -math.inf
                self._wake(stream)
            return
        if self.stopping:
            # Our credits were taken back (Ready absolute 0) before this
            # arrives at the coordinator's side, so the action it requeues
            # goes to another agent; a handback costs it no attempt.
            self._refuse(stream, a, _errno.ECANCELED, f"agent {self.config.agent_id} is stopping; not started",
                         True, handback=True)
            return
        if self.free_slots(kind) < 1:
            self._refuse_no_slot(stream, a)  # credits moved to another stream while this was on its way
            return
        job = self._job_of(stream, a)
        if job is None:
            return
        if not self.leases.assigned(a.action_id, stream, now, _shard_of(a)):
            self.leases.ended(a.action_id)
            self._refuse_stale(stream, a, now)
            return
        self._start(stream, job, now)

    def _hand_back(self, stream: str, job: JobSpec, why: str) -> None:
        """A queued attempt given back unstarted (no attempt used): the
        agent stops, or its lease on it ended."""
        self._queue_done(stream, agent_pb2.Done(action_id=job.action_id, attempt=job.attempt,
                                                errno=_errno.ECANCELED, message=why, retry=True, handback=True))

    def _refuse_stale(self, stream: str, a: agent_pb2.Assignment, now: float) -> None:
        """An assignment that arrived after the lease it came under ended
        (it waited in the socket of a frozen agent, or a replica took that
        long to send it): by now the action may run on another agent.
        Given back unstarted; its credit is granted again."""
        self._refuse(stream, a, _errno.ECANCELED,
                     f"arrived after this agent's lease ended: {self.leases.unheard(stream, now):.1f} s after "
                     f"its replica last heard from this agent, lease {self.leases.duration:.1f} s; it may run "
                     "elsewhere; not started", True, handback=True)
        self._rebalance(now)

    def _refuse_no_slot(self, stream: str, a: agent_pb2.Assignment) -> None:
        """An assignment beyond the credits with no free slot: given back, no attempt used."""
        self._refuse(stream, a, _errno.EAGAIN, f"no free {kind_name(a.kind).lower()} slot on this agent", True,
                     handback=True)

    def _job_of(self, stream: str, a: agent_pb2.Assignment) -> JobSpec | None:
        """The job of an assignment, or None after refusing it (bad FID, other fs)."""
        fsname = self.config.fsname
        if fsname and a.fsname != fsname:
            self._refuse(stream, a, _errno.ENODEV, f"this agent serves file system {fsname!r}, not {a.fsname!r}",
                         True)
            return None
        try:
            fid = Fid(a.fid.seq, a.fid.oid, a.fid.ver)
        except FidError as exc:
            self._refuse(stream, a, _errno.EINVAL, f"invalid FID: {exc}", False)
            return None
        if a.HasField("extent"):
            offset, length = a.extent.offset, a.extent.length
            if length == 0:
                length = -1
        else:
            offset, length = 0, -1
        return JobSpec(
            action_id=a.action_id,
            attempt=a.attempt,
            kind=int(a.kind),
            fsname=a.fsname,
            fid=fid,
            archive_id=a.archive_id,
            offset=offset,
            length=length,
            data=bytes(a.data),
            flags=a.flags,
            data_version=a.data_version,
            requesters=tuple(Requester(r.initiator, r.cookie, r.gid) for r in a.requesters),
            object_key=a.object_key,
            final=a.copies_left == 0,
            packed=a.packed,
            object_offset=a.object_offset,
            object_length=a.object_length,
            object_checksum=a.object_checksum,
            stripe_above=a.stripe.above,
            stripe_part=a.stripe.part,
            stripe_parts=a.stripe.parts,
            stripe_version=a.stripe.data_version,
            stripe_size=a.stripe.size,
            stripe_seal=a.stripe.seal,
            stripe_part_length=a.stripe.part_length,
            stripe_checksums=tuple(a.stripe.part_checksums),
        )

    def _defer(self, stream: str, a: agent_pb2.Assignment, cur: RunState, now: float) -> None:
        """A newer attempt of an action whose older attempt is being cancelled
        here: start it once the old one has stopped (never two at once)."""
        old = self.deferred.get(a.action_id)
        if old is not None and old[1].attempt >= a.attempt:
            self._log(logging.INFO, "action %d/%d %s %s: stale assignment ignored (attempt %d is queued here)",
                      a.action_id, a.attempt, kind_name(a.kind), _fid_text(a), old[1].attempt)
            return
        if self.stopping:
            self._log(logging.INFO, "action %d/%d %s %s: not started, the agent is stopping", a.action_id, a.attempt,
                      kind_name(a.kind), _fid_text(a))
            return
        # replacing a queued attempt of the same kind takes no new slot; a
        # coordinator that changed the kind (it never should) needs one
        if (old is None or old[1].kind != int(a.kind)) and self.free_slots(int(a.kind)) < 1:
            self._refuse_no_slot(stream, a)
            return
        job = self._job_of(stream, a)
        if job is None:
            return
        if not self.leases.assigned(a.action_id, stream, now, _shard_of(a)):
            self._refuse_stale(stream, a, now)  # the attempt being cancelled keeps its own lease entry
            return
        self.deferred[a.action_id] = (stream, job)
        self._log(logging.INFO, "action %d/%d %s %s: starts once attempt %d, being cancelled here, has stopped",
                  a.action_id, a.attempt, kind_name(job.kind), job.fid, cur.attempt)

    def _start(self, stream: str, job: JobSpec, now: float) -> None:
        self._next_run += 1
        r = RunState(run=self._next_run, job=job, stream=stream, started=now, attempt=job.attempt)
        self.runs[job.action_id] = r
        self._by_run[r.run] = r
        self.running_count[job.kind] += 1
        self.peak[job.kind] = max(self.peak[job.kind], self.running_count[job.kind])
        s = self.streams[stream]
        extent = "whole file" if job.length < 0 and job.offset == 0 else f"extent {job.offset}+{job.length}"
        self._log(logging.INFO, "action %d/%d %s %s started: archive %d, %s, from %s",
                  job.action_id, job.attempt, kind_name(job.kind), job.fid, job.archive_id, extent,
                  s.replica or s.address)
        self._out.append(Start(r.run, stream, job))

    def _job_ended(self, run: int, res: Result, now: float) -> None:
        r = self._by_run.pop(run)
        if self.runs.get(r.action_id) is r:
            del self.runs[r.action_id]
        self.running_count[r.kind] -= 1
        deferred = self.deferred.pop(r.action_id, None)
        if deferred is None:
            self.leases.ended(r.action_id)
        err = int(res.errno)
        if err < 0:
            err = -err
        message = res.message or (os.strerror(err) if err else "")
        retry = bool(res.retry)
        handback = False
        if err and r.lease_lost:
            # stopped (or refused to publish) because the lease ended: not the
            # action's fault; by now it may run elsewhere
            retry = handback = True
            message = (f"agent {self.config.agent_id} lost its lease (no leader confirmed it for "
                       f"{self.leases.duration:.1f} s) and stopped the action")
        elif err == _errno.ECANCELED and r.stopped_by_agent:
            # not the user's cancel: give the action back to be run elsewhere
            retry = handback = True
            message = f"agent {self.config.agent_id} stopped before the action ended"
        bytes_done = res.bytes_done or r.bytes_done
        secs = now - r.started
        if err == 0:
            self._log(logging.INFO, "action %d/%d %s %s succeeded: %d bytes in %.2f s",
                      r.action_id, r.attempt, kind_name(r.kind), r.job.fid, bytes_done, secs)
        else:
            self._log(logging.INFO, "action %d/%d %s %s ended with errno %d (%s)%s: %d bytes in %.2f s",
                      r.action_id, r.attempt, kind_name(r.kind), r.job.fid, err, message,
                      ", retry" if retry else "", bytes_done, secs)
        done = agent_pb2.Done(
            action_id=r.action_id,
            attempt=r.attempt,
            errno=err,
            message=message,
            retry=retry,
            bytes_done=max(bytes_done, 0),
            handback=handback,
            anchored=bool(res.anchored) and err == 0,
        )
        made = res.copy if err == 0 else None
        if made is not None:
            done.copy.CopyFrom(types_pb2.Copy(key=made.key, data_version=made.data_version, size=made.size,
                                              checksum=made.checksum, uid=made.uid, gid=made.gid, mode=made.mode,
                                              path=made.path, container=made.container, slot=made.slot))
        self._remember(self.finished, (r.action_id, r.attempt), now, done)
        self._queue_done(r.stream, done)
        if deferred is not None:
            dstream, djob = deferred
            if self.stopping:
                self._log(logging.INFO, "action %d/%d %s %s: not started, the agent is stopping", djob.action_id,
                          djob.attempt, kind_name(djob.kind), djob.fid)
                self._hand_back(dstream, djob, f"agent {self.config.agent_id} stopped before the action started")
            elif not self.leases.valid(djob.action_id, now):
                # check_leases names it once; it may not have looked yet
                self.leases.ended(djob.action_id)
                self._log(logging.WARNING, "action %d/%d %s %s: not started: this agent's lease on it ended while "
                          "attempt %d stopped", djob.action_id, djob.attempt, kind_name(djob.kind), djob.fid,
                          r.attempt)
                self._hand_back(dstream, djob, f"agent {self.config.agent_id} lost its lease before it started")
            else:
                self._start(dstream, djob, now)

    def _cancel(self, stream: str, c: agent_pb2.CancelOrder, now: float) -> None:
        deferred = self.deferred.get(c.action_id)
        if deferred is not None and (not c.attempt or c.attempt == deferred[1].attempt):
            dstream, djob = self.deferred.pop(c.action_id)
            if c.action_id not in self.runs:
                self.leases.ended(c.action_id)
            self._log(logging.INFO, "action %d/%d %s %s: cancelled before it started%s", djob.action_id,
                      djob.attempt, kind_name(djob.kind), djob.fid, f" ({c.reason})" if c.reason else "")
            self._queue_done(dstream, agent_pb2.Done(
                action_id=djob.action_id, attempt=djob.attempt, errno=_errno.ECANCELED,
                message="cancelled before it started",
            ))
            self._rebalance(now)
            return
        r = self.runs.get(c.action_id)
        if r is None:
            key = (c.action_id, c.attempt)
            if key in self.finished:
                # it ended here: the cancel means the coordinator never got our
                # completion (its replica died with it); say it again, the truth wins
                self._log(logging.INFO, "action %d/%d: cancel after it ended here; its completion is sent again",
                          *key)
                self._queue_done(self.live_stream(stream), self.finished[key][1])
                return
            # Never got it (or not yet: an assignment may still be on its way
            # over another replica's stream). Say so, and refuse it if it comes.
            self._remember(self.tombstones, key, now)
            self._log(logging.INFO, "action %d/%d: cancel for an action not running here: confirmed, and refused "
                      "should its assignment still arrive", *key)
            self._queue_done(self.live_stream(stream), agent_pb2.Done(
                action_id=c.action_id, attempt=c.attempt, errno=_errno.ECANCELED,
                message=f"not running on agent {self.config.agent_id}"))
            return
        if c.attempt and c.attempt != r.attempt:
            self._log(logging.INFO, "action %d/%d %s %s: cancel ignored: attempt %d is the one running here",
                      c.action_id, c.attempt, kind_name(r.kind), r.job.fid, r.attempt)
            return
        self._log(logging.INFO, "action %d/%d %s %s: cancel received%s", r.action_id, r.attempt,
                  kind_name(r.kind), r.job.fid, f" ({c.reason})" if c.reason else "")
        r.cancelled = True
        self._out.append(CancelJob(r.run))

    def _live(self) -> list[StreamState]:
        return [s for s in self._order if s.welcomed and not s.closing]

    def _rebalance(self, now: float) -> None:
        """Grant every free slot to a welcomed stream: first to streams whose
        replica has work waiting for this agent, else to the one holding the
        fewest (ties: the one that most recently sent work)."""
        if self.stopping:
            return
        live = self._live()
        if not live:
            return
        touched: list[StreamState] = []
        for kind in KINDS:
            free = self.free_slots(kind)
            while free > 0:
                s = min(live, key=lambda x: (x.backlog[kind] <= x.granted[kind], x.granted[kind], -x.last_assign))
                s.granted[kind] += 1
                s.pending_credits[kind] += 1
                s.last_credit = now
                if s not in touched:
                    touched.append(s)
                free -= 1
        for s in live:
            if s in touched:
                self._wake(s.address)

    def _level(self, now: float) -> None:
        """Move unused credits to the streams whose replica has work for this
        agent (its ``backlog``): each replica hands out work only from the
        shards it leads, so credits parked on one replica would starve the
        others. Credits beyond a stream's backlog go first; when every
        stream with credits has work, they are split evenly, and a single
        credit goes round every ROTATE_AFTER seconds."""
        if self.stopping:
            return
        live = self._live()
        if len(live) < 2:
            return
        for kind in KINDS:
            for _ in range(sum(s.granted[kind] for s in live)):
                needy = [s for s in live if s.backlog[kind] > s.granted[kind]]
                if not needy:
                    break
                dst = min(needy, key=lambda x: (x.granted[kind], x.last_credit))
                # only from streams idle a moment: a busy one's coordinator may
                # have spent the credit already (its assignment on the way)
                idle = [s for s in live if now - s.last_assign >= LEVEL_IDLE]
                spare = [s for s in idle if s.granted[kind] > s.backlog[kind]]
                rotation = False
                if spare:
                    src = max(spare, key=lambda x: (x.granted[kind] - x.backlog[kind], -x.last_assign))
                else:
                    if not idle:
                        break  # freed slots go to the needy stream (rebalance)
                    src = max(idle, key=lambda x: (x.granted[kind], -x.last_assign))
                    gap = src.granted[kind] - dst.granted[kind]
                    waited = now - max(dst.last_credit, dst.welcomed_at)
                    rotation = gap == 1 and dst.granted[kind] == 0 and waited >= ROTATE_AFTER
                    if gap < 2 and not rotation:
                        break
                src.granted[kind] -= 1
                src.send_absolute = True
                dst.granted[kind] += 1
                dst.pending_credits[kind] += 1
                dst.last_credit = now
                self._wake(src.address)
                self._wake(dst.address)
                if rotation:
                    break  # one rotation per round

    def _resend(self, stream: str, now: float, after: float) -> None:
        """Send again the completions not acknowledged within *after*
        seconds (through any live stream)."""
        s = self.streams[stream]
        old = [k for k, (_d, sent) in s.unacked.items() if now - sent >= after]
        for k in old:
            done, _sent = s.unacked.pop(k)
            self._queue_done(stream, done)
        if old:
            self._log(logging.INFO, "%d completion(s) sent to %s not acknowledged within %g s: sent again",
                      len(old), stream, after)


def _shard_of(a: agent_pb2.Assignment) -> int | None:
    """The shard that holds *a*, when the coordinator says it is not the one its id names (a split moved it)."""
    return a.shard if a.HasField("shard") else None


def _fill_slots(pb: coordinator_pb2.Slots, per_kind: Mapping[int, int]) -> None:
    pb.archive = per_kind[HSMA.ARCHIVE]
    pb.restore = per_kind[HSMA.RESTORE]
    pb.remove = per_kind[HSMA.REMOVE]


def _fid_text(a: agent_pb2.Assignment) -> str:
    try:
        return str(Fid(a.fid.seq, a.fid.oid, a.fid.ver))
    except FidError:
        return "[invalid fid]"
