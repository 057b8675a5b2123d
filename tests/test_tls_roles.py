"""Mutual TLS and roles on a real replica (gRPC over loopback, certificates
from hsm-coordinator certs): who gets in, what each role may do, and the
audit log of what was done. A refused call changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator import certs
from coordinator.state import MAX_SHARDS
from hsm.tls import TlsFiles
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2_grpc
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T

PEOPLE = {"root1": "admin", "op": "operator", "alice": "user", "bob": "user", "mdt": "bridge", "a1": "agent",
          "r9": "replica"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d / "ca")
    certs.issue(d / "ca", "test", "replica", hosts=("127.0.0.1",))
    for name, role in PEOPLE.items():
        certs.issue(d / "ca", name, role)
    certs.issue(d / "ca", "old", "admin", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    certs.init_ca(d / "other", name="someone else's CA")
    certs.issue(d / "other", "mallory", "admin")
    return d


def files(pki: Path, name: str, ca: str = "ca") -> TlsFiles:
    return TlsFiles(pki / "ca" / "ca.pem", pki / ca / f"{name}.pem", pki / ca / f"{name}.key")


@pytest.fixture
def replica(coordinator_factory: Any, pki: Path) -> Any:
    return coordinator_factory(tls=files(pki, "test"))


def stub(replica: Any, pki: Path, name: str | None, ca: str = "ca") -> Any:
    if name is None:
        ch = grpc.secure_channel(replica.address, grpc.ssl_channel_credentials((pki / "ca" / "ca.pem").read_bytes()))
    else:
        f = files(pki, name, ca)
        ch = grpc.secure_channel(replica.address, grpc.ssl_channel_credentials(
            f.ca.read_bytes(), f.key.read_bytes(), f.cert.read_bytes()))
    return coordinator_pb2_grpc.CoordinatorStub(ch)


def item(n: int, kind: int = T.ARCHIVE) -> C.SubmitItem:
    return C.SubmitItem(fsname="fs1", fid=T.Fid(seq=0x200000400, oid=n), kind=kind,
                        requester=T.Requester(initiator="t"))


def counts(replica: Any, pki: Path) -> dict[tuple[int, int], int]:
    return {(c.kind, c.state): c.count for c in stub(replica, pki, "root1").Status(C.StatusRequest()).counts}


@pytest.mark.parametrize("name, ca", [(None, "ca"), ("mallory", "other"), ("old", "ca")],
                         ids=["no certificate", "another CA", "expired"])
def test_a_client_without_a_valid_certificate_of_the_cluster_ca_gets_nothing_done(
        replica: Any, pki: Path, name: str | None, ca: str) -> None:
    s = stub(replica, pki, name, ca)
    for call in (lambda: s.Submit(C.SubmitRequest(items=[item(1)]), timeout=5),
                 lambda: s.Control(C.ControlRequest(mode="shutdown"), timeout=5),
                 lambda: s.Status(C.StatusRequest(), timeout=5)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        # refused in the TLS handshake, before any call: the client sees no connection
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counts(replica, pki) == {}
    assert stub(replica, pki, "root1").Status(C.StatusRequest()).control == "enabled"


def test_a_plain_text_client_cannot_talk_to_a_tls_replica(replica: Any, pki: Path) -> None:
    with grpc.insecure_channel(replica.address) as ch, pytest.raises(grpc.RpcError) as err:
        coordinator_pb2_grpc.CoordinatorStub(ch).Submit(C.SubmitRequest(items=[item(1)]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counts(replica, pki) == {}


@pytest.mark.parametrize("who, call, words", [
    ("alice", lambda s: s.Submit(C.SubmitRequest(items=[item(1, T.ARCHIVE)])), "ARCHIVE is not in the user request mask"),
    ("alice", lambda s: s.Submit(C.SubmitRequest(items=[item(1, T.RESTORE), item(2, T.REMOVE)])), "item 1: REMOVE"),
    ("alice", lambda s: s.Cancel(C.CancelRequest(action_ids=[1000])),
     "Cancel is not in the user request mask (restore); alice (role user) needs role admin, operator or replica"),
    ("alice", lambda s: s.Control(C.ControlRequest(mode="shutdown")), "Control needs role admin or replica"),
    ("op", lambda s: s.Control(C.ControlRequest(mode="disabled")), "Control needs role admin or replica"),
    ("op", lambda s: s.Cancel(C.CancelRequest(all=True)), "Cancel all needs role admin"),
    ("op", lambda s: s.DrainAgent(C.DrainAgentRequest(agent_id="a1", drain=True, force=True)), "needs role admin"),
    ("op", lambda s: s.ChangeMembership(C.ChangeMembershipRequest(add=True, raft="127.0.0.1:1")), "needs role admin"),
    ("a1", lambda s: s.Status(C.StatusRequest()), "Status needs role admin, operator, bridge, user or replica"),
    ("a1", lambda s: s.Submit(C.SubmitRequest(items=[item(1)])), "the certificate of a1 (role agent)"),
    ("mdt", lambda s: s.Control(C.ControlRequest(mode="shutdown")), "Control needs role admin"),
    ("alice", lambda s: s.Lease(C.LeaseRequest(name="bridge:fs1", holder="alice", ttl_ms=5000)), "Lease needs role"),
    # the catalog names every archived file, its owner and path
    ("alice", lambda s: s.ListCopies(C.ListCopiesRequest()), "ListCopies needs role admin, operator or replica"),
    ("a1", lambda s: s.ListCopies(C.ListCopiesRequest()), "ListCopies needs role"),
    # moving copies to another FID, and writing the catalog directly (replicas only: MoveCopies's halves)
    ("alice", lambda s: s.MoveCopies(C.MoveCopiesRequest()), "MoveCopies needs role admin, operator or replica"),
    ("op", lambda s: s.EditCatalog(C.EditCatalogRequest(forget=True)), "EditCatalog needs role replica"),
    ("root1", lambda s: s.EditCatalog(C.EditCatalogRequest(forget=True)), "EditCatalog needs role replica"),
    ("alice", lambda s: s.RelocateCopies(C.RelocateCopiesRequest()), "RelocateCopies needs role admin, operator"),
    # scale-out: moving shards and the rebalancer are the admin's; opening or closing a replica's
    # member of a group only another replica's (a move's driver), not even the admin's
    ("op", lambda s: s.MoveShard(C.MoveShardRequest(shard=0, source="r1", target="r2")), "MoveShard needs role admin"),
    ("op", lambda s: s.Rebalance(C.RebalanceRequest(enabled=2)), "Rebalance needs role admin or replica"),
    ("alice", lambda s: s.Rebalance(C.RebalanceRequest(drain="r1")), "Rebalance needs role admin or replica"),
    ("root1", lambda s: s.JoinShard(C.JoinShardRequest(shard=0, members=["r1"])), "JoinShard needs role replica"),
    ("root1", lambda s: s.LeaveShard(C.LeaveShardRequest(shard=0)), "LeaveShard needs role replica"),
    ("a1", lambda s: s.LeaveShard(C.LeaveShardRequest(shard=0, prepare=True)), "LeaveShard needs role replica"),
    # a split is asked by an admin; its steps (a pickled command among them) pass between replicas only
    ("op", lambda s: s.Reshard(C.ReshardRequest(add=1)), "Reshard needs role admin or replica"),
    ("root1", lambda s: s.Split(C.SplitRequest(op=C.SPLIT_OP_PROPOSE, shard=0, command=b"x")),
     "Split needs role replica"),
])
def test_each_role_is_refused_what_it_may_not_do_and_nothing_changes(
        replica: Any, pki: Path, who: str, call: Any, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(stub(replica, pki, who))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert words in err.value.details(), err.value.details()
    assert counts(replica, pki) == {}
    st = stub(replica, pki, "root1").Status(C.StatusRequest())
    assert st.control == "enabled" and not st.agents


def test_each_role_may_do_its_job(replica: Any, pki: Path) -> None:
    # a user restores; an operator archives and cancels what it names; the
    # bridge submits any kind, cancels and takes its lease; an admin sets the mode
    [r] = stub(replica, pki, "alice").Submit(C.SubmitRequest(items=[item(1, T.RESTORE)])).results
    assert r.outcome == C.CREATED
    [a] = stub(replica, pki, "op").Submit(C.SubmitRequest(items=[item(2)])).results
    assert stub(replica, pki, "op").Cancel(C.CancelRequest(action_ids=[a.action_id])).results[0].outcome == C.CANCEL_DONE
    assert stub(replica, pki, "mdt").Submit(C.SubmitRequest(items=[item(3, T.REMOVE)])).results[0].outcome == C.CREATED
    # the bridge relays the MDT's cancels (of any action it names, never all)
    [b] = stub(replica, pki, "mdt").Submit(C.SubmitRequest(items=[item(4)])).results
    assert stub(replica, pki, "mdt").Cancel(C.CancelRequest(action_ids=[b.action_id])).results[0].outcome == C.CANCEL_DONE
    with pytest.raises(grpc.RpcError) as err:
        stub(replica, pki, "mdt").Cancel(C.CancelRequest(all=True))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "Cancel all needs role admin" in err.value.details()
    assert stub(replica, pki, "mdt").Lease(C.LeaseRequest(name="bridge:fs1", holder="mdt", ttl_ms=5000)).granted
    assert stub(replica, pki, "root1").Control(C.ControlRequest(mode="disabled")).mode == "disabled"
    assert stub(replica, pki, "alice").Status(C.StatusRequest()).control == "disabled"


def test_an_agent_works_only_under_the_id_its_certificate_names(replica: Any, pki: Path) -> None:
    f = files(pki, "a1")
    creds = grpc.ssl_channel_credentials(f.ca.read_bytes(), f.key.read_bytes(), f.cert.read_bytes())
    hello = agent_pb2.Hello(agent_id="a2", host="h", slots=C.Slots(archive=1))
    with grpc.secure_channel(replica.address, creds) as ch:
        with pytest.raises(grpc.RpcError) as err:
            for _ in agent_pb2_grpc.AgentServiceStub(ch).Work(iter([agent_pb2.AgentMessage(hello=hello)]), timeout=5):
                pass
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'a2' is not the one the certificate names ('a1')" in err.value.details()
        hello.agent_id = "a1"
        got = next(iter(agent_pb2_grpc.AgentServiceStub(ch).Work(iter([agent_pb2.AgentMessage(hello=hello)]),
                                                                 timeout=5)))
        assert got.welcome.replica == "test"
    # an operator's certificate cannot open an agent stream at all
    f = files(pki, "op")
    creds = grpc.ssl_channel_credentials(f.ca.read_bytes(), f.key.read_bytes(), f.cert.read_bytes())
    with grpc.secure_channel(replica.address, creds) as ch, pytest.raises(grpc.RpcError) as err:
        hello.agent_id = "op"
        list(agent_pb2_grpc.AgentServiceStub(ch).Work(iter([agent_pb2.AgentMessage(hello=hello)]), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "Work needs role agent" in err.value.details()


def test_a_reissued_certificate_works_beside_the_old_one(replica: Any, pki: Path, tmp_path: Path) -> None:
    certs.issue(pki / "ca", "op", "operator", out_dir=tmp_path)  # the same identity, a new key
    new = TlsFiles(pki / "ca" / "ca.pem", tmp_path / "op.pem", tmp_path / "op.key")
    ch = grpc.secure_channel(replica.address, grpc.ssl_channel_credentials(
        new.ca.read_bytes(), new.key.read_bytes(), new.cert.read_bytes()))
    assert coordinator_pb2_grpc.CoordinatorStub(ch).Submit(C.SubmitRequest(items=[item(7)])).results[0].outcome \
        == C.CREATED
    assert stub(replica, pki, "op").Submit(C.SubmitRequest(items=[item(8)])).results[0].outcome == C.CREATED


def test_every_change_and_refusal_is_in_the_audit_log(replica: Any, pki: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hsm.audit")
    stub(replica, pki, "op").Submit(C.SubmitRequest(items=[item(1), item(2)]))
    with pytest.raises(grpc.RpcError):
        stub(replica, pki, "alice").Control(C.ControlRequest(mode="shutdown"))
    stub(replica, pki, "alice").Status(C.StatusRequest())  # a read: not audited
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hsm.audit"]
    assert [(x["who"], x["role"], x["method"]) for x in lines] == [("op", "operator", "Submit"),
                                                                  ("alice", "user", "Control")]
    sub, ctl = lines
    assert sub["items"] == 2 and sub["kinds"] == ["ARCHIVE"] and sub["fids"][0] == "fs1:[0x200000400:0x1:0x0]"
    assert "refused" not in sub and sub["ts"] > 0
    assert ctl["mode"] == "shutdown" and "Control needs role admin" in ctl["refused"]


# ------------------------------------------------------ a user's own cancels


def restore(n: int, initiator: str = "t", cookie: int = 0) -> C.SubmitItem:
    return C.SubmitItem(fsname="fs1", fid=T.Fid(seq=0x200000400, oid=n), kind=T.RESTORE,
                        requester=T.Requester(initiator=initiator, cookie=cookie))


@pytest.fixture
def cancelling(coordinator_factory: Any, pki: Path) -> Any:
    """A replica whose users may cancel (their own actions), on 4 shards."""
    return coordinator_factory(tls=files(pki, "test"), shards=4, user_request_mask=frozenset({"restore", "cancel"}))


def states(replica: Any, pki: Path) -> dict[int, int]:
    resp = stub(replica, pki, "root1").ListActions(C.ListActionsRequest(include_terminal=True, page_size=1000))
    return {a.action_id: a.state for a in resp.actions}


def denied(call: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return str(err.value.details())


def test_a_user_cancels_their_own_request_and_nobody_elses(cancelling: Any, pki: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hsm.audit")
    alice, bob = stub(cancelling, pki, "alice"), stub(cancelling, pki, "bob")
    # alice's request names bob as its initiator: who submitted is the
    # certificate, not what the request says
    [mine] = alice.Submit(C.SubmitRequest(items=[restore(1, initiator="bob", cookie=5)])).results
    [theirs] = bob.Submit(C.SubmitRequest(items=[restore(2, initiator="bob", cookie=6)])).results
    [opq] = stub(cancelling, pki, "op").Submit(C.SubmitRequest(items=[restore(3)])).results
    before = states(cancelling, pki)
    refusals = [
        denied(lambda: alice.Cancel(C.CancelRequest(action_ids=[mine.action_id, theirs.action_id]))),
        denied(lambda: alice.Cancel(C.CancelRequest(fids=[C.FidSelector(fid=restore(2).fid)]))),
        denied(lambda: alice.Cancel(C.CancelRequest(cookies=[T.Requester(initiator="bob", cookie=6)]))),
        denied(lambda: alice.Cancel(C.CancelRequest(action_ids=[opq.action_id]))),
        denied(lambda: bob.Cancel(C.CancelRequest(cookies=[T.Requester(initiator="bob", cookie=5)]))),
    ]
    assert all("other than" in r and "a user may cancel only actions nobody else asked for" in r for r in refusals)
    assert "Cancel all needs role admin" in denied(lambda: alice.Cancel(C.CancelRequest(all=True)))
    assert states(cancelling, pki) == before  # nothing changed
    [r] = alice.Cancel(C.CancelRequest(cookies=[T.Requester(initiator="bob", cookie=5)])).results
    assert r.action_id == mine.action_id and r.outcome == C.CANCEL_DONE
    [r] = bob.Cancel(C.CancelRequest(fids=[C.FidSelector(fid=restore(2).fid)])).results
    assert r.outcome == C.CANCEL_DONE
    assert states(cancelling, pki)[opq.action_id] == T.WAITING
    lines = [json.loads(x.getMessage()) for x in caplog.records if x.name == "hsm.audit"]
    refused = [x for x in lines if x["method"] == "Cancel" and "other than" in x.get("refused", "")]
    assert [(x["who"], x["role"]) for x in refused] == [("alice", "user")] * 4 + [("bob", "user")]


def test_a_restore_merged_from_two_users_is_cancelled_by_neither(cancelling: Any, pki: Path) -> None:
    alice, bob = stub(cancelling, pki, "alice"), stub(cancelling, pki, "bob")
    [a] = alice.Submit(C.SubmitRequest(items=[restore(1)])).results
    [b] = bob.Submit(C.SubmitRequest(items=[restore(1)])).results
    assert b.outcome == C.JOINED and b.action_id == a.action_id
    for s, who in ((alice, "alice"), (bob, "bob")):
        msg = denied(lambda s=s: s.Cancel(C.CancelRequest(action_ids=[a.action_id])))
        assert f"requested by 1 requester(s) other than {who}" in msg
    assert states(cancelling, pki)[a.action_id] == T.WAITING
    # an operator cancels it for both
    [r] = stub(cancelling, pki, "op").Cancel(C.CancelRequest(action_ids=[a.action_id])).results
    assert r.outcome == C.CANCEL_DONE


def test_only_a_replica_may_cancel_on_behalf_of_a_user(cancelling: Any, pki: Path) -> None:
    """The user a forwarded part is for comes from a replica's metadata;
    anyone else's is ignored (a user naming another user is still itself)."""
    [theirs] = stub(cancelling, pki, "bob").Submit(C.SubmitRequest(items=[restore(4)])).results
    as_bob = (("hsm-on-behalf-of", "bob"),)
    assert "other than alice" in denied(lambda: stub(cancelling, pki, "alice").Cancel(
        C.CancelRequest(action_ids=[theirs.action_id]), metadata=as_bob))
    assert "other than alice" in denied(lambda: stub(cancelling, pki, "r9").Cancel(
        C.CancelRequest(action_ids=[theirs.action_id]), metadata=(("hsm-on-behalf-of", "alice"),)))
    [r] = stub(cancelling, pki, "r9").Cancel(C.CancelRequest(action_ids=[theirs.action_id]), metadata=as_bob).results
    assert r.outcome == C.CANCEL_DONE


