"""The gRPC servicers: thin shells over ``CoordinatorNode``."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from coordinator import convert, resharder, roles
from coordinator.agents import MAX_AGENT_ID
from coordinator.catalog import MAX_KEY, MAX_PATH, Query
from coordinator.cluster import split_addr
from coordinator.convert import InvalidRequest
from coordinator.edge import audit
from coordinator.events import ConsumerError
from coordinator.events import check_name as check_consumer_name
from coordinator.groups import RingRecord
from coordinator.policy import Policy, PolicyError, diff, parse
from coordinator.raft import NotLeader, RaftError, check_addr
from coordinator.ratelimit import Refusal
from coordinator.state import (
    CONTROL_MODES,
    MAX_LEASE_TTL,
    MAX_OWNER,
    MAX_SHARDS,
    AckEvents,
    Cancel,
    CancelRefused,
    DrainAgent,
    EditCatalog,
    EventConsumer,
    Kind,
    Lease,
    LeaseReply,
    PolicyReply,
    Rebalance,
    RelocateCopies,
    Result,
    SetControl,
    SetPolicy,
    SplitReply,
    State,
    Submit,
)
from hsm.tls import peer_of
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc, types_pb2
from hsm.wire import RETRY_AFTER_KEY, fid_to_pb

if TYPE_CHECKING:
    from coordinator.node import CoordinatorNode
    from coordinator.raft import RaftShard

from coordinator.node import (
    DEFAULT_PAGE,
    MAX_PAGE,
    RemoteShard,
    ShardUnavailable,
    WrongCluster,
    _abort_code,
    _slots_from_pb,
    _slots_to_pb,
    abort_unavailable,
)

log = logging.getLogger(__name__)


class _Refused(Exception):
    """A shard refused a user's cancel part (``CancelRefused``)."""

    def __init__(self, refused: CancelRefused) -> None:
        super().__init__(refused.reason)
        self.refused = refused


class _ConsumerProblem(Exception):
    """An event consumer command the state refused (unknown consumer, too many)."""


def _consumer_check(res: Result) -> None:
    """on_every_shard's check of an EventConsumer or AckEvents apply."""
    if res.replies[0].error:
        raise _ConsumerProblem(res.replies[0].error)


#: ReadEvents: records per shard by default and at most, and the longest wait
DEFAULT_EVENTS = 1000
MAX_EVENTS = 10_000
MAX_EVENT_WAIT = 60.0


def _limit_text(refusal: Refusal) -> str:
    if refusal.retry_after == float("inf"):
        return (f"rate limit of {refusal.key}: more requests at once than its burst of {refusal.burst} "
                "on this replica; send fewer per request")
    return (f"rate limit of {refusal.key} ({refusal.rate:g} requests/s, burst {refusal.burst} on this replica): "
            f"retry in {refusal.retry_after:.2f} s")


class _PolicyConflict(Exception):
    """A shard has a policy version at or above the one being set."""


def _policy_check(res: Result) -> None:
    """on_every_shard's check of a SetPolicy apply."""
    reply = res.replies[0]
    if isinstance(reply, PolicyReply) and reply.error:
        raise _PolicyConflict(reply.error)


