"""The policy through the real gRPC API of a one-replica coordinator: rate
limits answer per item, or RESOURCE_EXHAUSTED with a retry hint the client
library waits for; request masks per role follow the policy at once;
admission and a set's warnings."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from hsm.client import PermissionDenied, ResourceExhausted, submit_item
from hsm.fid import Fid
from hsm.tls import channel_credentials
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc
from hsm.v1 import types_pb2 as T

FS = "fs1"


def archive(n: int, uid: int = 1000, initiator: str = "cli-1", kind: str = "archive", **kw: Any) -> C.SubmitItem:
    return submit_item(FS, Fid(0x200000400, n), kind, requester=T.Requester(initiator=initiator, uid=uid),
                       idempotency_key=f"k{n}", **kw)


def test_rate_limits_per_user_and_per_initiator(coordinator: Any) -> None:
    with coordinator.client(timeout=10) as client:
        client.set_policy("rate_limits: {per_user: {rate: 0.01, burst: 5}, per_initiator: {rate: 0.01, burst: 7}}\n")
        res = client.submit([archive(n) for n in range(1, 9)])
        outcomes = [(r.outcome, r.errno) for r in res]
        assert outcomes == [(C.CREATED, 0)] * 5 + [(C.REJECTED, 11)] * 3  # EAGAIN past the burst
        assert res[5].reason.startswith("rate limit of user 1000 (0.01 requests/s, burst 5 on this replica): retry in ")
        # another user from the same initiator: the initiator's bucket has 2 left
        # (the refused items took nothing from it)
        res = client.submit([archive(n, uid=2000) for n in range(20, 24)])
        assert [r.outcome for r in res] == [C.CREATED, C.CREATED, C.REJECTED, C.REJECTED]
        assert res[2].reason.startswith("rate limit of initiator cli-1 (0.01 requests/s, burst 7")


def test_a_submit_wholly_over_the_limit_says_when_to_retry(coordinator: Any) -> None:
    with coordinator.client(timeout=10) as client:
        client.set_policy("rate_limits: {per_user: {rate: 1, burst: 1}}\n")
        assert client.submit([archive(1)])[0].outcome == C.CREATED
    creds = channel_credentials(coordinator.tls())
    with grpc.secure_channel(coordinator.address, creds) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(C.SubmitRequest(items=[archive(2)]), timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "nothing was submitted: rate limit of user 1000 (1 requests/s, burst 1 on this replica)" in err.details()
    hint = dict(err.trailing_metadata())["hsm-retry-after-ms"]
    assert 1 <= int(hint) <= 1000
    # the client library waits for the hint and the same request then passes
    with coordinator.client(timeout=10) as client:
        t0 = time.monotonic()
        assert client.submit([archive(2)])[0].outcome == C.CREATED
        assert time.monotonic() - t0 < 5
    # a deadline shorter than the wait: the client gives up with the server's words
    with coordinator.client(timeout=0.3) as client:
        with pytest.raises(ResourceExhausted, match="rate limit of user 1000"):
            client.submit([archive(3)])


def test_request_masks_per_role_follow_the_policy(coordinator: Any) -> None:
    with coordinator.client(role="operator") as op, coordinator.client() as admin:
        assert op.submit([archive(1)])[0].outcome == C.CREATED
        admin.set_policy("request_masks: {operator: [restore], user: [restore, cancel]}\n")
        with pytest.raises(PermissionDenied, match="ARCHIVE is not in the operator request mask"):
            op.submit([archive(2)])
        assert op.submit([archive(3, kind="restore")])[0].outcome == C.CREATED
        admin.set_policy("{}")
        assert op.submit([archive(4)])[0].outcome == C.CREATED


def test_admission_in_the_api_and_a_warning_for_a_tag_nobody_serves(coordinator: Any) -> None:
    with coordinator.client() as client:
        reply = client.set_policy("rules:\n  - name: home\n    match: {path: /home/**}\n    then: {tag: nobody}\n")
        assert reply.version == 2 and "rules: + home (line 2)" in reply.changes
        assert list(reply.warnings) == ["line 2: rule 'home' sets tag 'nobody', which no connected agent serves: "
                                        "its actions wait until an agent started with --tags nobody connects"]
        [r] = client.submit([archive(1, path="/home/a/b", size=10)])
        assert client.get_action(r.action_id).data == b"tag=nobody"
        # a check is a dry run: it says what would change and changes nothing
        dry = client.set_policy("{}", dry_run=True)
        assert list(dry.changes) == ["rules: - home"] and client.get_policy().version == reply.version
