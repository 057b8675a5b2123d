"""Both machines of the agent protocol together, without processes: the
replicas' side (``coordinator/agents.py`` AgentBook, ``reconcile``,
``backlog_hint``, ``agent_lease``; ``coordinator/scheduler.py`` ``plan``;
``coordinator/state.py`` ShardState) and the agents' side
(``agentd/core.py`` AgentCore, ``agentd/lease.py``), over a simulated
network, with a simulated clock (an event queue; no threads, no sleeps), in
one process. A hypothesis stateful test drives it.

What is simulated
-----------------
* 3 replicas. Each is an AgentBook and the glue ``coordinator/node.py``
  (and the Work servicer of ``coordinator/servicers.py``) puts around it,
  written here as a thin shell (:class:`Replica`) whose methods mirror
  node.py's one by one (``agent_hello``, ``reconcile``, ``_ask_running``,
  ``agent_message``, ``route_reports``/``_apply_reports``/``forward_report``/
  ``_ack``, ``_lease_keeper``, ``agent_gone``/``_grace_timer``/``_expire``,
  ``_on_leader_change``, ``_send_cancel``, ``_dispatcher``/``_dispatch_round``/
  ``_assign``, ``_send_backlogs``, ``_reclaimer``). node.py's coroutines
  are generators here, run by a tiny driver (:class:`Task`): ``yield
  Propose(...)`` is ``await self.propose_all(...)``, ``yield All(...)`` is
  ``asyncio.gather``. A stream's messages are handled one after another,
  each after the previous one's proposals committed, as the servicer's
  reader does. Two differences from node.py, both proposed changes to
  ``_assign`` (see its comments): NODE-1, a round's assignments go to the
  agent's current session (``AgentBook.current``), not to the session the
  round was planned for if that one ended; NODE-2, only what is still held
  by that agent with that attempt is sent.
* 2 shards; each is one ShardState standing for its replicated log
  (:class:`Shard`): a command proposed by the shard's leader is applied
  after the shard's Raft delay (0 to 1.5 s; 0.1 s at most once healed).
  Leadership moves cleanly (a transfer: the pending entries commit, their
  proposers get the results), or with the old leader cut off from the
  other replicas: its pending entries are kept by the new leader (elected
  1.5 s later) or discarded; it goes on believing it leads, granting
  leases and proposing in vain, for ``leader_fallback``, and learns what
  became of its entries when it catches up (at once, or 6 s later: within
  its propose timeout it then gets the results of a kept entry). A
  replica that starts leading gets ``leader_ready`` with what the state
  says each agent holds, as ``_on_leader_change`` does. One replica at a
  time may be down or cut off (a majority remains).
* 2 agents, each an AgentCore with one stream per replica and the glue
  ``agentd/daemon.py`` puts around it (:class:`Agent`: Hello/Welcome,
  ``on_message``, the writer calling ``collect``/``written`` as soon as it
  is woken, the reconnect backoff, the welcome timeout, the lease watch
  every 0.5 s, the leveler every 1 s). Movers are simulated transfers that
  end after some time with success or an errno (EIO: retry, ENOENT), or
  hang (no progress, until cancelled: the progress timeout reclaims them);
  they stop some time after a cancel, report progress, and refuse to
  publish once the lease ended (as ``agentd/movers/base.py`` does).
* The network: one link per (agent, replica) with a delay (both ways), on
  which each connection is a pair of FIFO queues: a gRPC stream over TCP
  neither reorders nor drops inside a live stream, so messages are
  reordered across streams only, and lost only with the stream they were
  on. A link can be cut: its messages stall (and go through after a heal,
  as TCP retransmits), and after the keepalive (15 s) both ends see the
  stream end and what was in flight is lost. Streams also reset (both
  ends at once), end when the replica ends a lapsed session or refuses a
  Hello (agent id in use), and die with a process: restarts of an agent
  (its transfers die with it; a fresh AgentCore reconnects) and of a
  replica (its book starts empty; the shard states survive, as Raft keeps
  them; its leaderships move). An agent may also be frozen (SIGSTOP for 2
  to 150 s): what is sent to it waits in its sockets, its movers, timers
  and writers stand still, and all of it goes on at the thaw. Two rules aim at races: a leader change,
  or a stream reset, while a dispatcher round is proposed and not
  committed yet.
* Time: production defaults and their ratios (heartbeat 5 s, agent_grace
  60 s, Raft leader_fallback 3 s, hence an agent lease of 28.5 s; sessions
  lapse after 15 s; completions resent after 30 s; propose timeout 10 s),
  except the progress timeout: 120 s instead of 600 s.

Not simulated: replica-to-replica links other than Raft's (a forwarded
report reaches the leader at once), Raft followers lagging behind (every
replica reads the one ShardState), proposals that time out while their
entry commits later (and node.py's retry of them), flow control on the
streams, graceful agent stops and drains, drains and control modes, the
client API (Watch, listings), more than one fsname.

Checked after every step: an agent never runs more than its slots, per
kind, and agentd's credit invariant holds; an action never has two live
transfers at once, across agents and within one (live: from the Start
instruction until its mover returned, or its process died: a stricter
count than "until the core stopped it"; one exception, a transfer frozen
with its agent whose lease is over: it stands still, or is being stopped,
and can never publish); ShardState.check_invariants()
after every apply; an attempt's success is applied at most once, and only
for an attempt whose transfer succeeded; terminal states stay terminal.
Every simulated second: an action a shard says an agent holds is known
to that agent (running, waiting, its completion or its assignment on its
way), or given back within ORPHAN_LIMIT while the agent has a live stream
to the shard's leader. "Heal and settle" (a rule, once, and at the end of
every example): heal the network, wait for every process and leader;
while every stream is up, no ready action waits longer than one heartbeat
while an agent that serves it has a free slot; once quiet: every action
ended (SUCCEEDED, FAILED or CANCELED: some agent serves every action
here), nothing runs, every completion was acknowledged, both ends agree
on which streams are up, and each session's credits equal what the
agent's core granted that stream (nothing being on its way then).

The default run (250 examples of 50 steps) takes 15-30 s; a deeper one
(about 0.07 s an example)::

    HSM_SIM_EXAMPLES=2000 pytest tests/test_agent_protocol_sim.py

``HSM_SIM_STEPS`` changes the steps per example. A failure prints the
steps (and the simulation's recent trace); hypothesis's database replays
it on the next run, and ``--hypothesis-seed`` reruns a whole search."""

from __future__ import annotations

