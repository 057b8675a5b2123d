"""The client library (hsm.client) against a real coordinator on loopback
(mutual TLS, the admin's certificate): batching, idempotent retries, dedup,
cancel, listing, watch, errors, address failover."""

from __future__ import annotations

import errno as E
import socket
import threading
import time
from typing import Any

import grpc
import pytest

from hsm import client as hc
from hsm.client import (
    CoordinatorClient,
    CoordinatorError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
    submit_item,
)
from hsm.fid import Fid
from hsm.hsmflags import HS, HSMA
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import types_pb2 as T

SEQ = 0x200000400


def fid(n: int) -> Fid:
    return Fid(SEQ, n, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def client(coordinator: Any) -> Any:
    with coordinator.client(timeout=10, initiator="test-client") as c:
        yield c


def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------
# Building requests (nothing sent)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"fsname": "much-too-long"}, "file system name"),
        ({"fsname": "bad/name"}, "file system name"),
        ({"fid": Fid(0, 1, 0)}, "sequence 0"),
        ({"fid": "[0x200000400:0x1]"}, "malformed FID"),
        ({"kind": "release"}, "unknown action kind"),
        ({"kind": 23}, "unknown action kind"),
        ({"archive_id": -1}, "archive id"),
        ({"archive_id": 1 << 32}, "archive id"),
        ({"flags": 0x2}, "request flags"),
        ({"data": b"x" * 4097}, "at most 4096"),
        ({"data": {"a,b": "c"}}, "bad data key"),
        ({"extent": (-1, 10)}, "offset"),
        ({"extent": (0, 0)}, "length"),
        ({"kind": "restore", "extent": (0, 10)}, "whole file"),
        ({"hsm": (1, 2, 3, 4, 5)}, "hsm must be"),
        ({"hsm": (1, 2, 3, -4)}, "ctime must be"),
        ({"hsm": (1,)}, "hsm must be"),
        ({"hsm": (0, 0, -1)}, "data version"),
        ({"hsm": (0, 0, 1 << 64)}, "data version"),
    ],
)
def test_submit_item_refuses_bad_input(kwargs: dict[str, Any], words: str) -> None:
    args = {"fsname": "fs1", "fid": fid(1), "kind": "archive"}
    args.update(kwargs)
    with pytest.raises(InvalidArgument, match=words) as info:
        submit_item(args.pop("fsname"), args.pop("fid"), args.pop("kind"), **args)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_submit_item_fills_requester_key_and_hsm_state() -> None:
    item = submit_item("fs1", "[0x200000400:0x7:0x0]", "ARCHIVE", 2, hsm=(0, 0),
                       data={"tag": "p1", "prio": 3}, extent=(4096, -1), flags=0x1)
    assert item.fid == T.Fid(seq=SEQ, oid=7, ver=0)
    assert item.kind == T.ARCHIVE and item.archive_id == 2
    assert item.data == b"tag=p1,prio=3"
    assert (item.extent.offset, item.extent.length) == (4096, -1)
    # flags 0 is a real state ("never archived"): it must still be sent.
    assert item.HasField("hsm") and item.hsm.flags == 0
    assert item.requester.initiator.startswith("pyclient@")
    assert item.requester.uid == __import__("os").getuid()
    assert item.idempotency_key and item.idempotency_key != submit_item("fs1", fid(7), "archive").idempotency_key
    # With an MDT cookie the coordinator derives the key: none is invented.
    cookie_item = submit_item("fs1", fid(7), HSMA.RESTORE,
                              requester=T.Requester(initiator="mdt0", cookie=42))
    assert cookie_item.idempotency_key == "" and cookie_item.kind == T.RESTORE
    assert not submit_item("fs1", fid(7), "remove").HasField("hsm")


def test_submit_item_carries_the_data_version_with_the_hsm_state() -> None:
    assert submit_item("fs1", fid(7), "archive", hsm=(0, 0, 42)).hsm.data_version == 42
    assert submit_item("fs1", fid(7), "archive", hsm=(0, 0)).hsm.data_version == 0
    state = T.HsmState(flags=int(HS.EXISTS), archive_id=2, data_version=(1 << 64) - 1)
    assert submit_item("fs1", fid(7), "restore", hsm=state).hsm == state


