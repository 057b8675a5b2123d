"""A coordinator replica: the gRPC servers (Coordinator, AgentService,
grpc.health.v1), agent sessions, the dispatcher and watchers, around the
shards it hosts.

Everything that changes action state is a command proposed to a shard
(``Shard.propose``) and applied by the pure ``ShardState``; this module only
turns messages into commands and carries out the effects. It runs on one
asyncio event loop (uvloop in production); nothing here blocks.
"""

from __future__ import annotations

import asyncio
import errno as E
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import hsm
from coordinator import convert, scheduler
from coordinator.convert import InvalidRequest
from coordinator.state import (
    AgentLost,
    Assign,
    Assigned,
    Cancel,
    Changed,
    Command,
    Complete,
    Completion,
    Kind,
    Progress,
    ProgressReport,
    Result,
    SendCancel,
    ShardConfig,
    ShardState,
    State,
    Submit,
)
from hsm.fid import Fid
from hsm.ring import Ring
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
MAX_PAGE = 10_000
DEFAULT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class NodeConfig:
    replica_id: str = "c1"
    listen: str = "127.0.0.1:7600"  # host:port of the gRPC API; port 0 picks a free one
    archive_ids: tuple[int, ...] = (1,)
    default_archive_id: int = 1
    max_attempts: int = 3
    max_terminal: int = 100_000
    #: seconds a disconnected agent keeps its actions before they are requeued
    agent_grace: float = 60.0
    heartbeat_interval: float = 5.0
    shards: int = 1


class Shard:
    """One shard as this replica hosts it. Here the log is local: a command
    is applied as soon as it is proposed. The replication issue puts Raft
    behind ``propose`` without changing its callers."""

    def __init__(self, index: int, config: ShardConfig) -> None:
        self.index = index
        self.state = ShardState(config)
        self.commit_index = 0

    @property
    def is_leader(self) -> bool:
        return True

    async def propose(self, cmd: Command) -> Result:
        self.commit_index += 1
        return self.state.apply(cmd)


@dataclass(eq=False)
class AgentSession:
    agent_id: str
    host: str
    archive_ids: tuple[int, ...]
    slots: dict[Kind, int]
    version: str
    peer: str
    connected_since: float
    last_seen: float
    credits: dict[Kind, int] = field(default_factory=lambda: {k: 0 for k in Kind})
    out: asyncio.Queue[agent_pb2.CoordinatorMessage | None] = field(default_factory=asyncio.Queue)
    alive: bool = True

    def send(self, msg: agent_pb2.CoordinatorMessage) -> None:
        if self.alive:
            self.out.put_nowait(msg)


def _slots_from_pb(pb: coordinator_pb2.Slots) -> dict[Kind, int]:
    return {Kind.ARCHIVE: pb.archive, Kind.RESTORE: pb.restore, Kind.REMOVE: pb.remove}


def _slots_to_pb(d: dict[Kind, int]) -> coordinator_pb2.Slots:
    return coordinator_pb2.Slots(archive=d.get(Kind.ARCHIVE, 0), restore=d.get(Kind.RESTORE, 0), remove=d.get(Kind.REMOVE, 0))