import collections
import contextlib
import errno as E
import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agentd.core import KINDS, AgentCore, CancelJob, CoreConfig, Instruction, Log, Renumber, Start
from agentd.daemon import WELCOME_TIMEOUT, backoff_delay
from agentd.movers.base import Result as MoverResult
from coordinator import convert, scheduler
from coordinator.agents import (
    IN_FLIGHT_GRACE,
    AgentBook,
    AgentIdInUse,
    Held,
    Session,
    agent_lease,
    backlog_hint,
    reconcile,
)
from coordinator.state import (
    MAX_SHARDS,
    AgentLost,
    Assigned,
    AssignRound,
    Changed,
    Command,
    Complete,
    Completion,
    Item,
    Kind,
    Progress,
    ProgressReport,
    Reclaim,
    Requester,
    SendCancel,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from coordinator.state import Cancel as CancelCmd
from coordinator.state import Result as ShardResult
from hsm.fid import Fid
from hsm.v1 import agent_pb2, coordinator_pb2
from hsm.wire import fid_to_pb

# -- production defaults and their ratios -------------------------------------

HEARTBEAT = 5.0  # NodeConfig.heartbeat_interval
AGENT_GRACE = 60.0  # NodeConfig.agent_grace
LEADER_FALLBACK = 3.0  # RaftTuning.leader_fallback
LEASE, LEASE_SAFE = agent_lease(AGENT_GRACE, HEARTBEAT, LEADER_FALLBACK)
#: NodeConfig.progress_timeout is 600 s; shorter here so that a hung mover is reclaimed within an example
PROGRESS_TIMEOUT = 120.0
RECLAIM_EVERY = min(max(PROGRESS_TIMEOUT / 4, 0.2), 10.0)  # node._reclaimer
KEEPER_EVERY = HEARTBEAT / 2  # node._lease_keeper
PROPOSE_TIMEOUT = 10.0  # NodeConfig.propose_timeout
FORWARD_DEADLINE = 2 * PROPOSE_TIMEOUT  # node.forward_report
KEEPALIVE = 15.0  # grpc keepalive_time 10 s + keepalive_timeout 5 s, both ends
ELECTION = 1.5  # RaftTuning election_min..election_max
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0  # agentd reconnect_min_delay, reconnect_max_delay
LEASE_WATCH_EVERY = min(0.5, max(0.05, LEASE / 8))  # daemon._lease_watch
LEVEL_EVERY = 1.0  # daemon._leveler
PER_ROUND = 256  # node._dispatch_round
#: an action held by an agent that does not know it is given back within this (not the progress timeout)
ORPHAN_LIMIT = 2 * IN_FLIGHT_GRACE + 2 * HEARTBEAT

REPLICAS = ("r0", "r1", "r2")
AGENTS = ("a0", "a1")
SHARDS = 2
ARCHIVE, RESTORE, REMOVE = (int(k) for k in (Kind.ARCHIVE, Kind.RESTORE, Kind.REMOVE))
#: a0 serves every archive id and every kind; a1 archive id 1, no removes
AGENT_SLOTS = {"a0": {ARCHIVE: 2, RESTORE: 1, REMOVE: 1}, "a1": {ARCHIVE: 1, RESTORE: 1, REMOVE: 0}}
AGENT_ARCHIVES: dict[str, tuple[int, ...]] = {"a0": (), "a1": (1,)}
UP, DOWN = 0, 1  # agent -> replica, replica -> agent
CLOSE = "end of stream"  # the last item a connection's queue delivers

assert LEASE_SAFE and LEASE == 28.5


def slots_from_pb(pb: coordinator_pb2.Slots) -> dict[Kind, int]:
    return {Kind.ARCHIVE: pb.archive, Kind.RESTORE: pb.restore, Kind.REMOVE: pb.remove}


def slots_to_pb(d: Mapping[Any, int]) -> coordinator_pb2.Slots:
    return coordinator_pb2.Slots(archive=d.get(Kind.ARCHIVE, 0), restore=d.get(Kind.RESTORE, 0),
                                 remove=d.get(Kind.REMOVE, 0))


# -- the event loop and the coroutine driver --------------------------------------


@dataclass
class Propose:
    """``await node.propose_all(shard, cmds)``: answered with the results, or None (ShardUnavailable)."""

    replica: Replica
    shard: int
    cmds: list[Command]


@dataclass
class All:
    """``await asyncio.gather(*gens)``: answered with their return values."""

    gens: list[Generator[Any, Any, Any]]


@dataclass
class Sleep:
    seconds: float


Coro = Generator[Any, Any, Any]


class Task:
    """Runs a generator that yields Propose / All / Sleep (node.py's awaits)
    for as long as *alive* says (a stream's reader ends with its stream, a
    replica's tasks with its process)."""

    def __init__(self, sim: Sim, gen: Coro, alive: Callable[[], bool],
                 done: Callable[[Any], None] | None = None) -> None:
        self.sim, self.gen, self.alive, self.done = sim, gen, alive, done

    def step(self, value: Any = None) -> None:
        if not self.alive():
            return
        try:
            req = self.gen.send(value)
        except StopIteration as stop:
            if self.done is not None:
                self.done(stop.value)
            return
        sim = self.sim
        if isinstance(req, Propose):
            sim.shards[req.shard].propose(req.replica, req.cmds, self.step)
        elif isinstance(req, Sleep):
            sim.at(sim.now + req.seconds, self.step)
        elif isinstance(req, All):
            results: list[Any] = [None] * len(req.gens)
            left = [len(req.gens)]
            if not req.gens:
                sim.at(sim.now, lambda: self.step([]))

            def one(i: int) -> Callable[[Any], None]:
                def child_done(value: Any) -> None:
                    results[i] = value
                    left[0] -= 1
                    if not left[0]:
                        sim.at(sim.now, lambda: self.step(results))
                return child_done

            for i, g in enumerate(req.gens):
                Task(sim, g, self.alive, one(i)).step()
        else:  # pragma: no cover
            raise TypeError(req)


class Sim:
    """The clock, the event queue, the network and every process."""

    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.links = {(a, r): Link() for a in AGENTS for r in REPLICAS}
        self.conns: list[Conn] = []
        self._conn_ids = itertools.count(1)
        self.shards = [Shard(self, i) for i in range(SHARDS)]
        self.replicas = {r: Replica(self, r) for r in REPLICAS}
        self.agents = {a: Agent(self, a) for a in AGENTS}
        #: action id -> live transfers (agent, run): at most one, ever
        self.live: dict[int, list[tuple[str, int]]] = {}
        #: (action id, attempt) whose transfer ended with success, and those applied as a success
        self.transfer_successes: set[tuple[int, int]] = set()
        self.applied_successes: set[tuple[int, int]] = set()
        self.ended: dict[int, State] = {}  # terminal states seen
        self.trace: deque[tuple[float, str, tuple[Any, ...]]] = deque(maxlen=400)
        self.seen: collections.Counter[str] = collections.Counter()  # what happened (coverage, in the statistics)
        for shard in self.shards:
            shard.leader = REPLICAS[shard.index % len(REPLICAS)]
        for r in self.replicas.values():
            r.boot()
        for a in self.agents.values():
            a.boot()
        self.orphans: dict[tuple[int, int], float] = {}
        self.every(1.0, self.no_orphans, lambda: True)

    # -- events -----------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._q, (t, next(self._seq), fn))

    def every(self, period: float, fn: Callable[[], None], alive: Callable[[], bool]) -> None:
        def tick() -> None:
            if alive():
                fn()
                self.at(self.now + period, tick)
        self.at(self.now + period, tick)

    def run_until(self, t_end: float, until: Callable[[], bool] | None = None) -> bool:
        """Run the events up to *t_end*, or until *until* says so (True then)."""
        while self._q and self._q[0][0] <= t_end:
            t, _, fn = heapq.heappop(self._q)
            self.now = max(self.now, t)
            fn()
            self.after_event()
            if until is not None and until():
                return True
        self.now = max(self.now, t_end)
        return False

    def round_in_flight(self, shard: int | None = None, agent: str | None = None) -> Shard | None:
        """A shard with a dispatcher round proposed and not applied yet (for *agent*)."""
        for s in self.shards:
            if shard is not None and s.index != shard:
                continue
            for e in s.pending:
                for cmd in e.cmds:
                    if isinstance(cmd, AssignRound) and (agent is None or any(a == agent for a, _ in cmd.assignments)):
                        return s
        return None

    def after_event(self) -> None:
        """What runs as soon as the loop is free: woken dispatchers and the
        agents' stream writers."""
        for r in self.replicas.values():
            if r.up and r.wake and not r.dispatching:
                r.start_dispatcher()
        for a in self.agents.values():
            if a.up:
                a.write_all()

    def log(self, fmt: str, *args: Any) -> None:
        self.trace.append((self.now, fmt, args))

    def story(self) -> str:
        return "\n".join(f"{t:9.3f} {fmt % args}" for t, fmt, args in self.trace)

    # -- the network --------------------------------------------------------------

    def connect(self, agent: Agent, replica: Replica) -> Conn:
        conn = Conn(next(self._conn_ids), agent, replica)
        self.conns.append(conn)
        if len(self.conns) > 64:
            self.conns = [c for c in self.conns if c.agent_open or c.replica_open or any(c.queues)]
        link = self.links[agent.name, replica.name]
        if link.cut:
            self._keepalive(conn, link)
        return conn

    def send(self, conn: Conn, d: int, item: Any) -> None:
        link = self.links[conn.agent.name, conn.replica.name]
        t = max(self.now + link.delay, conn.last[d])
        conn.last[d] = t
        conn.queues[d].append((t, item))
        self.at(t, lambda: self.pump(conn, d))

    def pump(self, conn: Conn, d: int) -> None:
        link = self.links[conn.agent.name, conn.replica.name]
        q = conn.queues[d]
        while q and q[0][0] <= self.now and not link.cut:
            _, item = q.popleft()
            if d == UP:
                conn.replica.receive(conn, item)
            else:
                conn.agent.receive(conn, item)

    def cut(self, agent: str, replica: str) -> None:
        link = self.links[agent, replica]
        if link.cut:
            return
        link.cut = True
        link.epoch += 1
        self.log("link %s-%s cut", agent, replica)
        for conn in self.conns:
            if (conn.agent.name, conn.replica.name) == (agent, replica) and (conn.agent_open or conn.replica_open):
                self._keepalive(conn, link)

    def _keepalive(self, conn: Conn, link: Link) -> None:
        epoch = link.epoch

        def check() -> None:
            if link.cut and link.epoch == epoch:
                self.log("conn %d (%s-%s): keepalive timeout", conn.id, conn.agent.name, conn.replica.name)
                self.kill(conn)
        self.at(self.now + KEEPALIVE, check)

    def heal(self, agent: str, replica: str) -> None:
        link = self.links[agent, replica]
        if not link.cut:
            return
        link.cut = False
        link.epoch += 1
        self.log("link %s-%s healed", agent, replica)
        for conn in self.conns:
            if (conn.agent.name, conn.replica.name) == (agent, replica):
                for d in (UP, DOWN):
                    if conn.queues[d]:
                        self.at(self.now + link.delay, lambda conn=conn, d=d: self.pump(conn, d))  # type: ignore[misc]

    def kill(self, conn: Conn) -> None:
        """Both ends see the stream end; what was in flight is lost."""
        for q in conn.queues:
            q.clear()
        conn.agent.close(conn, notify=False)
        conn.replica.close(conn, notify=False)

    # -- checks -------------------------------------------------------------------------

    def no_orphans(self) -> None:
        """An action that a shard says an agent holds is running there,
        waiting there, or its completion or its assignment is on its way;
        one that is none of these (an orphan) is given back within
        ORPHAN_LIMIT (plus two round trips), counted while the agent has a
        live stream to the shard's leader."""
        now = self.now
        known: dict[str, set[tuple[int, int]]] = {}
        seen = set()
        for s in self.shards:
            leader = self.replicas.get(s.leader or "")
            for agent, ids in s.state.by_agent.items():
                a = self.agents[agent]
                conn = a.conns.get(leader.name) if leader is not None and a.up and not a.frozen else None
                link = self.links[agent, leader.name] if leader is not None else None
                session = leader.book.sessions.get(agent) if leader is not None and leader.up else None
                if (conn is None or link is None or link.cut or s.stale is not None or not conn.welcomed
                        or not conn.agent_open or not conn.replica_open or session is None
                        or getattr(session, "conn", None) is not conn or not session.alive):
                    continue
                if agent not in known:
                    k = known[agent] = set(a.core.running_list())
                    for c in a.conns.values():
                        if c is not None:
                            for _t, m in c.queues[DOWN]:
                                if isinstance(m, agent_pb2.CoordinatorMessage):
                                    k.update((x.action_id, x.attempt) for x in m.assign)
                for i in ids:
                    key = (i, s.state.actions[i].attempt)
                    if key in known[agent]:
                        continue
                    seen.add(key)
                    since = self.orphans.setdefault(key, now)
                    assert now - since <= ORPHAN_LIMIT + 4 * link.delay, (
                        f"action {s.state.actions[i]} held by {agent}, which has not known it since {since:.1f} s "
                        f"(now {now:.1f}) though connected to the leader {leader.name}; it runs "
                        f"{a.core.running_list()}\n{self.story()}")
        for key in list(self.orphans):
            if key not in seen:
                del self.orphans[key]

    def zombie(self, agent: str, run: int, action_id: int) -> bool:
        """A transfer of an agent frozen while it ran, whose lease on the
        action is over: its mover stands still (or, thawed, is being
        stopped) and can never publish (Agent.end checks the lease), so
        another agent may run the action meanwhile."""
        a = self.agents[agent]
        t = a.transfers.get(run)
        return t is not None and t.frozen and not a.core.leases.valid(action_id, self.now)

    def started(self, agent: str, run: int, action_id: int) -> None:
        live = self.live.setdefault(action_id, [])
        others = [o for o in live if not self.zombie(*o, action_id)]
        assert not others, (f"action {action_id} starts on {agent} (run {run}) while it runs on {others} at "
                            f"{self.now:.3f}\n{self.story()}")
        live.append((agent, run))

    def stopped(self, agent: str, run: int, action_id: int) -> None:
        self.live[action_id].remove((agent, run))
        if not self.live[action_id]:
            del self.live[action_id]

    def applied(self, shard: int, cmd: Command, res: ShardResult) -> None:
        if isinstance(cmd, Complete):
            for c, ok in zip(cmd.completions, res.replies, strict=True):
                if ok and c.errno == 0:
                    key = (c.action_id, c.attempt)
                    assert key not in self.applied_successes, f"success of {key} applied twice\n{self.story()}"
                    assert key in self.transfer_successes, f"success of {key} applied, no transfer of it succeeded"
                    self.applied_successes.add(key)
        self.log("shard %d applied %s", shard, cmd)


@dataclass
class Link:
    delay: float = 0.01
    cut: bool = False
    epoch: int = 0


class Conn:
    """One Work stream: the agent's half, the replica's half, a FIFO queue each way."""

    def __init__(self, cid: int, agent: Agent, replica: Replica) -> None:
        self.id = cid
        self.agent = agent
        self.replica = replica
        self.agent_inc = agent.inc
        self.replica_inc = 0  # the replica's process that took its Hello
        self.agent_open = True
        self.replica_open = False
        self.accepted = False
        self.refused = False
        self.welcomed = False  # the agent got its Welcome
        self.hello_sent = 0.0  # when the agent sent its Hello
        self.session: SimSession | None = None
        self.queues: tuple[deque[tuple[float, Any]], deque[tuple[float, Any]]] = (deque(), deque())
        self.last = [0.0, 0.0]
        self.inbox: deque[agent_pb2.AgentMessage] = deque()
        self.reading = False


# -- the shards (their Raft groups) ---------------------------------------------------


@dataclass(eq=False)
class Entry:
    cmds: list[Command]
    proposer: Replica
    inc: int
    done: Callable[[Any], None]
    due: float
    proposed: float


class Shard:
    """One shard: its ShardState (the replicated log, applied once for
    every replica) and who leads it."""

    def __init__(self, sim: Sim, index: int) -> None:
        self.sim = sim
        self.index = index
        self.state = ShardState(ShardConfig(shard=index, archive_ids=frozenset({1, 2}), max_attempts=3,
                                            progress_timeout=PROGRESS_TIMEOUT))
        self.leader: str | None = None
        self.electing = False
        #: an isolated old leader that still believes it leads, until when
        self.stale: tuple[str, float] | None = None
        self.stale_entries: list[tuple[Entry, list[ShardResult] | None]] = []
        self.pending: deque[Entry] = deque()
        self.kept: list[Entry] = []  # entries the next leader commits
        self.prefer = ""  # who wins the next election, if up
        self.late = 0.0  # an isolated old leader catches up this long after stepping down
        self.delay = 0.0

    def is_leader(self, replica: Replica) -> bool:
        """RaftShard.is_leader / leader_ready, as *replica* sees it."""
        if not replica.up:
            return False
        if self.leader == replica.name:
            return True
        return self.stale is not None and self.stale[0] == replica.name and self.sim.now < self.stale[1]

    def propose(self, replica: Replica, cmds: list[Command], done: Callable[[Any], None]) -> None:
        sim = self.sim
        if replica.up and self.leader == replica.name:
            due = max(sim.now + self.delay, self.pending[-1].due if self.pending else 0.0)
            e = Entry(cmds, replica, replica.inc, done, due, sim.now)
            self.pending.append(e)
            sim.at(due, lambda: self.commit(e))
        elif self.is_leader(replica):
            # an isolated leader: its entry never commits; it learns so when it steps down
            self.stale_entries.append((Entry(cmds, replica, replica.inc, done, sim.now, sim.now), None))
        else:
            sim.at(sim.now, lambda: done(None))  # NotLeader

    def commit(self, e: Entry) -> None:
        if not self.pending or self.pending[0] is not e:
            return  # discarded, or committed at a leader change
        self.pending.popleft()
        self.answer(e, self.apply(e.cmds))

    def answer(self, e: Entry, results: list[ShardResult] | None) -> None:
        if results is not None and not (e.proposer.up and e.proposer.inc == e.inc):
            results = None  # the proposer died: a forwarded report's RPC fails
        e.done(results)

    def apply(self, cmds: Sequence[Command]) -> list[ShardResult]:
        sim = self.sim
        out = []
        for cmd in cmds:
            res = self.state.apply(cmd)
            self.state.check_invariants()
            sim.applied(self.index, cmd, res)
            out.append(res)
        # node._on_applied, on every replica: watchers and dispatchers wake;
        # the leader sends the cancels
        leader = sim.replicas.get(self.leader or "")
        for res in out:
            for eff in res.effects:
                if isinstance(eff, Changed):
                    for r in sim.replicas.values():
                        r.wake = True
                elif isinstance(eff, SendCancel) and leader is not None and leader.up:
                    leader.send_cancel(eff.agent, eff.action_id, eff.attempt, "canceled")
        return out

    # -- leadership -------------------------------------------------------------------

    def transfer(self, to: str) -> None:
        """A clean leadership transfer: the pending entries commit first."""
        while self.pending:
            e = self.pending.popleft()
            self.answer(e, self.apply(e.cmds))
        self.sim.log("shard %d: leadership %s -> %s", self.index, self.leader, to)
        self.leader = to
        self.sim.replicas[to].on_leader_change(self.index)

    def lose(self, keep: bool, isolated: bool, prefer: str = "", late: float = 0.0) -> None:
        """The leader is isolated (it believes it leads for LEADER_FALLBACK
        more) or dead; a new one is elected after ELECTION. Its pending
        entries are kept by the next leader, or discarded."""
        sim = self.sim
        old = sim.replicas[self.leader] if self.leader else None
        entries = list(self.pending)
        self.pending.clear()
        self.sim.log("shard %d: leader %s lost (isolated %s, keep %s)", self.index, self.leader, isolated, keep)
        self.leader = None
        if keep:
            self.kept += entries
        if old is not None and isolated and old.up:
            end = sim.now + LEADER_FALLBACK
            self.stale = (old.name, end)
            for e in entries:
                self.stale_entries.append((e, None if not keep else []))  # the results come at the election
            sim.at(end, self.step_down)
        else:
            for e in entries:
                if not keep:
                    sim.at(sim.now, lambda e=e: e.done(None))  # type: ignore[misc]
        self.electing = True
        self.prefer = prefer
        self.late = late
        sim.at(sim.now + ELECTION, self.elect)

    def elect(self) -> None:
        sim = self.sim
        self.electing = False
        ups = [r for r in REPLICAS if sim.replicas[r].up and (self.stale is None or self.stale[0] != r)]
        if not ups:  # pragma: no cover - the machine keeps a majority up
            ups = [r for r in REPLICAS if sim.replicas[r].up]
        to = self.prefer if self.prefer in ups else ups[(self.index + len(sim._q)) % len(ups)]
        kept, self.kept = self.kept, []
        stale_kept = {id(e) for e, res in self.stale_entries if res is not None}
        for e in kept:
            results = self.apply(e.cmds)
            if id(e) in stale_kept:
                self.stale_entries = [(x, results if x is e else r) for x, r in self.stale_entries]
            else:
                sim.at(sim.now, lambda e=e, results=results: self.answer(e, results))  # type: ignore[misc]
        self.leader = to
        sim.log("shard %d: %s elected", self.index, to)
        sim.replicas[to].on_leader_change(self.index)

    def step_down(self) -> None:
        """The isolated old leader steps down; it catches up *late* seconds
        later and learns then what became of its entries (a kept one is
        applied there with its own origin: its proposer gets the results,
        unless its propose timeout ran out first)."""
        if self.stale is None or self.sim.now < self.stale[1]:
            return
        self.sim.log("shard %d: %s stepped down", self.index, self.stale[0])
        self.stale = None
        entries, self.stale_entries = self.stale_entries, []

        def catch_up() -> None:
            for e, results in entries:
                timed_out = self.sim.now - e.proposed > PROPOSE_TIMEOUT
                self.answer(e, None if timed_out else results or None)
        self.sim.at(self.sim.now + self.late, catch_up)


# -- a replica: an AgentBook and node.py's glue ------------------------------------------


@dataclass(eq=False)
class SimSession(Session):
    """node.AgentSession: a session and its stream."""

    conn: Conn | None = None

    def send(self, msg: agent_pb2.CoordinatorMessage) -> None:
        if self.alive and self.conn is not None and self.conn.replica_open:
            self.conn.replica.sim.send(self.conn, DOWN, msg)

    def end(self) -> None:
        """End the Work stream (the servicer then calls agent_gone)."""
        assert self.conn is not None
        self.conn.replica.close(self.conn, notify=True)


class Replica:
    def __init__(self, sim: Sim, name: str) -> None:
        self.sim = sim
        self.name = name
        self.up = True
        self.inc = 0

    def boot(self) -> None:
        """A new process: an empty book, no timers (the shard states survive in Raft)."""
        self.inc += 1
        self.up = True
        self.book = AgentBook(AGENT_GRACE, HEARTBEAT, session_type=SimSession)
        self._grace: dict[str, object] = {}
        self.wake = False
        self.dispatching = False
        self.turn = itertools.count()
        inc = self.inc
        alive = lambda: self.up and self.inc == inc  # noqa: E731
        self.sim.every(KEEPER_EVERY, self.lease_keeper, alive)
        self.sim.every(RECLAIM_EVERY, lambda: self.spawn(self.reclaimer()), alive)

    def alive(self) -> Callable[[], bool]:
        inc = self.inc
        return lambda: self.up and self.inc == inc

    def spawn(self, gen: Coro, alive: Callable[[], bool] | None = None) -> None:
        Task(self.sim, gen, alive or self.alive()).step()

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        alive = self.alive()
        self.sim.at(self.sim.now + delay, lambda: fn() if alive() else None)

    def crash(self) -> None:
        self.sim.log("replica %s crashes", self.name)
        self.up = False
        for conn in self.sim.conns:
            if conn.replica is self and conn.replica_open:
                conn.replica_open = False
                conn.queues[UP].clear()
                self.sim.send(conn, DOWN, CLOSE)

    def leads(self, shard: int) -> bool:
        return self.sim.shards[shard].is_leader(self)

    def state(self, shard: int) -> ShardState:
        return self.sim.shards[shard].state

    # -- the Work stream (servicers.AgentServicer.Work) ------------------------------

    def receive(self, conn: Conn, item: Any) -> None:
        if not self.up or (conn.accepted and conn.replica_inc != self.inc):
            if item is not CLOSE and not conn.refused and conn.agent_open:
                conn.refused = True  # no such stream here (connection refused, or reset)
                self.sim.send(conn, DOWN, CLOSE)
            return
        if item is CLOSE:
            self.close(conn, notify=False)
            return
        if not conn.accepted:
            conn.accepted = True
            conn.replica_inc = self.inc
            conn.replica_open = True
        if not conn.replica_open:
            return
        conn.inbox.append(item)
        if not conn.reading:
            inc = self.inc
            self.spawn(self.work(conn), lambda: self.up and self.inc == inc and conn.replica_open)

    def close(self, conn: Conn, notify: bool) -> None:
        """This end of the stream is over (the servicer's ``finally: agent_gone``)."""
        if not conn.replica_open or conn.replica_inc != self.inc or not self.up:
            return
        conn.replica_open = False
        conn.inbox.clear()
        if notify:
            self.sim.send(conn, DOWN, CLOSE)
        if conn.session is not None:
            self.agent_gone(conn.session)

    def work(self, conn: Conn) -> Coro:
        conn.reading = True
        while conn.inbox:
            msg = conn.inbox.popleft()
            if conn.session is None:
                if not self.agent_hello(conn, msg.hello):
                    return
                session = conn.session
                assert session is not None
                session.send(agent_pb2.CoordinatorMessage(welcome=agent_pb2.Welcome(
                    replica=self.name, heartbeat_interval=HEARTBEAT, cluster_id="sim", lease_seconds=LEASE,
                    acks_done=True)))
                yield from self.reconcile(session, [(r.action_id, r.attempt) for r in msg.hello.running])
                msg.ClearField("hello")
            assert conn.session is not None
            yield from self.agent_message(conn.session, msg)
        conn.reading = False

    # -- node.py -----------------------------------------------------------------

    def agent_hello(self, conn: Conn, hello: agent_pb2.Hello) -> bool:
        try:
            new, old = self.book.hello(hello.agent_id, hello.host, tuple(hello.archive_ids),
                                       slots_from_pb(hello.slots), hello.version, f"conn{conn.id}", self.sim.now)
        except AgentIdInUse:
            self.sim.log("%s: hello of %s refused (id in use)", self.name, hello.agent_id)
            self.sim.seen["replica: hello refused, id in use"] += 1
            conn.replica_open = False
            self.sim.send(conn, DOWN, CLOSE)
            return False
        session = new
        assert isinstance(session, SimSession)
        session.conn = conn
        conn.session = session
        if old is not None:
            assert isinstance(old, SimSession)
            old.end()
        self._grace.pop(hello.agent_id, None)
        self.wake = True
        self.sim.log("%s: %s connected (conn %d, running %s)", self.name, hello.agent_id, conn.id,
                     [(r.action_id, r.attempt) for r in hello.running])
        return True

    def reconcile(self, session: SimSession, running: list[tuple[int, int]], before: float | None = None) -> Coro:
        for i in range(SHARDS):
            if not self.leads(i):
                continue
            st = self.state(i)
            held = [Held(a.id, a.attempt, a.state, a.error, a.started) for a in st.held_by(session.agent_id)]
            plan = reconcile(i, running, held, before)
            for action_id, attempt, error in plan.cancels:
                self.send_cancel(session.agent_id, action_id, attempt, error)
            lost = list(plan.lost)
            if plan.recent and self.book.reask_later(session):
                self.later(IN_FLIGHT_GRACE, lambda: self.ask_running(session))
            self.sim.seen["replica: reconcile, recent"] += bool(plan.recent)
            self.sim.seen["replica: reconcile, cancels again"] += bool(plan.cancels)
            self.sim.seen["replica: reconcile, strangers"] += bool(plan.strangers)
            for action_id, attempt in plan.strangers:
                session.send(agent_pb2.CoordinatorMessage(cancel=[agent_pb2.CancelOrder(
                    action_id=action_id, attempt=attempt, reason="not assigned to this agent")]))
            if lost:
                self.sim.log("%s: shard %d: %s lost %s (running %s)", self.name, i, session.agent_id, lost, running)
                self.sim.seen["replica: reconcile reclaims"] += 1
                yield Propose(self, i, [Reclaim(self.sim.now, tuple(lost), force=True,
                                                reason=f"agent {session.agent_id} does not run it")])

    def ask_running(self, session: SimSession) -> None:
        token = self.book.ask_running(session, self.sim.now)
        if token:
            session.send(agent_pb2.CoordinatorMessage(request_running=token))

    def agent_message(self, session: SimSession, msg: agent_pb2.AgentMessage) -> Coro:
        self.book.heard(session, self.sim.now)
        if msg.lease_token:
            self.sim.seen["replica: lease granted by an isolated leader"] += any(
                s.stale is not None and s.stale[0] == self.name and self.leads(s.index) for s in self.sim.shards)
            session.send(agent_pb2.CoordinatorMessage(lease=agent_pb2.LeaseGrant(
                token=msg.lease_token, shards=[i for i in range(SHARDS) if self.leads(i)])))
        if msg.HasField("ready"):
            self.book.ready(session, slots_from_pb(msg.ready.credits), msg.ready.absolute,
                            slots_from_pb(msg.ready.seen))
            self.wake = True
        if msg.progress or msg.done:
            yield from self.route_reports(session.agent_id, list(msg.progress), list(msg.done), session)
        if msg.HasField("running"):
            asked = self.book.answered(session, msg.running.token)
            if asked is not None:
                yield from self.reconcile(session, [(r.action_id, r.attempt) for r in msg.running.actions],
                                          before=asked)

    def apply_reports(self, agent_id: str, shard: int, progress: Sequence[agent_pb2.Progress],
                      done: Sequence[agent_pb2.Done]) -> Coro:
        cmds: list[Command] = []
        now = self.sim.now
        if progress:
            cmds.append(Progress(now, tuple(
                ProgressReport(p.action_id, p.attempt, p.bytes_done, p.bytes_total) for p in progress)))
        if done:
            cmds.append(Complete(now, tuple(
                Completion(d.action_id, d.attempt, d.errno, d.message[:1024], d.retry, d.bytes_done, d.handback)
                for d in done)))
        if not cmds:
            return True
        return (yield Propose(self, shard, cmds)) is not None

    def route_reports(self, agent_id: str, progress: Sequence[agent_pb2.Progress], done: Sequence[agent_pb2.Done],
                      session: SimSession | None) -> Coro:
        per_shard: dict[int, tuple[list[agent_pb2.Progress], list[agent_pb2.Done]]] = {}
        for p in progress:
            if p.action_id % MAX_SHARDS < SHARDS:
                per_shard.setdefault(p.action_id % MAX_SHARDS, ([], []))[0].append(p)
        for d in done:
            if d.action_id % MAX_SHARDS < SHARDS:
                per_shard.setdefault(d.action_id % MAX_SHARDS, ([], []))[1].append(d)

        def one(i: int, ps: list[agent_pb2.Progress], ds: list[agent_pb2.Done]) -> Coro:
            if self.leads(i):
                if (yield from self.apply_reports(agent_id, i, ps, ds)):
                    self.ack(session, ds)
                    return
            self.spawn(self.forward_report(agent_id, i, ps, ds, session))

        yield All([one(i, ps, ds) for i, (ps, ds) in per_shard.items()])

    def forward_report(self, agent_id: str, shard: int, progress: Sequence[agent_pb2.Progress],
                       done: Sequence[agent_pb2.Done], session: SimSession | None) -> Coro:
        end = self.sim.now + FORWARD_DEADLINE
        delay = 0.1
        while True:
            if self.leads(shard):
                if (yield from self.apply_reports(agent_id, shard, progress, done)):
                    self.ack(session, done)
                    return
            leader = self.sim.shards[shard].leader
            self.sim.seen["replica: report forwarded"] += 1
            if leader and leader != self.name and self.sim.replicas[leader].up:
                # the leader's AgentService.Report: require_leader, then _apply_reports
                remote = self.sim.replicas[leader]
                if remote.leads(shard) and (yield from remote.apply_reports(agent_id, shard, progress, done)):
                    self.ack(session, done)
                    return
            if self.sim.now > end:
                return
            yield Sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def ack(session: SimSession | None, done: Sequence[agent_pb2.Done]) -> None:
        if session is not None and done:
            session.send(agent_pb2.CoordinatorMessage(applied=[
                agent_pb2.RunningAction(action_id=d.action_id, attempt=d.attempt) for d in done]))

    def lease_keeper(self) -> None:
        self.send_backlogs(stalled_only=True)
        for session in self.book.lapsed(self.sim.now):
            assert isinstance(session, SimSession)
            self.sim.log("%s: session of %s lapsed", self.name, session.agent_id)
            self.sim.seen["replica: session lapsed"] += 1
            session.end()

    def agent_gone(self, session: SimSession) -> None:
        if self.book.gone(session, self.sim.now) is None:
            return
        self.sim.log("%s: %s gone", self.name, session.agent_id)
        self.grace_timer(session.agent_id)

    def grace_timer(self, agent_id: str) -> None:
        end = self.book.grace[agent_id]
        token = object()
        self._grace[agent_id] = token

        def fire() -> None:
            if self._grace.get(agent_id) is token:
                del self._grace[agent_id]
                self.spawn(self.expire(agent_id, end))
        self.later(max(0.0, end - self.sim.now), fire)

    def expire(self, agent_id: str, end: float) -> Coro:
        if not self.book.expire(agent_id, end):
            return
        self.sim.log("%s: %s lost (grace over)", self.name, agent_id)
        self.sim.seen["replica: agent lost"] += 1
        for i in range(SHARDS):
            if not self.leads(i):
                continue
            if self.state(i).by_agent.get(agent_id):
                yield Propose(self, i, [AgentLost(self.sim.now, agent_id, "agent lost")])

    def on_leader_change(self, shard: int) -> None:
        if not self.up:
            return
        st = self.state(shard)
        held = {agent: [(a.id, a.attempt, a.state) for a in st.held_by(agent)] for agent in list(st.by_agent)}
        plan = self.book.leader_ready(held, self.sim.now)
        for agent, action_id, attempt in plan.cancels:
            self.send_cancel(agent, action_id, attempt, "canceled")
        for agent in plan.grace:
            self.grace_timer(agent)
        for session in plan.ask:
            assert isinstance(session, SimSession)
            self.ask_running(session)
        self.wake = True

    def send_cancel(self, agent: str, action_id: int, attempt: int, reason: str) -> None:
        session = self.book.sessions.get(agent)
        if session is None or not session.alive:
            return
        assert isinstance(session, SimSession)
        session.send(agent_pb2.CoordinatorMessage(
            cancel=[agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason=reason)]))

    # -- the dispatcher ----------------------------------------------------------

    def start_dispatcher(self) -> None:
        self.dispatching = True
        inc = self.inc

        def finished(_: Any) -> None:
            if self.inc == inc:
                self.dispatching = False
        Task(self.sim, self.dispatcher(), self.alive(), finished).step()

    def dispatcher(self) -> Coro:
        while self.wake:
            self.wake = False
            while (yield from self.dispatch_round(next(self.turn))):
                pass
            self.send_backlogs()

    def dispatch_round(self, turn: int) -> Coro:
        sessions, planned = scheduler.plan_round(
            turn, [s for s in self.book.dispatchable() if isinstance(s, SimSession)],
            [i for i in range(SHARDS) if self.leads(i)], lambda i: contextlib.nullcontext(self.state(i)), PER_ROUND)
        if not planned:
            return False
        rounds = [(i, AssignRound(self.sim.now, assignments)) for i, assignments in planned]
        by_agent = {s.agent_id: s for s in sessions}
        sent = yield All([self.assign(i, cmd, by_agent) for i, cmd in rounds])
        return any(sent)

    def assign(self, shard: int, cmd: AssignRound, sessions: dict[str, SimSession]) -> Coro:
        results = yield Propose(self, shard, [cmd])
        if results is None:
            return False
        per_agent: dict[str, tuple[SimSession, list[agent_pb2.Assignment]]] = {}
        st = self.state(shard)
        for eff in results[0].effects:
            if isinstance(eff, Assigned):
                action = st.get(eff.action_id)
                assert action is not None
                # NODE-2: node._assign sends the action as it is now (its
                # current attempt) to eff.agent, even when it was given to
                # another agent (or attempt) since the round committed
                if (action.state != State.STARTED or action.agent != eff.agent
                        or action.attempt != eff.attempt):
                    self.sim.seen["replica: stale round result not sent"] += 1
                    continue
                # NODE-1: node._assign sends on sessions[eff.agent], the session
                # the round was planned for, even if it ended meanwhile
                target = self.book.current(sessions[eff.agent])
                if target is None:
                    continue
                assert isinstance(target, SimSession)
                self.sim.seen["replica: assignments for a session that replaced another"] += target is not sessions[
                    eff.agent]
                self.book.assigned(target, action.kind)
                per_agent.setdefault(eff.agent, (target, []))[1].append(convert.assignment_to_pb(action))
        for agent, (target, assignments) in per_agent.items():
            self.sim.log("%s: assigns %s to %s", self.name, [(a.action_id, a.attempt) for a in assignments], agent)
            target.send(agent_pb2.CoordinatorMessage(assign=assignments))
        return bool(per_agent)

    def send_backlogs(self, stalled_only: bool = False) -> None:
        led = [i for i in range(SHARDS) if self.leads(i)]
        for session in self.book.sessions.values():
            if not session.alive:
                continue
            ready = {k: 0 for k in Kind}
            for i in led:
                scheduler.count_ready(self.state(i), session.agent_id, session.archive_ids, ready)
            hint = backlog_hint(session, ready, stalled_only)
            if hint is not None:
                assert isinstance(session, SimSession)
                session.send(agent_pb2.CoordinatorMessage(backlog=slots_to_pb(hint)))

    def reclaimer(self) -> Coro:
        for i in range(SHARDS):
            if not self.leads(i):
                continue
            stale = self.state(i).stale(self.sim.now)
            if stale:
                self.sim.seen["replica: progress timeout"] += 1
                yield Propose(self, i, [Reclaim(self.sim.now, tuple(stale))])