def test_conversions() -> None:
    f = Fid(0x200000401, 0x2A, 0x1)
    assert hc.fid_from_proto(hc.fid_to_proto(f)) == f
    assert hc.fid_to_proto("0x200000401:0x2a:0x1") == T.Fid(seq=0x200000401, oid=0x2A, ver=1)
    assert hc.kind_from("Restore") == T.RESTORE == hc.kind_from(HSMA.RESTORE)
    assert hc.kind_name(T.REMOVE) == "REMOVE"
    assert hc.state_from("canceling") == T.CANCELING
    assert hc.state_name(T.SUCCEEDED) == "SUCCEEDED"
    assert hc.is_terminal(T.CANCELED) and not hc.is_terminal(T.CANCELING)
    with pytest.raises(InvalidArgument):
        hc.state_from("done")


def test_addresses_are_checked() -> None:
    assert hc.parse_addresses(" a:1, b.example:7600 ,[::1]:7600,a:1") == [
        "a:1", "b.example:7600", "[::1]:7600"]
    assert hc.parse_addresses(["h1:1", "h2:2,h3:3"]) == ["h1:1", "h2:2", "h3:3"]
    for bad in ("", "host", "host:0", "host:99999", "a b:1", ","):
        with pytest.raises(InvalidArgument):
            hc.parse_addresses(bad)
    with pytest.raises(InvalidArgument, match="timeout"):
        CoordinatorClient("h:1", timeout=0)


# ---------------------------------------------------------------------------
# Against the coordinator


def test_submit_batches_keep_order_and_retry_is_idempotent(client: Any) -> None:
    items = [client.submit_item("fs1", fid(n), "archive", hsm=(0, 0)) for n in range(1, 26)]
    results = client.submit(items, batch_size=10)
    assert [hc.outcome_name(r.outcome) for r in results] == ["CREATED"] * 25
    ids = [r.action_id for r in results]
    assert len(set(ids)) == 25
    for n, action_id in zip(range(1, 26), ids, strict=True):
        action = client.get_action(action_id)
        assert hc.fid_from_proto(action.fid) == fid(n)
        assert action.requesters[0].initiator == "test-client"
    # The same items again (a retry after a lost answer): same actions, nothing new.
    again = client.submit(items, batch_size=7)
    assert [r.action_id for r in again] == ids
    assert len(list(client.list_actions())) == 25


def test_second_requester_joins_the_same_action(client: Any) -> None:
    first = client.submit([client.submit_item("fs1", fid(1), "restore")])[0]
    other = submit_item("fs1", fid(1), "restore", requester=T.Requester(initiator="oss3", uid=500))
    second = client.submit([other])[0]
    assert hc.outcome_name(first.outcome) == "CREATED"
    assert hc.outcome_name(second.outcome) == "JOINED"
    assert second.action_id == first.action_id
    action = client.get_action(first.action_id)
    assert [r.initiator for r in action.requesters] == ["test-client", "oss3"]


def test_hsm_state_gives_not_needed_and_eperm(client: Any) -> None:
    archived = int(HS.EXISTS | HS.ARCHIVED)
    results = client.submit([
        client.submit_item("fs1", fid(1), "archive", hsm=(archived, 1)),
        client.submit_item("fs1", fid(2), "archive", hsm=(int(HS.NOARCHIVE), 0)),
        client.submit_item("fs1", fid(3), "restore", hsm=(0, 0)),
        client.submit_item("fs1", fid(4), "restore", hsm=(int(HS.EXISTS | HS.ARCHIVED | HS.RELEASED), 1)),
    ])
    assert [hc.outcome_name(r.outcome) for r in results] == [
        "NOT_NEEDED", "REJECTED", "NOT_NEEDED", "CREATED"]
    assert results[1].errno == E.EPERM and results[1].reason
    assert len(list(client.list_actions())) == 1


def test_server_side_invalid_request_changes_nothing(client: Any) -> None:
    good = client.submit_item("fs1", fid(1), "archive")
    unknown_archive = client.submit_item("fs1", fid(2), "archive", archive_id=9)
    with pytest.raises(InvalidArgument, match="archive id 9") as info:
        client.submit([good, unknown_archive])
    assert "refused" in str(info.value) and info.value.address == client.addresses[0]
    assert list(client.list_actions(include_terminal=True)) == []


def test_cancel_by_id_fid_and_all(client: Any) -> None:
    ids = [r.action_id for r in client.submit(
        [client.submit_item("fs1", fid(n), "archive") for n in range(1, 6)])]
    done = client.cancel(action_ids=[ids[0], 999_999_999])
    outcomes = {r.action_id: hc.cancel_outcome_name(r.outcome) for r in done}
    assert outcomes == {ids[0]: "CANCEL_DONE", 999_999_999: "NOT_FOUND"}
    assert client.get_action(ids[0]).state == T.CANCELED
    # By FID, with and without a file system name; a second cancel finds nothing to do.
    assert [r.action_id for r in client.cancel(fids=[("fs1", fid(2))])] == [ids[1]]
    assert [r.action_id for r in client.cancel(fids=[fid(3)])] == [ids[2]]
    assert client.cancel(fids=[("otherfs", fid(4))]) == []
    rest = client.cancel(all=True, reason="maintenance")
    assert sorted(r.action_id for r in rest) == ids[3:]
    assert client.get_action(ids[4]).state == T.CANCELED
    assert list(client.list_actions()) == []
    with pytest.raises(InvalidArgument, match="nothing to cancel"):
        client.cancel()


