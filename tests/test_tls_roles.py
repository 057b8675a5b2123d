"""Mutual TLS and roles on a real replica (gRPC over loopback, certificates
from hsm-coordinator certs): who gets in, what each role may do, and the
audit log of what was done. A refused call changes nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator import certs
from hsm.tls import TlsFiles
from hsm.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2_grpc
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T

PEOPLE = {"root1": "admin", "op": "operator", "alice": "user", "mdt": "bridge", "a1": "agent", "r9": "replica"}


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
    ("alice", lambda s: s.Cancel(C.CancelRequest(action_ids=[1000])), "Cancel needs role admin, operator or replica"),
    ("alice", lambda s: s.Control(C.ControlRequest(mode="shutdown")), "Control needs role admin or replica"),
    ("op", lambda s: s.Control(C.ControlRequest(mode="disabled")), "Control needs role admin or replica"),
    ("op", lambda s: s.Cancel(C.CancelRequest(all=True)), "Cancel all needs role admin"),
    ("op", lambda s: s.DrainAgent(C.DrainAgentRequest(agent_id="a1", drain=True, force=True)), "needs role admin"),
    ("op", lambda s: s.ChangeMembership(C.ChangeMembershipRequest(add=True, raft="127.0.0.1:1")), "needs role admin"),
    ("a1", lambda s: s.Status(C.StatusRequest()), "Status needs role admin, operator, bridge, user or replica"),
    ("a1", lambda s: s.Submit(C.SubmitRequest(items=[item(1)])), "the certificate of a1 (role agent)"),
    ("mdt", lambda s: s.Control(C.ControlRequest(mode="shutdown")), "Control needs role admin"),
    ("alice", lambda s: s.Lease(C.LeaseRequest(name="bridge:fs1", holder="alice", ttl_ms=5000)), "Lease needs role"),
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
    # bridge submits any kind and takes its lease; an admin sets the mode
    [r] = stub(replica, pki, "alice").Submit(C.SubmitRequest(items=[item(1, T.RESTORE)])).results
    assert r.outcome == C.CREATED
    [a] = stub(replica, pki, "op").Submit(C.SubmitRequest(items=[item(2)])).results
    assert stub(replica, pki, "op").Cancel(C.CancelRequest(action_ids=[a.action_id])).results[0].outcome == C.CANCEL_DONE
    assert stub(replica, pki, "mdt").Submit(C.SubmitRequest(items=[item(3, T.REMOVE)])).results[0].outcome == C.CREATED
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