# -- an agent: an AgentCore and daemon.py's glue ----------------------------------------

#: the core's log lines that tell a path was taken (counted, and in the trace)
CORE_EVENTS = (
    ("renewed this agent's lease", "agent: lease ended, stopped"), ("refused:", "agent: assignment refused"),
    ("beyond the credits", "agent: assignment beyond credits"), ("duplicate assignment", "agent: duplicate"),
    ("stale assignment", "agent: stale assignment"), ("it continues as attempt", "agent: renumbered"),
    ("starts once attempt", "agent: deferred"), ("cancelled before it started", "agent: deferred cancelled"),
    ("cancel after it ended", "agent: cancel after end"), ("cancel for an action not running", "agent: tombstone"),
    ("cancel ignored", "agent: cancel ignored"), ("cancel received", "agent: cancel"),
    ("not acknowledged within", "agent: completions resent"), ("go through", "agent: completions rerouted"),
    ("lease ended while attempt", "agent: deferred, lease over"),
)
#: matched in the formatted text (the reason is an argument)
CORE_TEXT_EVENTS = (("arrived after this agent's lease ended", "agent: late assignment given back"),)


@dataclass
class Transfer:
    run: int
    action_id: int
    attempt: int
    kind: int
    started: float
    end_at: float
    errno: int
    cancelled: bool = False
    token: int = 0
    frozen: bool = False  # its agent was frozen (SIGSTOP) while it ran


