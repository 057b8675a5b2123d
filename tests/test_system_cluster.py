"""System tests of the replicated cluster: 3 replica processes on loopback,
real agentd processes, kill -9, restarts. After each test the checker
compares every shard's state on every replica and fails on divergence."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.client import CoordinatorClient, CoordinatorError, submit_item
from hsm.fid import Fid
from hsm.v1 import types_pb2 as T
from tests.cluster import ProcCluster, no_concurrent_runs, until

pytestmark = pytest.mark.slow  # real processes, seconds per test

NULL_AGENT = ("--fs-root", "{fs}", "--mover", "null", "--null-delay", "0.02",
              "--slots", "archive=8,restore=0,remove=0")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcCluster]:
    c = ProcCluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


class Load:
    """Steady submits of unique archives from a client thread. Remembers
    every acknowledged action; retries a failed batch with the same items
    (same idempotency keys)."""

    def __init__(self, cluster: ProcCluster, fsname: str = "sys", batch: int = 20, seq: int = 0x200000400) -> None:
        self.client = CoordinatorClient(cluster.addresses, timeout=5, initiator="load", tls=cluster.client_tls)
        self.fsname = fsname
        self.batch = batch
        self.seq = seq
        self.acked: dict[int, str] = {}  # action id -> key
        self.errors: list[str] = []
        self.batches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.n = 0

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            items = []
            for _ in range(self.batch):
                self.n += 1
                items.append(submit_item(self.fsname, Fid(self.seq, self.n), "archive",
                                         idempotency_key=f"load-{self.n}"))
            results = None
            while results is None and not self._stop.is_set():
                try:
                    results = self.client.submit(items)
                except CoordinatorError as exc:  # retried with the same keys
                    self.errors.append(str(exc))
                    time.sleep(0.1)
            if results is None:
                return  # stopped while the cluster was down: that batch was never acknowledged
            for it, r in zip(items, results, strict=True):
                assert r.outcome == 1, r  # CREATED (a retry answers the first result)
                self.acked[r.action_id] = it.idempotency_key
            self.batches += 1
            time.sleep(0.02)


def test_kill_leader_under_load(cluster: ProcCluster, tmp_path: Path) -> None:
    cluster.start_all()
    fs = tmp_path / "fs"
    from hsm.simfs import SimFS

    SimFS.create(fs, "sys")
    args = [a.replace("{fs}", str(fs)) for a in NULL_AGENT]
    cluster.start_agent("m1", *args)
    cluster.start_agent("m2", *args)
    with Load(cluster) as load:
        until(lambda: load.batches >= 20, 30, "load to run")
        leaders = cluster.leaders("r1")
        victim = leaders[0]
        cluster.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = next(s.id for s in cluster.live())
        until(lambda: all(v and v != victim for v in cluster.leaders(survivor).values()), 10,
              "new leaders for every shard")
        failover = time.monotonic() - killed_at
        before = load.batches
        until(lambda: load.batches >= before + 20, 30, "submits to resume")
    assert failover < 5.0, f"new leaders took {failover:.1f} s"
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        final = client.wait(sorted(load.acked), deadline=90)
    lost = set(load.acked) - set(final)
    assert not lost, f"{len(lost)} acknowledged actions lost"
    assert {a.state for a in final.values()} == {T.SUCCEEDED}
    cluster.check_converged()
    bad = no_concurrent_runs(cluster.agent_runs())
    assert not bad, bad[:5]
    # the killed replica comes back and catches up
    cluster.start(victim)
    cluster.wait_ready()
    cluster.check_converged()


def test_sigkill_every_replica_loses_nothing_acknowledged(cluster: ProcCluster) -> None:
    cluster.start_all()
    with Load(cluster, batch=50) as load:
        until(lambda: load.batches >= 30, 60, "load to run")
        with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
            canceled = sorted(load.acked)[:25]
            client.cancel(action_ids=canceled)
        for s in list(cluster.live()):
            cluster.procs[s.id].send_signal(signal.SIGKILL)
        time.sleep(0.2)  # the load thread sees the cluster gone: its last batch is not acknowledged
        acked = dict(load.acked)
        for s in list(cluster.live()):
            cluster.kill(s.id, signal.SIGKILL)
    cluster.start_all()
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        found = {a.action_id: a for a in client.list_actions(include_terminal=True)}
    missing = set(acked) - set(found)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged actions lost after SIGKILL of all replicas"
    assert all(found[i].state == T.CANCELED for i in canceled)
    assert all(found[i].state == T.WAITING for i in acked if i not in canceled)
    cluster.check_converged()


def test_minority_replica_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = ProcCluster(tmp_path, raft={"compaction_min_entries": 50})
    try:
        c.start_all()
        c.kill("r3", signal.SIGTERM)
        with Load(c, batch=10) as load:
            until(lambda: load.batches >= 150, 90, "load while r3 is down")
        c.start("r3")
        c.wait_ready()
        c.check_converged(timeout=60)
        log = (tmp_path / "logs" / "r3.log").read_text()
        assert "installing a snapshot from the leader" in log
    finally:
        c.stop()


def test_raft_port_without_password_is_ignored(cluster: ProcCluster) -> None:
    cluster.start_all()
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        ids = [r.action_id for r in client.submit([submit_item("sys", Fid(0x200000400, n), "archive")
                                                     for n in range(1, 11)])]
    host, port = cluster.specs[0].raft_addr(0).split(":")
    before = cluster.status("r1").shards[0].term
    for payload in (b"\x80\x04garbage", zlib.compress(b"\x80\x04N."), b"\x00" * 100):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(struct.pack("i", len(payload)) + payload)
            s.settimeout(5)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
    cluster.wait_ready()
    assert cluster.status("r1").shards[0].term == before
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        assert {client.get_action(i).state for i in ids} == {T.WAITING}
    cluster.check_converged()


def test_replace_a_dead_replica(cluster: ProcCluster) -> None:
    """The documented procedure (docs/operations.md): remove the dead
    replica from every shard's group, add the new one, give every replica
    the new config, start the new one, restart the others one at a time."""
    import subprocess
    import sys

    import yaml

    from coordinator.cluster import ReplicaSpec, free_ports

    cluster.start_all()
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        first = [r.action_id for r in client.submit([submit_item("sys", Fid(0x200000400, n), "archive")
                                                       for n in range(1, 101)])]
    dead = cluster.spec("r3")
    cluster.kill("r3", signal.SIGKILL)
    live = ",".join(s.api for s in cluster.live())

    def member(action: str, raft: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coordinator.cli", "member", action, "--raft", raft,
                               "--coordinators", live], capture_output=True, text=True, timeout=180,
                              env=cluster.env)  # the admin's certificate (HSM_TLS_*)

    until(lambda: all(v and v != "r3" for v in cluster.leaders("r1").values()), 15, "leaders without r3")
    r = member("remove", dead.raft)
    assert r.returncode == 0, r.stderr
    new = ReplicaSpec("r4", f"127.0.0.1:{free_ports(1)}", f"127.0.0.1:{free_ports(cluster.shards)}")
    r = member("add", new.raft)
    assert r.returncode == 0, r.stderr
    assert "added to the Raft groups of shards 0, 1, 2, 3" in r.stdout
    doc = yaml.safe_load(cluster.config.read_text())
    doc["cluster"]["replicas"] = [x for x in doc["cluster"]["replicas"] if x["id"] != "r3"] + [
        {"id": "r4", "api": new.api, "raft": new.raft}]
    cluster.config.write_text(yaml.safe_dump(doc))
    cluster.specs = [s for s in cluster.specs if s.id != "r3"] + [new]
    cluster.start("r4")
    cluster.wait_ready()
    cluster.check_converged(timeout=60)
    for rid in ("r1", "r2"):  # rolling restart onto the new config
        cluster.kill(rid, signal.SIGTERM)
        cluster.start(rid)
        cluster.wait_ready()
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        more = [r.action_id for r in client.submit([submit_item("sys", Fid(0x200000401, n), "archive")
                                                      for n in range(1, 51)])]
        assert {client.get_action(i).state for i in first + more} == {T.WAITING}
    cluster.check_converged(timeout=60)
    assert {a.id for a in cluster.live()} == {"r1", "r2", "r4"}
    # r4 hears no leader for longer than its audit waits (the others stopped): it asks whether it
    # is still a member once they answer, and stays one (its group records, written at its first
    # start from the configuration, did not name it before member add; the Raft group does)
    for rid in ("r1", "r2"):
        cluster.procs[rid].send_signal(signal.SIGSTOP)
    log = cluster.logs / "r4.log"
    until(lambda: "leader now unknown" in log.read_text(), 30, "r4 without a leader")
    until(lambda: "asking the others whether this replica is still a member" in log.read_text(), 30,
          "r4 to start its audit while nobody answers")
    for rid in ("r1", "r2"):
        cluster.procs[rid].send_signal(signal.SIGCONT)
    cluster.wait_ready()
    cluster.check_converged(timeout=60)
    assert "left its Raft group" not in log.read_text()
    for i in range(cluster.shards):
        assert any(p.name.startswith("journal-") for p in (cluster.tmp / "data" / "r4" / f"shard-{i}").iterdir())


def test_control_mode_reaches_every_shard_on_every_replica(cluster: ProcCluster) -> None:
    cluster.start_all()
    from hsm.v1 import coordinator_pb2 as C
    from hsm.v1 import coordinator_pb2_grpc

    with cluster.channel(cluster.specs[1].api) as ch:  # any replica: shards led elsewhere are forwarded
        coordinator_pb2_grpc.CoordinatorStub(ch).Control(C.ControlRequest(mode="disabled"), timeout=30)
    until(lambda: all(cluster.status(s.id).control == "disabled" for s in cluster.live()), 10,
          "every replica to apply the mode on every shard")
    with CoordinatorClient(cluster.addresses, tls=cluster.client_tls) as client:
        assert client.control("enabled") == "enabled"
    until(lambda: all(cluster.status(s.id).control == "enabled" for s in cluster.live()), 10, "enabled again")
    cluster.check_converged()
