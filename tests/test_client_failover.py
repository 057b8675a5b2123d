"""A client given one replica's address learns every member from the first
answer and fails over to them in every phase (submit, watch, list) when
that replica dies. Three real replica processes, kill -9."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm.client import TERMINAL_STATES, CoordinatorClient, submit_item
from hsm.fid import Fid
from hsm.v1 import types_pb2 as T
from tests.cluster import ProcCluster, until

pytestmark = pytest.mark.slow  # real replica processes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop()


def _items(start: int, n: int) -> list[Any]:
    return [submit_item("fs1", Fid(0x200000400, start + i, 0), "archive", 1) for i in range(n)]


def test_one_address_is_enough_to_survive_its_replica(cluster: ProcCluster) -> None:
    only = cluster.spec("r1").api
    # no agents: the archives wait; the watch ends when they are canceled
    with CoordinatorClient(only, timeout=20, retry_unavailable=10, tls=cluster.client_tls) as client:
        results = client.submit(_items(1, 200))
        ids = [r.action_id for r in results]
        assert len(set(ids)) == 200
        assert {a % 1000 for a in ids} == set(range(cluster.shards)), "every shard holds some"

        ended: dict[int, int] = {}
        errors: list[BaseException] = []

        def watch() -> None:
            try:
                for action in client.watch(ids, deadline=60):
                    if action.state in TERMINAL_STATES:
                        ended[action.action_id] = action.state
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        until(lambda: len(client._members) == 3, 10, "the client knows the three members")

        cluster.kill("r1")  # the only address it was given

        # submit and list fail over too
        more = client.submit(_items(1000, 50))
        assert all(r.action_id for r in more)
        listed = {a.action_id for a in client.list_actions(states=["WAITING"])}
        assert set(ids) <= listed

        with CoordinatorClient(cluster.addresses, timeout=20, tls=cluster.client_tls) as other:
            other.cancel(all=True, reason="test")
        watcher.join(60)
        assert not watcher.is_alive()
    assert not errors, f"the watch failed: {errors[0]!r}"
    assert set(ended) == set(ids) and set(ended.values()) == {T.CANCELED}
