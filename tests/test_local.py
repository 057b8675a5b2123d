"""``hsm-coordinator local`` never claims a system that is not its own: busy
ports stop it before it starts anything, a replica of another cluster
answering its readiness checks is refused, a child that dies during start
fails the start with the child's own words, and one that dies later stops
the whole system with a non-zero exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.cluster import ReplicaSpec, free_ports
from coordinator.local import ChildDied, LocalSystem, unique_fsname
from hsm.simfs import SimFS
from tests.cluster import until
from tests.readme import assert_sample
from tests.test_e2e import _children, _cmdline, _pids_alive


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def _local(work: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "local", "--dir", str(work), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_block() -> int:
    """A port P with P..P+2 (APIs) and P+100..P+123 (Raft, 3 x 8) free."""
    return free_ports(124)


def test_fresh_trees_get_unique_valid_fsnames() -> None:
    names = {unique_fsname() for _ in range(200)}
    assert len(names) == 200
    assert all(re.fullmatch(r"[a-z0-9]{8}", n) for n in names)


def test_a_port_handed_out_is_not_handed_out_again_before_it_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three replicas of a test shard took two equal ports once (CI): a port
    free_ports returned is still unbound until its replica starts."""
    import coordinator.cluster as cluster

    base = free_ports(3)  # three free ports, now handed out

    def fresh(after: int) -> int:  # a free port nobody in this process was handed (CI: base + 10 was)
        return next(p for p in range(after, after + 1000) if p not in cluster._handed_out and cluster._port_free(p))

    p = fresh(base + 10)
    q = fresh(p + 1)
    draws = iter([p, p, base + 1, q])
    monkeypatch.setattr(cluster.random, "randrange", lambda *_a: next(draws))
    first = free_ports(1)
    second = free_ports(1)  # the same draw again, then one inside the first block
    assert first == p
    assert second == q


@pytest.mark.slow  # real replica processes
def test_busy_ports_stop_local_before_anything_starts(tmp_path: Path) -> None:
    port = _free_block()
    held = _listen(port + 1)  # another program on r2's API port
    try:
        proc = _local(tmp_path / "b", "--port", str(port))
        out, err = proc.communicate(timeout=60)
    finally:
        held.close()
    assert proc.returncode == 1
    assert "coordinators at" not in out, "no banner for a system that did not start"
    assert f"127.0.0.1:{port + 1} (r2 API)" in err and "already in use" in err
    assert not list((tmp_path / "b" / "logs").glob("r*.log")), "no replica was started"


def test_a_replica_of_another_cluster_is_not_taken_for_ours(tmp_path: Path, coordinator_factory: Any) -> None:
    """Readiness answered by someone else (the port check raced): refused."""
    other = coordinator_factory(cluster_id="someone-else")
    system = LocalSystem(dir=tmp_path, replicas=1, agents=0, port=0)
    system.replica_specs = [ReplicaSpec("test", other.address, "127.0.0.1:1")]
    system.cluster_id = "ours"
    system.client_tls = other.tls()  # what setup() takes from the system's own CA

    async def ready() -> None:
        system.coordinators["test"] = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            await system.wait_ready(10)
        finally:
            system.coordinators["test"].kill()
            await system.coordinators["test"].wait()

    with pytest.raises(RuntimeError, match=f"{other.address} is answered by replica test of cluster "
                                           "someone-else, not by test of this cluster"):
        asyncio.run(ready())
    system.cluster_id = other.node.cluster.cluster_id
    asyncio.run(ready())  # its own replica at that address: ready


@pytest.mark.slow  # real replica processes
def test_a_child_that_dies_during_start_fails_the_start_with_its_log(tmp_path: Path) -> None:
    port = _free_block()
    system = LocalSystem(dir=tmp_path, agents=0, port=port)
    system.check_ports = lambda: None  # type: ignore[method-assign]  # the race the port check cannot close
    held = _listen(port + 1)

    async def start() -> None:
        try:
            await system.start(timeout=60)
        finally:
            await system.stop(drain=5)

    try:
        with pytest.raises(ChildDied) as err:
            asyncio.run(start())
    finally:
        held.close()
    assert "r2 exited with code" in str(err.value)
    assert f"cannot listen on 127.0.0.1:{port + 1}" in str(err.value), "the child's own words"
    assert all(p.returncode is not None for p in system.children().values())


@pytest.mark.slow  # real replica processes
def test_local_stops_with_an_error_when_a_child_dies_later(tmp_path: Path) -> None:
    work = tmp_path / "hsm"
    proc = _local(work, "--port", "0", "--agents", "1")
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        assert "coordinators at" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
        fs = SimFS.open(work / "fs")
        assert re.fullmatch(r"sim[a-z0-9]{5}", fs.fsname)
        banner = [first]
        while not banner[-1].startswith("  stop:"):
            banner.append(proc.stdout.readline())
        assert fs.cluster_id and fs.cluster_id in banner[1]  # "  cluster id:   ..."
        # the README's sample of it (mutual TLS: the certificates' line)
        assert_sample("It prints where everything is", "".join(banner), replace={str(work): "/tmp/hsm"})
        family = _children(proc.pid)
        replicas = [p for p in family if "coordinator.cli run" in _cmdline(p)]
        assert len(replicas) == 3
        victim = next(p for p in replicas if "--replica-id r2" in _cmdline(p))
        os.kill(victim, signal.SIGKILL)
        out, _err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "r2 exited with code -9" in out and "stopping the rest" in out
    until(lambda: not _pids_alive(family), 30, "every child of local gone")


def test_a_second_start_keeps_the_tree_its_fsname_and_cluster(tmp_path: Path) -> None:
    system = LocalSystem(dir=tmp_path, agents=0, port=0)
    system._make_config()
    fs = SimFS.create(system.fs_root, "mine")
    assert fs.cluster_id == ""
    system2 = LocalSystem(dir=tmp_path, agents=0, port=0, fsname="other")
    with pytest.raises(RuntimeError, match="named 'mine', not 'other'"):
        asyncio.run(system2.start(timeout=5))
    assert SimFS.open(system.fs_root).fsname == "mine"