class CoordinatorNode:
    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        shard_cfg = dict(
            archive_ids=frozenset(config.archive_ids),
            default_archive_id=config.default_archive_id,
            max_attempts=config.max_attempts,
            max_terminal=config.max_terminal,
        )
        self.ring = Ring(config.shards)
        self.shards = [Shard(i, ShardConfig(shard=i, **shard_cfg)) for i in range(config.shards)]  # type: ignore[arg-type]
        self.sessions: dict[str, AgentSession] = {}
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._watchers: dict[int, set[asyncio.Queue[types_pb2.Action]]] = {}
        self._wake = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(self), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(E.EADDRINUSE, f"cannot listen on {self.config.listen}")
        await server.start()
        self._server = server
        self._tasks.append(asyncio.create_task(self._dispatcher(), name="dispatcher"))
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("replica %s serving on %s (%d shards, archive ids %s)", self.config.replica_id,
                 self.address, len(self.shards), ",".join(map(str, self.config.archive_ids)))

    async def _set_health(self, status: int) -> None:
        for service in ("", "hsm.v1.Coordinator", "hsm.v1.AgentService"):
            res = self._health.set(service, status)
            if asyncio.iscoroutine(res):
                await res

    async def stop(self, grace: float = 2.0) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for t in self._tasks:
            t.cancel()
        for h in self._grace.values():
            h.cancel()
        for s in list(self.sessions.values()):
            s.alive = False
            s.out.put_nowait(None)
        if self._server is not None:
            await self._server.stop(grace)
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # --------------------------------------------------------------- shards

    def shard_of_fid(self, fid: Fid) -> Shard:
        return self.shards[self.ring.shard_of(fid)]

    def shard_of_action(self, action_id: int) -> Shard | None:
        idx = action_id % 1000
        return self.shards[idx] if idx < len(self.shards) else None

    async def propose(self, shard: Shard, cmd: Command) -> Result:
        res = await shard.propose(cmd)
        self._carry_out(shard, res)
        return res

    def _carry_out(self, shard: Shard, res: Result) -> None:
        changed: dict[int, None] = {}
        wake = False
        for eff in res.effects:
            if isinstance(eff, Changed):
                changed[eff.action_id] = None
            elif isinstance(eff, SendCancel):
                self._send_cancel(eff.agent, eff.action_id, eff.attempt, "canceled")
            elif isinstance(eff, Assigned):
                pass  # sent by the dispatcher, which asked for it
        for action_id in changed:
            action = shard.state.get(action_id)
            if action is not None and action.state == State.WAITING:
                wake = True
            watchers = self._watchers.get(action_id)
            if watchers and action is not None:
                pb = convert.action_to_pb(action, shard.index)
                for q in watchers:
                    q.put_nowait(pb)
        if wake or any(isinstance(e, Changed) for e in res.effects):
            self._wake.set()

    def _send_cancel(self, agent: str, action_id: int, attempt: int, reason: str) -> None:
        session = self.sessions.get(agent)
        if session is None or not session.alive:
            log.info("action %d: cancel for agent %s held until it reconnects", action_id, agent)
            return
        log.info("action %d/%d: cancel sent to agent %s", action_id, attempt, agent)
        session.send(agent_pb2.CoordinatorMessage(
            cancel=[agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason=reason)]
        ))

    # ----------------------------------------------------------- dispatcher

    async def _dispatcher(self) -> None:
        rr = itertools.count()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                progressed = True
                while progressed:
                    progressed = False
                    sessions = [s for s in self.sessions.values() if s.alive and any(s.credits.values())]
                    if not sessions:
                        break
                    start = next(rr) % len(sessions)
                    for s in sessions[start:] + sessions[:start]:
                        if await self._dispatch_to(s):
                            progressed = True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher round failed")

    async def _dispatch_to(self, session: AgentSession, per_round: int = 256) -> bool:
        sent = False
        for shard in self.shards:
            if not shard.is_leader:
                continue
            credits = {k: min(v, per_round) for k, v in session.credits.items()}
            ids = scheduler.pick(shard.state, session.archive_ids, credits)
            if not ids:
                continue
            res = await self.propose(shard, Assign(self.clock(), session.agent_id, tuple(ids)))
            assignments = []
            for eff in res.effects:
                if isinstance(eff, Assigned):
                    action = shard.state.get(eff.action_id)
                    assert action is not None
                    session.credits[action.kind] -= 1
                    assignments.append(convert.assignment_to_pb(action))
                    log.info("action %d/%d: %s %s assigned to %s", action.id, action.attempt,
                             action.kind.name, action.fid, session.agent_id)
            if assignments:
                session.send(agent_pb2.CoordinatorMessage(assign=assignments))
                sent = True
        return sent

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

    # --------------------------------------------------------------- agents

    async def agent_hello(self, hello: agent_pb2.Hello, peer: str) -> AgentSession:
        agent_id = hello.agent_id
        if not agent_id or len(agent_id) > 128:
            raise InvalidRequest("hello: agent_id must be 1-128 characters")
        old = self.sessions.get(agent_id)
        now = self.clock()
        if old is not None and old.alive and now - old.last_seen < 3 * self.config.heartbeat_interval:
            raise FileExistsError(
                f"agent id {agent_id!r} already has a live session from {old.peer}; "
                "give each agentd its own --agent-id"
            )
        if old is not None and old.alive:
            old.alive = False
            old.out.put_nowait(None)
        timer = self._grace.pop(agent_id, None)
        if timer is not None:
            timer.cancel()
        session = AgentSession(
            agent_id=agent_id,
            host=hello.host,
            archive_ids=tuple(a for a in hello.archive_ids),
            slots=_slots_from_pb(hello.slots),
            version=hello.version,
            peer=peer,
            connected_since=now,
            last_seen=now,
        )
        self.sessions[agent_id] = session
        log.info("agent %s connected from %s (host %s, archive ids %s)", agent_id, peer, hello.host,
                 ",".join(map(str, session.archive_ids)) or "all")
        return session

    async def reconcile(self, session: AgentSession, running: list[tuple[int, int]]) -> None:
        """Match what a (re)connecting agent says it runs against what the
        shards say it holds: keep the matches, requeue what it lost, stop
        what it should not be running."""
        announced = dict(running)
        for shard in self.shards:
            if not shard.is_leader:
                continue
            lost = []
            for action in shard.state.held_by(session.agent_id):
                if announced.get(action.id) == action.attempt:
                    if action.state == State.CANCELING:
                        self._send_cancel(session.agent_id, action.id, action.attempt, action.error)
                else:
                    lost.append(action.id)
            if lost:
                await self.propose(shard, AgentLost(self.clock(), session.agent_id,
                                                    "agent no longer runs it", tuple(lost)))
        for action_id, attempt in running:
            shard = self.shard_of_action(action_id)
            action = shard.state.get(action_id) if shard else None
            if action is None or action.agent != session.agent_id or action.attempt != attempt or \
                    action.state not in (State.STARTED, State.CANCELING):
                log.info("action %d/%d: agent %s runs it but does not hold it; told to stop",
                         action_id, attempt, session.agent_id)
                session.send(agent_pb2.CoordinatorMessage(cancel=[
                    agent_pb2.CancelOrder(action_id=action_id, attempt=attempt, reason="not assigned to this agent")
                ]))

    async def agent_message(self, session: AgentSession, msg: agent_pb2.AgentMessage) -> None:
        session.last_seen = self.clock()
        if msg.progress:
            by_shard: dict[int, list[ProgressReport]] = {}
            for p in msg.progress:
                shard = self.shard_of_action(p.action_id)
                if shard is not None:
                    by_shard.setdefault(shard.index, []).append(
                        ProgressReport(p.action_id, p.attempt, p.bytes_done, p.bytes_total))
            for idx, reports in by_shard.items():
                await self.propose(self.shards[idx], Progress(self.clock(), tuple(reports)))
        if msg.done:
            by_shard_done: dict[int, list[Completion]] = {}
            for d in msg.done:
                shard = self.shard_of_action(d.action_id)
                if shard is not None:
                    by_shard_done.setdefault(shard.index, []).append(
                        Completion(d.action_id, d.attempt, d.errno, d.message[:1024], d.retry, d.bytes_done))
                    log.info("action %d/%d: done on %s, errno %d %s", d.action_id, d.attempt,
                             session.agent_id, d.errno, d.message)
            for idx, dones in by_shard_done.items():
                await self.propose(self.shards[idx], Complete(self.clock(), tuple(dones)))
        if msg.HasField("ready"):
            for kind, n in _slots_from_pb(msg.ready.credits).items():
                session.credits[kind] += n
            self._wake.set()

    def agent_gone(self, session: AgentSession) -> None:
        if self.sessions.get(session.agent_id) is not session:
            return  # replaced by a newer session
        session.alive = False
        session.credits = {k: 0 for k in Kind}
        grace = self.config.agent_grace
        log.warning("agent %s disconnected; its actions are requeued in %.0f s unless it returns",
                    session.agent_id, grace)
        loop = asyncio.get_running_loop()
        self._grace[session.agent_id] = loop.call_later(
            grace, lambda: asyncio.ensure_future(self._expire(session))
        )

    async def _expire(self, session: AgentSession) -> None:
        self._grace.pop(session.agent_id, None)
        if self.sessions.get(session.agent_id) is not session or session.alive:
            return
        del self.sessions[session.agent_id]
        log.warning("agent %s did not come back within %.0f s: requeueing its actions",
                    session.agent_id, self.config.agent_grace)
        for shard in self.shards:
            if shard.is_leader and shard.state.by_agent.get(session.agent_id):
                await self.propose(shard, AgentLost(self.clock(), session.agent_id, "agent lost"))

    # --------------------------------------------------------------- status

    def status(self) -> coordinator_pb2.StatusResponse:
        totals: dict[tuple[Kind, State], int] = {}
        shards = []
        for shard in self.shards:
            counts = []
            for (kind, state), n in sorted(shard.state.counts.items()):
                totals[(kind, state)] = totals.get((kind, state), 0) + n
                counts.append(coordinator_pb2.KindCount(kind=int(kind), state=int(state), count=n))  # type: ignore[arg-type]
            shards.append(coordinator_pb2.ShardStatus(
                shard=shard.index, leader=self.config.replica_id if shard.is_leader else "",
                commit_index=shard.commit_index, applied_index=shard.state.applied, counts=counts))
        agents = []
        for s in sorted(self.sessions.values(), key=lambda s: s.agent_id):
            running = {k: 0 for k in Kind}
            for shard in self.shards:
                for a in shard.state.held_by(s.agent_id):
                    running[a.kind] += 1
            agents.append(coordinator_pb2.AgentInfo(
                agent_id=s.agent_id, host=s.host, archive_ids=s.archive_ids, slots=_slots_to_pb(s.slots),
                running=_slots_to_pb(running), version=s.version, connected_since=s.connected_since,
                last_seen=s.last_seen, replica=self.config.replica_id if s.alive else ""))
        return coordinator_pb2.StatusResponse(
            counts=[coordinator_pb2.KindCount(kind=int(k), state=int(st), count=n)  # type: ignore[arg-type]
                    for (k, st), n in sorted(totals.items())],
            agents=agents, shards=shards, replica=self.config.replica_id, version=hsm.__version__,
            control="enabled")


