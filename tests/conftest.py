"""Shared fixtures: a real coordinator (real gRPC on a free loopback port),
running on its own event loop in a background thread so tests can use the
synchronous client and real agentd processes against it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from coordinator.cluster import ClusterSpec, ReplicaSpec, free_ports
from coordinator.node import CoordinatorNode, NodeConfig
from coordinator.raft import RaftTuning
from coordinator.server import services


class RunningCoordinator:
    """A CoordinatorNode on its own loop thread. ``call(fn)`` runs a
    function on the node's loop and returns its result (for inspecting
    state from a test without racing the loop)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.node = CoordinatorNode(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="coordinator", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        await self.node.start(services(self.node))
        await asyncio.wait_for(self.node.ready.wait(), 20)
        while not all(s.leader_ready for s in self.node.shards):
            await asyncio.sleep(0.01)

    @property
    def address(self) -> str:
        return self.node.address

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # stopped already (by the test)
        asyncio.run_coroutine_threadsafe(self.node.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


#: Raft timings for tests on loopback (a single replica elects itself at once)
FAST_RAFT = RaftTuning(heartbeat=0.02, election_min=0.1, election_max=0.2, leader_fallback=1.0,
                       connection_timeout=1.0, connection_retry=0.2, tick=0.01, fsync=True)


def single_replica_config(data_dir: Any, shards: int = 1, api_port: int | None = None, cluster_id: str = "",
                          **overrides: Any) -> NodeConfig:
    """A one-replica cluster (real Raft, real journal) on free loopback ports."""
    api = api_port or free_ports(1)
    raft0 = free_ports(shards)
    cluster = ClusterSpec("test", shards, (ReplicaSpec("test", f"127.0.0.1:{api}", f"127.0.0.1:{raft0}"),),
                          "test-password-0123456789", id=cluster_id)
    base = NodeConfig(cluster=cluster, replica_id="test", data_dir=data_dir, archive_ids=(1, 2, 3),
                      agent_grace=3.0, heartbeat_interval=1.0, raft=FAST_RAFT, propose_timeout=5.0)
    return replace(base, **overrides)


@pytest.fixture
def coordinator_factory(tmp_path_factory: Any) -> Iterator[Any]:
    """Start coordinators with custom settings: ``coordinator_factory(agent_grace=1.0, shards=4)``."""
    started: list[RunningCoordinator] = []

    def make(shards: int = 1, api_port: int | None = None, cluster_id: str = "",
             **overrides: Any) -> RunningCoordinator:
        data = tmp_path_factory.mktemp("raft")
        rc = RunningCoordinator(single_replica_config(data, shards, api_port, cluster_id, **overrides))
        started.append(rc)
        return rc

    yield make
    for rc in started:
        rc.stop()


@pytest.fixture
def coordinator(coordinator_factory: Any) -> RunningCoordinator:
    """A real one-replica coordinator (Raft included) with archive ids 1, 2, 3
    on 127.0.0.1:<free port>."""
    return coordinator_factory()  # type: ignore[no-any-return]