@dataclass
class Mode:
    """How this agent's movers behave (for transfers starting from now)."""

    duration: float = 3.0
    errno: int = 0  # 0, EIO (transient: retry), ENOENT (fails the action), HANG
    stop_delay: float = 0.2  # a cancelled mover returns this long after the cancel


class Agent:
    def __init__(self, sim: Sim, name: str) -> None:
        self.sim = sim
        self.name = name
        self.inc = 0
        self.up = False
        self.mode = Mode()
        self.transfers: dict[int, Transfer] = {}
        self.conns: dict[str, Conn | None] = {}
        self.frozen_until = -1.0
        self.held: list[Callable[[], None]] = []  # what waits for the thaw, in arrival order

    def boot(self) -> None:
        """A new agentd process: a fresh core; a stream to every replica."""
        self.inc += 1
        self.up = True
        self.core = AgentCore(CoreConfig(agent_id=self.name, slots=AGENT_SLOTS[self.name], fsname="fs1",
                                         heartbeat_interval=HEARTBEAT, progress_interval=2.0), REPLICAS)
        self.transfers = {}
        self.conns = {r: None for r in REPLICAS}
        self.failures = {r: 0 for r in REPLICAS}
        self._tokens = itertools.count(1)
        self.frozen_until = -1.0
        self.held = []
        alive = self.alive()
        self.sim.every(LEASE_WATCH_EVERY, lambda: None if self.frozen else self.do(self.core.check_leases(self.sim.now)),
                       alive)
        self.sim.every(LEVEL_EVERY, lambda: None if self.frozen else self.leveler(), alive)
        for r in REPLICAS:
            self.connect(r)

    def alive(self) -> Callable[[], bool]:
        inc = self.inc
        return lambda: self.up and self.inc == inc

    # -- SIGSTOP / SIGCONT: the whole process (its movers too) stands still -----------

    @property
    def frozen(self) -> bool:
        return self.up and self.sim.now < self.frozen_until

    def freeze(self, secs: float) -> None:
        """Nothing of this agent runs for *secs*: what arrives waits in its
        sockets, its movers stand still, its timers fire late. Its
        transfers count as frozen: another agent may start their actions
        once their lease is over (see Sim.started)."""
        self.sim.log("agent %s frozen for %.1f s (running %s)", self.name, secs, self.core.running_actions())
        self.sim.seen["agent frozen"] += 1
        self.frozen_until = self.sim.now + secs
        for t in self.transfers.values():
            t.frozen = True
        alive = self.alive()
        self.sim.at(self.frozen_until, lambda: self.thaw() if alive() else None)

    def thaw(self) -> None:
        if self.sim.now < self.frozen_until:
            return
        self.sim.log("agent %s thawed: %d event(s) waited", self.name, len(self.held))
        held, self.held = self.held, []
        for fn in held:
            fn()

    def unless_frozen(self, fn: Callable[[], None]) -> bool:
        """Run later (at the thaw) when frozen: True then."""
        if self.frozen:
            self.held.append(fn)
            return True
        return False

    def crash(self) -> None:
        self.sim.log("agent %s crashes (running %s)", self.name, self.core.running_actions())
        self.up = False
        for t in self.transfers.values():
            self.sim.stopped(self.name, t.run, t.action_id)
        self.transfers = {}
        for conn in self.conns.values():
            if conn is not None and conn.agent_open:
                conn.agent_open = False
                conn.queues[DOWN].clear()
                self.sim.send(conn, UP, CLOSE)

    # -- carrying out the core's instructions (daemon.Agent._do) --------------------

    def do(self, instructions: Iterable[Instruction]) -> None:
        for ins in instructions:
            if isinstance(ins, Start):
                self.start(ins)
            elif isinstance(ins, CancelJob):
                t = self.transfers.get(ins.run)
                if t is not None and not t.cancelled:
                    t.cancelled = True
                    self.schedule_end(t, min(t.end_at, self.sim.now + self.mode.stop_delay))
            elif isinstance(ins, Renumber):
                t = self.transfers.get(ins.run)
                if t is not None:
                    t.attempt = ins.attempt
            elif isinstance(ins, Log):
                for pattern, label in CORE_EVENTS:
                    if pattern in ins.msg:
                        self.sim.seen[label] += 1
                        self.sim.log("%s: %s", self.name, ins.text)
                if "refused" in ins.msg:
                    for pattern, label in CORE_TEXT_EVENTS:
                        if pattern in ins.text:
                            self.sim.seen[label] += 1

    def start(self, ins: Start) -> None:
        job = ins.job
        self.sim.started(self.name, ins.run, job.action_id)
        self.sim.log("%s: starts %d/%d (run %d, from %s)", self.name, job.action_id, job.attempt, ins.run, ins.stream)
        seq = job.action_id // MAX_SHARDS
        duration = self.mode.duration * (1.0 + (seq % 3) / 2) if self.mode.errno != HANG else 1e9
        t = Transfer(ins.run, job.action_id, job.attempt, job.kind, self.sim.now, self.sim.now + duration,
                     self.mode.errno)
        self.transfers[ins.run] = t
        self.schedule_end(t, t.end_at)

    def schedule_end(self, t: Transfer, when: float) -> None:
        t.token += 1
        token, alive = t.token, self.alive()
        self.sim.at(when, lambda: self.end(t, token) if alive() else None)

    def end(self, t: Transfer, token: int) -> None:
        if self.unless_frozen(lambda: self.end(t, token)):
            return
        if self.transfers.get(t.run) is not t or t.token != token:
            return
        del self.transfers[t.run]
        self.sim.stopped(self.name, t.run, t.action_id)
        now = self.sim.now
        if t.cancelled and now < t.end_at:
            res = MoverResult(errno=E.ECANCELED, message="cancelled")
        elif not self.core.leases.valid(t.action_id, now):
            res = MoverResult(errno=E.ECANCELED, message="the agent's lease ended", retry=True)
        elif t.errno:
            res = MoverResult(errno=t.errno, message=os.strerror(t.errno), retry=t.errno == E.EIO)
        else:
            res = MoverResult(bytes_done=1000)
            self.sim.transfer_successes.add((t.action_id, t.attempt))
        self.sim.log("%s: %d/%d ends with errno %d", self.name, t.action_id, t.attempt, res.errno)
        self.do(self.core.job_ended(t.run, res, now))

    def leveler(self) -> None:
        now = self.sim.now
        self.do(self.core.tick(now))
        for t in list(self.transfers.values()):
            if not t.cancelled and t.errno != HANG:
                done = int(1000 * min(1.0, (now - t.started) / max(t.end_at - t.started, 1e-9)))
                self.do(self.core.progress(t.run, done, 1000))

    # -- streams (daemon._Session) ----------------------------------------------

    def connect(self, r: str) -> None:
        if not self.up or self.unless_frozen(lambda: self.connect(r)):
            return
        sim = self.sim
        conn = sim.connect(self, sim.replicas[r])
        self.conns[r] = conn
        hello = agent_pb2.Hello(agent_id=self.name, host=self.name, archive_ids=list(AGENT_ARCHIVES[self.name]),
                                slots=slots_to_pb({Kind(k): n for k, n in AGENT_SLOTS[self.name].items()}),
                                version="sim", cluster_id="sim")
        for action_id, attempt in self.core.running_list():
            hello.running.add(action_id=action_id, attempt=attempt)
        sim.send(conn, UP, agent_pb2.AgentMessage(hello=hello))
        conn.hello_sent = sim.now
        alive = self.alive()

        def welcome_timeout() -> None:
            if alive() and self.unless_frozen(welcome_timeout):
                return
            if alive() and conn.agent_open and not conn.welcomed:
                self.close(conn, notify=True)
        sim.at(sim.now + WELCOME_TIMEOUT, welcome_timeout)

    def close(self, conn: Conn, notify: bool) -> None:
        """This end of the stream is over (daemon: ``finally: self._lost()``, then reconnect)."""
        if not conn.agent_open or conn.agent_inc != self.inc or not self.up:
            return
        conn.agent_open = False
        if notify:
            self.sim.send(conn, UP, CLOSE)
        r = conn.replica.name
        if self.conns.get(r) is not conn:
            return
        self.sim.log("%s: stream %d to %s lost", self.name, conn.id, r)
        self.do(self.core.stream_lost(r, self.sim.now))
        if conn.welcomed:
            self.failures[r] = 0
        delay = backoff_delay(self.failures[r], RECONNECT_MIN, RECONNECT_MAX, lambda: 0.5)
        self.failures[r] += 1
        alive = self.alive()
        self.sim.at(self.sim.now + delay, lambda: self.connect(r) if alive() and self.conns[r] is conn else None)

    def receive(self, conn: Conn, item: Any) -> None:
        if not self.up or conn.agent_inc != self.inc or not conn.agent_open:
            return
        if self.unless_frozen(lambda: self.receive(conn, item)):
            return
        if item is CLOSE:
            self.close(conn, notify=False)
            return
        msg: agent_pb2.CoordinatorMessage = item
        r = conn.replica.name
        if not conn.welcomed:
            if not msg.HasField("welcome"):
                self.on_message(r, msg)  # tolerated before the Welcome: cancels for what the Hello announced
                return
            w = msg.welcome
            conn.welcomed = True
            self.do(self.core.welcomed(r, w.replica, w.heartbeat_interval, w.lease_seconds, w.acks_done,
                                       self.sim.now, conn.hello_sent))
        self.on_message(r, msg)
        self.do(self.core.rebalance(self.sim.now))

    def on_message(self, r: str, msg: agent_pb2.CoordinatorMessage) -> None:
        core, now, do = self.core, self.sim.now, self.do
        for a in msg.assign:
            do(core.assignment(r, a, now))
        for c in msg.cancel:
            do(core.cancel(r, c, now))
        if msg.request_running:
            do(core.request_running(r, msg.request_running))
        if msg.HasField("lease"):
            do(core.lease_granted(r, msg.lease.token, msg.lease.shards))
        if msg.applied:
            do(core.applied([(ack.action_id, ack.attempt) for ack in msg.applied]))
        if msg.HasField("backlog"):
            b = msg.backlog
            do(core.backlog(r, (b.archive, b.restore, b.remove), now))

    def write_all(self) -> None:
        """The streams' writers (daemon._write_loop), woken at once."""
        if self.frozen:
            return
        for r, conn in self.conns.items():
            if conn is None or not conn.welcomed or not conn.agent_open:
                continue
            msg = self.core.collect(r, self.sim.now)
            if msg is not None:
                self.sim.send(conn, UP, msg)
                self.core.written(r, self.sim.now)

    def free_slot(self, kind: int) -> bool:
        core = self.core
        deferred = sum(1 for _s, j in core.deferred.values() if j.kind == kind)
        return core.slots[kind] - core.running_count[kind] - deferred > 0


