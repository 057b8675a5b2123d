"""The coordinator's gRPC API over real gRPC on loopback, with mutual TLS
(conftest's ``tls_ca``: the admin's certificate for the API, an agent's own
for its Work stream): validation, dedup, cancel routing on agent streams,
watch, listing, health. Agent streams here are driven message by message
from the test (the protocol itself); real agentd processes are exercised in
the end-to-end tests."""

from __future__ import annotations

import errno as E
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.roles import AGENT, REPLICA
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2_grpc
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T

SEQ = 0x200000400


def fid(n: int) -> T.Fid:
    return T.Fid(seq=SEQ, oid=n, ver=0)


def item(n: int, kind: int = T.ARCHIVE, **kw: Any) -> C.SubmitItem:
    kw.setdefault("requester", T.Requester(initiator="test"))
    return C.SubmitItem(fsname="fs1", fid=fid(n), kind=kind, **kw)


@pytest.fixture
def stub(coordinator: Any) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    with coordinator.channel() as ch:
        yield coordinator_pb2_grpc.CoordinatorStub(ch)


class FakeAgentStream:
    """A Work stream to the coordinator *rc* (a conftest ``RunningCoordinator``)
    driven by the test, presenting agent *agent_id*'s certificate: send
    AgentMessages, read what the coordinator sends back."""

    def __init__(self, rc: Any, agent_id: str, slots: tuple[int, int, int] = (0, 0, 0),
                 running: list[agent_pb2.RunningAction] | None = None) -> None:
        self.channel = rc.channel(AGENT, agent_id)
        self.outbox: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.inbox: queue.Queue[agent_pb2.CoordinatorMessage] = queue.Queue()
        hello = agent_pb2.Hello(agent_id=agent_id, host="h", slots=C.Slots(archive=slots[0], restore=slots[1], remove=slots[2]),
                                 running=running or [])
        self.outbox.put(agent_pb2.AgentMessage(hello=hello))
        self.calls = agent_pb2_grpc.AgentServiceStub(self.channel).Work(iter(self.outbox.get, None))
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            for msg in self.calls:
                self.inbox.put(msg)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, **kw: Any) -> None:
        self.outbox.put(agent_pb2.AgentMessage(**kw))

    def ready(self, archive: int = 0, restore: int = 0, remove: int = 0) -> None:
        self.send(ready=agent_pb2.Ready(credits=C.Slots(archive=archive, restore=restore, remove=remove)))

    def expect(self, what: str, n: int = 1, timeout: float = 5.0) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {n} {what}, got {got}")
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if what == "welcome" and msg.HasField("welcome"):
                got.append(msg.welcome)
            elif what in ("assign", "cancel"):
                got.extend(getattr(msg, what))
        return got

    def close(self) -> None:
        self.outbox.put(None)
        self.calls.cancel()
        self.channel.close()


@pytest.fixture
def agents(coordinator: Any) -> Iterator[Any]:
    made: list[FakeAgentStream] = []

    def make(agent_id: str, slots: tuple[int, int, int] = (1, 1, 1)) -> FakeAgentStream:
        a = FakeAgentStream(coordinator, agent_id, slots)
        a.expect("welcome")
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def status_counts(stub: coordinator_pb2_grpc.CoordinatorStub) -> dict[tuple[int, int], int]:
    return {(c.kind, c.state): c.count for c in stub.Status(C.StatusRequest()).counts}


