"""The replicated lease (one active hsm-bridge per file system): the pure
rule in the shard state, its safety under any interleaving, and the RPC on
a real coordinator, then across a leader kill on three replica processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.roles import BRIDGE
from coordinator.state import Lease, LeaseReply, ShardConfig, ShardState
from hsm.client import CoordinatorClient, InvalidArgument
from tests.cluster import ProcCluster


def lease(state: ShardState, now: float, holder: str, ttl: float, name: str = "bridge:lustre") -> LeaseReply:
    reply = state.apply(Lease(now, name, holder, ttl)).replies[0]
    assert isinstance(reply, LeaseReply)
    return reply


def test_a_held_lease_is_refused_to_another_until_it_lapses() -> None:
    s = ShardState(ShardConfig())
    assert lease(s, 100.0, "a", 15) == LeaseReply(True, "a", 15)
    refused = lease(s, 110.0, "b", 15)
    assert (refused.granted, refused.holder, refused.remaining) == (False, "a", 5.0)
    assert lease(s, 112.0, "a", 15).granted, "the holder renews"
    assert not lease(s, 126.9, "b", 15).granted, "the renewal runs from 112"
    assert lease(s, 127.0, "b", 15) == LeaseReply(True, "b", 15), "lapsed: the standby takes it"
    assert not lease(s, 128.0, "a", 15).granted, "the old holder is now refused"


def test_leases_of_different_names_are_independent() -> None:
    s = ShardState(ShardConfig())
    assert lease(s, 0.0, "a", 15, name="bridge:fs1").granted
    assert lease(s, 0.0, "b", 15, name="bridge:fs2").granted
    assert not lease(s, 1.0, "b", 15, name="bridge:fs1").granted


def test_giving_back_frees_it_at_once_but_only_for_its_holder() -> None:
    s = ShardState(ShardConfig())
    lease(s, 0.0, "a", 15)
    assert lease(s, 1.0, "b", 0) == LeaseReply(False, "a", 14.0), "b cannot give back a's lease"
    assert lease(s, 2.0, "a", 0) == LeaseReply(False, "", 0.0)
    assert lease(s, 2.0, "b", 15).granted


def test_bad_lease_commands_are_refused_and_change_nothing() -> None:
    s = ShardState(ShardConfig())
    for bad in (Lease(0.0, "", "a", 15), Lease(0.0, "n", "", 15), Lease(0.0, "n", "a", -1),
                Lease(0.0, "n", "a", 3601)):
        with pytest.raises(ValueError):
            s.apply(bad)
    assert s.leases == {}


def test_a_lease_survives_a_snapshot_and_old_snapshots_have_none() -> None:
    s = ShardState(ShardConfig())
    lease(s, 0.0, "a", 15)
    head, actions = s.export_parts()
    back = ShardState.import_parts(head, [actions])
    assert not lease(back, 5.0, "b", 15).granted
    old = dict(head)
    del old["leases"]
    assert ShardState.import_parts(old, [actions]).leases == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20), st.sampled_from("abc"), st.sampled_from([0, 1, 5, 15])),
                max_size=60))
def test_no_two_holders_ever_overlap(steps: list[tuple[float, str, int]]) -> None:
    """Whatever the holders ask and whenever: the time a holder was promised
    (from the grant for its ttl, ended early by giving it back) never
    overlaps another holder's."""
    s = ShardState(ShardConfig())
    now = 0.0
    promised: list[tuple[str, float, float]] = []  # holder, from, until
    for gap, holder, ttl in steps:
        now += gap
        reply = lease(s, now, holder, ttl)
        if ttl == 0:
            promised = [(h, a, min(b, now) if h == holder else b) for h, a, b in promised]
        elif reply.granted:
            promised.append((holder, now, now + ttl))
        else:
            assert reply.holder != holder and reply.remaining > 0
    for i, (h1, a1, b1) in enumerate(promised):
        for h2, a2, b2 in promised[i + 1:]:
            if h1 != h2:
                assert b1 <= a2 or b2 <= a1, (h1, a1, b1, h2, a2, b2)


def test_the_lease_rpc_on_a_real_coordinator(coordinator: Any) -> None:
    with coordinator.client(BRIDGE, "mdt-bridge") as client:  # what an hsm-bridge presents
        got = client.lease("bridge:lustre", "host1:10", 15)
        assert (got.granted, got.holder, got.remaining_ms) == (True, "host1:10", 15000)
        other = client.lease("bridge:lustre", "host2:20", 15)
        assert not other.granted and other.holder == "host1:10" and 0 < other.remaining_ms <= 15000
        assert client.lease("bridge:lustre", "host1:10", 0).holder == ""
        assert client.lease("bridge:lustre", "host2:20", 15).granted
        with pytest.raises(InvalidArgument):
            client.lease("bridge:lustre", "host2:20", 0.5)
        with pytest.raises(InvalidArgument):
            client.lease("", "host2:20", 15)


def test_the_lease_outlives_a_leader_kill(tmp_path: Path) -> None:
    """Held on shard 0 through Raft: the new leader still refuses the
    standby, and grants it once the holder's time has run out."""
    cluster = ProcCluster(tmp_path, shards=1)
    try:
        cluster.start_all()
        bridge = cluster.pki.issue("mdt-bridge", "bridge")  # what an hsm-bridge presents
        with CoordinatorClient(cluster.addresses, timeout=20, tls=bridge) as client:
            assert client.lease("bridge:lustre", "active", 6).granted
            cluster.kill(cluster.leader_of(0))
            refused = client.lease("bridge:lustre", "standby", 6)
            assert not refused.granted and refused.holder == "active"
            time.sleep(refused.remaining_ms / 1000 + 0.2)
            assert client.lease("bridge:lustre", "standby", 6).granted
    finally:
        cluster.stop()
