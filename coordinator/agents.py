"""The coordinator's side of the agent protocol (pure: no I/O, time passed in).

One replica keeps, per connected agent, a session: what the agent said in
its Hello, the credits it granted this replica's stream, the backlog hint
last sent to it, the assignments sent per kind, the running reports asked
for, and when it was last heard. :class:`AgentBook` holds the sessions and
the agents in their grace period, and decides; ``coordinator/node.py``
carries the decisions out (messages on the streams, Raft proposals, timers).

The rules, each a method:

* :meth:`AgentBook.hello`: one live session per agent id; a second Hello
  while the first session is live (heard within the session lease) is
  refused, a stale one is replaced; a Hello ends the agent's grace period.
* :meth:`AgentBook.ready`: credits add up, or an *absolute* grant replaces
  them less the assignments already on their way (sent here, not yet seen
  by the agent): both sides agree again whatever was lost.
* :meth:`AgentBook.lapsed` / :meth:`AgentBook.gone` /
  :meth:`AgentBook.expire`: a session silent for ``lease`` (3 heartbeats)
  ends; an ended session starts the agent's grace period (``agent_grace``);
  an agent not back by then is lost (its actions are requeued).
* :func:`reconcile`: what an agent says it runs against what a shard says
  it holds: matches are kept, a CANCELING one gets its cancel again (run
  or not), strangers are told to stop, the missing ones are reclaimed,
  except those assigned moments before the report was asked for, or since
  (maybe still on their way: ask again later).
* :meth:`AgentBook.leader_ready`: a replica that starts leading a shard
  resends the cancels of CANCELING actions to connected holders, starts
  the grace period of holders not connected here (again, from now, if one
  runs already), and asks every agent what it runs.
* :func:`backlog_hint`: what work this replica has waiting for an agent,
  capped at its slots; sent when it changes, or (``stalled_only``) again to
  an agent that has work waiting here and no credit here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

from coordinator.state import MAX_SHARDS, Kind, State

#: heartbeat intervals without a message after which an agent's session lapses
LEASE_HEARTBEATS = 3
#: an action assigned this long before an agent's running report and missing
#: from it may be an assignment still on its way (from a previous leader):
#: the agent is asked again then, rather than the action stopped at once
IN_FLIGHT_GRACE = 5.0
#: an agent id is 1 to this many characters
MAX_AGENT_ID = 128
#: an agent's lease is never shorter than this many heartbeat intervals
#: (a shorter one would stop transfers whenever two renewals are late)
AGENT_LEASE_MIN_HEARTBEATS = 3


def agent_lease(agent_grace: float, heartbeat: float, leader_fallback: float) -> tuple[float, bool]:
    """The lease an agent gets (``Welcome.lease_seconds``) and whether it is
    safe. An agent cut off at time t was last confirmed at t or before (it
    counts from when it sent its token). A replica may give its actions to
    another agent ``agent_grace`` after it lost the agent or became leader,
    and a leader cut off with the agent may confirm for up to
    ``leader_fallback`` after a new leader was elected: the lease must end
    before ``agent_grace - leader_fallback``. Half of that leaves the other
    half for the mover to stop. Not safe (returned False, the caller warns)
    when that is under the minimum of AGENT_LEASE_MIN_HEARTBEATS heartbeats."""
    safe = (agent_grace - leader_fallback) / 2
    floor = AGENT_LEASE_MIN_HEARTBEATS * heartbeat
    return (safe, True) if safe >= floor else (floor, False)


class InvalidHello(ValueError):
    """A Hello that cannot open a session (bad id)."""


class AgentIdInUse(Exception):
    """Another live session already uses this agent id."""


def zero() -> dict[Kind, int]:
    return {k: 0 for k in Kind}


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (mypyc): coordinator.node.AgentSession
@dataclass(eq=False)
class Session:
    """One agent's stream to this replica (its state; the stream itself is
    the node's)."""

    agent_id: str
    host: str
    archive_ids: tuple[int, ...]
    slots: dict[Kind, int]
    version: str
    peer: str
    connected_since: float
    last_seen: float
    #: credits per kind; below 0 while assignments already on their way
    #: exceed what the agent's last absolute grant left (later grants pay
    #: that off first: counting it as 0 would let this replica send more
    #: than the agent granted)
    credits: dict[Kind, int] = field(default_factory=zero)
    #: RunningReport requests in flight: token -> when asked (this replica's clock)
    resync: dict[int, float] = field(default_factory=dict)
    alive: bool = True
    backlog: dict[Kind, int] = field(default_factory=zero)  # last sent
    sent: dict[Kind, int] = field(default_factory=zero)  # assignments sent, per kind
    reask: bool = False  # a RunningReport request is scheduled
    #: the agent_grace its Welcome's lease was computed for: a lower grace
    #: set since (the policy) applies to this agent once it reconnects
    grace: float = 0.0
    #: the tags it serves (Hello.tags)
    tags: frozenset[str] = frozenset()
    #: its mover copies parts of striped archives and seals them (Hello.stripes)
    stripes: bool = False

    def usable(self) -> dict[Kind, int]:
        """Assignments that may be sent now, per kind."""
        return {k: max(0, n) for k, n in self.credits.items()}