class NoMajority(Exception):
    """A membership change that would leave a group without a reachable majority."""


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node

    async def Submit(self, request: coordinator_pb2.SubmitRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.SubmitResponse:  # noqa: N802
        node = self.node
        try:
            # the leader evaluates the admission rules once; the replicas
            # use its result when they apply the item at the same version
            items = convert.items_from_pb(request, node.config.archive_ids, convert.Admission(
                node.policy, node.policy_version, node.config.default_archive_id))
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        owner = await self._user(context)
        if owner:  # who submitted, from the certificate: what lets a user cancel it later
            items = [it._replace(requester=it.requester._replace(owner=owner)) for it in items]
        by_shard: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_shard.setdefault(node.ring.shard_of(it.fid), []).append(i)
        results: list[coordinator_pb2.SubmitResult | None] = [None] * len(items)
        try:
            for idx in by_shard:  # all or nothing: check before proposing anything
                node.require_leader(node.shards[idx])
            refusals = node.limits.check(items, time.monotonic())
            if refusals is not None:
                if all(refusals):
                    await self._rate_limited(context, [r for r in refusals if r is not None])
                for i, refusal in enumerate(refusals):
                    if refusal is not None:
                        results[i] = coordinator_pb2.SubmitResult(
                            outcome=coordinator_pb2.REJECTED, errno=errno.EAGAIN, reason=_limit_text(refusal))
                by_shard = {idx: kept for idx, positions in by_shard.items()
                            if (kept := [i for i in positions if refusals[i] is None])}
            now = node.clock()
            cmds = [Submit(now, tuple(items[i] for i in positions)) for positions in by_shard.values()]
            if len(cmds) > 1:  # one part alone is refused before it is proposed
                # (a derived idempotency key repeats the initiator: twice the request's size)
                estimate = 2 * request.ByteSize() + 160 * len(items)
                for cmd in cmds:
                    node.check_fits((cmd,), estimate)
            replies = await asyncio.gather(*(node.propose(node.shards[idx], cmd)
                                             for idx, cmd in zip(by_shard, cmds, strict=True)))
        except ShardUnavailable as exc:
            await abort_unavailable(context, exc)
        except InvalidRequest as exc:  # too large for one Raft entry
            await context.abort(*_abort_code(exc))
        log.info("submit of %d item(s) from %s: shards %s", len(items), items[0].requester.initiator or "?",
                 ",".join(map(str, sorted(by_shard))))
        for positions, res in zip(by_shard.values(), replies, strict=True):
            for pos, reply in zip(positions, res.replies, strict=True):
                results[pos] = coordinator_pb2.SubmitResult(
                    outcome=int(reply.outcome), action_id=reply.action_id,  # type: ignore[attr-defined]
                    errno=reply.errno, reason=reply.reason)  # type: ignore[attr-defined]
        return coordinator_pb2.SubmitResponse(results=results)

    async def _rate_limited(self, context: grpc.aio.ServicerContext, refusals: list[Refusal]) -> None:
        """Every item of a submit is over a rate limit: RESOURCE_EXHAUSTED,
        with when to retry (the ``hsm-retry-after-ms`` trailer, and said)."""
        wait = min(r.retry_after for r in refusals)
        first = min(refusals, key=lambda r: r.retry_after)
        if wait != float("inf"):
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(max(1, int(wait * 1000 + 0.999)))),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"all {len(refusals)} item(s) refused by the policy's rate limits, nothing was "
                            f"submitted: {_limit_text(first)}")

    async def Cancel(self, request: coordinator_pb2.CancelRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.CancelResponse:  # noqa: N802
        node = self.node
        try:
            targets = [convert.fid_target_from_pb(f, f"fid {i}") for i, f in enumerate(request.fids)]
            cookies = tuple(convert.cookie_target_from_pb(c, f"cookie {i}") for i, c in enumerate(request.cookies))
            convert.check_name(request.reason, "reason", 1024, empty_ok=True)
            bad = [s for s in request.shards if s >= len(node.shards)]
            if bad:
                raise InvalidRequest(f"no shard {bad[0]} (the cluster has {len(node.shards)})")
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        if not (request.action_ids or targets or request.all or cookies):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "nothing to cancel: give action ids, FIDs, cookies or all")
        wanted = set(request.shards) or set(range(len(node.shards)))
        now = node.clock()
        reason = request.reason or "canceled by request"
        results: list[coordinator_pb2.CancelResult] = []
        # an id names its shard (its last digits), or a split moved it (the old shard's tombstone)
        where = node.shards_of_actions(request.action_ids)
        id_shard = {i: s.index if (s := where.get(i)) is not None else -1 for i in request.action_ids}
        parts_of = {idx: (tuple(i for i in request.action_ids if id_shard[i] == idx),
                          tuple(t for t in targets if node.ring.shard_of(t.fid) == idx)) for idx in sorted(wanted)}
        estimate = 2 * request.ByteSize() + 64 * (len(request.action_ids) + len(targets) + len(cookies)) + 1024
        # a user (role user, or a replica forwarding a user's part) cancels
        # only actions nobody else asked for: checked on this replica's view
        # of every shard before anything is proposed, and again by each
        # shard when it applies its part (the state may have moved on)
        owner = await self._canceller(context)
        try:  # all or nothing: no part is proposed unless every part fits in one Raft entry
            for idx, (ids, fids) in parts_of.items():
                if ids or fids or request.all or cookies:
                    cmd = Cancel(now, ids, fids, request.all, reason, cookies, owner)
                    node.check_fits((cmd,), estimate)
                    if owner and node.shards[idx].hosted:  # (a shard held elsewhere: its leader checks)
                        with node.shards[idx].reading() as st:
                            refused = st.cancel_refusal(cmd)
                        if refused is not None:
                            await self._refuse_cancel(context, request, refused)
        except InvalidRequest as exc:
            await context.abort(*_abort_code(exc))

        async def one(shard_idx: int) -> list[coordinator_pb2.CancelResult]:
            # a cookie may name an action of any shard: every shard is asked,
            # and answers one result per cookie, last, in order
            shard = node.shards[shard_idx]
            ids, fids = parts_of[shard_idx]
            if not (ids or fids or request.all or cookies):
                return []
            if shard.is_leader:
                try:
                    res = await node.propose(shard, Cancel(now, ids, fids, request.all, reason, cookies, owner))
                    if res.replies and isinstance(res.replies[0], CancelRefused):
                        raise _Refused(res.replies[0])
                    return [coordinator_pb2.CancelResult(
                        action_id=r.action_id, outcome=int(r.outcome),  # type: ignore[attr-defined]
                        state=int(r.state) if r.state else 0) for r in res.replies]  # type: ignore[attr-defined]
                except ShardUnavailable:
                    pass
            part = coordinator_pb2.CancelRequest(
                action_ids=ids, fids=[f for f in request.fids if node.ring.shard_of(convert.fid_from_pb(f.fid)) == shard_idx],
                all=request.all, reason=reason, shards=[shard_idx], cookies=request.cookies)
            if owner:
                return await self._forward_for(shard, part, owner)
            resp = await node.forward(shard, "Cancel", part, node.config.propose_timeout * 2)
            return list(resp.results)

        try:
            parts = await asyncio.gather(*(one(i) for i in sorted(wanted)))
        except _Refused as exc:
            await self._refuse_cancel(context, request, exc.refused)
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except InvalidRequest as exc:  # too large for one Raft entry
            await context.abort(*_abort_code(exc))
        by_cookie: list[coordinator_pb2.CancelResult | None] = [None] * len(cookies)
        for part in parts:
            split = len(part) - len(cookies)
            results.extend(part[:split])
            for i, r in enumerate(part[split:]):
                known = by_cookie[i]
                if known is None or known.outcome == coordinator_pb2.NOT_FOUND:
                    by_cookie[i] = r
        for i in request.action_ids:
            if i % MAX_SHARDS >= len(node.shards):
                results.append(coordinator_pb2.CancelResult(action_id=i, outcome=coordinator_pb2.NOT_FOUND))
        results.extend(r or coordinator_pb2.CancelResult(outcome=coordinator_pb2.NOT_FOUND) for r in by_cookie)
        return coordinator_pb2.CancelResponse(results=results)

    async def _user(self, context: grpc.aio.ServicerContext) -> str:
        """The certificate name of a caller of role user ("" for any other
        role, and without TLS): the owner of what it submits."""
        if self.node.config.tls is None:
            return ""
        peer = peer_of(context.auth_context())
        if peer is None or peer.role != roles.USER:
            return ""
        if not peer.name or len(peer.name) > MAX_OWNER:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"a user certificate must name its user in 1-{MAX_OWNER} characters")
        return peer.name

    async def _canceller(self, context: grpc.aio.ServicerContext) -> str:
        """Whom a cancel is restricted to: the caller of role user, or the
        user a replica forwards a part for (``roles.ON_BEHALF_KEY``, read
        from replicas only); "" when it is not restricted."""
        user = await self._user(context)
        if user or self.node.config.tls is None:
            return user
        peer = peer_of(context.auth_context())
        if peer is None or peer.role != roles.REPLICA:
            return ""
        behalf = str(dict(context.invocation_metadata() or ()).get(roles.ON_BEHALF_KEY, ""))
        if behalf:
            try:
                convert.check_name(behalf, "the user a cancel is forwarded for", MAX_OWNER)
            except InvalidRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return behalf

    async def _refuse_cancel(self, context: grpc.aio.ServicerContext, request: coordinator_pb2.CancelRequest,
                             refused: CancelRefused) -> None:
        peer = peer_of(context.auth_context())
        audit(context, "/hsm.v1.Coordinator/Cancel", peer.name if peer else "", peer.role if peer else "",
              request, refused.reason)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused.reason)

    async def _forward_for(self, shard: RaftShard, part: coordinator_pb2.CancelRequest,
                           owner: str) -> list[coordinator_pb2.CancelResult]:
        """``node.forward`` of a user's cancel part, naming the user; the
        leader's refusal comes back as a refusal, not as an outage."""
        node = self.node
        try:
            resp = await node.forward(shard, "Cancel", part, node.config.propose_timeout * 2,
                                      metadata=((roles.ON_BEHALF_KEY, owner),),
                                      passthrough=(grpc.StatusCode.PERMISSION_DENIED,))
        except grpc.RpcError as exc:
            raise _Refused(CancelRefused(0, exc.details() or "refused")) from None
        return list(resp.results)

    async def GetAction(self, request: coordinator_pb2.GetActionRequest, context: grpc.aio.ServicerContext) -> types_pb2.Action:  # noqa: N802
        node = self.node
        shard = node.shard_of_action(request.action_id)
        if shard is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {request.action_id}")
        try:
            node.require_leader(shard)
        except ShardUnavailable as exc:
            await abort_unavailable(context, exc)
        with shard.reading() as st:
            action = st.get(request.action_id)
            pb = node.action_pb(st, action, shard.index) if action is not None else None
        if pb is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {request.action_id}")
        return pb

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
        bad = [x for x in request.shards if x >= len(node.shards)]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no shard {bad[0]}")
        if not states and not request.include_terminal:
            states = [State.WAITING, State.STARTED, State.CANCELING]
        page = request.page_size or DEFAULT_PAGE
        if target is not None:
            wanted = [node.ring.shard_of(target.fid)]
        else:
            wanted = sorted(set(request.shards) or range(len(node.shards)))

        async def one(idx: int) -> tuple[list[types_pb2.Action], bool]:
            """The shard's first actions after the cursor, and whether it has more."""
            shard = node.shards[idx]
            if not shard.is_leader:
                part = coordinator_pb2.ListActionsRequest()
                part.CopyFrom(request)
                part.page_size = page
                del part.shards[:]
                part.shards.append(idx)
                resp = await node.forward(shard, "ListActions", part, node.config.propose_timeout)
                return list(resp.actions), bool(resp.next_page_token)
            out = []
            with shard.reading() as st:
                for a in st.iter_actions(states, kinds, request.agent, after):
                    if target and (a.fid != target.fid or (target.fsname and a.fsname != target.fsname)
                                   or (target.kind and a.kind != target.kind)):
                        continue
                    out.append(node.action_pb(st, a, idx))
                    if len(out) > page:
                        break
            return out, False

        try:
            parts = await asyncio.gather(*(one(i) for i in wanted))
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        found = sorted((pb for part, _ in parts for pb in part), key=lambda pb: pb.action_id)
        token = ""
        if len(found) > page or (found and any(more for _, more in parts)):
            found = found[:page]
            token = str(found[-1].action_id)
        return coordinator_pb2.ListActionsResponse(actions=found, next_page_token=token)

    async def MoveCopies(self, request: coordinator_pb2.MoveCopiesRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ListCopiesResponse:  # noqa: N802
        """The copies of a deleted file given to the file recreated from
        them: read on the old FID's shard, recorded on the new FID's, then
        forgotten on the old one's (each on its leader). Answers the copies
        the new file has."""
        src_pb = getattr(request, "from")
        try:
            src = convert.fid_target_from_pb(src_pb, "from")
            dst = convert.fid_target_from_pb(request.to, "to")
            if not src.fsname or not dst.fsname:
                raise InvalidRequest("from and to each need their fsname")
            if (src.fsname, src.fid) == (dst.fsname, dst.fid):
                raise InvalidRequest("from and to are the same file")
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        read = coordinator_pb2.ListCopiesRequest(fid=coordinator_pb2.FidSelector(fsname=src.fsname, fid=src_pb.fid))
        have = await self.ListCopies(read, context)
        if not have.copies:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"the catalog has no copy of {src.fsname}:{src.fid}")
        keyless = [e.copy.archive_id for e in have.copies if not e.copy.key]
        if keyless:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the copies of {src.fid} in archive id(s) {', '.join(map(str, keyless))} have no "
                                "object key (their mover did not say where it wrote them): another FID cannot "
                                "find them")
        copies = [e.copy for e in have.copies]
        for part in (coordinator_pb2.EditCatalogRequest(file=request.to, copies=copies),
                     coordinator_pb2.EditCatalogRequest(file=src_pb, forget=True)):
            await self.EditCatalog(part, context)
        out = coordinator_pb2.ListCopiesResponse()
        for c in copies:
            out.copies.add(fsname=dst.fsname, fid=request.to.fid, copy=c)
        return out

    async def RelocateCopies(self, request: coordinator_pb2.RelocateCopiesRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.EditCatalogResponse:  # noqa: N802
        """Packed copies moved to another container, each on its FID's
        shard (led here: proposed; else forwarded to its leader)."""
        node = self.node
        by_shard: dict[int, list[Any]] = {}
        try:
            if len(request.moves) > MAX_PAGE:
                raise InvalidRequest(f"at most {MAX_PAGE} moves a call, not {len(request.moves)}")
            for i, m in enumerate(request.moves):
                target = convert.fid_target_from_pb(m.file, f"moves[{i}].file")
                if not target.fsname:
                    raise InvalidRequest(f"moves[{i}].file needs its fsname")
                for name in ("from_container", "to_container"):
                    text = getattr(m, name)
                    if not text or len(text.encode()) > MAX_KEY or "\0" in text:
                        raise InvalidRequest(f"moves[{i}].{name} must be 1 to {MAX_KEY} bytes without NUL")
                if not 0 < m.archive_id or m.to_slot >= 1 << 63:
                    raise InvalidRequest(f"moves[{i}]: archive id 1 or more, to_slot under 2**63")
                by_shard.setdefault(node.ring.shard_of(target.fid), []).append(
                    (m, (target.fsname, target.fid, m.archive_id, m.from_container, m.to_container, m.to_slot)))
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        moved = 0
        for idx, part in sorted(by_shard.items()):
            moved += await self._edit_on_leader(
                node.shards[idx], RelocateCopies(time.time(), tuple(mv for _m, mv in part)), "RelocateCopies",
                coordinator_pb2.RelocateCopiesRequest(moves=[m for m, _mv in part]), context)
        return coordinator_pb2.EditCatalogResponse(changed=moved)

    async def _edit_on_leader(self, shard: RaftShard, cmd: EditCatalog | RelocateCopies, method: str,
                              request: Any, context: grpc.aio.ServicerContext) -> int:
        """A catalog edit of one shard: *cmd* proposed when this replica
        leads it, else *request* (the same edit) forwarded to its leader;
        how many copies changed."""
        node = self.node
        try:
            if shard.is_leader:
                return int((await node.propose(shard, cmd)).replies[0])
            resp = await node.forward(shard, method, request, node.config.propose_timeout)
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return int(resp.changed)

    async def EditCatalog(self, request: coordinator_pb2.EditCatalogRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.EditCatalogResponse:  # noqa: N802
        """One half of MoveCopies, on the file's shard's leader (forwarded there)."""
        node = self.node
        try:
            target = convert.fid_target_from_pb(request.file, "file")
            if not target.fsname:
                raise InvalidRequest("file needs its fsname")
            copies = tuple(convert.copy_from_pb(c).values() for c in request.copies)
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        changed = await self._edit_on_leader(
            node.shards[node.ring.shard_of(target.fid)],
            EditCatalog(time.time(), target.fsname, target.fid, copies, request.forget), "EditCatalog", request,
            context)
        return coordinator_pb2.EditCatalogResponse(changed=changed)

    async def ListCopies(self, request: coordinator_pb2.ListCopiesRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ListCopiesResponse:  # noqa: N802
        """One page of one shard's catalog, read on its leader (a replica
        forwards the shard it does not lead), in (fsname, FID) order."""
        node = self.node
        try:
            target = convert.fid_target_from_pb(request.fid, "fid") if request.HasField("fid") else None
            after = convert.fid_target_from_pb(request.after, "after") if request.HasField("after") else None
            if request.page_size > MAX_PAGE:
                raise InvalidRequest(f"page_size {request.page_size} is over {MAX_PAGE}")
            if len(request.path_prefix.encode()) > MAX_PATH or "\0" in request.path_prefix:
                raise InvalidRequest(f"path_prefix must be at most {MAX_PATH} bytes without NUL")
            query = Query(request.archive_id, request.archived_before, request.archived_after,
                          request.min_size if request.HasField("min_size") else -1,
                          request.max_size if request.HasField("max_size") else -1,
                          request.uid if request.HasField("uid") else -1, request.path_prefix)
        except (InvalidRequest, ValueError) as exc:
            await context.abort(*_abort_code(exc))
        idx = node.ring.shard_of(target.fid) if target is not None else request.shard
        if idx >= len(node.shards):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"no shard {idx} (the cluster has {len(node.shards)})")
        shard = node.shards[idx]
        if not shard.is_leader:
            try:
                resp: coordinator_pb2.ListCopiesResponse = await node.forward(shard, "ListCopies", request,
                                                                             node.config.propose_timeout)
            except ShardUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return resp
        page = request.page_size or DEFAULT_PAGE
        out = coordinator_pb2.ListCopiesResponse()
        with shard.reading() as st:
            catalog = st.catalog
            out.files, out.total = len(catalog.files), len(catalog)
            if target is not None:
                found = ([((target.fsname, target.fid), c) for c in catalog.of(target.fsname, target.fid)]
                         if target.fsname else catalog.of_fid(target.fid))
                found = [(k, c) for k, c in found if query.matches(c)]
                nxt = None
            else:
                found, nxt = catalog.query(query, (after.fsname, after.fid) if after is not None else None, page)
        for (fsname, fid), c in found:
            out.copies.add(fsname=fsname, fid=fid_to_pb(fid), copy=convert.copy_to_pb(c))
        if nxt is not None:
            out.next.CopyFrom(coordinator_pb2.FidSelector(fsname=nxt[0], fid=fid_to_pb(nxt[1])))
        return out

    async def Watch(self, request: coordinator_pb2.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[coordinator_pb2.WatchEvent]:  # noqa: N802
        node = self.node
        ids = list(dict.fromkeys(request.action_ids))
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "watch needs at least one action id")
        for i in ids:
            shard = node.shard_of_action(i)
            if shard is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {i}")
            try:
                node.require_leader(shard)
            except ShardUnavailable as exc:
                await abort_unavailable(context, exc)
        q = node.watch(ids)
        try:
            pending = set()
            for i in ids:
                shard = node.shard_of_action(i)
                assert shard is not None
                with shard.reading() as st:
                    action = st.get(i)
                    pb = node.action_pb(st, action, shard.index) if action is not None else None
                if pb is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"no action {i}")
                yield coordinator_pb2.WatchEvent(action=pb)
                if pb.state < State.SUCCEEDED:
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
        node = self.node
        if request.shards:  # a part another replica asks for: the shards held here among them
            await self._check_shards(request.shards, context)
            return node.status(request.digest, request.shards)
        return await node.cluster_status(request.digest)

    async def ClusterInfo(self, request: coordinator_pb2.ClusterInfoRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ClusterInfoResponse:  # noqa: N802
        node = self.node
        return coordinator_pb2.ClusterInfoResponse(
            shard_count=node.ring.shards, ring_version=node.ring.version,
            vnodes=node.ring.vnodes,
            replicas=[coordinator_pb2.Replica(id=r.id, address=r.api) for r in node.cluster.replicas],
            cluster_id=node.cluster.cluster_id, replica=node.me.id,
            shards=[coordinator_pb2.ShardStatus(shard=s.index, leader=node.leader_id(s), commit_index=s.commit_index,
                                                applied_index=s.applied_index, term=s.term,
                                                role=("leader" if s.is_leader else "follower") if s.hosted else "",
                                                **node.group_fields(s))
                    for s in node.shards],
        )


    async def ChangeMembership(self, request: coordinator_pb2.ChangeMembershipRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ChangeMembershipResponse:  # noqa: N802
        node = self.node
        try:
            check_addr(request.raft, "Raft address")
            host, port = split_addr(request.raft)
            if port + len(node.shards) - 1 > 65535:
                raise ValueError(f"Raft ports {port}..{port + len(node.shards) - 1} do not fit")
            bad = [x for x in request.shards if x >= len(node.shards)]
            if bad:
                raise ValueError(f"no shard {bad[0]}")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        wanted = sorted(set(request.shards) or range(len(node.shards)))

        async def one(idx: int) -> None:
            shard = node.shards[idx]
            addr = f"{host}:{port + idx}"
            if shard.is_leader:
                if not request.add and addr == shard.self_addr:
                    raise ShardUnavailable(idx, "", f"shard {idx}: {addr} is this leader; hand leadership "
                                           "over (stop the replica) before removing it")
                member = addr == shard.self_addr or addr in shard.peers
                if member == request.add:
                    return  # already done (a retry, or adding this leader): nothing to change
                if not request.force:
                    await self._check_majority(shard, addr, request.add)
                try:
                    if request.add:
                        await shard.add_peer(addr, timeout=node.config.propose_timeout)
                    else:
                        await shard.remove_peer(addr, timeout=node.config.propose_timeout)
                    return
                except NotLeader:
                    pass
                except (RaftError, ValueError) as exc:
                    raise ShardUnavailable(idx, "", str(exc)) from None
            await node.forward(shard, "ChangeMembership", coordinator_pb2.ChangeMembershipRequest(
                add=request.add, raft=request.raft, shards=[idx], force=request.force),
                node.config.propose_timeout * 2)

        done: list[int] = []
        errors: list[str] = []
        for idx in wanted:  # one shard at a time: each group changes by one member
            try:
                await one(idx)
                done.append(idx)
            except ShardUnavailable as exc:
                errors.append(str(exc))
            except NoMajority as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"{exc}; changed shards: {done or 'none'}. Nothing else was changed; "
                                    "--force makes the change anyway")
        if errors:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"membership changed on shards {done or 'none'}; failed: {'; '.join(errors)}")
        return coordinator_pb2.ChangeMembershipResponse(shards=done)


    async def MoveShard(self, request: coordinator_pb2.MoveShardRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.MoveShardResponse:  # noqa: N802
        node = self.node
        known = {r.id for r in node.cluster.replicas}
        problem = ""
        if request.shard >= len(node.shards):
            problem = f"no shard {request.shard} (the cluster has {len(node.shards)})"
        elif request.target not in known or (request.source not in known and not request.lead):
            bad = request.target if request.target not in known else request.source
            problem = (f"no replica {convert.quoted(bad)} in the cluster (replicas: "
                       f"{', '.join(r.id for r in node.cluster.replicas)})")
        elif request.source == request.target and not request.lead:
            problem = "the source and the target are the same replica"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        led_here = node.shards[request.shard].leader_ready
        try:
            resp = await node.begin_move(request.shard, request.source, request.target, request.abort, request.lead)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"shard {request.shard}: {exc}")
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"shard {request.shard}: no leader took the request, "
                                f"retry (it is idempotent): {exc}")
        if led_here:
            what = (f"{request.target} preferred as leader" if request.lead
                    else f"abort of the move {request.source} -> {request.target}" if request.abort
                    else f"move of {request.source} to {request.target} begun")
            log.warning("shard %d: %s (asked by %s)", request.shard, what, context.peer())
        return resp

    async def Rebalance(self, request: coordinator_pb2.RebalanceRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.RebalanceResponse:  # noqa: N802
        node = self.node
        known = {r.id for r in node.cluster.replicas}
        for name in (request.drain, request.undrain):
            if name and name not in known:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no replica {convert.quoted(name)} in the "
                                    f"cluster (replicas: {', '.join(r.id for r in node.cluster.replicas)})")
        if request.enabled > 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "enabled: 0 (unchanged), 1 (on) or 2 (off)")
        shard0 = node.shards[0]
        if not shard0.leader_ready:
            try:
                resp: coordinator_pb2.RebalanceResponse = await node.forward(shard0, "Rebalance", request,
                                                                            node.config.propose_timeout * 2)
            except ShardUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the rebalancer (shard 0's leader) did not "
                                    f"answer, retry: {exc}")
            return resp
        assert not isinstance(shard0, RemoteShard)
        now = node.clock()
        cmds: list[Rebalance] = []
        if request.drain:
            cmds.append(Rebalance(now, request.drain, True))
        if request.undrain:
            cmds.append(Rebalance(now, request.undrain, False))
        if request.enabled:
            cmds.append(Rebalance(now, enabled=1 if request.enabled == 1 else 0))
        if cmds:
            try:
                await node.propose_all(shard0, cmds)
            except ShardUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"not recorded, retry: {exc}")
            log.warning("rebalancer: %s (asked by %s)", "; ".join(
                ([f"replica {request.drain} drained"] if request.drain else [])
                + ([f"replica {request.undrain} no longer drained"] if request.undrain else [])
                + ([f"turned {'on' if request.enabled == 1 else 'off'}"] if request.enabled else [])), context.peer())
        enabled, drained, step, why = node.rebalance_view()
        groups = node.groups_now()
        out = coordinator_pb2.RebalanceResponse(enabled=enabled, drained=sorted(drained))
        for r in node.cluster.replicas:
            held = leads = 0
            if not isinstance(groups, str):
                held = sum(r.id in g for g in groups)
                leads = sum(bool(g) and g[0] == r.id for g in groups)
            out.replicas.add(id=r.id, shards=held, leads=leads, drained=r.id in drained)
        if step is not None:
            out.next = (f"move shard {step.shard}'s member {step.source} to {step.target}" if step.kind == "move"
                        else f"make {step.target} shard {step.shard}'s preferred leader instead of {step.source}")
            if not enabled:
                out.next += " (the rebalancer is off)"
        else:
            out.next = why
        return out

    async def JoinShard(self, request: coordinator_pb2.JoinShardRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.JoinShardResponse:  # noqa: N802
        node = self.node
        if request.shard >= len(node.shards):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no shard {request.shard}")
        try:
            await node.join(request.shard, list(request.members))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (OSError, RaftError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"shard {request.shard}: could not open its member "
                                f"here: {exc}")
        return coordinator_pb2.JoinShardResponse(held=True)

    async def Reshard(self, request: coordinator_pb2.ReshardRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ReshardResponse:  # noqa: N802
        node = self.node
        if request.add and request.abort:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "add shards or abort the split, not both")
        if request.add > MAX_SHARDS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a split adds at most {MAX_SHARDS - 1} shards")
        shard0 = node.shards[0]
        if not shard0.leader_ready:
            try:
                resp: coordinator_pb2.ReshardResponse = await node.forward(
                    shard0, "Reshard", request, node.config.propose_timeout * 2,
                    passthrough=(grpc.StatusCode.FAILED_PRECONDITION,))
            except ShardUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"shard 0's leader, which records splits, did not "
                                    f"answer; retry: {exc}")
            except grpc.RpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return resp
        try:
            out = await node.resharder.request(request.add, request.abort)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not recorded, retry: {exc}")
        if request.add or request.abort:
            log.warning("split asked by %s: %s", context.peer(), out.split)
        return out

    async def Split(self, request: coordinator_pb2.SplitRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.SplitResponse:  # noqa: N802
        node = self.node
        op = request.op
        try:
            if op in (coordinator_pb2.SPLIT_OP_OPEN, coordinator_pb2.SPLIT_OP_RING):
                try:
                    record = RingRecord.from_json(request.ring)
                except ValueError as exc:
                    raise InvalidRequest(f"ring: {exc}") from None
                if max(record.shards, record.pending) > MAX_SHARDS or record.version < 1:
                    raise InvalidRequest("ring: not a ring of this cluster")
                if op == coordinator_pb2.SPLIT_OP_OPEN:
                    node.open_split(record)
                else:
                    await node.take_ring(record)
                return coordinator_pb2.SplitResponse()
            if op not in (coordinator_pb2.SPLIT_OP_PROPOSE, coordinator_pb2.SPLIT_OP_EXPORT,
                          coordinator_pb2.SPLIT_OP_FACTS):
                raise InvalidRequest(f"unknown split op {op}")
            if request.shard >= len(node.shards):
                raise InvalidRequest(f"no shard {request.shard}")
            shard = node.shards[request.shard]
            if not shard.leader_ready:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"this replica does not lead shard {request.shard}")
            assert not isinstance(shard, RemoteShard)
            if op == coordinator_pb2.SPLIT_OP_FACTS:
                with shard.reading() as st:
                    return coordinator_pb2.SplitResponse(facts=resharder.facts_pb(st.split_facts()))
            if op == coordinator_pb2.SPLIT_OP_EXPORT:
                with shard.reading() as st:
                    version = st.split_out.version if st.split_out is not None else 0
                try:
                    n = await node.resharder.export(request.shard, version)
                except ValueError as exc:
                    return coordinator_pb2.SplitResponse(error=str(exc))
                return coordinator_pb2.SplitResponse(count=n)
            cmd = resharder.load_command(request.command)
            res = await node.propose(shard, cmd)
            reply = res.replies[0]
            assert isinstance(reply, SplitReply)
            return coordinator_pb2.SplitResponse(count=reply.count, error=reply.error)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ShardUnavailable as exc:
            await abort_unavailable(context, exc)
        except (OSError, RaftError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"split: {exc}")

    async def LeaveShard(self, request: coordinator_pb2.LeaveShardRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.JoinShardResponse:  # noqa: N802
        node = self.node
        if request.shard >= len(node.shards):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no shard {request.shard}")
        try:
            held = await node.leave(request.shard, request.prepare)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return coordinator_pb2.JoinShardResponse(held=held)

    async def _check_majority(self, shard: RaftShard, addr: str, add: bool) -> None:
        """NoMajority if the change would leave the group without a majority
        reachable now (``CoordinatorNode.majority_problem``)."""
        problem = await self.node.majority_problem(shard, addr, add)
        if problem:
            raise NoMajority(f"shard {shard.index}: {'adding' if add else 'removing'} {addr}: {problem}")

    async def Control(self, request: coordinator_pb2.ControlRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ControlResponse:  # noqa: N802
        node = self.node
        if request.mode not in CONTROL_MODES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown control mode {convert.quoted(request.mode)} (enabled, disabled, shutdown)")
        await self._check_shards(request.shards, context)
        # A request naming shards is a part another replica forwards (clients
        # ask for every shard): the replica the admin asked logs the change,
        # once, when every shard has it.
        forwarded = bool(request.shards)
        targets = sorted(set(request.shards)) or list(range(len(node.shards)))
        before: set[str] = set()
        for i in targets:
            if node.shards[i].hosted:
                with node.shards[i].reading() as st:
                    before.add(st.control)
        was = before.pop() if len(before) == 1 else "mixed (" + ",".join(sorted(before)) + ")"
        where = "every shard" if not request.shards else "shard(s) " + ",".join(map(str, targets))
        now = node.clock()
        try:
            await node.on_every_shard(
                request.shards, lambda _i: SetControl(now, request.mode), "Control",
                lambda i: coordinator_pb2.ControlRequest(mode=request.mode, shards=[i]), lambda _s, _r: None)
        except ShardUnavailable as exc:
            if not forwarded:
                log.warning("control mode change from %s to %s (asked by %s) not confirmed on every shard: %s",
                            was, request.mode, context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"control mode not set everywhere, retry: {exc}")
        if forwarded:
            log.debug("control mode %s applied on %s for %s", request.mode, where, context.peer())
        elif was == request.mode:
            log.info("control mode %s on %s, unchanged (asked by %s)", request.mode, where, context.peer())
        else:
            log.info("control mode changed from %s to %s on %s (asked by %s)", was, request.mode, where,
                     context.peer())
        node._wake.set()
        return coordinator_pb2.ControlResponse(mode=request.mode)

    def _policy_response(self, changes: Iterable[str] = (),
                         warnings: Iterable[str] = ()) -> coordinator_pb2.PolicyResponse:
        node = self.node
        shards = []
        newest = None
        for shard in node.hosted:
            with shard.reading() as st:
                shards.append(coordinator_pb2.ShardPolicy(shard=shard.index, version=st.policy_version))
                if newest is None or st.policy_version > newest[0]:
                    newest = (st.policy_version, st.policy, st.policy_set)
        assert newest is not None
        version, policy, (at, by) = newest
        return coordinator_pb2.PolicyResponse(version=version, text=policy.text or policy.dump(), set_at=at,
                                              set_by=by, changes=list(changes), shards=shards,
                                              warnings=list(warnings))

    async def GetPolicy(self, request: coordinator_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.PolicyResponse:  # noqa: N802
        return self._policy_response()

    async def SetPolicy(self, request: coordinator_pb2.SetPolicyRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.PolicyResponse:  # noqa: N802
        node = self.node
        try:
            new = parse(request.text)
        except PolicyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the policy has {len(exc.errors)} error(s), "
                                f"nothing was changed:\n{exc}")
        problems = node.policy_problems(new)
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the policy does not fit this cluster, nothing was changed:\n" + "\n".join(problems))
        await self._check_shards(request.shards, context)
        forwarded = bool(request.shards)
        current = node.policy_version
        base = node.policy
        if forwarded:
            version = request.version
        else:
            held: list[tuple[int, Policy]] = []  # each shard's here
            for shard in node.hosted:
                with shard.reading() as st:
                    held.append((st.policy_version, st.policy))
            current = max([current, *(v for v, _ in held)])
            newest = max(held, key=lambda h: h[0], default=None)
            behind = min(held, key=lambda h: h[0], default=None)
            # the same text again while a shard here lacks the newest version:
            # the retry of a set that failed half-way completes that version,
            # and says what it changes (else: the next version)
            completes = (current >= 2 and newest is not None and behind is not None and newest[0] == current
                         and newest[1].text == request.text and behind[0] < current)
            was, base = behind if completes and behind is not None else (current, base)
            if request.expect_version and request.expect_version not in (current, was):
                await context.abort(grpc.StatusCode.ABORTED,
                                    f"the policy is at version {current}, not {request.expect_version}: "
                                    "someone set it meanwhile; look at it again (hsmctl policy get)")
            # version 1 is the seed each shard's first leader sets from its
            # configuration: an admin's set is version 2 at least, so that
            # the two never race for one version number
            version = current if completes else max(current, 1) + 1
        changes = diff(base, new)
        warnings = [] if forwarded else node.policy_warnings(new)
        if request.dry_run:
            return self._policy_response(changes, warnings)
        for i in sorted(set(request.shards)) or range(len(node.shards)):
            if not node.shards[i].hosted:
                continue  # its leader checks
            with node.shards[i].reading() as st:  # what the apply would refuse: refused before any proposal
                have, same = st.policy_version, st.policy.text == request.text
            if version < have or (version == have and not same):
                await context.abort(grpc.StatusCode.ABORTED,
                                    f"shard {i} has policy version {have} already; policy version {version} was "
                                    "not set (another set raced this one): look again (hsmctl policy get)")
        now = node.clock()
        by = await self._who(context)
        if forwarded and request.set_by and (node.config.tls is None or by.endswith("(role replica)")):
            by = request.set_by[:MAX_OWNER]  # a part another replica forwards: whom it set it for
        try:
            await node.on_every_shard(
                request.shards, lambda _i: SetPolicy(now, version, request.text, by), "SetPolicy",
                lambda i: coordinator_pb2.SetPolicyRequest(text=request.text, shards=[i], version=version,
                                                           set_by=by),
                lambda _s, _r: None, _policy_check)
        except _PolicyConflict as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"policy version {version} not set everywhere: {exc}; "
                                "run the set again (it sets the next version on every shard)")
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"policy version {version} not confirmed on every shard, retry the set: {exc}")
        if not forwarded:
            log.warning("policy version %d set by %s (%s)", version, by,
                        "; ".join(changes[:10]) + (f"; and {len(changes) - 10} more" if len(changes) > 10 else "")
                        if changes else "no change in meaning")
        return self._policy_response(changes, warnings)

    async def _who(self, context: grpc.aio.ServicerContext) -> str:
        """Who calls: the certificate's name and role, else the peer address."""
        if self.node.config.tls is not None:
            peer = peer_of(context.auth_context())
            if peer is not None:
                return f"{peer.name} (role {peer.role})"
        return context.peer()

    async def DrainAgent(self, request: coordinator_pb2.DrainAgentRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.DrainAgentResponse:  # noqa: N802
        node = self.node
        agent_id = request.agent_id
        try:
            convert.check_name(agent_id, "agent id", MAX_AGENT_ID)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._check_shards(request.shards, context)
        if not request.shards and not request.force and not node.agent_known(agent_id):
            names = sorted(node.sessions)
            known = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no agent {agent_id!r} is known to replica {node.me.id} (connected: {known}); "
                                "check the id with 'hsmctl agents', or use --force to drain it before it connects")
        now = node.clock()

        def reply(shard: RaftShard, response: coordinator_pb2.DrainAgentResponse | None) -> dict[Kind, int]:
            if response is None:
                return node.held_counts(shard, agent_id)
            return _slots_from_pb(response.running)

        try:
            per_shard = await node.on_every_shard(
                request.shards, lambda _i: DrainAgent(now, agent_id, request.drain), "DrainAgent",
                lambda i: coordinator_pb2.DrainAgentRequest(agent_id=agent_id, drain=request.drain, shards=[i],
                                                            force=True),
                reply)
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"agent {agent_id} not drained on every shard, retry: {exc}")
        running = {k: sum(c[k] for c in per_shard) for k in Kind}
        if not request.shards:
            log.warning("agent %s %s (%d action(s) running)", agent_id,
                        "drained: no new work" if request.drain else "given work again", sum(running.values()))
        node._wake.set()
        return coordinator_pb2.DrainAgentResponse(agent_id=agent_id, draining=request.drain,
                                                  running=_slots_to_pb(running))

    async def Lease(self, request: coordinator_pb2.LeaseRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.LeaseResponse:  # noqa: N802
        node = self.node
        try:
            convert.check_name(request.name, "lease name")
            convert.check_name(request.holder, "lease holder")
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.ttl_ms and not 1000 <= request.ttl_ms <= MAX_LEASE_TTL * 1000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"a lease's ttl must be 1000-{int(MAX_LEASE_TTL * 1000)} ms (0 gives it back), "
                                f"not {request.ttl_ms}")
        shard = node.shards[0]
        try:
            node.require_leader(shard)
            res = await node.propose(shard, Lease(node.clock(), request.name, request.holder, request.ttl_ms / 1000))
        except ShardUnavailable as exc:
            await abort_unavailable(context, exc)
        reply = res.replies[0]
        assert isinstance(reply, LeaseReply)
        held = node.leases_held.get(request.name)
        if reply.holder != held:
            if reply.holder:
                log.info("lease %s now held by %s", request.name, reply.holder)
            else:
                log.info("lease %s given back by %s", request.name, request.holder)
            node.leases_held[request.name] = reply.holder
        return coordinator_pb2.LeaseResponse(granted=reply.granted, holder=reply.holder,
                                             remaining_ms=int(reply.remaining * 1000))

    # -- HSM events ----------------------------------------------------------------

    async def EventConsumer(self, request: coordinator_pb2.EventConsumerRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.EventConsumerResponse:  # noqa: N802
        node = self.node
        name = request.name
        await self._check_consumer(name, context)
        await self._check_shards(request.shards, context)
        now = node.clock()
        try:
            parts = await node.on_every_shard(
                request.shards, lambda _i: EventConsumer(now, name, not request.deregister), "EventConsumer",
                lambda i: coordinator_pb2.EventConsumerRequest(name=name, deregister=request.deregister, shards=[i]),
                self._cursor_reply(name), _consumer_check)
        except _ConsumerProblem as exc:
            code = grpc.StatusCode.NOT_FOUND if "no event consumer" in str(exc) else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"event consumer {name!r} not "
                                f"{'deregistered' if request.deregister else 'registered'} on every shard, retry: {exc}")
        if not request.shards:
            log.info("event consumer %s %s (asked by %s)", name,
                     "deregistered" if request.deregister else "registered", context.peer())
        return coordinator_pb2.EventConsumerResponse(cursors=[c for part in parts for c in part])

    async def ReadEvents(self, request: coordinator_pb2.ReadEventsRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.ReadEventsResponse:  # noqa: N802
        node = self.node
        name = request.consumer
        await self._check_consumer(name, context)
        limit = request.max_events or DEFAULT_EVENTS
        if limit > MAX_EVENTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_events {limit} is over {MAX_EVENTS}")
        if not 0 <= request.wait_seconds <= MAX_EVENT_WAIT or request.wait_seconds != request.wait_seconds:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"wait_seconds {request.wait_seconds}: expected 0 to {MAX_EVENT_WAIT:g}")
        await self._check_shards(request.shards, context)
        targets = sorted(set(request.shards) or range(len(node.shards)))

        def local(idx: int) -> tuple[list[coordinator_pb2.HsmEvent], list[coordinator_pb2.EventCursor]]:
            with node.shards[idx].reading() as st:
                try:
                    records, _c = st.events.read(name, limit)
                except ConsumerError as exc:
                    raise _ConsumerProblem(str(exc)) from None
                cursor = node.event_cursor(st, idx, name)
                return [node.event_pb(idx, r) for r in records], [cursor] if cursor is not None else []

        async def one(idx: int) -> tuple[list[coordinator_pb2.HsmEvent], list[coordinator_pb2.EventCursor]]:
            shard = node.shards[idx]
            if shard.is_leader and shard.leader_ready:
                # the leader only: a follower may not have applied an
                # acknowledgement yet, and would deliver records again
                found = local(idx)
                if not found[0]:
                    return found
                # a read barrier before records go out: a no-op through Raft
                # (an acknowledgement of record 0) commits only while this
                # replica still leads, after every acknowledgement committed
                # before it (an old leader cut off would answer stale records)
                try:
                    res = await node.propose(shard, AckEvents(node.clock(), name, 0))
                except ShardUnavailable:
                    pass
                else:
                    if res.replies[0].error:
                        raise _ConsumerProblem(res.replies[0].error)
                    return local(idx)
            part = coordinator_pb2.ReadEventsRequest(consumer=name, max_events=limit, shards=[idx])
            resp = await node.forward(shard, "ReadEvents", part, node.config.propose_timeout)
            return list(resp.events), list(resp.cursors)

        deadline = time.monotonic() + request.wait_seconds
        while True:
            try:
                parts = await asyncio.gather(*(one(i) for i in targets))
            except _ConsumerProblem as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except ShardUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"events not read from every shard, retry: {exc}")
            events = [e for part, _ in parts for e in part]
            left = deadline - time.monotonic()
            if events or left <= 0:
                return coordinator_pb2.ReadEventsResponse(events=events, cursors=[c for _, cs in parts for c in cs])
            # woken at once by the shards led here; the others are asked again every second
            await node.wait_events(min(left, 1.0))

    async def AckEvents(self, request: coordinator_pb2.AckEventsRequest, context: grpc.aio.ServicerContext) -> coordinator_pb2.AckEventsResponse:  # noqa: N802
        node = self.node
        name = request.consumer
        await self._check_consumer(name, context)
        await self._check_shards([c.shard for c in request.upto], context)
        now = node.clock()
        upto: dict[int, int] = {}
        for c in request.upto:
            upto[c.shard] = max(upto.get(c.shard, 0), c.acked)
        if not upto:
            return coordinator_pb2.AckEventsResponse()
        try:
            parts = await node.on_every_shard(
                upto, lambda i: AckEvents(now, name, upto[i]), "AckEvents",
                lambda i: coordinator_pb2.AckEventsRequest(
                    consumer=name, upto=[coordinator_pb2.EventCursor(shard=i, acked=upto[i])]),
                self._cursor_reply(name), _consumer_check)
        except _ConsumerProblem as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ShardUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"acknowledgement not applied on every shard named, "
                                f"retry (it is idempotent): {exc}")
        return coordinator_pb2.AckEventsResponse(cursors=[c for part in parts for c in part])

    @staticmethod
    async def _check_consumer(name: str, context: grpc.aio.ServicerContext) -> None:
        try:
            check_consumer_name(name)
        except ConsumerError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _cursor_reply(self, name: str) -> Callable[[RaftShard, Any], list[coordinator_pb2.EventCursor]]:
        """on_every_shard's reply for the event consumer commands: *name*'s
        cursor in the shard after a local apply, or the leader's answer."""
        node = self.node

        def reply(shard: RaftShard, response: Any) -> list[coordinator_pb2.EventCursor]:
            if response is not None:
                return list(response.cursors)
            with shard.reading() as st:
                cursor = node.event_cursor(st, shard.index, name)
            return [cursor] if cursor is not None else []

        return reply

    async def _check_shards(self, shards: Iterable[int], context: grpc.aio.ServicerContext) -> None:
        bad = [x for x in shards if x >= len(self.node.shards)]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no shard {bad[0]}")


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, node: CoordinatorNode) -> None:
        self.node = node

    async def Report(self, request: agent_pb2.ReportRequest, context: grpc.aio.ServicerContext) -> agent_pb2.ReportResponse:  # noqa: N802
        node = self.node
        try:
            convert.check_name(request.agent_id, "agent id", MAX_AGENT_ID)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # each report to the shard that holds its action: the one its id names,
        # or the one a split moved it to (the old shard's tombstone)
        per_shard: dict[int, tuple[list[agent_pb2.Progress], list[agent_pb2.Done]]] = {}
        where = node.shards_of_actions([p.action_id for p in request.progress] +
                                       [d.action_id for d in request.done])
        for reports, which in ((request.progress, 0), (request.done, 1)):
            for r in reports:
                shard = where.get(r.action_id)
                if shard is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no shard {r.action_id % MAX_SHARDS}")
                per_shard.setdefault(shard.index, ([], []))[which].append(r)  # type: ignore[arg-type]
        for idx in per_shard:
            try:
                node.require_leader(node.shards[idx])
            except ShardUnavailable as exc:
                await abort_unavailable(context, exc)
        try:
            for idx, (progress, done) in per_shard.items():
                await node._apply_reports(request.agent_id, node.shards[idx], progress, done)
        except ShardUnavailable as exc:
            await abort_unavailable(context, exc)
        except InvalidRequest as exc:  # one report more than a Raft entry carries
            await context.abort(*_abort_code(exc))
        return agent_pb2.ReportResponse()

    async def Work(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.CoordinatorMessage]:  # noqa: N802
        node = self.node
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message on a Work stream must be hello")
        if node.config.tls is not None:
            # an agent works under the id its certificate names, no other
            who = peer_of(context.auth_context())
            if who is None or who.name != first.hello.agent_id:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"agent id {convert.quoted(first.hello.agent_id)} is not the one the certificate names "
                                    f"({who.name if who else 'none'!r}); an agent works under its own id only")
        try:
            session = await node.agent_hello(first.hello, context.peer())
        except (InvalidRequest, FileExistsError, WrongCluster) as exc:
            await context.abort(*_abort_code(exc))
        session.send(agent_pb2.CoordinatorMessage(welcome=agent_pb2.Welcome(
            replica=node.me.id, heartbeat_interval=node.config.heartbeat_interval,
            cluster_id=node.cluster.cluster_id, lease_seconds=node.agent_lease, acks_done=True)))
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