# -- the machine ------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("HSM_SIM_EXAMPLES", "250"))
STEPS = int(os.environ.get("HSM_SIM_STEPS", "50"))
SETTLE_CAP = 450.0  # seconds a healed cluster gets to finish everything


#: how long a transfer takes (times 1, 1.5 or 2)
DURATIONS = st.sampled_from([0.5, 3.0, 12.0, 45.0])
#: a mover that hangs: no progress, no end until it is cancelled
HANG = -1
#: how long the network and the processes go on after a rule
PAUSE = st.sampled_from([0.0, 0.05, 0.5, 2.0, 6.0, 20.0])


class ProtocolSim(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = Sim()
        self.clean = True
        self.settled = False

    # -- rules ------------------------------------------------------------------------

    @initialize(n=st.integers(1, 8), kinds=st.lists(st.sampled_from(list(Kind)), min_size=1, max_size=3),
                durations=st.tuples(DURATIONS, DURATIONS))
    def work(self, n: int, kinds: list[Kind], durations: tuple[float, float]) -> None:
        """Work on every shard to begin with, and how long the movers take."""
        for a, d in zip(AGENTS, durations, strict=True):
            self.sim.agents[a].mode = Mode(d)
        for shard in range(SHARDS):
            for j in range(n):
                self.submit(shard, kinds[j % len(kinds)], (1, 1, 2)[j % 3], 1 + j % 5, 1, 0.0)

    def majority(self) -> bool:
        """Whether one more replica may go (down, or cut off from the
        others) and leave a majority: every replica up, none isolated."""
        sim = self.sim
        return all(r.up for r in sim.replicas.values()) and all(s.stale is None for s in sim.shards)

    def pause(self, then: float) -> None:
        """Every rule lets some time pass after it (*then* seconds)."""
        self.clean = False
        if then:
            self.sim.run_until(self.sim.now + then)

    @rule(shard=st.integers(0, SHARDS - 1), kind=st.sampled_from(list(Kind)), archive_id=st.sampled_from([1, 1, 2]),
          fid=st.integers(1, 4), n=st.integers(1, 3), then=PAUSE)
    def submit(self, shard: int, kind: Kind, archive_id: int, fid: int, n: int, then: float = 0.0) -> None:
        sim = self.sim
        leader = sim.shards[shard].leader
        if leader is not None and sim.replicas[leader].up:  # else the client tries again later
            items = tuple(Item(fsname="fs1", fid=Fid(0x200000400 + shard, fid + j, 0), kind=kind,
                               archive_id=archive_id, requester=Requester("cli")) for j in range(n))
            r = sim.replicas[leader]
            r.spawn(self._propose(r, shard, Submit(sim.now, items)))
        self.pause(then)

    @staticmethod
    def _propose(r: Replica, shard: int, cmd: Command) -> Coro:
        yield Propose(r, shard, [cmd])

    @rule(shard=st.integers(0, SHARDS - 1), pick=st.integers(0, 30), then=PAUSE)
    def user_cancel(self, shard: int, pick: int, then: float) -> None:
        sim = self.sim
        live = sorted(i for i, a in sim.shards[shard].state.actions.items() if not a.state.terminal)
        leader = sim.shards[shard].leader
        if live and leader is not None and sim.replicas[leader].up:
            r = sim.replicas[leader]
            r.spawn(self._propose(r, shard, CancelCmd(sim.now, (live[pick % len(live)],), reason="user")))
        self.pause(then)

    @rule(then=st.sampled_from([1.0, 16.0, 40.0, 90.0]))
    def advance(self, then: float) -> None:
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), which=st.sets(st.sampled_from(REPLICAS), min_size=1), then=PAUSE)
    def partition(self, agent: str, which: set[str], then: float) -> None:
        for r in sorted(which):
            self.sim.cut(agent, r)
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), which=st.sets(st.sampled_from(REPLICAS), min_size=1), then=PAUSE)
    def heal(self, agent: str, which: set[str], then: float) -> None:
        for r in sorted(which):
            self.sim.heal(agent, r)
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), replica=st.sampled_from(REPLICAS),
          delay=st.sampled_from([0.001, 0.05, 0.4, 2.5, 6.0]), then=PAUSE)
    def link_delay(self, agent: str, replica: str, delay: float, then: float) -> None:
        self.sim.links[agent, replica].delay = delay
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), replica=st.sampled_from(REPLICAS), then=PAUSE)
    def reset_stream(self, agent: str, replica: str, then: float) -> None:
        """A reset: both ends see the stream end now; what was in flight is lost."""
        conn = self.sim.agents[agent].conns.get(replica)
        if conn is not None:
            self.sim.log("conn %d (%s-%s): reset", conn.id, agent, replica)
            self.sim.kill(conn)
        self.pause(then)

    @rule(shard=st.integers(0, SHARDS - 1), to=st.sampled_from(REPLICAS), isolated=st.booleans(), keep=st.booleans(),
          late=st.sampled_from([0.0, 6.0]), then=PAUSE)
    def move_leader(self, shard: int, to: str, isolated: bool, keep: bool, late: float, then: float) -> None:
        s = self.sim.shards[shard]
        if s.leader is not None and s.leader != to and self.sim.replicas[to].up and s.stale is None:
            if isolated and self.majority():
                s.lose(keep=keep, isolated=True, prefer=to, late=late)
            else:
                s.transfer(to)
        self.pause(then)

    @rule(shard=st.integers(0, SHARDS - 1), to=st.sampled_from(REPLICAS), isolated=st.booleans(), keep=st.booleans(),
          late=st.sampled_from([0.0, 6.0]), then=PAUSE)
    def move_leader_mid_round(self, shard: int, to: str, isolated: bool, keep: bool, late: float,
                              then: float) -> None:
        """The same, once a dispatcher round of the shard is proposed, not committed yet."""
        self.clean = False
        sim = self.sim
        if sim.run_until(sim.now + 20.0, lambda: bool(sim.round_in_flight(shard))):
            self.move_leader(shard, to, isolated, keep, late, then)
        else:
            self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), then=PAUSE)
    def reset_stream_mid_round(self, agent: str, then: float) -> None:
        """A reset of *agent*'s stream to a leader that proposed a round for it, not committed yet."""
        self.clean = False
        sim = self.sim
        if sim.run_until(sim.now + 20.0, lambda: bool(sim.round_in_flight(agent=agent))):
            s = sim.round_in_flight(agent=agent)
            assert s is not None and s.leader is not None
            self.reset_stream(agent, s.leader, then)
        else:
            self.pause(then)

    @rule(shard=st.integers(0, SHARDS - 1), delay=st.sampled_from([0.0, 0.01, 0.2, 1.5]), then=PAUSE)
    def raft_delay(self, shard: int, delay: float, then: float) -> None:
        self.sim.shards[shard].delay = delay
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), secs=st.sampled_from([2.0, 20.0, 70.0, 150.0]), then=PAUSE)
    def freeze_agent(self, agent: str, secs: float, then: float) -> None:
        """SIGSTOP, SIGCONT *secs* later: past the lease (28.5 s), past the
        grace (60 s) after which its work goes to the other agent, while
        what was sent to it waits in its sockets."""
        a = self.sim.agents[agent]
        if a.up and not a.frozen:
            a.freeze(secs)
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), down=st.sampled_from([0.5, 4.0, 30.0]), then=PAUSE)
    def restart_agent(self, agent: str, down: float, then: float) -> None:
        a = self.sim.agents[agent]
        if a.up:
            a.crash()
            self.sim.at(self.sim.now + down, a.boot)
        self.pause(then)

    @precondition(lambda self: self.majority())
    @rule(replica=st.sampled_from(REPLICAS), down=st.sampled_from([1.0, 8.0, 40.0]), keep=st.booleans(),
          then=PAUSE)
    def restart_replica(self, replica: str, down: float, keep: bool, then: float) -> None:
        sim = self.sim
        r = sim.replicas[replica]
        r.crash()
        for s in sim.shards:
            if s.leader == replica:
                s.lose(keep=keep, isolated=False)
        sim.at(sim.now + down, r.boot)
        self.pause(then)

    @rule(agent=st.sampled_from(AGENTS), duration=DURATIONS, errno=st.sampled_from([0, 0, 0, E.EIO, E.ENOENT, HANG]),
          stop_delay=st.sampled_from([0.01, 0.5, 3.0]), then=PAUSE)
    def mover(self, agent: str, duration: float, errno: int, stop_delay: float, then: float) -> None:
        self.sim.agents[agent].mode = Mode(duration, errno, stop_delay)
        self.pause(then)

    @rule(shard=st.integers(0, SHARDS - 1), agent=st.sampled_from(AGENTS), keep=st.booleans(),
          then=st.sampled_from([2.0, 20.0, 40.0]))
    def isolate(self, shard: int, agent: str, keep: bool, then: float) -> None:
        """The shard's leader is cut off from the other replicas together
        with *agent* (which loses its streams to them): the leader goes on
        believing it leads for a while, and renews the agent's lease."""
        sim = self.sim
        s = sim.shards[shard]
        if s.leader is not None and s.stale is None and self.majority():
            for r in REPLICAS:
                if r != s.leader:
                    sim.cut(agent, r)
            s.lose(keep=keep, isolated=True)
        self.pause(then)

    @precondition(lambda self: not self.settled)
    @rule()
    def heal_and_settle(self) -> None:
        self.clean = False
        self.settled = True
        self.settle()

    # -- after every step -----------------------------------------------------------------

    @invariant()
    def checks(self) -> None:
        sim = self.sim
        for a in sim.agents.values():
            if not a.up:
                continue
            core = a.core
            for k in KINDS:
                n = sum(1 for t in a.transfers.values() if t.kind == k)
                assert n == core.running_count[k] <= core.slots[k], f"{a.name}: {n} transfers of kind {k}"
                deferred = sum(1 for _s, j in core.deferred.values() if j.kind == k)
                held = sum(s.granted[k] for s in core.streams.values())
                assert core.running_count[k] + deferred + held <= core.slots[k], f"{a.name}: kind {k} over-granted"
            assert sorted((t.action_id, t.attempt) for t in a.transfers.values()) == core.running_actions()
        live = [(t.action_id, a.name) for a in sim.agents.values() if a.up for t in a.transfers.values()
                if not sim.zombie(a.name, t.run, t.action_id)]
        assert len({i for i, _ in live}) == len(live), f"an action runs twice: {sorted(live)}\n{sim.story()}"
        for s in sim.shards:
            for i, action in s.state.actions.items():
                was = sim.ended.get(i)
                if was is not None:
                    assert action.state == was, f"action {i} left its terminal state {was.name}"
                elif action.state.terminal:
                    sim.ended[i] = action.state
        self.clean = True

    def teardown(self) -> None:
        if self.clean:  # not after a failure: its report comes first
            self.settle()
        for label, n in sorted(self.sim.seen.items()):
            if n:
                event(label)

    # -- heal and settle -------------------------------------------------------------------

    def settle(self) -> None:
        sim = self.sim
        for a in AGENTS:
            agent = sim.agents[a]
            if agent.frozen:
                agent.frozen_until = sim.now
                agent.thaw()
            for r in REPLICAS:
                sim.heal(a, r)
                sim.links[a, r].delay = 0.01
            mode = sim.agents[a].mode  # movers that end in time (their errors stay)
            sim.agents[a].mode = Mode(min(mode.duration, 3.0), max(mode.errno, 0), min(mode.stop_delay, 0.5))
        for s in sim.shards:
            s.delay = min(s.delay, 0.1)  # commits as measured here (~100 ms)
        start = sim.now
        waiting: dict[int, float] = {}
        stable_since: list[float | None] = [None]

        def every_second() -> None:
            if self.stable():
                if stable_since[0] is None:
                    stable_since[0] = sim.now
                if sim.now - stable_since[0] >= HEARTBEAT:
                    self.no_idle_slot_while_work_waits(waiting)
            else:
                stable_since[0] = None
                waiting.clear()

        while sim.now - start < SETTLE_CAP:
            sim.run_until(sim.now + 1.0)
            every_second()
            if sim.now - start > 30 and self.quiescent():
                break
        # a moment when nothing is on its way
        for _ in range(200):
            if not any(q for c in sim.conns for q in c.queues) and not any(s.pending for s in sim.shards):
                break
            sim.run_until(sim.now + 0.003)
        self.converged(start)

    def stable(self) -> bool:
        """Every process up, every shard led, every stream up at both ends."""
        sim = self.sim
        if not all(r.up for r in sim.replicas.values()) or not all(a.up and not a.frozen for a in sim.agents.values()):
            return False
        if any(s.leader is None or s.stale is not None for s in sim.shards):
            return False
        for a in sim.agents.values():
            for r in REPLICAS:
                conn = a.conns[r]
                if conn is None or not conn.welcomed or not conn.agent_open or not conn.replica_open:
                    return False
                session = sim.replicas[r].book.sessions.get(a.name)
                if session is None or not session.alive or getattr(session, "conn", None) is not conn:
                    return False
        return True

    def no_idle_slot_while_work_waits(self, waiting: dict[int, float]) -> None:
        """No ready action waits longer than a heartbeat while an agent that
        serves it has a free slot of its kind."""
        sim = self.sim
        now = sim.now
        seen = set()
        for s in sim.shards:
            st_ = s.state
            if st_.control != "enabled":
                continue
            for key, queue in st_.ready.items():
                kind, archive_id = key[0], key[1]
                free = [a.name for a in sim.agents.values() if a.name not in st_.drained
                        and scheduler.serves(AGENT_ARCHIVES[a.name], archive_id) and a.free_slot(int(kind))]
                if not free:
                    continue
                for action_id in queue:
                    seen.add(action_id)
                    since = waiting.setdefault(action_id, now)
                    assert now - since <= HEARTBEAT + 1.0, (
                        f"action {action_id} ({kind.name}, archive {archive_id}) waits since {since:.1f} s while "
                        f"{free} have a free slot for it (now {now:.1f})\n{sim.story()}")
        for action_id in list(waiting):
            if action_id not in seen:
                del waiting[action_id]

    def quiescent(self) -> bool:
        sim = self.sim
        if not self.stable():
            return False
        for s in sim.shards:
            if any(not a.state.terminal for a in s.state.actions.values()) or s.pending:
                return False
        for a in sim.agents.values():
            if a.transfers or a.core.deferred:
                return False
            if any(st_.pending_done or st_.unacked or st_.in_flight for st_ in a.core.streams.values()):
                return False
        return True

    def converged(self, start: float) -> None:
        sim = self.sim
        story = sim.story
        assert self.stable(), f"not every stream is up {sim.now - start:.0f} s after the heal\n{story()}"
        for s in sim.shards:
            st_ = s.state
            left = [a for a in st_.actions.values() if not a.state.terminal]
            assert not left, (f"shard {s.index}: {left} not ended {sim.now - start:.0f} s after the heal "
                              f"(every action is served here)\n{story()}")
            assert not st_.by_agent
        for a in sim.agents.values():
            core = a.core
            assert not a.transfers and not core.runs and not core.deferred, f"{a.name} still runs {core.runs}"
            for r, stream in core.streams.items():
                assert not stream.pending_done and not stream.unacked and not stream.in_flight, (
                    f"{a.name}: completions never acknowledged on {r}: {stream.pending_done} {stream.unacked}")
                session = sim.replicas[r].book.sessions[a.name]
                book_credits = {int(k): n for k, n in session.credits.items()}
                assert book_credits == stream.granted, (
                    f"{a.name} granted {stream.granted} to {r}, whose book says {book_credits}\n{story()}")