class Trio:
    """Three TLS replicas of one cluster on one event loop thread."""

    def __init__(self, tmp: Path, pki: Path, shards: int = 4) -> None:
        from coordinator.cluster import ClusterSpec, ReplicaSpec, free_ports
        from coordinator.node import CoordinatorNode, NodeConfig
        from tests.conftest import FAST_RAFT

        api0, raft0 = free_ports(3), free_ports(3 * shards)
        specs = tuple(ReplicaSpec(f"q{k}", f"127.0.0.1:{api0 + k}", f"127.0.0.1:{raft0 + k * shards}")
                      for k in range(3))
        cluster = ClusterSpec("trio", shards, specs, "trio-password-0123456789", id="trio")
        for s in specs:
            if not (pki / "ca" / f"{s.id}.pem").exists():
                certs.issue(pki / "ca", s.id, "replica", hosts=("127.0.0.1",))
        self.nodes = [CoordinatorNode(NodeConfig(
            cluster=cluster, replica_id=s.id, data_dir=tmp / s.id, archive_ids=(1,), agent_grace=3.0,
            heartbeat_interval=1.0, raft=FAST_RAFT, propose_timeout=5.0, tls=files(pki, s.id),
            user_request_mask=frozenset({"restore", "cancel"}))) for s in specs]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start(), 60)

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from coordinator.server import services

        for n in self.nodes:
            await n.start(services(n))
        while not all(s.leader is not None and s.leader_ready for s in self.leaders()):
            await asyncio.sleep(0.05)

    def leaders(self) -> list[Any]:
        """Every shard's leading RaftShard, once each shard has one."""
        out = []
        for i in range(len(self.nodes[0].shards)):
            led = [n.shards[i] for n in self.nodes if n.shards and n.shards[i].is_leader]
            if led:
                out.append(led[0])
        return out if len(out) == len(self.nodes[0].shards) else [type("none", (), {"leader": None})()]

    def stop(self) -> None:
        async def down() -> None:
            for n in self.nodes:
                await n.stop(0.5)

        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_user_cancel_forwarded_to_other_leaders_stays_that_users(tmp_path: Path, pki: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A replica forwards the parts of a user's cancel it does not lead,
    naming the user: the leaders cancel what is that user's, and refuse
    what is not."""
    from hsm.client import CoordinatorClient

    caplog.set_level(logging.INFO, logger="hsm.audit")
    trio = Trio(tmp_path, pki)
    try:
        addrs = [n.config.cluster.replica(n.config.replica_id).api for n in trio.nodes]
        with CoordinatorClient(addrs, tls=files(pki, "alice"), timeout=20) as alice, \
                CoordinatorClient(addrs, tls=files(pki, "bob"), timeout=20) as bob:
            mine = [r.action_id for r in alice.submit([restore(n) for n in range(1, 9)])]
            [theirs] = [r.action_id for r in bob.submit([restore(20)])]
        # a replica that does not lead the shard of one of alice's actions
        shard_of = {a: a % MAX_SHARDS for a in mine}
        via = next(k for k, n in enumerate(trio.nodes) for a in mine if not n.shards[shard_of[a]].is_leader)
        node = trio.nodes[via]
        remote = [a for a in mine if not node.shards[shard_of[a]].is_leader]
        s = coordinator_pb2_grpc.CoordinatorStub(grpc.secure_channel(addrs[via], grpc.ssl_channel_credentials(
            *(p.read_bytes() for p in (files(pki, "alice").ca, files(pki, "alice").key, files(pki, "alice").cert)))))
        assert "other than alice" in denied(lambda: s.Cancel(C.CancelRequest(action_ids=[*mine, theirs])))
        resp = s.Cancel(C.CancelRequest(action_ids=mine), timeout=20)
        assert sorted(r.action_id for r in resp.results) == sorted(mine)
        assert {r.outcome for r in resp.results} == {C.CANCEL_DONE}
        forwarded = [json.loads(x.getMessage()) for x in caplog.records if x.name == "hsm.audit"]
        forwarded = [x for x in forwarded if x["method"] == "Cancel" and x["role"] == "replica"]
        assert forwarded and all(x["for"] == "alice" and x["who"] == node.config.replica_id for x in forwarded)
        assert {i for x in forwarded for i in x["action_ids"]} == set(remote)
    finally:
        trio.stop()


def test_a_split_step_from_a_replica_carries_only_a_split_command(replica: Any, pki: Path, tmp_path: Path) -> None:
    """Between replicas, a split command crosses pickled: anything else in
    it (here a pickle that would create a file) is refused unread, and so
    are a malformed ring and an unknown step; nothing changes."""
    import pickle

    from coordinator.state import Freeze

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    s = stub(replica, pki, "test")  # role replica
    for command in (pickle.dumps(Evil()), b"\x80\x05garbage", pickle.dumps(("not", "a", "command"))):
        with pytest.raises(grpc.RpcError) as err:
            s.Split(C.SplitRequest(op=C.SPLIT_OP_PROPOSE, shard=0, command=command), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a split command" in err.value.details(), err.value.details()
    assert not marker.exists()
    for ring in ("{", '{"shards": -1}', '{"shards": 2, "version": 1, "pending": 9999, "pending_version": 2, '
                 '"groups": {}}'):
        with pytest.raises(grpc.RpcError) as err:
            s.Split(C.SplitRequest(op=C.SPLIT_OP_OPEN, ring=ring), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        s.Split(C.SplitRequest(op=9, shard=0), timeout=10)
    assert "unknown split op 9" in err.value.details()
    # a real one is taken (here refused by the state: a Freeze that is not a split)
    reply = s.Split(C.SplitRequest(op=C.SPLIT_OP_PROPOSE, shard=0, command=pickle.dumps(Freeze(1.0, 1, 1, 1, 1))),
                    timeout=10)
    assert "not a split" in reply.error
    assert s.ClusterInfo(C.ClusterInfoRequest()).ring_version == 1
