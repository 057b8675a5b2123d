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

from coordinator.node import CoordinatorNode, NodeConfig


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
        asyncio.run_coroutine_threadsafe(self.node.start(), self.loop).result(10)

    @property
    def address(self) -> str:
        return self.node.address

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.node.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


DEFAULT_TEST_CONFIG = NodeConfig(
    replica_id="test",
    listen="127.0.0.1:0",
    archive_ids=(1, 2, 3),
    agent_grace=3.0,
    heartbeat_interval=1.0,
)


@pytest.fixture
def coordinator_factory() -> Iterator[Any]:
    """Start coordinators with custom settings: ``coordinator_factory(agent_grace=1.0)``."""
    started: list[RunningCoordinator] = []

    def make(**overrides: Any) -> RunningCoordinator:
        rc = RunningCoordinator(replace(DEFAULT_TEST_CONFIG, **overrides))
        started.append(rc)
        return rc

    yield make
    for rc in started:
        rc.stop()


@pytest.fixture
def coordinator(coordinator_factory: Any) -> RunningCoordinator:
    """A real coordinator with archive ids 1, 2, 3 on 127.0.0.1:<free port>."""
    return coordinator_factory()  # type: ignore[no-any-return]
