"""A coordinator replica: the gRPC servers (Coordinator, AgentService,
grpc.health.v1), agent sessions, the dispatcher and watchers, around one
Raft replica (``coordinator.raft.RaftShard``) of every shard.

Everything that changes action state is a command proposed to the shard's
Raft group and applied by the pure ``ShardState`` on every replica; this
module only turns messages into commands and carries out the effects
(``on_applied``: wake watchers everywhere; send cancels and assignments to
agents from the shard's leader). It runs on one asyncio event loop (uvloop
in production); nothing here blocks. Reads of shard state go through
``RaftShard.reading()``, because the Raft applier thread changes it.

Routing: a replica serves writes and current reads only for the shards it
leads. Submit, GetAction and Watch for other shards are answered
FAILED_PRECONDITION with the leader's API address in the ``hsm-leader``
trailing metadata; the client retries there. Cancel and agents' progress
and completions for other shards are forwarded to the leader (admin and
failover paths, not the hot path). Listings and Status are served from this
replica's applied state.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as E
import hashlib
import itertools
import logging
import pickle
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import hsm
from coordinator import convert, moves, placement, scheduler, split
from coordinator.agents import (
    AGENT_LEASE_MIN_HEARTBEATS,
    IN_FLIGHT_GRACE,
    MAX_AGENT_ID,
    AgentBook,
    AgentIdInUse,
    Held,
    Session,
    agent_lease,
    backlog_hint,
    reconcile,
)
from coordinator.cluster import ClusterSpec, ReplicaSpec, membership_problem, split_addr
from coordinator.convert import InvalidRequest
from coordinator.edge import EdgeInterceptor
from coordinator.events import CL_HSM, EVENT_NAMES, HsmEvent
from coordinator.groups import (
    GroupRecord,
    RingRecord,
    clear_member,
    read_group,
    read_ring,
    write_group,
    write_ring,
)
from coordinator.metrics import AgentView, ReplicaMetrics, ReplicaView, ShardView
from coordinator.policy import Policy, seeded
from coordinator.raft import (
    LeaderInfo,
    NotLeader,
    ProposalTimeout,
    RaftError,
    RaftShard,
    RaftTuning,
)
from coordinator.ratelimit import Buckets, Refusal, admit
from coordinator.resharder import Resharder
from coordinator.roles import ADMIN, BRIDGE, DEFAULT_USER_MASK, OPERATOR, USER
from coordinator.state import (
    MAX_SHARDS,
    Action,
    AgentLost,
    Assigned,
    AssignParts,
    AssignRound,
    Changed,
    Command,
    Complete,
    Completion,
    Ended,
    FirstStart,
    Item,
    Kind,
    MoveChanged,
    MoveReply,
    MoveShard,
    MoveStep,
    PartAssigned,
    PolicyChanged,
    PolicyReply,
    PreferLeader,
    Progress,
    ProgressReport,
    Reclaim,
    Requeued,
    ReshardChanged,
    Result,
    SendCancel,
    SetPolicy,
    ShardConfig,
    ShardState,
    State,
)
from coordinator.stripes import PartState, part_of
from coordinator.stripes import Phase as StripePhase
from hsm.fid import Fid
from hsm.metrics import split_host_port, view_from_loop
from hsm.ring import Ring
from hsm.tls import TlsFiles, channel_credentials, server_credentials
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc, types_pb2
from hsm.wire import LEADER_METADATA_KEY, MAX_HINT, MAX_NAME, name_problem

log = logging.getLogger(__name__)
T = TypeVar("T")


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
#: channels to the other replicas: reconnect quickly once a replica is back
#: (gRPC's default backoff grows to two minutes, and a call made while a
#: channel backs off fails at once without trying)
PEER_OPTIONS = GRPC_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
MAX_PAGE = 10_000
#: archive ids one agent may say it serves
MAX_HELLO_ARCHIVE_IDS = 1024
#: tags an agent may serve (Hello.tags)
MAX_HELLO_TAGS = 64
DEFAULT_PAGE = 1000
READINESS_SERVICES = ("hsm.v1.Coordinator", "hsm.v1.AgentService")
#: a waiting action's start estimate: the dispatch rate of its queue over
#: the last RATE_WINDOW seconds, sampled every RATE_SAMPLE_EVERY
RATE_SAMPLE_EVERY = 5.0
RATE_WINDOW = 60.0
#: seconds between two askings of the leaders of the shards other replicas hold
LEARN_EVERY = 3.0
#: seconds between two rounds of the rebalancer (on shard 0's leader)
REBALANCE_EVERY = 2.0
#: seconds a shard held here may go without a known leader before this
#: replica asks the other members whether it is still one of them
LEADERLESS_AUDIT = 5.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    cluster: ClusterSpec
    replica_id: str
    data_dir: Path
    listen: str = ""  # gRPC API bind address; "" = this replica's api address
    raft_bind: str = ""  # host the Raft ports bind to; "" = this replica's raft host
    archive_ids: tuple[int, ...] = (1,)
    default_archive_id: int = 1
    max_attempts: int = 3
    max_terminal: int = 100_000
    #: files whose last successful archive/restore/remove answers a late
    #: duplicate, and for how long (ShardConfig); the same on every replica
    remember_ends: int = 100_000
    remember_for: float = 3600.0
    #: seconds without progress before a running action is reclaimed (0: never)
    progress_timeout: float = 600.0
    #: seconds a disconnected agent keeps its actions before they are requeued
    agent_grace: float = 60.0
    heartbeat_interval: float = 5.0
    #: seconds one replicated call may take before it is retried (same keys)
    propose_timeout: float = 10.0
    raft: RaftTuning = field(default_factory=RaftTuning)
    #: mutual TLS on the gRPC port (and for forwards to other replicas);
    #: None: plain text and nobody checked (``insecure: true``, warned at start)
    tls: TlsFiles | None = None
    #: the kinds a peer with role user may request
    user_request_mask: frozenset[str] = DEFAULT_USER_MASK
    #: HOST:PORT serving Prometheus metrics at /metrics (coordinator.metrics); "" = none
    metrics_listen: str = ""

    @property
    def me(self) -> ReplicaSpec:
        return self.cluster.replica(self.replica_id)


class SubmitLimits:
    """The policy's rate limits on submitted requests, per user (uid) and
    per initiator, as one replica applies them: a shard's items reach its
    leader only, so each leader limits at the policy's rate times its share
    of the shards (the cluster as a whole then allows about the policy's
    rate to a user whose files spread over the shards)."""

    def __init__(self) -> None:
        self.user: Buckets | None = None
        self.initiator: Buckets | None = None
        self.share = 1.0

    def configure(self, policy: Policy, share: float) -> None:
        self.share = share
        for attr, limit in (("user", policy.per_user), ("initiator", policy.per_initiator)):
            buckets: Buckets | None = getattr(self, attr)
            if limit is None:
                setattr(self, attr, None)
                continue
            rate, burst = limit.rate * share, max(1, round(limit.burst * share))
            if buckets is None:
                setattr(self, attr, Buckets(rate, burst))
            else:
                buckets.configure(rate, burst)

    def check(self, items: Sequence[Item], now: float) -> list[Refusal | None] | None:
        """Per item: None (passes, its tokens taken) or why it is refused;
        None for the whole batch when no limit is set."""
        user, initiator = self.user, self.initiator
        if user is None and initiator is None:
            return None
        requests = []
        for it in items:
            counts: list[tuple[Buckets, object, str]] = []
            r = it.requester
            if user is not None:
                counts.append((user, r.uid, f"user {r.uid}"))
            if initiator is not None:
                counts.append((initiator, r.initiator, f"initiator {r.initiator or '(none)'}"))
            requests.append((counts, 1))
        return admit(requests, now)


@dataclass(eq=False)
class AgentSession(Session):
    """A session (coordinator/agents.py decides about it) and its stream."""

    out: asyncio.Queue[agent_pb2.CoordinatorMessage | None] = field(default_factory=asyncio.Queue)

    def send(self, msg: agent_pb2.CoordinatorMessage) -> None:
        if self.alive:
            self.out.put_nowait(msg)

    def end(self) -> None:
        """End the Work stream (the servicer then calls agent_gone)."""
        self.out.put_nowait(None)


def _takes_parts(st: ShardState, session: AgentSession, action: Action) -> bool:
    """Whether *session*'s agent may be given parts of *action*'s stripe:
    its mover stripes, it is not drained, and it serves the action's archive
    id and tag (credits aside)."""
    return (session.stripes and session.agent_id not in st.drained
            and scheduler.serves(session.archive_ids, action.archive_id)
            and (not action.tag or action.tag in session.tags))


def _parts_for(st: ShardState, session: AgentSession) -> int:
    """Waiting parts of striped archives that *session*'s agent could take
    now (one per stripe: an agent runs one part of a file at a time), for
    its backlog hint: an agent grants its credits where work waits."""
    if st.control != "enabled":
        return 0
    n = 0
    for action_id, stripe in st.stripes.items():
        if stripe.phase != StripePhase.PARTS or not _takes_parts(st, session, st.actions[action_id]):
            continue
        parts = stripe.parts
        if any(p.state == PartState.WAITING for p in parts) and not any(
                p.state == PartState.RUNNING and p.agent == session.agent_id for p in parts):
            n += 1
    return n


def _stripe_order(st: ShardState, action: Action) -> agent_pb2.StripeOrder | None:
    """What an ARCHIVE's assignment says of striping: seal it (every part of
    its stripe is done), or stripe it when its file is large enough (the
    policy's ``striping.above``; a whole-file archive of one copy)."""
    if action.kind != Kind.ARCHIVE:
        return None
    stripe = st.stripes.get(action.id)
    if stripe is not None and stripe.phase == StripePhase.SEAL:
        return agent_pb2.StripeOrder(seal=True, parts=len(stripe.parts), data_version=stripe.data_version,
                                     size=stripe.size, part_length=stripe.parts[0].length,
                                     part_checksums=[p.checksum for p in stripe.parts])
    above = st.policy.stripe_above
    if above and stripe is None and not action.copies and not action.copies_done and action.offset == 0 \
            and action.length < 0:
        return agent_pb2.StripeOrder(above=above)
    return None


def _slots_from_pb(pb: coordinator_pb2.Slots) -> dict[Kind, int]:
    return {Kind.ARCHIVE: pb.archive, Kind.RESTORE: pb.restore, Kind.REMOVE: pb.remove}


def _slots_to_pb(d: dict[Kind, int]) -> coordinator_pb2.Slots:
    return coordinator_pb2.Slots(archive=d.get(Kind.ARCHIVE, 0), restore=d.get(Kind.RESTORE, 0),
                                 remove=d.get(Kind.REMOVE, 0))


class ShardUnavailable(Exception):
    """A shard cannot take the request here: not the leader (``leader`` is
    the leader's API address, or "" when there is none right now)."""

    def __init__(self, shard: int, leader: str, detail: str = "") -> None:
        self.shard = shard
        self.leader = leader
        where = f"the leader is {leader}" if leader else "it has no leader right now (election)"
        super().__init__(detail or f"this replica does not lead shard {shard}; {where}")


class RemoteShard:
    """A shard whose Raft group this replica is not a member of (the
    cluster's placement gives it to other replicas): what the node needs to
    send a request for it on. Its leader is learned from the members
    (``CoordinatorNode._learn_leaders``); it never leads here and has no
    state here."""

    hosted = False
    is_leader = False
    leader_ready = False
    problem = ""

    def __init__(self, index: int, members: tuple[ReplicaSpec, ...]) -> None:
        self.index = index
        self.members = members
        #: the leader's Raft address for this shard, as a member last said (None: not known)
        self.leader: str | None = None
        self.term = 0
        self.commit_index = 0
        self.applied_index = 0
        #: when a member last told us (monotonic), and the move of its group it said runs ("": none)
        self.learned = 0.0
        self.move = ""

    @contextlib.contextmanager
    def reading(self) -> Iterator[ShardState]:
        raise ShardUnavailable(self.index, "", f"shard {self.index} is not held by this replica (its group: "
                               f"{', '.join(r.id for r in self.members)})")
        yield  # pragma: no cover


class RequestTooLarge(InvalidRequest):
    """A request whose commands are more than one Raft entry may carry
    (``RaftTuning.max_command_bytes``): refused INVALID_ARGUMENT before
    anything is proposed."""


def shard_digest(state: ShardState) -> str:
    """A digest of everything replicas must agree on (for consistency checks)."""
    h = hashlib.sha256()
    h.update(f"{state.next_seq},{state.control},{sorted(state.leases.items())},{len(state.ended_states)}".encode())
    for a in sorted(state.actions.values(), key=lambda a: a.id):
        h.update(f"|{a.id},{a.state},{a.agent},{a.attempt},{a.errno},{len(a.requesters)},{a.kind},"
                 f"{a.archive_id}".encode())
    return h.hexdigest()


def add_running(st: ShardState, running: dict[str, dict[Kind, int]]) -> None:
    """Add the actions *st* says each agent runs, per kind, to *running*."""
    for agent, ids in st.by_agent.items():
        per = running.setdefault(agent, {k: 0 for k in Kind})
        for i in ids:
            per[st.actions[i].kind] += 1


class CoordinatorNode:
    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.cluster = config.cluster
        self.me = config.me
        self.ring = Ring(self.cluster.shards, self.cluster.vnodes)
        #: the ring as this replica keeps it on disk (coordinator.groups): the
        #: shards splits added, their groups, and a split that runs
        self.ring_record = RingRecord(self.cluster.shards, 1, {})
        #: drives splits where shard 0 is led (coordinator.resharder)
        self.resharder = Resharder(self)
        #: every shard by index: a RaftShard for those this replica holds, a
        #: RemoteShard for those the placement gives to other replicas
        self.shards: list[RaftShard | RemoteShard] = []
        #: the shards this replica holds (a member of their Raft group)
        self.hosted: list[RaftShard] = []
        self._learn = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: moves (coordinator.moves): woken when one changed; the drive of each
        #: shard led here; (shard, target) pairs whose target opened its member;
        #: shards whose membership this replica checks at start (_audit)
        self._moving = asyncio.Event()
        self._driving: dict[int, asyncio.Task[None]] = {}
        self._joined: set[tuple[int, str]] = set()
        self._audits: dict[int, asyncio.Task[None]] = {}
        #: tasks telling a replica a move took it out of a group (_tell_leave)
        self._telling: set[asyncio.Task[None]] = set()
        #: the audits meanwhile which the member starts no election (at start)
        self._quiet_audits: set[int] = set()
        #: shards held here without a known leader, since when (monotonic)
        self._leaderless: dict[int, float] = {}
        #: the replica the rebalancer last found silent (logged once)
        self._unanswered = ""
        #: per shard opened from its group record: the record's quiet, which
        #: holds until the state applies a change of the move (_after_move)
        self._quiet_file: dict[int, bool] = {}
        #: per shard held here: its group as this replica's record has it
        self._records: dict[int, tuple[str, ...]] = {}
        self.book = AgentBook(config.agent_grace, config.heartbeat_interval, session_type=AgentSession)
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self.leases_held: dict[str, str] = {}  # lease -> holder last answered here (to log changes)
        self._watchers: dict[int, set[asyncio.Queue[types_pb2.Action]]] = {}
        self._wake = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._health = health.aio.HealthServicer()
        self._ready_state: bool | None = None
        self._problems: list[tuple[int, str]] = []  # (shard, why) this replica cannot take its part
        self.ready = asyncio.Event()  # every shard has a known leader
        self.port = 0
        self.agent_lease, self.agent_lease_safe = agent_lease(
            config.agent_grace, config.heartbeat_interval, config.raft.leader_fallback)
        #: samples of every shard's per-queue dispatch counters (ShardState.dispatched):
        #: (monotonic time, one dict per shard), the last RATE_WINDOW seconds
        self._dispatch_samples: deque[tuple[float, list[dict[tuple[Kind, int], int]]]] = deque()
        #: set (and replaced) when a shard this replica leads records an HSM event
        self._events_ev = asyncio.Event()
        #: the Prometheus exporter's registry (None: no metrics_listen, nothing counted)
        self.metrics: ReplicaMetrics | None = None
        self.metrics_port = 0
        #: the newest policy any shard here applied, and its version (0: none
        #: set yet; this replica's configuration meanwhile)
        self.policy_version = 0
        self.policy: Policy = self.seed_policy()
        #: called with the policy whenever a newer version applies here
        self.on_policy: list[Callable[[Policy], None]] = []
        self.edge: EdgeInterceptor | None = None
        self.limits = SubmitLimits()
        #: batches and mounted volumes, across dispatcher rounds (scheduler.Outlook)
        self.outlook = scheduler.Outlook()
        self._limits_from(self.policy)
        self.on_policy.append(self._limits_from)

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        listen = self.config.listen or self.me.api
        host = listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = self.me.api.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def shard_config(self, index: int) -> ShardConfig:
        c = self.config
        return ShardConfig(shard=index, archive_ids=frozenset(c.archive_ids), default_archive_id=c.default_archive_id,
                           max_attempts=c.max_attempts, max_terminal=c.max_terminal,
                           remember_ends=c.remember_ends, remember_for=c.remember_for,
                           progress_timeout=c.progress_timeout)

    async def start(self, register: Callable[[grpc.aio.Server], None]) -> None:
        """Open the shards, then serve: *register* adds the API services
        to the gRPC server (``coordinator.server`` composes them; this
        module does not know them), beside the health service."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        ring = read_ring(self.config.data_dir)
        if ring is not None:
            self.ring_record = ring
            self.ring = Ring(ring.shards, self.cluster.vnodes, ring.version)
        for i in range(max(self.cluster.shards, self.ring_record.shards, self.ring_record.pending)):
            group = read_group(self.config.data_dir, i)
            if group is None:  # never held here: the configured placement (or the split's)
                ids = self._placed(i)
                audit = False
            else:
                ids, audit = group.members, group.audit
            if self.me.id not in ids:
                self.shards.append(RemoteShard(i, self._specs(ids)))
                continue
            # quiet from the start when it audits (below): no election before the audit's answer
            shard = self._open(i, ids, quiet=group is None or group.quiet or audit)
            self.shards.append(shard)
            self.hosted.append(shard)
            if group is None:
                self._record(i, GroupRecord(ids))
            else:
                self._quiet_file[i] = group.quiet
                self._records[i] = group.members
            if audit or group is None:
                # a move involved it, or it opens the group for the first time,
                # from the configured placement: it starts no election until
                # the shard's leader (if there is one) says it is a member
                # (a placement edited by mistake could otherwise start a
                # second group of a shard that lives elsewhere)
                self._start_audit(i)
        if self.config.metrics_listen:
            self.metrics = ReplicaMetrics(view_from_loop(loop, self.metrics_view))
            host, port = split_host_port(self.config.metrics_listen)
            try:
                self.metrics_port = self.metrics.serve(host, port)
            except OSError as exc:
                await self._close_shards()
                raise OSError(exc.errno, f"cannot serve metrics on {self.config.metrics_listen}: {exc.strerror}") \
                    from None
        tls = self.config.tls
        edge = EdgeInterceptor(
            self.cluster.cluster_id, self.me.id, secure=tls is not None,
            user_mask=self.config.user_request_mask,
            on_call=self.metrics.call if self.metrics is not None else None)
        self.edge = edge
        self._masks_from(self.policy)
        self.on_policy.append(self._masks_from)
        server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[edge])
        register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        listen = self.config.listen or self.me.api
        try:
            if tls is None:
                self.port = server.add_insecure_port(listen)
            else:
                self.port = server.add_secure_port(listen, server_credentials(tls))
        except RuntimeError:  # grpcio >= 1.70 raises where older ones returned 0
            self.port = 0
        if self.port == 0:
            await self._close_shards()
            if self.metrics is not None:
                self.metrics.stop()
            raise OSError(E.EADDRINUSE, f"cannot listen on {listen}: address in use, or not this host's")
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._update_readiness()
        self._tasks.append(asyncio.create_task(self._dispatcher(), name="dispatcher"))
        self._tasks.append(asyncio.create_task(self._reclaimer(), name="reclaimer"))
        self._tasks.append(asyncio.create_task(self._lease_keeper(), name="leases"))
        self._tasks.append(asyncio.create_task(self._readiness_watch(), name="readiness"))
        self._tasks.append(asyncio.create_task(self._rate_sampler(), name="dispatch rates"))
        if len(self.hosted) < len(self.shards):
            self._tasks.append(asyncio.create_task(self._learn_leaders(), name="leaders of other shards"))
        self._tasks.append(asyncio.create_task(self._mover(), name="shard moves"))
        self._tasks.append(asyncio.create_task(self._rebalancer(), name="rebalancer"))
        self._tasks.append(asyncio.create_task(self.resharder.run(), name="splits"))
        held = (f"{len(self.shards)} shards" if len(self.hosted) == len(self.shards) else
                f"{len(self.shards)} shards, holds {len(self.hosted)}: {','.join(str(s.index) for s in self.hosted)}")
        log.info("replica %s serving on %s (%s, archive ids %s, %s)", self.me.id, self.address,
                 held, ",".join(map(str, self.config.archive_ids)),
                 "mutual TLS" if tls else "PLAIN TEXT")
        if tls is None:
            log.warning("insecure: the gRPC port %s is plain text and checks nobody: anyone who reaches it "
                        "can submit, cancel, drain agents, switch the coordinator off, change Raft membership, or "
                        "connect as an agent. Give the replica tls: {ca, cert, key} (hsm-coordinator certs)",
                        self.address)
        if not self.config.raft.encrypt:
            log.warning("raft encrypt: false: the Raft traffic of this replica (%s and the next %d port(s)) is "
                        "authenticated with the cluster password but NOT encrypted: anyone who can read the network "
                        "between the replicas reads every replicated command (file system names, FIDs, requesters' "
                        "initiators, uids and cookies, agent ids, lease holders, error texts) and snapshots of the "
                        "whole state. Forged or altered messages are still refused. Remove encrypt: false (encrypted "
                        "is the default) unless that network is private", self.me.raft, len(self.shards) - 1)
        if not self.agent_lease_safe:
            log.warning("agent_grace %g s is too short for the agents' leases: an agent cut off from the "
                        "replicas may still be copying when its actions go to another agent (two runs at "
                        "once). Give agent_grace at least %g s (raft leader_fallback %g s + 2 x %d heartbeats "
                        "of %g s)", self.config.agent_grace,
                        self.config.raft.leader_fallback + 2 * AGENT_LEASE_MIN_HEARTBEATS *
                        self.config.heartbeat_interval, self.config.raft.leader_fallback,
                        AGENT_LEASE_MIN_HEARTBEATS, self.config.heartbeat_interval)

    def _placed(self, index: int) -> tuple[str, ...]:
        """Shard *index*'s group as the configuration (or, for a shard a
        split added, the split) placed it."""
        if index < self.cluster.shards:
            return tuple(r.id for r in self.cluster.members(index))
        return self.ring_record.groups.get(index, ())

    # ------------------------------------------------------------ splits

    def open_split(self, record: RingRecord) -> None:
        """A split's new shards (``record.pending`` shards in all, ring
        version ``record.pending_version``): this replica opens its members
        of their groups and knows where the others are (SPLIT_OP_OPEN; a
        retry changes nothing)."""
        known = {r.id for r in self.cluster.replicas}
        unknown = sorted({m for g in record.groups.values() for m in g} - known)
        if unknown:
            raise InvalidRequest(f"unknown replica(s) {', '.join(unknown)}")
        if record.pending_version <= self.ring.version:
            return  # that split is done here already
        if self.ring_record.pending_version != record.pending_version:
            self.ring_record = RingRecord(self.ring.shards, self.ring.version,
                                          self.ring_record.groups | record.groups, record.pending,
                                          record.pending_version)
            write_ring(self.config.data_dir, self.ring_record)
        self._add_shards(record.pending)

    def _add_shards(self, total: int) -> None:
        """Shards up to *total*: held here (opened: a new group, which elects
        its leader) when their group names this replica, else known."""
        added = False
        for k in range(len(self.shards), total):
            ids = self._placed(k)
            if self.me.id in ids:
                leftover = Path(self.config.data_dir) / f"shard-{k}"
                if leftover.exists():  # an aborted split's, never cleared: a new group starts empty
                    clear_member(self.config.data_dir, k)
                self._record(k, GroupRecord(ids))
                shard: RaftShard | RemoteShard = self._open(k, ids)
                log.warning("shard %d: opened its new Raft group (%s) for a split", k, ", ".join(ids))
            else:
                shard = RemoteShard(k, self._specs(ids))
            self.shards.append(shard)
            added = True
        if added:
            self._swap(len(self.shards) - 1, self.shards[-1])

    def ring_after(self, r: split.Reshard) -> RingRecord:
        """The ring split *r* makes, done: its shards, its version, and the
        groups of every shard splits added."""
        return RingRecord(r.total, r.version, self.ring_record.groups | {k: r.group(k) for k in r.new})

    async def take_ring(self, record: RingRecord) -> None:
        """The cluster's ring after a split (SPLIT_OP_RING): done, this
        replica routes by it from now on; aborted (the ring it has, without
        the split's shards), it closes its members of the new shards and
        forgets them."""
        if record.version < self.ring.version:
            return
        if record.version > self.ring.version:
            self.ring_record = RingRecord(record.shards, record.version, self.ring_record.groups | record.groups)
            write_ring(self.config.data_dir, self.ring_record)
            self._add_shards(record.shards)
            self.ring = Ring(record.shards, self.cluster.vnodes, record.version)
            log.warning("the cluster's ring is now %d shards (version %d)", record.shards, record.version)
            self._learn.set()
            return
        if not self.ring_record.pending:
            return
        gone = self.shards[record.shards:]
        self.ring_record = RingRecord(self.ring.shards, self.ring.version,
                                      {k: g for k, g in self.ring_record.groups.items() if k < record.shards})
        write_ring(self.config.data_dir, self.ring_record)
        del self.shards[record.shards:]
        self.hosted = [s for s in self.shards if isinstance(s, RaftShard)]
        for shard in gone:
            if isinstance(shard, RaftShard):
                await shard.aclose()
                clear_member(self.config.data_dir, shard.index)
                log.warning("shard %d: closed: the split that opened it was aborted", shard.index)
        self._wake.set()

    def _specs(self, ids: Iterable[str]) -> tuple[ReplicaSpec, ...]:
        """The replicas named (ids the configuration does not list are left out)."""
        known = {r.id: r for r in self.cluster.replicas}
        return tuple(known[i] for i in ids if i in known)

    def _open(self, i: int, ids: Sequence[str], quiet: bool = False) -> RaftShard:
        """This replica's member of shard *i*'s Raft group of *ids*."""
        me = self.me.raft_addr(i)
        raft_host = self.config.raft_bind
        bind = f"{raft_host}:{me.rsplit(':', 1)[1]}" if raft_host else None
        members = self._specs(ids)
        return RaftShard(
            i, me, [r.raft_addr(i) for r in members], self.config.data_dir,
            self.cluster.password, lambda i=i: ShardState(self.shard_config(i)),  # type: ignore[misc]
            self._on_applied, self._loop, self.config.raft, bind_addr=bind,
            on_leader_change=self._on_leader_change, on_reset=self._on_reset,
            preferred_leader=members[0].raft_addr(i) if len(members) > 1 else None,
            wants_effects=self._watchers.__len__, quiet=quiet,
        )

    def _swap(self, index: int, shard: RaftShard | RemoteShard) -> None:
        """Shard *index* is held here from now on (a RaftShard), or no
        longer (a RemoteShard). Lists being iterated keep their old view."""
        self.shards[index] = shard
        self.hosted = [s for s in self.shards if isinstance(s, RaftShard)]
        self._limits_from(self.policy)
        if isinstance(shard, RemoteShard) and not any(t.get_name() == "leaders of other shards" for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._learn_leaders(), name="leaders of other shards"))
        self._learn.set()
        self._wake.set()

    # ------------------------------------------------------------ moves

    def wake_moves(self) -> None:
        self._moving.set()

    def _quiet(self, shard: RaftShard) -> bool:
        """Whether this replica's member of the shard must start no
        election: as the move applied here says (coordinator.moves.quiet),
        as the group record said until the state applies a change of the
        move, and while its membership is being checked (_audit)."""
        if shard.index in self._quiet_audits:
            return True
        if shard.index in self._quiet_file:
            return self._quiet_file[shard.index]
        with shard.reading() as st:
            return moves.quiet(st.move, self.me.id)

    def _after_move(self, shard: RaftShard) -> None:
        """The shard's group or move changed as applied here: who is quiet,
        which member should lead, what the data directory records."""
        ids, move = self.group_view(shard)
        me = self.me.id
        quiet = moves.quiet(move, me)
        self._quiet_file.pop(shard.index, None)
        shard.quiet = self._quiet(shard)
        first = (move.after() if move is not None else ids)[0] if ids else ""
        spec = next(iter(self._specs([first])), None)
        shard.preferred_leader = spec.raft_addr(shard.index) if spec is not None and len(ids) > 1 else None
        if me in ids:
            self._record(shard.index, GroupRecord(
                tuple(ids), quiet, move is not None and me in (move.source, move.target)))
        self._moving.set()

    async def _mover(self) -> None:
        """Drive the moves of the shards led here (coordinator.moves), one
        task per shard; every second, and at once when a move changed."""
        while True:
            try:
                await asyncio.wait_for(self._moving.wait(), 1.0)
            except TimeoutError:
                pass
            self._moving.clear()
            now = time.monotonic()
            for shard in self.hosted:
                ids, move = self.group_view(shard)
                if move is None and shard.index not in self._audits and ids != self._records.get(shard.index):
                    # a membership change outside a move (member add|remove): recorded for the next start
                    self._record(shard.index, GroupRecord(ids))
                if shard.leader is not None or shard.index in self._audits:
                    self._leaderless.pop(shard.index, None)
                elif now - self._leaderless.setdefault(shard.index, now) > LEADERLESS_AUDIT:
                    # a member that hears no leader may have been removed from
                    # the group while it was down or cut off: it asks the others
                    self._leaderless.pop(shard.index, None)
                    log.info("shard %d: no leader for %.0f s: asking the others whether this replica is still a "
                             "member", shard.index, LEADERLESS_AUDIT)
                    # not quiet meanwhile: a member removed is harmless (the
                    # others refuse its connections), and one that is not must
                    # keep taking part in the elections that end the outage
                    self._start_audit(shard.index, quiet=False)
                if not shard.leader_ready or shard.index in self._driving:
                    continue
                with shard.reading() as st:
                    if st.move is None:
                        continue
                task = asyncio.create_task(self._drive(shard), name=f"move of shard {shard.index}")
                self._driving[shard.index] = task
                task.add_done_callback(lambda _t, i=shard.index: self._driving.pop(i, None))

    async def _drive(self, shard: RaftShard) -> None:
        """Carry a move on, step by step, while this replica leads the shard."""
        i = shard.index
        while shard.leader_ready and not shard.quiet:
            with shard.reading() as st:
                move = st.move
            if move is None:
                return
            ids = {r.id for r in self.cluster.replicas if r.raft_addr(i) in {shard.self_addr, *shard.peers}}
            target = self.cluster.replica(move.target)
            behind: int | None = None
            if move.target in ids:
                connected, lag = await shard.peer_lag(target.raft_addr(i))
                behind = lag if connected else None
            facts = moves.Facts(self.me.id, frozenset(ids), (i, move.target) in self._joined, behind)
            step = moves.decide(move, facts)
            log.debug("shard %d: %s: %s", i, move.text(), step.value)
            try:
                if not await self._step(shard, move, step):
                    await asyncio.sleep(0.2)
            except (ShardUnavailable, RaftError, TimeoutError, ValueError, grpc.RpcError) as exc:
                detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                log.warning("shard %d: %s: could not %s: %s; trying again", i, move.text(), step.value, detail)
                await asyncio.sleep(1.0)

    async def _step(self, shard: RaftShard, move: moves.Move, step: moves.Do) -> bool:
        """One step of a move; False when it only waits."""
        i, Do = shard.index, moves.Do
        source, target = self.cluster.replica(move.source), self.cluster.replica(move.target)
        if step == Do.WAIT:
            return False
        if step == Do.JOIN:
            stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(target.api))
            await stub.JoinShard(coordinator_pb2.JoinShardRequest(shard=i, members=move.raft_members()),
                                 timeout=self.config.propose_timeout * 2)
            first = (i, move.target) not in self._joined
            self._joined.add((i, move.target))
            if first:
                log.info("shard %d: %s: %s opened its member of the group", i, move.text(), move.target)
            return first  # (asked again while it connects: the next look after a pause)
        if step == Do.ADD:
            problem = await self.majority_problem(shard, target.raft_addr(i), add=True)
            if problem:
                raise ValueError(problem)
            await shard.add_peer(target.raft_addr(i), timeout=self.config.propose_timeout)
            return True
        if step == Do.HAND_OVER:
            away = {move.target} if move.phase == moves.Phase.ABORTING else {move.source}
            order = [m for m in move.after() if m not in away] + [m for m in move.before if m not in away]
            live = {shard.self_addr, *shard.peers}
            to = next((self.cluster.replica(m).raft_addr(i) for m in order
                       if self.cluster.replica(m).raft_addr(i) in live and m != self.me.id), None)
            await shard.transfer_leadership(to, timeout=max(2.0, 2 * self.config.raft.election_max))
            log.info("shard %d: %s: leadership handed to %s", i, move.text(), to)
            return True
        if step in (Do.REMOVE_SOURCE, Do.REMOVE_TARGET):
            leaving = source if step == Do.REMOVE_SOURCE else target
            if step == Do.REMOVE_SOURCE:
                # the source goes quiet first (it may not learn that LEAVING
                # committed once it stops receiving the log)
                await self._ask_leave(leaving, i, prepare=True)
            await shard.remove_peer(leaving.raft_addr(i), timeout=self.config.propose_timeout)
            return True
        phase = {Do.CAUGHT_UP: moves.Phase.CAUGHT_UP, Do.LEAVING: moves.Phase.LEAVING, Do.DONE: moves.Phase.DONE,
                 Do.ABORTED: moves.Phase.ABORTED}[step]
        res = await self.propose(shard, MoveStep(self.clock(), move.source, move.target, int(phase)))
        reply = res.replies[0]
        if isinstance(reply, MoveReply) and reply.error:
            raise ValueError(reply.error)
        log.info("shard %d: move %s -> %s: %s", i, move.source, move.target, phase.name.lower().replace("_", " "))
        if step in (Do.DONE, Do.ABORTED):
            self._joined.discard((i, move.target))
            gone = source if step == Do.DONE else target
            task = asyncio.create_task(self._tell_leave(gone, i), name=f"tell {gone.id} it left shard {i}")
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)
        return True

    async def begin_move(self, index: int, source: str, target: str, abort: bool = False,
                         lead: bool = False) -> coordinator_pb2.MoveShardResponse:
        """Begin (or *abort*) the move of shard *index*'s member *source* to
        *target*, or with *lead* make its member *target* the preferred
        leader: proposed on the shard when it is led here, else asked of its
        leader. ValueError with the reason when the shard refuses."""
        shard = self.shards[index]
        if not shard.leader_ready:
            request = coordinator_pb2.MoveShardRequest(shard=index, source=source, target=target, abort=abort,
                                                       lead=lead)
            leader = self.leader_api(shard)
            if not leader or leader == self.me.api:
                self.leader_lost(shard)
                raise ShardUnavailable(index, "")
            stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(leader))
            try:
                resp: coordinator_pb2.MoveShardResponse = await stub.MoveShard(
                    request, timeout=self.config.propose_timeout * 2)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise ValueError((exc.details() or "").removeprefix(f"shard {index}: ")) from None
                self.leader_lost(shard)
                raise ShardUnavailable(index, "", f"shard {index}: the move on the leader {leader} failed: "
                                       f"{exc.details()}") from None
            return resp
        assert isinstance(shard, RaftShard)
        now = self.clock()
        group = self.group_view(shard)[0]
        cmd: Command
        if lead:
            cmd = PreferLeader(now, target, group)
        elif abort:
            cmd = MoveStep(now, source, target, int(moves.Phase.ABORTING))
        else:
            cmd = MoveShard(now, source, target, group)
        res = await self.propose(shard, cmd)
        reply = res.replies[0]
        assert isinstance(reply, MoveReply)
        if reply.error:
            raise ValueError(reply.error)
        self._moving.set()
        ids, move = self.group_view(shard)
        return coordinator_pb2.MoveShardResponse(shard=index, members=ids, move=move.text() if move else "",
                                                 leader=self.me.id)

    def groups_now(self) -> list[tuple[str, ...]] | str:
        """Every shard's group as this replica knows it (its own shards as
        applied, the others as their members last said), or why not now (a
        move runs, a shard without a known leader)."""
        out: list[tuple[str, ...]] = []
        for shard in self.shards:
            if isinstance(shard, RaftShard):
                ids, move = self.group_view(shard)
                if move is not None:
                    return f"shard {shard.index}: {move.text()}"
            else:
                ids = tuple(r.id for r in shard.members)
                if shard.move:
                    return f"shard {shard.index}: {shard.move}"
            if shard.leader is None:
                return f"shard {shard.index} has no known leader"
            out.append(ids)
        return out

    def rebalance_view(self) -> tuple[bool, dict[str, float], placement.Step | None, str]:
        """On shard 0's leader: whether the rebalancer runs, the drained
        replicas, its next step and why none."""
        shard0 = self.shards[0]
        assert isinstance(shard0, RaftShard)
        with shard0.reading() as st:
            enabled, drained = st.rebalance, dict(st.replicas_drained)
        groups = self.groups_now()
        if isinstance(groups, str):
            return enabled, drained, None, groups
        step = placement.next_step(groups, [r.id for r in self.cluster.replicas], drained)
        return enabled, drained, step, "" if step else "balanced"

    async def _rebalancer(self) -> None:
        """On shard 0's leader, every REBALANCE_EVERY seconds while the
        rebalancer is on: one step of coordinator.placement.next_step at a
        time (a move runs to its end before the next is planned)."""
        while True:
            await asyncio.sleep(REBALANCE_EVERY)
            if not self.shards or not self.shards[0].leader_ready or not self.cluster.placement:
                continue  # (a cluster without a placement holds every shard on every replica)
            try:
                enabled, _drained, step, _why = self.rebalance_view()
                if not enabled or step is None:
                    continue
                if not await self._answers(step.target):
                    if self._unanswered != step.target:
                        log.warning("rebalancer: replica %s does not answer: no shard goes to it until it does",
                                    step.target)
                    self._unanswered = step.target
                    continue
                self._unanswered = ""
                what = (f"moving shard {step.shard}'s member {step.source} to {step.target}" if step.kind == "move"
                        else f"shard {step.shard} prefers {step.target} as its leader instead of {step.source}")
                log.warning("rebalancer: %s", what)
                await self.begin_move(step.shard, step.source, step.target, lead=step.kind == "lead")
            except (ShardUnavailable, ValueError) as exc:
                log.info("rebalancer: step not taken: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rebalancer round failed")

    async def _answers(self, replica_id: str) -> bool:
        """Whether *replica_id* answers now (its ClusterInfo, 2 s)."""
        if replica_id == self.me.id:
            return True
        stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(self.cluster.replica(replica_id).api))
        try:
            await stub.ClusterInfo(coordinator_pb2.ClusterInfoRequest(), timeout=2.0)
            return True
        except grpc.RpcError:
            return False

    async def _ask_leave(self, replica: ReplicaSpec, index: int, prepare: bool) -> bool:
        """Ask *replica* to close (or, *prepare*, to go quiet in) its member of shard *index*."""
        stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(replica.api))
        try:
            await stub.LeaveShard(coordinator_pb2.LeaveShardRequest(shard=index, prepare=prepare),
                                  timeout=self.config.propose_timeout)
            return True
        except grpc.RpcError as exc:
            if prepare and exc.code() == grpc.StatusCode.UNAVAILABLE:
                # not running: removing it is safe; when it starts again it
                # asks the group whether it is still a member (_audit)
                log.info("shard %d: %s does not answer (%s); removed without going quiet first", index,
                         replica.id, exc.details())
                return False
            raise

    async def _tell_leave(self, replica: ReplicaSpec, index: int) -> None:
        """After a move: the replica removed from the group closes its member
        (a few tries; if it is down, it finds out itself when it starts)."""
        for delay in (0.0, 1.0, 3.0, 10.0):
            await asyncio.sleep(delay)
            try:
                await self._ask_leave(replica, index, prepare=False)
                return
            except grpc.RpcError as exc:
                log.info("shard %d: %s did not close its member yet: %s", index, replica.id, exc.details())

    async def majority_problem(self, shard: RaftShard, addr: str, add: bool) -> str | None:
        """Why changing the group by *addr* would leave it without a
        reachable majority (coordinator.cluster.membership_problem), or None.
        A new member is probed (a TCP connect to its Raft port, 2 s) only
        when the group would need it."""
        members = {shard.self_addr, *shard.peers}
        reachable = {shard.self_addr, *(await shard.connected_peers())}
        problem = membership_problem(members, reachable, addr, add)
        if problem and add:
            host, port = split_addr(addr)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
                writer.close()
                reachable.add(addr)
                problem = membership_problem(members, reachable, addr, add)
            except (OSError, TimeoutError):
                pass
        return problem

    async def join(self, index: int, ids: Sequence[str]) -> None:
        """JoinShard: open this replica's member of shard *index* (quiet:
        it starts no election until the move says it caught up)."""
        if self.me.id not in ids:
            raise InvalidRequest(f"replica {self.me.id} is not in the group {', '.join(ids)}")
        unknown = [m for m in ids if m not in {r.id for r in self.cluster.replicas}]
        if unknown:
            raise InvalidRequest(f"unknown replica(s) {', '.join(unknown)}")
        shard = self.shards[index]
        if isinstance(shard, RaftShard):
            return  # already held (a retried request)
        self._record(index, GroupRecord(tuple(ids), True, True))
        opened = self._open(index, ids, quiet=True)
        self._swap(index, opened)
        log.info("shard %d: joined its Raft group (%s) as a quiet member until it catches up", index,
                 ", ".join(ids))

    async def leave(self, index: int, prepare: bool) -> bool:
        """LeaveShard: go quiet before being removed (*prepare*), or close
        this replica's member once the group has it no more. Refused while
        the group still counts on it."""
        shard = self.shards[index]
        if not isinstance(shard, RaftShard):
            return False  # not held (a retried request)
        with shard.reading() as st:
            move, group = st.move, st.group
        me = self.me.id
        if prepare:
            if not shard.quiet and (move is None or move.source != me or move.phase != moves.Phase.LEAVING):
                raise InvalidRequest(f"shard {index}: no move removing {me} is leaving here yet")
            self._quiet_file[index] = True
            shard.quiet = True
            self._record(index, GroupRecord(move.raft_members(), True, True))
            return True
        if not await self._left(index, shard, move, group):
            raise InvalidRequest(f"shard {index}: the group still counts {me} among its members")
        await self._close_left(index, shard)
        return False

    async def _left(self, index: int, shard: RaftShard, move: moves.Move | None, group: tuple[str, ...]) -> bool:
        """Whether the other members say this replica is out of the group
        (asked: its own state may have stopped at the step before)."""
        others = [r for r in self._specs(move.raft_members() if move else group) if r.id != self.me.id]
        for r in others:
            stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(r.api))
            try:
                info = await stub.ClusterInfo(coordinator_pb2.ClusterInfoRequest(), timeout=2.0)
            except grpc.RpcError:
                continue
            row = next((x for x in info.shards if x.shard == index and x.role in ("leader", "follower")), None)
            if row is not None:
                return self.me.id not in row.members
        return False

    async def _close_left(self, index: int, shard: RaftShard) -> None:
        """Close this replica's member of a group it left: the journal goes,
        the group record stays (it names the group without this replica, so
        that a restart does not open it again)."""
        with shard.reading() as st:
            move, group = st.move, st.group
        after = move.after() if move is not None and move.source == self.me.id else tuple(
            m for m in (move.before if move is not None else group) if m != self.me.id)
        self._swap(index, RemoteShard(index, self._specs(after)))
        await shard.aclose()
        self._record(index, GroupRecord(after))
        clear_member(self.config.data_dir, index)
        log.warning("shard %d: this replica left its Raft group (now %s); its journal is removed", index,
                    ", ".join(after))

    def _start_audit(self, index: int, quiet: bool = True) -> None:
        """Check this replica's membership of shard *index* (_audit); with
        *quiet*, it starts no election until the answer."""
        self._audits[index] = asyncio.get_running_loop().create_task(self._audit(index), name=f"audit {index}")
        shard = self.shards[index]
        if quiet:
            self._quiet_audits.add(index)
            if isinstance(shard, RaftShard):
                shard.quiet = True

    async def _audit(self, index: int) -> None:
        """Ask the shard's leader whether this replica is still in the group
        (at start, when it opens a group from the placement or a move
        involved it; later, when it hears no leader). Out: its member is
        closed (removed while it was down or cut off). In (a leader says
        so, or sends this replica its entries), or no answer for 10 s: it
        takes part as its state says."""
        deadline = time.monotonic() + 10.0
        try:
            while time.monotonic() < deadline:
                shard = self.shards[index]
                if not isinstance(shard, RaftShard):
                    return
                if shard.leader is not None:
                    # a leader sends this replica its entries: its group counts it in
                    return
                with shard.reading() as st:
                    move, group = st.move, st.group
                verdict = await self._membership_of(index, move, group)
                if verdict is False:
                    await self._close_left(index, shard)
                    return
                if verdict is True:
                    return
                await asyncio.sleep(0.5)
        finally:
            self._audits.pop(index, None)
            self._quiet_audits.discard(index)
            shard = self.shards[index]
            if isinstance(shard, RaftShard):
                shard.quiet = self._quiet(shard)

    async def _membership_of(self, index: int, move: moves.Move | None, group: tuple[str, ...]) -> bool | None:
        """What the leader of shard *index* says (asked through the members
        this replica knows, then every replica): True if this replica is in
        the group and not being removed, False if out, None when no leader
        answered while some replica did not (True when every replica
        answered and none leads it). Only a leader's word counts: a member
        that lags may not have applied the step that added this replica."""
        me = self.me.id
        known = move.raft_members() if move is not None else group
        first = [r for r in self._specs(known or tuple(x.id for x in self.cluster.members(index))) if r.id != me]
        rest = [r for r in self.cluster.replicas if r.id != me and r not in first]
        silent = 0
        for r in first + rest:
            stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(r.api))
            try:
                info = await stub.ClusterInfo(coordinator_pb2.ClusterInfoRequest(), timeout=2.0)
            except grpc.RpcError:
                silent += 1
                continue
            row = next((x for x in info.shards if x.shard == index and x.role == "leader"), None)
            if row is None:
                continue
            members = list(row.members) or [x.id for x in self.cluster.replicas]  # (empty: every replica)
            if me not in members and self.me.raft_addr(index) not in members:  # (named by its address by a
                return False  # replica whose configuration does not list it yet)
            leaving = row.move_source == me and row.move_phase == moves.Phase.LEAVING
            return None if leaving else True
        # every other replica answered and none leads the shard: a group that
        # starts for the first time (or that lost every member but this one)
        return True if not silent else None

    def group_view(self, shard: RaftShard) -> tuple[tuple[str, ...], moves.Move | None]:
        """Shard's Raft group and its move: during a move, both the source and
        the target; else the members of the Raft group as pysyncobj has
        them here, in the order (preferred leader first) the state records,
        else this replica's group record, else the placement."""
        with shard.reading() as st:
            move, group = st.move, st.group
        if move is not None:
            return move.raft_members(), move
        base = group or self._records.get(shard.index) or tuple(r.id for r in self.cluster.members(shard.index))
        actual = self._raft_ids(shard)
        if actual is None or actual == set(base):
            return base, None
        # the Raft group changed outside a move (hsm-coordinator member add|remove): it is the truth
        return tuple(m for m in base if m in actual) + tuple(sorted(actual - set(base))), None

    def _raft_ids(self, shard: RaftShard) -> set[str] | None:
        """The members of the shard's Raft group as pysyncobj has it here
        (this replica included): replica ids, or the Raft address of a member
        this replica's configuration does not name yet (one added with
        ``member add`` before this replica restarted onto the new list);
        None if the group changed while being read."""
        for _ in range(3):
            try:
                addrs = {shard.self_addr, *shard.peers}
            except RuntimeError:  # the tick thread changed the set meanwhile
                continue
            named = {r.raft_addr(shard.index): r.id for r in self.cluster.replicas}
            return {named.get(a, a) for a in addrs}
        return None

    def _record(self, index: int, record: GroupRecord) -> None:
        """Write shard *index*'s group record (coordinator.groups), and keep its members."""
        write_group(self.config.data_dir, index, record)
        self._records[index] = record.members

    async def _readiness_watch(self) -> None:
        """Readiness also follows the shards' storage (a journal that
        cannot be written, and can again), which no leader change reports."""
        while True:
            await asyncio.sleep(1.0)
            await self._update_readiness()

    async def _update_readiness(self) -> None:
        """Ready (health SERVING): every shard has a leader and this replica
        can write every shard's journal. A replica that cannot (a full disk)
        still forwards and answers reads, but a load balancer should send
        clients elsewhere until it can."""
        problems = [(s.index, p) for s in self.hosted if (p := s.problem)]
        ready = all(s.leader is not None for s in self.shards) and not problems
        if problems != self._problems:
            if problems:
                log.error("replica %s not ready: %s", self.me.id,
                          "; ".join(f"shard {i}: {p}" for i, p in problems[:4]) +
                          (f"; and {len(problems) - 4} more shard(s)" if len(problems) > 4 else ""))
            elif self._problems:
                log.warning("replica %s: every shard's journal can be written again", self.me.id)
            self._problems = problems
        if ready == self._ready_state:
            return
        self._ready_state = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in READINESS_SERVICES:
            await self._health.set(service, status)
        if ready:
            self.ready.set()
            log.info("replica %s: every shard has a leader", self.me.id)
        else:
            self.ready.clear()

    async def step_down(self, timeout: float = 5.0) -> None:
        """Hand the shards this replica leads to other replicas (before a stop)."""
        led = [s for s in self.shards if s.is_leader]
        if not led or len(self.cluster.replicas) == 1:
            return

        async def one(shard: RaftShard) -> None:
            try:
                to = await shard.transfer_leadership(None, timeout)
                log.info("shard %d: leadership handed to %s", shard.index, to)
            except (RaftError, TimeoutError) as exc:
                log.warning("shard %d: could not hand over leadership: %s", shard.index, exc)

        await asyncio.gather(*(one(s) for s in led))

    async def stop(self, grace: float = 2.0, step_down: bool = False) -> None:
        if step_down:
            await self.step_down()
        for service in ("", *READINESS_SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        for t in [*self._tasks, *self._driving.values(), *self._audits.values(), *self._telling]:
            t.cancel()
        for h in self._grace.values():
            h.cancel()
        for s in self.book.close():
            cast(AgentSession, s).end()
        if self._server is not None:
            await self._server.stop(grace)
        for t in [*self._tasks, *self._driving.values(), *self._audits.values(), *self._telling]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for ch in self._channels.values():
            await ch.close()
        await self._close_shards()
        if self.metrics is not None:
            self.metrics.stop()

    async def _close_shards(self) -> None:
        for shard in self.hosted:
            await shard.aclose()

    async def _learn_leaders(self) -> None:
        """Keep the leaders of the shards this replica does not hold known:
        ask their members (``ClusterInfo``, which a member answers for the
        shards it holds) every few seconds, at once when a forward found no
        leader (``_learn``), every half second while one is unknown."""
        while True:
            remote = [s for s in self.shards if isinstance(s, RemoteShard)]
            unknown = [s for s in remote if s.leader is None]
            try:
                await asyncio.wait_for(self._learn.wait(), 0.5 if unknown else LEARN_EVERY)
            except TimeoutError:
                pass
            self._learn.clear()
            try:
                await self.learn_leaders_once(remote)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("learning the leaders of other replicas' shards failed")

    async def learn_leaders_once(self, remote: Sequence[RemoteShard]) -> None:
        """One round of :meth:`_learn_leaders`: each replica that is a member
        of some of *remote* asked once, the preferred leaders' replicas first."""
        todo = {s.index: s for s in remote}
        asked: set[str] = set()
        while todo:
            counts: dict[str, int] = {}
            for s in todo.values():
                for r in s.members:
                    if r.id not in asked and r.id != self.me.id:
                        counts[r.id] = counts.get(r.id, 0) + 1
            if not counts:
                # the members we knew hold it no more (moved): any replica may
                counts = {r.id: 0 for r in self.cluster.replicas if r.id not in asked and r.id != self.me.id}
            if not counts:
                break
            rid = max(counts, key=lambda k: counts[k])
            asked.add(rid)
            r = self.cluster.replica(rid)
            stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(r.api))
            try:
                info = await stub.ClusterInfo(coordinator_pb2.ClusterInfoRequest(), timeout=2.0)
            except grpc.RpcError as exc:
                log.debug("leaders: replica %s at %s did not answer: %s", rid, r.api, exc.details())
                continue
            now = time.monotonic()
            for st in info.shards:
                shard = todo.get(st.shard)
                if shard is None or st.role not in ("leader", "follower"):
                    continue  # only a member's word counts
                if st.members and tuple(st.members) != tuple(m.id for m in shard.members):
                    log.info("shard %d: its group is now %s", shard.index, ", ".join(st.members))
                    shard.members = self._specs(st.members)
                shard.move = st.move
                leader = next((m for m in shard.members if m.id == st.leader), None)
                addr = leader.raft_addr(shard.index) if leader is not None else None
                if addr != shard.leader:
                    log.info("shard %d (held by %s): leader now %s", shard.index,
                             ", ".join(m.id for m in shard.members), st.leader or "unknown")
                    shard.leader = addr
                    asyncio.ensure_future(self._update_readiness())
                shard.term, shard.commit_index, shard.applied_index = st.term, st.commit_index, st.applied_index
                shard.learned = now
                if addr is not None:
                    del todo[st.shard]

    # --------------------------------------------------------------- shards

    def shard_of_fid(self, fid: Fid) -> RaftShard:
        return self.shards[self.ring.shard_of(fid)]

    def shard_of_action(self, action_id: int) -> RaftShard | None:
        """The shard an action id names (its last digits), or the shard a
        split moved the action to (:meth:`shards_of_actions`)."""
        return self.shards_of_actions((action_id,)).get(action_id)

    def shards_of_actions(self, action_ids: Iterable[int]) -> dict[int, RaftShard]:
        """Each action's shard: the one its id names (its last digits), or,
        when a split moved it, the one the old shard's tombstone names (read
        here whenever the old shard is held here, whatever ring this
        replica routes by: a moved action can start on its new shard before
        this replica takes the new ring), or, when the shard its id names is
        held elsewhere, one held here that has it. Ids of no shard are left
        out. One look at each old shard's state for all its ids."""
        by_suffix: dict[int, list[int]] = {}
        for i in action_ids:
            by_suffix.setdefault(i % MAX_SHARDS, []).append(i)
        out: dict[int, RaftShard] = {}
        n = len(self.shards)
        for idx, ids in by_suffix.items():
            if idx >= n:
                continue
            shard = self.shards[idx]
            if isinstance(shard, RaftShard):
                with shard.reading() as st:
                    moved = st.moved_to
                    targets = [moved.get(i) for i in ids] if moved else None
                for k, i in enumerate(ids):
                    t = targets[k] if targets is not None else None
                    out[i] = self.shards[t] if t is not None and t < n else shard  # type: ignore[assignment]
                continue
            split_seen = self.ring.version > 1 or self.ring_record.pending
            for i in ids:
                found = None
                if split_seen:  # moved to a shard held here?
                    for held in self.hosted:
                        with held.reading() as st:
                            if i in st.actions:
                                found = held
                                break
                out[i] = found or shard  # type: ignore[assignment]
        return out

    def members_of(self, index: int) -> list[str]:
        """The replica ids of a shard's group: as applied here when this
        replica holds it, as its members said otherwise; empty when the
        cluster has no placement and the group never changed (every replica)."""
        shard = self.shards[index]
        every = {r.id for r in self.cluster.replicas}
        if isinstance(shard, RaftShard):
            ids, move = self.group_view(shard)
            return list(ids) if self.cluster.placement or move is not None or set(ids) != every else []
        if not self.cluster.placement and {r.id for r in shard.members} == every:
            return []
        return [r.id for r in shard.members]

    def group_fields(self, shard: RaftShard | RemoteShard) -> dict[str, Any]:
        """ShardStatus fields of the shard's group and move (hosted shards)."""
        out: dict[str, Any] = {"members": self.members_of(shard.index)}
        if isinstance(shard, RaftShard):
            with shard.reading() as st:
                move = st.move
            if move is not None:
                out.update(move=move.text(), move_source=move.source, move_target=move.target,
                           move_phase=int(move.phase))
        return out

    async def cluster_status(self, digest: bool = False) -> coordinator_pb2.StatusResponse:
        """:meth:`status` of the whole cluster: the shards held here as this
        replica sees them, each other shard as a member of its group sees it
        (its leader first), the counts summed over all. A shard no member
        of which answers is listed with its problem and without counts."""
        out = self.status(digest)
        remote = [s for s in self.shards if isinstance(s, RemoteShard)]
        if not remote:
            return out
        todo = {s.index: s for s in remote}
        asked: set[str] = set()
        totals = {(c.kind, c.state): c.count for c in out.counts}
        modes = {out.control} if out.control else set()
        rows = list(out.shards)
        while todo:
            choice: dict[str, list[int]] = {}
            for s in todo.values():
                lead = self.leader_id(s)
                order = ([lead] if lead else []) + [m.id for m in s.members]
                rid = next((r for r in order if r not in asked and r != self.me.id), None)
                if rid is not None:
                    choice.setdefault(rid, []).append(s.index)
            if not choice:
                break

            async def ask(rid: str, idx: list[int]) -> coordinator_pb2.StatusResponse | None:
                stub = coordinator_pb2_grpc.CoordinatorStub(self.channel(self.cluster.replica(rid).api))
                try:
                    resp: coordinator_pb2.StatusResponse = await stub.Status(
                        coordinator_pb2.StatusRequest(digest=digest, shards=idx), timeout=3.0)
                    return resp
                except grpc.RpcError as exc:
                    log.debug("status: replica %s did not answer: %s", rid, exc.details())
                    return None

            answers = await asyncio.gather(*(ask(rid, idx) for rid, idx in choice.items()))
            asked.update(choice)
            for resp in answers:
                if resp is None:
                    continue
                for row in resp.shards:
                    if row.shard in todo:
                        del todo[row.shard]
                        rows.append(row)
                        for c in row.counts:
                            totals[(c.kind, c.state)] = totals.get((c.kind, c.state), 0) + c.count
                if resp.control:
                    modes.add(resp.control)
        for s in todo.values():
            rows.append(coordinator_pb2.ShardStatus(
                shard=s.index, leader=self.leader_id(s), members=self.members_of(s.index),
                problem=f"no member of its group ({', '.join(m.id for m in s.members)}) answered {self.me.id}"))
        del out.shards[:]
        out.shards.extend(sorted(rows, key=lambda r: r.shard))
        del out.counts[:]
        out.counts.extend(coordinator_pb2.KindCount(kind=k, state=st, count=n)
                          for (k, st), n in sorted(totals.items()) if n)
        out.control = modes.pop() if len(modes) == 1 else "mixed (" + ",".join(sorted(modes)) + ")"
        return out

    def leader_api(self, shard: RaftShard | RemoteShard) -> str:
        r = self.cluster.by_raft_addr(shard.index, shard.leader)
        return r.api if r is not None else ""

    def leader_id(self, shard: RaftShard | RemoteShard) -> str:
        r = self.cluster.by_raft_addr(shard.index, shard.leader)
        return r.id if r is not None else ""

    def require_leader(self, shard: RaftShard) -> None:
        if not shard.is_leader:
            raise ShardUnavailable(shard.index, self.leader_api(shard))

    async def propose(self, shard: RaftShard, cmd: Command, attempts: int = 3) -> Result:
        """Replicate one command; retried on timeout (commands are idempotent:
        submits by key, the others by action id and attempt)."""
        [res] = await self.propose_all(shard, (cmd,), attempts)
        return res

    async def propose_all(self, shard: RaftShard, cmds: Sequence[Command], attempts: int = 3) -> list[Result]:
        """Replicate commands in one Raft entry, applied in order; retried
        on timeout like :meth:`propose`."""
        for attempt in range(1, attempts + 1):
            try:
                return await shard.propose(list(cmds), self.config.propose_timeout)
            except NotLeader as exc:
                r = self.cluster.by_raft_addr(shard.index, exc.leader)
                raise ShardUnavailable(shard.index, r.api if r else "") from None
            except ProposalTimeout:
                log.warning("shard %d: %s not confirmed in %.0f s (try %d of %d)", shard.index,
                            "+".join(type(c).__name__ for c in cmds), self.config.propose_timeout, attempt,
                            attempts)
            except RaftError as exc:
                raise ShardUnavailable(shard.index, "", f"shard {shard.index}: {exc}") from None
            except ValueError as exc:  # more than one entry carries; nothing was proposed
                raise RequestTooLarge(str(exc)) from None
        raise ShardUnavailable(shard.index, "", f"shard {shard.index}: the cluster did not confirm the "
                               "request in time; retry (the same request is never applied twice)")

    def check_fits(self, cmds: Sequence[Command], estimate: int) -> None:
        """RequestTooLarge if *cmds* encode to more than one Raft entry
        carries. They are encoded here (as ``RaftShard.propose`` does) only
        when *estimate*, an upper bound of that size, is over the limit: a
        request split over several shards checks every part this way before
        it proposes any, so that a refused one changes nothing."""
        most = self.config.raft.max_command_bytes
        if estimate <= most:
            return
        size = len(pickle.dumps(tuple(cmds), protocol=pickle.HIGHEST_PROTOCOL))
        if size > most:
            raise RequestTooLarge(f"the request encodes to {size} bytes for one shard, more than one Raft entry "
                                  f"may carry ({most}); send fewer items per request")

    # ------------------------------------------------------ Raft callbacks

    def _on_applied(self, index: int, res: Result, proposed_here: bool) -> None:
        shard = self.shards[index]
        changed: dict[int, None] = {}
        metrics = self.metrics
        ended = False
        leads: bool | None = None  # asked once, when needed
        for eff in res.effects:
            if isinstance(eff, Changed):
                changed[eff.action_id] = None
            elif isinstance(eff, PolicyChanged):
                if eff.version > self.policy_version:
                    with shard.reading() as st:
                        self._use_policy(st.policy_version, st.policy)
            elif isinstance(eff, Ended | Requeued | FirstStart):
                ended = ended or isinstance(eff, Ended)
                if metrics is not None:
                    if leads is None:
                        leads = shard.is_leader
                    if leads:
                        metrics.effect(eff)
            elif isinstance(eff, SendCancel) and shard.is_leader:
                self._send_cancel(eff.agent, eff.action_id, eff.attempt, "canceled")
            elif isinstance(eff, MoveChanged) and isinstance(shard, RaftShard):
                self._after_move(shard)
            elif isinstance(eff, ReshardChanged) and isinstance(shard, RaftShard):
                self.resharder.wake.set()
                with shard.reading() as st:
                    r = st.reshard
                if r is not None and r.phase == split.Phase.DONE and r.version > self.ring.version:
                    # every replica that holds shard 0 takes the new ring as it applies the end of the split
                    asyncio.ensure_future(self.take_ring(self.ring_after(r)))
            # Assigned: sent by the dispatcher that proposed it
        if changed:
            self._wake.set()
            self._notify(shard, changed)
        if ended and shard.is_leader:
            self._events_ev.set()  # a ReadEvents waiting for a record looks again
            self._events_ev = asyncio.Event()

    def seed_policy(self) -> Policy:
        """The policy this replica's configuration gives (the cluster's
        first version, before any ``hsmctl policy set``)."""
        c = self.config
        return seeded(c.max_attempts, c.progress_timeout, c.agent_grace, c.max_terminal, c.user_request_mask)

    def _use_policy(self, version: int, policy: Policy) -> None:
        """A newer policy applied on a shard here: what the replica keeps
        outside the shards follows it."""
        if version <= self.policy_version:
            return
        old, self.policy, self.policy_version = self.policy, policy, version
        grace = policy.settings.agent_grace
        if grace != self.book.agent_grace:
            # a new Welcome's lease follows the new grace; an agent welcomed
            # before keeps the grace its lease was given for (AgentBook.grace_of)
            self.book.agent_grace = grace
            self.agent_lease, self.agent_lease_safe = agent_lease(
                grace, self.config.heartbeat_interval, self.config.raft.leader_fallback)
        if old.settings != policy.settings or version == 1:
            log.info("policy version %d applies here: %s", version, _settings_text(policy))
        for cb in self.on_policy:
            cb(policy)
        self._wake.set()

    def _adopt_newest_policy(self) -> None:
        """Follow the newest policy any shard here has applied. A replica
        that leads no shard may not be handed a follower's effects (no
        PolicyChanged reaches it): without this, one that took over a shard
        later kept deciding by its old policy (an open batch never opened:
        tagged archives held for good)."""
        version, newest = self.policy_version, None
        for shard in self.hosted:
            with shard.reading() as st:
                if st.policy_version > version:
                    version, newest = st.policy_version, st.policy
        if newest is not None:
            self._use_policy(version, newest)

    def policy_problems(self, policy: Policy) -> list[str]:
        """What makes *policy* wrong for this cluster though its document is
        valid: archive ids it names that are not configured, an agent_grace
        too short for the agents' leases."""
        problems = []
        known = set(self.config.archive_ids)
        shown = ", ".join(map(str, sorted(known)))
        for archive_id, _n in policy.settings.max_running_per_archive:
            if archive_id not in known:
                problems.append(f"settings.max_running_per_archive: archive id {archive_id} is not configured "
                                f"(configured: {shown})")
        for rule in policy.rules:
            if rule.archive_id and rule.archive_id not in known:
                problems.append(f"line {rule.line}: rule {rule.name!r} sets archive id {rule.archive_id}, which is "
                                f"not configured (configured: {shown})")
        grace = policy.settings.agent_grace
        _lease, safe = agent_lease(grace, self.config.heartbeat_interval, self.config.raft.leader_fallback)
        if not safe and grace != self.policy.settings.agent_grace:  # (one in force already was warned about)
            least = self.config.raft.leader_fallback + 2 * AGENT_LEASE_MIN_HEARTBEATS * self.config.heartbeat_interval
            problems.append(f"settings.agent_grace: {grace:g} s is too short for the agents' leases (two runs "
                            f"of one action could overlap): at least {least:g} s (raft leader_fallback "
                            f"{self.config.raft.leader_fallback:g} s + 2 x {AGENT_LEASE_MIN_HEARTBEATS} heartbeats "
                            f"of {self.config.heartbeat_interval:g} s)")
        return problems

    def _limits_from(self, policy: Policy) -> None:
        led = sum(1 for s in self.shards if s.is_leader)
        total = len(self.shards) or self.cluster.shards
        self.limits.configure(policy, max(led, 1) / max(total, 1))

    def policy_warnings(self, policy: Policy) -> list[str]:
        """What *policy* will do that the admin may not expect, as this
        replica sees the agents now: tags its rules set that no connected
        agent serves (those actions wait until one does)."""
        served = {t for s in self.sessions.values() if s.alive for t in s.tags}
        out = []
        for rule in policy.rules:
            if rule.tag and rule.tag not in served:
                out.append(f"line {rule.line}: rule {rule.name!r} sets tag {rule.tag!r}, which no connected agent "
                           "serves: its actions wait until an agent started with --tags "
                           f"{rule.tag} connects")
        return out

    def _masks_from(self, policy: Policy) -> None:
        if self.edge is not None:
            self.edge.masks = {r: policy.mask(r) for r in MASKED_ROLES}

    async def _seed_policy(self, shard: RaftShard) -> None:
        """A shard without a policy yet gets one as soon as a leader has it:
        the newest any shard here has, or this replica's configuration."""
        with shard.reading() as st:
            if st.policy_version:
                return
        version, policy = self.policy_version, self.policy
        text = policy.text if version else self.seed_policy().dump()
        try:
            res = await self.propose(shard, SetPolicy(self.clock(), max(version, 1), text, f"replica {self.me.id}"))
        except ShardUnavailable as exc:
            log.info("shard %d: first policy not set yet: %s", shard.index, exc)
            return
        reply = res.replies[0]
        if isinstance(reply, PolicyReply) and reply.error:
            log.warning("shard %d: first policy not set: %s", shard.index, reply.error)

    def _notify(self, shard: RaftShard, action_ids: Iterable[int]) -> None:
        wanted = [i for i in action_ids if i in self._watchers]
        if not wanted:
            return
        with shard.reading() as st:
            pbs = [(i, convert.action_to_pb(a, shard.index)) for i in wanted if (a := st.get(i)) is not None]
        for i, pb in pbs:
            for q in self._watchers.get(i, ()):
                q.put_nowait(pb)

    def _on_reset(self, index: int) -> None:
        shard = self.shards[index]
        self._notify(shard, [i for i in self._watchers if i % MAX_SHARDS == index])
        self._wake.set()

    def _on_leader_change(self, index: int, info: LeaderInfo) -> None:
        shard = self.shards[index]
        log.info("shard %d: leader now %s (term %d)%s", index, self.leader_id(shard) or "unknown", info.term,
                 " - this replica" if info.is_leader else "")
        asyncio.ensure_future(self._update_readiness())
        self._limits_from(self.policy)  # its share of the cluster's rate limits follows what it leads
        if info.ready:
            # we lead now: cancels the old leader sent may be lost, agents
            # that vanished while another replica led get their grace period
            with shard.reading() as st:
                held = {agent: [(a.id, a.attempt, a.state) for a in st.held_by(agent)] for agent in list(st.by_agent)}
                for stripe in st.stripes.values():  # an agent that holds only parts gets its grace period too
                    for _i, agent, _n in stripe.running():
                        held.setdefault(agent, [])
            plan = self.book.leader_ready(held, self.clock())
            for agent, action_id, attempt in plan.cancels:
                self._send_cancel(agent, action_id, attempt, "canceled")
            for agent in plan.grace:
                self._grace_timer(agent)
            # ask every agent what it runs: what the old leader assigned but
            # never delivered is requeued, what no one holds is stopped
            for session in plan.ask:
                self._ask_running(cast(AgentSession, session))
            asyncio.ensure_future(self._seed_policy(shard))
            self._wake.set()

    def _action_text(self, action_id: int, attempt: int | None = None) -> str:
        """``ID/ATTEMPT KIND FID`` for a log line about an action (the
        prefix hsm.logsetup reads); kind and FID while the state has it."""
        head = str(action_id) if attempt is None else f"{action_id}/{attempt}"
        shard = self.shard_of_action(action_id)
        if shard is None:
            return head
        with shard.reading() as st:
            a = st.get(action_id)
            return head if a is None else f"{head} {a.kind.name} {a.fid}"

    def _send_cancel(self, agent: str, action_id: int, attempt: int, reason: str) -> None:
        session = self.sessions.get(agent)
        if session is None or not session.alive:
            log.info("action %s: cancel for agent %s held until it reconnects", self._action_text(action_id, attempt),
                     agent)
            return
        log.info("action %s: cancel sent to agent %s", self._action_text(action_id, attempt), agent)
        session.send(agent_pb2.CoordinatorMessage(
            cancel=[agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason=reason)]))

    # ----------------------------------------------------------- dispatcher

    async def _dispatcher(self) -> None:
        rr = itertools.count()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._dispatch_round(next(rr)):
                    pass
                self._send_backlogs()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher round failed")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _dispatch_round(self, turn: int, per_round: int = 256) -> bool:
        """One round: every shard led here offered to every agent with
        credits (``scheduler.plan_round``, starting with another agent and
        another shard each turn), one ``AssignRound`` per shard, proposed
        together. True if anything was assigned."""
        now = self.clock()
        self._adopt_newest_policy()
        parts = await self._dispatch_parts(now)
        self.outlook.look(self._states(), now, self.policy.batch_size > 0,
                          {s.index for s in self.shards if s.leader_ready})
        sessions, planned = scheduler.plan_round(
            turn, cast(list[AgentSession], self.book.dispatchable()),
            [s for s in self.shards if s.leader_ready], RaftShard.reading, per_round, now,
            scheduler.budget_for(self.policy.settings, self._states()),
            self._affinity(), self.outlook)
        if not planned:
            return parts
        rounds = [(shard, AssignRound(now, assignments)) for shard, assignments in planned]
        by_agent = {s.agent_id: s for s in sessions}
        sent = await asyncio.gather(*(self._assign(shard, cmd, by_agent) for shard, cmd in rounds))
        return any(sent) or parts

    async def _dispatch_parts(self, now: float) -> bool:
        """The parts of striped archives (``ShardState.stripes``) waiting on
        the shards led here, each to an agent with a free archive credit that
        serves the action's archive id and tag, at most one part of a stripe
        per agent at a time (``Stripe.choose``): before other work, since
        their archive has begun. True if any was sent."""
        sessions: list[AgentSession] = []
        free: dict[str, int] = {}
        sent = False
        for shard in self.shards:
            if not shard.leader_ready:
                continue
            cmds: list[AssignParts] = []
            with shard.reading() as st:
                if not st.stripes or st.control != "enabled":
                    continue
                if not sessions:
                    sessions = cast(list[AgentSession], self.book.dispatchable())
                    free = {s.agent_id: s.usable().get(Kind.ARCHIVE, 0) for s in sessions}
                for action_id, stripe in st.stripes.items():
                    if stripe.phase != StripePhase.PARTS or not any(
                            p.state == PartState.WAITING for p in stripe.parts):
                        continue
                    action = st.actions[action_id]
                    mine = {s.agent_id: free[s.agent_id] for s in sessions
                            if free[s.agent_id] > 0 and _takes_parts(st, s, action)}
                    runs = stripe.choose(mine)
                    for r in runs:
                        free[r.agent] -= 1
                    if runs:
                        cmds.append(AssignParts(now, action_id, tuple((r.index, r.agent, r.attempt) for r in runs)))
            by_agent = {s.agent_id: s for s in sessions}
            for cmd in cmds:
                sent = await self._assign_parts(shard, cmd, by_agent) or sent
        return sent

    async def _assign_parts(self, shard: RaftShard, cmd: AssignParts, sessions: dict[str, AgentSession]) -> bool:
        """Commit one stripe's part assignments and send each to its agent."""
        try:
            res = await self.propose(shard, cmd)
        except ShardUnavailable as exc:
            log.info("shard %d: no parts dispatched: %s", shard.index, exc)
            return False
        out: list[tuple[AgentSession, agent_pb2.Assignment]] = []
        with shard.reading() as st:
            stripe = st.stripes.get(cmd.action_id)
            action = st.get(cmd.action_id)
            for eff in res.effects:
                if not isinstance(eff, PartAssigned) or stripe is None or action is None:
                    continue
                session = self.book.current(sessions[eff.agent]) if eff.agent in sessions else None
                if session is None:
                    continue  # its agent learns through reconcile, or loses it with its grace
                session = cast(AgentSession, session)
                self.book.assigned(session, Kind.ARCHIVE)
                pb = convert.assignment_to_pb(action, shard=shard.index)
                pb.attempt = eff.attempt
                pb.extent.CopyFrom(types_pb2.Extent(offset=eff.offset, length=eff.length))
                pb.copies_left = 0
                pb.stripe.CopyFrom(agent_pb2.StripeOrder(part=eff.index + 1, parts=len(stripe.parts),
                                                         data_version=stripe.data_version, size=stripe.size))
                out.append((session, pb))
                log.info("action %d/%d %s %s: part %d of %d (bytes %d to %d) assigned to %s", action.id,
                         action.attempt, action.kind.name, action.fid, eff.index + 1, len(stripe.parts),
                         eff.offset, eff.offset + eff.length, eff.agent)
        for session, pb in out:
            session.send(agent_pb2.CoordinatorMessage(assign=[pb]))
        return bool(out)

    def _states(self) -> Iterator[ShardState]:
        """Every shard's state held here in turn, each read under its lock."""
        for shard in self.hosted:
            with shard.reading() as st:
                yield st

    def _affinity(self) -> scheduler.Affinity:
        """The agents a tagged action or a volume's restore may go to: every
        live session's, less the drained agents."""
        drained: set[str] = set()
        for shard in self.hosted:
            with shard.reading() as st:
                drained.update(st.drained)
        return scheduler.Affinity([(s.agent_id, s.tags, s.archive_ids) for s in self.sessions.values()
                                   if s.alive and s.agent_id not in drained])

    async def _assign(self, shard: RaftShard, cmd: AssignRound, sessions: dict[str, AgentSession]) -> bool:
        """Commit one shard's round and send each agent its assignments, on
        the session the round was planned for (a session that ended
        meanwhile sends nothing: its agent learns on reconnect, through
        reconcile, or its actions are requeued after the grace period)."""
        try:
            res = await self.propose(shard, cmd)
        except ShardUnavailable as exc:
            log.info("shard %d: no dispatch: %s", shard.index, exc)
            return False
        per_agent: dict[str, list[agent_pb2.Assignment]] = {}
        with shard.reading() as st:
            for eff in res.effects:
                if isinstance(eff, Assigned):
                    action = st.get(eff.action_id)
                    session = self.book.current(sessions[eff.agent])
                    if (session is None or action is None or action.state != State.STARTED
                            or action.agent != eff.agent or action.attempt != eff.attempt):
                        # the agent's session ended, or the action moved on since
                        # (a leader catching up): its agent learns through reconcile
                        continue
                    sessions[eff.agent] = cast(AgentSession, session)
                    self.book.assigned(session, action.kind)
                    copy = None
                    if action.kind != Kind.ARCHIVE:  # the copy a restore reads, a remove deletes
                        copy = next((c for c in st.catalog.of(action.fsname, action.fid)
                                     if c.archive_id == action.archive_id), None)
                    pb = convert.assignment_to_pb(action, copy, shard.index)
                    order = _stripe_order(st, action) if session.stripes else None
                    if order is not None:
                        pb.stripe.CopyFrom(order)
                    per_agent.setdefault(eff.agent, []).append(pb)
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("action %d/%d %s %s: assigned to %s", action.id, action.attempt,
                                  action.kind.name, action.fid, eff.agent)
        for agent, assignments in per_agent.items():
            sessions[agent].send(agent_pb2.CoordinatorMessage(assign=assignments))
        return bool(per_agent)

    def _send_backlogs(self, stalled_only: bool = False) -> None:
        """Tell each agent how much work for it is ready on the shards this
        replica leads, when that changed: an agent with few slots and
        streams to several replicas grants its credits where work waits.
        With *stalled_only*: again, changed or not, to each agent that has
        work waiting here and no credit here (the agent answers with its
        whole grant, so both sides agree again whatever was lost)."""
        led = [s for s in self.shards if s.leader_ready]
        affinity = self._affinity()
        now = self.clock()
        # a tag's owner with no credit left: the tag's other agents are told of its work
        room = {s.agent_id: scheduler.Offer(s.agent_id, s.archive_ids, s.usable())
                for s in self.sessions.values() if s.alive}
        for session in self.sessions.values():
            if not session.alive:
                continue
            ready = {k: 0 for k in Kind}
            for shard in led:
                with shard.reading() as st:
                    scheduler.count_ready(st, session.agent_id, session.archive_ids, ready, affinity, self.outlook,
                                          now, room)
                    if st.stripes:
                        ready[Kind.ARCHIVE] += _parts_for(st, session)
            hint = backlog_hint(session, ready, stalled_only)
            if hint is not None:
                session.send(agent_pb2.CoordinatorMessage(backlog=_slots_to_pb(hint)))

    async def _reclaimer(self) -> None:
        """Leader side of the adaptive timeout: running actions whose agent
        reported no progress for ``progress_timeout`` (the policy's: 0,
        never) are reclaimed."""
        while True:
            timeout = self.policy.settings.progress_timeout
            await asyncio.sleep(min(max(timeout / 4, 0.2), 10.0) if timeout else 1.0)
            if not self.policy.settings.progress_timeout:
                continue
            for shard in self.shards:
                if not shard.leader_ready:
                    continue
                with shard.reading() as st:
                    stale = st.stale(self.clock())
                    parts = st.stale_parts(self.clock()) if st.stripes else []
                if not stale and not parts:
                    continue
                log.warning("shard %d: reclaiming %d action(s) and %d part(s) without progress for %.0f s: %s",
                            shard.index, len(stale), len(parts), self.policy.settings.progress_timeout,
                            ",".join(map(str, stale[:20] + [a for a, _w in parts[:20]])))
                try:
                    await self.propose(shard, Reclaim(self.clock(), tuple(stale), parts=tuple(parts)))
                except ShardUnavailable as exc:
                    log.info("shard %d: reclaim postponed: %s", shard.index, exc)

    # ------------------------------------------------------------- watchers

    def watch(self, action_ids: Iterable[int]) -> asyncio.Queue[types_pb2.Action]:
        q: asyncio.Queue[types_pb2.Action] = asyncio.Queue()
        for i in action_ids:
            self._watchers.setdefault(i, set()).add(q)
        return q

    def unwatch(self, action_ids: Iterable[int], q: asyncio.Queue[types_pb2.Action]) -> None:
        for i in action_ids:
            ws = self._watchers.get(i)
            if ws is not None:
                ws.discard(q)
                if not ws:
                    del self._watchers[i]

    # ----------------------------------------------------------- forwarding

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            if self.config.tls is None:
                ch = grpc.aio.insecure_channel(address, options=PEER_OPTIONS)
            else:
                ch = grpc.aio.secure_channel(address, channel_credentials(self.config.tls), options=PEER_OPTIONS)
            self._channels[address] = ch
        return ch

    async def forward(self, shard: RaftShard | RemoteShard, method: str, request: Any, timeout: float,
                      metadata: tuple[tuple[str, str], ...] = (),
                      passthrough: tuple[grpc.StatusCode, ...] = ()) -> Any:
        """Call a Coordinator RPC on the shard's leader (a request part this
        replica cannot serve itself); ShardUnavailable when there is none or
        it fails, except for the *passthrough* codes (raised as they come)."""
        leader = self.leader_api(shard)
        if not leader or leader == self.me.api:
            self.leader_lost(shard)
            raise ShardUnavailable(shard.index, "")
        call = getattr(coordinator_pb2_grpc.CoordinatorStub(self.channel(leader)), method)
        try:
            try:
                return await call(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or "connect" not in (exc.details() or ""):
                    raise
                # the channel may still be backing off from an attempt made
                # before the leader listened: wait for it, briefly
                return await call(request, timeout=min(timeout, 2.0), metadata=metadata, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() in passthrough:
                raise
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
                self.leader_lost(shard)
            raise ShardUnavailable(shard.index, "", f"shard {shard.index}: {method} on the leader {leader} failed: "
                                   f"{exc.details()}") from None

    def leader_lost(self, shard: RaftShard | RemoteShard) -> None:
        """A shard held elsewhere did not answer on the leader we knew: ask its members again."""
        if isinstance(shard, RemoteShard):
            self._learn.set()

    async def on_every_shard(self, shards: Iterable[int], command: Callable[[int], Command], method: str,
                             request: Callable[[int], Any], reply: Callable[[RaftShard, Any], T],
                             check: Callable[[Result], None] | None = None) -> list[T]:
        """Apply ``command(index)`` on each of *shards* (all when empty),
        through this replica for the shards it leads and through the
        leader's *method* (with ``request(index)``) for the others.
        ``check(result)`` sees a local apply's result (it raises to refuse:
        the leader's servicer does the same for a forwarded part).
        ``reply(shard, None)`` is read here after a local apply,
        ``reply(shard, response)`` otherwise."""

        async def one(idx: int) -> T:
            shard = self.shards[idx]
            if shard.is_leader:
                try:
                    res = await self.propose(shard, command(idx))
                    if check is not None:
                        check(res)
                    return reply(shard, None)
                except ShardUnavailable:
                    pass
            response = await self.forward(shard, method, request(idx), self.config.propose_timeout * 2)
            return reply(shard, response)

        return list(await asyncio.gather(*(one(i) for i in sorted(set(shards) or range(len(self.shards))))))

    def agent_known(self, agent_id: str) -> bool:
        """Connected here, in its grace period, holding actions or drained."""
        if self.book.known(agent_id):
            return True
        for shard in self.hosted:
            with shard.reading() as st:
                if agent_id in st.by_agent or agent_id in st.drained:
                    return True
        return False

    def held_counts(self, shard: RaftShard, agent_id: str) -> dict[Kind, int]:
        with shard.reading() as st:
            counts = {k: 0 for k in Kind}
            for a in st.held_by(agent_id):
                counts[a.kind] += 1
        return counts

    async def forward_report(self, agent_id: str, shard: RaftShard, progress: Sequence[agent_pb2.Progress],
                             done: Sequence[agent_pb2.Done], session: AgentSession | None = None,
                             deadline: float | None = None) -> None:
        """Hand an agent's reports for a shard led elsewhere to its leader,
        retrying through elections for up to *deadline* seconds (default:
        two propose timeouts); then acknowledge the completions on
        *session*. Completions that could not be handed over are not
        acknowledged: the agent keeps them and sends them again."""
        end = time.monotonic() + (2 * self.config.propose_timeout if deadline is None else deadline)
        delay = 0.1
        while True:
            if shard.is_leader:
                try:
                    await self._apply_reports(agent_id, shard, progress, done)
                    self._ack(session, done)
                    return
                except ShardUnavailable:
                    pass
            leader = self.leader_api(shard)
            if leader and leader != self.me.api:
                stub = agent_pb2_grpc.AgentServiceStub(self.channel(leader))
                try:
                    await stub.Report(agent_pb2.ReportRequest(agent_id=agent_id, progress=progress, done=done),
                                      timeout=self.config.propose_timeout)
                    self._ack(session, done)
                    return
                except grpc.RpcError as exc:
                    self.leader_lost(shard)
                    log.info("shard %d: forwarding %d completion(s) of %s to %s failed: %s", shard.index,
                             len(done), agent_id, leader, exc.details())
            else:
                self.leader_lost(shard)
            if time.monotonic() > end:
                if done:
                    log.warning("shard %d: could not hand %d completion(s) of agent %s to a leader (none "
                                "reachable); the agent keeps them and sends them again", shard.index, len(done),
                                agent_id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _ack(session: AgentSession | None, done: Sequence[agent_pb2.Done]) -> None:
        """Tell the agent these completions are applied (or were stale): it forgets them."""
        if session is not None and done:
            session.send(agent_pb2.CoordinatorMessage(applied=[
                agent_pb2.RunningAction(action_id=d.action_id, attempt=d.attempt) for d in done]))

    async def _apply_reports(self, agent_id: str, shard: RaftShard, progress: Sequence[agent_pb2.Progress],
                             done: Sequence[agent_pb2.Done]) -> None:
        """Progress and completions of one message for one shard: one entry
        (several when they are more than one entry carries)."""
        now = self.clock()
        for d in done:
            if d.errno:  # successes are per-action noise at 10k/s; the agent logs each one
                log.info("action %s: ended on %s with errno %d: %r", self._action_text(d.action_id, d.attempt),
                         agent_id, d.errno, d.message[:1024])  # as kept: an agent's text cannot flood the log
        reports: list[ProgressReport | Completion] = [
            ProgressReport(p.action_id, p.attempt, p.bytes_done, p.bytes_total) for p in progress]
        reports += [Completion(d.action_id, d.attempt, d.errno, d.message[:1024], d.retry, d.bytes_done, d.handback,
                               convert.copy_facts_from_pb(d) if not d.errno else None, d.anchored)
                    for d in done]
        await self._propose_reports(agent_id, shard, now, reports)

    async def _propose_reports(self, agent_id: str, shard: RaftShard, now: float,
                               reports: Sequence[ProgressReport | Completion]) -> None:
        """Propose *reports* (progress first, then completions) in one entry,
        or in halves when they are too many for one: each report stands alone."""
        cmds: list[Command] = []
        progress = tuple(r for r in reports if isinstance(r, ProgressReport))
        done = tuple(r for r in reports if isinstance(r, Completion))
        if progress:
            cmds.append(Progress(now, progress, agent_id))
        if done:
            cmds.append(Complete(now, done, agent_id))
        if not cmds:
            return
        try:
            await self.propose_all(shard, cmds)
        except RequestTooLarge:
            if len(reports) < 2:
                raise
            half = len(reports) // 2
            await self._propose_reports(agent_id, shard, now, reports[:half])
            await self._propose_reports(agent_id, shard, now, reports[half:])

    async def route_reports(self, agent_id: str, progress: Sequence[agent_pb2.Progress],
                            done: Sequence[agent_pb2.Done], session: AgentSession | None = None) -> None:
        """Apply reports for shards led here; forward the others. The
        completions are acknowledged on *session* once applied."""
        per_shard: dict[int, tuple[list[agent_pb2.Progress], list[agent_pb2.Done]]] = {}
        where = self.shards_of_actions([p.action_id for p in progress] + [d.action_id for d in done])
        for p in progress:
            if (s := where.get(p.action_id)) is not None:
                per_shard.setdefault(s.index, ([], []))[0].append(p)
        for d in done:
            if (s := where.get(d.action_id)) is not None:
                per_shard.setdefault(s.index, ([], []))[1].append(d)

        async def one(shard: RaftShard, ps: list[agent_pb2.Progress], ds: list[agent_pb2.Done]) -> None:
            if shard.is_leader:
                try:
                    await self._apply_reports(agent_id, shard, ps, ds)
                    self._ack(session, ds)
                    return
                except ShardUnavailable:
                    pass
            asyncio.ensure_future(self.forward_report(agent_id, shard, ps, ds, session))

        # the shards' entries are committed together, not one after another
        await asyncio.gather(*(one(self.shards[idx], ps, ds) for idx, (ps, ds) in per_shard.items()))

    # --------------------------------------------------------------- agents

    async def agent_hello(self, hello: agent_pb2.Hello, peer: str) -> AgentSession:
        agent_id = hello.agent_id
        for value, what, most, empty_ok in ((agent_id, "agent id", MAX_AGENT_ID, False),
                                            (hello.host, "host", MAX_NAME, True),
                                            (hello.version, "version", MAX_NAME, True),
                                            (hello.cluster_id, "cluster id", MAX_NAME, True)):
            problem = name_problem(value, f"hello: {what}", most, empty_ok)
            if problem:
                raise InvalidRequest(problem)
        if len(hello.archive_ids) > MAX_HELLO_ARCHIVE_IDS:
            raise InvalidRequest(f"hello: {len(hello.archive_ids)} archive ids, at most {MAX_HELLO_ARCHIVE_IDS} "
                                 "(none: every archive id)")
        if len(hello.tags) > MAX_HELLO_TAGS:
            raise InvalidRequest(f"hello: {len(hello.tags)} tags, at most {MAX_HELLO_TAGS}")
        for tag in hello.tags:
            problem = name_problem(tag, "hello: tag", MAX_HINT, False)
            if problem or any(c in tag for c in ",= "):
                raise InvalidRequest(problem or f"hello: tag {tag!r} may not hold ',', '=' or a space")
        if hello.cluster_id and hello.cluster_id != self.cluster.cluster_id:
            raise WrongCluster(
                f"agent {agent_id} belongs to cluster {hello.cluster_id}; replica {self.me.id} "
                f"at {self.address} is in cluster {self.cluster.cluster_id}")
        try:
            new, old = self.book.hello(agent_id, hello.host, tuple(hello.archive_ids), _slots_from_pb(hello.slots),
                                       hello.version, peer, self.clock(), tuple(hello.tags), hello.stripes)
        except AgentIdInUse as exc:
            raise FileExistsError(str(exc)) from None
        if old is not None:
            cast(AgentSession, old).end()
        timer = self._grace.pop(agent_id, None)
        if timer is not None:
            timer.cancel()
        session = cast(AgentSession, new)
        self._wake.set()  # tells it its backlog, even before it grants credits here
        ids = session.archive_ids
        log.info("agent %s connected from %s (host %s, archive ids %s%s)", agent_id, peer, hello.host,
                 ",".join(map(str, ids[:20])) or "all", f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        return session

    async def reconcile(self, session: AgentSession, running: list[tuple[int, int]],
                        before: float | None = None) -> None:
        """Match what a (re)connecting agent says it runs against what the
        shards this replica leads say it holds: keep the matches, requeue
        what it lost, stop what it should not be running. With *before*
        (the time the report was asked for), actions assigned since then
        are not counted as lost: the report may predate their assignment."""
        actions = [r for r in running if part_of(r[1]) is None]
        parts = [r for r in running if part_of(r[1]) is not None]
        for shard in self.shards:
            if not shard.leader_ready:
                continue
            with shard.reading() as st:
                held = [Held(a.id, a.attempt, a.state, a.error, a.started) for a in st.held_by(session.agent_id)]
                held_parts = set(st.parts_held_by(session.agent_id))
                settled = held_parts if before is None else set(
                    st.parts_held_by(session.agent_id, before - IN_FLIGHT_GRACE))
                # actions a split moved to another shard: that shard checks them
                gone = st.moved_to
                mine = [r for r in actions if r[0] not in gone] if gone else actions
            await self._reconcile_parts(shard, session, parts, held_parts, settled)
            plan = reconcile(shard.index, mine, held, before)
            for action_id, attempt, error in plan.cancels:
                self._send_cancel(session.agent_id, action_id, attempt, error)
            lost = list(plan.lost)
            if plan.recent and self.book.reask_later(session):
                log.info("shard %d: %d action(s) of %s assigned moments before its report; asking again in "
                         "%.0f s", shard.index, plan.recent, session.agent_id, IN_FLIGHT_GRACE)
                asyncio.get_running_loop().call_later(IN_FLIGHT_GRACE, self._ask_running, session)
            for action_id, attempt in plan.strangers:
                log.info("action %s: agent %s runs it but does not hold it; told to stop",
                         self._action_text(action_id, attempt), session.agent_id)
                session.send(agent_pb2.CoordinatorMessage(cancel=[
                    agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason="not assigned to this agent")]))
            if lost:
                # not requeued outright: an assignment from a previous leader
                # may still be on its way to the agent. The agent is told to
                # stop each; it confirms (or refuses the late assignment), and
                # only then does the action go back to the queue.
                try:
                    await self.propose(shard, Reclaim(self.clock(), tuple(lost), force=True,
                                                      reason=f"agent {session.agent_id} does not run it"))
                except ShardUnavailable as exc:
                    log.warning("shard %d: could not requeue %d action(s) of %s: %s", shard.index, len(lost),
                                session.agent_id, exc)

    async def _reconcile_parts(self, shard: RaftShard, session: AgentSession, running: list[tuple[int, int]],
                               held: set[tuple[int, int]], settled: set[tuple[int, int]]) -> None:
        """Reconcile for striped archives' parts (told apart by their wire
        attempt): one the agent runs but does not hold here is stopped; one
        it holds but does not run waits to run again if it was assigned
        long enough before the report was asked for (*settled*), else the
        agent is asked again later (the report may predate its assignment)."""
        mine = [r for r in running if r[0] % MAX_SHARDS == shard.index]
        for action_id, attempt in mine:
            if (action_id, attempt) not in held:
                log.info("action %s: agent %s runs a part it does not hold; told to stop",
                         self._action_text(action_id, attempt), session.agent_id)
                session.send(agent_pb2.CoordinatorMessage(cancel=[agent_pb2.CancelOrder(
                    action_id=action_id, attempt=attempt, reason="not assigned to this agent")]))
        missing = held - set(mine)
        lost = tuple(sorted(missing & settled))
        if missing - settled and self.book.reask_later(session):
            asyncio.get_running_loop().call_later(IN_FLIGHT_GRACE, self._ask_running, session)
        if not lost:
            return
        try:
            await self.propose(shard, AgentLost(self.clock(), session.agent_id,
                                                f"agent {session.agent_id} does not run it", parts=lost))
        except ShardUnavailable as exc:
            log.warning("shard %d: could not requeue %d part(s) of %s: %s", shard.index, len(lost),
                        session.agent_id, exc)

    def _ask_running(self, session: AgentSession) -> None:
        """Ask an agent for a RunningReport (answered through reconcile)."""
        token = self.book.ask_running(session, self.clock())
        if token:
            session.send(agent_pb2.CoordinatorMessage(request_running=token))

    async def agent_message(self, session: AgentSession, msg: agent_pb2.AgentMessage) -> None:
        self.book.heard(session, self.clock())
        if msg.lease_token:
            # renews the agent's lease for the shards this replica leads with
            # a current state (a leader cut off from the others stops leading
            # within raft leader_fallback: agent_lease counts it)
            session.send(agent_pb2.CoordinatorMessage(lease=agent_pb2.LeaseGrant(
                token=msg.lease_token, shards=[s.index for s in self.shards if s.leader_ready])))
        if msg.HasField("ready"):
            # the grant that rides on completions counts at once: the slots
            # they freed are refilled while the completions are committed
            self.book.ready(session, _slots_from_pb(msg.ready.credits), msg.ready.absolute,
                            _slots_from_pb(msg.ready.seen))
            self._wake.set()
        if msg.progress or msg.done:
            await self.route_reports(session.agent_id, msg.progress, msg.done, session)
        if msg.HasField("running"):
            asked = self.book.answered(session, msg.running.token)
            if asked is None:
                log.warning("agent %s sent a running report nobody asked for; ignored", session.agent_id)
            else:
                await self.reconcile(session, [(r.action_id, r.attempt) for r in msg.running.actions],
                                     before=asked)

    @property
    def sessions(self) -> dict[str, AgentSession]:
        return cast(dict[str, AgentSession], self.book.sessions)

    @property
    def lease(self) -> float:
        """An agent session lapses after this long without a message."""
        return self.book.lease

    async def _lease_keeper(self) -> None:
        """End the session of an agent that went silent (hung, or cut off
        without its TCP connection closing): its grace period starts. Also
        remind agents of work waiting here while they hold no credit here."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval / 2)
            self._adopt_newest_policy()
            # what the policy decides by time (a batch gone idle, an action
            # reaching the starvation bound, max_mount) changes with no
            # command applied: a dispatcher round looks again
            self._wake.set()
            self._send_backlogs(stalled_only=True)
            now = self.clock()
            for session in self.book.lapsed(now):
                log.warning("agent %s sent nothing for %.1f s (lease %.1f s): its session is ended",
                            session.agent_id, now - session.last_seen, self.lease)
                cast(AgentSession, session).end()  # agent_gone then starts the grace period

    def agent_gone(self, session: AgentSession) -> None:
        if self.book.gone(session, self.clock()) is None:
            return  # replaced by a newer session
        log.warning("agent %s disconnected; its actions are requeued in %.0f s unless it returns",
                    session.agent_id, self.book.grace_of(session.agent_id))
        self._grace_timer(session.agent_id)

    def _grace_timer(self, agent_id: str) -> None:
        """Carry out the grace period the book started for *agent_id*."""
        end = self.book.grace[agent_id]
        old = self._grace.pop(agent_id, None)
        if old is not None:
            old.cancel()
        self._grace[agent_id] = asyncio.get_running_loop().call_later(
            max(0.0, end - self.clock()), lambda: asyncio.ensure_future(self._expire(agent_id, end)))

    async def _expire(self, agent_id: str, end: float) -> None:
        self._grace.pop(agent_id, None)
        if not self.book.expire(agent_id, end):
            return
        log.warning("agent %s did not come back within %.0f s: requeueing its actions", agent_id,
                    self.book.grace_of(agent_id))
        for shard in self.shards:
            if not shard.leader_ready:
                continue
            with shard.reading() as st:
                holds = bool(st.by_agent.get(agent_id)) or bool(st.parts_held_by(agent_id))
            if holds:
                try:
                    await self.propose(shard, AgentLost(self.clock(), agent_id, "agent lost"))
                except ShardUnavailable as exc:
                    log.warning("shard %d: could not requeue the actions of %s: %s", shard.index, agent_id, exc)

    # ------------------------------------------- where a waiting action stands

    async def _rate_sampler(self) -> None:
        while True:
            self.sample_dispatch()
            await asyncio.sleep(RATE_SAMPLE_EVERY)

    def sample_dispatch(self, now: float | None = None) -> None:
        """Note every queue's dispatch counter (for :meth:`action_pb`'s start estimate)."""
        now = time.monotonic() if now is None else now
        counts = []
        for shard in self.shards:
            if not shard.hosted:
                counts.append({})
                continue
            with shard.reading() as st:
                counts.append(dict(st.dispatched))
        samples = self._dispatch_samples
        samples.append((now, counts))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()

    def dispatch_rate(self, shard: int, kind: Kind, archive_id: int) -> float:
        """Actions per second dispatched from a queue over the sampled window."""
        samples = self._dispatch_samples
        if len(samples) < 2:
            return 0.0
        (t0, first), (t1, last) = samples[0], samples[-1]
        if t1 <= t0 or shard >= len(first) or shard >= len(last):
            return 0.0
        n = last[shard].get((kind, archive_id), 0) - first[shard].get((kind, archive_id), 0)
        return n / (t1 - t0) if n > 0 else 0.0

    def action_pb(self, st: ShardState, a: Action, shard: int) -> types_pb2.Action:
        """An action as the API shows it; a WAITING one that may start now
        with its place in its queue and when it should start (no scan)."""
        place = st.queue_position(a)
        if place is None:
            return convert.action_to_pb(a, shard)
        rate = self.dispatch_rate(shard, a.kind, a.archive_id)
        return convert.action_to_pb(a, shard, place, (place[0] + 1) / rate if rate > 0 else 0.0)

    # ------------------------------------------------------------ HSM events

    async def wait_events(self, timeout: float) -> None:
        """Until a shard this replica leads records an HSM event, or *timeout*."""
        ev = self._events_ev
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass

    @staticmethod
    def event_cursor(st: ShardState, shard: int, name: str) -> coordinator_pb2.EventCursor | None:
        c = st.events.consumers.get(name)
        if c is None:
            return None
        return coordinator_pb2.EventCursor(shard=shard, acked=c.acked, missed=c.missed, lag=st.events.lag(name))

    @staticmethod
    def event_pb(shard: int, r: HsmEvent) -> coordinator_pb2.HsmEvent:
        return coordinator_pb2.HsmEvent(
            shard=shard, recno=r.recno, time=r.time, type=CL_HSM, flags=r.flags,
            event=EVENT_NAMES.get(r.event, str(r.event)), errno=r.errno, fsname=r.fsname,
            fid=types_pb2.Fid(seq=r.fid_seq, oid=r.fid_oid, ver=r.fid_ver), archive_id=r.archive_id,
            action_id=r.action_id)

    def consumers_status(self) -> list[coordinator_pb2.ConsumerStatus]:
        """Every event consumer as this replica's state shows it, all shards summed."""
        out: dict[str, coordinator_pb2.ConsumerStatus] = {}
        for shard in self.hosted:
            with shard.reading() as st:
                for name, c in st.events.consumers.items():
                    cs = out.get(name)
                    if cs is None:
                        cs = out[name] = coordinator_pb2.ConsumerStatus(name=name, since=c.since)
                    cs.lag += st.events.lag(name)
                    cs.missed += c.missed
                    cs.since = min(cs.since, c.since)
        return [out[n] for n in sorted(out)]

    # --------------------------------------------------------------- status

    def metrics_view(self) -> ReplicaView:
        """What a Prometheus scrape reads (coordinator.metrics), on the loop."""
        shards = []
        running: dict[str, dict[Kind, int]] = {}
        for shard in self.hosted:
            with shard.reading() as st:
                counts = {(int(k), int(state)): n for (k, state), n in st.counts.items()}
                queues: dict[tuple[int, int], int] = {}
                for key, q in st.ready.items():
                    queues[(int(key[0]), key[1])] = queues.get((int(key[0]), key[1]), 0) + len(q)
                add_running(st, running)
                ev = st.events
                consumers = {name: (ev.lag(name), c.missed) for name, c in ev.consumers.items()}
                retained, dropped = len(ev.records), ev.dropped
            shards.append(ShardView(
                shard.index, shard.term, shard.commit_index, shard.applied_index, shard.is_leader,
                shard.leader is not None, bool(shard.problem), shard.journal_bytes(),
                shard.stats.last_snapshot_seconds, counts, queues, retained, dropped, consumers))
        agents = [AgentView(s.agent_id, s.alive, dict(s.slots), s.usable(), running.get(s.agent_id, {}))
                  for s in sorted(self.sessions.values(), key=lambda s: s.agent_id)]
        agents += [AgentView(agent_id, False, running=per) for agent_id, per in sorted(running.items())
                   if agent_id not in self.sessions]
        return ReplicaView(self.me.id, hsm.__version__, self.cluster.cluster_id, shards, agents)

    def status(self, digest: bool = False, only: Iterable[int] = ()) -> coordinator_pb2.StatusResponse:
        """This replica's view of the shards it holds (*only*: of these
        among them): ``cluster_status`` adds the others'."""
        totals: dict[tuple[Kind, State], int] = {}
        shards = []
        running: dict[str, dict[Kind, int]] = {}
        wanted = set(only)
        held = [s for s in self.hosted if not wanted or s.index in wanted]
        for shard in held:
            counts = []
            with shard.reading() as st:
                for (kind, state), n in sorted(st.counts.items()):
                    totals[(kind, state)] = totals.get((kind, state), 0) + n
                    counts.append(coordinator_pb2.KindCount(kind=int(kind), state=int(state), count=n))  # type: ignore[arg-type]
                add_running(st, running)
                dg = shard_digest(st) if digest else ""
            shards.append(coordinator_pb2.ShardStatus(
                shard=shard.index, leader=self.leader_id(shard), commit_index=shard.commit_index,
                applied_index=shard.applied_index, counts=counts, digest=dg, term=shard.term,
                role="leader" if shard.is_leader else "follower", problem=shard.problem,
                replica=self.me.id, **self.group_fields(shard)))
        modes = set()
        drained: set[str] = set()
        for shard in held:
            with shard.reading() as st:
                modes.add(st.control)
                drained.update(st.drained)
        agents = []
        for s in sorted(self.sessions.values(), key=lambda s: s.agent_id):
            agents.append(coordinator_pb2.AgentInfo(
                agent_id=s.agent_id, host=s.host, archive_ids=s.archive_ids, slots=_slots_to_pb(s.slots),
                running=_slots_to_pb(running.get(s.agent_id, {})), version=s.version,
                connected_since=s.connected_since, last_seen=s.last_seen,
                replica=self.me.id if s.alive else "", draining=s.agent_id in drained, tags=sorted(s.tags)))
        for agent_id in sorted(drained.difference(self.sessions)):
            # drained and gone: listed so that an admin sees the drain is still set
            agents.append(coordinator_pb2.AgentInfo(agent_id=agent_id, draining=True,
                                                    running=_slots_to_pb(running.get(agent_id, {}))))
        return coordinator_pb2.StatusResponse(
            counts=[coordinator_pb2.KindCount(kind=int(k), state=int(st), count=n)  # type: ignore[arg-type]
                    for (k, st), n in sorted(totals.items())],
            agents=agents, shards=shards, replica=self.me.id, version=hsm.__version__,
            cluster_id=self.cluster.cluster_id, consumers=self.consumers_status(),
            control=modes.pop() if len(modes) == 1 else "mixed (" + ",".join(sorted(modes)) + ")")


class WrongCluster(Exception):
    """A request meant for another cluster (an agent's hello naming another
    cluster id)."""


def _abort_code(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, WrongCluster):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, InvalidRequest | ValueError):  # FidError and friends
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, FileExistsError):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


async def abort_unavailable(context: grpc.aio.ServicerContext, exc: ShardUnavailable) -> None:
    """Not the leader: FAILED_PRECONDITION with the leader's address; no
    leader at all: UNAVAILABLE (clients back off and retry)."""
    if exc.leader:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, exc.leader),))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


def local_hostname() -> str:
    return socket.gethostname().split(".")[0]


#: the roles a policy's request_masks may restrict (agents and replicas submit nothing)
MASKED_ROLES = (ADMIN, OPERATOR, BRIDGE, USER)


def _settings_text(policy: Policy) -> str:
    s = policy.settings
    limits = ", ".join(f"archive {a}: {n}" for a, n in s.max_running_per_archive)
    return (f"max_attempts {s.max_attempts}, progress_timeout {s.progress_timeout:g} s, agent_grace "
            f"{s.agent_grace:g} s, max_terminal {s.max_terminal}, max_running {s.max_running or 'no limit'}"
            + (f" ({limits})" if limits else ""))
