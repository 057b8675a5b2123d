"""agentd's credits across replicas: a replica hands out work only from the
shards it leads, so credits parked on one stream must move to a replica
that has work. Three independent coordinators stand in for three replicas
leading different shards; the agent's first stream gets every credit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import free_ports
from coordinator.config import ADMIN_CERT
from hsm.client import CoordinatorClient, submit_item
from hsm.fid import Fid
from hsm.v1 import types_pb2 as T
from tests.cluster import tls_replica, until


@pytest.mark.parametrize("slots", [1, 4], ids=["rotate-the-only-credit", "level-many-credits"])
def test_credits_move_to_the_replica_with_work(coordinator_factory: Any, tmp_path: Path, slots: int) -> None:
    ports = [free_ports(1) for _ in range(3)]
    first, pki = tls_replica(coordinator_factory, tmp_path / "pki", api_port=ports[0])
    admin = pki.files(ADMIN_CERT)
    from hsm.simfs import SimFS

    SimFS.create(tmp_path / "fs", "fs1")
    pki.issue("m1", "agent")
    log = open(tmp_path / "agentd.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [sys.executable, "-m", "agentd.cli", "--coordinators", ",".join(f"127.0.0.1:{p}" for p in ports),
         "--agent-id", "m1", *pki.args("m1"), "--fs-root", str(tmp_path / "fs"),
         "--mover", "null",
         "--slots", f"archive={slots},restore=0,remove=0"], stdout=log, stderr=log, env=dict(os.environ))
    try:
        def granted_to_first() -> bool:
            with CoordinatorClient(first.address, tls=admin) as c:
                st = c.status()
            return any(a.agent_id == "m1" for a in st.agents)

        until(granted_to_first, 20, "the agent on the first coordinator")
        others = [tls_replica(coordinator_factory, tmp_path / "pki", api_port=p)[0] for p in ports[1:]]
        with CoordinatorClient(others[1].address, tls=admin) as client:
            ids = [r.action_id for r in client.submit([submit_item("fs1", Fid(0x200000400, n), "archive")
                                                         for n in range(1, 6)])]
            final = client.wait(ids, deadline=30)
        assert {a.state for a in final.values()} == {T.SUCCEEDED}
    finally:
        agent.terminate()
        agent.wait(30)
        log.close()