TestProtocolSim = ProtocolSim.TestCase
#: a deep run takes longer than the suite's timeout (a failing one also shrinks for minutes)
TestProtocolSim.pytestmark = [pytest.mark.timeout(max(300, 3 * EXAMPLES))]
TestProtocolSim.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                    phases=[p for p in Phase if p != Phase.explain],  # too slow here
                                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- regressions found by the simulation ------------------------------------------------------


def test_a_canceling_action_its_agent_does_not_run_gets_its_cancel_again() -> None:
    """Found by the simulation: a user cancels an action while its agent
    restarts; the cancel is lost with the old stream. The agent comes back
    running nothing: reconcile counted the CANCELING action as lost, but a
    Reclaim only takes STARTED ones, so it stayed CANCELING for good (until
    a leader change). Now its cancel is sent again; the agent answers that
    it does not run it, and the action ends CANCELED."""
    plan = reconcile(0, [], [Held(1000, 1, State.CANCELING, "user", 0.0)])
    assert plan.cancels == ((1000, 1, "user"),) and plan.lost == ()
    m = ProtocolSim()
    m.submit(0, Kind.ARCHIVE, 1, 1, 1, 0.0)
    m.partition("a0", {"r0"}, 0.15)  # a1 gets the action
    m.restart_agent("a1", 0.5, 0.0)
    m.user_cancel(0, 0, 0.0)
    m.settle()
    assert m.sim.shards[0].state.actions[1000].state == State.CANCELED