def _abort_code(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, ValueError):  # FidError and friends
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, FileExistsError):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node

    async def Submit(self, request: coordinator_pb2.SubmitRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.SubmitResponse:  # noqa: N802
        node = self.node
        try:
            items = convert.items_from_pb(request, node.config.archive_ids)
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        by_shard: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_shard.setdefault(node.shard_of_fid(it.fid).index, []).append(i)
        results: list[coordinator_pb2.SubmitResult | None] = [None] * len(items)
        now = node.clock()
        for idx, positions in by_shard.items():
            res = await node.propose(node.shards[idx], Submit(now, tuple(items[i] for i in positions)))
            for pos, reply in zip(positions, res.replies, strict=True):
                results[pos] = coordinator_pb2.SubmitResult(
                    outcome=int(reply.outcome), action_id=reply.action_id,  # type: ignore[attr-defined]
                    errno=reply.errno, reason=reply.reason)  # type: ignore[attr-defined]
        return coordinator_pb2.SubmitResponse(results=results)

    async def Cancel(self, request: coordinator_pb2.CancelRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.CancelResponse:  # noqa: N802
        node = self.node
        try:
            targets = [convert.fid_target_from_pb(f, f"fid {i}") for i, f in enumerate(request.fids)]
            if len(request.reason) > 1024:
                raise InvalidRequest("reason is limited to 1024 characters")
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        if not (request.action_ids or targets or request.all):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nothing to cancel: give action ids, FIDs or all")
        results = []
        now = node.clock()
        reason = request.reason or "canceled by request"
        for shard in node.shards:
            ids = tuple(i for i in request.action_ids if node.shard_of_action(i) is shard)
            fids = tuple(t for t in targets if node.shard_of_fid(t.fid) is shard)
            if not (ids or fids or request.all):
                continue
            res = await node.propose(shard, Cancel(now, ids, fids, request.all, reason))
            for r in res.replies:
                results.append(coordinator_pb2.CancelResult(
                    action_id=r.action_id, outcome=int(r.outcome),  # type: ignore[attr-defined]
                    state=int(r.state) if r.state else 0))  # type: ignore[attr-defined]
        for i in request.action_ids:
            if node.shard_of_action(i) is None:
                results.append(coordinator_pb2.CancelResult(action_id=i, outcome=coordinator_pb2.NOT_FOUND))
        return coordinator_pb2.CancelResponse(results=results)

    async def GetAction(self, request: coordinator_pb2.GetActionRequest, context: grpc.aio.ServicerContext) -> types_pb2.Action:  # noqa: N802
        shard = self.node.shard_of_action(request.action_id)
        action = shard.state.get(request.action_id) if shard else None
        if action is None or shard is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {request.action_id}")
        return convert.action_to_pb(action, shard.index)

    async def ListActions(self, request: coordinator_pb2.ListActionsRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ListActionsResponse:  # noqa: N802
        node = self.node
        try:
            states = convert.states_from_pb(request.states)
            kinds = convert.kinds_from_pb(request.kinds)
            target = convert.fid_target_from_pb(request.fid, "fid") if request.HasField("fid") else None
            if request.page_size > MAX_PAGE:
                raise InvalidRequest(f"page_size {request.page_size} is over {MAX_PAGE}")
            after = int(request.page_token) if request.page_token else 0
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        if not states and not request.include_terminal:
            states = [State.WAITING, State.STARTED, State.CANCELING]
        page = request.page_size or DEFAULT_PAGE
        found: list[tuple[int, types_pb2.Action]] = []
        shards = [node.shard_of_fid(target.fid)] if target else node.shards
        for shard in shards:
            n = 0
            for a in shard.state.iter_actions(states, kinds, request.agent, after):
                if target and (a.fid != target.fid or (target.fsname and a.fsname != target.fsname)
                               or (target.kind and a.kind != target.kind)):
                    continue
                found.append((a.id, convert.action_to_pb(a, shard.index)))
                n += 1
                if n > page:
                    break
        found.sort(key=lambda x: x[0])
        token = ""
        if len(found) > page:
            found = found[:page]
            token = str(found[-1][0])
        return coordinator_pb2.ListActionsResponse(actions=[pb for _, pb in found], next_page_token=token)

    async def Watch(self, request: coordinator_pb2.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[coordinator_pb2.WatchEvent]:  # noqa: N802
        node = self.node
        ids = list(dict.fromkeys(request.action_ids))
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "watch needs at least one action id")
        q = node.watch(ids)
        try:
            pending = set()
            for i in ids:
                shard = node.shard_of_action(i)
                action = shard.state.get(i) if shard else None
                if action is None or shard is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {i}")
                yield coordinator_pb2.WatchEvent(action=convert.action_to_pb(action, shard.index))
                if not action.state.terminal:
                    pending.add(i)
            while pending:
                pb = await q.get()
                if pb.action_id not in pending:
                    continue
                yield coordinator_pb2.WatchEvent(action=pb)
                if pb.state >= State.SUCCEEDED:
                    pending.discard(pb.action_id)
        finally:
            node.unwatch(ids, q)

    async def Status(self, request: coordinator_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.StatusResponse:  # noqa: N802
        return self.node.status()

    async def ClusterInfo(self, request: coordinator_pb2.ClusterInfoRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ClusterInfoResponse:  # noqa: N802
        node = self.node
        return coordinator_pb2.ClusterInfoResponse(
            shard_count=len(node.shards),
            vnodes=node.ring.vnodes,
            replicas=[coordinator_pb2.Replica(id=node.config.replica_id, address=node.address)],
            shards=[coordinator_pb2.ShardStatus(shard=s.index, leader=node.config.replica_id) for s in node.shards],
        )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node

    async def Work(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.CoordinatorMessage]:  # noqa: N802
        node = self.node
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message on a Work stream must be hello")
        try:
            session = await node.agent_hello(first.hello, context.peer())
        except (InvalidRequest, FileExistsError) as exc:
            await context.abort(*_abort_code(exc))
        session.send(agent_pb2.CoordinatorMessage(welcome=agent_pb2.Welcome(
            replica=node.config.replica_id, heartbeat_interval=node.config.heartbeat_interval)))
        await node.reconcile(session, [(r.action_id, r.attempt) for r in first.hello.running])
        # the rest of the first message (credits, progress, ...) counts too
        first.ClearField("hello")
        await node.agent_message(session, first)

        async def reader() -> None:
            try:
                async for msg in request_iterator:
                    if msg.HasField("hello"):
                        log.warning("agent %s sent a second hello; ignored", session.agent_id)
                    await node.agent_message(session, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # stream broken
                log.info("agent %s stream ended: %s", session.agent_id, exc)
            finally:
                session.out.put_nowait(None)

        task = asyncio.create_task(reader())
        try:
            while True:
                msg = await session.out.get()
                if msg is None or not session.alive:
                    break
                yield msg
        finally:
            task.cancel()
            node.agent_gone(session)


def local_hostname() -> str:
    return socket.gethostname().split(".")[0]