def test_get_unknown_action_is_not_found(client: Any) -> None:
    with pytest.raises(NotFound) as info:
        client.get_action(123456789)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(info.value, CoordinatorError) and "123456789" in str(info.value)


def test_list_actions_follows_pages_and_filters(client: Any) -> None:
    items = [client.submit_item("fs1", fid(n), "archive" if n % 2 else "remove") for n in range(1, 24)]
    ids = [r.action_id for r in client.submit(items)]
    listed = [a.action_id for a in client.list_actions(page_size=5)]
    assert listed == ids  # oldest first, across 5 pages
    removes = [a.action_id for a in client.list_actions(kinds=["remove"], page_size=4)]
    assert removes == ids[1::2]
    one = list(client.list_actions(fid=fid(5), fsname="fs1"))
    assert [a.action_id for a in one] == [ids[4]]
    client.cancel(action_ids=ids[:3])
    assert [a.action_id for a in client.list_actions(states=["canceled"])] == ids[:3]
    assert len(list(client.list_actions())) == 20
    assert len(list(client.list_actions(include_terminal=True, page_size=7))) == 23
    with pytest.raises(InvalidArgument):
        list(client.list_actions(page_size=0))


def test_watch_ends_when_all_actions_ended(client: Any) -> None:
    ids = [r.action_id for r in client.submit(
        [client.submit_item("fs1", fid(n), "archive") for n in (1, 2)])]
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            for action in client.watch(ids, deadline=10):
                seen.append((action.action_id, action.state))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=watch)
    t.start()
    wait_for(lambda: len(seen) >= 2, what="the first events")
    assert sorted(seen) == sorted((i, T.WAITING) for i in ids)
    client.cancel(action_ids=[ids[0]])
    time.sleep(0.2)
    assert t.is_alive()  # one action still waiting
    client.cancel(action_ids=[ids[1]])
    t.join(5)
    assert not t.is_alive() and not errors
    assert (ids[0], T.CANCELED) in seen and (ids[1], T.CANCELED) in seen


def test_watch_deadline_and_unknown_ids(client: Any) -> None:
    action_id = client.submit([client.submit_item("fs1", fid(1), "archive")])[0].action_id
    events = []
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=str(action_id)):
        for action in client.watch([action_id], deadline=0.5):
            events.append(action.state)
    assert 0.4 < time.monotonic() - start < 3
    assert events == [T.WAITING]
    with pytest.raises(NotFound):
        list(client.watch([987654321], deadline=5))
    # An already ended action: one event, then the iterator ends.
    client.cancel(action_ids=[action_id])
    final = client.wait([action_id], deadline=5)
    assert final[action_id].state == T.CANCELED


def test_status_and_cluster_info(client: Any, coordinator: Any) -> None:
    client.submit([client.submit_item("fs1", fid(1), "archive")])
    status = client.status()
    assert status.replica == "test"
    counts = {(c.kind, c.state): c.count for c in status.counts}
    assert counts[(T.ARCHIVE, T.WAITING)] == 1
    info = client.cluster_info()
    assert [r.address for r in info.replicas] == [coordinator.address]
    assert info.shard_count == len(info.shards) >= 1
    assert all(s.leader == "test" for s in info.shards)