@dataclass(frozen=True)
class ReconcilePlan:
    """What to do about one shard after an agent's running report."""

    #: CANCELING actions the agent runs: their cancel again (action id, attempt, reason)
    cancels: tuple[tuple[int, int, str], ...] = ()
    #: actions the agent runs but does not hold here: told to stop
    strangers: tuple[tuple[int, int], ...] = ()
    #: actions it holds here but does not run: reclaimed (stopped, then requeued)
    lost: tuple[int, ...] = ()
    #: held actions assigned moments before the question: ask again in IN_FLIGHT_GRACE
    recent: int = 0


@dataclass(frozen=True)
class Held:
    """An action a shard says an agent holds."""

    action_id: int
    attempt: int
    state: State
    error: str = ""
    started: float = 0.0


def reconcile(shard: int, running: Sequence[tuple[int, int]], held: Iterable[Held],
              before: float | None = None, in_flight_grace: float = IN_FLIGHT_GRACE) -> ReconcilePlan:
    """Match what an agent runs (*running*: (action id, attempt) from every
    shard) against what shard *shard* says it holds (*held*). With *before*
    (when the report was asked for), an action assigned less than
    *in_flight_grace* before it is counted as maybe still on its way, and
    so is one assigned since (the report may predate it): the agent is
    asked again (were it not, nothing would ever check that one)."""
    announced = dict(running)
    held = list(held)
    holding = {h.action_id: h for h in held}
    cancels, lost = [], []
    recent = 0
    for h in held:
        if h.state == State.CANCELING:
            # being stopped, run or not: its cancel again (one not running
            # answers it at once, and refuses its assignment should it still
            # come). A Reclaim would skip it: it would stay CANCELING
            cancels.append((h.action_id, h.attempt, h.error))
        elif announced.get(h.action_id) == h.attempt:
            pass
        elif before is not None and before - h.started < in_flight_grace:
            recent += 1
        else:
            lost.append(h.action_id)
    strangers = []
    for action_id, attempt in running:
        if action_id % MAX_SHARDS != shard:
            continue
        h2 = holding.get(action_id)
        if h2 is None or h2.attempt != attempt or h2.state not in (State.STARTED, State.CANCELING):
            strangers.append((action_id, attempt))
    return ReconcilePlan(tuple(cancels), tuple(strangers), tuple(lost), recent)


