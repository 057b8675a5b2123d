"""Raft membership changes (``hsm-coordinator member``): the address is
checked, and a change that would leave a group without a majority of
members reachable now is refused unless forced."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from coordinator.cluster import free_ports, membership_problem
from hsm.v1 import coordinator_pb2 as C
from hsm.v1 import coordinator_pb2_grpc


def test_a_change_needs_a_reachable_majority_of_the_new_group() -> None:
    three = {"a:1", "b:1", "c:1"}
    # all up: adding one that does not answer leaves 3 of 4, a majority
    assert membership_problem(three, three, "x:1", add=True) is None
    # one down: 2 of 4 is not a majority: refused
    problem = membership_problem(three, {"a:1", "b:1"}, "x:1", add=True)
    assert problem is not None and "4 members with 2 reachable" in problem and "needs 3" in problem
    # ... unless the new one answers (3 of 4)
    assert membership_problem(three, {"a:1", "b:1", "x:1"}, "x:1", add=True) is None
    # the documented replacement of a dead replica: remove it, then add the new one
    assert membership_problem(three, {"a:1", "b:1"}, "c:1", add=False) is None
    assert membership_problem({"a:1", "b:1"}, {"a:1", "b:1"}, "d:1", add=True) is None
    # removing a live member while another is down leaves 1 of 2
    assert membership_problem(three, {"a:1", "b:1"}, "b:1", add=False) is not None


def change(coordinator: Any, raft: str, add: bool = True, force: bool = False) -> C.ChangeMembershipResponse:
    with coordinator.channel() as ch:  # the admin's certificate
        return coordinator_pb2_grpc.CoordinatorStub(ch).ChangeMembership(
            C.ChangeMembershipRequest(add=add, raft=raft, force=force), timeout=30)


def peers(coordinator: Any) -> list[list[str]]:
    return coordinator.call(lambda: [s.peers for s in coordinator.node.shards])


@pytest.mark.parametrize("raft, words", [
    ("127.0.0.1:" + "9" * 100_000, "characters long"),
    ("h" * 100_000 + ":7000", "characters long"),
    ("0.0.0.0:7000", "not every interface"),
    ("127.0.0.1", "host:port"),
    ("bad host:7000", "host:port"),
])
def test_a_malformed_address_is_refused_and_changes_nothing(coordinator: Any, raft: str, words: str) -> None:
    before = peers(coordinator)
    with pytest.raises(grpc.RpcError) as err:
        change(coordinator, raft)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()
    assert peers(coordinator) == before


def test_adding_a_member_that_does_not_answer_to_a_group_that_needs_it_is_refused_unless_forced(
        coordinator: Any) -> None:
    """A one-replica group plus a member that does not answer would need
    both to commit: refused, nothing changed. Forced, the leader makes the
    change, which then cannot commit, as the refusal said."""
    before = peers(coordinator)
    bogus = f"127.0.0.1:{free_ports(len(before))}"  # nothing listens there
    with pytest.raises(grpc.RpcError) as err:
        change(coordinator, bogus)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2 members with 1 reachable" in err.value.details() and "--force" in err.value.details()
    assert peers(coordinator) == before
    with pytest.raises(grpc.RpcError) as err:
        change(coordinator, bogus, force=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"add {bogus}: not confirmed" in err.value.details()
