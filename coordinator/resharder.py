"""The split's driver on a live cluster (issue 19, item 3): the thin shell
around ``coordinator.split.decide``.

Shard 0's leader reads the split from shard 0's state, asks every shard of
the split for its part (``ShardState.split_facts``, on the shard's leader),
takes the one step ``decide`` gives, and starts over; a new leader of shard
0 carries on where the old one was (every step is safe to repeat). The
steps go through the node: opening the new shards' groups on the replicas
that hold them, proposing Freeze / Activate / AbortSplit on a shard's
leader, the export of a drained shard by its leader (Import chunks to the
new shards' leaders), and once the split is done, the new ring to every
replica. Replica to replica, one RPC carries these (``Split``, role
replica); a command crosses it pickled as the Raft log carries it, and is
unpickled here with only the classes a split command is made of."""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import time
from typing import TYPE_CHECKING, Any

import grpc

from coordinator import placement, split
from coordinator.cluster import raft_port_problem
from coordinator.convert import InvalidRequest
from coordinator.groups import RingRecord
from coordinator.split import Do, Phase
from coordinator.state import (
    AbortSplit,
    Activate,
    Freeze,
    Import,
    ReshardBegin,
    ReshardReply,
    ReshardStep,
    SplitReply,
)
from hsm.ring import MAX_SHARDS
from hsm.v1 import coordinator_pb2, coordinator_pb2_grpc

if TYPE_CHECKING:
    from coordinator.node import CoordinatorNode
    from coordinator.raft import RaftShard

log = logging.getLogger(__name__)

#: seconds between two looks of the driver when nothing woke it
LOOK_EVERY = 1.0

#: the classes a split command (Freeze, Import with its bundles, Activate,
#: AbortSplit) is made of: nothing else is unpickled from another replica
_SPLIT_CLASSES = {
    ("coordinator.state", name) for name in ("Freeze", "Import", "Activate", "AbortSplit", "Kind", "State",
                                             "Requester")
} | {("hsm.fid", "Fid"), ("builtins", "set"), ("builtins", "frozenset")}


class _SplitUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SPLIT_CLASSES:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a split command")
        return super().find_class(module, name)


def load_command(blob: bytes) -> Freeze | Import | Activate | AbortSplit:
    """A split command from another replica; InvalidRequest for anything else."""
    try:
        cmd = _SplitUnpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a bad request
        raise InvalidRequest(f"not a split command: {exc}") from None
    if not isinstance(cmd, Freeze | Import | Activate | AbortSplit):
        raise InvalidRequest(f"not a split command: {type(cmd).__name__}")
    return cmd


def facts_pb(f: split.ShardFacts) -> coordinator_pb2.SplitFacts:
    return coordinator_pb2.SplitFacts(ring_version=f.ring_version, out_version=f.out_version,
                                      out_active=f.out_active, busy=f.busy, in_version=f.in_version,
                                      pending=list(f.pending))


def facts_from_pb(pb: coordinator_pb2.SplitFacts) -> split.ShardFacts:
    return split.ShardFacts(pb.ring_version, pb.out_version, pb.out_active, pb.busy, pb.in_version,
                            tuple(pb.pending))