@pytest.mark.parametrize(
    "bad, words",
    [
        (C.SubmitItem(fsname="fs1", kind=T.ARCHIVE), "FID"),
        (item(1, kind=7), "unknown action kind"),
        (item(1, extent=T.Extent(offset=-1, length=10)), "negative extent"),
        (item(1, extent=T.Extent(offset=0, length=-5)), "extent length"),
        (item(1, data=b"x" * (1 << 20)), "at most 4096"),
        (item(1, archive_id=9), "unknown archive id 9"),
        (item(1, flags=0x80), "unknown request flags"),
        (item(1, kind=T.RESTORE, extent=T.Extent(offset=10, length=10)), "whole-file"),
        (C.SubmitItem(fsname="much-too-long-name", fid=fid(1), kind=T.ARCHIVE), "fsname"),
    ],
)
def test_malformed_submit_is_refused_whole_and_changes_nothing(stub: Any, bad: C.SubmitItem, words: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Submit(C.SubmitRequest(items=[item(100), bad]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item 1" in exc.value.details() and words in exc.value.details()
    assert status_counts(stub) == {}


def test_empty_submit_is_invalid(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Submit(C.SubmitRequest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_submit_dedup_and_idempotent_retry(stub: Any) -> None:
    reqs = [item(5, T.RESTORE, requester=T.Requester(initiator=f"oss{i}", cookie=i + 1)) for i in range(3)]
    r = stub.Submit(C.SubmitRequest(items=reqs))
    assert [x.outcome for x in r.results] == [C.CREATED, C.JOINED, C.JOINED]
    # the same cookies again (an MDT retry): nothing new, same action
    again = stub.Submit(C.SubmitRequest(items=reqs))
    assert {x.action_id for x in again.results} == {r.results[0].action_id}
    action = stub.GetAction(C.GetActionRequest(action_id=r.results[0].action_id))
    assert [q.initiator for q in action.requesters] == ["oss0", "oss1", "oss2"]
    assert status_counts(stub) == {(T.RESTORE, T.WAITING): 1}


def test_not_needed_and_not_allowed(stub: Any) -> None:
    r = stub.Submit(C.SubmitRequest(items=[
        item(1, T.RESTORE, hsm=T.HsmState(flags=0)),
        item(2, T.RESTORE, hsm=T.HsmState(flags=0x4)),  # released, not archived
    ]))
    assert r.results[0].outcome == C.NOT_NEEDED
    assert r.results[1].outcome == C.REJECTED and r.results[1].errno == E.EPERM


def test_agent_pull_assign_progress_done_and_watch(stub: Any, agents: Any) -> None:
    [res] = stub.Submit(C.SubmitRequest(items=[item(1)])).results
    events = stub.Watch(C.WatchRequest(action_ids=[res.action_id]))
    first = next(events).action
    assert first.state == T.WAITING
    a = agents("mover1")
    a.ready(archive=1)
    [asg] = a.expect("assign")
    assert (asg.action_id, asg.attempt, asg.kind, asg.fid.oid) == (res.action_id, 1, T.ARCHIVE, 1)
    a.send(progress=[agent_pb2.Progress(action_id=asg.action_id, attempt=1, bytes_done=10, bytes_total=40)])
    a.send(done=[agent_pb2.Done(action_id=asg.action_id, attempt=1, errno=0, bytes_done=40)])
    seen = [e.action for e in events]
    assert seen[-1].state == T.SUCCEEDED and seen[-1].agent == "mover1"
    assert any(s.bytes_done == 10 for s in seen)


def test_credits_are_respected(stub: Any, agents: Any) -> None:
    stub.Submit(C.SubmitRequest(items=[item(n) for n in range(10)]))
    a = agents("mover1")
    a.ready(archive=3)
    got = a.expect("assign", 3)
    assert len(got) == 3
    with pytest.raises(AssertionError):
        a.expect("assign", 1, timeout=0.5)
    counts = status_counts(stub)
    assert counts[(T.ARCHIVE, T.STARTED)] == 3 and counts[(T.ARCHIVE, T.WAITING)] == 7


def test_cancels_go_to_the_agent_holding_each_action_even_with_slots_full(stub: Any, agents: Any) -> None:
    ids = [r.action_id for r in stub.Submit(C.SubmitRequest(items=[item(n) for n in range(3)])).results]
    movers = [agents(f"m{i}") for i in range(3)]
    holder = {}
    for m in movers:
        m.ready(archive=1)  # every agent busy after this
        [asg] = m.expect("assign")
        holder[asg.action_id] = m
    assert set(holder) == set(ids)
    r = stub.Cancel(C.CancelRequest(action_ids=list(reversed(ids))))
    assert {x.outcome for x in r.results} == {C.CANCEL_SENT}
    for action_id, m in holder.items():
        [order] = m.expect("cancel")
        assert order.action_id == action_id and order.attempt == 1
    # the copy finished before the cancel landed: success wins
    m = holder[ids[0]]
    m.send(done=[agent_pb2.Done(action_id=ids[0], attempt=1, errno=0)])
    holder[ids[1]].send(done=[agent_pb2.Done(action_id=ids[1], attempt=1, errno=E.ECANCELED)])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [stub.GetAction(C.GetActionRequest(action_id=i)).state for i in ids[:2]]
        if states == [T.SUCCEEDED, T.CANCELED]:
            break
        time.sleep(0.02)
    assert states == [T.SUCCEEDED, T.CANCELED]


def test_cancel_waiting_by_fid_and_all(stub: Any) -> None:
    ids = [r.action_id for r in stub.Submit(C.SubmitRequest(items=[item(1), item(2), item(3)])).results]
    r = stub.Cancel(C.CancelRequest(fids=[C.FidSelector(fsname="fs1", fid=fid(2))]))
    assert [(x.action_id, x.outcome) for x in r.results] == [(ids[1], C.CANCEL_DONE)]
    r = stub.Cancel(C.CancelRequest(all=True))
    assert sorted(x.action_id for x in r.results) == [ids[0], ids[2]]
    assert status_counts(stub) == {(T.ARCHIVE, T.CANCELED): 3}
    with pytest.raises(grpc.RpcError) as exc:
        stub.Cancel(C.CancelRequest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_duplicate_agent_id_is_refused(coordinator: Any, agents: Any) -> None:
    agents("same")
    dup = FakeAgentStream(coordinator, "same")
    deadline = time.monotonic() + 5
    while dup.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dup.error is not None and dup.error.code() == grpc.StatusCode.ALREADY_EXISTS
    dup.close()


def test_disconnected_agent_actions_requeued_after_grace(coordinator_factory: Any) -> None:
    rc = coordinator_factory(agent_grace=0.5)
    with rc.channel() as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        [res] = stub.Submit(C.SubmitRequest(items=[item(1)])).results
        a = FakeAgentStream(rc, "flaky", (1, 0, 0))
        a.expect("welcome")
        a.ready(archive=1)
        a.expect("assign")
        a.close()
        b = FakeAgentStream(rc, "steady", (1, 0, 0))
        b.expect("welcome")
        b.ready(archive=1)
        [asg] = b.expect("assign", timeout=10)
        assert (asg.action_id, asg.attempt) == (res.action_id, 2)
        b.close()


def wait_disconnected(stub: Any, agent_id: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        agents = {a.agent_id: a for a in stub.Status(C.StatusRequest()).agents}
        if agent_id in agents and agents[agent_id].replica == "":
            return
        time.sleep(0.02)
    raise AssertionError(f"coordinator never saw {agent_id} disconnect")


def test_reconnect_reconcile_keeps_running_and_stops_unknown(coordinator: Any, stub: Any, agents: Any) -> None:
    stub.Submit(C.SubmitRequest(items=[item(1), item(2)]))
    a = agents("mover")
    a.ready(archive=2)
    got = a.expect("assign", 2)
    a.close()
    wait_disconnected(stub, "mover")
    # back within the grace period, still running only the first one, and
    # claiming an action it was never given
    running = [
        agent_pb2.RunningAction(action_id=got[0].action_id, attempt=1),
        agent_pb2.RunningAction(action_id=999000, attempt=1),
    ]
    b = FakeAgentStream(coordinator, "mover", running=running)
    orders = {o.action_id: o for o in b.expect("cancel", 2)}
    assert set(orders) == {999000, got[1].action_id}, "the stranger is stopped, the lost one confirmed"
    kept = stub.GetAction(C.GetActionRequest(action_id=got[0].action_id))
    lost = stub.GetAction(C.GetActionRequest(action_id=got[1].action_id))
    assert kept.state == T.STARTED and kept.agent == "mover"
    # not requeued until the agent confirms it does not run it (an assignment
    # from another replica could still be on its way)
    assert lost.state == T.CANCELING and "does not run it" in lost.error
    b.send(done=[agent_pb2.Done(action_id=got[1].action_id, attempt=1, errno=E.ECANCELED)])
    deadline = time.monotonic() + 5
    while stub.GetAction(C.GetActionRequest(action_id=got[1].action_id)).state != T.WAITING:
        assert time.monotonic() < deadline, "the lost action was not requeued after the agent confirmed"
        time.sleep(0.02)
    b.close()


def test_list_actions_paging_and_filters(stub: Any) -> None:
    ids = [r.action_id for r in stub.Submit(C.SubmitRequest(items=[item(n) for n in range(25)])).results]
    stub.Submit(C.SubmitRequest(items=[item(100, T.REMOVE)]))
    seen: list[int] = []
    token = ""
    while True:
        page = stub.ListActions(C.ListActionsRequest(kinds=[T.ARCHIVE], page_size=10, page_token=token))
        seen += [a.action_id for a in page.actions]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    by_fid = stub.ListActions(C.ListActionsRequest(fid=C.FidSelector(fsname="fs1", fid=fid(100))))
    assert [a.kind for a in by_fid.actions] == [T.REMOVE]
    stub.Cancel(C.CancelRequest(action_ids=ids[:5]))
    assert len(stub.ListActions(C.ListActionsRequest()).actions) == 21
    assert len(stub.ListActions(C.ListActionsRequest(include_terminal=True)).actions) == 26
    assert len(stub.ListActions(C.ListActionsRequest(states=[T.CANCELED])).actions) == 5


def test_get_unknown_action_is_not_found(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetAction(C.GetActionRequest(action_id=123456))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_serving(coordinator: Any) -> None:
    with coordinator.channel() as ch:
        h = health_pb2_grpc.HealthStub(ch)
        assert h.Check(health_pb2.HealthCheckRequest(service="hsm.v1.Coordinator")).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_garbage_on_the_socket_changes_nothing(coordinator: Any, stub: Any) -> None:
    import socket

    host, port = coordinator.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 8)
        s.settimeout(2)
        try:
            s.recv(1024)
        except OSError:
            pass
    assert status_counts(stub) == {}
    assert stub.Submit(C.SubmitRequest(items=[item(1)])).results[0].outcome == C.CREATED


def test_control_disabled_queues_and_shutdown_refuses(coordinator: Any, stub: Any, agents: Any) -> None:
    assert stub.Status(C.StatusRequest()).control == "enabled"
    stub.Control(C.ControlRequest(mode="disabled"))
    [res] = stub.Submit(C.SubmitRequest(items=[item(1)])).results
    assert res.outcome == C.CREATED
    a = agents("m1")
    a.ready(archive=1)
    with pytest.raises(AssertionError):
        a.expect("assign", 1, timeout=0.5)
    assert stub.Status(C.StatusRequest()).control == "disabled"
    stub.Control(C.ControlRequest(mode="enabled"))
    [asg] = a.expect("assign")
    assert asg.action_id == res.action_id
    stub.Control(C.ControlRequest(mode="shutdown"))
    [r] = stub.Submit(C.SubmitRequest(items=[item(2)])).results
    assert r.outcome == C.REJECTED and r.errno == E.ESHUTDOWN and "shut down" in r.reason
    with pytest.raises(grpc.RpcError) as exc:
        stub.Control(C.ControlRequest(mode="paused"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_replica_is_composed_in_one_place_without_an_import_loop() -> None:
    """node.py serves whatever it is given; the servicers call the node;
    only coordinator/server.py knows both (no node <-> servicers loop)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "coordinator"

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / name).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not imports("node.py") & {"coordinator.servicers", "coordinator.server"}
    assert "coordinator.server" not in imports("servicers.py")
    assert {"coordinator.node", "coordinator.servicers"} <= imports("server.py")


def test_undecodable_requests_are_invalid_argument_change_nothing_and_cannot_flood_the_log(
        coordinator: Any, stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every method of both services, sent bytes that are not its request
    message by a caller the method admits (the admin; the Work stream, whose
    caller is checked before its first message is read, an agent): INVALID_ARGUMENT
    naming the method, nothing changes, no ERROR and no traceback in the log,
    one WARNING for this peer (host)."""
    import logging

    from hsm.v1 import agent_pb2 as A
    from hsm.v1 import coordinator_pb2 as CP

    garbage = b"\xff\xff\xff\xff\x0f" + bytes(range(256))
    methods = [(f"/{svc.full_name}/{m.name}", m.client_streaming, m.server_streaming)
               for svc in (CP.DESCRIPTOR.services_by_name["Coordinator"], A.DESCRIPTOR.services_by_name["AgentService"])
               for m in svc.methods]
    assert len(methods) >= 10
    caplog.set_level(logging.INFO)
    with coordinator.channel() as admin, coordinator.channel(AGENT, "m1") as agent:
        for path, client_streaming, server_streaming in methods:
            ch = agent if path == "/hsm.v1.AgentService/Work" else admin
            if client_streaming:
                call = ch.stream_stream(path) if server_streaming else ch.stream_unary(path)
                request: Any = iter([garbage])
            else:
                call = ch.unary_stream(path) if server_streaming else ch.unary_unary(path)
                request = garbage
            with pytest.raises(grpc.RpcError) as err:
                out = call(request, timeout=5)
                if server_streaming:
                    list(out)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err.value.details())
            assert f"not a valid message for {path}" in err.value.details()
    assert status_counts(stub) == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    warned = [r.getMessage() for r in caplog.records if "undecodable request" in r.getMessage()]
    assert len(warned) == 1, warned
    assert stub.Submit(C.SubmitRequest(items=[item(1)])).results[0].outcome == C.CREATED


def test_undecodable_request_lines_are_one_per_peer_per_interval() -> None:
    from coordinator.edge import GarbageLog

    g = GarbageLog(interval=60, peers=2)
    assert g.note("ipv4:10.0.0.1:5000", "/m", "bad", 0.0) is not None
    # another port of the same host, within the interval: counted, not logged
    assert g.note("ipv4:10.0.0.1:5001", "/m", "bad", 1.0) is None
    assert g.note("ipv4:10.0.0.1:5002", "/m", "bad", 2.0) is None
    line = g.note("ipv4:10.0.0.1:5003", "/m", "bad", 61.0)
    assert line is not None and "2 more from this peer" in line
    assert g.note("ipv4:10.0.0.2:1", "/m", "bad", 62.0) is not None
    assert g.note("ipv4:10.0.0.3:1", "/m", "bad", 62.0) is not None  # forgets the oldest peer: bounded
    assert len(g._seen) == 2


FORGED = "evil\x00\n2026-12-05 CRITICAL replica r1: all data lost"


@pytest.mark.parametrize("call, words", [
    (lambda s: s.DrainAgent(C.DrainAgentRequest(agent_id=FORGED, drain=True, force=True)), "U+0000"),
    (lambda s: s.DrainAgent(C.DrainAgentRequest(agent_id="a" * 129, drain=True, force=True)), "at most 128"),
    (lambda s: s.Lease(C.LeaseRequest(name="bridge:fs1\n", holder="h", ttl_ms=5000)), "U+000A"),
    (lambda s: s.Lease(C.LeaseRequest(name="bridge:fs1", holder="h\u2028x", ttl_ms=5000)), "U+2028"),
    (lambda s: s.Submit(C.SubmitRequest(items=[item(1, requester=T.Requester(initiator="oss\r1"))])), "U+000D"),
    (lambda s: s.Submit(C.SubmitRequest(items=[item(1, idempotency_key="k\x1b[31m")])), "U+001B"),
    (lambda s: s.Cancel(C.CancelRequest(all=True, reason="x\nCRITICAL forged")), "U+000A"),
])
def test_ids_and_names_with_control_characters_or_too_long_are_refused_and_change_nothing(
        stub: Any, call: Any, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(stub)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()
    st = stub.Status(C.StatusRequest())
    assert not st.agents and not st.counts  # no phantom agent listed, nothing submitted


@pytest.mark.parametrize("agent_id, words", [(FORGED, "U+0000"), ("", "empty"), ("x" * 129, "at most 128"),
                                             ("tab\tid", "U+0009")])
def test_an_agent_id_with_control_characters_cannot_open_a_session_in_insecure_mode(
        coordinator_factory: Any, agent_id: str, words: str) -> None:
    """In insecure mode (plain text, nobody checked) the hello's agent id is
    all the replica has: it is checked itself. (With TLS the id must be the
    certificate's name, which ``hsm-coordinator certs`` never issues with
    such characters, test_tls_roles.)"""
    rc = coordinator_factory(insecure=True)
    a = FakeAgentStream(rc, agent_id, (1, 1, 1))
    try:
        a.thread.join(5)
        assert a.error is not None and a.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in a.error.details()
        with rc.channel() as ch:
            assert not coordinator_pb2_grpc.CoordinatorStub(ch).Status(C.StatusRequest()).agents
    finally:
        a.close()


def test_only_the_agent_holding_an_action_can_report_on_it(coordinator: Any, stub: Any, agents: Any) -> None:
    """Another agent's completion or progress for an action, on its own
    stream or through the Report RPC (which only replicas may call: a
    replica forwarding evil's report), changes nothing; the holder's does."""
    [res] = stub.Submit(C.SubmitRequest(items=[item(1)])).results
    good = agents("good")
    good.ready(archive=1)
    [asg] = good.expect("assign")
    evil = agents("evil")
    evil.send(progress=[agent_pb2.Progress(action_id=asg.action_id, attempt=1, bytes_done=99, bytes_total=99)],
              done=[agent_pb2.Done(action_id=asg.action_id, attempt=1, errno=0, bytes_done=99)])
    with coordinator.channel(REPLICA, "peer") as ch:
        agent_pb2_grpc.AgentServiceStub(ch).Report(agent_pb2.ReportRequest(
            agent_id="evil", done=[agent_pb2.Done(action_id=asg.action_id, attempt=1, errno=0)]))
    # the stream's report was applied once the replica acknowledges it
    # (a refused completion is acknowledged too: the agent may forget it)
    deadline = time.monotonic() + 5
    while True:
        msg = evil.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        if any(r.action_id == asg.action_id for r in msg.applied):
            break
    a = stub.GetAction(C.GetActionRequest(action_id=res.action_id))
    assert (a.state, a.agent, a.bytes_done) == (T.STARTED, "good", 0)
    good.send(done=[agent_pb2.Done(action_id=asg.action_id, attempt=1, errno=0, bytes_done=40)])
    deadline = time.monotonic() + 5
    while stub.GetAction(C.GetActionRequest(action_id=res.action_id)).state != T.SUCCEEDED:
        assert time.monotonic() < deadline, "the holder's completion was not applied"
        time.sleep(0.05)