def test_a_new_leader_counts_the_grace_period_from_its_leadership() -> None:
    """Found by the simulation: a0's stream to r2 broke at 15 s (r2 started
    a0's grace period then, to end at 75 s) while a0 kept working for shard
    1's leader r1, which renewed its lease. At 61 s, r1 is cut off with a0
    and r2 becomes shard 1's leader: its leader_ready kept the grace period
    already running, so at 75 s r2 gave a0's action to a1 while a0's lease
    (renewed by r1 until 64 s) still ran: two runs at once. A new leader
    counts the grace period from its leadership."""
    b = AgentBook(AGENT_GRACE, HEARTBEAT)
    s, _ = b.hello("a0", "h", (), {k: 1 for k in Kind}, "v", "p", 0.0)
    assert b.gone(s, 15.0) == 75.0
    plan = b.leader_ready({"a0": [(1001, 1, State.STARTED)]}, 62.5)
    assert plan.grace == ("a0",) and b.grace["a0"] == 62.5 + AGENT_GRACE
    m = ProtocolSim()
    m.work(1, [Kind.ARCHIVE], (45.0, 0.5))
    m.partition("a1", {"r0", "r1"}, 0.05)
    m.isolate(0, "a0", False, 2.0)  # r0 and a0 cut off: a0's stream to r2 ends at 15 s
    m.advance(37.0)
    m.heal("a0", {"r1"}, 22.0)  # at 39 s: r1, shard 1's leader, gives a0 1001
    m.isolate(1, "a0", False, 40.0)  # at 61 s; the double run came at 75 s
    m.checks()
    m.settle()