class Resharder:
    """Runs on every replica; drives only where shard 0 is led."""

    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node
        self.wake = asyncio.Event()
        #: what the split waits for, as the last look found it ("" when nothing)
        self.waiting = ""
        #: replicas that took the ring a split ended with (by version and phase)
        self._published: dict[tuple[int, Phase], set[str]] = {}
        self._unreached: set[tuple[str, int]] = set()
        self._said = ""

    # ------------------------------------------------------------ admin

    def groups_for(self, shards: int, added: int) -> tuple[tuple[str, ...], ...]:
        """The new shards' groups: every replica when the cluster has no
        placement (each holds every shard), else spread like ``init``'s,
        with the group size of the existing shards."""
        node = self.node
        ids = [r.id for r in node.cluster.replicas]
        if not node.cluster.placement:
            n = len(ids)
            return tuple(tuple(ids[k % n:] + ids[:k % n]) for k in range(shards, shards + added))
        size = len(node.members_of(0)) or len(ids)
        spread = placement.spread(ids, shards + added, size)
        return spread[shards:]

    async def request(self, add: int, abort: bool) -> coordinator_pb2.ReshardResponse:
        """On shard 0's leader: begin a split by *add* shards, abort the one
        that runs, or (neither) say where it stands. ValueError with the
        reason when refused."""
        node = self.node
        shard0 = node.shards[0]
        assert shard0.leader_ready
        now = node.clock()
        if add or abort:
            with shard0.reading() as st:
                r, cluster_ring = st.reshard, st.cluster_ring
            # what the state would refuse is refused here, before anything is proposed
            got: split.Reshard | str
            if abort:
                if r is None or not r.running:
                    raise ValueError("no split runs")
                cmd: ReshardBegin | ReshardStep = ReshardStep(now, r.version, int(Phase.ABORTING))
                got = split.advance(r, r.version, Phase.ABORTING, now)
            else:
                ring = node.ring
                groups = self.groups_for(ring.shards, add) if ring.shards + add <= MAX_SHARDS else ()
                cmd = ReshardBegin(now, ring.version + 1, ring.shards, add, ring.vnodes, groups)
                got = split.begin(r, cluster_ring, cmd.shards, cmd.version, add, cmd.vnodes, groups, now)
                if not isinstance(got, str) and got is not r:
                    got = raft_port_problem(node.cluster.replicas, ring.shards + add) or got
            if isinstance(got, str):
                raise ValueError(got)
            res = await node.propose(shard0, cmd)  # type: ignore[arg-type]
            reply = res.replies[0]
            assert isinstance(reply, ReshardReply)
            if reply.error:
                raise ValueError(reply.error)
            log.warning("split: %s (asked: %s)", reply.record.text() if reply.record else "-",
                        "abort" if abort else f"add {add} shard(s)")
            self.wake.set()
        return self.view()

    def view(self) -> coordinator_pb2.ReshardResponse:
        node = self.node
        with node.shards[0].reading() as st:
            r = st.reshard
        return coordinator_pb2.ReshardResponse(
            split=r.text() if r else "", phase=r.phase.name.lower() if r else "", shards=node.ring.shards,
            ring_version=node.ring.version, waiting=self.waiting if r is not None and r.running else "")

    # ------------------------------------------------------------ the driver

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), LOOK_EVERY)
            except TimeoutError:
                pass
            self.wake.clear()
            shard0 = self.node.shards[0] if self.node.shards else None
            if shard0 is None or not shard0.leader_ready:
                continue
            with shard0.reading() as st:
                r = st.reshard
            if r is None:
                continue
            try:
                if r.running:
                    await self._look(r)
                else:
                    await self._publish(r)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the driver goes on; the next look tries again
                from coordinator.node import ShardUnavailable

                if not isinstance(exc, ShardUnavailable | ValueError | grpc.RpcError | TimeoutError | OSError):
                    log.exception("split: %s: a step failed", r.text())
                    detail = f"{type(exc).__name__}: {exc}"
                else:
                    detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                    log.warning("split: %s: %s; trying again", r.text(), detail)
                # what `hsm-coordinator reshard` shows until a step goes through
                self.waiting = f"a step failed, tried again every second: {detail}"
                await asyncio.sleep(1.0)

    async def _look(self, r: split.Reshard) -> None:
        """One look: the facts, one step (and at once the next while steps are taken)."""
        for _ in range(64):
            facts = await self.facts(r)
            step = split.decide(r, facts, self.node.clock())
            if step.do == Do.WAIT:
                self.waiting = step.why
                if step.why != self._said:
                    log.info("split: %s: waiting: %s", r.text(), step.why)
                    self._said = step.why
                return
            self.waiting = ""
            log.info("split: %s: %s%s", r.text(), step.do.value, f" {step.shard}" if step.shard >= 0 else "")
            r = await self._take(r, step)
            if not r.running:
                return

    async def facts(self, r: split.Reshard) -> dict[int, split.ShardFacts | None]:
        node = self.node

        async def one(s: int) -> split.ShardFacts | None:
            if s >= len(node.shards):
                return None
            shard = node.shards[s]
            if shard.leader_ready:
                with shard.reading() as st:
                    return st.split_facts()
            try:
                resp = await node.forward(shard, "Split", coordinator_pb2.SplitRequest(
                    op=coordinator_pb2.SPLIT_OP_FACTS, shard=s), node.config.propose_timeout)
            except Exception:  # noqa: BLE001 - no leader answered: None, and decide waits or reopens
                return None
            return facts_from_pb(resp.facts)

        got = await asyncio.gather(*(one(s) for s in range(r.total)))
        return dict(enumerate(got))

    async def _take(self, r: split.Reshard, step: split.Step) -> split.Reshard:
        """Carry *step* out; the split as shard 0 has it after."""
        node = self.node
        now = node.clock()
        if step.do == Do.OPEN:
            await self._open(r)
            await asyncio.sleep(0.5)  # the new groups elect
        elif step.do == Do.FREEZE:
            await self.propose_on(step.shard, Freeze(now, r.version, r.shards, r.added, r.vnodes))
        elif step.do == Do.ACTIVATE:
            await self.propose_on(step.shard, Activate(now, r.version))
        elif step.do == Do.ABORT:
            await self.propose_on(step.shard, AbortSplit(now, r.version))
        elif step.do == Do.EXPORT:
            shard = node.shards[step.shard]
            if shard.leader_ready:
                await self.export(step.shard, r.version)
            else:
                resp = await node.forward(shard, "Split", coordinator_pb2.SplitRequest(
                    op=coordinator_pb2.SPLIT_OP_EXPORT, shard=step.shard), node.config.propose_timeout * 4)
                if resp.error:
                    raise ValueError(f"shard {step.shard}: {resp.error}")
        elif step.do in (Do.MOVING, Do.ACTIVATING, Do.DONE, Do.ABORTED):
            if step.do == Do.ABORTED:
                await self._tell_all(RingRecord(node.ring.shards, node.ring.version, {}))  # (again: _publish)
            phase = {Do.MOVING: Phase.MOVING, Do.ACTIVATING: Phase.ACTIVATING, Do.DONE: Phase.DONE,
                     Do.ABORTED: Phase.ABORTED}[step.do]
            res = await node.propose(node.shards[0], ReshardStep(now, r.version, int(phase)))  # type: ignore
            reply = res.replies[0]
            assert isinstance(reply, ReshardReply)
            if reply.error:
                raise ValueError(reply.error)
            log.warning("split: %s", reply.record.text() if reply.record else "")
            assert reply.record is not None
            if step.do == Do.DONE:
                await self._publish(reply.record)
            return reply.record
        with node.shards[0].reading() as st:
            return st.reshard or r

    async def _open(self, r: split.Reshard) -> None:
        """Every member of every new shard opens its member of the group."""
        node = self.node
        rec = RingRecord(node.ring.shards, node.ring.version, {k: r.group(k) for k in r.new}, r.total, r.version)
        members = sorted({m for k in r.new for m in r.group(k)})
        await asyncio.gather(*(self._tell(rid, coordinator_pb2.SPLIT_OP_OPEN, rec) for rid in members))

    async def _tell(self, rid: str, op: int, rec: RingRecord) -> None:
        node = self.node
        if rid == node.me.id:
            if op == coordinator_pb2.SPLIT_OP_OPEN:
                node.open_split(rec)
            else:
                await node.take_ring(rec)
            return
        stub = coordinator_pb2_grpc.CoordinatorStub(node.channel(node.cluster.replica(rid).api))
        await stub.Split(coordinator_pb2.SplitRequest(op=op, ring=rec.to_json()),  # type: ignore[arg-type]
                         timeout=node.config.propose_timeout * 2)

    async def _tell_all(self, rec: RingRecord) -> set[str]:
        """*rec* to every replica (best effort); the replicas that took it."""
        node = self.node
        ids = [r.id for r in node.cluster.replicas]

        async def one(rid: str) -> str:
            try:
                await self._tell(rid, coordinator_pb2.SPLIT_OP_RING, rec)
                return rid
            except grpc.RpcError as exc:
                if (rid, rec.version) not in self._unreached:
                    self._unreached.add((rid, rec.version))
                    log.info("split: replica %s did not take ring version %d yet: %s (asked again every "
                             "second)", rid, rec.version, exc.details())
                return ""

        return {x for x in await asyncio.gather(*(one(rid) for rid in ids)) if x}

    async def _publish(self, r: split.Reshard) -> None:
        """The ring a split ended with (done: the new one; aborted: the one
        before, without the split's shards), to every replica that has not
        taken it: one that was down meanwhile gets it when it is back."""
        node = self.node
        key = (r.version, r.phase)
        done = self._published.setdefault(key, set())
        if len(done) == len(node.cluster.replicas):
            return
        if r.phase == Phase.DONE:
            if r.version < node.ring.version:
                return  # a later split is done
            rec = node.ring_after(r)
        else:
            rec = RingRecord(node.ring.shards, node.ring.version, {})
        done |= await self._tell_all(rec)

    async def propose_on(self, index: int, cmd: Freeze | Import | Activate | AbortSplit) -> SplitReply:
        """*cmd* on shard *index*'s leader (here, or asked of it); ValueError
        when the shard refuses it."""
        node = self.node
        shard = node.shards[index]
        if shard.leader_ready:
            res = await node.propose(shard, cmd)  # type: ignore[arg-type]
            reply = res.replies[0]
            assert isinstance(reply, SplitReply)
        else:
            resp = await node.forward(shard, "Split", coordinator_pb2.SplitRequest(
                op=coordinator_pb2.SPLIT_OP_PROPOSE, shard=index, command=pickle.dumps(cmd, protocol=5)),
                node.config.propose_timeout * 2)
            reply = SplitReply(resp.count, resp.error)
        if reply.error:
            raise ValueError(f"shard {index}: {type(cmd).__name__}: {reply.error}")
        return reply

    async def export(self, index: int, version: int) -> int:
        """On old shard *index*'s leader, drained: its moving files to the
        new shards, in chunks (Import), each new shard's last one marked.
        Files sent before (a leader that failed over mid-export) are
        skipped by the new shard. The number of files sent."""
        node = self.node
        shard: RaftShard = node.shards[index]  # type: ignore[assignment]
        with shard.reading() as st:
            out = st.split_out
            if out is None or out.version != version:
                raise ValueError(f"shard {index} is not frozen for ring version {version}")
            exported = st.split_export()
        if exported is None:
            raise ValueError(f"shard {index} still has running actions of moving files")
        sent = 0
        most = node.config.raft.max_command_bytes // 2
        t0 = time.monotonic()
        for target in range(out.shards, out.shards + out.added):
            if index not in split.sources_of(target, out.shards, out.added, out.vnodes, version):
                continue
            bundles = exported.get(target, [])
            chunks = _fitting(list(split.chunks(bundles)), most) or [()]
            for c, part in enumerate(chunks):
                await self.propose_on(target, Import(node.clock(), version, index, c, c == len(chunks) - 1, part))
            sent += len(bundles)
        log.info("split: shard %d sent %d moving file(s) to the new shards in %.1f s", index, sent,
                 time.monotonic() - t0)
        return sent


def _fitting(chunks: list[tuple[Any, ...]], most: int) -> list[tuple[Any, ...]]:
    """*chunks* cut again until each pickles to at most *most* bytes (a
    file alone is never cut)."""
    out: list[tuple[Any, ...]] = []
    for c in chunks:
        if len(c) > 1 and len(pickle.dumps(c, protocol=5)) > most:
            half = len(c) // 2
            out.extend(_fitting([c[:half], c[half:]], most))
        else:
            out.append(c)
    return out