def test_unreachable_coordinator_is_unavailable_quickly(tls_ca: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with CoordinatorClient(dead, timeout=5, retry_unavailable=0.3, tls=tls_ca.files()) as c:
        start = time.monotonic()
        with pytest.raises(Unavailable, match="connection refused") as info:
            c.status()
        assert time.monotonic() - start < 3
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and dead in str(info.value)
    # The overall timeout bounds the retries too.
    with CoordinatorClient(dead, timeout=0.5, retry_unavailable=30, tls=tls_ca.files()) as c:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            c.status()
        assert time.monotonic() - start < 2


def test_dead_address_is_skipped_and_the_live_one_preferred(coordinator: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with CoordinatorClient([dead, coordinator.address], timeout=5, tls=coordinator.tls()) as c:
        assert c.status().replica == "test"
        assert c._ordered_addresses()[0] == coordinator.address
        result = c.submit([c.submit_item("fs1", fid(1), "archive")])[0]
        assert hc.outcome_name(result.outcome) == "CREATED"


def test_closed_client_refuses_calls(coordinator: Any) -> None:
    c = coordinator.client()
    c.close()
    with pytest.raises(CoordinatorError, match="closed"):
        c.status()


def test_submit_checks_its_input(client: Any) -> None:
    with pytest.raises(InvalidArgument, match="batch size"):
        client.submit([], batch_size=0)
    with pytest.raises(InvalidArgument, match="SubmitItem"):
        client.submit(["not an item"])  # type: ignore[list-item]
    assert client.submit([]) == []
    # A hand-built item without key or cookie gets a key, so its retry is safe too.
    raw = C.SubmitItem(fsname="fs1", fid=hc.fid_to_proto(fid(9)), kind=T.ARCHIVE,
                       requester=T.Requester(initiator="raw"))
    first = client.submit([raw])[0]
    assert raw.idempotency_key.startswith("raw:")
    assert client.submit([raw])[0].action_id == first.action_id
    assert len(list(client.list_actions())) == 1


def test_items_are_grouped_per_shard_leader_in_order() -> None:
    from hsm.ring import Ring

    ring = Ring(3, 64)
    items = [submit_item("fs1", fid(n), "archive") for n in range(1, 61)]
    shards = [ring.shard_of(fid(n)) for n in range(1, 61)]
    assert set(shards) == {0, 1, 2}
    leaders = {0: "h1:1", 1: "h2:1", 2: "h1:1"}
    groups = hc.group_by_leader(items, ring, leaders)
    assert set(groups) == {"h1:1", "h2:1"}
    assert groups["h2:1"] == [i for i, s in enumerate(shards) if s == 1]
    assert groups["h1:1"] == [i for i, s in enumerate(shards) if s in (0, 2)]
    # A shard without a known leader goes to any replica ("").
    assert set(hc.group_by_leader(items, ring, {0: "h1:1"})) == {"h1:1", ""}


def test_a_batch_over_several_shards_regroups_even_when_one_replica_led_them_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after start-up (or a failover) one replica may lead every
    shard; leaders then move. A batch read in that moment must still know
    its FIDs span several shards, so that a redirect splits it anew
    instead of bouncing between replicas that each lead some of them (a
    clean-clone run: Unavailable after 11 s of such redirects)."""
    from hsm.ring import Ring
    from hsm.v1 import coordinator_pb2 as C

    info = C.ClusterInfoResponse(shard_count=4, vnodes=64,
                                 replicas=[C.Replica(id="r1", address="127.0.0.1:1"),
                                           C.Replica(id="r2", address="127.0.0.1:2")],
                                 shards=[C.ShardStatus(shard=k, leader="r1") for k in range(4)])
    client = hc.CoordinatorClient("127.0.0.1:1", timeout=2)
    monkeypatch.setattr(client, "cluster_info", lambda *a, **k: info)
    shard_map = client._shard_map()
    assert shard_map is not None and set(shard_map.leaders.values()) == {"127.0.0.1:1"}
    ring = Ring(4, 64)
    fids = [fid(1), next(fid(n) for n in range(2, 100) if ring.shard_of(fid(n)) != ring.shard_of(fid(1)))]
    calls: list[tuple[str | None, bool]] = []

    def answer(method: str, request: Any, what: str, timeout: float | None = None, start: str | None = None,
               multi_shard: bool = False) -> Any:
        calls.append((start, multi_shard))
        return C.SubmitResponse(results=[C.SubmitResult(outcome=C.CREATED, action_id=7)] * len(request.items))

    monkeypatch.setattr(client, "_call", answer)
    client.submit([client.submit_item("fs1", f, "archive") for f in fids])
    assert calls == [("127.0.0.1:1", True)]  # to the one leader, and split again on a redirect
    client.close()


def test_multi_shard_coordinator_takes_mixed_batches(coordinator_factory: Any) -> None:
    node = coordinator_factory(shards=4)
    with node.client(timeout=10) as c:
        results = c.submit([c.submit_item("fs1", fid(n), "archive") for n in range(1, 41)],
                           batch_size=15)
        assert [hc.outcome_name(r.outcome) for r in results] == ["CREATED"] * 40
        actions = {a.action_id: a for a in c.list_actions()}
        assert [hc.fid_from_proto(actions[r.action_id].fid) for r in results] == [
            fid(n) for n in range(1, 41)]
        assert len({a.shard for a in actions.values()}) == 4