def backlog_hint(session: Session, ready: Mapping[Kind, int], stalled_only: bool = False) -> dict[Kind, int] | None:
    """The backlog message to send to *session* (None: nothing to send).
    *ready*: the actions of each kind waiting on the shards this replica
    leads that the agent may run. Sent when it changed; with
    *stalled_only*, sent again (changed or not) when work waits here and
    the agent holds no credit here for any kind that has work."""
    backlog = {k: min(ready.get(k, 0), session.slots.get(k, 0)) for k in Kind}
    if stalled_only:
        if any(backlog.values()) and not any(session.credits[k] > 0 for k, n in backlog.items() if n):
            return backlog
        return None
    if backlog != session.backlog:
        session.backlog = backlog
        return backlog
    return None


@dataclass(frozen=True)
class LeaderPlan:
    """What a replica that just started leading a shard does."""

    cancels: tuple[tuple[str, int, int], ...]  # (agent, action id, attempt) of CANCELING actions, resent
    grace: tuple[str, ...]  # holders not connected here: their grace period starts
    ask: tuple[Session, ...]  # every live session is asked what it runs


@dataclass
class AgentBook:
    """The sessions of one replica and the agents in their grace period."""

    agent_grace: float
    heartbeat: float
    #: what :meth:`hello` makes (the node's sessions also carry their stream)
    session_type: type[Session] = Session
    sessions: dict[str, Session] = field(default_factory=dict)
    #: agents in their grace period: agent id -> when it ends
    grace: dict[str, float] = field(default_factory=dict)
    #: the highest agent_grace any session here was welcomed with (the
    #: grace of an agent that has no session here)
    grace_high: float = 0.0
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.grace_high = max(self.grace_high, self.agent_grace)

    @property
    def lease(self) -> float:
        """A session lapses after this long without a message (agents send at
        least a heartbeat every ``heartbeat``)."""
        return LEASE_HEARTBEATS * self.heartbeat

    # -- sessions ---------------------------------------------------------------

    def hello(self, agent_id: str, host: str, archive_ids: Sequence[int], slots: Mapping[Kind, int],
              version: str, peer: str, now: float, tags: Sequence[str] = (),
              stripes: bool = False) -> tuple[Session, Session | None]:
        """Open a session. Returns it and the stale session it replaces (its
        stream must end), if any. Raises InvalidHello or AgentIdInUse."""
        if not agent_id or len(agent_id) > MAX_AGENT_ID:
            raise InvalidHello(f"hello: agent_id must be 1-{MAX_AGENT_ID} characters")
        old = self.sessions.get(agent_id)
        if old is not None and old.alive and now - old.last_seen < self.lease:
            raise AgentIdInUse(
                f"agent id {agent_id!r} already has a live session from {old.peer}; "
                "give each agentd its own --agent-id")
        replaced = None
        if old is not None and old.alive:
            old.alive = False
            replaced = old
        self.grace.pop(agent_id, None)
        session = self.session_type(agent_id=agent_id, host=host, archive_ids=tuple(archive_ids), slots=dict(slots),
                          version=version, peer=peer, connected_since=now, last_seen=now, grace=self.agent_grace,
                          tags=frozenset(tags), stripes=stripes)
        self.grace_high = max(self.grace_high, self.agent_grace)
        self.sessions[agent_id] = session
        return session, replaced

    def heard(self, session: Session, now: float) -> None:
        session.last_seen = now

    def ready(self, session: Session, credits: Mapping[Kind, int], absolute: bool = False,
              seen: Mapping[Kind, int] | None = None) -> None:
        """The agent granted credits: *credits* more, or (*absolute*) what it
        holds from now on, of which the assignments sent here but not *seen*
        by the agent yet will use some."""
        if absolute:
            seen = seen or {}
            for kind, n in credits.items():
                session.credits[kind] = n - (session.sent[kind] - seen.get(kind, 0))
        else:
            for kind, n in credits.items():
                session.credits[kind] += n

    def assigned(self, session: Session, kind: Kind) -> None:
        """One assignment of *kind* sent to the agent: it used a credit."""
        session.credits[kind] -= 1
        session.sent[kind] += 1

    def current(self, session: Session) -> Session | None:
        """Where to send what a dispatcher round planned for *session*, once
        committed: *session*, or the agent's session that replaced it
        meanwhile (whose Hello was reconciled before the round committed:
        sent nowhere, the action would stay held by an agent that never
        heard of it); None when the agent is not connected here (its next
        Hello, or its grace period, settles it)."""
        live = self.sessions.get(session.agent_id)
        return live if live is not None and live.alive else None

    def dispatchable(self) -> list[Session]:
        """Live sessions holding a credit."""
        return [s for s in self.sessions.values() if s.alive and any(n > 0 for n in s.credits.values())]

    # -- running reports --------------------------------------------------------

    def ask_running(self, session: Session, now: float) -> int:
        """A RunningReport request for *session*: the token to send (0: the
        session is gone, nothing to send)."""
        session.reask = False
        if not session.alive:
            return 0
        token = next(self._tokens)
        session.resync[token] = now
        return token

    def answered(self, session: Session, token: int) -> float | None:
        """A RunningReport arrived: when it was asked for (None: nobody asked)."""
        return session.resync.pop(token, None)

    def reask_later(self, session: Session) -> bool:
        """Whether to schedule another question in IN_FLIGHT_GRACE (at most one pending)."""
        if session.reask or not session.alive:
            return False
        session.reask = True
        return True

    # -- leases and grace -------------------------------------------------------

    def lapsed(self, now: float) -> list[Session]:
        """Live sessions silent for longer than the lease: their streams end
        (then :meth:`gone` starts their grace period)."""
        return [s for s in self.sessions.values() if s.alive and now - s.last_seen > self.lease]

    def gone(self, session: Session, now: float) -> float | None:
        """The session's stream ended. Returns when the agent's grace period
        ends, or None if a newer session replaced this one."""
        if self.sessions.get(session.agent_id) is not session:
            return None
        session.alive = False
        session.credits = zero()
        return self.start_grace(session.agent_id, now)

    def grace_of(self, agent_id: str) -> float:
        """The grace period *agent_id* gets: the current agent_grace, or
        the one its lease was given for when that was longer (an agent
        keeps the lease of its Welcome until it reconnects)."""
        s = self.sessions.get(agent_id)
        welcomed = s.grace if s is not None else self.grace_high
        return welcomed if welcomed > self.agent_grace else self.agent_grace

    def start_grace(self, agent_id: str, now: float) -> float:
        end = now + self.grace_of(agent_id)
        self.grace[agent_id] = end
        return end

    def expire(self, agent_id: str, now: float) -> bool:
        """The grace timer of *agent_id* fired: True when the agent is lost
        (not back, grace over); its session is forgotten."""
        end = self.grace.get(agent_id)
        if end is None or now < end:
            return False  # back meanwhile, or a newer grace period runs
        del self.grace[agent_id]
        session = self.sessions.get(agent_id)
        if session is not None and session.alive:
            return False
        self.sessions.pop(agent_id, None)
        return True

    def leader_ready(self, held: Mapping[str, Sequence[tuple[int, int, State]]], now: float) -> LeaderPlan:
        """This replica starts leading a shard whose holders are *held*
        (agent -> (action id, attempt, state))."""
        cancels = []
        grace = []
        for agent, actions in held.items():
            session = self.sessions.get(agent)
            if session is not None and session.alive:
                cancels += [(agent, i, att) for i, att, st in actions if st == State.CANCELING]
            elif agent not in self.grace or self.grace[agent] < now + self.grace_of(agent):
                # counted from now even when one runs already (the agent left
                # this replica earlier): until now, the shard's previous
                # leader may have renewed the agent's lease on these actions
                self.start_grace(agent, now)
                grace.append(agent)
        return LeaderPlan(tuple(cancels), tuple(grace), tuple(s for s in self.sessions.values() if s.alive))

    def known(self, agent_id: str) -> bool:
        return agent_id in self.sessions

    def close(self) -> list[Session]:
        """The replica stops: every live session ends."""
        live = [s for s in self.sessions.values() if s.alive]
        for s in live:
            s.alive = False
        self.grace.clear()
        return live