def test_a_round_committed_after_its_session_ended_goes_to_the_agents_new_session() -> None:
    """Found by the simulation: a dispatcher round planned for a1's
    session commits (a slow commit, 1.5 s) after that stream was reset and
    a1 reconnected (its Hello, reconciled before the commit, could not
    name the action). node.py's ``_assign`` sends on the planned session,
    which ended: the assignment went nowhere, and the action stayed STARTED
    on an agent that never heard of it, connected to the leader all along,
    until the progress timeout (600 s). ``AgentBook.current`` names the
    session to send it on (node.py's ``_assign`` should ask it too)."""
    b = AgentBook(AGENT_GRACE, HEARTBEAT)
    s1, _ = b.hello("a1", "h", (), {k: 1 for k in Kind}, "v", "p", 0.0)
    assert b.current(s1) is s1
    b.gone(s1, 1.0)
    assert b.current(s1) is None, "not connected: its next Hello or its grace period settles it"
    s2, _ = b.hello("a1", "h", (), {k: 1 for k in Kind}, "v", "p", 1.2)
    assert b.current(s1) is s2
    m = ProtocolSim()
    m.work(1, [Kind.ARCHIVE], (0.5, 0.5))
    m.settle()
    m.raft_delay(0, 1.5, 0.0)
    m.submit(0, Kind.ARCHIVE, 1, 1, 1, 2.0)  # planned at 32.5 s, committed at 34 s
    m.reset_stream("a1", "r0", 0.0)  # at 33 s; a1 is back at 33.2 s
    m.advance(40.0)
    m.settle()


def test_an_assignment_refused_by_a_tombstone_beyond_the_credits_settles_the_replicas_debt() -> None:
    """Found by the simulation: r0 assigned a0 two actions over a cut link,
    then a new leader reclaimed them (a0 confirmed it did not run them and
    kept tombstones). When the link healed, the two assignments arrived,
    the second beyond what a0 had granted r0 meanwhile; the tombstone
    refused both, but unlike any other assignment beyond the credits, sent
    no absolute grant: r0's book counted one credit less than a0 had
    granted, for good (each quiet moment after that disagreed)."""
    core = AgentCore(CoreConfig(agent_id="a0", slots={ARCHIVE: 1, RESTORE: 0, REMOVE: 0}), ["r0"])
    core.welcomed("r0", "r0", HEARTBEAT, 0.0, True, 0.0)
    core.rebalance(0.0)
    core.collect("r0", 0.0)
    core.written("r0", 0.0)

    def assignment(action_id: int) -> agent_pb2.Assignment:
        return agent_pb2.Assignment(action_id=action_id, attempt=1, fsname="fs1", kind=ARCHIVE, archive_id=1,
                                    fid=fid_to_pb(Fid(0x200000400, action_id, 0)))

    core.cancel("r0", agent_pb2.CancelOrder(action_id=2000, attempt=1), 1.0)  # a tombstone
    core.collect("r0", 1.0)
    core.written("r0", 1.0)
    core.assignment("r0", assignment(1000), 2.0)  # uses the only credit
    core.assignment("r0", assignment(2000), 2.0)  # beyond the credits, refused by the tombstone
    msg = core.collect("r0", 2.0)
    assert msg is not None and msg.ready.absolute and msg.ready.seen.archive == 2
    m = ProtocolSim()
    m.work(1, [Kind.RESTORE], (0.5, 0.5))
    m.settle()
    m.move_leader(0, "r1", False, False, 0.0, 0.0)
    m.isolate(0, "a0", False, 3.0)  # r1 cut off with a0; r0 leads shard 0
    m.submit(0, Kind.ARCHIVE, 1, 1, 2, 5.0)  # r0 assigns both to a0 over the cut link
    m.move_leader(0, "r1", False, False, 0.0, 1.0)  # r1 reclaims them, a0 keeps tombstones
    m.heal("a0", {"r0"}, 0.0)  # the two assignments arrive
    m.settle()


def test_a_leader_that_learns_late_that_its_round_committed_sends_only_what_is_still_so() -> None:
    """Found with the simulation: r0 proposes a round giving 3000 to a0 and
    4000 to a1, and is cut off from the other replicas; r1 is elected, the
    round commits, r1 finds the two actions not running and reclaims them,
    and gives both to a0 (attempt 2). r0 catches up 9 s after proposing
    (within its propose timeout) and gets its round's results: node.py's
    ``_assign`` reads each action as it is *now* and sends "4000 attempt 2"
    to a1, the agent of the old effect. a1 refuses it (no free slot, a
    handback), and that Done, attempt 2, is applied to a0's attempt (a
    completion does not say which agent sends it): 4000 goes back to the
    queue while a0 runs it, then to a1: two runs at once. A round's result
    is sent only for the actions still held by that agent with that
    attempt (NODE-2: node.py's ``_assign`` does not check it yet)."""
    m = ProtocolSim()
    m.work(1, [Kind.RESTORE], (45.0, 45.0))
    m.settle()
    m.raft_delay(0, 0.01, 0.0)
    m.submit(0, Kind.ARCHIVE, 1, 10, 1, 2.0)  # keeps a0's first archive slot busy
    m.submit(0, Kind.ARCHIVE, 1, 1, 2, 0.011)  # the round is proposed, not committed yet
    m.move_leader(0, "r1", True, True, 6.0, 40.0)  # r0 isolated, catches up 6 s after stepping down
    m.checks()
    m.settle()


def test_an_action_assigned_as_the_running_report_was_asked_for_is_asked_about_again() -> None:
    """Found by the simulation: r1 hands shard 0 back to r0 while its round
    giving 2000 to a0 is in flight, a0's stream to r1 having just been reset
    (so r1 sends the assignment nowhere). The transfer commits the round,
    stamped with the very instant r0 starts leading and asks a0 what it
    runs: the assignment is no older than the question, so reconcile did
    not count it at all ("the report may predate it"), and nobody asked
    again: 2000 stayed held by a0, which never heard of it, until the
    progress timeout. Counted as maybe on its way, a0 is asked again."""
    plan = reconcile(0, [], [Held(2000, 1, State.STARTED, started=45.0)], before=45.0)
    assert plan.recent == 1 and plan.lost == ()
    m = ProtocolSim()
    m.work(1, [Kind.ARCHIVE], (0.5, 0.5))
    m.settle()
    m.move_leader(0, "r1", False, False, 0.0, 0.0)
    m.submit(0, Kind.ARCHIVE, 1, 1, 1, 0.0)
    m.reset_stream_mid_round("a0", 0.0)  # as r1's round for a0 is proposed
    m.move_leader(0, "r0", False, False, 0.0, 40.0)
    m.settle()
